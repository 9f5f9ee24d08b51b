//! One chunk of a batch: its items run with bounded concurrency against the invocation's
//! deadline, and each flush records results, failures, counters and done items.

use super::{results_prefix, BatchRunner, CHUNK_RETRYABLE};
use crate::domain::{
    AgencyId, BatchJob, BatchStatus, ChunkCounts, ChunkDone, ChunkItem, ItemFailure, TaskId,
};
use crate::error::AppError;
use crate::executors::{ExecError, Job, Outcome, WorkUnit};
use crate::service::fairness::DEFER_DELAY;
use crate::service::{task_token, Delivery};
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
const MAX_CHUNK_BYTES: usize = 256 * 1024 * 1024;
/// Time kept back at the end of an invocation for the last flush and the hand-off (a tenth
/// of the invocation when that is less).
const HAND_OFF_MARGIN: Duration = Duration::from_secs(10);
/// A chunk's slot lease where the host sets no invocation deadline: Lambda's longest run.
const UNBOUNDED_RUN: Duration = Duration::from_secs(15 * 60);

/// The chunk a message names.
pub(super) struct ChunkRef<'a> {
    pub agency: &'a AgencyId,
    pub id: TaskId,
    pub key: &'a str,
    pub chunk: u32,
    pub round: u32,
    pub token: &'a str,
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

impl BatchRunner {
    pub(super) async fn run_chunk(
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
        if !task_token::still_waits(self.orchestrator.as_ref(), token).await? {
            tracing::info!(batch = %id, chunk, round, "a stale copy of a chunk: dropped");
            return Ok(Delivery::Ack);
        }
        let Some(fairness) = &self.fairness else {
            return self.run_admitted(c, batch, deadline).await;
        };
        // A chunk holds a slot of its agency's cap on the batch's tier, like a task run: a
        // flood of another agency's tasks is held to its cap while this batch waits, and a
        // large batch is held to the cap while others wait.
        let (tier, holder) = (batch.priority, format!("{id}#{round}#{chunk}"));
        let now = chrono::Utc::now();
        let run_bound = deadline.map_or(UNBOUNDED_RUN, |end| {
            end.saturating_duration_since(Instant::now())
        });
        let until = now + chrono::Duration::from_std(run_bound).map_err(AppError::internal)?;
        if !fairness.admit(agency, tier, &holder, until, now).await? {
            return Ok(Delivery::Defer(DEFER_DELAY));
        }
        let result = self.run_admitted(c, batch, deadline).await;
        fairness.release(agency, tier, &holder).await;
        result
    }

    /// Runs the chunk's items that are not done yet, within the deadline.
    async fn run_admitted(
        &self,
        c: &ChunkRef<'_>,
        batch: BatchJob,
        deadline: Option<Instant>,
    ) -> Result<Delivery, AppError> {
        let (agency, id, round, chunk, token) = (c.agency, c.id, c.round, c.chunk, c.token);
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
}
