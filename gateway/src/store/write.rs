//! The write path's public operations: create (conditional too), update, delete and purge, each
//! prepared in the caller's task and committed by the commit thread; the checks they share.

use super::*;

impl ResourceStore {
    /// Creates a resource under a new server-assigned id (an `id` in the body is ignored, as
    /// FHIR requires), unless `condition` matches an existing one.
    pub async fn create(
        &self,
        mut resource: Value,
        principal: &Principal,
        leniency: Leniency,
        condition: Option<&CreateCondition>,
    ) -> Result<CreateOutcome, StoreError> {
        let in_progress = self.in_progress();
        validate(&resource, leniency)?;
        let resource_type = resource_type_of(&resource)?;
        let condition_hashes = match condition {
            Some(condition) => {
                let hashes = self.condition_hashes(&resource_type, condition);
                let matches = self.matching(&resource_type, condition.id.as_deref(), &hashes, principal)?;
                if let Some(existing) = single("If-None-Exist", matches.visible)? {
                    return Ok(CreateOutcome::Existing(existing));
                }
                // A hidden match must not turn the create into a conflict (that would reveal it).
                (!matches.hidden).then(|| (condition.id.clone(), hashes))
            }
            None => None,
        };
        if let Some(object) = resource.as_object_mut() {
            object.remove("id");
        }
        let key = ResourceKey { resource_type, id: new_resource_id()? };
        let prepared = commit::prepare(&self.shared, &key, Some(resource), 1, EntryKind::Create, principal)?;
        let expectation = Expectation::Absent { condition: condition_hashes.clone() };
        match self.submit(prepared, expectation, &in_progress).await? {
            Ok(version) => Ok(CreateOutcome::Created(WriteOutcome { version, created: true })),
            Err(Refusal::ConditionMatched) => {
                let (id, hashes) = condition_hashes.unwrap_or_default();
                let matches = self.matching(&key.resource_type, id.as_deref(), &hashes, principal)?;
                match single("If-None-Exist", matches.visible)? {
                    Some(existing) => Ok(CreateOutcome::Existing(existing)),
                    None => Err(StoreError::VersionConflict),
                }
            }
            Err(Refusal::Conflict) => Err(StoreError::VersionConflict),
        }
    }

