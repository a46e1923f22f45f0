//! Stage timings of the gateway's write (and read) path, outside HTTP, through the library's
//! public API only. Mirrors `store::commit::prepare` and `store::commit::make_durable` step by
//! step so each step can be timed on its own.
//!
//! ```text
//! cargo run --release --example write_stages -- [--iterations N] [--corpora DIR] [--dir DIR]
//!     [--only Patient-example.json,Observation-example.json]
//! ```
//!
//! Input: every Patient and Observation example in `<corpora>/Patient` and
//! `<corpora>/Observation` (default corpora: `../shared/corpora/fhir-r4-examples` beside the
//! checkout). CPU stages run over all of them `N` times (default 50). The I/O stages write the
//! same records into a scratch data directory (default: a fresh directory under $TMPDIR, removed
//! afterwards) twice: once as groups of 1 (one group commit per record, what a single client
//! gets) and once as groups of 32 (what 32 concurrent clients can get at best).
//!
//! Output: markdown tables, mean / p50 / p99 ns per resource per stage.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ed25519_dalek::SigningKey;
use fhir_gateway::blob::{self, BlobStore, Block, EmbeddedBlockstore};
use fhir_gateway::fhir::canonical::to_canonical_bytes;
use fhir_gateway::fhir::{self, Leniency, validate_resource};
use fhir_gateway::journal::Journal;
use fhir_gateway::ledger::{EntryKind, LedgerEntry, LedgerLog};
use fhir_gateway::seal::{self, Keyring, SealContext};
use fhir_gateway::search::{self, SearchParamTable, terms::TermEncoder};
use fhir_gateway::store::catalog::{CatalogRecord, KeyedHash, ResourceKey, SealedLocation, VersionRecord};
use fhir_gateway::store::{LedgerSecrets, Principal};
use serde_json::{Value, json};

