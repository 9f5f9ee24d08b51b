//! The worker side of multi-step chains. The state machine walks the chain's segments;
//! a wave with a manual step is run step by step, each step under its own token with the
//! state machine owning its retries and timeout (here), and a run of automated waves is one
//! segment a worker runs whole under one token, owning its steps' retries and timeouts
//! (`segment`). Either way this code runs steps, records every change in DynamoDB as it
//! happens, applies each step's onFailure policy, and answers the task tokens. Results stay in DynamoDB: only a status word
//! travels back through the state machine, so no payload limit applies.

use crate::domain::{
    AgencyId, ChainMessage, OnFailure, StepConfig, StepStatus, Task, TaskId, TaskStatus, TaskStep,
};
use crate::error::AppError;
use crate::executors::{ExecError, ExecutorRegistry, Job, Outcome, WorkUnit};
use crate::ports::{Orchestrator, TaskStore};
use crate::service::fairness::{Fairness, DEFER_DELAY};
use crate::service::Delivery;
use chrono::Utc;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// When a running step first heartbeats its token.
const FIRST_BEAT: Duration = Duration::from_secs(1);

/// Error names the chain definition's Retry blocks match (`Taskflow.Retryable.<maxAttempts>`).
pub fn retryable_error(max_attempts: u32) -> String {
    format!("Taskflow.Retryable.{max_attempts}")
}
pub const PERMANENT_ERROR: &str = "Taskflow.Permanent";
/// A segment's answer when the chain stopped (a fail_task step failed, the task was
/// cancelled): the execution fails with it, as its Fail state did.
pub const CHAIN_STOPPED_ERROR: &str = "Taskflow.ChainStopped";

mod segment;

#[derive(Clone)]
pub struct ChainRunner {
    pub store: Arc<dyn TaskStore>,
    pub orchestrator: Arc<dyn Orchestrator>,
    pub executors: ExecutorRegistry,
    /// Longest a single step run may take on a worker.
    pub lease: Duration,
    /// The per-agency in-flight cap of each tier, when enforced (steps of chains take slots
    /// like tasks do; a manual step, which waits for a person, takes none).
    pub fairness: Option<Fairness>,
}

impl ChainRunner {
    pub async fn process(&self, message: ChainMessage) -> Delivery {
        self.process_until(message, None).await
    }

    /// [`ChainRunner::process`] in an invocation that ends at `deadline`: a segment stops
    /// starting steps that could not finish in time and continues in a new delivery.
    pub async fn process_until(
        &self,
        message: ChainMessage,
        deadline: Option<std::time::Instant>,
    ) -> Delivery {
        let result = match &message {
            ChainMessage::Segment {
                task_id,
                agency_id,
                first_wave,
                last_wave,
                finish,
                task_token,
            } => {
                let waves = first_wave.parse().ok().zip(last_wave.parse().ok());
                self.run_segment(
                    agency_id,
                    *task_id,
                    waves,
                    finish == "yes",
                    task_token,
                    deadline,
                )
                .await
            }
            ChainMessage::SegmentFailed {
                task_id,
                agency_id,
                error,
                task_token,
            } => self
                .segment_failed(agency_id, *task_id, error, task_token)
                .await
                .map(|()| Delivery::Ack),
            ChainMessage::Step {
                task_id,
                agency_id,
                step,
                task_token,
            } => self.run_step(agency_id, *task_id, step, task_token).await,
            ChainMessage::StepFailed {
                task_id,
                agency_id,
                step,
                error,
                task_token,
            } => self
                .record_failure(agency_id, *task_id, step, error, task_token)
                .await
                .map(|()| Delivery::Ack),
            ChainMessage::Finalize {
                task_id,
                agency_id,
                task_token,
            } => self
                .finalize(agency_id, *task_id, task_token)
                .await
                .map(|()| Delivery::Ack),
        };
        match result {
            Ok(delivery) => delivery,
            Err(err) => {
                tracing::warn!(error = %err, "chain message will be retried");
                Delivery::RetryAfter(Duration::from_secs(5))
            }
        }
    }

    async fn load(
        &self,
        agency: &AgencyId,
        id: TaskId,
        name: &str,
    ) -> Result<Option<(Task, TaskStep)>, AppError> {
        let Some(task) = self.store.get(agency, id).await? else {
            return Ok(None);
        };
        let Some(step) = self.store.get_step(agency, id, name).await? else {
            return Ok(None);
        };
        Ok(Some((task, step)))
    }

