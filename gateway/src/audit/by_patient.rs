//! The audit trail's index by patient, on disk: `<audit>/by-patient.redb` ([redb]), derived
//! from the trail's leaves (rebuilt from them when missing). The writer thread adds each group
//! after its sync (durably at most every [`DURABLE_EVERY`], and at close) with a marker: how
//! many leaves it covers. A start reads only the leaves past the marker.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

/// How often the index is made durable (at most).
const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// Its page cache.
const CACHE_BYTES: usize = 8 << 20;

/// patient id | 0 | leaf index (u64 BE) → ().
const EVENTS: TableDefinition<&[u8], ()> = TableDefinition::new("events");
/// `covered`: every leaf below it is indexed.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

#[derive(Debug, thiserror::Error)]
#[error("the audit index by patient: {0}")]
pub struct IndexError(#[from] redb::Error);

macro_rules! from_redb {
    ($($error:ty),*) => {$(impl From<$error> for IndexError {
        fn from(error: $error) -> Self {
            IndexError(error.into())
        }
    })*};
}
from_redb!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError, redb::SetDurabilityError);

fn prefix(patient: &str) -> Vec<u8> {
    let mut key = patient.as_bytes().to_vec();
    key.push(0);
    key
}

pub(super) struct PatientIndex {
    db: Database,
    last_durable: Mutex<Instant>,
}

impl PatientIndex {
    pub fn open(path: &Path) -> Result<PatientIndex, IndexError> {
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(path)?;
        let write = db.begin_write()?;
        write.open_table(EVENTS)?;
        write.open_table(META)?;
        write.commit()?;
        Ok(PatientIndex { db, last_durable: Mutex::new(Instant::now()) })
    }

    /// How many leaves of the trail are indexed.
    pub fn covered(&self) -> Result<u64, IndexError> {
        let read = self.db.begin_read()?;
        Ok(read.open_table(META)?.get("covered")?.map_or(0, |value| value.value()))
    }

    /// Indexes events (patient, leaf index); every leaf below `covered` is then indexed.
    pub fn add<'p>(&self, events: impl IntoIterator<Item = (&'p str, u64)>, covered: u64, durable: bool) -> Result<(), IndexError> {
        let mut last_durable = self.last_durable.lock().expect("audit index lock");
        let durable = durable || last_durable.elapsed() >= DURABLE_EVERY;
        let mut write = self.db.begin_write()?;
        if durable {
            write.set_quick_repair(true);
        } else {
            write.set_durability(Durability::None)?;
        }
        {
            let mut table = write.open_table(EVENTS)?;
            for (patient, leaf_index) in events {
                let mut key = prefix(patient);
                key.extend_from_slice(&leaf_index.to_be_bytes());
                table.insert(key.as_slice(), ())?;
            }
            write.open_table(META)?.insert("covered", covered)?;
        }
        write.commit()?;
        if durable {
            *last_durable = Instant::now();
        }
        Ok(())
    }

    /// The leaf indexes of the events about `patient`, newest first.
    pub fn events_of(&self, patient: &str) -> Result<Vec<u64>, IndexError> {
        let read = self.db.begin_read()?;
        let table = read.open_table(EVENTS)?;
        let start = prefix(patient);
        let mut end = patient.as_bytes().to_vec();
        end.push(1);
        let mut leaves = Vec::new();
        for entry in table.range(start.as_slice()..end.as_slice())?.rev() {
            let key = entry?.0.value().to_vec();
            if let Some(leaf) = key.get(start.len()..).and_then(|bytes| <[u8; 8]>::try_from(bytes).ok()) {
                leaves.push(u64::from_be_bytes(leaf));
            }
        }
        Ok(leaves)
    }
}
