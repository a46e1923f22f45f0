//! One Consent version compiled into a cheap-to-evaluate tree of provisions, and how it decides.
//!
//! **What compiles.** A `Consent` with an `id`, a `status`, `scope` patient-privacy
//! (http://terminology.hl7.org/CodeSystem/consentscope) and `patient` a local `Patient/id`
//! reference. Anything else is an `Err` with the reason: the Consent is not one this module can
//! apply to anybody (another scope, no patient, a patient on another server), and the caller
//! ignores it. Every status compiles; only `active` Consents take part in decisions. Problems
//! *inside* the provisions do not fail compilation: the criterion they affect becomes "maybe"
//! (below), so a damaged Consent fails closed instead of being dropped.
//!
//! **How one Consent decides.** Each provision's criteria are matched against the request; a
//! criterion the provision leaves out matches anything. Nested provisions are exceptions and
//! are only looked at when their parent matches (they inherit its criteria). On every branch the
//! deepest matching provision decides; if the deciding provisions disagree, deny wins (within a
//! Consent as across Consents). `type` missing (FHIR R4 forbids it on the root, yet 9 of the 12
//! official examples omit it and mean opposite things by it) or unknown counts as **deny**:
//! `policyRule` OPTIN/OPTOUT is not read, because the official "withhold" examples say OPTIN.
//!
//! **Maybe.** Some criteria cannot be checked with what the gateway knows about one request. They
//! evaluate to *maybe*, and the rule is: a permit needs every criterion on its path to be a
//! certain yes; a deny applies unless some criterion is a certain no. When in doubt, deny. Maybe:
//! - `actor` referencing a Group, CareTeam, PractitionerRole or anything but a local
//!   `Type/id` (group membership is not resolved), or a requester whose identity is not known
//!   (no `reference` to compare an individual with, no `organization` for an Organization);
//! - `actor` with role `CST` (custodian) or `AUT` (author): these name where the *data* comes
//!   from, not who reads it, and are compared with `ResourceFacts::author_organization`; maybe if
//!   that is unknown or the actor is not an Organization (individual authors are not known);
//! - `class` not in http://hl7.org/fhir/resource-types (profile URLs, `urn:ietf:bcp:13` MIME
//!   types); a bare code that is an R4 resource type counts as one;
//! - `action` `collect` or `disclose` for a read, or an action in another system;
//! - `purpose` when the requester states no purpose of use;
//! - `dataPeriod` when the resource has no data time, or overlaps it only partly;
//! - `data` with meaning `related` or `dependents` for any resource but the referenced instance
//!   itself, `authoredby` unless the author organisation is the one referenced, a versioned
//!   (`…/_history/n`) reference, or any reference that is not a local `Type/id`;
//! - an entry with no code (a CodeableConcept with text only), an unreadable date.
//!
//! Certain criteria: `period` (in force at `now`), `actor` recipients (the requester's
//! `reference`, or its `organization` for an Organization actor), `class` resource types,
//! `code` (against the resource's codes and categories), `securityLabel` (v3-Confidentiality as a
//! high-water mark: `R` covers `U` … `R`), `purpose` (v3-ActReason specialisations count:
//! `TREAT` covers `ETREAT`), `data` with meaning `instance`.
//!
//! Several `actor`s: recipient actors are alternatives, data-source actors (`CST`, `AUT`) are
//! alternatives, and a provision with both kinds needs one of each ("Org X's records, to Dr Y").
//! Actor roles are not compared with the requester's own roles: R4 actor roles say *how* the
//! actor takes part (recipient, custodian, author), not a job title.

use serde_json::Value;

use super::terminology::{self, CONSENT_ACTION, CONSENT_SCOPE, PARTICIPATION_TYPE, RESOURCE_TYPES};
use super::{Code, Interaction, Requester, RequesterKind, ResourceFacts};
use crate::fhir::resource_type::is_resource_type;
use crate::search::datetime::parse_date_range;
use crate::search::reference::is_valid_id;

