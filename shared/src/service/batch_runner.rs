//! The worker side of batches: one chunk per message, one task token per
//! chunk. Items run with bounded concurrency; counters are flushed to the
//! chunk's record as items finish, guarded by the chunk attempt so a retried
//! chunk never double-counts.

use crate::domain::{
    AgencyId, BatchMessage, BatchStatus, ChunkCounts, ChunkDone, ChunkItem, ItemFailure, TaskId,
    TaskStatus,
};
use crate::error::AppError;
use crate::executors::{ExecError, ExecutorRegistry, Job, Outcome, WorkUnit};
use crate::ports::{BatchStore, ObjectStore, Orchestrator, TaskStore};
use crate::service::Delivery;
use chrono::Utc;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Items of one chunk running at once on a worker.
const ITEM_CONCURRENCY: usize = 16;
/// Counters are written at least this often while a chunk runs.
const FLUSH_EVERY_ITEMS: u64 = 50;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// A running chunk re-reads its batch at a flush (its first, then at most this often) to stop
/// when the batch was cancelled: one read a second per running chunk at most.
const STATUS_CHECK_EVERY: Duration = Duration::from_secs(1);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
pub const CHUNK_RETRYABLE: &str = "Taskflow.Retryable";
const MAX_CHUNK_BYTES: usize = 256 * 1024 * 1024;
/// Time kept back at the end of an invocation for the last flush and the hand-off (a tenth
/// of the invocation when that is less).
const HAND_OFF_MARGIN: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct BatchRunner {
    pub tasks: Arc<dyn TaskStore>,
    pub batches: Arc<dyn BatchStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub orchestrator: Arc<dyn Orchestrator>,
    pub executors: ExecutorRegistry,
}

/// The chunk a message names.
struct ChunkRef<'a> {
    agency: &'a AgencyId,
    id: TaskId,
    key: &'a str,
    chunk: u32,
    round: u32,
    token: &'a str,
}

/// What ran since the last flush.
#[derive(Default)]
struct Progress {
    counts: ChunkCounts,
    /// Items (positions in the chunk file) whose outcome is in `counts`.
    done: Vec<usize>,
    failures: Vec<ItemFailure>,
    /// Items that succeeded and may hold an earlier failure record.
    succeeded: Vec<u64>,
    results: Vec<Value>,
}

impl Progress {
    fn record(
        &mut self,
        (position, index): (usize, u64),
        outcome: Result<Outcome, ExecError>,
        clears_failures: bool,
    ) {
        self.counts.processed += 1;
        self.done.push(position);
        let error = match outcome {
            Ok(Outcome::Done(result)) => {
                self.counts.success += 1;
                if clears_failures {
                    self.succeeded.push(index);
                }
                self.results
                    .push(json!({"index": index, "status": "completed", "result": result}));
                return;
            }
            Ok(Outcome::AwaitAssignee) => "the manual executor cannot run batch items".to_owned(),
            Err(err) => err.to_string(),
        };
        self.counts.failed += 1;
        self.results
            .push(json!({"index": index, "status": "failed", "error": error}));
        self.failures.push(ItemFailure { index, error });
    }
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

