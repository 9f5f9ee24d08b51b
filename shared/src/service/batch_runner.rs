//! The worker side of batches: one chunk per message, one task token per
//! chunk. Items run with bounded concurrency; counters are flushed to the
//! chunk's record as items finish, guarded by the chunk attempt so a retried
//! chunk never double-counts.

use crate::domain::{
    AgencyId, BatchMessage, BatchStatus, ChunkCounts, ChunkItem, ItemFailure, TaskId, TaskStatus,
};
use crate::error::AppError;
use crate::executors::{ExecutorRegistry, Job, Outcome, WorkUnit};
use crate::ports::{BatchStore, ObjectStore, Orchestrator, TaskStore};
use crate::service::Delivery;
use chrono::Utc;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Items of one chunk running at once on a worker.
const ITEM_CONCURRENCY: usize = 16;
/// Counters are written at least this often while a chunk runs.
const FLUSH_EVERY_ITEMS: u64 = 50;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
pub const CHUNK_RETRYABLE: &str = "Taskflow.Retryable";
const MAX_CHUNK_BYTES: usize = 256 * 1024 * 1024;

#[derive(Clone)]
pub struct BatchRunner {
    pub tasks: Arc<dyn TaskStore>,
    pub batches: Arc<dyn BatchStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub orchestrator: Arc<dyn Orchestrator>,
    pub executors: ExecutorRegistry,
}

impl BatchRunner {
    pub async fn process(&self, message: BatchMessage) -> Delivery {
        let result = match &message {
            BatchMessage::Chunk {
                batch_id,
                agency_id,
                chunk_key,
                chunk_index,
                round,
                task_token,
            } => {
                self.run_chunk(
                    agency_id,
                    *batch_id,
                    chunk_key,
                    *chunk_index,
                    *round,
                    task_token,
                )
                .await
            }
            BatchMessage::BatchFinalize {
                batch_id,
                agency_id,
                round,
                task_token,
            } => {
                self.finalize(agency_id, *batch_id, *round, task_token)
                    .await
            }
        };
        match result {
            Ok(()) => Delivery::Ack,
            Err(err) => {
                tracing::warn!(error = %err, "batch message will be retried");
                Delivery::RetryAfter(Duration::from_secs(5))
            }
        }
    }

