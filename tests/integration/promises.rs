//! Promises the README makes that no other test held the code to (issue 18): the DLQ
//! attributes, offline agents, Idempotency-Key expiry, cross-agency retry, a chain step's
//! heartbeat timeout and the lifetime of the batch presigned URLs.

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::QueueAttributeName;
use chrono::{DateTime, Utc};
use integration_tests::{eventually, isolated_options, stack, unique_agency, Client};
use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::ports::AgentStore;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// End-to-end polls: generous, the machine is small and often busy compiling.
const PATIENCE: Duration = Duration::from_secs(90);

async fn wait_for(client: &Client, id: &str, statuses: &[&str]) -> Value {
    eventually(
        &format!("task {id} to reach {statuses:?}"),
        PATIENCE,
        || async {
            let reply = client.get(&format!("/api/tasks/{id}")).await;
            let status = reply.body["status"].as_str().unwrap_or_default().to_owned();
            statuses.contains(&status.as_str()).then_some(reply.body)
        },
    )
    .await
}

/// An http executor's endpoint on 127.0.0.1 that answers every POST with `status`
/// and counts them.
struct Answering {
    url: String,
    hits: Arc<AtomicUsize>,
}

impl Answering {
    fn start(status: u16) -> Answering {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        // A plain thread: it outlives the test's runtime and needs none.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buffer = [0u8; 8192];
                // Headers, then the body announced by Content-Length.
                while let Ok(n) = stream.read(&mut buffer) {
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(split) = text.find("\r\n\r\n") {
                        let length = text[..split]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                            })
                            .unwrap_or(0);
                        if request.len() >= split + 4 + length {
                            break;
                        }
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let body = "{\"error\":\"rejected\"}";
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes());
            }
        });
        Answering { url, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------
// 1. The worker dead-letters a task's last failed attempt with error, failedAt, sourceQueue.

#[tokio::test]
async fn a_dead_lettered_message_carries_error_failed_at_and_source_queue() {
    let boss = Client::as_user(&unique_agency("dlq-attrs"), "boss", "manager");
    let created_at = Utc::now();
    // The normal tier: no other test dead-letters into its DLQ.
    let id = boss
        .create_task(
            &json!({"title": "Fails once, has one attempt", "priority": "normal",
            "autoDispatch": true,
            "executor": {"type": "sleep", "config": {"failAttempts": 1}},
            "retry": {"maxAttempts": 1, "baseDelaySeconds": 1}}),
        )
        .await;
    let task = wait_for(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["attempts"], 1, "{task}");

    let clients = stack().clients().await;
    let dlq = &stack().refs["NormalDeadLetterQueue"];
    let dead =
        integration_tests::dead_letter(dlq, "the task's dead letter", |body| body.contains(&id))
            .await;
    let attributes = dead.message_attributes.clone().unwrap_or_default();
    let text = |name: &str| {
        attributes
            .get(name)
            .and_then(|a| a.string_value.clone())
            .unwrap_or_else(|| panic!("no {name} attribute: {attributes:?}"))
    };

    let error = text("error");
    assert!(!error.is_empty(), "{attributes:?}");
    assert_eq!(
        Some(error.as_str()),
        task["error"].as_str(),
        "the DLQ's error is the task's last error"
    );

    let failed_at: DateTime<Utc> = DateTime::parse_from_rfc3339(&text("failedAt"))
        .unwrap_or_else(|e| panic!("failedAt is not RFC 3339 ({e}): {attributes:?}"))
        .with_timezone(&Utc);
    let now = Utc::now();
    assert!(
        failed_at >= created_at - chrono::Duration::seconds(1)
            && failed_at <= now + chrono::Duration::seconds(1),
        "failedAt {failed_at} lies between the task's creation {created_at} and now {now}"
    );

    // The tier queue's ARN, as SQS itself reports it.
    let source_arn = clients
        .sqs
        .get_queue_attributes()
        .queue_url(&stack().refs["NormalQueue"])
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue attributes")
        .attributes
        .unwrap_or_default()
        .remove(&QueueAttributeName::QueueArn)
        .expect("queue arn");
    assert_eq!(text("sourceQueue"), source_arn);

    // Leave the DLQ as we found it.
    if let Some(receipt) = dead.receipt_handle {
        let _ = clients
            .sqs
            .delete_message()
            .queue_url(dlq)
            .receipt_handle(receipt)
            .send()
            .await;
    }
}

// ---------------------------------------------------------------------------------------
// 2. Silent for 90 s → offline, and its unfinished tasks are reassigned.

#[tokio::test]
async fn a_silent_agent_goes_offline_and_its_open_tasks_go_to_a_live_agent() {
    // A host with an emulator of its own: a sweep covers every agency's agents, and on the
    // shared table other tests' agents go silent too, which made this one slow and racy.
    let host = heartbeat_stack("taskflow-promise-agents", None).await;
    let sdk = local_stack::emulator::sdk_config_for(&host.endpoints).await;
    let clients = shared::aws::AwsClients::new(&sdk);
    let config = integration_tests::worker_config(&host);
    let agency_name = unique_agency("agents-offline");
    let boss = Client::as_user(&agency_name, "boss", "manager").at(&host.api_url());
    // a-gone registers first and takes both tasks by auto-assignment (capacity reserved).
    let register = |agent: &'static str| {
        let boss = boss.clone();
        async move {
            let reply = boss
                .put(
                    &format!("/api/agents/{agent}"),
                    &json!({"capabilities": ["ocr"], "capacity": 2}),
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        }
    };
    register("a-gone").await;
    let mut ids = Vec::new();
    for title in ["scan invoices", "scan receipts"] {
        let id = boss
            .create_task(&json!({"title": title, "requiredCapability": "ocr"}))
            .await;
        let reply = boss
            .post(&format!("/api/tasks/{id}/assign"), &json!({"auto": true}))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["assignedTo"], "a-gone", "{}", reply.body);
        ids.push(id);
    }
    // a-gone starts one of them (in progress, a person's task: no lease), then falls silent.
    let gone = Client::as_user(&agency_name, "a-gone", "agent").at(&host.api_url());
    let reply = gone
        .post(&format!("/api/tasks/{}/start", ids[1]), &json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "in_progress");

    // b-live registers; then a-gone's last heartbeat is set five minutes back (instead of
    // waiting 90 s for it to lapse). In this order, a sweep of the stack's own schedule that
    // comes in between always finds a live agent to hand the work to.
    register("b-live").await;
    let agents = shared::store::DynamoAgentStore::new(clients.dynamodb.clone(), &config.table_name);
    let agency = shared::domain::AgencyId::parse(&agency_name).unwrap();
    let a_gone = shared::domain::UserId::parse("a-gone").unwrap();
    let b_live = shared::domain::UserId::parse("b-live").unwrap();
    agents
        .heartbeat(
            &agency,
            &a_gone,
            &["ocr".to_owned()],
            2,
            Utc::now() - chrono::Duration::minutes(5),
        )
        .await
        .expect("backdated heartbeat");

    // One sweep, as the scheduled sweeper runs it. The stack's own schedule may get there
    // first; then that sweep does the work (only the sweep whose offline mark applies
    // reassigns), so the outcome is awaited rather than assumed done when this one returns.
    let services = shared::services::Services::new(&config, &clients);
    services.sweeper.sweep(Utc::now()).await.expect("sweep");
    let stored = eventually("a-gone's tasks to move", PATIENCE, || async {
        let stored = agents.get(&agency, &a_gone).await.ok()??;
        let live = agents.get(&agency, &b_live).await.ok()??;
        let moved = stored.status == shared::domain::AgentStatus::Offline
            && stored.active_tasks == 0
            && live.active_tasks == 2;
        moved.then_some(stored)
    })
    .await;
    assert_eq!(stored.active_tasks, 0, "its reservations were released");
    let live = agents.get(&agency, &b_live).await.unwrap().expect("b-live");
    assert_eq!(live.status, shared::domain::AgentStatus::Online);
    assert_eq!(live.active_tasks, 2, "{live:?}");
    for id in &ids {
        let task = boss.get(&format!("/api/tasks/{id}")).await.body;
        assert_eq!(task["assignedTo"], "b-live", "{task}");
        assert_eq!(task["status"], "assigned", "{task}");
    }
    // b-live heartbeats as a live agent does: on a loaded machine the steps above can take
    // longer than the 90 s after which the stack's own sweeper would call it silent too.
    register("b-live").await;
    let listed = boss.get("/api/agents").await.body;
    let status_of = |id: &str| {
        listed["items"]
            .as_array()
            .and_then(|items| items.iter().find(|a| a["id"] == id))
            .map(|a| a["status"].clone())
    };
    assert_eq!(status_of("a-gone"), Some(json!("offline")), "{listed}");
    assert_eq!(status_of("b-live"), Some(json!("online")), "{listed}");
    host.stop().await;
}

