//! Kubo-compatible UnixFS file DAGs (pure, no I/O).
//!
//! `build_file_dag` reproduces `ipfs add` with fixed-size 256 KiB chunks,
//! the balanced layout and at most 174 links per node:
//! - `CidVersion::V1` = `ipfs add --cid-version=1`: raw leaves (codec raw),
//!   dag-pb branch nodes, base32 CIDv1. A single-chunk file is just its raw leaf.
//! - `CidVersion::V0` = `ipfs add` defaults: leaves are dag-pb UnixFS File
//!   nodes holding the chunk, everything is CIDv0 ("Qm...").
//!
//! `read_file_dag` reassembles any UnixFS file DAG made of raw and dag-pb
//! File/Raw nodes, checking every block's hash and every declared size, with
//! bounds on depth, output size and number of blocks fetched.

use std::collections::HashSet;
use std::fmt;

pub use crate::blob::cid::{Cid, CidVersion, DAG_PB, RAW};
use crate::blob::cid::{put_varint, read_varint};
use sha2::{Digest, Sha256};

/// Kubo's default chunker: `size-262144`.
pub const CHUNK_SIZE: usize = 262_144;
/// Kubo's balanced layout: at most 174 links per node.
pub const MAX_LINKS: usize = 174;

/// UnixFS `Data.DataType` values we read.
const TYPE_RAW: u64 = 0;
const TYPE_FILE: u64 = 2;

/// A block as stored/served by IPFS: its CID and its exact bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub cid: Cid,
    pub data: Vec<u8>,
}

/// A node already built: what its parent needs to link to it.
struct Child {
    cid: Cid,
    /// Cumulative size of the block and everything below it (PBLink.Tsize).
    tsize: u64,
    /// File bytes under this node (UnixFS blocksizes entry).
    filesize: u64,
}

/// All blocks of the DAG (leaves and intermediate nodes, root last) and the root CID.
///
/// Blocks with identical content (e.g. repeated chunks) are returned once.
pub fn build_file_dag(content: &[u8], version: CidVersion) -> (Cid, Vec<Block>) {
    let mut blocks = Vec::new();
    let mut seen = HashSet::new();
    let mut emit = |cid: Cid, data: Vec<u8>| {
        if seen.insert(cid) {
            blocks.push(Block { cid, data });
        }
    };

    // An empty file is one empty leaf.
    let chunks: Vec<&[u8]> = if content.is_empty() { vec![&[]] } else { content.chunks(CHUNK_SIZE).collect() };
    let mut level: Vec<Child> = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let size = chunk.len() as u64;
        let (cid, data) = match version {
            CidVersion::V1 => (Cid::hash(version, RAW, chunk), chunk.to_vec()),
            CidVersion::V0 => {
                let node = encode_pb_node(&[], &encode_unixfs_file(chunk, size, &[]));
                (Cid::hash(version, DAG_PB, &node), node)
            }
        };
        level.push(Child { cid, tsize: data.len() as u64, filesize: size });
        emit(cid, data);
    }

    // Balanced layout == grouping each level into runs of MAX_LINKS, bottom up:
    // every subtree but the last is full, and the last may be a chain of
    // single-child nodes (which Kubo also produces).
    while level.len() > 1 {
        let mut parents = Vec::with_capacity(level.len().div_ceil(MAX_LINKS));
        for children in level.chunks(MAX_LINKS) {
            let sizes: Vec<u64> = children.iter().map(|c| c.filesize).collect();
            let links: Vec<(Cid, u64)> = children.iter().map(|c| (c.cid, c.tsize)).collect();
            let filesize = sizes.iter().sum();
            let node = encode_pb_node(&links, &encode_unixfs_file(&[], filesize, &sizes));
            let cid = Cid::hash(version, DAG_PB, &node);
            let tsize = node.len() as u64 + children.iter().map(|c| c.tsize).sum::<u64>();
            parents.push(Child { cid, tsize, filesize });
            emit(cid, node);
        }
        level = parents;
    }
    let root = level[0].cid;
    (root, blocks)
}

