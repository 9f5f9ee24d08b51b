//! The task record (PRD §6) as stored and returned by the API.

use super::execution::{ExecutorSpec, RetryPolicy};
use super::fields::{Description, Metadata, Priority, TaskType, Title};
use super::ids::{AgencyId, AttachmentId, TaskId, UserId};
use super::lifecycle::TaskStatus;
use crate::error::AppError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub id: TaskId,
    pub agency_id: AgencyId,
    pub created_by: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<UserId>,
    pub title: Title,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Description>,
    #[serde(rename = "type")]
    pub task_type: TaskType,
    pub priority: Priority,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// How a worker runs it; absent for purely human tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorSpec>,
    /// What the executor is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// Falls back to the tier default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Queue as soon as it is created.
    #[serde(default)]
    pub auto_dispatch: bool,
    /// Auto-assignment picks only agents with this capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_capability: Option<String>,
    /// Runs started so far.
    #[serde(default)]
    pub attempts: u32,
    /// When the current wait on a tier queue began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<DateTime<Utc>>,
    /// How long the first run waited on its queue before a worker picked it up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_wait_ms: Option<u64>,
    /// Identifies the live queue message; stale deliveries carry another id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_id: Option<String>,
    /// A worker holds the task until then; after it, another worker may take over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The assignee is a registered agent holding one unit of its capacity for this task.
    #[serde(default)]
    pub agent_reserved: bool,
    /// The Step Functions execution running this chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_arn: Option<String>,
    /// Tier the task had before the sweeper promoted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<Priority>,
    /// Set once when the task waited longer than its tier's SLA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla_breached_at: Option<DateTime<Utc>>,
    /// Status before archiving, so an archived task still says how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_from: Option<TaskStatus>,
    /// Bumped on every write; surfaced as the ETag.
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub id: AttachmentId,
    pub file_name: String,
    pub content_type: String,
    /// Object key in the attachments bucket.
    pub key: String,
    pub uploaded_by: UserId,
    pub created_at: DateTime<Utc>,
}

impl Task {
    /// Whether the task holds one of its agency's open-task slots (the `openTasks` quota):
    /// until it reaches a final state. Batch tasks are not counted yet: the batch store
    /// creates and settles them, and its transactions do not carry the counter.
    pub fn counts_as_open(&self) -> bool {
        self.task_type != TaskType::Batch && !self.status.is_final()
    }

    /// Moves the task to `next`, stamping the lifecycle timestamps.
    pub fn move_to(&mut self, next: TaskStatus, now: DateTime<Utc>) -> Result<(), AppError> {
        let current = self.status;
        current.transition(next)?;
        match next {
            TaskStatus::InProgress if self.started_at.is_none() => self.started_at = Some(now),
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled => {
                self.completed_at = Some(now)
            }
            TaskStatus::Archived => self.archived_from = Some(current),
            TaskStatus::Pending => {
                // Back in the queue (retry): the previous run's outcome no longer applies.
                self.started_at = None;
                self.completed_at = None;
            }
            _ => {}
        }
        self.status = next;
        self.touch(now);
        Ok(())
    }

    /// Records a write: new version, new updatedAt.
    pub fn touch(&mut self, now: DateTime<Utc>) {
        self.version += 1;
        self.updated_at = now;
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
            .unwrap_or_else(|| RetryPolicy::tier_default(self.priority))
    }

    /// The HTTP entity tag for this version.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }

    /// When the sweeper's deadline escalation next has something to do for this task: when it
    /// falls due within [`DUE_SOON`] (to `high`), for a `high` task when it is overdue (to
    /// `critical`). None once nothing is left to escalate (critical, or finished), so an
    /// escalated task leaves the deadline index instead of filling the sweeper's pages.
    pub fn escalation_due_at(&self) -> Option<DateTime<Utc>> {
        let due = self.due_at?;
        if self.status.is_final() {
            return None;
        }
        match self.priority {
            Priority::Critical => None,
            Priority::High => Some(due),
            _ => Some(due - chrono::Duration::from_std(DUE_SOON).unwrap_or_default()),
        }
    }

    /// Waiting work with nothing left for the sweeper but lost-message recovery: its breach is
    /// recorded and its tier can rise no further. The scheduling index keeps it apart, so it
    /// never fills the pages the aging and breach scan reads.
    pub fn waits_breached_at_top(&self) -> bool {
        self.sla_breached_at.is_some() && self.priority.promoted() == self.priority
    }
}

/// Open tasks due within this window are escalated to at least `high`.
pub const DUE_SOON: std::time::Duration = std::time::Duration::from_secs(15 * 60);
