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

mod lanes;
mod turn;

use super::{describe_error, ChainRunner, CHAIN_STOPPED_ERROR, PERMANENT_ERROR};
use crate::domain::segment::segment_heartbeat_seconds;
use crate::domain::{AgencyId, StepConfig, StepStatus, Task, TaskId, TaskStatus, TaskStep};
use crate::error::AppError;
use crate::service::fairness::DEFER_DELAY;
use crate::service::{task_token, Delivery};
use chrono::Utc;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The steps of a wave run at once, at most (the old definition's Steps MaxConcurrency).
const WAVE_CONCURRENCY: usize = 10;

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
    /// The fair-share slots its steps run in.
    lanes: lanes::Lanes,
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
            lanes: lanes::Lanes::default(),
        };
        let run_by = (agency, task.priority, id);
        let walk = self.walk(agency, task, waves, &pass);
        tokio::pin!(walk);
        let period = (window / 2).max(Duration::from_secs(1));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + FIRST_BEAT, period);
        let walked = loop {
            tokio::select! {
                walked = &mut walk => break walked,
                _ = ticks.tick() => match self.orchestrator.heartbeat(token).await {
                    // The walk still checks the task between steps; a closed token only means
                    // nobody waits for the answer.
                    Ok(false) => tracing::info!(task = %id, "the segment's token closed while it ran"),
                    Ok(true) => {}
                    Err(err) => tracing::warn!(error = %err, "segment heartbeat failed"),
                },
            }
        };
        self.free_lanes(run_by, 0, &pass.lanes).await;
        let task = match walked? {
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
            // A narrower wave than the last gives back the slots it cannot use.
            let width = wave.len().min(WAVE_CONCURRENCY);
            self.free_lanes((agency, task.priority, task.id), width, &pass.lanes)
                .await;
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
