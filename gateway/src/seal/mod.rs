//! Envelope encryption of record versions.
//!
//! Every record version is sealed under its own fresh 256-bit data key with AES-256-GCM; the
//! associated data binds the ciphertext to `resourceType`, `id` and `versionId`, so a sealed blob
//! cannot be replayed as another resource or another version. The data key is stored only
//! wrapped (AES-256-GCM again): by the key of the patient whose compartment holds the version
//! ([`patient_keys`]), or, for a version in no single patient's compartment, by a
//! key-encryption key (KEK) from the [`Keyring`]. Patient keys are wrapped by the KEK in turn.
//! Rotating the KEK re-wraps patient keys and KEK-held data keys; sealed blobs (and so their
//! CIDs) never change. Destroying a patient key makes every version it holds unreadable
//! (crypto-shredding, `Patient/$purge`).
//!
//! Sealed blob layout (what the blob store holds), all lengths fixed:
//!
//! ```text
//! "FGS1" (4 bytes) | nonce (12 bytes) | AES-256-GCM ciphertext || tag (16 bytes)
//! ```
//!
//! Wrapped key layout (what the record catalog holds next to the holder: KEK id or patient slot):
//!
//! ```text
//! nonce (12 bytes) | AES-256-GCM(data key, 32 bytes) || tag (16 bytes)   = 60 bytes
//! ```
//!
//! This module does no I/O except [`Keyring::open_or_create`], which reads and creates KEK files.

pub(crate) mod keyring;
pub(crate) mod patient_keys;

pub use keyring::{Keyring, KeyringError};
pub use patient_keys::{PatientHash, PatientSlot};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

const SEALED_MAGIC: &[u8; 4] = b"FGS1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
pub const WRAPPED_KEY_LEN: usize = NONCE_LEN + 32 + TAG_LEN;

/// What a sealed version is bound to. Any difference on unseal is an integrity error.
#[derive(Debug, Clone, Copy)]
pub struct SealContext<'a> {
    pub resource_type: &'a str,
    pub id: &'a str,
    pub version_id: u64,
}

impl SealContext<'_> {
    fn associated_data(&self, purpose: &str) -> Vec<u8> {
        format!("fhir-gateway/{purpose}/v1\0{}\0{}\0{}", self.resource_type, self.id, self.version_id).into_bytes()
    }
}

/// A per-version data key. Never leaves memory unwrapped; zeroed on drop.
pub struct DataKey([u8; 32]);

impl Drop for DataKey {
    fn drop(&mut self) {
        // Volatile writes so the compiler cannot elide the wipe.
        for byte in self.0.iter_mut() {
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
    }
}

/// Which key wraps a data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHolder {
    /// The gateway's key-encryption key with this id.
    Kek(u32),
    /// The key of one patient, in its slot of the patient key store.
    Patient(PatientSlot),
}

/// A data key wrapped by its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub holder: KeyHolder,
    pub bytes: [u8; WRAPPED_KEY_LEN],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the sealed blob is malformed")]
    Malformed,
    #[error("authentication failed: the sealed blob or its binding was altered")]
    AuthenticationFailed,
    #[error("key-encryption key {0} is not in the keyring")]
    UnknownKek(u32),
    #[error("the patient key in slot {0} was destroyed (the patient's records were erased)")]
    Erased(u64),
    #[error("patient key slot {0} does not exist")]
    UnknownPatientSlot(u64),
    #[error("the operating system's random source failed")]
    Random,
    #[error("the patient key index could not be read: {0}")]
    KeyIndex(String),
}

fn random_bytes<const N: usize>() -> Result<[u8; N], SealError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|_| SealError::Random)?;
    Ok(bytes)
}

fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(&(*key).into())
}

