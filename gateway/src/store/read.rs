//! The verified read path: read, vread, history at both levels, through the caller's guard;
//! every version loaded is checked link by link (bytes against CID, AEAD tag against the binding,
//! plaintext against the ledger entry).

use super::*;

impl ResourceStore {
    /// The current version; `Gone` if the newest version is a deletion.
    pub fn read(&self, key: &ResourceKey) -> Result<StoredVersion, StoreError> {
        let version = version_of(&self.shared.catalog, key, None)?;
        if version.is_deletion() {
            return Err(StoreError::Gone(version.version_id));
        }
        self.load(key, &version)
    }

    /// One version; `Gone` if that version is a deletion.
    pub fn vread(&self, key: &ResourceKey, version_id: u64) -> Result<StoredVersion, StoreError> {
        let version = version_of(&self.shared.catalog, key, Some(version_id))?;
        if version.is_deletion() {
            return Err(StoreError::Gone(version.version_id));
        }
        self.load(key, &version)
    }

    /// Versions of one resource that `guard` admits, newest first, below version `before_version`.
    pub fn instance_history(
        &self,
        key: &ResourceKey,
        before_version: Option<u64>,
        since: Option<OffsetDateTime>,
        count: usize,
        guard: &dyn ReadGuard,
    ) -> Result<HistoryPage, StoreError> {
        let candidates: Vec<(ResourceKey, VersionRecord)> = history_of(&self.shared.catalog, key)?
            .versions
            .into_iter()
            .rev()
            .filter(|version| before_version.is_none_or(|bound| version.version_id < bound))
            .filter(|version| since.is_none_or(|since| version.last_updated >= since))
            .map(|version| (key.clone(), version))
            .collect();
        let (versions, more) = self.admitted(candidates, count, Interaction::History, guard)?;
        let next_cursor = more.then(|| versions.last().map(|version| version.version_id)).flatten();
        Ok(HistoryPage { versions, next_cursor })
    }

