//! Access decisions for one request: the SMART scopes of the caller's token and the patient's
//! Consents, applied to every resource a request reads or writes. The store calls [`Access`]
//! through its [`ReadGuard`] and [`WriteGuard`] seams (search and history filter before they
//! count and page; every write is checked on its final content, after transaction references
//! are resolved); the read handlers call it for read and vread. No I/O: the Consents come from
//! the store's [`ConsentDirectory`], the time from the caller.
//!
//! A resource may be **read** when
//! 1. a scope grants the interaction's permission (`r` for read, vread, history and `_include`,
//!    `s` for search matches and `_revinclude`) on its type, and that scope reaches it: a
//!    `patient/` scope only the compartment of the token's patient (and resources in no
//!    patient's compartment), a scope with a query (`?category=laboratory`) only resources the
//!    search matcher says match it; and
//! 2. it is in no patient's compartment, or [`consent::decide`] permits it for every patient
//!    whose compartment holds it ([`facts::compartment_patients`]).
//!
//! A **write** is allowed when a scope grants `c`, `u` or `d` on the type and reaches both the
//! content replaced and the new content (as for reads), and, for a requester who is a patient,
//! both stay in that patient's own compartment (so a patient writes their own Consents and no
//! one else's, and cannot move a record into or out of another compartment). Consents govern
//! disclosure, not writes. AuditEvents are written by the gateway alone.

pub mod facts;

pub use facts::FactsCache;
use facts::VersionFacts;

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::auth::{AccessToken, Permission, ScopeContext, Scopes};
use crate::consent::{self, Basis, Code, DecisionOptions, Interaction, Requester, RequesterKind};
use crate::ledger::EntryKind;
use crate::search::{SearchParamTable, matches, parse_query};
use crate::store::catalog::ResourceKey;
use crate::store::consents::ConsentDirectory;
use crate::store::{ReadGuard, StoredVersion, WriteGuard};

/// Most decisions kept per request for its audit record (a page is at most 500 resources plus
/// its includes; searches keep only what they return, see [`Access::audit_disclosed`]).
const MAX_DECISIONS_KEPT: usize = 20_000;

/// One decision about one patient's resource, kept for the audit trail.
#[derive(Debug, Clone)]
pub struct Decided {
    pub patient: String,
    /// `Type/id`
    pub resource: String,
    pub permit: bool,
    /// Why, in words for the patient reading their audit trail.
    pub reason: Cow<'static, str>,
    /// The Consent that decided (`Consent/id/_history/v`).
    pub consent: Option<String>,
    pub emergency: bool,
}

/// The caller of one request and everything needed to decide what it may see and do.
pub struct Access {
    /// `issuer|subject` (or client id) of the token: recorded on the ledger as a keyed hash.
    principal_name: Option<String>,
    /// The token's `client_id` (the app), for the audit trail.
    client_id: Option<String>,
    requester: Requester,
    scopes: Scopes,
    scope_names: Vec<String>,
    /// The token's `patient` claim: the compartment its `patient/` scopes reach.
    patient_context: Option<String>,
    shared: Shared,
    now_ms: i64,
    decided: Mutex<Vec<Decided>>,
    /// No token: never reaches a patient's compartment, whatever a Consent says.
    anonymous: bool,
}

/// What every request shares: the current Consents, the facts of recently judged versions, the
/// gateway's decision options.
#[derive(Clone)]
pub struct Shared {
    pub consents: Arc<ConsentDirectory>,
    pub facts: Arc<FactsCache>,
    pub options: Arc<DecisionOptions>,
    pub denied_reads: DeniedReads,
    /// Roles (`subject_role`) with which a practitioner or related person may record a Consent
    /// on a patient's behalf (`--consent-recorder-roles`; default none).
    pub consent_recorders: Arc<[Code]>,
    /// Organisations whose backend services may record a Consent on a patient's behalf
    /// (`--consent-recorder-organizations`; default `Organization/local`, the local EMR).
    pub consent_recorder_organizations: Arc<[String]>,
    /// Issuers whose tokens with only `patient/` scopes are the patient's own app even without a
    /// `fhirUser` (`--patient-facing-issuer`; default none).
    pub patient_facing_issuers: Arc<[String]>,
    /// The scope a token needs for `Patient/$purge` (`--purge-scope`).
    pub purge_scope: Arc<str>,
}

