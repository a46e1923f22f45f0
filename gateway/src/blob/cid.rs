//! Minimal content identifiers: CIDv0 and CIDv1 over sha2-256 multihashes.
//!
//! Text forms: CIDv0 is bare base58btc ("Qm..."); CIDv1 is printed as
//! multibase base32 lower ("b...") and parsed from base32 lower/upper ("b"/"B")
//! or base58btc ("z"). Only the sha2-256 multihash (0x12, 32 bytes) is
//! supported, which is what every block built by this crate uses.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Multicodec `raw`: the block is the bytes themselves.
pub const RAW: u64 = 0x55;
/// Multicodec `dag-pb`: the block is a protobuf PBNode.
pub const DAG_PB: u64 = 0x70;

const SHA2_256: u8 = 0x12;
const DIGEST_LEN: usize = 32;
/// version (1 byte) + codec varint (<= 10 bytes) + multihash (2 + 32 bytes).
const MAX_LEN: usize = 1 + 10 + 2 + DIGEST_LEN;
const BASE58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CidVersion {
    V0,
    V1,
}

/// A CID with a sha2-256 multihash, stored in its canonical binary form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cid {
    bytes: [u8; MAX_LEN], // canonical binary CID, zero-padded after `len`
    len: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CidError {
    /// Not valid base58btc / base32, or an unsupported multibase prefix.
    Encoding,
    /// Binary form is not a canonical CIDv0/CIDv1 with a sha2-256 multihash.
    Binary,
}

impl fmt::Display for CidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CidError::Encoding => "invalid CID string encoding",
            CidError::Binary => "invalid or unsupported binary CID (need CIDv0/v1 with sha2-256)",
        })
    }
}

impl std::error::Error for CidError {}

impl Cid {
    /// CIDv0 (implicitly dag-pb) for a sha2-256 digest.
    pub fn v0(digest: [u8; 32]) -> Cid {
        let mut cid = Cid { bytes: [0; MAX_LEN], len: 0 };
        cid.push(&[SHA2_256, DIGEST_LEN as u8]);
        cid.push(&digest);
        cid
    }

    /// CIDv1 with the given multicodec for a sha2-256 digest.
    pub fn v1(codec: u64, digest: [u8; 32]) -> Cid {
        let mut cid = Cid { bytes: [0; MAX_LEN], len: 0 };
        cid.push(&[1]);
        let mut codec_buf = Vec::with_capacity(10);
        put_varint(&mut codec_buf, codec);
        cid.push(&codec_buf);
        cid.push(&[SHA2_256, DIGEST_LEN as u8]);
        cid.push(&digest);
        cid
    }

    /// Hash `data` with sha2-256 and wrap it in a CID of the given version.
    /// `codec` is ignored for V0 (always dag-pb).
    pub fn hash(version: CidVersion, codec: u64, data: &[u8]) -> Cid {
        let digest: [u8; 32] = Sha256::digest(data).into();
        match version {
            CidVersion::V0 => Cid::v0(digest),
            CidVersion::V1 => Cid::v1(codec, digest),
        }
    }

    fn push(&mut self, b: &[u8]) {
        let start = self.len as usize;
        self.bytes[start..start + b.len()].copy_from_slice(b);
        self.len += b.len() as u8;
    }

    /// Parse a canonical binary CID.
    pub fn from_bytes(b: &[u8]) -> Result<Cid, CidError> {
        if b.len() == 2 + DIGEST_LEN && b[0] == SHA2_256 && b[1] == DIGEST_LEN as u8 {
            return Ok(Cid::v0(b[2..].try_into().map_err(|_| CidError::Binary)?));
        }
        let mut pos = 0;
        let version = read_varint(b, &mut pos).ok_or(CidError::Binary)?;
        let codec = read_varint(b, &mut pos).ok_or(CidError::Binary)?;
        let mh = &b[pos..];
        if version != 1 || mh.len() != 2 + DIGEST_LEN || mh[0] != SHA2_256 || mh[1] != DIGEST_LEN as u8 {
            return Err(CidError::Binary);
        }
        let cid = Cid::v1(codec, mh[2..].try_into().map_err(|_| CidError::Binary)?);
        // Reject non-minimal varints so that equal CIDs have equal bytes.
        if cid.as_bytes() != b {
            return Err(CidError::Binary);
        }
        Ok(cid)
    }

    /// The binary CID (no multibase prefix), as stored in dag-pb links.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }

    pub fn version(&self) -> CidVersion {
        if self.bytes[0] == SHA2_256 { CidVersion::V0 } else { CidVersion::V1 }
    }

    /// Multicodec of the block: `DAG_PB` for CIDv0.
    pub fn codec(&self) -> u64 {
        match self.version() {
            CidVersion::V0 => DAG_PB,
            CidVersion::V1 => {
                let mut pos = 1;
                read_varint(self.as_bytes(), &mut pos).unwrap_or(0)
            }
        }
    }

    /// The sha2-256 digest.
    pub fn digest(&self) -> [u8; 32] {
        let mut d = [0; 32];
        d.copy_from_slice(&self.as_bytes()[self.len as usize - DIGEST_LEN..]);
        d
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version() {
            CidVersion::V0 => f.write_str(&base58_encode(self.as_bytes())),
            CidVersion::V1 => write!(f, "b{}", base32_encode(self.as_bytes())),
        }
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({self})")
    }
}

impl FromStr for Cid {
    type Err = CidError;