    /// Versions of every resource of a type that `guard` admits, newest first, committed
    /// before ledger leaf `before_leaf`.
    pub fn type_history(
        &self,
        resource_type: &str,
        before_leaf: Option<u64>,
        since: Option<OffsetDateTime>,
        count: usize,
        guard: &dyn ReadGuard,
    ) -> Result<HistoryPage, StoreError> {
        const BATCH: usize = 256;
        let mut page: Vec<(u64, StoredVersion)> = Vec::with_capacity(count + 1);
        let mut bound = before_leaf;
        while page.len() <= count && count > 0 {
            let mut reached_since = false;
            let mut entries = Vec::with_capacity(BATCH);
            self.shared.catalog.type_history(resource_type, bound, |leaf, id, version_id| {
                entries.push((leaf, ResourceKey { resource_type: resource_type.to_string(), id: id.to_string() }, version_id));
                entries.len() < BATCH
            })?;
            let exhausted = entries.len() < BATCH;
            let next_bound = entries.last().map(|(leaf, _, _)| *leaf).or(bound);
            let mut batch: Vec<(ResourceKey, VersionRecord)> = Vec::with_capacity(entries.len());
            for (_, key, version_id) in entries {
                let Some(version) = self.shared.catalog.version(&key, Some(version_id))? else { continue };
                if since.is_some_and(|since| version.last_updated < since) {
                    reached_since = true;
                    break;
                }
                batch.push((key, version));
            }
            let exhausted = reached_since || exhausted;
            bound = next_bound;
            for (key, record) in batch {
                let leaf_index = record.leaf_index;
                if let Some(version) = self.admit(&key, &record, Interaction::History, guard)? {
                    page.push((leaf_index, version));
                    if page.len() > count {
                        break;
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        let more = page.len() > count;
        page.truncate(count);
        let next_cursor = more.then(|| page.last().map(|(leaf_index, _)| *leaf_index)).flatten();
        Ok(HistoryPage { versions: page.into_iter().map(|(_, version)| version).collect(), next_cursor })
    }

    /// The first `count` of `candidates` that `guard` admits, and whether more were admitted.
    fn admitted(
        &self,
        candidates: Vec<(ResourceKey, VersionRecord)>,
        count: usize,
        interaction: Interaction,
        guard: &dyn ReadGuard,
    ) -> Result<(Vec<StoredVersion>, bool), StoreError> {
        let mut page = Vec::with_capacity(count.min(candidates.len()));
        for (key, record) in candidates {
            if let Some(version) = self.admit(&key, &record, interaction, guard)? {
                if page.len() == count {
                    return Ok((page, true));
                }
                page.push(version);
            }
        }
        Ok((page, false))
    }

    /// Loads one version if `guard` admits it; a deletion is judged by the content it deleted.
    fn admit(
        &self,
        key: &ResourceKey,
        record: &VersionRecord,
        interaction: Interaction,
        guard: &dyn ReadGuard,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let version = self.load(key, record)?;
        let admitted = match &version.body {
            Some(body) => serde_json::from_slice::<Value>(body).is_ok_and(|content| guard.admits(interaction, &version, &content)),
            None => self
                .deleted_content(key, record.version_id)?
                .is_some_and(|(deleted, content)| guard.admits(interaction, &deleted, &content)),
        };
        Ok(admitted.then_some(version))
    }

    /// What the deletion `version_id` deleted: the newest earlier version with content, and
    /// that content.
    pub fn deleted_content(&self, key: &ResourceKey, version_id: u64) -> Result<Option<(StoredVersion, Value)>, StoreError> {
        let mut prior = None;
        for earlier in (1..version_id).rev() {
            match self.shared.catalog.version(key, Some(earlier))? {
                Some(version) if !version.is_deletion() => {
                    prior = Some(version);
                    break;
                }
                Some(_) => continue,
                None => break,
            }
        }
        let Some(prior) = prior else { return Ok(None) };
        let version = self.load(key, &prior)?;
        let content = version.body.as_deref().and_then(|body| serde_json::from_slice(body).ok());
        Ok(content.map(|content| (version, content)))
    }

    fn load(&self, key: &ResourceKey, version: &VersionRecord) -> Result<StoredVersion, StoreError> {
        load(&self.shared, key, version)
    }
}

/// The Consents of a patient's compartment, for the Consent directory.
impl consents::ConsentSource for Shared {
    fn consents_in_compartment(&self, patient: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let hash = self.secrets.patient_hash(patient);
        let Some(slot) = self.keyring.read().expect("keyring lock").patients().slot_of(&hash)? else {
            return Ok(Vec::new());
        };
        let mut bodies = Vec::new();
        for key in self.catalog.held_of_type(slot, "Consent")? {
            if let Some(version) = self.catalog.current(&key)?.filter(|version| !version.is_deletion()) {
                bodies.extend(load(self, &key, &version)?.body);
            }
        }
        Ok(bodies)
    }
}

/// Fetches, checks and unseals one version. Any broken link is an integrity error, logged with
/// pseudonymous names only.
pub(super) fn load(shared: &Shared, key: &ResourceKey, version: &VersionRecord) -> Result<StoredVersion, StoreError> {
    let pseudonym = shared.secrets.pseudonym(key);
    let integrity = |what: &str| {
        tracing::error!(pseudonym = %pseudonym, version_id = version.version_id, leaf_index = version.leaf_index, problem = what, "integrity check failed on read");
        StoreError::Integrity(what.to_string())
    };
    let leaf = shared.ledger.read_leaf(version.leaf_index).map_err(|_| integrity("ledger entry unreadable"))?;
    let entry = LedgerEntry::parse(&leaf).map_err(|_| integrity("ledger entry malformed"))?;
    if entry.pseudonym != pseudonym || entry.version_id != version.version_id || entry.resource_type != key.resource_type {
        return Err(integrity("ledger entry names another record"));
    }
    if entry.author.as_deref() != Some(shared.secrets.author_hash(version.author.as_deref()).as_str()) {
        return Err(integrity("ledger entry names another author"));
    }
    let body = match &version.sealed {
        None => {
            if entry.kind != EntryKind::Delete {
                return Err(integrity("ledger entry is not a deletion"));
            }
            None
        }
        Some(sealed) => {
            if entry.cid.as_deref() != Some(sealed.cid.to_string().as_str()) {
                return Err(integrity("ledger entry names another CID"));
            }
            let sealed_bytes = blob::read_file(shared.blobs.as_ref(), &sealed.cid)
                .map_err(|_| integrity("sealed blob missing or does not match its CID"))?;
            let context = SealContext { resource_type: &key.resource_type, id: &key.id, version_id: version.version_id };
            let data_key = shared
                .keyring
                .read()
                .expect("keyring lock")
                .unwrap(&sealed.wrapped_key, context)
                .map_err(|_| integrity("data key does not unwrap"))?;
            let plaintext = seal::unseal(&sealed_bytes, &data_key, context).map_err(|_| integrity("sealed blob does not open"))?;
            if entry.content_hash.as_deref() != Some(shared.secrets.content_hash(&plaintext).as_str()) {
                return Err(integrity("plaintext does not match the ledger entry"));
            }
            Some(plaintext)
        }
    };
    Ok(StoredVersion {
        key: key.clone(),
        version_id: version.version_id,
        last_updated: version.last_updated,
        body,
        author: version.author.clone(),
    })
}

/// A resource's versions: `NotFound` if it has none, `Erased` if it was erased.
pub(super) fn history_of(catalog: &Catalog, key: &ResourceKey) -> Result<catalog::ResourceHistory, StoreError> {
    match catalog.get(key)? {
        Some(history) => Ok(history),
        None if catalog.is_erased(key)? => Err(StoreError::Erased(key.clone())),
        None => Err(StoreError::NotFound),
    }
}

/// One version (`None`: the current one): `NotFound` if there is no such version, `Erased` if
/// the resource was erased.
fn version_of(catalog: &Catalog, key: &ResourceKey, version_id: Option<u64>) -> Result<VersionRecord, StoreError> {
    match catalog.version(key, version_id)? {
        Some(version) => Ok(version),
        None if catalog.is_erased(key)? => Err(StoreError::Erased(key.clone())),
        None => Err(StoreError::NotFound),
    }
}
