//! Patient keys: `<data>/keys/patients.keys`, one fixed-size slot per patient, holding that
//! patient's 256-bit key wrapped by a KEK. A patient key wraps the data key of every version in
//! the patient's compartment (`seal::KeyHolder::Patient`); destroying it (overwriting its slot
//! with zeros and syncing) makes all of them unreadable at once, wherever copies of the sealed
//! blocks went. The file is part of the key store, kept apart from the data it protects: a copy
//! of everything else taken before an erasure and restored after it stays unreadable.
//!
//! Slot layout (`SLOT_LEN` bytes, slot *n* at offset `n * SLOT_LEN`):
//!
//! ```text
//! "FGPK" | kek_id: u32 LE | patient hash (32) | AES-256-GCM(patient key) (60) | zeros
//! ```
//!
//! The wrap's associated data binds the key to its slot number, the patient hash and the KEK id,
//! so a slot copied elsewhere, or given to another patient, does not unwrap. A destroyed slot is
//! all zeros. The patient hash is a keyed hash of the patient's id (`LedgerSecrets`): the file
//! names no patient.
//!
//! New slots are created in memory by the write that first needs them and written by
//! [`PatientKeys::sync`], which the commit thread calls before it syncs the catalog: no durable
//! version ever names a slot that is not on disk. A slot written but never synced (a crash) is
//! at worst a key no record uses; the next new slot overwrites it.
//!
//! Which slot holds a patient's key is found through `patients.index.redb` beside the file (a
//! [`FlushedIndex`] from patient hash to slot, derived from the file and rebuilt from it when
//! missing), so memory does not grow with the number of patients. The index is only a hint:
//! every answer is checked against the slot itself (a destroyed slot, or one holding another
//! patient's key, is no answer).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::flushed_index::{FlushedIndex, IndexCaches, IndexKey, IndexValue};

use super::{DataKey, SealError, WRAPPED_KEY_LEN, aead_unwrap, aead_wrap, random_bytes};

pub const SLOT_LEN: usize = 128;
const MAGIC: &[u8; 4] = b"FGPK";
const HASH_AT: usize = 8;
const WRAPPED_AT: usize = HASH_AT + 32;

/// A keyed hash naming a patient (never the id itself).
pub type PatientHash = [u8; 32];

/// Where a patient's key is in the patient key store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PatientSlot(pub u64);

type Slot = [u8; SLOT_LEN];

impl IndexKey for PatientHash {
    fn encode(&self) -> Vec<u8> {
        self.to_vec()
    }

    fn decode(bytes: &[u8]) -> Option<PatientHash> {
        bytes.try_into().ok()
    }
}

impl IndexValue for PatientSlot {
    fn encode(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }

    fn decode(bytes: &[u8]) -> Option<PatientSlot> {
        Some(PatientSlot(u64::from_le_bytes(bytes.try_into().ok()?)))
    }

    fn position(&self) -> u64 {
        self.0
    }
}

/// The index's page cache, and the slots kept in memory (about 100 bytes each).
const INDEX_CACHES: IndexCaches = IndexCaches { page_bytes: 4 << 20, entries: 32_768 };
/// Slots read at a time when a start reads the file past what the index covers.
const SCAN_SLOTS: usize = 8_192;

pub struct PatientKeys {
    path: PathBuf,
    file: File,
    /// `None` when opened [`PatientKeys::open_without_index`].
    index: Option<FlushedIndex<PatientHash, PatientSlot>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The number of slots in the file (and pending).
    next: u64,
    /// Created since the last [`PatientKeys::sync`]: not on disk yet.
    pending: BTreeMap<PatientSlot, Slot>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> super::KeyringError + '_ {
    move |source| super::KeyringError::Io { path: path.to_path_buf(), source }
}

fn associated_data(slot: PatientSlot, patient: &PatientHash, kek_id: u32) -> Vec<u8> {
    let mut data = b"fhir-gateway/patient-key/v1\0".to_vec();
    data.extend_from_slice(&slot.0.to_be_bytes());
    data.extend_from_slice(patient);
    data.extend_from_slice(&kek_id.to_be_bytes());
    data
}

/// What a slot says, if it holds a key.
struct Parsed {
    kek_id: u32,
    patient: PatientHash,
    wrapped: [u8; WRAPPED_KEY_LEN],
}

