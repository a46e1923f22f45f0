//! What a start keeps of the catalog and the ledger: a pure decision over what their scans
//! found, made before anything is cut, and shared with `verify` so both say the same.
//!
//! The ledger fsync is the commit point: a write's blocks and catalog record are synced before
//! its leaf is appended, and it is acknowledged after the leaf is synced. So
//!
//! - every intact ledger leaf was written after its catalog record became durable: leaf `n`
//!   must have exactly one catalog record, the `n`-th, before the catalog's crash tail. A leaf
//!   without one is damage, never a crash;
//! - a catalog record past the ledger's end, or of a transaction only partly in the ledger,
//!   was never acknowledged and is dropped (with the partial transaction's leaves), unless a
//!   signed checkpoint covers a leaf that would go.

use std::path::{Path, PathBuf};

use super::catalog::CatalogRecord;

/// What to cut at open.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RecoveryPlan {
    /// How many of the scanned catalog records are kept (a prefix).
    pub kept_records: usize,
    /// Cut the ledger back to this many leaves (a transaction only partly durable).
    pub ledger_cut: Option<u64>,
    /// Cut the catalog here: records of writes never acknowledged (its crash tail, if any, is
    /// cut by opening it).
    pub catalog_cut: Option<u64>,
}

/// Why the catalog and the ledger cannot both be right: damage.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path} is damaged at offset {offset}: {reason}; run `fhir-gateway verify`")]
pub struct CatalogDamage {
    pub path: PathBuf,
    pub offset: u64,
    pub reason: String,
}

/// The scans: `records` are the intact catalog records with their offsets, in file order, from
/// the record of ledger entry `first_leaf` on (a start reads only the records past those its
/// catalog store holds; `verify` reads them all); `readable_end` is where the catalog's intact
/// records end (its crash tail, or its length).
pub(crate) struct Scanned<'a> {
    pub catalog_path: &'a Path,
    pub first_leaf: u64,
    pub records: &'a [(u64, CatalogRecord)],
    pub readable_end: u64,
    pub tree_size: u64,
    pub checkpointed: u64,
}

