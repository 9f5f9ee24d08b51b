//! Chain step writes that race, against the in-memory ports.

use crate::domain::{
    AgencyId, Caller, ChainMessage, Role, StepStatus, Task, TaskId, TaskStep, UserId,
};
use crate::error::AppError;
use crate::executors::ExecutorRegistry;
use crate::ports::{IdempotencyRecord, InsertOutcome, Page, TaskQuery, TaskStore};
use crate::service::chains::PERMANENT_ERROR;
use crate::service::{ChainRunner, Delivery};
use crate::testing::{MemoryStore, MemoryWorld};
use async_trait::async_trait;
use serde_json::json;
use std::sync::{Arc, Mutex};

fn boss() -> Caller {
    Caller {
        user: UserId::parse("boss").unwrap(),
        agency: AgencyId::parse("a1").unwrap(),
        role: Role::Manager,
    }
}

/// A store through which another writer settles a step between a worker's read and its
/// write, as a state machine timeout can.
struct RacingStore {
    inner: Arc<MemoryStore>,
    /// The status the other writer gives the step, once, just before the next step write.
    settle_first: Mutex<Option<StepStatus>>,
}

#[async_trait]
impl TaskStore for RacingStore {
    async fn insert(
        &self,
        task: &Task,
        steps: &[TaskStep],
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<InsertOutcome, AppError> {
        self.inner.insert(task, steps, idempotency).await
    }
    async fn get(&self, agency: &AgencyId, id: TaskId) -> Result<Option<Task>, AppError> {
        self.inner.get(agency, id).await
    }
    async fn replace(&self, task: &Task, expected_version: u64) -> Result<(), AppError> {
        self.inner.replace(task, expected_version).await
    }
    async fn delete(&self, agency: &AgencyId, id: TaskId) -> Result<bool, AppError> {
        self.inner.delete(agency, id).await
    }
    async fn list(&self, agency: &AgencyId, query: &TaskQuery) -> Result<Page<Task>, AppError> {
        self.inner.list(agency, query).await
    }
    async fn steps(&self, agency: &AgencyId, id: TaskId) -> Result<Vec<TaskStep>, AppError> {
        self.inner.steps(agency, id).await
    }
    async fn idempotency_record(
        &self,
        agency: &AgencyId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, AppError> {
        self.inner.idempotency_record(agency, key).await
    }
    async fn forget_idempotency_record(
        &self,
        agency: &AgencyId,
        key: &str,
    ) -> Result<(), AppError> {
        self.inner.forget_idempotency_record(agency, key).await
    }
    async fn get_step(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &str,
    ) -> Result<Option<TaskStep>, AppError> {
        self.inner.get_step(agency, id, step).await
    }
    async fn replace_step(
        &self,
        agency: &AgencyId,
        step: &TaskStep,
        read_status: StepStatus,
    ) -> Result<bool, AppError> {
        let other = self.settle_first.lock().unwrap().take();
        if let Some(status) = other {
            let mut theirs = self
                .inner
                .get_step(agency, step.task_id, &step.name)
                .await?
                .expect("step");
            let read = theirs.status;
            theirs.status = status;
            theirs.error = Some("States.Timeout".into());
            assert!(self.inner.replace_step(agency, &theirs, read).await?);
        }
        self.inner.replace_step(agency, step, read_status).await
    }
    async fn replace_step_run(
        &self,
        agency: &AgencyId,
        step: &TaskStep,
        run: u32,
    ) -> Result<bool, AppError> {
        self.inner.replace_step_run(agency, step, run).await
    }
    async fn set_step_token(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &str,
        token: &str,
    ) -> Result<(), AppError> {
        self.inner.set_step_token(agency, id, step, token).await
    }
    async fn step_token(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &str,
    ) -> Result<Option<String>, AppError> {
        self.inner.step_token(agency, id, step).await
    }
    async fn clear_step_token(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &str,
    ) -> Result<(), AppError> {
        self.inner.clear_step_token(agency, id, step).await
    }
}

async fn create_chain(world: &MemoryWorld, steps: serde_json::Value) -> TaskId {
    let created = world
        .services()
        .tasks
        .create(
            &boss(),
            &json!({"title": "t", "type": "multi_step", "autoDispatch": true, "steps": steps}),
            None,
        )
        .await
        .unwrap();
    TaskId::parse(created.task["id"].as_str().unwrap()).unwrap()
}

fn runner(world: &MemoryWorld, store: Arc<dyn TaskStore>) -> ChainRunner {
    ChainRunner {
        store,
        orchestrator: world.orchestrator.clone(),
        executors: ExecutorRegistry::builtin(),
        lease: std::time::Duration::from_secs(30),
        fairness: None,
    }
}

fn step_message(id: TaskId, step: &str) -> ChainMessage {
    ChainMessage::Step {
        task_id: id,
        agency_id: boss().agency,
        step: step.into(),
        task_token: "run-token".into(),
    }
}

/// The timeout settled the step after the worker read it pending and before the worker
/// marked it running: the worker must neither run it nor overwrite the failure.
#[tokio::test]
async fn a_worker_that_loses_the_race_to_a_timeout_never_runs_the_step() {
    let world = MemoryWorld::new();
    let id = create_chain(
        &world,
        json!([{"name": "slow", "config": {"executor": {"type": "echo"}}}]),
    )
    .await;
    let racing = Arc::new(RacingStore {
        inner: world.store.clone(),
        settle_first: Mutex::new(Some(StepStatus::Failed)),
    });
    let delivery = runner(&world, racing)
        .process(step_message(id, "slow"))
        .await;
    assert_eq!(delivery, Delivery::Ack);

    let slow = world
        .store
        .get_step(&boss().agency, id, "slow")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(slow.status, StepStatus::Failed, "{slow:?}");
    assert_eq!(slow.attempts, 0, "the worker did not run it");
    assert!(
        world.orchestrator.answers.lock().unwrap().is_empty(),
        "nothing answered the dead token"
    );
}

/// A worker marked the step running between the chain stopping and its skip: the skip
/// re-reads and still settles the step instead of leaving it running forever.
#[tokio::test]
async fn stopping_a_chain_settles_a_step_a_worker_just_started() {
    let world = MemoryWorld::new();
    let id = create_chain(
        &world,
        json!([{"name": "first", "config": {"executor": {"type": "echo"}}}]),
    )
    .await;
    let racing = RacingStore {
        inner: world.store.clone(),
        settle_first: Mutex::new(Some(StepStatus::Running)),
    };
    super::chains::skip_unfinished(&racing, &boss().agency, id, "skipped: the chain stopped")
        .await
        .unwrap();
    let first = world
        .store
        .get_step(&boss().agency, id, "first")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status, StepStatus::Skipped, "{first:?}");
}

/// The other order: the worker marked the step running, then the timeout settles it.
#[tokio::test]
async fn a_timeout_settles_a_running_step_as_failed() {
    let world = MemoryWorld::new();
    let services = world.services();
    let created = services
        .tasks
        .create(
            &boss(),
            &json!({"title": "t", "type": "multi_step", "autoDispatch": true, "steps": [
                {"name": "wait", "config": {"executor": {"type": "manual"}, "assignee": "carol"}},
            ]}),
            None,
        )
        .await
        .unwrap();
    let id = TaskId::parse(created.task["id"].as_str().unwrap()).unwrap();
    let agency = boss().agency;
    let run = ChainMessage::Step {
        task_id: id,
        agency_id: agency.clone(),
        step: "wait".into(),
        task_token: "run-token".into(),
    };
    assert_eq!(services.chains.process(run).await, Delivery::Ack);
    let running = world
        .store
        .get_step(&agency, id, "wait")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.status, StepStatus::Waiting);

