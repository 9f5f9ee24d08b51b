//! One step's turn in a segment's delivery: taking the step (never a live run elsewhere),
//! its attempts with their backoff and time budget, the fair-share slot, and the outcome
//! recorded before the walk moves on.

use super::{Pass, Records, Turn};
use crate::domain::segment::backoff;
use crate::domain::{AgencyId, OnFailure, StepConfig, StepStatus, Task, TaskStatus, TaskStep};
use crate::error::AppError;
use crate::executors::{ExecError, Outcome};
use crate::service::chains::{
    describe_error, live_run_left, retryable_error, ChainRunner, PERMANENT_ERROR, RUN_MARGIN,
};
use chrono::Utc;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Backoffs up to this long are waited in the invocation; longer ones come back as a copy.
const WAIT_IN_PLACE_UP_TO: Duration = Duration::from_secs(10);
/// Time kept after a step's longest run to record it and hand off (a tenth of what is left,
/// when less: a short invocation keeps less, as batch chunks do).
fn hand_off_margin(end: Instant) -> Duration {
    RUN_MARGIN.min(end.saturating_duration_since(Instant::now()) / 10)
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

impl ChainRunner {
    /// Runs one step of a wave to its end in this delivery, or until it must wait; `lane`: its
    /// place in the wave, whose fair-share slot it runs in.
    pub(super) async fn drive_step(
        &self,
        agency: &AgencyId,
        task: &Task,
        name: &str,
        pass: &Pass,
    ) -> Result<Turn, AppError> {
        let (deadline, started, records) = (pass.deadline, &pass.started, &pass.records);
        let run_by = (agency, task.priority, task.id);
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
            let lanes = &pass.lanes;
            let Some(lane) = self.hold_lane(run_by, budget, (lanes, deadline)).await? else {
                return Ok(Turn::Deferred);
            };
            let turn = self
                .attempt(agency, &task, step, &config, budget, records)
                .await;
            match turn {
                Ok(Some(wait)) if waits_in_place(pass, wait, budget) => {
                    self.free_lane(run_by, lane, lanes).await;
                    tokio::time::sleep(wait).await;
                }
                ended => {
                    lanes.put_back(lane);
                    return Ok(match ended? {
                        Some(wait) => Turn::Later(wait),
                        None => Turn::Settled,
                    });
                }
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
            now + chrono::Duration::from_std(budget + RUN_MARGIN).map_err(AppError::internal)?,
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
        let job = crate::service::chains::step_job(task.id, &step, config, &input, run);
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
}
