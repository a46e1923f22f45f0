//! Availability under hostile or broken clients (issue #17, B and D19): nothing a client sends,
//! or fails to send, holds the gateway's shared resources for longer than its configured limits.
//! These tests speak raw HTTP/1.1 over TCP where a real client would not misbehave on purpose.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{FHIR_JSON, Gateway};

/// Sends `head` (and `body`) on a fresh connection; the connection stays open for the caller.
async fn raw(gateway: &Gateway, head: &str, body: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", gateway.port)).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send head");
    stream.write_all(body).await.expect("send body");
    stream
}

/// The status code of the response read from `stream` within `within`.
async fn status_of(stream: &mut TcpStream, within: Duration) -> u16 {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + within;
    while !answer.windows(4).any(|window| window == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(read)) => answer.extend_from_slice(&buffer[..read]),
            Ok(Err(error)) => panic!("reading the answer: {error}"),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("no HTTP answer within {within:?}: {text:?}"))
}

/// Whether the server closes `stream` within `within` (reads until end of stream).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn small_transaction() -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "female"}, "request": {"method": "POST", "url": "Patient"}},
    ]})
}

#[tokio::test]
async fn an_announced_bundle_body_that_never_comes_blocks_no_one_and_times_out() {
    let gateway = Gateway::start_with(&["--body-read-timeout-secs", "2"]).await;
    // A token that grants nothing is refused before its body is awaited.
    let nothing = gateway.token(&["--scope", "openid"]);
    let head = |token: &str| {
        format!(
            "POST /fhir HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: {FHIR_JSON}\r\nContent-Length: 8388608\r\n\r\n"
        )
    };
    let mut refused = raw(&gateway, &head(&nothing), b"").await;
    assert_eq!(status_of(&mut refused, Duration::from_secs(1)).await, 403, "refused without waiting for the body");
    // Three stalled Bundles of 8 MiB each, announced by a token that may write.
    let token = gateway.token(&[]);
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(raw(&gateway, &head(&token), b"{").await);
    }
    let started = Instant::now();
    let answer =
        gateway.http.post(gateway.base()).header("content-type", FHIR_JSON).body(small_transaction().to_string()).send().await.unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    assert!(started.elapsed() < Duration::from_secs(1), "a transaction waited {:?} behind stalled bodies", started.elapsed());
    for stream in &mut stalled {
        assert_eq!(status_of(stream, Duration::from_secs(10)).await, 408, "a body that does not arrive in time");
    }
}

#[tokio::test]
async fn a_connection_that_sends_its_headers_too_slowly_or_sits_idle_is_closed() {
    let gateway = Gateway::start_with(&["--header-read-timeout-secs", "1"]).await;
    let mut slow = raw(&gateway, "GET /fhir/metadata HTTP/1.1\r\nHo", b"").await;
    let mut idle = raw(&gateway, "", b"").await;
    assert!(closed_within(&mut slow, Duration::from_secs(5)).await, "a half-sent header is cut off");
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await, "an idle connection is closed");
    // Control: a prompt client is served.
    assert_eq!(reqwest::get(gateway.url("metadata")).await.unwrap().status(), 200);
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_is_free() {
    let gateway = Gateway::start_with(&["--max-connections", "2", "--header-read-timeout-secs", "2"]).await;
    let mut idle = vec![raw(&gateway, "", b"").await, raw(&gateway, "", b"").await];
    let started = Instant::now();
    let client = reqwest::Client::new();
    let answer = client.get(gateway.url("metadata")).timeout(Duration::from_secs(15)).send().await.expect("served once a slot frees");
    assert_eq!(answer.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(500), "served at once ({:?}) although both slots were taken", started.elapsed());
    for stream in &mut idle {
        assert!(closed_within(stream, Duration::from_secs(5)).await);
    }
}

