//! Authentication of every FHIR request (issue #4): a bearer access token verified by
//! [`crate::auth::TokenVerifier`], or anonymous access where configured (off by default). The
//! verified token travels in the request's extensions to the handlers. `GET [base]/metadata` and
//! `GET [base]/.well-known/smart-configuration` stay public (clients discover the server before
//! they have a token); so do `/healthz` and `/ledger/checkpoint` (they reveal no PHI).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::access::Access;
use crate::auth::remote::looks_like_jwt;
use crate::auth::{TokenError, TokenVerifier};
use crate::store::Principal;

fn is_public(path: &str) -> bool {
    !path.starts_with("/fhir") || path == "/fhir/metadata" || path == "/fhir/.well-known/smart-configuration"
}

/// `GET [base]/.well-known/smart-configuration`: the configured document, or 404.
pub async fn smart_configuration(State(state): State<AppState>) -> Response {
    match &state.smart_configuration {
        Some(document) => {
            let mut response = document.to_string().into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            response
        }
        None => ApiError::not_found("no SMART authorization server is configured (--smart-configuration)").into_response(),
    }
}

/// Authenticates the request, gives the handlers its [`Access`] ([`Authorized`]), and once the
/// handler has answered, records the request's AuditEvents durably before the answer leaves.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let authorization = request.headers().get(header::AUTHORIZATION).map(|value| value.to_str().unwrap_or_default().to_string());
    let now_ms = (crate::fhir::now_instant().unix_timestamp_nanos() / 1_000_000) as i64;
    let access = match authorization {
        None if state.anonymous => Access::anonymous(&state.access, now_ms),
        None => return refuse(&state, None),
        Some(value) => {
            let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) else {
                return refuse(&state, Some("the Authorization header is not a Bearer token"));
            };
            match verify(&state, token.trim(), (now_ms / 1000).max(0) as u64).await {
                Ok(token) => Access::for_token(&token, &state.access, now_ms),
                Err(error) => return refuse(&state, Some(&error.to_string())),
            }
        }
    };
    if state.audit.is_failed() {
        // Nothing runs that could not be recorded (a write would land unaudited).
        return super::audit::unavailable("the audit trail stopped after a storage failure").into_response();
    }
    let access = Arc::new(access);
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_string);
    request.extensions_mut().insert(Authorized(Arc::clone(&access)));
    let response = next.run(request).await;
    let records = super::audit::records(&access, &method, &path, query.as_deref(), response.status());
    if records.is_empty() {
        return response;
    }
    match state.audit.record(&records).await {
        Ok(()) => response,
        Err(reason) => super::audit::unavailable(&reason).into_response(),
    }
}

/// A `401`, recorded in the audit trail as a failed authentication (grouped per reason, see
/// [`crate::audit::login`]; the answer does not wait for the trail).
fn refuse(state: &AppState, invalid_token: Option<&str>) -> Response {
    let reason = invalid_token.unwrap_or("no access token");
    let records = state.login_failures.refused(reason, std::time::Instant::now(), &crate::fhir::format_instant(crate::fhir::now_instant()));
    record_login_failures(state, records);
    ApiError::unauthorized(invalid_token).into_response()
}

/// Records failed-authentication events without making anyone wait for them.
pub fn record_login_failures(state: &AppState, records: Vec<crate::audit::AuditRecord>) {
    if records.is_empty() {
        return;
    }
    let audit = Arc::clone(&state.audit);
    tokio::spawn(async move {
        if let Err(reason) = audit.record(&records).await {
            tracing::error!(reason, "failed authentications could not be recorded");
        }
    });
}

/// A JWT is verified against the trusted issuers' keys (fetched again once if it names a key
/// its issuer has just published); an opaque token is introspected where configured.
async fn verify(state: &AppState, token: &str, now: u64) -> Result<Arc<crate::auth::AccessToken>, TokenError> {
    if let Some(introspection) = &state.introspection
        && !looks_like_jwt(token)
    {
        return introspection.introspect(&state.tokens, token, now).await;
    }
    match state.tokens.verify(token, now) {
        Err(TokenError::UnknownKey) => match TokenVerifier::claimed_issuer(token) {
            Some(issuer) if state.remote_keys.refresh(&state.tokens, &issuer).await => state.tokens.verify(token, now),
            _ => Err(TokenError::UnknownKey),
        },
        other => other,
    }
}

/// The caller's [`Access`] for this request, as [`authenticate`] established it.
#[derive(Clone)]
pub struct Authorized(pub Arc<Access>);

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Authorized>().cloned().ok_or_else(|| ApiError::unauthorized(None))
    }
}

impl Authorized {
    /// Who the writes of this request are recorded as, checked by this access.
    pub fn principal(&self) -> Principal {
        Principal {
            name: self.0.principal_name().map(str::to_string),
            organization: self.0.requester().organization.clone(),
            guard: Arc::clone(&self.0) as Arc<dyn crate::store::WriteGuard>,
        }
    }
}
