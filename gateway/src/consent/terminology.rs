//! The few code systems consent decisions understand, and their hierarchies.

use super::Code;

pub(super) const CONSENT_SCOPE: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
pub(super) const CONSENT_ACTION: &str = "http://terminology.hl7.org/CodeSystem/consentaction";
pub(super) const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
pub(super) const PARTICIPATION_TYPE: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
pub(super) const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
pub(super) const RESOURCE_TYPES: &str = "http://hl7.org/fhir/resource-types";

/// The PurposeOfUse part of v3-ActReason (4.0.1) as (child, parent), sorted by child. Top-level
/// purposes (`TREAT`, `HRESCH`, `HOPERAT`, `HPAYMT`, `HMARKT`, `PATRQT`, `PUBHLTH`) have no entry.
const PURPOSE_PARENTS: [(&str, &str); 52] = [
    ("BIORCH", "HRESCH"),
    ("BTG", "ETREAT"),
    ("CAREMGT", "HOPERAT"),
    ("CLINTRCH", "HRESCH"),
    ("CLINTRCHNPC", "CLINTRCH"),
    ("CLINTRCHPC", "CLINTRCH"),
    ("CLINTRL", "TREAT"),
    ("CLMATTCH", "HPAYMT"),
    ("COC", "TREAT"),
    ("COVAUTH", "HPAYMT"),
    ("COVERAGE", "HPAYMT"),
    ("DISASTER", "PUBHLTH"),
    ("DONAT", "HOPERAT"),
    ("DSRCH", "HRESCH"),
    ("ELIGDTRM", "COVERAGE"),
    ("ELIGVER", "COVERAGE"),
    ("ENROLLM", "COVERAGE"),
    ("ERTREAT", "ETREAT"),
    ("ETREAT", "TREAT"),
    ("FAMRQT", "PATRQT"),
    ("FRAUD", "HOPERAT"),
    ("GOV", "HOPERAT"),
    ("HACCRED", "HOPERAT"),
    ("HCOMPL", "HOPERAT"),
    ("HDECD", "HOPERAT"),
    ("HDIRECT", "HOPERAT"),
    ("HDM", "HOPERAT"),
    ("HLEGAL", "HOPERAT"),
    ("HOUTCOMS", "HOPERAT"),
    ("HPRGRP", "HOPERAT"),
    ("HQUALIMP", "HOPERAT"),
    ("HSYSADMIN", "HOPERAT"),
    ("HTEST", "SYSDEV"),
    ("LABELING", "HSYSADMIN"),
    ("MEMADMIN", "HOPERAT"),
    ("METAMGT", "HSYSADMIN"),
    ("MILCDM", "HOPERAT"),
    ("MILDCRG", "COVERAGE"),
    ("PATADMIN", "HOPERAT"),
    ("PATSFTY", "HOPERAT"),
    ("PERFMSR", "HOPERAT"),
    ("POARCH", "HRESCH"),
    ("POPHLTH", "TREAT"),
    ("PRECLINTRCH", "CLINTRCH"),
    ("PWATRNY", "PATRQT"),
    ("RECORDMGT", "HOPERAT"),
    ("REMITADV", "HPAYMT"),
    ("SUPNWK", "PATRQT"),
    ("SYSDEV", "HOPERAT"),
    ("THREAT", "PUBHLTH"),
    ("TRAIN", "HOPERAT"),
    ("TRANSRCH", "HRESCH"),
];

/// v3-Confidentiality from least to most restricted; a label covers every level below it.
const CONFIDENTIALITY_ORDER: [&str; 6] = ["U", "L", "M", "N", "R", "V"];

fn in_system(code: &Code, system: &str) -> bool {
    code.system.as_deref().is_none_or(|own| own == system)
}

/// Whether `code` (a v3-ActReason code, or a code without system) is `ancestor` or below it.
fn act_reason_is_a(code: &Code, ancestor: &str) -> bool {
    if !in_system(code, ACT_REASON) {
        return false;
    }
    let mut current = code.code.as_str();
    // The table is four levels deep at most; the bound guards against a malformed table.
    for _ in 0..8 {
        if current == ancestor {
            return true;
        }
        match PURPOSE_PARENTS.binary_search_by(|(child, _)| (*child).cmp(current)) {
            Ok(index) => current = PURPOSE_PARENTS[index].1,
            Err(_) => return false,
        }
    }
    false
}

/// Whether the requested purpose `value` falls under the rule's purpose `pattern`: equal, or a
/// specialisation of it in v3-ActReason (`ETREAT` is a kind of `TREAT`, `CLINTRCH` of `HRESCH`).
pub(super) fn purpose_is_a(value: &Code, pattern: &Code) -> bool {
    if in_system(pattern, ACT_REASON) && in_system(value, ACT_REASON) {
        act_reason_is_a(value, &pattern.code)
    } else {
        pattern.matches(value)
    }
}

/// Treatment, or a specialisation of it (`ETREAT`, `COC`, …).
pub(super) fn is_treatment(purpose: &Code) -> bool {
    act_reason_is_a(purpose, "TREAT")
}

/// `ETREAT` or `BTG`: the purposes that ask to break the glass.
pub(super) fn is_break_the_glass_purpose(purpose: &Code) -> bool {
    in_system(purpose, ACT_REASON) && (purpose.code == "ETREAT" || purpose.code == "BTG")
}

/// Whether a rule's security label `pattern` covers the resource's `label`: equal, or for
/// v3-Confidentiality the label is at or below the pattern's level (FHIR: a rule on `R` applies
/// to everything labelled `R` or lower).
pub(super) fn security_label_covers(pattern: &Code, label: &Code) -> bool {
    let rank = |code: &Code| {
        (code.system.as_deref() == Some(CONFIDENTIALITY))
            .then(|| CONFIDENTIALITY_ORDER.iter().position(|level| *level == code.code))
            .flatten()
    };
    match (rank(pattern), rank(label)) {
        (Some(pattern_rank), Some(label_rank)) => label_rank <= pattern_rank,
        _ => pattern.matches(label),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purpose_table_is_sorted_for_binary_search() {
        assert!(PURPOSE_PARENTS.windows(2).all(|pair| pair[0].0 < pair[1].0));
    }

    #[test]
    fn purposes_are_compared_through_the_hierarchy() {
        let treat = Code::new(ACT_REASON, "TREAT");
        assert!(purpose_is_a(&Code::new(ACT_REASON, "BTG"), &treat));
        assert!(purpose_is_a(&Code::bare("ETREAT"), &treat));
        assert!(!purpose_is_a(&treat, &Code::new(ACT_REASON, "ETREAT")));
        assert!(!purpose_is_a(&Code::new(ACT_REASON, "HRESCH"), &treat));
        assert!(!purpose_is_a(&Code::new("http://example.org/purposes", "TREAT"), &treat));
    }

    #[test]
    fn confidentiality_is_a_high_water_mark() {
        let restricted = Code::new(CONFIDENTIALITY, "R");
        assert!(security_label_covers(&restricted, &Code::new(CONFIDENTIALITY, "N")));
        assert!(security_label_covers(&restricted, &Code::new(CONFIDENTIALITY, "R")));
        assert!(!security_label_covers(&restricted, &Code::new(CONFIDENTIALITY, "V")));
        assert!(!security_label_covers(&Code::new(CONFIDENTIALITY, "N"), &Code::new("http://example.org", "N")));
    }
}
