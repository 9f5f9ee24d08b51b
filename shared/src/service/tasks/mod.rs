//! Task use cases. Every operation is scoped to the caller's agency: the store
//! is always asked with `caller.agency`, so another agency's task is simply not found.

use super::input::{AssignInput, AttachmentInput, CompleteInput, NewTaskInput, TaskPatch};
use crate::domain::limits::MAX_ATTACHMENTS;
use crate::domain::{
    Attachment, AttachmentId, BatchStatus, Caller, DispatchMessage, StepConfig, StepStatus, Task,
    TaskId, TaskStatus, TaskStep, TaskType,
};
use crate::error::{AppError, FieldErrors};
use crate::executors::ExecutorRegistry;
use crate::ports::{
    AgentStore, AttachmentStorage, Dispatcher, IdempotencyRecord, InsertOutcome, Orchestrator,
    Page, StartOutcome, TaskQuery, TaskStore,
};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

mod chain_input;
use chain_input::chain_segments;

/// How long a presigned attachment upload URL stays valid.
pub const UPLOAD_URL_TTL: Duration = Duration::from_secs(15 * 60);

/// The outside world the task use cases need.
#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn TaskStore>,
    pub attachments: Arc<dyn AttachmentStorage>,
    pub dispatcher: Arc<dyn Dispatcher>,
    pub agents: Arc<dyn AgentStore>,
    pub orchestrator: Arc<dyn Orchestrator>,
    pub batches: Arc<dyn crate::ports::BatchStore>,
    pub objects: Arc<dyn crate::ports::ObjectStore>,
    /// Runs the batch state machine.
    pub batch_orchestrator: Arc<dyn Orchestrator>,
    /// Where batch preparations are queued.
    pub preparations: Arc<dyn crate::ports::Preparations>,
}

#[derive(Clone)]
pub struct TaskService {
    store: Arc<dyn TaskStore>,
    attachments: Arc<dyn AttachmentStorage>,
    dispatcher: Arc<dyn Dispatcher>,
    agents: Arc<dyn AgentStore>,
    orchestrator: Arc<dyn Orchestrator>,
    batches: Arc<dyn crate::ports::BatchStore>,
    batch_orchestrator: Arc<dyn Orchestrator>,
    executors: ExecutorRegistry,
}

/// The result of a create: either new, or the replay of an earlier identical request.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    pub task: serde_json::Value,
    pub replayed: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewAttachment {
    pub task: Task,
    pub attachment: Attachment,
    pub upload_url: String,
    pub expires_at: DateTime<Utc>,
}

/// Where to read an attachment from: a presigned GET, valid until `expires_at`.
#[derive(Debug, Clone)]
pub struct AttachmentDownload {
    pub attachment: Attachment,
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// How long a download URL works: long enough to start a large download, short enough
/// that a URL copied out of a browser soon stops working.
pub const DOWNLOAD_URL_TTL: Duration = Duration::from_secs(5 * 60);

impl TaskService {
    pub fn new(ports: Ports, executors: ExecutorRegistry) -> Self {
        Self {
            store: ports.store,
            attachments: ports.attachments,
            dispatcher: ports.dispatcher,
            agents: ports.agents,
            orchestrator: ports.orchestrator,
            batches: ports.batches,
            batch_orchestrator: ports.batch_orchestrator,
            executors,
        }
    }

