//! `BatchRunner`: chunk runs and finalization, against the in-memory ports.

use super::batch_runner::CHUNK_RETRYABLE;
use super::{BatchRunner, Delivery};
use crate::domain::{
    AgencyId, BatchJob, BatchMessage, BatchStatus, Caller, ChunkCounts, ItemFailure, Role, TaskId,
    TaskStatus, UserId,
};
use crate::executors::{ExecError, Executor, ExecutorRegistry, Job, Outcome};
use crate::ports::{BatchStore, ObjectStore, TaskStore};
use crate::services::Services;
use crate::testing::{MemoryBatches, MemoryWorld};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn boss() -> Caller {
    Caller {
        user: UserId::parse("boss").unwrap(),
        agency: AgencyId::parse("a1").unwrap(),
        role: Role::Manager,
    }
}

/// Runs batch items by what they say: `{"fail": why}` fails for good, `{"failUntil": n}`
/// fails while the attempt is at most n, `{"await": true}` waits for a person,
/// `{"takeover": chunk}` lets a newer attempt of that chunk start, `{"cancelBatch": true}`
/// marks the batch cancelled as a cancel would; anything else succeeds with the item doubled.
struct Picky {
    batches: Arc<MemoryBatches>,
    runs: AtomicUsize,
    /// `{"flakyOnce": key}` items fail the first time their key is seen.
    flaky_seen: std::sync::Mutex<std::collections::HashSet<u64>>,
    /// A takeover happens once per test.
    took_over: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Executor for Picky {
    fn validate(&self, _config: &Value) -> Result<(), String> {
        Ok(())
    }

    async fn run(&self, job: &Job<'_>) -> Result<Outcome, ExecError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let item = job.input;
        if let Some(why) = item["fail"].as_str() {
            return Err(ExecError::Permanent(why.into()));
        }
        if let Some(until) = item["failUntil"].as_u64() {
            if u64::from(job.attempt) <= until {
                return Err(ExecError::Retryable(format!("not yet at {}", job.attempt)));
            }
        }
        if let Some(key) = item["flakyOnce"].as_u64() {
            if self.flaky_seen.lock().unwrap().insert(key) {
                return Err(ExecError::Retryable("flaked".into()));
            }
        }
        if item["await"] == json!(true) {
            return Ok(Outcome::AwaitAssignee);
        }
        if item["cancelBatch"] == json!(true) {
            let mut batch = self
                .batches
                .get(&boss().agency, job.task_id)
                .await
                .unwrap()
                .unwrap();
            let (status, round) = (batch.status, batch.round);
            batch.status = BatchStatus::Cancelled;
            assert!(self.batches.put_if(&batch, status, round).await.unwrap());
        }
        if let Some(chunk) = item["takeover"].as_u64() {
            if self.took_over.swap(true, Ordering::SeqCst) {
                return Ok(Outcome::Done(json!({"twice": item})));
            }
            self.batches
                .start_chunk(
                    &boss().agency,
                    job.task_id,
                    job.attempt - 1,
                    chunk as u32,
                    "a-newer-attempt",
                )
                .await
                .unwrap();
        }
        Ok(Outcome::Done(json!({"twice": item})))
    }
}

struct Fixture {
    world: MemoryWorld,
    picky: Arc<Picky>,
    services: Services,
    runner: BatchRunner,
}

impl Fixture {
    fn new() -> Self {
        let world = MemoryWorld::new();
        let picky = Arc::new(Picky {
            batches: world.batches.clone(),
            runs: AtomicUsize::new(0),
            flaky_seen: Default::default(),
            took_over: Default::default(),
        });
        let mut registry = ExecutorRegistry::builtin();
        registry.register("picky", picky.clone());
        let services = world.services_with(registry.clone());
        let runner = services.batch_runner.clone();
        Self {
            world,
            picky,
            services,
            runner,
        }
    }

    /// Creates a batch of `items` run by `picky`, two items per chunk unless `fields` say.
    async fn create(&self, items: Value, fields: Value) -> TaskId {
        let mut body = json!({"items": items, "executor": {"type": "picky"}, "itemsPerBatch": 2});
        for (key, value) in fields.as_object().unwrap() {
            body[key] = value.clone();
        }
        let view = self.services.batches.create(&boss(), &body).await.unwrap();
        for prepared in self
            .world
            .run_preparations(&self.services.batch_preparer)
            .await
        {
            assert_eq!(prepared.unwrap(), crate::service::Prepared::Started);
        }
        let id = self.world.store.all_tasks().pop().unwrap().id;
        assert_eq!(
            self.batch(id).await.status,
            BatchStatus::Processing,
            "{view:?}"
        );
        id
    }

    /// Asks for a retry round and prepares it; answers the retry's own reply.
    async fn retry(&self, id: TaskId) -> super::batches::BatchView {
        let view = self
            .services
            .batches
            .retry_failed(&boss(), id)
            .await
            .unwrap();
        for prepared in self
            .world
            .run_preparations(&self.services.batch_preparer)
            .await
        {
            assert_eq!(prepared.unwrap(), crate::service::Prepared::Started);
        }
        view
    }

    async fn batch(&self, id: TaskId) -> BatchJob {
        self.world
            .batches
            .get(&boss().agency, id)
            .await
            .unwrap()
            .expect("the batch")
    }

