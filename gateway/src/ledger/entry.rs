//! Ledger entries: what the Merkle log commits to for every record version.
//!
//! An entry names no patient and carries no clinical content: the resource is named by a
//! pseudonym (HMAC of `Type/id` under the gateway's ledger secret) and its content by a keyed
//! hash (HMAC of the canonical plaintext), so neither can be brute-forced from the public log.
//!
//! Encoding (the leaf bytes): the canonical JSON ([`crate::fhir::canonical`]) of
//!
//! ```json
//! {"author":"<hex>","cid":"bafk…","contentHash":"<hex>","kind":"create",
//!  "principal":"<pseudonym>","pseudonym":"<hex>","recorded":"2026-11-21T15:20:12.123Z",
//!  "resourceType":"Patient","signature":"<base64 ed25519>","versionId":1}
//! ```
//!
//! `signature` is Ed25519 over `"fhir-gateway ledger entry v1\n"` followed by the canonical JSON
//! of the same object without `signature`. `cid` and `contentHash` are absent for deletions.
//!
//! An erasure (`Patient/$purge`) is one entry of kind `erase`: the patient's pseudonym, its last
//! version id and `erased`, how many versions of how many resources were erased (as
//! `"<versions>/<resources>"`), never what they were. The entries of the erased versions stay:
//! they name pseudonyms and keyed hashes only, and the log must keep proving what it held.
//! `author` binds the organisation that wrote the version (the catalog's `author`, which the
//! consent decision's author-organisation rule compares with): a keyed hash of the
//! organisation reference, or of the empty string when the writer has none. Entries written
//! before it existed lack it; the store refuses such a ledger.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::fhir::canonical::{to_canonical_bytes, write_string};

const SIGNING_CONTEXT: &[u8] = b"fhir-gateway ledger entry v1\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    Create,
    Update,
    Delete,
    /// A patient's records were erased (crypto-shredded and removed).
    Erase,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LedgerEntry {
    /// The keyed hash of the writing organisation (`None` only in entries of older ledgers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub kind: EntryKind,
    pub resource_type: String,
    pub pseudonym: String,
    pub version_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    /// For an erasure: `"<versions>/<resources>"` erased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased: Option<String>,
    pub principal: String,
    pub recorded: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("ledger entry is not well-formed JSON of the entry shape")]
    Malformed,
    #[error("ledger entry is not in canonical form")]
    NotCanonical,
    #[error("ledger entry signature does not verify")]
    BadSignature,
}

impl LedgerEntry {
    /// The canonical JSON of the entry, written directly (every write signs one: no JSON tree),
    /// members in canonical order; `signature` is placed between `resourceType` and `versionId`.
    fn canonical_bytes(&self, signature: Option<&str>) -> Vec<u8> {
        let mut out = Vec::with_capacity(384);
        out.push(b'{');
        let member = |name: &str, value: &str, out: &mut Vec<u8>| {
            if out.len() > 1 {
                out.push(b',');
            }
            write_string(name, out);
            out.push(b':');
            write_string(value, out);
        };
        if let Some(author) = &self.author {
            member("author", author, &mut out);
        }
        if let Some(cid) = &self.cid {
            member("cid", cid, &mut out);
        }
        if let Some(content_hash) = &self.content_hash {
            member("contentHash", content_hash, &mut out);
        }
        if let Some(erased) = &self.erased {
            member("erased", erased, &mut out);
        }
        let kind = match self.kind {
            EntryKind::Create => "create",
            EntryKind::Update => "update",
            EntryKind::Delete => "delete",
            EntryKind::Erase => "erase",
        };
        member("kind", kind, &mut out);
        member("principal", &self.principal, &mut out);
        member("pseudonym", &self.pseudonym, &mut out);
        member("recorded", &self.recorded, &mut out);
        member("resourceType", &self.resource_type, &mut out);
        if let Some(signature) = signature {
            member("signature", signature, &mut out);
        }
        out.extend_from_slice(format!(",\"versionId\":{}}}", self.version_id).as_bytes());
        out
    }

    fn unsigned_bytes(&self) -> Vec<u8> {
        self.canonical_bytes(None)
    }

