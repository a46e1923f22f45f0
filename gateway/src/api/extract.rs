//! Request parsing shared by the handlers: the FHIR JSON body (size limit, media type, JSON),
//! `Prefer`, `If-Match`, `If-None-Exist` and `_format`/`Accept`. Every rejection is an
//! [`ApiError`], so a malformed request gets the same OperationOutcome as everything else.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use crate::fhir::Leniency;
use crate::store::CreateCondition;

/// A request body that is a JSON object sent as `application/fhir+json` or `application/json`.
pub struct FhirJson(pub Value);

fn is_json_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    matches!(essence.as_str(), "application/fhir+json" | "application/json" | "application/json+fhir")
}

impl FromRequest<AppState> for FhirJson {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
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
        if declared.is_some_and(|length| length > limit) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(Body::new(request.into_body()), limit).await.map_err(|_| too_large())?;
        let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
        let value: Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
            .map_err(|error| ApiError::bad_request(format!("the body is not valid JSON: {error}")))?;
        if !value.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object (a FHIR resource)"));
        }
        Ok(FhirJson(value))
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
