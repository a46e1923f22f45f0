//! `fhir-gateway verify`: an offline audit of a data directory. It changes nothing on disk.
//!
//! 1. Every ledger entry is canonical JSON with a valid Ed25519 signature.
//! 2. Every checkpoint verifies under the gateway key, and its root equals the RFC 9162 root
//!    recomputed from the leaves it covers; sizes never shrink.
//! 3. The catalog agrees with the ledger as a start would see it (`store::recovery`, the same
//!    decision): every ledger entry has exactly one catalog record, in order. Every catalog
//!    record points at a ledger entry that names the same pseudonym, version, author and CID;
//!    every blob's blocks match their CIDs; every sealed blob opens; every plaintext matches the
//!    entry's keyed hash.
//!
//! Every file is scanned as a start scans it (`journal`, `blob::embedded`): damage is named with
//! its file and offset, and so is a crash tail (which a start cuts off).
//!
//! Versions erased by `Patient/$purge` are counted as erased, not as missing or tampered: their
//! erasure has its catalog record and its signed `erase` ledger entry, and verify checks they
//! are really gone (no sealed block left, the patient key destroyed).
//! 4. The audit trail (`audit/`): every leaf is an audit record; its checkpoints verify under the
//!    same key (origin `<ledger origin>/audit`) and match the leaves.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::blob::{self, EmbeddedBlockstore};
use crate::journal::{self, ScanEnd};
use crate::ledger::merkle::{self, Hash};
use crate::ledger::note::{self, NoteSigner};
use crate::ledger::{EntryKind, LedgerEntry};
use crate::seal::{self, KeyHolder, Keyring, SealContext};
use crate::store::catalog::{CatalogRecord, ResourceKey};
use crate::store::{DataLayout, LedgerSecrets, recovery};

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub ledger_entries: u64,
    pub checkpoints: u64,
    pub newest_checkpoint_size: u64,
    pub records: u64,
    pub blobs_checked: u64,
    /// Erasures (`Patient/$purge`) and the versions they erased.
    pub erasures: u64,
    pub erased_versions: u64,
    pub audit_events: u64,
    pub newest_audit_checkpoint_size: u64,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(formatter, "ledger entries:     {}", self.ledger_entries)?;
        writeln!(formatter, "checkpoints:        {} (newest covers {} entries)", self.checkpoints, self.newest_checkpoint_size)?;
        writeln!(formatter, "record versions:    {}", self.records)?;
        writeln!(formatter, "sealed blobs:       {} checked", self.blobs_checked)?;
        writeln!(formatter, "erased versions:    {} (by {} erasure(s))", self.erased_versions, self.erasures)?;
        writeln!(formatter, "audit events:       {} (newest checkpoint covers {})", self.audit_events, self.newest_audit_checkpoint_size)?;
        if self.problems.is_empty() {
            writeln!(formatter, "result:             OK, no mismatch")
        } else {
            writeln!(formatter, "result:             {} PROBLEM(S)", self.problems.len())?;
            for problem in &self.problems {
                writeln!(formatter, "  - {problem}")?;
            }
            Ok(())
        }
    }
}

fn describe_scan_end(what: &str, end: ScanEnd, problems: &mut Vec<String>) {
    match end {
        ScanEnd::Clean => {}
        ScanEnd::TornTail { valid_end, file_len } => problems.push(format!(
            "{what}: {} bytes after offset {valid_end} are an incomplete last frame (a crash tail, cut at the next start, or a truncation)",
            file_len - valid_end
        )),
        ScanEnd::Corrupt { offset } => {
            problems.push(format!("{what}: damaged record at offset {offset} (not a crash tail: the gateway will not start)"))
        }
    }
}

