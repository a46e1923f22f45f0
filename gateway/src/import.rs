//! `fhir-gateway import`: loads transaction/batch Bundles, single resources and bulk-data ndjson
//! into a data directory through the same write path as the REST API (validation, sealing, CIDs,
//! ledger), with the gateway stopped (the data directory lock enforces it).
//!
//! * A Bundle file is one transaction (or batch), exactly as `POST /fhir` would run it.
//! * An ndjson file is cut into chunks of [`NDJSON_CHUNK`] lines; each chunk is a transaction of
//!   `PUT Type/id` entries (the export's ids are kept, so references between files hold), and
//!   conditional references such as `Practitioner?identifier=...` are resolved. A chunk that
//!   fails is retried line by line, so every failure is reported with its file and line.
//! * Reference data comes first, in phases: files holding Organizations, then Locations, then
//!   Practitioners, then PractitionerRoles, then everything else (a file's phase is that of its
//!   latest type), so conditional references find their targets. Within a phase, files and
//!   chunks run concurrently.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::fhir::Leniency;
use crate::fhir::bundle::{self, BundleEntry, BundleKind, Method};
use crate::store::{EntryOutcome, Principal, ResourceStore, StoreError, StoreOptions};

/// Lines of ndjson per transaction.
pub const NDJSON_CHUNK: usize = 250;
/// Transactions in flight at once (they share group commits).
const CONCURRENT_TRANSACTIONS: usize = 8;
const REFERENCE_TYPES: [&str; 4] = ["Organization", "Location", "Practitioner", "PractitionerRole"];

#[derive(Debug, Default)]
pub struct ImportSummary {
    pub resources_by_type: BTreeMap<String, u64>,
    pub failures: Vec<String>,
    pub skipped: Vec<String>,
    /// From the store's opening to its closing (not the compaction after).
    pub seconds: f64,
    pub compacted: crate::store::CompactSummary,
}

impl ImportSummary {
    pub fn resources(&self) -> u64 {
        self.resources_by_type.values().sum()
    }

    fn merge(&mut self, other: ImportSummary) {
        for (resource_type, count) in other.resources_by_type {
            *self.resources_by_type.entry(resource_type).or_default() += count;
        }
        self.failures.extend(other.failures);
        self.skipped.extend(other.skipped);
    }
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = if self.seconds > 0.0 { self.resources() as f64 / self.seconds } else { 0.0 };
        writeln!(formatter, "imported {} resources in {:.1} s ({:.0} resources/s)", self.resources(), self.seconds, rate)?;
        for (resource_type, count) in &self.resources_by_type {
            writeln!(formatter, "  {resource_type:<28} {count:>8}")?;
        }
        for skipped in &self.skipped {
            writeln!(formatter, "skipped: {skipped}")?;
        }
        writeln!(formatter, "failures: {}", self.failures.len())?;
        for failure in &self.failures {
            writeln!(formatter, "  {failure}")?;
        }
        write!(formatter, "{}", self.compacted)
    }
}

/// Why an import stopped (a resource that fails is not one: it is counted in the summary).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the runtime could not start: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Open(#[from] crate::store::OpenError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}: no such file or directory")]
    NoSuchPath(PathBuf),
    #[error("an import task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("an import task could not start: the work queue closed")]
    Closed(#[from] tokio::sync::AcquireError),
    #[error(transparent)]
    Compact(#[from] crate::store::CompactError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io { path: path.to_path_buf(), source }
}

/// One unit of import work: a Bundle file, or a chunk of an ndjson file.
enum Work {
    Bundle { path: PathBuf, bytes: u64 },
    Lines { path: PathBuf, first_line: usize, lines: Vec<String> },
}

impl Work {
    /// How much there is to do, roughly.
    fn bytes(&self) -> u64 {
        match self {
            Work::Bundle { bytes, .. } => *bytes,
            Work::Lines { lines, .. } => lines.iter().map(|line| line.len() as u64).sum(),
        }
    }
}

fn describe(error: &StoreError) -> String {
    match error {
        StoreError::Invalid(issues) => issues
            .iter()
            .filter(|issue| issue.is_error())
            .map(|issue| format!("{}: {}", issue.expression, issue.diagnostics))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

fn files_under(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ImportError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io_error(path))?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.is_file())
                .filter(|path| path.extension().is_some_and(|extension| extension == "json" || extension == "ndjson"))
                .collect();
            entries.sort();
            files.extend(entries);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            return Err(ImportError::NoSuchPath(path.clone()));
        }
    }
    Ok(files)
}