    let timed_out = ChainMessage::StepFailed {
        task_id: id,
        agency_id: agency.clone(),
        step: "wait".into(),
        error: json!({"Error": "States.Timeout"}),
        task_token: "catch-token".into(),
    };
    assert_eq!(services.chains.process(timed_out).await, Delivery::Ack);
    let failed = world
        .store
        .get_step(&agency, id, "wait")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, StepStatus::Failed);
    assert_eq!(failed.attempts, 1);
}

/// A manual step the chain reached waits for its person, and says so: `waiting`, not
/// `running` (which is for a step a worker runs). Completing it from there finishes it; one
/// recorded as `running` before `waiting` existed completes too.
#[tokio::test]
async fn a_manual_step_waiting_for_its_assignee_is_waiting() {
    let world = MemoryWorld::new();
    let id = create_chain(
        &world,
        json!([
            {"name": "approve", "config": {"executor": {"type": "manual"}, "assignedTo": "carol"}},
            {"name": "sign", "config": {"executor": {"type": "manual"}, "assignedTo": "carol"}},
        ]),
    )
    .await;
    let chains = runner(&world, world.store.clone());
    let agency = boss().agency;
    for name in ["approve", "sign"] {
        assert_eq!(chains.process(step_message(id, name)).await, Delivery::Ack);
        let step = world
            .store
            .get_step(&agency, id, name)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(step.status, StepStatus::Waiting, "{name}");
    }
    // As an earlier version recorded a waiting manual step.
    let mut legacy = world
        .store
        .get_step(&agency, id, "sign")
        .await
        .unwrap()
        .unwrap();
    legacy.status = StepStatus::Running;
    assert!(world
        .store
        .replace_step(&agency, &legacy, StepStatus::Waiting)
        .await
        .unwrap());

    let carol = Caller {
        user: UserId::parse("carol").unwrap(),
        agency: agency.clone(),
        role: Role::Member,
    };
    let done = crate::service::CompleteInput::Succeeded(Some(json!({"ok": true})));
    for name in ["approve", "sign"] {
        let completed = world
            .services()
            .tasks
            .complete_step(&carol, id, name, &done)
            .await
            .unwrap();
        assert_eq!(completed.status, StepStatus::Completed, "{name}");
    }
}

