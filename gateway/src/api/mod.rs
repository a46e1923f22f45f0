//! The only HTTP code: routes, handlers (one per FHIR interaction, thin: parse, call the store,
//! shape the answer), extractors and the single error renderer.
//!
//! The FHIR base is `/fhir`; the ledger's public face is `/ledger`. [`ROUTES`] lists every route,
//! and a test checks that `openapi.yaml` describes exactly these.

mod audit;
pub mod auth;
mod bundle;
mod bundle_body;
pub mod error;
pub mod extract;
mod ledger;
mod metadata;
mod resource;
mod search;

use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;

use crate::auth::{TokenVerifier, TrustedIssuer};
use crate::store::ResourceStore;
use error::ApiError;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// Explicit, documented limits (README "Limits").
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_bundle_entries: usize,
    /// Request bytes of Bundles processed at the same time (the others wait before their
    /// bodies are read): bounds memory, while many small transactions still run side by side.
    pub bundle_bytes_in_flight: usize,
    /// Request bytes of single-resource bodies read and processed at the same time (each holds
    /// what has arrived of it, at least 16 KiB): bounds their memory under many clients.
    pub body_bytes_in_flight: usize,
    pub default_page_size: usize,
    pub max_page_size: usize,
    /// How long a request body may take to arrive, from the end of its headers (then `408`).
    pub body_read_timeout: std::time::Duration,
    /// How long a connection may take to send a request's headers, or sit idle between
    /// requests, before it is closed.
    pub header_read_timeout: std::time::Duration,
    /// Open connections at most (the rest wait in the listen backlog).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 * 1024 * 1024,
            max_bundle_entries: 10_000,
            bundle_bytes_in_flight: 8 * 1024 * 1024,
            body_bytes_in_flight: 32 * 1024 * 1024,
            default_page_size: 50,
            max_page_size: 500,
            body_read_timeout: std::time::Duration::from_secs(30),
            header_read_timeout: std::time::Duration::from_secs(10),
            max_connections: 4_096,
        }
    }
}

