//! The ledger on disk: `<data>/ledger/entries.log` (one journal record per leaf, in leaf order),
//! `<data>/ledger/checkpoints.log` (every signed checkpoint note ever issued) and the index of
//! leaf offsets and Merkle hashes ([`super::tiles`]): nothing grows in memory with the log.
//!
//! Leaves become visible (counted in [`LedgerLog::tree_size`]) only after they are durable.
//! On open, the newest checkpoint must verify under the gateway key and match the root of the
//! leaves it covers; the leaves after it (the tail since that checkpoint) must be free of damage
//! (see [`crate::journal`]); otherwise the gateway refuses to start. Leaves a checkpoint covers
//! are not read again at a start: the index gives their root, and `fhir-gateway verify` reads
//! every leaf. A signed checkpoint proves the leaves it covers were durable, so they can never
//! be a crash tail. [`LedgerLog::recover`] checks all of this without changing anything but the
//! derived index; [`RecoveredLedger::open`] then cuts the crash tails.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::merkle::{self, CompactRange, Hash};
use super::note::{self, Checkpoint, NoteSigner};
use super::tiles::{self, LogIndex};
use crate::journal::{self, Journal, JournalError};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("checkpoint: {0}")]
    Note(#[from] note::NoteError),
    #[error("merkle: {0}")]
    Merkle(#[from] merkle::ProofError),
    #[error("ledger index: {0}")]
    Index(#[from] tiles::IndexError),
    #[error("the newest checkpoint (tree size {checkpoint_size}) does not match the {tree_size} leaves on disk")]
    CheckpointMismatch { checkpoint_size: u64, tree_size: u64 },
    #[error(
        "{path}: the newest signed checkpoint covers {checkpoint_size} entries but only {tree_size} are intact, \
         ending at offset {offset}; run `fhir-gateway verify`"
    )]
    CheckpointedEntriesMissing { path: std::path::PathBuf, offset: u64, checkpoint_size: u64, tree_size: u64 },
    #[error("leaf {0} does not exist")]
    NoSuchLeaf(u64),
}

impl From<std::io::Error> for LedgerError {
    fn from(error: std::io::Error) -> Self {
        LedgerError::Index(tiles::IndexError::Io(error))
    }
}

pub struct LedgerLog {
    entries: Journal,
    checkpoints: Journal,
    signer: NoteSigner,
    state: RwLock<LedgerState>,
}

struct LedgerState {
    index: LogIndex,
    frontier: CompactRange,
    latest_checkpoint: Option<(Checkpoint, String)>,
}

/// The ledger as found on disk and checked, not yet opened for appends: nothing has been cut
/// (the derived index holds every intact leaf).
pub struct RecoveredLedger {
    entries: journal::Recovered,
    checkpoints: journal::Recovered,
    signer: NoteSigner,
    index: LogIndex,
    first_leaf: Option<Vec<u8>>,
    latest_checkpoint: Option<(Checkpoint, String)>,
}

impl RecoveredLedger {
    /// The number of intact leaves.
    pub fn tree_size(&self) -> u64 {
        self.index.size()
    }

    /// The number of leaves the newest signed checkpoint covers.
    pub fn checkpointed(&self) -> u64 {
        self.latest_checkpoint.as_ref().map_or(0, |(checkpoint, _)| checkpoint.tree_size())
    }

    /// The bytes of leaf 0, if there is one and it is intact.
    pub fn first_leaf(&self) -> Option<&[u8]> {
        self.first_leaf.as_deref()
    }

    /// Opens both journals for appends, cutting off their crash tails.
    pub fn open(self) -> Result<LedgerLog, LedgerError> {
        let RecoveredLedger { entries, checkpoints, signer, index, latest_checkpoint, .. } = self;
        let frontier = index.frontier(index.size())?;
        Ok(LedgerLog {
            entries: entries.open()?,
            checkpoints: checkpoints.open()?,
            signer,
            state: RwLock::new(LedgerState { index, frontier, latest_checkpoint }),
        })
    }
}

/// Leaves appended to the index at once while a start reads the log.
const INDEX_BATCH: usize = 4096;

impl LedgerLog {
    pub fn open(directory: &Path, signing_key: SigningKey, origin: &str) -> Result<LedgerLog, LedgerError> {
        LedgerLog::recover(directory, signing_key, origin)?.open()
    }

