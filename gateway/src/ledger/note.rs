//! Signed notes and transparency-log checkpoints.
//!
//! * [C2SP signed-note] (`c2sp.org/signed-note`): text ending in a newline, a
//!   blank line, then one or more signature lines
//!   `— <key name> base64(key ID (4 bytes, big-endian) || signature)`.
//!   Only Ed25519 keys (signature type `0x01`, §"Ed25519 signatures") are
//!   supported. Key IDs are `SHA-256(name || 0x0A || 0x01 || public key)[:4]`
//!   and verifier keys are `<name>+<hex key ID>+base64(0x01 || public key)`
//!   (§"Verifier keys"). Opening a note follows §"Signatures": unknown keys
//!   are ignored, every signature from a known key must verify, and at least
//!   one must.
//! * [C2SP tlog-checkpoint] (`c2sp.org/tlog-checkpoint`), §"Note text": the
//!   body `origin\ntree size\nbase64(root hash)\n[extension lines]`.
//!
//! Interoperable with Go's `golang.org/x/mod/sumdb/note` (the test-suite
//! reproduces its published example signature byte for byte).
//!
//! Pure functions only; notes are `&str`, so UTF-8 validity is given.
//! Callers should bound the size of untrusted notes before opening them.
//!
//! [C2SP signed-note]: https://c2sp.org/signed-note
//! [C2SP tlog-checkpoint]: https://c2sp.org/tlog-checkpoint

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fmt;

/// Signature type identifier byte for Ed25519 (signed-note §"Signature types").
const ED25519_TYPE: u8 = 0x01;
/// Start of every signature line: EM DASH (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";
/// Most signature lines accepted by [`open_note`]. The spec requires at least
/// 16; 100 matches Go's implementation.
pub const MAX_SIGNATURES: usize = 100;