    /// The signed leaf bytes.
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        let mut message = SIGNING_CONTEXT.to_vec();
        message.extend_from_slice(&self.unsigned_bytes());
        let signature = key.sign(&message);
        self.canonical_bytes(Some(&BASE64.encode(signature.to_bytes())))
    }

    /// Parses leaf bytes without checking the signature (the read path; `verify` checks it).
    pub fn parse(leaf: &[u8]) -> Result<LedgerEntry, EntryError> {
        /// The leaf's shape: the entry's fields and its signature (checked by `verify`).
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Signed {
            #[serde(default)]
            author: Option<String>,
            kind: EntryKind,
            resource_type: String,
            pseudonym: String,
            version_id: u64,
            #[serde(default)]
            content_hash: Option<String>,
            #[serde(default)]
            cid: Option<String>,
            #[serde(default)]
            erased: Option<String>,
            principal: String,
            recorded: String,
            #[allow(dead_code)]
            signature: String,
        }
        let Signed { author, kind, resource_type, pseudonym, version_id, content_hash, cid, erased, principal, recorded, .. } =
            serde_json::from_slice(leaf).map_err(|_| EntryError::Malformed)?;
        Ok(LedgerEntry { author, kind, resource_type, pseudonym, version_id, content_hash, cid, erased, principal, recorded })
    }

    /// Parses leaf bytes and checks canonical form and signature.
    pub fn parse_verified(leaf: &[u8], key: &VerifyingKey) -> Result<LedgerEntry, EntryError> {
        let value: serde_json::Value = serde_json::from_slice(leaf).map_err(|_| EntryError::Malformed)?;
        if to_canonical_bytes(&value) != leaf {
            return Err(EntryError::NotCanonical);
        }
        let entry = LedgerEntry::parse(leaf)?;
        let signature_text = value.get("signature").and_then(|text| text.as_str()).ok_or(EntryError::Malformed)?;
        let signature_bytes: [u8; 64] =
            BASE64.decode(signature_text).map_err(|_| EntryError::Malformed)?.try_into().map_err(|_| EntryError::Malformed)?;
        let mut message = SIGNING_CONTEXT.to_vec();
        message.extend_from_slice(&entry.unsigned_bytes());
        key.verify_strict(&message, &Signature::from_bytes(&signature_bytes)).map_err(|_| EntryError::BadSignature)?;
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LedgerEntry {
        LedgerEntry {
            author: Some("ef".repeat(32)),
            kind: EntryKind::Create,
            resource_type: "Patient".into(),
            pseudonym: "ab".repeat(32),
            version_id: 1,
            content_hash: Some("cd".repeat(32)),
            cid: Some("bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4".into()),
            erased: None,
            principal: "unauthenticated".into(),
            recorded: "2026-11-21T15:20:12.123Z".into(),
        }
    }

    /// The directly written bytes are the canonical form of the entry's JSON (serde's field
    /// names, `to_canonical_bytes`), also for deletions and strings that need escapes.
    #[test]
    fn entry_bytes_are_the_canonical_json_of_the_entry() {
        let deletion = LedgerEntry { kind: EntryKind::Delete, content_hash: None, cid: None, version_id: 12_345, ..sample() };
        let escaped = LedgerEntry { principal: "org \"A\"\\\n\u{1}é".into(), kind: EntryKind::Update, ..sample() };
        let older = LedgerEntry { author: None, ..sample() };
        let erasure =
            LedgerEntry { kind: EntryKind::Erase, content_hash: None, cid: None, erased: Some("120/37".into()), version_id: 3, ..sample() };
        for entry in [sample(), deletion, escaped, older, erasure] {
            let value = serde_json::to_value(&entry).unwrap();
            assert_eq!(entry.unsigned_bytes(), to_canonical_bytes(&value));
            let mut signed = value;
            signed.as_object_mut().unwrap().insert("signature".into(), "c2ln+/==".into());
            assert_eq!(entry.canonical_bytes(Some("c2ln+/==")), to_canonical_bytes(&signed));
        }
    }

    #[test]
    fn signed_leaf_round_trips_and_tampering_is_caught() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let leaf = sample().sign(&key);
        let text = std::str::from_utf8(&leaf).unwrap();
        assert!(text.starts_with(r#"{"author":"efef"#) && text.contains(r#""cid":"bafk"#) && text.contains(r#""kind":"create""#));
        assert_eq!(LedgerEntry::parse_verified(&leaf, &key.verifying_key()).unwrap(), sample());

        let tampered = text.replace(r#""versionId":1"#, r#""versionId":2"#);
        assert_eq!(LedgerEntry::parse_verified(tampered.as_bytes(), &key.verifying_key()), Err(EntryError::BadSignature));
        let other_author = text.replacen("efef", "efee", 1);
        assert_eq!(LedgerEntry::parse_verified(other_author.as_bytes(), &key.verifying_key()), Err(EntryError::BadSignature));
        let reordered = text.replacen('{', "{ ", 1);
        assert_eq!(LedgerEntry::parse_verified(reordered.as_bytes(), &key.verifying_key()), Err(EntryError::NotCanonical));
        let other_key = SigningKey::from_bytes(&[4u8; 32]).verifying_key();
        assert_eq!(LedgerEntry::parse_verified(&leaf, &other_key), Err(EntryError::BadSignature));
    }
}