    /// Scans and checks the ledger without changing anything but its derived index.
    pub fn recover(directory: &Path, signing_key: SigningKey, origin: &str) -> Result<RecoveredLedger, LedgerError> {
        let signer = NoteSigner::new(origin, signing_key)?;
        let mut notes = Vec::new();
        let checkpoints = Journal::recover(&directory.join("checkpoints.log"), |_, record| {
            notes.push(String::from_utf8_lossy(record).into_owned());
        })?;
        let newest = match notes.pop() {
            None => None,
            Some(text) => Some((note::open_checkpoint(&text, origin, &[signer.verifier()])?.0, text)),
        };
        drop(notes);
        let entries_path = directory.join("entries.log");
        let mut index = LogIndex::open(directory)?;
        let (trusted, tail_start) = trusted_prefix(&index, &entries_path, newest.as_ref().map(|(checkpoint, _)| checkpoint))?;
        index.truncate(trusted)?;
        let mut batch: Vec<(u64, Hash)> = Vec::new();
        let mut first_leaf = None;
        let mut failed = None;
        let entries = Journal::recover_from(&entries_path, tail_start, |offset, leaf| {
            if offset == 0 {
                first_leaf = Some(leaf.to_vec());
            }
            batch.push((offset, merkle::leaf_hash(leaf)));
            if batch.len() >= INDEX_BATCH
                && let Err(error) = index.append(&std::mem::take(&mut batch))
            {
                failed.get_or_insert(error);
            }
        })?;
        index.append(&batch)?;
        if let Some(error) = failed {
            return Err(error.into());
        }
        if first_leaf.is_none() && index.size() > 0 {
            // Damage there is found like damage anywhere before the checkpoint: by the read
            // path and by verify, not by a start.
            first_leaf = journal::read_record(&entries_path, 0).ok().map(|(leaf, _)| leaf);
        }
        let tree_size = index.size();
        if let Some((checkpoint, _)) = &newest {
            if checkpoint.tree_size() > tree_size {
                let offset = entries.crash_tail().unwrap_or_else(|| std::fs::metadata(&entries_path).map_or(0, |metadata| metadata.len()));
                return Err(LedgerError::CheckpointedEntriesMissing {
                    path: entries_path,
                    offset,
                    checkpoint_size: checkpoint.tree_size(),
                    tree_size,
                });
            }
            if index.root(checkpoint.tree_size())? != *checkpoint.root_hash() {
                return Err(LedgerError::CheckpointMismatch { checkpoint_size: checkpoint.tree_size(), tree_size });
            }
        }
        Ok(RecoveredLedger { entries, checkpoints, signer, index, first_leaf, latest_checkpoint: newest })
    }

    pub fn tree_size(&self) -> u64 {
        self.state.read().expect("ledger state").index.size()
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        *self.signer.verifier().public_key()
    }

    /// The note verifier key (`<origin>+<keyid>+<base64>`) that followers use to check checkpoints.
    pub fn verifier_key(&self) -> String {
        self.signer.verifier_key()
    }

    pub fn origin(&self) -> &str {
        self.signer.name()
    }

    /// Appends leaves and makes them durable; returns the index of the first one. Only the
    /// commit pipeline calls this, from one thread.
    pub fn append_durably<L: AsRef<[u8]>>(&self, leaves: &[L]) -> Result<u64, LedgerError> {
        let offsets = self.entries.append(leaves)?;
        self.entries.sync()?;
        let mut state = self.state.write().expect("ledger state");
        let first_leaf_index = state.index.size();
        let indexed: Vec<(u64, Hash)> =
            leaves.iter().zip(offsets).map(|(leaf, offset)| (offset, merkle::leaf_hash(leaf.as_ref()))).collect();
        state.index.append(&indexed)?;
        for (_, leaf_hash) in indexed {
            state.frontier.append(leaf_hash)?;
        }
        Ok(first_leaf_index)
    }

    /// Cuts the log back to `tree_size` leaves (recovery from a partially durable transaction).
    /// Refused if a signed checkpoint covers any leaf that would go.
    pub fn truncate(&self, tree_size: u64) -> Result<(), LedgerError> {
        let mut state = self.state.write().expect("ledger state");
        let current = state.index.size();
        if let Some((checkpoint, _)) = &state.latest_checkpoint
            && checkpoint.tree_size() > tree_size
        {
            return Err(LedgerError::CheckpointMismatch { checkpoint_size: checkpoint.tree_size(), tree_size });
        }
        if tree_size >= current {
            return Ok(());
        }
        self.entries.truncate(state.index.offset(tree_size)?)?;
        state.index.truncate(tree_size)?;
        state.frontier = state.index.frontier(tree_size)?;
        Ok(())
    }

    pub fn read_leaf(&self, leaf_index: u64) -> Result<Vec<u8>, LedgerError> {
        let offset = {
            let state = self.state.read().expect("ledger state");
            if leaf_index >= state.index.size() {
                return Err(LedgerError::NoSuchLeaf(leaf_index));
            }
            state.index.offset(leaf_index)?
        };
        Ok(self.entries.read_at(offset)?)
    }

