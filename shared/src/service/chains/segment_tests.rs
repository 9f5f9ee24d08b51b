//! Segments: a worker running a chain's automated waves under one token, against the
//! in-memory ports.

use super::CHAIN_STOPPED_ERROR;
use crate::domain::{
    AgencyId, Caller, ChainMessage, Role, StepStatus, TaskId, TaskStatus, TaskStep, UserId,
};
use crate::executors::{ExecError, Executor, ExecutorRegistry, Job, Outcome, WorkUnit};
use crate::ports::TaskStore;
use crate::service::{ChainRunner, Delivery};
use crate::testing::{MemorySlots, MemoryStore, MemoryWorld};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "segment-token";

fn boss() -> Caller {
    Caller {
        user: UserId::parse("boss").unwrap(),
        agency: AgencyId::parse("a1").unwrap(),
        role: Role::Manager,
    }
}

/// Runs as its config's `do` says and records every run: (step, attempt).
struct Probe {
    store: Arc<MemoryStore>,
    runs: Mutex<Vec<(String, u32)>>,
}

#[async_trait]
impl Executor for Probe {
    fn validate(&self, _config: &Value) -> Result<(), String> {
        Ok(())
    }

    async fn run(&self, job: &Job<'_>) -> Result<Outcome, ExecError> {
        let WorkUnit::Step { name } = job.unit else {
            return Err(ExecError::Permanent("steps only".into()));
        };
        self.runs
            .lock()
            .unwrap()
            .push((name.to_owned(), job.attempt));
        let failing = job.config["failAttempts"].as_u64().unwrap_or(0);
        if let Some(ms) = job.config["ms"].as_u64() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if job.config["cancel"] == true {
            // The task is cancelled while this step runs, as the API's cancel records it.
            let agency = boss().agency;
            let mut task = self.store.get(&agency, job.task_id).await.unwrap().unwrap();
            let read = task.version;
            task.move_to(TaskStatus::Cancelled, chrono::Utc::now())
                .unwrap();
            self.store.replace(&task, read).await.unwrap();
            super::skip_unfinished(
                self.store.as_ref(),
                &agency,
                job.task_id,
                "skipped: cancelled",
            )
            .await
            .unwrap();
        }
        if u64::from(job.attempt) <= failing {
            return Err(ExecError::Retryable(format!(
                "attempt {} fails",
                job.attempt
            )));
        }
        Ok(Outcome::Done(json!({"step": name})))
    }
}

struct Setup {
    world: MemoryWorld,
    probe: Arc<Probe>,
    chains: ChainRunner,
    id: TaskId,
}

impl Setup {
    /// A chain of `steps` (each `[name, deps, probe config, step config extras]`).
    async fn new(steps: Value) -> Setup {
        let world = MemoryWorld::new();
        let probe = Arc::new(Probe {
            store: world.store.clone(),
            runs: Mutex::default(),
        });
        let mut executors = ExecutorRegistry::builtin();
        executors.register("probe", probe.clone());
        let services = world.services_with(executors);
        let created = services
            .tasks
            .create(
                &boss(),
                &json!({"title": "t", "type": "multi_step", "autoDispatch": true, "steps": steps}),
                None,
            )
            .await
            .unwrap();
        let id = TaskId::parse(created.task["id"].as_str().unwrap()).unwrap();
        Setup {
            world,
            probe,
            chains: services.chains,
            id,
        }
    }

    /// The segment the chain's start asked for.
    fn message(&self) -> ChainMessage {
        let started = self.world.orchestrator.started.lock().unwrap().clone();
        let segment = &started.last().expect("a started chain").1["segment"];
        ChainMessage::Segment {
            task_id: self.id,
            agency_id: boss().agency,
            first_wave: segment["firstWave"].as_str().unwrap().into(),
            last_wave: segment["lastWave"].as_str().unwrap().into(),
            finish: segment["finish"].as_str().unwrap().into(),
            task_token: TOKEN.into(),
        }
    }

    async fn step(&self, name: &str) -> TaskStep {
        let agency = boss().agency;
        self.world
            .store
            .get_step(&agency, self.id, name)
            .await
            .unwrap()
            .unwrap()
    }

