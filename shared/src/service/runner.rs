//! What a worker does with one delivery from a tier queue. At-least-once
//! delivery becomes exactly-once effects: only the message carrying the task's
//! current dispatch id acts, finished tasks are never run again, and a
//! conditional claim (with a lease) keeps two workers from running one task.

use crate::domain::{DispatchMessage, Priority, Task, TaskStatus};
use crate::error::AppError;
use crate::executors::{ExecError, ExecutorRegistry, Job, Outcome, WorkUnit};
use crate::ports::TaskStore;
use crate::service::fairness::{Fairness, DEFER_DELAY};
use crate::service::pacing::Pacing;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to do with the message afterwards.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Finished with it: delete.
    Ack,
    /// It comes back after this long (backoff, or someone else holds the task): the worker
    /// holds it in flight for a short wait, and sends a delayed copy for a long one.
    RetryAfter(Duration),
    /// Move it to the tier's dead-letter queue with this error, then delete.
    DeadLetter(String),
    /// Send a fresh copy to the same queue, then delete this one: the work goes on in a new
    /// delivery (a batch chunk out of invocation time), with a fresh receive count.
    Requeue,
    /// Over its agency's in-flight cap: a copy comes back after this long (a fresh receive
    /// count, behind the other agencies' waiting work) and this one is deleted. Not an attempt.
    Defer(Duration),
}

/// What happened, for metrics and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    pub tier: Priority,
    pub outcome: &'static str,
    pub attempt: u32,
    pub wait_ms: Option<u64>,
    pub run_ms: u64,
}

/// A store hiccup: try the delivery again soon.
const INFRA_RETRY: Duration = Duration::from_secs(5);
/// Margin kept between the end of a run and the end of its lease.
const LEASE_MARGIN: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct TaskRunner {
    store: Arc<dyn TaskStore>,
    executors: ExecutorRegistry,
    lease: Duration,
    /// The per-agency in-flight cap of each tier, when enforced.
    fairness: Option<Fairness>,
    /// The per-agency dispatch windows, when enforced: a delivery that leaves the queue frees
    /// its place and sends parked work into it.
    pacing: Option<Pacing>,
}

impl TaskRunner {
    pub fn new(store: Arc<dyn TaskStore>, executors: ExecutorRegistry, lease: Duration) -> Self {
        Self {
            store,
            executors,
            lease,
            fairness: None,
            pacing: None,
        }
    }

    /// Frees each delivered run's place in its agency's dispatch window.
    pub fn with_pacing(mut self, pacing: Pacing) -> Self {
        self.pacing = Some(pacing);
        self
    }

    /// Runs a task only while its agency is within its tier's in-flight cap (or alone).
    pub fn with_fairness(mut self, fairness: Fairness) -> Self {
        self.fairness = Some(fairness);
        self
    }

    pub async fn process(&self, body: &str) -> (Delivery, Option<RunReport>) {
        let message: DispatchMessage = match serde_json::from_str(body) {
            Ok(m) => m,
            Err(e) => {
                return (
                    Delivery::DeadLetter(format!("malformed dispatch message: {e}")),
                    None,
                )
            }
        };
        match self.process_message(&message).await {
            Ok(result) => result,
            Err(err) => {
                tracing::warn!(task = %message.task_id, error = %err, "delivery will be retried");
                (Delivery::RetryAfter(INFRA_RETRY), None)
            }
        }
    }

