//! A step of a wave with a manual step: run under its own task token, the state machine owning
//! its retries and timeout (`RunStep`), its failure recorded and its onFailure policy applied
//! under another (`RecordFailure`).

use super::settle::settle_step;
use super::{
    describe_error, live_run_left, retryable_error, ChainRunner, FIRST_BEAT, PERMANENT_ERROR,
    RUN_MARGIN,
};
use crate::domain::{
    AgencyId, OnFailure, StepConfig, StepStatus, Task, TaskId, TaskStatus, TaskStep,
};
use crate::error::AppError;
use crate::executors::{ExecError, Outcome};
use crate::service::fairness::DEFER_DELAY;
use crate::service::Delivery;
use chrono::Utc;
use serde_json::{json, Value};
use std::time::Duration;

impl ChainRunner {
    pub(super) async fn load(
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

    pub(super) async fn run_step(
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
        if let Some(reason) = self.blocked_by(agency, id, &step, |_| None).await? {
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
        if let Some(left) = live_run_left(&step, Utc::now()) {
            // Another delivery runs the step. A duplicate of this very message (the run's token
            // is this one) never runs it again: this copy comes back once that run has ended at
            // the latest, and answers from its record then. A run under another token is one
            // the state machine gave up on (its heartbeat timed out) and retried under this
            // token: that run's answer can no longer land, so this delivery takes over.
            if self.store.step_token(agency, id, name).await?.as_deref() == Some(token) {
                tracing::info!(task = %id, step = %name, "a duplicate of a running step's message waits for its run");
                return Ok(Delivery::Defer(left));
            }
        }
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
    pub(super) async fn start_and_run(
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
        let (read, lost_run) = (step.status, step.attempts);
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
        if !manual {
            // Until then a delivery that finds the step running counts this run as live.
            let bound = self.step_budget(&config) + RUN_MARGIN;
            step.run_until =
                Some(now + chrono::Duration::from_std(bound).map_err(AppError::internal)?);
        }
        // A run found running is taken over only as it was read: of two deliveries that found
        // it, one takes it.
        let taken = if read == StepStatus::Running && !manual {
            self.store.replace_step_run(agency, &step, lost_run).await?
        } else {
            self.store.replace_step(agency, &step, read).await?
        };
        if !taken {
            // A timeout, a stopping chain or another delivery changed the step since it was
            // read: never run it here.
            return Ok(());
        }
        // The run's token: waited for by a person (POST /api/tasks/{id}/steps/{step}/complete),
        // and how a duplicate of this message knows the run for its own.
        self.store.set_step_token(agency, id, name, token).await?;
        if manual {
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
                step.run_until = None;
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
            // Waits for its assignee, who answers the run's token, recorded before the run.
            Ok(Outcome::AwaitAssignee) => {}
            Err(ExecError::Retryable(cause)) => {
                // Ended: the state machine's retry, under a new token, runs it at once.
                step.error = Some(cause.clone());
                step.run_until = None;
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
    pub(super) async fn fail_for_good(
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
        step.run_until = None;
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
    pub(super) async fn record_run(
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
    pub(super) async fn execute(
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
        let job = super::step_job(task.id, step, config, &input, step.attempts);
        let budget = self.step_budget(config);
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

    pub(super) async fn record_failure(
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
}