// ---------------------------------------------------------------------------------------
// 3. An Idempotency-Key is remembered for 24 hours, then the same key creates a new task.

/// The idempotency record of `key`, found by its key (its partition key is a hash).
async fn idempotency_item(
    clients: &shared::aws::AwsClients,
    agency: &str,
    key: &str,
) -> Option<std::collections::HashMap<String, AttributeValue>> {
    let mut start = None;
    loop {
        let out = clients
            .dynamodb
            .scan()
            .table_name(&stack().config.table_name)
            .filter_expression("idempotencyKey = :key AND begins_with(PK, :prefix)")
            .expression_attribute_values(":key", AttributeValue::S(key.to_owned()))
            .expression_attribute_values(
                ":prefix",
                AttributeValue::S(format!("AGENCY#{agency}#IDEMPOTENCY#")),
            )
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan");
        if let Some(item) = out.items.unwrap_or_default().into_iter().next() {
            return Some(item);
        }
        start = out.last_evaluated_key;
        start.as_ref()?;
    }
}

fn number(item: &std::collections::HashMap<String, AttributeValue>, name: &str) -> i64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}: {item:?}"))
}

#[tokio::test]
async fn an_idempotency_key_creates_a_new_task_once_its_24_hours_are_over() {
    let agency = unique_agency("idem-expiry");
    let boss = Client::as_user(&agency, "boss", "manager");
    let key = format!("report-{}", ulid::Ulid::new());
    let body = json!({"title": "Quarterly report", "priority": "low"});
    let create = || async {
        boss.send(
            reqwest::Method::POST,
            "/api/tasks",
            Some(&body),
            &[("idempotency-key", &key)],
        )
        .await
    };
    let first = create().await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let first_id = first.body["id"].as_str().unwrap().to_owned();
    let replay = create().await;
    assert_eq!(replay.body["id"], first_id, "within 24 h the key replays");

    // The record expires 24 hours after it was made (DynamoDB's TTL attribute).
    let clients = stack().clients().await;
    let item = idempotency_item(&clients, &agency, &key)
        .await
        .expect("the idempotency record");
    let created: DateTime<Utc> = item["createdAt"].as_s().unwrap().parse().unwrap();
    assert_eq!(
        number(&item, "expiresAt"),
        created.timestamp() + 24 * 60 * 60
    );

    // Make it 24 hours and a second old. DynamoDB's TTL deletes expired items up to 48 h
    // late (and moto never does), so only the code's own expiry check can honour the promise.
    let made = Utc::now() - chrono::Duration::hours(24) - chrono::Duration::seconds(1);
    clients
        .dynamodb
        .update_item()
        .table_name(&stack().config.table_name)
        .key("PK", item["PK"].clone())
        .key("SK", item["SK"].clone())
        .update_expression("SET createdAt = :created, expiresAt = :expires")
        .expression_attribute_values(":created", AttributeValue::S(made.to_rfc3339()))
        .expression_attribute_values(
            ":expires",
            AttributeValue::N((made.timestamp() + 24 * 60 * 60).to_string()),
        )
        .send()
        .await
        .expect("age the record");

    let second = create().await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    let second_id = second.body["id"].as_str().unwrap().to_owned();
    assert_ne!(second_id, first_id, "an expired key creates a new task");
    // The key now stands for the new task, and the old one is still there.
    let again = create().await;
    assert_eq!(again.body["id"], second_id, "{}", again.body);
    let old = boss.get(&format!("/api/tasks/{first_id}")).await;
    assert_eq!(old.status, StatusCode::OK);
    let listed = boss.get("/api/tasks").await.body;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");
}

