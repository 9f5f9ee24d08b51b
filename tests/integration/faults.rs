//! Faults: AWS briefly unreachable, poison messages, and a host killed mid-load.

use integration_tests::{
    dead_letter, eventually, isolated_options, isolated_stack, scaled, stack, unique_agency,
    wait_for_status, Client, Ledger, Outage,
};
use local_stack::LocalStack;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn a_brief_outage_gives_retryable_errors_and_loses_nothing() {
    // On the hybrid backend both emulators go down: DynamoDB (moto) and SQS (LocalStack).
    let outage = Outage::in_front_of(&stack().attach);
    let mut options = isolated_options("taskflow-outage");
    options.backend = outage.backend.clone();
    let host = LocalStack::start(options)
        .await
        .expect("host behind the proxy");
    let boss = Client::as_user(&unique_agency("outage"), "boss", "manager").at(&host.api_url());
    let ledger = Ledger::start();
    // Runs are held open until AWS is down: work is provably in flight when the outage begins.
    ledger.hold();
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(
            boss.create_task(
                &json!({"title": format!("work {n}"), "priority": "critical", "autoDispatch": true,
                "executor": {"type": "http", "config": {"url": ledger.url}}}),
            )
            .await,
        );
    }
    ledger.wait_for("a run in flight", 1, |_| true).await;
    outage.set_down(true);
    let in_flight = ledger.runs();
    let refused = boss
        .post("/api/tasks", &json!({"title": "during the outage"}))
        .await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert_eq!(refused.error_code(), "service_unavailable");
    assert_eq!(refused.headers["retry-after"], "1");
    // The held runs finish while AWS is unreachable: their results cannot be recorded then.
    ledger.release();
    eventually(
        "the in-flight runs to be answered during the outage",
        scaled(Duration::from_secs(30)),
        || std::future::ready(ledger.open().is_empty().then_some(())),
    )
    .await;
    outage.set_down(false);

    for id in &ids {
        let task = wait_for_status(&boss, id, &["completed", "failed"]).await;
        assert_eq!(task["status"], "completed", "{task}");
        assert_runs_match_the_record(&ledger, &task);
    }
    // Work that had not started when AWS went away ran exactly once.
    let started_before: Vec<&str> = in_flight.iter().map(|r| r.task_id.as_str()).collect();
    for id in ids
        .iter()
        .filter(|id| !started_before.contains(&id.as_str()))
    {
        assert_eq!(ledger.runs_of(id).len(), 1, "task {id} ran more than once");
    }
    host.stop().await;
}

/// A task's runs in the ledger agree with its record: attempts only go up (no attempt ran
/// twice), the last run is the task's last attempt, and its answer is the task's result.
fn assert_runs_match_the_record(ledger: &Ledger, task: &Value) {
    let id = task["id"].as_str().unwrap();
    let runs = ledger.runs_of(id);
    let last = runs.last().unwrap_or_else(|| panic!("task {id} never ran"));
    assert!(
        runs.windows(2).all(|w| w[0].attempt < w[1].attempt),
        "an attempt of {id} ran twice: {runs:?}"
    );
    assert_eq!(Some(last.attempt), task["attempts"].as_u64(), "{task}");
    assert_eq!(task["result"], json!({"run": last.seq}), "{task}");
}

#[tokio::test]
async fn a_poison_message_cannot_block_its_queue() {
    let clients = stack().clients().await;
    let queue = &stack().refs["HighQueue"];
    for garbage in ["not json at all", "{\"taskId\": 42}", "{}"] {
        clients
            .sqs
            .send_message()
            .queue_url(queue)
            .message_body(garbage)
            .send()
            .await
            .unwrap();
    }
    let boss = Client::as_user(&unique_agency("poison"), "boss", "manager");
    let id = boss
        .create_task(&json!({"title": "after the poison", "priority": "high", "autoDispatch": true, "executor": {"type": "echo"}}))
        .await;
    let task = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "completed");
    // The garbage was dead-lettered with its error, not retried forever.
    let dlq = &stack().refs["HighDeadLetterQueue"];
    let dead = dead_letter(dlq, "the poison message in the DLQ", |body| {
        body == "not json at all"
    })
    .await;
    let error = dead.message_attributes.unwrap_or_default()["error"]
        .string_value
        .clone()
        .unwrap_or_default();
    assert!(error.contains("malformed dispatch message"), "{error}");
}