fn parse(slot: &Slot) -> Option<Parsed> {
    if &slot[..4] != MAGIC {
        return None;
    }
    Some(Parsed {
        kek_id: u32::from_le_bytes(slot[4..8].try_into().ok()?),
        patient: slot[HASH_AT..WRAPPED_AT].try_into().ok()?,
        wrapped: slot[WRAPPED_AT..WRAPPED_AT + WRAPPED_KEY_LEN].try_into().ok()?,
    })
}

fn encode(slot: PatientSlot, patient: &PatientHash, kek: (u32, &[u8; 32]), key: &DataKey) -> Result<Slot, SealError> {
    let (kek_id, kek_bytes) = kek;
    let wrapped = aead_wrap(kek_bytes, &key.0, &associated_data(slot, patient, kek_id))?;
    let mut bytes = [0u8; SLOT_LEN];
    bytes[..4].copy_from_slice(MAGIC);
    bytes[4..8].copy_from_slice(&kek_id.to_le_bytes());
    bytes[HASH_AT..WRAPPED_AT].copy_from_slice(patient);
    bytes[WRAPPED_AT..WRAPPED_AT + WRAPPED_KEY_LEN].copy_from_slice(&wrapped);
    Ok(bytes)
}

/// The key a slot holds (`parsed` from it), unwrapped by its KEK.
fn unwrap_key(slot: PatientSlot, parsed: &Parsed, keks: &BTreeMap<u32, [u8; 32]>) -> Result<DataKey, SealError> {
    let kek = keks.get(&parsed.kek_id).ok_or(SealError::UnknownKek(parsed.kek_id))?;
    aead_unwrap(kek, &parsed.wrapped, &associated_data(slot, &parsed.patient, parsed.kek_id)).map(DataKey)
}