/// What every handler and middleware shares: a handle on one [`Services`]. axum clones the state
/// for every extractor and layer of every request, so it is one reference count, not one per
/// service (cloning and dropping every `Arc` of [`Services`] took 5 % of the CPU of reads by id).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl From<Services> for AppState {
    fn from(services: Services) -> AppState {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

pub struct Services {
    pub store: ResourceStore,
    /// The FHIR base URL as clients reach it, e.g. `http://127.0.0.1:8080/fhir`.
    pub base_url: Arc<str>,
    pub limits: Limits,
    /// [`Limits::bundle_bytes_in_flight`] in KiB permits.
    pub bundle_permits: Arc<tokio::sync::Semaphore>,
    /// [`Limits::body_bytes_in_flight`] in KiB permits.
    pub body_permits: Arc<tokio::sync::Semaphore>,
    /// Verifies bearer tokens (trusted issuers, `aud` = this base).
    pub tokens: Arc<TokenVerifier>,
    /// Issuers whose JWKS is fetched by URL (again on an unknown key id).
    pub remote_keys: Arc<crate::auth::remote::RemoteKeys>,
    /// RFC 7662 introspection of opaque tokens, if configured.
    pub introspection: Option<Arc<crate::auth::remote::Introspection>>,
    /// Requests without a token are served (configured; off by default).
    pub anonymous: bool,
    /// The authorisation server's SMART configuration, if one is configured.
    pub smart_configuration: Option<Arc<serde_json::Value>>,
    /// Where every request's AuditEvents go.
    pub audit: Arc<crate::audit::AuditTrail>,
    /// Requests refused with `401`, grouped for the audit trail.
    pub login_failures: Arc<crate::audit::login::LoginFailures>,
    /// What every request's access decisions share: current Consents, the facts cache, the
    /// gateway-wide consent options (author-organisation default, emergency roles).
    pub access: crate::access::Shared,
}

impl Services {
    /// `issuers`: the trusted token issuers; the verifier's audience is `base_url`.
    pub fn new(
        store: ResourceStore,
        audit: Arc<crate::audit::AuditTrail>,
        base_url: &str,
        limits: Limits,
        issuers: Vec<TrustedIssuer>,
        anonymous: bool,
    ) -> Services {
        let base_url = base_url.trim_end_matches('/');
        let facts: Arc<crate::access::FactsCache> = Arc::default();
        store.subscribe(facts.clone());
        Services {
            tokens: Arc::new(TokenVerifier::new(issuers, base_url)),
            remote_keys: Arc::new(crate::auth::remote::RemoteKeys::new(Vec::new())),
            introspection: None,
            anonymous,
            smart_configuration: None,
            access: crate::access::Shared {
                consents: store.consent_directory(),
                facts,
                options: Arc::default(),
                denied_reads: crate::access::DeniedReads::default(),
                consent_recorders: Arc::from([]),
                consent_recorder_organizations: Arc::from([]),
                patient_facing_issuers: Arc::from([]),
                purge_scope: Arc::from(crate::config::DEFAULT_PURGE_SCOPE),
            },
            audit,
            login_failures: Arc::default(),
            store,
            base_url: Arc::from(base_url),
            bundle_permits: Arc::new(tokio::sync::Semaphore::new((limits.bundle_bytes_in_flight / 1024).max(1))),
            body_permits: Arc::new(tokio::sync::Semaphore::new((limits.body_bytes_in_flight / 1024).max(1))),
            limits,
        }
    }
}

/// Every (method, path) the router serves, in OpenAPI path syntax.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/fhir"),
    ("get", "/fhir"),
    ("get", "/fhir/metadata"),
    ("get", "/fhir/.well-known/smart-configuration"),
    ("post", "/fhir/{type}"),
    ("get", "/fhir/{type}"),
    ("post", "/fhir/{type}/_search"),
    ("get", "/fhir/{type}/_history"),
    ("get", "/fhir/{type}/{id}"),
    ("put", "/fhir/{type}/{id}"),
    ("delete", "/fhir/{type}/{id}"),
    ("get", "/fhir/{type}/{id}/_history"),
    ("get", "/fhir/{type}/{id}/_history/{vid}"),
    ("get", "/fhir/{type}/{id}/{compartment}"),
    ("post", "/fhir/{type}/{id}/{compartment}"),
    ("get", "/ledger/checkpoint"),
    ("get", "/healthz"),
];

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/fhir", axum::routing::post(bundle::transaction_or_batch).get(search::search_system))
        .route("/fhir/metadata", get(metadata::capability_statement))
        .route("/fhir/.well-known/smart-configuration", get(auth::smart_configuration))
        .route("/fhir/{type}", axum::routing::post(resource::create).get(search::search_type))
        .route("/fhir/{type}/_search", axum::routing::post(search::search_type_post))
        .route("/fhir/{type}/_history", get(resource::type_history))
        .route("/fhir/{type}/{id}", get(resource::read).put(resource::update).delete(resource::delete))
        .route("/fhir/{type}/{id}/_history", get(resource::instance_history))
        .route("/fhir/{type}/{id}/_history/{vid}", get(resource::vread))
        .route("/fhir/{type}/{id}/{compartment}", get(search::compartment).post(resource::instance_operation))
        .route("/ledger/checkpoint", get(ledger::checkpoint))
        .route("/healthz", get(ledger::health))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "not-supported", "method not allowed on this endpoint")
        })
        .layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Clients post to `[base]/` as well as `[base]`: a trailing slash is trimmed before routing.
pub fn trim_trailing_slash(mut request: Request) -> Request {
    let path = request.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let new_path_and_query = match request.uri().query() {
            Some(query) => format!("{trimmed}?{query}"),
            None => trimmed.to_string(),
        };
        let mut parts = request.uri().clone().into_parts();
        if let Ok(path_and_query) = new_path_and_query.parse() {
            parts.path_and_query = Some(path_and_query);
            if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    request
}

/// One log line per request: method, route *template* (never the path: ids may be meaningful),
/// status and duration. No query strings, headers or bodies.
async fn log_request(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_string());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    let route = route.as_deref().unwrap_or("(unmatched)");
    if response.status().is_server_error() {
        tracing::warn!(%method, route, status, micros, "request");
    } else {
        tracing::debug!(%method, route, status, micros, "request");
    }
    response
}

/// A response with a FHIR JSON body.
fn fhir_response(status: axum::http::StatusCode, body: Vec<u8>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = (status, body).into_response();
    response.headers_mut().insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static(FHIR_JSON));
    response
}
