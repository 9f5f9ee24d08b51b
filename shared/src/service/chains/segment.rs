//! A segment: consecutive waves of automated steps that one worker runs under one task token,
//! doing what the state machine did per step before (retries with the same backoff, timeouts,
//! onFailure), so the segment costs one state transition instead of several per step.
//!
//! Every step change is written as it happens, so a delivery resumes from the records: a
//! finished step is never run again, and a step found `running` had a run that ended without
//! an outcome (a retryable failure waiting for its retry, or a killed worker); that run counts
//! as an attempt. Before its deadline a delivery stops starting steps and hands the segment to
//! a fresh one (`Requeue`); a long backoff comes back as a delayed copy (`Defer`, which is a
//! copy whatever the wait, so retries never raise the message's receive count).

use super::{describe_error, retryable_error, ChainRunner, CHAIN_STOPPED_ERROR, PERMANENT_ERROR};
use crate::domain::segment::{backoff, segment_heartbeat_seconds};
use crate::domain::{
    AgencyId, OnFailure, StepConfig, StepStatus, Task, TaskId, TaskStatus, TaskStep,
};
use crate::error::AppError;
use crate::executors::{ExecError, Outcome};
use crate::service::fairness::DEFER_DELAY;
use crate::service::{task_token, Delivery};
use chrono::Utc;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The steps of a wave run at once, at most (the old definition's Steps MaxConcurrency).
const WAVE_CONCURRENCY: usize = 10;
/// Backoffs up to this long are waited in the invocation; longer ones come back as a copy.
const WAIT_IN_PLACE_UP_TO: Duration = Duration::from_secs(10);
/// Time kept after a step's longest run to record it and hand off (a tenth of what is left,
/// when less: a short invocation keeps less, as batch chunks do).
const HAND_OFF_MARGIN: Duration = Duration::from_secs(10);

fn hand_off_margin(end: Instant) -> Duration {
    HAND_OFF_MARGIN.min(end.saturating_duration_since(Instant::now()) / 10)
}
/// How long another delivery's run of `step` may still last, when the step is running under
/// one that has not ended (at least a second, so the copy that waits for it is not immediate).
fn live_run_left(step: &TaskStep, now: chrono::DateTime<Utc>) -> Option<Duration> {
    let until = step
        .run_until
        .filter(|_| step.status == StepStatus::Running)?;
    let left = (until - now).to_std().ok()?;
    Some(left.max(Duration::from_secs(1)))
}

/// Whether a wait, before a step that may then run for `budget`, is spent in this invocation
/// rather than as a delayed copy. A delayed copy would leave the token without heartbeats for the wait:
/// short waits, and those the heartbeat window could not span, are waited here, when the
/// invocation has room for them.
fn waits_in_place(pass: &Pass, wait: Duration, budget: Duration) -> bool {
    (wait <= WAIT_IN_PLACE_UP_TO || wait * 2 >= pass.window)
        && pass
            .deadline
            .is_none_or(|end| Instant::now() + wait + budget + hand_off_margin(end) < end)
}

/// When the segment's token is first heartbeaten: its clock started when the message was sent.
const FIRST_BEAT: Duration = Duration::from_secs(1);

/// One delivery's run of a segment.
struct Pass {
    /// The invocation's end.
    deadline: Option<Instant>,
    /// The token's heartbeat window.
    window: Duration,
    /// Whether this delivery has started a step yet.
    started: AtomicBool,
    /// The steps as this delivery last read or wrote them.
    records: Records,
}

/// The segment's steps as one delivery knows them: its first read of all the task's steps,
/// then each step write of its own that took. A step's first turn starts from here rather
/// than from a read of its own (its writes are conditional on what it read, so a stale record
/// costs a failed write and a read, never a second run), and a dependency this delivery saw
/// finished is not read again (a finished step stays finished). On a sequential chain this
/// saves the task, the step and the dependency reads of each step: 3 of its ~4 GetItems.
struct Records(Mutex<HashMap<String, TaskStep>>);

impl Records {
    fn of(steps: Vec<TaskStep>) -> Self {
        Self(Mutex::new(
            steps.into_iter().map(|s| (s.name.clone(), s)).collect(),
        ))
    }

    fn get(&self, name: &str) -> Option<TaskStep> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// A finished step, as known: a dependency's outcome without a read.
    fn finished(&self, name: &str) -> Option<TaskStep> {
        self.get(name).filter(TaskStep::is_finished)
    }

    /// Records a write of this delivery's that took.
    fn wrote(&self, step: &TaskStep) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(step.name.clone(), step.clone());
    }
}

