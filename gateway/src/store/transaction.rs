//! Transaction and batch Bundles against the store (R4 §3.1.0.11).
//!
//! A **transaction** is all or nothing: entries are planned in the FHIR processing order
//! (DELETE, POST, PUT, GET), `fullUrl`s and conditional references are resolved to the ids they
//! get, every reference is rewritten, every resource validated and prepared, and all writes go to
//! the commit thread as one unit. Any failure names its entry and nothing is stored. GET entries
//! are answered after the writes are durable.
//!
//! A **batch** runs each entry on its own through the ordinary operations; each entry gets its
//! own outcome.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::catalog::ResourceKey;
use super::commit::{self, Expectation, PreparedWrite, Refusal, UnitOutcome};
use super::{
    CreateCondition, CreateOutcome, Principal, ResourceStore, StoreError, StoredVersion, check_if_match, new_resource_id, single, validate,
};
use crate::fhir::Leniency;
use crate::fhir::bundle::{self, BundleEntry, Method, RequestTarget};
use crate::ledger::EntryKind;

/// What happened to one entry, in the Bundle's original order.
#[derive(Debug)]
pub enum EntryOutcome {
    /// `201 Created` (`created`) or `200 OK` (an update, or a conditional create that matched).
    Written { version: StoredVersion, created: bool },
    /// `204 No Content`; `None` when there was nothing to delete.
    Deleted { version_id: Option<u64> },
    /// `200 OK` for a GET.
    Read(StoredVersion),
    /// A batch entry that failed (a transaction fails whole instead).
    Failed(StoreError),
}

/// A transaction that failed at the entry at `position` (as sent); nothing was stored.
#[derive(Debug)]
pub struct TransactionError {
    pub position: usize,
    pub error: StoreError,
}

enum Plan {
    Write { position: usize, key: ResourceKey, resource: Option<Value>, kind: EntryKind, expectation: Expectation, if_match: Option<u64> },
    Existing { position: usize, version: StoredVersion },
    NothingToDelete { position: usize },
    Get { position: usize, target: RequestTarget },
}

fn parse_if_match(text: &str) -> Result<u64, StoreError> {
    let quoted = text.trim().strip_prefix("W/").unwrap_or(text.trim());
    quoted
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .and_then(|version| version.parse().ok())
        .ok_or_else(|| StoreError::BadRequest(format!("ifMatch '{text}' is not a version ETag such as W/\"3\"")))
}

impl ResourceStore {
    /// The one resource of `resource_type` that `query` (`identifier`, `_id`) matches among those
    /// `principal` may see, if any (`412` if several).
    fn single_match(&self, resource_type: &str, query: &str, principal: &Principal) -> Result<Option<ResourceKey>, StoreError> {
        let condition = CreateCondition::parse(query).map_err(StoreError::BadRequest)?;
        let hashes = self.condition_hashes(resource_type, &condition);
        let matches = self.matching(resource_type, condition.id.as_deref(), &hashes, principal)?;
        Ok(single(&format!("{resource_type}?{query}"), matches.visible)?.map(|version| version.key))
    }

