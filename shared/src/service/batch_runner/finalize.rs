//! The end of a batch round: counters summed against the tolerance, the summary written, the
//! batch and its task settled.

use super::{results_prefix, BatchRunner};
use crate::domain::{AgencyId, BatchStatus, TaskId, TaskStatus};
use crate::error::AppError;
use crate::ports::TaskStore;
use chrono::Utc;
use serde_json::{json, Value};

impl BatchRunner {
    /// Settles the batch from its counters against the tolerance (the engine's
    /// own threshold is not relied on), and writes the results summary.
    pub(super) async fn finalize(
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
