//! Batch jobs (PRD §6 BatchJob): many items processed in parallel under one
//! task, split into chunks that each travel through the tier queue with one
//! task token. The batch shares its id with its task.

use super::execution::ExecutorSpec;
use super::fields::{string_enum, Priority};
use super::ids::{AgencyId, TaskId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

string_enum!(
    BatchStatus, "batch status" {
        Pending => "pending",
        Processing => "processing",
        Completed => "completed",
        Failed => "failed",
        // Cancelled with its task: chunks stop, and no finalizer settles it afterwards.
        Cancelled => "cancelled",
    }
);

string_enum!(
    /// Where a batch's items came from.
    BatchSource, "batch source" {
        Inline => "inline",
        Upload => "upload",
        S3Trigger => "s3_trigger",
    }
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchJob {
    pub id: TaskId,
    pub task_id: TaskId,
    pub agency_id: AgencyId,
    pub status: BatchStatus,
    pub source: BatchSource,
    /// The uploaded object, for upload and S3-triggered batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_key: Option<String>,
    pub priority: Priority,
    pub executor: ExecutorSpec,
    /// Chunks processed at once: the Distributed Map's MaxConcurrency.
    pub parallelism: u32,
    pub tolerated_failure_percentage: f64,
    pub items_per_batch: u32,
    pub total_items: u64,
    pub chunk_count: u32,
    /// Counts are kept per chunk and summed on read; these hold the settled totals.
    pub processed_items: u64,
    pub success_items: u64,
    pub failed_items: u64,
    /// 0 for the first run; each retry-failed adds a round.
    #[serde(default)]
    pub round: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_arn: Option<String>,
    /// Why the batch failed before or while running (malformed input, too many failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

/// Live counters of one chunk in one round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkCounts {
    pub processed: u64,
    pub success: u64,
    pub failed: u64,
}

/// One line of the manifest the Distributed Map reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub key: String,
    pub index: u32,
    /// Item index of the chunk's first item in the original input.
    pub first: u64,
    pub count: u32,
}

/// An item of a chunk: its place in the original input, and the item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkItem {
    pub index: u64,
    pub item: serde_json::Value,
}

/// A failed item, as `GET /api/batches/{id}/failures` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemFailure {
    pub index: u64,
    pub error: String,
}

impl BatchJob {
    /// Whether `failed` items out of the total exceed the tolerance.
    pub fn exceeds_tolerance(&self, failed: u64) -> bool {
        if self.total_items == 0 {
            return false;
        }
        (failed as f64) * 100.0 / (self.total_items as f64) > self.tolerated_failure_percentage
    }
}

/// Messages the batch state machine sends to the tier queue (strings and numbers only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BatchMessage {
    Chunk {
        #[serde(rename = "batchId")]
        batch_id: TaskId,
        #[serde(rename = "agencyId")]
        agency_id: AgencyId,
        #[serde(rename = "chunkKey")]
        chunk_key: String,
        #[serde(rename = "chunkIndex")]
        chunk_index: u32,
        round: u32,
        #[serde(rename = "taskToken")]
        task_token: String,
    },
    BatchFinalize {
        #[serde(rename = "batchId")]
        batch_id: TaskId,
        #[serde(rename = "agencyId")]
        agency_id: AgencyId,
        round: u32,
        #[serde(rename = "taskToken")]
        task_token: String,
    },
}
