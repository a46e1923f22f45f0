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
