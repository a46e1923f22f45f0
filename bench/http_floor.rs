//! The HTTP floor under the create benchmarks: what a create costs this machine before the
//! gateway does anything. Same stack as `serve` (axum 0.8 on hyper, a multi-threaded Tokio
//! runtime, mimalloc), but the handler only answers.
//!
//! ```text
//! cargo run --release --example http_floor -- [--listen 127.0.0.1:8099] [--mode echo|json]
//! ```
//!
//! `POST /fhir/{type}` (and `POST /fhir`) reads the body and answers `201 Created` with
//! `Location`, `ETag` and `Last-Modified`, like a create with `Prefer: return=representation`:
//! `echo` sends the request body back; `json` also parses it into a `serde_json::Value` and
//! serialises that (the JSON floor). `bench/floor.sh` drives it with the same wrk script and
//! per-request CPU accounting as the create scenarios (docs/BENCHMARKS.md).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy)]
enum Mode {
    Echo,
    Json,
}

async fn create(State(mode): State<Mode>, path: Option<Path<String>>, body: Bytes) -> impl IntoResponse {
    let resource_type = path.map_or_else(|| "Bundle".to_string(), |Path(resource_type)| resource_type);
    let body = match mode {
        Mode::Echo => body,
        Mode::Json => match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(value) => Bytes::from(serde_json::to_vec(&value).expect("a Value serialises")),
            Err(_) => return (StatusCode::BAD_REQUEST, HeaderMap::new(), Bytes::new()),
        },
    };
    let mut headers = HeaderMap::new();
    let location = format!("/fhir/{resource_type}/00000000-0000-4000-8000-000000000000/_history/1");
    headers.insert(header::LOCATION, HeaderValue::from_str(&location).expect("an ASCII location"));
    headers.insert(header::ETAG, HeaderValue::from_static("W/\"1\""));
    headers.insert(header::LAST_MODIFIED, HeaderValue::from_static("Sun, 22 Nov 2026 04:00:00 GMT"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+json"));
    (StatusCode::CREATED, headers, body)
}

fn main() {
    let mut listen = "127.0.0.1:8099".to_string();
    let mut mode = Mode::Echo;
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        match (argument.as_str(), arguments.next()) {
            ("--listen", Some(value)) => listen = value,
            ("--mode", Some(value)) if value == "echo" => mode = Mode::Echo,
            ("--mode", Some(value)) if value == "json" => mode = Mode::Json,
            _ => {
                eprintln!("usage: http_floor [--listen 127.0.0.1:8099] [--mode echo|json]");
                std::process::exit(2);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a Tokio runtime");
    runtime.block_on(async {
        let app = Router::new().route("/fhir", post(create)).route("/fhir/{type}", post(create)).with_state(mode);
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("the address is free");
        axum::serve(listener, app).await.expect("serving");
    });
}
