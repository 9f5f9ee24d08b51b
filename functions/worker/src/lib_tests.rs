//! The worker's SQS side, against the in-memory ports and a recording queue: which
//! runner a body goes to, which records come back, retry delays and dead letters.

use super::{QueueActions, Worker};
use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use serde_json::{json, Value};
use shared::config::Config;
use shared::domain::{
    AgencyId, BatchMessage, Caller, ChainMessage, DispatchMessage, Priority, Role, TaskId,
    TaskStatus, UserId,
};
use shared::executors::{ExecError, Executor, ExecutorRegistry, Job, Outcome};
use shared::ports::TaskStore;
use shared::testing::MemoryWorld;
use shared::AppError;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// (queue URL, receipt handle, seconds)
type VisibilityCall = (String, String, i32);
/// (queue URL, body, attributes, DelaySeconds)
type SentMessage = (String, String, BTreeMap<String, String>, u64);

/// Records the queue actions instead of calling SQS.
#[derive(Default)]
struct RecordingQueue {
    visibility: Mutex<Vec<VisibilityCall>>,
    sent: Mutex<Vec<SentMessage>>,
    refuse_visibility: AtomicBool,
    refuse_sends: AtomicBool,
}

#[async_trait]
impl QueueActions for RecordingQueue {
    async fn change_visibility(
        &self,
        queue_url: &str,
        receipt_handle: &str,
        seconds: i32,
    ) -> Result<(), AppError> {
        if self.refuse_visibility.load(Ordering::SeqCst) {
            return Err(AppError::Unavailable("sqs:ChangeMessageVisibility".into()));
        }
        self.visibility
            .lock()
            .unwrap()
            .push((queue_url.into(), receipt_handle.into(), seconds));
        Ok(())
    }

    async fn send(
        &self,
        queue_url: &str,
        body: &str,
        attributes: &[(&str, String)],
        delay: Duration,
    ) -> Result<(), AppError> {
        if self.refuse_sends.load(Ordering::SeqCst) {
            return Err(AppError::Unavailable("sqs:SendMessage".into()));
        }
        let attributes = attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        self.sent.lock().unwrap().push((
            queue_url.into(),
            body.into(),
            attributes,
            // What SqsQueue sends as DelaySeconds.
            shared::domain::seconds_rounded_up(delay),
        ));
        Ok(())
    }
}

/// Fails for good with a long error: 1,500 two-byte characters.
struct Grumpy;

#[async_trait]
impl Executor for Grumpy {
    fn validate(&self, _config: &Value) -> Result<(), String> {
        Ok(())
    }
    async fn run(&self, _job: &Job<'_>) -> Result<Outcome, ExecError> {
        Err(ExecError::Permanent("é".repeat(1500)))
    }
}

/// Fails in a way worth retrying: a downstream outage.
struct Flaky;

#[async_trait]
impl Executor for Flaky {
    fn validate(&self, _config: &Value) -> Result<(), String> {
        Ok(())
    }
    async fn run(&self, _job: &Job<'_>) -> Result<Outcome, ExecError> {
        Err(ExecError::Retryable("503 from downstream".into()))
    }
}

/// Panics: a bug on one record's data.
struct Panicky;

#[async_trait]
impl Executor for Panicky {
    fn validate(&self, _config: &Value) -> Result<(), String> {
        Ok(())
    }
    async fn run(&self, _job: &Job<'_>) -> Result<Outcome, ExecError> {
        panic!("index out of bounds on item 7")
    }
}

fn executors() -> ExecutorRegistry {
    let mut executors = ExecutorRegistry::builtin();
    executors.register("grumpy", Arc::new(Grumpy));
    executors.register("panicky", Arc::new(Panicky));
    executors.register("flaky", Arc::new(Flaky));
    executors
}

fn boss() -> Caller {
    Caller {
        user: UserId::parse("boss").unwrap(),
        agency: AgencyId::parse("a1").unwrap(),
        role: Role::Manager,
    }
}

fn queue_url(tier: Priority) -> String {
    format!("https://sqs.us-east-1.amazonaws.com/123456789012/taskflow-{tier}")
}

fn dlq_url(tier: Priority) -> String {
    format!("{}-dlq", queue_url(tier))
}

fn arn(tier: Priority) -> String {
    format!("arn:aws:sqs:us-east-1:123456789012:taskflow-{tier}")
}