    pub async fn transaction(
        &self,
        entries: Vec<BundleEntry>,
        principal: &Principal,
        leniency: Leniency,
    ) -> Result<Vec<(usize, EntryOutcome)>, TransactionError> {
        let in_progress = self.in_progress();
        let fail = |position: usize| move |error: StoreError| TransactionError { position, error };
        let order = bundle::processing_order(&entries);
        let mut entries: Vec<Option<BundleEntry>> = entries.into_iter().map(Some).collect();
        let mut resolved: HashMap<String, String> = HashMap::new();
        let mut written: HashSet<ResourceKey> = HashSet::new();
        let mut plans = Vec::with_capacity(order.len());

        for index in order {
            let entry = entries[index].take().expect("each entry is planned once");
            let position = entry.position;
            let resolve_full_url = |resolved: &mut HashMap<String, String>, key: &ResourceKey| {
                if let Some(full_url) = &entry.full_url {
                    resolved.insert(full_url.clone(), format!("{}/{}", key.resource_type, key.id));
                }
            };
            let plan = match (entry.method, entry.target.clone()) {
                (Method::Get, target) => Plan::Get { position, target },
                (Method::Delete, target) => {
                    let key = match target {
                        RequestTarget::Instance { resource_type, id } => Some(ResourceKey { resource_type, id }),
                        RequestTarget::Conditional { resource_type, query } => {
                            self.single_match(&resource_type, &query, principal).map_err(fail(position))?
                        }
                        _ => unreachable!("parse_bundle allows only instance or conditional DELETE"),
                    };
                    match key.as_ref().map(|key| self.current_state(key)).transpose().map_err(fail(position))?.flatten() {
                        Some((version_id, false)) => Plan::Write {
                            position,
                            key: key.expect("present"),
                            resource: None,
                            kind: EntryKind::Delete,
                            expectation: Expectation::Current { base: Some(version_id) },
                            if_match: None,
                        },
                        _ => {
                            // A PUT of the same id later in the transaction conflicts with this
                            // DELETE as it would if the resource existed.
                            if let Some(key) = &key {
                                written.insert(key.clone());
                            }
                            let key = key.unwrap_or_else(|| ResourceKey {
                                resource_type: entry.target.resource_type().to_string(),
                                id: String::new(),
                            });
                            principal
                                .guard
                                .check(EntryKind::Delete, &key, None, None)
                                .map_err(|reason| fail(position)(StoreError::Forbidden(reason)))?;
                            Plan::NothingToDelete { position }
                        }
                    }
                }
                (Method::Post, RequestTarget::Type(resource_type)) => {
                    let (existing, condition) = match &entry.if_none_exist {
                        Some(query) => {
                            let condition =
                                CreateCondition::parse(query).map_err(|message| fail(position)(StoreError::BadRequest(message)))?;
                            let hashes = self.condition_hashes(&resource_type, &condition);
                            let matches =
                                self.matching(&resource_type, condition.id.as_deref(), &hashes, principal).map_err(fail(position))?;
                            let existing = single(&format!("{resource_type}?{query}"), matches.visible).map_err(fail(position))?;
                            // A hidden match must not turn the create into a conflict (that would reveal it).
                            (existing, (!matches.hidden).then_some((condition.id.clone(), hashes)))
                        }
                        None => (None, None),
                    };
                    match existing {
                        Some(version) => {
                            principal
                                .guard
                                .check(EntryKind::Create, &version.key, None, None)
                                .map_err(|reason| fail(position)(StoreError::Forbidden(reason)))?;
                            resolve_full_url(&mut resolved, &version.key);
                            Plan::Existing { position, version }
                        }
                        None => {
                            let key = ResourceKey { resource_type: resource_type.clone(), id: new_resource_id().map_err(fail(position))? };
                            resolve_full_url(&mut resolved, &key);
                            let mut resource = entry.resource.expect("parse_bundle requires a resource");
                            if let Some(object) = resource.as_object_mut() {
                                object.remove("id");
                            }
                            Plan::Write {
                                position,
                                key,
                                resource: Some(resource),
                                kind: EntryKind::Create,
                                expectation: Expectation::Absent { condition },
                                if_match: None,
                            }
                        }
                    }
                }
                (Method::Put, target) => {
                    let key = match target {
                        RequestTarget::Instance { resource_type, id } => ResourceKey { resource_type, id },
                        RequestTarget::Conditional { resource_type, query } => {
                            match self.single_match(&resource_type, &query, principal).map_err(fail(position))? {
                                Some(key) => key,
                                None => ResourceKey { resource_type, id: new_resource_id().map_err(fail(position))? },
                            }
                        }
                        _ => unreachable!("parse_bundle allows only instance or conditional PUT"),
                    };
                    resolve_full_url(&mut resolved, &key);
                    let if_match = entry.if_match.as_deref().map(parse_if_match).transpose().map_err(fail(position))?;
                    let current = self.current_state(&key).map_err(fail(position))?;
                    check_if_match(if_match, current).map_err(fail(position))?;
                    let mut resource = entry.resource.expect("parse_bundle requires a resource");
                    match resource.get("id").and_then(Value::as_str) {
                        Some(id) if id != key.id => {
                            return Err(fail(position)(StoreError::BadRequest("the resource's id does not match the request url".into())));
                        }
                        _ => {
                            if let Some(object) = resource.as_object_mut() {
                                object.insert("id".into(), Value::String(key.id.clone()));
                            }
                        }
                    }
                    let kind = if current.is_some_and(|(_, deleted)| !deleted) { EntryKind::Update } else { EntryKind::Create };
                    Plan::Write {
                        position,
                        key,
                        resource: Some(resource),
                        kind,
                        expectation: Expectation::Current { base: current.map(|(version_id, _)| version_id) },
                        if_match,
                    }
                }
                (Method::Post, _) => unreachable!("parse_bundle allows POST only to a type"),
            };
            if let Plan::Write { key, .. } = &plan
                && !written.insert(key.clone())
            {
                return Err(fail(position)(StoreError::BadRequest(format!(
                    "{}/{} is written by more than one entry of the transaction",
                    key.resource_type, key.id
                ))));
            }
            plans.push(plan);
        }

        // Conditional references (`Patient?identifier=...`) resolve to exactly one resource.
        for plan in &plans {
            let Plan::Write { position, resource: Some(resource), .. } = plan else { continue };
            for reference in bundle::references(resource) {
                if resolved.contains_key(reference) {
                    continue;
                }
                if let Some((resource_type, query)) = reference.split_once('?') {
                    let key = self.single_match(resource_type, query, principal).map_err(fail(*position))?.ok_or_else(|| {
                        fail(*position)(StoreError::PreconditionFailed(format!(
                            "the conditional reference {reference} matches no resource"
                        )))
                    })?;
                    resolved.insert(reference.to_string(), format!("{}/{}", key.resource_type, key.id));
                }
            }
        }

        // Rewrite, validate and prepare every write; commit them as one unit.
        let mut prepared: Vec<(PreparedWrite, Expectation)> = Vec::new();
        let mut write_positions = Vec::new();
        let mut if_matches = Vec::new();
        for plan in &mut plans {
            let Plan::Write { position, key, resource, kind, expectation, if_match } = plan else { continue };
            if let Some(resource) = resource.as_mut() {
                bundle::rewrite_references(resource, &resolved);
                validate(resource, leniency).map_err(fail(*position))?;
            }
            let version_id = self.current_state(key).map_err(fail(*position))?.map_or(1, |(version_id, _)| version_id + 1);
            let write = commit::prepare(&self.shared, key, resource.take(), version_id, *kind, principal).map_err(fail(*position))?;
            prepared.push((write, expectation.clone()));
            write_positions.push(*position);
            if_matches.push(if_match.is_some());
        }
        let mut committed = if prepared.is_empty() {
            Vec::new()
        } else {
            match self.submit_unit(prepared, &in_progress).await.map_err(fail(write_positions[0]))? {
                UnitOutcome::Committed(versions) => versions,
                UnitOutcome::Refused { index, refusal } => {
                    let error = match refusal {
                        Refusal::Conflict if if_matches[index] => {
                            StoreError::PreconditionFailed("the resource was changed since the version named in ifMatch".into())
                        }
                        Refusal::Conflict | Refusal::ConditionMatched => StoreError::VersionConflict,
                    };
                    return Err(fail(write_positions[index])(error));
                }
            }
        }
        .into_iter();

        let mut outcomes = Vec::with_capacity(plans.len());
        for plan in plans {
            let outcome = match plan {
                Plan::Write { position, kind, .. } => {
                    let version = committed.next().expect("one version per write");
                    let outcome = match kind {
                        EntryKind::Delete | EntryKind::Erase => EntryOutcome::Deleted { version_id: Some(version.version_id) },
                        EntryKind::Create => EntryOutcome::Written { version, created: true },
                        EntryKind::Update => EntryOutcome::Written { version, created: false },
                    };
                    (position, outcome)
                }
                Plan::Existing { position, version } => (position, EntryOutcome::Written { version, created: false }),
                Plan::NothingToDelete { position } => (position, EntryOutcome::Deleted { version_id: None }),
                Plan::Get { position, target } => (position, self.get_entry(&target, principal)),
            };
            outcomes.push(outcome);
        }
        outcomes.sort_by_key(|(position, _)| *position);
        Ok(outcomes)
    }