struct Args {
    iterations: usize,
    corpora: PathBuf,
    dir: Option<PathBuf>,
    /// Only these example files (by file name), e.g. the bodies bench/run.sh posts.
    only: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        iterations: 50,
        corpora: Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora/fhir-r4-examples"),
        dir: None,
        only: Vec::new(),
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let mut value = || raw.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--iterations" => args.iterations = value().parse().expect("--iterations N"),
            "--corpora" => args.corpora = PathBuf::from(value()),
            "--dir" => args.dir = Some(PathBuf::from(value())),
            "--only" => args.only = value().split(',').map(str::to_string).collect(),
            "-h" | "--help" => {
                eprintln!("usage: write_stages [--iterations N] [--corpora DIR] [--dir SCRATCH_DIR] [--only FILE.json,...]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// Samples (ns) per stage, in first-seen order.
#[derive(Default)]
struct Stages {
    names: Vec<&'static str>,
    samples: Vec<Vec<u64>>,
}

impl Stages {
    fn add(&mut self, name: &'static str, nanos: u64) {
        let index = match self.names.iter().position(|known| *known == name) {
            Some(index) => index,
            None => {
                self.names.push(name);
                self.samples.push(Vec::new());
                self.names.len() - 1
            }
        };
        self.samples[index].push(nanos);
    }

    /// Runs `work`, records its time under `name`, returns its result.
    fn time<T>(&mut self, name: &'static str, work: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let result = work();
        self.add(name, start.elapsed().as_nanos() as u64);
        result
    }

    /// Markdown table; `per` divides every sample (e.g. 32 for a per-record view of group stages).
    /// Stages named `diag: …` are breakdowns of other stages: listed after the total, not in it.
    fn print(&mut self, title: &str, per: u64, total_label: &str) {
        println!("\n### {title}\n");
        println!("| stage | samples | mean ns | p50 ns | p99 ns | share |");
        println!("|---|---:|---:|---:|---:|---:|");
        // A stage that does not run every round (the checkpoint) is amortised over all rounds.
        let rounds = self.rounds() as f64;
        let means: Vec<f64> = self.samples.iter().map(|samples| samples.iter().sum::<u64>() as f64 / rounds / per as f64).collect();
        let total = self.mean_total() / per as f64;
        let mut rows = Vec::new();
        for (index, name) in self.names.iter().enumerate() {
            let samples = &mut self.samples[index];
            samples.sort_unstable();
            let quantile = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] / per;
            let share = if is_diagnostic(name) { "—".to_string() } else { format!("{:.1}%", 100.0 * means[index] / total) };
            rows.push((
                is_diagnostic(name),
                format!("| {name} | {} | {:.0} | {} | {} | {share} |", samples.len(), means[index], quantile(0.50), quantile(0.99)),
            ));
        }
        for (_, row) in rows.iter().filter(|(diagnostic, _)| !diagnostic) {
            println!("{row}");
        }
        println!("| **{total_label}** | | **{total:.0}** | | | 100% |");
        for (_, row) in rows.iter().filter(|(diagnostic, _)| *diagnostic) {
            println!("{row}");
        }
        println!("\n(mean = sum over all {} rounds / rounds, so rare stages are amortised)", self.rounds());
    }

    fn rounds(&self) -> usize {
        self.samples.iter().map(Vec::len).max().unwrap_or(0).max(1)
    }

    /// Mean total per round, diagnostics excluded.
    fn mean_total(&self) -> f64 {
        let rounds = self.rounds() as f64;
        self.names
            .iter()
            .zip(&self.samples)
            .filter(|(name, _)| !is_diagnostic(name))
            .map(|(_, samples)| samples.iter().sum::<u64>() as f64 / rounds)
            .sum()
    }
}

fn is_diagnostic(name: &str) -> bool {
    name.starts_with("diag:")
}

struct Input {
    resource_type: &'static str,
    name: String,
    bytes: Vec<u8>,
}

fn load_corpus(corpora: &Path) -> Vec<Input> {
    let mut inputs = Vec::new();
    for resource_type in ["Patient", "Observation"] {
        let directory = corpora.join(resource_type);
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&directory)
            .unwrap_or_else(|error| panic!("{}: {error}", directory.display()))
            .map(|entry| entry.expect("directory entry").path())
            .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
            .collect();
        paths.sort();
        for path in paths {
            let name = path.file_name().expect("a file name").to_string_lossy().into_owned();
            inputs.push(Input { resource_type, name, bytes: std::fs::read(&path).expect("readable example") });
        }
    }
    inputs
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random");
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// What `prepare` hands to the commit thread, plus what the read path needs.
struct Prepared {
    key: ResourceKey,
    blocks: Vec<Block>,
    sealed: SealedLocation,
    identifier_hashes: Vec<KeyedHash>,
    leaf: Vec<u8>,
    last_updated: time::OffsetDateTime,
}

/// `store::commit::prepare` (plus parse and validate from the HTTP handler / `store::create`),
/// stage by stage.
fn prepare(stages: &mut Stages, input: &Input, keyring: &Keyring, secrets: &LedgerSecrets, signing_key: &SigningKey) -> Prepared {
    let mut resource: Value = stages.time("parse (serde_json → Value)", || {
        let text = std::str::from_utf8(&input.bytes).expect("UTF-8");
        serde_json::from_str(text.trim_start_matches('\u{feff}')).expect("JSON")
    });
    // One official example (Observation-clinical-gender.json, see tests/it/validation.rs) violates
    // R4; the gateway would answer 422. Its later stages are timed as if it had been accepted.
    std::hint::black_box(stages.time("validate (strict R4)", || validate_resource(&resource, Leniency::Strict)));
    let (key, last_updated, recorded) = stages.time("id + meta + timestamp", || {
        let key = ResourceKey { resource_type: input.resource_type.to_string(), id: random_id() };
        let last_updated = fhir::now_instant();
        let recorded = fhir::format_instant(last_updated);
        let object = resource.as_object_mut().expect("object");
        object.remove("id");
        object.insert("id".into(), Value::String(key.id.clone()));
        let meta = object.entry("meta").or_insert_with(|| json!({}));
        let meta = meta.as_object_mut().expect("meta object");
        meta.insert("versionId".into(), Value::String("1".into()));
        meta.insert("lastUpdated".into(), Value::String(recorded.clone()));
        (key, last_updated, recorded)
    });
    let identifier_hashes = stages.time("HMAC identifier hashes", || {
        let mut hashes = Vec::new();
        for identifier in resource.get("identifier").and_then(Value::as_array).into_iter().flatten() {
            let Some(value) = identifier.get("value").and_then(Value::as_str) else {
                continue;
            };
            let system = identifier.get("system").and_then(Value::as_str).unwrap_or("");
            hashes.push(secrets.identifier_hash(&key.resource_type, Some(system), value));
            hashes.push(secrets.identifier_hash(&key.resource_type, None, value));
        }
        hashes.sort();
        hashes.dedup();
        hashes
    });
    let canonical = stages.time("canonicalise", || to_canonical_bytes(&resource));
    let context = SealContext { resource_type: &key.resource_type, id: &key.id, version_id: 1 };
    let (sealed_bytes, data_key) = stages.time("seal (fresh key, AES-256-GCM)", || seal::seal(&canonical, context).expect("seal"));
    let patient = secrets.patient_hash("bench-patient");
    let wrapped_key = stages.time("wrap data key (patient key)", || keyring.wrap(&data_key, Some(&patient), context).expect("wrap"));
    let (cid, blocks) = stages.time("CID (UnixFS DAG, SHA-256)", || blob::file_blocks(&sealed_bytes));
    let content_hash = stages.time("HMAC content hash", || secrets.content_hash(&canonical));
    let writer = Principal::operator("bench", None);
    let (pseudonym, principal, author) = stages.time("HMAC pseudonym + principal + author", || {
        (secrets.pseudonym(&key), secrets.principal(&writer), secrets.author_hash(writer.organization.as_deref()))
    });
    let leaf = stages.time("ledger entry sign (ed25519 + 2× canonical JSON)", || {
        LedgerEntry {
            author: Some(author),
            kind: EntryKind::Create,
            resource_type: key.resource_type.clone(),
            pseudonym,
            version_id: 1,
            content_hash: Some(content_hash),
            cid: Some(cid.to_string()),
            erased: None,
            principal,
            recorded,
        }
        .sign(signing_key)
    });
    // Diagnostics (not in the totals): what `LedgerEntry::sign` is made of, reproduced step by
    // step (`serde_json::to_value` + canonical JSON of the unsigned entry, the Ed25519
    // signature, `to_value` + canonical JSON again with the signature); checked to give the
    // same leaf, since Ed25519 signatures are deterministic.
    {
        let entry = LedgerEntry::parse(&leaf).expect("own leaf parses");
        let mut message = stages.time("diag: sign = to_value + canonical (unsigned)", || {
            let mut message = b"fhir-gateway ledger entry v1\n".to_vec();
            message.extend_from_slice(&to_canonical_bytes(&serde_json::to_value(&entry).expect("entry")));
            message
        });
        let signature = stages.time("diag: sign = ed25519 sign only", || {
            use ed25519_dalek::Signer as _;
            signing_key.sign(&message)
        });
        let again = stages.time("diag: sign = to_value + canonical (signed)", || {
            let mut value = serde_json::to_value(&entry).expect("entry");
            use base64::Engine as _;
            value
                .as_object_mut()
                .expect("object")
                .insert("signature".into(), base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()).into());
            to_canonical_bytes(&value)
        });
        assert_eq!(again, leaf, "the step-by-step leaf equals LedgerEntry::sign's");
        message.clear();
        stages.time("diag: getrandom 32 bytes", || {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).expect("random");
            std::hint::black_box(bytes)
        });
        stages.time("diag: serde_json::to_vec of the Value (not canonical)", || {
            std::hint::black_box(serde_json::to_vec(&resource).expect("serialises"))
        });
    }
    // What `write_response` sends back with the default `Prefer: return=representation`.
    stages.time("response body copy (return=representation)", || std::hint::black_box(canonical.clone()));
    // Search values, extracted in `prepare` from the resource already parsed (since 746fb21 the
    // indexer no longer parses the stored bytes); then what the indexer thread does with them
    // (off the request path, on the same cores).
    let term_encoder = TermEncoder::new([7; 32]);
    let entries =
        stages.time("search values (extract from the parsed resource)", || search::extract_indexed(SearchParamTable::r4(), &resource));
    std::hint::black_box(
        stages.time("diag: extract every parameter (also those served by others' terms)", || {
            search::extract(SearchParamTable::r4(), &resource)
        }),
    );
    let terms = stages.time("indexer: encode terms (keyed hashes)", || term_encoder.document_terms(&key.resource_type, &entries));
    stages.add("diag: index terms per resource (count, not ns)", terms.len() as u64);
    Prepared { key, blocks, sealed: SealedLocation { cid, wrapped_key }, identifier_hashes, leaf, last_updated }
}

