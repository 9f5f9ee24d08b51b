//! What the local Lambda runtime adds to each invocation: a handler that does nothing
//! (`lambda-fixture`, release build) invoked through `FunctionRuntime`, so every millisecond
//! measured is the runtime's own (Runtime API round trip, process hand-off, memory sampling).

use crate::stats::{round, Latency};
use anyhow::{anyhow, bail, Result};
use local_stack::runtime::{FunctionConfig, FunctionRuntime};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct RuntimeOverhead {
    /// The first invocation: process start, runtime init, one invocation.
    pub cold_invocation_ms: f64,
    /// Sequential invocations on one warm environment.
    pub warm_invocation_ms: Latency,
    /// Invocations per second with `concurrency` callers (one environment each).
    pub concurrent_invocations_per_second: f64,
    pub concurrency: usize,
}

pub async fn measure(release_dir: &Path, invocations: usize) -> Result<RuntimeOverhead> {
    let binary = release_dir.join("lambda-fixture");
    if !binary.is_file() {
        bail!(
            "{} is missing (the bench target builds it)",
            binary.display()
        );
    }
    let runtime = FunctionRuntime::new(FunctionConfig {
        name: "OverheadProbe".into(),
        binary,
        environment: Vec::new(),
        timeout: Duration::from_secs(10),
        memory_mb: 128,
    });
    let invoke = |runtime: FunctionRuntime| async move {
        let started = Instant::now();
        runtime
            .invoke(b"{}".to_vec())
            .await
            .map_err(|e| anyhow!("invoking the probe: {e:?}"))?;
        Ok::<f64, anyhow::Error>(started.elapsed().as_secs_f64() * 1000.0)
    };

    let cold = invoke(runtime.clone()).await?;
    let mut warm = Vec::with_capacity(invocations);
    for _ in 0..invocations {
        warm.push(invoke(runtime.clone()).await?);
    }

    let concurrency = 4;
    let started = Instant::now();
    let callers: Vec<_> = (0..concurrency)
        .map(|_| {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                for _ in 0..invocations / concurrency {
                    invoke(runtime.clone()).await?;
                }
                Ok::<(), anyhow::Error>(())
            })
        })
        .collect();
    for caller in callers {
        caller.await??;
    }
    let per_second =
        (invocations / concurrency * concurrency) as f64 / started.elapsed().as_secs_f64();
    runtime.shut_down();
    Ok(RuntimeOverhead {
        cold_invocation_ms: round(cold),
        warm_invocation_ms: Latency::of(&warm),
        concurrent_invocations_per_second: round(per_second),
        concurrency,
    })
}