    /// A read entry; what `principal` may not see answers as if it did not exist (also a
    /// deletion of something it could not see).
    fn get_entry(&self, target: &RequestTarget, principal: &Principal) -> EntryOutcome {
        let (key, result) = match target {
            RequestTarget::Instance { resource_type, id } => {
                let key = ResourceKey { resource_type: resource_type.clone(), id: id.clone() };
                let result = self.read(&key);
                (key, result)
            }
            RequestTarget::Version { resource_type, id, version_id } => {
                let key = ResourceKey { resource_type: resource_type.clone(), id: id.clone() };
                let result = self.vread(&key, *version_id);
                (key, result)
            }
            RequestTarget::Type(_) | RequestTarget::Conditional { .. } => {
                return EntryOutcome::Failed(StoreError::BadRequest("search in Bundles is not supported yet".into()));
            }
        };
        let seen = match &result {
            Ok(version) => version
                .body
                .as_deref()
                .and_then(|body| serde_json::from_slice::<Value>(body).ok())
                .is_some_and(|content| principal.guard.sees(version, &content)),
            Err(StoreError::Gone(version_id)) => match self.deleted_content(&key, *version_id) {
                Ok(Some((deleted, content))) => principal.guard.sees(&deleted, &content),
                Ok(None) => false,
                Err(error) => return EntryOutcome::Failed(error),
            },
            Err(_) => true,
        };
        match result {
            _ if !seen => EntryOutcome::Failed(StoreError::NotFound),
            Ok(version) => EntryOutcome::Read(version),
            Err(error) => EntryOutcome::Failed(error),
        }
    }