/// Check one block's bytes against its CID (sha2-256 multihash).
pub fn block_matches(cid: &Cid, data: &[u8]) -> bool {
    let digest: [u8; 32] = Sha256::digest(data).into();
    digest == cid.digest()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DagError {
    /// `get_block` returned `None`.
    MissingBlock(Cid),
    /// The block's bytes do not hash to its CID.
    HashMismatch(Cid),
    /// Codec other than raw / dag-pb.
    UnsupportedCodec(Cid),
    /// dag-pb node that is not a UnixFS File (or Raw) node, e.g. a directory.
    UnsupportedNodeType { cid: Cid, node_type: u64 },
    /// Bad protobuf or missing required field.
    Malformed { cid: Cid, reason: &'static str },
    /// Declared sizes (filesize / blocksizes / link count) don't add up.
    SizeMismatch { cid: Cid, reason: &'static str },
    /// Deeper than `ReadLimits::max_depth`.
    TooDeep(Cid),
    /// Declared or actual file size above `ReadLimits::max_size`.
    TooLarge(Cid),
    /// More than `ReadLimits::max_blocks` blocks fetched.
    TooManyBlocks(Cid),
}

impl fmt::Display for DagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DagError::MissingBlock(c) => write!(f, "block {c} not found"),
            DagError::HashMismatch(c) => write!(f, "block {c} does not match its hash"),
            DagError::UnsupportedCodec(c) => {
                write!(f, "block {c}: unsupported codec {:#x}", c.codec())
            }
            DagError::UnsupportedNodeType { cid, node_type } => {
                write!(f, "block {cid}: unsupported UnixFS node type {node_type}")
            }
            DagError::Malformed { cid, reason } => write!(f, "block {cid}: malformed: {reason}"),
            DagError::SizeMismatch { cid, reason } => {
                write!(f, "block {cid}: size mismatch: {reason}")
            }
            DagError::TooDeep(c) => write!(f, "block {c}: DAG too deep"),
            DagError::TooLarge(c) => write!(f, "block {c}: file too large"),
            DagError::TooManyBlocks(c) => write!(f, "block {c}: too many blocks"),
        }
    }
}

impl std::error::Error for DagError {}

/// Resource bounds for `read_file_dag_with_limits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// Maximum number of levels below the root (Kubo needs 3 for ~1.3 TB).
    pub max_depth: usize,
    /// Maximum file size in bytes.
    pub max_size: u64,
    /// Maximum number of block fetches (a DAG may link one block many times).
    pub max_blocks: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits { max_depth: 16, max_size: 256 << 20, max_blocks: 1 << 20 }
    }
}

/// Reassemble the file from blocks fetched by CID; verifies every block hashes to its CID.
pub fn read_file_dag(root: &Cid, get_block: &mut dyn FnMut(&Cid) -> Option<Vec<u8>>) -> Result<Vec<u8>, DagError> {
    read_file_dag_with_limits(root, get_block, ReadLimits::default())
}

/// `read_file_dag` with explicit resource bounds.
pub fn read_file_dag_with_limits(
    root: &Cid,
    get_block: &mut dyn FnMut(&Cid) -> Option<Vec<u8>>,
    limits: ReadLimits,
) -> Result<Vec<u8>, DagError> {
    let mut reader = Reader { get_block, limits, fetched: 0, out: Vec::new() };
    reader.read(root, 0)?;
    Ok(reader.out)
}

struct Reader<'a> {
    get_block: &'a mut dyn FnMut(&Cid) -> Option<Vec<u8>>,
    limits: ReadLimits,
    fetched: usize,
    out: Vec<u8>,
}

