//! Configuration: command-line flags, then `FHIR_GATEWAY_*` environment variables, then an
//! optional TOML file (`--config`), then the embedded defaults. Nothing here is secret: keys live
//! in the data directory, never in configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::api::Limits;
use crate::store::StoreOptions;

/// The token scope `Patient/$purge` needs unless `--purge-scope` names another.
pub const DEFAULT_PURGE_SCOPE: &str = "system/Patient.$purge";
#[derive(Debug, Parser)]
#[command(
    name = "fhir-gateway",
    version,
    about = "A FHIR R4 gateway: every write sealed, stored by IPFS CID and anchored in a signed Merkle log"
)]
pub struct Cli {
    /// A TOML configuration file (see README "Configuration").
    #[arg(long, global = true, env = "FHIR_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (HTTP on the listen address).
    Serve(Box<ServeArgs>),
    /// Check the whole data directory offline: Merkle tree, signatures, checkpoints, every blob.
    Verify(DataArgs),
    /// Load Bundles, resources and bulk-data ndjson (files or directories) through the write path
    /// (gateway stopped).
    Import(ImportArgs),
    /// Drop the search index and rebuild it from the store (gateway stopped).
    Reindex(DataArgs),
    /// Shrink the derived B-tree stores (catalog, pack index, patient key index, audit index) to
    /// what they hold (gateway stopped; `import` does it at its end).
    Compact(DataArgs),
    /// Manage key-encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Mint an access token from the development issuer (its key is in the data directory).
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// The FHIR base URL the token is for (`aud`)
    #[arg(long, default_value = "http://127.0.0.1:8080/fhir")]
    pub aud: String,
    /// SMART scopes, space separated
    #[arg(long, default_value = "system/*.cruds")]
    pub scope: String,
    /// The patient in context (`patient` claim), a Patient id
    #[arg(long)]
    pub patient: Option<String>,
    /// The user (`fhirUser` claim), e.g. Practitioner/123
    #[arg(long)]
    pub fhir_user: Option<String>,
    /// The subject (`sub`)
    #[arg(long, default_value = "developer")]
    pub sub: String,
    /// Lifetime in minutes
    #[arg(long, default_value_t = 60)]
    pub minutes: u64,
    /// The requester's organisation (`organization` claim); records written with the token are
    /// authored by it. Empty: none
    #[arg(long, default_value = "Organization/local")]
    pub organization: String,
    /// Purposes of use (`purpose_of_use` claim), v3-ActReason codes, comma separated. Empty: none
    #[arg(long, default_value = "TREAT")]
    pub purpose: String,
    /// The user's roles (`subject_role` claim), comma separated, e.g. an emergency role
    #[arg(long, default_value = "")]
    pub role: String,
    /// The reason stated for a break-the-glass read (`break_glass_reason` claim)
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a new KEK, re-wrap every data key under it and retire the old ones (gateway stopped).
    Rotate(DataArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Accept unknown elements and reference target types as warnings (Prefer: handling=lenient)
    #[arg(long)]
    pub lenient: bool,
    /// The organisation the imported records are authored by (it reads them for treatment
    /// under the consent rules). Empty: none
    #[arg(long, default_value = "Organization/local")]
    pub organization: String,
    /// Files (.json Bundle or resource, .ndjson) or directories of them
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DataArgs {
    /// The data directory [default: ./data]
    #[arg(long, env = "FHIR_GATEWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "FHIR_GATEWAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The data directory [default: ./data]
    #[arg(long, env = "FHIR_GATEWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The FHIR base URL clients use [default: http://<listen>/fhir]
    #[arg(long, env = "FHIR_GATEWAY_BASE_URL")]
    pub base_url: Option<String>,
    /// Largest accepted request body in bytes [default: 16777216]
    #[arg(long, env = "FHIR_GATEWAY_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Seconds a request body may take to arrive after its headers (then 408) [default: 30]
    #[arg(long, env = "FHIR_GATEWAY_BODY_READ_TIMEOUT_SECS")]
    pub body_read_timeout_secs: Option<u64>,
    /// Seconds a connection may take to send a request's headers, or stay idle between
    /// requests, before it is closed [default: 10]
    #[arg(long, env = "FHIR_GATEWAY_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// Open connections at most; more wait in the listen backlog (also kept below half the
    /// descriptor limit) [default: 4096]
    #[arg(long, env = "FHIR_GATEWAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Bytes of single-resource request bodies read and processed at once; more wait [default: 33554432]
    #[arg(long, env = "FHIR_GATEWAY_BODY_BYTES_IN_FLIGHT")]
    pub body_bytes_in_flight: Option<usize>,
    /// MiB the catalog takes, however many records it holds: its B-tree page cache and (a
    /// quarter) its cache of current versions [default: 64]
    #[arg(long, env = "FHIR_GATEWAY_CACHE_MB")]
    pub cache_mb: Option<usize>,
    /// Issue a checkpoint at least every N ledger entries [default: 1000]
    #[arg(long, env = "FHIR_GATEWAY_CHECKPOINT_EVERY_ENTRIES")]
    pub checkpoint_every_entries: Option<u64>,
    /// ... and at least every T milliseconds while entries are uncovered [default: 1000]
    #[arg(long, env = "FHIR_GATEWAY_CHECKPOINT_INTERVAL_MS")]
    pub checkpoint_interval_ms: Option<u64>,
    /// The checkpoint origin line [default: localhost/fhir-gateway/<key id>]
    #[arg(long, env = "FHIR_GATEWAY_LEDGER_ORIGIN")]
    pub ledger_origin: Option<String>,
    /// Log format
    #[arg(long, env = "FHIR_GATEWAY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Serve requests without an access token (off by default; for closed test setups only)
    #[arg(long, env = "FHIR_GATEWAY_ANONYMOUS")]
    pub anonymous: Option<bool>,
    /// Trust tokens minted by `fhir-gateway token` from this data directory [default: true]
    #[arg(long, env = "FHIR_GATEWAY_DEV_ISSUER")]
    pub dev_issuer: Option<bool>,
    /// Trust an authorisation server: ISSUER=JWKS_FILE or ISSUER=https://…/jwks (repeatable)
    #[arg(long = "trust-issuer", value_name = "ISSUER=JWKS_FILE_OR_URL")]
    pub trust_issuers: Vec<String>,
    /// RFC 7662 token introspection endpoint for opaque (non-JWT) access tokens
    #[arg(long, env = "FHIR_GATEWAY_INTROSPECTION_ENDPOINT")]
    pub introspection_endpoint: Option<String>,
    /// The gateway's client id at the introspection endpoint (HTTP Basic)
    #[arg(long, env = "FHIR_GATEWAY_INTROSPECTION_CLIENT_ID")]
    pub introspection_client_id: Option<String>,
    /// Its client secret (prefer the environment variable)
    #[arg(long, env = "FHIR_GATEWAY_INTROSPECTION_CLIENT_SECRET", hide_env_values = true)]
    pub introspection_client_secret: Option<String>,
    /// The authorisation server's SMART metadata (JSON), served at [base]/.well-known/smart-configuration
    #[arg(long, env = "FHIR_GATEWAY_SMART_CONFIGURATION")]
    pub smart_configuration: Option<PathBuf>,
    /// When AuditEvents are durable: before-response (each request waits for the group's sync)
    /// or grouped (within milliseconds, not awaited) [default: grouped]
    #[arg(long, env = "FHIR_GATEWAY_AUDIT_DURABILITY")]
    pub audit_durability: Option<crate::audit::Durability>,
    /// A read of a resource the caller may not see answers not-found (404, as for an unknown id)
    /// or forbidden (403) [default: not-found]
    #[arg(long, env = "FHIR_GATEWAY_DENIED_READS")]
    pub denied_reads: Option<crate::access::DeniedReads>,
    /// Roles with which a practitioner or related person may record a Consent for a patient,
    /// comma separated [default: none]
    #[arg(long, env = "FHIR_GATEWAY_CONSENT_RECORDER_ROLES")]
    pub consent_recorder_roles: Option<String>,
    /// Organisations whose backend services (`system/` tokens with this `organization` claim) may
    /// record a Consent for a patient, comma separated; empty: none [default: Organization/local]
    #[arg(long, env = "FHIR_GATEWAY_CONSENT_RECORDER_ORGANIZATIONS")]
    pub consent_recorder_organizations: Option<String>,
    /// The token scope that allows `POST Patient/[id]/$purge` (erasing a patient's records); no
    /// resource scope implies it [default: system/Patient.$purge]
    #[arg(long, env = "FHIR_GATEWAY_PURGE_SCOPE")]
    pub purge_scope: Option<String>,
    /// An issuer whose tokens with only patient/ scopes and a `patient` claim are the patient's
    /// own app even without a `fhirUser` claim (repeatable) [default: none]
    #[arg(long = "patient-facing-issuer", value_name = "ISSUER")]
    pub patient_facing_issuers: Vec<String>,
    /// Roles (token `subject_role` codes) that may break the glass, comma separated [default: none]
    #[arg(long, env = "FHIR_GATEWAY_EMERGENCY_ROLES")]
    pub emergency_roles: Option<String>,
    /// The organisation that wrote a record may read it for treatment without a Consent [default: true]
    #[arg(long, env = "FHIR_GATEWAY_AUTHOR_ORG_TREATMENT")]
    pub author_org_treatment: Option<bool>,
}

/// The TOML file's shape; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub base_url: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub body_read_timeout_secs: Option<u64>,
    pub header_read_timeout_secs: Option<u64>,
    pub max_connections: Option<usize>,
    pub body_bytes_in_flight: Option<usize>,
    pub cache_mb: Option<usize>,
    pub log_format: Option<LogFormat>,
    pub audit_durability: Option<crate::audit::Durability>,
    #[serde(default)]
    pub ledger: FileLedgerConfig,
    #[serde(default)]
    pub auth: FileAuthConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuthConfig {
    pub anonymous: Option<bool>,
    pub dev_issuer: Option<bool>,
    #[serde(default)]
    pub issuers: Vec<FileIssuer>,
    pub smart_configuration: Option<PathBuf>,
    pub emergency_roles: Option<Vec<String>>,
    pub author_org_treatment: Option<bool>,
    pub denied_reads: Option<crate::access::DeniedReads>,
    pub consent_recorder_roles: Option<Vec<String>>,
    pub consent_recorder_organizations: Option<Vec<String>>,
    pub patient_facing_issuers: Option<Vec<String>>,
    pub purge_scope: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIssuer {
    pub issuer: String,
    /// A file path or an `http(s)://` URL.
    pub jwks_file: PathBuf,
}

/// Who may call the API (issue #4; README "Access tokens").
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub anonymous: bool,
    pub dev_issuer: bool,
    /// `(issuer, JWKS file)`
    pub issuers: Vec<(String, PathBuf)>,
    /// SMART configuration document of the authorisation server (served as is, once checked).
    pub smart_configuration: Option<PathBuf>,
    /// `(endpoint, client id, client secret)` of RFC 7662 introspection.
    pub introspection: Option<(String, Option<String>, Option<String>)>,
    /// Roles that may break the glass (docs/CONSENT.md).
    pub emergency_roles: Vec<String>,
    /// The author-organisation default of the consent decision (docs/CONSENT.md).
    pub author_org_treatment: bool,
    pub denied_reads: crate::access::DeniedReads,
    /// Roles that may record Consents on a patient's behalf (docs/CONSENT.md).
    pub consent_recorder_roles: Vec<String>,
    /// Organisations whose backend services may record Consents (docs/CONSENT.md).
    pub consent_recorder_organizations: Vec<String>,
    /// Issuers whose patient-only tokens are the patient's own app (docs/CONSENT.md).
    pub patient_facing_issuers: Vec<String>,
    /// The scope `Patient/$purge` needs (docs/ERASURE.md).
    pub purge_scope: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLedgerConfig {
    pub origin: Option<String>,
    pub checkpoint_every_entries: Option<u64>,
    pub checkpoint_interval_ms: Option<u64>,
}

/// The resolved configuration of `serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub base_url: Option<String>,
    pub limits: Limits,
    pub store: StoreOptions,
    pub log_format: LogFormat,
    pub auth: AuthConfig,
    pub audit_durability: crate::audit::Durability,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            base_url: None,
            limits: Limits::default(),
            store: StoreOptions::default(),
            log_format: LogFormat::Text,
            audit_durability: crate::audit::Durability::Grouped,
            auth: AuthConfig {
                anonymous: false,
                dev_issuer: true,
                issuers: Vec::new(),
                smart_configuration: None,
                introspection: None,
                emergency_roles: Vec::new(),
                author_org_treatment: true,
                denied_reads: crate::access::DeniedReads::NotFound,
                consent_recorder_roles: Vec::new(),
                consent_recorder_organizations: vec!["Organization/local".to_string()],
                patient_facing_issuers: Vec::new(),
                purge_scope: DEFAULT_PURGE_SCOPE.to_string(),
            },
        }
    }
}