struct Store {
    blobs: EmbeddedBlockstore,
    catalog: Journal,
    ledger: LedgerLog,
}

/// `store::commit::make_durable` for one group, stage by stage.
fn commit_group(stages: &mut Stages, store: &Store, group: &[Prepared]) {
    let first_leaf_index = store.ledger.tree_size();
    let encoded: Vec<Vec<u8>> = stages.time("catalog records encode (serde_json)", || {
        group
            .iter()
            .enumerate()
            .map(|(position, prepared)| {
                CatalogRecord {
                    key: prepared.key.clone(),
                    version: VersionRecord {
                        version_id: 1,
                        leaf_index: first_leaf_index + position as u64,
                        last_updated: prepared.last_updated,
                        sealed: Some(prepared.sealed.clone()),
                        author: None,
                    },
                    identifier_hashes: prepared.identifier_hashes.clone(),
                    transaction_end_leaf: None,
                    erasure: None,
                }
                .encode()
            })
            .collect()
    });
    let blocks: Vec<Block> = group.iter().flat_map(|prepared| prepared.blocks.iter().cloned()).collect();
    stages.time("blob pack append (pwrite)", || store.blobs.put_blocks(&blocks).expect("put_blocks"));
    stages.time("catalog journal append (pwrite)", || store.catalog.append(&encoded).expect("append"));
    stages.time("blob pack fdatasync", || store.blobs.sync().expect("sync"));
    stages.time("catalog journal fdatasync", || store.catalog.sync().expect("sync"));
    let leaves: Vec<&[u8]> = group.iter().map(|prepared| prepared.leaf.as_slice()).collect();
    let index = stages.time("ledger append + fdatasync + Merkle", || store.ledger.append_durably(&leaves).expect("ledger"));
    assert_eq!(index, first_leaf_index);
    if store.ledger.tree_size() - store.ledger.latest_checkpoint().map_or(0, |(size, _)| size) >= 1000 {
        stages.time("checkpoint (every 1000 leaves; amortised)", || store.ledger.checkpoint().expect("checkpoint"));
    }
}