impl Reader<'_> {
    /// Append the file bytes under `cid` to `self.out`; returns how many.
    fn read(&mut self, cid: &Cid, depth: usize) -> Result<u64, DagError> {
        let cid = *cid;
        if depth > self.limits.max_depth {
            return Err(DagError::TooDeep(cid));
        }
        self.fetched += 1;
        if self.fetched > self.limits.max_blocks {
            return Err(DagError::TooManyBlocks(cid));
        }
        if cid.codec() != RAW && cid.codec() != DAG_PB {
            return Err(DagError::UnsupportedCodec(cid));
        }
        let block = (self.get_block)(&cid).ok_or(DagError::MissingBlock(cid))?;
        if !block_matches(&cid, &block) {
            return Err(DagError::HashMismatch(cid));
        }
        if cid.codec() == RAW {
            self.reserve(cid, block.len() as u64)?;
            self.out.extend_from_slice(&block);
            return Ok(block.len() as u64);
        }

        let malformed = |reason| DagError::Malformed { cid, reason };
        let mismatch = |reason| DagError::SizeMismatch { cid, reason };
        let node = decode_pb_node(&block).map_err(malformed)?;
        let fs = decode_unixfs(node.data.ok_or(malformed("dag-pb node without Data"))?).map_err(malformed)?;
        if fs.node_type != TYPE_FILE && fs.node_type != TYPE_RAW {
            return Err(DagError::UnsupportedNodeType { cid, node_type: fs.node_type });
        }
        if fs.blocksizes.len() != node.links.len() {
            return Err(mismatch("blocksizes count differs from links count"));
        }
        let total =
            fs.blocksizes.iter().try_fold(fs.data.len() as u64, |acc, &s| acc.checked_add(s)).ok_or(mismatch("blocksizes overflow"))?;
        if fs.filesize.is_some_and(|declared| declared != total) {
            return Err(mismatch("filesize differs from data + blocksizes"));
        }
        // Checked up front, so a lying DAG can't make us fetch more than the
        // limit; children are then held to their declared sizes.
        self.reserve(cid, total)?;
        self.out.extend_from_slice(fs.data);
        for (link, &expected) in node.links.iter().zip(&fs.blocksizes) {
            let start = self.out.len() as u64;
            let got = self.read(link, depth + 1)?;
            if got != expected {
                return Err(mismatch("child size differs from blocksizes entry"));
            }
            debug_assert_eq!(self.out.len() as u64, start + got);
        }
        Ok(total)
    }

    fn reserve(&self, cid: Cid, more: u64) -> Result<(), DagError> {
        match (self.out.len() as u64).checked_add(more) {
            Some(n) if n <= self.limits.max_size => Ok(()),
            _ => Err(DagError::TooLarge(cid)),
        }
    }
}

// ---- protobuf encoding (dag-pb PBNode/PBLink, UnixFS Data) ----

fn put_key(out: &mut Vec<u8>, field: u64, wire_type: u64) {
    put_varint(out, (field << 3) | wire_type);
}

fn put_uint(out: &mut Vec<u8>, field: u64, v: u64) {
    put_key(out, field, 0);
    put_varint(out, v);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// PBNode in canonical dag-pb order: Links (field 2) first, then Data (1).
/// Every PBLink has Hash, an empty Name (Kubo always writes it) and Tsize.
fn encode_pb_node(links: &[(Cid, u64)], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + links.len() * 44 + 8);
    let mut link = Vec::with_capacity(48);
    for (cid, tsize) in links {
        link.clear();
        put_bytes(&mut link, 1, cid.as_bytes());
        put_bytes(&mut link, 2, b"");
        put_uint(&mut link, 3, *tsize);
        put_bytes(&mut out, 2, &link);
    }
    put_bytes(&mut out, 1, data);
    out
}

/// UnixFS `Data` of type File: Type, Data (omitted when empty), filesize,
/// then one non-packed blocksizes entry per child.
fn encode_unixfs_file(data: &[u8], filesize: u64, blocksizes: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16 + blocksizes.len() * 4);
    put_uint(&mut out, 1, TYPE_FILE);
    if !data.is_empty() {
        put_bytes(&mut out, 2, data);
    }
    put_uint(&mut out, 3, filesize);
    for &size in blocksizes {
        put_uint(&mut out, 4, size);
    }
    out
}