/// How a read of one resource the caller may not see is answered (`--denied-reads`). Searches
/// leave such resources out either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DeniedReads {
    /// `404`, byte for byte the answer for an id that does not exist (the default: a refusal
    /// reveals nothing, not even that the record exists).
    #[default]
    NotFound,
    /// `403` naming the refusal (for deployments where existence is not a secret).
    Forbidden,
}

impl Access {
    /// The access of a verified token at `now_ms`.
    pub fn for_token(token: &AccessToken, shared: &Shared, now_ms: i64) -> Access {
        let who = token.subject.as_deref().or(token.client_id.as_deref()).unwrap_or_default();
        Access {
            principal_name: Some(format!("{}|{who}", token.issuer)),
            client_id: token.client_id.clone(),
            requester: requester(token, &shared.patient_facing_issuers),
            scopes: token.scopes.clone(),
            scope_names: token.scope_names.clone(),
            patient_context: token.patient.clone(),
            shared: shared.clone(),
            now_ms,
            decided: Mutex::new(Vec::new()),
            anonymous: false,
        }
    }

    /// Anonymous access (where configured): may read and search what is in no patient's
    /// compartment, never a patient's data (not even with a Consent that names no actor).
    pub fn anonymous(shared: &Shared, now_ms: i64) -> Access {
        let requester = Requester {
            kind: RequesterKind::System,
            reference: None,
            patient: None,
            organization: None,
            roles: Vec::new(),
            purpose_of_use: Vec::new(),
            emergency_reason: None,
        };
        Access {
            principal_name: None,
            client_id: None,
            requester,
            scopes: Scopes::parse("system/*.rs"),
            scope_names: Vec::new(),
            patient_context: None,
            shared: shared.clone(),
            now_ms,
            decided: Mutex::new(Vec::new()),
            anonymous: true,
        }
    }

    /// The error for a read of one resource this caller may not see ([`DeniedReads`]).
    pub fn refused_read(&self) -> crate::store::StoreError {
        match self.shared.denied_reads {
            DeniedReads::NotFound => crate::store::StoreError::NotFound,
            DeniedReads::Forbidden => {
                crate::store::StoreError::Forbidden("the token's scopes or the patient's Consents do not allow this read".into())
            }
        }
    }

    pub fn principal_name(&self) -> Option<&str> {
        self.principal_name.as_deref()
    }

    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    pub fn requester(&self) -> &Requester {
        &self.requester
    }

    /// Whether any scope grants `permission` on `resource_type` (whether a given resource is
    /// reached is decided per resource). `Err` names what is missing (for a `403`).
    pub fn require(&self, resource_type: &str, permission: Permission) -> Result<(), String> {
        if resource_type == "AuditEvent" && !matches!(permission, Permission::Read | Permission::Search) {
            return Err("AuditEvents are recorded by the gateway; they cannot be written through the API".into());
        }
        if self.scopes.granting(resource_type, permission).is_empty() {
            return Err(format!("the access token grants no scope to {} {resource_type}", permission_name(permission)));
        }
        Ok(())
    }

    /// Whether the token grants anything at all (checked before a Bundle's body is read).
    /// `Patient/$purge` needs the configured purge scope, which no resource scope implies
    /// (not even `system/*.cruds`).
    pub fn require_purge(&self) -> Result<(), String> {
        match self.scope_names.iter().any(|name| **name == *self.shared.purge_scope) {
            true => Ok(()),
            false => Err(format!("erasing a patient's records needs the scope {}", self.shared.purge_scope)),
        }
    }

    pub fn require_any(&self) -> Result<(), String> {
        if self.scopes.grants_anything() { Ok(()) } else { Err("the access token grants no resource scope".into()) }
    }

    /// Whether `resource` (a version written by `author`) may be disclosed by `interaction`.
    pub fn may_read(&self, interaction: Interaction, resource: &Value, author: Option<&str>) -> bool {
        self.judge(interaction, &VersionFacts::of(resource, author), || Some(resource.clone()))
    }

    /// [`Access::may_read`] of a stored version, with its facts from the [`FactsCache`] (the
    /// body is parsed only on a miss, or for a scope restricted by a query).
    pub fn may_read_version(&self, interaction: Interaction, version: &StoredVersion) -> bool {
        let parse = || version.body.as_deref().and_then(|body| serde_json::from_slice::<Value>(body).ok());
        let facts =
            self.shared.facts.get_or_insert(version, || parse().map(|resource| VersionFacts::of(&resource, version.author.as_deref())));
        facts.is_some_and(|facts| self.judge(interaction, &facts, parse))
    }