/// One Consent version, compiled. Cheap to evaluate: dates are parsed into millisecond ranges,
/// references normalised, codes extracted; nothing allocates during evaluation.
#[derive(Debug, Clone)]
pub struct ConsentPolicy {
    id: String,
    version: Option<String>,
    status: String,
    /// The id of the patient the Consent is about.
    patient: String,
    /// `None`: a Consent without provisions, which never decides anything.
    root: Option<Provision>,
}

impl ConsentPolicy {
    /// Compiles one Consent resource; `Err` names why it cannot be applied (see the module docs).
    pub fn compile(consent: &Value) -> Result<ConsentPolicy, String> {
        if consent.get("resourceType").and_then(Value::as_str) != Some("Consent") {
            return Err("not a Consent resource".to_string());
        }
        let id = consent.get("id").and_then(Value::as_str).ok_or("Consent has no id")?.to_string();
        let version = consent.pointer("/meta/versionId").and_then(Value::as_str).map(str::to_string);
        let status = consent.get("status").and_then(Value::as_str).ok_or_else(|| format!("Consent/{id} has no status"))?.to_string();
        let scope = concepts(list_or_one(consent.get("scope")));
        if !scope.codes.iter().any(|code| code.system.as_deref() == Some(CONSENT_SCOPE) && code.code == "patient-privacy") {
            return Err(format!("Consent/{id}: scope is not patient-privacy ({CONSENT_SCOPE}), so it grants and withholds no access"));
        }
        let patient = consent
            .pointer("/patient/reference")
            .and_then(Value::as_str)
            .and_then(LocalReference::parse)
            .and_then(|reference| reference.type_and_id.strip_prefix("Patient/").map(str::to_string))
            .ok_or_else(|| format!("Consent/{id}: patient is not a local Patient/id reference"))?;
        let root = consent.get("provision").map(Provision::compile);
        Ok(ConsentPolicy { id, version, status, patient, root })
    }

    /// `Consent.id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `Consent.meta.versionId`, if the resource had one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// `Consent.status` (`active`, `inactive`, `proposed`, …).
    pub fn status(&self) -> &str {
        &self.status
    }

    /// Whether the Consent takes part in decisions (status `active`).
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }

    /// The id of the patient the Consent is about (`Patient/<id>`).
    pub fn patient(&self) -> &str {
        &self.patient
    }

    /// What this Consent says about the request (status and patient are the caller's to check).
    pub(super) fn verdict(&self, request: &Request) -> Verdict {
        self.root.as_ref().map_or(Verdict::NotApplicable, |root| root.verdict(Fit::Yes, request))
    }
}

/// The request as the provisions see it.
pub(super) struct Request<'a> {
    pub requester: &'a Requester,
    pub interaction: Interaction,
    pub facts: &'a ResourceFacts,
    pub now_ms: i64,
}

/// What a Consent (or a provision subtree) says. Ordered so that combining is `max`: deny wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Verdict {
    NotApplicable,
    Permit,
    Deny,
}

/// Three-valued match. Ordered so that "all of" is `min` and "any of" is `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fit {
    No,
    Maybe,
    Yes,
}

impl Fit {
    fn from_bool(matched: bool) -> Fit {
        if matched { Fit::Yes } else { Fit::No }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Permit,
    Deny,
}

/// A time range in Unix milliseconds (inclusive), or a date that could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeRange {
    Known { start_ms: i64, end_ms: i64 },
    Unreadable,
}

/// The codes of a repeated CodeableConcept or Coding element. `uncoded`: some entry had no code
/// (text only), so the criterion can be neither confirmed nor ruled out by that entry.
#[derive(Debug, Clone, Default)]
struct Codings {
    codes: Vec<Code>,
    uncoded: bool,
}

impl Codings {
    /// "Any of" over the entries; an absent element matches anything.
    fn fit(&self, fit_one: impl Fn(&Code) -> Fit) -> Fit {
        if self.codes.is_empty() && !self.uncoded {
            return Fit::Yes;
        }
        let uncoded = if self.uncoded { Fit::Maybe } else { Fit::No };
        self.codes.iter().map(fit_one).fold(uncoded, Fit::max)
    }
}

/// Whether an actor names who receives the data or where the data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActorSide {
    Recipient,
    DataSource,
}

