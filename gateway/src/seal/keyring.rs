//! Key-encryption keys on disk: `<data>/keys/kek-<id>.key`, 32 random bytes, mode 0600, and
//! the patient keys they wrap (`<data>/keys/patients.keys`, [`super::patient_keys`]).
//!
//! The highest id is the active KEK (used to wrap new data and patient keys); older ones stay
//! readable until `keys rotate` has re-wrapped every key they hold and retired them. Key bytes
//! are never logged.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::patient_keys::{PatientHash, PatientKeys};
use super::{DataKey, KeyHolder, SealContext, SealError, WrappedKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key file {0} is not 32 bytes")]
    BadLength(PathBuf),
    #[error("key file {0} is readable by group or others (mode must be 0600)")]
    TooOpen(PathBuf),
    #[error("patient key index {path}: {source}")]
    Index { path: PathBuf, source: crate::flushed_index::IndexError },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyringError + '_ {
    move |source| KeyringError::Io { path: path.to_path_buf(), source }
}

/// Reads a 32-byte secret, creating it with fresh random bytes (mode 0600, fsynced) if absent.
pub fn read_or_create_secret(path: &Path) -> Result<[u8; 32], KeyringError> {
    match fs::read(path) {
        Ok(bytes) => {
            let mode = fs::metadata(path).map_err(io_error(path))?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(KeyringError::TooOpen(path.to_path_buf()));
            }
            bytes.try_into().map_err(|_| KeyringError::BadLength(path.to_path_buf()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|_| io_error(path)(std::io::Error::other("random source failed")))?;
            write_secret(path, &secret)?;
            Ok(secret)
        }
        Err(error) => Err(io_error(path)(error)),
    }
}

fn write_secret(path: &Path, secret: &[u8; 32]) -> Result<(), KeyringError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_error(parent))?;
        fs::set_permissions(parent, fs::Permissions::from_mode(0o700)).map_err(io_error(parent))?;
    }
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_error(path))?;
    file.write_all(secret).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent).and_then(|directory| directory.sync_all()).map_err(io_error(parent))?;
    }
    Ok(())
}

/// The KEKs known to this gateway, and the patient keys.
pub struct Keyring {
    directory: PathBuf,
    keks: BTreeMap<u32, [u8; 32]>,
    patients: PatientKeys,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Keyring").field("kek_ids", &self.keks.keys().collect::<Vec<_>>()).finish()
    }
}

impl Keyring {
    /// Loads every `kek-<id>.key` in `directory`, creating KEK 1 on first start, and the patient
    /// key store with its index.
    pub fn open_or_create(directory: &Path) -> Result<Self, KeyringError> {
        Keyring::open_with(directory, PatientKeys::open)
    }

    /// [`Keyring::open_or_create`] for `verify`, which may run beside a running gateway: the
    /// patient key store is opened without its index (which only the gateway writes), so
    /// [`PatientKeys::key`] works and [`PatientKeys::slot_of`] does not.
    pub fn open_for_verify(directory: &Path) -> Result<Self, KeyringError> {
        Keyring::open_with(directory, PatientKeys::open_without_index)
    }

    fn open_with(directory: &Path, patient_keys: impl FnOnce(&Path) -> Result<PatientKeys, KeyringError>) -> Result<Self, KeyringError> {
        fs::create_dir_all(directory).map_err(io_error(directory))?;
        let mut keks = BTreeMap::new();
        for entry in fs::read_dir(directory).map_err(io_error(directory))? {
            let path = entry.map_err(io_error(directory))?.path();
            let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
            if let Some(kek_id) = name.strip_prefix("kek-").and_then(|rest| rest.strip_suffix(".key")).and_then(|id| id.parse::<u32>().ok())
            {
                keks.insert(kek_id, read_or_create_secret(&path)?);
            }
        }
        let patients = patient_keys(&directory.join("patients.keys"))?;
        let mut keyring = Keyring { directory: directory.to_path_buf(), keks, patients };
        if keyring.keks.is_empty() {
            keyring.add_kek()?;
        }
        Ok(keyring)
    }

    fn kek_path(&self, kek_id: u32) -> PathBuf {
        self.directory.join(format!("kek-{kek_id:08}.key"))
    }

    /// Creates a new KEK with the next id; it becomes the active one.
    pub fn add_kek(&mut self) -> Result<u32, KeyringError> {
        let kek_id = self.active_kek_id().map_or(1, |active| active + 1);
        let path = self.kek_path(kek_id);
        let secret = read_or_create_secret(&path)?;
        self.keks.insert(kek_id, secret);
        Ok(kek_id)
    }

    /// Deletes a KEK file that no wrapped key uses any more.
    pub fn retire_kek(&mut self, kek_id: u32) -> Result<(), KeyringError> {
        let path = self.kek_path(kek_id);
        fs::remove_file(&path).map_err(io_error(&path))?;
        self.keks.remove(&kek_id);
        Ok(())
    }

    pub fn active_kek_id(&self) -> Option<u32> {
        self.keks.keys().next_back().copied()
    }

    pub fn kek_ids(&self) -> Vec<u32> {
        self.keks.keys().copied().collect()
    }

    fn active_kek(&self) -> Result<(u32, &[u8; 32]), SealError> {
        let kek_id = self.active_kek_id().ok_or(SealError::UnknownKek(0))?;
        Ok((kek_id, &self.keks[&kek_id]))
    }

    /// Wraps a data key: under the key of `patient` (created on first use) when the version is
    /// in that one patient's compartment, otherwise under the active KEK.
    pub fn wrap(&self, data_key: &DataKey, patient: Option<&PatientHash>, context: SealContext<'_>) -> Result<WrappedKey, SealError> {
        let active = self.active_kek()?;
        match patient {
            Some(patient) => {
                let (slot, patient_key) = self.patients.key_for(patient, active, &self.keks)?;
                super::wrap_key(KeyHolder::Patient(slot), &patient_key.0, data_key, context)
            }
            None => super::wrap_key(KeyHolder::Kek(active.0), active.1, data_key, context),
        }
    }

    pub fn unwrap(&self, wrapped: &WrappedKey, context: SealContext<'_>) -> Result<DataKey, SealError> {
        match wrapped.holder {
            KeyHolder::Kek(kek_id) => {
                let kek = self.keks.get(&kek_id).ok_or(SealError::UnknownKek(kek_id))?;
                super::unwrap_key(kek, wrapped, context)
            }
            KeyHolder::Patient(slot) => super::unwrap_key(&self.patients.key(slot, &self.keks)?.0, wrapped, context),
        }
    }

    /// Re-wraps a KEK-held data key under the active KEK (for rotation); the sealed blob is
    /// untouched. A patient-held one is unchanged: its patient key is re-wrapped instead
    /// ([`Keyring::rewrap_patient_keys`]).
    pub fn rewrap(&self, wrapped: &WrappedKey, context: SealContext<'_>) -> Result<WrappedKey, SealError> {
        if let KeyHolder::Patient(_) = wrapped.holder {
            return Ok(wrapped.clone());
        }
        let data_key = self.unwrap(wrapped, context)?;
        self.wrap(&data_key, None, context)
    }

    /// Re-wraps every patient key under the active KEK; returns how many.
    pub fn rewrap_patient_keys(&self) -> Result<u64, KeyringError> {
        let active =
            self.active_kek().map_err(|error| KeyringError::Io { path: self.directory.clone(), source: std::io::Error::other(error) })?;
        self.patients.rewrap_all(&self.keks, active)
    }

    /// The patient key store (sync before the catalog, destroy on erasure).
    pub fn patients(&self) -> &PatientKeys {
        &self.patients
    }
}