    /// [`Access::may_read`] of a stored version whose content the caller has parsed already
    /// (for a deletion: the content it deleted, judged without the cache).
    pub fn may_read_content(&self, interaction: Interaction, version: &StoredVersion, content: &Value) -> bool {
        if version.body.is_none() {
            return self.may_read(interaction, content, version.author.as_deref());
        }
        let facts = self.shared.facts.get_or_insert(version, || Some(VersionFacts::of(content, version.author.as_deref())));
        facts.is_some_and(|facts| self.judge(interaction, &facts, || Some(content.clone())))
    }

    fn judge(&self, interaction: Interaction, facts: &VersionFacts, content: impl FnOnce() -> Option<Value>) -> bool {
        let permission = if interaction == Interaction::Search { Permission::Search } else { Permission::Read };
        let unknown = facts.unknown_patient.is_some();
        if !self.scope_reaches(permission, Reach::Read, &facts.resource_type, &facts.patients, unknown, content) {
            return false;
        }
        if self.anonymous && (unknown || !facts.patients.is_empty()) {
            for (patient, facts) in facts.patients.iter().zip(&facts.per_patient) {
                self.keep(Decided {
                    patient: patient.clone(),
                    resource: facts.reference.clone(),
                    permit: false,
                    reason: "denied: anonymous access never reaches a patient's record".into(),
                    consent: None,
                    emergency: false,
                });
            }
            return false;
        }
        let mut permitted = true;
        for (patient, facts) in facts.patients.iter().zip(&facts.per_patient) {
            let policies = match self.shared.consents.of_patient(patient) {
                Ok(policies) => policies,
                Err(error) => {
                    // Default deny: a Consent that cannot be read grants nothing.
                    tracing::error!(%error, "the patient's Consents could not be read; the request is denied");
                    permitted = false;
                    self.keep(Decided {
                        patient: patient.clone(),
                        resource: facts.reference.clone(),
                        permit: false,
                        reason: "denied: the patient's Consents could not be read".into(),
                        consent: None,
                        emergency: false,
                    });
                    continue;
                }
            };
            let decision = consent::decide(&self.requester, interaction, facts, &policies, self.now_ms, &self.shared.options);
            permitted &= decision.permit;
            let (reason, consent) = explain(&decision.basis);
            self.keep(Decided {
                patient: patient.clone(),
                resource: facts.reference.clone(),
                permit: decision.permit,
                reason: reason.into(),
                consent,
                emergency: decision.emergency,
            });
        }
        if let Some(facts) = &facts.unknown_patient {
            // Patient data of an undeterminable patient: no Consent can grant it; the author
            // organisation's treatment rule and break-the-glass still apply.
            permitted &= consent::decide(&self.requester, interaction, facts, &[], self.now_ms, &self.shared.options).permit;
        }
        permitted
    }

