//! The search operation over the store (the index it asks is kept by `indexer.rs`).
//!
//! A search waits until the index covers every version acknowledged before it began, asks the
//! index for candidates (a superset), reads each candidate from the sealed store (verified like
//! any read), confirms it with the pure matcher, then sorts and pages. Search therefore never
//! serves stale or unverified content, and the index may be approximate without being wrong.

use std::collections::BTreeSet;

use serde_json::Value;

use super::catalog::ResourceKey;
use super::{ReadGuard, ResourceStore, StoreError, StoredVersion};
use crate::consent::Interaction;
use crate::search::index::{Hit, IndexError};
use crate::search::terms::TermCondition;
use crate::search::{Chain, Filter, Include, IndexValue, ParamType, SearchParamTable, SearchQuery, TotalMode, extract_param, matches};

/// Results of one search beyond this many candidates are not counted (`total` is omitted).
pub const MAX_COUNTED_CANDIDATES: usize = 10_000;
/// Candidates from which a search confirms them on every core at once.
const PARALLEL_CONFIRMATION: usize = 64;
/// Unread page entries from which a search reads them on every core at once.
const PARALLEL_PAGE_READS: usize = 16;
/// One page of search results.
pub struct SearchPage {
    pub matches: Vec<StoredVersion>,
    /// At most [`MAX_INCLUDES_PER_PAGE`].
    pub includes: Vec<StoredVersion>,
    /// There were more includes than [`MAX_INCLUDES_PER_PAGE`] (the rest are left out).
    pub includes_truncated: bool,
    /// Total matches, when counted (see [`MAX_COUNTED_CANDIDATES`]).
    pub total: Option<usize>,
    /// Offset of the next page, if there is one.
    pub next_offset: Option<usize>,
}

fn sort_value(hit: &Hit, param: &str) -> Option<i64> {
    match param {
        "_lastUpdated" => Some(hit.last_updated_ms),
        _ => hit.sort_date_ms,
    }
}

impl ResourceStore {
    /// The index's candidates for `condition`; more than `max` is a 400 saying that `what`
    /// cannot consider so many (without naming the count: it includes resources the caller
    /// may not see).
    fn candidates(&self, resource_type: &str, condition: &TermCondition, max: usize, what: &str) -> Result<Vec<Hit>, StoreError> {
        self.shared.search.index.search(Some(resource_type), condition, max).map_err(|error| match error {
            IndexError::TooManyCandidates(max) => {
                StoreError::BadRequest(format!("{what} may consider at most {max} candidates and this one has more; narrow the search"))
            }
            error => self.index_damaged(&error),
        })
    }

    /// The `hits` confirmed by the matcher, in index order (not sorted);
    /// with `limit`, the first `limit` of them in ledger order (the rest are not read).
    /// Without a limit, many candidates are confirmed on every core: each is a verified read
    /// (unseal, hashes), a parse and a consent decision, tens of microseconds apiece.
    /// `exact`: the condition selects exactly what the query matches
    /// ([`crate::search::terms::TermEncoder::selects_exactly`]), so a candidate whose indexed version is current and
    /// which the guard judges from what it knows is kept unread ([`Candidate::read`] `None`).
    fn confirmed(
        &self,
        mut hits: Vec<Hit>,
        query: &SearchQuery,
        guard: &dyn ReadGuard,
        limit: Option<usize>,
        exact: bool,
        content: Content,
    ) -> Result<Vec<Candidate>, StoreError> {
        if let Some(limit) = limit {
            hits.sort_by_key(|hit| hit.leaf_index);
            let mut confirmed = Vec::with_capacity(hits.len().min(limit));
            for hit in hits {
                if confirmed.len() >= limit {
                    break;
                }
                confirmed.extend(self.confirm(hit, query, guard)?.map(|candidate| content.kept(candidate, query)));
            }
            return Ok(confirmed);
        }
        on_every_core(hits, PARALLEL_CONFIRMATION, |hit| {
            if exact && let Some(admitted) = self.admits_unread(&hit, guard) {
                return Ok(admitted.then_some(Candidate { hit, read: None }));
            }
            Ok(self.confirm(hit, query, guard)?.map(|candidate| content.kept(candidate, query)))
        })
    }

