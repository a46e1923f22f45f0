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
use crate::store::Principal;

/// Who is calling, as established by [`authenticate`].
#[derive(Debug, Clone)]
pub enum Caller {
    /// Anonymous access is configured and no token was sent.
    Anonymous,
    Token(std::sync::Arc<crate::auth::AccessToken>),
}

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

pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let authorization = request.headers().get(header::AUTHORIZATION).map(|value| value.to_str().unwrap_or_default().to_string());
    let caller = match authorization {
        None if state.anonymous => Caller::Anonymous,
        None => return ApiError::unauthorized(None).into_response(),
        Some(value) => {
            let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) else {
                return ApiError::unauthorized(Some("the Authorization header is not a Bearer token")).into_response();
            };
            let now = crate::fhir::now_instant().unix_timestamp().max(0) as u64;
            match state.tokens.verify(token.trim(), now) {
                Ok(token) => Caller::Token(token),
                Err(error) => return ApiError::unauthorized(Some(&error.to_string())).into_response(),
            }
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The caller's [`Access`] for this request, from the [`Caller`] that [`authenticate`] found.
pub struct Authorized(pub Arc<Access>);

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let now_ms = (crate::fhir::now_instant().unix_timestamp_nanos() / 1_000_000) as i64;
        let consents = state.store.consent_directory();
        let options = Arc::clone(&state.consent_options);
        let access = match parts.extensions.get::<Caller>() {
            Some(Caller::Token(token)) => Access::for_token(token, consents, options, now_ms),
            Some(Caller::Anonymous) => Access::anonymous(consents, options, now_ms),
            None => return Err(ApiError::unauthorized(None)),
        };
        Ok(Authorized(Arc::new(access)))
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
