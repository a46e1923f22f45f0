//! Authentication over HTTP (issue #4): every FHIR request needs a valid bearer token unless
//! anonymous access is configured; `metadata` stays public. Tokens come from the `token` CLI
//! (development issuer) and from the test issuer in `fixtures/auth` (signed here).

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::harness::{Gateway, json_body};

const TEST_ISSUER: &str = "https://issuer.test";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/fixtures/auth/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn claims(gateway: &Gateway) -> Value {
    // The EMR of the organisation that wrote the test records, reading for treatment.
    json!({"iss": TEST_ISSUER, "aud": gateway.base(), "sub": "emr", "exp": now() + 300, "scope": "system/*.cruds",
        "organization": "Organization/local", "purpose_of_use": ["TREAT"]})
}

fn rs256(claims: &Value) -> String {
    let header = Header { kid: Some("test-rsa".into()), ..Header::new(Algorithm::RS256) };
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(fixture("test-rsa.pem").as_bytes()).unwrap()).unwrap()
}

/// GET with exactly this Authorization header (or none), bypassing the harness's default token.
async fn get_with(gateway: &Gateway, path: &str, authorization: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(gateway.url(path));
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    request.send().await.unwrap()
}

/// Asserts a 401 OperationOutcome with a Bearer challenge; returns the challenge.
async fn expect_401(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 401);
    let challenge = response.headers().get("www-authenticate").expect("WWW-Authenticate").to_str().unwrap().to_string();
    assert!(challenge.starts_with("Bearer realm=\"fhir-gateway\""), "{challenge}");
    let body = json_body(response).await;
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(body["issue"][0]["code"], "login");
    challenge
}

#[tokio::test]
async fn requests_need_a_valid_token_and_metadata_stays_public() {
    let gateway = Gateway::start_with(&[
        "--trust-issuer",
        &format!("{TEST_ISSUER}={}/fixtures/auth/test-issuer.jwks.json", env!("CARGO_MANIFEST_DIR")),
    ])
    .await;
    let created = json_body(gateway.post("Patient", &json!({"resourceType": "Patient", "gender": "female"})).await).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());

    assert_eq!(get_with(&gateway, "metadata", None).await.status(), 200);
    assert_eq!(reqwest::get(format!("{}/healthz", gateway.root())).await.unwrap().status(), 200);
    let missing = expect_401(get_with(&gateway, &path, None).await).await;
    assert!(!missing.contains("error="), "no token is not an invalid token: {missing}");
    expect_401(get_with(&gateway, "Patient?gender=female", None).await).await;

    // The development issuer's token for this base, and the test issuer's RS256 token.
    let dev = gateway.token(&["--scope", "system/Patient.rs"]);
    assert_eq!(get_with(&gateway, &path, Some(&format!("Bearer {dev}"))).await.status(), 200);
    assert_eq!(get_with(&gateway, &path, Some(&format!("Bearer {}", rs256(&claims(&gateway))))).await.status(), 200);

    let mut expired = claims(&gateway);
    expired["exp"] = json!(now() - 3600);
    let mut other_audience = claims(&gateway);
    other_audience["aud"] = json!("https://other.example/fhir");
    let mut unknown_issuer = claims(&gateway);
    unknown_issuer["iss"] = json!("https://evil.test");
    let hs256_with_public_key = jsonwebtoken::encode(
        &Header { kid: Some("test-rsa".into()), ..Header::new(Algorithm::HS256) },
        &claims(&gateway),
        &EncodingKey::from_secret(fixture("test-issuer.jwks.json").as_bytes()),
    )
    .unwrap();
    let other_key = jsonwebtoken::encode(
        &Header { kid: Some("test-rsa".into()), ..Header::new(Algorithm::RS256) },
        &claims(&gateway),
        &EncodingKey::from_rsa_pem(fixture("other-rsa.pem").as_bytes()).unwrap(),
    )
    .unwrap();
    let elsewhere = Gateway::start().await;
    let other_data_directory = elsewhere.token(&["--aud", &gateway.base()]);
    for (case, authorization, reason) in [
        ("expired", format!("Bearer {}", rs256(&expired)), "expired"),
        ("wrong aud", format!("Bearer {}", rs256(&other_audience)), "(aud)"),
        ("unknown iss", format!("Bearer {}", rs256(&unknown_issuer)), "issuer"),
        ("HS256 with the RSA public key", format!("Bearer {hs256_with_public_key}"), "algorithm"),
        ("key the issuer does not publish", format!("Bearer {other_key}"), "signature"),
        ("another gateway's development key", format!("Bearer {other_data_directory}"), "signature"),
        ("garbage", "Bearer not.a.token".to_string(), "not accepted"),
        ("basic auth", "Basic ZW1yOnNlY3JldA==".to_string(), "not a Bearer token"),
    ] {
        let challenge = expect_401(get_with(&gateway, &path, Some(&authorization)).await).await;
        assert!(challenge.contains("error=\"invalid_token\""), "{case}: {challenge}");
        assert!(challenge.contains(reason), "{case}: {challenge}");
    }
    // A refused request changes nothing and reveals nothing: the body names the check only.
    let body = json_body(get_with(&gateway, &path, Some(&format!("Bearer {}", rs256(&other_audience)))).await).await;
    assert!(!body.to_string().contains("female"), "{body}");
}

