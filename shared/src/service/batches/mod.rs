//! Batch jobs: creation (inline items, an uploaded object, or an S3 upload
//! trigger), reading progress, and retrying failed items. Creating a batch or a
//! retry round records it `pending` and queues its preparation (`batch_prep`),
//! which chunks it into S3 and starts it; the worker side is `BatchRunner`.

mod list;
mod params;

use super::batch_prep;
use crate::domain::batch_input::InputFormat;
use crate::domain::{
    BatchJob, BatchSource, BatchStatus, Caller, ItemFailure, Metadata, PrepareBatch, Task, TaskId,
    TaskStatus, TaskType, Title, UserId,
};
use crate::error::{AppError, FieldErrors};
use crate::executors::ExecutorRegistry;
use crate::ports::{BatchCreated, BatchStore, ObjectStore, Page, Preparations, TaskStore};
use chrono::{DateTime, Utc};
pub use list::{BatchQuery, DEFAULT_BATCH_PAGE, MAX_BATCH_PAGE};
pub use params::BatchParams;
use params::{read_params, ParamSource};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Inline items per request (the request body limit applies too).
pub const MAX_INLINE_ITEMS: usize = 10_000;
pub const MAX_PARALLELISM: u32 = 1_000;
pub const MAX_ITEMS_PER_BATCH: u32 = 10_000;
pub const DEFAULT_PARALLELISM: u32 = 10;
pub const DEFAULT_ITEMS_PER_BATCH: u32 = 100;
const URL_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchView {
    #[serde(flatten)]
    pub batch: BatchJob,
    /// Items settled so far, in percent of the items this round runs.
    pub progress_percent: f64,
    /// Estimated seconds left at the current rate; null before any item settled or when done.
    pub eta_seconds: Option<u64>,
    /// Presigned download URL of the results summary, once the batch has finished.
    pub results_url: Option<String>,
}

#[derive(Clone)]
pub struct BatchService {
    pub tasks: Arc<dyn TaskStore>,
    pub batches: Arc<dyn BatchStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub preparations: Arc<dyn Preparations>,
    pub executors: ExecutorRegistry,
}

