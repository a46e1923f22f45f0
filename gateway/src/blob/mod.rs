//! Content-addressed storage of sealed blobs as IPFS blocks.
//!
//! A sealed blob is chunked into a UnixFS file DAG exactly as Kubo's
//! `ipfs add --cid-version=1` does it ([`unixfs`]), and its blocks are kept by a [`BlobStore`]:
//! the embedded pack file by default ([`EmbeddedBlockstore`]), in memory for tests
//! ([`MemoryBlockstore`]), Kubo later. [`check_blob_store_contract`] is the behaviour all share. The store only ever
//! sees sealed bytes (ARCHITECTURE.md, invariant 1).

pub mod cid;
mod embedded;
mod memory;
mod pack_index;
pub mod unixfs;

pub use cid::{Cid, CidVersion};
pub use embedded::{EmbeddedBlockstore, PackScan};
pub use memory::MemoryBlockstore;
pub use unixfs::{Block, DagError};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob store I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("blob {cid}: {source}")]
    Dag { cid: Cid, source: DagError },
    #[error("blob store corrupt: {0}")]
    Corrupt(String),
    #[error("{path} is damaged at offset {offset} ({what}); run `fhir-gateway verify`")]
    Damaged { path: std::path::PathBuf, offset: u64, what: String },
}

/// Where blocks live. Implementations must make every block put before a successful `sync` durable.
pub trait BlobStore: Send + Sync {
    /// Stores blocks (idempotent per CID). Durable only after the next [`BlobStore::sync`].
    fn put_blocks(&self, blocks: &[Block]) -> Result<(), BlobError>;
    /// The block's bytes as stored; callers check them against the CID.
    fn get_block(&self, cid: &Cid) -> Result<Option<Vec<u8>>, BlobError>;
    /// Makes every block put so far durable.
    fn sync(&self) -> Result<(), BlobError>;
    /// Every stored CID (for `verify`).
    fn cids(&self) -> Result<Vec<Cid>, BlobError>;
    /// Removes blocks for good (erasure): their bytes are gone from the store once this
    /// returns, durably. Absent CIDs are skipped.
    fn remove_blocks(&self, cids: &[Cid]) -> Result<(), BlobError>;
}

/// The CIDs of every block of the file DAG under `root` that the store holds (root first).
pub fn dag_cids(store: &dyn BlobStore, root: &Cid) -> Result<Vec<Cid>, BlobError> {
    let mut cids = Vec::new();
    let mut io_error = None;
    let mut get_block = |cid: &Cid| match store.get_block(cid) {
        Ok(block) => {
            if block.is_some() {
                cids.push(*cid);
            }
            block
        }
        Err(error) => {
            io_error = Some(error);
            None
        }
    };
    // A missing or damaged block ends the walk; what was found is still removed.
    let _ = unixfs::read_file_dag(root, &mut get_block);
    match io_error {
        Some(error) => Err(error),
        None => Ok(cids),
    }
}

/// Chunks `content` the way Kubo does (CIDv1, raw leaves) and returns the root CID and its blocks.
pub fn file_blocks(content: &[u8]) -> (Cid, Vec<Block>) {
    unixfs::build_file_dag(content, CidVersion::V1)
}

/// Reads a whole file DAG back, checking every block against its CID.
pub fn read_file(store: &dyn BlobStore, root: &Cid) -> Result<Vec<u8>, BlobError> {
    let mut io_error = None;
    let mut get_block = |cid: &Cid| match store.get_block(cid) {
        Ok(block) => block,
        Err(error) => {
            io_error = Some(error);
            None
        }
    };
    let result = unixfs::read_file_dag(root, &mut get_block);
    if let Some(error) = io_error {
        return Err(error);
    }
    result.map_err(|source| BlobError::Dag { cid: *root, source })
}

/// The behaviour every [`BlobStore`] shares; each implementation's tests call this.
#[cfg(test)]
pub(crate) fn check_blob_store_contract(store: &dyn BlobStore) {
    let small = b"sealed bytes".to_vec();
    let large: Vec<u8> = (0..600_000u32).map(|i| (i * 7 + 3) as u8).collect();
    for content in [small, large, Vec::new()] {
        let (root, blocks) = file_blocks(&content);
        store.put_blocks(&blocks).unwrap();
        store.put_blocks(&blocks).unwrap(); // idempotent
        store.sync().unwrap();
        assert_eq!(read_file(store, &root).unwrap(), content);
        assert!(store.cids().unwrap().contains(&root));
    }
    let (absent, _) = file_blocks(b"never stored");
    assert!(store.get_block(&absent).unwrap().is_none());
    assert!(matches!(read_file(store, &absent), Err(BlobError::Dag { .. })));

    // Removal takes every block of a DAG and nothing else; removing again is harmless.
    let kept: Vec<u8> = (0..300_000u32).map(|i| (i * 11 + 1) as u8).collect();
    let removed: Vec<u8> = (0..300_000u32).map(|i| (i * 13 + 5) as u8).collect();
    let (kept_root, kept_blocks) = file_blocks(&kept);
    let (removed_root, removed_blocks) = file_blocks(&removed);
    store.put_blocks(&kept_blocks).unwrap();
    store.put_blocks(&removed_blocks).unwrap();
    store.sync().unwrap();
    let dag = dag_cids(store, &removed_root).unwrap();
    assert_eq!(dag.len(), removed_blocks.len());
    store.remove_blocks(&dag).unwrap();
    store.remove_blocks(&dag).unwrap();
    for block in &removed_blocks {
        assert!(store.get_block(&block.cid).unwrap().is_none());
        assert!(!store.cids().unwrap().contains(&block.cid));
    }
    assert_eq!(read_file(store, &kept_root).unwrap(), kept);
}
