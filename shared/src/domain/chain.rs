//! Multi-step chains: how each step runs, what its failure means, and the
//! dependency "waves" the state machine walks.

use super::execution::ExecutorSpec;
use super::fields::string_enum;
use super::ids::{AgencyId, TaskId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;

/// Most attempts a step may ask for: the chain definition has one Retry block per count.
pub const MAX_STEP_ATTEMPTS: u32 = 5;
pub const DEFAULT_STEP_TIMEOUT_SECONDS: u32 = 300;
pub const DEFAULT_MANUAL_TIMEOUT_SECONDS: u32 = 7 * 24 * 60 * 60;
pub const MAX_STEP_TIMEOUT_SECONDS: u32 = 30 * 24 * 60 * 60;

/// Who a task or a manual step is for: one name on every request and reply (a task's reply
/// carries `assignedTo`).
pub const ASSIGNEE_FIELD: &str = "assignedTo";
/// The name assign, step config and the list filter used before; still accepted on input.
pub const DEPRECATED_ASSIGNEE_FIELD: &str = "assignee";

/// The assignee a request names under either spelling, with the spelling (so a problem names
/// the field the caller sent); naming it twice is an error, so a request never means two
/// people. Errors are (field, problem).
pub fn assignee_of<'a>(
    lookup: impl Fn(&str) -> Option<&'a Value>,
) -> Result<Option<(&'static str, &'a Value)>, (String, String)> {
    let present = |field: &str| lookup(field).filter(|v| !v.is_null());
    match (present(ASSIGNEE_FIELD), present(DEPRECATED_ASSIGNEE_FIELD)) {
        (Some(_), Some(_)) => Err((
            DEPRECATED_ASSIGNEE_FIELD.to_owned(),
            format!(
                "give {ASSIGNEE_FIELD} only; {DEPRECATED_ASSIGNEE_FIELD} is its deprecated alias"
            ),
        )),
        (Some(value), None) => Ok(Some((ASSIGNEE_FIELD, value))),
        (None, Some(value)) => Ok(Some((DEPRECATED_ASSIGNEE_FIELD, value))),
        (None, None) => Ok(None),
    }
}

string_enum!(
    /// What a step's final failure does to the rest of the chain.
    OnFailure, "onFailure policy" {
        FailTask => "fail_task",
        SkipDependents => "skip_dependents",
        Continue => "continue",
    }
);

/// A step's `config`, checked when the task is created.
#[derive(Debug, Clone, PartialEq)]
pub struct StepConfig {
    pub executor: ExecutorSpec,
    pub input: Option<Value>,
    /// Runs in total, 1–5.
    pub max_attempts: u32,
    pub timeout_seconds: u32,
    /// A running step must heartbeat at least this often.
    pub heartbeat_seconds: u32,
    /// Who completes a manual step.
    pub assignee: Option<UserId>,
    pub on_failure: OnFailure,
}

