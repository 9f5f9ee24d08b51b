//! The scale scenario (issue 13, "Scale, measured"), on a stack of its own whose functions run
//! as their release binaries under the local Lambda runtime, with the template's `Timeout` and
//! `MemorySize` enforced:
//! - a large upload (100,000 items; 10,000 with QUICK=1) under `uploads/<agency>/`: the batch
//!   preparer's peak memory, preparation time and passes against its `MemorySize` and `Timeout`;
//! - a batch whose chunks outnumber its tier's capacity (`MaximumConcurrency` × `BatchSize`) 10
//!   to 1, its items posted by the `http` executor to a counting endpoint on 127.0.0.1: every
//!   item runs exactly once, and no chunk times out while it waits in the queue.

use crate::client::{between, Api};
use crate::stats::round;
use anyhow::{ensure, Context, Result};
use local_stack::provision::FunctionEvent;
use local_stack::{Backend, FunctionHost, LocalStack, StackOptions};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::info;

const PREPARER: &str = "BatchTriggerFunction";
const WORKER: &str = "WorkerFunction";
/// The tier of the overloaded batch, and its event source in template.yaml.
const OVERLOAD_TIER: &str = "high";
const OVERLOAD_EVENT: &str = "HighTier";

pub struct ScaleSizes {
    pub upload_items: usize,
    pub upload_items_per_chunk: u32,
    /// Items per chunk of the overloaded batch.
    pub overload_items_per_chunk: u32,
    /// How long the counting endpoint takes per item, so that chunks really wait.
    pub overload_item_ms: u64,
    /// How many times the tier's capacity the overloaded batch's chunks are.
    pub overload_factor: u64,
}

pub fn sizes(quick: bool) -> ScaleSizes {
    ScaleSizes {
        upload_items: if quick { 5_000 } else { 100_000 },
        upload_items_per_chunk: 100,
        overload_items_per_chunk: if quick { 2 } else { 4 },
        overload_item_ms: 200,
        overload_factor: if quick { 5 } else { 10 },
    }
}