fn open_store(directory: &Path, signing_key: &SigningKey) -> Store {
    Store {
        blobs: EmbeddedBlockstore::open(&directory.join("blocks"), &[]).expect("blockstore"),
        catalog: Journal::open(&directory.join("records/catalog.log"), |_, _| {}).expect("catalog journal"),
        ledger: LedgerLog::open(&directory.join("ledger"), signing_key.clone(), "localhost/fhir-gateway/bench").expect("ledger"),
    }
}

/// `ResourceStore::load`: ledger entry, blob, CID check, unwrap, unseal, keyed-hash check.
fn read_back(stages: &mut Stages, store: &Store, keyring: &Keyring, secrets: &LedgerSecrets, prepared: &Prepared, leaf_index: u64) {
    let entry = stages
        .time("ledger pread + parse entry", || LedgerEntry::parse(&store.ledger.read_leaf(leaf_index).expect("leaf")).expect("entry"));
    let pseudonym = stages.time("HMAC pseudonym", || secrets.pseudonym(&prepared.key));
    assert_eq!(entry.pseudonym, pseudonym);
    assert_eq!(entry.cid.as_deref(), Some(prepared.sealed.cid.to_string().as_str()));
    let sealed_bytes = stages.time("blob pread + CID check", || blob::read_file(&store.blobs, &prepared.sealed.cid).expect("blob"));
    let context = SealContext { resource_type: &prepared.key.resource_type, id: &prepared.key.id, version_id: 1 };
    let data_key = stages.time("unwrap data key", || keyring.unwrap(&prepared.sealed.wrapped_key, context).expect("unwrap"));
    let plaintext = stages.time("unseal (AES-256-GCM)", || seal::unseal(&sealed_bytes, &data_key, context).expect("unseal"));
    let content_hash = stages.time("HMAC content hash check", || secrets.content_hash(&plaintext));
    assert_eq!(entry.content_hash.as_deref(), Some(content_hash.as_str()));
    stages.time("response body copy", || std::hint::black_box(plaintext.clone()));
}