    /// Forgets the decisions made so far and decides again for `returned` alone: a search or a
    /// history audits what it disclosed, not every candidate it filtered out on the way (the
    /// request itself is audited with its parameters either way).
    pub fn audit_disclosed<'a>(&self, interaction: Interaction, returned: impl IntoIterator<Item = &'a StoredVersion>) {
        self.decided.lock().expect("decisions lock").clear();
        self.audit_also(interaction, returned);
    }

    /// Adds decisions for more returned resources (e.g. a page's `_include`s, read with `r`).
    pub fn audit_also<'a>(&self, interaction: Interaction, returned: impl IntoIterator<Item = &'a StoredVersion>) {
        for version in returned {
            self.may_read_version(interaction, version);
        }
    }

    /// The decisions made so far (at most [`MAX_DECISIONS_KEPT`]).
    pub fn decided(&self) -> Vec<Decided> {
        self.decided.lock().expect("decisions lock").clone()
    }

    fn keep(&self, decided: Decided) {
        let mut kept = self.decided.lock().expect("decisions lock");
        if kept.len() < MAX_DECISIONS_KEPT {
            kept.push(decided);
        }
    }

    /// Whether some scope granting `permission` on the resource's type reaches it (`content`
    /// is asked for only if a scope is restricted by a query).
    /// `unknown`: the resource is patient data whose patient cannot be determined.
    fn scope_reaches(
        &self,
        permission: Permission,
        reach: Reach,
        resource_type: &str,
        patients: &[String],
        unknown: bool,
        content: impl FnOnce() -> Option<Value>,
    ) -> bool {
        let mut content = Some(content);
        let mut parsed: Option<Option<Value>> = None;
        self.scopes.granting(resource_type, permission).into_iter().any(|scope| {
            let in_context = scope.context != ScopeContext::Patient
                || (!unknown
                    && (reach == Reach::Read || !patients.is_empty())
                    && patients.iter().all(|patient| self.patient_context.as_deref() == Some(patient.as_str())));
            if !in_context {
                return false;
            }
            if scope.restriction.is_empty() {
                return true;
            }
            let resource = parsed.get_or_insert_with(|| content.take().and_then(|content| content()));
            resource.as_ref().is_some_and(|resource| restriction_matches(resource_type, &scope.restriction, resource))
        })
    }

    fn may_write(&self, kind: EntryKind, key: &ResourceKey, before: Option<&Value>, after: Option<&Value>) -> Result<(), String> {
        let permission = match kind {
            EntryKind::Create => Permission::Create,
            EntryKind::Update => Permission::Update,
            EntryKind::Delete | EntryKind::Erase => Permission::Delete,
        };
        self.require(&key.resource_type, permission)?;
        let verdict = self.write_verdict(permission, key, before, after);
        let patients: Vec<String> = [before, after].into_iter().flatten().flat_map(facts::compartment_patients).collect();
        for patient in
            patients.iter().enumerate().filter(|(position, patient)| !patients[..*position].contains(patient)).map(|(_, patient)| patient)
        {
            self.keep(Decided {
                patient: patient.clone(),
                resource: format!("{}/{}", key.resource_type, key.id),
                permit: verdict.is_ok(),
                reason: match &verdict {
                    Ok(()) => Cow::Borrowed("write permitted by the token's scopes"),
                    Err(reason) => Cow::Owned(format!("write refused: {reason}")),
                },
                consent: None,
                emergency: false,
            });
        }
        verdict
    }

    fn write_verdict(
        &self,
        permission: Permission,
        key: &ResourceKey,
        before: Option<&Value>,
        after: Option<&Value>,
    ) -> Result<(), String> {
        if key.resource_type == "Consent" && !self.may_record_consents() {
            return Err("a Consent is written by the patient, a user with a consent-recorder role, or a backend service of a consent-recorder organisation".into());
        }
        for content in [before, after].into_iter().flatten() {
            let patients = facts::compartment_patients(content);
            let unknown = patients.is_empty() && facts::holds_patient_data(&key.resource_type);
            if !self.scope_reaches(permission, Reach::Write, &key.resource_type, &patients, unknown, || Some(content.clone())) {
                return Err(format!(
                    "the access token's {} scopes do not reach this {} (patient/ scopes write only in their patient's compartment; a category the scope excludes)",
                    permission_name(permission),
                    key.resource_type
                ));
            }
            if self.requester.kind == RequesterKind::Patient
                && (unknown || patients.iter().any(|patient| self.requester.patient.as_deref() != Some(patient.as_str())))
            {
                return Err(format!("a patient writes only in their own compartment; this {} belongs to another", key.resource_type));
            }
        }
        Ok(())
    }

    /// Whether this requester may record Consents: the patient (their own, checked with the
    /// compartment), a practitioner or related person with a consent-recorder role, a backend
    /// service of a consent-recorder organisation.
    fn may_record_consents(&self) -> bool {
        match self.requester.kind {
            RequesterKind::Patient => true,
            RequesterKind::Practitioner | RequesterKind::RelatedPerson => {
                self.requester.roles.iter().any(|role| self.shared.consent_recorders.iter().any(|allowed| allowed.matches(role)))
            }
            RequesterKind::System => self
                .requester
                .organization
                .as_deref()
                .is_some_and(|organization| self.shared.consent_recorder_organizations.iter().any(|allowed| allowed == organization)),
        }
    }
}

/// What a `patient/` scope reaches: for reads, its patient's compartment and what is in no
/// patient's compartment (Practitioners, Organizations…); for writes, its patient's compartment only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    Read,
    Write,
}

impl ReadGuard for Access {
    fn admits(&self, interaction: Interaction, version: &StoredVersion, resource: &Value) -> bool {
        self.may_read_content(interaction, version, resource)
    }

    fn admits_known(&self, interaction: Interaction, key: &ResourceKey, version_id: u64) -> Option<bool> {
        let facts = self.shared.facts.get(key, version_id)?;
        let needed_content = std::cell::Cell::new(false);
        let permit = self.judge(interaction, &facts, || {
            needed_content.set(true);
            None
        });
        (permit || !needed_content.get()).then_some(permit)
    }
}

impl WriteGuard for Access {
    fn wants_prior(&self) -> bool {
        true
    }

