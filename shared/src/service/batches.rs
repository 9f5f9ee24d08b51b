//! Batch jobs: creation (inline items, an uploaded object, or an S3 upload
//! trigger), chunking into S3 behind a manifest, reading progress, and
//! retrying failed items. The worker side is `BatchRunner`.

use crate::domain::batch_input::{parse_items, InputFormat};
use crate::domain::{
    BatchJob, BatchSource, BatchStatus, Caller, ChunkItem, ExecutorSpec, ItemFailure,
    ManifestEntry, Metadata, Priority, Task, TaskId, TaskStatus, TaskType, Title, UserId,
};
use crate::error::{AppError, FieldErrors};
use crate::executors::ExecutorRegistry;
use crate::ports::{
    BatchCreated, BatchStore, Dispatcher, ObjectStore, Orchestrator, Page, StartOutcome, TaskStore,
};
use chrono::{DateTime, Utc};
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

/// Batch parameters, from a request body or from object metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchParams {
    pub title: Option<String>,
    pub parallelism: u32,
    pub tolerated_failure_percentage: f64,
    pub priority: Priority,
    pub executor: ExecutorSpec,
    pub items_per_batch: u32,
}

impl Default for BatchParams {
    fn default() -> Self {
        Self {
            title: None,
            parallelism: DEFAULT_PARALLELISM,
            tolerated_failure_percentage: 0.0,
            priority: Priority::Background,
            executor: ExecutorSpec {
                kind: "echo".into(),
                config: json!({}),
            },
            items_per_batch: DEFAULT_ITEMS_PER_BATCH,
        }
    }
}

/// Where batch parameters come from: a JSON body, or S3 object metadata (text only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParamSource {
    Body,
    Metadata,
}