#[tokio::test]
async fn the_development_issuer_can_be_turned_off_and_anonymous_access_turned_on() {
    let strict = Gateway::start_with(&["--dev-issuer", "false", "--anonymous", "false"]).await;
    let token = strict.token(&[]);
    expect_401(get_with(&strict, "Patient", Some(&format!("Bearer {token}"))).await).await;

    let open = Gateway::start_with(&["--anonymous", "true"]).await;
    assert_eq!(get_with(&open, "Patient", None).await.status(), 200);
    // A token that is sent is still checked.
    expect_401(get_with(&open, "Patient", Some("Bearer not.a.token")).await).await;
}

#[tokio::test]
async fn smart_configuration_is_served_when_configured_and_checked_at_start() {
    let unconfigured = Gateway::start().await;
    let missing = get_with(&unconfigured, ".well-known/smart-configuration", None).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(json_body(missing).await["resourceType"], "OperationOutcome");

    let document = json!({
        "issuer": "https://auth.example.org",
        "authorization_endpoint": "https://auth.example.org/authorize",
        "token_endpoint": "https://auth.example.org/token",
        "capabilities": ["launch-standalone", "client-public", "permission-v2", "permission-patient"],
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code"],
    });
    let file = crate::harness::TempDir::new("smart");
    let path = file.path().join("smart-configuration.json");
    std::fs::write(&path, document.to_string()).unwrap();
    let configured = Gateway::start_with(&["--smart-configuration", path.to_str().unwrap()]).await;
    let served = get_with(&configured, ".well-known/smart-configuration", None).await;
    assert_eq!(served.status(), 200, "public: no token needed");
    assert_eq!(served.headers()["content-type"], "application/json");
    assert_eq!(serde_json::from_str::<Value>(&served.text().await.unwrap()).unwrap(), document);
    // The CapabilityStatement points clients at the same authorisation server.
    let statement = json_body(get_with(&configured, "metadata", None).await).await;
    let uris = &statement["rest"][0]["security"]["extension"][0];
    assert_eq!(uris["url"], "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris");
    assert_eq!(uris["extension"][0], json!({"url": "authorize", "valueUri": "https://auth.example.org/authorize"}));
    assert_eq!(uris["extension"][1], json!({"url": "token", "valueUri": "https://auth.example.org/token"}));

    // A document without a required field stops the gateway at start, naming the field.
    let broken = file.path().join("broken.json");
    let mut incomplete = document.clone();
    incomplete.as_object_mut().unwrap().remove("token_endpoint");
    std::fs::write(&broken, incomplete.to_string()).unwrap();
    let output = std::process::Command::new(crate::harness::binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(file.path().join("data"))
        .arg("--smart-configuration")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("token_endpoint"), "{}", String::from_utf8_lossy(&output.stderr));
}