pub(crate) fn plan(scanned: &Scanned) -> Result<RecoveryPlan, CatalogDamage> {
    let Scanned { catalog_path, first_leaf, records, readable_end, tree_size, checkpointed } = *scanned;
    let damage = |offset: u64, reason: String| CatalogDamage { path: catalog_path.to_path_buf(), offset, reason };
    if tree_size < first_leaf {
        let offset = records.first().map_or(readable_end, |(offset, _)| *offset);
        return Err(damage(offset, format!("its store holds ledger entries up to {first_leaf}, but the ledger only {tree_size}")));
    }
    let unacknowledged =
        |record: &CatalogRecord| record.version.leaf_index >= tree_size || record.transaction_end_leaf.is_some_and(|end| end > tree_size);
    let cut_leaf = records.iter().filter(|(_, record)| unacknowledged(record)).map(|(_, record)| record.version.leaf_index).min();
    let kept_leaves = cut_leaf.map_or(tree_size, |cut_leaf| cut_leaf.min(tree_size));
    if kept_leaves < checkpointed {
        let offset = records.iter().find(|(_, record)| unacknowledged(record)).map_or(readable_end, |(offset, _)| *offset);
        let reason = format!(
            "its record of ledger entry {} belongs to a transaction the ledger holds only in part, but a signed checkpoint covers {checkpointed} entries",
            kept_leaves
        );
        return Err(damage(offset, reason));
    }
    for (position, (offset, record)) in records.iter().enumerate() {
        let leaf_index = record.version.leaf_index;
        let position = first_leaf + position as u64;
        if position >= kept_leaves {
            if leaf_index < kept_leaves {
                return Err(damage(*offset, format!("a second record of ledger entry {leaf_index}")));
            }
        } else if leaf_index != position {
            return Err(damage(*offset, format!("the record of ledger entry {position} is missing (this one is of entry {leaf_index})")));
        }
    }
    let scanned_end = first_leaf + records.len() as u64;
    if scanned_end < kept_leaves {
        let reason = format!(
            "ledger entries {scanned_end}..{kept_leaves} were acknowledged but have no catalog record; the intact records end here"
        );
        return Err(damage(readable_end, reason));
    }
    let kept_records = (kept_leaves - first_leaf) as usize;
    Ok(RecoveryPlan {
        kept_records,
        ledger_cut: cut_leaf.filter(|cut_leaf| *cut_leaf < tree_size),
        catalog_cut: records.get(kept_records).map(|(offset, _)| *offset),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::catalog::{ResourceKey, VersionRecord};

    fn record(leaf_index: u64, transaction_end_leaf: Option<u64>) -> (u64, CatalogRecord) {
        let version =
            VersionRecord { version_id: 1, leaf_index, last_updated: time::OffsetDateTime::UNIX_EPOCH, sealed: None, author: None };
        let key = ResourceKey { resource_type: "Patient".into(), id: format!("p{leaf_index}") };
        (100 * leaf_index, CatalogRecord { key, version, identifier_hashes: Vec::new(), transaction_end_leaf, erasure: None })
    }

    fn check(
        records: &[(u64, CatalogRecord)],
        crash_tail: Option<u64>,
        tree_size: u64,
        checkpointed: u64,
    ) -> Result<RecoveryPlan, CatalogDamage> {
        let readable_end = crash_tail.unwrap_or(100 * records.len() as u64);
        let path = Path::new("records/catalog.log");
        plan(&Scanned { catalog_path: path, first_leaf: 0, records, readable_end, tree_size, checkpointed })
    }

    #[test]
    fn records_past_the_ledger_and_partial_transactions_are_cut() {
        let records: Vec<_> = (0..4).map(|leaf| record(leaf, None)).collect();
        assert_eq!(check(&records, None, 4, 4), Ok(RecoveryPlan { kept_records: 4, ledger_cut: None, catalog_cut: None }));
        assert_eq!(check(&records, Some(400), 4, 4), Ok(RecoveryPlan { kept_records: 4, ledger_cut: None, catalog_cut: None }));
        assert_eq!(check(&records, Some(400), 2, 2), Ok(RecoveryPlan { kept_records: 2, ledger_cut: None, catalog_cut: Some(200) }));
        let transaction = [record(0, None), record(1, Some(4)), record(2, Some(4)), record(3, Some(4))];
        assert_eq!(check(&transaction, None, 3, 1), Ok(RecoveryPlan { kept_records: 1, ledger_cut: Some(1), catalog_cut: Some(100) }));
        assert!(check(&transaction, None, 3, 2).is_err(), "a checkpoint covers part of the transaction");
    }

    #[test]
    fn a_ledger_leaf_without_its_catalog_record_is_damage_never_a_crash() {
        let records: Vec<_> = (0..3).map(|leaf| record(leaf, None)).collect();
        let error = check(&records, Some(300), 4, 0).unwrap_err();
        assert_eq!(error.offset, 300);
        assert!(error.to_string().starts_with("records/catalog.log is damaged at offset 300: ledger entries 3..4"), "{error}");
        let error = check(&records, None, 4, 0).unwrap_err();
        assert_eq!(error.offset, 300, "the last frame removed whole");
        let gap = [record(0, None), record(2, None)];
        assert_eq!(check(&gap, None, 3, 0).unwrap_err().offset, 200);
        let twice = [record(0, None), record(1, None), (200, record(1, None).1)];
        assert_eq!(check(&twice, None, 2, 0).unwrap_err().offset, 200);
    }

    #[test]
    fn a_start_checks_only_the_records_past_its_catalog_store() {
        let tail: Vec<_> = (3..6).map(|leaf| record(leaf, None)).collect();
        let scanned = |tree_size| Scanned {
            catalog_path: Path::new("c"),
            first_leaf: 3,
            records: &tail,
            readable_end: 600,
            tree_size,
            checkpointed: 3,
        };
        assert_eq!(plan(&scanned(6)), Ok(RecoveryPlan { kept_records: 3, ledger_cut: None, catalog_cut: None }));
        assert_eq!(plan(&scanned(4)), Ok(RecoveryPlan { kept_records: 1, ledger_cut: None, catalog_cut: Some(400) }));
        assert!(plan(&scanned(2)).unwrap_err().reason.contains("the ledger only 2"), "the store covers entries the ledger lost");
        let gap = [record(4, None)];
        let scanned =
            Scanned { catalog_path: Path::new("c"), first_leaf: 3, records: &gap, readable_end: 500, tree_size: 5, checkpointed: 0 };
        assert_eq!(plan(&scanned).unwrap_err().offset, 400);
    }
}