    fn check(&self, kind: EntryKind, key: &ResourceKey, before: Option<&Value>, after: Option<&Value>) -> Result<(), String> {
        self.may_write(kind, key, before, after)
    }

    fn sees(&self, version: &StoredVersion, content: &Value) -> bool {
        self.may_read_content(Interaction::Read, version, content)
    }

    fn hidden(&self) -> crate::store::StoreError {
        self.refused_read()
    }
}

/// A decision's basis in words, and the Consent that decided.
fn explain(basis: &Basis) -> (&'static str, Option<String>) {
    let consent = |id: &str, version: &Option<String>| match version {
        Some(version) => format!("Consent/{id}/_history/{version}"),
        None => format!("Consent/{id}"),
    };
    match basis {
        Basis::OwnCompartment => ("the patient's own record", None),
        Basis::Consent { id, version } => ("permitted by the patient's Consent", Some(consent(id, version))),
        Basis::AuthorOrganization => ("the organisation that wrote the record, for treatment", None),
        Basis::EmergencyOverride => ("break-the-glass emergency access", None),
        Basis::NoConsent => ("denied: no Consent permits it", None),
        Basis::DeniedByConsent { id, version } => ("denied by the patient's Consent", Some(consent(id, version))),
        Basis::EmergencyRefused => ("denied: break-the-glass without an emergency role or a reason", None),
        Basis::NoPatientCompartment => ("not a patient's record", None),
    }
}

/// Whether `resource` matches a scope's query restriction (none: everything). A restriction the
/// search parser cannot read matches nothing.
fn restriction_matches(resource_type: &str, restriction: &[(String, String)], resource: &Value) -> bool {
    if restriction.is_empty() {
        return true;
    }
    let table = SearchParamTable::r4();
    match parse_query(table, resource_type, restriction, false) {
        Ok(query) => matches(table, &query, resource),
        Err(_) => false,
    }
}

fn permission_name(permission: Permission) -> &'static str {
    match permission {
        Permission::Create => "create (c)",
        Permission::Read => "read (r)",
        Permission::Update => "update (u)",
        Permission::Delete => "delete (d)",
        Permission::Search => "search (s)",
    }
}

/// The requester a token describes. `fhirUser` says who the user is: a caller is the patient
/// only when it names a Patient, or when the token comes from an issuer configured as
/// patient-facing (`--patient-facing-issuer`, whose tokens with only `patient/` scopes and a
/// `patient` claim are the patient's own app). An app launched from an EHR gets `patient/`
/// scopes and a patient context too; without a user it is a backend service, bound by the
/// patient's Consents like any other reader.
fn requester(token: &AccessToken, patient_facing_issuers: &[String]) -> Requester {
    let user = token.fhir_user.clone();
    let user_type = user.as_deref().and_then(|user| user.split_once('/')).map(|(resource_type, _)| resource_type);
    let patient_only = token.scopes.has_context(ScopeContext::Patient)
        && !token.scopes.has_context(ScopeContext::User)
        && !token.scopes.has_context(ScopeContext::System);
    let patient_facing = patient_facing_issuers.contains(&token.issuer);
    let kind = match user_type {
        Some("Patient") => RequesterKind::Patient,
        Some("Practitioner" | "PractitionerRole") => RequesterKind::Practitioner,
        Some("RelatedPerson") => RequesterKind::RelatedPerson,
        None if patient_facing && patient_only && token.patient.is_some() => RequesterKind::Patient,
        _ => RequesterKind::System,
    };
    let patient = match (kind, user.as_deref().and_then(|user| user.strip_prefix("Patient/"))) {
        (RequesterKind::Patient, Some(id)) => Some(id.to_string()),
        _ => token.patient.clone(),
    };
    Requester {
        kind,
        reference: user,
        patient,
        organization: token.organization.as_deref().map(relative_reference),
        roles: token.roles.iter().map(|role| Code::bare(role)).collect(),
        purpose_of_use: token.purpose_of_use.iter().map(|purpose| Code::purpose_of_use(purpose)).collect(),
        emergency_reason: token.break_glass_reason.clone(),
    }
}

/// `https://host/fhir/Practitioner/1` → `Practitioner/1`; relative references unchanged.
fn relative_reference(reference: &str) -> String {
    let parts: Vec<&str> = reference.trim_end_matches('/').rsplitn(3, '/').collect();
    match parts.as_slice() {
        [id, resource_type, _] | [id, resource_type] => format!("{resource_type}/{id}"),
        _ => reference.to_string(),
    }
}