    async fn run_step(
        &self,
        agency: &AgencyId,
        id: TaskId,
        name: &str,
        token: &str,
    ) -> Result<Delivery, AppError> {
        let Some((task, mut step)) = self.load(agency, id, name).await? else {
            self.orchestrator
                .fail(token, PERMANENT_ERROR, "the task or step no longer exists")
                .await?;
            return Ok(Delivery::Ack);
        };
        if task.status != TaskStatus::InProgress {
            // Cancelled or already settled: the execution is stopping; never run.
            self.orchestrator
                .fail(token, PERMANENT_ERROR, &format!("task is {}", task.status))
                .await?;
            return Ok(Delivery::Ack);
        }
        if step.is_finished() {
            // A redelivery of a step already done (its outcome is written before its token is
            // answered, so the answer may have failed): answer from the record, do not rerun.
            if step.status == StepStatus::Failed {
                let cause = step.error.as_deref().unwrap_or("the step failed");
                self.orchestrator
                    .fail(token, PERMANENT_ERROR, cause)
                    .await?;
            } else {
                self.orchestrator
                    .succeed(token, &json!({"status": step.status.as_str()}))
                    .await?;
            }
            return Ok(Delivery::Ack);
        }
        if let Some(reason) = self.blocked_by(agency, id, &step).await? {
            let read = step.status;
            step.status = StepStatus::Skipped;
            step.error = Some(reason);
            step.completed_at = Some(Utc::now());
            // Not written: the step was settled meanwhile; the answer below is then moot.
            self.store.replace_step(agency, &step, read).await?;
            self.orchestrator
                .succeed(token, &json!({"status": "skipped"}))
                .await?;
            return Ok(Delivery::Ack);
        }
        let config = match StepConfig::parse(&step.config) {
            Ok(config) => config,
            Err((field, problem)) => {
                self.orchestrator
                    .fail(
                        token,
                        PERMANENT_ERROR,
                        &format!("invalid step config {field}: {problem}"),
                    )
                    .await?;
                return Ok(Delivery::Ack);
            }
        };
        let manual = config.executor.kind == "manual";
        // A manual step waits for a person and holds no worker: it takes no slot.
        let fairness = self.fairness.as_ref().filter(|_| !manual);
        let (tier, holder) = (task.priority, format!("{id}#{name}"));
        if let Some(fairness) = fairness {
            let now = Utc::now();
            let until = now + chrono::Duration::from_std(self.lease).map_err(AppError::internal)?;
            if !fairness.admit(agency, tier, &holder, until, now).await? {
                return Ok(Delivery::Defer(DEFER_DELAY));
            }
        }
        let result = self.start_and_run(agency, &task, step, config, token).await;
        if let Some(fairness) = fairness {
            fairness.release(agency, tier, &holder).await;
        }
        result.map(|()| Delivery::Ack)
    }

    /// Marks the step running (or waiting, for a person) and runs it; its outcome is written,
    /// then its token answered.
    async fn start_and_run(
        &self,
        agency: &AgencyId,
        task: &Task,
        mut step: TaskStep,
        config: StepConfig,
        token: &str,
    ) -> Result<(), AppError> {
        let (id, name) = (task.id, step.name.clone());
        let name = name.as_str();
        let now = Utc::now();
        let read = step.status;
        let manual = config.executor.kind == "manual";
        // A manual step waits for a person, not for a worker: its status says so.
        step.status = if manual {
            StepStatus::Waiting
        } else {
            StepStatus::Running
        };
        step.attempts += 1;
        step.started_at.get_or_insert(now);
        step.error = None;
        if !self.store.replace_step(agency, &step, read).await? {
            // A timeout or a stopping chain settled the step since it was read: never run it.
            return Ok(());
        }

        if manual {
            // Waits for POST /api/tasks/{id}/steps/{step}/complete.
            self.store.set_step_token(agency, id, name, token).await?;
            return Ok(());
        }
        // This run's number: its outcome is recorded only while the step is still this run's.
        let run = step.attempts;
        let outcome = self.execute(task, &step, &config, token).await;
        // The outcome is written before the token is answered: once the chain moves on, the
        // step's record already holds it (Finalize reads it), and a redelivery after a failed
        // answer finds the step completed and answers from the record instead of rerunning.
        match outcome {
            Ok(Outcome::Done(result)) => {
                if let Some(cause) = crate::domain::storable::result_problem(&result) {
                    return self
                        .fail_for_good(agency, &mut step, run, token, &cause)
                        .await;
                }
                step.status = StepStatus::Completed;
                step.result = Some(result);
                step.completed_at = Some(Utc::now());
                if !self.record_run(agency, &step, run, token).await? {
                    return Ok(());
                }
                if !self
                    .orchestrator
                    .succeed(token, &json!({"status": "completed"}))
                    .await?
                {
                    // The token timed out or its execution stopped: the chain counts the step
                    // as failed, so the record says so too (the result stays for reference).
                    let late = step.clone();
                    step.status = StepStatus::Failed;
                    step.error = Some(
                        "finished after the chain stopped waiting for it (timed out or stopped)"
                            .into(),
                    );
                    if !self.store.replace_step(agency, &step, late.status).await? {
                        tracing::info!(step = %name, "a late step was settled meanwhile");
                    }
                }
            }
            Ok(Outcome::AwaitAssignee) => {
                self.store.set_step_token(agency, id, name, token).await?;
            }
            Err(ExecError::Retryable(cause)) => {
                step.error = Some(cause.clone());
                if self.record_run(agency, &step, run, token).await? {
                    self.orchestrator
                        .fail(token, &retryable_error(config.max_attempts), &cause)
                        .await?;
                }
            }
            Err(ExecError::Permanent(cause)) => {
                self.fail_for_good(agency, &mut step, run, token, &cause)
                    .await?;
            }
        }
        Ok(())
    }