    /// The guard's decision on a candidate without reading it, if the indexed version is the
    /// current one and the guard can decide from what it knows.
    fn admits_unread(&self, hit: &Hit, guard: &dyn ReadGuard) -> Option<bool> {
        let key = ResourceKey::from_reference(&hit.key)?;
        let current = self.shared.catalog.current(&key).ok()??;
        let version_id = (current.leaf_index == hit.leaf_index && !current.is_deletion()).then_some(current.version_id)?;
        guard.admits_known(Interaction::Search, &key, version_id)
    }

    /// One candidate: its current version, read and verified, if the matcher and `guard` accept it.
    fn confirm(&self, hit: Hit, query: &SearchQuery, guard: &dyn ReadGuard) -> Result<Option<Candidate>, StoreError> {
        let Some(key) = ResourceKey::from_reference(&hit.key) else {
            return Ok(None);
        };
        let version = match self.read(&key) {
            Ok(version) => version,
            // Deleted or replaced since the index saw it: the next index commit fixes it.
            Err(StoreError::NotFound | StoreError::Gone(_)) => return Ok(None),
            Err(error) => return Err(error),
        };
        let Some(resource) = version.body.as_deref().and_then(|body| serde_json::from_slice::<Value>(body).ok()) else {
            return Ok(None);
        };
        let accepted = (query.filters.is_empty() || matches(SearchParamTable::r4(), query, &resource))
            && guard.admits(Interaction::Search, &version, &resource);
        Ok(accepted.then_some(Candidate { hit, read: Some((version, resource)) }))
    }

    /// A type search (or, with `compartment`, a search restricted to one Patient's compartment),
    /// of the resources `guard` admits: they are filtered before anything is counted or paged.
    pub fn search(
        &self,
        query: &SearchQuery,
        compartment: Option<&str>,
        offset: usize,
        count: usize,
        guard: &dyn ReadGuard,
    ) -> Result<SearchPage, StoreError> {
        self.search_with(query, compartment, offset, count, guard, false)
    }

    /// [`ResourceStore::search`]; `link`: the search resolves one link of a chain, and, like a
    /// sorted search, may consider at most [`MAX_COUNTED_CANDIDATES`] candidates.
    fn search_with(
        &self,
        query: &SearchQuery,
        compartment: Option<&str>,
        offset: usize,
        count: usize,
        guard: &dyn ReadGuard,
        link: bool,
    ) -> Result<SearchPage, StoreError> {
        self.wait_for_index()?;
        let resolved;
        let query = if query.filters.iter().any(|filter| filter.chain.is_some()) {
            resolved = SearchQuery { filters: self.resolve_chains(&query.resource_type, &query.filters, guard)?, ..query.clone() };
            &resolved
        } else {
            query
        };
        let encoder = &self.shared.search.encoder;
        let mut conditions: Vec<TermCondition> =
            query.filters.iter().map(|filter| encoder.filter_condition(&query.resource_type, filter)).collect();
        if let Some(patient_reference) = compartment {
            conditions.push(self.compartment_condition(&query.resource_type, patient_reference)?);
        }
        let condition = if conditions.is_empty() { TermCondition::Everything } else { TermCondition::All(conditions) };
        // A sort or a chain needs every candidate.
        let (max, what) = match (link, query.sort.is_empty()) {
            (true, _) => (MAX_COUNTED_CANDIDATES, "a chained or _has parameter"),
            (false, false) => (MAX_COUNTED_CANDIDATES, "a sorted search"),
            (false, true) => (usize::MAX, "a search"),
        };
        let hits = self.candidates(&query.resource_type, &condition, max, what)?;
        // `_total=none`, or too many candidates to count, without a sort: in ledger order, read
        // only up to the page (and one more, for `next`).
        let limit = (query.sort.is_empty() && (query.total == Some(TotalMode::None) || hits.len() > MAX_COUNTED_CANDIDATES))
            .then(|| offset.saturating_add(count).saturating_add(1));
        // Exact filters and no sort by content: the index counts, only the page is read.
        let exact = query.filters.iter().all(|filter| encoder.selects_exactly(&query.resource_type, filter))
            && query.sort.iter().all(|sort| sort.param_type != ParamType::String);
        let mut confirmed = self.confirmed(hits, query, guard, limit, exact, Content::ForSorting)?;
        // Default order: ledger order (oldest first), which new writes only extend.
        confirmed.sort_by_key(|candidate| candidate.hit.leaf_index);
        for sort in query.sort.iter().rev() {
            match sort.param_type {
                ParamType::String => {
                    let value = |candidate: &Candidate| {
                        candidate.read.as_ref().and_then(|(_, resource)| first_string(resource, &query.resource_type, &sort.param))
                    };
                    confirmed.sort_by_key(value);
                }
                _ => confirmed.sort_by_key(|candidate| sort_value(&candidate.hit, &sort.param).unwrap_or(i64::MAX)),
            }
            if sort.descending {
                confirmed.reverse();
            }
        }
        let mut total = confirmed.len();
        let on_page: Vec<Candidate> = confirmed.into_iter().skip(offset).take(count).collect();
        let listed = on_page.len();
        // Threads only when there is something to read.
        let parallel_from = if on_page.iter().any(|candidate| candidate.read.is_none()) { PARALLEL_PAGE_READS } else { usize::MAX };
        let page: Vec<(StoredVersion, Value)> = on_every_core(on_page, parallel_from, |candidate| match candidate.read {
            Some(read) => Ok(Some(read)),
            None => Ok(self.confirm(candidate.hit, query, guard)?.and_then(|candidate| candidate.read)),
        })?;
        // Changed since the index counted it (a concurrent write): no longer a match.
        total -= listed - page.len();
        let next_offset = (count > 0 && offset.saturating_add(count) < total).then_some(offset.saturating_add(count));
        let (includes, includes_truncated) = self.includes(query, &page, guard)?;
        // A limited search counted only up to the page: it has no total to tell.
        let total = limit.is_none().then_some(total);
        Ok(SearchPage { matches: page.into_iter().map(|(version, _)| version).collect(), includes, includes_truncated, total, next_offset })
    }