    /// Runs each entry on its own, in the Bundle's order.
    pub async fn batch(&self, entries: Vec<BundleEntry>, principal: &Principal, leniency: Leniency) -> Vec<(usize, EntryOutcome)> {
        let mut outcomes = Vec::with_capacity(entries.len());
        for entry in entries {
            let position = entry.position;
            let outcome = self.batch_entry(entry, principal, leniency).await.unwrap_or_else(EntryOutcome::Failed);
            outcomes.push((position, outcome));
        }
        outcomes
    }

    async fn batch_entry(&self, entry: BundleEntry, principal: &Principal, leniency: Leniency) -> Result<EntryOutcome, StoreError> {
        match (entry.method, entry.target) {
            (Method::Get, target) => Ok(self.get_entry(&target, principal)),
            (Method::Post, RequestTarget::Type(_)) => {
                let condition = entry.if_none_exist.as_deref().map(CreateCondition::parse).transpose().map_err(StoreError::BadRequest)?;
                let resource = entry.resource.expect("parse_bundle requires a resource");
                Ok(match self.create(resource, principal, leniency, condition.as_ref()).await? {
                    CreateOutcome::Created(outcome) => EntryOutcome::Written { version: outcome.version, created: true },
                    CreateOutcome::Existing(version) => EntryOutcome::Written { version, created: false },
                })
            }
            (Method::Put, target) => {
                let key = match target {
                    RequestTarget::Instance { resource_type, id } => ResourceKey { resource_type, id },
                    RequestTarget::Conditional { resource_type, query } => match self.single_match(&resource_type, &query, principal)? {
                        Some(key) => key,
                        None => ResourceKey { resource_type, id: new_resource_id()? },
                    },
                    _ => return Err(StoreError::BadRequest("a PUT entry's url must be Type/id or Type?query".into())),
                };
                let if_match = entry.if_match.as_deref().map(parse_if_match).transpose()?;
                let mut resource = entry.resource.expect("parse_bundle requires a resource");
                if resource.get("id").is_none()
                    && let Some(object) = resource.as_object_mut()
                {
                    object.insert("id".into(), Value::String(key.id.clone()));
                }
                let outcome = self.update(&key, resource, principal, leniency, if_match).await?;
                Ok(EntryOutcome::Written { version: outcome.version, created: outcome.created })
            }
            (Method::Delete, target) => {
                let key = match target {
                    RequestTarget::Instance { resource_type, id } => Some(ResourceKey { resource_type, id }),
                    RequestTarget::Conditional { resource_type, query } => self.single_match(&resource_type, &query, principal)?,
                    _ => return Err(StoreError::BadRequest("a DELETE entry's url must be Type/id or Type?query".into())),
                };
                let version_id = match key {
                    Some(key) => self.delete(&key, principal).await?,
                    None => None,
                };
                Ok(EntryOutcome::Deleted { version_id })
            }
            (Method::Post, _) => Err(StoreError::BadRequest("a POST entry's url must be the resource type".into())),
        }
    }
}