    /// Rewrites a step's record as `change` leaves it, as another delivery (or a worker that
    /// was killed) would have written it.
    async fn rewrite(&self, name: &str, change: impl FnOnce(&mut TaskStep)) -> TaskStep {
        let mut step = self.step(name).await;
        let read = step.status;
        change(&mut step);
        let store = &self.world.store;
        assert!(store
            .replace_step(&boss().agency, &step, read)
            .await
            .unwrap());
        step
    }

    /// Marks a step running its first attempt under another delivery whose run may last
    /// until `seconds` from now (negative: it has passed).
    async fn running_elsewhere(&self, name: &str, seconds: i64) -> TaskStep {
        self.rewrite(name, |step| {
            step.status = StepStatus::Running;
            step.attempts = 1;
            step.run_until = Some(chrono::Utc::now() + chrono::Duration::seconds(seconds));
        })
        .await
    }

    /// Caps the agency at `cap` runs in flight on the chain's tier, in slots it returns.
    async fn fair_share(&mut self, cap: u32) -> (crate::domain::Priority, Arc<MemorySlots>) {
        let task = self.world.store.get(&boss().agency, self.id).await.unwrap();
        let tier = task.unwrap().priority;
        let slots = Arc::new(MemorySlots::default());
        self.chains.fairness = Some(crate::service::fairness::Fairness::new(
            slots.clone(),
            std::collections::BTreeMap::from([(tier, cap)]),
        ));
        (tier, slots)
    }

    async fn status(&self) -> TaskStatus {
        let task = self.world.store.get(&boss().agency, self.id).await.unwrap();
        task.unwrap().status
    }

    fn runs(&self) -> Vec<(String, u32)> {
        self.probe.runs.lock().unwrap().clone()
    }

    /// (error name or "success", output or cause) of each answer to the segment's token.
    fn answers(&self) -> Vec<(String, String)> {
        let answers = self.world.orchestrator.answers.lock().unwrap().clone();
        answers
            .into_iter()
            .filter(|(token, _, _)| token == TOKEN)
            .map(|(_, kind, text)| (kind, text))
            .collect()
    }
}

fn probe(config: Value) -> Value {
    json!({"type": "probe", "config": config})
}

#[tokio::test]
async fn a_segment_runs_its_waves_in_order_and_each_step_once() {
    let s = Setup::new(json!([
        {"name": "a", "config": {"executor": probe(json!({}))}},
        {"name": "b", "dependsOn": ["a"], "config": {"executor": probe(json!({}))}},
        {"name": "c", "dependsOn": ["a"], "config": {"executor": probe(json!({}))}},
        {"name": "d", "dependsOn": ["b", "c"], "config": {"executor": probe(json!({}))}},
    ]))
    .await;
    assert_eq!(s.chains.process(s.message()).await, Delivery::Ack);
    let runs = s.runs();
    assert_eq!(runs.len(), 4, "{runs:?}");
    assert_eq!(runs[0], ("a".into(), 1));
    assert_eq!(runs[3], ("d".into(), 1));
    for name in ["a", "b", "c", "d"] {
        let step = s.step(name).await;
        assert_eq!(
            (step.status, step.attempts),
            (StepStatus::Completed, 1),
            "{step:?}"
        );
    }
    // The last segment settles the task and answers its token once.
    assert_eq!(s.status().await, TaskStatus::Completed);
    assert_eq!(s.answers().len(), 1);
    assert_eq!(s.answers()[0].0, "success");
}