#[tokio::test]
async fn a_malformed_chunked_body_is_a_bad_request_not_a_size_error() {
    let gateway = Gateway::start().await;
    let token = gateway.token(&[]);
    let head = format!(
        "POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: {FHIR_JSON}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let mut stream = raw(&gateway, &head, b"zz\r\n{}\r\n0\r\n\r\n").await;
    assert_eq!(status_of(&mut stream, Duration::from_secs(5)).await, 400);
}

#[tokio::test]
async fn a_body_over_the_limit_gets_its_413_instead_of_a_broken_pipe() {
    let gateway = Gateway::start().await;
    let limit = 16 * 1024 * 1024;
    for (what, length) in [("declared", limit + 1), ("declared and far over", 2 * limit)] {
        let body = vec![b' '; length];
        let answer = gateway.http.post(gateway.url("Patient")).header("content-type", FHIR_JSON).body(body).send().await;
        let answer = answer.unwrap_or_else(|error| panic!("{what}: the client saw {error} instead of an answer"));
        assert_eq!(answer.status(), 413, "{what}");
    }
}

#[tokio::test]
async fn healthz_names_every_component() {
    let gateway = Gateway::start().await;
    let answer = reqwest::get(format!("{}/healthz", gateway.root())).await.unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body, json!({"status": "ok", "components": {"store": "ok", "search": "ok", "audit": "ok"}}));
}

#[tokio::test]
async fn the_indexer_recovers_from_a_failing_index_directory_and_healthz_says_so_meanwhile() {
    let mut gateway = Gateway::start().await;
    let patient = |family: &str| json!({"resourceType": "Patient", "name": [{"family": family}]});
    assert_eq!(gateway.post("Patient", &patient("Before")).await.status(), 201);
    assert_eq!(gateway.get("Patient?family=before").await.status(), 200, "searchable, so the index is committed");
    // The index directory disappears under the indexer (root ignores permissions, so a file
    // stands in its place): its next commit fails.
    let index = gateway.data.path().join("index");
    let away = gateway.data.path().join("index.away");
    std::fs::rename(&index, &away).unwrap();
    std::fs::write(&index, b"not a directory").unwrap();
    assert_eq!(gateway.post("Patient", &patient("During")).await.status(), 201, "writes go on");
    let health = |gateway: &Gateway| {
        let url = format!("{}/healthz", gateway.root());
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&gateway).await == 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health(&gateway).await, 503, "/healthz names the failing index");
    // Still failing (the rebuild cannot write while the directory is away), and saying when to retry.
    let answer = reqwest::get(format!("{}/healthz", gateway.root())).await.unwrap();
    assert_eq!((answer.status().as_u16(), answer.headers()["retry-after"].to_str().unwrap()), (503, "1"));
    std::fs::remove_file(&index).unwrap();
    std::fs::rename(&away, &index).unwrap();
    assert_eq!(gateway.post("Patient", &patient("After")).await.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(60);
    while health(&gateway).await != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(health(&gateway).await, 200, "recovered without a restart");
    for family in ["before", "during", "after"] {
        let found: Value = gateway.get(&format!("Patient?family={family}")).await.json().await.unwrap();
        assert_eq!(found["total"], 1, "{family}: {found}");
    }
    gateway.stop();
}

#[tokio::test]
async fn single_resource_bodies_share_a_bounded_budget_and_a_stalled_one_holds_only_what_arrived() {
    let gateway = Gateway::start_with(&["--body-bytes-in-flight", "65536", "--body-read-timeout-secs", "2"]).await;
    let token = gateway.token(&[]);
    let head = |length: usize| {
        format!(
            "POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: {FHIR_JSON}\r\nContent-Length: {length}\r\n\r\n"
        )
    };
    // A stalled body that has sent one byte holds 16 KiB of the 64 KiB: others go on at once.
    let mut stalled = raw(&gateway, &head(1_000_000), b"{").await;
    let started = Instant::now();
    let small = json!({"resourceType": "Patient", "gender": "female"});
    assert_eq!(gateway.post("Patient", &small).await.status(), 201);
    assert!(started.elapsed() < Duration::from_secs(1), "waited {:?}", started.elapsed());
    // One that has sent 60 KB holds nearly all of it: the next body waits until it times out.
    let mut large = raw(&gateway, &head(1_000_000), &[b' '; 60_000]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let padded = json!({"resourceType": "Patient", "gender": "male", "name": [{"text": "p".repeat(20_000)}]});
    assert_eq!(gateway.post("Patient", &padded).await.status(), 201);
    assert!(started.elapsed() >= Duration::from_millis(500), "served at once ({:?}) with the budget taken", started.elapsed());
    for stream in [&mut stalled, &mut large] {
        assert_eq!(status_of(stream, Duration::from_secs(10)).await, 408);
    }
}
