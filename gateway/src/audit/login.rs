//! Failed authentications (requests answered `401`), recorded without letting a flood of bad
//! tokens flood the trail: per reason and window of [`WINDOW`], the first refusal is recorded at
//! once and the rest are counted, then recorded as one event naming how many there were. At most
//! [`MAX_REASONS`] reasons are told apart per window (the reasons are the gateway's own fixed
//! messages; beyond that they share one count). Pure: the caller passes the time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{AuditRecord, Outcome};

/// How long refusals are grouped.
pub const WINDOW: Duration = Duration::from_secs(10);
const MAX_REASONS: usize = 32;
const OTHER_REASONS: &str = "other reasons";

/// The `interaction` of a failed-authentication record (rendered as DICOM "User Authentication",
/// subtype "Login", by [`super::audit_event`]).
pub const LOGIN: &str = "login";

#[derive(Default)]
pub struct LoginFailures {
    window: Mutex<Option<Window>>,
}

struct Window {
    started: Instant,
    started_text: String,
    /// (reason, refusals after the first, which was recorded at once)
    counts: Vec<(String, u64)>,
}

impl LoginFailures {
    /// One refused request, at `now` (`recorded`: the same instant as FHIR text). Returns what to
    /// record now: the refusal itself if it is the first of its reason in this window, and the
    /// counts of a window that has ended.
    pub fn refused(&self, reason: &str, now: Instant, recorded: &str) -> Vec<AuditRecord> {
        let mut window = self.window.lock().expect("login failures lock");
        let mut out = match window.as_ref() {
            Some(current) if now.duration_since(current.started) < WINDOW => Vec::new(),
            _ => window.take().map(|ended| ended.summaries(recorded)).unwrap_or_default(),
        };
        let current = window.get_or_insert_with(|| Window { started: now, started_text: recorded.to_string(), counts: Vec::new() });
        let reason = if current.counts.len() < MAX_REASONS || current.counts.iter().any(|(known, _)| known == reason) {
            reason
        } else {
            OTHER_REASONS
        };
        match current.counts.iter_mut().find(|(known, _)| known == reason) {
            Some((_, count)) => *count += 1,
            None => {
                current.counts.push((reason.to_string(), 0));
                out.push(record(format!("authentication failed: {reason}"), recorded));
            }
        }
        out
    }

    /// The counts of a window that has ended by `now` (called periodically, so that the last
    /// refusals before a quiet spell are recorded too).
    pub fn ended(&self, now: Instant, recorded: &str) -> Vec<AuditRecord> {
        let mut window = self.window.lock().expect("login failures lock");
        match window.as_ref() {
            Some(current) if now.duration_since(current.started) >= WINDOW => {
                window.take().map(|ended| ended.summaries(recorded)).unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }
}

impl Window {
    fn summaries(self, recorded: &str) -> Vec<AuditRecord> {
        self.counts
            .into_iter()
            .filter(|(_, more)| *more > 0)
            .map(|(reason, more)| record(format!("authentication failed: {reason}; {more} more since {}", self.started_text), recorded))
            .collect()
    }
}

fn record(outcome_description: String, recorded: &str) -> AuditRecord {
    AuditRecord {
        interaction: LOGIN.into(),
        action: "E".into(),
        recorded: recorded.to_string(),
        outcome: Outcome::Refused,
        outcome_description,
        who: None,
        client_id: None,
        organization: None,
        purpose_of_use: Vec::new(),
        patient: None,
        resources: Vec::new(),
        consent: None,
        query: None,
        emergency: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_refusal_of_a_reason_is_recorded_at_once_and_the_rest_as_one_count() {
        let failures = LoginFailures::default();
        let start = Instant::now();
        assert_eq!(failures.refused("expired", start, "t0").len(), 1);
        for second in 1..=5 {
            assert!(failures.refused("expired", start + Duration::from_secs(second), "t").is_empty());
        }
        assert_eq!(failures.refused("bad signature", start + Duration::from_secs(6), "t").len(), 1);
        assert!(failures.ended(start + Duration::from_secs(9), "t").is_empty(), "the window is still open");
        let summaries = failures.ended(start + WINDOW, "t1");
        assert_eq!(summaries.len(), 1, "only the reason with more refusals: {summaries:?}");
        assert_eq!(summaries[0].outcome_description, "authentication failed: expired; 5 more since t0");
        assert!(failures.ended(start + WINDOW * 2, "t2").is_empty());
    }

    #[test]
    fn a_flood_of_distinct_reasons_is_bounded_per_window() {
        let failures = LoginFailures::default();
        let start = Instant::now();
        let recorded: usize = (0..10_000).map(|n| failures.refused(&format!("reason {n}"), start, "t").len()).sum();
        assert_eq!(recorded, MAX_REASONS + 1, "32 reasons and one for the rest");
        let summaries = failures.ended(start + WINDOW, "t");
        assert_eq!(summaries.len(), 1);
        assert!(summaries[0].outcome_description.contains("other reasons; 9967 more since"), "{:?}", summaries[0]);
    }

    #[test]
    fn a_refusal_in_a_new_window_also_returns_the_old_windows_counts() {
        let failures = LoginFailures::default();
        let start = Instant::now();
        failures.refused("expired", start, "t0");
        failures.refused("expired", start, "t0");
        let records = failures.refused("expired", start + WINDOW, "t1");
        assert_eq!(records.len(), 2, "{records:?}");
        assert!(records[0].outcome_description.ends_with("1 more since t0"));
        assert_eq!(records[1].outcome_description, "authentication failed: expired");
    }
}
