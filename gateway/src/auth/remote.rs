//! The network side of authentication, kept apart from the checks in `token.rs`:
//! - trusted issuers' JWKS by URL: fetched at start (the gateway does not start without them),
//!   again when a token names a key the issuer has not published yet (key rotation; at most once
//!   per [`MIN_REFETCH`] per issuer), and every [`REFRESH`];
//! - RFC 7662 introspection of opaque (non-JWT) access tokens at a configured endpoint, with
//!   the gateway's client credentials. An answer (also a refusal) is remembered by the token's
//!   SHA-256 for at most [`INTROSPECTION_CACHE`] and never past the token's `exp`, so a token
//!   revoked at the authorisation server stops working within that time; at most
//!   [`MAX_CONCURRENT_INTROSPECTIONS`] requests are in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::token::{AccessToken, TokenError, TokenVerifier};

/// The shortest time between two fetches of one issuer's JWKS.
pub const MIN_REFETCH: Duration = Duration::from_secs(30);
/// How often every JWKS is fetched again.
pub const REFRESH: Duration = Duration::from_secs(600);
/// How long an introspection answer is used.
pub const INTROSPECTION_CACHE: Duration = Duration::from_secs(60);
/// Timeout of one request to an authorisation server.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Most JWKS / introspection answer size read.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(TIMEOUT).build().expect("an HTTP client with rustls")
}

async fn get_text(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let response = client.get(url).send().await.map_err(|error| format!("{url}: {error}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let body = response.bytes().await.map_err(|error| format!("{url}: {error}"))?;
    if body.len() > MAX_ANSWER_BYTES {
        return Err(format!("{url}: answer larger than {MAX_ANSWER_BYTES} bytes"));
    }
    String::from_utf8(body.to_vec()).map_err(|_| format!("{url}: not UTF-8"))
}

/// Issuers whose JWKS is published at a URL.
pub struct RemoteKeys {
    client: reqwest::Client,
    /// (issuer, JWKS URL)
    sources: Vec<(String, String)>,
    last_fetch: Mutex<HashMap<String, Instant>>,
}

impl RemoteKeys {
    pub fn new(sources: Vec<(String, String)>) -> RemoteKeys {
        RemoteKeys { client: client(), sources, last_fetch: Mutex::new(HashMap::new()) }
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Fetches every JWKS now; the first failure is the error (used at start, and not counted
    /// against [`MIN_REFETCH`]: a key published just after start is found on first use).
    pub async fn load_all(&self, verifier: &TokenVerifier) -> Result<(), String> {
        for (issuer, url) in &self.sources {
            verifier.replace_keys(issuer, &get_text(&self.client, url).await?)?;
        }
        Ok(())
    }

    /// Fetches `issuer`'s JWKS again unless that happened less than [`MIN_REFETCH`] ago.
    /// Whether new keys were loaded.
    pub async fn refresh(&self, verifier: &TokenVerifier, issuer: &str) -> bool {
        let Some((_, url)) = self.sources.iter().find(|(known, _)| known == issuer) else { return false };
        {
            let mut last_fetch = self.last_fetch.lock().expect("last fetch lock");
            if last_fetch.get(issuer).is_some_and(|at| at.elapsed() < MIN_REFETCH) {
                return false;
            }
            last_fetch.insert(issuer.to_string(), Instant::now());
        }
        match get_text(&self.client, url).await.and_then(|jwks| verifier.replace_keys(issuer, &jwks)) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(issuer, %error, "fetching the issuer's JWKS failed; keeping the keys it had");
                false
            }
        }
    }

    /// Every [`REFRESH`], fetches every JWKS again (failures keep the previous keys).
    pub async fn refresh_periodically(self: Arc<RemoteKeys>, verifier: Arc<TokenVerifier>) {
        let mut interval = tokio::time::interval(REFRESH);
        interval.tick().await;
        loop {
            interval.tick().await;
            for (issuer, _) in &self.sources {
                self.refresh(&verifier, issuer).await;
            }
        }
    }
}

/// What an introspection answer said (a token, or why it is refused), and until when it is used.
type Remembered = (Result<Arc<AccessToken>, TokenError>, Instant);

/// Most introspection requests in flight at once (the others wait): a flood of made-up opaque
/// tokens cannot multiply into a flood on the authorisation server.
const MAX_CONCURRENT_INTROSPECTIONS: usize = 16;

/// An RFC 7662 introspection endpoint and the gateway's credentials there.
pub struct Introspection {
    client: reqwest::Client,
    endpoint: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    /// SHA-256 of the token → (what it says, usable until).
    answers: RwLock<HashMap<[u8; 32], Remembered>>,
    in_flight: tokio::sync::Semaphore,
}

impl Introspection {
    pub fn new(endpoint: &str, client_id: Option<String>, client_secret: Option<String>) -> Introspection {
        Introspection {
            client: client(),
            endpoint: endpoint.to_string(),
            client_id,
            client_secret,
            answers: RwLock::new(HashMap::new()),
            in_flight: tokio::sync::Semaphore::new(MAX_CONCURRENT_INTROSPECTIONS),
        }
    }

    /// Asks the endpoint about `token` (or uses a recent answer) and checks what it says.
    pub async fn introspect(&self, verifier: &TokenVerifier, token: &str, now: u64) -> Result<Arc<AccessToken>, TokenError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let remembered = self.answers.read().expect("introspection cache lock").get(&digest).cloned();
        if let Some((known, until)) = remembered
            && Instant::now() < until
        {
            let known = known?;
            if now > known.expires_at {
                return Err(TokenError::Expired);
            }
            return Ok(known);
        }
        let _permit = self.in_flight.acquire().await.map_err(|_| TokenError::IntrospectionUnavailable)?;
        let mut request = self.client.post(&self.endpoint).form(&[("token", token), ("token_type_hint", "access_token")]);
        if let Some(client_id) = &self.client_id {
            request = request.basic_auth(client_id, self.client_secret.as_deref());
        }
        let answer = async {
            let response = request.send().await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            response.json::<Value>().await.ok()
        }
        .await;
        let Some(answer) = answer else {
            tracing::warn!(endpoint = %self.endpoint, "token introspection failed");
            return Err(TokenError::IntrospectionUnavailable);
        };
        // Refusals are remembered too (a replayed revoked token does not ask again), for the same
        // time; a failure to ask (above) is not.
        let verified = verifier.from_introspection(&self.endpoint, &answer, now).map(Arc::new);
        let lifetime = match &verified {
            Ok(token) => Duration::from_secs(token.expires_at.saturating_sub(now)).min(INTROSPECTION_CACHE),
            Err(_) => INTROSPECTION_CACHE,
        };
        let mut answers = self.answers.write().expect("introspection cache lock");
        if answers.len() >= 10_000 {
            answers.retain(|_, (_, until)| Instant::now() < *until);
        }
        answers.insert(digest, (verified.clone(), Instant::now() + lifetime));
        verified
    }
}

/// Whether `token` has the shape of a JWS (three base64url parts); anything else is opaque.
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|part| !part.is_empty())
        && parts.iter().all(|part| part.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'))
}