    /// Chained (`subject:Patient.name=x`) and reverse-chained (`_has:Observation:patient:code=y`)
    /// filters become plain ones: the linked resources are searched first, *as the caller sees
    /// them* (`guard`), and the filter becomes a reference (`subject=Patient/1,Patient/2`) or
    /// `_id` filter on what they link to. A chain can therefore match only through resources the
    /// caller may see. At most [`MAX_CHAIN_MATCHES`] linked resources per filter.
    fn resolve_chains(&self, resource_type: &str, filters: &[Filter], guard: &dyn ReadGuard) -> Result<Vec<Filter>, StoreError> {
        let table = SearchParamTable::r4();
        let mut resolved = Vec::with_capacity(filters.len());
        for filter in filters {
            let plain = match filter.chain.as_deref() {
                None => {
                    resolved.push(filter.clone());
                    continue;
                }
                Some(Chain::Forward { target_types, filter: inner }) => {
                    let mut targets = Vec::new();
                    for target_type in target_types {
                        for version in self.linked(target_type, inner, guard)? {
                            targets.push(format!("{}/{}", version.key.resource_type, version.key.id));
                        }
                    }
                    Filter::references(&filter.param, targets)
                }
                Some(Chain::Reverse { source_type, reference_param, filter: inner }) => {
                    let link = table
                        .param(source_type, reference_param)
                        .ok_or_else(|| StoreError::BadRequest(format!("{source_type} has no parameter {reference_param}")))?;
                    let prefix = format!("{resource_type}/");
                    let mut ids = Vec::new();
                    for version in self.linked(source_type, inner, guard)? {
                        let Some(content) = version.body.as_deref().and_then(|body| serde_json::from_slice::<Value>(body).ok()) else {
                            continue;
                        };
                        for entry in extract_param(table, &content, link) {
                            if let IndexValue::Reference { target } = entry.value
                                && let Some(id) = target.strip_prefix(&prefix)
                                && !id.contains('/')
                                && !ids.iter().any(|known| known == id)
                            {
                                ids.push(id.to_string());
                            }
                        }
                    }
                    Filter::ids(ids)
                }
            };
            // Nothing linked is visible: no value, and the filter matches nothing.
            resolved.push(plain);
        }
        Ok(resolved)
    }

    /// The resources of `resource_type` matching `filter` (itself possibly chained) that the
    /// caller may see.
    fn linked(&self, resource_type: &str, filter: &Filter, guard: &dyn ReadGuard) -> Result<Vec<StoredVersion>, StoreError> {
        let mut query = crate::search::parse_query(SearchParamTable::r4(), resource_type, &[], false)
            .map_err(|error| StoreError::BadRequest(error.to_string()))?;
        query.filters = vec![filter.clone()];
        let page = self.search_with(&query, None, 0, MAX_CHAIN_MATCHES + 1, guard, true)?;
        if page.total.unwrap_or(page.matches.len()) > MAX_CHAIN_MATCHES {
            return Err(StoreError::BadRequest(format!(
                "a chained parameter matches more than {MAX_CHAIN_MATCHES} {resource_type} resources; narrow it"
            )));
        }
        Ok(page.matches)
    }