    async fn process_message(
        &self,
        message: &DispatchMessage,
    ) -> Result<(Delivery, Option<RunReport>), AppError> {
        let Some(task) = self.store.get(&message.agency_id, message.task_id).await? else {
            self.left_queue(message).await;
            return Ok((Delivery::Ack, None)); // deleted meanwhile
        };
        let now = Utc::now();
        if task.dispatch_id.as_deref() != Some(message.dispatch_id.as_str()) {
            self.left_queue(message).await;
            return Ok((Delivery::Ack, None)); // superseded or cancelled
        }
        match (task.status, task.lease_expires_at) {
            (TaskStatus::Queued, _) => {}
            (TaskStatus::InProgress, Some(until)) if until <= now => {
                tracing::warn!(task = %task.id, "lease expired: taking over from a lost worker");
            }
            (TaskStatus::InProgress, Some(until)) => {
                let wait = (until - now).to_std().unwrap_or_default() + Duration::from_secs(1);
                return Ok((Delivery::RetryAfter(wait), None));
            }
            // Failed under this very dispatch: the delivery that failed it may have died
            // before its dead-letter copy was sent (a Lambda timeout in between). Dead-letter
            // again rather than lose it; never run it. (A message redriven from the DLQ before
            // `POST /retry` goes back there, until the retry dispatches the task anew.)
            (TaskStatus::Failed, _) => {
                let error = task
                    .error
                    .clone()
                    .unwrap_or_else(|| "the task failed".into());
                self.ended(message).await;
                return Ok((Delivery::DeadLetter(error), None));
            }
            // Finished, waiting for a person, or not queued: nothing to run.
            _ => {
                self.ended(message).await;
                return Ok((Delivery::Ack, None));
            }
        }

        let lease_until =
            now + chrono::Duration::from_std(self.lease).map_err(AppError::internal)?;
        let Some(fairness) = &self.fairness else {
            let (result, ()) = tokio::join!(
                self.claim_and_run(task, message, now, lease_until),
                self.left_queue(message)
            );
            return result;
        };
        let (agency, tier, holder) = (&message.agency_id, message.priority, task.id.to_string());
        if !fairness
            .admit(agency, tier, &holder, lease_until, now)
            .await?
        {
            // Still queued: it keeps its place in the agency's window.
            return Ok((Delivery::Defer(DEFER_DELAY), None));
        }
        // The run starts: its place goes to the agency's next parked run while it runs.
        // Whatever happens to the run, its slot is given back as soon as it ends (a crash
        // leaves it to expire), not after the refill.
        let run = async {
            let result = self.claim_and_run(task, message, now, lease_until).await;
            fairness.release(agency, tier, &holder).await;
            result
        };
        let (result, ()) = tokio::join!(run, self.left_queue(message));
        result
    }

    /// The current dispatch's run is over, yet its message came back: the invocation that ran
    /// it may have been killed between writing the outcome and giving its slot back (or the
    /// message is a duplicate). No run of this dispatch holds a slot now, so give back any the
    /// killed one left, rather than leave it to expire; and free the window place.
    async fn ended(&self, message: &DispatchMessage) {
        let release = async {
            if let Some(fairness) = &self.fairness {
                let holder = message.task_id.to_string();
                fairness
                    .release(&message.agency_id, message.priority, &holder)
                    .await;
            }
        };
        tokio::join!(release, self.left_queue(message));
    }

    /// The delivery will not come back to the queue: its run's place in the window is free.
    async fn left_queue(&self, message: &DispatchMessage) {
        if let Some(pacing) = &self.pacing {
            pacing
                .left_queue(
                    &message.agency_id,
                    message.priority,
                    message.task_id,
                    Utc::now(),
                )
                .await;
        }
    }