/// A sequential segment reads each step once in all (the segment's first read of its steps),
/// and the task once per wave, as the walk checks for a cancel between steps: a step's own
/// turn reads neither the task, its record, nor its dependency again. The counts are the
/// store's reads (GetItem and Query on AWS); each was a request per step before.
#[tokio::test]
async fn a_sequential_segment_reads_each_step_and_its_dependency_once() {
    let steps: Vec<Value> = (0..6)
        .map(|n| {
            let deps: Vec<String> = (n > 0).then(|| format!("s{}", n - 1)).into_iter().collect();
            json!({"name": format!("s{n}"), "dependsOn": deps, "config": {"executor": probe(json!({}))}})
        })
        .collect();
    let s = Setup::new(json!(steps)).await;
    let reads = || {
        s.world
            .store
            .reads
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let before = reads();
    assert_eq!(s.chains.process(s.message()).await, Delivery::Ack);
    assert_eq!(s.runs().len(), 6);
    assert_eq!(s.status().await, TaskStatus::Completed);
    let during = reads() - before - 1; // less the status read just above
                                       // The task and the steps to start; the task after each wave; the task and the steps to
                                       // settle it. (27 before: each step also read the task, itself and its dependency.)
    assert_eq!(during, 2 + 6 + 2, "reads for 6 steps");
}

/// A retryable failure gets the step's attempts with the chain's backoff, then its onFailure
/// (continue: the dependent still runs and the task completes).
#[tokio::test(start_paused = true)]
async fn a_retryable_failure_is_retried_with_the_policy_s_attempts_then_on_failure_applies() {
    let s = Setup::new(json!([
        {"name": "flaky", "config": {"executor": probe(json!({"failAttempts": 9})),
            "retry": {"maxAttempts": 3}, "onFailure": "continue"}},
        {"name": "healed", "config": {"executor": probe(json!({"failAttempts": 1})),
            "retry": {"maxAttempts": 2}}},
        {"name": "after", "dependsOn": ["flaky"], "config": {"executor": probe(json!({}))}},
    ]))
    .await;
    let started = tokio::time::Instant::now();
    assert_eq!(s.chains.process(s.message()).await, Delivery::Ack);
    let flaky = s.step("flaky").await;
    assert_eq!(
        (flaky.status, flaky.attempts),
        (StepStatus::Failed, 3),
        "{flaky:?}"
    );
    let error = flaky.error.unwrap();
    assert!(
        error.starts_with("Taskflow.Retryable.3: attempt 3 fails"),
        "{error}"
    );
    let healed = s.step("healed").await;
    assert_eq!((healed.status, healed.attempts), (StepStatus::Completed, 2));
    assert_eq!(s.step("after").await.status, StepStatus::Completed);
    assert_eq!(s.status().await, TaskStatus::Completed);
    // Full jitter under 2 s, then 4 s: the two waits take at most 6 s (of paused time).
    assert!(started.elapsed() <= Duration::from_secs(6));
    assert_eq!(s.runs().iter().filter(|(n, _)| n == "flaky").count(), 3);
}

/// Past its timeoutSeconds a step failed for good, not retried (the token's States.Timeout
/// was not retried either); fail_task then stops the chain.
#[tokio::test]
async fn a_step_past_its_timeout_fails_without_a_retry() {
    let s = Setup::new(json!([
        {"name": "slow", "config": {"executor": {"type": "sleep", "config": {"seconds": 5}},
            "timeoutSeconds": 2, "retry": {"maxAttempts": 3}}},
        {"name": "after", "dependsOn": ["slow"], "config": {"executor": probe(json!({}))}},
    ]))
    .await;
    let began = Instant::now();
    assert_eq!(s.chains.process(s.message()).await, Delivery::Ack);
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "cut at its timeout"
    );
    let slow = s.step("slow").await;
    assert_eq!(
        (slow.status, slow.attempts),
        (StepStatus::Failed, 1),
        "{slow:?}"
    );
    assert!(slow.error.unwrap().starts_with("States.Timeout"));
    assert_eq!(s.step("after").await.status, StepStatus::Skipped);
    assert!(s.runs().is_empty());
    assert_eq!(s.status().await, TaskStatus::Failed);
    assert_eq!(s.answers()[0].0, CHAIN_STOPPED_ERROR);
}

#[tokio::test]
async fn a_fail_task_step_stops_the_chain_and_skips_the_rest() {
    let s = Setup::new(json!([
        {"name": "a", "config": {"executor": probe(json!({"failAttempts": 1}))}},
        {"name": "b", "dependsOn": ["a"], "config": {"executor": probe(json!({}))}},
        {"name": "c", "dependsOn": ["b"], "config": {"executor": probe(json!({}))}},
    ]))
    .await;
    assert_eq!(s.chains.process(s.message()).await, Delivery::Ack);
    assert_eq!(s.step("a").await.status, StepStatus::Failed);
    for name in ["b", "c"] {
        let step = s.step(name).await;
        assert_eq!(
            (step.status, step.attempts),
            (StepStatus::Skipped, 0),
            "{step:?}"
        );
    }
    assert_eq!(s.runs(), [("a".to_owned(), 1)]);
    let task = s
        .world
        .store
        .get(&boss().agency, s.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(task.error.unwrap().contains("step 'a' failed"));
    let answers = s.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, CHAIN_STOPPED_ERROR);
    assert!(answers[0].1.contains("step 'a' failed"), "{answers:?}");
}

