//! Every branch of `TaskRunner`'s delivery decision, against the in-memory ports.

use super::{Delivery, RunReport, TaskRunner};
use crate::domain::{
    AgencyId, Caller, DispatchMessage, Priority, Role, Task, TaskId, TaskStatus, UserId,
};
use crate::error::AppError;
use crate::executors::{ExecError, Executor, ExecutorRegistry, Job, Outcome};
use crate::ports::TaskStore;
use crate::services::Services;
use crate::testing::{MemoryStore, MemoryWorld};
use async_trait::async_trait;
use chrono::Utc;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn boss() -> Caller {
    Caller {
        user: UserId::parse("boss").unwrap(),
        agency: AgencyId::parse("a1").unwrap(),
        role: Role::Manager,
    }
}

/// An executor whose behaviour is its config's `do`; it records what each run saw.
struct Probe {
    store: Arc<MemoryStore>,
    /// (the attempt the job carried, the task as stored while it ran)
    seen: Mutex<Vec<(u32, Task)>>,
}

#[async_trait]
impl Executor for Probe {
    fn validate(&self, _config: &Value) -> Result<(), String> {
        Ok(())
    }

    async fn run(&self, job: &Job<'_>) -> Result<Outcome, ExecError> {
        let agency = boss().agency;
        let stored = self
            .store
            .get(&agency, job.task_id)
            .await
            .unwrap()
            .expect("the task exists while it runs");
        self.seen
            .lock()
            .unwrap()
            .push((job.attempt, stored.clone()));
        match job.config["do"].as_str().unwrap_or("echo") {
            "echo" => Ok(Outcome::Done(job.input.clone())),
            "retry" => Err(ExecError::Retryable("try again".into())),
            "fail" => Err(ExecError::Permanent("no way".into())),
            "await" => Ok(Outcome::AwaitAssignee),
            // DynamoDB cannot store an empty key.
            "unstorable" => Ok(Outcome::Done(json!({"": 1}))),
            "sleep" => {
                let seconds = job.config["seconds"].as_u64().unwrap();
                tokio::time::sleep(Duration::from_secs(seconds)).await;
                Ok(Outcome::Done(json!("woke up")))
            }
            // Someone cancels the task while it runs.
            "cancel" => {
                let mut task = stored;
                let read = task.version;
                task.move_to(TaskStatus::Cancelled, Utc::now()).unwrap();
                task.dispatch_id = None;
                self.store.replace(&task, read).await.unwrap();
                Ok(Outcome::Done(json!("too late")))
            }
            "delete" => {
                assert!(self.store.delete(&agency, job.task_id).await.unwrap());
                Ok(Outcome::Done(json!("too late")))
            }
            // The store is unreachable when the outcome is written.
            "lose_store" => {
                *self.store.fail_next_replace.lock().unwrap() =
                    Some(AppError::Unavailable("dynamodb:PutItem refused".into()));
                Ok(Outcome::Done(json!("lost")))
            }
            other => panic!("unknown probe behaviour {other}"),
        }
    }
}

struct Fixture {
    world: MemoryWorld,
    probe: Arc<Probe>,
    registry: ExecutorRegistry,
    services: Services,
}

impl Fixture {
    fn new() -> Self {
        let world = MemoryWorld::new();
        let probe = Arc::new(Probe {
            store: world.store.clone(),
            seen: Mutex::default(),
        });
        let mut registry = ExecutorRegistry::builtin();
        registry.register("probe", probe.clone());
        let services = world.services_with(registry.clone());
        Self {
            world,
            probe,
            registry,
            services,
        }
    }

    fn runner(&self, lease_seconds: u64) -> TaskRunner {
        TaskRunner::new(
            self.world.store.clone(),
            self.registry.clone(),
            Duration::from_secs(lease_seconds),
        )
    }

    /// Creates an auto-dispatched task with these extra fields; returns it and its message.
    async fn queued(&self, fields: Value) -> (TaskId, DispatchMessage) {
        let mut body = json!({"title": "t", "priority": "high", "autoDispatch": true,
            "executor": {"type": "probe", "config": {"do": "echo"}}});
        for (key, value) in fields.as_object().unwrap() {
            body[key] = value.clone();
        }
        let created = self
            .services
            .tasks
            .create(&boss(), &body, None)
            .await
            .unwrap();
        let id = TaskId::parse(created.task["id"].as_str().unwrap()).unwrap();
        let message = self
            .world
            .dispatcher
            .sent
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the task was dispatched");
        assert_eq!(message.task_id, id);
        (id, message)
    }

