//! Task use cases. Every operation is scoped to the caller's agency: the store
//! is always asked with `caller.agency`, so another agency's task is simply not found.

use super::input::{AssignInput, AttachmentInput, CompleteInput, NewTaskInput, TaskPatch};
use crate::domain::limits::MAX_ATTACHMENTS;
use crate::domain::{
    Attachment, AttachmentId, Caller, StepStatus, Task, TaskId, TaskStatus, TaskStep,
};
use crate::error::AppError;
use crate::ports::{
    AttachmentStorage, IdempotencyRecord, InsertOutcome, Page, TaskQuery, TaskStore,
};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// How long a presigned attachment upload URL stays valid.
pub const UPLOAD_URL_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Clone)]
pub struct TaskService {
    store: Arc<dyn TaskStore>,
    attachments: Arc<dyn AttachmentStorage>,
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

impl TaskService {
    pub fn new(store: Arc<dyn TaskStore>, attachments: Arc<dyn AttachmentStorage>) -> Self {
        Self { store, attachments }
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
        let input = NewTaskInput::parse(body)?;
        let request_hash = fingerprint(body);
        if let Some(key) = idempotency_key {
            if let Some(previous) = self.store.idempotency_record(&caller.agency, key).await? {
                return replay(previous, &request_hash);
            }
        }

        let now = Utc::now();
        let task = build_task(caller, &input, now);
        let steps = build_steps(&task, &input);
        let response = serde_json::to_value(&task).map_err(AppError::internal)?;
        let record = idempotency_key.map(|key| IdempotencyRecord {
            key: key.to_owned(),
            request_hash: request_hash.clone(),
            response: response.clone(),
            created_at: now,
        });
        match self.store.insert(&task, &steps, record.as_ref()).await? {
            InsertOutcome::Inserted => Ok(Created {
                task: response,
                replayed: false,
            }),
            // A concurrent request with the same key won the race.
            InsertOutcome::AlreadyDone(previous) => replay(previous, &request_hash),
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
        let steps = self.store.steps(&caller.agency, id).await?;
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

    pub async fn assign(
        &self,
        caller: &Caller,
        id: TaskId,
        input: &AssignInput,
        if_match: Option<u64>,
    ) -> Result<Task, AppError> {
        caller.require_manager("assign tasks")?;
        self.mutate(caller, id, if_match, |task, now| {
            task.move_to(TaskStatus::Assigned, now)?;
            task.assigned_to = Some(input.assignee.clone());
            Ok(())
        })
        .await
    }

    pub async fn start(
        &self,
        caller: &Caller,
        id: TaskId,
        if_match: Option<u64>,
    ) -> Result<Task, AppError> {
        self.mutate(caller, id, if_match, |task, now| {
            require_assignee(caller, task, "start")?;
            task.move_to(TaskStatus::InProgress, now)
        })
        .await
    }

    pub async fn complete(
        &self,
        caller: &Caller,
        id: TaskId,
        outcome: &CompleteInput,
        if_match: Option<u64>,
    ) -> Result<Task, AppError> {
        self.mutate(caller, id, if_match, |task, now| {
            require_assignee(caller, task, "complete")?;
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
            Ok(())
        })
        .await
    }

    pub async fn cancel(
        &self,
        caller: &Caller,
        id: TaskId,
        if_match: Option<u64>,
    ) -> Result<Task, AppError> {
        caller.require_manager("cancel tasks")?;
        self.mutate(caller, id, if_match, |task, now| {
            task.move_to(TaskStatus::Cancelled, now)
        })
        .await
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

    pub async fn hard_delete(&self, caller: &Caller, id: TaskId) -> Result<(), AppError> {
        caller.require_manager("delete tasks")?;
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
        })
        .collect()
}

fn fingerprint(body: &serde_json::Value) -> String {
    let digest = Sha256::digest(body.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
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