    fn from_str(s: &str) -> Result<Cid, CidError> {
        if s.len() == 46 && s.starts_with("Qm") {
            let cid = Cid::from_bytes(&base58_decode(s).ok_or(CidError::Encoding)?)?;
            return if cid.version() == CidVersion::V0 { Ok(cid) } else { Err(CidError::Binary) };
        }
        let bytes = match s.as_bytes().first() {
            Some(b'b') => base32_decode(&s[1..], false),
            Some(b'B') => base32_decode(&s[1..], true),
            Some(b'z') => base58_decode(&s[1..]),
            _ => None,
        }
        .ok_or(CidError::Encoding)?;
        let cid = Cid::from_bytes(&bytes)?;
        // A multibase string must carry a CIDv1; CIDv0 has no multibase form.
        if cid.version() == CidVersion::V1 { Ok(cid) } else { Err(CidError::Binary) }
    }
}

/// Append an unsigned LEB128 varint (protobuf / multiformats encoding).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Read an unsigned varint at `*pos`; `None` if truncated or over 64 bits.
pub(crate) fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if i == 9 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

fn base58_encode(input: &[u8]) -> String {
    let zeros = input.iter().take_while(|&&b| b == 0).count();
    let mut digits: Vec<u8> = Vec::with_capacity(input.len() * 2); // base 58, little-endian
    for &byte in input {
        let mut carry = u32::from(byte);
        for d in digits.iter_mut() {
            carry += u32::from(*d) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let mut s = "1".repeat(zeros);
    s.extend(digits.iter().rev().map(|&d| BASE58[d as usize] as char));
    s
}

fn base58_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() > 2 * MAX_LEN {
        return None; // no CID is that long; also bounds the quadratic loop
    }
    let zeros = s.bytes().take_while(|&c| c == b'1').count();
    let mut bytes: Vec<u8> = Vec::with_capacity(s.len()); // base 256, little-endian
    for c in s.bytes() {
        let mut carry = BASE58.iter().position(|&a| a == c)? as u32;
        for b in bytes.iter_mut() {
            carry += u32::from(*b) * 58;
            *b = carry as u8;
            carry >>= 8;
        }
        while carry > 0 {
            bytes.push(carry as u8);
            carry >>= 8;
        }
    }
    let mut out = vec![0; zeros];
    out.extend(bytes.iter().rev());
    Some(out)
}

/// RFC 4648 base32, lower case, no padding.
fn base32_encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in input {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((acc >> bits) & 31) as usize] as char);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(BASE32[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Strict inverse of `base32_encode` (unpadded, zero trailing bits).
fn base32_decode(s: &str, upper: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let c = if upper {
            c.to_ascii_lowercase()
        } else if c.is_ascii_uppercase() {
            return None;
        } else {
            c
        };
        acc = (acc << 5) | BASE32.iter().position(|&a| a == c)? as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 5 || acc != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "bafybeiflo6lcktdnsijv77i6wgglbpktd5yqkavhbvompld2jbcat7hnq4";
    const V0: &str = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o";

    #[test]
    fn string_round_trips() {
        for s in [V1, V0, "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"] {
            let cid: Cid = s.parse().unwrap();
            assert_eq!(cid.to_string(), s);
            assert_eq!(Cid::from_bytes(cid.as_bytes()).unwrap(), cid);
        }
        let v0: Cid = V0.parse().unwrap();
        assert_eq!((v0.version(), v0.codec(), v0.as_bytes().len()), (CidVersion::V0, DAG_PB, 34));
        let v1: Cid = V1.parse().unwrap();
        assert_eq!((v1.version(), v1.codec(), v1.as_bytes().len()), (CidVersion::V1, DAG_PB, 36));
        // Same CIDv1 in upper-case base32 and in base58btc.
        assert_eq!(format!("B{}", V1[1..].to_ascii_uppercase()).parse::<Cid>().unwrap(), v1);
        assert_eq!(format!("z{}", base58_encode(v1.as_bytes())).parse::<Cid>().unwrap(), v1);
        // A v0 and v1 CID of the same dag-pb block differ but share the digest.
        assert_eq!(Cid::v1(DAG_PB, v0.digest()).digest(), v0.digest());
        assert_ne!(Cid::v1(DAG_PB, v0.digest()), v0);
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "b",
            "Qm",
            "x123",
            "bafybeiflo6lcktdnsijv77i6wgglbpktd5yqkavhbvompld2jbcat7hnq", // truncated
            "bafybeiflo6lcktdnsijv77i6wgglbpktd5yqkavhbvompld2jbcat7hnq5", // trailing bits
            "bafybeiflo6lcktdnsijv77i6wgglbpktd5yqkavhbvompld2jbcat7hnq4a",
            "bAfybeiflo6lcktdnsijv77i6wgglbpktd5yqkavhbvompld2jbcat7hnq4",
            "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5O", // O not in base58
            "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o1",
            "zQmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o", // v0 in multibase
        ] {
            assert!(s.parse::<Cid>().is_err(), "{s}");
        }
        assert_eq!(Cid::from_bytes(&[]), Err(CidError::Binary));
        assert_eq!(Cid::from_bytes(&[1, 0xff]), Err(CidError::Binary));
        assert_eq!(Cid::from_bytes(&[0xff; 12]), Err(CidError::Binary));
        // Non-minimal codec varint (0x70 as 0xf0 0x00) is rejected.
        let v1: Cid = V1.parse().unwrap();
        let mut padded = vec![1, 0xf0, 0x00];
        padded.extend_from_slice(&v1.as_bytes()[2..]);
        assert_eq!(Cid::from_bytes(&padded), Err(CidError::Binary));
    }

    #[test]
    fn varints() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut pos = 0;
            assert_eq!(read_varint(&buf, &mut pos), Some(v));
            assert_eq!(pos, buf.len());
        }
        assert_eq!(read_varint(&[0x80], &mut 0), None);
        assert_eq!(read_varint(&[0xff; 10], &mut 0), None);
        assert_eq!(read_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], &mut 0), None);
    }
}