    /// Signs and durably records a checkpoint of the current tree, unless the newest one
    /// already covers it. Returns the newest checkpoint note. The index is synced first: what
    /// a checkpoint covers, the next start takes from the index.
    pub fn checkpoint(&self) -> Result<String, LedgerError> {
        let (tree_size, root_hash) = {
            let state = self.state.read().expect("ledger state");
            if let Some((checkpoint, text)) = &state.latest_checkpoint
                && checkpoint.tree_size() == state.index.size()
            {
                return Ok(text.clone());
            }
            state.index.sync()?;
            (state.frontier.tree_size(), state.frontier.root())
        };
        let checkpoint = Checkpoint::new(self.signer.name(), tree_size, root_hash)?;
        let text = note::sign_checkpoint(&checkpoint, &self.signer)?;
        self.checkpoints.append(&[text.as_bytes()])?;
        self.checkpoints.sync()?;
        self.state.write().expect("ledger state").latest_checkpoint = Some((checkpoint, text.clone()));
        Ok(text)
    }

    pub fn latest_checkpoint(&self) -> Option<(u64, String)> {
        let state = self.state.read().expect("ledger state");
        state.latest_checkpoint.as_ref().map(|(checkpoint, text)| (checkpoint.tree_size(), text.clone()))
    }

    /// An RFC 9162 inclusion proof of `leaf_index` in the tree of size `tree_size`.
    pub fn inclusion_proof(&self, leaf_index: u64, tree_size: u64) -> Result<Vec<Hash>, LedgerError> {
        Ok(self.state.read().expect("ledger state").index.inclusion_proof(leaf_index, tree_size)?)
    }

    /// An RFC 9162 consistency proof between the trees of `old_size` and `new_size` leaves.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, LedgerError> {
        Ok(self.state.read().expect("ledger state").index.consistency_proof(old_size, new_size)?)
    }
}

/// How many leaves of the index a start can take without reading them again, and the journal
/// offset after them: the leaves the newest checkpoint covers, if the index gives its root.
/// Otherwise (no index yet, an index not synced, a different log) none: the index is rebuilt
/// from the whole log.
fn trusted_prefix(index: &LogIndex, entries_path: &PathBuf, newest: Option<&Checkpoint>) -> Result<(u64, u64), LedgerError> {
    let Some(checkpoint) = newest.filter(|checkpoint| checkpoint.tree_size() > 0) else {
        return Ok((0, 0));
    };
    let size = checkpoint.tree_size();
    if index.size() < size || index.root(size)? != *checkpoint.root_hash() {
        if std::fs::metadata(entries_path).is_ok_and(|metadata| metadata.len() > 0) {
            tracing::warn!(
                index_leaves = index.size(),
                checkpoint_size = size,
                "the ledger index does not give the newest checkpoint's root; rebuilding it from the whole log"
            );
        }
        return Ok((0, 0));
    }
    match index.offset(size - 1).ok().and_then(|offset| journal::read_record(entries_path, offset).ok()) {
        Some((leaf, end)) if merkle::leaf_hash(&leaf) == index.perfect(0, size - 1)? => Ok((size, end)),
        _ => {
            tracing::warn!(checkpoint_size = size, "the ledger index names a wrong offset; rebuilding it from the whole log");
            Ok((0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_and_checkpoints_survive_reopen() {
        let directory = std::env::temp_dir().join(format!("fg-ledger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        let key = SigningKey::from_bytes(&[5u8; 32]);
        let origin = "localhost/fhir-gateway/test";
        let note_text = {
            let ledger = LedgerLog::open(&directory, key.clone(), origin).unwrap();
            assert_eq!(ledger.append_durably(&[b"a".as_slice(), b"b", b"c"]).unwrap(), 0);
            let note_text = ledger.checkpoint().unwrap();
            assert_eq!(ledger.append_durably(&[b"d"]).unwrap(), 3);
            note_text
        };
        let ledger = LedgerLog::open(&directory, key.clone(), origin).unwrap();
        assert_eq!(ledger.tree_size(), 4);
        assert_eq!(ledger.read_leaf(3).unwrap(), b"d");
        assert_eq!(ledger.latest_checkpoint().unwrap(), (3, note_text.clone()));
        let (checkpoint, _) =
            note::open_checkpoint(&note_text, origin, &[NoteSigner::new(origin, key.clone()).unwrap().verifier()]).unwrap();
        let proof = ledger.inclusion_proof(1, 3).unwrap();
        merkle::verify_inclusion(&merkle::leaf_hash(b"b"), 1, 3, &proof, checkpoint.root_hash()).unwrap();
        drop(ledger);

        // Another key cannot open the log: the checkpoint does not verify.
        assert!(LedgerLog::open(&directory, SigningKey::from_bytes(&[6u8; 32]), origin).is_err());
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
