//! Wiring for `serve`: open the store, build the router, listen, and shut down gracefully
//! (stop accepting, finish in-flight requests, commit what was submitted, final checkpoint).

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::api::{self, AppState, Services};
use crate::auth::TrustedIssuer;
use crate::auth::dev_issuer::DevIssuer;
use crate::auth::remote::RemoteKeys;
use crate::config::Config;
use crate::store::{OpenError, ResourceStore};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the data directory: {0}")]
    Open(#[from] OpenError),
    #[error("cannot listen: {0}")]
    Listen(std::io::Error),
    #[error("access tokens: {0}")]
    Auth(String),
    #[error("audit trail: {0}")]
    Audit(#[from] crate::ledger::LedgerError),
}

/// The configured issuers' JWKS files, the development issuer unless turned off, and the
/// issuers whose JWKS is at a URL (fetched by [`RemoteKeys::load_all`]).
fn trusted_issuers(config: &Config) -> Result<(Vec<TrustedIssuer>, RemoteKeys), String> {
    let mut issuers = Vec::new();
    let mut remote = Vec::new();
    for (issuer, source) in &config.auth.issuers {
        let text = source.to_string_lossy();
        if text.starts_with("http://") && !is_loopback_url(&text) {
            return Err(format!(
                "{text}: a JWKS URL must be https:// (plain http only on loopback): keys fetched in clear could be forged"
            ));
        }
        if text.starts_with("https://") || text.starts_with("http://") {
            remote.push((issuer.clone(), text.into_owned()));
            continue;
        }
        let jwks = std::fs::read_to_string(source).map_err(|error| format!("{}: {error}", source.display()))?;
        issuers.push(TrustedIssuer::from_jwks(issuer, &jwks)?);
    }
    if config.auth.dev_issuer {
        issuers.push(DevIssuer::load_or_create(&config.data_dir.join("keys"))?.trusted());
    }
    Ok((issuers, RemoteKeys::new(remote)))
}

/// `http://127.0.0.1…`, `http://[::1]…` or `http://localhost…`.
fn is_loopback_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|byte| byte.is_ascii_digit()) => name,
        _ => host,
    };
    matches!(host, "127.0.0.1" | "[::1]" | "localhost")
}

/// Opens the store and binds the listener; `run` then serves until `shutdown` resolves.
pub struct Server {
    listener: TcpListener,
    store: ResourceStore,
    state: AppState,
}

impl Server {
    pub async fn bind(config: &Config) -> Result<Server, ServeError> {
        let store = ResourceStore::open(&config.data_dir, config.store.clone())?;
        let listener = TcpListener::bind(config.listen).await.map_err(ServeError::Listen)?;
        let local = listener.local_addr().map_err(ServeError::Listen)?;
        let base_url = config.base_url.clone().unwrap_or_else(|| format!("http://{local}/fhir"));
        let (issuers, remote_keys) = trusted_issuers(config).map_err(ServeError::Auth)?;
        let audit = std::sync::Arc::new(store.open_audit_trail(&config.data_dir, config.audit_durability)?);
        let mut state = Services::new(store.clone(), audit, &base_url, config.limits.clone(), issuers, config.auth.anonymous);
        state.access.denied_reads = config.auth.denied_reads;
        state.access.consent_recorders = config.auth.consent_recorder_roles.iter().map(|role| crate::consent::Code::bare(role)).collect();
        state.access.options = std::sync::Arc::new(crate::consent::DecisionOptions {
            author_org_treatment: config.auth.author_org_treatment,
            emergency_roles: config.auth.emergency_roles.iter().map(|role| crate::consent::Code::bare(role)).collect(),
        });
        remote_keys.load_all(&state.tokens).await.map_err(|error| ServeError::Auth(format!("fetching a JWKS: {error}")))?;
        state.remote_keys = std::sync::Arc::new(remote_keys);
        if let Some((endpoint, client_id, client_secret)) = &config.auth.introspection {
            if !(endpoint.starts_with("https://") || is_loopback_url(endpoint)) {
                return Err(ServeError::Auth(format!(
                    "{endpoint}: the introspection endpoint must be https:// (plain http only on loopback)"
                )));
            }
            state.introspection =
                Some(std::sync::Arc::new(crate::auth::remote::Introspection::new(endpoint, client_id.clone(), client_secret.clone())));
        }
        if let Some(path) = &config.auth.smart_configuration {
            let document = std::fs::read_to_string(path).map_err(|error| ServeError::Auth(format!("{}: {error}", path.display())))?;
            let document = crate::auth::smart_configuration::check(&document)
                .map_err(|error| ServeError::Auth(format!("{}: {error}", path.display())))?;
            state.smart_configuration = Some(std::sync::Arc::new(document));
        }
        Ok(Server { listener, store, state: AppState::from(state) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        tracing::info!(address = %self.local_addr(), base_url = %self.state.base_url, "serving");
        let audit = std::sync::Arc::clone(&self.state.audit);
        if !self.state.remote_keys.is_empty() {
            tokio::spawn(std::sync::Arc::clone(&self.state.remote_keys).refresh_periodically(std::sync::Arc::clone(&self.state.tokens)));
        }
        let router = api::router(self.state);
        let app = tower::Layer::layer(&tower::util::MapRequestLayer::new(api::trim_trailing_slash), router);
        let make_service = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
        let served = axum::serve(self.listener, make_service).with_graceful_shutdown(shutdown).await;
        audit.close();
        self.store.close().await;
        tracing::info!("stopped: every acknowledged write is durable and checkpointed");
        served
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = interrupt => {},
        _ = terminate.recv() => {},
    }
}