    /// Creates a task. With an idempotency key, a retry of the same request
    /// returns the first response instead of creating a duplicate.
    pub async fn create(
        &self,
        caller: &Caller,
        body: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Result<Created, AppError> {
        caller.require_manager("create tasks")?;
        let input = self.check_new(body)?;
        let request_hash = fingerprint(body);
        if let Some(key) = idempotency_key {
            if let Some(previous) = self.store.idempotency_record(&caller.agency, key).await? {
                return replay(previous, &request_hash);
            }
        }

        let now = Utc::now();
        let mut task = build_task(caller, &input, now);
        let chain = input.task_type == crate::domain::TaskType::MultiStep;
        let message = if input.auto_dispatch && !chain {
            Some(queue(&mut task, now)?)
        } else {
            None
        };
        let steps = build_steps(&task, &input);
        // An auto-dispatched chain is stored already in progress under the execution name it
        // is about to start with, so the reply, its ETag and the idempotency record are final.
        let launch = if chain && input.auto_dispatch {
            Some(self.prepare_chain(&mut task, &steps, now)?)
        } else {
            None
        };
        let response = serde_json::to_value(&task).map_err(AppError::internal)?;
        let record = idempotency_key.map(|key| IdempotencyRecord {
            key: key.to_owned(),
            request_hash: request_hash.clone(),
            response: response.clone(),
            created_at: now,
        });
        match self.store.insert(&task, &steps, record.as_ref()).await? {
            InsertOutcome::Inserted => {
                if let Some(message) = message {
                    self.send(&message).await;
                }
                if let Some(launch) = launch {
                    if let Some(err) = self.start_chain_execution(&task, &launch).await? {
                        self.undo_create(&task, idempotency_key).await;
                        return Err(err);
                    }
                }
                Ok(Created {
                    task: response,
                    replayed: false,
                })
            }
            // A concurrent request with the same key won the race.
            InsertOutcome::AlreadyDone(previous) => replay(previous, &request_hash),
        }
    }

    /// Everything `create` checks about a body before it writes (the input, the executor and
    /// step configs); schedules check their task template with it.
    pub fn check_new(&self, body: &serde_json::Value) -> Result<NewTaskInput, AppError> {
        let input = NewTaskInput::parse(body)?;
        if let Some(spec) = &input.executor {
            let mut errors = FieldErrors::new();
            if let Err(problem) = self.executors.resolve(spec) {
                errors.add("executor", problem);
            } else if let Err((field, problem)) = self.executors.check_run_limit(spec) {
                errors.add(format!("executor.config.{field}"), problem);
            }
            errors.into_result()?;
        }
        self.check_step_configs(&input)?;
        Ok(input)
    }

    /// All or nothing: a chain that could not start takes its task (and its idempotency
    /// key) with it, so a retry of the request starts afresh instead of finding a chain
    /// that never ran.
    async fn undo_create(&self, task: &Task, idempotency_key: Option<&str>) {
        let undone = async {
            self.store.delete(&task.agency_id, task.id).await?;
            if let Some(key) = idempotency_key {
                self.store
                    .forget_idempotency_record(&task.agency_id, key)
                    .await?;
            }
            Ok::<_, AppError>(())
        };
        if let Err(err) = undone.await {
            // Cancelling the task (or deleting it) clears it up: stopping an execution that
            // never started is not an error.
            tracing::error!(task = %task.id, error = %err, "chain did not start and the task could not be removed; it shows in_progress until cancelled");
        }
    }

    pub async fn get(&self, caller: &Caller, id: TaskId) -> Result<Task, AppError> {
        self.store
            .get(&caller.agency, id)
            .await?
            .ok_or(AppError::NotFound { what: "task" })
    }

    pub async fn list(&self, caller: &Caller, query: &TaskQuery) -> Result<Page<Task>, AppError> {
        self.store.list(&caller.agency, query).await
    }

    pub async fn steps(
        &self,
        caller: &Caller,
        id: TaskId,
    ) -> Result<(Task, Vec<TaskStep>), AppError> {
        let task = self.get(caller, id).await?;
        let mut steps = self.store.steps(&caller.agency, id).await?;
        // The store keeps steps by name (their sort key); the chain's order is `order`.
        steps.sort_by(|a, b| (a.order, &a.name).cmp(&(b.order, &b.name)));
        Ok((task, steps))
    }

    pub async fn update(
        &self,
        caller: &Caller,
        id: TaskId,
        patch: &TaskPatch,
        if_match: Option<u64>,
    ) -> Result<Task, AppError> {
        caller.require_manager("update tasks")?;
        self.mutate(caller, id, if_match, |task, now| {
            if task.status.is_final() {
                return Err(AppError::Conflict(format!(
                    "a {} task cannot be edited",
                    task.status
                )));
            }
            if let Some(title) = &patch.title {
                task.title = title.clone();
            }
            if let Some(description) = &patch.description {
                task.description = description.clone();
            }
            if let Some(priority) = patch.priority {
                task.priority = priority;
            }
            if let Some(due_at) = patch.due_at {
                task.due_at = due_at;
            }
            if let Some(metadata) = &patch.metadata {
                task.metadata = metadata.clone();
            }
            task.touch(now);
            Ok(())
        })
        .await
    }

    /// Assigns to a named user, or (`auto`) to the least-loaded online agent
    /// with the task's required capability, reserving its capacity atomically.
    pub async fn assign(
        &self,
        caller: &Caller,
        id: TaskId,
        input: &AssignInput,
        if_match: Option<u64>,
    ) -> Result<Task, AppError> {
        caller.require_manager("assign tasks")?;
        let (assignee, reserved) = match input {
            AssignInput::To(user) => (user.clone(), false),
            AssignInput::Auto => {
                let task = self.get(caller, id).await?;
                task.status.transition(TaskStatus::Assigned)?;
                let agent = self.reserve_agent(&task).await?;
                (agent, true)
            }
        };
        let previous = self.get(caller, id).await?;
        let result = self
            .mutate(caller, id, if_match, |task, now| {
                task.move_to(TaskStatus::Assigned, now)?;
                task.assigned_to = Some(assignee.clone());
                task.agent_reserved = reserved;
                Ok(())
            })
            .await;
        match &result {
            Ok(_) => self.release_agent(&previous).await,
            Err(_) if reserved => {
                let _ = self.agents.release(&caller.agency, &assignee).await;
            }
            Err(_) => {}
        }
        result
    }

    /// Picks agents by load (active/capacity), trying each until one reserve succeeds.
    async fn reserve_agent(&self, task: &Task) -> Result<crate::domain::UserId, AppError> {
        let now = Utc::now();
        let mut candidates: Vec<_> = self
            .agents
            .list(&task.agency_id)
            .await?
            .into_iter()
            .filter(|a| {
                a.status == crate::domain::AgentStatus::Online
                    && !a.heartbeat_expired(now)
                    && a.active_tasks < a.capacity
                    && a.has_capability(task.required_capability.as_deref())
            })
            .collect();
        candidates.sort_by(|a, b| {
            let load =
                |x: &crate::domain::Agent| f64::from(x.active_tasks) / f64::from(x.capacity.max(1));
            load(a).total_cmp(&load(b)).then_with(|| a.id.cmp(&b.id))
        });
        for agent in candidates {
            if self.agents.reserve(&task.agency_id, &agent.id).await? {
                return Ok(agent.id);
            }
        }
        Err(AppError::Conflict(match &task.required_capability {
            Some(c) => format!("no online agent with capability '{c}' has free capacity"),
            None => "no online agent has free capacity".to_owned(),
        }))
    }

    /// Gives back the capacity a finished or reassigned task held.
    async fn release_agent(&self, task: &Task) {
        if let (true, Some(agent)) = (task.agent_reserved, &task.assigned_to) {
            if let Err(err) = self.agents.release(&task.agency_id, agent).await {
                tracing::warn!(task = %task.id, %agent, error = %err, "could not release agent capacity");
            }
        }
    }

    /// Automated tasks (with an executor) are queued on their tier for a worker;
    /// human tasks move to in_progress for their assignee.
    pub async fn start(
        &self,
        caller: &Caller,
        id: TaskId,
        if_match: Option<u64>,
    ) -> Result<Task, AppError> {
        let current = self.get(caller, id).await?;
        if current.task_type == crate::domain::TaskType::MultiStep {
            if !caller.is_manager() && current.assigned_to.as_ref() != Some(&caller.user) {
                return Err(AppError::Forbidden(
                    "only managers and the task's assignee may start it".into(),
                ));
            }
            if let Some(expected) = if_match {
                if expected != current.version {
                    return Err(AppError::VersionConflict {
                        expected,
                        current: current.version,
                    });
                }
            }
            return self.start_chain(current).await;
        }
        let mut message = None;
        let task = self
            .mutate(caller, id, if_match, |task, now| {
                if task.executor.is_some() {
                    if !caller.is_manager() && task.assigned_to.as_ref() != Some(&caller.user) {
                        return Err(AppError::Forbidden(
                            "only managers and the task's assignee may start it".into(),
                        ));
                    }
                    if !matches!(task.status, TaskStatus::Pending | TaskStatus::Assigned) {
                        // Running, queued or failed work is not restarted here (use retry).
                        return Err(AppError::InvalidTransition {
                            current: task.status.as_str().into(),
                            requested: TaskStatus::Queued.as_str().into(),
                        });
                    }
                    message = Some(queue(task, now)?);
                    Ok(())
                } else {
                    require_assignee(caller, task, "start")?;
                    task.move_to(TaskStatus::InProgress, now)
                }
            })
            .await?;
        if let Some(message) = message {
            self.send(&message).await;
        }
        Ok(task)
    }

    /// Queues a failed task again from its first attempt.
    pub async fn retry(
        &self,
        caller: &Caller,
        id: TaskId,
        if_match: Option<u64>,
    ) -> Result<Task, AppError> {
        caller.require_manager("retry tasks")?;
        let mut message = None;
        let task = self
            .mutate(caller, id, if_match, |task, now| {
                if task.executor.is_none() {
                    return Err(AppError::Conflict(
                        "only tasks with an executor can be retried; reassign a human task instead"
                            .into(),
                    ));
                }
                if task.status != TaskStatus::Failed {
                    return Err(AppError::InvalidTransition {
                        current: task.status.as_str().into(),
                        requested: TaskStatus::Queued.as_str().into(),
                    });
                }
                task.attempts = 0;
                task.error = None;
                task.queue_wait_ms = None;
                task.started_at = None;
                task.completed_at = None;
                message = Some(queue(task, now)?);
                Ok(())
            })
            .await?;
        if let Some(message) = message {
            self.send(&message).await;
        }
        Ok(task)
    }

    /// Records the task as in progress under a fresh execution, then starts that execution:
    /// in this order, the chain's first step always finds its task in progress. If the
    /// start fails, the task is put back as it was, so it can be started again.
    async fn start_chain(&self, task: Task) -> Result<Task, AppError> {
        let steps = self.store.steps(&task.agency_id, task.id).await?;
        let mut started = task.clone();
        let launch = self.prepare_chain(&mut started, &steps, Utc::now())?;
        self.store.replace(&started, task.version).await?;
        if let Some(err) = self.start_chain_execution(&started, &launch).await? {
            let mut reverted = task;
            reverted.version = started.version;
            reverted.touch(Utc::now());
            if let Err(revert_err) = self.store.replace(&reverted, started.version).await {
                tracing::error!(task = %reverted.id, error = %revert_err, start_error = %err, "chain did not start and the task could not be put back; it shows in_progress until cancelled");
            }
            return Err(err);
        }
        Ok(started)
    }

    /// Starts a recorded chain's execution. Some(err) only when it surely did not start, so
    /// the caller may undo the record; an error leaves the record as it is, because the
    /// execution may be running and its steps need their task in progress.
    async fn start_chain_execution(
        &self,
        task: &Task,
        launch: &ChainLaunch,
    ) -> Result<Option<AppError>, AppError> {
        match self
            .orchestrator
            .start_resolved(&launch.name, &launch.input)
            .await
        {
            // The name is this launch's own (a fresh dispatch id): an execution of it that has
            // already ended is this very start, which ran to its end and settled the task.
            Ok(StartOutcome::Started | StartOutcome::Closed(_)) => Ok(None),
            Ok(StartOutcome::NotStarted(err)) => Ok(Some(err)),
            Err(err) => Err(AppError::Unavailable(format!(
                "the chain of task {} may not have started ({err}); GET the task to see whether it runs",
                task.id
            ))),
        }
    }

    /// Moves a chain's task to in_progress under a fresh execution, and returns what to
    /// start that execution with: its steps in dependency waves and the tier's queue.
    fn prepare_chain(
        &self,
        task: &mut Task,
        steps: &[TaskStep],
        now: DateTime<Utc>,
    ) -> Result<ChainLaunch, AppError> {
        if !matches!(task.status, TaskStatus::Pending | TaskStatus::Assigned) {
            return Err(AppError::InvalidTransition {
                current: task.status.as_str().into(),
                requested: TaskStatus::InProgress.as_str().into(),
            });
        }
        let waves = crate::domain::chain::waves(
            steps
                .iter()
                .map(|s| (s.name.as_str(), s.depends_on.as_slice())),
        );
        let queue_url = self
            .dispatcher
            .queue_url(task.priority)
            .ok_or_else(|| AppError::internal(format!("no queue for tier {}", task.priority)))?;
        let mut input = serde_json::json!({
            "taskId": task.id,
            "agencyId": task.agency_id,
            "queueUrl": queue_url,
        });
        let launch = chain_segments(steps, &waves);
        input.as_object_mut().expect("an object").extend(launch);
        let dispatch_id = ulid::Ulid::new().to_string();
        let name = format!("{}-{dispatch_id}", task.id);
        task.move_to(TaskStatus::InProgress, now)?;
        task.execution_arn = Some(self.orchestrator.execution_arn(&name));
        task.dispatch_id = Some(dispatch_id);
        Ok(ChainLaunch { name, input })
    }

    /// Completes (or fails) a manual step that is waiting for its assignee.
    pub async fn complete_step(
        &self,
        caller: &Caller,
        id: TaskId,
        name: &str,
        outcome: &CompleteInput,
    ) -> Result<TaskStep, AppError> {
        let task = self.get(caller, id).await?;
        let mut step = self
            .store
            .get_step(&task.agency_id, id, name)
            .await?
            .ok_or(AppError::NotFound { what: "step" })?;
        let config = StepConfig::parse(&step.config).map_err(|(field, problem)| {
            AppError::internal(format!("stored step config {field}: {problem}"))
        })?;
        if config.executor.kind != "manual" {
            return Err(AppError::Conflict(
                "only manual steps are completed through the API".into(),
            ));
        }
        if !caller.is_manager() && config.assignee.as_ref() != Some(&caller.user) {
            return Err(AppError::Forbidden(
                "only the step's assignee (or a manager) may complete it".into(),
            ));
        }
        let agency = &task.agency_id;
        // An earlier completion was recorded but its answer to the chain failed (the token is
        // kept until answered): this retry answers from the record instead of recording again.
        if step.status == StepStatus::Completed && matches!(outcome, CompleteInput::Succeeded(_)) {
            if let Some(token) = self.store.step_token(agency, id, name).await? {
                let accepted = self
                    .orchestrator
                    .succeed(&token, &serde_json::json!({"status": "completed"}))
                    .await?;
                self.store.clear_step_token(agency, id, name).await?;
                if !accepted {
                    return Err(AppError::Conflict(format!(
                        "step '{name}' stopped waiting (timed out or the chain ended)"
                    )));
                }
                return Ok(step);
            }
        }
        // `running` is how a manual step waiting for its person was recorded before `waiting`.
        let read = step.status;
        if !matches!(read, StepStatus::Waiting | StepStatus::Running) {
            return Err(AppError::Conflict(format!(
                "step '{name}' is {read}, not waiting for completion"
            )));
        }
        let token = self
            .store
            .step_token(agency, id, name)
            .await?
            .ok_or_else(|| {
                AppError::Conflict(format!("step '{name}' is not waiting for completion yet"))
            })?;
        let run = step.attempts;
        match outcome {
            CompleteInput::Succeeded(result) => {
                step.status = StepStatus::Completed;
                step.result = result.clone();
                step.completed_at = Some(Utc::now());
            }
            CompleteInput::Failed(error) => step.error = Some(error.clone()),
        }
        // The outcome is recorded before the chain is answered, as a worker does: once the
        // chain moves on, the step's record holds it.
        let recorded = if read == StepStatus::Waiting {
            self.store.replace_step(agency, &step, read).await?
        } else {
            self.store.replace_step_run(agency, &step, run).await?
        };
        if !recorded {
            return Err(AppError::Conflict(format!(
                "step '{name}' changed while it was being completed"
            )));
        }
        let accepted = match outcome {
            CompleteInput::Succeeded(_) => {
                self.orchestrator
                    .succeed(&token, &serde_json::json!({"status": "completed"}))
                    .await?
            }
            CompleteInput::Failed(error) => {
                self.orchestrator
                    .fail(&token, super::chains::PERMANENT_ERROR, error)
                    .await?
            }
        };
        if !accepted {
            if step.status == StepStatus::Completed {
                // The chain already counts the step as failed: so does its record.
                step.status = StepStatus::Failed;
                step.error = Some(
                    "completed after the chain stopped waiting for it (timed out or ended)".into(),
                );
                self.store
                    .replace_step(agency, &step, StepStatus::Completed)
                    .await?;
            }
            return Err(AppError::Conflict(format!(
                "step '{name}' stopped waiting (timed out or the chain ended)"
            )));
        }
        // Answered: the step no longer waits, and a repeated call is a 409.
        self.store.clear_step_token(agency, id, name).await?;
        Ok(step)
    }

    /// Every step config must parse and name a usable executor whose runs fit a worker's.
    fn check_step_configs(&self, input: &NewTaskInput) -> Result<(), AppError> {
        let mut errors = FieldErrors::new();
        for (i, step) in input.steps.iter().enumerate() {
            match StepConfig::parse(&step.config) {
                Ok(config) => {
                    if let Err(problem) = self.executors.resolve(&config.executor) {
                        errors.add(format!("steps[{i}].config.executor"), problem);
                    } else if let Err((field, problem)) =
                        self.executors.check_run_limit(&config.executor)
                    {
                        errors.add(
                            format!("steps[{i}].config.executor.config.{field}"),
                            problem,
                        );
                    }
                }
                Err((field, problem)) => errors.add(format!("steps[{i}].config.{field}"), problem),
            }
        }
        errors.into_result()
    }

    /// Sends a dispatch. A failed send is logged, not surfaced: the task is
    /// already recorded as queued, and the sweeper re-dispatches queued work that
    /// waits past its aging threshold, so a lost message delays the task but never loses it.
    async fn send(&self, message: &DispatchMessage) {
        if let Err(err) = self.dispatcher.dispatch(message, Duration::ZERO).await {
            tracing::error!(task = %message.task_id, error = %err, "dispatch failed; the sweeper will re-dispatch");
        }
    }

    pub async fn complete(
        &self,
        caller: &Caller,
        id: TaskId,
        outcome: &CompleteInput,
        if_match: Option<u64>,
    ) -> Result<Task, AppError> {
        let task = self
            .mutate(caller, id, if_match, |task, now| {
                require_assignee(caller, task, "complete")?;
            if task.task_type == crate::domain::TaskType::MultiStep {
                return Err(AppError::Conflict(
                    "a multi_step task completes when its chain does; complete its manual steps instead".into(),
                ));
            }
                match outcome {
                    CompleteInput::Succeeded(result) => {
                        task.move_to(TaskStatus::Completed, now)?;
                        task.result = result.clone();
                        task.error = None;
                    }
                    CompleteInput::Failed(error) => {
                        task.move_to(TaskStatus::Failed, now)?;
                        task.error = Some(error.clone());
                    }
                }
                task.lease_expires_at = None;
                Ok(())
            })
            .await?;
        self.release_agent(&task).await;
        Ok(task)
    }

    pub async fn cancel(
        &self,
        caller: &Caller,
        id: TaskId,
        if_match: Option<u64>,
    ) -> Result<Task, AppError> {
        caller.require_manager("cancel tasks")?;
        let current = self.get(caller, id).await?;
        if current.task_type == TaskType::Batch && current.status == TaskStatus::Cancelled {
            // Cancelling again finishes a cancel whose batch part failed (the store or Step
            // Functions was out): the task was cancelled first.
            self.cancel_batch(&current).await?;
            return Ok(current);
        }
        let task = self
            .mutate(caller, id, if_match, |task, now| {
                // A queued message for this task is now stale and will be dropped.
                task.dispatch_id = None;
                task.lease_expires_at = None;
                task.move_to(TaskStatus::Cancelled, now)
            })
            .await?;
        self.release_agent(&task).await;
        if task.task_type == TaskType::Batch {
            self.cancel_batch(&task).await?;
        }
        if let Some(arn) = &task.execution_arn {
            self.orchestrator.stop(arn, "task cancelled").await?;
            super::chains::skip_unfinished(
                self.store.as_ref(),
                &task.agency_id,
                task.id,
                "skipped: the task was cancelled",
            )
            .await?;
        }
        Ok(task)
    }

    /// Marks a cancelled task's batch cancelled, then stops its execution. The mark is what
    /// counts: chunks refuse to start, running ones stop at their next flush, and the
    /// finalizer leaves a cancelled batch alone, so the outcome holds even where
    /// StopExecution does not take effect (moto keeps executions waiting on a token running).
    /// A batch that finished first keeps its outcome.
    async fn cancel_batch(&self, task: &Task) -> Result<(), AppError> {
        // A few tries: a round starting or settling at the same moment wins the first.
        for _ in 0..3 {
            let Some(mut batch) = self.batches.get(&task.agency_id, task.id).await? else {
                return Ok(());
            };
            let (status, round) = (batch.status, batch.round);
            if !matches!(status, BatchStatus::Pending | BatchStatus::Processing) {
                return Ok(());
            }
            batch.status = BatchStatus::Cancelled;
            batch.error = Some("the batch was cancelled".into());
            batch.completed_at = Some(Utc::now());
            if !self.batches.put_if(&batch, status, round).await? {
                continue;
            }
            if status == BatchStatus::Processing {
                if let Some(arn) = &batch.execution_arn {
                    self.batch_orchestrator.stop(arn, "batch cancelled").await?;
                }
            }
            return Ok(());
        }
        Err(AppError::Unavailable(
            "the batch kept changing while it was cancelled; cancel it again".into(),
        ))
    }

    /// DELETE without `hard`: the task stays readable but leaves default lists.
    pub async fn archive(
        &self,
        caller: &Caller,
        id: TaskId,
        if_match: Option<u64>,
    ) -> Result<Task, AppError> {
        caller.require_manager("delete tasks")?;
        self.mutate(caller, id, if_match, |task, now| {
            task.move_to(TaskStatus::Archived, now)
        })
        .await
    }

    /// Deletes the task for good; with `expected` (If-Match), only while it is at that version.
    pub async fn hard_delete(
        &self,
        caller: &Caller,
        id: TaskId,
        expected: Option<u64>,
    ) -> Result<(), AppError> {
        caller.require_manager("delete tasks")?;
        if let Some(expected) = expected {
            // Checked on a read: a change landing between the read and the delete is deleted
            // with the task, which is what deleting it meant.
            let task = self
                .store
                .get(&caller.agency, id)
                .await?
                .ok_or(AppError::NotFound { what: "task" })?;
            if task.version != expected {
                return Err(AppError::VersionConflict {
                    expected,
                    current: task.version,
                });
            }
        }
        if self.store.delete(&caller.agency, id).await? {
            Ok(())
        } else {
            Err(AppError::NotFound { what: "task" })
        }
    }

    /// Registers an attachment on the task and returns a URL to upload it to.
    pub async fn add_attachment(
        &self,
        caller: &Caller,
        id: TaskId,
        input: &AttachmentInput,
    ) -> Result<NewAttachment, AppError> {
        let attachment_id = AttachmentId::generate();
        let key = format!(
            "attachments/{}/{}/{}/{}",
            caller.agency, id, attachment_id, input.file_name
        );
        let now = Utc::now();
        let attachment = Attachment {
            id: attachment_id,
            file_name: input.file_name.clone(),
            content_type: input.content_type.clone(),
            key: key.clone(),
            uploaded_by: caller.user.clone(),
            created_at: now,
        };
        let task = self
            .mutate(caller, id, None, |task, now| {
                let is_assignee = task.assigned_to.as_ref() == Some(&caller.user);
                if !caller.is_manager() && !is_assignee {
                    return Err(AppError::Forbidden(
                        "only managers and the task's assignee may add attachments".into(),
                    ));
                }
                if task.status == TaskStatus::Archived {
                    return Err(AppError::Conflict(
                        "an archived task cannot take attachments".into(),
                    ));
                }
                if task.attachments.len() >= MAX_ATTACHMENTS {
                    return Err(AppError::Conflict(format!(
                        "a task has at most {MAX_ATTACHMENTS} attachments"
                    )));
                }
                task.attachments.push(attachment.clone());
                task.touch(now);
                Ok(())
            })
            .await?;
        let upload_url = self
            .attachments
            .presign_upload(&key, &input.content_type, UPLOAD_URL_TTL)
            .await?;
        let expires_at =
            now + chrono::Duration::from_std(UPLOAD_URL_TTL).map_err(AppError::internal)?;
        Ok(NewAttachment {
            task,
            attachment,
            upload_url,
            expires_at,
        })
    }

    /// A download URL for one of the task's attachments. Whoever may read the task may read
    /// its files; an id the task does not list is a 404, like another agency's task.
    pub async fn attachment_download(
        &self,
        caller: &Caller,
        id: TaskId,
        attachment_id: &str,
    ) -> Result<AttachmentDownload, AppError> {
        let task = self.get(caller, id).await?;
        let attachment = task
            .attachments
            .into_iter()
            .find(|a| a.id.to_string() == attachment_id)
            .ok_or(AppError::NotFound { what: "attachment" })?;
        let url = self
            .attachments
            .presign_download(&attachment.key, &attachment.file_name, DOWNLOAD_URL_TTL)
            .await?;
        let expires_at = Utc::now()
            + chrono::Duration::from_std(DOWNLOAD_URL_TTL).map_err(AppError::internal)?;
        Ok(AttachmentDownload {
            attachment,
            url,
            expires_at,
        })
    }

    /// Read, check the expected version, change, and write back only if nobody
    /// else wrote in between. A lost update becomes a 409, never a silent overwrite.
    async fn mutate(
        &self,
        caller: &Caller,
        id: TaskId,
        if_match: Option<u64>,
        change: impl FnOnce(&mut Task, DateTime<Utc>) -> Result<(), AppError>,
    ) -> Result<Task, AppError> {
        let mut task = self.get(caller, id).await?;
        let read_version = task.version;
        if let Some(expected) = if_match {
            if expected != read_version {
                return Err(AppError::VersionConflict {
                    expected,
                    current: read_version,
                });
            }
        }
        change(&mut task, Utc::now())?;
        self.store.replace(&task, read_version).await?;
        Ok(task)
    }
}

/// Puts the task in the queued state with a fresh dispatch id; the returned
/// message is the only one a worker will act on.
pub(crate) fn queue(task: &mut Task, now: DateTime<Utc>) -> Result<DispatchMessage, AppError> {
    task.move_to(TaskStatus::Queued, now)?;
    let dispatch_id = ulid::Ulid::new().to_string();
    task.dispatch_id = Some(dispatch_id.clone());
    task.queued_at = Some(now);
    task.lease_expires_at = None;
    Ok(DispatchMessage {
        task_id: task.id,
        agency_id: task.agency_id.clone(),
        dispatch_id,
        priority: task.priority,
        enqueued_at: now,
    })
}

fn require_assignee(caller: &Caller, task: &Task, action: &str) -> Result<(), AppError> {
    if task.assigned_to.as_ref() == Some(&caller.user) {
        Ok(())
    } else {
        Err(AppError::Forbidden(format!(
            "only the task's assignee may {action} it"
        )))
    }
}

fn build_task(caller: &Caller, input: &NewTaskInput, now: DateTime<Utc>) -> Task {
    Task {
        id: TaskId::generate(),
        agency_id: caller.agency.clone(),
        created_by: caller.user.clone(),
        status: if input.assigned_to.is_some() {
            TaskStatus::Assigned
        } else {
            TaskStatus::Pending
        },
        assigned_to: input.assigned_to.clone(),
        title: input.title.clone(),
        description: input.description.clone(),
        task_type: input.task_type,
        priority: input.priority,
        due_at: input.due_at,
        started_at: None,
        completed_at: None,
        result: None,
        error: None,
        metadata: input.metadata.clone(),
        attachments: Vec::new(),
        executor: input.executor.clone(),
        input: input.input.clone(),
        retry: input.retry,
        auto_dispatch: input.auto_dispatch,
        required_capability: input.required_capability.clone(),
        attempts: 0,
        queued_at: None,
        queue_wait_ms: None,
        dispatch_id: None,
        lease_expires_at: None,
        agent_reserved: false,
        execution_arn: None,
        promoted_from: None,
        sla_breached_at: None,
        archived_from: None,
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

fn build_steps(task: &Task, input: &NewTaskInput) -> Vec<TaskStep> {
    input
        .steps
        .iter()
        .map(|s| TaskStep {
            id: s.name.clone(),
            task_id: task.id,
            name: s.name.clone(),
            order: s.order,
            depends_on: s.depends_on.clone(),
            status: StepStatus::Pending,
            config: s.config.clone(),
            result: None,
            error: None,
            started_at: None,
            completed_at: None,
            attempts: 0,
            run_until: None,
        })
        .collect()
}

fn fingerprint(body: &serde_json::Value) -> String {
    let digest = Sha256::digest(body.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A chain execution about to start: its name and input.
struct ChainLaunch {
    name: String,
    input: serde_json::Value,
}

fn replay(previous: IdempotencyRecord, request_hash: &str) -> Result<Created, AppError> {
    if previous.request_hash != request_hash {
        return Err(AppError::IdempotencyKeyReused);
    }
    Ok(Created {
        task: previous.response,
        replayed: true,
    })
}

#[cfg(test)]
mod tests;