/// Errors from signing, opening or parsing notes and checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoteError {
    /// Key name is empty or contains a space, `+` or control character.
    InvalidKeyName,
    /// A verifier key string is not `<name>+<8 hex>+<base64>`.
    MalformedVerifierKey(&'static str),
    /// A private key string is not `PRIVATE+KEY+<name>+<8 hex>+<base64>`.
    MalformedPrivateKey(&'static str),
    /// The key ID in a key string does not match the name and key.
    KeyIdMismatch,
    /// The key is not an Ed25519 (`0x01`) key.
    UnsupportedKeyType(u8),
    /// The public key is not a valid Ed25519 point.
    InvalidPublicKey,
    /// Two configured verifiers share a key name and key ID.
    AmbiguousVerifier { name: String, key_id: u32 },
    /// Text to sign does not end in a newline or has control characters.
    MalformedText(&'static str),
    /// The note is not a well-formed signed note.
    MalformedNote(&'static str),
    /// The note has more than [`MAX_SIGNATURES`] signature lines.
    TooManySignatures,
    /// A signature from a known key did not verify; the note is rejected.
    InvalidSignature { name: String, key_id: u32 },
    /// No signature from a known key was present.
    NoVerifiedSignature,
    /// The checkpoint body is malformed (tlog-checkpoint §"Note text").
    MalformedCheckpoint(&'static str),
    /// The checkpoint's origin is not the expected one.
    UnexpectedOrigin { expected: String, found: String },
}

impl fmt::Display for NoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidKeyName => f.write_str("invalid key name"),
            Self::MalformedVerifierKey(why) => write!(f, "malformed verifier key: {why}"),
            Self::MalformedPrivateKey(why) => write!(f, "malformed private key: {why}"),
            Self::KeyIdMismatch => f.write_str("key ID does not match key name and key"),
            Self::UnsupportedKeyType(t) => write!(f, "unsupported key type 0x{t:02x}"),
            Self::InvalidPublicKey => f.write_str("invalid Ed25519 public key"),
            Self::AmbiguousVerifier { name, key_id } => {
                write!(f, "ambiguous verifier {name}+{key_id:08x}")
            }
            Self::MalformedText(why) => write!(f, "malformed note text: {why}"),
            Self::MalformedNote(why) => write!(f, "malformed note: {why}"),
            Self::TooManySignatures => write!(f, "note has more than {MAX_SIGNATURES} signatures"),
            Self::InvalidSignature { name, key_id } => {
                write!(f, "invalid signature for key {name}+{key_id:08x}")
            }
            Self::NoVerifiedSignature => f.write_str("note has no signature from a known key"),
            Self::MalformedCheckpoint(why) => write!(f, "malformed checkpoint: {why}"),
            Self::UnexpectedOrigin { expected, found } => {
                write!(f, "checkpoint origin {found:?}, expected {expected:?}")
            }
        }
    }
}

impl std::error::Error for NoteError {}

/// Key names must be non-empty without Unicode spaces or `+`
/// (signed-note §"Format"); control characters could never appear in a note.
fn check_key_name(name: &str) -> Result<(), NoteError> {
    let bad = |c: char| c.is_whitespace() || c.is_control() || c == '+';
    if name.is_empty() || name.chars().any(bad) {
        return Err(NoteError::InvalidKeyName);
    }
    Ok(())
}

/// `SHA-256(name || 0x0A || 0x01 || public key)[:4]` as a big-endian `u32`
/// (signed-note §"Ed25519 signatures").
pub fn ed25519_key_id(name: &str, public_key: &VerifyingKey) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', ED25519_TYPE]);
    hasher.update(public_key.as_bytes());
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Parses exactly 8 lowercase hex digits.
fn parse_key_id(hex: &str) -> Option<u32> {
    let valid = hex.len() == 8 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !valid {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// Decodes `base64(0x01 || 32 bytes)`; `malformed` builds the error for
/// the kind of key string being parsed.
fn decode_typed_key(b64: &str, malformed: fn(&'static str) -> NoteError) -> Result<[u8; 32], NoteError> {
    let bytes = BASE64.decode(b64).map_err(|_| malformed("bad base64"))?;
    match bytes.split_first() {
        Some((&ED25519_TYPE, key)) => key.try_into().map_err(|_| malformed("key is not 32 bytes")),
        Some((&other, _)) => Err(NoteError::UnsupportedKeyType(other)),
        None => Err(malformed("empty key")),
    }
}

/// An Ed25519 note signer: a key name and a signing key.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl fmt::Debug for NoteSigner {
    /// Never prints the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id()))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A signer for `name`, which must be a valid key name.
    pub fn new(name: impl Into<String>, key: SigningKey) -> Result<Self, NoteError> {
        let name = name.into();
        check_key_name(&name)?;
        Ok(Self { name, key })
    }

    /// Parses Go's `golang.org/x/mod/sumdb/note` private key format:
    /// `PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 || 32-byte seed)`.
    pub fn from_private_key(skey: &str) -> Result<Self, NoteError> {
        let err = NoteError::MalformedPrivateKey;
        let rest = skey.strip_prefix("PRIVATE+KEY+").ok_or(err("missing PRIVATE+KEY+ prefix"))?;
        let (name, rest) = rest.split_once('+').ok_or(err("missing key ID"))?;
        let (hex, b64) = rest.split_once('+').ok_or(err("missing key"))?;
        check_key_name(name)?;
        let key_id = parse_key_id(hex).ok_or(err("key ID is not 8 lowercase hex digits"))?;
        let seed = decode_typed_key(b64, err)?;
        let signer = Self::new(name, SigningKey::from_bytes(&seed))?;
        if signer.key_id() != key_id {
            return Err(NoteError::KeyIdMismatch);
        }
        Ok(signer)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 32-bit key ID (see [`ed25519_key_id`]).
    pub fn key_id(&self) -> u32 {
        ed25519_key_id(&self.name, &self.key.verifying_key())
    }

    /// The verifier for this signer's public key.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier { name: self.name.clone(), key_id: self.key_id(), key: self.key.verifying_key() }
    }

    /// `<name>+<hex key ID>+base64(0x01 || public key)`.
    pub fn verifier_key(&self) -> String {
        self.verifier().verifier_key()
    }
}

/// An Ed25519 note verifier: key name, key ID and public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// A verifier for `name` and `key`; the key ID is derived.
    pub fn new(name: impl Into<String>, key: VerifyingKey) -> Result<Self, NoteError> {
        let name = name.into();
        check_key_name(&name)?;
        let key_id = ed25519_key_id(&name, &key);
        Ok(Self { name, key_id, key })
    }

    /// Parses a verifier key `<name>+<hex key ID>+base64(0x01 || public key)`
    /// (signed-note §"Verifier keys"), checking that the key ID matches.
    pub fn from_verifier_key(vkey: &str) -> Result<Self, NoteError> {
        let err = NoteError::MalformedVerifierKey;
        let (name, rest) = vkey.split_once('+').ok_or(err("missing key ID"))?;
        // The base64 alphabet contains '+', so only split twice.
        let (hex, b64) = rest.split_once('+').ok_or(err("missing key"))?;
        check_key_name(name)?;
        let key_id = parse_key_id(hex).ok_or(err("key ID is not 8 lowercase hex digits"))?;
        let key_bytes = decode_typed_key(b64, err)?;
        let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| NoteError::InvalidPublicKey)?;
        let verifier = Self::new(name, key)?;
        if verifier.key_id != key_id {
            return Err(NoteError::KeyIdMismatch);
        }
        Ok(verifier)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// `<name>+<hex key ID>+base64(0x01 || public key)`.
    pub fn verifier_key(&self) -> String {
        let mut typed = [0u8; 33];
        typed[0] = ED25519_TYPE;
        typed[1..].copy_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.key_id, BASE64.encode(typed))
    }
}

/// A key whose signature on a note verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSignatureName {
    pub name: String,
    pub key_id: u32,
}

/// Signed notes may contain no ASCII control character but newline.
fn has_forbidden_control(s: &str) -> bool {
    s.chars().any(|c| c < '\u{20}' && c != '\n')
}

