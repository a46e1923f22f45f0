//! The gateway's ledger secrets: the Ed25519 key that signs ledger entries and checkpoints
//! (`keys/ledger-ed25519.key`, a 32-byte seed) and the HMAC key behind every pseudonym and keyed
//! hash on the ledger (`keys/ledger-hmac.key`). Both are created on first start, mode 0600.
//!
//! Every keyed hash is HMAC-SHA-256 with a purpose label first, so a value hashed for one
//! purpose can never be matched against another.

use std::path::Path;

use ed25519_dalek::SigningKey;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::Principal;
use super::catalog::{KeyedHash, ResourceKey};
use crate::seal::KeyringError;
use crate::seal::keyring::read_or_create_secret;

pub struct LedgerSecrets {
    pub(crate) signing_key: SigningKey,
    /// HMAC keyed once; every hash clones this state (reads and writes hash several times).
    keyed: Hmac<Sha256>,
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

impl LedgerSecrets {
    pub fn open_or_create(keys_directory: &Path) -> Result<LedgerSecrets, KeyringError> {
        let seed = read_or_create_secret(&keys_directory.join("ledger-ed25519.key"))?;
        let hmac_key = read_or_create_secret(&keys_directory.join("ledger-hmac.key"))?;
        let keyed = <Hmac<Sha256> as KeyInit>::new_from_slice(&hmac_key).expect("HMAC takes any key length");
        Ok(LedgerSecrets { signing_key: SigningKey::from_bytes(&seed), keyed })
    }

    fn keyed_hash(&self, purpose: &str, parts: &[&[u8]]) -> KeyedHash {
        let mut mac = self.keyed.clone();
        mac.update(purpose.as_bytes());
        for part in parts {
            mac.update(&[0]);
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// The ledger's name for a resource: stable across its versions, meaningless without the key.
    pub fn pseudonym(&self, key: &ResourceKey) -> String {
        hex(&self.keyed_hash("pseudonym", &[key.resource_type.as_bytes(), key.id.as_bytes()]))
    }

    /// The name of a patient's key in the patient key store (`seal::patient_keys`).
    pub fn patient_hash(&self, patient_id: &str) -> crate::seal::PatientHash {
        self.keyed_hash("patient-key", &[patient_id.as_bytes()])
    }

    /// The ledger's keyed hash of a version's canonical plaintext.
    pub fn content_hash(&self, plaintext: &[u8]) -> String {
        hex(&self.keyed_hash("content", &[plaintext]))
    }

    /// `system: Some(s)` hashes `s|value` (`Some("")` for an identifier without system);
    /// `None` hashes the value under any system.
    pub fn identifier_hash(&self, resource_type: &str, system: Option<&str>, value: &str) -> KeyedHash {
        match system {
            Some(system) => self.keyed_hash("identifier", &[resource_type.as_bytes(), system.as_bytes(), value.as_bytes()]),
            None => self.keyed_hash("identifier-value", &[resource_type.as_bytes(), value.as_bytes()]),
        }
    }

    pub fn principal(&self, principal: &Principal) -> String {
        match &principal.name {
            None => "unauthenticated".into(),
            Some(name) => hex(&self.keyed_hash("principal", &[name.as_bytes()])),
        }
    }

    /// The ledger's keyed hash of the organisation that wrote a version (of the empty string
    /// when there is none): binds the catalog's `author` to the signed entry.
    pub fn author_hash(&self, organization: Option<&str>) -> String {
        hex(&self.keyed_hash("author", &[organization.unwrap_or("").as_bytes()]))
    }

    /// The key of the search index's term hashes (no readable values in the index).
    pub fn search_key(&self) -> [u8; 32] {
        self.keyed_hash("search-index", &[])
    }

    /// `localhost/fhir-gateway/<first 8 hex digits of SHA-256(public key)>`.
    pub fn default_origin(&self) -> String {
        let digest = Sha256::digest(self.signing_key.verifying_key().as_bytes());
        format!("localhost/fhir-gateway/{}", hex(&digest[..4]))
    }
}