fn config() -> Config {
    Config::from_lookup(|key| {
        let tier = |name: &str| name.to_ascii_lowercase().parse::<Priority>().unwrap();
        if let Some(name) = key.strip_prefix("QUEUE_URL_") {
            return Some(queue_url(tier(name)));
        }
        if let Some(name) = key.strip_prefix("DLQ_URL_") {
            return Some(dlq_url(tier(name)));
        }
        match key {
            "LEASE_SECONDS" | "AGING_FRACTION" => None,
            // Quotas keep their defaults.
            quota if quota.starts_with("QUOTA_") => None,
            // The default caps, windows and fair share (a memory URL is neither).
            "AGENCY_IN_FLIGHT_CAPS" | "AGENCY_DISPATCH_WINDOWS" | "FAIR_SHARE" => None,
            other => Some(format!("memory://{other}")),
        }
    })
    .unwrap()
}

struct Fixture {
    world: MemoryWorld,
    queue: Arc<RecordingQueue>,
    worker: Worker,
}

impl Fixture {
    fn new() -> Self {
        let world = MemoryWorld::new();
        let queue = Arc::new(RecordingQueue::default());
        let worker = Worker::from_parts(config(), world.services_with(executors()), queue.clone());
        Self {
            world,
            queue,
            worker,
        }
    }

    /// An auto-dispatched task and its queue message.
    async fn dispatched(&self, executor: &str) -> (TaskId, DispatchMessage) {
        let body = json!({"title": "t", "priority": "high", "autoDispatch": true,
            "executor": {"type": executor}});
        let created = self
            .world
            .services_with(executors())
            .tasks
            .create(&boss(), &body, None)
            .await
            .unwrap();
        let id = TaskId::parse(created.task["id"].as_str().unwrap()).unwrap();
        let message = self.world.dispatcher.sent.lock().unwrap().pop().unwrap();
        (id, message)
    }

    async fn status(&self, id: TaskId) -> TaskStatus {
        self.world
            .store
            .get(&boss().agency, id)
            .await
            .unwrap()
            .unwrap()
            .status
    }

    async fn handle(&self, records: Vec<Value>) -> Vec<String> {
        let event: SqsEvent = serde_json::from_value(json!({ "Records": records })).unwrap();
        let response: SqsBatchResponse = self.worker.handle_batch(event).await;
        response
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect()
    }

    fn visibility(&self) -> Vec<VisibilityCall> {
        self.queue.visibility.lock().unwrap().clone()
    }

    fn sent(&self) -> Vec<SentMessage> {
        self.queue.sent.lock().unwrap().clone()
    }
}

fn record(id: &str, body: &str, tier: Priority) -> Value {
    json!({
        "messageId": id,
        "receiptHandle": format!("receipt-{id}"),
        "body": body,
        "eventSource": "aws:sqs",
        "eventSourceARN": arn(tier),
    })
}

fn text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap()
}

#[tokio::test]
async fn task_chain_and_batch_bodies_go_to_their_runners() {
    let f = Fixture::new();
    let (id, dispatch) = f.dispatched("echo").await;
    let step = ChainMessage::Step {
        task_id: TaskId::generate(),
        agency_id: boss().agency,
        step: "s".into(),
        task_token: "step-token".into(),
    };
    let finalize = BatchMessage::BatchFinalize {
        batch_id: TaskId::generate(),
        agency_id: boss().agency,
        round: 0,
        task_token: "batch-token".into(),
    };
    let failures = f
        .handle(vec![
            record("task", &text(&dispatch), Priority::High),
            record("step", &text(&step), Priority::High),
            record("batch", &text(&finalize), Priority::High),
        ])
        .await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(f.status(id).await, TaskStatus::Completed);
    let answers = f.world.orchestrator.answers.lock().unwrap().clone();
    assert_eq!(
        answers,
        vec![
            (
                "step-token".to_owned(),
                "Taskflow.Permanent".to_owned(),
                "the task or step no longer exists".to_owned()
            ),
            (
                "batch-token".to_owned(),
                "success".to_owned(),
                r#"{"status":"gone"}"#.to_owned()
            ),
        ]
    );
    assert!(f.sent().is_empty() && f.visibility().is_empty());
}