    async fn run_chunk(
        &self,
        c: &ChunkRef<'_>,
        deadline: Option<Instant>,
    ) -> Result<Delivery, AppError> {
        let (agency, id, round, chunk, token) = (c.agency, c.id, c.round, c.chunk, c.token);
        let Some(batch) = self.batches.get(agency, id).await? else {
            self.orchestrator
                .fail(token, "Taskflow.Permanent", "the batch no longer exists")
                .await?;
            return Ok(Delivery::Ack);
        };
        if batch.status != BatchStatus::Processing || batch.round != round {
            self.orchestrator
                .fail(
                    token,
                    "Taskflow.Permanent",
                    &format!("batch is {} (round {})", batch.status, batch.round),
                )
                .await?;
            return Ok(Delivery::Ack);
        }
        // A copy whose token Step Functions has closed (it timed out and was retried, or was
        // answered) must neither run nor take the chunk over from the live copy.
        if !self.orchestrator.heartbeat(token).await? {
            tracing::info!(batch = %id, chunk, round, "a stale copy of a chunk: dropped");
            return Ok(Delivery::Ack);
        }
        let items: Vec<ChunkItem> = match self.objects.get(c.key, MAX_CHUNK_BYTES).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| AppError::internal(format!("chunk {}: {e}", c.key)))?,
            Err(err) => {
                self.orchestrator
                    .fail(token, CHUNK_RETRYABLE, &format!("reading {}: {err}", c.key))
                    .await?;
                return Ok(Delivery::Ack);
            }
        };
        let executor = match self.executors.resolve(&batch.executor) {
            Ok(executor) => executor,
            Err(problem) => {
                self.orchestrator
                    .fail(token, "Taskflow.Permanent", &problem)
                    .await?;
                return Ok(Delivery::Ack);
            }
        };
        let attempt = ulid::Ulid::new().to_string();
        let start = self
            .batches
            .start_chunk(agency, id, round, chunk, &attempt)
            .await?;
        // Items that succeed may hold a failure record from an earlier round, or from an
        // earlier attempt of this chunk; only then is it worth a delete per success.
        let clears_failures = round > 0 || start.earlier;
        let mut done = start.done;
        let remaining: Vec<(usize, ChunkItem)> = items
            .into_iter()
            .enumerate()
            .filter(|(position, _)| !done.contains(*position))
            .collect();
        let left_to_run = remaining.len();
        // An item is started only if it can finish, and be recorded, before the deadline; the
        // first wave always starts, so that every delivery makes progress.
        let margin = deadline.map_or(HAND_OFF_MARGIN, |end| {
            HAND_OFF_MARGIN.min(end.saturating_duration_since(Instant::now()) / 10)
        });
        let longest_item = self.executors.longest_run(&batch.executor) + margin;
        // Set when the batch is found cancelled: no item starts after that.
        let stopped = Arc::new(AtomicBool::new(false));
        let mut started = 0usize;
        let stop = stopped.clone();
        let mut in_time = move || {
            started += 1;
            !stop.load(Ordering::SeqCst)
                && (started <= ITEM_CONCURRENCY
                    || deadline.is_none_or(|end| Instant::now() + longest_item < end))
        };

        let config = Arc::new(batch.executor.config.clone());
        let mut runs = stream::iter(remaining)
            .take_while(move |_| std::future::ready(in_time()))
            .map(move |(position, item): (usize, ChunkItem)| {
                let config = config.clone();
                async move {
                    let job = Job {
                        task_id: id,
                        unit: WorkUnit::Item { index: item.index },
                        config: &config,
                        input: &item.item,
                        attempt: round + 1,
                    };
                    ((position, item.index), executor.run(&job).await)
                }
            })
            .buffer_unordered(ITEM_CONCURRENCY);
        let mut progress = Progress::default();
        let mut ran = 0usize;
        let mut part = 0u32;
        let mut last_flush = Instant::now();
        let mut last_beat = Instant::now();
        // The first check comes at the first flush, then at most one a second.
        let mut last_check: Option<Instant> = None;
        while let Some((item, outcome)) = runs.next().await {
            ran += 1;
            progress.record(item, outcome, clears_failures);
            if progress.counts.processed >= FLUSH_EVERY_ITEMS || last_flush.elapsed() >= FLUSH_EVERY
            {
                if !self
                    .flush(c, &attempt, &mut part, &mut progress, &mut done)
                    .await?
                {
                    return Ok(Delivery::Ack); // a newer attempt owns this chunk now
                }
                last_flush = Instant::now();
                let due = last_check.is_none_or(|at| at.elapsed() >= STATUS_CHECK_EVERY);
                if due && !stopped.load(Ordering::SeqCst) {
                    // Items already running finish and are recorded; no new one starts.
                    if !self.still_running(agency, id, round).await? {
                        stopped.store(true, Ordering::SeqCst);
                    }
                    last_check = Some(Instant::now());
                }
            }
            if last_beat.elapsed() >= HEARTBEAT_EVERY {
                self.orchestrator.heartbeat(token).await?;
                last_beat = Instant::now();
            }
        }
        drop(runs);
        if !self
            .flush(c, &attempt, &mut part, &mut progress, &mut done)
            .await?
        {
            return Ok(Delivery::Ack);
        }
        if stopped.load(Ordering::SeqCst) {
            tracing::info!(batch = %id, chunk, round, ran, "the batch was cancelled; the chunk stops");
            // On AWS the stopped execution has closed the token already; locally (moto keeps
            // executions waiting on a token running) this answer ends the chunk's child.
            self.orchestrator
                .fail(token, "Taskflow.Permanent", "the batch was cancelled")
                .await?;
            return Ok(Delivery::Ack);
        }
        if ran < left_to_run {
            // Out of time: the rest runs in a new delivery, which skips what is done here.
            self.orchestrator.heartbeat(token).await?;
            tracing::info!(
                batch = %id,
                chunk,
                ran,
                left = left_to_run - ran,
                "the invocation's deadline is near; the chunk continues in a new delivery"
            );
            return Ok(Delivery::Requeue);
        }
        self.orchestrator
            .succeed(token, &json!({"status": "done"}))
            .await?;
        Ok(Delivery::Ack)
    }

    /// Whether the batch still runs this round (a cancel, or anything else, ends it).
    async fn still_running(
        &self,
        agency: &AgencyId,
        id: TaskId,
        round: u32,
    ) -> Result<bool, AppError> {
        Ok(self
            .batches
            .get(agency, id)
            .await?
            .is_some_and(|b| b.status == BatchStatus::Processing && b.round == round))
    }

    /// Writes what ran since the last flush: its results as one part object, its failures,
    /// then its counters and done items. False when a newer attempt owns the chunk.
    async fn flush(
        &self,
        c: &ChunkRef<'_>,
        attempt: &str,
        part: &mut u32,
        progress: &mut Progress,
        done: &mut ChunkDone,
    ) -> Result<bool, AppError> {
        if progress.done.is_empty() {
            return Ok(true);
        }
        // Results first: a crash before the counters reruns these items, so an item may be in
        // two parts (same index), but a counted item always has its result.
        progress.results.sort_by_key(|r| r["index"].as_u64());
        let key = format!(
            "{}{:05}/{attempt}-{:04}.json",
            results_prefix(c.agency, c.id, c.round),
            c.chunk,
            *part
        );
        self.objects
            .put(
                &key,
                serde_json::to_vec(&progress.results).map_err(AppError::internal)?,
                "application/json",
            )
            .await?;
        *part += 1;
        if !progress.failures.is_empty() {
            self.batches
                .record_failures(c.agency, c.id, &progress.failures)
                .await?;
        }
        if !progress.succeeded.is_empty() {
            // A retried item that now succeeds is no longer a failure.
            self.batches
                .clear_failures(c.agency, c.id, &progress.succeeded)
                .await?;
        }
        for position in &progress.done {
            done.insert(*position);
        }
        let kept = self
            .batches
            .add_counts(
                c.agency,
                c.id,
                c.round,
                c.chunk,
                attempt,
                progress.counts,
                done,
            )
            .await?;
        *progress = Progress::default();
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
            let summary = json!({
                "batchId": id,
                "status": batch.status,
                "round": round,
                "totalItems": batch.total_items,
                "successItems": success,
                "failedItems": failed,
                "durationSeconds": seconds,
                "itemsPerSecond": (batch.total_items as f64 / seconds * 10.0).round() / 10.0,
                // A prefix, not a list of keys: the summary is also the task's result, and a
                // key per chunk would pass DynamoDB's 400 KB item limit at about 5,500 chunks.
                "chunkCount": batch.chunk_count,
                "resultsPrefix": results_prefix(agency, id, round),
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
            // Conditional on the batch as read: a cancel that came meanwhile stands.
            if self
                .batches
                .put_if(&batch, BatchStatus::Processing, round)
                .await?
            {
                settle_batch_task(self.tasks.as_ref(), agency, id, &batch, Some(summary)).await?;
            } else {
                tracing::info!(batch = %id, round, "the batch changed while it was finalized; left as it is");
            }
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
    // A cancelled or archived task is a person's decision; a settling round never undoes it.
    if !matches!(
        task.status,
        TaskStatus::InProgress | TaskStatus::Completed | TaskStatus::Failed
    ) {
        tracing::info!(batch = %id, status = %task.status, "the batch's task stays as it is");
        return Ok(());
    }
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