    async fn run_chunk(
        &self,
        agency: &AgencyId,
        id: TaskId,
        key: &str,
        chunk: u32,
        round: u32,
        token: &str,
    ) -> Result<(), AppError> {
        let Some(batch) = self.batches.get(agency, id).await? else {
            self.orchestrator
                .fail(token, "Taskflow.Permanent", "the batch no longer exists")
                .await?;
            return Ok(());
        };
        if batch.status != BatchStatus::Processing || batch.round != round {
            self.orchestrator
                .fail(
                    token,
                    "Taskflow.Permanent",
                    &format!("batch is {} (round {})", batch.status, batch.round),
                )
                .await?;
            return Ok(());
        }
        let items: Vec<ChunkItem> = match self.objects.get(key, MAX_CHUNK_BYTES).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| AppError::internal(format!("chunk {key}: {e}")))?,
            Err(err) => {
                self.orchestrator
                    .fail(token, CHUNK_RETRYABLE, &format!("reading {key}: {err}"))
                    .await?;
                return Ok(());
            }
        };
        let executor = match self.executors.resolve(&batch.executor) {
            Ok(executor) => executor,
            Err(problem) => {
                self.orchestrator
                    .fail(token, "Taskflow.Permanent", &problem)
                    .await?;
                return Ok(());
            }
        };
        let attempt = ulid::Ulid::new().to_string();
        let rerun = self
            .batches
            .start_chunk(agency, id, round, chunk, &attempt)
            .await?;
        // Items that succeed may hold a failure record from an earlier round, or from an
        // earlier attempt of this chunk; only then is it worth a delete per success.
        let clears_failures = round > 0 || rerun;

        let config = Arc::new(batch.executor.config.clone());
        let mut runs = stream::iter(items)
            .map(move |item: ChunkItem| {
                let config = config.clone();
                async move {
                    let job = Job {
                        task_id: id,
                        unit: WorkUnit::Item { index: item.index },
                        config: &config,
                        input: &item.item,
                        attempt: round + 1,
                    };
                    (item.index, executor.run(&job).await)
                }
            })
            .buffer_unordered(ITEM_CONCURRENCY);
        let mut pending = ChunkCounts::default();
        let mut failures = Vec::new();
        let mut succeeded = Vec::new();
        let mut results = Vec::new();
        let mut last_flush = Instant::now();
        let mut last_beat = Instant::now();
        while let Some((index, outcome)) = runs.next().await {
            pending.processed += 1;
            match outcome {
                Ok(Outcome::Done(result)) => {
                    pending.success += 1;
                    if clears_failures {
                        succeeded.push(index);
                    }
                    results.push(json!({"index": index, "status": "completed", "result": result}));
                }
                Ok(Outcome::AwaitAssignee) => {
                    pending.failed += 1;
                    let error = "the manual executor cannot run batch items".to_owned();
                    results.push(json!({"index": index, "status": "failed", "error": error}));
                    failures.push(ItemFailure { index, error });
                }
                Err(err) => {
                    pending.failed += 1;
                    let error = err.to_string();
                    results.push(json!({"index": index, "status": "failed", "error": error}));
                    failures.push(ItemFailure { index, error });
                }
            }
            if pending.processed >= FLUSH_EVERY_ITEMS || last_flush.elapsed() >= FLUSH_EVERY {
                if !self
                    .flush(
                        agency,
                        id,
                        round,
                        chunk,
                        &attempt,
                        &mut pending,
                        &mut failures,
                        &mut succeeded,
                    )
                    .await?
                {
                    return Ok(()); // a newer attempt owns this chunk now
                }
                last_flush = Instant::now();
            }
            if last_beat.elapsed() >= HEARTBEAT_EVERY {
                self.orchestrator.heartbeat(token).await?;
                last_beat = Instant::now();
            }
        }
        drop(runs);
        if !self
            .flush(
                agency,
                id,
                round,
                chunk,
                &attempt,
                &mut pending,
                &mut failures,
                &mut succeeded,
            )
            .await?
        {
            return Ok(());
        }
        results.sort_by_key(|r| r["index"].as_u64());
        let results_key = format!("batches/{agency}/{id}/round-{round:03}/results/{chunk:05}.json");
        self.objects
            .put(
                &results_key,
                serde_json::to_vec(&results).map_err(AppError::internal)?,
                "application/json",
            )
            .await?;
        self.orchestrator
            .succeed(token, &json!({"status": "done"}))
            .await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn flush(
        &self,
        agency: &AgencyId,
        id: TaskId,
        round: u32,
        chunk: u32,
        attempt: &str,
        pending: &mut ChunkCounts,
        failures: &mut Vec<ItemFailure>,
        succeeded: &mut Vec<u64>,
    ) -> Result<bool, AppError> {
        if !failures.is_empty() {
            self.batches.record_failures(agency, id, failures).await?;
            failures.clear();
        }
        if !succeeded.is_empty() {
            // A retried item that now succeeds is no longer a failure.
            self.batches.clear_failures(agency, id, succeeded).await?;
        }
        succeeded.clear();
        if pending.processed == 0 {
            return Ok(true);
        }
        let kept = self
            .batches
            .add_counts(agency, id, round, chunk, attempt, *pending)
            .await?;
        *pending = ChunkCounts::default();
        Ok(kept)
    }

    /// Settles the batch from its counters against the tolerance (the engine's
    /// own threshold is not relied on), and writes the results summary.
    async fn finalize(
        &self,
        agency: &AgencyId,
        id: TaskId,
        round: u32,
        token: &str,
    ) -> Result<(), AppError> {
        let Some(mut batch) = self.batches.get(agency, id).await? else {
            self.orchestrator
                .succeed(token, &json!({"status": "gone"}))
                .await?;
            return Ok(());
        };
        if batch.status == BatchStatus::Processing && batch.round == round {
            let counts = self.batches.round_counts(agency, id, round).await?;
            let round_total = if round == 0 {
                batch.total_items
            } else {
                batch.failed_items
            };
            let unprocessed = round_total.saturating_sub(counts.processed);
            let success = if round == 0 {
                counts.success
            } else {
                batch.success_items + counts.success
            };
            let failed = counts.failed + unprocessed;
            let now = Utc::now();
            let started = batch.started_at.unwrap_or(batch.created_at);
            let seconds = (now - started).num_milliseconds().max(1) as f64 / 1000.0;
            batch.success_items = success;
            batch.failed_items = failed;
            batch.processed_items = success + failed;
            batch.status = if batch.exceeds_tolerance(failed) {
                BatchStatus::Failed
            } else {
                BatchStatus::Completed
            };
            batch.error = match (batch.status, unprocessed) {
                (BatchStatus::Failed, 0) => Some(format!(
                    "{failed} of {} items failed ({:.2} %), above the tolerated {} %",
                    batch.total_items,
                    failed as f64 * 100.0 / batch.total_items.max(1) as f64,
                    batch.tolerated_failure_percentage
                )),
                (BatchStatus::Failed, n) => Some(format!(
                    "{failed} items failed, {n} of them in chunks that could not run"
                )),
                _ => None,
            };
            batch.completed_at = Some(now);
            let chunk_results: Vec<String> = (0..batch.chunk_count)
                .map(|c| format!("batches/{agency}/{id}/round-{round:03}/results/{c:05}.json"))
                .collect();
            let summary = json!({
                "batchId": id,
                "status": batch.status,
                "round": round,
                "totalItems": batch.total_items,
                "successItems": success,
                "failedItems": failed,
                "durationSeconds": seconds,
                "itemsPerSecond": (batch.total_items as f64 / seconds * 10.0).round() / 10.0,
                "chunkResults": chunk_results,
                "failures": format!("GET /api/batches/{id}/failures"),
            });
            let summary_key =
                format!("batches/{agency}/{id}/round-{round:03}/results/summary.json");
            self.objects
                .put(
                    &summary_key,
                    serde_json::to_vec_pretty(&summary).map_err(AppError::internal)?,
                    "application/json",
                )
                .await?;
            batch.results_key = Some(summary_key);
            self.batches.put(&batch).await?;
            settle_batch_task(self.tasks.as_ref(), agency, id, &batch, Some(summary)).await?;
        }
        self.orchestrator
            .succeed(token, &json!({"status": "finalized"}))
            .await?;
        Ok(())
    }
}

/// Moves a batch's task to the batch's final status, with its error and (when it ran) the
/// results summary.
pub(crate) async fn settle_batch_task(
    tasks: &dyn TaskStore,
    agency: &AgencyId,
    id: TaskId,
    batch: &crate::domain::BatchJob,
    summary: Option<Value>,
) -> Result<(), AppError> {
    let Some(mut task) = tasks.get(agency, id).await? else {
        return Ok(());
    };
    let read_version = task.version;
    let now = Utc::now();
    let next = if batch.status == BatchStatus::Completed {
        TaskStatus::Completed
    } else {
        TaskStatus::Failed
    };
    if task.status != TaskStatus::InProgress {
        // A retry round reopens a settled batch task.
        task.status = TaskStatus::InProgress;
    }
    task.move_to(next, now)?;
    task.error = batch.error.clone();
    task.result = summary;
    match tasks.replace(&task, read_version).await {
        Ok(()) | Err(AppError::VersionConflict { .. }) => Ok(()),
        Err(err) => Err(err),
    }
}