// ---- protobuf decoding (never panics; all offsets bounds-checked) ----

struct PbReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

const TRUNCATED: &str = "truncated protobuf";

impl<'a> PbReader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        PbReader { buf, pos: 0 }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        read_varint(self.buf, &mut self.pos).ok_or(TRUNCATED)
    }

    /// (field number, wire type)
    fn key(&mut self) -> Result<(u64, u64), &'static str> {
        let k = self.varint()?;
        Ok((k >> 3, k & 7))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], &'static str> {
        let rest = &self.buf[self.pos.min(self.buf.len())..];
        let n = usize::try_from(n).ok().filter(|&n| n <= rest.len()).ok_or(TRUNCATED)?;
        self.pos += n;
        Ok(&rest[..n])
    }

    fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let len = self.varint()?;
        self.take(len)
    }

    fn skip(&mut self, wire_type: u64) -> Result<(), &'static str> {
        match wire_type {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.bytes().map(drop),
            5 => self.take(4).map(drop),
            _ => Err("unsupported protobuf wire type"),
        }
    }
}

struct PbNode<'a> {
    links: Vec<Cid>,
    data: Option<&'a [u8]>,
}

/// Decode a dag-pb PBNode. Data may come before or after the Links, but the
/// Links must be contiguous; unknown fields are rejected (dag-pb is strict).
fn decode_pb_node(buf: &[u8]) -> Result<PbNode<'_>, &'static str> {
    let mut r = PbReader::new(buf);
    let mut node = PbNode { links: Vec::new(), data: None };
    let mut links_before_data = false;
    while !r.at_end() {
        match r.key()? {
            (2, 2) => {
                if node.data.is_some() && links_before_data {
                    return Err("PBNode Links interleaved with Data");
                }
                node.links.push(decode_pb_link(r.bytes()?)?);
            }
            (1, 2) => {
                if node.data.is_some() {
                    return Err("duplicate PBNode Data");
                }
                links_before_data = !node.links.is_empty();
                node.data = Some(r.bytes()?);
            }
            _ => return Err("unexpected PBNode field"),
        }
    }
    Ok(node)
}

/// Decode a PBLink: Hash (required), Name, Tsize, in field order, each at most once.
fn decode_pb_link(buf: &[u8]) -> Result<Cid, &'static str> {
    let mut r = PbReader::new(buf);
    let mut last_field = 0;
    let mut hash = None;
    while !r.at_end() {
        let (field, wire_type) = r.key()?;
        if field <= last_field {
            return Err("PBLink fields out of order or repeated");
        }
        last_field = field;
        match (field, wire_type) {
            (1, 2) => hash = Some(Cid::from_bytes(r.bytes()?).map_err(|_| "PBLink Hash is not a supported CID")?),
            (2, 2) => {
                std::str::from_utf8(r.bytes()?).map_err(|_| "PBLink Name is not UTF-8")?;
            }
            (3, 0) => {
                r.varint()?;
            }
            _ => return Err("unexpected PBLink field"),
        }
    }
    hash.ok_or("PBLink without Hash")
}

struct UnixFsData<'a> {
    node_type: u64,
    data: &'a [u8],
    filesize: Option<u64>,
    blocksizes: Vec<u64>,
}