#[derive(Debug, Clone)]
struct Actor {
    side: ActorSide,
    /// `Type/id`; `None` if the reference is not a local one (absolute, contained, identifier).
    target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataMeaning {
    Instance,
    Related,
    Dependents,
    AuthoredBy,
    Unknown,
}

#[derive(Debug, Clone)]
struct DataItem {
    meaning: DataMeaning,
    target: Option<LocalReference>,
}

#[derive(Debug, Clone)]
struct Provision {
    effect: Effect,
    period: Option<TimeRange>,
    actors: Vec<Actor>,
    actions: Codings,
    purposes: Codings,
    classes: Codings,
    codes: Codings,
    security_labels: Codings,
    data_period: Option<TimeRange>,
    data: Vec<DataItem>,
    provisions: Vec<Provision>,
}

type Criterion = fn(&Provision, &Request) -> Fit;

impl Provision {
    /// The criteria, cheapest first; evaluation stops at the first certain no.
    const CRITERIA: [Criterion; 9] = [
        Provision::period_fit,
        Provision::actions_fit,
        Provision::classes_fit,
        Provision::purposes_fit,
        Provision::actors_fit,
        Provision::data_fit,
        Provision::codes_fit,
        Provision::security_labels_fit,
        Provision::data_period_fit,
    ];

    fn compile(provision: &Value) -> Provision {
        Provision {
            effect: match provision.get("type").and_then(Value::as_str) {
                Some("permit") => Effect::Permit,
                _ => Effect::Deny,
            },
            period: provision.get("period").map(compile_period),
            actors: list(provision, "actor").iter().map(compile_actor).collect(),
            actions: concepts(list(provision, "action")),
            purposes: codings(list(provision, "purpose")),
            classes: codings(list(provision, "class")),
            codes: concepts(list(provision, "code")),
            security_labels: codings(list(provision, "securityLabel")),
            data_period: provision.get("dataPeriod").map(compile_period),
            data: list(provision, "data").iter().map(compile_data_item).collect(),
            provisions: list(provision, "provision").iter().map(Provision::compile).collect(),
        }
    }

    /// The deepest applicable provisions of this subtree, combined (deny wins). `inherited`: how
    /// well the ancestors' criteria matched.
    fn verdict(&self, inherited: Fit, request: &Request) -> Verdict {
        let fit = inherited.min(self.fit(request));
        if fit == Fit::No {
            return Verdict::NotApplicable;
        }
        let nested = self.provisions.iter().map(|provision| provision.verdict(fit, request)).fold(Verdict::NotApplicable, Verdict::max);
        if nested != Verdict::NotApplicable {
            return nested;
        }
        match self.effect {
            Effect::Deny => Verdict::Deny,
            Effect::Permit if fit == Fit::Yes => Verdict::Permit,
            Effect::Permit => Verdict::NotApplicable,
        }
    }

    fn fit(&self, request: &Request) -> Fit {
        let mut fit = Fit::Yes;
        for criterion in Provision::CRITERIA {
            fit = fit.min(criterion(self, request));
            if fit == Fit::No {
                break;
            }
        }
        fit
    }

    fn period_fit(&self, request: &Request) -> Fit {
        match self.period {
            None => Fit::Yes,
            Some(TimeRange::Unreadable) => Fit::Maybe,
            Some(TimeRange::Known { start_ms, end_ms }) => Fit::from_bool(start_ms <= request.now_ms && request.now_ms <= end_ms),
        }
    }

    fn actions_fit(&self, request: &Request) -> Fit {
        self.actions.fit(|action| {
            if action.system.as_deref().is_some_and(|system| system != CONSENT_ACTION) {
                return Fit::Maybe;
            }
            match (request.interaction.is_read(), action.code.as_str()) {
                (true, "access" | "use") | (false, "correct") => Fit::Yes,
                (true, "collect" | "disclose") => Fit::Maybe,
                _ => Fit::No,
            }
        })
    }

    fn classes_fit(&self, request: &Request) -> Fit {
        self.classes.fit(|class| match class.system.as_deref() {
            Some(RESOURCE_TYPES) => Fit::from_bool(class.code == request.facts.resource_type),
            None if is_resource_type(&class.code) => Fit::from_bool(class.code == request.facts.resource_type),
            _ => Fit::Maybe,
        })
    }

