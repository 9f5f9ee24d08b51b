//! The worker side of multi-step chains. The state machine walks the chain's segments: a wave
//! with a manual step runs step by step, each step under its own token with the state machine
//! owning its retries and timeout (`step`), and a run of automated waves is one segment a
//! worker runs whole under one token, owning its steps' retries and timeouts (`segment`).
//! Either way this code runs steps, records every change in DynamoDB as it happens, applies
//! each step's onFailure policy (`settle` stops or settles the chain), and answers the task
//! tokens. Results stay in DynamoDB: only a status word travels back through the state
//! machine, so no payload limit applies.

use crate::domain::{AgencyId, ChainMessage, OnFailure, StepConfig, StepStatus, TaskId, TaskStep};
use crate::error::AppError;
use crate::executors::{ExecutorRegistry, Job, WorkUnit};
use crate::ports::{Orchestrator, TaskStore};
use crate::service::fairness::Fairness;
use crate::service::Delivery;
use std::sync::Arc;
use std::time::Duration;

/// When a running step first heartbeats its token.
const FIRST_BEAT: Duration = Duration::from_secs(1);
/// Time a step run keeps after its time budget to record its outcome: its `runUntil` is its
/// start plus its budget plus this.
const RUN_MARGIN: Duration = Duration::from_secs(10);

/// How long another delivery's run of `step` may still last, when the step is running under
/// one that has not ended (at least a second, so the copy that waits for it is not immediate).
fn live_run_left(step: &TaskStep, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let until = step
        .run_until
        .filter(|_| step.status == StepStatus::Running)?;
    let left = (until - now).to_std().ok()?;
    Some(left.max(Duration::from_secs(1)))
}

/// Error names the chain definition's Retry blocks match (`Taskflow.Retryable.<maxAttempts>`).
pub fn retryable_error(max_attempts: u32) -> String {
    format!("Taskflow.Retryable.{max_attempts}")
}
pub const PERMANENT_ERROR: &str = "Taskflow.Permanent";
/// A segment's answer when the chain stopped (a fail_task step failed, the task was
/// cancelled): the execution fails with it, as its Fail state did.
pub const CHAIN_STOPPED_ERROR: &str = "Taskflow.ChainStopped";

mod error_text;
mod segment;
mod settle;
mod step;

pub(crate) use error_text::describe_error;
pub(crate) use settle::skip_unfinished;

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

    /// How long one run of a step may take: its timeoutSeconds, cut to the run limit.
    pub(crate) fn step_budget(&self, config: &StepConfig) -> Duration {
        self.lease
            .min(Duration::from_secs(u64::from(config.timeout_seconds)))
    }

    /// Why the step must not run: a dependency skipped, or failed with skip_dependents.
    /// `finished` gives a dependency the caller already knows finished; the others are read.
    pub(crate) async fn blocked_by(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &TaskStep,
        finished: impl Fn(&str) -> Option<TaskStep>,
    ) -> Result<Option<String>, AppError> {
        for dep in &step.depends_on {
            let dep_step = match finished(dep) {
                Some(known) => Some(known),
                None => self.store.get_step(agency, id, dep).await?,
            };
            let Some(dep_step) = dep_step else {
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
}

/// The executor's job for one run (`attempt`) of a step; `input` is the config's, or null.
fn step_job<'a>(
    task_id: TaskId,
    step: &'a TaskStep,
    config: &'a StepConfig,
    input: &'a serde_json::Value,
    attempt: u32,
) -> Job<'a> {
    Job {
        task_id,
        unit: WorkUnit::Step { name: &step.name },
        config: &config.executor.config,
        input,
        attempt,
    }
}

#[cfg(test)]
mod segment_tests;