/// Cancels the chain's task (as `POST /cancel` does: the task, then its unfinished steps)
/// while the step runs.
struct CancelsWhileRunning {
    store: Arc<MemoryStore>,
}

#[async_trait]
impl crate::executors::Executor for CancelsWhileRunning {
    fn validate(&self, _config: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }

    async fn run(
        &self,
        job: &crate::executors::Job<'_>,
    ) -> Result<crate::executors::Outcome, crate::executors::ExecError> {
        let agency = boss().agency;
        let mut task = self.store.get(&agency, job.task_id).await.unwrap().unwrap();
        let read = task.version;
        task.move_to(crate::domain::TaskStatus::Cancelled, chrono::Utc::now())
            .unwrap();
        self.store.replace(&task, read).await.unwrap();
        super::chains::skip_unfinished(self.store.as_ref(), &agency, job.task_id, "cancelled")
            .await
            .unwrap();
        Ok(crate::executors::Outcome::Done(json!("late")))
    }
}

/// The chain was cancelled while its step ran: the result is dropped, and the token is still
/// answered (a failure), so an execution still waiting on it ends instead of hanging until
/// the step's timeout.
#[tokio::test]
async fn a_step_cancelled_while_it_runs_answers_its_token_with_a_failure() {
    let world = MemoryWorld::new();
    let id = create_chain(
        &world,
        json!([{"name": "long", "config": {"executor": {"type": "echo"}}}]),
    )
    .await;
    // The worker's "echo" is the canceller.
    let mut executors = ExecutorRegistry::builtin();
    executors.register(
        "echo",
        Arc::new(CancelsWhileRunning {
            store: world.store.clone(),
        }),
    );
    let chains = ChainRunner {
        executors,
        ..runner(&world, world.store.clone())
    };
    assert_eq!(
        chains.process(step_message(id, "long")).await,
        Delivery::Ack
    );
    let step = world
        .store
        .get_step(&boss().agency, id, "long")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(step.status, StepStatus::Skipped);
    assert_eq!(step.result, None, "the late result is dropped");
    let answers = world.orchestrator.answers.lock().unwrap().clone();
    assert_eq!(answers.len(), 1, "{answers:?}");
    let (token, error, cause) = &answers[0];
    assert_eq!(token, "run-token");
    assert_ne!(error, "success");
    assert!(cause.contains("skipped while it ran"), "{cause}");
}

/// The heartbeat window opened when the step's message was sent, so a running step heartbeats
/// a second after it starts instead of half a window later; a quick step never does.
#[tokio::test(start_paused = true)]
async fn a_running_step_heartbeats_within_a_second_and_a_quick_one_never() {
    let world = MemoryWorld::new();
    let step = |seconds: f64| {
        json!({"executor": {"type": "sleep", "config": {"seconds": seconds}},
            "heartbeatSeconds": 10, "timeoutSeconds": 60})
    };
    let id = create_chain(
        &world,
        json!([{"name": "slow", "config": step(4.5)}, {"name": "quick", "config": step(0.0)}]),
    )
    .await;
    let chains = runner(&world, world.store.clone());
    assert_eq!(
        chains.process(step_message(id, "quick")).await,
        Delivery::Ack
    );
    assert!(world.orchestrator.heartbeats.lock().unwrap().is_empty());
    assert_eq!(
        chains.process(step_message(id, "slow")).await,
        Delivery::Ack
    );
    // 4.5 seconds of work: a heartbeat at one second, the next would be at six. (Beating at
    // once, then every five seconds, would send two.)
    assert_eq!(
        *world.orchestrator.heartbeats.lock().unwrap(),
        ["run-token"]
    );
}

/// Rewrites a chain's step as `change` leaves it, as another writer would have.
async fn rewrite(world: &MemoryWorld, id: TaskId, name: &str, change: impl FnOnce(&mut TaskStep)) {
    let agency = boss().agency;
    let mut step = world
        .store
        .get_step(&agency, id, name)
        .await
        .unwrap()
        .unwrap();
    let read = step.status;
    change(&mut step);
    assert!(world
        .store
        .replace_step(&agency, &step, read)
        .await
        .unwrap());
}

/// Gives a chain's step a final status directly, as the worker or a Catch would have.
async fn settle(world: &MemoryWorld, id: TaskId, name: &str, status: StepStatus) {
    rewrite(world, id, name, |step| step.status = status).await;
}

fn finalize(id: TaskId) -> ChainMessage {
    ChainMessage::Finalize {
        task_id: id,
        agency_id: boss().agency,
        task_token: "final-token".into(),
    }
}