#[tokio::test]
async fn a_cancel_mid_segment_stops_it_before_the_next_step() {
    let s = Setup::new(json!([
        {"name": "a", "config": {"executor": probe(json!({"cancel": true}))}},
        {"name": "b", "dependsOn": ["a"], "config": {"executor": probe(json!({}))}},
    ]))
    .await;
    assert_eq!(s.chains.process(s.message()).await, Delivery::Ack);
    assert_eq!(s.runs(), [("a".to_owned(), 1)], "b never ran");
    let b = s.step("b").await;
    assert_eq!((b.status, b.started_at), (StepStatus::Skipped, None));
    // a's outcome arrived after the cancel settled it: dropped.
    assert_eq!(s.step("a").await.status, StepStatus::Skipped);
    assert_eq!(s.status().await, TaskStatus::Cancelled);
    let answers = s.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, CHAIN_STOPPED_ERROR);
}

/// A worker was killed while it ran `b` (`a` completed, `b` left running): the redelivered
/// message never runs `a` again, counts the lost run as an attempt, and finishes.
#[tokio::test]
async fn a_redelivery_after_a_kill_resumes_without_rerunning_finished_steps() {
    let s = Setup::new(json!([
        {"name": "a", "config": {"executor": probe(json!({}))}},
        {"name": "b", "dependsOn": ["a"], "config": {"executor": probe(json!({})), "retry": {"maxAttempts": 2}}},
        {"name": "c", "dependsOn": ["b"], "config": {"executor": probe(json!({}))}},
    ]))
    .await;
    s.rewrite("a", |a| {
        a.status = StepStatus::Completed;
        a.attempts = 1;
    })
    .await;
    s.rewrite("b", |b| {
        b.status = StepStatus::Running;
        b.attempts = 1;
    })
    .await;

    assert_eq!(s.chains.process(s.message()).await, Delivery::Ack);
    assert_eq!(s.runs(), [("b".to_owned(), 2), ("c".to_owned(), 1)]);
    assert_eq!(s.step("a").await.attempts, 1);
    assert_eq!(s.status().await, TaskStatus::Completed);

    // Another copy of the message after it all finished runs nothing and answers the same.
    assert_eq!(s.chains.process(s.message()).await, Delivery::Ack);
    assert_eq!(s.runs().len(), 2);
    let answers = s.answers();
    assert_eq!(answers.len(), 2);
    assert!(
        answers.iter().all(|(kind, _)| kind == "success"),
        "{answers:?}"
    );
}

/// Two deliveries of one segment at once (SQS may deliver a message twice; a copy sent after a
/// heartbeat timeout meets a live worker): the second finds the first's step running within
/// its run's bound and neither runs it again nor passes it to its dependents; it comes back
/// once that run has ended. Past the bound the run was lost, and counts as an attempt.
#[tokio::test]
async fn a_step_another_delivery_runs_is_neither_run_again_nor_passed() {
    let s = Setup::new(json!([
        {"name": "a", "config": {"executor": probe(json!({})), "retry": {"maxAttempts": 2}}},
        {"name": "b", "dependsOn": ["a"], "config": {"executor": probe(json!({}))}},
    ]))
    .await;
    s.running_elsewhere("a", 30).await;
    let Delivery::Defer(wait) = s.chains.process(s.message()).await else {
        panic!("the live run is waited for")
    };
    assert!(
        (Duration::from_secs(28)..=Duration::from_secs(30)).contains(&wait),
        "{wait:?}"
    );
    assert!(s.runs().is_empty());
    assert_eq!(s.step("a").await.attempts, 1);
    assert_eq!(s.step("b").await.status, StepStatus::Pending);
    assert!(s.answers().is_empty(), "the token waits");

    // The other delivery died: once its bound has passed, its run counts as lost.
    s.running_elsewhere("a", -1).await;
    assert_eq!(s.chains.process(s.message()).await, Delivery::Ack);
    assert_eq!(s.runs(), [("a".to_owned(), 2), ("b".to_owned(), 1)]);
    let a = s.step("a").await;
    assert_eq!((a.status, a.run_until), (StepStatus::Completed, None));
    assert_eq!(s.status().await, TaskStatus::Completed);
}