fn main() {
    let args = parse_args();
    let mut inputs = load_corpus(&args.corpora);
    if !args.only.is_empty() {
        inputs.retain(|input| args.only.contains(&input.name));
    }
    let invalid: Vec<&str> = inputs
        .iter()
        .filter(|input| {
            let value: Value = serde_json::from_slice(&input.bytes).expect("JSON");
            validate_resource(&value, Leniency::Strict).iter().any(|issue| issue.is_error())
        })
        .map(|input| input.name.as_str())
        .collect();
    let patients = inputs.iter().filter(|input| input.resource_type == "Patient").count();
    let observations = inputs.len() - patients;
    assert!(!inputs.is_empty(), "no examples under {}", args.corpora.display());

    let scratch =
        args.dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("fhir-gateway-write-stages-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    let keyring = Keyring::open_or_create(&scratch.join("keys")).expect("keyring");
    let secrets = LedgerSecrets::open_or_create(&scratch.join("keys")).expect("ledger secrets");
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("random");
    let signing_key = SigningKey::from_bytes(&seed);

    println!(
        "# write_stages: {patients} Patient + {observations} Observation examples × {} iterations, scratch {}",
        args.iterations,
        scratch.display()
    );
    if !invalid.is_empty() {
        println!("\nNot valid R4 (the gateway answers 422; timed through every stage anyway): {}", invalid.join(", "));
    }

    // Warm-up: loads the R4 validation table (a LazyLock) and warms caches.
    let mut warmup = Stages::default();
    for input in &inputs {
        prepare(&mut warmup, input, &keyring, &secrets, &signing_key);
    }

    // CPU stages (request task), per type and overall.
    let mut all = Stages::default();
    let mut by_type = [Stages::default(), Stages::default()];
    let mut prepared_all = Vec::new();
    let mut per_file: std::collections::BTreeMap<String, (usize, Vec<u64>, Vec<u64>)> = Default::default();
    for _ in 0..args.iterations {
        for input in &inputs {
            let slot = usize::from(input.resource_type == "Observation");
            let mut one = Stages::default();
            let prepared = prepare(&mut one, input, &keyring, &secrets, &signing_key);
            for (name, samples) in one.names.iter().zip(&one.samples) {
                all.add(name, samples[0]);
                by_type[slot].add(name, samples[0]);
            }
            let per_file = per_file.entry(input.name.clone()).or_insert((input.bytes.len(), Vec::new(), Vec::new()));
            per_file.1.push(one.mean_total() as u64);
            let validate = one.names.iter().position(|name| name.starts_with("validate")).expect("a validate stage");
            per_file.2.push(one.samples[validate][0]);
            prepared_all.push(prepared);
        }
    }
    let average_bytes = |resource_type: &str| {
        let sizes: Vec<usize> = inputs.iter().filter(|input| input.resource_type == resource_type).map(|input| input.bytes.len()).collect();
        sizes.iter().sum::<usize>() / sizes.len().max(1)
    };
    all.print("Request-side CPU stages, all resources (ns per resource)", 1, "total CPU per create (excl. HTTP)");
    let cpu_total = all.mean_total();
    by_type[0].print(&format!("Request-side CPU stages, Patient (mean input {} bytes)", average_bytes("Patient")), 1, "total");
    by_type[1].print(&format!("Request-side CPU stages, Observation (mean input {} bytes)", average_bytes("Observation")), 1, "total");

    println!("\n### Request-side CPU per example file (median over iterations; costliest first)\n");
    println!("| file | bytes | total µs | of which validate µs |");
    println!("|---|---:|---:|---:|");
    let mut files: Vec<(String, usize, u64, u64)> = per_file
        .into_iter()
        .map(|(name, (bytes, mut totals, mut validates))| {
            totals.sort_unstable();
            validates.sort_unstable();
            (name, bytes, totals[totals.len() / 2], validates[validates.len() / 2])
        })
        .collect();
    files.sort_by_key(|(_, _, total, _)| std::cmp::Reverse(*total));
    for (name, bytes, total, validate) in &files {
        println!("| {name} | {bytes} | {:.1} | {:.1} |", *total as f64 / 1e3, *validate as f64 / 1e3);
    }

    // Commit stages, groups of 1 and of 32, each in its own data directory.
    let io_records = prepared_all.len();
    let mut results = Vec::new();
    for group_size in [1usize, 32] {
        let directory = scratch.join(format!("group-{group_size}"));
        let store = open_store(&directory, &signing_key);
        let mut stages = Stages::default();
        let started = Instant::now();
        for group in prepared_all.chunks(group_size) {
            commit_group(&mut stages, &store, group);
        }
        let wall = started.elapsed();
        stages.print(
            &format!("Commit-thread stages, group of {group_size} ({} groups; ns per group)", io_records.div_ceil(group_size)),
            1,
            "total per group",
        );
        let per_record = stages.mean_total() / group_size as f64;
        println!(
            "\nper record: {per_record:.0} ns; commit thread alone could sustain ≈ {:.0} records/s (measured wall {:.2} s for {io_records} records)",
            1e9 / per_record,
            wall.as_secs_f64()
        );
        results.push((group_size, per_record, store));
    }

    // Read path over the group-of-32 store (its leaves are in prepared order).
    let (_, _, store) = results.last().expect("a store");
    let mut read_stages = Stages::default();
    for (leaf_index, prepared) in prepared_all.iter().enumerate() {
        read_back(&mut read_stages, store, &keyring, &secrets, prepared, leaf_index as u64);
    }
    read_stages.print("Read path (ResourceStore::load) stages, ns per read (page cache warm)", 1, "total per read (excl. HTTP)");
    let read_total = read_stages.mean_total();

    println!("\n### Summary\n");
    println!("| quantity | value |");
    println!("|---|---:|");
    println!("| request-side CPU per create (excl. HTTP, JSON body parse incl.) | {:.1} µs |", cpu_total / 1e3);
    println!("| ⇒ creates/s if that were the only work, 1 core / 2 cores | {:.0} / {:.0} |", 1e9 / cpu_total, 2e9 / cpu_total);
    for (group_size, per_record, _) in &results {
        println!("| commit thread per record, group of {group_size} | {:.1} µs (≈ {:.0} records/s) |", per_record / 1e3, 1e9 / per_record);
    }
    println!(
        "| read path per read (excl. HTTP) | {:.1} µs (⇒ {:.0} / {:.0} reads/s on 1 / 2 cores) |",
        read_total / 1e3,
        1e9 / read_total,
        2e9 / read_total
    );

    drop(results);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
}