/// Seals `plaintext` under a fresh data key. Returns the sealed blob and the data key.
pub fn seal(plaintext: &[u8], context: SealContext<'_>) -> Result<(Vec<u8>, DataKey), SealError> {
    let data_key = DataKey(random_bytes::<32>()?);
    let nonce_bytes = random_bytes::<NONCE_LEN>()?;
    let associated_data = context.associated_data("seal");
    let ciphertext = cipher(&data_key.0)
        .encrypt(&Nonce::from(nonce_bytes), Payload { msg: plaintext, aad: &associated_data })
        .map_err(|_| SealError::AuthenticationFailed)?;
    let mut sealed = Vec::with_capacity(4 + NONCE_LEN + ciphertext.len());
    sealed.extend_from_slice(SEALED_MAGIC);
    sealed.extend_from_slice(&nonce_bytes);
    sealed.extend_from_slice(&ciphertext);
    Ok((sealed, data_key))
}

/// Opens a sealed blob; fails if the blob, the key or the binding differ from sealing time.
pub fn unseal(sealed: &[u8], data_key: &DataKey, context: SealContext<'_>) -> Result<Vec<u8>, SealError> {
    if sealed.len() < 4 + NONCE_LEN + TAG_LEN || &sealed[..4] != SEALED_MAGIC {
        return Err(SealError::Malformed);
    }
    let nonce_bytes: [u8; NONCE_LEN] = sealed[4..4 + NONCE_LEN].try_into().map_err(|_| SealError::Malformed)?;
    let associated_data = context.associated_data("seal");
    cipher(&data_key.0)
        .decrypt(&Nonce::from(nonce_bytes), Payload { msg: &sealed[4 + NONCE_LEN..], aad: &associated_data })
        .map_err(|_| SealError::AuthenticationFailed)
}

/// Wraps a data key under its holder's key, bound to the same context as the sealed blob.
pub(crate) fn wrap_key(
    holder: KeyHolder,
    holder_key: &[u8; 32],
    data_key: &DataKey,
    context: SealContext<'_>,
) -> Result<WrappedKey, SealError> {
    let bytes = aead_wrap(holder_key, &data_key.0, &wrap_associated_data(holder, context))?;
    Ok(WrappedKey { holder, bytes })
}

pub(crate) fn unwrap_key(holder_key: &[u8; 32], wrapped: &WrappedKey, context: SealContext<'_>) -> Result<DataKey, SealError> {
    aead_unwrap(holder_key, &wrapped.bytes, &wrap_associated_data(wrapped.holder, context)).map(DataKey)
}

fn wrap_associated_data(holder: KeyHolder, context: SealContext<'_>) -> Vec<u8> {
    let mut associated_data = context.associated_data("wrap");
    match holder {
        KeyHolder::Kek(kek_id) => associated_data.extend_from_slice(&kek_id.to_be_bytes()),
        KeyHolder::Patient(slot) => {
            associated_data.extend_from_slice(b"\0patient\0");
            associated_data.extend_from_slice(&slot.0.to_be_bytes());
        }
    }
    associated_data
}

/// AES-256-GCM of a 32-byte key under `wrapping_key`: nonce | ciphertext | tag.
fn aead_wrap(wrapping_key: &[u8; 32], secret: &[u8; 32], associated_data: &[u8]) -> Result<[u8; WRAPPED_KEY_LEN], SealError> {
    let nonce_bytes = random_bytes::<NONCE_LEN>()?;
    let ciphertext = cipher(wrapping_key)
        .encrypt(&Nonce::from(nonce_bytes), Payload { msg: secret, aad: associated_data })
        .map_err(|_| SealError::AuthenticationFailed)?;
    let mut bytes = [0u8; WRAPPED_KEY_LEN];
    bytes[..NONCE_LEN].copy_from_slice(&nonce_bytes);
    bytes[NONCE_LEN..].copy_from_slice(&ciphertext);
    Ok(bytes)
}

