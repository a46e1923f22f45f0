//! The tantivy index: derived state, rebuildable from the ledger and the sealed store.
//!
//! One document per current (not deleted) resource: its key (`Type/id`), type, the ledger leaf
//! of its current version, `meta.lastUpdated`, a sort date, and its search terms (see
//! [`super::terms`]: keyed hashes, never readable text). The index proposes candidates; every
//! result is then read from the sealed store and checked by the pure matcher.
//!
//! A document is replaced by its ledger leaf, not by its key: the key is stored but not
//! indexed, because a term dictionary of random ids (one new term per create, rebuilt at every
//! segment flush and merge) cost more than a create's search terms. Leaves are sequential, so
//! their dictionary is cheap; the writer names the leaf of the version it replaces.
//!
//! Freshness: the last ledger leaf whose version is indexed is the commit payload. On open the
//! index catches up from there; a search first waits until the index covers every version
//! acknowledged before the search began (read-your-writes).
//!
//! Damage: on open every file of the index is checked against its checksum (tantivy's footers)
//! and the index must load; a damaged, foreign or older index is deleted and rebuilt from the
//! store. A query that fails (or panics) while running is reported as
//! [`IndexError::Damaged`], and the store has the indexer rebuild the index.

use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;

use tantivy::collector::DocSetCollector;
use tantivy::query::{AllQuery, BooleanQuery, EmptyQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextOptions, Value as _};
use tantivy::{DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use super::terms::{DocumentTerms, LAYOUT_VERSION, TermCondition};

/// A resource as the index sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexDocument {
    pub key: String,
    pub resource_type: String,
    pub leaf_index: u64,
    pub last_updated_ms: i64,
    pub sort_date_ms: Option<i64>,
    pub terms: DocumentTerms,
}

/// One search hit, with what sorting and paging need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub key: String,
    pub leaf_index: u64,
    pub last_updated_ms: i64,
    pub sort_date_ms: Option<i64>,
}

