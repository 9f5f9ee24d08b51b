//! How automated work runs: which executor, with what input, retried how.

use super::fields::Priority;
use super::ids::{AgencyId, TaskId};
use crate::domain::limits::{MAX_ATTEMPTS, MAX_BASE_DELAY_SECONDS};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Which executor runs a task, and its settings (checked by the executor itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutorSpec {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Runs in total, the first included.
    pub max_attempts: u32,
    /// Backoff base: attempt n waits a random time in [0, base × 2^(n-1)], capped.
    pub base_delay_seconds: u32,
}

/// The longest a retry waits (SQS allows 12 hours of visibility; this keeps retries useful).
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

impl RetryPolicy {
    /// Used when a task does not say: urgent tiers retry sooner and more often.
    pub fn tier_default(priority: Priority) -> Self {
        let (max_attempts, base_delay_seconds) = match priority {
            Priority::Critical => (5, 1),
            Priority::High => (5, 2),
            Priority::Normal => (4, 5),
            Priority::Low => (3, 10),
            Priority::Background => (3, 30),
        };
        Self {
            max_attempts,
            base_delay_seconds,
        }
    }

    pub fn parse(value: &serde_json::Value) -> Result<Self, String> {
        let policy: RetryPolicy = serde_json::from_value(value.clone()).map_err(|_| {
            "must be {\"maxAttempts\": 1–10, \"baseDelaySeconds\": 0–900}".to_owned()
        })?;
        if !(1..=MAX_ATTEMPTS).contains(&policy.max_attempts) {
            return Err(format!("maxAttempts must be from 1 to {MAX_ATTEMPTS}"));
        }
        if policy.base_delay_seconds > MAX_BASE_DELAY_SECONDS {
            return Err(format!(
                "baseDelaySeconds must be at most {MAX_BASE_DELAY_SECONDS}"
            ));
        }
        Ok(policy)
    }

    /// Exponential backoff with full jitter before attempt `next_attempt` (2, 3, …).
    /// `unit` is a uniform random number in [0, 1).
    pub fn backoff(&self, next_attempt: u32, unit: f64) -> Duration {
        let exponent = next_attempt.saturating_sub(2).min(20);
        let ceiling =
            Duration::from_secs(u64::from(self.base_delay_seconds) << exponent).min(MAX_BACKOFF);
        // NaN would make `mul_f64` panic; treat it like any other out-of-range draw.
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        ceiling.mul_f64(unit)
    }
}

/// The SQS message group of a tier-queue message: the agency it belongs to. Every message sent
/// to a tier queue carries it, so that SQS fair queues share a tier between agencies (one
/// agency's backlog does not hold up another's). All three kinds of tier message (a task's run,
/// a chain step, a batch chunk) name their agency as `agencyId`.
pub fn message_group(body: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Agency {
        #[serde(rename = "agencyId")]
        agency_id: String,
    }
    serde_json::from_str::<Agency>(body)
        .ok()
        .map(|a| a.agency_id)
        .filter(|a| !a.is_empty())
}

/// A wait in whole seconds, rounded up, as SQS takes it (DelaySeconds, VisibilityTimeout): a
/// message never comes back before its run is due (rounding down brought retries back early,
/// before the task's queuedAt, and a quick failure then finished before it was queued).
pub fn seconds_rounded_up(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// The message a tier queue carries for one run of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchMessage {
    pub task_id: TaskId,
    pub agency_id: AgencyId,
    /// Matches the task's current dispatch; older messages are ignored.
    pub dispatch_id: String,
    pub priority: Priority,
    pub enqueued_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_round_up_to_whole_seconds() {
        assert_eq!(seconds_rounded_up(Duration::ZERO), 0);
        assert_eq!(seconds_rounded_up(Duration::from_millis(1)), 1);
        assert_eq!(seconds_rounded_up(Duration::from_millis(2_700)), 3);
        assert_eq!(seconds_rounded_up(Duration::from_secs(900)), 900);
    }

    #[test]
    fn every_tier_message_names_its_message_group() {
        let run = DispatchMessage {
            task_id: TaskId::generate(),
            agency_id: AgencyId::parse("acme").unwrap(),
            dispatch_id: "d".into(),
            priority: Priority::Normal,
            enqueued_at: Utc::now(),
        };
        let step =
            r#"{"kind": "step", "taskId": "t", "agencyId": "acme", "step": "a", "taskToken": "x"}"#;
        let chunk = r#"{"kind": "chunk", "batchId": "b", "agencyId": "acme", "chunkKey": "k", "chunkIndex": 0, "round": 0, "taskToken": "x"}"#;
        for body in [serde_json::to_string(&run).unwrap().as_str(), step, chunk] {
            assert_eq!(message_group(body).as_deref(), Some("acme"), "{body}");
        }
        assert_eq!(message_group("not json"), None);
        assert_eq!(message_group(r#"{"agencyId": ""}"#), None);
    }

    #[test]
    fn backoff_grows_exponentially_with_full_jitter() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base_delay_seconds: 2,
        };
        assert_eq!(policy.backoff(2, 0.999_999).as_secs(), 1);
        assert_eq!(policy.backoff(3, 0.999_999).as_secs(), 3);
        assert_eq!(policy.backoff(4, 0.999_999).as_secs(), 7);
        assert_eq!(policy.backoff(4, 0.0), Duration::ZERO);
        assert_eq!(policy.backoff(40, 1.0), MAX_BACKOFF);
    }

    #[test]
    fn retry_policy_bounds() {
        assert!(
            RetryPolicy::parse(&serde_json::json!({"maxAttempts": 3, "baseDelaySeconds": 1}))
                .is_ok()
        );
        assert!(
            RetryPolicy::parse(&serde_json::json!({"maxAttempts": 0, "baseDelaySeconds": 1}))
                .is_err()
        );
        assert!(
            RetryPolicy::parse(&serde_json::json!({"maxAttempts": 11, "baseDelaySeconds": 1}))
                .is_err()
        );
        assert!(RetryPolicy::parse(&serde_json::json!({"maxAttempts": 2})).is_err());
    }
}