    async fn counts(&self, id: TaskId, round: u32) -> ChunkCounts {
        self.world
            .batches
            .round_counts(&boss().agency, id, round)
            .await
            .unwrap()
    }

    async fn failures(&self, id: TaskId) -> Vec<ItemFailure> {
        self.world
            .batches
            .failures(&boss().agency, id, None, 100)
            .await
            .unwrap()
            .items
    }

    /// Every result a chunk wrote, from all its parts, in index order (None: no part).
    fn results(&self, id: TaskId, round: u32, chunk: u32) -> Option<Value> {
        let dir = results_dir(id, round, chunk);
        let objects = self.world.objects.objects.lock().unwrap();
        let mut parts = objects.keys().filter(|k| k.starts_with(&dir)).peekable();
        parts.peek()?;
        let mut results: Vec<Value> = parts
            .flat_map(|key| {
                let part: Vec<Value> = serde_json::from_slice(&objects[key].0).unwrap();
                part
            })
            .collect();
        results.sort_by_key(|r| r["index"].as_u64());
        Some(Value::Array(results))
    }

    async fn object(&self, key: &str) -> Option<Value> {
        self.world
            .objects
            .get(key, usize::MAX)
            .await
            .ok()
            .map(|bytes| serde_json::from_slice(&bytes).unwrap())
    }

    /// (token, "success" | error name, output or cause)
    fn answers(&self) -> Vec<(String, String, String)> {
        self.world.orchestrator.answers.lock().unwrap().clone()
    }