fn aead_unwrap(wrapping_key: &[u8; 32], wrapped: &[u8; WRAPPED_KEY_LEN], associated_data: &[u8]) -> Result<[u8; 32], SealError> {
    let nonce_bytes: [u8; NONCE_LEN] = wrapped[..NONCE_LEN].try_into().map_err(|_| SealError::Malformed)?;
    let plaintext = cipher(wrapping_key)
        .decrypt(&Nonce::from(nonce_bytes), Payload { msg: &wrapped[NONCE_LEN..], aad: associated_data })
        .map_err(|_| SealError::AuthenticationFailed)?;
    plaintext.as_slice().try_into().map_err(|_| SealError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTEXT: SealContext<'static> = SealContext { resource_type: "Patient", id: "p1", version_id: 1 };

    #[test]
    fn round_trip() {
        let (sealed, key) = seal(b"{\"resourceType\":\"Patient\"}", CONTEXT).unwrap();
        assert!(!sealed.windows(7).any(|window| window == b"Patient"), "plaintext leaked into the blob");
        assert_eq!(unseal(&sealed, &key, CONTEXT).unwrap(), b"{\"resourceType\":\"Patient\"}");
    }

    #[test]
    fn every_seal_uses_a_fresh_key_and_nonce() {
        let (first, _) = seal(b"same", CONTEXT).unwrap();
        let (second, _) = seal(b"same", CONTEXT).unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn binding_to_type_id_and_version_is_enforced() {
        let (sealed, key) = seal(b"x", CONTEXT).unwrap();
        for other in [
            SealContext { resource_type: "Observation", ..CONTEXT },
            SealContext { id: "p2", ..CONTEXT },
            SealContext { version_id: 2, ..CONTEXT },
        ] {
            assert_eq!(unseal(&sealed, &key, other), Err(SealError::AuthenticationFailed));
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let (sealed, key) = seal(b"hello", CONTEXT).unwrap();
        for position in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[position] ^= 0x01;
            assert!(unseal(&tampered, &key, CONTEXT).is_err(), "flip at {position} not detected");
        }
        assert_eq!(unseal(&sealed[..10], &key, CONTEXT), Err(SealError::Malformed));
    }

    #[test]
    fn wrapped_keys_are_bound_to_kek_and_context() {
        let kek = [7u8; 32];
        let (sealed, key) = seal(b"secret", CONTEXT).unwrap();
        let wrapped = wrap_key(KeyHolder::Kek(1), &kek, &key, CONTEXT).unwrap();
        let unwrapped = unwrap_key(&kek, &wrapped, CONTEXT).unwrap();
        assert_eq!(unseal(&sealed, &unwrapped, CONTEXT).unwrap(), b"secret");
        assert!(unwrap_key(&[8u8; 32], &wrapped, CONTEXT).is_err());
        for other_holder in [KeyHolder::Kek(2), KeyHolder::Patient(PatientSlot(1))] {
            assert!(unwrap_key(&kek, &WrappedKey { holder: other_holder, ..wrapped.clone() }, CONTEXT).is_err());
        }
        assert!(unwrap_key(&kek, &wrapped, SealContext { version_id: 9, ..CONTEXT }).is_err());
    }

    /// NIST SP 800-38D / McGrew-Viega GCM spec test case 16 (AES-256, 60-byte plaintext, 20-byte AAD):
    /// the AEAD we build on is the published one.
    #[test]
    fn aes_256_gcm_known_answer() {
        fn hex(text: &str) -> Vec<u8> {
            (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
        }
        let key: [u8; 32] = hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308").try_into().unwrap();
        let nonce: [u8; 12] = hex("cafebabefacedbaddecaf888").try_into().unwrap();
        let plaintext =
            hex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let expected =
            hex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662\
76fc6ece0f4e1768cddf8853bb2d551b");
        let ciphertext = cipher(&key).encrypt(&Nonce::from(nonce), Payload { msg: &plaintext, aad: &aad }).unwrap();
        assert_eq!(ciphertext, expected);
    }
}
