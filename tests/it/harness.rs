//! Starts and stops real gateway processes for tests: `Gateway::start()` spawns the binary on a
//! free loopback port with a fresh data directory, waits for `/healthz`, and stops it on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const FHIR_JSON: &str = "application/fhir+json";

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path =
            std::env::temp_dir().join(format!("fhir-gateway-it-{label}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A path beside `directory` (not inside it: the data directory holds only the gateway's files).
fn tempfile_beside(directory: &Path, suffix: &str) -> PathBuf {
    let mut name = directory.file_name().expect("a named directory").to_os_string();
    name.push(format!(".{suffix}"));
    directory.with_file_name(name)
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_fhir-gateway")
}

/// The shared corpora (`../shared/corpora` beside the project).
pub fn corpora() -> PathBuf {
    std::env::var_os("FHIR_GATEWAY_CORPORA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub struct Gateway {
    pub port: u16,
    pub data: TempDir,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// Listen on this port (tests that must know the base URL before the start).
    fixed_port: Option<u16>,
    pub http: reqwest::Client,
}

impl Gateway {
    pub async fn start() -> Gateway {
        Gateway::start_with(&[]).await
    }

    pub async fn start_with(extra_args: &[&str]) -> Gateway {
        Gateway::start_at(None, extra_args).await
    }

    /// Starts on a port chosen by the test (see [`free_port`]).
    pub async fn start_on(port: u16, extra_args: &[&str]) -> Gateway {
        Gateway::start_at(Some(port), extra_args).await
    }

    async fn start_at(fixed_port: Option<u16>, extra_args: &[&str]) -> Gateway {
        let mut gateway = Gateway {
            port: 0,
            data: TempDir::new("data"),
            child: None,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            fixed_port,
            http: reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client"),
        };
        gateway.spawn().await;
        gateway
    }

    async fn spawn(&mut self) {
        for _attempt in 0..5 {
            self.port = self.fixed_port.unwrap_or_else(free_port);
            let child = self.serve_command().stderr(Stdio::inherit()).spawn().expect("spawn fhir-gateway");
            self.child = Some(child);
            if self.wait_ready().await {
                self.authorize();
                return;
            }
            self.kill9();
        }
        panic!("the gateway did not become ready");
    }

    /// `fhir-gateway serve` on this gateway's port and data directory (stderr is the caller's).
    fn serve_command(&self) -> Command {
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(self.data.path())
            .args(&self.extra_args)
            .env("FHIR_GATEWAY_LOG", "warn")
            .stdout(Stdio::null());
        command
    }

    /// Every request of the tests carries a token from the development issuer (a
    /// backend-service token: the tests act as an EMR); tests of authentication and consent
    /// send their own.
    fn authorize(&mut self) {
        let token = self.token(&["--scope", "system/*.cruds"]);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header value"));
        self.http = reqwest::Client::builder().pool_max_idle_per_host(64).default_headers(headers).build().expect("client");
    }

    /// Starts the gateway again on its data directory, once: `Err(stderr)` if the process exits
    /// instead of becoming ready (it refused to start).
    pub async fn try_start_again(&mut self) -> Result<(), String> {
        self.kill9();
        self.port = self.fixed_port.unwrap_or_else(free_port);
        let log = tempfile_beside(self.data.path(), "stderr");
        let child = self.serve_command().stderr(std::fs::File::create(&log).expect("stderr file")).spawn().expect("spawn fhir-gateway");
        self.child = Some(child);
        let ready = self.wait_ready().await;
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        if ready {
            self.authorize();
            return Ok(());
        }
        let exited = self.child.as_mut().is_some_and(|child| child.try_wait().expect("try_wait").is_some());
        self.kill9();
        assert!(exited, "the gateway neither became ready nor exited; stderr:\n{stderr}");
        Err(stderr)
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().expect("try_wait").is_some()
            {
                return false;
            }
            if let Ok(response) = self.http.get(format!("{}/healthz", self.root())).send().await
                && response.status().is_success()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// A token minted by `fhir-gateway token` for this gateway's base (`extra` adds flags such
    /// as `--scope`, `--patient`, `--minutes`, or another `--aud`).
    pub fn token(&self, extra: &[&str]) -> String {
        let base = self.base();
        let audience: &[&str] = if extra.contains(&"--aud") { &[] } else { &["--aud", &base] };
        let output = Command::new(binary())
            .arg("token")
            .arg("--data-dir")
            .arg(self.data.path())
            .args(audience)
            .args(extra)
            .output()
            .expect("run fhir-gateway token");
        assert!(output.status.success(), "fhir-gateway token: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("UTF-8").trim().to_string()
    }

    pub fn root(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The FHIR base URL.
    pub fn base(&self) -> String {
        format!("{}/fhir", self.root())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base(), path.trim_start_matches('/'))
    }

    /// Graceful stop (SIGTERM), waiting for the process to exit; how long it took.
    pub fn stop(&mut self) -> Duration {
        let started = Instant::now();
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if child.try_wait().expect("try_wait").is_some() {
                    return started.elapsed();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway did not stop within 20 s of SIGTERM");
        }
        started.elapsed()
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    pub async fn start_again_after_kill(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http.post(self.url(path)).header("content-type", FHIR_JSON).body(body.to_string()).send().await.expect("POST")
    }

    pub async fn put(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http.put(self.url(path)).header("content-type", FHIR_JSON).body(body.to_string()).send().await.expect("PUT")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("GET")
    }

    /// Runs the binary's `verify` on this data directory (the gateway may be stopped or running).
    pub fn verify(&self) -> (bool, String) {
        let output = Command::new(binary()).arg("verify").arg("--data-dir").arg(self.data.path()).output().expect("run verify");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Reads a JSON body, asserting the FHIR media type.
pub async fn json_body(response: reqwest::Response) -> serde_json::Value {
    let content_type = response.headers().get("content-type").map(|value| value.to_str().unwrap().to_string());
    let text = response.text().await.expect("body");
    assert!(
        content_type.as_deref().is_some_and(|value| value.starts_with("application/fhir+json")),
        "content-type {content_type:?} for body {text}"
    );
    serde_json::from_str(&text).expect("JSON body")
}

/// Asserts that a response is an OperationOutcome error with this status; returns its text.
pub async fn expect_outcome(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let body = json_body(response).await;
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert_eq!(body["issue"][0]["severity"], "error", "{body}");
    body.to_string()
}

/// xorshift64*: a deterministic, dependency-free generator for the bounded fuzz loops.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The entries of a response Bundle. FHIR JSON has no empty arrays: a Bundle without entries
/// has no `entry` element.
pub fn entries(bundle: &serde_json::Value) -> &[serde_json::Value] {
    match bundle.get("entry") {
        None => &[],
        Some(entry) => {
            let entries = entry.as_array().expect("entry is an array");
            assert!(!entries.is_empty(), "an empty entry array: {bundle}");
            entries
        }
    }
}