/// Resource types a file holds (for ordering reference data first). Reads only `resourceType`
/// members: the rest of each resource is skipped, not built into a tree.
fn types_in(path: &Path) -> Result<Vec<String>, ImportError> {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "resourceType", default)]
        resource_type: String,
        #[serde(default)]
        entry: Option<Vec<Entry>>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        resource: Option<Typed>,
    }
    let mut types = Vec::new();
    if path.extension().is_some_and(|extension| extension == "ndjson") {
        // Read a line at a time: an ndjson file can be far larger than memory.
        let file = std::fs::File::open(path).map_err(io_error(path))?;
        let mut seen = std::collections::BTreeSet::new();
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(io_error(path))?;
            if !line.trim().is_empty() {
                seen.insert(serde_json::from_str::<Typed>(&line).map(|typed| typed.resource_type).unwrap_or_default());
            }
        }
        types.extend(seen);
    } else {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        match serde_json::from_str::<Typed>(text.trim_start_matches('\u{feff}')) {
            Ok(Typed { entry: Some(entries), .. }) => {
                types.extend(entries.into_iter().map(|entry| entry.resource.map(|resource| resource.resource_type).unwrap_or_default()))
            }
            Ok(typed) => types.push(typed.resource_type),
            Err(_) => types.push(String::new()),
        }
    }
    types.sort();
    types.dedup();
    Ok(types)
}

/// Imports `paths` into the store at `data_directory`; the records are authored by
/// `organization` (e.g. `Organization/local`, the hospital running the gateway).
pub fn import(
    data_directory: &Path,
    paths: &[PathBuf],
    leniency: Leniency,
    organization: Option<&str>,
) -> Result<ImportSummary, ImportError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(ImportError::Runtime)?;
    runtime.block_on(async {
        // The rate counts the whole command: opening the store, and closing it (the index
        // catching up, the last checkpoint).
        let started = Instant::now();
        // Index on every core: the final index commit (serialising the segments) is on the
        // command's critical path.
        let indexing_threads = std::thread::available_parallelism().map_or(1, usize::from);
        let options = StoreOptions { indexing_threads, ..StoreOptions::default() };
        let store = ResourceStore::open(data_directory, options)?;
        let result = import_into(&store, paths, leniency, &Principal::operator("import", organization)).await;
        store.close().await;
        drop(store);
        let seconds = started.elapsed().as_secs_f64();
        let imported = result?;
        let compacted = crate::store::compact(data_directory)?;
        Ok(ImportSummary { seconds, compacted, ..imported })
    })
}