    /// A permanent failure is final at once (no retry can change it): the step is recorded
    /// failed, as the chain's Catch would record it, before the token is answered, so a
    /// redelivery after a lost answer repeats the failure from the record instead of running
    /// the step again. The Catch then applies the step's onFailure policy.
    async fn fail_for_good(
        &self,
        agency: &AgencyId,
        step: &mut TaskStep,
        run: u32,
        token: &str,
        cause: &str,
    ) -> Result<(), AppError> {
        step.status = StepStatus::Failed;
        // The cause as the answer carries it, so a repeated answer is the same one.
        step.error = Some(cause.to_owned());
        step.completed_at = Some(Utc::now());
        if self.record_run(agency, step, run, token).await? {
            self.orchestrator
                .fail(token, PERMANENT_ERROR, cause)
                .await?;
        }
        Ok(())
    }

    /// Writes run `run`'s outcome if the step is still running under that run. When it is
    /// not, the step changed while it ran and the token gets the answer its record gives: a
    /// step settled meanwhile (cancelled, timed out) is a failure (an execution whose
    /// StopExecution did not take effect, or an engine that applies a stop only once the
    /// waiting state returns, as moto does, is still waiting on the token; an expired token
    /// just says no), a step another delivery completed is a success, and a step a later run
    /// holds is that run's to answer. False when this run's outcome was dropped.
    async fn record_run(
        &self,
        agency: &AgencyId,
        step: &TaskStep,
        run: u32,
        token: &str,
    ) -> Result<bool, AppError> {
        if self.store.replace_step_run(agency, step, run).await? {
            return Ok(true);
        }
        let current = self
            .store
            .get_step(agency, step.task_id, &step.name)
            .await?;
        match current {
            Some(current) if current.status == StepStatus::Completed => {
                self.orchestrator
                    .succeed(token, &json!({"status": "completed"}))
                    .await?;
            }
            Some(current) if current.is_finished() => {
                self.orchestrator
                    .fail(
                        token,
                        PERMANENT_ERROR,
                        &format!("the step was {} while it ran", current.status.as_str()),
                    )
                    .await?;
            }
            Some(current) => tracing::info!(
                step = %step.name,
                run,
                current_run = current.attempts,
                "a later run holds the step; this run's outcome is dropped"
            ),
            None => {}
        }
        Ok(false)
    }