    fn answer(&self, token: &str) -> Option<(String, String)> {
        self.answers()
            .into_iter()
            .rev()
            .find(|(t, _, _)| t == token)
            .map(|(_, kind, detail)| (kind, detail))
    }
}

fn chunk(id: TaskId, round: u32, index: u32) -> BatchMessage {
    BatchMessage::Chunk {
        batch_id: id,
        agency_id: boss().agency,
        chunk_key: format!("batches/a1/{id}/round-{round:03}/chunks/{index:05}.json"),
        chunk_index: index,
        round,
        task_token: format!("chunk-{round}-{index}"),
    }
}

fn finalize(id: TaskId, round: u32) -> BatchMessage {
    BatchMessage::BatchFinalize {
        batch_id: id,
        agency_id: boss().agency,
        round,
        task_token: format!("finalize-{round}"),
    }
}

/// Where a chunk's result parts go.
fn results_dir(id: TaskId, round: u32, chunk: u32) -> String {
    format!("batches/a1/{id}/round-{round:03}/results/{chunk:05}/")
}

fn succeeded(output: &str) -> Option<(String, String)> {
    Some(("success".into(), output.into()))
}

#[tokio::test]
async fn a_chunk_runs_its_items_counts_them_and_writes_its_results() {
    let f = Fixture::new();
    let id = f
        .create(
            json!([1, {"fail": "bad item"}, 3, {"await": true}]),
            json!({}),
        )
        .await;

    assert_eq!(f.runner.process(chunk(id, 0, 0)).await, Delivery::Ack);
    assert_eq!(f.answer("chunk-0-0"), succeeded(r#"{"status":"done"}"#));
    assert_eq!(
        f.counts(id, 0).await,
        ChunkCounts {
            processed: 2,
            success: 1,
            failed: 1
        }
    );
    assert_eq!(
        f.results(id, 0, 0),
        Some(json!([
            {"index": 0, "status": "completed", "result": {"twice": 1}},
            {"index": 1, "status": "failed", "error": "bad item"},
        ]))
    );

    assert_eq!(f.runner.process(chunk(id, 0, 1)).await, Delivery::Ack);
    assert_eq!(
        f.counts(id, 0).await,
        ChunkCounts {
            processed: 4,
            success: 2,
            failed: 2
        }
    );
    assert_eq!(
        f.results(id, 0, 1).unwrap()[1],
        json!({"index": 3, "status": "failed", "error": "the manual executor cannot run batch items"})
    );
    assert_eq!(
        f.failures(id).await,
        vec![
            ItemFailure {
                index: 1,
                error: "bad item".into()
            },
            ItemFailure {
                index: 3,
                error: "the manual executor cannot run batch items".into()
            },
        ]
    );
    assert_eq!(f.picky.runs.load(Ordering::SeqCst), 4);
    assert_eq!(
        f.world.orchestrator.heartbeats.lock().unwrap().as_slice(),
        ["chunk-0-0", "chunk-0-1"],
        "one heartbeat per chunk, at its start (is the token still open?), and none while it \
         runs under 30 s"
    );
}

/// Chunks are read with a generous size limit (256 MiB): a chunk of a few hundred kilobytes runs.
#[tokio::test]
async fn a_large_chunk_is_read_and_run() {
    let f = Fixture::new();
    // About 2 MB: above the sizes a mistyped limit (256 + 1024 * 1024 bytes) would allow.
    let items: Vec<Value> = (0..100).map(|n| json!(format!("{n:0>20000}"))).collect();
    let id = f
        .create(Value::Array(items), json!({"itemsPerBatch": 100}))
        .await;
    f.runner.process(chunk(id, 0, 0)).await;
    assert_eq!(f.answer("chunk-0-0"), succeeded(r#"{"status":"done"}"#));
    assert_eq!(f.counts(id, 0).await.success, 100);
}

#[tokio::test]
async fn a_chunk_of_a_missing_batch_fails_its_token_for_good() {
    let f = Fixture::new();
    let gone = TaskId::generate();
    assert_eq!(f.runner.process(chunk(gone, 0, 0)).await, Delivery::Ack);
    assert_eq!(
        f.answer("chunk-0-0"),
        Some((
            "Taskflow.Permanent".into(),
            "the batch no longer exists".into()
        ))
    );
    assert_eq!(f.picky.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_chunk_of_a_settled_batch_or_another_round_fails_its_token_for_good() {
    let f = Fixture::new();
    let id = f.create(json!([1, 2]), json!({})).await;
    assert_eq!(f.runner.process(chunk(id, 1, 0)).await, Delivery::Ack);
    assert_eq!(
        f.answer("chunk-1-0"),
        Some((
            "Taskflow.Permanent".into(),
            "batch is processing (round 0)".into()
        ))
    );

    let mut batch = f.batch(id).await;
    batch.status = BatchStatus::Completed;
    f.world.batches.put(&batch).await.unwrap();
    assert_eq!(f.runner.process(chunk(id, 0, 0)).await, Delivery::Ack);
    assert_eq!(
        f.answer("chunk-0-0"),
        Some((
            "Taskflow.Permanent".into(),
            "batch is completed (round 0)".into()
        ))
    );
    assert_eq!(f.picky.runs.load(Ordering::SeqCst), 0);
    assert_eq!(f.counts(id, 0).await, ChunkCounts::default());
}

#[tokio::test]
async fn an_unreadable_chunk_fails_its_token_as_retryable() {
    let f = Fixture::new();
    let id = f.create(json!([1, 2]), json!({})).await;
    assert_eq!(f.runner.process(chunk(id, 0, 7)).await, Delivery::Ack);
    let (error, cause) = f.answer("chunk-0-7").unwrap();
    assert_eq!(error, CHUNK_RETRYABLE);
    assert_eq!(CHUNK_RETRYABLE, "Taskflow.Retryable");
    assert!(
        cause.starts_with(&format!(
            "reading batches/a1/{id}/round-000/chunks/00007.json: "
        )),
        "{cause}"
    );
    assert_eq!(f.picky.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_chunk_that_is_not_json_is_retried_without_answering() {
    let f = Fixture::new();
    let id = f.create(json!([1, 2]), json!({})).await;
    let BatchMessage::Chunk { chunk_key, .. } = chunk(id, 0, 0) else {
        unreachable!()
    };
    f.world
        .objects
        .put(&chunk_key, b"not json".to_vec(), "application/json")
        .await
        .unwrap();
    assert_eq!(
        f.runner.process(chunk(id, 0, 0)).await,
        Delivery::RetryAfter(Duration::from_secs(5))
    );
    assert!(f.answers().is_empty());
}

#[tokio::test]
async fn a_batch_whose_executor_cannot_run_fails_the_chunk_for_good() {
    let f = Fixture::new();
    let id = f.create(json!([1, 2]), json!({})).await;
    let runner = BatchRunner {
        executors: ExecutorRegistry::empty(),
        ..f.runner.clone()
    };
    assert_eq!(runner.process(chunk(id, 0, 0)).await, Delivery::Ack);
    let (error, cause) = f.answer("chunk-0-0").unwrap();
    assert_eq!(error, "Taskflow.Permanent");
    assert!(cause.starts_with("unknown executor 'picky'"), "{cause}");
    assert_eq!(f.counts(id, 0).await, ChunkCounts::default());
}

#[tokio::test]
async fn a_chunk_delivered_twice_runs_and_counts_each_item_once() {
    let f = Fixture::new();
    let id = f.create(json!([1, {"fail": "bad"}]), json!({})).await;
    f.runner.process(chunk(id, 0, 0)).await;
    assert_eq!(f.runner.process(chunk(id, 0, 0)).await, Delivery::Ack);
    assert_eq!(
        f.picky.runs.load(Ordering::SeqCst),
        2,
        "the second delivery skipped the items the first had done"
    );
    assert_eq!(
        f.answers().len(),
        2,
        "each delivery answers the token (a closed token's answer is ignored)"
    );
    assert_eq!(
        f.counts(id, 0).await,
        ChunkCounts {
            processed: 2,
            success: 1,
            failed: 1
        }
    );
    assert_eq!(f.failures(id).await.len(), 1);
    f.runner.process(finalize(id, 0)).await;
    let batch = f.batch(id).await;
    assert_eq!(
        (
            batch.processed_items,
            batch.success_items,
            batch.failed_items
        ),
        (2, 1, 1)
    );
}

/// A newer attempt of the chunk started while this one runs (its message came back):
/// the older attempt stops at its next flush and answers nothing.
#[tokio::test]
async fn an_attempt_overtaken_by_a_newer_one_stops_and_answers_nothing() {
    let f = Fixture::new();
    let mut items = vec![json!({"takeover": 0})];
    items.extend((1..100).map(|n| json!(n)));
    let id = f
        .create(Value::Array(items), json!({"itemsPerBatch": 100}))
        .await;
    assert_eq!(f.runner.process(chunk(id, 0, 0)).await, Delivery::Ack);
    let runs = f.picky.runs.load(Ordering::SeqCst);
    assert!(
        (50..100).contains(&runs),
        "it stopped at its first flush, after 50 items: {runs}"
    );
    assert_eq!(
        f.counts(id, 0).await,
        ChunkCounts::default(),
        "nothing counted against the newer attempt"
    );
    assert!(f.answers().is_empty());
    // Its last part may be written (results go first, so that a counted item always has one);
    // the newer attempt reruns those items and writes them again, under the same indexes.
    let written = f
        .results(id, 0, 0)
        .map_or(0, |r| r.as_array().unwrap().len());
    assert!(written <= runs, "{written} results from {runs} runs");
}

#[tokio::test]
async fn finalize_settles_a_batch_within_its_tolerance_as_completed() {
    let f = Fixture::new();
    let id = f
        .create(
            json!([1, {"fail": "bad"}, 3, 4]),
            json!({"toleratedFailurePercentage": 25}),
        )
        .await;
    f.runner.process(chunk(id, 0, 0)).await;
    f.runner.process(chunk(id, 0, 1)).await;
    assert_eq!(f.runner.process(finalize(id, 0)).await, Delivery::Ack);
    assert_eq!(
        f.answer("finalize-0"),
        succeeded(r#"{"status":"finalized"}"#)
    );

    let batch = f.batch(id).await;
    assert_eq!(batch.status, BatchStatus::Completed);
    assert_eq!(
        (
            batch.processed_items,
            batch.success_items,
            batch.failed_items
        ),
        (4, 3, 1)
    );
    assert_eq!(batch.error, None);
    assert!(batch.completed_at.is_some());
    let summary_key = format!("batches/a1/{id}/round-000/results/summary.json");
    assert_eq!(batch.results_key.as_deref(), Some(summary_key.as_str()));
    let summary = f.object(&summary_key).await.unwrap();
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["round"], 0);
    assert_eq!(
        (
            &summary["totalItems"],
            &summary["successItems"],
            &summary["failedItems"]
        ),
        (&json!(4), &json!(3), &json!(1))
    );
    assert_eq!(summary["chunkCount"], 2);
    assert_eq!(
        summary["resultsPrefix"],
        format!("batches/a1/{id}/round-000/results/")
    );
    assert_eq!(
        summary["failures"],
        format!("GET /api/batches/{id}/failures")
    );
    assert!(summary["durationSeconds"].as_f64().unwrap() > 0.0);

    let task = f
        .world
        .store
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!((task.error, task.result), (None, Some(summary)));
}

#[tokio::test]
async fn finalize_fails_a_batch_above_its_tolerance_and_its_task() {
    let f = Fixture::new();
    let id = f
        .create(
            json!([1, {"fail": "bad"}, 3, 4]),
            json!({"toleratedFailurePercentage": 24.9}),
        )
        .await;
    f.runner.process(chunk(id, 0, 0)).await;
    f.runner.process(chunk(id, 0, 1)).await;
    f.runner.process(finalize(id, 0)).await;
    let batch = f.batch(id).await;
    assert_eq!(batch.status, BatchStatus::Failed);
    let error = "1 of 4 items failed (25.00 %), above the tolerated 24.9 %";
    assert_eq!(batch.error.as_deref(), Some(error));
    let task = f
        .world
        .store
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error.as_deref(), Some(error));
    assert_eq!(task.result.unwrap()["status"], "failed");
}

#[tokio::test]
async fn items_of_chunks_that_never_reported_count_as_failed() {
    let f = Fixture::new();
    let id = f
        .create(
            json!([1, 2, 3, 4, 5]),
            json!({"toleratedFailurePercentage": 10}),
        )
        .await;
    f.runner.process(chunk(id, 0, 0)).await;
    f.runner.process(chunk(id, 0, 1)).await;
    // Chunk 2 (item 4) was lost: its map iteration failed and never reported.
    f.runner.process(finalize(id, 0)).await;
    let batch = f.batch(id).await;
    assert_eq!(
        (
            batch.processed_items,
            batch.success_items,
            batch.failed_items
        ),
        (5, 4, 1)
    );
    assert_eq!(batch.status, BatchStatus::Failed);
    assert_eq!(
        batch.error.as_deref(),
        Some("1 items failed, 1 of them in chunks that could not run")
    );
}

#[tokio::test]
async fn a_retry_round_clears_healed_failures_and_reopens_the_task() {
    let f = Fixture::new();
    let id = f
        .create(
            json!([{"failUntil": 1}, 2, {"failUntil": 1}, {"fail": "never"}]),
            json!({"toleratedFailurePercentage": 25}),
        )
        .await;
    f.runner.process(chunk(id, 0, 0)).await;
    f.runner.process(chunk(id, 0, 1)).await;
    f.runner.process(finalize(id, 0)).await;
    assert_eq!(f.batch(id).await.status, BatchStatus::Failed);
    let failed: Vec<u64> = f.failures(id).await.iter().map(|x| x.index).collect();
    assert_eq!(failed, [0, 2, 3]);

    f.retry(id).await;
    assert_eq!(f.batch(id).await.round, 1);
    // Round 1 holds items 0, 2 (chunk 0) and 3 (chunk 1).
    f.runner.process(chunk(id, 1, 0)).await;
    f.runner.process(chunk(id, 1, 1)).await;
    assert_eq!(f.answer("chunk-1-1"), succeeded(r#"{"status":"done"}"#));
    let failures = f.failures(id).await;
    assert_eq!(
        failures,
        vec![ItemFailure {
            index: 3,
            error: "never".into()
        }]
    );
    assert_eq!(
        f.counts(id, 1).await,
        ChunkCounts {
            processed: 3,
            success: 2,
            failed: 1
        }
    );

    f.runner.process(finalize(id, 1)).await;
    let batch = f.batch(id).await;
    assert_eq!(
        (
            batch.status,
            batch.processed_items,
            batch.success_items,
            batch.failed_items
        ),
        (BatchStatus::Completed, 4, 3, 1)
    );
    let summary_key = format!("batches/a1/{id}/round-001/results/summary.json");
    assert_eq!(batch.results_key.as_deref(), Some(summary_key.as_str()));
    let task = f
        .world
        .store
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((task.status, task.error), (TaskStatus::Completed, None));
}

#[tokio::test]
async fn a_round_whose_chunks_were_lost_counts_its_items_as_failed() {
    let f = Fixture::new();
    let id = f
        .create(json!([1, {"fail": "bad"}, 3, {"fail": "bad"}]), json!({}))
        .await;
    f.runner.process(chunk(id, 0, 0)).await;
    f.runner.process(chunk(id, 0, 1)).await;
    f.runner.process(finalize(id, 0)).await;
    f.retry(id).await;
    // No chunk of round 1 reports.
    f.runner.process(finalize(id, 1)).await;
    let batch = f.batch(id).await;
    assert_eq!(
        (batch.success_items, batch.failed_items, batch.status),
        (2, 2, BatchStatus::Failed)
    );
    assert_eq!(
        batch.error.as_deref(),
        Some("2 items failed, 2 of them in chunks that could not run")
    );
}

#[tokio::test]
async fn finalize_for_a_gone_batch_only_answers() {
    let f = Fixture::new();
    assert_eq!(
        f.runner.process(finalize(TaskId::generate(), 0)).await,
        Delivery::Ack
    );
    assert_eq!(f.answer("finalize-0"), succeeded(r#"{"status":"gone"}"#));
}

#[tokio::test]
async fn finalize_of_a_settled_batch_or_another_round_only_answers() {
    let f = Fixture::new();
    let id = f.create(json!([1, 2]), json!({})).await;
    f.runner.process(chunk(id, 0, 0)).await;
    let before = f.batch(id).await;
    // A finalize of a round that is not the batch's changes nothing.
    f.runner.process(finalize(id, 3)).await;
    assert_eq!(
        f.answer("finalize-3"),
        succeeded(r#"{"status":"finalized"}"#)
    );
    assert_eq!(f.batch(id).await, before);

    f.runner.process(finalize(id, 0)).await;
    let settled = f.batch(id).await;
    assert_eq!(settled.status, BatchStatus::Completed);
    let task = f
        .world
        .store
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    // Redelivered: the settled batch and its task stay as they are.
    f.runner.process(finalize(id, 0)).await;
    assert_eq!(f.batch(id).await, settled);
    assert_eq!(
        f.world
            .store
            .get(&boss().agency, id)
            .await
            .unwrap()
            .unwrap(),
        task
    );
    let finalized = f
        .answers()
        .iter()
        .filter(|(t, _, _)| t == "finalize-0")
        .count();
    assert_eq!(finalized, 2);
}

#[tokio::test]
async fn finalize_retries_when_the_batch_cannot_be_written() {
    let f = Fixture::new();
    let id = f.create(json!([1, 2]), json!({})).await;
    f.runner.process(chunk(id, 0, 0)).await;
    f.world
        .batches
        .refuse_next_put
        .store(true, Ordering::SeqCst);
    assert_eq!(
        f.runner.process(finalize(id, 0)).await,
        Delivery::RetryAfter(Duration::from_secs(5))
    );
    assert_eq!(
        f.answer("finalize-0"),
        None,
        "the token waits for the retry"
    );
    assert_eq!(f.batch(id).await.status, BatchStatus::Processing);
    assert_eq!(f.runner.process(finalize(id, 0)).await, Delivery::Ack);
    assert_eq!(f.batch(id).await.status, BatchStatus::Completed);
}

#[tokio::test]
async fn a_chunk_starts_no_item_after_its_batch_is_cancelled() {
    let f = Fixture::new();
    let mut items: Vec<Value> = (0..200).map(|i| json!(i)).collect();
    items[3] = json!({"cancelBatch": true});
    let id = f
        .create(Value::Array(items), json!({"itemsPerBatch": 200}))
        .await;
    assert_eq!(f.runner.process(chunk(id, 0, 0)).await, Delivery::Ack);
    // The first flush (after 50 items) finds the batch cancelled; only the items already
    // started (at most 16 more) run after it, and each run is recorded.
    let runs = f.picky.runs.load(Ordering::SeqCst) as u64;
    assert!((50..=66).contains(&runs), "{runs} of 200 items ran");
    assert_eq!(f.counts(id, 0).await.processed, runs);
    assert_eq!(
        f.answer("chunk-0-0"),
        Some((
            "Taskflow.Permanent".into(),
            "the batch was cancelled".into()
        )),
        "the chunk's child ends even where StopExecution did not take effect"
    );
    assert_eq!(f.batch(id).await.status, BatchStatus::Cancelled);
}

#[tokio::test]
async fn a_cancelled_batch_stays_cancelled_and_its_finalizer_changes_nothing() {
    let f = Fixture::new();
    let id = f.create(json!([1, 2, 3, 4]), json!({})).await;
    assert_eq!(f.runner.process(chunk(id, 0, 0)).await, Delivery::Ack);
    let cancelled = f.services.tasks.cancel(&boss(), id, None).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    let batch = f.batch(id).await;
    assert_eq!(batch.status, BatchStatus::Cancelled);
    assert_eq!(
        *f.world.orchestrator.stopped.lock().unwrap(),
        [batch.execution_arn.clone().unwrap()],
        "its execution is stopped"
    );

    // Where the stop did not take effect, the next chunk refuses and the finalizer only answers.
    assert_eq!(f.runner.process(chunk(id, 0, 1)).await, Delivery::Ack);
    assert_eq!(
        f.picky.runs.load(Ordering::SeqCst),
        2,
        "chunk 1 ran nothing"
    );
    assert_eq!(f.runner.process(finalize(id, 0)).await, Delivery::Ack);
    assert_eq!(
        f.answer("finalize-0"),
        succeeded(r#"{"status":"finalized"}"#)
    );
    assert_eq!(f.batch(id).await, batch, "the batch as the cancel left it");
    let task = f
        .world
        .store
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.status, TaskStatus::Cancelled);
    assert_eq!(task.result, None);

    // Cancelled is final: no retry round.
    let err = f
        .services
        .batches
        .retry_failed(&boss(), id)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, crate::AppError::Conflict(m) if m.contains("cancelled")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_finalizer_never_settles_a_cancelled_task() {
    // The task was cancelled but its batch could not be marked (the store was out): the
    // batch's work finishes and is recorded, the task stays cancelled.
    let f = Fixture::new();
    let id = f.create(json!([1, 2]), json!({})).await;
    f.world
        .batches
        .refuse_next_put
        .store(true, Ordering::SeqCst);
    let err = f
        .services
        .tasks
        .cancel(&boss(), id, None)
        .await
        .unwrap_err();
    assert!(matches!(err, crate::AppError::Unavailable(_)), "{err:?}");
    assert_eq!(f.batch(id).await.status, BatchStatus::Processing);
    f.runner.process(chunk(id, 0, 0)).await;
    assert_eq!(f.runner.process(finalize(id, 0)).await, Delivery::Ack);
    assert_eq!(f.batch(id).await.status, BatchStatus::Completed);
    let task = f
        .world
        .store
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.status, TaskStatus::Cancelled, "never overwritten");
}

#[tokio::test]
async fn cancelling_again_finishes_a_cancel_whose_batch_part_failed() {
    let f = Fixture::new();
    let id = f.create(json!([1, 2]), json!({})).await;
    f.world
        .batches
        .refuse_next_put
        .store(true, Ordering::SeqCst);
    assert!(f.services.tasks.cancel(&boss(), id, None).await.is_err());
    assert!(f.world.orchestrator.stopped.lock().unwrap().is_empty());
    let again = f.services.tasks.cancel(&boss(), id, None).await.unwrap();
    assert_eq!(again.status, TaskStatus::Cancelled);
    assert_eq!(f.batch(id).await.status, BatchStatus::Cancelled);
    assert_eq!(f.world.orchestrator.stopped.lock().unwrap().len(), 1);
    // Once done, cancelling yet again changes nothing and stops nothing new.
    f.services.tasks.cancel(&boss(), id, None).await.unwrap();
    assert_eq!(f.world.orchestrator.stopped.lock().unwrap().len(), 1);
}

/// Known bug, kept as a failing test: an item that failed in an overtaken (or crashed)
/// attempt of a round-0 chunk and then succeeded in the chunk's next attempt stays in the
/// failures list, because successes clear failures only in rounds after the first. The
/// counts say 0 failed, GET …/failures lists the item, and retry-failed reruns it, counting
/// its success twice.
#[tokio::test]
async fn an_item_that_succeeds_on_the_chunks_next_attempt_is_no_longer_a_failure() {
    let f = Fixture::new();
    let mut items = vec![json!({"takeover": 0}), json!({"flakyOnce": 1})];
    items.extend((2..100).map(|n| json!(n)));
    let id = f
        .create(Value::Array(items), json!({"itemsPerBatch": 100}))
        .await;
    // The first attempt flushes its failure of item 1 and stops: it was overtaken.
    f.runner.process(chunk(id, 0, 0)).await;
    // The chunk's message comes back; this attempt runs everything and item 1 succeeds.
    f.runner.process(chunk(id, 0, 0)).await;
    assert_eq!(
        f.counts(id, 0).await,
        ChunkCounts {
            processed: 100,
            success: 100,
            failed: 0
        }
    );
    assert_eq!(f.failures(id).await, vec![], "item 1 succeeded");
}

/// Clearing failure records costs a delete per item: a chunk's first attempt in round 0 has
/// none to clear and sends none.
#[tokio::test]
async fn a_first_attempt_in_round_zero_clears_no_failures() {
    let f = Fixture::new();
    let id = f
        .create(
            Value::Array((0..10).map(|n| json!(n)).collect()),
            json!({"itemsPerBatch": 10}),
        )
        .await;
    f.runner.process(chunk(id, 0, 0)).await;
    assert_eq!(f.counts(id, 0).await.processed, 10);
    assert!(f.counts(id, 0).await.success > 0);
    assert_eq!(f.world.batches.cleared.load(Ordering::SeqCst), 0);
}

/// The summary's duration and rate come from the batch's start.
#[tokio::test]
async fn the_summary_measures_the_batch_from_its_start() {
    let f = Fixture::new();
    let id = f.create(json!([1, 3, 4, 5]), json!({})).await;
    let mut batch = f.batch(id).await;
    batch.started_at = Some(chrono::Utc::now() - chrono::Duration::seconds(10));
    f.world.batches.put(&batch).await.unwrap();
    f.runner.process(chunk(id, 0, 0)).await;
    f.runner.process(chunk(id, 0, 1)).await;
    f.runner.process(finalize(id, 0)).await;
    let task = f
        .world
        .store
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    let summary = task.result.expect("the summary");
    let seconds = summary["durationSeconds"].as_f64().unwrap();
    assert!((10.0..11.0).contains(&seconds), "{summary}");
    let rate = summary["itemsPerSecond"].as_f64().unwrap();
    assert!((0.3..=0.4).contains(&rate), "{summary}");
}

/// A chunk that cannot finish before its invocation's deadline stops starting items after its
/// first wave, records them, and asks for a new delivery, which runs only the rest: no item
/// runs twice because of the deadline (before, a chunk ran to the Timeout, was killed, and
/// restarted from item 0).
#[tokio::test]
async fn a_chunk_out_of_time_hands_off_and_its_next_delivery_runs_only_the_rest() {
    let f = Fixture::new();
    let id = f
        .create(
            Value::Array((0..40).map(|n| json!(n)).collect()),
            json!({"itemsPerBatch": 40}),
        )
        .await;
    // A deadline too near for any item after the first wave.
    let near = Some(std::time::Instant::now() + Duration::from_millis(50));
    assert_eq!(
        f.runner.process_until(chunk(id, 0, 0), near).await,
        Delivery::Requeue
    );
    let first = f.picky.runs.load(Ordering::SeqCst);
    assert_eq!(first, 16, "one wave of concurrent items");
    assert_eq!(f.counts(id, 0).await.processed, 16);
    assert_eq!(f.answer("chunk-0-0"), None, "not answered yet");
    assert_eq!(
        f.world.orchestrator.heartbeats.lock().unwrap().as_slice(),
        ["chunk-0-0", "chunk-0-0"],
        "at the start, and to keep the token alive for the next delivery"
    );

    assert_eq!(f.runner.process(chunk(id, 0, 0)).await, Delivery::Ack);
    assert_eq!(
        f.picky.runs.load(Ordering::SeqCst),
        40,
        "each item ran once"
    );
    assert_eq!(
        f.counts(id, 0).await,
        ChunkCounts {
            processed: 40,
            success: 40,
            failed: 0
        }
    );
    let results = f.results(id, 0, 0).unwrap();
    let indexes: Vec<u64> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, (0..40).collect::<Vec<u64>>());
    assert_eq!(f.answer("chunk-0-0"), succeeded(r#"{"status":"done"}"#));
}

/// The summary is also the task's result, on the task item: it stays small for any number of
/// chunks (it listed one key per chunk, past 400 KB at about 5,500 chunks).
#[tokio::test]
async fn the_summary_on_the_task_stays_small_for_any_number_of_chunks() {
    let f = Fixture::new();
    let id = f.create(json!([1, 2]), json!({})).await;
    f.runner.process(chunk(id, 0, 0)).await;
    let mut batch = f.batch(id).await;
    batch.chunk_count = 100_000;
    f.world.batches.put(&batch).await.unwrap();
    f.runner.process(finalize(id, 0)).await;
    let task = f
        .world
        .store
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    let result = serde_json::to_vec(&task.result).unwrap();
    assert!(
        result.len() < 1024,
        "{} bytes: {}",
        result.len(),
        String::from_utf8_lossy(&result)
    );
    assert_eq!(task.result.unwrap()["chunkCount"], 100_000);
}

/// moto registers a waiting token's heartbeat only after sending its message: a chunk picked up
/// at once is told its token is unknown, and is asked again before it is dropped.
#[tokio::test(start_paused = true)]
async fn a_chunk_whose_token_is_not_yet_registered_is_asked_again_and_runs() {
    let f = Fixture::new();
    let id = f.create(json!([1, 2]), json!({})).await;
    f.world
        .orchestrator
        .unregistered_beats
        .store(2, Ordering::SeqCst);
    assert_eq!(f.runner.process(chunk(id, 0, 0)).await, Delivery::Ack);
    assert_eq!(f.picky.runs.load(Ordering::SeqCst), 2);
    assert_eq!(f.answer("chunk-0-0"), succeeded(r#"{"status":"done"}"#));
}

/// A chunk that waited in the queue past its token (Step Functions timed it out and sent a
/// retry) is dropped: it neither runs nor takes the chunk over from the live copy.
#[tokio::test(start_paused = true)]
async fn a_copy_whose_token_is_closed_neither_runs_nor_takes_over() {
    let f = Fixture::new();
    let id = f.create(json!([1, 2]), json!({})).await;
    f.world
        .orchestrator
        .closed
        .lock()
        .unwrap()
        .insert("chunk-0-0".into());
    assert_eq!(f.runner.process(chunk(id, 0, 0)).await, Delivery::Ack);
    assert_eq!(f.picky.runs.load(Ordering::SeqCst), 0);
    assert_eq!(f.answer("chunk-0-0"), None);

    let BatchMessage::Chunk {
        batch_id,
        agency_id,
        chunk_key,
        chunk_index,
        round,
        ..
    } = chunk(id, 0, 0)
    else {
        unreachable!()
    };
    let retried = BatchMessage::Chunk {
        batch_id,
        agency_id,
        chunk_key,
        chunk_index,
        round,
        task_token: "retried".into(),
    };
    assert_eq!(f.runner.process(retried).await, Delivery::Ack);
    assert_eq!(f.picky.runs.load(Ordering::SeqCst), 2);
    assert_eq!(f.answer("retried"), succeeded(r#"{"status":"done"}"#));
}

/// While a retry round runs, the counts add up: processed = success + failed, with the items
/// being retried counted in neither until they settle again (the retry-failed reply showed
/// `failedItems: 2` with `processedItems: 0`).
#[tokio::test]
async fn a_retry_round_reports_counts_that_add_up() {
    let f = Fixture::new();
    let id = f
        .create(
            json!([1, {"failUntil": 1}, 3, {"fail": "never"}]),
            json!({"toleratedFailurePercentage": 100}),
        )
        .await;
    f.runner.process(chunk(id, 0, 0)).await;
    f.runner.process(chunk(id, 0, 1)).await;
    f.runner.process(finalize(id, 0)).await;

    let view = f.retry(id).await;
    let counts = |v: &super::batches::BatchView| {
        (
            v.batch.processed_items,
            v.batch.success_items,
            v.batch.failed_items,
        )
    };
    assert_eq!(
        counts(&view),
        (2, 2, 0),
        "the two retried items are pending"
    );

    // Round 1: item 1 now succeeds, item 3 fails again.
    f.runner.process(chunk(id, 1, 0)).await;
    let view = f.services.batches.get(&boss(), id).await.unwrap();
    let (processed, success, failed) = counts(&view);
    assert_eq!(processed, success + failed, "{:?}", counts(&view));
    f.runner.process(chunk(id, 1, 1)).await;
    let view = f.services.batches.get(&boss(), id).await.unwrap();
    assert_eq!(counts(&view), (4, 3, 1));
}

/// A chunk holds a slot of its agency's cap on the batch's tier like a task run: over the cap
/// while another agency waits, its delivery is deferred before anything runs or is counted;
/// once a slot frees it runs, once, and gives its slot back.
#[tokio::test]
async fn a_chunk_over_its_agencys_cap_is_deferred_and_runs_once_a_slot_frees() {
    use crate::ports::InFlightSlots;
    use crate::service::fairness::{Fairness, DEFER_DELAY};
    use crate::testing::MemorySlots;
    let f = Fixture::new();
    let id = f.create(json!([1, 2]), json!({})).await;
    let slots = Arc::new(MemorySlots::default());
    let tier = f.batch(id).await.priority;
    let runner = BatchRunner {
        fairness: Some(Fairness::new(
            slots.clone(),
            std::collections::BTreeMap::from([(tier, 1)]),
        )),
        ..f.runner.clone()
    };
    let now = chrono::Utc::now();
    let later = now + chrono::Duration::seconds(60);
    slots
        .acquire(&boss().agency, tier, "a-task-run", later, None, now)
        .await
        .unwrap();
    let other = AgencyId::parse("other").unwrap();
    slots.stamp_demand(tier, &other, now).await.unwrap();

    assert_eq!(
        runner.process(chunk(id, 0, 0)).await,
        Delivery::Defer(DEFER_DELAY)
    );
    assert_eq!(f.picky.runs.load(Ordering::SeqCst), 0, "nothing ran");
    assert_eq!(f.counts(id, 0).await, ChunkCounts::default());
    assert_eq!(f.answer("chunk-0-0"), None, "its token is not answered");

    slots
        .release(&boss().agency, tier, "a-task-run")
        .await
        .unwrap();
    assert_eq!(runner.process(chunk(id, 0, 0)).await, Delivery::Ack);
    assert_eq!(f.picky.runs.load(Ordering::SeqCst), 2);
    assert_eq!(f.answer("chunk-0-0"), succeeded(r#"{"status":"done"}"#));
    assert_eq!(
        slots
            .held(&boss().agency, tier, chrono::Utc::now())
            .await
            .unwrap(),
        0,
        "its slot is given back"
    );
}
