//! `fhir-gateway keys rotate`: a new key-encryption key wraps every patient key and every data
//! key no patient key holds; sealed blobs, and so their CIDs and the ledger, are untouched. Runs with the gateway stopped (the data
//! directory lock enforces it).
//!
//! Crash safety: the re-wrapped catalog is written to `catalog.log.rotating`, synced, the catalog
//! store (`catalog.redb`, derived from the journal) removed, and the journal renamed over
//! `catalog.log`; the patient keys likewise (`patients.keys.rotating`); only then are the
//! old KEK files deleted. A crash at any point leaves either
//! the old catalog with the old KEKs, or the new catalog with (possibly still) the old KEK files.

use std::fmt;
use std::path::{Path, PathBuf};

use super::catalog::{CatalogRecord, SealedLocation};
use super::{DataLayout, OpenError};
use crate::journal::{self, Journal, JournalError, ScanEnd};
use crate::seal::{KeyHolder, Keyring, KeyringError, SealContext, SealError};

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("catalog record at offset {offset}: {reason}")]
    Record { offset: u64, reason: String },
    #[error("the catalog is not clean ({0:?}); start and stop the gateway, or run verify")]
    NotClean(ScanEnd),
    #[error("re-wrapping a data key: {0}")]
    Seal(#[from] SealError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// What a rotation did.
#[derive(Debug)]
pub struct RotateSummary {
    pub new_kek_id: u32,
    pub patient_keys: u64,
    pub other_data_keys: u64,
    pub retired_kek_ids: Vec<u32>,
}

impl fmt::Display for RotateSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let RotateSummary { new_kek_id, patient_keys, other_data_keys, retired_kek_ids } = self;
        write!(
            f,
            "KEK {new_kek_id} is active; {patient_keys} patient keys and {other_data_keys} other data keys re-wrapped; retired KEK(s) {retired_kek_ids:?}; no blob changed"
        )
    }
}

pub fn rotate_keys(data_directory: &Path) -> Result<RotateSummary, RotateError> {
    let layout = DataLayout::new(data_directory);
    let _lock = super::lock_data_directory(&layout)?;
    let mut keyring = Keyring::open_or_create(&layout.keys())?;
    let old_kek_ids = keyring.kek_ids();
    let mut records = Vec::new();
    let mut decode_error = None;
    let end = journal::scan(&layout.catalog(), |offset, bytes| match CatalogRecord::decode(bytes) {
        Ok(record) => records.push(record),
        Err(reason) => {
            decode_error.get_or_insert(RotateError::Record { offset, reason });
        }
    })?;
    if let Some(error) = decode_error {
        return Err(error);
    }
    if end != ScanEnd::Clean {
        return Err(RotateError::NotClean(end));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RotateError::Io { path, source }
    };
    let new_kek_id = keyring.add_kek()?;
    let mut rewrapped = 0u64;
    for record in &mut records {
        if let Some(sealed) = record.version.sealed.as_ref().filter(|sealed| matches!(sealed.wrapped_key.holder, KeyHolder::Kek(_))) {
            let context =
                SealContext { resource_type: &record.key.resource_type, id: &record.key.id, version_id: record.version.version_id };
            let wrapped_key = keyring.rewrap(&sealed.wrapped_key, context)?;
            record.version.sealed = Some(SealedLocation { cid: sealed.cid, wrapped_key });
            rewrapped += 1;
        }
    }
    let rotating_path = layout.catalog().with_extension("log.rotating");
    let _ = std::fs::remove_file(&rotating_path);
    let rotating = Journal::open(&rotating_path, |_, _| {})?;
    let encoded: Vec<Vec<u8>> = records.iter().map(CatalogRecord::encode).collect();
    rotating.append(&encoded)?;
    rotating.sync()?;
    drop(rotating);
    // The catalog store holds the old wrapped keys: removed first, the next start fills it again.
    match std::fs::remove_file(layout.catalog_store()) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(io(&layout.catalog_store())(error)),
        _ => {}
    }
    std::fs::rename(&rotating_path, layout.catalog()).map_err(io(&layout.catalog()))?;
    if let Some(directory) = layout.catalog().parent() {
        std::fs::File::open(directory).and_then(|directory| directory.sync_all()).map_err(io(directory))?;
    }
    let patient_keys = keyring.rewrap_patient_keys()?;
    for kek_id in &old_kek_ids {
        keyring.retire_kek(*kek_id)?;
    }
    Ok(RotateSummary { new_kek_id, patient_keys, other_data_keys: rewrapped, retired_kek_ids: old_kek_ids })
}