/// A live run elsewhere that ends within seconds is waited for in this invocation, and its
/// outcome is kept: the step is not run again.
#[tokio::test]
async fn a_short_live_run_elsewhere_is_waited_for_in_place() {
    let s = Setup::new(json!([
        {"name": "a", "config": {"executor": probe(json!({})), "retry": {"maxAttempts": 2}}},
    ]))
    .await;
    let a = s.running_elsewhere("a", 5).await;
    // The other delivery records its outcome half a second later.
    let (store, mut done) = (s.world.store.clone(), a);
    let other = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        done.status = StepStatus::Completed;
        done.run_until = None;
        assert!(store
            .replace_step_run(&boss().agency, &done, 1)
            .await
            .unwrap());
    });
    assert_eq!(s.chains.process(s.message()).await, Delivery::Ack);
    other.await.unwrap();
    assert!(s.runs().is_empty(), "{:?}", s.runs());
    assert_eq!(s.step("a").await.attempts, 1);
    assert_eq!(s.status().await, TaskStatus::Completed);
}

/// Killed during its last attempt: the step failed for good (nothing is left to retry).
#[tokio::test]
async fn a_step_killed_in_its_last_attempt_fails() {
    let s = Setup::new(json!([
        {"name": "a", "config": {"executor": probe(json!({})), "onFailure": "continue"}},
    ]))
    .await;
    s.rewrite("a", |a| {
        a.status = StepStatus::Running;
        a.attempts = 1;
    })
    .await;
    assert_eq!(s.chains.process(s.message()).await, Delivery::Ack);
    assert!(s.runs().is_empty());
    let a = s.step("a").await;
    assert_eq!(a.status, StepStatus::Failed);
    assert!(a
        .error
        .unwrap()
        .starts_with("States.HeartbeatTimeout: its worker stopped"));
    assert_eq!(s.status().await, TaskStatus::Completed, "continue");
}

#[tokio::test]
async fn a_segment_past_the_invocation_deadline_requeues_and_finishes_in_the_next_delivery() {
    let quick = json!({"executor": probe(json!({"ms": 300})), "timeoutSeconds": 2});
    let s = Setup::new(json!([
        {"name": "a", "config": quick},
        {"name": "b", "dependsOn": ["a"], "config": quick},
    ]))
    .await;
    // Room for a (0.3 s of its 2 s), not for b after it.
    let deadline = Instant::now() + Duration::from_millis(2_200);
    let first = s.chains.process_until(s.message(), Some(deadline)).await;
    assert_eq!(first, Delivery::Requeue);
    assert_eq!(s.runs(), [("a".to_owned(), 1)]);
    assert_eq!(s.step("b").await.status, StepStatus::Pending);
    assert!(s.answers().is_empty(), "the token waits for the rest");

    let next = Instant::now() + Duration::from_secs(20);
    assert_eq!(
        s.chains.process_until(s.message(), Some(next)).await,
        Delivery::Ack
    );
    assert_eq!(s.runs(), [("a".to_owned(), 1), ("b".to_owned(), 1)]);
    assert_eq!(s.status().await, TaskStatus::Completed);
    assert_eq!(s.answers().len(), 1);
}

/// A copy whose token has closed (the state machine timed it out and sent the segment again)
/// is dropped before it runs anything.
#[tokio::test(start_paused = true)]
async fn a_copy_whose_token_closed_runs_nothing() {
    let s = Setup::new(json!([{"name": "a", "config": {"executor": probe(json!({}))}}])).await;
    s.world
        .orchestrator
        .closed
        .lock()
        .unwrap()
        .insert(TOKEN.into());
    assert_eq!(s.chains.process(s.message()).await, Delivery::Ack);
    assert!(s.runs().is_empty());
    assert_eq!(s.step("a").await.status, StepStatus::Pending);
}

/// moto registers a waiting token's heartbeat only after it has sent the token's message, so
/// a worker that picks the message up at once can be told the token is unknown. A token
/// reported unknown is asked again after a pause before its copy is dropped.
#[tokio::test(start_paused = true)]
async fn a_token_not_yet_registered_when_its_message_arrives_is_asked_again() {
    let s = Setup::new(json!([{"name": "a", "config": {"executor": probe(json!({}))}}])).await;
    s.world
        .orchestrator
        .unregistered_beats
        .store(1, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(s.chains.process(s.message()).await, Delivery::Ack);
    assert_eq!(s.runs(), [("a".to_owned(), 1)]);
    assert_eq!(s.status().await, TaskStatus::Completed);
    let answers = s.answers();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].0, "success");
}

