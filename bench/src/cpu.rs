//! CPU per task (issue 16, item 3): each function's release binaries under the local Lambda
//! runtime (every environment process, exited ones included: `RuntimeStats::cpu_ticks`),
//! apart from the harness process (load generator and local host: API Gateway, pollers,
//! the runtime) and the emulator.

use crate::stats::process_cpu_seconds;
use local_stack::LocalStack;
use serde::Serialize;
use std::collections::BTreeMap;

/// The goal: CPU of all functions per simple task, in ms.
pub const GOAL_FUNCTIONS_MS_PER_TASK: f64 = 1.0;

/// Where the CPU readings come from.
pub struct CpuProbe<'a> {
    pub stack: &'a LocalStack,
    pub emulator_pid: Option<u32>,
}

/// Cumulative CPU seconds at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuReading {
    /// By function, its logical id without the `Function` suffix, lower case ("api", "worker").
    pub functions: BTreeMap<String, f64>,
    /// By function, the largest resident set any of its environments reached, in KiB.
    pub peak_rss_kib: BTreeMap<String, u64>,
    pub cold_starts: u64,
    pub harness: f64,
    pub emulator: f64,
}

impl CpuProbe<'_> {
    pub fn read(&self) -> CpuReading {
        let mut reading = CpuReading {
            harness: crate::stats::own_cpu_seconds(),
            emulator: self
                .emulator_pid
                .and_then(process_cpu_seconds)
                .unwrap_or(0.0),
            ..CpuReading::default()
        };
        for config in self.stack.function_configs() {
            let Some(runtime) = self.stack.function_runtime(&config.name) else {
                continue;
            };
            // Idle warm environments' CPU since their last invocation counts too.
            runtime.sample_cpu();
            let stats = runtime.stats();
            reading
                .functions
                .insert(short_name(&config.name), stats.cpu_seconds());
            reading
                .peak_rss_kib
                .insert(short_name(&config.name), stats.peak_rss_kib);
            reading.cold_starts += stats.cold_starts;
        }
        reading
    }
}

/// "ApiFunction" → "api", "BatchTriggerFunction" → "batch-trigger".
pub fn short_name(logical_id: &str) -> String {
    let base = logical_id.strip_suffix("Function").unwrap_or(logical_id);
    let mut name = String::new();
    for (n, c) in base.chars().enumerate() {
        if c.is_uppercase() && n > 0 {
            name.push('-');
        }
        name.extend(c.to_lowercase());
    }
    name
}

/// CPU ms per task between two readings.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuPerTask {
    pub tasks: usize,
    /// Each function's share (the sweeper's is its periodic sweeps during the window).
    pub functions_ms: BTreeMap<String, f64>,
    pub functions_total_ms: f64,
    pub goal_functions_ms: f64,
    /// Load generator and local host (API Gateway, SQS pollers, Lambda runtime) together.
    pub harness_ms: f64,
    pub emulator_ms: f64,
    /// Environments started in the window (their start-up CPU is in the functions' figures).
    pub cold_starts: u64,
    /// Each function's peak resident set so far (MiB), against its MemorySize.
    pub peak_rss_mib: BTreeMap<String, f64>,
}

pub fn per_task(before: &CpuReading, after: &CpuReading, tasks: usize) -> CpuPerTask {
    let per = |seconds: f64| ms3(seconds * 1000.0 / tasks.max(1) as f64);
    let functions_ms: BTreeMap<String, f64> = after
        .functions
        .iter()
        .map(|(name, s)| {
            let used = s - before.functions.get(name).copied().unwrap_or(0.0);
            (name.clone(), per(used.max(0.0)))
        })
        .collect();
    let total: f64 = after.functions.values().sum::<f64>() - before.functions.values().sum::<f64>();
    CpuPerTask {
        tasks,
        functions_total_ms: per(total.max(0.0)),
        functions_ms,
        goal_functions_ms: GOAL_FUNCTIONS_MS_PER_TASK,
        harness_ms: per(after.harness - before.harness),
        emulator_ms: per(after.emulator - before.emulator),
        cold_starts: after.cold_starts.saturating_sub(before.cold_starts),
        peak_rss_mib: after
            .peak_rss_kib
            .iter()
            .map(|(name, kib)| (name.clone(), ms3(*kib as f64 / 1024.0)))
            .collect(),
    }
}

/// Rounded to the microsecond (three decimals of a millisecond).
pub fn ms3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_are_short() {
        assert_eq!(short_name("ApiFunction"), "api");
        assert_eq!(short_name("BatchTriggerFunction"), "batch-trigger");
        assert_eq!(short_name("Worker"), "worker");
    }

    #[test]
    fn per_task_divides_each_difference_by_the_tasks() {
        let before = CpuReading {
            functions: [("api".into(), 1.0), ("worker".into(), 2.0)].into(),
            cold_starts: 3,
            harness: 10.0,
            emulator: 100.0,
            ..CpuReading::default()
        };
        let after = CpuReading {
            // A function first seen after `before` counts from zero.
            functions: [
                ("api".into(), 1.25),
                ("worker".into(), 2.5),
                ("sweeper".into(), 0.05),
            ]
            .into(),
            peak_rss_kib: [("api".into(), 30 * 1024 + 512)].into(),
            cold_starts: 7,
            harness: 11.0,
            emulator: 104.0,
        };
        let cpu = per_task(&before, &after, 500);
        assert_eq!(cpu.functions_ms["api"], 0.5);
        assert_eq!(cpu.functions_ms["worker"], 1.0);
        assert_eq!(cpu.functions_ms["sweeper"], 0.1);
        assert_eq!(cpu.functions_total_ms, 1.6);
        assert_eq!(cpu.harness_ms, 2.0);
        assert_eq!(cpu.emulator_ms, 8.0);
        assert_eq!(cpu.cold_starts, 4);
        assert_eq!(cpu.goal_functions_ms, 1.0);
        assert_eq!(cpu.peak_rss_mib["api"], 30.5);
        // No tasks: no division by zero.
        assert_eq!(per_task(&before, &before, 0).functions_total_ms, 0.0);
    }
}