/// Runs both parts on a new stack over `emulator_endpoint` (no other stack may be running).
pub async fn run(
    repo: &Path,
    emulator_endpoint: &str,
    secret: &[u8],
    quick: bool,
) -> Result<Value> {
    let size = sizes(quick);
    let stack = LocalStack::start(StackOptions {
        repo_root: repo.to_path_buf(),
        stack_name: "taskflow-scale".into(),
        backend: Backend::Existing {
            endpoint: emulator_endpoint.to_owned(),
        },
        api_port: 0,
        jwt_secret: secret.to_vec(),
        parameter_overrides: [
            ("QuotaRequestsPerSecond", "400"),
            ("QuotaRequestBurst", "10000"),
            ("QuotaBatchItemsPerDay", "100000000"),
            ("QuotaOpenTasks", "100000000"),
            // The overloaded batch posts to the counting endpoint on 127.0.0.1.
            ("HttpExecutorAllowedHosts", local_stack::LOOPBACK_ALLOWED),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into(),
        functions: FunctionHost::Processes {
            binaries: repo.join("target/release"),
        },
        api_timeout: local_stack::api_gateway::INTEGRATION_TIMEOUT,
    })
    .await
    .context("starting the scale stack (release binaries under the local Lambda runtime)")?;
    let agency = format!("scale-{}", ulid::Ulid::new().to_string().to_lowercase());
    let boss = Api::new(&stack.api_url(), secret, &agency, "boss", "manager");
    let outcome = async {
        info!("==> scale: a {}-item upload", size.upload_items);
        let upload = upload(&stack, &boss, &agency, &size).await?;
        info!(
            "==> scale: a batch with {} chunks per unit of its tier's capacity",
            size.overload_factor
        );
        let overload = overload(&stack, &boss, &size).await?;
        Ok::<_, anyhow::Error>(json!({"upload": upload, "overload": overload}))
    }
    .await;
    stack.stop().await;
    outcome
}

/// The upload: PUT a JSONL file under `uploads/<agency>/`, wait until it is prepared and run.
async fn upload(stack: &LocalStack, boss: &Api, agency: &str, size: &ScaleSizes) -> Result<Value> {
    let spec = stack.resources.function(PREPARER).context("the preparer")?;
    let (memory_mb, timeout_s) = (spec.memory_mb, spec.timeout_seconds);
    let bucket = spec
        .environment
        .get("BATCH_BUCKET")
        .context("BATCH_BUCKET")?
        .clone();
    // The agency must be known (it has a task) for an upload to become its batch.
    boss.create(&json!({"title": "scale: the agency exists"}))
        .await?;
    let mut file = Vec::with_capacity(size.upload_items * 40);
    for n in 0..size.upload_items {
        file.extend_from_slice(
            json!({"n": n, "sku": format!("sku-{n:07}")})
                .to_string()
                .as_bytes(),
        );
        file.push(b'\n');
    }
    let file_bytes = file.len();
    let preparer = stack
        .function_runtime(PREPARER)
        .context("preparer runtime")?;
    let before = preparer.stats();
    let clients = shared::aws::AwsClients::new(
        &local_stack::emulator::sdk_config_for(&stack.endpoints).await,
    );
    let key = format!("uploads/{agency}/scale-{}.jsonl", size.upload_items);
    clients
        .s3
        .put_object()
        .bucket(&bucket)
        .key(&key)
        .body(file.into())
        .metadata("items-per-batch", size.upload_items_per_chunk.to_string())
        .metadata("priority", "high")
        .metadata("parallelism", "25")
        .send()
        .await
        .context("uploading the batch file")?;
    let put_at = Instant::now();

    let id = poll(
        "the upload's batch",
        Duration::from_secs(120),
        || async move {
            let page = boss.get("/api/tasks?type=batch").await?;
            Ok(page["items"][0]["id"].as_str().map(str::to_owned))
        },
    )
    .await?;
    // Passes are read while the batch is pending (`preparation.passes` counts the deliveries
    // that found it under way); the preparer's invocations are counted by the runtime.
    let passes = std::cell::Cell::new(0);
    let (passes_seen, batch_path) = (&passes, &format!("/api/batches/{id}"));
    let prepared = poll(
        "the upload's preparation",
        Duration::from_secs(1800),
        || async move {
            let batch = boss.get(batch_path).await?;
            if let Some(p) = batch["preparation"]["passes"].as_u64() {
                passes_seen.set(passes_seen.get().max(p));
            }
            Ok((batch["status"] != "pending").then_some(batch))
        },
    )
    .await?;
    let prepared_after = put_at.elapsed().as_secs_f64();
    ensure!(
        prepared["status"] == "processing" || prepared["status"] == "completed",
        "the upload was not prepared: {prepared}"
    );
    let after_preparation = preparer.stats();
    let done = wait_final(boss, &id, Duration::from_secs(3600)).await?;
    ensure!(
        done["status"] == "completed",
        "the upload batch did not complete: {done}"
    );
    let task = boss.get(&format!("/api/tasks/{id}")).await?;
    let peak_mib = after_preparation.peak_rss_kib as f64 / 1024.0;
    let preparation_s = between(&prepared, "createdAt", "startedAt").unwrap_or(0.0) / 1000.0;
    Ok(json!({
        "items": size.upload_items,
        "file_bytes": file_bytes,
        "items_per_chunk": size.upload_items_per_chunk,
        "chunks": done["chunkCount"],
        "preparer_peak_rss_mib": round(peak_mib),
        "preparer_memory_size_mb": memory_mb,
        "preparer_peak_share_of_memory_size": round(peak_mib / memory_mb as f64 * 100.0) / 100.0,
        "preparation_seconds": round(preparation_s),
        "preparation_seconds_from_put": round(prepared_after),
        "preparer_timeout_seconds": timeout_s,
        "passes": passes.get() + 1,
        // The upload notification's own invocation plus one per pass.
        "preparer_invocations": after_preparation.invocations - before.invocations,
        "preparer_timeouts": after_preparation.timeouts - before.timeouts,
        "preparer_out_of_memory": after_preparation.out_of_memory - before.out_of_memory,
        "status": done["status"],
        "success_items": done["successItems"],
        "failed_items": done["failedItems"],
        "run_seconds": task["result"]["durationSeconds"],
        "items_per_second": task["result"]["itemsPerSecond"],
    }))
}

/// The overloaded batch: `overload_factor` × the tier's capacity in chunks, all allowed to start
/// at once.
async fn overload(stack: &LocalStack, boss: &Api, size: &ScaleSizes) -> Result<Value> {
    let (max_concurrency, batch_size) = tier_capacity(stack)?;
    let capacity = max_concurrency * batch_size;
    let chunks = size.overload_factor * capacity;
    let items = chunks * size.overload_items_per_chunk as u64;
    let counter = CountingEndpoint::start().await?;
    let worker = stack.function_runtime(WORKER).context("worker runtime")?;
    let before = worker.stats();
    let list: Vec<Value> = (0..items)
        .map(|n| json!({"n": n, "delayMs": size.overload_item_ms}))
        .collect();
    let (status, created, _) = boss
        .post(
            "/api/batches",
            &json!({"title": format!("scale: {} chunks per slot", size.overload_factor), "items": list,
                    "itemsPerBatch": size.overload_items_per_chunk,
                    "parallelism": chunks, "priority": OVERLOAD_TIER,
                    "executor": {"type": "http", "config": {"url": counter.url, "timeoutSeconds": 30}}}),
        )
        .await?;
    ensure!(status == 202, "overloaded batch refused: {created}");
    let id = created["id"].as_str().context("id")?.to_owned();
    let started = Instant::now();
    let done = wait_final(boss, &id, Duration::from_secs(3600)).await?;
    let wall = started.elapsed().as_secs_f64();
    let task = boss.get(&format!("/api/tasks/{id}")).await?;
    let after = worker.stats();
    let runs = counter.runs(&id);
    let distinct = runs.len() as u64;
    let total_runs: u64 = runs.values().sum();
    let duplicates = total_runs - distinct;
    let never_ran = items.saturating_sub(distinct);
    let summary = &task["result"];
    Ok(json!({
        "tier": OVERLOAD_TIER,
        "tier_capacity": capacity,
        "tier_capacity_from": format!("{OVERLOAD_EVENT}: MaximumConcurrency {max_concurrency} × BatchSize {batch_size}"),
        "chunks": chunks,
        "items": items,
        "item_ms": size.overload_item_ms,
        "parallelism": chunks,
        "status": done["status"],
        "runs": total_runs,
        "duplicates": duplicates,
        "never_ran": never_ran,
        "success_items": summary["successItems"],
        // Items of lost (never-reported) chunks are counted here too by the finalizer.
        "failed_items": summary["failedItems"],
        "worker_timeouts": after.timeouts - before.timeouts,
        "worker_invocations": after.invocations - before.invocations,
        "run_seconds": summary["durationSeconds"],
        "wall_seconds": round(wall),
        "ideal_seconds": round((size.overload_factor * size.overload_items_per_chunk as u64 * size.overload_item_ms) as f64 / 1000.0),
    }))
}

/// `MaximumConcurrency` and `BatchSize` of the overloaded tier's event source.
fn tier_capacity(stack: &LocalStack) -> Result<(u64, u64)> {
    let spec = stack.resources.function(WORKER).context("the worker")?;
    spec.events
        .iter()
        .find_map(|event| match event {
            FunctionEvent::Sqs {
                name,
                batch_size,
                maximum_concurrency: Some(max),
                ..
            } if name == OVERLOAD_EVENT => Some((u64::from(*max), u64::from(*batch_size))),
            _ => None,
        })
        .with_context(|| format!("the worker's {OVERLOAD_EVENT} event with a MaximumConcurrency"))
}

async fn wait_final(boss: &Api, id: &str, timeout: Duration) -> Result<Value> {
    let path = &format!("/api/batches/{id}");
    poll("the batch to finish", timeout, || async move {
        let batch = boss.get(path).await?;
        Ok(["completed", "failed", "cancelled"]
            .contains(&batch["status"].as_str().unwrap_or_default())
            .then_some(batch))
    })
    .await
}

/// Polls `check` every half second until it gives a value, or fails after `timeout`.
async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An endpoint on 127.0.0.1 for the `http` executor that counts the runs of each
/// `(taskId, itemIndex)` and answers 200 after the item's `delayMs` (as `tests/src/ledger.rs`).
struct CountingEndpoint {
    url: String,
    runs: Arc<Mutex<HashMap<(String, u64), u64>>>,
}

impl CountingEndpoint {
    async fn start() -> Result<CountingEndpoint> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/run", listener.local_addr()?);
        let runs: Arc<Mutex<HashMap<(String, u64), u64>>> = Arc::default();
        let counts = runs.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, counts.clone()));
            }
        });
        Ok(CountingEndpoint { url, runs })
    }

    /// Runs per item of one batch.
    fn runs(&self, task_id: &str) -> HashMap<u64, u64> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.iter()
            .filter(|((task, _), _)| task == task_id)
            .map(|((_, item), n)| (*item, *n))
            .collect()
    }
}

async fn serve(mut stream: tokio::net::TcpStream, runs: Arc<Mutex<HashMap<(String, u64), u64>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = Vec::new();
    let mut buffer = [0u8; 8192];
    let body = loop {
        let Ok(n) = stream.read(&mut buffer).await else {
            return;
        };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buffer[..n]);
        let Some(split) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let headers = String::from_utf8_lossy(&request[..split]).to_ascii_lowercase();
        let length = headers
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if request.len() >= split + 4 + length {
            break request[split + 4..split + 4 + length].to_vec();
        }
    };
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let (Some(task), Some(item)) = (payload["taskId"].as_str(), payload["itemIndex"].as_u64()) {
        *runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((task.to_owned(), item))
            .or_default() += 1;
    }
    if let Some(ms) = payload["input"]["delayMs"].as_u64() {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let reply = r#"{"ok":true}"#;
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.flush().await;
}