    fn compartment_condition(&self, resource_type: &str, patient_reference: &str) -> Result<TermCondition, StoreError> {
        let params = SearchParamTable::r4().patient_compartment_params(resource_type);
        if resource_type == "Patient" {
            let id = patient_reference.trim_start_matches("Patient/");
            return Ok(self.shared.search.encoder.filter_condition("Patient", &Filter::ids(vec![id.to_string()])));
        }
        if params.is_empty() {
            return Err(StoreError::BadRequest(format!("{resource_type} is not in the Patient compartment")));
        }
        let mut any = Vec::new();
        for param in params {
            let filter = Filter::references(param, vec![patient_reference.to_string()]);
            any.push(self.shared.search.encoder.filter_condition(resource_type, &filter));
        }
        Ok(TermCondition::Any(any))
    }

    /// `_include` and `_revinclude` of `query` for `page`, a page of another search's matches
    /// (a system search's, across types); see [`ResourceStore::includes`].
    pub fn includes_of(
        &self,
        query: &SearchQuery,
        page: &[StoredVersion],
        guard: &dyn ReadGuard,
    ) -> Result<(Vec<StoredVersion>, bool), StoreError> {
        let page: Vec<(StoredVersion, Value)> = page
            .iter()
            .filter(|version| version.key.resource_type == query.resource_type)
            .filter_map(|version| {
                let value = version.body.as_deref().and_then(|body| serde_json::from_slice::<Value>(body).ok())?;
                Some((version.clone(), value))
            })
            .collect();
        self.includes(query, &page, guard)
    }

