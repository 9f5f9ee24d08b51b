//! Executors run automated tasks. Each validates its own config, so a bad
//! config is refused at creation (400) and, should one slip through, fails the
//! task once with a clear error instead of looping through retries.

mod echo;
pub mod egress;
mod http;
mod manual;
mod sleep;

use crate::domain::{ExecutorSpec, TaskId};
use async_trait::async_trait;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What one run of an executor produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done(Value),
    /// The task now waits for its assignee to complete it through the API.
    AwaitAssignee,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecError {
    /// Worth another attempt (5xx, timeouts, connection failures).
    #[error("{0}")]
    Retryable(String),
    /// Retrying cannot help (4xx, bad config, unknown executor).
    #[error("{0}")]
    Permanent(String),
}

pub struct Job<'a> {
    pub task_id: TaskId,
    /// Which part of the task this run is for.
    pub unit: WorkUnit<'a>,
    pub config: &'a Value,
    pub input: &'a Value,
    /// 1 for the first run.
    pub attempt: u32,
}

/// The unit of work a run belongs to. The `http` executor sends it along, so a receiver can
/// tell runs apart and make its effect idempotent (a redelivery of the same unit and attempt
/// is the same effect).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WorkUnit<'a> {
    /// A whole task, dispatched with this id (a manual retry dispatches it anew).
    Task { dispatch_id: &'a str },
    /// One step of a chain.
    Step { name: &'a str },
    /// One item of a batch, by its index in the input.
    Item { index: u64 },
}

/// How long a run may take when its config asks for nothing (the http executor's default
/// timeout, the longest of the built-in defaults).
pub const DEFAULT_LONGEST_RUN: Duration = Duration::from_secs(10);

#[async_trait]
pub trait Executor: Send + Sync {
    /// Checks the config; the error names what is wrong with it.
    fn validate(&self, config: &Value) -> Result<(), String>;
    async fn run(&self, job: &Job<'_>) -> Result<Outcome, ExecError>;
    /// The longest one run may take as its config asks, and the config field that asks it.
    /// None when the config asks for nothing longer than our own defaults.
    fn max_run(&self, _config: &Value) -> Option<(&'static str, Duration)> {
        None
    }
}

#[derive(Clone)]
pub struct ExecutorRegistry {
    executors: BTreeMap<&'static str, Arc<dyn Executor>>,
    /// How long a worker lets one run take (see `runner::run_limit`), when known.
    run_limit: Option<Duration>,
}

impl ExecutorRegistry {
    pub fn empty() -> Self {
        Self {
            executors: BTreeMap::new(),
            run_limit: None,
        }
    }

    /// Creation refuses configs that ask for runs longer than `limit`.
    pub fn with_run_limit(mut self, limit: Duration) -> Self {
        self.run_limit = Some(limit);
        self
    }

    /// A config whose run would outlast what a worker gives one run is refused at creation:
    /// the worker would cut it off at the limit, every attempt, with no word to its author.
    /// The error is (the config field, the problem naming the limit). Call after `resolve`.
    pub fn check_run_limit(&self, spec: &ExecutorSpec) -> Result<(), (String, String)> {
        let (Some(limit), Some(executor)) =
            (self.run_limit, self.executors.get(spec.kind.as_str()))
        else {
            return Ok(());
        };
        match executor.max_run(&spec.config) {
            Some((field, run)) if run > limit => Err((
                field.to_owned(),
                format!(
                    "asks for {} s, but a worker cuts a run off after {} s (the deployment's \
                     LeaseSeconds less a 2 s margin): at most {}",
                    run.as_secs_f64(),
                    limit.as_secs(),
                    limit.as_secs()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The longest one run of `spec` may take: what its config asks (see
    /// [`Executor::max_run`]), else [`DEFAULT_LONGEST_RUN`], never more than the run limit.
    pub fn longest_run(&self, spec: &ExecutorSpec) -> Duration {
        let asked = self
            .executors
            .get(spec.kind.as_str())
            .and_then(|executor| executor.max_run(&spec.config))
            .map_or(DEFAULT_LONGEST_RUN, |(_, run)| run);
        match self.run_limit {
            Some(limit) => asked.min(limit),
            None => asked,
        }
    }

    /// echo, http, sleep and manual; http refuses every address class the default
    /// [`egress::EgressPolicy`] refuses.
    pub fn builtin() -> Self {
        Self::builtin_with(egress::EgressPolicy::default())
    }

    /// [`ExecutorRegistry::builtin`] with the http executor under `egress`.
    pub fn builtin_with(egress: egress::EgressPolicy) -> Self {
        let mut registry = Self::empty();
        registry.register("echo", Arc::new(echo::Echo));
        registry.register("http", Arc::new(http::Http::new(egress)));
        registry.register("sleep", Arc::new(sleep::Sleep));
        registry.register("manual", Arc::new(manual::Manual));
        registry
    }

    pub fn register(&mut self, kind: &'static str, executor: Arc<dyn Executor>) {
        self.executors.insert(kind, executor);
    }

    /// The executor for `spec`, with its config checked.
    pub fn resolve(&self, spec: &ExecutorSpec) -> Result<&dyn Executor, String> {
        let executor = self.executors.get(spec.kind.as_str()).ok_or_else(|| {
            let known: Vec<&str> = self.executors.keys().copied().collect();
            format!(
                "unknown executor '{}'; known: {}",
                spec.kind,
                known.join(", ")
            )
        })?;
        executor
            .validate(&spec.config)
            .map_err(|problem| format!("invalid {} executor config: {problem}", spec.kind))?;
        Ok(executor.as_ref())
    }
}

/// Reads an optional number field of a config object.
fn number(config: &Value, field: &str) -> Result<Option<f64>, String> {
    match config.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{field} must be a number")),
    }
}

fn only_fields(config: &Value, allowed: &[&str]) -> Result<(), String> {
    let Value::Object(map) = config else {
        return Err("config must be an object".into());
    };
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) if allowed.is_empty() => Err(format!("takes no config (got '{unknown}')")),
        Some(unknown) => Err(format!(
            "unknown field '{unknown}'; allowed: {}",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(kind: &str, config: Value) -> ExecutorSpec {
        ExecutorSpec {
            kind: kind.into(),
            config,
        }
    }

    #[test]
    fn unknown_executors_and_bad_configs_are_named() {
        let registry = ExecutorRegistry::builtin();
        let err = registry
            .resolve(&spec("teleport", json!({})))
            .err()
            .unwrap();
        assert_eq!(
            err,
            "unknown executor 'teleport'; known: echo, http, manual, sleep"
        );
        let err = registry
            .resolve(&spec("http", json!({"url": "ftp://x"})))
            .err()
            .unwrap();
        assert!(
            err.starts_with("invalid http executor config: url"),
            "{err}"
        );
        assert!(registry
            .resolve(&spec("sleep", json!({"seconds": -1})))
            .is_err());
        assert!(registry.resolve(&spec("echo", json!({"x": 1}))).is_err());
        assert!(registry
            .resolve(&spec("sleep", json!({"seconds": 0.1})))
            .is_ok());
    }

    #[tokio::test]
    async fn echo_returns_its_input_and_manual_waits() {
        let registry = ExecutorRegistry::builtin();
        let input = json!({"a": [1, 2]});
        let job = Job {
            task_id: TaskId::generate(),
            unit: WorkUnit::Task { dispatch_id: "d1" },
            config: &json!({}),
            input: &input,
            attempt: 1,
        };
        let echo = registry.resolve(&spec("echo", json!({}))).unwrap();
        assert_eq!(echo.run(&job).await, Ok(Outcome::Done(input.clone())));
        let manual = registry.resolve(&spec("manual", json!({}))).unwrap();
        assert_eq!(manual.run(&job).await, Ok(Outcome::AwaitAssignee));
    }

    #[tokio::test]
    async fn sleep_fails_the_first_attempts_when_asked() {
        let registry = ExecutorRegistry::builtin();
        let config = json!({"seconds": 0, "failAttempts": 1});
        let sleep = registry.resolve(&spec("sleep", config.clone())).unwrap();
        let job = |attempt| Job {
            task_id: TaskId::generate(),
            unit: WorkUnit::Item { index: 0 },
            config: &config,
            input: &Value::Null,
            attempt,
        };
        assert!(matches!(
            sleep.run(&job(1)).await,
            Err(ExecError::Retryable(_))
        ));
        assert!(matches!(sleep.run(&job(2)).await, Ok(Outcome::Done(_))));
    }
}