// ---------------------------------------------------------------------------------------
// 4. Retrying another agency's failed task: 404, and nothing about the task changes.

#[tokio::test]
async fn another_agencys_manager_cannot_retry_a_failed_task() {
    let owner = Client::as_user(&unique_agency("retry-owner"), "boss", "manager");
    let rejecting = Answering::start(422);
    let id = owner
        .create_task(
            &json!({"title": "Rejected hook", "priority": "critical", "autoDispatch": true,
            "executor": {"type": "http", "config": {"url": rejecting.url}},
            "retry": {"maxAttempts": 1, "baseDelaySeconds": 1}}),
        )
        .await;
    let before = wait_for(&owner, &id, &["completed", "failed"]).await;
    assert_eq!(before["status"], "failed", "{before}");
    assert_eq!(rejecting.hits(), 1);

    // Same user id, manager role, another agency.
    let attacker = Client::as_user(&unique_agency("retry-attacker"), "boss", "manager");
    let reply = attacker
        .post(&format!("/api/tasks/{id}/retry"), &json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
    assert_eq!(reply.error_code(), "not_found", "{}", reply.body);
    let etag_retry = attacker
        .send(
            reqwest::Method::POST,
            &format!("/api/tasks/{id}/retry"),
            Some(&json!({})),
            &[("if-match", &format!("\"{}\"", before["version"]))],
        )
        .await;
    assert_eq!(
        etag_retry.status,
        StatusCode::NOT_FOUND,
        "{}",
        etag_retry.body
    );

    // Untouched: status, version, attempts, dispatch, error — the whole task.
    let after = owner.get(&format!("/api/tasks/{id}")).await.body;
    assert_eq!(after, before);

    // Not run again: the owner's own retry is the only other run the endpoint ever sees.
    let retried = owner
        .post(&format!("/api/tasks/{id}/retry"), &json!({}))
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    let task = eventually("the owner's retry to run and fail", PATIENCE, || async {
        let task = owner.get(&format!("/api/tasks/{id}")).await.body;
        (task["status"] == "failed" && task["dispatchId"] != before["dispatchId"]).then_some(task)
    })
    .await;
    assert_eq!(task["attempts"], 1, "{task}");
    assert_eq!(
        rejecting.hits(),
        2,
        "one run before, one after the owner's retry"
    );
}

// ---------------------------------------------------------------------------------------
// 5. A chain step whose worker stops heartbeating fails for a heartbeat timeout.

async fn step_named(client: &Client, id: &str, name: &str) -> Value {
    let view = client.get(&format!("/api/tasks/{id}/steps")).await.body;
    view["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

/// A host of its own (quiet queues, so a step message is picked up at once) with a lease
/// long enough for steps that outlast their heartbeatSeconds. A step's heartbeat window
/// opens when its message is sent, so a busy shared queue would eat into it; the worker's
/// first heartbeat comes after half of heartbeatSeconds.
/// A host with long leases. Without `attach`, it starts an emulator of its own on moto: the
/// shared one queues requests behind the other tests' load (the priority test's 500 tasks),
/// and a step's heartbeat window cannot tell a slow emulator from a silent worker.
async fn heartbeat_stack(
    stack_name: &str,
    attach: Option<local_stack::Backend>,
) -> local_stack::LocalStack {
    let mut options = isolated_options(stack_name);
    match attach {
        Some(backend) => options.backend = backend,
        None if matches!(options.backend, local_stack::Backend::Existing { .. }) => {
            options.backend = local_stack::Backend::Moto {
                venv: integration_tests::venv_dir(),
                port: 0,
            };
        }
        None => {}
    }
    options.parameter_overrides = [
        ("LeaseSeconds", "60"),
        ("WorkerTimeoutSeconds", "75"),
        ("QueueVisibilitySeconds", "95"),
        (
            "HttpExecutorAllowedHosts",
            integration_tests::LOOPBACK_ALLOWED,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    local_stack::LocalStack::start(options)
        .await
        .expect("isolated stack")
}

#[tokio::test]
async fn a_chain_step_whose_worker_stops_heartbeating_fails_on_its_heartbeat_timeout() {
    // Its own host, so its workers can be killed mid-step without touching other tests.
    let stack_name = "taskflow-promise-heartbeat";
    let mut first = heartbeat_stack(stack_name, None).await;
    let boss = Client::as_user(&unique_agency("heartbeat"), "boss", "manager").at(&first.api_url());
    // Thirty seconds of work under a ten-minute timeout, heartbeating every 5 s (half of
    // heartbeatSeconds): only silence can end it early.
    let id = boss
        .create_task(
            &json!({"title": "silent worker", "type": "multi_step", "priority": "critical",
            "autoDispatch": true, "steps": [
            {"name": "silent", "config": {"executor": {"type": "sleep", "config": {"seconds": 30}},
             "heartbeatSeconds": 10, "timeoutSeconds": 600}}]}),
        )
        .await;
    eventually("the step to be running", PATIENCE, || async {
        (step_named(&boss, &id, "silent").await["status"] == "running").then_some(())
    })
    .await;
    // The worker dies mid-step: no more heartbeats, no answer.
    first.kill_functions().await;
    let killed = std::time::Instant::now();

    // A fresh host on the same queues records the failure the state machine reports.
    let second = heartbeat_stack(stack_name, Some(first.attach_backend())).await;
    let boss = boss.at(&second.api_url());
    let task = wait_for(&boss, &id, &["completed", "failed"]).await;
    let waited = killed.elapsed();
    assert_eq!(task["status"], "failed", "{task}");
    // Well before the step's 600 s timeout: the heartbeat ended it (the poll gives up after 90 s).
    assert!(waited < Duration::from_secs(600), "{waited:?}");
    let step = step_named(&boss, &id, "silent").await;
    assert_eq!(step["status"], "failed", "{step}");
    let error = step["error"].as_str().unwrap_or_default();
    // moto (and LocalStack) report a heartbeat expiry as States.Timeout; AWS as
    // States.HeartbeatTimeout.
    assert!(
        error.contains("States.HeartbeatTimeout") || error.contains("States.Timeout"),
        "{step}"
    );
    let task_error = task["error"].as_str().unwrap_or_default();
    assert!(task_error.contains("step 'silent' failed"), "{task}");
    assert!(task_error.contains("Timeout"), "{task}");
    second.stop().await;
    first.stop().await; // its emulator
}

/// The other half of the heartbeat promise: a step that runs longer than its
/// heartbeatSeconds is kept alive by its worker's heartbeats.
#[tokio::test]
async fn a_chain_step_that_heartbeats_outlives_its_heartbeat_window() {
    let host = heartbeat_stack("taskflow-promise-heartbeat-ok", None).await;
    let boss =
        Client::as_user(&unique_agency("heartbeat-ok"), "boss", "manager").at(&host.api_url());
    // The heartbeat window opens when the step's message is sent, so it also covers the wait
    // for a worker. A first chain warms this host's workers (no cold start of the worker's
    // binary inside the window), and the window is 20 s for a busy machine.
    let warm_up = boss
        .create_task(
            &json!({"title": "warm up", "type": "multi_step", "priority": "critical",
            "autoDispatch": true, "steps": [{"name": "quick"}]}),
        )
        .await;
    wait_for(&boss, &warm_up, &["completed"]).await;
    // 45 seconds of work, over twice its heartbeatSeconds.
    let id = boss
        .create_task(
            &json!({"title": "steady worker", "type": "multi_step", "priority": "critical",
            "autoDispatch": true, "steps": [
            {"name": "steady", "config": {"executor": {"type": "sleep", "config": {"seconds": 45}},
             "heartbeatSeconds": 20, "timeoutSeconds": 120}}]}),
        )
        .await;
    let task = wait_for(&boss, &id, &["completed", "failed"]).await;
    let step = step_named(&boss, &id, "steady").await;
    assert_eq!(task["status"], "completed", "{task} {step}");
    assert_eq!(step["status"], "completed", "{step}");
    let ran = (step["completedAt"]
        .as_str()
        .unwrap()
        .parse::<DateTime<Utc>>()
        .unwrap()
        - step["startedAt"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap())
    .num_seconds();
    assert!(ran >= 45, "it ran past its heartbeatSeconds: {step}");
    host.stop().await;
}

// ---------------------------------------------------------------------------------------
// 6. Batch upload and results URLs are presigned for 15 minutes and work now.
//
// moto checks neither signatures nor expiry, so this cannot show that S3 refuses the URLs
// after 15 minutes; it shows the lifetime the URLs are signed with, and that they work now.
// The signing itself, with a fixed clock, is unit-tested in shared/src/store/objects.rs.

/// The documented lifetime (openapi.json: PresignedUpload and resultsUrl, "15 minutes").
const URL_LIFETIME_SECONDS: i64 = 15 * 60;

/// X-Amz-Date and X-Amz-Expires of a presigned URL.
fn signed_window(url: &str) -> (DateTime<Utc>, i64) {
    let parsed = reqwest::Url::parse(url).expect("url");
    assert_eq!(parsed.host_str(), Some("127.0.0.1"), "{url}");
    let query: std::collections::HashMap<String, String> =
        parsed.query_pairs().into_owned().collect();
    let date = chrono::NaiveDateTime::parse_from_str(&query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        .expect("X-Amz-Date")
        .and_utc();
    (date, query["X-Amz-Expires"].parse().expect("X-Amz-Expires"))
}

fn assert_signed_now(url: &str) {
    let (date, expires) = signed_window(url);
    assert_eq!(expires, URL_LIFETIME_SECONDS, "{url}");
    let skew = (Utc::now() - date).num_seconds().abs();
    assert!(skew < 60, "signed {skew} s away from now: {url}");
}

#[tokio::test]
async fn batch_upload_and_results_urls_are_signed_for_15_minutes_and_work() {
    let boss = Client::as_user(&unique_agency("presigned"), "boss", "manager");
    let reply = boss
        .post("/api/batches/uploads", &json!({"fileName": "skus.csv"}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let upload = &reply.body["upload"];
    let url = upload["url"].as_str().expect("upload url");
    assert_signed_now(url);
    // The advertised expiresAt is the signature's date plus its lifetime.
    let (date, expires) = signed_window(url);
    let expires_at: DateTime<Utc> = upload["expiresAt"].as_str().unwrap().parse().unwrap();
    let gap = (expires_at - (date + chrono::Duration::seconds(expires)))
        .num_seconds()
        .abs();
    assert!(
        gap <= 5,
        "expiresAt {expires_at} vs signed {date} + {expires} s"
    );

    let put = reqwest::Client::new()
        .put(url)
        .header(
            "content-type",
            upload["headers"]["Content-Type"].as_str().unwrap(),
        )
        .body("sku\na\nb\nc\n")
        .send()
        .await
        .expect("PUT to the presigned URL");
    assert!(put.status().is_success(), "{:?}", put.text().await);

    let created = boss
        .post(
            "/api/batches",
            // High: the URLs are what this proves, not a wait behind other tests' background
            // backlog (batch chunks take no fair-share slot, so they queue behind it).
            &json!({"source": {"key": reply.body["key"]}, "executor": {"type": "echo"}, "priority": "high"}),
        )
        .await;
    assert!(created.status.is_success(), "{}", created.body);
    let batch_id = created.body["id"].as_str().unwrap().to_owned();
    // A batch goes through the Distributed Map on the emulator: slow when the suite is busy.
    let batch = eventually(
        &format!("batch {batch_id} to finish"),
        PATIENCE * 3,
        || async {
            let view = boss.get(&format!("/api/batches/{batch_id}")).await.body;
            ["completed", "failed"]
                .contains(&view["status"].as_str().unwrap_or_default())
                .then_some(view)
        },
    )
    .await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let results = batch["resultsUrl"].as_str().expect("results url");
    assert_signed_now(results);
    let summary: Value = reqwest::get(results)
        .await
        .expect("GET the results URL")
        .error_for_status()
        .expect("results download")
        .json()
        .await
        .expect("summary JSON");
    assert_eq!(summary["successItems"], 3, "{summary}");
}