/// Signs `text` and returns the note: `text`, a blank line and one
/// signature line `— <name> base64(key ID || Ed25519 signature)`.
///
/// `text` must end in a newline and contain no control character other than
/// newline; it may contain blank lines.
pub fn sign_note(text: &str, signer: &NoteSigner) -> Result<String, NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::MalformedText("text must end in a newline"));
    }
    if has_forbidden_control(text) {
        return Err(NoteError::MalformedText("text contains a control character"));
    }
    let signature = signer.key.sign(text.as_bytes());
    let mut blob = Vec::with_capacity(4 + 64);
    blob.extend_from_slice(&signer.key_id().to_be_bytes());
    blob.extend_from_slice(&signature.to_bytes());
    Ok(format!("{text}\n{SIG_PREFIX}{} {}\n", signer.name, BASE64.encode(blob)))
}

/// One parsed signature line.
struct SignatureLine<'a> {
    name: &'a str,
    key_id: u32,
    signature: Vec<u8>,
}

fn parse_signature_line(line: &str) -> Result<SignatureLine<'_>, NoteError> {
    let err = NoteError::MalformedNote;
    let rest = line.strip_prefix(SIG_PREFIX).ok_or(err("signature line must start with \"— \""))?;
    let (name, b64) = rest.split_once(' ').ok_or(err("signature line has no signature"))?;
    check_key_name(name).map_err(|_| err("invalid key name in signature line"))?;
    let blob = BASE64.decode(b64).map_err(|_| err("bad base64 in signature line"))?;
    let Some((id, signature)) = blob.split_first_chunk::<4>() else {
        return Err(err("signature too short"));
    };
    if signature.is_empty() {
        return Err(err("signature too short"));
    }
    let key_id = u32::from_be_bytes(*id);
    Ok(SignatureLine { name, key_id, signature: signature.to_vec() })
}

/// Opens a signed note (signed-note §"Format" and §"Signatures").
///
/// Returns the text (including its final newline) and the keys whose
/// signatures verified, each once. Signatures by keys not in `verifiers`
/// (name and key ID must both match) are ignored. Fails if the note is
/// malformed, if any signature from a known key is invalid, or if no
/// signature from a known key is present.
pub fn open_note<'a>(note: &'a str, verifiers: &[NoteVerifier]) -> Result<(&'a str, Vec<VerifiedSignatureName>), NoteError> {
    let err = NoteError::MalformedNote;
    if has_forbidden_control(note) {
        return Err(err("control character"));
    }
    // The text is separated from the signatures by the last blank line.
    let split = note.rfind("\n\n").ok_or(err("no blank line before signatures"))?;
    let (text, signatures) = (&note[..split + 1], &note[split + 2..]);
    let Some(signatures) = signatures.strip_suffix('\n') else {
        return Err(err("signature block must be non-empty and end in a newline"));
    };

    let mut verified: Vec<VerifiedSignatureName> = Vec::new();
    for (count, line) in signatures.split('\n').enumerate() {
        if count >= MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures);
        }
        let sig = parse_signature_line(line)?;
        let mut matching = verifiers.iter().filter(|v| v.name == sig.name && v.key_id == sig.key_id);
        let Some(verifier) = matching.next() else {
            continue; // Unknown key: ignored, as the spec requires.
        };
        // The same key listed twice is harmless; two different keys with the
        // same name and key ID is a configuration error.
        if matching.any(|other| other.key != verifier.key) {
            return Err(NoteError::AmbiguousVerifier { name: sig.name.to_owned(), key_id: sig.key_id });
        }
        let invalid = || NoteError::InvalidSignature { name: sig.name.to_owned(), key_id: sig.key_id };
        let bytes: [u8; 64] = sig.signature.as_slice().try_into().map_err(|_| invalid())?;
        verifier.key.verify_strict(text.as_bytes(), &Signature::from_bytes(&bytes)).map_err(|_| invalid())?;
        if !verified.iter().any(|v| v.name == sig.name && v.key_id == sig.key_id) {
            verified.push(VerifiedSignatureName { name: sig.name.to_owned(), key_id: sig.key_id });
        }
    }
    if verified.is_empty() {
        return Err(NoteError::NoVerifiedSignature);
    }
    Ok((text, verified))
}

/// A checkpoint body (tlog-checkpoint §"Note text"). Fields are validated on
/// construction, so [`Checkpoint::to_body`] always yields a parseable body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    origin: String,
    tree_size: u64,
    root_hash: [u8; 32],
    extensions: Vec<String>,
}

