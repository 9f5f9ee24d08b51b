//! Batch preparation, out of the request path: a pending batch's round is turned into chunks
//! in S3 and a manifest, then recorded as processing and started. It runs in the batch
//! preparer (the batch-trigger function) from a message on its queue, streams its input
//! (a bounded number of items in memory), writes chunks in parallel, saves how far it got,
//! and stops before its invocation's deadline to go on in a new delivery without writing a
//! saved chunk again. The API and the upload trigger only record the batch and ask.

pub mod chunks;
pub mod feed;
#[cfg(test)]
mod tests;

use crate::domain::batch_input::InputFormat;
use crate::domain::{BatchJob, BatchSource, BatchStatus, Preparation, PrepareBatch, TaskId};
use crate::error::AppError;
use crate::ports::{
    BatchStore, Dispatcher, ObjectStore, Orchestrator, Preparations, StartOutcome, TaskStore,
};
use chrono::Utc;
use chunks::{ChunkWriter, MAX_CHUNKS};
use feed::{FeedError, ItemFeed};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A preparation stops starting new chunk writes this long before its invocation's deadline,
/// leaving time to finish the writes in flight, save its progress and ask to go on.
pub const STOP_MARGIN: Duration = Duration::from_secs(30);
/// Progress is saved at least this often, so a killed preparation loses little.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// What a preparation did.
#[derive(Debug, Clone, PartialEq)]
pub enum Prepared {
    /// The round is prepared and its execution runs.
    Started,
    /// The deadline came first: progress is saved and a continuation is queued.
    Continued,
    /// The batch failed with this reason (a bad input, a quota, too many chunks).
    Failed(String),
    /// Nothing to do: the batch is gone, finished, cancelled, or another delivery got there.
    Nothing,
}

#[derive(Clone)]
pub struct BatchPreparer {
    pub tasks: Arc<dyn TaskStore>,
    pub batches: Arc<dyn BatchStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub dispatcher: Arc<dyn Dispatcher>,
    pub orchestrator: Arc<dyn Orchestrator>,
    pub preparations: Arc<dyn Preparations>,
}

/// Where a round's chunks and manifest go.
pub fn round_prefix(batch: &BatchJob, round: u32) -> String {
    format!("batches/{}/{}/round-{round:03}", batch.agency_id, batch.id)
}

/// Where the API puts an inline batch's items, to be prepared like an upload.
pub fn inline_input_key(batch: &BatchJob) -> String {
    format!("batches/{}/{}/input.json", batch.agency_id, batch.id)
}

impl BatchPreparer {
    /// Prepares the batch's pending round, stopping for a continuation once `stop_at` has
    /// passed (and at least one new chunk is saved, so every delivery makes progress).
    pub async fn prepare(
        &self,
        request: &PrepareBatch,
        stop_at: Instant,
    ) -> Result<Prepared, AppError> {
        let Some(batch) = self
            .batches
            .get(&request.agency_id, request.batch_id)
            .await?
        else {
            tracing::warn!(batch = %request.batch_id, "asked to prepare a batch that does not exist");
            return Ok(Prepared::Nothing);
        };
        match batch.status {
            BatchStatus::Pending => self.prepare_pending(request, batch, stop_at).await,
            // Recorded as processing by an earlier delivery whose start may not have happened.
            BatchStatus::Processing => self.ensure_started(batch).await,
            _ => Ok(Prepared::Nothing),
        }
    }

