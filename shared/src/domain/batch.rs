//! A batch job (PRD §6 BatchJob): many items processed in parallel under one task.

use super::fields::string_enum;
use super::ids::{AgencyId, TaskId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

string_enum!(
    BatchStatus, "batch status" {
        Pending => "pending",
        Processing => "processing",
        Completed => "completed",
        Failed => "failed",
    }
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchJob {
    pub id: TaskId,
    pub task_id: TaskId,
    pub agency_id: AgencyId,
    pub total_items: u64,
    pub processed_items: u64,
    pub success_items: u64,
    pub failed_items: u64,
    pub status: BatchStatus,
    pub parallelism: u32,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}