/// A line of a checkpoint body: non-empty, no newline or control character.
fn is_valid_line(line: &str) -> bool {
    !line.is_empty() && !line.chars().any(|c| c < '\u{20}')
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: impl Into<String>, tree_size: u64, root_hash: [u8; 32]) -> Result<Self, NoteError> {
        Self::with_extensions(origin, tree_size, root_hash, Vec::new())
    }

    /// A checkpoint with extension lines (each non-empty, without newline).
    pub fn with_extensions(
        origin: impl Into<String>,
        tree_size: u64,
        root_hash: [u8; 32],
        extensions: Vec<String>,
    ) -> Result<Self, NoteError> {
        let origin = origin.into();
        if !is_valid_line(&origin) {
            return Err(NoteError::MalformedCheckpoint("origin must be a non-empty line"));
        }
        if !extensions.iter().all(|e| is_valid_line(e)) {
            return Err(NoteError::MalformedCheckpoint("extension lines must be non-empty lines"));
        }
        Ok(Self { origin, tree_size, root_hash, extensions })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn tree_size(&self) -> u64 {
        self.tree_size
    }

    pub fn root_hash(&self) -> &[u8; 32] {
        &self.root_hash
    }

    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }

    /// `origin\n<decimal size>\n<base64 root>\n` followed by the extension
    /// lines, each ending in a newline.
    pub fn to_body(&self) -> String {
        let mut body = format!("{}\n{}\n{}\n", self.origin, self.tree_size, BASE64.encode(self.root_hash));
        for extension in &self.extensions {
            body.push_str(extension);
            body.push('\n');
        }
        body
    }

    /// Parses a checkpoint body (the text of an opened note).
    pub fn parse_body(body: &str) -> Result<Self, NoteError> {
        let err = NoteError::MalformedCheckpoint;
        let body = body.strip_suffix('\n').ok_or(err("body must end in a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        let size = lines.next().ok_or(err("missing tree size"))?;
        let root = lines.next().ok_or(err("missing root hash"))?;

        let canonical_decimal = !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit()) && (size == "0" || !size.starts_with('0'));
        if !canonical_decimal {
            return Err(err("tree size is not a canonical decimal number"));
        }
        let tree_size = size.parse::<u64>().map_err(|_| err("tree size out of range"))?;
        let root_hash: [u8; 32] =
            BASE64.decode(root).ok().and_then(|bytes| bytes.try_into().ok()).ok_or(err("root hash is not base64 of 32 bytes"))?;
        let extensions = lines.map(str::to_owned).collect();
        Self::with_extensions(origin, tree_size, root_hash, extensions)
    }
}

/// Signs a checkpoint: `sign_note(&checkpoint.to_body(), signer)`.
pub fn sign_checkpoint(checkpoint: &Checkpoint, signer: &NoteSigner) -> Result<String, NoteError> {
    sign_note(&checkpoint.to_body(), signer)
}

