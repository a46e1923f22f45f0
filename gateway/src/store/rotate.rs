//! `fhir-gateway keys rotate`: a new key-encryption key wraps every patient key and every data
//! key no patient key holds; sealed blobs, and so their CIDs and the ledger, are untouched. Runs with the gateway stopped (the data
//! directory lock enforces it).
//!
//! Crash safety: the re-wrapped catalog is written to `catalog.log.rotating`, synced, the catalog
//! store (`catalog.redb`, derived from the journal) removed, and the journal renamed over
//! `catalog.log`; the patient keys likewise (`patients.keys.rotating`); only then are the
//! old KEK files deleted. A crash at any point leaves either
//! the old catalog with the old KEKs, or the new catalog with (possibly still) the old KEK files.

use std::path::Path;

use super::DataLayout;
use super::catalog::{CatalogRecord, SealedLocation};
use crate::journal::{self, Journal, ScanEnd};
use crate::seal::{KeyHolder, Keyring, SealContext};

pub fn rotate_keys(data_directory: &Path) -> Result<String, String> {
    let layout = DataLayout::new(data_directory);
    let _lock = super::lock_data_directory(&layout).map_err(|error| error.to_string())?;
    let mut keyring = Keyring::open_or_create(&layout.keys()).map_err(|error| error.to_string())?;
    let old_kek_ids = keyring.kek_ids();
    let mut records = Vec::new();
    let mut decode_error = None;
    let end = journal::scan(&layout.catalog(), |offset, bytes| match CatalogRecord::decode(bytes) {
        Ok(record) => records.push(record),
        Err(reason) => {
            decode_error.get_or_insert(format!("catalog record at offset {offset}: {reason}"));
        }
    })
    .map_err(|error| error.to_string())?;
    if let Some(error) = decode_error {
        return Err(error);
    }
    if end != ScanEnd::Clean {
        return Err(format!("the catalog is not clean ({end:?}); start and stop the gateway, or run verify"));
    }
    let new_kek_id = keyring.add_kek().map_err(|error| error.to_string())?;
    let mut rewrapped = 0u64;
    for record in &mut records {
        if let Some(sealed) = record.version.sealed.as_ref().filter(|sealed| matches!(sealed.wrapped_key.holder, KeyHolder::Kek(_))) {
            let context =
                SealContext { resource_type: &record.key.resource_type, id: &record.key.id, version_id: record.version.version_id };
            let wrapped_key = keyring.rewrap(&sealed.wrapped_key, context).map_err(|error| error.to_string())?;
            record.version.sealed = Some(SealedLocation { cid: sealed.cid, wrapped_key });
            rewrapped += 1;
        }
    }
    let rotating_path = layout.catalog().with_extension("log.rotating");
    let _ = std::fs::remove_file(&rotating_path);
    let rotating = Journal::open(&rotating_path, |_, _| {}).map_err(|error| error.to_string())?;
    let encoded: Vec<Vec<u8>> = records.iter().map(CatalogRecord::encode).collect();
    rotating.append(&encoded).map_err(|error| error.to_string())?;
    rotating.sync().map_err(|error| error.to_string())?;
    drop(rotating);
    // The catalog store holds the old wrapped keys: removed first, the next start fills it again.
    match std::fs::remove_file(layout.catalog_store()) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.to_string()),
        _ => {}
    }
    std::fs::rename(&rotating_path, layout.catalog()).map_err(|error| error.to_string())?;
    if let Some(directory) = layout.catalog().parent() {
        std::fs::File::open(directory).and_then(|directory| directory.sync_all()).map_err(|error| error.to_string())?;
    }
    let patient_keys = keyring.rewrap_patient_keys().map_err(|error| error.to_string())?;
    for kek_id in &old_kek_ids {
        keyring.retire_kek(*kek_id).map_err(|error| error.to_string())?;
    }
    Ok(format!(
        "KEK {new_kek_id} is active; {patient_keys} patient keys and {rewrapped} other data keys re-wrapped; retired KEK(s) {old_kek_ids:?}; no blob changed"
    ))
}