/// The leaf a commit payload (`{layout}/{leaf}`) records, if written with the current
/// [`LAYOUT_VERSION`].
fn layout_leaf(payload: &str) -> Option<u64> {
    let (layout, leaf) = payload.split_once('/')?;
    if layout.parse() != Ok(LAYOUT_VERSION) {
        return None;
    }
    leaf.parse().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("search index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("search index: {0}")]
    Directory(#[from] tantivy::directory::error::OpenDirectoryError),
    #[error("search index I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("more than {0} candidates")]
    TooManyCandidates(usize),
    #[error("search index damaged: {0}")]
    Damaged(String),
    #[error("reading what to index from the store: {0}")]
    Store(String),
}

#[derive(Clone, Copy)]
struct Fields {
    key: Field,
    resource_type: Field,
    leaf_index: Field,
    last_updated: Field,
    sort_date: Field,
    terms: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let fields = Fields {
        key: builder.add_text_field("key", TextOptions::default().set_stored()),
        resource_type: builder.add_text_field("type", STRING),
        leaf_index: builder.add_u64_field("leaf", INDEXED | FAST | STORED),
        last_updated: builder.add_i64_field("last_updated", FAST | STORED),
        sort_date: builder.add_i64_field("sort_date", FAST | STORED),
        terms: builder.add_bytes_field("terms", INDEXED),
    };
    (builder.build(), fields)
}

pub struct TantivyIndex {
    index: Index,
    fields: Fields,
    writer: Mutex<IndexWriter>,
    reader: IndexReader,
}

const WRITER_MEMORY: usize = 32 * 1024 * 1024;

impl TantivyIndex {
    /// Opens the index in `directory`, creating it if absent (or if its schema is not ours).
    /// `indexing_threads`: tantivy's indexing threads (each fills its own segment: more threads
    /// index and commit faster but leave more segments to merge; 1 for a server, all cores for
    /// a bulk import).
    pub fn open(directory: &Path, indexing_threads: usize) -> Result<TantivyIndex, IndexError> {
        std::fs::create_dir_all(directory)?;
        let (schema, fields) = schema();
        let current_layout = |index: &Index| {
            let payload = index.load_metas().ok().and_then(|metas| metas.payload);
            payload.as_deref().is_none_or(|payload| payload.is_empty() || layout_leaf(payload).is_some())
        };
        let existing = Index::open_in_dir(directory).map_err(|error| error.to_string()).and_then(|index| {
            if index.schema() != schema || !current_layout(&index) {
                return Err("another schema or term layout".to_string());
            }
            let damaged = index.validate_checksum().map_err(|error| error.to_string())?;
            if !damaged.is_empty() {
                let mut names: Vec<String> = damaged.iter().map(|path| path.display().to_string()).collect();
                names.sort();
                return Err(format!("files failing their checksum: {}", names.join(", ")));
            }
            Self::from_index(index, fields, indexing_threads).map_err(|error| error.to_string())
        });
        let reason = match existing {
            Ok(index) => return Ok(index),
            Err(reason) => reason,
        };
        // Derived state: an unreadable, damaged, foreign or older index is rebuilt from the store.
        if directory.join("meta.json").exists() {
            tracing::warn!(index = %directory.display(), %reason, "search index unusable; deleting it and rebuilding it from the store");
        }
        for entry in std::fs::read_dir(directory)? {
            let path = entry?.path();
            if path.is_dir() { std::fs::remove_dir_all(&path)? } else { std::fs::remove_file(&path)? }
        }
        Self::from_index(Index::create_in_dir(directory, schema)?, fields, indexing_threads)
    }

    /// An index in memory (tests).
    pub fn in_memory() -> Result<TantivyIndex, IndexError> {
        let (schema, fields) = schema();
        Self::from_index(Index::create_in_ram(schema), fields, 1)
    }

    fn from_index(index: Index, fields: Fields, indexing_threads: usize) -> Result<TantivyIndex, IndexError> {
        let writer = index.writer_with_num_threads(indexing_threads.max(1), WRITER_MEMORY)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        Ok(TantivyIndex { index, fields, writer: Mutex::new(writer), reader })
    }

    /// The last ledger leaf covered by the last commit (`None`: nothing indexed yet).
    pub fn indexed_leaf(&self) -> Option<u64> {
        let metas = self.index.load_metas().ok()?;
        metas.payload.as_deref().and_then(layout_leaf)
    }

    /// Removes the documents of the versions at `replaced_leaves` (the resource's earlier
    /// versions that may be indexed) and adds `document` (`None`: a deletion).
    pub fn replace(&self, replaced_leaves: &[u64], document: Option<&IndexDocument>) -> Result<(), IndexError> {
        let writer = self.writer.lock().expect("index writer lock");
        for leaf in replaced_leaves {
            writer.delete_term(Term::from_field_u64(self.fields.leaf_index, *leaf));
        }
        if let Some(document) = document {
            let mut tantivy_document = TantivyDocument::default();
            tantivy_document.add_text(self.fields.key, &document.key);
            tantivy_document.add_text(self.fields.resource_type, &document.resource_type);
            tantivy_document.add_u64(self.fields.leaf_index, document.leaf_index);
            tantivy_document.add_i64(self.fields.last_updated, document.last_updated_ms);
            tantivy_document.add_i64(self.fields.sort_date, document.sort_date_ms.unwrap_or(i64::MAX));
            for term in document.terms.iter() {
                tantivy_document.add_bytes(self.fields.terms, term);
            }
            writer.add_document(tantivy_document)?;
        }
        Ok(())
    }

    /// Makes everything replaced so far durable and searchable, recording `indexed_leaf`.
    pub fn commit(&self, indexed_leaf: u64) -> Result<(), IndexError> {
        {
            let mut writer = self.writer.lock().expect("index writer lock");
            let mut prepared = writer.prepare_commit()?;
            prepared.set_payload(&format!("{LAYOUT_VERSION}/{indexed_leaf}"));
            prepared.commit()?;
        }
        self.reader.reload()?;
        Ok(())
    }

    /// Rewrites every segment holding deleted documents without them and deletes the files no
    /// longer used, so that no file of the index keeps the terms of a deleted document (after
    /// an erasure). Deleted documents are otherwise only marked until a merge happens to take
    /// their segment.
    pub fn purge_deleted(&self) -> Result<(), IndexError> {
        const ATTEMPTS: usize = 50;
        for attempt in 1..=ATTEMPTS {
            let mut writer = self.writer.lock().expect("index writer lock");
            let holding: Vec<_> =
                self.index.searchable_segment_metas()?.iter().filter(|meta| meta.has_deletes()).map(|meta| meta.id()).collect();
            if holding.is_empty() {
                writer.garbage_collect_files().wait()?;
                drop(writer);
                self.reader.reload()?;
                return Ok(());
            }
            match writer.merge(&holding).wait() {
                Ok(_) => {}
                // A segment the background merge policy is merging right now: wait for it.
                Err(_) if attempt < ATTEMPTS => {
                    drop(writer);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Removes every document (before a rebuild).
    pub fn clear(&self) -> Result<(), IndexError> {
        let mut writer = self.writer.lock().expect("index writer lock");
        // A failed commit can leave the writer between two states: start again from the last
        // commit that worked.
        writer.rollback()?;
        writer.delete_all_documents()?;
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload("");
        prepared.commit()?;
        drop(writer);
        self.reader.reload()?;
        Ok(())
    }

    fn query(&self, resource_type: Option<&str>, condition: &TermCondition) -> Box<dyn Query> {
        let condition = self.condition_query(condition);
        match resource_type {
            None => condition,
            Some(resource_type) => Box::new(BooleanQuery::new(vec![
                (
                    Occur::Must,
                    Box::new(TermQuery::new(Term::from_field_text(self.fields.resource_type, resource_type), IndexRecordOption::Basic))
                        as Box<dyn Query>,
                ),
                (Occur::Must, condition),
            ])),
        }
    }

    fn condition_query(&self, condition: &TermCondition) -> Box<dyn Query> {
        let term = |bytes: &[u8]| Term::from_field_bytes(self.fields.terms, bytes);
        match condition {
            TermCondition::Everything => Box::new(AllQuery),
            TermCondition::Term(bytes) => Box::new(TermQuery::new(term(bytes), IndexRecordOption::Basic)),
            TermCondition::Range { lower, upper } => {
                let bound = |bound: &Bound<Vec<u8>>| match bound {
                    Bound::Included(bytes) => Bound::Included(term(bytes)),
                    Bound::Excluded(bytes) => Bound::Excluded(term(bytes)),
                    Bound::Unbounded => Bound::Unbounded,
                };
                Box::new(RangeQuery::new(bound(lower), bound(upper)))
            }
            TermCondition::All(conditions) => {
                Box::new(BooleanQuery::new(conditions.iter().map(|condition| (Occur::Must, self.condition_query(condition))).collect()))
            }
            // None of nothing: no document (said explicitly, not left to how an empty boolean
            // query scores).
            TermCondition::Any(conditions) if conditions.is_empty() => Box::new(EmptyQuery),
            TermCondition::Any(conditions) => {
                Box::new(BooleanQuery::new(conditions.iter().map(|condition| (Occur::Should, self.condition_query(condition))).collect()))
            }
            TermCondition::Not(inner) => Box::new(BooleanQuery::new(vec![
                (Occur::Must, Box::new(AllQuery) as Box<dyn Query>),
                (Occur::MustNot, self.condition_query(inner)),
            ])),
        }
    }

    /// Every document of `resource_type` (all types if `None`) matching the condition; more
    /// than `max` is an error (found before any document is loaded).
    pub fn search(&self, resource_type: Option<&str>, condition: &TermCondition, max: usize) -> Result<Vec<Hit>, IndexError> {
        // Damaged files can make tantivy panic rather than fail: either way the index is damaged.
        let search = std::panic::AssertUnwindSafe(|| self.search_unguarded(resource_type, condition, max));
        match std::panic::catch_unwind(search) {
            Ok(Err(IndexError::TooManyCandidates(max))) => Err(IndexError::TooManyCandidates(max)),
            Ok(Err(error)) => Err(IndexError::Damaged(error.to_string())),
            Ok(Ok(hits)) => Ok(hits),
            Err(_) => Err(IndexError::Damaged("a query panicked".into())),
        }
    }

    fn search_unguarded(&self, resource_type: Option<&str>, condition: &TermCondition, max: usize) -> Result<Vec<Hit>, IndexError> {
        let searcher = self.reader.searcher();
        let query = self.query(resource_type, condition);
        let addresses = searcher.search(&query, &DocSetCollector)?;
        if addresses.len() > max {
            return Err(IndexError::TooManyCandidates(max));
        }
        let mut hits = Vec::with_capacity(addresses.len());
        for address in addresses {
            hits.push(self.hit(&searcher, address)?);
        }
        Ok(hits)
    }

    /// The number of documents matching (tests; a search counts what the caller may see).
    #[cfg(test)]
    pub fn count(&self, resource_type: Option<&str>, condition: &TermCondition) -> Result<usize, IndexError> {
        Ok(self.reader.searcher().search(&self.query(resource_type, condition), &tantivy::collector::Count)?)
    }

    fn hit(&self, searcher: &tantivy::Searcher, address: DocAddress) -> Result<Hit, IndexError> {
        let document: TantivyDocument = searcher.doc(address)?;
        let text = |field| document.get_first(field).and_then(|value| value.as_str()).unwrap_or_default().to_string();
        let number = |field| document.get_first(field).and_then(|value| value.as_i64());
        let sort_date_ms = number(self.fields.sort_date).filter(|value| *value != i64::MAX);
        Ok(Hit {
            key: text(self.fields.key),
            leaf_index: document.get_first(self.fields.leaf_index).and_then(|value| value.as_u64()).unwrap_or_default(),
            last_updated_ms: number(self.fields.last_updated).unwrap_or_default(),
            sort_date_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(key: &str, leaf_index: u64, terms: &[&str]) -> IndexDocument {
        IndexDocument {
            key: key.into(),
            resource_type: key.split('/').next().unwrap().into(),
            leaf_index,
            last_updated_ms: leaf_index as i64,
            sort_date_ms: None,
            terms: DocumentTerms::from_terms(terms.iter().map(|term| str::as_bytes(term))),
        }
    }

    fn keys(mut hits: Vec<Hit>) -> Vec<String> {
        hits.sort_by_key(|hit| hit.leaf_index);
        hits.into_iter().map(|hit| hit.key).collect()
    }

    #[test]
    fn replace_search_delete_and_payload() {
        let index = TantivyIndex::in_memory().unwrap();
        assert_eq!(index.indexed_leaf(), None);
        index.replace(&[], Some(&document("Patient/a", 0, &["g|f", "d|0010"]))).unwrap();
        index.replace(&[], Some(&document("Patient/b", 1, &["g|m", "d|0020"]))).unwrap();
        index.replace(&[], Some(&document("Observation/c", 2, &["g|f"]))).unwrap();
        index.commit(2).unwrap();
        assert_eq!(index.indexed_leaf(), Some(2));

        let female = TermCondition::Term(b"g|f".to_vec());
        assert_eq!(keys(index.search(Some("Patient"), &female, usize::MAX).unwrap()), ["Patient/a"]);
        assert_eq!(keys(index.search(None, &female, usize::MAX).unwrap()), ["Patient/a", "Observation/c"]);
        let range = TermCondition::Range { lower: Bound::Included(b"d|0015".to_vec()), upper: Bound::Excluded(b"d|~".to_vec()) };
        assert_eq!(keys(index.search(Some("Patient"), &range, usize::MAX).unwrap()), ["Patient/b"]);
        let not_female = TermCondition::Not(Box::new(female.clone()));
        assert_eq!(keys(index.search(Some("Patient"), &not_female, usize::MAX).unwrap()), ["Patient/b"]);
        assert_eq!(index.count(Some("Patient"), &TermCondition::Everything).unwrap(), 2);
        assert!(matches!(index.search(Some("Patient"), &TermCondition::Everything, 1), Err(IndexError::TooManyCandidates(1))));

        // An update replaces the document; a deletion removes it.
        index.replace(&[0], Some(&document("Patient/a", 3, &["g|m"]))).unwrap();
        index.replace(&[1], None).unwrap();
        index.commit(4).unwrap();
        assert!(index.search(Some("Patient"), &female, usize::MAX).unwrap().is_empty());
        assert_eq!(keys(index.search(Some("Patient"), &TermCondition::Term(b"g|m".to_vec()), usize::MAX).unwrap()), ["Patient/a"]);
        assert_eq!(index.indexed_leaf(), Some(4));
    }

    /// A fresh index directory (`{label}-{pid}` under the temp dir) holding `Patient/a` with
    /// term `x`, committed at leaf 0.
    fn index_with_one_document(label: &str) -> std::path::PathBuf {
        let directory = std::env::temp_dir().join(format!("{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        let index = TantivyIndex::open(&directory, 1).unwrap();
        index.replace(&[], Some(&document("Patient/a", 0, &["x"]))).unwrap();
        index.commit(0).unwrap();
        directory
    }

    #[test]
    fn survives_reopen_and_rebuilds_a_foreign_directory() {
        let directory = index_with_one_document("fg-index");
        let index = TantivyIndex::open(&directory, 1).unwrap();
        assert_eq!(index.indexed_leaf(), Some(0));
        assert_eq!(index.count(None, &TermCondition::Term(b"x".to_vec())).unwrap(), 1);
        drop(index);
        // An index whose commits record another term layout starts over.
        let older = std::fs::read_to_string(directory.join("meta.json")).unwrap().replace(&format!("\"{LAYOUT_VERSION}/0\""), "\"0\"");
        std::fs::write(directory.join("meta.json"), older).unwrap();
        let index = TantivyIndex::open(&directory, 1).unwrap();
        assert_eq!(index.indexed_leaf(), None, "an index of another layout starts over");
        assert_eq!(index.count(None, &TermCondition::Term(b"x".to_vec())).unwrap(), 0);
        index.replace(&[], Some(&document("Patient/a", 0, &["x"]))).unwrap();
        index.commit(0).unwrap();
        drop(index);
        std::fs::write(directory.join("meta.json"), b"garbage").unwrap();
        let index = TantivyIndex::open(&directory, 1).unwrap();
        assert_eq!(index.indexed_leaf(), None, "an unreadable index starts over");
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn a_segment_failing_its_checksum_is_deleted_and_the_index_starts_over() {
        let directory = index_with_one_document("fg-index-damaged");
        let segment_file = std::fs::read_dir(&directory)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.extension().is_some_and(|extension| extension == "idx"))
            .expect("a segment's postings");
        let mut bytes = std::fs::read(&segment_file).unwrap();
        bytes[0] ^= 0x10;
        std::fs::write(&segment_file, &bytes).unwrap();
        let index = TantivyIndex::open(&directory, 1).unwrap();
        assert_eq!(index.indexed_leaf(), None, "a damaged index starts over (and is caught up from the store)");
        assert_eq!(index.count(None, &TermCondition::Everything).unwrap(), 0);
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