#[tokio::test]
async fn only_records_that_must_come_back_are_reported() {
    let f = Fixture::new();
    let (_, mut stale) = f.dispatched("echo").await;
    stale.dispatch_id = "superseded".into();
    let (held, leased) = f.dispatched("echo").await;
    let mut task = f
        .world
        .store
        .get(&boss().agency, held)
        .await
        .unwrap()
        .unwrap();
    let read = task.version;
    task.status = TaskStatus::InProgress;
    task.lease_expires_at = Some(chrono::Utc::now() + chrono::Duration::seconds(20));
    task.version += 1;
    f.world.store.replace(&task, read).await.unwrap();
    let mut no_receipt = record("no-receipt", &text(&leased), Priority::High);
    no_receipt["receiptHandle"] = Value::Null;
    let mut no_id = record("x", &text(&leased), Priority::High);
    no_id["messageId"] = Value::Null;

    let failures = f
        .handle(vec![
            record("acked", &text(&stale), Priority::High),
            record("leased", &text(&leased), Priority::High),
            record("dead", "not a message", Priority::High),
            no_receipt,
            no_id,
        ])
        .await;
    assert_eq!(failures, ["leased", "no-receipt"]);
    // The kept record returns when the other worker's lease ends.
    let visibility = f.visibility();
    assert_eq!(visibility.len(), 2, "{visibility:?}");
    let (url, receipt, seconds) = &visibility[0];
    assert_eq!(
        (url.as_str(), receipt.as_str()),
        (queue_url(Priority::High).as_str(), "receipt-leased")
    );
    assert!((20..=21).contains(seconds), "{seconds}");
    assert_eq!(f.sent().len(), 1, "the malformed one was dead-lettered");
}

impl Fixture {
    /// Puts the task in progress under someone else's lease, ending `seconds` from now.
    async fn leased_for(&self, id: TaskId, seconds: i64) {
        let mut task = self
            .world
            .store
            .get(&boss().agency, id)
            .await
            .unwrap()
            .unwrap();
        let read = task.version;
        task.status = TaskStatus::InProgress;
        task.lease_expires_at = Some(chrono::Utc::now() + chrono::Duration::seconds(seconds));
        task.version += 1;
        self.world.store.replace(&task, read).await.unwrap();
    }
}

#[tokio::test]
async fn a_long_wait_is_a_delayed_copy_of_the_message_not_a_message_held_in_flight() {
    let f = Fixture::new();
    let (id, message) = f.dispatched("echo").await;
    f.leased_for(id, 100).await;
    let body = text(&message);
    let kept = f.handle(vec![record("m", &body, Priority::Normal)]).await;
    assert!(kept.is_empty(), "the copy replaces it: {kept:?}");
    assert!(f.visibility().is_empty(), "{:?}", f.visibility());
    let sent = f.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (url, sent_body, attributes, delay) = &sent[0];
    assert_eq!(
        url,
        &queue_url(Priority::Normal),
        "back to its own tier queue"
    );
    assert_eq!(sent_body, &body, "the same body, so the same dispatch id");
    assert!(attributes.is_empty());
    assert!((100..=101).contains(delay), "until the lease ends: {delay}");
}

#[tokio::test]
async fn a_wait_past_fifteen_minutes_is_copied_with_the_sqs_maximum_and_asked_again() {
    let f = Fixture::new();
    let (id, message) = f.dispatched("echo").await;
    f.leased_for(id, 20 * 3600).await;
    let body = text(&message);
    assert!(f
        .handle(vec![record("m", &body, Priority::Normal)])
        .await
        .is_empty());
    assert_eq!(f.sent()[0].3, 900, "DelaySeconds is at most 900");
    // The copy comes back with most of the lease left, and waits again.
    assert!(f
        .handle(vec![record("m2", &body, Priority::Normal)])
        .await
        .is_empty());
    assert_eq!(f.sent().len(), 2);
    assert_eq!(
        f.status(id).await,
        TaskStatus::InProgress,
        "never taken over early"
    );
}

#[tokio::test]
async fn a_copy_that_cannot_be_sent_leaves_the_message_held_in_flight() {
    let f = Fixture::new();
    let (id, message) = f.dispatched("echo").await;
    f.leased_for(id, 20 * 3600).await;
    f.queue.refuse_sends.store(true, Ordering::SeqCst);
    let failures = f
        .handle(vec![record("m", &text(&message), Priority::Normal)])
        .await;
    assert_eq!(failures, ["m"], "kept: nothing is lost");
    assert_eq!(
        f.visibility(),
        [(queue_url(Priority::Normal), "receipt-m".to_owned(), 43_200)],
        "held as before, up to the 12-hour visibility maximum"
    );

    // When the delay cannot be set either, the message still comes back (after the queue's
    // own timeout).
    f.queue.refuse_visibility.store(true, Ordering::SeqCst);
    let failures = f
        .handle(vec![record("m", &text(&message), Priority::Normal)])
        .await;
    assert_eq!(failures, ["m"]);
}

