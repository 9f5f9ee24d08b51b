//! The state machines' timing rules, checked on the ASL files themselves:
//!
//! - a `HeartbeatSeconds` is always shorter than its state's `TimeoutSeconds` (the language
//!   requires it; AWS fails the state at run time otherwise);
//! - work sent through a queue and waiting on a task token has no literal heartbeat shorter
//!   than its timeout allows (`TimeoutSeconds - 1`, in effect none): its clock starts at the
//!   send, so a busy tier would time out work that merely waits its turn (a step's
//!   `HeartbeatSecondsPath` is the task author's choice, validated at creation). It is there
//!   at all because moto answers InvalidToken to a heartbeat for a task without one;
//!   A segment (a worker running several steps under one token) takes its
//!   `HeartbeatSecondsPath` from its steps' (at most ten minutes), as a step's token did;
//! - every message sent to a tier queue carries `MessageGroupId` = its agency, so SQS fair
//!   queues share a tier between agencies.

use serde_json::Value;
use std::path::Path;

fn definition(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("the ASL file");
    serde_json::from_str(&text).expect("ASL is JSON")
}

/// Every state of a definition, nested ones (Map processors, Parallel branches) included,
/// as (name, state).
fn states(definition: &Value) -> Vec<(String, Value)> {
    let mut found = Vec::new();
    let Some(named) = definition["States"].as_object() else {
        return found;
    };
    for (name, state) in named {
        found.push((name.clone(), state.clone()));
        for nested in ["ItemProcessor", "Iterator"] {
            if state.get(nested).is_some() {
                found.extend(states(&state[nested]));
            }
        }
        for branch in state["Branches"].as_array().into_iter().flatten() {
            found.extend(states(branch));
        }
    }
    found
}

fn problems(definition: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, state) in states(definition) {
        let heartbeat = state["HeartbeatSeconds"].as_u64();
        if let (Some(beat), Some(timeout)) = (heartbeat, state["TimeoutSeconds"].as_u64()) {
            if beat >= timeout {
                problems.push(format!(
                    "{name}: HeartbeatSeconds {beat} is not less than TimeoutSeconds {timeout}"
                ));
            }
        }
        let queued = state["Resource"]
            .as_str()
            .is_some_and(|r| r.ends_with(":sqs:sendMessage.waitForTaskToken"));
        if queued && state["Parameters"]["MessageGroupId.$"] != "$.agencyId" {
            problems.push(format!(
                "{name}: a message to a tier queue must carry MessageGroupId = its agency (fair queues)"
            ));
        }
        let effectively_none =
            heartbeat.is_none() || heartbeat.map(|b| b + 1) == state["TimeoutSeconds"].as_u64();
        if queued && !effectively_none {
            problems.push(format!(
                "{name}: a queued task with HeartbeatSeconds times out while it waits in the queue"
            ));
        }
    }
    problems
}

#[test]
fn the_project_state_machines_keep_the_timing_rules() {
    for file in ["infra/chain.asl.json", "infra/batch.asl.json"] {
        let definition = definition(file);
        assert!(states(&definition).len() >= 3, "{file}: states not found");
        let problems = problems(&definition);
        assert!(problems.is_empty(), "{file}:\n{}", problems.join("\n"));
    }
}

/// A chain of automated steps only enters two states: Route, then RunChain, which ends the
/// execution (its worker settles the task). Each segment Task takes its timeout and heartbeat
/// from the input, sends a lost worker's segment again once, and ends the chain on the
/// worker's ChainStopped answer without a second token.
#[test]
fn an_automated_chain_is_one_segment_task_after_a_choice() {
    let chain = definition("infra/chain.asl.json");
    assert_eq!(chain["StartAt"], "Route");
    let route = &chain["States"]["Route"];
    assert_eq!(route["Type"], "Choice");
    assert_eq!(route["Choices"][0]["Variable"], "$.route");
    assert_eq!(route["Choices"][0]["StringEquals"], "one_segment");
    assert_eq!(route["Choices"][0]["Next"], "RunChain");
    assert_eq!(chain["States"]["RunChain"]["End"], true);
    let all = states(&chain);
    let segment_tasks: Vec<&Value> = all
        .iter()
        .filter(|(_, s)| s["Parameters"]["MessageBody"]["kind"] == "segment")
        .map(|(_, s)| s)
        .collect();
    assert_eq!(segment_tasks.len(), 2, "RunChain and RunSegment");
    for task in segment_tasks {
        assert_eq!(task["TimeoutSecondsPath"], "$.segment.timeoutSeconds");
        assert_eq!(task["HeartbeatSecondsPath"], "$.segment.heartbeatSeconds");
        assert_eq!(
            task["Retry"][0]["ErrorEquals"][0],
            "States.HeartbeatTimeout"
        );
        assert_eq!(task["Retry"].as_array().unwrap().len(), 1);
        assert_eq!(task["Catch"][0]["ErrorEquals"][0], "Taskflow.ChainStopped");
        assert_eq!(task["Catch"][1]["ErrorEquals"][0], "States.ALL");
        let stopped = &all
            .iter()
            .find(|(n, _)| *n == task["Catch"][0]["Next"])
            .unwrap()
            .1;
        assert_eq!(stopped["Type"], "Fail");
    }
    // Manual waves keep a token per step, with the per-step retry blocks.
    let run_step = &all.iter().find(|(n, _)| n == "RunStep").unwrap().1;
    assert_eq!(run_step["Parameters"]["MessageBody"]["kind"], "step");
    assert_eq!(run_step["Retry"].as_array().unwrap().len(), 4);
}

#[test]
fn the_checks_catch_what_they_are_for() {
    let definition: Value = serde_json::from_str(
        r#"{"StartAt": "M", "States": {
            "M": {"Type": "Map", "ItemProcessor": {"StartAt": "Q", "States": {
                "Q": {"Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
                      "TimeoutSeconds": 60, "HeartbeatSeconds": 30, "End": true}}}, "Next": "T"},
            "T": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
                  "TimeoutSeconds": 30, "HeartbeatSeconds": 30, "End": true}}}"#,
    )
    .unwrap();
    let problems = problems(&definition);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems[0].starts_with("Q: a message to a tier queue"),
        "{problems:?}"
    );
    assert!(problems[1].starts_with("Q: a queued task"), "{problems:?}");
    assert!(
        problems[2].starts_with("T: HeartbeatSeconds 30"),
        "{problems:?}"
    );
}