pub fn read_file_config(path: Option<&Path>) -> Result<FileConfig, String> {
    let Some(path) = path else { return Ok(FileConfig::default()) };
    let text = std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
    toml::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))
}

impl Config {
    pub fn resolve(args: ServeArgs, file: FileConfig) -> Result<Config, String> {
        let defaults = Config::default();
        let store_defaults = StoreOptions::default();
        let mut issuers: Vec<(String, PathBuf)> = Vec::new();
        for issuer in &args.trust_issuers {
            let (name, file) = issuer.split_once('=').ok_or_else(|| format!("--trust-issuer {issuer}: expected ISSUER=JWKS_FILE"))?;
            issuers.push((name.to_string(), PathBuf::from(file)));
        }
        issuers.extend(file.auth.issuers.iter().map(|issuer| (issuer.issuer.clone(), issuer.jwks_file.clone())));
        Ok(Config {
            listen: args.listen.or(file.listen).unwrap_or(defaults.listen),
            data_dir: args.data_dir.or(file.data_dir).unwrap_or(defaults.data_dir),
            base_url: args.base_url.or(file.base_url),
            limits: Limits {
                max_body_bytes: args.max_body_bytes.or(file.max_body_bytes).unwrap_or(defaults.limits.max_body_bytes),
                body_read_timeout: args
                    .body_read_timeout_secs
                    .or(file.body_read_timeout_secs)
                    .map_or(defaults.limits.body_read_timeout, |seconds| Duration::from_secs(seconds.max(1))),
                header_read_timeout: args
                    .header_read_timeout_secs
                    .or(file.header_read_timeout_secs)
                    .map_or(defaults.limits.header_read_timeout, |seconds| Duration::from_secs(seconds.max(1))),
                max_connections: args.max_connections.or(file.max_connections).unwrap_or(defaults.limits.max_connections).max(1),
                body_bytes_in_flight: args
                    .body_bytes_in_flight
                    .or(file.body_bytes_in_flight)
                    .unwrap_or(defaults.limits.body_bytes_in_flight)
                    .max(16 * 1024),
                ..defaults.limits
            },
            store: StoreOptions {
                ledger_origin: args.ledger_origin.or(file.ledger.origin),
                checkpoint_every_entries: args
                    .checkpoint_every_entries
                    .or(file.ledger.checkpoint_every_entries)
                    .unwrap_or(store_defaults.checkpoint_every_entries)
                    .max(1),
                checkpoint_interval: args
                    .checkpoint_interval_ms
                    .or(file.ledger.checkpoint_interval_ms)
                    .map(|millis| Duration::from_millis(millis.max(10)))
                    .unwrap_or(store_defaults.checkpoint_interval),
                catalog_cache_bytes: args
                    .cache_mb
                    .or(file.cache_mb)
                    .map_or(store_defaults.catalog_cache_bytes, |megabytes| megabytes.max(1) << 20),
                ..store_defaults
            },
            log_format: args.log_format.or(file.log_format).unwrap_or(defaults.log_format),
            audit_durability: args.audit_durability.or(file.audit_durability).unwrap_or(defaults.audit_durability),
            auth: AuthConfig {
                anonymous: args.anonymous.or(file.auth.anonymous).unwrap_or(defaults.auth.anonymous),
                dev_issuer: args.dev_issuer.or(file.auth.dev_issuer).unwrap_or(defaults.auth.dev_issuer),
                issuers,
                smart_configuration: args.smart_configuration.or(file.auth.smart_configuration),
                introspection: args
                    .introspection_endpoint
                    .map(|endpoint| (endpoint, args.introspection_client_id, args.introspection_client_secret)),
                emergency_roles: match args.emergency_roles {
                    Some(roles) => comma_list(&roles),
                    None => file.auth.emergency_roles.unwrap_or_default(),
                },
                author_org_treatment: args
                    .author_org_treatment
                    .or(file.auth.author_org_treatment)
                    .unwrap_or(defaults.auth.author_org_treatment),
                denied_reads: args.denied_reads.or(file.auth.denied_reads).unwrap_or(defaults.auth.denied_reads),
                consent_recorder_roles: match args.consent_recorder_roles {
                    Some(roles) => comma_list(&roles),
                    None => file.auth.consent_recorder_roles.unwrap_or_default(),
                },
                consent_recorder_organizations: match args.consent_recorder_organizations {
                    Some(organizations) => comma_list(&organizations),
                    None => file.auth.consent_recorder_organizations.unwrap_or(defaults.auth.consent_recorder_organizations),
                },
                patient_facing_issuers: match args.patient_facing_issuers.as_slice() {
                    [] => file.auth.patient_facing_issuers.unwrap_or_default(),
                    issuers => issuers.to_vec(),
                },
                purge_scope: args.purge_scope.or(file.auth.purge_scope).unwrap_or(defaults.auth.purge_scope),
            },
        })
    }

    /// The data directory for a command other than `serve`.
    pub fn data_dir_for(args: DataArgs, file: &FileConfig) -> PathBuf {
        args.data_dir.or_else(|| file.data_dir.clone()).unwrap_or_else(|| PathBuf::from("./data"))
    }
}

/// `a, b,,c` → `["a", "b", "c"]` (flags that take a list).
pub fn comma_list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|item| !item.is_empty()).map(str::to_string).collect()
}