/// A short backoff is held in flight for its wait rounded up to whole seconds: rounded down,
/// the retry came back before the task's `queuedAt`, and a quick failure then finished before
/// it was queued.
#[tokio::test]
async fn a_held_retry_never_comes_back_before_its_queued_at() {
    let f = Fixture::new();
    // Backoffs from [0, 2 s): fractional, held in flight.
    for n in 0..5 {
        let body = json!({"title": "t", "priority": "low", "autoDispatch": true,
            "executor": {"type": "flaky"}, "retry": {"maxAttempts": 3, "baseDelaySeconds": 2}});
        let created = f
            .world
            .services_with(executors())
            .tasks
            .create(&boss(), &body, None)
            .await
            .unwrap();
        let id = TaskId::parse(created.task["id"].as_str().unwrap()).unwrap();
        let message = text(&f.world.dispatcher.sent.lock().unwrap().pop().unwrap());
        let kept = f
            .handle(vec![record(&format!("m{n}"), &message, Priority::Low)])
            .await;
        assert_eq!(kept, [format!("m{n}")]);
        let task = f
            .world
            .store
            .get(&boss().agency, id)
            .await
            .unwrap()
            .unwrap();
        let wait = (task.queued_at.unwrap() - task.updated_at)
            .to_std()
            .unwrap();
        let held = f.visibility().pop().unwrap().2;
        assert!(
            std::time::Duration::from_secs(held as u64) >= wait,
            "held {held} s, due in {wait:?}"
        );
    }
}

