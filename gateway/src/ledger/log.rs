//! The ledger on disk: `<data>/ledger/entries.log` (one journal record per leaf, in leaf order)
//! and `<data>/ledger/checkpoints.log` (every signed checkpoint note ever issued).
//!
//! Leaves become visible (counted in [`LedgerLog::tree_size`]) only after they are durable.
//! On open, both journals must be free of damage (see [`crate::journal`]), and the newest
//! checkpoint must verify under the gateway key and match the recomputed root of the leaves it
//! covers; otherwise the gateway refuses to start. A signed checkpoint proves the leaves it
//! covers were durable, so they can never be a crash tail. [`LedgerLog::recover`] checks all of
//! this without changing anything; [`RecoveredLedger::open`] then cuts the crash tails.

use std::path::Path;
use std::sync::RwLock;

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::merkle::{self, CompactRange, Hash};
use super::note::{self, Checkpoint, NoteSigner};
use crate::journal::{self, Journal, JournalError};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("checkpoint: {0}")]
    Note(#[from] note::NoteError),
    #[error("merkle: {0}")]
    Merkle(#[from] merkle::ProofError),
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

pub struct LedgerLog {
    entries: Journal,
    checkpoints: Journal,
    signer: NoteSigner,
    state: RwLock<LedgerState>,
}

struct LedgerState {
    offsets: Vec<u64>,
    leaf_hashes: Vec<Hash>,
    frontier: CompactRange,
    latest_checkpoint: Option<(Checkpoint, String)>,
}

/// The ledger as found on disk and checked, not yet opened for appends: nothing has been cut.
pub struct RecoveredLedger {
    entries: journal::Recovered,
    checkpoints: journal::Recovered,
    signer: NoteSigner,
    offsets: Vec<u64>,
    leaf_hashes: Vec<Hash>,
    first_leaf: Option<Vec<u8>>,
    latest_checkpoint: Option<(Checkpoint, String)>,
}

impl RecoveredLedger {
    /// The number of intact leaves.
    pub fn tree_size(&self) -> u64 {
        self.leaf_hashes.len() as u64
    }

    /// The number of leaves the newest signed checkpoint covers.
    pub fn checkpointed(&self) -> u64 {
        self.latest_checkpoint.as_ref().map_or(0, |(checkpoint, _)| checkpoint.tree_size())
    }

    /// The bytes of leaf 0, if there is one.
    pub fn first_leaf(&self) -> Option<&[u8]> {
        self.first_leaf.as_deref()
    }

    /// Opens both journals for appends, cutting off their crash tails.
    pub fn open(self) -> Result<LedgerLog, LedgerError> {
        let RecoveredLedger { entries, checkpoints, signer, offsets, leaf_hashes, latest_checkpoint, .. } = self;
        let mut frontier = CompactRange::new();
        for leaf_hash in &leaf_hashes {
            frontier.append(*leaf_hash)?;
        }
        Ok(LedgerLog {
            entries: entries.open()?,
            checkpoints: checkpoints.open()?,
            signer,
            state: RwLock::new(LedgerState { offsets, leaf_hashes, frontier, latest_checkpoint }),
        })
    }
}

impl LedgerLog {
    pub fn open(directory: &Path, signing_key: SigningKey, origin: &str) -> Result<LedgerLog, LedgerError> {
        LedgerLog::recover(directory, signing_key, origin)?.open()
    }

    /// Scans and checks the ledger without changing anything.
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
        let entries_path = directory.join("entries.log");
        let mut offsets = Vec::new();
        let mut leaf_hashes = Vec::new();
        let mut first_leaf = None;
        let entries = Journal::recover(&entries_path, |offset, leaf| {
            if offsets.is_empty() {
                first_leaf = Some(leaf.to_vec());
            }
            offsets.push(offset);
            leaf_hashes.push(merkle::leaf_hash(leaf));
        })?;
        let tree_size = leaf_hashes.len() as u64;
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
            if merkle::root_from_leaf_hashes(&leaf_hashes[..checkpoint.tree_size() as usize]) != *checkpoint.root_hash() {
                return Err(LedgerError::CheckpointMismatch { checkpoint_size: checkpoint.tree_size(), tree_size });
            }
        }
        Ok(RecoveredLedger { entries, checkpoints, signer, offsets, leaf_hashes, first_leaf, latest_checkpoint: newest })
    }

    pub fn tree_size(&self) -> u64 {
        self.state.read().expect("ledger state").leaf_hashes.len() as u64
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
        let first_leaf_index = state.leaf_hashes.len() as u64;
        for (leaf, offset) in leaves.iter().zip(offsets) {
            let leaf_hash = merkle::leaf_hash(leaf.as_ref());
            state.frontier.append(leaf_hash)?;
            state.leaf_hashes.push(leaf_hash);
            state.offsets.push(offset);
        }
        Ok(first_leaf_index)
    }

    /// Cuts the log back to `tree_size` leaves (recovery from a partially durable transaction).
    /// Refused if a signed checkpoint covers any leaf that would go.
    pub fn truncate(&self, tree_size: u64) -> Result<(), LedgerError> {
        let mut state = self.state.write().expect("ledger state");
        let current = state.leaf_hashes.len() as u64;
        if let Some((checkpoint, _)) = &state.latest_checkpoint
            && checkpoint.tree_size() > tree_size
        {
            return Err(LedgerError::CheckpointMismatch { checkpoint_size: checkpoint.tree_size(), tree_size });
        }
        if tree_size >= current {
            return Ok(());
        }
        self.entries.truncate(state.offsets[tree_size as usize])?;
        state.offsets.truncate(tree_size as usize);
        state.leaf_hashes.truncate(tree_size as usize);
        let mut frontier = CompactRange::new();
        for leaf_hash in &state.leaf_hashes {
            frontier.append(*leaf_hash)?;
        }
        state.frontier = frontier;
        Ok(())
    }

    pub fn read_leaf(&self, leaf_index: u64) -> Result<Vec<u8>, LedgerError> {
        let offset = {
            let state = self.state.read().expect("ledger state");
            *state.offsets.get(leaf_index as usize).ok_or(LedgerError::NoSuchLeaf(leaf_index))?
        };
        Ok(self.entries.read_at(offset)?)
    }

    /// Signs and durably records a checkpoint of the current tree, unless the newest one
    /// already covers it. Returns the newest checkpoint note.
    pub fn checkpoint(&self) -> Result<String, LedgerError> {
        let (tree_size, root_hash) = {
            let state = self.state.read().expect("ledger state");
            if let Some((checkpoint, text)) = &state.latest_checkpoint
                && checkpoint.tree_size() == state.leaf_hashes.len() as u64
            {
                return Ok(text.clone());
            }
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
        let state = self.state.read().expect("ledger state");
        Ok(merkle::inclusion_proof(&state.leaf_hashes, leaf_index, tree_size)?)
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
