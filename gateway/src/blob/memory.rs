//! A blob store in memory: the reference the [`BlobStore`] contract is written against, and a
//! store for tests that need no pack file. Nothing survives the process.

use std::collections::HashMap;
use std::sync::RwLock;

use super::{BlobError, BlobStore, Block, Cid};

#[derive(Default)]
pub struct MemoryBlockstore {
    blocks: RwLock<HashMap<Cid, Vec<u8>>>,
}

impl BlobStore for MemoryBlockstore {
    fn put_blocks(&self, blocks: &[Block]) -> Result<(), BlobError> {
        let mut stored = self.blocks.write().expect("blocks lock");
        for block in blocks {
            stored.entry(block.cid).or_insert_with(|| block.data.clone());
        }
        Ok(())
    }

    fn get_block(&self, cid: &Cid) -> Result<Option<Vec<u8>>, BlobError> {
        Ok(self.blocks.read().expect("blocks lock").get(cid).cloned())
    }

    fn sync(&self) -> Result<(), BlobError> {
        Ok(())
    }

    fn cids(&self) -> Result<Vec<Cid>, BlobError> {
        Ok(self.blocks.read().expect("blocks lock").keys().copied().collect())
    }

    fn remove_blocks(&self, cids: &[Cid]) -> Result<(), BlobError> {
        let mut stored = self.blocks.write().expect("blocks lock");
        for cid in cids {
            stored.remove(cid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn satisfies_the_blob_store_contract() {
        crate::blob::check_blob_store_contract(&super::MemoryBlockstore::default());
    }
}