#[tokio::test]
async fn backoffs_past_thirty_seconds_wait_as_delayed_copies_and_run_the_next_attempt() {
    let f = Fixture::new();
    let mut copies = Vec::new();
    // Full jitter draws each first backoff from [0, 900 s): six tasks all drawing under 30 s
    // has a chance of (1/30)^6.
    for n in 0..6 {
        let body = json!({"title": "t", "priority": "low", "autoDispatch": true,
            "executor": {"type": "flaky"}, "retry": {"maxAttempts": 3, "baseDelaySeconds": 900}});
        let created = f
            .world
            .services_with(executors())
            .tasks
            .create(&boss(), &body, None)
            .await
            .unwrap();
        let id = TaskId::parse(created.task["id"].as_str().unwrap()).unwrap();
        let message = text(&f.world.dispatcher.sent.lock().unwrap().pop().unwrap());
        let (sent_before, held_before) = (f.sent().len(), f.visibility().len());
        let kept = f
            .handle(vec![record(&format!("m{n}"), &message, Priority::Low)])
            .await;
        let task = f
            .world
            .store
            .get(&boss().agency, id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((task.status, task.attempts), (TaskStatus::Queued, 1));
        // The runner's backoff: it queues the task until the retry is due.
        let delay = (task.queued_at.unwrap() - task.updated_at)
            .to_std()
            .unwrap();
        if delay > Duration::from_secs(30) {
            assert!(kept.is_empty(), "{kept:?}");
            assert_eq!(f.visibility().len(), held_before);
            let (url, sent_body, _, seconds) = f.sent().pop().unwrap();
            assert_eq!(f.sent().len(), sent_before + 1);
            let due = shared::domain::seconds_rounded_up(delay);
            assert_eq!((url, seconds), (queue_url(Priority::Low), due));
            assert_eq!(sent_body, message);
            copies.push((id, message));
        } else {
            assert_eq!(kept, [format!("m{n}")], "a short backoff is held in flight");
            // Rounded up: the message never comes back before the task's queuedAt.
            let due = shared::domain::seconds_rounded_up(delay);
            assert_eq!(f.visibility().pop().unwrap().2 as u64, due);
        }
    }
    assert!(!copies.is_empty());

    // A copy is the same delivery as before: it runs attempt 2 of the same dispatch, and a
    // duplicate of it while that attempt's backoff runs takes attempt 3, never more.
    let (id, copy) = &copies[0];
    let _ = f.handle(vec![record("copy", copy, Priority::Low)]).await;
    let task = f
        .world
        .store
        .get(&boss().agency, *id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((task.status, task.attempts), (TaskStatus::Queued, 2));
    let _ = f
        .handle(vec![record("copy-again", copy, Priority::Low)])
        .await;
    let _ = f
        .handle(vec![record("copy-thrice", copy, Priority::Low)])
        .await;
    let task = f
        .world
        .store
        .get(&boss().agency, *id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (task.status, task.attempts),
        (TaskStatus::Failed, 3),
        "maxAttempts holds"
    );
}

#[tokio::test]
async fn a_dead_letter_carries_the_body_an_error_excerpt_the_time_and_the_source() {
    let f = Fixture::new();
    let (id, message) = f.dispatched("grumpy").await;
    let body = text(&message);
    let before = chrono::Utc::now();
    let failures = f.handle(vec![record("m", &body, Priority::Low)]).await;
    let after = chrono::Utc::now();
    assert!(failures.is_empty(), "moved, so not kept: {failures:?}");
    assert_eq!(f.status(id).await, TaskStatus::Failed);

    let sent = f.sent();
    assert_eq!(sent.len(), 1);
    let (url, sent_body, attributes, delay) = &sent[0];
    assert_eq!(*delay, 0);
    assert_eq!(
        url,
        &dlq_url(Priority::Low),
        "the DLQ of the queue it came from"
    );
    assert_eq!(sent_body, &body);
    assert_eq!(
        attributes.keys().collect::<Vec<_>>(),
        ["error", "failedAt", "sourceQueue"]
    );
    assert_eq!(attributes["error"], "é".repeat(1000), "1,000 characters");
    let failed_at = chrono::DateTime::parse_from_rfc3339(&attributes["failedAt"]).unwrap();
    assert!(before <= failed_at && failed_at <= after, "{failed_at}");
    assert_eq!(attributes["sourceQueue"], arn(Priority::Low));
}

#[tokio::test]
async fn a_record_without_a_source_goes_to_the_default_tiers_dlq() {
    let f = Fixture::new();
    let mut orphan = record("m", "not a message", Priority::Low);
    orphan["eventSourceARN"] = Value::Null;
    assert!(f.handle(vec![orphan]).await.is_empty());
    let sent = f.sent();
    assert_eq!(sent[0].0, dlq_url(Priority::default()));
    assert_eq!(sent[0].2["sourceQueue"], "unknown");
    assert!(sent[0].2["error"].starts_with("malformed dispatch message"));
}

#[tokio::test]
async fn a_message_that_cannot_be_dead_lettered_stays_on_its_queue() {
    let f = Fixture::new();
    f.queue.refuse_sends.store(true, Ordering::SeqCst);
    let failures = f
        .handle(vec![record("m", "not a message", Priority::Critical)])
        .await;
    assert_eq!(failures, ["m"]);
    assert!(f.sent().is_empty());
}

#[tokio::test]
async fn a_panicking_record_stays_and_the_rest_of_its_batch_is_settled() {
    let f = Fixture::new();
    let (bad, bad_message) = f.dispatched("panicky").await;
    let (good, good_message) = f.dispatched("echo").await;
    let kept = f
        .handle(vec![
            record("m-bad", &text(&bad_message), Priority::High),
            record("m-good", &text(&good_message), Priority::High),
        ])
        .await;
    assert_eq!(kept, ["m-bad"], "only the panicking record comes back");
    assert_eq!(f.status(good).await, TaskStatus::Completed);
    assert_eq!(
        f.status(bad).await,
        TaskStatus::InProgress,
        "claimed; its lease lets a later delivery take it over"
    );
}

#[tokio::test]
async fn a_delivery_over_its_agencys_cap_comes_back_as_a_delayed_copy_not_a_held_message() {
    use shared::ports::InFlightSlots;
    let world = MemoryWorld::new();
    let queue = Arc::new(RecordingQueue::default());
    let slots = Arc::new(shared::testing::MemorySlots::default());
    let mut services = world.services_with(executors());
    let fairness = shared::service::fairness::Fairness::new(
        slots.clone(),
        std::collections::BTreeMap::from([(Priority::High, 1)]),
    );
    services.runner = services.runner.with_fairness(fairness);
    let worker = Worker::from_parts(config(), services, queue.clone());
    let f = Fixture {
        world,
        queue,
        worker,
    };
    let (id, message) = f.dispatched("echo").await;
    // The agency holds its one high-tier slot, and another agency waits on the tier.
    let now = chrono::Utc::now();
    let later = now + chrono::Duration::seconds(60);
    let busy = TaskId::generate();
    slots
        .acquire(
            &boss().agency,
            Priority::High,
            &busy.to_string(),
            later,
            None,
            now,
        )
        .await
        .unwrap();
    let other = shared::domain::AgencyId::parse("other").unwrap();
    slots
        .stamp_demand(Priority::High, &other, now)
        .await
        .unwrap();

    let body = text(&message);
    let kept = f.handle(vec![record("m", &body, Priority::High)]).await;
    assert!(kept.is_empty(), "the copy replaces it: {kept:?}");
    assert!(
        f.visibility().is_empty(),
        "never held in flight: its receive count must not grow"
    );
    let sent = f.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (url, sent_body, _, delay) = &sent[0];
    assert_eq!(url, &queue_url(Priority::High));
    assert_eq!(sent_body, &body);
    assert_eq!(*delay, shared::service::fairness::DEFER_DELAY.as_secs());
    assert_eq!(
        f.status(id).await,
        TaskStatus::Queued,
        "not run, not failed"
    );
}
