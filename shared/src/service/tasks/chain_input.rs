//! The chain execution's input: the task's waves grouped into segments (see
//! `domain::segment`). Names and numbers only, so it stays far under the 256 KiB state limit.

use crate::domain::chain::DEFAULT_STEP_TIMEOUT_SECONDS;
use crate::domain::segment::{
    segment_heartbeat_seconds, segment_timeout_seconds, segments, Segment,
};
use crate::domain::{StepConfig, TaskStep};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The segment fields of the input. A chain of automated steps only is one segment and takes
/// the state machine's shortest path (`route` "one_segment": one Task state that also settles
/// the task); any other chain walks `segments` and ends with Finalize.
pub(super) fn chain_segments(steps: &[TaskStep], waves: &[Vec<String>]) -> Map<String, Value> {
    let configs: HashMap<&str, Option<StepConfig>> = steps
        .iter()
        .map(|s| (s.name.as_str(), StepConfig::parse(&s.config).ok()))
        .collect();
    let config = |name: &str| configs.get(name).and_then(Option::as_ref);
    // An unreadable config (refused at creation) is treated as automated: its run then fails
    // with the problem named, as before.
    let manual = |name: &str| config(name).is_some_and(|c| c.executor.kind == "manual");
    let wave_is_manual: Vec<bool> = waves
        .iter()
        .map(|wave| wave.iter().any(|name| manual(name)))
        .collect();
    let segments = segments(&wave_is_manual);
    let item = |segment: &Segment, finish: bool| match *segment {
        Segment::Automated { first, last } => {
            let configs = || {
                waves[first..=last].iter().map(|wave| {
                    wave.iter()
                        .filter_map(|name| config(name))
                        .collect::<Vec<_>>()
                })
            };
            let timeout = segment_timeout_seconds(configs());
            let heartbeat = segment_heartbeat_seconds(configs().flatten());
            json!({
                "kind": "automated",
                "firstWave": first.to_string(),
                "lastWave": last.to_string(),
                "finish": if finish { "yes" } else { "no" },
                "timeoutSeconds": timeout,
                "heartbeatSeconds": heartbeat,
            })
        }
        Segment::Manual { wave } => {
            let steps: Vec<Value> = waves[wave]
                .iter()
                .map(|name| {
                    let (timeout, heartbeat) = config(name)
                        .map(|c| (c.timeout_seconds, c.heartbeat_seconds))
                        .unwrap_or((
                            DEFAULT_STEP_TIMEOUT_SECONDS,
                            DEFAULT_STEP_TIMEOUT_SECONDS - 1,
                        ));
                    json!({"name": name, "timeoutSeconds": timeout, "heartbeatSeconds": heartbeat})
                })
                .collect();
            json!({"kind": "manual", "steps": steps})
        }
    };
    let mut out = Map::new();
    match segments.as_slice() {
        [only @ Segment::Automated { .. }] => {
            out.insert("route".into(), json!("one_segment"));
            out.insert("segment".into(), item(only, true));
        }
        _ => {
            out.insert("route".into(), json!("segments"));
            let items: Vec<Value> = segments.iter().map(|s| item(s, false)).collect();
            out.insert("segments".into(), Value::Array(items));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::limits::{MAX_STEPS, MAX_STEP_NAME_CHARS};
    use crate::domain::{StepStatus, TaskId};

    fn step(name: String, depends_on: Vec<String>, config: Value) -> TaskStep {
        TaskStep {
            id: name.clone(),
            task_id: TaskId::parse("01JD0000000000000000000000").unwrap(),
            name,
            order: 0,
            depends_on,
            status: StepStatus::Pending,
            config,
            result: None,
            error: None,
            started_at: None,
            completed_at: None,
            attempts: 0,
            run_until: None,
        }
    }

    /// The largest chain the API accepts, in the shape with the largest input: every wave
    /// alternates manual and automated (so no two waves share a segment) and every name is
    /// as long as allowed in four-byte characters. Far under Step Functions' 256 KiB.
    #[test]
    fn the_largest_chain_s_input_stays_far_under_the_state_limit() {
        let manual = json!({"executor": {"type": "manual"}, "assignedTo": "carol"});
        let name = |i: usize| format!("{i:03}{}", "𝄞".repeat(MAX_STEP_NAME_CHARS - 3));
        let steps: Vec<TaskStep> = (0..MAX_STEPS)
            .map(|i| {
                let deps = if i == 0 { vec![] } else { vec![name(i - 1)] };
                let config = if i % 2 == 0 {
                    manual.clone()
                } else {
                    json!({})
                };
                step(name(i), deps, config)
            })
            .collect();
        let waves = crate::domain::chain::waves(
            steps
                .iter()
                .map(|s| (s.name.as_str(), s.depends_on.as_slice())),
        );
        let input = Value::Object(chain_segments(&steps, &waves));
        assert_eq!(input["segments"].as_array().unwrap().len(), MAX_STEPS);
        let bytes = input.to_string().len();
        assert!(bytes < 32 * 1024, "{bytes} bytes");

        // All automated: one segment of a few hundred bytes, whatever the size.
        let automated: Vec<TaskStep> = steps
            .iter()
            .map(|s| step(s.name.clone(), s.depends_on.clone(), json!({})))
            .collect();
        let input = Value::Object(chain_segments(&automated, &waves));
        assert_eq!(input["route"], "one_segment");
        assert!(input.to_string().len() < 300, "{input}");
    }
}
