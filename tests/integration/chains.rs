//! Multi-step chains on the chain state machine, against the local stack.

use aws_sdk_sfn::types::ExecutionStatus;
use chrono::{DateTime, Utc};
use integration_tests::{
    eventually, scaled, stack, unique_agency, wait_for_status, Client, Ledger,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

fn manager() -> Client {
    Client::as_user(&unique_agency("chain"), "boss", "manager")
}

fn sleep(seconds: f64) -> Value {
    json!({"executor": {"type": "sleep", "config": {"seconds": seconds}}})
}

async fn steps_of(boss: &Client, id: &str) -> HashMap<String, Value> {
    let view = boss.get(&format!("/api/tasks/{id}/steps")).await.body;
    view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s.clone()))
        .collect()
}

fn at(step: &Value, field: &str) -> DateTime<Utc> {
    step[field]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{field} missing: {step}"))
}

/// Every step started only after each of its dependencies completed.
fn assert_dependencies_respected(steps: &HashMap<String, Value>) {
    for step in steps.values() {
        for dep in step["dependsOn"].as_array().unwrap() {
            let dep = &steps[dep.as_str().unwrap()];
            assert!(
                at(dep, "completedAt") <= at(step, "startedAt"),
                "{} started before {} completed",
                step["name"],
                dep["name"]
            );
        }
    }
}

#[tokio::test]
async fn a_diamond_runs_in_dependency_order() {
    let boss = manager();
    let created = boss
        .post("/api/tasks", &json!({"title": "diamond", "type": "multi_step", "priority": "high", "autoDispatch": true, "steps": [
            {"name": "fetch", "config": sleep(0.3)},
            {"name": "left", "dependsOn": ["fetch"], "config": sleep(0.5)},
            {"name": "right", "dependsOn": ["fetch"], "config": sleep(0.1)},
            {"name": "merge", "dependsOn": ["left", "right"], "config": {"input": {"done": true}}},
        ]}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    // The reply is the task as stored: already running, under the execution that runs it.
    assert_eq!(created.body["status"], "in_progress", "{}", created.body);
    assert_eq!(created.etag(), format!("\"{}\"", created.body["version"]));
    let arn = created.body["executionArn"].as_str().expect("executionArn");
    let clients = integration_tests::stack().clients().await;
    let execution = clients
        .sfn
        .describe_execution()
        .execution_arn(arn)
        .send()
        .await
        .expect("the execution in the reply exists");
    assert_eq!(execution.execution_arn, arn);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let task = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["executionArn"], arn);
    let steps = steps_of(&boss, &id).await;
    assert!(
        steps.values().all(|s| s["status"] == "completed"),
        "{steps:?}"
    );
    assert_dependencies_respected(&steps);
    assert_eq!(steps["merge"]["result"], json!({"done": true}));
    let view = boss.get(&format!("/api/tasks/{id}/steps")).await.body;
    assert_eq!(view["progress"]["percent"], 100.0);
    // No state of the run came near Step Functions' 256 KiB payload limit.
    let oversize = integration_tests::limits::oversize_states(&clients.sfn, arn).await;
    assert!(oversize.is_empty(), "{oversize:?}");
}

#[tokio::test]
async fn a_fan_out_of_ten_runs_in_parallel_before_its_join() {
    let boss = manager();
    let mut steps = vec![json!({"name": "start", "config": sleep(0.0)})];
    let branches: Vec<String> = (0..10).map(|i| format!("branch-{i}")).collect();
    for name in &branches {
        steps.push(json!({"name": name, "dependsOn": ["start"], "config": sleep(1.0)}));
    }
    steps.push(json!({"name": "join", "dependsOn": branches}));
    let id = boss
        .create_task(&json!({"title": "fan-out", "type": "multi_step", "priority": "critical", "autoDispatch": true, "steps": steps}))
        .await;
    let task = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "completed", "{task}");
    let steps = steps_of(&boss, &id).await;
    assert_dependencies_respected(&steps);
    // Parallel: ordering evidence from the steps' own times, not a wall-clock bound. The most
    // branches running at one moment (a start before the others' ends) is well above one.
    let overlap = branches
        .iter()
        .map(|b| {
            let start = at(&steps[b], "startedAt");
            branches
                .iter()
                .filter(|o| {
                    at(&steps[*o], "startedAt") <= start && at(&steps[*o], "completedAt") > start
                })
                .count()
        })
        .max()
        .unwrap();
    assert!(
        overlap >= 3,
        "at most {overlap} branches ran at once: they ran one after another"
    );
}