    /// `_include` and `_revinclude` (with `:iterate`, at most three rounds) for a page: at most
    /// [`MAX_INCLUDES_PER_PAGE`], and whether there were more.
    fn includes(
        &self,
        query: &SearchQuery,
        page: &[(StoredVersion, Value)],
        guard: &dyn ReadGuard,
    ) -> Result<(Vec<StoredVersion>, bool), StoreError> {
        if query.includes.is_empty() && query.revincludes.is_empty() {
            return Ok((Vec::new(), false));
        }
        let mut truncated = false;
        let table = SearchParamTable::r4();
        let mut seen: BTreeSet<String> =
            page.iter().map(|(version, _)| format!("{}/{}", version.key.resource_type, version.key.id)).collect();
        let mut included = Vec::new();
        let mut frontier: Vec<Value> = page.iter().map(|(_, resource)| resource.clone()).collect();
        for round in 0..3 {
            let mut next = Vec::new();
            for resource in &frontier {
                let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_string();
                let id = resource.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
                for include in query.includes.iter().filter(|include| round == 0 || include.iterate) {
                    for target in include_targets(table, include, &resource_type, resource) {
                        if included.len() >= MAX_INCLUDES_PER_PAGE {
                            truncated |= !seen.contains(&target);
                            continue;
                        }
                        if seen.insert(target.clone())
                            && let Some(key) = ResourceKey::from_reference(&target)
                            && let Ok(version) = self.read(&key)
                            && let Some(value) = version.body.as_deref().and_then(|body| serde_json::from_slice::<Value>(body).ok())
                            && guard.admits(Interaction::Read, &version, &value)
                        {
                            next.push(value);
                            included.push(version);
                        }
                    }
                }
                for include in query.revincludes.iter().filter(|include| round == 0 || include.iterate) {
                    let (Some(source_type), Some(param)) = (&include.source_type, &include.param) else {
                        continue;
                    };
                    let reference = format!("{resource_type}/{id}");
                    let Ok(reverse) = crate::search::parse_query(table, source_type, &[(param.clone(), reference)], false) else {
                        continue;
                    };
                    let condition = TermCondition::All(
                        reverse.filters.iter().map(|filter| self.shared.search.encoder.filter_condition(source_type, filter)).collect(),
                    );
                    let mut hits = self.candidates(source_type, &condition, usize::MAX, "_revinclude")?;
                    let room = MAX_INCLUDES_PER_PAGE - included.len().min(MAX_INCLUDES_PER_PAGE);
                    if hits.len() > room {
                        truncated = true;
                        hits.truncate(room);
                    }
                    let confirmed = self.confirmed(hits, &reverse, guard, None, false, Content::All)?;
                    for (version, value) in confirmed.into_iter().filter_map(|candidate| candidate.read) {
                        if seen.insert(format!("{}/{}", version.key.resource_type, version.key.id)) {
                            next.push(value);
                            included.push(version);
                        }
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        Ok((included, truncated))
    }
}

/// What a confirmation keeps of what it read.
#[derive(Clone, Copy)]
enum Content {
    /// Everything (the caller uses every candidate's content: `_revinclude`).
    All,
    /// Only what a sort by a string needs: otherwise what was read to confirm a candidate is
    /// dropped at once and the page is read again, so a search's memory follows the number of
    /// its candidates, not the size of their content.
    ForSorting,
}

impl Content {
    fn kept(self, candidate: Candidate, query: &SearchQuery) -> Candidate {
        match self {
            Content::ForSorting if !query.sort.iter().any(|sort| sort.param_type == ParamType::String) => {
                Candidate { read: None, ..candidate }
            }
            _ => candidate,
        }
    }
}

/// A search result before paging: its index hit and, once read, its verified version and
/// content (`None`: counted from the index and the guard's knowledge, read if it is paged).
struct Candidate {
    hit: Hit,
    read: Option<(StoredVersion, Value)>,
}

/// `work` on every item, on every core once there are `parallel_from` items; the kept results
/// in item order.
fn on_every_core<I: Send, T: Send>(
    items: Vec<I>,
    parallel_from: usize,
    work: impl Fn(I) -> Result<Option<T>, StoreError> + Sync,
) -> Result<Vec<T>, StoreError> {
    let work_all = |items: Vec<I>| -> Result<Vec<T>, StoreError> { items.into_iter().filter_map(|item| work(item).transpose()).collect() };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if threads < 2 || items.len() < parallel_from {
        return work_all(items);
    }
    let part = items.len().div_ceil(threads);
    let mut parts = Vec::with_capacity(threads);
    let mut items = items.into_iter();
    loop {
        let next: Vec<I> = items.by_ref().take(part).collect();
        if next.is_empty() {
            break;
        }
        parts.push(next);
    }
    let mut parts = parts.into_iter();
    let first = parts.next().unwrap_or_default();
    std::thread::scope(|scope| {
        let work_all = &work_all;
        let others: Vec<_> = parts.map(|part| scope.spawn(move || work_all(part))).collect();
        let mut kept = work_all(first)?;
        for other in others {
            kept.extend(other.join().map_err(|_| StoreError::Internal("search confirmation panicked".into()))??);
        }
        Ok(kept)
    })
}

/// Most resources one chained or `_has` parameter may link through (400 above).
pub const MAX_CHAIN_MATCHES: usize = 1_000;

/// Most `_include`d and `_revinclude`d resources in one page; past it the page says so in an
/// OperationOutcome (a smaller `_count` gets them all).
pub const MAX_INCLUDES_PER_PAGE: usize = 1_000;

/// `Type/id` references an `_include` follows from one resource.
fn include_targets(table: &SearchParamTable, include: &Include, resource_type: &str, resource: &Value) -> Vec<String> {
    if include.source_type.as_deref().is_some_and(|source| source != resource_type) {
        return Vec::new();
    }
    let params: Vec<_> = match &include.param {
        Some(name) => table.param(resource_type, name).into_iter().collect(),
        None => table.params(resource_type).iter().filter(|param| param.param_type == ParamType::Reference).collect(),
    };
    let mut targets = Vec::new();
    for param in params {
        for entry in extract_param(table, resource, param) {
            if let IndexValue::Reference { target } = entry.value
                && target.split('/').count() == 2
                && include.target_type.as_deref().is_none_or(|wanted| target.starts_with(&format!("{wanted}/")))
            {
                targets.push(target);
            }
        }
    }
    targets
}

/// The first normalised string value of a parameter (for `_sort` on strings such as `family`).
fn first_string(resource: &Value, resource_type: &str, param: &str) -> Option<String> {
    let table = SearchParamTable::r4();
    let param = table.param(resource_type, param)?;
    extract_param(table, resource, param).into_iter().find_map(|entry| match entry.value {
        IndexValue::Text { normalized, .. } => Some(normalized),
        IndexValue::Token { code, .. } => Some(code),
        _ => None,
    })
}