/// Why `verify` could not check a data directory at all (what it finds wrong is in the report).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0} is not a gateway data directory (no keys/)")]
    NotADataDirectory(PathBuf),
    #[error(transparent)]
    Keyring(#[from] crate::seal::KeyringError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Blob(#[from] crate::blob::BlobError),
    #[error("the ledger key does not make a checkpoint verifier: {0}")]
    Key(#[from] crate::ledger::note::NoteError),
}

pub fn verify(data_directory: &Path, origin: Option<&str>) -> Result<VerifyReport, VerifyError> {
    let layout = DataLayout::new(data_directory);
    if !layout.keys().is_dir() {
        return Err(VerifyError::NotADataDirectory(data_directory.to_path_buf()));
    }
    let secrets = LedgerSecrets::open_or_create(&layout.keys())?;
    let keyring = Keyring::open_for_verify(&layout.keys())?;
    let verifying_key = secrets.signing_key.verifying_key();
    let origin = origin.map(str::to_string).unwrap_or_else(|| secrets.default_origin());
    let mut report = VerifyReport::default();

    // 1. Ledger entries.
    let mut entries: Vec<Option<LedgerEntry>> = Vec::new();
    let mut leaf_hashes: Vec<Hash> = Vec::new();
    let mut signature_problems = Vec::new();
    let end = journal::scan(&layout.ledger().join("entries.log"), |_, leaf| {
        let leaf_index = leaf_hashes.len();
        leaf_hashes.push(merkle::leaf_hash(leaf));
        match LedgerEntry::parse_verified(leaf, &verifying_key) {
            Ok(entry) => entries.push(Some(entry)),
            Err(error) => {
                signature_problems.push(format!("ledger entry {leaf_index}: {error}"));
                entries.push(None);
            }
        }
    })?;
    describe_scan_end("ledger/entries.log", end, &mut report.problems);
    report.problems.extend(signature_problems);
    report.ledger_entries = leaf_hashes.len() as u64;

    // 2. Checkpoints. The origin is read from the first note if not given.
    let (checkpoints, newest, checkpointed) =
        check_checkpoints(&layout.ledger(), "ledger", &leaf_hashes, &origin, &secrets, &mut report.problems)?;
    report.checkpoints = checkpoints;
    report.newest_checkpoint_size = newest;

    // 4 (cheap, before the blobs). The audit trail: every leaf an AuditEvent, every checkpoint
    // signed by the same key and matching the leaves.
    let audit = layout.audit();
    if audit.is_dir() {
        let mut audit_hashes = Vec::new();
        let end = journal::scan(&audit.join("entries.log"), |_, leaf| {
            let leaf_index = audit_hashes.len();
            audit_hashes.push(merkle::leaf_hash(leaf));
            if serde_json::from_slice::<crate::audit::AuditRecord>(leaf).is_err() {
                report.problems.push(format!("audit entry {leaf_index}: not an audit record"));
            }
        })?;
        describe_scan_end("audit/entries.log", end, &mut report.problems);
        report.audit_events = audit_hashes.len() as u64;
        let audit_origin = format!("{origin}/audit");
        let (_, newest, _) = check_checkpoints(&audit, "audit", &audit_hashes, &audit_origin, &secrets, &mut report.problems)?;
        report.newest_audit_checkpoint_size = newest;
    }

    // 3. Catalog and blobs.
    let (blobs, pack_scan) = EmbeddedBlockstore::open_read_only(&layout.blocks())?;
    for offset in &pack_scan.damaged_offsets {
        report.problems.push(format!(
            "blocks/blocks.pack: damaged record at offset {offset} (a block does not match its CID, or its length is wrong; the gateway will not start)"
        ));
    }
    if let Some(valid_end) = pack_scan.crash_tail {
        report.problems.push(format!(
            "blocks/blocks.pack: {} bytes after offset {valid_end} are an incomplete last record (a crash tail, or a truncation)",
            pack_scan.file_len - valid_end
        ));
    }
    let catalog_path = layout.catalog();
    let mut records = Vec::new();
    let end = journal::scan(&catalog_path, |offset, bytes| match CatalogRecord::decode(bytes) {
        Ok(record) => records.push((offset, record)),
        Err(reason) => report.problems.push(format!("records/catalog.log: record at offset {offset} is unreadable: {reason}")),
    })?;
    describe_scan_end("records/catalog.log", end, &mut report.problems);
    let readable_end = match end {
        ScanEnd::Clean => std::fs::metadata(&catalog_path).map_or(0, |metadata| metadata.len()),
        ScanEnd::TornTail { valid_end: offset, .. } | ScanEnd::Corrupt { offset } => offset,
    };
    let scanned = recovery::Scanned {
        catalog_path: Path::new("records/catalog.log"),
        first_leaf: 0,
        records: &records,
        readable_end,
        tree_size: leaf_hashes.len() as u64,
        checkpointed,
    };
    if let Err(damage) = recovery::plan(&scanned) {
        report.problems.push(damage.to_string());
    }
    let erased: std::collections::HashSet<ResourceKey> =
        records.iter().filter_map(|(_, record)| record.erasure.as_ref()).flat_map(|erasure| erasure.resources.iter().cloned()).collect();
    let acknowledged = records
        .iter()
        .filter(|(_, record)| record.version.leaf_index < leaf_hashes.len() as u64)
        .filter(|(_, record)| !erased.contains(&record.key));
    let missing = acknowledged.filter_map(|(_, record)| record.version.sealed.as_ref()).filter(|sealed| !blobs.holds(&sealed.cid)).count();
    if missing > 0 {
        let readable_end = pack_scan.crash_tail.or(pack_scan.damaged_offsets.first().copied()).unwrap_or(pack_scan.file_len);
        report.problems.push(format!(
            "blocks/blocks.pack: {missing} blob(s) of acknowledged writes are missing (its readable part ends at offset {readable_end} of {} bytes)",
            pack_scan.file_len
        ));
    }
    for (_, record) in records {
        report.records += 1;
        let name = format!("version {} of {}", record.version.version_id, secrets.pseudonym(&record.key));
        let Some(Some(entry)) = entries.get(record.version.leaf_index as usize) else {
            if record.version.leaf_index >= entries.len() as u64 {
                report.problems.push(format!("{name}: its ledger entry {} does not exist", record.version.leaf_index));
            }
            continue;
        };
        if entry.pseudonym != secrets.pseudonym(&record.key) || entry.version_id != record.version.version_id {
            report.problems.push(format!("{name}: ledger entry {} names another record", record.version.leaf_index));
            continue;
        }
        if entry.author.as_deref() != Some(secrets.author_hash(record.version.author.as_deref()).as_str()) {
            report.problems.push(format!(
                "{name}: records/catalog.log names an author that ledger entry {} does not (or the entry binds none)",
                record.version.leaf_index
            ));
        }
        if record.erasure.is_some() {
            report.erasures += 1;
            if entry.kind != EntryKind::Erase {
                report.problems.push(format!("{name}: catalog records an erasure, ledger entry says {:?}", entry.kind));
            }
            continue;
        }
        if erased.contains(&record.key) {
            report.erased_versions += 1;
            if let Some(sealed) = &record.version.sealed {
                let context =
                    SealContext { resource_type: &record.key.resource_type, id: &record.key.id, version_id: record.version.version_id };
                if blobs.holds(&sealed.cid) {
                    report
                        .problems
                        .push(format!("{name}: erased, but its sealed blob is still stored (start the gateway to finish the erasure)"));
                }
                if let (KeyHolder::Patient(_), Ok(_)) = (sealed.wrapped_key.holder, keyring.unwrap(&sealed.wrapped_key, context)) {
                    report.problems.push(format!("{name}: erased, but its patient key still unwraps it"));
                }
            }
            continue;
        }
        let Some(sealed) = &record.version.sealed else {
            if entry.kind != EntryKind::Delete {
                report.problems.push(format!("{name}: catalog says deleted, ledger says {:?}", entry.kind));
            }
            continue;
        };
        report.blobs_checked += 1;
        if entry.cid.as_deref() != Some(sealed.cid.to_string().as_str()) {
            report.problems.push(format!("{name}: ledger entry names another CID"));
            continue;
        }
        let sealed_bytes = match blob::read_file(&blobs, &sealed.cid) {
            Ok(bytes) => bytes,
            Err(error) => {
                report.problems.push(format!("{name}: blob {}: {error}", sealed.cid));
                continue;
            }
        };
        let context = SealContext { resource_type: &record.key.resource_type, id: &record.key.id, version_id: record.version.version_id };
        let plaintext = keyring.unwrap(&sealed.wrapped_key, context).and_then(|data_key| seal::unseal(&sealed_bytes, &data_key, context));
        match plaintext {
            Err(error) => report.problems.push(format!("{name}: blob {} does not open: {error}", sealed.cid)),
            Ok(plaintext) if entry.content_hash.as_deref() != Some(secrets.content_hash(&plaintext).as_str()) => {
                report.problems.push(format!("{name}: plaintext does not match the ledger's content hash"))
            }
            Ok(_) => {}
        }
    }
    Ok(report)
}

/// Checks `<directory>/checkpoints.log` against the leaves: every note verifies under the
/// gateway key (origin from the first note, else `default_origin`), sizes never shrink, roots
/// match. Returns (checkpoints, newest size, newest size that verifies).
fn check_checkpoints(
    directory: &Path,
    name: &str,
    leaf_hashes: &[Hash],
    default_origin: &str,
    secrets: &LedgerSecrets,
    problems: &mut Vec<String>,
) -> Result<(u64, u64, u64), VerifyError> {
    let mut notes = Vec::new();
    let end = journal::scan(&directory.join("checkpoints.log"), |_, record| {
        notes.push(String::from_utf8_lossy(record).into_owned());
    })?;
    describe_scan_end(&format!("{name}/checkpoints.log"), end, problems);
    let origin = notes.first().and_then(|text| text.lines().next()).map_or_else(|| default_origin.to_string(), str::to_string);
    let verifier = NoteSigner::new(origin.clone(), secrets.signing_key.clone())?.verifier();
    let (mut count, mut newest, mut previous_size, mut verified) = (0, 0, 0, 0);
    let what = if name == "ledger" { "checkpoint".to_string() } else { format!("{name} checkpoint") };
    for (position, text) in notes.iter().enumerate() {
        count += 1;
        match note::open_checkpoint(text, &origin, std::slice::from_ref(&verifier)) {
            Err(error) => problems.push(format!("{what} {position}: {error}")),
            Ok((checkpoint, _)) => {
                let size = checkpoint.tree_size();
                if size < previous_size {
                    problems.push(format!("{what} {position}: tree size {size} is smaller than an earlier {previous_size}"));
                }
                previous_size = previous_size.max(size);
                newest = size;
                if size > leaf_hashes.len() as u64 {
                    problems.push(format!(
                        "{what} {position}: covers {size} entries but only {} are intact in {name}/entries.log",
                        leaf_hashes.len()
                    ));
                } else if merkle::root_from_leaf_hashes(&leaf_hashes[..size as usize]) != *checkpoint.root_hash() {
                    problems.push(format!("{what} {position}: root hash does not match the entries (size {size})"));
                } else {
                    verified = verified.max(size);
                }
            }
        }
    }
    Ok((count, newest, verified))
}