    async fn claim_and_run(
        &self,
        mut task: Task,
        message: &DispatchMessage,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<(Delivery, Option<RunReport>), AppError> {
        let read_version = task.version;
        task.attempts += 1;
        if task.queue_wait_ms.is_none() {
            task.queue_wait_ms = task
                .queued_at
                .map(|q| (now - q).num_milliseconds().max(0) as u64);
        }
        task.move_to(TaskStatus::InProgress, now)?;
        task.lease_expires_at = Some(lease_until);
        match self.store.replace(&task, read_version).await {
            Ok(()) => {}
            Err(AppError::VersionConflict { .. }) => {
                return Ok((Delivery::RetryAfter(Duration::from_secs(1)), None))
            }
            Err(AppError::NotFound { .. }) => return Ok((Delivery::Ack, None)),
            Err(err) => return Err(err),
        }

        let started = Instant::now();
        let policy = task.retry_policy();
        let outcome = if task.attempts > policy.max_attempts {
            Err(ExecError::Permanent(format!(
                "gave up after {} attempts",
                policy.max_attempts
            )))
        } else {
            self.run(&task, &message.dispatch_id).await
        };
        let run_ms = started.elapsed().as_millis() as u64;
        let claimed_version = task.version;
        let finished = Utc::now();
        let (delivery, label) = match outcome {
            Ok(Outcome::Done(result)) => {
                if let Some(error) = crate::domain::storable::result_problem(&result) {
                    fail(&mut task, &error, finished)?;
                    (Delivery::DeadLetter(error), "failed")
                } else {
                    task.move_to(TaskStatus::Completed, finished)?;
                    task.result = Some(result);
                    task.error = None;
                    task.lease_expires_at = None;
                    (Delivery::Ack, "completed")
                }
            }
            Ok(Outcome::AwaitAssignee) => {
                task.lease_expires_at = None;
                task.touch(finished);
                (Delivery::Ack, "awaiting_assignee")
            }
            Err(ExecError::Retryable(error)) if task.attempts < policy.max_attempts => {
                let delay = policy.backoff(task.attempts + 1, rand::random::<f64>());
                task.move_to(TaskStatus::Queued, finished)?;
                task.error = Some(error);
                task.lease_expires_at = None;
                task.queued_at =
                    Some(finished + chrono::Duration::from_std(delay).unwrap_or_default());
                (Delivery::RetryAfter(delay), "retrying")
            }
            Err(ExecError::Retryable(error) | ExecError::Permanent(error)) => {
                fail(&mut task, &error, finished)?;
                (Delivery::DeadLetter(error), "failed")
            }
        };
        match self.store.replace(&task, claimed_version).await {
            Ok(()) => {}
            // Cancelled or changed while running: that change wins, the outcome is dropped.
            Err(AppError::VersionConflict { .. } | AppError::NotFound { .. }) => {
                tracing::info!(task = %task.id, "task changed while running; outcome discarded");
                return Ok((Delivery::Ack, None));
            }
            Err(err) => return Err(err),
        }
        let report = RunReport {
            tier: message.priority,
            outcome: label,
            attempt: task.attempts,
            wait_ms: task.queue_wait_ms,
            run_ms,
        };
        Ok((delivery, Some(report)))
    }

    async fn run(&self, task: &Task, dispatch_id: &str) -> Result<Outcome, ExecError> {
        let Some(spec) = &task.executor else {
            return Err(ExecError::Permanent("task has no executor".into()));
        };
        let executor = self.executors.resolve(spec).map_err(ExecError::Permanent)?;
        let input = task.input.clone().unwrap_or(serde_json::Value::Null);
        let job = Job {
            task_id: task.id,
            unit: WorkUnit::Task { dispatch_id },
            config: &spec.config,
            input: &input,
            attempt: task.attempts,
        };
        let budget = run_limit(self.lease);
        match tokio::time::timeout(budget, executor.run(&job)).await {
            Ok(result) => result,
            Err(_) => Err(ExecError::Retryable(format!(
                "run timed out after {} s",
                budget.as_secs()
            ))),
        }
    }
}

/// How long a worker lets one run take under this lease: the lease less a margin for the writes
/// around the run. Creation refuses executor configs that ask for longer.
pub fn run_limit(lease: Duration) -> Duration {
    lease
        .saturating_sub(LEASE_MARGIN)
        .max(Duration::from_secs(1))
}

fn fail(task: &mut Task, error: &str, now: DateTime<Utc>) -> Result<(), AppError> {
    task.move_to(TaskStatus::Failed, now)?;
    task.error = Some(error.to_owned());
    task.lease_expires_at = None;
    Ok(())
}