    async fn task(&self, id: TaskId) -> Task {
        self.world
            .store
            .get(&boss().agency, id)
            .await
            .unwrap()
            .unwrap()
    }

    /// Writes a change to the stored task (a new version, as any writer would).
    async fn edit(&self, id: TaskId, change: impl FnOnce(&mut Task)) -> Task {
        let mut task = self.task(id).await;
        let read = task.version;
        change(&mut task);
        task.version += 1;
        self.world.store.replace(&task, read).await.unwrap();
        task
    }

    fn runs(&self) -> usize {
        self.probe.seen.lock().unwrap().len()
    }
}

fn body(message: &DispatchMessage) -> String {
    serde_json::to_string(message).unwrap()
}

fn probe(behaviour: &str) -> Value {
    json!({"type": "probe", "config": {"do": behaviour}})
}

#[tokio::test]
async fn a_queued_task_runs_once_and_completes_with_its_result() {
    let f = Fixture::new();
    let (id, message) = f.queued(json!({"input": {"n": 7}})).await;
    let before = f.task(id).await;
    let (delivery, report) = f.runner(30).process(&body(&message)).await;
    assert_eq!(delivery, Delivery::Ack);
    let report = report.expect("a run is reported");
    assert_eq!((report.outcome, report.attempt), ("completed", 1));

    // While it ran, the task was claimed: in progress, attempt 1, leased for 30 s.
    let seen = f.probe.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (attempt, running) = &seen[0];
    assert_eq!((*attempt, running.attempts), (1, 1));
    assert_eq!(running.status, TaskStatus::InProgress);
    assert_eq!(running.version, before.version + 1);
    let lease = running.lease_expires_at.expect("a lease while running") - running.updated_at;
    assert_eq!(lease, chrono::Duration::seconds(30));
    assert!(running.started_at.is_some());

    let done = f.task(id).await;
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(
        done.result,
        Some(json!({"n": 7})),
        "the executor got the input"
    );
    assert_eq!((done.error, done.lease_expires_at), (None, None));
    assert!(done.completed_at.is_some());
    assert_eq!(done.version, before.version + 2);
}

#[tokio::test]
async fn a_task_without_input_gives_its_executor_null() {
    let f = Fixture::new();
    let (id, message) = f.queued(json!({})).await;
    f.runner(30).process(&body(&message)).await;
    assert_eq!(f.task(id).await.result, Some(Value::Null));
}

#[tokio::test]
async fn a_malformed_message_is_dead_lettered() {
    let f = Fixture::new();
    let (delivery, report) = f.runner(30).process("{\"taskId\": 42}").await;
    let Delivery::DeadLetter(error) = delivery else {
        panic!("{delivery:?}")
    };
    assert!(error.starts_with("malformed dispatch message: "), "{error}");
    assert_eq!(report, None);
}

#[tokio::test]
async fn a_message_for_a_deleted_task_is_acked() {
    let f = Fixture::new();
    let (id, message) = f.queued(json!({})).await;
    f.world.store.delete(&boss().agency, id).await.unwrap();
    assert_eq!(
        f.runner(30).process(&body(&message)).await,
        (Delivery::Ack, None)
    );
    assert_eq!(f.runs(), 0);
}

#[tokio::test]
async fn a_superseded_dispatch_is_dropped_without_running() {
    let f = Fixture::new();
    let (id, stale) = f.queued(json!({})).await;
    let current = f
        .edit(id, |t| t.dispatch_id = Some("a-newer-dispatch".into()))
        .await;
    assert_eq!(
        f.runner(30).process(&body(&stale)).await,
        (Delivery::Ack, None)
    );
    assert_eq!(f.runs(), 0);
    assert_eq!(f.task(id).await, current, "nothing was written");

    // A cancelled task has no dispatch at all.
    f.edit(id, |t| t.dispatch_id = None).await;
    assert_eq!(
        f.runner(30).process(&body(&stale)).await,
        (Delivery::Ack, None)
    );
    assert_eq!(f.runs(), 0);
}