impl StepConfig {
    /// Parses a step config; errors are (field within config, problem).
    pub fn parse(config: &Value) -> Result<StepConfig, (String, String)> {
        let err = |field: &str, problem: String| Err((field.to_owned(), problem));
        let Value::Object(map) = config else {
            return err("config", "must be an object".into());
        };
        const FIELDS: [&str; 7] = [
            "executor",
            "input",
            "retry",
            "timeoutSeconds",
            "heartbeatSeconds",
            ASSIGNEE_FIELD,
            "onFailure",
        ];
        if let Some(unknown) = map
            .keys()
            .find(|k| !FIELDS.contains(&k.as_str()) && *k != DEPRECATED_ASSIGNEE_FIELD)
        {
            return err(
                unknown,
                format!("unknown field; allowed: {}", FIELDS.join(", ")),
            );
        }
        let executor: ExecutorSpec = match map.get("executor") {
            None => ExecutorSpec {
                kind: "echo".into(),
                config: Value::Object(Default::default()),
            },
            Some(v) => match serde_json::from_value(v.clone()) {
                Ok(spec) => spec,
                Err(_) => {
                    return err(
                        "executor",
                        "must be {\"type\": \"echo|http|sleep|manual\", \"config\": {…}}".into(),
                    )
                }
            },
        };
        // Stored with the step: a number DynamoDB cannot hold would fail the write (a 500).
        if let Err(problem) = super::storable::check(&executor.config) {
            return err("executor", format!("config {problem}"));
        }
        let max_attempts = match map.get("retry") {
            None | Some(Value::Null) => 1,
            Some(Value::Object(r)) => match r.get("maxAttempts").and_then(Value::as_u64) {
                Some(n) if (1..=u64::from(MAX_STEP_ATTEMPTS)).contains(&n) && r.len() == 1 => {
                    n as u32
                }
                _ => {
                    return err(
                        "retry",
                        format!("must be {{\"maxAttempts\": 1–{MAX_STEP_ATTEMPTS}}}"),
                    )
                }
            },
            Some(_) => {
                return err(
                    "retry",
                    format!("must be {{\"maxAttempts\": 1–{MAX_STEP_ATTEMPTS}}}"),
                )
            }
        };
        let manual = executor.kind == "manual";
        let seconds = |field: &str, default: u32| -> Result<u32, (String, String)> {
            match map.get(field) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => match v.as_u64() {
                    Some(n) if (1..=u64::from(MAX_STEP_TIMEOUT_SECONDS)).contains(&n) => {
                        Ok(n as u32)
                    }
                    _ => Err((
                        field.to_owned(),
                        format!("must be whole seconds from 1 to {MAX_STEP_TIMEOUT_SECONDS}"),
                    )),
                },
            }
        };
        let default_timeout = if manual {
            DEFAULT_MANUAL_TIMEOUT_SECONDS
        } else {
            DEFAULT_STEP_TIMEOUT_SECONDS
        };
        let timeout_seconds = seconds("timeoutSeconds", default_timeout)?;
        if manual && map.get("heartbeatSeconds").is_some_and(|v| !v.is_null()) {
            // Nobody heartbeats while a person decides: it would only time the step out early.
            return err(
                "heartbeatSeconds",
                "a manual step waits for its assignee and has no heartbeat; use timeoutSeconds"
                    .into(),
            );
        }
        if timeout_seconds < 2 {
            return err("timeoutSeconds", "must be at least 2 seconds".into());
        }
        // Step Functions requires a heartbeat shorter than the timeout; without one asked
        // for, the heartbeat is just under it (in effect, none).
        let heartbeat_seconds = seconds("heartbeatSeconds", timeout_seconds - 1)?;
        if heartbeat_seconds >= timeout_seconds {
            return err(
                "heartbeatSeconds",
                "must be less than timeoutSeconds (Step Functions requires it)".into(),
            );
        }
        let assignee = match assignee_of(|field| map.get(field))? {
            None => None,
            Some((field, Value::String(a))) => {
                Some(UserId::parse(a).map_err(|p| (field.to_owned(), p))?)
            }
            Some((field, _)) => return err(field, "must be a string".into()),
        };
        if manual && assignee.is_none() {
            return err(ASSIGNEE_FIELD, "a manual step needs an assignee".into());
        }
        let on_failure = match map.get("onFailure").and_then(Value::as_str) {
            None => OnFailure::FailTask,
            Some(p) => p.parse().map_err(|e| ("onFailure".to_owned(), e))?,
        };
        let input = map.get("input").cloned();
        if let Some(input) = &input {
            super::storable::check(input).map_err(|problem| ("input".to_owned(), problem))?;
        }
        Ok(StepConfig {
            executor,
            input,
            max_attempts,
            timeout_seconds,
            heartbeat_seconds,
            assignee,
            on_failure,
        })
    }
}

/// Groups steps into waves: each wave holds the steps whose dependencies all
/// sit in earlier waves. Input must be acyclic (checked at creation).
pub fn waves<'a>(
    steps: impl IntoIterator<Item = (&'a str, &'a [String])> + Clone,
) -> Vec<Vec<String>> {
    let all: Vec<(&str, &[String])> = steps.into_iter().collect();
    let mut placed: HashSet<&str> = HashSet::new();
    let mut waves = Vec::new();
    while placed.len() < all.len() {
        let mut wave: Vec<&str> = all
            .iter()
            .filter(|(name, _)| !placed.contains(name))
            .filter(|(_, deps)| deps.iter().all(|d| placed.contains(d.as_str())))
            .map(|(name, _)| *name)
            .collect();
        if wave.is_empty() {
            break; // a cycle; creation refuses these
        }
        wave.sort_unstable();
        placed.extend(wave.iter().copied());
        waves.push(wave.into_iter().map(str::to_owned).collect());
    }
    waves
}

