//! The one place where errors become HTTP responses: every failure leaves the API as a FHIR
//! OperationOutcome, with the status and issue type below. Nothing else renders errors (HFS
//! records a bug where a second renderer inside Bundles drifted from the first).
//!
//! | status | issue code | when |
//! |---|---|---|
//! | 400 | `invalid` / `structure` | malformed JSON, type or id mismatch, bad parameter |
//! | 401 | `login` | no or an invalid access token (with `WWW-Authenticate: Bearer`, RFC 6750) |
//! | 403 | `forbidden` | the token's scopes do not grant the interaction, or a write leaves the caller's reach |
//! | 404 | `not-found` | unknown resource, version, type or route — and a resource the caller may not see (same body) |
//! | 405 | `not-supported` | method not allowed on the route |
//! | 406 | `not-supported` | only JSON is served |
//! | 409 | `conflict` | concurrent update lost repeatedly |
//! | 410 | `deleted` | the resource or version is deleted |
//! | 412 | `conflict` | `If-Match` / `If-None-Exist` precondition failed |
//! | 413 | `too-long` | body over the configured limit (stated in the message) |
//! | 415 | `not-supported` | body media type is not FHIR JSON |
//! | 422 | validation issue codes | the resource is not valid R4 |
//! | 500 | `exception` | integrity failure or internal error (details only in the log) |
//! | 503 | `transient` | writes refused after a storage failure, a component failing (`/healthz`), a full body budget, or shutting down; always with `Retry-After: 1` |

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::fhir::{Issue, Severity};
use crate::store::StoreError;

use super::FHIR_JSON;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    issues: Vec<OutcomeIssue>,
    /// `WWW-Authenticate` of a 401.
    challenge: Option<String>,
}

#[derive(Debug)]
struct OutcomeIssue {
    severity: &'static str,
    code: &'static str,
    diagnostics: String,
    expression: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, diagnostics: impl Into<String>) -> Self {
        ApiError {
            status,
            issues: vec![OutcomeIssue { severity: "error", code, diagnostics: diagnostics.into(), expression: None }],
            challenge: None,
        }
    }

    /// 401: the request needs a (valid) access token. `invalid_token` names the failed check.
    pub fn unauthorized(invalid_token: Option<&str>) -> Self {
        let (diagnostics, challenge) = match invalid_token {
            None => ("an access token is required (Authorization: Bearer ...)".to_string(), r#"Bearer realm="fhir-gateway""#.to_string()),
            Some(reason) => {
                (reason.to_string(), format!(r#"Bearer realm="fhir-gateway", error="invalid_token", error_description="{reason}""#))
            }
        };
        ApiError { challenge: Some(challenge), ..ApiError::new(StatusCode::UNAUTHORIZED, "login", diagnostics) }
    }

    pub fn bad_request(diagnostics: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", diagnostics)
    }

    pub fn not_found(diagnostics: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", diagnostics)
    }

    pub fn forbidden(diagnostics: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", diagnostics)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    fn validation(issues: Vec<Issue>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            issues: issues
                .into_iter()
                .map(|issue| OutcomeIssue {
                    severity: if issue.severity == Severity::Error { "error" } else { "warning" },
                    code: issue.code.as_fhir_code(),
                    diagnostics: issue.diagnostics,
                    expression: (!issue.expression.is_empty()).then_some(issue.expression),
                })
                .collect(),
            challenge: None,
        }
    }
}

/// An OperationOutcome resource (also used for `Prefer: return=OperationOutcome` successes).
pub fn operation_outcome(severity: &str, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity, "code": code, "diagnostics": diagnostics }]
    })
}

impl ApiError {
    /// The same error, said of one Bundle entry (its position as sent).
    pub fn at_entry(mut self, position: usize) -> Self {
        for issue in &mut self.issues {
            issue.diagnostics = format!("Bundle.entry[{position}]: {}", issue.diagnostics);
            let inner = issue.expression.take();
            issue.expression = Some(match inner {
                Some(expression) => format!(
                    "Bundle.entry[{position}].resource.{}",
                    expression.split_once('.').map_or(expression.as_str(), |(_, rest)| rest)
                ),
                None => format!("Bundle.entry[{position}]"),
            });
        }
        self
    }

    /// The OperationOutcome resource for this error (the body of its response, or a Bundle
    /// entry's `response.outcome`).
    pub fn to_outcome(&self) -> Value {
        let issues: Vec<Value> = self
            .issues
            .iter()
            .map(|issue| {
                let mut rendered = json!({ "severity": issue.severity, "code": issue.code, "diagnostics": issue.diagnostics });
                if let Some(expression) = &issue.expression {
                    rendered["expression"] = json!([expression]);
                }
                rendered
            })
            .collect();
        json!({ "resourceType": "OperationOutcome", "issue": issues })
    }
}

/// `Retry-After` of every `503`.
const RETRY_AFTER_SECONDS: &str = "1";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.to_outcome();
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        if let Some(challenge) = self.challenge.and_then(|challenge| HeaderValue::from_str(&challenge).ok()) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 here is transient or needs an operator; either way, not a retry storm.
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Invalid(issues) => ApiError::validation(issues),
            StoreError::BadRequest(message) => ApiError::bad_request(message),
            StoreError::Forbidden(message) => ApiError::forbidden(message),
            StoreError::NotFound => ApiError::not_found("resource not found"),
            StoreError::Gone(version_id) => {
                ApiError::new(StatusCode::GONE, "deleted", format!("the resource was deleted (version {version_id})"))
            }
            StoreError::Erased(key) => ApiError::new(
                StatusCode::GONE,
                "deleted",
                format!(
                    "{}/{} was erased at the patient's request (Patient/$purge); its records no longer exist",
                    key.resource_type, key.id
                ),
            ),
            StoreError::VersionConflict => {
                ApiError::new(StatusCode::CONFLICT, "conflict", "the resource was changed concurrently; read it again and retry")
            }
            StoreError::PreconditionFailed(message) => ApiError::new(StatusCode::PRECONDITION_FAILED, "conflict", message),
            StoreError::Unavailable(message) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", message),
            StoreError::Integrity(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "integrity check failed for this record; it is not served and the incident was logged",
            ),
            StoreError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error; the incident was logged")
            }
        }
    }
}