#[tokio::test]
async fn a_host_killed_mid_load_still_finishes_every_task_once() {
    let mut first = isolated_stack("taskflow-kill-load").await;
    let boss = Client::as_user(&unique_agency("killload"), "boss", "manager").at(&first.api_url());
    let ledger = Ledger::start();
    // Held runs: the first host dies with work provably in flight.
    ledger.hold();
    let mut ids = Vec::new();
    for n in 0..20 {
        let priority = ["critical", "high", "normal"][n % 3];
        ids.push(
            boss.create_task_retrying(
                &json!({"title": format!("load {n}"), "priority": priority, "autoDispatch": true,
                "executor": {"type": "http", "config": {"url": ledger.url}}}),
            )
            .await,
        );
    }
    ledger.wait_for("work in flight", 1, |_| true).await;
    first.kill_functions().await;
    // Every run so far belongs to the dead host; none of them was answered.
    let killed = ledger.runs();
    assert!(killed.iter().all(|r| !r.answered));
    ledger.release();

    let second = isolated_stack("taskflow-kill-load").await;
    let boss = boss.at(&second.api_url());
    for id in &ids {
        let task = wait_for_status(&boss, id, &["completed", "failed"]).await;
        assert_eq!(task["status"], "completed", "{task}");
        assert_runs_match_the_record(&ledger, &task);
        // Exactly once on the surviving host; plus the lost run if the dead host had one.
        let after_kill =
            ledger.runs_of(id).len() - killed.iter().filter(|r| &r.task_id == id).count();
        assert_eq!(
            after_kill, 1,
            "task {id} ran {after_kill} times after the kill"
        );
    }
    second.stop().await;
}

/// The worker runs as its real binary under the local Lambda runtime. Here its `Timeout` (8 s)
/// is below the lease (20 s), so a run that hangs is ended by Lambda, not by the runner's own
/// budget: the invocation is killed without writing anything, its message comes back after
/// the visibility timeout, and once the lease has lapsed the task is taken over and finishes
/// once.
#[tokio::test]
async fn a_worker_killed_at_its_timeout_leaves_the_task_to_finish_once() {
    if !matches!(
        isolated_options("x").functions,
        local_stack::FunctionHost::Processes { .. }
    ) {
        println!("SKIPPED: needs the functions as processes (TASKFLOW_FUNCTIONS=in-process)");
        return;
    }
    let mut options = isolated_options("taskflow-lambda-timeout");
    options.parameter_overrides = vec![
        ("LeaseSeconds".into(), "20".into()),
        ("WorkerTimeoutSeconds".into(), "8".into()),
        ("QueueVisibilitySeconds".into(), "22".into()),
        (
            "HttpExecutorAllowedHosts".into(),
            integration_tests::LOOPBACK_ALLOWED.into(),
        ),
    ];
    let host = LocalStack::start(options).await.expect("host");
    let boss =
        Client::as_user(&unique_agency("lambdatimeout"), "boss", "manager").at(&host.api_url());
    let ledger = Ledger::start();
    // Every run is held until a second one arrives: the first is still running when its
    // invocation reaches the worker's Timeout (8 s; the request's own 15 s timeout is the most
    // the 20 s lease accepts, and comes later).
    ledger.hold();
    let id = boss
        .create_task(
            &json!({"title": "hangs once", "priority": "critical", "autoDispatch": true,
            "executor": {"type": "http", "config": {"url": ledger.url, "timeoutSeconds": 15}}}),
        )
        .await;
    ledger
        .wait_for("the first run", 1, |r| r.task_id == id)
        .await;
    let running = boss.get(&format!("/api/tasks/{id}")).await.body;
    assert_eq!(running["status"], "in_progress", "{running}");
    ledger
        .wait_for("the run after the timeout", 2, |r| r.task_id == id)
        .await;
    ledger.release();
    let task = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "completed", "{task}");
    let worker = host.function_runtime("WorkerFunction").expect("processes");
    assert!(worker.stats().timeouts >= 1, "{:?}", worker.stats());
    // The killed run, then the takeover. (On a loaded machine a takeover's cold start can
    // itself outlast 8 s; then there is one more killed attempt, never a second completion.)
    let runs = ledger.runs_of(&id);
    let last = runs.last().expect("runs");
    assert_eq!(runs[0].attempt, 1);
    assert!(runs.len() >= 2, "{runs:?}");
    assert!(
        runs.windows(2).all(|w| w[0].attempt < w[1].attempt),
        "{runs:?}"
    );
    assert_eq!(task["attempts"].as_u64(), Some(last.attempt));
    assert_eq!(
        task["result"],
        json!({"run": last.seq}),
        "the takeover's answer"
    );
    host.stop().await;
}