    async fn prepare_pending(
        &self,
        request: &PrepareBatch,
        mut batch: BatchJob,
        stop_at: Instant,
    ) -> Result<Prepared, AppError> {
        let mut progress = match batch.preparation {
            Some(mut earlier) => {
                earlier.passes += 1;
                earlier
            }
            None => Preparation {
                chunks_written: 0,
                items_read: 0,
                passes: 0,
                repairs: 0,
                updated_at: Utc::now(),
            },
        };
        let prefix = round_prefix(&batch, batch.round);
        let mut feed = match self.feed(&batch, &prefix).await {
            Ok(feed) => feed,
            Err(FeedError::Input(problem)) => return self.fail(batch, problem).await,
            Err(FeedError::Transport(err)) => return Err(err),
        };
        let resumed_at = progress.chunks_written;
        let mut writer = ChunkWriter::new(
            self.objects.clone(),
            prefix.clone(),
            batch.items_per_batch,
            resumed_at,
        );
        let mut last_saved = Instant::now();
        let mut read = 0u64;
        let mut out_of_time = false;
        loop {
            // Once this pass has a new chunk to save, a reader that stalls near the deadline is
            // not waited for past it: the pass drains its writes, saves them and stops cleanly
            // instead of being cut at its Timeout.
            let next = if writer.closed_chunks() > resumed_at {
                let deadline = tokio::time::Instant::from_std(stop_at);
                match tokio::time::timeout_at(deadline, feed.items.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        out_of_time = true;
                        break;
                    }
                }
            } else {
                feed.items.recv().await
            };
            let Some(item) = next else { break };
            read += 1;
            writer.push(item).await?;
            if writer.chunk_count() > MAX_CHUNKS {
                let problem = format!(
                    "the batch needs more than {MAX_CHUNKS} chunks of {} items; set itemsPerBatch to at least {}",
                    batch.items_per_batch,
                    read.div_ceil(u64::from(MAX_CHUNKS)).max(2)
                );
                return self.fail(batch, problem).await;
            }
            writer.reap_finished()?;
            if writer.written_prefix() > resumed_at && Instant::now() >= stop_at {
                out_of_time = true;
                break;
            }
            if last_saved.elapsed() >= CHECKPOINT_EVERY
                && writer.written_prefix() > progress.chunks_written
            {
                progress.chunks_written = writer.written_prefix();
                progress.items_read = read;
                if !self.save_progress(&mut batch, &mut progress).await? {
                    return Ok(Prepared::Nothing);
                }
                last_saved = Instant::now();
            }
        }
        if out_of_time {
            // Dropping the receiver stops the reader; the writes in flight finish first.
            drop(feed.items);
            writer.drain().await?;
            progress.chunks_written = writer.written_prefix();
            progress.items_read = read;
            if !self.save_progress(&mut batch, &mut progress).await? {
                return Ok(Prepared::Nothing);
            }
            self.preparations.request(request).await?;
            tracing::info!(batch = %batch.id, chunks = progress.chunks_written, items = read, "preparation continues in a new delivery");
            return Ok(Prepared::Continued);
        }
        let total = match feed.done.await.map_err(AppError::internal)? {
            Ok(total) => total,
            Err(FeedError::Input(problem)) => return self.fail(batch, problem).await,
            Err(FeedError::Transport(err)) => return Err(err),
        };
        let manifest = writer.finish().await?;
        if manifest.is_empty() {
            return self
                .fail(batch, "the round has no items to run".into())
                .await;
        }
        let manifest_key = format!("{prefix}/manifest.json");
        self.objects
            .put(
                &manifest_key,
                serde_json::to_vec(&manifest).map_err(AppError::internal)?,
                "application/json",
            )
            .await?;
        tracing::info!(batch = %batch.id, round = batch.round, items = total, chunks = manifest.len(), passes = progress.passes + 1, "batch prepared");
        if batch.round == 0 {
            batch.total_items = total;
        } else {
            batch.failed_items = total;
        }
        batch.chunk_count = manifest.len() as u32;
        batch.manifest_key = Some(manifest_key);
        self.record_and_start(batch).await
    }

    async fn feed(&self, batch: &BatchJob, prefix: &str) -> Result<ItemFeed, FeedError> {
        if batch.round > 0 {
            let round0 = round_prefix(batch, 0);
            debug_assert_ne!(round0, prefix);
            return Ok(feed::from_failures(
                self.batches.clone(),
                self.objects.clone(),
                batch.agency_id.clone(),
                batch.id,
                round0,
                batch.items_per_batch,
            ));
        }
        let key = match (batch.source, &batch.source_key) {
            (BatchSource::Inline, _) => inline_input_key(batch),
            (_, Some(key)) => key.clone(),
            (_, None) => {
                return Err(FeedError::Input(
                    "the batch has no input file to prepare".into(),
                ))
            }
        };
        let format = InputFormat::from_name(&key).ok_or_else(|| {
            FeedError::Input("unsupported file type; use .json, .jsonl or .csv".into())
        })?;
        feed::from_file(self.objects.as_ref(), &key, format).await
    }

    /// Saves how far the preparation got, only over the pending round as read: false when the
    /// batch changed meanwhile (cancelled above all), and the preparation must stop.
    async fn save_progress(
        &self,
        batch: &mut BatchJob,
        progress: &mut Preparation,
    ) -> Result<bool, AppError> {
        progress.updated_at = Utc::now();
        batch.preparation = Some(*progress);
        let saved = self
            .batches
            .put_if(batch, BatchStatus::Pending, batch.round)
            .await?;
        if !saved {
            tracing::info!(batch = %batch.id, "the batch changed during its preparation; stopping");
        }
        Ok(saved)
    }

    /// Records the prepared round as processing, then starts it. Recorded first, so a chunk
    /// never finds its batch anything but processing. An upload's items are charged to the
    /// daily quota here, in the same write, because only now is their number known.
    async fn record_and_start(&self, mut batch: BatchJob) -> Result<Prepared, AppError> {
        let round = batch.round;
        let as_read = batch.clone();
        let name = execution_name(&batch);
        batch.status = BatchStatus::Processing;
        batch.execution_arn = Some(self.orchestrator.execution_arn(&name));
        batch.started_at.get_or_insert(Utc::now());
        batch.completed_at = None;
        batch.error = None;
        batch.preparation = None;
        let charge = round == 0 && batch.source != BatchSource::Inline;
        let recorded = if charge {
            match self
                .batches
                .put_if_charging(&batch, BatchStatus::Pending, round)
                .await
            {
                Err(quota @ AppError::QuotaExceeded { .. }) => {
                    return self.fail(as_read, quota.to_string()).await
                }
                other => other?,
            }
        } else {
            self.batches
                .put_if(&batch, BatchStatus::Pending, round)
                .await?
        };
        if !recorded {
            tracing::info!(batch = %batch.id, "the batch changed before its round was recorded; not started");
            return Ok(Prepared::Nothing);
        }
        self.start(batch).await
    }

    /// A processing round whose start an earlier delivery could not confirm: start it unless
    /// its execution exists (its chunks and manifest are written).
    async fn ensure_started(&self, batch: BatchJob) -> Result<Prepared, AppError> {
        if self
            .orchestrator
            .describe(&execution_name(&batch))
            .await?
            .is_some()
        {
            return Ok(Prepared::Nothing);
        }
        tracing::warn!(batch = %batch.id, round = batch.round, "the batch's round was recorded but never started; starting it now");
        self.start(batch).await
    }

    async fn start(&self, batch: BatchJob) -> Result<Prepared, AppError> {
        let name = execution_name(&batch);
        let input = self.round_input(&batch)?;
        match self.orchestrator.start_resolved(&name, &input).await {
            Ok(StartOutcome::Started) => Ok(Prepared::Started),
            // Nothing runs: back to pending with every chunk saved, so the next delivery (or
            // the sweeper's repair) only rewrites the manifest and starts again.
            Ok(StartOutcome::NotStarted(err)) => {
                let mut back = batch.clone();
                back.status = BatchStatus::Pending;
                back.preparation = Some(Preparation {
                    chunks_written: batch.chunk_count,
                    items_read: 0,
                    passes: 0,
                    repairs: 0,
                    updated_at: Utc::now(),
                });
                if !self
                    .batches
                    .put_if(&back, BatchStatus::Processing, batch.round)
                    .await?
                {
                    return Ok(Prepared::Nothing);
                }
                Err(err)
            }
            // The name is the round's: an execution that already ended ran this round before,
            // and nothing would ever finalize it again.
            Ok(StartOutcome::Closed(status)) => {
                let reason = format!(
                    "execution {name} of round {} had already ended ({}) although the round was not recorded as running",
                    batch.round,
                    status.as_str()
                );
                self.fail(batch, reason).await
            }
            // Neither the start nor a describe answered: it may run. The round stays recorded
            // and the redelivery describes it again.
            Err(err) => Err(AppError::Unavailable(format!(
                "batch {} may not have started ({err})",
                batch.id
            ))),
        }
    }

    /// The state machine input of the batch's current round.
    fn round_input(&self, batch: &BatchJob) -> Result<Value, AppError> {
        let queue_url = self
            .dispatcher
            .queue_url(batch.priority)
            .ok_or_else(|| AppError::internal(format!("no queue for tier {}", batch.priority)))?;
        let manifest_key = batch
            .manifest_key
            .as_deref()
            .ok_or_else(|| AppError::internal("a prepared batch without its manifest"))?;
        Ok(json!({
            "batchId": batch.id,
            "agencyId": batch.agency_id,
            "round": batch.round,
            "bucket": self.objects.bucket(),
            "manifestKey": manifest_key,
            "queueUrl": queue_url,
            "parallelism": batch.parallelism,
        }))
    }

    async fn fail(&self, batch: BatchJob, reason: String) -> Result<Prepared, AppError> {
        let id: TaskId = batch.id;
        tracing::warn!(batch = %id, %reason, "batch failed in preparation; nothing ran");
        super::batches::fail_unstarted(
            self.batches.as_ref(),
            self.tasks.as_ref(),
            batch,
            reason.clone(),
        )
        .await?;
        Ok(Prepared::Failed(reason))
    }
}

fn execution_name(batch: &BatchJob) -> String {
    format!("{}-r{}", batch.id, batch.round)
}