#[tokio::test]
async fn a_task_leased_by_another_worker_comes_back_when_the_lease_ends() {
    let f = Fixture::new();
    let (id, message) = f.queued(json!({})).await;
    let held = f
        .edit(id, |t| {
            t.status = TaskStatus::InProgress;
            t.attempts = 1;
            t.lease_expires_at = Some(Utc::now() + chrono::Duration::seconds(20));
        })
        .await;
    let (delivery, report) = f.runner(30).process(&body(&message)).await;
    let Delivery::RetryAfter(delay) = delivery else {
        panic!("{delivery:?}")
    };
    // The remaining lease (just under 20 s) plus one second.
    assert!(
        delay > Duration::from_secs(20) && delay <= Duration::from_secs(21),
        "{delay:?}"
    );
    assert_eq!(report, None);
    assert_eq!(f.runs(), 0);
    assert_eq!(f.task(id).await, held);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_task_runs() {
    let f = Fixture::new();
    let (id, message) = f.queued(json!({})).await;
    f.edit(id, |t| {
        t.status = TaskStatus::InProgress;
        t.attempts = 1;
        t.lease_expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
    })
    .await;
    let (delivery, report) = f.runner(30).process(&body(&message)).await;
    assert_eq!(delivery, Delivery::Ack);
    assert_eq!(report.unwrap().attempt, 2);
    assert_eq!(f.runs(), 1);
    let task = f.task(id).await;
    assert_eq!((task.status, task.attempts), (TaskStatus::Completed, 2));
}

#[tokio::test]
async fn finished_tasks_and_tasks_waiting_for_a_person_are_not_run_again() {
    let f = Fixture::new();
    for status in [
        TaskStatus::Completed,
        TaskStatus::Cancelled,
        TaskStatus::Archived,
        TaskStatus::Assigned,
        TaskStatus::Pending,
    ] {
        let (id, message) = f.queued(json!({})).await;
        let stored = f.edit(id, |t| t.status = status).await;
        assert_eq!(
            f.runner(30).process(&body(&message)).await,
            (Delivery::Ack, None),
            "{status}"
        );
        assert_eq!(f.task(id).await, stored, "{status}: nothing written");
    }
    // In progress without a lease: a manual executor handed it to its assignee.
    let (id, message) = f.queued(json!({})).await;
    f.edit(id, |t| {
        t.status = TaskStatus::InProgress;
        t.lease_expires_at = None;
    })
    .await;
    assert_eq!(
        f.runner(30).process(&body(&message)).await,
        (Delivery::Ack, None)
    );
    assert_eq!(f.runs(), 0);
}

#[tokio::test]
async fn a_redelivered_message_for_a_failed_task_goes_back_to_the_dlq_without_running() {
    let f = Fixture::new();
    let (id, message) = f
        .queued(
            json!({"executor": probe("fail"), "retry": {"maxAttempts": 1, "baseDelaySeconds": 0}}),
        )
        .await;
    let runner = f.runner(30);
    let (delivery, _) = runner.process(&body(&message)).await;
    assert_eq!(delivery, Delivery::DeadLetter("no way".into()));
    let failed = f.task(id).await;
    assert_eq!(failed.status, TaskStatus::Failed);
    // The same message again: its first delivery may have died before the dead-letter copy
    // was sent (or the DLQ redrives it before a retry). It is dead-lettered, never run.
    assert_eq!(
        runner.process(&body(&message)).await,
        (Delivery::DeadLetter("no way".into()), None)
    );
    assert_eq!(f.runs(), 1, "not run again");
    assert_eq!(f.task(id).await, failed);
}

#[tokio::test]
async fn losing_the_claim_to_another_writer_retries_in_a_second() {
    let f = Fixture::new();
    let (id, message) = f.queued(json!({})).await;
    let before = f.task(id).await;
    *f.world.store.fail_next_replace.lock().unwrap() = Some(AppError::VersionConflict {
        expected: before.version,
        current: before.version + 1,
    });
    assert_eq!(
        f.runner(30).process(&body(&message)).await,
        (Delivery::RetryAfter(Duration::from_secs(1)), None)
    );
    assert_eq!(f.runs(), 0);
    assert_eq!(f.task(id).await, before);
}

#[tokio::test]
async fn a_task_deleted_before_the_claim_is_acked() {
    let f = Fixture::new();
    let (_, message) = f.queued(json!({})).await;
    *f.world.store.fail_next_replace.lock().unwrap() = Some(AppError::NotFound { what: "task" });
    assert_eq!(
        f.runner(30).process(&body(&message)).await,
        (Delivery::Ack, None)
    );
    assert_eq!(f.runs(), 0);
}

#[tokio::test]
async fn an_outcome_is_discarded_when_the_task_was_cancelled_while_running() {
    let f = Fixture::new();
    let (id, message) = f.queued(json!({"executor": probe("cancel")})).await;
    assert_eq!(
        f.runner(30).process(&body(&message)).await,
        (Delivery::Ack, None)
    );
    assert_eq!(f.runs(), 1);
    let task = f.task(id).await;
    assert_eq!(task.status, TaskStatus::Cancelled, "the cancel wins");
    assert_eq!(task.result, None);
}

#[tokio::test]
async fn an_outcome_is_discarded_when_the_task_was_deleted_while_running() {
    let f = Fixture::new();
    let (id, message) = f.queued(json!({"executor": probe("delete")})).await;
    assert_eq!(
        f.runner(30).process(&body(&message)).await,
        (Delivery::Ack, None)
    );
    assert!(f
        .world
        .store
        .get(&boss().agency, id)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_retryable_error_with_attempts_left_requeues_the_task_after_a_backoff() {
    let f = Fixture::new();
    let (id, message) = f
        .queued(
            json!({"executor": probe("retry"), "retry": {"maxAttempts": 3, "baseDelaySeconds": 4}}),
        )
        .await;
    f.edit(id, |t| {
        t.queued_at = Some(Utc::now() - chrono::Duration::seconds(3))
    })
    .await;
    let (delivery, report) = f.runner(30).process(&body(&message)).await;
    let Delivery::RetryAfter(delay) = delivery else {
        panic!("{delivery:?}")
    };
    // Before attempt 2: full jitter in [0, 4 s).
    assert!(delay < Duration::from_secs(4), "{delay:?}");
    let report = report.unwrap();
    assert_eq!((report.outcome, report.attempt), ("retrying", 1));
    let first_wait = report.wait_ms.unwrap();
    assert!((3000..60_000).contains(&first_wait), "{first_wait}");

    let task = f.task(id).await;
    assert_eq!(task.status, TaskStatus::Queued);
    assert_eq!(task.error.as_deref(), Some("try again"));
    assert_eq!(task.lease_expires_at, None);
    assert_eq!(task.attempts, 1);
    assert_eq!(
        task.queued_at,
        Some(task.updated_at + chrono::Duration::from_std(delay).unwrap()),
        "the next wait starts when the message comes back"
    );

    // The message comes back: attempt 2 runs, and the first wait is kept.
    let (_, report) = f.runner(30).process(&body(&message)).await;
    let report = report.unwrap();
    assert_eq!((report.outcome, report.attempt), ("retrying", 2));
    assert_eq!(report.wait_ms, Some(first_wait));
    assert_eq!(
        f.probe.seen.lock().unwrap()[1].0,
        2,
        "the job says attempt 2"
    );
}

#[tokio::test]
async fn a_retryable_error_at_the_last_attempt_fails_the_task() {
    let f = Fixture::new();
    let (id, message) = f
        .queued(
            json!({"executor": probe("retry"), "retry": {"maxAttempts": 2, "baseDelaySeconds": 0}}),
        )
        .await;
    f.edit(id, |t| t.attempts = 1).await;
    let (delivery, report) = f.runner(30).process(&body(&message)).await;
    assert_eq!(delivery, Delivery::DeadLetter("try again".into()));
    assert_eq!(f.runs(), 1, "the last attempt runs");
    let report = report.unwrap();
    assert_eq!((report.outcome, report.attempt), ("failed", 2));
    let task = f.task(id).await;
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error.as_deref(), Some("try again"));
    assert_eq!(task.lease_expires_at, None);
    assert!(task.completed_at.is_some());
}

#[tokio::test]
async fn a_permanent_error_fails_the_task_at_once() {
    let f = Fixture::new();
    let (id, message) = f
        .queued(
            json!({"executor": probe("fail"), "retry": {"maxAttempts": 5, "baseDelaySeconds": 1}}),
        )
        .await;
    let (delivery, report) = f.runner(30).process(&body(&message)).await;
    assert_eq!(delivery, Delivery::DeadLetter("no way".into()));
    assert_eq!(report.unwrap().outcome, "failed");
    let task = f.task(id).await;
    assert_eq!(
        (task.status, task.error.as_deref(), task.attempts),
        (TaskStatus::Failed, Some("no way"), 1)
    );
}

#[tokio::test]
async fn a_task_past_its_attempts_fails_without_running() {
    let f = Fixture::new();
    let (id, message) = f
        .queued(json!({"retry": {"maxAttempts": 2, "baseDelaySeconds": 0}}))
        .await;
    f.edit(id, |t| t.attempts = 2).await;
    let (delivery, _) = f.runner(30).process(&body(&message)).await;
    assert_eq!(
        delivery,
        Delivery::DeadLetter("gave up after 2 attempts".into())
    );
    assert_eq!(f.runs(), 0);
    let task = f.task(id).await;
    assert_eq!((task.status, task.attempts), (TaskStatus::Failed, 3));
}

#[tokio::test]
async fn a_task_without_an_executor_or_with_an_unknown_one_fails() {
    let f = Fixture::new();
    let (id, message) = f.queued(json!({})).await;
    f.edit(id, |t| t.executor = None).await;
    let (delivery, _) = f.runner(30).process(&body(&message)).await;
    assert_eq!(
        delivery,
        Delivery::DeadLetter("task has no executor".into())
    );
    assert_eq!(f.task(id).await.status, TaskStatus::Failed);

    let (id, message) = f.queued(json!({})).await;
    f.edit(id, |t| {
        t.executor.as_mut().unwrap().kind = "teleport".into()
    })
    .await;
    let (delivery, _) = f.runner(30).process(&body(&message)).await;
    let Delivery::DeadLetter(error) = delivery else {
        panic!("{delivery:?}")
    };
    assert!(error.starts_with("unknown executor 'teleport'"), "{error}");
    assert_eq!(f.runs(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_run_longer_than_the_lease_allows_times_out_as_retryable() {
    let f = Fixture::new();
    let slow = json!({"type": "probe", "config": {"do": "sleep", "seconds": 3600}});
    let (id, message) = f.queued(json!({"executor": slow})).await;
    // A 10 s lease leaves 8 s to run.
    let (delivery, report) = f.runner(10).process(&body(&message)).await;
    assert!(matches!(delivery, Delivery::RetryAfter(_)), "{delivery:?}");
    assert_eq!(report.unwrap().outcome, "retrying");
    let task = f.task(id).await;
    assert_eq!(task.status, TaskStatus::Queued);
    assert_eq!(task.error.as_deref(), Some("run timed out after 8 s"));
}

#[tokio::test(start_paused = true)]
async fn a_run_within_the_budget_is_not_cut_short() {
    let f = Fixture::new();
    let seven = json!({"type": "probe", "config": {"do": "sleep", "seconds": 7}});
    let (id, message) = f.queued(json!({"executor": seven})).await;
    let (delivery, _) = f.runner(10).process(&body(&message)).await;
    assert_eq!(delivery, Delivery::Ack);
    assert_eq!(f.task(id).await.result, Some(json!("woke up")));
}

#[tokio::test(start_paused = true)]
async fn a_lease_shorter_than_the_margin_still_allows_one_second() {
    let f = Fixture::new();
    let slow = json!({"type": "probe", "config": {"do": "sleep", "seconds": 2}});
    let (id, message) = f.queued(json!({"executor": slow})).await;
    f.runner(2).process(&body(&message)).await;
    assert_eq!(
        f.task(id).await.error.as_deref(),
        Some("run timed out after 1 s")
    );
}

#[tokio::test]
async fn a_result_dynamodb_cannot_store_fails_the_task() {
    let f = Fixture::new();
    let (id, message) = f.queued(json!({"executor": probe("unstorable")})).await;
    let (delivery, report) = f.runner(30).process(&body(&message)).await;
    let Delivery::DeadLetter(error) = delivery else {
        panic!("{delivery:?}")
    };
    assert!(error.starts_with("result "), "{error}");
    assert_eq!(report.unwrap().outcome, "failed");
    let task = f.task(id).await;
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error.as_deref(), Some(error.as_str()));
    assert_eq!(task.result, None);
}

#[tokio::test]
async fn store_errors_retry_the_delivery_in_five_seconds() {
    let f = Fixture::new();
    let (id, message) = f.queued(json!({})).await;
    let runner = f.runner(30);
    let before = f.task(id).await;

    f.world.store.refuse_next_get.store(true, Ordering::SeqCst);
    assert_eq!(
        runner.process(&body(&message)).await,
        (Delivery::RetryAfter(Duration::from_secs(5)), None)
    );
    *f.world.store.fail_next_replace.lock().unwrap() =
        Some(AppError::Unavailable("throttled".into()));
    assert_eq!(
        runner.process(&body(&message)).await,
        (Delivery::RetryAfter(Duration::from_secs(5)), None),
        "the claim could not be written"
    );
    assert_eq!(f.runs(), 0);
    assert_eq!(f.task(id).await, before);

    // The outcome cannot be written: the lease is left to expire and the message returns.
    f.edit(id, |t| {
        t.executor = Some(serde_json::from_value(probe("lose_store")).unwrap())
    })
    .await;
    assert_eq!(
        runner.process(&body(&message)).await,
        (Delivery::RetryAfter(Duration::from_secs(5)), None)
    );
    assert_eq!(f.runs(), 1);
    let task = f.task(id).await;
    assert_eq!(task.status, TaskStatus::InProgress);
    assert!(task.lease_expires_at.is_some());
}

#[tokio::test]
async fn a_manual_executor_hands_the_task_to_its_assignee() {
    let f = Fixture::new();
    let (id, message) = f.queued(json!({"executor": probe("await")})).await;
    let before = f.task(id).await;
    let (delivery, report) = f.runner(30).process(&body(&message)).await;
    assert_eq!(delivery, Delivery::Ack);
    assert_eq!(report.unwrap().outcome, "awaiting_assignee");
    let task = f.task(id).await;
    assert_eq!(task.status, TaskStatus::InProgress);
    assert_eq!(task.lease_expires_at, None, "no worker holds it");
    assert_eq!(task.version, before.version + 2, "claimed, then released");
    // A redelivery finds it waiting for its person.
    assert_eq!(
        f.runner(30).process(&body(&message)).await,
        (Delivery::Ack, None)
    );
    assert_eq!(f.runs(), 1);
}

#[tokio::test]
async fn the_report_names_the_tier_outcome_attempt_and_times() {
    let f = Fixture::new();
    let slow = json!({"type": "probe", "config": {"do": "sleep", "seconds": 0}});
    let (id, mut message) = f.queued(json!({"executor": slow})).await;
    // Promoted while waiting: the report counts the tier the message came from.
    message.priority = Priority::Critical;
    f.edit(id, |t| {
        t.queued_at = Some(Utc::now() + chrono::Duration::hours(1))
    })
    .await;
    let (_, report) = f.runner(30).process(&body(&message)).await;
    let report = report.unwrap();
    assert_eq!(
        report,
        RunReport {
            tier: Priority::Critical,
            outcome: "completed",
            attempt: 1,
            // A wait that has not begun yet counts as none.
            wait_ms: Some(0),
            run_ms: report.run_ms,
        }
    );
    assert_eq!(f.task(id).await.queue_wait_ms, Some(0));
}

/// The backoff grows with the attempt: before attempt 6 (base 1 s) the jitter's ceiling is
/// 16 s. Thirty draws all below 16 s and at least one above 8 s (the ceiling before attempt 5);
/// a correct runner fails this with probability 2^-30.
#[tokio::test]
async fn the_backoff_ceiling_follows_the_attempt_number() {
    let f = Fixture::new();
    let mut delays = Vec::new();
    for _ in 0..30 {
        let (id, message) = f
            .queued(json!({"executor": probe("retry"), "retry": {"maxAttempts": 10, "baseDelaySeconds": 1}}))
            .await;
        f.edit(id, |t| t.attempts = 4).await;
        let (delivery, _) = f.runner(30).process(&body(&message)).await;
        let Delivery::RetryAfter(delay) = delivery else {
            panic!("{delivery:?}")
        };
        delays.push(delay);
    }
    assert!(
        delays.iter().all(|d| *d < Duration::from_secs(16)),
        "{delays:?}"
    );
    assert!(
        delays.iter().any(|d| *d > Duration::from_secs(8)),
        "{delays:?}"
    );
}