/// How a step's turn in this delivery ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Turn {
    /// Finished (completed, failed or skipped), or settled by someone else.
    Settled,
    /// Retry after this backoff, in a later delivery.
    Later(Duration),
    /// Over the agency's in-flight cap.
    Deferred,
    /// Could not finish before the invocation's deadline.
    OutOfTime,
}

impl ChainRunner {
    pub(super) async fn run_segment(
        &self,
        agency: &AgencyId,
        id: TaskId,
        waves: Option<(usize, usize)>,
        finish: bool,
        token: &str,
        deadline: Option<Instant>,
    ) -> Result<Delivery, AppError> {
        // A copy whose token closed (timed out and retried, stopped) has nothing to answer.
        if !task_token::still_waits(self.orchestrator.as_ref(), token).await? {
            tracing::info!(task = %id, "a segment's token has closed; the copy is dropped");
            return Ok(Delivery::Ack);
        }
        let Some(task) = self.store.get(agency, id).await? else {
            self.orchestrator
                .fail(token, PERMANENT_ERROR, "the task no longer exists")
                .await?;
            return Ok(Delivery::Ack);
        };
        let steps = self.store.steps(agency, id).await?;
        let all = crate::domain::chain::waves(
            steps
                .iter()
                .map(|s| (s.name.as_str(), s.depends_on.as_slice())),
        );
        let Some(waves) = waves
            .filter(|(first, last)| first <= last && *last < all.len())
            .map(|(first, last)| &all[first..=last])
        else {
            self.orchestrator
                .fail(
                    token,
                    PERMANENT_ERROR,
                    "the segment names no waves of the task",
                )
                .await?;
            return Ok(Delivery::Ack);
        };
        let configs: Vec<StepConfig> = steps
            .iter()
            .filter(|s| waves.iter().any(|wave| wave.contains(&s.name)))
            .filter_map(|s| StepConfig::parse(&s.config).ok())
            .collect();
        // The window the chain's start gave the token; beats come every half of it.
        let window = Duration::from_secs(u64::from(segment_heartbeat_seconds(&configs)));
        let pass = Pass {
            deadline,
            window,
            started: AtomicBool::new(false),
            records: Records::of(steps),
        };
        let walk = self.walk(agency, task, waves, &pass);
        tokio::pin!(walk);
        let period = (window / 2).max(Duration::from_secs(1));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + FIRST_BEAT, period);
        let walked = loop {
            tokio::select! {
                walked = &mut walk => break walked?,
                _ = ticks.tick() => match self.orchestrator.heartbeat(token).await {
                    // The walk still checks the task between steps; a closed token only means
                    // nobody waits for the answer.
                    Ok(false) => tracing::info!(task = %id, "the segment's token closed while it ran"),
                    Ok(true) => {}
                    Err(err) => tracing::warn!(error = %err, "segment heartbeat failed"),
                },
            }
        };
        let task = match walked {
            Ok(task) => task,
            Err(paused) => return Ok(paused),
        };
        if task.status == TaskStatus::InProgress {
            // Every wave ran: the last segment settles the task (failed too, when a step
            // failed under skip_dependents, as Finalize did) and the execution succeeds.
            if finish {
                self.settle_task(agency, id).await?;
            }
            self.orchestrator
                .succeed(token, &json!({"status": "done"}))
                .await?;
        } else if task.status == TaskStatus::Completed {
            // A copy after the answer (which may have been lost): the same answer.
            self.orchestrator
                .succeed(token, &json!({"status": "done"}))
                .await?;
        } else {
            // Stopped (fail_task, a cancel): the execution fails with the task's reason.
            let cause = task
                .error
                .clone()
                .unwrap_or_else(|| format!("task is {}", task.status));
            self.orchestrator
                .fail(token, CHAIN_STOPPED_ERROR, &cause)
                .await?;
        }
        Ok(Delivery::Ack)
    }

    /// Runs the waves in order. Ok(task) when they all ran or the chain stopped (the task as
    /// last read, no longer in progress); Err(delivery) when the segment continues later.
    async fn walk(
        &self,
        agency: &AgencyId,
        mut task: Task,
        waves: &[Vec<String>],
        pass: &Pass,
    ) -> Result<Result<Task, Delivery>, AppError> {
        for wave in waves {
            if task.status != TaskStatus::InProgress {
                return Ok(Ok(task));
            }
            // Built before the stream: a closure inside it would not be `Send` for the runtime.
            let runs: Vec<_> = wave
                .iter()
                .map(|name| self.drive_step(agency, &task, name.as_str(), pass))
                .collect();
            let turns: Vec<Result<Turn, AppError>> = futures::stream::iter(runs)
                .buffer_unordered(WAVE_CONCURRENCY)
                .collect()
                .await;
            let mut later = None;
            for turn in turns {
                later = match (turn?, later) {
                    (Turn::Settled, later) => later,
                    (Turn::OutOfTime, _) | (_, Some(Delivery::Requeue)) => Some(Delivery::Requeue),
                    // Always a copy, never the message held in flight: a hold raises its
                    // receive count, and a segment's many retries must not walk it into the
                    // DLQ (the step records bound them). No step comes back before its wait.
                    (Turn::Later(wait), Some(Delivery::Defer(other))) => {
                        Some(Delivery::Defer(wait.max(other)))
                    }
                    (Turn::Later(wait), _) => Some(Delivery::Defer(wait)),
                    (Turn::Deferred, Some(Delivery::Defer(other))) => {
                        Some(Delivery::Defer(DEFER_DELAY.max(other)))
                    }
                    (Turn::Deferred, _) => Some(Delivery::Defer(DEFER_DELAY)),
                };
            }
            task = match self.store.get(agency, task.id).await? {
                Some(task) => task,
                None => {
                    // Deleted meanwhile: the chain ends, answered as stopped.
                    task.status = TaskStatus::Failed;
                    task.error = Some("the task no longer exists".into());
                    return Ok(Ok(task));
                }
            };
            if let Some(delivery) = later.filter(|_| task.status == TaskStatus::InProgress) {
                return Ok(Err(delivery));
            }
        }
        Ok(Ok(task))
    }

    /// Runs one step of a wave to its end in this delivery, or until it must wait.
    async fn drive_step(
        &self,
        agency: &AgencyId,
        task: &Task,
        name: &str,
        pass: &Pass,
    ) -> Result<Turn, AppError> {
        let (deadline, started, records) = (pass.deadline, &pass.started, &pass.records);
        // The first turn starts from what the walk just read: the task before this wave, the
        // step as this delivery knows it. Later turns (after a wait) read both again.
        let mut known = Some((task.clone(), records.get(name)));
        loop {
            // A cancel (or a stopping chain) between steps and between attempts ends the walk.
            let (current, step) = match known.take() {
                Some((task, step)) => (Some(task), step),
                None => (self.store.get(agency, task.id).await?, None),
            };
            let Some(task) = current.filter(|t| t.status == TaskStatus::InProgress) else {
                return Ok(Turn::Settled);
            };
            let step = match step {
                Some(step) => Some(step),
                None => self.store.get_step(agency, task.id, name).await?,
            };
            let Some(step) = step else {
                return Ok(Turn::Settled);
            };
            if step.is_finished() {
                return Ok(Turn::Settled);
            }
            if let Some(reason) = self
                .blocked_by(agency, task.id, &step, |dep| records.finished(dep))
                .await?
            {
                let read = step.status;
                let mut step = step;
                step.status = StepStatus::Skipped;
                step.error = Some(reason);
                step.completed_at = Some(Utc::now());
                if self.store.replace_step(agency, &step, read).await? {
                    records.wrote(&step);
                }
                return Ok(Turn::Settled);
            }
            let config = match StepConfig::parse(&step.config) {
                Ok(config) => config,
                Err((field, problem)) => {
                    let cause = format!("invalid step config {field}: {problem}");
                    return self
                        .fail_step(agency, &task, step, None, &cause, records)
                        .await;
                }
            };
            let budget = self.step_budget(&config);
            // Another delivery's live run (a duplicate message, or a stale copy still running):
            // never taken over, nor passed; this delivery waits until that run has ended.
            if let Some(left) = live_run_left(&step, Utc::now()) {
                if waits_in_place(pass, left, budget) {
                    // Read again every second: the run may record its outcome before its bound.
                    tokio::time::sleep(left.min(Duration::from_secs(1))).await;
                    continue;
                }
                return Ok(Turn::Later(left));
            }
            if step.status == StepStatus::Running && step.attempts >= config.max_attempts {
                // Its last run ended without an outcome: the step failed for good.
                let cause = match step.error.clone() {
                    Some(last) => format!("{}: {last}", retryable_error(config.max_attempts)),
                    None => {
                        "States.HeartbeatTimeout: its worker stopped during its last run, without an outcome".into()
                    }
                };
                let run = Some(step.attempts);
                return self
                    .fail_step(agency, &task, step, run, &cause, records)
                    .await;
            }
            // A step starts only if it can finish, and be recorded, before the deadline. The
            // first step of a delivery always starts: the run limit (the lease) is below the
            // worker's Timeout, so a fresh invocation always has room for one.
            if started.load(Ordering::SeqCst)
                && deadline.is_some_and(|end| Instant::now() + budget + hand_off_margin(end) > end)
            {
                return Ok(Turn::OutOfTime);
            }
            started.store(true, Ordering::SeqCst);
            let (tier, holder) = (task.priority, format!("{}#{name}", task.id));
            if let Some(fairness) = &self.fairness {
                let now = Utc::now();
                let until =
                    now + chrono::Duration::from_std(self.lease).map_err(AppError::internal)?;
                if !fairness.admit(agency, tier, &holder, until, now).await? {
                    return Ok(Turn::Deferred);
                }
            }
            let turn = self
                .attempt(agency, &task, step, &config, budget, records)
                .await;
            if let Some(fairness) = &self.fairness {
                fairness.release(agency, tier, &holder).await;
            }
            match turn? {
                Some(wait) if waits_in_place(pass, wait, budget) => {
                    tokio::time::sleep(wait).await;
                }
                Some(wait) => return Ok(Turn::Later(wait)),
                None => return Ok(Turn::Settled),
            }
        }
    }

    /// One run of the step: marks it running, runs it and records its outcome. Some(backoff)
    /// when it failed and has attempts left.
    async fn attempt(
        &self,
        agency: &AgencyId,
        task: &Task,
        mut step: TaskStep,
        config: &StepConfig,
        budget: Duration,
        records: &Records,
    ) -> Result<Option<Duration>, AppError> {
        let (read, lost_run) = (step.status, step.attempts);
        let now = Utc::now();
        step.status = StepStatus::Running;
        step.attempts += 1;
        step.started_at.get_or_insert(now);
        step.error = None;
        step.run_until = Some(
            now + chrono::Duration::from_std(budget + HAND_OFF_MARGIN)
                .map_err(AppError::internal)?,
        );
        // A lost run is taken over only as it was read: of two deliveries that found it, one
        // takes it.
        let taken = if read == StepStatus::Running {
            self.store.replace_step_run(agency, &step, lost_run).await?
        } else {
            self.store.replace_step(agency, &step, read).await?
        };
        if !taken {
            // Settled (cancelled, stopped) or taken by another delivery since it was read: read
            // it again, so a live run elsewhere is waited for rather than passed.
            return Ok(Some(Duration::ZERO));
        }
        let run = step.attempts;
        let executor = match self.executors.resolve(&config.executor) {
            Ok(executor) => executor,
            Err(cause) => {
                let cause =
                    describe_error(&json!({"Error": PERMANENT_ERROR, "Cause": cause}), None);
                self.fail_step(agency, task, step, Some(run), &cause, records)
                    .await?;
                return Ok(None);
            }
        };
        let input = config.input.clone().unwrap_or(Value::Null);
        let job = super::step_job(task.id, &step, config, &input, run);
        let timed_out = budget.as_secs() >= u64::from(config.timeout_seconds);
        let outcome = match tokio::time::timeout(budget, executor.run(&job)).await {
            Ok(outcome) => outcome,
            // Past its timeoutSeconds a step failed for good, as the token's States.Timeout
            // failed it; cut earlier by the run limit it is retried.
            Err(_) if timed_out => {
                let cause = describe_error(&json!({"Error": "States.Timeout"}), None);
                self.fail_step(agency, task, step, Some(run), &cause, records)
                    .await?;
                return Ok(None);
            }
            Err(_) => Err(ExecError::Retryable(format!(
                "step run exceeded {} s",
                budget.as_secs()
            ))),
        };
        let cause = match outcome {
            Ok(Outcome::Done(result)) => match crate::domain::storable::result_problem(&result) {
                Some(problem) => {
                    describe_error(&json!({"Error": PERMANENT_ERROR, "Cause": problem}), None)
                }
                None => {
                    step.status = StepStatus::Completed;
                    step.result = Some(result);
                    step.completed_at = Some(Utc::now());
                    step.run_until = None;
                    // Not written: the step was settled while it ran (a cancel); dropped.
                    if self.store.replace_step_run(agency, &step, run).await? {
                        records.wrote(&step);
                    }
                    return Ok(None);
                }
            },
            Ok(Outcome::AwaitAssignee) => describe_error(
                &json!({"Error": PERMANENT_ERROR, "Cause": "only a manual step waits for a person"}),
                None,
            ),
            Err(ExecError::Retryable(cause)) if run < config.max_attempts => {
                // The step stays running with its error until its retry (or, killed before it,
                // a redelivery counts this run).
                step.error = Some(cause);
                step.run_until = None;
                if !self.store.replace_step_run(agency, &step, run).await? {
                    return Ok(None);
                }
                return Ok(Some(backoff(run, rand::random::<f64>())));
            }
            Err(ExecError::Retryable(cause)) => describe_error(
                &json!({"Error": retryable_error(config.max_attempts), "Cause": cause}),
                None,
            ),
            Err(ExecError::Permanent(cause)) => {
                describe_error(&json!({"Error": PERMANENT_ERROR, "Cause": cause}), None)
            }
        };
        self.fail_step(agency, task, step, Some(run), &cause, records)
            .await?;
        Ok(None)
    }

    /// Records the step failed for good and applies its onFailure policy: fail_task stops
    /// the chain; the others leave its dependents to `blocked_by`.
    async fn fail_step(
        &self,
        agency: &AgencyId,
        task: &Task,
        mut step: TaskStep,
        run: Option<u32>,
        cause: &str,
        records: &Records,
    ) -> Result<Turn, AppError> {
        // Its onFailure policy; a config that does not parse fails the task.
        let policy = StepConfig::parse(&step.config)
            .map(|c| c.on_failure)
            .unwrap_or(OnFailure::FailTask);
        let read = step.status;
        step.status = StepStatus::Failed;
        step.error = Some(cause.to_owned());
        step.completed_at = Some(Utc::now());
        step.run_until = None;
        let written = match run {
            Some(run) => self.store.replace_step_run(agency, &step, run).await?,
            None => self.store.replace_step(agency, &step, read).await?,
        };
        if written {
            records.wrote(&step);
        }
        if written && policy == OnFailure::FailTask {
            let mut task = task.clone();
            if let Some(current) = self.store.get(agency, task.id).await? {
                task = current;
            }
            self.stop_chain(
                agency,
                &mut task,
                format!("step '{}' failed: {cause}", step.name),
            )
            .await?;
        }
        Ok(Turn::Settled)
    }

    /// A segment's token timed out or its answer failed the Task state: the task fails, its
    /// unfinished steps are settled, and the chain ends.
    pub(super) async fn segment_failed(
        &self,
        agency: &AgencyId,
        id: TaskId,
        error: &Value,
        token: &str,
    ) -> Result<(), AppError> {
        if let Some(mut task) = self.store.get(agency, id).await? {
            let cause = describe_error(error, None);
            let mut failed = Vec::new();
            // A step a lost worker left running failed with the segment; the rest is skipped.
            for step in self.store.steps(agency, id).await? {
                if matches!(step.status, StepStatus::Running) {
                    failed.push(format!("'{}'", step.name));
                    let read = step.status;
                    let mut step = step;
                    step.status = StepStatus::Failed;
                    step.error = Some(cause.clone());
                    step.completed_at = Some(Utc::now());
                    step.run_until = None;
                    self.store.replace_step(agency, &step, read).await?;
                }
            }
            let error = match failed.as_slice() {
                [] => format!("the chain stopped: {cause}"),
                [one] => format!("step {one} failed: {cause}"),
                many => format!("steps {} failed: {cause}", many.join(", ")),
            };
            self.stop_chain(agency, &mut task, error).await?;
        }
        self.orchestrator
            .succeed(token, &json!({"status": "settled"}))
            .await?;
        Ok(())
    }
}
