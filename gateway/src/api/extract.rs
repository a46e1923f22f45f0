//! Request parsing shared by the handlers: the FHIR JSON body (size limit, media type, JSON),
//! `Prefer`, `If-Match`, `If-None-Exist` and `_format`/`Accept`. Every rejection is an
//! [`ApiError`], so a malformed request gets the same OperationOutcome as everything else.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppState;
use super::error::ApiError;
use crate::fhir::Leniency;
use crate::store::CreateCondition;

/// A request body that is a JSON object sent as `application/fhir+json` or `application/json`,
/// and its share of the memory budget for bodies in flight ([`Budget`]), held as long as the
/// handler keeps it (bind it: `FhirJson(body, _held)`).
pub struct FhirJson(pub Value, pub Option<OwnedSemaphorePermit>);

/// Which budget a body is read under: every request body counts against one, so the memory of
/// requests in flight is bounded by configuration, not by how many clients send at once.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// A single resource: [`super::Limits::body_bytes_in_flight`].
    Resource,
    /// A transaction or batch Bundle (processing one costs many times its bytes):
    /// [`super::Limits::bundle_bytes_in_flight`].
    Bundle,
}

fn is_json_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    matches!(essence.as_str(), "application/fhir+json" | "application/json" | "application/json+fhir")
}

impl FromRequest<AppState> for FhirJson {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        FhirJson::read(request, state, Budget::Resource).await
    }
}

impl FhirJson {
    /// Reads and parses the body. It must be at most `max_body_bytes` (`413`, answered after the
    /// body is read and dropped, so that the client sees it instead of a broken pipe), arrive
    /// within `body_read_timeout` of the headers (`408`) and be well-formed HTTP (`400`).
    /// The body holds its share of its `budget` (KiB permits) as its bytes arrive (at least
    /// 16 KiB; see [`Reservation::grow`]), so a client that announces a large body and sends
    /// little holds little.
    pub async fn read(request: Request, state: &AppState, budget: Budget) -> Result<FhirJson, ApiError> {
        let (budget, budget_bytes) = match budget {
            Budget::Resource => (&state.body_permits, state.limits.body_bytes_in_flight),
            Budget::Bundle => (&state.bundle_permits, state.limits.bundle_bytes_in_flight),
        };
        let limit = state.limits.max_body_bytes;
        let too_large = || {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too-long", format!("the request body is larger than the limit of {limit} bytes"))
        };
        let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
        if !content_type.is_some_and(is_json_media_type) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-supported",
                "the body must be sent as application/fhir+json (or application/json)",
            ));
        }
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<usize>().ok());
        let deadline = tokio::time::Instant::now() + state.limits.body_read_timeout;
        let mut body = request.into_body();
        if declared.is_some_and(|length| length > limit) {
            drain(&mut body, declared.unwrap_or_default().min(limit.saturating_mul(2)), deadline).await;
            return Err(too_large());
        }
        // Grown as bytes arrive, not sized by what the client announces.
        let mut bytes: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0).min(64 * 1024));
        let mut reserved = Reservation { permit: None, kib: 0 };
        while let Some(frame) = next_frame(&mut body, deadline).await? {
            let Ok(data) = frame.into_data() else { continue };
            if bytes.len() + data.len() > limit {
                drain(&mut body, limit, deadline).await;
                return Err(too_large());
            }
            let budget_kib = (budget_bytes / 1024).max(1);
            let arrived_kib = (bytes.len() + data.len()).div_ceil(1024).max(16).min(budget_kib);
            let expected_kib = declared.unwrap_or(limit).div_ceil(1024).max(arrived_kib).min(budget_kib);
            reserved.grow(budget, arrived_kib, expected_kib, deadline).await?;
            bytes.extend_from_slice(&data);
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
        let value: Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
            .map_err(|error| ApiError::bad_request(format!("the body is not valid JSON: {error}")))?;
        if !value.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object (a FHIR resource)"));
        }
        Ok(FhirJson(value, reserved.permit))
    }
}

/// What a body being read holds of its budget, in KiB.
struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    kib: usize,
}

impl Reservation {
    /// Holds at least `arrived_kib`: taken as the bytes arrive while the budget has room. When
    /// it has none, the body lets go of what it holds and waits for all it expects
    /// (`expected_kib`) at once, so bodies half read never hold the budget against each other;
    /// waiting past `deadline` is a `503`.
    async fn grow(
        &mut self,
        budget: &Arc<Semaphore>,
        arrived_kib: usize,
        expected_kib: usize,
        deadline: tokio::time::Instant,
    ) -> Result<(), ApiError> {
        if arrived_kib <= self.kib {
            return Ok(());
        }
        let permits = |kib: usize| u32::try_from(kib).unwrap_or(u32::MAX);
        let shutting_down = || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "the gateway is shutting down");
        match Arc::clone(budget).try_acquire_many_owned(permits(arrived_kib - self.kib)) {
            Ok(more) => match &mut self.permit {
                Some(permit) => permit.merge(more),
                None => self.permit = Some(more),
            },
            Err(tokio::sync::TryAcquireError::Closed) => return Err(shutting_down()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                self.permit = None;
                let all = tokio::time::timeout_at(deadline, Arc::clone(budget).acquire_many_owned(permits(expected_kib)))
                    .await
                    .map_err(|_| {
                        ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "transient",
                            "too many request bodies are being processed; try again shortly",
                        )
                    })?
                    .map_err(|_| shutting_down())?;
                self.permit = Some(all);
                self.kib = expected_kib;
                return Ok(());
            }
        }
        self.kib = arrived_kib;
        Ok(())
    }
}

