//! Wiring for `serve`: open the store, build the router, listen, and shut down gracefully
//! (stop accepting, finish in-flight requests, commit what was submitted, final checkpoint).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

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
    Audit(#[from] crate::audit::AuditError),
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
        state.access.consent_recorder_organizations = config.auth.consent_recorder_organizations.iter().cloned().collect();
        state.access.patient_facing_issuers = config.auth.patient_facing_issuers.iter().cloned().collect();
        state.access.purge_scope = std::sync::Arc::from(config.auth.purge_scope.as_str());
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
        tokio::spawn(record_ended_login_failures(self.state.clone()));
        let mut limits = self.state.limits.clone();
        limits.max_connections = limits.max_connections.min(connections_within_descriptor_limit());
        let router = api::router(self.state);
        let app = tower::Layer::layer(&tower::util::MapRequestLayer::new(api::trim_trailing_slash), router);
        let served = serve_connections(self.listener, app, &limits, shutdown).await;
        audit.close();
        self.store.close().await;
        tracing::info!("stopped: every acknowledged write is durable and checkpointed");
        served
    }
}

/// Accepts connections until `shutdown`, then lets each finish its request in progress (at most
/// [`SHUTDOWN_GRACE`]). At most `limits.max_connections` are open at once (then new ones wait in
/// the listen backlog); a connection that takes longer than `limits.header_read_timeout` to send
/// a request's headers, or sits idle that long between requests, is closed.
async fn serve_connections<S>(
    listener: TcpListener,
    app: S,
    limits: &api::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: tower::Service<axum::extract::Request, Response = axum::response::Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let header_read_timeout = limits.header_read_timeout;
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = std::sync::Arc::clone(&slots).acquire_owned() => slot.expect("the connection slots are never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors, or a connection reset before it was accepted: wait a
                    // little rather than spin, and go on.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let mut stopping = stopping.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                tower::ServiceExt::oneshot(app.clone(), request.map(axum::body::Body::new))
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_read_timeout);
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stopping.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    let _ = stop.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("connections still open after the shutdown grace period were closed");
    }
    Ok(())
}

/// How many connections fit beside the files the gateway needs itself (journals, the pack, the
/// index's segments, JWKS fetches): half the descriptor limit, after raising the soft limit to
/// the hard one. Running out of descriptors would fail writes and stop the indexer.
fn connections_within_descriptor_limit() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 256;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    usize::try_from(limit.rlim_cur / 2).unwrap_or(usize::MAX).max(16)
}

/// How long a stop waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Records the counts of failed authentications once their window has ended, also when no
/// further refusal comes to carry them (see [`crate::audit::login`]).
async fn record_ended_login_failures(state: AppState) {
    let mut ticks = tokio::time::interval(crate::audit::login::WINDOW / 2);
    loop {
        ticks.tick().await;
        let records = state.login_failures.ended(std::time::Instant::now(), &crate::fhir::format_instant(crate::fhir::now_instant()));
        api::auth::record_login_failures(&state, records);
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