async fn import_into(
    store: &ResourceStore,
    paths: &[PathBuf],
    leniency: Leniency,
    principal: &Principal,
) -> Result<ImportSummary, ImportError> {
    let mut summary = ImportSummary::default();
    let mut phases: Vec<Vec<PathBuf>> = vec![Vec::new(); REFERENCE_TYPES.len() + 1];
    for file in files_under(paths)? {
        let types = types_in(&file)?;
        if types.iter().all(|resource_type| resource_type.is_empty()) {
            summary.skipped.push(format!("{}: holds no FHIR resources", file.display()));
            continue;
        }
        let phase = types
            .iter()
            .map(|resource_type| REFERENCE_TYPES.iter().position(|reference| reference == resource_type).unwrap_or(REFERENCE_TYPES.len()))
            .max()
            .unwrap_or(REFERENCE_TYPES.len());
        phases[phase].push(file);
    }
    let progress = Progress::new();
    for phase in phases {
        // Within a phase, units run concurrently (bounded) and share group commits. Bundles go
        // first, largest first (one started last would leave one core working alone at the
        // end); ndjson files are read a chunk at a time as permits free up, so the input is
        // never held whole.
        let mut units = Units {
            store,
            leniency,
            principal,
            progress: progress.clone(),
            permits: Arc::new(Semaphore::new(CONCURRENT_TRANSACTIONS)),
            tasks: JoinSet::new(),
        };
        let (ndjson, bundles): (Vec<PathBuf>, Vec<PathBuf>) =
            phase.into_iter().partition(|path| path.extension().is_some_and(|extension| extension == "ndjson"));
        let mut bundles = bundles
            .into_iter()
            .map(|path| Ok(Work::Bundle { bytes: std::fs::metadata(&path).map_err(io_error(&path))?.len(), path }))
            .collect::<Result<Vec<Work>, ImportError>>()?;
        bundles.sort_by_key(|unit| std::cmp::Reverse(unit.bytes()));
        for unit in bundles {
            units.submit(unit, &mut summary).await?;
        }
        for path in ndjson {
            let file = std::fs::File::open(&path).map_err(io_error(&path))?;
            let mut lines = Vec::new();
            let mut first_line = 1;
            for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line.map_err(io_error(&path))?;
                if lines.is_empty() {
                    first_line = number + 1;
                }
                lines.push(line);
                if lines.len() == NDJSON_CHUNK {
                    units.submit(Work::Lines { path: path.clone(), first_line, lines: std::mem::take(&mut lines) }, &mut summary).await?;
                }
            }
            if !lines.is_empty() {
                units.submit(Work::Lines { path: path.clone(), first_line, lines }, &mut summary).await?;
            }
        }
        while let Some(result) = units.tasks.join_next().await {
            summary.merge(result?);
        }
    }
    progress.finish();
    Ok(summary)
}

/// The units of one phase in flight: at most [`CONCURRENT_TRANSACTIONS`] at once.
struct Units<'a> {
    store: &'a ResourceStore,
    leniency: Leniency,
    principal: &'a Principal,
    progress: Progress,
    permits: Arc<Semaphore>,
    tasks: JoinSet<ImportSummary>,
}

impl Units<'_> {
    /// Starts `unit` once a permit is free, taking in the results of units that have finished.
    async fn submit(&mut self, unit: Work, summary: &mut ImportSummary) -> Result<(), ImportError> {
        let permit = self.permits.clone().acquire_owned().await?;
        while let Some(result) = self.tasks.try_join_next() {
            summary.merge(result?);
        }
        let (store, progress, principal, leniency) = (self.store.clone(), self.progress.clone(), self.principal.clone(), self.leniency);
        self.tasks.spawn(async move {
            let result = run_unit(&store, unit, leniency, &principal).await;
            progress.add(result.resources());
            drop(permit);
            result
        });
        Ok(())
    }
}

fn count(summary: &mut ImportSummary, outcomes: &[(usize, EntryOutcome)]) {
    for (_, outcome) in outcomes {
        if let EntryOutcome::Written { version, .. } = outcome {
            *summary.resources_by_type.entry(version.key.resource_type.clone()).or_default() += 1;
        }
    }
}