#[tokio::test]
async fn each_on_failure_policy() {
    let boss = manager();
    let failing = |policy: &str| json!({"executor": {"type": "sleep", "config": {"failAttempts": 9}}, "onFailure": policy});
    // continue: the dependent still runs and the task completes.
    let cont = boss
        .create_task(
            &json!({"title": "continue", "type": "multi_step", "autoDispatch": true, "steps": [
                {"name": "flaky", "config": failing("continue")},
                {"name": "after", "dependsOn": ["flaky"]},
            ]}),
        )
        .await;
    // skip_dependents: the dependent is skipped, an independent step still runs, the task fails.
    let skip = boss
        .create_task(
            &json!({"title": "skip", "type": "multi_step", "autoDispatch": true, "steps": [
                {"name": "flaky", "config": failing("skip_dependents")},
                {"name": "after", "dependsOn": ["flaky"]},
                {"name": "later", "dependsOn": ["after"]},
                {"name": "other"},
            ]}),
        )
        .await;
    // fail_task: the chain stops; the rest is skipped.
    let stop = boss
        .create_task(
            &json!({"title": "stop", "type": "multi_step", "autoDispatch": true, "steps": [
                {"name": "flaky", "config": failing("fail_task")},
                {"name": "after", "dependsOn": ["flaky"]},
            ]}),
        )
        .await;

    let task = wait_for_status(&boss, &cont, &["completed", "failed"]).await;
    assert_eq!(task["status"], "completed", "{task}");
    let steps = steps_of(&boss, &cont).await;
    assert_eq!(
        (
            steps["flaky"]["status"].as_str(),
            steps["after"]["status"].as_str()
        ),
        (Some("failed"), Some("completed"))
    );

    let task = wait_for_status(&boss, &skip, &["completed", "failed"]).await;
    assert_eq!(task["status"], "failed", "{task}");
    let steps = steps_of(&boss, &skip).await;
    assert_eq!(steps["after"]["status"], "skipped");
    assert_eq!(steps["later"]["status"], "skipped");
    assert_eq!(steps["other"]["status"], "completed");

    let task = wait_for_status(&boss, &stop, &["completed", "failed"]).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert!(task["error"].as_str().unwrap().contains("flaky"), "{task}");
    let steps = steps_of(&boss, &stop).await;
    assert_eq!(
        (
            steps["flaky"]["status"].as_str(),
            steps["after"]["status"].as_str()
        ),
        (Some("failed"), Some("skipped"))
    );
}

#[tokio::test]
async fn a_step_that_fails_once_succeeds_on_retry_and_a_slow_step_times_out() {
    let boss = manager();
    let id = boss
        .create_task(&json!({"title": "retry", "type": "multi_step", "autoDispatch": true, "steps": [
            {"name": "flaky", "config": {"executor": {"type": "sleep", "config": {"failAttempts": 1}}, "retry": {"maxAttempts": 3}}},
        ]}))
        .await;
    let slow = boss
        .create_task(&json!({"title": "timeout", "type": "multi_step", "autoDispatch": true, "steps": [
            {"name": "slow", "config": {"executor": {"type": "sleep", "config": {"seconds": 4}}, "timeoutSeconds": 2, "onFailure": "fail_task"}},
        ]}))
        .await;
    let task = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "completed", "{task}");
    let steps = steps_of(&boss, &id).await;
    assert_eq!(steps["flaky"]["attempts"], 2);

    let task = wait_for_status(&boss, &slow, &["completed", "failed"]).await;
    assert_eq!(task["status"], "failed", "{task}");
    let steps = steps_of(&boss, &slow).await;
    assert_eq!(steps["slow"]["status"], "failed");
    assert!(
        steps["slow"]["error"].as_str().unwrap().contains("Timeout"),
        "{:?}",
        steps["slow"]
    );
}

