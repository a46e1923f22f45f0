//! `fhir-gateway compact` (and the end of `import`): shrinks the derived B-tree stores of a data
//! directory (gateway stopped). Their copy-on-write pages and the pages freed by non-durable
//! commits leave them two to three times larger than what they hold; the smaller they are, the
//! more of a store's read path fits in memory.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{DataLayout, OpenError, lock_data_directory};

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("compacting {path}: {source}")]
    Store { path: PathBuf, source: redb::Error },
}

/// Each store compacted: its path, its size before and after.
#[derive(Debug, Default)]
pub struct CompactSummary {
    pub stores: Vec<(PathBuf, u64, u64)>,
}

impl fmt::Display for CompactSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (path, before, after) in &self.stores {
            writeln!(f, "compacted {}: {} MiB -> {} MiB", path.display(), before >> 20, after >> 20)?;
        }
        Ok(())
    }
}

/// The page cache while compacting (redb's default is 1 GiB).
const CACHE_BYTES: usize = 64 << 20;

/// The derived B-tree stores of a data directory.
fn stores(layout: &DataLayout) -> [PathBuf; 4] {
    [
        layout.catalog_store(),
        layout.blocks().join("index.redb"),
        layout.keys().join("patients.index.redb"),
        layout.audit().join("by-patient.redb"),
    ]
}

pub fn compact(data_directory: &Path) -> Result<CompactSummary, CompactError> {
    let layout = DataLayout::new(data_directory);
    let _lock = lock_data_directory(&layout)?;
    let mut summary = CompactSummary::default();
    for path in stores(&layout).into_iter().filter(|path| path.exists()) {
        let error = |source: redb::Error| CompactError::Store { path: path.clone(), source };
        let before = std::fs::metadata(&path).map_err(|source| error(source.into()))?.len();
        {
            let mut db = redb::Database::builder().set_cache_size(CACHE_BYTES).open(&path).map_err(|source| error(source.into()))?;
            db.compact(redb::CompactionMode::Maximum).map_err(|source| error(source.into()))?;
        }
        let after = std::fs::metadata(&path).map_err(|source| error(source.into()))?.len();
        summary.stores.push((path, before, after));
    }
    Ok(summary)
}
