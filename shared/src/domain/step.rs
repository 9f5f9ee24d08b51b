//! A step of a multi-step task (PRD §6 TaskStep).

use super::fields::string_enum;
use super::ids::TaskId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

string_enum!(
    StepStatus, "step status" {
        Pending => "pending",
        Running => "running",
        /// A manual step waiting for its assignee to complete it through the API.
        Waiting => "waiting",
        Completed => "completed",
        Failed => "failed",
        Skipped => "skipped",
    }
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStep {
    /// Unique within its task; the step's name doubles as its id.
    pub id: String,
    pub task_id: TaskId,
    pub name: String,
    pub order: u32,
    #[serde(default)]
    pub depends_on: Vec<String>,
    pub status: StepStatus,
    #[serde(default)]
    pub config: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// Runs started so far.
    #[serde(default)]
    pub attempts: u32,
    /// While a worker runs an automated step: when that run ends at the latest (its time
    /// budget plus the time to record it). A step found `running` before then is another
    /// delivery's live run, never run twice (a manual wave's step is taken over by a retry
    /// under a new token, whose old run can no longer answer); after it (or without it) the
    /// run was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_until: Option<DateTime<Utc>>,
}

impl TaskStep {
    pub fn is_finished(&self) -> bool {
        matches!(
            self.status,
            StepStatus::Completed | StepStatus::Failed | StepStatus::Skipped
        )
    }
}