#[tokio::test]
async fn a_manual_step_waits_for_its_assignee() {
    let agency = unique_agency("manual");
    let boss = Client::as_user(&agency, "boss", "manager");
    let carol = Client::as_user(&agency, "carol", "member");
    let id = boss
        .create_task(&json!({"title": "approve", "type": "multi_step", "autoDispatch": true, "steps": [
            {"name": "legal/approve", "config": {"executor": {"type": "manual"}, "assignee": "carol"}},
            {"name": "ship", "dependsOn": ["legal/approve"], "config": {"input": "shipped"}},
        ]}))
        .await;
    // Once the chain reaches it, the step says it waits for a person, not that it runs.
    let view = integration_tests::eventually(
        "the approval to wait",
        std::time::Duration::from_secs(30),
        || async {
            let view = boss.get(&format!("/api/tasks/{id}/steps")).await.body;
            (view["steps"][0]["status"] != "pending").then_some(view)
        },
    )
    .await;
    assert_eq!(view["steps"][0]["status"], "waiting", "{view}");
    assert_eq!(view["progress"]["waiting"], 1, "{view}");
    assert_eq!(view["progress"]["running"], 0, "{view}");
    // Step names are percent-encoded in the path.
    let path = format!("/api/tasks/{id}/steps/legal%2Fapprove/complete");
    let completed = carol
        .post(&path, &json!({"result": {"approved": true}}))
        .await;
    assert_eq!(completed.status, StatusCode::OK, "{}", completed.body);
    let task = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "completed", "{task}");
    let steps = steps_of(&boss, &id).await;
    assert_eq!(steps["legal/approve"]["result"], json!({"approved": true}));
    assert_eq!(steps["ship"]["result"], "shipped");
    // A mixed chain walks its segments: the manual wave step by step, the automated one as
    // one segment, then Finalize (8 states for 2 steps; each further automated wave in that
    // segment adds none).
    let arn = task["executionArn"]
        .as_str()
        .expect("an execution")
        .to_owned();
    let (status, entered) = states_entered(&arn).await;
    assert_eq!(status, ExecutionStatus::Succeeded, "{entered:?}");
    assert_eq!(
        entered,
        [
            "Route",
            "Segments",
            "SegmentKind",
            "Steps",
            "RunStep",
            "SegmentKind",
            "RunSegment",
            "Finalize"
        ]
    );
}