impl PatientKeys {
    /// Opens `path` (created empty, mode 0600, if absent) and its index (brought up to date with
    /// the slots it does not cover yet). The key file itself is not changed.
    pub fn open(path: &Path) -> Result<PatientKeys, super::KeyringError> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path).map_err(io(path))?;
        let next = file.metadata().map_err(io(path))?.len() / SLOT_LEN as u64;
        let index_path = path.with_extension("index.redb");
        let index_error = |error| super::KeyringError::Index { path: index_path.clone(), source: error };
        let index = FlushedIndex::open(&index_path, "slots", "patient-key-index", INDEX_CACHES).map_err(index_error)?;
        // An index covering more slots than the file has belongs to another file (a key store
        // restored from a backup): it is read again from the start.
        let covered = index.covered();
        let from = if covered > next { 0 } else { covered };
        let mut reader = std::io::BufReader::with_capacity(1 << 20, &file);
        std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(from * SLOT_LEN as u64)).map_err(io(path))?;
        let mut slot = [0u8; SLOT_LEN];
        let mut found = Vec::new();
        for number in from..next {
            reader.read_exact(&mut slot).map_err(io(path))?;
            if let Some(parsed) = parse(&slot) {
                found.push((parsed.patient, PatientSlot(number)));
            }
            if found.len() == SCAN_SLOTS {
                index.put_scanned(&std::mem::take(&mut found), None).map_err(index_error)?;
            }
        }
        if from != next || covered != next {
            index.put_scanned(&found, Some(next)).map_err(index_error)?;
        }
        index.synced_to(next);
        Ok(PatientKeys { path: path.to_path_buf(), file, index: Some(index), state: Mutex::new(State { next, ..State::default() }) })
    }

    /// Opens `path` to read keys by slot only (`verify`, beside a running gateway): changes
    /// nothing on disk; [`PatientKeys::slot_of`] and [`PatientKeys::key_for`] fail.
    pub fn open_without_index(path: &Path) -> Result<PatientKeys, super::KeyringError> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path).map_err(io(path))?;
        let next = file.metadata().map_err(io(path))?.len() / SLOT_LEN as u64;
        Ok(PatientKeys { path: path.to_path_buf(), file, index: None, state: Mutex::new(State { next, ..State::default() }) })
    }

    fn index(&self) -> Result<&FlushedIndex<PatientHash, PatientSlot>, SealError> {
        self.index.as_ref().ok_or_else(|| SealError::KeyIndex("the patient key store was opened without its index".into()))
    }

    /// The slot of a patient's key, if the patient has one.
    pub fn slot_of(&self, patient: &PatientHash) -> Result<Option<PatientSlot>, SealError> {
        Ok(self.find(patient, |slot| self.read_slot(slot))?.map(|(slot, _)| slot))
    }

    /// The slot the index names for `patient`, and what it holds, if it holds the patient's key
    /// (`read` gives a slot's bytes).
    fn find(
        &self,
        patient: &PatientHash,
        read: impl FnOnce(PatientSlot) -> Result<Slot, SealError>,
    ) -> Result<Option<(PatientSlot, Parsed)>, SealError> {
        let Some(slot) = self.index()?.get(patient).map_err(|error| SealError::KeyIndex(error.to_string()))? else {
            return Ok(None);
        };
        match read(slot) {
            Ok(bytes) => Ok(parse(&bytes).filter(|parsed| parsed.patient == *patient).map(|parsed| (slot, parsed))),
            Err(SealError::UnknownPatientSlot(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The patient's key and its slot, creating them (in memory until the next sync) for a
    /// patient seen for the first time.
    pub(crate) fn key_for(
        &self,
        patient: &PatientHash,
        active_kek: (u32, &[u8; 32]),
        keks: &BTreeMap<u32, [u8; 32]>,
    ) -> Result<(PatientSlot, DataKey), SealError> {
        let mut state = self.state.lock().expect("patient keys");
        if let Some((slot, parsed)) = self.find(patient, |slot| self.slot_bytes(state.pending.get(&slot), slot))? {
            drop(state);
            return Ok((slot, unwrap_key(slot, &parsed, keks)?));
        }
        let slot = PatientSlot(state.next);
        let key = DataKey(random_bytes::<32>()?);
        let bytes = encode(slot, patient, active_kek, &key)?;
        state.next += 1;
        state.pending.insert(slot, bytes);
        self.index()?.put_pending([(*patient, slot)]);
        Ok((slot, key))
    }

    fn read_slot(&self, slot: PatientSlot) -> Result<Slot, SealError> {
        let pending = self.state.lock().expect("patient keys").pending.get(&slot).copied();
        self.slot_bytes(pending.as_ref(), slot)
    }

    /// A slot's bytes: `pending` (not yet written) or as on disk.
    fn slot_bytes(&self, pending: Option<&Slot>, slot: PatientSlot) -> Result<Slot, SealError> {
        if let Some(bytes) = pending {
            return Ok(*bytes);
        }
        let mut bytes = [0u8; SLOT_LEN];
        self.file.read_exact_at(&mut bytes, slot.0 * SLOT_LEN as u64).map_err(|_| SealError::UnknownPatientSlot(slot.0))?;
        Ok(bytes)
    }

    /// The key in `slot`; [`SealError::Erased`] once it was destroyed.
    pub(crate) fn key(&self, slot: PatientSlot, keks: &BTreeMap<u32, [u8; 32]>) -> Result<DataKey, SealError> {
        let bytes = self.read_slot(slot)?;
        let Some(parsed) = parse(&bytes) else {
            return Err(if bytes.iter().all(|byte| *byte == 0) { SealError::Erased(slot.0) } else { SealError::Malformed });
        };
        unwrap_key(slot, &parsed, keks)
    }

    /// Writes the slots created since the last sync and makes them durable.
    pub fn sync(&self) -> std::io::Result<()> {
        let pending: Vec<(PatientSlot, Slot)> =
            self.state.lock().expect("patient keys").pending.iter().map(|(slot, bytes)| (*slot, *bytes)).collect();
        if pending.is_empty() {
            return Ok(());
        }
        for (slot, bytes) in &pending {
            self.file.write_all_at(bytes, slot.0 * SLOT_LEN as u64)?;
        }
        self.file.sync_data()?;
        let end = pending.last().map_or(0, |(slot, _)| slot.0 + 1);
        let mut state = self.state.lock().expect("patient keys");
        for (slot, _) in pending {
            state.pending.remove(&slot);
        }
        if let Some(index) = &self.index {
            index.synced_to(end);
        }
        Ok(())
    }

    /// Destroys a patient's key: its slot is overwritten with zeros and synced. Idempotent.
    /// On a copy-on-write file system or flash, the old bytes may survive on the device until
    /// reused; they are wrapped by the KEK, so the next `keys rotate` finishes the job.
    pub fn destroy(&self, slot: PatientSlot) -> std::io::Result<()> {
        self.sync()?;
        let held_by = self.read_slot(slot).ok().as_ref().and_then(parse).map(|parsed| parsed.patient);
        self.file.write_all_at(&[0u8; SLOT_LEN], slot.0 * SLOT_LEN as u64)?;
        self.file.sync_data()?;
        if let (Some(patient), Some(index)) = (held_by, &self.index) {
            index.remove(&[patient]).map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    /// Whether `slot` was destroyed (all zeros on disk).
    pub fn is_destroyed(&self, slot: PatientSlot) -> bool {
        matches!(self.read_slot(slot), Ok(bytes) if bytes.iter().all(|byte| *byte == 0))
    }

    /// Re-wraps every live slot under `new_kek` into a new file and renames it over this one
    /// (`keys rotate`, gateway stopped). Returns how many keys were re-wrapped.
    pub(crate) fn rewrap_all(&self, keks: &BTreeMap<u32, [u8; 32]>, new_kek: (u32, &[u8; 32])) -> Result<u64, super::KeyringError> {
        self.sync().map_err(io(&self.path))?;
        let next = self.state.lock().expect("patient keys").next;
        let rotating_path = self.path.with_extension("keys.rotating");
        let rotating =
            OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&rotating_path).map_err(io(&rotating_path))?;
        let mut rewrapped = 0;
        for index in 0..next {
            let slot = PatientSlot(index);
            let bytes = self.read_slot(slot).map_err(|error| io(&self.path)(std::io::Error::other(error)))?;
            let new_bytes = match parse(&bytes) {
                None => [0u8; SLOT_LEN],
                Some(parsed) => {
                    let key = self.key(slot, keks).map_err(|error| io(&self.path)(std::io::Error::other(error)))?;
                    rewrapped += 1;
                    encode(slot, &parsed.patient, new_kek, &key).map_err(|error| io(&self.path)(std::io::Error::other(error)))?
                }
            };
            rotating.write_all_at(&new_bytes, index * SLOT_LEN as u64).map_err(io(&rotating_path))?;
        }
        rotating.sync_all().map_err(io(&rotating_path))?;
        std::fs::rename(&rotating_path, &self.path).map_err(io(&self.path))?;
        if let Some(directory) = self.path.parent() {
            File::open(directory).and_then(|directory| directory.sync_all()).map_err(io(directory))?;
        }
        Ok(rewrapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keks() -> BTreeMap<u32, [u8; 32]> {
        BTreeMap::from([(1, [1u8; 32]), (2, [2u8; 32])])
    }

    fn scratch(name: &str) -> PathBuf {
        let directory = std::env::temp_dir().join(format!("fg-patient-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).unwrap();
        directory.join("patients.keys")
    }

    #[test]
    fn a_patient_keeps_one_key_across_syncs_and_reopens() {
        let path = scratch("reopen");
        let keks = keks();
        let store = PatientKeys::open(&path).unwrap();
        let (slot_a, key_a) = store.key_for(&[0xa; 32], (1, &keks[&1]), &keks).unwrap();
        let (slot_b, _) = store.key_for(&[0xb; 32], (1, &keks[&1]), &keks).unwrap();
        assert_ne!(slot_a, slot_b);
        let (again, key_again) = store.key_for(&[0xa; 32], (1, &keks[&1]), &keks).unwrap();
        assert_eq!((again, key_again.0), (slot_a, key_a.0), "before the sync the pending slot is used");
        store.sync().unwrap();
        drop(store);
        let store = PatientKeys::open(&path).unwrap();
        assert_eq!(store.slot_of(&[0xa; 32]).unwrap(), Some(slot_a));
        assert_eq!(store.key(slot_a, &keks).unwrap().0, key_a.0);
        assert!(!std::fs::read(&path).unwrap().windows(32).any(|window| window == key_a.0), "the key is stored only wrapped");
    }

    #[test]
    fn a_destroyed_key_is_gone_from_the_file_and_reads_as_erased() {
        let path = scratch("destroy");
        let keks = keks();
        let store = PatientKeys::open(&path).unwrap();
        let (slot, _) = store.key_for(&[0xa; 32], (1, &keks[&1]), &keks).unwrap();
        let (kept, kept_key) = store.key_for(&[0xb; 32], (1, &keks[&1]), &keks).unwrap();
        store.sync().unwrap();
        let before = std::fs::read(&path).unwrap();
        store.destroy(slot).unwrap();
        store.destroy(slot).unwrap();
        assert_eq!(store.key(slot, &keks).err(), Some(SealError::Erased(slot.0)));
        assert!(store.is_destroyed(slot));
        let after = std::fs::read(&path).unwrap();
        let at = slot.0 as usize * SLOT_LEN;
        assert!(after[at..at + SLOT_LEN].iter().all(|byte| *byte == 0));
        assert_ne!(before[at..at + SLOT_LEN], after[at..at + SLOT_LEN]);
        drop(store);
        let reopened = PatientKeys::open(&path).unwrap();
        assert_eq!(reopened.slot_of(&[0xa; 32]).unwrap(), None);
        assert_eq!(reopened.key(kept, &keks).unwrap().0, kept_key.0, "other patients keep their keys");
    }

    #[test]
    fn slots_are_found_after_a_reopen_with_or_without_the_index_and_a_stale_index_is_no_answer() {
        let path = scratch("index");
        let index_path = path.with_extension("index.redb");
        let keks = keks();
        let (first, second) = {
            let store = PatientKeys::open(&path).unwrap();
            let first = store.key_for(&[0xa; 32], (1, &keks[&1]), &keks).unwrap().0;
            let second = store.key_for(&[0xb; 32], (1, &keks[&1]), &keks).unwrap().0;
            store.sync().unwrap();
            (first, second)
        };
        let stale_index = std::fs::read(&index_path).unwrap();
        for remove_index in [false, true] {
            if remove_index {
                std::fs::remove_file(&index_path).unwrap();
            }
            let store = PatientKeys::open(&path).unwrap();
            assert_eq!(store.slot_of(&[0xa; 32]).unwrap(), Some(first));
            assert_eq!(store.slot_of(&[0xb; 32]).unwrap(), Some(second));
        }
        // The key file goes back to an empty one (a restored key store) while the index still
        // names both slots: neither is an answer, and a new patient gets slot 0 again.
        std::fs::write(&path, b"").unwrap();
        std::fs::write(&index_path, &stale_index).unwrap();
        let store = PatientKeys::open(&path).unwrap();
        assert_eq!(store.slot_of(&[0xa; 32]).unwrap(), None);
        let (slot, _) = store.key_for(&[0xc; 32], (1, &keks[&1]), &keks).unwrap();
        assert_eq!(slot, PatientSlot(0));
        store.sync().unwrap();
        assert_eq!(store.slot_of(&[0xa; 32]).unwrap(), None, "slot 0 now holds another patient's key");
        assert_eq!(store.slot_of(&[0xc; 32]).unwrap(), Some(slot));
    }

    #[test]
    fn a_slot_moved_to_another_place_or_patient_does_not_unwrap() {
        let path = scratch("moved");
        let keks = keks();
        let store = PatientKeys::open(&path).unwrap();
        let (first, _) = store.key_for(&[0xa; 32], (1, &keks[&1]), &keks).unwrap();
        let (second, _) = store.key_for(&[0xb; 32], (1, &keks[&1]), &keks).unwrap();
        store.sync().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let copy: Vec<u8> = bytes[..SLOT_LEN].to_vec();
        bytes[SLOT_LEN..2 * SLOT_LEN].copy_from_slice(&copy);
        std::fs::write(&path, &bytes).unwrap();
        drop(store);
        let store = PatientKeys::open(&path).unwrap();
        assert!(store.key(first, &keks).is_ok());
        assert_eq!(store.key(second, &keks).err(), Some(SealError::AuthenticationFailed));
    }

    #[test]
    fn rewrapping_keeps_keys_and_destroyed_slots() {
        let path = scratch("rewrap");
        let keks = keks();
        let store = PatientKeys::open(&path).unwrap();
        let (live, live_key) = store.key_for(&[0xa; 32], (1, &keks[&1]), &keks).unwrap();
        let (gone, _) = store.key_for(&[0xb; 32], (1, &keks[&1]), &keks).unwrap();
        store.destroy(gone).unwrap();
        assert_eq!(store.rewrap_all(&keks, (2, &keks[&2])).unwrap(), 1);
        drop(store);
        let store = PatientKeys::open(&path).unwrap();
        let only_new = BTreeMap::from([(2, keks[&2])]);
        assert_eq!(store.key(live, &only_new).unwrap().0, live_key.0);
        assert_eq!(store.key(gone, &only_new).err(), Some(SealError::Erased(gone.0)));
    }
}