impl BatchService {
    /// `POST /api/batches`: inline `items`, or `source.key` of an object uploaded
    /// through `POST /api/batches/uploads`.
    pub async fn create(&self, caller: &Caller, body: &Value) -> Result<BatchView, AppError> {
        caller.require_manager("create batches")?;
        let mut errors = FieldErrors::new();
        let Value::Object(map) = body else {
            errors.add("body", "must be a JSON object");
            return Err(AppError::Validation(errors));
        };
        const FIELDS: [&str; 8] = [
            "title",
            "items",
            "source",
            "parallelism",
            "toleratedFailurePercentage",
            "priority",
            "executor",
            "itemsPerBatch",
        ];
        for key in map.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
            errors.add(
                key.clone(),
                format!("unknown field; allowed: {}", FIELDS.join(", ")),
            );
        }
        let get = |k: &str| map.get(k).filter(|v| !v.is_null()).cloned();
        let params = read_params(&get, &mut errors, &|k| k.to_owned(), ParamSource::Body);
        self.check_executor(&params, &mut errors, "executor");
        let source_key = match get("source") {
            None => None,
            Some(Value::Object(source)) if source.keys().any(|k| k != "key") => {
                errors.add("source", "must be {\"key\": \"…\"} and nothing else");
                None
            }
            Some(Value::Object(source)) => match source.get("key").and_then(Value::as_str) {
                Some(key)
                    if key.starts_with(&format!("inputs/{}/", caller.agency))
                        && InputFormat::from_name(key).is_some() =>
                {
                    Some(key.to_owned())
                }
                _ => {
                    errors.add("source.key", "must be a key returned by POST /api/batches/uploads (.json, .jsonl or .csv)");
                    None
                }
            },
            Some(_) => {
                errors.add("source", "must be {\"key\": \"…\"}");
                None
            }
        };
        let inline = match get("items") {
            None => None,
            Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_INLINE_ITEMS => {
                Some(items)
            }
            Some(_) => {
                errors.add(
                    "items",
                    format!("must be an array of 1–{MAX_INLINE_ITEMS} items"),
                );
                None
            }
        };
        match (&inline, &source_key) {
            (Some(_), Some(_)) => errors.add("items", "give either items or source, not both"),
            (None, None) if errors.is_empty() => errors.add(
                "items",
                "give items inline, or source.key of an uploaded file",
            ),
            _ => {}
        }
        errors.into_result()?;
        let (total, source) = match (&inline, &source_key) {
            (Some(items), _) => (items.len(), BatchSource::Inline),
            (None, Some(key)) => {
                // Checked now, so a wrong key is a 400; the file's content is checked as it
                // is prepared, and a problem there fails the batch with where it is.
                let limit = crate::domain::batch_input::MAX_INPUT_BYTES as u64;
                let problem = match self.objects.size(key).await? {
                    None => Some(
                        "nothing was uploaded at this key (PUT the file to the upload URL first)"
                            .to_owned(),
                    ),
                    Some(size) if size > limit => {
                        Some(format!("the file is {size} bytes; the limit is {limit}"))
                    }
                    Some(_) => None,
                };
                if let Some(problem) = problem {
                    let mut errors = FieldErrors::new();
                    errors.add("source.key", problem);
                    return Err(AppError::Validation(errors));
                }
                // Counted once prepared: the file's item count is not known yet.
                (0, BatchSource::Upload)
            }
            (None, None) => unreachable!("validated above"),
        };
        let (task, batch) = new_batch(
            caller.agency.clone(),
            caller.user.clone(),
            &params,
            source,
            source_key,
            total,
        );
        if let Some(items) = inline {
            // One write of the items as sent; the preparer chunks them like an upload.
            let body = serde_json::to_vec(&items).map_err(AppError::internal)?;
            self.objects
                .put(
                    &batch_prep::inline_input_key(&batch),
                    body,
                    "application/json",
                )
                .await?;
        }
        self.batches.create(&task, &batch, None).await?;
        self.request_preparation(&batch).await?;
        self.view(batch).await
    }

    /// Queues the batch's preparation. A batch that cannot be queued is failed with the
    /// reason instead of being left pending: nothing ran, and the caller creates it again.
    async fn request_preparation(&self, batch: &BatchJob) -> Result<(), AppError> {
        let request = PrepareBatch {
            agency_id: batch.agency_id.clone(),
            batch_id: batch.id,
        };
        match self.preparations.request(&request).await {
            Ok(()) => Ok(()),
            Err(err) => {
                self.record_start_failure(batch.clone(), &err).await;
                Err(err)
            }
        }
    }

    /// A batch whose execution could not start is failed with the reason instead of being
    /// left pending. Nothing ran, so the caller simply creates it again.
    async fn record_start_failure(&self, batch: BatchJob, err: &AppError) {
        let id = batch.id;
        let reason =
            format!("the batch could not be prepared ({err}); nothing ran, create it again");
        if let Err(record_err) =
            fail_unstarted(self.batches.as_ref(), self.tasks.as_ref(), batch, reason).await
        {
            tracing::error!(batch = %id, error = %record_err, start_error = %err, "batch could not start, and its failure could not be recorded; it shows pending");
        }
    }

    /// `POST /api/batches/uploads`: where to PUT a batch input file.
    pub async fn upload_url(&self, caller: &Caller, body: &Value) -> Result<Value, AppError> {
        caller.require_manager("create batches")?;
        let mut errors = FieldErrors::new();
        let Value::Object(map) = body else {
            errors.add("body", "must be a JSON object");
            return Err(AppError::Validation(errors));
        };
        for key in map.keys().filter(|k| k.as_str() != "fileName") {
            errors.add(key.clone(), "unknown field; allowed: fileName");
        }
        let name = map
            .get("fileName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let valid = !name.is_empty()
            && name.len() <= 200
            && !name.contains(['/', '\\'])
            && InputFormat::from_name(name).is_some();
        if !valid {
            errors.add(
                "fileName",
                "must be a plain file name ending in .json, .jsonl or .csv",
            );
        }
        errors.into_result()?;
        let key = format!("inputs/{}/{}/{name}", caller.agency, ulid::Ulid::new());
        let content_type = "application/octet-stream";
        let url = self
            .objects
            .presign_put(&key, content_type, URL_TTL)
            .await?;
        Ok(json!({
            "key": key,
            "upload": {"url": url, "method": "PUT", "headers": {"Content-Type": content_type},
                       "expiresAt": Utc::now() + chrono::Duration::from_std(URL_TTL).unwrap_or_default()},
        }))
    }

    /// A file landed under `uploads/<agencyId>/`: create its batch. Redelivered
    /// or duplicate events (same object version) create nothing new.
    pub async fn create_from_upload(
        &self,
        key: &str,
        version: &str,
    ) -> Result<Option<TaskId>, AppError> {
        let mut parts = key.splitn(3, '/');
        let (Some("uploads"), Some(agency_raw), Some(name)) =
            (parts.next(), parts.next(), parts.next())
        else {
            tracing::warn!(key, "ignoring an object outside uploads/<agencyId>/");
            return Ok(None);
        };
        let Ok(agency) = crate::domain::AgencyId::parse(agency_raw) else {
            tracing::error!(
                key,
                "upload under an invalid agency id; no batch can be recorded for it"
            );
            return Ok(None);
        };
        let owner = UserId::parse("system:s3-upload").expect("valid id");
        let metadata = self.objects.metadata(key).await?;
        let mut errors = FieldErrors::new();
        let lookup: HashMap<String, String> = metadata
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let meta_name = |k: &str| match k {
            "toleratedFailurePercentage" => "tolerated-failure-percentage".to_owned(),
            "itemsPerBatch" => "items-per-batch".to_owned(),
            other => other.to_ascii_lowercase(),
        };
        let get = |k: &str| lookup.get(&meta_name(k)).map(|v| Value::String(v.clone()));
        let mut params = read_params(
            &get,
            &mut errors,
            &|k| format!("x-amz-meta-{}", meta_name(k)),
            ParamSource::Metadata,
        );
        if params.title.is_none() {
            params.title = Some(format!("Upload {name}").chars().take(200).collect());
        }
        self.check_executor(&params, &mut errors, "x-amz-meta-executor");
        // Checked before anything runs; any problem becomes the failed batch's error. The
        // file's content is checked as it is prepared.
        let limit = crate::domain::batch_input::MAX_INPUT_BYTES as u64;
        let problem = if !errors.is_empty() {
            Some(format!("invalid metadata: {errors}"))
        } else if !self.batches.agency_known(&agency).await? {
            Some(format!("unknown agency '{agency}'"))
        } else if InputFormat::from_name(name).is_none() {
            Some("unsupported file type; use .json, .jsonl or .csv".into())
        } else {
            match self.objects.size(key).await? {
                Some(size) if size > limit => {
                    Some(format!("the file is {size} bytes; the limit is {limit}"))
                }
                _ => None,
            }
        };
        let (mut task, mut batch) = new_batch(
            agency,
            owner,
            &params,
            BatchSource::S3Trigger,
            Some(key.to_owned()),
            0,
        );
        if let Some(problem) = &problem {
            let now = Utc::now();
            batch.status = BatchStatus::Failed;
            batch.error = Some(problem.clone());
            batch.completed_at = Some(now);
            task.error = Some(problem.clone());
            task.move_to(TaskStatus::Failed, now)?;
        }
        let dedupe = format!("{}/{key}#{version}", self.objects.bucket());
        match self.batches.create(&task, &batch, Some(&dedupe)).await? {
            BatchCreated::Duplicate(first) => {
                return self.redelivered_upload(&batch.agency_id, first, key).await
            }
            BatchCreated::New => {}
        }
        match problem {
            None => self.request_preparation(&batch).await?,
            Some(problem) => {
                tracing::warn!(key, batch = %batch.id, %problem, "upload rejected; batch recorded as failed")
            }
        }
        Ok(Some(batch.id))
    }

    /// The same upload event again (S3 and SQS deliver at least once). When an earlier
    /// delivery recorded the batch but its preparation request may have been lost, ask again:
    /// the preparer does nothing for a batch that is prepared or running.
    async fn redelivered_upload(
        &self,
        agency: &crate::domain::AgencyId,
        first: TaskId,
        key: &str,
    ) -> Result<Option<TaskId>, AppError> {
        match self.batches.get(agency, first).await? {
            Some(batch)
                if matches!(batch.status, BatchStatus::Pending | BatchStatus::Processing) =>
            {
                tracing::info!(key, batch = %first, status = %batch.status, "duplicate upload event; asking for its preparation again");
                self.preparations
                    .request(&PrepareBatch {
                        agency_id: batch.agency_id,
                        batch_id: first,
                    })
                    .await?;
                Ok(None)
            }
            _ => {
                tracing::info!(key, batch = %first, "duplicate upload event; the batch already exists");
                Ok(None)
            }
        }
    }

    fn check_executor(&self, params: &BatchParams, errors: &mut FieldErrors, field: &str) {
        if params.executor.kind == "manual" {
            errors.add(field, "batch items cannot use the manual executor");
        } else if let Err(problem) = self.executors.resolve(&params.executor) {
            errors.add(field, problem);
        } else if let Err((config_field, problem)) =
            self.executors.check_run_limit(&params.executor)
        {
            errors.add(format!("{field}.config.{config_field}"), problem);
        }
    }

    pub async fn get(&self, caller: &Caller, id: TaskId) -> Result<BatchView, AppError> {
        let batch = self
            .batches
            .get(&caller.agency, id)
            .await?
            .ok_or(AppError::NotFound { what: "batch" })?;
        self.view(batch).await
    }

    async fn view(&self, mut batch: BatchJob) -> Result<BatchView, AppError> {
        let mut round_total = batch.total_items;
        if batch.status == BatchStatus::Processing {
            let live = self
                .batches
                .round_counts(&batch.agency_id, batch.id, batch.round)
                .await?;
            if batch.round == 0 {
                batch.processed_items = live.processed;
                batch.success_items = live.success;
                batch.failed_items = live.failed;
            } else {
                // A retry round re-runs only the failed items: until one settles again it is
                // neither processed nor failed, so the counts add up while the round runs.
                round_total = batch.failed_items;
                batch.processed_items = batch.success_items + live.processed;
                batch.success_items += live.success;
                batch.failed_items = live.failed;
            }
            let progress = if round_total == 0 {
                100.0
            } else {
                live.processed as f64 * 100.0 / round_total as f64
            };
            let eta_seconds = eta(batch.started_at, live.processed, round_total);
            return Ok(BatchView {
                batch,
                progress_percent: round1(progress),
                eta_seconds,
                results_url: None,
            });
        }
        if batch.status == BatchStatus::Pending && batch.round > 0 {
            // A retry round being prepared: the items it re-runs count as neither processed
            // nor failed until they settle again, as while it runs.
            batch.processed_items = batch.success_items;
            batch.failed_items = 0;
        }
        let done = matches!(batch.status, BatchStatus::Completed | BatchStatus::Failed);
        let results_url = match (&batch.results_key, done) {
            (Some(key), true) => Some(self.objects.presign_get(key, URL_TTL).await?),
            _ => None,
        };
        let progress = if done { 100.0 } else { 0.0 };
        Ok(BatchView {
            batch,
            progress_percent: progress,
            eta_seconds: None,
            results_url,
        })
    }

    pub async fn failures(
        &self,
        caller: &Caller,
        id: TaskId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ItemFailure>, AppError> {
        self.batches
            .get(&caller.agency, id)
            .await?
            .ok_or(AppError::NotFound { what: "batch" })?;
        self.batches
            .failures(&caller.agency, id, cursor, limit)
            .await
    }

    /// Runs only the failed items again, as a new round of the same batch.
    pub async fn retry_failed(&self, caller: &Caller, id: TaskId) -> Result<BatchView, AppError> {
        caller.require_manager("retry batches")?;
        let mut batch = self
            .batches
            .get(&caller.agency, id)
            .await?
            .ok_or(AppError::NotFound { what: "batch" })?;
        if batch.status == BatchStatus::Failed && batch.manifest_key.is_none() {
            return Err(AppError::Conflict(format!(
                "the batch never ran, so it has no failed items to retry: {}",
                batch.error.as_deref().unwrap_or("it was rejected")
            )));
        }
        if batch.status == BatchStatus::Cancelled {
            return Err(AppError::Conflict(
                "a cancelled batch cannot be retried; create it again".into(),
            ));
        }
        if !matches!(batch.status, BatchStatus::Completed | BatchStatus::Failed)
            || batch.manifest_key.is_none()
        {
            return Err(AppError::Conflict(format!(
                "a {} batch cannot be retried; wait until it has finished",
                batch.status
            )));
        }
        let first_failure = self.batches.failures(&caller.agency, id, None, 1).await?;
        if first_failure.items.is_empty() {
            return Err(AppError::Conflict(
                "the batch has no failed items to retry".into(),
            ));
        }
        // The retry round is prepared in the background like a new batch: its failures are
        // read a page at a time, however many there are.
        let before = batch.clone();
        batch.round += 1;
        batch.status = BatchStatus::Pending;
        batch.results_key = None;
        batch.completed_at = None;
        batch.error = None;
        // Pending from now: the sweeper measures a stalled preparation from here.
        batch.preparation = Some(crate::domain::Preparation {
            chunks_written: 0,
            items_read: 0,
            passes: 0,
            repairs: 0,
            updated_at: Utc::now(),
        });
        if !self
            .batches
            .put_if(&batch, before.status, before.round)
            .await?
        {
            return Err(AppError::Conflict(
                "the batch changed meanwhile; GET it and try again".into(),
            ));
        }
        let request = PrepareBatch {
            agency_id: batch.agency_id.clone(),
            batch_id: batch.id,
        };
        if let Err(err) = self.preparations.request(&request).await {
            // Nothing was queued: put the batch back as it was, so the retry can be asked again.
            if let Err(put_back) = self
                .batches
                .put_if(&before, BatchStatus::Pending, batch.round)
                .await
            {
                tracing::error!(batch = %id, error = %put_back, "a retry round could not be queued, nor the batch put back; the sweeper will repair it");
            }
            return Err(err);
        }
        self.view(batch).await
    }
}

/// Fails a batch whose round never started, with `reason`, and settles its task; only over
/// the batch as read (a cancel or a start meanwhile stands: false).
pub(crate) async fn fail_unstarted(
    batches: &dyn BatchStore,
    tasks: &dyn TaskStore,
    mut batch: BatchJob,
    reason: String,
) -> Result<bool, AppError> {
    batch.error = Some(reason);
    batch.completed_at = Some(Utc::now());
    let (status, round) = (batch.status, batch.round);
    batch.status = BatchStatus::Failed;
    if !batches.put_if(&batch, status, round).await? {
        return Ok(false);
    }
    super::batch_runner::settle_batch_task(tasks, &batch.agency_id, batch.id, &batch, None).await?;
    Ok(true)
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn eta(started: Option<DateTime<Utc>>, done: u64, total: u64) -> Option<u64> {
    let elapsed = (Utc::now() - started?).to_std().ok()?.as_secs_f64();
    if done == 0 || done >= total || elapsed <= 0.0 {
        return None;
    }
    let rate = done as f64 / elapsed;
    Some(((total - done) as f64 / rate).ceil() as u64)
}

fn new_batch(
    agency: crate::domain::AgencyId,
    owner: UserId,
    params: &BatchParams,
    source: BatchSource,
    source_key: Option<String>,
    total: usize,
) -> (Task, BatchJob) {
    let now = Utc::now();
    let id = TaskId::generate();
    // Without a title: the file it came from, else its size (an upload's is not known yet).
    let file = source_key.as_deref().and_then(|key| key.rsplit('/').next());
    let title = match (&params.title, file) {
        (Some(title), _) => title.clone(),
        (None, Some(file)) => format!("Batch from {file}"),
        (None, None) => format!("Batch of {total} items"),
    };
    let title = Title::parse(&title).unwrap_or_else(|_| Title::parse("Batch").expect("valid"));
    let task = Task {
        id,
        agency_id: agency.clone(),
        created_by: owner,
        assigned_to: None,
        title: title.clone(),
        description: None,
        task_type: TaskType::Batch,
        priority: params.priority,
        status: TaskStatus::InProgress,
        due_at: None,
        started_at: Some(now),
        completed_at: None,
        result: None,
        error: None,
        metadata: Metadata::default(),
        attachments: Vec::new(),
        executor: Some(params.executor.clone()),
        input: None,
        retry: None,
        auto_dispatch: true,
        required_capability: None,
        attempts: 0,
        queued_at: None,
        queue_wait_ms: None,
        dispatch_id: None,
        lease_expires_at: None,
        agent_reserved: false,
        execution_arn: None,
        promoted_from: None,
        sla_breached_at: None,
        archived_from: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    let batch = BatchJob {
        id,
        task_id: id,
        agency_id: agency,
        title: title.as_str().to_owned(),
        status: BatchStatus::Pending,
        source,
        source_key,
        priority: params.priority,
        executor: params.executor.clone(),
        parallelism: params.parallelism,
        tolerated_failure_percentage: params.tolerated_failure_percentage,
        items_per_batch: params.items_per_batch,
        total_items: total as u64,
        chunk_count: 0,
        processed_items: 0,
        success_items: 0,
        failed_items: 0,
        round: 0,
        manifest_key: None,
        results_key: None,
        execution_arn: None,
        error: None,
        created_at: now,
        started_at: None,
        completed_at: None,
        preparation: None,
    };
    (task, batch)
}