#[tokio::test]
async fn cancelling_mid_chain_stops_it_and_later_steps_never_run() {
    let boss = manager();
    let ledger = Ledger::start();
    let hook = json!({"executor": {"type": "http", "config": {"url": ledger.url}}});
    // The first step's run is held open: the chain is provably mid-step when it is cancelled.
    ledger.hold();
    let id = boss
        .create_task(
            &json!({"title": "cancel me", "type": "multi_step", "autoDispatch": true, "steps": [
                {"name": "first", "config": hook},
                {"name": "second", "dependsOn": ["first"], "config": hook},
            ]}),
        )
        .await;
    ledger
        .wait_for("the first step to run", 1, |r| r.task_id == id)
        .await;
    let reply = boss
        .post(&format!("/api/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "cancelled");
    // The first step's run now ends; its result is dropped and its token answered with a
    // failure, as the step was settled by the cancel.
    ledger.release();
    // The execution itself ends, not just the records. AWS reports ABORTED at once. moto 5.2.5
    // does not apply StopExecution to an execution waiting on a task token (a Wait state is
    // aborted, a waitForTaskToken task stays RUNNING), so there the answered token ends it
    // as FAILED; that StopExecution is sent is asserted by the handler tests.
    let arn = boss.get(&format!("/api/tasks/{id}")).await.body["executionArn"]
        .as_str()
        .expect("a dispatched chain names its execution")
        .to_owned();
    let sfn = stack().clients().await.sfn;
    let status = eventually(
        "the execution to end",
        scaled(Duration::from_secs(30)),
        || async {
            let out = sfn
                .describe_execution()
                .execution_arn(&arn)
                .send()
                .await
                .ok()?;
            (out.status != ExecutionStatus::Running).then_some(out.status)
        },
    )
    .await;
    assert!(
        matches!(status, ExecutionStatus::Aborted | ExecutionStatus::Failed),
        "a cancelled chain's execution ended {status:?}"
    );
    // A stopped execution cannot dispatch the second step.
    let steps = steps_of(&boss, &id).await;
    assert_eq!(steps["second"]["status"], "skipped", "{steps:?}");
    assert!(steps["second"]["startedAt"].is_null());
    let runs = ledger.runs_of(&id);
    assert_eq!(
        runs.iter().map(|r| r.step.as_deref()).collect::<Vec<_>>(),
        [Some("first")],
        "only the first step ever ran: {runs:?}"
    );
    assert_eq!(
        boss.get(&format!("/api/tasks/{id}")).await.body["status"],
        "cancelled"
    );
}

/// The states an execution entered (what Step Functions bills as transitions), from its
/// history, once it has ended.
async fn states_entered(arn: &str) -> (ExecutionStatus, Vec<String>) {
    let sfn = stack().clients().await.sfn;
    let status = eventually(
        "the execution to end",
        scaled(Duration::from_secs(60)),
        || async {
            let out = sfn
                .describe_execution()
                .execution_arn(arn)
                .send()
                .await
                .ok()?;
            (out.status != ExecutionStatus::Running).then_some(out.status)
        },
    )
    .await;
    let mut entered = Vec::new();
    let mut token = None;
    loop {
        let page = sfn
            .get_execution_history()
            .execution_arn(arn)
            .set_next_token(token)
            .max_results(1000)
            .send()
            .await
            .expect("the execution's history");
        entered.extend(
            page.events
                .iter()
                .filter(|e| e.r#type.as_str().ends_with("StateEntered"))
                .map(|e| {
                    e.state_entered_event_details()
                        .map(|d| d.name.clone())
                        .unwrap_or_default()
                }),
        );
        token = page.next_token;
        if token.is_none() {
            return (status, entered);
        }
    }
}

/// Issue 16: a chain of automated steps costs at most one state transition per step. Its
/// waves are one segment: the execution enters Route and RunChain, whatever N.
#[tokio::test]
async fn an_automated_chain_of_n_sequential_steps_enters_at_most_n_states() {
    const N: usize = 4;
    let boss = manager();
    let steps: Vec<Value> = (0..N)
        .map(|i| match i {
            0 => json!({"name": "s0", "config": sleep(0.05)}),
            _ => json!({"name": format!("s{i}"), "dependsOn": [format!("s{}", i - 1)], "config": sleep(0.05)}),
        })
        .collect();
    let id = boss
        .create_task(&json!({"title": "sequential", "type": "multi_step", "autoDispatch": true, "steps": steps}))
        .await;
    let arn = boss.get(&format!("/api/tasks/{id}")).await.body["executionArn"]
        .as_str()
        .expect("an execution")
        .to_owned();
    let (status, entered) = states_entered(&arn).await;
    assert_eq!(status, ExecutionStatus::Succeeded, "{entered:?}");
    let task = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "completed", "{task}");
    let steps = steps_of(&boss, &id).await;
    assert_dependencies_respected(&steps);
    assert!(
        steps
            .values()
            .all(|s| s["status"] == "completed" && s["attempts"] == 1),
        "{steps:?}"
    );
    assert!(
        entered.len() <= N,
        "{} states for {N} steps: {entered:?}",
        entered.len()
    );
    assert_eq!(entered, ["Route", "RunChain"]);
}

#[tokio::test]
async fn invalid_graphs_are_refused_with_the_problem_named() {
    let boss = manager();
    let reply = boss
        .post("/api/tasks", &json!({"title": "loop", "type": "multi_step", "steps": [
            {"name": "a", "dependsOn": ["c"]}, {"name": "b", "dependsOn": ["a"]}, {"name": "c", "dependsOn": ["b"]},
        ]}))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.body["error"]["fields"]["steps"]
            .as_str()
            .unwrap()
            .contains("cycle among: a, b, c"),
        "{}",
        reply.body
    );
    let reply = boss
        .post("/api/tasks", &json!({"title": "ghost", "type": "multi_step", "steps": [{"name": "a", "dependsOn": ["nope"]}]}))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.body["error"]["fields"]["steps[0].dependsOn"]
            .as_str()
            .unwrap()
            .contains("'nope'"),
        "{}",
        reply.body
    );
    let reply = boss
        .post("/api/tasks", &json!({"title": "policy", "type": "multi_step", "steps": [{"name": "a", "config": {"onFailure": "panic"}}]}))
        .await;
    assert!(
        reply.body["error"]["fields"]["steps[0].config.onFailure"].is_string(),
        "{}",
        reply.body
    );
}