    /// Updates (or creates, with the client's id) a resource. `if_match` is the version the
    /// client last saw (`If-Match: W/"n"`).
    pub async fn update(
        &self,
        key: &ResourceKey,
        resource: Value,
        principal: &Principal,
        leniency: Leniency,
        if_match: Option<u64>,
    ) -> Result<WriteOutcome, StoreError> {
        let in_progress = self.in_progress();
        validate(&resource, leniency)?;
        if resource_type_of(&resource)? != key.resource_type {
            return Err(StoreError::BadRequest(format!("the resource's resourceType does not match the URL's type {}", key.resource_type)));
        }
        match resource.get("id").and_then(Value::as_str) {
            Some(id) if id == key.id => {}
            Some(_) => {
                return Err(StoreError::BadRequest("the resource's id does not match the id in the URL".into()));
            }
            None => {
                return Err(StoreError::BadRequest("an update must carry the resource's id in the body".into()));
            }
        }
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            self.refuse_erased(key)?;
            let current = self.current_state(key)?;
            check_if_match(if_match, current)?;
            let version_id = current.map_or(1, |(version_id, _)| version_id + 1);
            let kind = if current.is_some_and(|(_, deleted)| !deleted) { EntryKind::Update } else { EntryKind::Create };
            let prepared = commit::prepare(&self.shared, key, Some(resource.clone()), version_id, kind, principal)?;
            let expectation = Expectation::Current { base: current.map(|(version_id, _)| version_id) };
            match self.submit(prepared, expectation, &in_progress).await? {
                Ok(version) => {
                    return Ok(WriteOutcome { version, created: kind == EntryKind::Create });
                }
                Err(Refusal::Conflict) if if_match.is_some() => {
                    return Err(StoreError::PreconditionFailed("the resource was changed since the version named in If-Match".into()));
                }
                Err(_) => continue,
            }
        }
        Err(StoreError::VersionConflict)
    }

    /// Deletes a resource (a new version marks it deleted). Returns the deletion's version id,
    /// or `None` if it was already deleted.
    pub async fn delete(&self, key: &ResourceKey, principal: &Principal) -> Result<Option<u64>, StoreError> {
        let in_progress = self.in_progress();
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            self.refuse_erased(key)?;
            let Some((version_id, deleted)) = self.current_state(key)? else {
                return Err(StoreError::NotFound);
            };
            if deleted {
                return Ok(None);
            }
            let prepared = commit::prepare(&self.shared, key, None, version_id + 1, EntryKind::Delete, principal)?;
            let expectation = Expectation::Current { base: Some(version_id) };
            if let Ok(version) = self.submit(prepared, expectation, &in_progress).await? {
                return Ok(Some(version.version_id));
            }
        }
        Err(StoreError::VersionConflict)
    }

    /// Erases a patient's records (`Patient/$purge`, see [`erasure`]): every version of the
    /// Patient and of every resource its key holds. Returns once nothing of them is readable
    /// and their key, index documents and sealed blocks are gone.
    pub async fn purge(&self, patient: &ResourceKey, principal: &Principal) -> Result<PurgeOutcome, StoreError> {
        if patient.resource_type != "Patient" {
            return Err(StoreError::BadRequest("$purge erases a Patient's records".into()));
        }
        let (reply, answer) = oneshot::channel();
        let request = erasure::ErasureRequest {
            patient: patient.clone(),
            principal: self.shared.secrets.principal(principal),
            author: principal.organization.clone(),
            reply,
        };
        let shutting_down = || StoreError::Unavailable("the gateway is shutting down".into());
        self.commits.send(CommitRequest::Erase(request)).await.map_err(|_| shutting_down())?;
        let (recorded, outcome) = answer.await.map_err(|_| shutting_down())??;
        // The indexer applies the erasure's deletions before the segments holding them are merged.
        self.wait_for_index()?;
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || erasure::finish(&shared, &recorded))
            .await
            .map_err(|error| StoreError::Internal(error.to_string()))??;
        Ok(outcome)
    }

    /// Counts a write as started until it is submitted (see [`Shared::writes_in_progress`]).
    pub(crate) fn in_progress(&self) -> InProgress<'_> {
        InProgress::enter(&self.shared.writes_in_progress)
    }

    /// Commits writes all together or not at all.
    pub(crate) async fn submit_unit(
        &self,
        writes: Vec<(PreparedWrite, Expectation)>,
        in_progress: &InProgress<'_>,
    ) -> Result<UnitOutcome, StoreError> {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the store stopped accepting writes after a storage failure".into()));
        }
        let (reply, answer) = oneshot::channel();
        let sent = self.commits.send(CommitRequest::Unit { writes, reply }).await;
        in_progress.release();
        sent.map_err(|_| StoreError::Unavailable("the gateway is shutting down".into()))?;
        answer.await.map_err(|_| StoreError::Unavailable("the gateway is shutting down".into()))?
    }

    /// Commits one write: its version, or why it was refused.
    async fn submit(
        &self,
        prepared: PreparedWrite,
        expectation: Expectation,
        in_progress: &InProgress<'_>,
    ) -> Result<Result<StoredVersion, Refusal>, StoreError> {
        match self.submit_unit(vec![(prepared, expectation)], in_progress).await? {
            UnitOutcome::Committed(mut versions) => Ok(Ok(versions.pop().expect("one version per write"))),
            UnitOutcome::Refused { refusal, .. } => Ok(Err(refusal)),
        }
    }

    /// `Erased` for an erased resource: its id is never used again.
    pub(crate) fn refuse_erased(&self, key: &ResourceKey) -> Result<(), StoreError> {
        match self.shared.catalog.is_erased(key)? {
            true => Err(StoreError::Erased(key.clone())),
            false => Ok(()),
        }
    }

    /// (current version id, deleted?) of a resource, if it has any version.
    pub(crate) fn current_state(&self, key: &ResourceKey) -> Result<Option<(u64, bool)>, StoreError> {
        Ok(self.shared.catalog.current_state(key)?)
    }

    pub(crate) fn condition_hashes(&self, resource_type: &str, condition: &CreateCondition) -> Vec<KeyedHash> {
        condition
            .identifiers
            .iter()
            .map(|query| self.shared.secrets.identifier_hash(resource_type, query.system.as_deref(), &query.value))
            .collect()
    }

    /// The current resources of `resource_type` with id `id` (if given) and every identifier
    /// hash, split by what `principal` may see.
    pub(crate) fn matching(
        &self,
        resource_type: &str,
        id: Option<&str>,
        hashes: &[KeyedHash],
        principal: &Principal,
    ) -> Result<Matches, StoreError> {
        let keys = commit::condition_matches(&self.shared.catalog, resource_type, id, hashes)?;
        let mut matches = Matches { visible: Vec::new(), hidden: false };
        for key in keys {
            let version = self.read(&key)?;
            let content = version.body.as_deref().and_then(|body| serde_json::from_slice::<Value>(body).ok());
            if content.is_some_and(|content| principal.guard.sees(&version, &content)) {
                matches.visible.push(version);
            } else {
                matches.hidden = true;
            }
        }
        Ok(matches)
    }
}

/// At most one match: `None`, the one, or `412` naming how many the caller can see.
pub(crate) fn single(condition: &str, mut visible: Vec<StoredVersion>) -> Result<Option<StoredVersion>, StoreError> {
    match visible.len() {
        0 | 1 => Ok(visible.pop()),
        count => Err(StoreError::PreconditionFailed(format!("{condition} matches {count} resources; at most one may match"))),
    }
}

pub(crate) fn validate(resource: &Value, leniency: Leniency) -> Result<(), StoreError> {
    let issues = fhir::validate_resource(resource, leniency);
    if issues.iter().any(Issue::is_error) {
        return Err(StoreError::Invalid(issues));
    }
    Ok(())
}

fn resource_type_of(resource: &Value) -> Result<String, StoreError> {
    resource
        .get("resourceType")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| StoreError::BadRequest("resourceType is missing".into()))
}

pub(crate) fn check_if_match(if_match: Option<u64>, current: Option<(u64, bool)>) -> Result<(), StoreError> {
    match (if_match, current) {
        (None, _) => Ok(()),
        (Some(expected), Some((version_id, _))) if expected == version_id => Ok(()),
        (Some(expected), Some((version_id, _))) => {
            Err(StoreError::PreconditionFailed(format!("If-Match names version {expected} but the current version is {version_id}")))
        }
        (Some(_), None) => Err(StoreError::PreconditionFailed("If-Match given but the resource does not exist".into())),
    }
}

/// A server-assigned id: a random (version 4) UUID, so ids reveal nothing and cannot be guessed.
pub(crate) fn new_resource_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| StoreError::Internal("random source failed".into()))?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = secrets::hex(&bytes);
    Ok(format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]))
}
