//! The worker side of batches: one chunk per message, one task token per
//! chunk. Items run with bounded concurrency; counters are flushed to the
//! chunk's record as items finish, guarded by the chunk attempt so a retried
//! chunk never double-counts.
//!
//! `chunk` runs a chunk's items against the invocation's deadline; `finalize` settles the batch.

mod chunk;
mod finalize;

use chunk::ChunkRef;
pub(crate) use finalize::settle_batch_task;

use crate::domain::{AgencyId, BatchMessage, TaskId};
use crate::executors::ExecutorRegistry;
use crate::ports::{BatchStore, ObjectStore, Orchestrator, TaskStore};
use crate::service::fairness::Fairness;
use crate::service::Delivery;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const CHUNK_RETRYABLE: &str = "Taskflow.Retryable";

#[derive(Clone)]
pub struct BatchRunner {
    pub tasks: Arc<dyn TaskStore>,
    pub batches: Arc<dyn BatchStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub orchestrator: Arc<dyn Orchestrator>,
    pub executors: ExecutorRegistry,
    /// The per-agency in-flight cap of each tier, when enforced: each running chunk holds a
    /// slot on its batch's tier.
    pub fairness: Option<Fairness>,
}

/// Where a round's results go: one JSON array per flushed part, under `<chunk>/`.
fn results_prefix(agency: &AgencyId, id: TaskId, round: u32) -> String {
    format!("batches/{agency}/{id}/round-{round:03}/results/")
}

impl BatchRunner {
    /// Runs one batch message with no deadline (hosts that do not cut invocations off).
    pub async fn process(&self, message: BatchMessage) -> Delivery {
        self.process_until(message, None).await
    }

    /// Runs one batch message within an invocation that ends at `deadline`. A chunk that
    /// cannot finish in time stops starting items, records what it did, and asks for
    /// [`Delivery::Requeue`]: its next delivery skips the items already done.
    pub async fn process_until(
        &self,
        message: BatchMessage,
        deadline: Option<Instant>,
    ) -> Delivery {
        let result = match &message {
            BatchMessage::Chunk {
                batch_id,
                agency_id,
                chunk_key,
                chunk_index,
                round,
                task_token,
            } => {
                let chunk = ChunkRef {
                    agency: agency_id,
                    id: *batch_id,
                    key: chunk_key,
                    chunk: *chunk_index,
                    round: *round,
                    token: task_token,
                };
                self.run_chunk(&chunk, deadline).await
            }
            BatchMessage::BatchFinalize {
                batch_id,
                agency_id,
                round,
                task_token,
            } => self
                .finalize(agency_id, *batch_id, *round, task_token)
                .await
                .map(|()| Delivery::Ack),
        };
        match result {
            Ok(delivery) => delivery,
            Err(err) => {
                tracing::warn!(error = %err, "batch message will be retried");
                Delivery::RetryAfter(Duration::from_secs(5))
            }
        }
    }
}