    fn purposes_fit(&self, request: &Request) -> Fit {
        let stated = &request.requester.purpose_of_use;
        self.purposes.fit(|pattern| {
            if stated.is_empty() {
                Fit::Maybe
            } else {
                Fit::from_bool(stated.iter().any(|purpose| terminology::purpose_is_a(purpose, pattern)))
            }
        })
    }

    fn actors_fit(&self, request: &Request) -> Fit {
        let mut recipients = None::<Fit>;
        let mut sources = None::<Fit>;
        for actor in &self.actors {
            let target = actor.target.as_deref();
            let (slot, fit) = match actor.side {
                ActorSide::Recipient => (&mut recipients, recipient_fit(target, request.requester)),
                ActorSide::DataSource => (&mut sources, data_source_fit(target, request.facts)),
            };
            *slot = Some(slot.map_or(fit, |so_far| so_far.max(fit)));
        }
        recipients.unwrap_or(Fit::Yes).min(sources.unwrap_or(Fit::Yes))
    }

    fn data_fit(&self, request: &Request) -> Fit {
        if self.data.is_empty() {
            return Fit::Yes;
        }
        self.data.iter().map(|item| data_item_fit(item, request.facts)).fold(Fit::No, Fit::max)
    }

    fn codes_fit(&self, request: &Request) -> Fit {
        let facts = request.facts;
        self.codes.fit(|pattern| Fit::from_bool(facts.codes.iter().chain(&facts.categories).any(|code| pattern.matches(code))))
    }

    fn security_labels_fit(&self, request: &Request) -> Fit {
        let labels = &request.facts.security_labels;
        self.security_labels.fit(|pattern| Fit::from_bool(labels.iter().any(|label| terminology::security_label_covers(pattern, label))))
    }

    fn data_period_fit(&self, request: &Request) -> Fit {
        match (self.data_period, request.facts.data_time) {
            (None, _) => Fit::Yes,
            (Some(TimeRange::Unreadable), _) | (Some(_), None) => Fit::Maybe,
            (Some(TimeRange::Known { start_ms, end_ms }), Some((data_start, data_end))) => {
                if start_ms <= data_start && data_end <= end_ms {
                    Fit::Yes
                } else if start_ms <= data_end && data_start <= end_ms {
                    Fit::Maybe
                } else {
                    Fit::No
                }
            }
        }
    }
}

/// Whether the requester is the recipient actor `target`.
fn recipient_fit(target: Option<&str>, requester: &Requester) -> Fit {
    let Some(target) = target else { return Fit::Maybe };
    let is_patient = requester.kind == RequesterKind::Patient;
    let own_patient = requester.patient.as_deref().filter(|_| is_patient);
    if requester.reference.as_deref() == Some(target) || own_patient.is_some_and(|id| target.strip_prefix("Patient/") == Some(id)) {
        return Fit::Yes;
    }
    let identity_known = requester.reference.is_some() || own_patient.is_some();
    match target.split_once('/').map_or("", |(resource_type, _)| resource_type) {
        "Organization" => match requester.organization.as_deref() {
            Some(organization) => Fit::from_bool(organization == target),
            None if matches!(requester.kind, RequesterKind::Patient | RequesterKind::RelatedPerson) => Fit::No,
            None => Fit::Maybe,
        },
        "Practitioner" | "Patient" | "RelatedPerson" | "Device" if identity_known => Fit::No,
        _ => Fit::Maybe,
    }
}

/// Whether the resource comes from the data-source actor `target` (custodian or author).
fn data_source_fit(target: Option<&str>, facts: &ResourceFacts) -> Fit {
    match (target, facts.author_organization.as_deref()) {
        (Some(target), Some(author)) if target.starts_with("Organization/") => Fit::from_bool(author == target),
        _ => Fit::Maybe,
    }
}

fn data_item_fit(item: &DataItem, facts: &ResourceFacts) -> Fit {
    let Some(target) = &item.target else { return Fit::Maybe };
    let same_instance = target.type_and_id == facts.reference;
    match item.meaning {
        DataMeaning::Instance if !same_instance => Fit::No,
        DataMeaning::Instance | DataMeaning::Related | DataMeaning::Dependents if same_instance && !target.versioned => Fit::Yes,
        DataMeaning::AuthoredBy if facts.author_organization.as_deref() == Some(target.type_and_id.as_str()) => Fit::Yes,
        _ => Fit::Maybe,
    }
}

/// A local reference `Type/id` or `Type/id/_history/v`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LocalReference {
    type_and_id: String,
    versioned: bool,
}