/// Finalize: a failed step fails the task unless its policy is `continue`.
#[tokio::test]
async fn finalize_fails_the_task_only_for_failures_that_count() {
    let world = MemoryWorld::new();
    let chains = runner(&world, world.store.clone());
    let tolerant = create_chain(
        &world,
        json!([{"name": "a", "config": {"onFailure": "continue"}}, {"name": "b"}]),
    )
    .await;
    settle(&world, tolerant, "a", StepStatus::Failed).await;
    settle(&world, tolerant, "b", StepStatus::Completed).await;
    assert_eq!(chains.process(finalize(tolerant)).await, Delivery::Ack);
    let task = world
        .store
        .get(&boss().agency, tolerant)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        task.status,
        crate::domain::TaskStatus::Completed,
        "{task:?}"
    );

    let strict = create_chain(&world, json!([{"name": "a"}, {"name": "b"}])).await;
    settle(&world, strict, "a", StepStatus::Completed).await;
    settle(&world, strict, "b", StepStatus::Failed).await;
    assert_eq!(chains.process(finalize(strict)).await, Delivery::Ack);
    let task = world
        .store
        .get(&boss().agency, strict)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.status, crate::domain::TaskStatus::Failed);
    assert_eq!(task.error.as_deref(), Some("steps failed: b"));
    // Each finalize answered its token.
    let answers = world.orchestrator.answers.lock().unwrap().clone();
    assert_eq!(answers.iter().filter(|a| a.0 == "final-token").count(), 2);
}

/// A retryable failure names the step's attempt count, so the definition's matching Retry
/// block applies; a dependent of a step failed with skip_dependents is skipped, not run.
#[tokio::test]
async fn retryable_failures_name_their_attempts_and_failed_dependencies_skip() {
    let world = MemoryWorld::new();
    let chains = runner(&world, world.store.clone());
    let id = create_chain(
        &world,
        json!([
            {"name": "flaky", "config": {"executor": {"type": "sleep", "config": {"failAttempts": 9}}, "retry": {"maxAttempts": 3}, "onFailure": "skip_dependents"}},
            {"name": "after", "dependsOn": ["flaky"]},
            {"name": "after-after", "dependsOn": ["after"]},
            {"name": "tolerant", "config": {"onFailure": "continue"}},
            {"name": "after-tolerant", "dependsOn": ["tolerant"]},
        ]),
    )
    .await;
    assert_eq!(
        chains.process(step_message(id, "flaky")).await,
        Delivery::Ack
    );
    let answers = world.orchestrator.answers.lock().unwrap().clone();
    assert_eq!(
        answers.last().unwrap().1,
        "Taskflow.Retryable.3",
        "{answers:?}"
    );

    settle(&world, id, "flaky", StepStatus::Failed).await;
    assert_eq!(
        chains.process(step_message(id, "after")).await,
        Delivery::Ack
    );
    let after = world
        .store
        .get_step(&boss().agency, id, "after")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.status, StepStatus::Skipped);
    assert_eq!(after.attempts, 0, "never ran");
    // A skipped dependency skips its dependents in turn.
    assert_eq!(
        chains.process(step_message(id, "after-after")).await,
        Delivery::Ack
    );
    let after_after = world
        .store
        .get_step(&boss().agency, id, "after-after")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after_after.status, StepStatus::Skipped);

    settle(&world, id, "tolerant", StepStatus::Failed).await;
    assert_eq!(
        chains.process(step_message(id, "after-tolerant")).await,
        Delivery::Ack
    );
    let runs = world
        .store
        .get_step(&boss().agency, id, "after-tolerant")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        runs.status,
        StepStatus::Completed,
        "continue lets dependents run"
    );
}