/// A loopback authorisation server: `GET /jwks` serves the keys in `published`, `POST
/// /introspect` answers RFC 7662 requests (with HTTP Basic client credentials) from `answers`.
struct AuthorizationServer {
    url: String,
    published: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    jwks_fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    introspections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl AuthorizationServer {
    async fn start(published_kids: &[&str], answers: Vec<(&'static str, Value)>) -> AuthorizationServer {
        use axum::routing::{get, post};
        use std::sync::atomic::Ordering;
        let published = std::sync::Arc::new(std::sync::Mutex::new(published_kids.iter().map(|kid| kid.to_string()).collect::<Vec<_>>()));
        let jwks_fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let introspections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let all: Value = serde_json::from_str(&fixture("test-issuer.jwks.json")).unwrap();
        let jwks = {
            let (published, fetches) = (published.clone(), jwks_fetches.clone());
            move || {
                fetches.fetch_add(1, Ordering::SeqCst);
                let kids = published.lock().unwrap().clone();
                let keys: Vec<Value> =
                    all["keys"].as_array().unwrap().iter().filter(|key| kids.iter().any(|kid| key["kid"] == **kid)).cloned().collect();
                async move { json!({ "keys": keys }).to_string() }
            }
        };
        let introspect = {
            let counter = introspections.clone();
            move |headers: axum::http::HeaderMap, body: String| {
                counter.fetch_add(1, Ordering::SeqCst);
                let authorized = headers.get("authorization").and_then(|value| value.to_str().ok())
                    == Some(&format!("Basic {}", base64_encode("fhir-gateway:s3cret")));
                let token = body.split('&').find_map(|pair| pair.strip_prefix("token=")).unwrap_or_default().to_string();
                let answer =
                    answers.iter().find(|(known, _)| *known == token).map_or(json!({"active": false}), |(_, answer)| answer.clone());
                async move {
                    let status = if authorized { axum::http::StatusCode::OK } else { axum::http::StatusCode::UNAUTHORIZED };
                    (status, [(axum::http::header::CONTENT_TYPE, "application/json")], answer.to_string())
                }
            }
        };
        let router = axum::Router::new().route("/jwks", get(jwks)).route("/introspect", post(introspect));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        AuthorizationServer { url, published, jwks_fetches, introspections, task }
    }
}

impl Drop for AuthorizationServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn signed(algorithm: Algorithm, kid: &str, pem: &str, claims: &Value) -> String {
    let key = match algorithm {
        Algorithm::ES256 => EncodingKey::from_ec_pem(fixture(pem).as_bytes()).unwrap(),
        _ => EncodingKey::from_rsa_pem(fixture(pem).as_bytes()).unwrap(),
    };
    jsonwebtoken::encode(&Header { kid: Some(kid.into()), ..Header::new(algorithm) }, claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_keys_are_fetched_by_url_and_again_when_a_new_key_appears() {
    use std::sync::atomic::Ordering;
    let server = AuthorizationServer::start(&["test-es256"], Vec::new()).await;
    let gateway = Gateway::start_with(&["--trust-issuer", &format!("{TEST_ISSUER}={}/jwks", server.url)]).await;
    assert_eq!(server.jwks_fetches.load(Ordering::SeqCst), 1, "fetched once at start");
    let es256 = signed(Algorithm::ES256, "test-es256", "test-es256.pem", &claims(&gateway));
    assert_eq!(get_with(&gateway, "Patient", Some(&format!("Bearer {es256}"))).await.status(), 200);

    // The issuer rotates to an RSA key: the first token naming it makes the gateway fetch again.
    server.published.lock().unwrap().push("test-rsa".into());
    assert_eq!(get_with(&gateway, "Patient", Some(&format!("Bearer {}", rs256(&claims(&gateway))))).await.status(), 200);
    assert_eq!(server.jwks_fetches.load(Ordering::SeqCst), 2);
    // Unknown key ids do not make the gateway hammer the issuer (at most one fetch per 30 s).
    for _ in 0..3 {
        let unknown = signed(Algorithm::RS256, "never-published", "test-rsa.pem", &claims(&gateway));
        expect_401(get_with(&gateway, "Patient", Some(&format!("Bearer {unknown}"))).await).await;
    }
    assert_eq!(server.jwks_fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_introspected_and_cached_briefly() {
    use std::sync::atomic::Ordering;
    // The base URL is fixed so the introspection answers can name it as `aud`.
    let port = crate::harness::free_port();
    let base = format!("http://127.0.0.1:{port}/fhir");
    let active = json!({"active": true, "aud": base, "exp": now() + 300, "client_id": "emr", "sub": "engine",
        "scope": "system/*.cruds", "organization": "Organization/local", "purpose_of_use": "TREAT"});
    let elsewhere = json!({"active": true, "aud": "https://other.example/fhir", "exp": now() + 300, "scope": "system/*.cruds"});
    let server = AuthorizationServer::start(&[], vec![("opaque-good", active), ("opaque-elsewhere", elsewhere)]).await;
    let endpoint = format!("{}/introspect", server.url);
    let gateway = Gateway::start_on(
        port,
        &["--introspection-endpoint", &endpoint, "--introspection-client-id", "fhir-gateway", "--introspection-client-secret", "s3cret"],
    )
    .await;
    let created = json_body(gateway.post("Patient", &json!({"resourceType": "Patient", "gender": "other"})).await).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());
    for _ in 0..3 {
        assert_eq!(get_with(&gateway, &path, Some("Bearer opaque-good")).await.status(), 200);
    }
    assert_eq!(server.introspections.load(Ordering::SeqCst), 1, "answers are remembered");
    let inactive = expect_401(get_with(&gateway, &path, Some("Bearer opaque-revoked")).await).await;
    assert!(inactive.contains("not active"), "{inactive}");
    // A refusal is remembered: replaying the revoked token does not ask again.
    expect_401(get_with(&gateway, &path, Some("Bearer opaque-revoked")).await).await;
    assert_eq!(server.introspections.load(Ordering::SeqCst), 2);
    let audience = expect_401(get_with(&gateway, &path, Some("Bearer opaque-elsewhere")).await).await;
    assert!(audience.contains("aud"), "{audience}");
    // JWTs are still verified locally, never sent to the endpoint.
    let before = server.introspections.load(Ordering::SeqCst);
    expect_401(get_with(&gateway, &path, Some(&format!("Bearer {}", rs256(&claims(&gateway))))).await).await;
    assert_eq!(server.introspections.load(Ordering::SeqCst), before);
}

#[test]
fn keys_and_introspection_are_fetched_over_https_only_except_on_loopback() {
    let data = crate::harness::TempDir::new("plain-http");
    for flags in [
        vec!["--trust-issuer", "https://issuer.test=http://issuer.example.org/jwks"],
        vec!["--introspection-endpoint", "http://issuer.example.org/introspect"],
    ] {
        let output = std::process::Command::new(crate::harness::binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(&flags)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{flags:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("https://"), "{}", String::from_utf8_lossy(&output.stderr));
    }
}