/// A retry's wait that does not fit the invocation comes back as a delayed copy; the copy
/// runs the next attempt.
#[tokio::test]
async fn a_retry_that_cannot_wait_in_the_invocation_comes_back_as_a_delayed_copy() {
    let s = Setup::new(json!([
        {"name": "a", "config": {"executor": probe(json!({"failAttempts": 1})),
            "retry": {"maxAttempts": 2}, "timeoutSeconds": 2}},
    ]))
    .await;
    // The first attempt always starts; its retry (a wait under 2 s, then up to 2 s of run)
    // cannot fit before this deadline.
    let deadline = Instant::now() + Duration::from_millis(1_500);
    let first = s.chains.process_until(s.message(), Some(deadline)).await;
    // A copy (Defer), not the message held in flight (RetryAfter raises its receive count).
    let Delivery::Defer(wait) = first else {
        panic!("{first:?}");
    };
    assert!(wait < Duration::from_secs(2), "{wait:?}");
    let a = s.step("a").await;
    assert_eq!((a.status, a.attempts), (StepStatus::Running, 1), "{a:?}");
    assert!(s.answers().is_empty());

    assert_eq!(s.chains.process(s.message()).await, Delivery::Ack);
    let a = s.step("a").await;
    assert_eq!((a.status, a.attempts), (StepStatus::Completed, 2), "{a:?}");
    assert_eq!(s.runs(), [("a".to_owned(), 1), ("a".to_owned(), 2)]);
}

/// The segment's token timed out (its worker died mid-step): the step left running fails,
/// the rest is skipped, and the task's error names the step.
#[tokio::test]
async fn a_lost_segment_fails_its_running_step_and_the_task() {
    let s = Setup::new(json!([
        {"name": "a", "config": {"executor": probe(json!({}))}},
        {"name": "b", "dependsOn": ["a"], "config": {"executor": probe(json!({}))}},
    ]))
    .await;
    let agency = boss().agency;
    let mut a = s.step("a").await;
    a.status = StepStatus::Running;
    a.attempts = 1;
    assert!(s
        .world
        .store
        .replace_step(&agency, &a, StepStatus::Pending)
        .await
        .unwrap());
    let lost = ChainMessage::SegmentFailed {
        task_id: s.id,
        agency_id: agency,
        error: json!({"Error": "States.Timeout", "Cause": ""}),
        task_token: TOKEN.into(),
    };
    assert_eq!(s.chains.process(lost).await, Delivery::Ack);
    let a = s.step("a").await;
    assert_eq!(a.status, StepStatus::Failed);
    assert!(a.error.unwrap().starts_with("States.Timeout"));
    assert_eq!(s.step("b").await.status, StepStatus::Skipped);
    let task = s
        .world
        .store
        .get(&boss().agency, s.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(task
        .error
        .unwrap()
        .starts_with("step 'a' failed: States.Timeout"));
    assert_eq!(s.answers()[0].0, "success");
}

/// skip_dependents: the dependents are skipped, an independent step runs, and the task fails
/// when settled; the execution still ends as Finalize ended it (a success), not stopped.
#[tokio::test]
async fn skip_dependents_fails_the_task_when_settled_without_stopping_the_chain() {
    let s = Setup::new(json!([
        {"name": "a", "config": {"executor": probe(json!({"failAttempts": 1})), "onFailure": "skip_dependents"}},
        {"name": "b", "dependsOn": ["a"], "config": {"executor": probe(json!({}))}},
        {"name": "other", "config": {"executor": probe(json!({}))}},
        {"name": "later", "dependsOn": ["other"], "config": {"executor": probe(json!({}))}},
    ]))
    .await;
    assert_eq!(s.chains.process(s.message()).await, Delivery::Ack);
    assert_eq!(s.step("b").await.status, StepStatus::Skipped);
    assert_eq!(s.step("later").await.status, StepStatus::Completed);
    let task = s
        .world
        .store
        .get(&boss().agency, s.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error.as_deref(), Some("steps failed: a"));
    assert_eq!(s.answers().len(), 1);
    assert_eq!(s.answers()[0].0, "success");
}

/// A segment's steps run in its lanes' slots (the k-th step of a wave in lane k): a lane keeps
/// its slot from one step to the next, so a chain `a → (b, c) → d` takes two slots once each
/// and gives them back once each (before: four of each, one per step), and still holds two
/// while `b` and `c` run at once.
#[tokio::test]
async fn a_segment_holds_one_slot_per_lane_across_its_steps() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut s = Setup::new(json!([
        {"name": "a", "config": {"executor": probe(json!({}))}},
        {"name": "b", "dependsOn": ["a"], "config": {"executor": probe(json!({"ms": 50}))}},
        {"name": "c", "dependsOn": ["a"], "config": {"executor": probe(json!({"ms": 50}))}},
        {"name": "d", "dependsOn": ["b", "c"], "config": {"executor": probe(json!({}))}},
    ]))
    .await;
    let agency = boss().agency;
    let (tier, slots) = s.fair_share(4).await;
    // In an invocation with its deadline, as the worker runs it: the lanes' leases last
    // until then.
    let deadline = Instant::now() + Duration::from_secs(120);
    let delivery = s.chains.process_until(s.message(), Some(deadline)).await;
    assert_eq!(delivery, Delivery::Ack);
    assert_eq!(s.runs().len(), 4);
    assert_eq!(s.status().await, TaskStatus::Completed);
    assert_eq!(slots.acquires.load(SeqCst), 2, "one take per lane");
    assert_eq!(slots.releases.load(SeqCst), 2, "one give-back per lane");
    assert_eq!(
        slots.most_held.load(SeqCst),
        2,
        "b and c each ran in a slot"
    );
    use crate::ports::InFlightSlots;
    assert_eq!(
        slots.held(&agency, tier, chrono::Utc::now()).await.unwrap(),
        0
    );
}

