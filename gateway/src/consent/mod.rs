//! Consent decisions: may this requester perform this interaction on this resource, given the
//! patient's privacy Consents as of now? Pure: no I/O, no clock (the caller passes `now`), no
//! logging, no caching beyond [`ConsentPolicy`], the compiled form of one Consent version (a
//! revoked or edited Consent takes effect on the next request because the caller passes the
//! current versions every time). `docs/CONSENT.md` is the integrator's view of the same rules.
//!
//! [`decide`] answers in this order; the first step that applies gives the [`Decision`]:
//!
//! 1. A resource outside every patient compartment (`facts.patient` is `None`) is no Consent's
//!    business: denied ([`Basis::NoPatientCompartment`]); the caller decides such resources by
//!    scopes alone and should not ask here.
//! 2. A patient acting in their own compartment is permitted ([`Basis::OwnCompartment`], right of
//!    access), whatever their Consents say and for every interaction (whether a patient may
//!    write is a scope question, not a privacy one).
//! 3. Break-the-glass: a *read* whose purpose of use is `ETREAT` or `BTG` (v3-ActReason) is
//!    permitted as [`Basis::EmergencyOverride`] if the requester holds one of
//!    [`DecisionOptions::emergency_roles`] and gives a non-blank reason, and refused as
//!    [`Basis::EmergencyRefused`] otherwise; both set [`Decision::emergency`] so the attempt is
//!    audited. The override ignores Consents (that is what breaking the glass means).
//! 4. The patient's Consents ([`ConsentPolicy`]): only `active` ones whose patient is the
//!    resource's patient count. If any says deny, denied ([`Basis::DeniedByConsent`]); else if any
//!    says permit, permitted ([`Basis::Consent`]). How one Consent decides is in `policy.rs`.
//! 5. The author-organisation default ([`DecisionOptions::author_org_treatment`]): a practitioner
//!    or system client of the organisation that created the record may read it for treatment
//!    (purpose `TREAT` or a specialisation of it): [`Basis::AuthorOrganization`]. A Consent that
//!    denies overrides it (step 4 comes first).
//! 6. Otherwise denied ([`Basis::NoConsent`]): the default is deny.
//!
//! Interactions map to consent actions (http://terminology.hl7.org/CodeSystem/consentaction):
//! read, vread, search and history are `access` and `use`; create, update and delete are
//! `correct`. A read *might* also be `collect` or `disclose` (what the requester does with the
//! data is unknown here), so a provision naming only those is "maybe" for a read (see
//! `policy.rs`: a deny applies, a permit does not).

mod policy;
mod terminology;
#[cfg(test)]
mod tests;

pub use policy::ConsentPolicy;

/// A coded value (`Coding` reduced to what decisions compare). A `None` system in a rule matches
/// any system; a `None` system in a fact only matches rules without a system.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Code {
    pub system: Option<String>,
    pub code: String,
}

impl Code {
    /// A code in the given code system.
    pub fn new(system: &str, code: &str) -> Code {
        Code { system: Some(system.to_string()), code: code.to_string() }
    }

    /// A purpose of use in v3-ActReason (`TREAT`, `ETREAT`, `HRESCH`, …).
    pub fn purpose_of_use(code: &str) -> Code {
        Code::new(terminology::ACT_REASON, code)
    }

    /// A code without a system.
    pub fn bare(code: &str) -> Code {
        Code { system: None, code: code.to_string() }
    }

    /// Whether `value` satisfies this code used as a pattern: same code, and same system unless
    /// the pattern has none.
    pub fn matches(&self, value: &Code) -> bool {
        self.code == value.code && (self.system.is_none() || self.system == value.system)
    }
}

/// Who the requester is, as authentication established it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequesterKind {
    /// A patient (or their app) acting for themselves.
    Patient,
    /// A practitioner (`fhirUser` a Practitioner or PractitionerRole).
    Practitioner,
    /// A relative, carer or other person acting for the patient.
    RelatedPerson,
    /// An organisation-level backend client (SMART `system/` scopes), no individual user.
    System,
}

/// The principal asking. Scopes are checked elsewhere; this is what Consents are matched on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    pub kind: RequesterKind,
    /// The individual, e.g. `Practitioner/123` from `fhirUser` (a relative reference).
    pub reference: Option<String>,
    /// The patient id in context (Patient kind: the patient themselves).
    pub patient: Option<String>,
    /// The requester's organisation, e.g. `Organization/x`.
    pub organization: Option<String>,
    /// The requester's roles (compared with [`DecisionOptions::emergency_roles`]).
    pub roles: Vec<Code>,
    /// Purposes of use (v3-ActReason: `TREAT`, `ETREAT`, `BTG`, `HRESCH`, …).
    pub purpose_of_use: Vec<Code>,
    /// The stated reason for a break-the-glass read.
    pub emergency_reason: Option<String>,
}

/// The FHIR RESTful interaction being decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    Read,
    Vread,
    Search,
    History,
    Create,
    Update,
    Delete,
}

impl Interaction {
    /// Read, vread, search and history: the interactions that disclose content.
    pub fn is_read(self) -> bool {
        matches!(self, Interaction::Read | Interaction::Vread | Interaction::Search | Interaction::History)
    }
}