/// Decode UnixFS `Data`. Unknown fields (hashType, fanout, mode, mtime...) are skipped.
fn decode_unixfs(buf: &[u8]) -> Result<UnixFsData<'_>, &'static str> {
    let mut r = PbReader::new(buf);
    let (mut node_type, mut data, mut filesize) = (None, None, None);
    let mut blocksizes = Vec::new();
    while !r.at_end() {
        match r.key()? {
            (1, 0) if node_type.is_none() => node_type = Some(r.varint()?),
            (2, 2) if data.is_none() => data = Some(r.bytes()?),
            (3, 0) if filesize.is_none() => filesize = Some(r.varint()?),
            (4, 0) => blocksizes.push(r.varint()?),
            (4, 2) => {
                // packed encoding, tolerated
                let mut packed = PbReader::new(r.bytes()?);
                while !packed.at_end() {
                    blocksizes.push(packed.varint()?);
                }
            }
            (1..=3, _) => return Err("UnixFS Type/Data/filesize repeated or mistyped"),
            (_, wire_type) => r.skip(wire_type)?,
        }
    }
    Ok(UnixFsData { node_type: node_type.ok_or("UnixFS Data without Type")?, data: data.unwrap_or(&[]), filesize, blocksizes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((7 * i + 3) % 251) as u8).collect()
    }

    fn store(blocks: &[Block]) -> HashMap<Cid, Vec<u8>> {
        blocks.iter().map(|b| (b.cid, b.data.clone())).collect()
    }

    fn read(root: &Cid, map: &HashMap<Cid, Vec<u8>>) -> Result<Vec<u8>, DagError> {
        read_file_dag(root, &mut |c| map.get(c).cloned())
    }

    fn check_vector(content: &[u8], v1: &str, v0: &str) {
        for (version, expected) in [(CidVersion::V1, v1), (CidVersion::V0, v0)] {
            let (root, blocks) = build_file_dag(content, version);
            assert_eq!(root.to_string(), expected, "{version:?}, {} bytes", content.len());
            assert_eq!(blocks.last().unwrap().cid, root, "root is last");
            assert!(blocks.iter().all(|b| block_matches(&b.cid, &b.data)));
            assert_eq!(read(&root, &store(&blocks)).unwrap(), content);
            assert_eq!(expected.parse::<Cid>().unwrap(), root);
        }
    }

    #[test]
    fn kubo_vector_hello_world() {
        check_vector(
            b"hello world\n",
            "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4",
            "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o",
        );
    }

    #[test]
    fn kubo_vector_empty() {
        check_vector(b"", "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH");
    }

    #[test]
    fn kubo_vector_one_level() {
        check_vector(
            &pattern(1_000_000),
            "bafybeiflo6lcktdnsijv77i6wgglbpktd5yqkavhbvompld2jbcat7hnq4",
            "QmS5KQcKmhm3zJFkYeDshuG96hRyeeUfEZqpLxDmKu8QxQ",
        );
    }

    #[test]
    fn kubo_vector_two_levels() {
        check_vector(
            &pattern(174 * CHUNK_SIZE + 5),
            "bafybeihczedxux4cbef7bydpb6uci3jsqlnilkjspzo62wesms7xbm4o7e",
            "QmUPbYKHzFncCm91uJkxmbvCkQiq3WEzJpTZuAHwvKukvR",
        );
    }

    #[test]
    fn round_trips_and_shapes() {
        for len in [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 1_000_000, 174 * CHUNK_SIZE, 174 * CHUNK_SIZE + 5] {
            let content = pattern(len);
            let leaves = len.div_ceil(CHUNK_SIZE).max(1);
            let branches = match leaves {
                1 => 0,
                2..=174 => 1,
                n => n.div_ceil(174) + 1,
            };
            for version in [CidVersion::V0, CidVersion::V1] {
                let (root, blocks) = build_file_dag(&content, version);
                assert_eq!(blocks.len(), leaves + branches, "{len} {version:?}");
                assert_eq!(read(&root, &store(&blocks)).unwrap(), content, "{len} {version:?}");
                let root_codec = if version == CidVersion::V1 && leaves == 1 { RAW } else { DAG_PB };
                assert_eq!((root.version(), root.codec()), (version, root_codec));
            }
        }
    }

    #[test]
    fn identical_chunks_are_deduplicated() {
        let content = vec![0u8; 3 * CHUNK_SIZE];
        let (root, blocks) = build_file_dag(&content, CidVersion::V1);
        assert_eq!(blocks.len(), 2); // one leaf, one root with 3 links to it
        assert_eq!(read(&root, &store(&blocks)).unwrap(), content);
    }

    #[test]
    fn flipped_byte_in_any_block_fails() {
        let content = pattern(3 * CHUNK_SIZE + 10);
        for version in [CidVersion::V0, CidVersion::V1] {
            let (root, blocks) = build_file_dag(&content, version);
            for b in &blocks {
                for pos in [0, b.data.len() / 2, b.data.len() - 1] {
                    let mut map = store(&blocks);
                    map.get_mut(&b.cid).unwrap()[pos] ^= 0x01;
                    assert_eq!(read(&root, &map), Err(DagError::HashMismatch(b.cid)));
                }
            }
        }
    }

    #[test]
    fn missing_block_fails() {
        let (root, blocks) = build_file_dag(&pattern(3 * CHUNK_SIZE), CidVersion::V0);
        for b in &blocks {
            let mut map = store(&blocks);
            map.remove(&b.cid);
            assert_eq!(read(&root, &map), Err(DagError::MissingBlock(b.cid)));
        }
    }

    /// Serve `data` under its true CID, so only the decoder can reject it.
    fn read_forged(data: &[u8], extra: &HashMap<Cid, Vec<u8>>) -> Result<Vec<u8>, DagError> {
        let cid = Cid::hash(CidVersion::V1, DAG_PB, data);
        let mut map = extra.clone();
        map.insert(cid, data.to_vec());
        read(&cid, &map)
    }

    #[test]
    fn truncated_protobuf_fails() {
        let (_, blocks) = build_file_dag(&pattern(3 * CHUNK_SIZE), CidVersion::V1);
        let map = store(&blocks);
        let root = &blocks.last().unwrap().data;
        // Every strict prefix of the root either fails to parse or fails the size checks.
        for len in 0..root.len() {
            let err = read_forged(&root[..len], &map).unwrap_err();
            assert!(matches!(err, DagError::Malformed { .. } | DagError::SizeMismatch { .. }), "{len}: {err:?}");
        }
        let (_, v0_leaf) = build_file_dag(b"hello world\n", CidVersion::V0);
        let leaf = &v0_leaf[0].data;
        assert!(matches!(read_forged(&leaf[..leaf.len() - 3], &map), Err(DagError::Malformed { .. })));
    }

    #[test]
    fn lying_sizes_fail() {
        let (_, blocks) = build_file_dag(&pattern(2 * CHUNK_SIZE), CidVersion::V1);
        let map = store(&blocks);
        let links: Vec<(Cid, u64)> = blocks[..2].iter().map(|b| (b.cid, b.data.len() as u64)).collect();
        let c = CHUNK_SIZE as u64;
        for (filesize, sizes) in [(2 * c, vec![c, c - 1]), (2 * c + 1, vec![c, c]), (c, vec![c]), (u64::MAX, vec![u64::MAX, 2])] {
            let node = encode_pb_node(&links, &encode_unixfs_file(&[], filesize, &sizes));
            assert!(matches!(read_forged(&node, &map), Err(DagError::SizeMismatch { .. })), "{filesize} {sizes:?}");
        }
        // Huge but consistent declared sizes are refused before any child is fetched.
        let node = encode_pb_node(&links, &encode_unixfs_file(&[], 2 << 40, &[1 << 40, 1 << 40]));
        assert!(matches!(read_forged(&node, &map), Err(DagError::TooLarge(_))));
        // Directories are not files.
        let mut dir = Vec::new();
        put_uint(&mut dir, 1, 1);
        assert!(matches!(read_forged(&encode_pb_node(&[], &dir), &map), Err(DagError::UnsupportedNodeType { node_type: 1, .. })));
    }

    #[test]
    fn depth_and_fanout_bombs_are_bounded() {
        let leaf = Cid::hash(CidVersion::V1, RAW, b"x");
        let mut map = HashMap::from([(leaf, b"x".to_vec())]);
        // A chain of 20 single-link nodes: deeper than 16 levels.
        let mut top = leaf;
        for _ in 0..20 {
            let node = encode_pb_node(&[(top, 0)], &encode_unixfs_file(&[], 1, &[1]));
            top = Cid::hash(CidVersion::V1, DAG_PB, &node);
            map.insert(top, node);
        }
        assert!(matches!(read(&top, &map), Err(DagError::TooDeep(_))));
        // 174-way fan-out to the same child, 3 levels: 174^3 (5.3 M) leaf visits
        // for a consistent 5.3 MB file.
        let (mut top, mut size) = (leaf, 1u64);
        for _ in 0..3 {
            let node = encode_pb_node(&vec![(top, 0); 174], &encode_unixfs_file(&[], size * 174, &vec![size; 174]));
            top = Cid::hash(CidVersion::V1, DAG_PB, &node);
            size *= 174;
            map.insert(top, node);
        }
        let limits = ReadLimits { max_blocks: 10_000, ..ReadLimits::default() };
        let res = read_file_dag_with_limits(&top, &mut |c| map.get(c).cloned(), limits);
        assert!(matches!(res, Err(DagError::TooManyBlocks(_))));
        let limits = ReadLimits { max_size: 1000, ..ReadLimits::default() };
        let res = read_file_dag_with_limits(&top, &mut |c| map.get(c).cloned(), limits);
        assert!(matches!(res, Err(DagError::TooLarge(_))));
    }

    #[test]
    fn unsupported_codec_fails() {
        let cid = Cid::hash(CidVersion::V1, 0x71, b"\xa0"); // dag-cbor
        let map = HashMap::from([(cid, b"\xa0".to_vec())]);
        assert_eq!(read(&cid, &map), Err(DagError::UnsupportedCodec(cid)));
    }

    #[test]
    fn random_mutations_never_panic() {
        let (_, blocks) = build_file_dag(&pattern(3 * CHUNK_SIZE), CidVersion::V1);
        let (_, v0) = build_file_dag(b"hello world\n", CidVersion::V0);
        let map = store(&blocks);
        let seeds = [blocks.last().unwrap().data.clone(), v0[0].data.clone()];
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        for i in 0..3000 {
            let mut data = seeds[i % 2].clone();
            for _ in 0..1 + next(4) {
                let pos = next(data.len());
                match next(4) {
                    0 => data[pos] ^= 1 << next(8),
                    1 => data[pos] = [0, 0x7f, 0x80, 0xff][next(4)],
                    2 => data.truncate(pos),
                    _ => data.insert(pos, next(256) as u8),
                }
                if data.is_empty() {
                    break;
                }
            }
            let _ = read_forged(&data, &map); // must return, never panic
        }
    }

    #[test]
    fn decoder_accepts_data_first_and_rejects_interleaving() {
        let (_, blocks) = build_file_dag(&pattern(2 * CHUNK_SIZE), CidVersion::V1);
        let map = store(&blocks);
        let unixfs = encode_unixfs_file(&[], 2 * CHUNK_SIZE as u64, &[CHUNK_SIZE as u64; 2]);
        let link = |cid: &Cid| {
            let mut l = Vec::new();
            put_bytes(&mut l, 1, cid.as_bytes());
            let mut out = Vec::new();
            put_bytes(&mut out, 2, &l);
            out
        };
        let mut data_first = Vec::new();
        put_bytes(&mut data_first, 1, &unixfs);
        data_first.extend(link(&blocks[0].cid));
        data_first.extend(link(&blocks[1].cid));
        assert_eq!(read_forged(&data_first, &map).unwrap(), pattern(2 * CHUNK_SIZE));
        let mut interleaved = link(&blocks[0].cid);
        put_bytes(&mut interleaved, 1, &unixfs);
        interleaved.extend(link(&blocks[1].cid));
        assert!(matches!(read_forged(&interleaved, &map), Err(DagError::Malformed { .. })));
    }
}
