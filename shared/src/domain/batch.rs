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
    /// The batch's title, as its task's (records from before titles read as empty).
    #[serde(default)]
    pub title: String,
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
    /// While the batch is `pending`: how far the preparation of its round has got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preparation: Option<Preparation>,
}

/// How far a round's preparation has got. Chunks are written in parallel, so this is the
/// prefix known to be written: a preparation that is cut off or times out resumes after it,
/// and never writes those chunks again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preparation {
    /// Chunks 0 to `chunks_written - 1` of the round are in S3.
    pub chunks_written: u32,
    /// Items read from the input so far (the whole input once it is read).
    pub items_read: u64,
    /// Deliveries that found this preparation already under way: continuations after a
    /// deadline, redeliveries after a crash, and the sweeper's repairs.
    pub passes: u32,
    /// Times the sweeper found the preparation stalled and asked for it again.
    #[serde(default)]
    pub repairs: u32,
    /// When the preparation last made progress (the sweeper's measure of a stuck one).
    pub updated_at: DateTime<Utc>,
}

/// Asks the batch preparer to prepare (or go on preparing) a pending batch's round: the
/// body of a message on the preparation queue, `{"prepareBatch": {…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepareBatch {
    pub agency_id: AgencyId,
    pub batch_id: TaskId,
}

/// Live counters of one chunk in one round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkCounts {
    pub processed: u64,
    pub success: u64,
    pub failed: u64,
}

/// Which items of a chunk have been counted, by their position in the chunk file: one bit
/// each, so at most `itemsPerBatch` (10,000) bits, 1,250 bytes on the chunk's record. (A set of
/// indexes would grow to ~60 KB, and DynamoDB bills every rewrite by the item's size.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkDone(Vec<u8>);

impl ChunkDone {
    pub fn from_bytes(bytes: Vec<u8>) -> ChunkDone {
        ChunkDone(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn contains(&self, position: usize) -> bool {
        self.0
            .get(position / 8)
            .is_some_and(|byte| byte & (1 << (position % 8)) != 0)
    }

    pub fn insert(&mut self, position: usize) {
        if self.0.len() <= position / 8 {
            self.0.resize(position / 8 + 1, 0);
        }
        self.0[position / 8] |= 1 << (position % 8);
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|byte| byte.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    /// When the batch last showed progress while pending: its preparation's last saved
    /// progress, else its creation. The sweeper repairs pending batches by this time.
    pub fn pending_since(&self) -> DateTime<Utc> {
        self.preparation
            .map_or(self.created_at, |progress| progress.updated_at)
    }

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

#[cfg(test)]
mod chunk_done_tests {
    use super::ChunkDone;

    #[test]
    fn positions_round_trip_through_bytes() {
        let mut done = ChunkDone::default();
        for position in [0, 7, 8, 9_999] {
            done.insert(position);
        }
        let done = ChunkDone::from_bytes(done.as_bytes().to_vec());
        assert!(done.contains(0) && done.contains(7) && done.contains(8) && done.contains(9_999));
        assert!(!done.contains(1) && !done.contains(9_998) && !done.contains(20_000));
        assert_eq!(done.len(), 4);
        assert_eq!(
            done.as_bytes().len(),
            1_250,
            "10,000 items fit in 1,250 bytes"
        );
    }
}