/// What the caller knows about the resource the interaction touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceFacts {
    pub resource_type: String,
    /// `Type/id`, e.g. `Observation/123`.
    pub reference: String,
    /// The id of the patient whose compartment holds the resource; `None`: no patient's.
    pub patient: Option<String>,
    /// `category` codes (e.g. observation-category `vital-signs`).
    pub categories: Vec<Code>,
    /// `code` codes (e.g. LOINC).
    pub codes: Vec<Code>,
    /// `meta.security` labels.
    pub security_labels: Vec<Code>,
    /// The organisation that created the record, e.g. `Organization/x`.
    pub author_organization: Option<String>,
    /// The clinically relevant time of the data (effective, onset, authored …) as an inclusive
    /// range of Unix milliseconds; `None` if the resource has none.
    pub data_time: Option<(i64, i64)>,
}

/// Gateway-wide settings of the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionOptions {
    /// The organisation that created a record may read it for treatment (default on).
    pub author_org_treatment: bool,
    /// Roles allowed to break the glass (default none: nobody can until configured). A role
    /// without a system matches the requester's role code in any system.
    pub emergency_roles: Vec<Code>,
}

impl Default for DecisionOptions {
    fn default() -> DecisionOptions {
        DecisionOptions { author_org_treatment: true, emergency_roles: Vec::new() }
    }
}

/// The answer, with the reason it was given (for the audit trail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub permit: bool,
    pub basis: Basis,
    /// A break-the-glass read was requested (granted or refused); audit it as such.
    pub emergency: bool,
}

/// Why a [`Decision`] came out the way it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Basis {
    /// Permit: the patient reads their own compartment.
    OwnCompartment,
    /// Permit: this Consent (id, `meta.versionId`) permits it.
    Consent { id: String, version: Option<String> },
    /// Permit: the author organisation reads its own record for treatment.
    AuthorOrganization,
    /// Permit: break-the-glass by a requester with an emergency role and a reason.
    EmergencyOverride,
    /// Deny: nothing permits it (the default).
    NoConsent,
    /// Deny: this Consent denies it (deny wins over every permit).
    DeniedByConsent { id: String, version: Option<String> },
    /// Deny: break-the-glass without an emergency role or without a reason.
    EmergencyRefused,
    /// Deny: the resource is in no patient compartment; Consents do not govern it.
    NoPatientCompartment,
}

/// Decides one interaction on one resource. `policies` are the patient's compiled Consents (any
/// others are ignored), `now_ms` the current time in Unix milliseconds. Allocates only for the
/// Consent id in the returned [`Basis`].
pub fn decide(
    requester: &Requester,
    interaction: Interaction,
    facts: &ResourceFacts,
    policies: &[ConsentPolicy],
    now_ms: i64,
    options: &DecisionOptions,
) -> Decision {
    let Some(patient) = facts.patient.as_deref() else {
        return Decision::deny(Basis::NoPatientCompartment);
    };
    // Only a real id is anybody's own compartment: markers such as the undeterminable patient's
    // (not a FHIR id) match no requester, whatever its claims say.
    if requester.kind == RequesterKind::Patient && requester.patient.as_deref() == Some(patient) && crate::fhir::is_valid_id(patient) {
        return Decision::permit(Basis::OwnCompartment);
    }
    if interaction.is_read() && requester.purpose_of_use.iter().any(terminology::is_break_the_glass_purpose) {
        let has_role = requester.roles.iter().any(|role| options.emergency_roles.iter().any(|allowed| allowed.matches(role)));
        let has_reason = requester.emergency_reason.as_deref().is_some_and(|reason| !reason.trim().is_empty());
        let basis = if has_role && has_reason { Basis::EmergencyOverride } else { Basis::EmergencyRefused };
        return Decision { permit: has_role && has_reason, basis, emergency: true };
    }

    let request = policy::Request { requester, interaction, facts, now_ms };
    let mut permitted_by: Option<&ConsentPolicy> = None;
    for policy in policies.iter().filter(|policy| policy.is_active() && policy.patient() == patient) {
        match policy.verdict(&request) {
            policy::Verdict::Deny => {
                return Decision::deny(Basis::DeniedByConsent {
                    id: policy.id().to_string(),
                    version: policy.version().map(str::to_string),
                });
            }
            policy::Verdict::Permit => permitted_by = permitted_by.or(Some(policy)),
            policy::Verdict::NotApplicable => {}
        }
    }
    if let Some(policy) = permitted_by {
        return Decision::permit(Basis::Consent { id: policy.id().to_string(), version: policy.version().map(str::to_string) });
    }

    if options.author_org_treatment && is_author_organization_treatment(requester, interaction, facts) {
        return Decision::permit(Basis::AuthorOrganization);
    }
    Decision::deny(Basis::NoConsent)
}

/// A practitioner or system client of the record's author organisation, reading for treatment.
fn is_author_organization_treatment(requester: &Requester, interaction: Interaction, facts: &ResourceFacts) -> bool {
    interaction.is_read()
        && matches!(requester.kind, RequesterKind::Practitioner | RequesterKind::System)
        && requester.organization.is_some()
        && requester.organization == facts.author_organization
        && requester.purpose_of_use.iter().any(terminology::is_treatment)
}

impl Decision {
    fn permit(basis: Basis) -> Decision {
        Decision { permit: true, basis, emergency: false }
    }

    fn deny(basis: Basis) -> Decision {
        Decision { permit: false, basis, emergency: false }
    }
}