/// A wave wider than the ten steps a delivery runs at once needs no more than ten lanes: a
/// step takes a free lane, so twelve steps never hold twelve slots.
#[tokio::test]
async fn a_wave_wider_than_its_concurrency_holds_no_more_slots_than_it_runs() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut steps = vec![json!({"name": "a", "config": {"executor": probe(json!({}))}})];
    steps.extend((0..12).map(|n| {
        json!({"name": format!("w{n}"), "dependsOn": ["a"],
            "config": {"executor": probe(json!({"ms": 30}))}})
    }));
    let mut s = Setup::new(json!(steps)).await;
    let agency = boss().agency;
    let (tier, slots) = s.fair_share(20).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let delivery = s.chains.process_until(s.message(), Some(deadline)).await;
    assert_eq!(delivery, Delivery::Ack);
    assert_eq!(s.runs().len(), 13);
    assert!(slots.most_held.load(SeqCst) <= 10, "{:?}", slots.most_held);
    assert!(slots.acquires.load(SeqCst) <= 10, "{:?}", slots.acquires);
    use crate::ports::InFlightSlots;
    assert_eq!(
        slots.held(&agency, tier, chrono::Utc::now()).await.unwrap(),
        0
    );
}

/// Each step run of a segment takes a fair-share slot as a step's run did: over the agency's
/// cap the segment is deferred with nothing run; once a slot frees it runs and gives it back.
#[tokio::test]
async fn a_segment_over_its_agency_s_cap_is_deferred_and_gives_its_slots_back() {
    use crate::ports::InFlightSlots;
    use crate::service::fairness::DEFER_DELAY;
    let mut s = Setup::new(json!([
        {"name": "a", "config": {"executor": probe(json!({}))}},
        {"name": "b", "dependsOn": ["a"], "config": {"executor": probe(json!({}))}},
    ]))
    .await;
    let agency = boss().agency;
    let (tier, slots) = s.fair_share(1).await;
    let now = chrono::Utc::now();
    let until = now + chrono::Duration::seconds(60);
    slots
        .acquire(&agency, tier, "a-task-run", until, None, now)
        .await
        .unwrap();
    let other = AgencyId::parse("other").unwrap();
    slots.stamp_demand(tier, &other, now).await.unwrap();

    assert_eq!(
        s.chains.process(s.message()).await,
        Delivery::Defer(DEFER_DELAY)
    );
    assert!(s.runs().is_empty());
    assert_eq!(s.step("a").await.status, StepStatus::Pending);
    assert!(s.answers().is_empty());

    slots.release(&agency, tier, "a-task-run").await.unwrap();
    assert_eq!(s.chains.process(s.message()).await, Delivery::Ack);
    assert_eq!(s.runs().len(), 2);
    assert_eq!(s.status().await, TaskStatus::Completed);
    assert_eq!(
        slots.held(&agency, tier, chrono::Utc::now()).await.unwrap(),
        0
    );
}