async fn run_unit(store: &ResourceStore, unit: Work, leniency: Leniency, principal: &Principal) -> ImportSummary {
    let mut summary = ImportSummary::default();
    match unit {
        Work::Bundle { path, .. } => {
            let name = path.display().to_string();
            let parsed = std::fs::read_to_string(&path)
                .map_err(|error| error.to_string())
                .and_then(|text| serde_json::from_str::<Value>(text.trim_start_matches('\u{feff}')).map_err(|error| error.to_string()));
            let value = match parsed {
                Ok(value) => value,
                Err(error) => {
                    summary.failures.push(format!("{name}: {error}"));
                    return summary;
                }
            };
            if value.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
                // A single resource: create it (keeping nothing of its id, as POST does).
                match store.create(value, principal, leniency, None).await {
                    Ok(crate::store::CreateOutcome::Created(outcome)) => {
                        *summary.resources_by_type.entry(outcome.version.key.resource_type).or_default() += 1;
                    }
                    Ok(crate::store::CreateOutcome::Existing(_)) => {}
                    Err(error) => summary.failures.push(format!("{name}: {}", describe(&error))),
                }
                return summary;
            }
            let parsed = match bundle::parse_bundle(value, "", usize::MAX) {
                Ok(parsed) => parsed,
                Err(error) => {
                    summary.failures.push(format!("{name}: {error}"));
                    return summary;
                }
            };
            match parsed.kind {
                BundleKind::Transaction => match store.transaction(parsed.entries, principal, leniency).await {
                    Ok(outcomes) => count(&mut summary, &outcomes),
                    Err(failure) => summary.failures.push(format!(
                        "{name}: Bundle.entry[{}]: {} (nothing of this Bundle was stored)",
                        failure.position,
                        describe(&failure.error)
                    )),
                },
                BundleKind::Batch => {
                    let outcomes = store.batch(parsed.entries, principal, leniency).await;
                    count(&mut summary, &outcomes);
                    for (position, outcome) in &outcomes {
                        if let EntryOutcome::Failed(error) = outcome {
                            summary.failures.push(format!("{name}: Bundle.entry[{position}]: {}", describe(error)));
                        }
                    }
                }
            }
        }
        Work::Lines { path, first_line, lines } => {
            let name = path.display().to_string();
            let mut entries = Vec::new();
            for (offset, line) in lines.iter().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match ndjson_entry(line, first_line + offset) {
                    Ok(entry) => entries.push(entry),
                    Err(error) => summary.failures.push(format!("{name}:{}: {error}", first_line + offset)),
                }
            }
            match store.transaction(entries.clone(), principal, leniency).await {
                Ok(outcomes) => count(&mut summary, &outcomes),
                Err(_) => {
                    // Find exactly which lines fail: each on its own.
                    for entry in entries {
                        let line_number = entry.position;
                        match store.transaction(vec![entry], principal, leniency).await {
                            Ok(outcomes) => count(&mut summary, &outcomes),
                            Err(failure) => summary.failures.push(format!("{name}:{line_number}: {}", describe(&failure.error))),
                        }
                    }
                }
            }
        }
    }
    summary
}

/// One ndjson line as a transaction entry: `PUT Type/id` (or `POST Type` without an id).
fn ndjson_entry(line: &str, line_number: usize) -> Result<BundleEntry, String> {
    let resource: Value = serde_json::from_str(line).map_err(|error| format!("not JSON: {error}"))?;
    let resource_type = resource.get("resourceType").and_then(Value::as_str).ok_or("resourceType is missing")?.to_string();
    let (method, url) = match resource.get("id").and_then(Value::as_str) {
        Some(id) => (Method::Put, format!("{resource_type}/{id}")),
        None => (Method::Post, resource_type),
    };
    let target = bundle::parse_request_url(&url, "")?;
    Ok(BundleEntry { position: line_number, full_url: None, method, target, resource: Some(resource), if_none_exist: None, if_match: None })
}

/// A progress line on standard error (only on a terminal).
#[derive(Clone)]
struct Progress {
    done: Arc<std::sync::atomic::AtomicU64>,
    started: Instant,
    terminal: bool,
}

impl Progress {
    fn new() -> Self {
        Progress { done: Arc::default(), started: Instant::now(), terminal: std::io::stderr().is_terminal() }
    }

    fn add(&self, resources: u64) {
        let done = self.done.fetch_add(resources, std::sync::atomic::Ordering::Relaxed) + resources;
        if self.terminal {
            let rate = done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
            eprint!("\r  {done} resources imported ({rate:.0}/s)   ");
            let _ = std::io::stderr().flush();
        }
    }

    fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}