    /// Runs the executor, heartbeating the token while it works.
    async fn execute(
        &self,
        task: &Task,
        step: &TaskStep,
        config: &StepConfig,
        token: &str,
    ) -> Result<Outcome, ExecError> {
        let executor = self
            .executors
            .resolve(&config.executor)
            .map_err(ExecError::Permanent)?;
        let input = config.input.clone().unwrap_or(Value::Null);
        let job = Job {
            task_id: task.id,
            unit: WorkUnit::Step { name: &step.name },
            config: &config.executor.config,
            input: &input,
            attempt: step.attempts,
        };
        let budget = self
            .lease
            .min(Duration::from_secs(u64::from(config.timeout_seconds)));
        let beat = Duration::from_secs(u64::from(config.heartbeat_seconds).div_ceil(2).max(1));
        let run = tokio::time::timeout(budget, executor.run(&job));
        tokio::pin!(run);
        // The heartbeat clock started when the step's message was sent, so its wait on the
        // queue has used part of the window: a step still running after a second heartbeats
        // at once, then every half window. Quicker steps answer before any heartbeat.
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + FIRST_BEAT.min(beat), beat);
        loop {
            tokio::select! {
                result = &mut run => {
                    return result.unwrap_or_else(|_| Err(ExecError::Retryable(format!("step run exceeded {} s", budget.as_secs()))));
                }
                _ = ticks.tick() => {
                    if let Err(err) = self.orchestrator.heartbeat(token).await {
                        tracing::warn!(error = %err, "step heartbeat failed");
                    }
                }
            }
        }
    }

    /// Why the step must not run: a dependency skipped, or failed with skip_dependents.
    pub(crate) async fn blocked_by(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &TaskStep,
    ) -> Result<Option<String>, AppError> {
        for dep in &step.depends_on {
            let Some(dep_step) = self.store.get_step(agency, id, dep).await? else {
                continue;
            };
            let policy = StepConfig::parse(&dep_step.config)
                .map(|c| c.on_failure)
                .unwrap_or(OnFailure::FailTask);
            match dep_step.status {
                StepStatus::Skipped => {
                    return Ok(Some(format!("skipped: dependency '{dep}' was skipped")))
                }
                StepStatus::Failed if policy != OnFailure::Continue => {
                    return Ok(Some(format!("skipped: dependency '{dep}' failed")));
                }
                _ => {}
            }
        }
        Ok(None)
    }

    async fn record_failure(
        &self,
        agency: &AgencyId,
        id: TaskId,
        name: &str,
        error: &Value,
        token: &str,
    ) -> Result<(), AppError> {
        let Some((mut task, step)) = self.load(agency, id, name).await? else {
            self.orchestrator
                .succeed(token, &json!({"failTask": "yes"}))
                .await?;
            return Ok(());
        };
        let cause = describe_error(error, step.error.as_deref());
        let now = Utc::now();
        settle_step(self.store.as_ref(), agency, step.clone(), |step| {
            step.status = StepStatus::Failed;
            step.error = Some(cause.clone());
            step.completed_at = Some(now);
        })
        .await?;
        let policy = StepConfig::parse(&step.config)
            .map(|c| c.on_failure)
            .unwrap_or(OnFailure::FailTask);
        let stop = policy == OnFailure::FailTask;
        if stop {
            self.stop_chain(agency, &mut task, format!("step '{name}' failed: {cause}"))
                .await?;
        }
        self.orchestrator
            .succeed(token, &json!({"failTask": if stop { "yes" } else { "no" }}))
            .await?;
        Ok(())
    }

    /// Fails an in-progress task with `error` and skips its unfinished steps.
    async fn stop_chain(
        &self,
        agency: &AgencyId,
        task: &mut Task,
        error: String,
    ) -> Result<(), AppError> {
        if task.status != TaskStatus::InProgress {
            return Ok(());
        }
        let read_version = task.version;
        task.move_to(TaskStatus::Failed, Utc::now())?;
        task.error = Some(error);
        match self.store.replace(task, read_version).await {
            Ok(()) | Err(AppError::VersionConflict { .. }) => {}
            Err(err) => return Err(err),
        }
        skip_unfinished(
            self.store.as_ref(),
            agency,
            task.id,
            "skipped: the chain stopped",
        )
        .await
    }

    async fn finalize(&self, agency: &AgencyId, id: TaskId, token: &str) -> Result<(), AppError> {
        self.settle_task(agency, id).await?;
        self.orchestrator
            .succeed(token, &json!({"status": "finalized"}))
            .await?;
        Ok(())
    }

    /// Settles an in-progress task from its steps' outcomes (completed unless a step failed
    /// whose onFailure is not continue).
    async fn settle_task(&self, agency: &AgencyId, id: TaskId) -> Result<(), AppError> {
        if let Some(mut task) = self.store.get(agency, id).await? {
            if task.status == TaskStatus::InProgress {
                let steps = self.store.steps(agency, id).await?;
                let failed: Vec<&str> = steps
                    .iter()
                    .filter(|s| s.status == StepStatus::Failed)
                    .filter(|s| {
                        StepConfig::parse(&s.config).map(|c| c.on_failure)
                            != Ok(OnFailure::Continue)
                    })
                    .map(|s| s.name.as_str())
                    .collect();
                let summary: serde_json::Map<String, Value> = steps
                    .iter()
                    .map(|s| (s.name.clone(), json!(s.status.as_str())))
                    .collect();
                let read_version = task.version;
                let now = Utc::now();
                if failed.is_empty() {
                    task.move_to(TaskStatus::Completed, now)?;
                } else {
                    task.move_to(TaskStatus::Failed, now)?;
                    task.error = Some(format!("steps failed: {}", failed.join(", ")));
                }
                task.result = Some(json!({"steps": summary}));
                match self.store.replace(&task, read_version).await {
                    Ok(()) | Err(AppError::VersionConflict { .. }) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }
}

/// Marks every step that has not finished as skipped.
pub(crate) async fn skip_unfinished(
    store: &dyn TaskStore,
    agency: &AgencyId,
    id: TaskId,
    reason: &str,
) -> Result<(), AppError> {
    let now = Utc::now();
    for step in store.steps(agency, id).await? {
        settle_step(store, agency, step, |step| {
            step.status = StepStatus::Skipped;
            step.error = Some(reason.to_owned());
            step.completed_at = Some(now);
        })
        .await?;
    }
    Ok(())
}

/// Gives an unfinished step its final state with `settle`. A worker may write the same step
/// at the same moment (marking it running), so a lost race re-reads and settles again; a
/// step that finished meanwhile keeps its outcome.
async fn settle_step(
    store: &dyn TaskStore,
    agency: &AgencyId,
    mut step: TaskStep,
    settle: impl Fn(&mut TaskStep),
) -> Result<(), AppError> {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        if step.is_finished() {
            return Ok(());
        }
        let read = step.status;
        settle(&mut step);
        if store.replace_step(agency, &step, read).await? {
            return Ok(());
        }
        match store.get_step(agency, step.task_id, &step.name).await? {
            Some(current) => step = current,
            None => return Ok(()),
        }
    }
    Err(AppError::Unavailable(format!(
        "step '{}' kept changing while it was being settled",
        step.name
    )))
}

/// `{"Error": "...", "Cause": "..."}` from a Catch, as one readable line. Without a cause (the
/// engine does not always carry it), the last error the step's runs recorded stands in, so the
/// real failure is never replaced by the bare retry classification.
pub(crate) fn describe_error(error: &Value, last_run_error: Option<&str>) -> String {
    let name = error
        .get("Error")
        .and_then(Value::as_str)
        .unwrap_or("error");
    let cause = error
        .get("Cause")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .or(last_run_error)
        .unwrap_or("");
    match name {
        "States.Timeout" | "States.HeartbeatTimeout" => match last_run_error {
            Some(last) => format!(
                "{name}: the step did not finish (or heartbeat) in time; its last error: {last}"
            ),
            None => format!("{name}: the step did not finish (or heartbeat) in time"),
        },
        _ if cause.is_empty() => name.to_owned(),
        _ => format!("{name}: {cause}"),
    }
}

#[cfg(test)]
mod error_text {
    use super::describe_error;
    use serde_json::json;

    #[test]
    fn a_catch_error_reads_as_one_line() {
        assert_eq!(
            describe_error(
                &json!({"Error": "States.HeartbeatTimeout", "Cause": "x"}),
                None
            ),
            "States.HeartbeatTimeout: the step did not finish (or heartbeat) in time"
        );
        assert_eq!(
            describe_error(&json!({"Error": "States.Timeout"}), None),
            "States.Timeout: the step did not finish (or heartbeat) in time"
        );
        assert_eq!(
            describe_error(
                &json!({"Error": "Taskflow.Permanent", "Cause": "POST returned 422"}),
                Some("an older error")
            ),
            "Taskflow.Permanent: POST returned 422"
        );
        assert_eq!(describe_error(&json!({"Error": "Boom"}), None), "Boom");
        assert_eq!(describe_error(&json!({}), None), "error");
    }

    /// The retry classification alone hid the real error (issue 19): the last run's error
    /// stands beside it.
    #[test]
    fn a_failure_without_its_cause_keeps_the_last_real_error() {
        let last = Some("POST https://crm.example/accounts: dns error: no such host");
        assert_eq!(
            describe_error(&json!({"Error": "Taskflow.Retryable.3"}), last),
            "Taskflow.Retryable.3: POST https://crm.example/accounts: dns error: no such host"
        );
        assert_eq!(
            describe_error(&json!({"Error": "Taskflow.Retryable.3", "Cause": ""}), last),
            "Taskflow.Retryable.3: POST https://crm.example/accounts: dns error: no such host"
        );
        assert_eq!(
            describe_error(&json!({"Error": "States.Timeout"}), Some("slow upstream")),
            "States.Timeout: the step did not finish (or heartbeat) in time; its last error: slow upstream"
        );
    }
}

#[cfg(test)]
mod segment_tests;