/// The body's next frame by `deadline`: `408` if it does not come, `400` if the body is not
/// well-formed HTTP (a malformed chunk, a connection closed mid-body).
async fn next_frame(body: &mut Body, deadline: tokio::time::Instant) -> Result<Option<Frame<Bytes>>, ApiError> {
    match tokio::time::timeout_at(deadline, body.frame()).await {
        Err(_) => Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "timeout", "the request body did not arrive in time")),
        Ok(None) => Ok(None),
        Ok(Some(Ok(frame))) => Ok(Some(frame)),
        Ok(Some(Err(_))) => Err(ApiError::bad_request("the request body could not be read: malformed (e.g. a bad chunk) or cut off")),
    }
}

/// Reads and drops up to `at_most` more bytes of a body that will be refused, so that the
/// client gets the answer rather than a connection reset while it is still sending.
async fn drain(body: &mut Body, at_most: usize, deadline: tokio::time::Instant) {
    let mut seen = 0usize;
    while seen <= at_most {
        match next_frame(body, deadline).await {
            Ok(Some(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
            _ => return,
        }
    }
}

/// Path parameters, with axum's rejection (e.g. `%FF` in an id) rendered as an OperationOutcome.
pub struct FhirPath<T>(pub T);

impl<T, S> FromRequestParts<S> for FhirPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(FhirPath(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

/// What the client asked for in `Prefer` (RFC 7240; FHIR R4 §3.1.0.5.2, §3.1.0.1.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPreference {
    Minimal,
    Representation,
    OperationOutcome,
}

#[derive(Debug, Clone, Copy)]
pub struct Prefer {
    pub return_preference: ReturnPreference,
    pub leniency: Leniency,
}

impl Prefer {
    pub fn from_headers(headers: &HeaderMap) -> Prefer {
        let mut prefer = Prefer { return_preference: ReturnPreference::Representation, leniency: Leniency::Strict };
        for value in headers.get_all("prefer").iter().filter_map(|value| value.to_str().ok()) {
            for token in value.split([',', ';']).map(str::trim) {
                match token.replace(' ', "").to_ascii_lowercase().as_str() {
                    "return=minimal" => prefer.return_preference = ReturnPreference::Minimal,
                    "return=representation" => prefer.return_preference = ReturnPreference::Representation,
                    "return=operationoutcome" => prefer.return_preference = ReturnPreference::OperationOutcome,
                    "handling=lenient" => prefer.leniency = Leniency::Lenient,
                    "handling=strict" => prefer.leniency = Leniency::Strict,
                    _ => {}
                }
            }
        }
        prefer
    }
}

/// `If-Match: W/"3"` (also `"3"`) → 3.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let text = value.to_str().unwrap_or_default().trim();
    let quoted = text.strip_prefix("W/").unwrap_or(text);
    quoted
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .and_then(|version| version.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("If-Match must be a version ETag such as W/\"3\""))
}

/// `If-None-Exist: identifier=system|value&_id=...` → a condition.
pub fn if_none_exist(headers: &HeaderMap) -> Result<Option<CreateCondition>, ApiError> {
    let Some(value) = headers.get("if-none-exist") else { return Ok(None) };
    let text = value.to_str().map_err(|_| ApiError::bad_request("If-None-Exist is not ASCII"))?;
    CreateCondition::parse(text).map(Some).map_err(|message| ApiError::bad_request(format!("If-None-Exist: {message}")))
}

/// Checks `_format` and `Accept`: only FHIR JSON is served.
pub fn check_acceptable(headers: &HeaderMap, format: Option<&str>) -> Result<(), ApiError> {
    let not_acceptable = || ApiError::new(StatusCode::NOT_ACCEPTABLE, "not-supported", "only JSON (application/fhir+json) is served");
    if let Some(format) = format {
        // A literal `+` in `_format=application/fhir+json` arrives form-decoded as a space.
        let format = format.trim().replace(' ', "+").to_ascii_lowercase();
        if !(format == "json" || is_json_media_type(&format)) {
            return Err(not_acceptable());
        }
        return Ok(());
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|value| value.to_str().ok()) else { return Ok(()) };
    let acceptable = accept.split(',').any(|range| {
        let essence = range.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        essence.is_empty() || matches!(essence.as_str(), "*/*" | "application/*") || is_json_media_type(&essence)
    });
    if acceptable { Ok(()) } else { Err(not_acceptable()) }
}