/// Opens a signed checkpoint, parses it and checks its origin.
///
/// Which of the returned keys are required (the log's own key, a witness
/// quorum) is the caller's policy.
pub fn open_checkpoint(
    note: &str,
    expected_origin: &str,
    verifiers: &[NoteVerifier],
) -> Result<(Checkpoint, Vec<VerifiedSignatureName>), NoteError> {
    let (text, signatures) = open_note(note, verifiers)?;
    let checkpoint = Checkpoint::parse_body(text)?;
    if checkpoint.origin != expected_origin {
        return Err(NoteError::UnexpectedOrigin { expected: expected_origin.to_owned(), found: checkpoint.origin });
    }
    Ok((checkpoint, signatures))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer values from golang/mod, sumdb/note/note_test.go
    // @ fe2ec04f7c3c3aa6fad97631aafcff6e49e2d1db (TestNewVerifier,
    // TestNewSigner, TestSign, TestOpen).
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_SKEY: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_KEY_ID: u32 = 0xc74f20a3;
    const PETER_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                              then you don't know what your problem is.\n";
    const PETER_SIG_LINE: &str =
        "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const PETER_SIG_B64: &str = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=";

    // Example from C2SP/C2SP, signed-note.md
    // @ b3a911e3f2bd75a6ccdd0bf04e9e1912961c439a (§"Verifier keys", Example).
    const FOO_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const FOO_NOTE: &str = "This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    // Example body from C2SP/C2SP, tlog-checkpoint.md
    // @ c0d0289bb8fc9c07c8ffe10a9ebb9bded4a9b500 (no verifier key is published).
    const SOFA_BODY: &str = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

    fn peter_note() -> String {
        format!("{PETER_TEXT}\n{PETER_SIG_LINE}")
    }

    fn peter() -> NoteVerifier {
        NoteVerifier::from_verifier_key(PETER_VKEY).expect("Go test vkey")
    }

    fn test_signer(name: &str, seed: u8) -> NoteSigner {
        NoteSigner::new(name, SigningKey::from_bytes(&[seed; 32])).expect("valid name")
    }

    /// Just the signature line `signer` would add to `text`.
    fn sig_line(text: &str, signer: &NoteSigner) -> String {
        let note = sign_note(text, signer).expect("sign");
        note[text.len() + 1..].to_owned()
    }

    /// Re-encodes Peter's signature blob after `edit`.
    fn peter_line_with(edit: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut blob = BASE64.decode(PETER_SIG_B64).expect("b64");
        edit(&mut blob);
        format!("— PeterNeumann {}\n", BASE64.encode(blob))
    }

    fn assert_malformed(note: &str, verifiers: &[NoteVerifier]) {
        match open_note(note, verifiers) {
            Err(NoteError::MalformedNote(_)) => {}
            other => panic!("expected MalformedNote for {note:?}, got {other:?}"),
        }
    }

    #[test]
    fn go_kat_keys() {
        let signer = NoteSigner::from_private_key(PETER_SKEY).expect("Go test skey");
        assert_eq!(signer.name(), "PeterNeumann");
        assert_eq!(signer.key_id(), PETER_KEY_ID);
        assert_eq!(signer.verifier_key(), PETER_VKEY);
        let verifier = peter();
        assert_eq!(verifier.name(), "PeterNeumann");
        assert_eq!(verifier.key_id(), PETER_KEY_ID);
        assert_eq!(verifier.verifier_key(), PETER_VKEY);
        assert_eq!(verifier, signer.verifier());
        // Debug output must not leak the private key.
        let debug = format!("{signer:?}");
        assert!(debug.contains("c74f20a3") && !debug.contains("AYEKF"), "{debug}");
    }

    #[test]
    fn go_kat_sign_is_byte_exact() {
        let signer = NoteSigner::from_private_key(PETER_SKEY).expect("Go test skey");
        assert_eq!(sign_note(PETER_TEXT, &signer).expect("sign"), peter_note());
    }

    #[test]
    fn go_kat_open() {
        let note = peter_note();
        let (text, sigs) = open_note(&note, &[peter()]).expect("open");
        assert_eq!(text, PETER_TEXT);
        assert_eq!(sigs, vec![VerifiedSignatureName { name: "PeterNeumann".into(), key_id: PETER_KEY_ID }]);
    }

    #[test]
    fn c2sp_kat_open() {
        let foo = NoteVerifier::from_verifier_key(FOO_VKEY).expect("spec vkey");
        assert_eq!(foo.key_id(), 0x530d903a);
        assert_eq!(foo.verifier_key(), FOO_VKEY);
        let (text, sigs) = open_note(FOO_NOTE, &[foo]).expect("open");
        assert_eq!(text, "This is an example message.\n");
        assert_eq!(sigs[0].name, "example.com/foo");
        // Not signed by Peter.
        assert_eq!(open_note(FOO_NOTE, &[peter()]), Err(NoteError::NoVerifiedSignature));
    }

    #[test]
    fn rejects_modified_text() {
        let note = peter_note().replacen("cryptography", "cryptografy", 1);
        assert_eq!(open_note(&note, &[peter()]), Err(NoteError::InvalidSignature { name: "PeterNeumann".into(), key_id: PETER_KEY_ID }));
        // Extra line appended to the text.
        let note = format!("{PETER_TEXT}extra\n\n{PETER_SIG_LINE}");
        assert!(matches!(open_note(&note, &[peter()]), Err(NoteError::InvalidSignature { .. })));
    }

    #[test]
    fn wrong_key_id_is_an_unknown_key() {
        // Name matches but key ID does not: ignored, so nothing verifies.
        let line = peter_line_with(|blob| blob[3] ^= 1);
        let note = format!("{PETER_TEXT}\n{line}");
        assert_eq!(open_note(&note, &[peter()]), Err(NoteError::NoVerifiedSignature));
        // Key ID matches but name does not: likewise ignored.
        let note = format!("{PETER_TEXT}\n{}", PETER_SIG_LINE.replace("PeterNeumann", "CarmenSandiego"));
        assert_eq!(open_note(&note, &[peter()]), Err(NoteError::NoVerifiedSignature));
    }

    #[test]
    fn rejects_truncated_or_altered_signature() {
        let invalid = Err(NoteError::InvalidSignature { name: "PeterNeumann".into(), key_id: PETER_KEY_ID });
        for edit in [
            (|b: &mut Vec<u8>| b.truncate(4 + 63)) as fn(&mut Vec<u8>),
            |b| b.truncate(5),
            |b| b.push(0),
            |b| b[10] ^= 0x80,
            |b| b[4 + 63] ^= 0x01,
        ] {
            let note = format!("{PETER_TEXT}\n{}", peter_line_with(edit));
            assert_eq!(open_note(&note, &[peter()]), invalid);
        }
        // Only the key ID left: malformed.
        let note = format!("{PETER_TEXT}\n{}", peter_line_with(|b| b.truncate(4)));
        assert_malformed(&note, &[peter()]);
        // Truncated base64 text.
        let cut = PETER_SIG_LINE.len() - 3;
        let note = format!("{PETER_TEXT}\n{}\n", &PETER_SIG_LINE[..cut]);
        assert_malformed(&note, &[peter()]);
    }

    #[test]
    fn unknown_signers_only_is_an_error() {
        let mallory = test_signer("PeterNeumann", 7); // Same name, other key.
        let note = sign_note(PETER_TEXT, &mallory).expect("sign");
        assert_eq!(open_note(&note, &[peter()]), Err(NoteError::NoVerifiedSignature));
        assert_eq!(open_note(&peter_note(), &[]), Err(NoteError::NoVerifiedSignature));
    }

    #[test]
    fn unknown_signatures_are_ignored_next_to_known_ones() {
        let other = test_signer("example.com/witness", 9);
        let note = format!("{}{}", peter_note(), sig_line(PETER_TEXT, &other));
        let (_, sigs) = open_note(&note, &[peter()]).expect("open");
        assert_eq!(sigs.len(), 1);
        // Garbage signature bytes from an unknown key are ignored too.
        let note = format!("{}— someone.else AAAAAAAAAAAA\n", peter_note());
        assert!(open_note(&note, &[peter()]).is_ok());
        // Both known: both reported, in note order.
        let (_, sigs) = open_note(&note_with_two(&other), &[other.verifier(), peter()]).expect("open");
        let names: Vec<&str> = sigs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["PeterNeumann", "example.com/witness"]);
    }

    fn note_with_two(other: &NoteSigner) -> String {
        format!("{}{}", peter_note(), sig_line(PETER_TEXT, other))
    }

    #[test]
    fn one_bad_known_signature_rejects_the_note() {
        let witness = test_signer("example.com/witness", 9);
        let forged = sig_line("some other text\n", &witness);
        let note = format!("{}{forged}", peter_note());
        assert_eq!(
            open_note(&note, &[peter(), witness.verifier()]),
            Err(NoteError::InvalidSignature { name: "example.com/witness".into(), key_id: witness.key_id() })
        );
        // Without the witness configured, the forged line is just unknown.
        assert!(open_note(&note, &[peter()]).is_ok());
    }

    #[test]
    fn duplicate_signature_lines() {
        // Identical duplicates: each verified, reported once.
        let note = format!("{}{PETER_SIG_LINE}", peter_note());
        let (_, sigs) = open_note(&note, &[peter()]).expect("open");
        assert_eq!(sigs.len(), 1);
        // A second, different signature line for the same key must verify too.
        let bad = peter_line_with(|blob| blob[20] ^= 4);
        for note in [format!("{}{bad}", peter_note()), format!("{PETER_TEXT}\n{bad}{PETER_SIG_LINE}")] {
            assert!(matches!(open_note(&note, &[peter()]), Err(NoteError::InvalidSignature { .. })));
        }
        // The same verifier configured twice is fine; two keys claiming the
        // same name and key ID are not.
        assert!(open_note(&peter_note(), &[peter(), peter()]).is_ok());
        let impostor = NoteVerifier { key: SigningKey::from_bytes(&[3; 32]).verifying_key(), ..peter() };
        assert!(matches!(open_note(&peter_note(), &[peter(), impostor]), Err(NoteError::AmbiguousVerifier { .. })));
    }

    #[test]
    fn signature_count_limit() {
        let unknown = "— someone.else AAAAAAAAAAAA\n";
        let at_limit = format!("{}{}", peter_note(), unknown.repeat(MAX_SIGNATURES - 1));
        assert!(open_note(&at_limit, &[peter()]).is_ok());
        let over = format!("{}{}", peter_note(), unknown.repeat(MAX_SIGNATURES));
        assert_eq!(open_note(&over, &[peter()]), Err(NoteError::TooManySignatures));
    }

    #[test]
    fn text_must_end_in_newline() {
        let signer = test_signer("example.com/log", 1);
        assert!(matches!(sign_note("no newline", &signer), Err(NoteError::MalformedText(_))));
        assert!(matches!(sign_note("", &signer), Err(NoteError::MalformedText(_))));
        assert!(matches!(sign_note("tab\there\n", &signer), Err(NoteError::MalformedText(_))));
        assert!(matches!(sign_note("cr\r\n", &signer), Err(NoteError::MalformedText(_))));
        // A note whose text lacks the final newline has no blank separator line.
        let text = PETER_TEXT.trim_end_matches('\n');
        assert_malformed(&format!("{text}\n{PETER_SIG_LINE}"), &[peter()]);
    }

    #[test]
    fn malformed_notes() {
        let v = [peter()];
        let sig = PETER_SIG_LINE;
        let sig_b64 = PETER_SIG_B64;
        for note in [
            String::new(),
            "\n\n".to_owned(),
            PETER_TEXT.to_owned(),
            format!("{PETER_TEXT}{sig}"),                                                       // no blank line
            format!("{PETER_TEXT}\n"),                                                          // no signatures
            format!("{PETER_TEXT}\n{}", sig.trim_end()),                                        // no final newline
            format!("{}\n", peter_note()),                                                      // trailing blank line
            format!("{PETER_TEXT}\n-- PeterNeumann {sig_b64}\n"),                               // ASCII dashes
            format!("{PETER_TEXT}\n\u{2013} PeterNeumann {sig_b64}\n"),                         // EN DASH
            format!("{PETER_TEXT}\n\u{2014}PeterNeumann {sig_b64}\n"),                          // no space after dash
            format!("{PETER_TEXT}\n\u{2014} PeterNeumann\n"),                                   // no signature
            format!("{PETER_TEXT}\n\u{2014} PeterNeumann \n"),                                  // empty signature
            format!("{PETER_TEXT}\n\u{2014}  PeterNeumann {sig_b64}\n"),                        // empty name
            format!("{PETER_TEXT}\n\u{2014} Peter+Neumann {sig_b64}\n"),                        // '+' in name
            format!("{PETER_TEXT}\n\u{2014} PeterNeumann {sig_b64} \n"),                        // trailing space
            format!("{PETER_TEXT}\n\u{2014} PeterNeumann  {sig_b64}\n"),                        // double space
            format!("{PETER_TEXT}\n\u{2014} PeterNeumann {}\n", sig_b64.trim_end_matches('=')), // unpadded
            format!("{PETER_TEXT}\n\u{2014} PeterNeumann {}\n", sig_b64.replace('/', "_")),     // URL alphabet
            format!("{PETER_TEXT}\n\u{2014} PeterNeumann AAAAAB==\n"),                          // non-canonical trailing bits
            format!("{PETER_TEXT}\n\u{2014} PeterNeumann !!!!\n"),                              // not base64
            format!("{PETER_TEXT}\r\n{sig}"),                                                   // control character
            format!("{PETER_TEXT}\n{}", sig.replace('\n', "\r\n")),                             // CRLF
            format!("\u{1}{}", peter_note()),                                                   // control character in text
        ] {
            assert_malformed(&note, &v);
        }
        // A blank line between signature lines makes the first one part of
        // the text (the text ends at the last blank line), so it no longer
        // verifies.
        let note = format!("{PETER_TEXT}\n{sig}\n{sig}");
        assert!(matches!(open_note(&note, &v), Err(NoteError::InvalidSignature { .. })));
    }

    #[test]
    fn round_trip_with_generated_key_and_blank_lines_in_text() {
        let signer = test_signer("example.com/log", 42);
        let verifier = NoteVerifier::from_verifier_key(&signer.verifier_key()).expect("vkey");
        assert_eq!(verifier, signer.verifier());
        for text in ["hello\n", "\n", "a\n\nb\n", "ends with blank line\n\n", "looks like\n\n— a signature line\n", "unicode é ✓ 𝄞\n"]
        {
            let note = sign_note(text, &signer).expect("sign");
            let (opened, sigs) = open_note(&note, std::slice::from_ref(&verifier)).expect("open");
            assert_eq!(opened, text);
            assert_eq!(sigs, vec![VerifiedSignatureName { name: "example.com/log".into(), key_id: signer.key_id() }]);
        }
    }

    #[test]
    fn key_names_are_validated() {
        let key = SigningKey::from_bytes(&[1; 32]);
        for name in ["", "a b", "a+b", "a\u{a0}b", "tab\tname", "nl\n", "ctl\u{1}"] {
            assert_eq!(NoteSigner::new(name, key.clone()).map(|_| ()), Err(NoteError::InvalidKeyName), "{name:?}");
            assert_eq!(NoteVerifier::new(name, key.verifying_key()).map(|_| ()), Err(NoteError::InvalidKeyName));
        }
        assert!(NoteSigner::new("example.com/log-1", key).is_ok());
    }

    #[test]
    fn bad_verifier_keys() {
        // The first two are badKey cases in Go's TestNewVerifier.
        assert!(matches!(
            NoteVerifier::from_verifier_key("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="),
            Err(NoteError::MalformedVerifierKey(_))
        ));
        assert_eq!(
            NoteVerifier::from_verifier_key(&format!("PeterNeumann+c74f20a3+{}", BASE64.encode([1u8; 34]))),
            Err(NoteError::MalformedVerifierKey("key is not 32 bytes"))
        );
        assert_eq!(
            NoteVerifier::from_verifier_key("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
            Err(NoteError::UnsupportedKeyType(0x65))
        );
        assert_eq!(
            NoteVerifier::from_verifier_key("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
            Err(NoteError::KeyIdMismatch)
        );
        assert_eq!(
            NoteVerifier::from_verifier_key("Peter+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
            Err(NoteError::KeyIdMismatch)
        );
        for vkey in [
            "",
            "PeterNeumann",
            "PeterNeumann+c74f20a3",
            "PeterNeumann+c74f20a3+",
            "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+0xc74f20+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",
            "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            PETER_SKEY,
        ] {
            assert!(NoteVerifier::from_verifier_key(vkey).is_err(), "{vkey:?}");
        }
    }

    #[test]
    fn bad_private_keys() {
        for skey in [
            "",
            PETER_VKEY,
            "PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
            "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDF",
            "PRIVATE+KEY+PeterNeumann+c74f20a3+ZYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
            "PRIVATE+KEY+PeterNeumann+c74f20a3",
            "PRIVATE+KEY++c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        ] {
            let result = NoteSigner::from_private_key(skey);
            assert!(result.is_err(), "{skey:?}");
            // Errors never echo key material.
            let message = result.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(!message.contains("AYEKF"), "{message}");
        }
    }

    #[test]
    fn checkpoint_body_format() {
        let root: [u8; 32] = std::array::from_fn(|i| i as u8);
        let cp = Checkpoint::new("example.com/log", 1234, root).expect("valid");
        assert_eq!(cp.to_body(), "example.com/log\n1234\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n");
        assert_eq!(Checkpoint::parse_body(&cp.to_body()), Ok(cp));

        let ext = vec!["ext one".to_owned(), "— two".to_owned()];
        let cp = Checkpoint::with_extensions("o", 0, [0xff; 32], ext.clone()).expect("valid");
        let body = cp.to_body();
        assert!(body.starts_with("o\n0\n") && body.ends_with("\next one\n— two\n"));
        let parsed = Checkpoint::parse_body(&body).expect("parse");
        assert_eq!(parsed.extensions(), ext.as_slice());
        assert_eq!(parsed, cp);

        let max = Checkpoint::new("o", u64::MAX, root).expect("valid");
        assert_eq!(Checkpoint::parse_body(&max.to_body()).map(|c| c.tree_size()), Ok(u64::MAX));
    }

    #[test]
    fn c2sp_checkpoint_example_body() {
        let cp = Checkpoint::parse_body(SOFA_BODY).expect("spec example");
        assert_eq!(cp.origin(), "example.com/behind-the-sofa");
        assert_eq!(cp.tree_size(), 20852163);
        assert_eq!(cp.root_hash()[..3], [0x0a, 0xc5, 0x18]);
        assert!(cp.extensions().is_empty());
        assert_eq!(cp.to_body(), SOFA_BODY);
    }

    #[test]
    fn malformed_checkpoint_bodies() {
        let root = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=";
        for body in [
            String::new(),
            "\n".to_owned(),
            format!("o\n1\n{root}"),    // no final newline
            "o\n1\n".to_owned(),        // no root
            "o\n".to_owned(),           // no size
            format!("\n1\n{root}\n"),   // empty origin
            format!("o\n\n{root}\n"),   // empty size
            format!("o\n01\n{root}\n"), // leading zero
            format!("o\n00\n{root}\n"),
            format!("o\n+1\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n 1\n{root}\n"),
            format!("o\n1 \n{root}\n"),
            format!("o\n0x1\n{root}\n"),
            format!("o\n1e3\n{root}\n"),
            format!("o\n18446744073709551616\n{root}\n"), // u64::MAX + 1
            "o\n1\n\n".to_owned(),                        // empty root
            "o\n1\nAAAA\n".to_owned(),                    // 3 bytes
            format!("o\n1\n{}\n", BASE64.encode([0u8; 31])),
            format!("o\n1\n{}\n", BASE64.encode([0u8; 33])),
            format!("o\n1\n{}\n", root.trim_end_matches('=')),                 // unpadded
            "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2J=\n".to_owned(), // non-canonical
            format!("o\n1\n{root}\n\n"),                                       // empty extension line
            format!("o\n1\n{root}\next\n\n"),
            format!("o\n1\n{root}\next\r\n"), // control character
            format!("o\r\n1\n{root}\n"),
        ] {
            assert!(matches!(Checkpoint::parse_body(&body), Err(NoteError::MalformedCheckpoint(_))), "{body:?}");
        }
        assert!(Checkpoint::parse_body(&format!("o\n0\n{root}\n")).is_ok());
    }

    #[test]
    fn checkpoint_constructor_validates() {
        let r = [0u8; 32];
        for origin in ["", "a\nb", "a\r"] {
            assert!(Checkpoint::new(origin, 1, r).is_err(), "{origin:?}");
        }
        for ext in ["", "a\nb", "x\u{0}"] {
            assert!(Checkpoint::with_extensions("o", 1, r, vec![ext.to_owned()]).is_err(), "{ext:?}");
        }
        // Spaces and '+' in the origin are only a SHOULD NOT.
        assert!(Checkpoint::new("example.com/log 1+2", 1, r).is_ok());
    }

    #[test]
    fn signed_checkpoint_round_trip() {
        let signer = test_signer("example.com/log", 5);
        let cp = Checkpoint::new("example.com/log", 7, [9; 32]).expect("valid");
        let note = sign_checkpoint(&cp, &signer).expect("sign");
        let verifiers = [signer.verifier()];
        let (opened, sigs) = open_checkpoint(&note, "example.com/log", &verifiers).expect("open");
        assert_eq!(opened, cp);
        assert_eq!(sigs[0].key_id, signer.key_id());
        assert_eq!(
            open_checkpoint(&note, "example.com/other", &verifiers),
            Err(NoteError::UnexpectedOrigin { expected: "example.com/other".into(), found: "example.com/log".into() })
        );
        // Validly signed but not a checkpoint.
        let note = sign_note("example.com/log\nseven\nroot\n", &signer).expect("sign");
        assert!(matches!(open_checkpoint(&note, "example.com/log", &verifiers), Err(NoteError::MalformedCheckpoint(_))));
        // A checkpoint signed by the wrong key.
        let note = sign_checkpoint(&cp, &test_signer("example.com/log", 6)).expect("sign");
        assert_eq!(open_checkpoint(&note, "example.com/log", &verifiers), Err(NoteError::NoVerifiedSignature));
    }

    #[test]
    fn key_id_derivation() {
        // Recompute Peter's key ID from the published public key.
        let verifier = peter();
        assert_eq!(ed25519_key_id("PeterNeumann", verifier.public_key()), PETER_KEY_ID);
        // The name is part of the ID.
        assert_ne!(ed25519_key_id("PeterNeumann2", verifier.public_key()), PETER_KEY_ID);
    }
}
