//! `make bench`: reproducible figures for BENCHMARKS.md. Starts moto with a
//! counting proxy in front, runs each function as its release binary under the local Lambda
//! runtime (its CPU apart: `cpu.rs`), drives the API, and runs the BullMQ peer on the same
//! machine.
//! QUICK=1 runs a smaller set in a few minutes. SCENARIOS=scale runs only the scale scenario
//! (`scale.rs`, its functions as processes) and writes only `bench/results/scale.{json,md}`;
//! SCENARIOS=fairness runs only the fair-share scenario, then the peer's, and writes only
//! `bench/results/fairness.{json,md}`. SCENARIOS=coldstart measures only the release binaries'
//! cold starts, with no stack, and prints them as JSON: COLDSTART_RUNS runs each (default 3) of
//! the binaries in COLDSTART_BINARIES (default target/release). SCENARIOS=cpu runs the warm-up
//! and one throughput run and prints its CPU per task as JSON (to run under `perf record`).

mod ceiling;
mod client;
mod coldstart;
mod cost;
mod counting_proxy;
mod cpu;
mod dynamodb_units;
mod headline;
mod metering;
mod peer;
mod priority;
mod report;
mod runtime_overhead;
mod scale;
mod stats;
mod units;
mod workloads;

use anyhow::{Context, Result};
use client::Api;
use counting_proxy::CountingProxy;
use local_stack::{Backend, LocalStack, StackOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tracing::info;

const SECRET: &[u8] = b"bench-secret";

struct Sizes {
    repeats: usize,
    throughput_tasks: usize,
    per_tier: usize,
    assign: usize,
    /// Background backlogs for the priority levels, smallest first; the middle one is the
    /// headline (the backlog earlier runs reported).
    backlogs: [usize; 3],
    critical: usize,
    chain_steps: usize,
    batch_items: usize,
    unit_tasks: usize,
    /// Fair share: agency A's flood of normal tasks, then agency B's tasks behind it.
    fairness_flood: usize,
    fairness_calm: usize,
    /// Each fairness task's run, in the project and in the peer.
    fairness_work_seconds: f64,
}

fn sizes(quick: bool) -> Sizes {
    if quick {
        Sizes {
            repeats: 1,
            throughput_tasks: 100,
            per_tier: 10,
            assign: 20,
            // Sized so that QUICK stays under 3 minutes plus the build (issue 16).
            backlogs: [0, 50, 100],
            critical: 10,
            chain_steps: 4,
            batch_items: 1000,
            unit_tasks: 10,
            fairness_flood: 100,
            fairness_calm: 10,
            fairness_work_seconds: 0.5,
        }
    } else {
        Sizes {
            repeats: 3,
            throughput_tasks: 500,
            per_tier: 40,
            assign: 100,
            backlogs: [0, 500, 2000],
            critical: 20,
            chain_steps: 8,
            batch_items: 10_000,
            unit_tasks: 50,
            fairness_flood: 2000,
            fairness_calm: 20,
            fairness_work_seconds: 1.0,
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    std::env::set_var(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "info,aws=warn".into()),
    );
    shared::telemetry::init();
    let quick = std::env::var("QUICK").is_ok_and(|v| v == "1");
    let scenarios = match std::env::var("SCENARIOS").as_deref() {
        Err(_) | Ok("" | "all") => Scenarios::All,
        Ok("scale") => Scenarios::Scale,
        Ok("fairness") => Scenarios::Fairness,
        Ok("coldstart") => Scenarios::ColdStart,
        Ok("cpu") => Scenarios::Cpu,
        Ok(other) => {
            anyhow::bail!(
                "SCENARIOS={other}: use all (the default), scale, fairness, coldstart or cpu"
            )
        }
    };
    let size = sizes(quick);
    let repo = StackOptions::repo_root();
    let started = Instant::now();

    if scenarios == Scenarios::ColdStart {
        // No stack: the binaries' AWS calls go to the cold-start emulator's refusing stub.
        let runs = match std::env::var("COLDSTART_RUNS") {
            Ok(runs) => runs.parse().context("COLDSTART_RUNS")?,
            Err(_) => 3,
        };
        let binaries = std::env::var_os("COLDSTART_BINARIES")
            .map_or_else(|| repo.join("target/release"), std::path::PathBuf::from);
        info!(
            "==> cold starts of the binaries in {}, {runs} runs each, no stack",
            binaries.display()
        );
        let cold = coldstart::measure(&binaries, &[], runs).await?;
        println!("{}", serde_json::to_string_pretty(&cold)?);
        return Ok(());
    }

    info!("==> starting moto behind a counting proxy");
    let emulator = local_stack::emulator::Emulator::start(
        &repo.join(".venv"),
        local_stack::emulator::free_port(),
    )
    .await?;
    if scenarios == Scenarios::Scale {
        let scale = scale::run(&repo, &emulator.endpoint, SECRET, quick).await?;
        report::write_scale(&repo, quick, &scale)?;
        info!(
            "==> done in {:.0} s: bench/results/scale.json and scale.md",
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let emulator_pid = emulator.pid();
    let proxy = CountingProxy::start(&emulator.endpoint).await?;
    let stack = start_stack(&repo, &proxy.endpoint).await?;
    let api_url = stack.api_url();
    let agency = format!("bench-{}", ulid::Ulid::new().to_string().to_lowercase());
    if scenarios == Scenarios::Fairness {
        let fairness = fairness(&api_url, &agency, &size, &proxy)
            .await
            .unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
        stack.stop().await;
        info!("==> BullMQ peer, same machine: the fair-share scenario");
        let redis = peer::Redis::start().await?;
        let peer = peer_fairness(&repo, &redis, &size).await;
        redis.stop().await;
        let peer = peer.unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
        let wall_seconds = stats::round(started.elapsed().as_secs_f64());
        report::write_fairness(&repo, quick, &fairness, &peer, wall_seconds)?;
        info!("==> done in {wall_seconds:.0} s: bench/results/fairness.json and fairness.md");
        return Ok(());
    }
    let boss = Api::new(&api_url, SECRET, &agency, "boss", "manager");
    let probe = cpu::CpuProbe {
        stack: &stack,
        emulator_pid,
    };

    let sdk = local_stack::emulator::sdk_config(&emulator.endpoint).await;

    if scenarios == Scenarios::Cpu {
        info!("==> warming the functions' environments");
        workloads::throughput(&boss, 48, &probe).await?;
        info!("==> one throughput run: {} tasks", size.throughput_tasks);
        let run = workloads::throughput(&boss, size.throughput_tasks, &probe).await;
        stack.stop().await;
        println!("{}", serde_json::to_string_pretty(&run?)?);
        return Ok(());
    }
    // Steady state, as on Lambda under load: the environments the runs need are started
    // here, so their cold starts are not charged to the measured tasks.
    info!("==> warming the functions' environments");
    workloads::throughput(&boss, 48, &probe).await?;
    let mut runs = Vec::new();
    for run in 1..=size.repeats {
        info!(
            "==> throughput run {run}/{}: {} tasks",
            size.repeats, size.throughput_tasks
        );
        runs.push(workloads::throughput(&boss, size.throughput_tasks, &probe).await?);
    }
    info!("==> queue-to-start per tier");
    let per_tier = workloads::per_tier(&boss, size.per_tier).await?;
    info!("==> time to be assigned");
    let agents: Vec<Api> = (0..4)
        .map(|n| {
            Api::new(
                &api_url,
                SECRET,
                &agency,
                &format!("bench-agent-{n}"),
                "agent",
            )
        })
        .collect();
    let assign = workloads::assignment(&boss, &agents, size.assign).await?;
    let priority_levels = priority::levels(
        |backlog| {
            Api::new(
                &api_url,
                SECRET,
                &format!("{agency}-prio-{backlog}"),
                "boss",
                "manager",
            )
        },
        &size.backlogs,
        size.critical,
        &proxy,
    )
    .await?;
    let priority: priority::Priority = serde_json::from_value(priority_levels["levels"][1].clone())
        .context("the middle priority level")?;
    info!("==> chain overhead: {} sequential steps", size.chain_steps);
    let chain = workloads::chain_overhead(&boss, size.chain_steps, 0.2).await?;
    info!("==> batch: {} items", size.batch_items);
    let batch = workloads::batch(&boss, size.batch_items, 100).await?;

    info!("==> cost per unit of work (metered)");
    let units = units::requests_per_unit(
        &boss,
        &proxy,
        &sdk,
        &stack.resources,
        size.unit_tasks,
        Duration::from_secs(if quick { 5 } else { 10 }),
    )
    .await?;

    // After the cost unit: the ceiling replays the calls it measured one task making.
    info!("==> emulator ceiling for the task call mix");
    let mix = ceiling::CallMix::of_unit(&units)?;
    info!(
        "    replaying {:.1} calls per task: {:?}",
        mix.total(),
        mix.0
    );
    let setting = |function: &str, key: &str| {
        stack
            .resources
            .function(function)
            .and_then(|f| f.environment.get(key).cloned())
            .with_context(|| format!("{function} has no {key}"))
    };
    let ceiling = ceiling::lifecycles_per_second(
        &sdk,
        &mix,
        &setting("WorkerFunction", "TABLE_NAME")?,
        &setting("EventPublisherFunction", "EVENT_BUS_NAME")?,
        16,
        Duration::from_secs(if quick { 5 } else { 30 }),
    )
    .await?;

    info!("==> cold starts of the release binaries");
    let worker_env: Vec<(String, String)> = stack
        .resources
        .function("WorkerFunction")
        .map(|f| {
            f.environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut env = worker_env;
    env.push(("AWS_ENDPOINT_URL".into(), emulator.endpoint.clone()));
    let cold = coldstart::measure(
        &repo.join("target/release"),
        &env,
        if quick { 1 } else { 3 },
    )
    .await;

    info!("==> the local Lambda runtime's own cost per invocation");
    let local_runtime =
        runtime_overhead::measure(&repo.join("target/release"), if quick { 200 } else { 2000 })
            .await;

    let fairness = fairness(&api_url, &agency, &size, &proxy)
        .await
        .unwrap_or_else(|e| json!({"error": format!("{e:#}")}));

    info!("==> BullMQ peer, same machine");
    let peer = run_peer(&repo, &size).await;

    // The scale scenario runs its own stack (functions as processes) on the same emulator.
    stack.stop().await;
    let scale = scale::run(&repo, &emulator.endpoint, SECRET, quick)
        .await
        .unwrap_or_else(|e| json!({"error": format!("{e:#}")}));

    let project_tph = stats::median(&runs.iter().map(|r| r.tasks_per_hour).collect::<Vec<_>>());
    let results = report::Results {
        date: chrono::Utc::now().to_rfc3339(),
        machine: report::machine(),
        quick,
        note: "Every local figure is bound by the emulator (moto): it runs all of AWS in one Python process on this machine.".into(),
        emulator_ceiling_tasks_per_hour: stats::round(ceiling * 3600.0),
        emulator_ceiling_call_mix: mix,
        throughput_runs: runs,
        throughput_median_tasks_per_hour: project_tph,
        ratio_to_emulator_ceiling: stats::round(project_tph / (ceiling * 3600.0) * 100.0) / 100.0,
        per_tier_queue_to_start_ms: per_tier,
        time_to_assign_ms: assign,
        priority,
        priority_levels,
        chain,
        batch,
        requests_per_unit: units,
        cold_start: match cold {
            Ok(c) => serde_json::to_value(c)?,
            Err(e) => json!({"error": format!("{e:#}")}),
        },
        local_runtime: match local_runtime {
            Ok(r) => serde_json::to_value(r)?,
            Err(e) => json!({"error": format!("{e:#}")}),
        },
        fairness,
        peer: match peer {
            Ok(p) => p,
            Err(e) => json!({"error": format!("{e:#}")}),
        },
        scale,
        wall_seconds: stats::round(started.elapsed().as_secs_f64()),
    };
    report::write(&repo, &results)?;
    report::write_scale(&repo, quick, &results.scale)?;
    info!(
        "==> done in {:.0} s: bench/results/latest.json and latest.md",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenarios {
    All,
    Scale,
    Fairness,
    ColdStart,
    /// One throughput run after the warm-up, its CPU per task printed as JSON (to profile).
    Cpu,
}

/// The stack every in-process scenario runs on, its AWS calls through `endpoint` (the
/// counting proxy in front of the emulator).
async fn start_stack(repo: &std::path::Path, endpoint: &str) -> Result<LocalStack> {
    LocalStack::start(StackOptions {
        repo_root: repo.to_path_buf(),
        stack_name: "taskflow-bench".into(),
        backend: Backend::Existing {
            endpoint: endpoint.to_owned(),
        },
        api_port: 0,
        jwt_secret: SECRET.to_vec(),
        // The bench measures the system's ceiling from one agency, not the request quota
        // (README "Quotas"); the quota's own bucket writes still show in the write counts.
        parameter_overrides: [
            ("QuotaRequestsPerSecond", "400"),
            ("QuotaRequestBurst", "10000"),
            ("QuotaOpenTasks", "100000000"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into(),
        // Each function as its release binary under the local Lambda runtime, as on Lambda,
        // so that its CPU is its own (`cpu.rs`).
        // BENCH_BINARIES: another directory of the same binaries (e.g. built with symbols,
        // to profile).
        functions: local_stack::FunctionHost::Processes {
            binaries: std::env::var_os("BENCH_BINARIES")
                .map_or_else(|| repo.join("target/release"), std::path::PathBuf::from),
        },
        api_timeout: local_stack::api_gateway::INTEGRATION_TIMEOUT,
    })
    .await
}

/// The fair-share scenario (`workloads::fairness`) between two agencies derived from
/// `agency`, with the AWS requests it made: SQS sends beyond the tasks' own dispatches are
/// the worker's deferred copies.
async fn fairness(
    api_url: &str,
    agency: &str,
    size: &Sizes,
    proxy: &CountingProxy,
) -> Result<Value> {
    info!(
        "==> fair share: {} normal tasks from one agency, then {} from another",
        size.fairness_flood, size.fairness_calm
    );
    let manager = |name: &str| {
        Api::new(
            api_url,
            SECRET,
            &format!("{agency}-{name}"),
            "boss",
            "manager",
        )
    };
    proxy.take();
    let mut result = workloads::fairness(
        &manager("flood"),
        &manager("calm"),
        size.fairness_flood,
        size.fairness_calm,
        size.fairness_work_seconds,
    )
    .await?;
    let requests = proxy.take();
    let dispatches = (size.fairness_flood + 2 * size.fairness_calm) as u64;
    result["sqs_send_message_beyond_dispatches"] = json!(requests
        .get("sqs:SendMessage")
        .copied()
        .unwrap_or(0)
        .saturating_sub(dispatches));
    result["aws_requests"] = serde_json::to_value(&requests)?;
    Ok(result)
}

async fn run_peer(repo: &std::path::Path, size: &Sizes) -> Result<Value> {
    let redis = peer::Redis::start().await?;
    let mut throughput = Vec::new();
    for _ in 0..size.repeats {
        // The same 16 creates in flight as the project's throughput run.
        let tasks = size.throughput_tasks.to_string();
        let args = [
            "throughput",
            "--tasks",
            tasks.as_str(),
            "--tier",
            "normal",
            "--add-concurrency",
            "16",
        ];
        throughput.push(peer::run(repo, &redis, &args, &[]).await?);
    }
    // The same backlog work (1 s per background task) and the same critical adds in flight;
    // like ours, the run ends when the critical tasks have run, not the backlog.
    // Each level on emptied queues (the peer obliterates its queues when a run ends).
    let mut priority_levels = Vec::new();
    for backlog in size.backlogs {
        let (backlog, critical) = (backlog.to_string(), size.critical.to_string());
        let args = [
            "priority",
            "--backlog",
            backlog.as_str(),
            "--critical",
            critical.as_str(),
            "--add-concurrency",
            "10",
            "--no-drain",
        ];
        priority_levels
            .push(peer::run(repo, &redis, &args, &[("WORK_MS_BACKGROUND", "1000")]).await?);
    }
    let priority = priority_levels[1].clone();
    let fairness = peer_fairness(repo, &redis, size).await?;
    redis.stop().await;
    Ok(json!({"throughput_runs": throughput, "priority": priority,
              "priority_levels": priority_levels, "fairness": fairness}))
}

/// The peer's fair-share scenario: one queue (BullMQ's open-source version has no groups),
/// the same flood and the same work per job as `workloads::fairness`.
async fn peer_fairness(repo: &std::path::Path, redis: &peer::Redis, size: &Sizes) -> Result<Value> {
    let (flood, calm) = (
        size.fairness_flood.to_string(),
        size.fairness_calm.to_string(),
    );
    let work_ms = (size.fairness_work_seconds * 1000.0).to_string();
    let args = [
        "fairness",
        "--flood",
        flood.as_str(),
        "--calm",
        calm.as_str(),
        "--add-concurrency",
        "16",
        "--timeout-seconds",
        "3600",
    ];
    peer::run(repo, redis, &args, &[("WORK_MS_NORMAL", work_ms.as_str())]).await
}