/// Messages the chain state machine sends to a tier queue. Values are strings
/// only: some engines re-serialize message bodies and booleans would not survive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChainMessage {
    /// Run this step and report with the token.
    Step {
        #[serde(rename = "taskId")]
        task_id: TaskId,
        #[serde(rename = "agencyId")]
        agency_id: AgencyId,
        step: String,
        #[serde(rename = "taskToken")]
        task_token: String,
    },
    /// The step failed for good (after retries, or timed out): record it and say
    /// whether the whole chain must stop.
    StepFailed {
        #[serde(rename = "taskId")]
        task_id: TaskId,
        #[serde(rename = "agencyId")]
        agency_id: AgencyId,
        step: String,
        error: Value,
        #[serde(rename = "taskToken")]
        task_token: String,
    },
    /// Run waves `firstWave..=lastWave` (all automated) and answer the token once; with
    /// `finish` "yes", also settle the task (the chain's last segment).
    Segment {
        #[serde(rename = "taskId")]
        task_id: TaskId,
        #[serde(rename = "agencyId")]
        agency_id: AgencyId,
        #[serde(rename = "firstWave")]
        first_wave: String,
        #[serde(rename = "lastWave")]
        last_wave: String,
        finish: String,
        #[serde(rename = "taskToken")]
        task_token: String,
    },
    /// A segment's token timed out (or its answer was not understood): fail the task and
    /// settle its unfinished steps.
    SegmentFailed {
        #[serde(rename = "taskId")]
        task_id: TaskId,
        #[serde(rename = "agencyId")]
        agency_id: AgencyId,
        error: Value,
        #[serde(rename = "taskToken")]
        task_token: String,
    },
    /// Every wave ran: settle the task's final status.
    Finalize {
        #[serde(rename = "taskId")]
        task_id: TaskId,
        #[serde(rename = "agencyId")]
        agency_id: AgencyId,
        #[serde(rename = "taskToken")]
        task_token: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn waves_of_a_diamond() {
        let deps: Vec<(String, Vec<String>)> = vec![
            ("a".into(), vec![]),
            ("b".into(), vec!["a".into()]),
            ("c".into(), vec!["a".into()]),
            ("d".into(), vec!["b".into(), "c".into()]),
        ];
        let waves = waves(deps.iter().map(|(n, d)| (n.as_str(), d.as_slice())));
        assert_eq!(waves, vec![vec!["a"], vec!["b", "c"], vec!["d"]]);
    }

    #[test]
    fn step_config_defaults_and_errors() {
        let c = StepConfig::parse(&json!({})).unwrap();
        assert_eq!(
            (c.executor.kind.as_str(), c.max_attempts, c.on_failure),
            ("echo", 1, OnFailure::FailTask)
        );
        assert_eq!(
            StepConfig::parse(&json!({"onFailure": "explode"}))
                .unwrap_err()
                .0,
            "onFailure"
        );
        assert_eq!(
            StepConfig::parse(&json!({"retry": {"maxAttempts": 9}}))
                .unwrap_err()
                .0,
            "retry"
        );
        assert_eq!(
            StepConfig::parse(&json!({"executor": {"type": "manual"}}))
                .unwrap_err()
                .0,
            "assignedTo"
        );
        assert_eq!(
            StepConfig::parse(&json!({"timeoutSeconds": 5, "heartbeatSeconds": 9}))
                .unwrap_err()
                .0,
            "heartbeatSeconds"
        );
        // Step Functions refuses a heartbeat equal to the timeout, and so does this.
        assert_eq!(
            StepConfig::parse(&json!({"timeoutSeconds": 5, "heartbeatSeconds": 5}))
                .unwrap_err()
                .0,
            "heartbeatSeconds"
        );
        assert_eq!(
            StepConfig::parse(&json!({"timeoutSeconds": 1}))
                .unwrap_err()
                .0,
            "timeoutSeconds"
        );
        assert_eq!(
            StepConfig::parse(&json!({"executor": {"type": "manual"}, "assignee": "carol",
                "timeoutSeconds": 600, "heartbeatSeconds": 60}))
            .unwrap_err()
            .0,
            "heartbeatSeconds"
        );
    }

    #[test]
    fn a_manual_step_names_its_assignee_as_assigned_to_or_the_deprecated_assignee() {
        let manual = |config: Value| StepConfig::parse(&config).map(|c| c.assignee);
        let carol = Some(UserId::parse("carol").unwrap());
        assert_eq!(
            manual(json!({"executor": {"type": "manual"}, "assignedTo": "carol"})),
            Ok(carol.clone())
        );
        assert_eq!(
            manual(json!({"executor": {"type": "manual"}, "assignee": "carol"})),
            Ok(carol)
        );
        let both = json!({"executor": {"type": "manual"}, "assignedTo": "a", "assignee": "b"});
        assert_eq!(manual(both).unwrap_err().0, "assignee");
        assert_eq!(
            manual(json!({"executor": {"type": "manual"}, "assignedTo": 7}))
                .unwrap_err()
                .0,
            "assignedTo"
        );
    }

    #[test]
    fn a_step_s_heartbeat_is_always_shorter_than_its_timeout() {
        for config in [
            json!({}),
            json!({"timeoutSeconds": 2}),
            json!({"executor": {"type": "manual"}, "assignee": "carol"}),
        ] {
            let step = StepConfig::parse(&config).unwrap();
            assert!(
                step.heartbeat_seconds < step.timeout_seconds,
                "{config}: {step:?}"
            );
        }
    }

    #[test]
    fn chain_messages_parse_from_the_state_machine() {
        let body = r#"{"kind": "step", "taskId": "01JD0000000000000000000000", "agencyId": "acme", "step": "a", "taskToken": "tok"}"#;
        assert!(matches!(
            serde_json::from_str::<ChainMessage>(body).unwrap(),
            ChainMessage::Step { .. }
        ));
        let body = r#"{"kind": "segment", "taskId": "01JD0000000000000000000000", "agencyId": "acme", "firstWave": "0", "lastWave": "2", "finish": "yes", "taskToken": "tok"}"#;
        assert!(matches!(
            serde_json::from_str::<ChainMessage>(body).unwrap(),
            ChainMessage::Segment { .. }
        ));
    }
}