/// Reads the parameters, collecting problems. Metadata values are text: numbers are numeric
/// strings and `executor` is JSON text. A body must use JSON numbers and an object.
fn read_params(
    get: &dyn Fn(&str) -> Option<Value>,
    errors: &mut FieldErrors,
    names: &dyn Fn(&str) -> String,
    source: ParamSource,
) -> BatchParams {
    let mut params = BatchParams::default();
    let number = |v: &Value| match source {
        ParamSource::Body => v.as_f64(),
        ParamSource::Metadata => v.as_str().and_then(|s| s.trim().parse().ok()),
    };
    if let Some(v) = get("title") {
        match v.as_str().map(Title::parse) {
            Some(Ok(t)) => params.title = Some(t.as_str().to_owned()),
            _ => errors.add(names("title"), "must be 1–200 characters"),
        }
    }
    if let Some(v) = get("parallelism") {
        match number(&v) {
            Some(n) if n.fract() == 0.0 && (1.0..=f64::from(MAX_PARALLELISM)).contains(&n) => {
                params.parallelism = n as u32
            }
            _ => errors.add(
                names("parallelism"),
                format!("must be a whole number from 1 to {MAX_PARALLELISM}"),
            ),
        }
    }
    if let Some(v) = get("toleratedFailurePercentage") {
        match number(&v) {
            Some(n) if (0.0..=100.0).contains(&n) => params.tolerated_failure_percentage = n,
            _ => errors.add(
                names("toleratedFailurePercentage"),
                "must be a number from 0 to 100",
            ),
        }
    }
    if let Some(v) = get("itemsPerBatch") {
        match number(&v) {
            Some(n) if n.fract() == 0.0 && (1.0..=f64::from(MAX_ITEMS_PER_BATCH)).contains(&n) => {
                params.items_per_batch = n as u32
            }
            _ => errors.add(
                names("itemsPerBatch"),
                format!("must be a whole number from 1 to {MAX_ITEMS_PER_BATCH}"),
            ),
        }
    }
    if let Some(v) = get("priority") {
        match v.as_str().map(str::parse::<Priority>) {
            Some(Ok(p)) => params.priority = p,
            Some(Err(e)) => errors.add(names("priority"), e),
            None => errors.add(names("priority"), "must be a string"),
        }
    }
    if let Some(v) = get("executor") {
        let v = match (source, v) {
            (ParamSource::Metadata, Value::String(text)) => {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            }
            (_, other) => other,
        };
        match super::input::parse_executor(&v) {
            Ok(spec) => params.executor = spec,
            Err(_) => errors.add(
                names("executor"),
                "must be {\"type\": \"echo|http|sleep\", \"config\": {…}} and nothing else",
            ),
        }
    }
    params
}

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
    pub dispatcher: Arc<dyn Dispatcher>,
    pub orchestrator: Arc<dyn Orchestrator>,
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
        let (items, source) = match (inline, source_key.clone()) {
            (Some(items), _) => (items, BatchSource::Inline),
            (None, Some(key)) => {
                let source_error = |problem: &str| {
                    let mut errors = FieldErrors::new();
                    errors.add("source.key", problem);
                    AppError::Validation(errors)
                };
                let bytes = match self
                    .objects
                    .get(&key, crate::domain::batch_input::MAX_INPUT_BYTES)
                    .await
                {
                    Ok(bytes) => bytes,
                    Err(AppError::NotFound { .. }) => return Err(source_error(
                        "nothing was uploaded at this key (PUT the file to the upload URL first)",
                    )),
                    Err(AppError::Conflict(problem)) => return Err(source_error(&problem)),
                    Err(err) => return Err(err),
                };
                let format = InputFormat::from_name(&key).expect("checked above");
                let items = parse_items(&bytes, format).map_err(|problem| {
                    let mut errors = FieldErrors::new();
                    errors.add("source", format!("{key}: {problem}"));
                    AppError::Validation(errors)
                })?;
                (items, BatchSource::Upload)
            }
            (None, None) => unreachable!("validated above"),
        };
        let (task, batch) = new_batch(
            caller.agency.clone(),
            caller.user.clone(),
            &params,
            source,
            source_key,
            items.len(),
        );
        self.batches.create(&task, &batch, None).await?;
        let batch = match self.launch(batch.clone(), &items).await {
            Ok(batch) => batch,
            Err(err) => {
                self.record_start_failure(batch, &err).await;
                return Err(err);
            }
        };
        self.view(batch).await
    }

    /// A batch whose execution could not start is failed with the reason instead of being
    /// left pending. Nothing ran, so the caller simply creates it again.
    async fn record_start_failure(&self, batch: BatchJob, err: &AppError) {
        let id = batch.id;
        let reason = format!("the batch could not start ({err}); nothing ran, create it again");
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
        // Parse before anything runs; any problem becomes the failed batch's error.
        let mut parsed: Result<Vec<Value>, String> = if !errors.is_empty() {
            Err(format!("invalid metadata: {errors}"))
        } else if !self.batches.agency_known(&agency).await? {
            Err(format!("unknown agency '{agency}'"))
        } else {
            match InputFormat::from_name(name) {
                None => Err("unsupported file type; use .json, .jsonl or .csv".into()),
                Some(format) => match self
                    .objects
                    .get(key, crate::domain::batch_input::MAX_INPUT_BYTES)
                    .await
                {
                    Ok(bytes) => parse_items(&bytes, format),
                    Err(AppError::Conflict(problem)) => Err(problem),
                    Err(err) => return Err(err),
                },
            }
        };
        let count = parsed.as_ref().map(Vec::len).unwrap_or(0);
        let (mut task, mut batch) = new_batch(
            agency,
            owner,
            &params,
            BatchSource::S3Trigger,
            Some(key.to_owned()),
            count,
        );
        let dedupe = format!("{}/{key}#{version}", self.objects.bucket());
        let fail = |task: &mut Task, batch: &mut BatchJob, problem: &str| {
            let now = Utc::now();
            batch.status = BatchStatus::Failed;
            batch.error = Some(problem.to_owned());
            batch.completed_at = Some(now);
            task.error = Some(problem.to_owned());
            task.move_to(TaskStatus::Failed, now)
        };
        if let Err(problem) = &parsed {
            fail(&mut task, &mut batch, problem)?;
        }
        let created = match self.batches.create(&task, &batch, Some(&dedupe)).await {
            // Over the agency's daily item quota: redelivering the event cannot help before
            // tomorrow, so the upload's batch is recorded as failed with the reason instead.
            Err(quota @ AppError::QuotaExceeded { .. }) => {
                let problem = quota.to_string();
                fail(&mut task, &mut batch, &problem)?;
                parsed = Err(problem);
                self.batches.create(&task, &batch, Some(&dedupe)).await?
            }
            other => other?,
        };
        if let BatchCreated::Duplicate(first) = created {
            return self
                .redelivered_upload(&batch.agency_id, first, parsed, key)
                .await;
        }
        match parsed {
            Ok(items) => self.launch_upload(batch.clone(), &items).await?,
            Err(problem) => {
                tracing::warn!(key, batch = %batch.id, %problem, "upload rejected; batch recorded as failed")
            }
        }
        Ok(Some(batch.id))
    }

    /// The same upload event again (S3 and SQS deliver at least once). When an earlier
    /// delivery recorded the batch but failed before its execution started, that delivery
    /// was retried for exactly this: start it now. Starting is idempotent by execution name.
    async fn redelivered_upload(
        &self,
        agency: &crate::domain::AgencyId,
        first: TaskId,
        parsed: Result<Vec<Value>, String>,
        key: &str,
    ) -> Result<Option<TaskId>, AppError> {
        match (self.batches.get(agency, first).await?, parsed) {
            (Some(batch), Ok(items)) if batch.status == BatchStatus::Pending => {
                tracing::warn!(key, batch = %first, "the upload's batch never started; starting it now");
                self.launch_upload(batch, &items).await?;
                Ok(Some(first))
            }
            // An earlier delivery recorded the round but could not tell whether its execution
            // started: start it if it did not (its chunks and manifest are written).
            (Some(batch), _) if batch.status == BatchStatus::Processing && batch.round == 0 => {
                let name = format!("{}-r0", batch.id);
                if self.orchestrator.describe(&name).await?.is_some() {
                    tracing::info!(key, batch = %first, "duplicate upload event; the batch runs");
                    return Ok(None);
                }
                let Some(manifest_key) = batch.manifest_key.clone() else {
                    return Err(AppError::internal(
                        "a processing batch without its manifest",
                    ));
                };
                tracing::warn!(key, batch = %first, "the upload's batch was recorded but never started; starting it now");
                let input = self.round_input(&batch, &manifest_key)?;
                match self.orchestrator.start_resolved(&name, &input).await? {
                    StartOutcome::Started => Ok(Some(first)),
                    StartOutcome::NotStarted(err) => Err(err),
                    StartOutcome::Closed(status) => {
                        let err = AppError::Conflict(format!(
                            "execution {name} ended ({}) between a describe and a start",
                            status.as_str()
                        ));
                        self.record_start_failure(batch, &err).await;
                        Ok(Some(first))
                    }
                }
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

    /// Launches an upload's batch. A round that can never start (its execution name already
    /// ended, or the batch was cancelled) fails the batch instead of asking for a redelivery
    /// that would find the same.
    async fn launch_upload(&self, batch: BatchJob, items: &[Value]) -> Result<(), AppError> {
        match self.launch(batch.clone(), items).await {
            Ok(_) => Ok(()),
            Err(err @ AppError::Conflict(_)) => {
                self.record_start_failure(batch, &err).await;
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Writes the chunks and the manifest, then starts the Distributed Map.
    async fn launch(&self, mut batch: BatchJob, items: &[Value]) -> Result<BatchJob, AppError> {
        let indexed: Vec<ChunkItem> = items
            .iter()
            .enumerate()
            .map(|(i, item)| ChunkItem {
                index: i as u64,
                item: item.clone(),
            })
            .collect();
        let before = batch.clone();
        self.run_round(&mut batch, &before, &indexed).await?;
        Ok(batch)
    }

    /// Writes the round's chunks and manifest, records the batch as processing under the
    /// execution it is about to start, then starts it. Recorded first, so a chunk can never
    /// find its batch anything but processing (it would refuse to run, and the batch would
    /// never end). If the start fails, the batch is put back as `before` the round: nothing
    /// ran, and a redelivered upload or a new retry starts it afresh.
    async fn run_round(
        &self,
        batch: &mut BatchJob,
        before: &BatchJob,
        items: &[ChunkItem],
    ) -> Result<(), AppError> {
        let (manifest_key, chunk_count) = self.write_round(batch, items).await?;
        let name = format!("{}-r{}", batch.id, batch.round);
        batch.status = BatchStatus::Processing;
        batch.chunk_count = chunk_count;
        batch.manifest_key = Some(manifest_key.clone());
        batch.execution_arn = Some(self.orchestrator.execution_arn(&name));
        batch.started_at.get_or_insert(Utc::now());
        batch.completed_at = None;
        batch.error = None;
        // Only over the batch as read: one cancelled meanwhile stays cancelled, unstarted.
        if !self
            .batches
            .put_if(batch, before.status, before.round)
            .await?
        {
            let now = self.batches.get(&batch.agency_id, batch.id).await?;
            *batch = before.clone();
            return Err(AppError::Conflict(format!(
                "the batch is {} now; its round was not started",
                now.map_or("gone".to_owned(), |b| b.status.to_string())
            )));
        }
        let input = self.round_input(batch, &manifest_key)?;
        let err = match self.orchestrator.start_resolved(&name, &input).await {
            Ok(StartOutcome::Started) => return Ok(()),
            Ok(StartOutcome::NotStarted(err)) => err,
            // The name is the round's, so an execution that already ended was started for this
            // round before (its record put back or lost): nothing runs it now, and marking it
            // processing would wait forever for a finalizer that has been.
            Ok(StartOutcome::Closed(status)) => AppError::Conflict(format!(
                "execution {name} of round {} had already ended ({}) although the round was not recorded as running",
                batch.round,
                status.as_str()
            )),
            // Neither the start nor a describe answered: it may be running, so the round stays
            // recorded (its chunks must find it processing). A redelivered upload checks again.
            Err(err) => {
                return Err(AppError::Unavailable(format!(
                    "batch {} may not have started ({err}); GET it to see whether it runs",
                    batch.id
                )))
            }
        };
        let put_back = self
            .batches
            .put_if(before, BatchStatus::Processing, batch.round)
            .await;
        if let Err(put_back) = put_back {
            tracing::error!(batch = %batch.id, error = %put_back, start_error = %err, "the round could not start, and the batch could not be put back; it shows processing with no execution");
        }
        *batch = before.clone();
        Err(err)
    }

    /// The state machine input of the batch's current round.
    fn round_input(&self, batch: &BatchJob, manifest_key: &str) -> Result<Value, AppError> {
        let queue_url = self
            .dispatcher
            .queue_url(batch.priority)
            .ok_or_else(|| AppError::internal(format!("no queue for tier {}", batch.priority)))?;
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

    /// Writes the round's chunks and its manifest; returns the manifest's key and the number
    /// of chunks.
    async fn write_round(
        &self,
        batch: &BatchJob,
        items: &[ChunkItem],
    ) -> Result<(String, u32), AppError> {
        let prefix = format!(
            "batches/{}/{}/round-{:03}",
            batch.agency_id, batch.id, batch.round
        );
        let mut manifest = Vec::new();
        for (index, chunk) in items.chunks(batch.items_per_batch as usize).enumerate() {
            let key = format!("{prefix}/chunks/{index:05}.json");
            let body = serde_json::to_vec(chunk).map_err(AppError::internal)?;
            self.objects.put(&key, body, "application/json").await?;
            manifest.push(ManifestEntry {
                key,
                index: index as u32,
                first: chunk[0].index,
                count: chunk.len() as u32,
            });
        }
        let manifest_key = format!("{prefix}/manifest.json");
        self.objects
            .put(
                &manifest_key,
                serde_json::to_vec(&manifest).map_err(AppError::internal)?,
                "application/json",
            )
            .await?;
        Ok((manifest_key, manifest.len() as u32))
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
        let mut failed_indexes = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .batches
                .failures(&caller.agency, id, cursor.as_deref(), 1000)
                .await?;
            failed_indexes.extend(page.items.into_iter().map(|f| f.index));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        if failed_indexes.is_empty() {
            return Err(AppError::Conflict(
                "the batch has no failed items to retry".into(),
            ));
        }
        let items = self.load_items(&batch, &failed_indexes).await?;
        let before = batch.clone();
        batch.round += 1;
        batch.failed_items = items.len() as u64;
        batch.results_key = None;
        self.run_round(&mut batch, &before, &items).await?;
        self.view(batch).await
    }

    /// The original items at `indexes`, read back from the round-0 chunks.
    async fn load_items(
        &self,
        batch: &BatchJob,
        indexes: &[u64],
    ) -> Result<Vec<ChunkItem>, AppError> {
        let per_chunk = u64::from(batch.items_per_batch);
        let mut by_chunk: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
        for index in indexes {
            by_chunk.entry(index / per_chunk).or_default().push(*index);
        }
        let mut items = Vec::new();
        for (chunk, wanted) in by_chunk {
            let key = format!(
                "batches/{}/{}/round-000/chunks/{chunk:05}.json",
                batch.agency_id, batch.id
            );
            let bytes = self.objects.get(&key, 256 * 1024 * 1024).await?;
            let chunk_items: Vec<ChunkItem> =
                serde_json::from_slice(&bytes).map_err(AppError::internal)?;
            items.extend(
                chunk_items
                    .into_iter()
                    .filter(|i| wanted.contains(&i.index)),
            );
        }
        Ok(items)
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
    let title = params
        .title
        .clone()
        .unwrap_or_else(|| format!("Batch of {total} items"));
    let task = Task {
        id,
        agency_id: agency.clone(),
        created_by: owner,
        assigned_to: None,
        title: Title::parse(&title).unwrap_or_else(|_| Title::parse("Batch").expect("valid")),
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
    };
    (task, batch)
}