impl LocalReference {
    fn parse(text: &str) -> Option<LocalReference> {
        let mut segments = text.split('/');
        let (resource_type, id) = (segments.next()?, segments.next()?);
        let versioned = match (segments.next(), segments.next(), segments.next()) {
            (None, _, _) => false,
            (Some("_history"), Some(version), None) if !version.is_empty() => true,
            _ => return None,
        };
        (is_resource_type(resource_type) && is_valid_id(id))
            .then(|| LocalReference { type_and_id: format!("{resource_type}/{id}"), versioned })
    }
}

fn compile_period(period: &Value) -> TimeRange {
    let bound = |key: &str| match period.get(key) {
        None => Some(None),
        Some(value) => value.as_str().and_then(parse_date_range).map(Some),
    };
    match (period.is_object(), bound("start"), bound("end")) {
        (true, Some(start), Some(end)) => TimeRange::Known {
            start_ms: start.map_or(i64::MIN, |range| range.start_ms),
            end_ms: end.map_or(i64::MAX, |range| range.end_ms),
        },
        _ => TimeRange::Unreadable,
    }
}

fn compile_actor(actor: &Value) -> Actor {
    let roles = concepts(list_or_one(actor.get("role")));
    let is_data_source = roles
        .codes
        .iter()
        .any(|role| role.system.as_deref().is_none_or(|system| system == PARTICIPATION_TYPE) && (role.code == "CST" || role.code == "AUT"));
    Actor {
        side: if is_data_source { ActorSide::DataSource } else { ActorSide::Recipient },
        target: reference_at(actor).map(|reference| reference.type_and_id),
    }
}

fn compile_data_item(item: &Value) -> DataItem {
    let meaning = match item.get("meaning").and_then(Value::as_str) {
        Some("instance") => DataMeaning::Instance,
        Some("related") => DataMeaning::Related,
        Some("dependents") => DataMeaning::Dependents,
        Some("authoredby") => DataMeaning::AuthoredBy,
        _ => DataMeaning::Unknown,
    };
    DataItem { meaning, target: reference_at(item) }
}

/// `element.reference.reference` as a local reference.
fn reference_at(element: &Value) -> Option<LocalReference> {
    element.pointer("/reference/reference").and_then(Value::as_str).and_then(LocalReference::parse)
}

/// The entries of a repeated element (a lone non-array value counts as one entry).
fn list<'a>(object: &'a Value, key: &str) -> &'a [Value] {
    list_or_one(object.get(key))
}

fn list_or_one(value: Option<&Value>) -> &[Value] {
    match value {
        None => &[],
        Some(Value::Array(items)) => items,
        Some(item) => std::slice::from_ref(item),
    }
}

fn coding(coding: &Value) -> Option<Code> {
    let code = coding.get("code").and_then(Value::as_str)?;
    Some(Code { system: coding.get("system").and_then(Value::as_str).map(str::to_string), code: code.to_string() })
}

/// Codes of a list of Codings.
fn codings(items: &[Value]) -> Codings {
    let mut result = Codings::default();
    for item in items {
        match coding(item) {
            Some(code) => result.codes.push(code),
            None => result.uncoded = true,
        }
    }
    result
}

/// Codes of a list of CodeableConcepts (any coding of a concept may match).
fn concepts(items: &[Value]) -> Codings {
    let mut result = Codings::default();
    for concept in items {
        let before = result.codes.len();
        result.codes.extend(list(concept, "coding").iter().filter_map(coding));
        result.uncoded |= result.codes.len() == before;
    }
    result
}