/// A step's Catch (`StepFailed`): with `fail_task` the task fails naming the step and the rest
/// of the chain is skipped; with `continue` the chain goes on.
#[tokio::test]
async fn a_failed_step_stops_the_chain_only_under_fail_task() {
    let world = MemoryWorld::new();
    let chains = runner(&world, world.store.clone());
    let id = create_chain(
        &world,
        json!([
            {"name": "tolerant", "config": {"onFailure": "continue"}},
            {"name": "strict"},
            {"name": "later", "dependsOn": ["strict"]},
        ]),
    )
    .await;
    let failed = |step: &str, token: &str| ChainMessage::StepFailed {
        task_id: id,
        agency_id: boss().agency,
        step: step.into(),
        error: json!({"Error": "Taskflow.Permanent", "Cause": "no"}),
        task_token: token.into(),
    };
    let task_status = || async { world.store.get(&boss().agency, id).await.unwrap().unwrap() };
    assert_eq!(
        chains.process(failed("tolerant", "t1")).await,
        Delivery::Ack
    );
    assert_eq!(
        task_status().await.status,
        crate::domain::TaskStatus::InProgress
    );
    assert_eq!(chains.process(failed("strict", "t2")).await, Delivery::Ack);
    let task = task_status().await;
    assert_eq!(task.status, crate::domain::TaskStatus::Failed);
    assert_eq!(
        task.error.as_deref(),
        Some("step 'strict' failed: Taskflow.Permanent: no")
    );
    let later = world
        .store
        .get_step(&boss().agency, id, "later")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(later.status, StepStatus::Skipped);
    let answers = world.orchestrator.answers.lock().unwrap().clone();
    let answer = |token: &str| answers.iter().find(|a| a.0 == token).unwrap().2.clone();
    assert_eq!(answer("t1"), r#"{"failTask":"no"}"#);
    assert_eq!(answer("t2"), r#"{"failTask":"yes"}"#);
}

/// Scripts the first SendTaskSuccess (`script`) and SendTaskFailure (`failures`) answers:
/// `None` is an error (a crash or an outage between the write and the answer looks the same
/// to the chain), `Some(false)` a token that expired.
struct ScriptedSuccess {
    inner: Arc<crate::testing::RecordingOrchestrator>,
    script: Mutex<Vec<Option<bool>>>,
    failures: Mutex<Vec<Option<bool>>>,
}

/// The next scripted answer, if any is left.
fn next_scripted(script: &Mutex<Vec<Option<bool>>>) -> Option<Option<bool>> {
    let mut script = script.lock().unwrap();
    (!script.is_empty()).then(|| script.remove(0))
}

#[async_trait]
impl crate::ports::Orchestrator for ScriptedSuccess {
    async fn start(&self, name: &str, input: &serde_json::Value) -> Result<String, AppError> {
        self.inner.start(name, input).await
    }
    async fn describe(
        &self,
        name: &str,
    ) -> Result<Option<crate::ports::ExecutionStatus>, AppError> {
        self.inner.describe(name).await
    }
    fn execution_arn(&self, name: &str) -> String {
        self.inner.execution_arn(name)
    }
    async fn stop(&self, execution_arn: &str, cause: &str) -> Result<(), AppError> {
        self.inner.stop(execution_arn, cause).await
    }
    async fn succeed(&self, token: &str, output: &serde_json::Value) -> Result<bool, AppError> {
        match next_scripted(&self.script) {
            Some(None) => Err(AppError::Unavailable("states:SendTaskSuccess".into())),
            Some(Some(accepted)) => Ok(accepted),
            None => self.inner.succeed(token, output).await,
        }
    }
    async fn fail(&self, token: &str, error: &str, cause: &str) -> Result<bool, AppError> {
        match next_scripted(&self.failures) {
            Some(None) => Err(AppError::Unavailable("states:SendTaskFailure".into())),
            Some(Some(accepted)) => Ok(accepted),
            None => self.inner.fail(token, error, cause).await,
        }
    }
    async fn heartbeat(&self, token: &str) -> Result<bool, AppError> {
        self.inner.heartbeat(token).await
    }
}

/// Counts its runs and answers with the run number.
#[derive(Default)]
struct CountingExecutor {
    runs: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl crate::executors::Executor for CountingExecutor {
    fn validate(&self, _config: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }

    async fn run(
        &self,
        _job: &crate::executors::Job<'_>,
    ) -> Result<crate::executors::Outcome, crate::executors::ExecError> {
        let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Ok(crate::executors::Outcome::Done(json!({"run": run})))
    }
}

/// Issue 13 item 6: the result is written before the token is answered. When the answer fails,
/// the step already holds its result (Finalize reads it as completed), and the redelivery
/// answers from the record without running the step again.
#[tokio::test]
async fn a_step_result_is_recorded_before_its_token_and_a_failed_answer_never_reruns_it() {
    let world = MemoryWorld::new();
    let (id, chains, counting) = counted_chain(&world).await;
    let chains = ChainRunner {
        orchestrator: Arc::new(ScriptedSuccess {
            inner: world.orchestrator.clone(),
            script: Mutex::new(vec![None]),
            failures: Mutex::default(),
        }),
        ..chains
    };
    assert!(matches!(
        chains.process(step_message(id, "only")).await,
        Delivery::RetryAfter(_)
    ));
    let step = world
        .store
        .get_step(&boss().agency, id, "only")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(step.status, StepStatus::Completed, "{step:?}");
    assert_eq!(step.result, Some(json!({"run": 1})));
    assert!(world.orchestrator.answers.lock().unwrap().is_empty());

    // The redelivered message answers the token from the record.
    assert_eq!(
        chains.process(step_message(id, "only")).await,
        Delivery::Ack
    );
    assert_eq!(
        counting.runs.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the step ran once"
    );
    let answers = world.orchestrator.answers.lock().unwrap().clone();
    assert_eq!(
        answers,
        [(
            "run-token".to_owned(),
            "success".to_owned(),
            r#"{"status":"completed"}"#.to_owned()
        )]
    );
    assert_eq!(chains.process(finalize(id)).await, Delivery::Ack);
    let task = world.store.get(&boss().agency, id).await.unwrap().unwrap();
    assert_eq!(task.status, crate::domain::TaskStatus::Completed);
    assert_eq!(task.result, Some(json!({"steps": {"only": "completed"}})));
}

/// Marks `name` running its first attempt under `token`, a run that may last `seconds` more,
/// as the delivery that took it records it.
async fn running_under(world: &MemoryWorld, id: TaskId, name: &str, token: &str, seconds: i64) {
    rewrite(world, id, name, |step| {
        step.status = StepStatus::Running;
        step.attempts = 1;
        step.run_until = Some(chrono::Utc::now() + chrono::Duration::seconds(seconds));
    })
    .await;
    world
        .store
        .set_step_token(&boss().agency, id, name, token)
        .await
        .unwrap();
}

/// A chain of one echo step whose runs `counting` counts.
async fn counted_chain(world: &MemoryWorld) -> (TaskId, ChainRunner, Arc<CountingExecutor>) {
    let id = create_chain(
        world,
        json!([{"name": "only", "config": {"executor": {"type": "echo"}}}]),
    )
    .await;
    let counting = Arc::new(CountingExecutor::default());
    let mut executors = ExecutorRegistry::builtin();
    executors.register("echo", counting.clone());
    let chains = ChainRunner {
        executors,
        ..runner(world, world.store.clone())
    };
    (id, chains, counting)
}

/// SQS delivers at least once: a duplicate of a running step's message (the same token) never
/// runs the step a second time. It comes back once the run has ended at the latest, and then
/// answers from the record.
#[tokio::test]
async fn a_duplicate_of_a_running_step_s_message_never_runs_it_again() {
    use std::sync::atomic::Ordering::SeqCst;
    let world = MemoryWorld::new();
    let (id, chains, counting) = counted_chain(&world).await;
    running_under(&world, id, "only", "run-token", 60).await;

    let delivery = chains.process(step_message(id, "only")).await;
    let Delivery::Defer(wait) = delivery else {
        panic!("{delivery:?}");
    };
    let expected = std::time::Duration::from_secs(50)..=std::time::Duration::from_secs(60);
    assert!(
        expected.contains(&wait),
        "back after the run's bound: {wait:?}"
    );
    assert_eq!(counting.runs.load(SeqCst), 0, "not run again");

    // The live run records its outcome; the copy then answers from the record.
    let agency = boss().agency;
    let mut step = world
        .store
        .get_step(&agency, id, "only")
        .await
        .unwrap()
        .unwrap();
    step.status = StepStatus::Completed;
    step.run_until = None;
    assert!(world
        .store
        .replace_step_run(&agency, &step, 1)
        .await
        .unwrap());
    assert_eq!(
        chains.process(step_message(id, "only")).await,
        Delivery::Ack
    );
    assert_eq!(counting.runs.load(SeqCst), 0);
    let answers = world.orchestrator.answers.lock().unwrap().clone();
    assert_eq!(answers.len(), 1);
    assert_eq!(
        (answers[0].0.as_str(), answers[0].1.as_str()),
        ("run-token", "success")
    );
}

/// The state machine gave up on a run (its heartbeat timed out) and retried the step under a
/// new token: that run's answer can no longer land, so the retry takes the step over at once,
/// and the old run's outcome, if it comes, is dropped.
#[tokio::test]
async fn a_retry_under_a_new_token_takes_over_a_run_the_chain_gave_up_on() {
    use std::sync::atomic::Ordering::SeqCst;
    let world = MemoryWorld::new();
    let (id, chains, counting) = counted_chain(&world).await;
    running_under(&world, id, "only", "timed-out-token", 60).await;

    assert_eq!(
        chains.process(step_message(id, "only")).await,
        Delivery::Ack
    );
    assert_eq!(counting.runs.load(SeqCst), 1);
    let agency = boss().agency;
    let step = world
        .store
        .get_step(&agency, id, "only")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (step.status, step.attempts),
        (StepStatus::Completed, 2),
        "{step:?}"
    );
    assert_eq!(step.run_until, None, "a recorded outcome ends the run");
    // A late outcome of the first run is no longer that run's to write.
    assert!(!world
        .store
        .replace_step_run(&agency, &step, 1)
        .await
        .unwrap());
}

/// Claims the step for a later run (as a second delivery would) while this run works.
struct SupersededWhileRunning {
    store: Arc<MemoryStore>,
}

#[async_trait]
impl crate::executors::Executor for SupersededWhileRunning {
    fn validate(&self, _config: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }

    async fn run(
        &self,
        job: &crate::executors::Job<'_>,
    ) -> Result<crate::executors::Outcome, crate::executors::ExecError> {
        let agency = boss().agency;
        let mut step = self
            .store
            .get_step(&agency, job.task_id, "only")
            .await
            .unwrap()
            .unwrap();
        step.attempts += 1;
        assert!(self
            .store
            .replace_step(&agency, &step, StepStatus::Running)
            .await
            .unwrap());
        Ok(crate::executors::Outcome::Done(json!("stale")))
    }
}

/// The outcome is written only while the step is still this run's: a run that a later
/// delivery took over neither overwrites the step nor answers for it.
#[tokio::test]
async fn a_run_superseded_by_a_later_one_does_not_record_its_result() {
    let world = MemoryWorld::new();
    let id = create_chain(
        &world,
        json!([{"name": "only", "config": {"executor": {"type": "echo"}}}]),
    )
    .await;
    let mut executors = ExecutorRegistry::builtin();
    executors.register(
        "echo",
        Arc::new(SupersededWhileRunning {
            store: world.store.clone(),
        }),
    );
    let chains = ChainRunner {
        executors,
        ..runner(&world, world.store.clone())
    };
    assert_eq!(
        chains.process(step_message(id, "only")).await,
        Delivery::Ack
    );
    let step = world
        .store
        .get_step(&boss().agency, id, "only")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(step.status, StepStatus::Running, "{step:?}");
    assert_eq!(step.attempts, 2);
    assert_eq!(step.result, None, "the stale run's result is dropped");
    assert!(world.orchestrator.answers.lock().unwrap().is_empty());
}

/// The token expired (or its execution stopped) while the step ran: the recorded result is
/// kept, but the step is failed, as the chain's Catch counts it.
#[tokio::test]
async fn a_result_whose_token_expired_leaves_the_step_failed() {
    let world = MemoryWorld::new();
    let id = create_chain(
        &world,
        json!([{"name": "only", "config": {"executor": {"type": "echo"}}}]),
    )
    .await;
    let chains = ChainRunner {
        orchestrator: Arc::new(ScriptedSuccess {
            inner: world.orchestrator.clone(),
            script: Mutex::new(vec![Some(false)]),
            failures: Mutex::default(),
        }),
        ..runner(&world, world.store.clone())
    };
    assert_eq!(
        chains.process(step_message(id, "only")).await,
        Delivery::Ack
    );
    let step = world
        .store
        .get_step(&boss().agency, id, "only")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(step.status, StepStatus::Failed, "{step:?}");
    assert!(step.result.is_some());
    assert!(
        step.error
            .as_deref()
            .unwrap_or("")
            .contains("stopped waiting"),
        "{step:?}"
    );
}

/// A manual step's completion is recorded before its token is answered too. When the answer
/// fails the caller gets the error, the step already holds its result, and the caller's retry
/// answers the token from the record; once answered, another completion is a 409.
#[tokio::test]
async fn a_manual_completion_is_recorded_first_and_its_retry_answers_from_the_record() {
    let world = MemoryWorld::new();
    let id = create_chain(
        &world,
        json!([{"name": "approve", "config": {"executor": {"type": "manual"}, "assignee": "carol"}}]),
    )
    .await;
    let chains = runner(&world, world.store.clone());
    assert_eq!(
        chains.process(step_message(id, "approve")).await,
        Delivery::Ack
    );
    let mut ports = world.ports();
    ports.orchestrator = Arc::new(ScriptedSuccess {
        inner: world.orchestrator.clone(),
        script: Mutex::new(vec![None]),
        failures: Mutex::default(),
    });
    let config = crate::testing::test_config();
    let services = crate::services::Services::from_ports(
        ports,
        world.index.clone(),
        ExecutorRegistry::builtin(),
        &config,
    );
    let carol = Caller {
        user: UserId::parse("carol").unwrap(),
        agency: boss().agency,
        role: Role::Member,
    };
    let outcome = crate::service::CompleteInput::Succeeded(Some(json!({"approved": true})));
    let refused = services
        .tasks
        .complete_step(&carol, id, "approve", &outcome)
        .await;
    assert!(
        matches!(refused, Err(AppError::Unavailable(_))),
        "{refused:?}"
    );
    let step = world
        .store
        .get_step(&boss().agency, id, "approve")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(step.status, StepStatus::Completed, "{step:?}");
    assert_eq!(step.result, Some(json!({"approved": true})));
    assert!(world.orchestrator.answers.lock().unwrap().is_empty());

    let retried = services
        .tasks
        .complete_step(&carol, id, "approve", &outcome)
        .await
        .unwrap();
    assert_eq!(retried.result, Some(json!({"approved": true})));
    assert_eq!(
        world.orchestrator.answers.lock().unwrap().clone(),
        [(
            "run-token".to_owned(),
            "success".to_owned(),
            r#"{"status":"completed"}"#.to_owned()
        )]
    );
    let again = services
        .tasks
        .complete_step(&carol, id, "approve", &outcome)
        .await;
    assert!(matches!(again, Err(AppError::Conflict(_))), "{again:?}");
    assert_eq!(world.orchestrator.answers.lock().unwrap().len(), 1);
}

/// Fails for good and counts its runs.
#[derive(Default)]
struct CountingRefusal {
    runs: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl crate::executors::Executor for CountingRefusal {
    fn validate(&self, _config: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }

    async fn run(
        &self,
        _job: &crate::executors::Job<'_>,
    ) -> Result<crate::executors::Outcome, crate::executors::ExecError> {
        self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(crate::executors::ExecError::Permanent("refused".into()))
    }
}

/// A permanent failure is recorded (failed) before its token is answered, so a redelivery
/// after a refused SendTaskFailure repeats the failure from the record without running the
/// step again.
#[tokio::test]
async fn a_permanent_failure_is_recorded_first_and_never_rerun_by_a_redelivery() {
    let world = MemoryWorld::new();
    let id = create_chain(
        &world,
        json!([{"name": "only", "config": {"executor": {"type": "echo"}}}]),
    )
    .await;
    let refusing = Arc::new(CountingRefusal::default());
    let mut executors = ExecutorRegistry::builtin();
    executors.register("echo", refusing.clone());
    let chains = ChainRunner {
        executors,
        orchestrator: Arc::new(ScriptedSuccess {
            inner: world.orchestrator.clone(),
            script: Mutex::default(),
            failures: Mutex::new(vec![None]),
        }),
        ..runner(&world, world.store.clone())
    };
    assert!(matches!(
        chains.process(step_message(id, "only")).await,
        Delivery::RetryAfter(_)
    ));
    let step = world
        .store
        .get_step(&boss().agency, id, "only")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(step.status, StepStatus::Failed, "{step:?}");
    assert_eq!(step.error.as_deref(), Some("refused"));
    assert_eq!(
        chains.process(step_message(id, "only")).await,
        Delivery::Ack
    );
    assert_eq!(refusing.runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    let answers = world.orchestrator.answers.lock().unwrap().clone();
    assert_eq!(
        answers,
        [(
            "run-token".to_owned(),
            PERMANENT_ERROR.to_owned(),
            "refused".to_owned()
        )]
    );
}

/// A chain step holds a slot of its agency's cap on the chain's tier like a task run: over the
/// cap while another agency waits, it is deferred untouched (not started, no attempt); a
/// manual step, which waits for a person and holds no worker, takes no slot; once a slot
/// frees the step runs and gives its slot back.
#[tokio::test]
async fn a_step_over_its_agencys_cap_is_deferred_and_a_manual_step_takes_no_slot() {
    use crate::ports::InFlightSlots;
    use crate::service::fairness::{Fairness, DEFER_DELAY};
    use crate::testing::MemorySlots;
    let world = MemoryWorld::new();
    let id = create_chain(
        &world,
        json!([
            {"name": "auto", "config": {"executor": {"type": "echo"}}},
            {"name": "person", "config": {"executor": {"type": "manual"}, "assignedTo": "carol"}}
        ]),
    )
    .await;
    let tier = world
        .store
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap()
        .priority;
    let slots = Arc::new(MemorySlots::default());
    let chains = ChainRunner {
        fairness: Some(Fairness::new(
            slots.clone(),
            std::collections::BTreeMap::from([(tier, 1)]),
        )),
        ..runner(&world, world.store.clone())
    };
    let now = chrono::Utc::now();
    slots
        .acquire(
            &boss().agency,
            tier,
            "a-task-run",
            now + chrono::Duration::seconds(60),
            None,
            now,
        )
        .await
        .unwrap();
    let other = AgencyId::parse("other").unwrap();
    slots.stamp_demand(tier, &other, now).await.unwrap();
    let step = |name: &'static str| {
        let store = world.store.clone();
        async move {
            store
                .get_step(&boss().agency, id, name)
                .await
                .unwrap()
                .unwrap()
        }
    };

    assert_eq!(
        chains.process(step_message(id, "auto")).await,
        Delivery::Defer(DEFER_DELAY)
    );
    let auto = step("auto").await;
    assert_eq!((auto.status, auto.attempts), (StepStatus::Pending, 0));
    assert!(world.orchestrator.answers.lock().unwrap().is_empty());

    assert_eq!(
        chains.process(step_message(id, "person")).await,
        Delivery::Ack
    );
    assert_eq!(step("person").await.status, StepStatus::Waiting);

    slots
        .release(&boss().agency, tier, "a-task-run")
        .await
        .unwrap();
    assert_eq!(
        chains.process(step_message(id, "auto")).await,
        Delivery::Ack
    );
    assert_eq!(step("auto").await.status, StepStatus::Completed);
    assert_eq!(
        slots
            .held(&boss().agency, tier, chrono::Utc::now())
            .await
            .unwrap(),
        0
    );
}
