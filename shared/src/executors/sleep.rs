use super::{number, only_fields, ExecError, Executor, Job, Outcome};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::time::Duration;

const MAX_SECONDS: f64 = 300.0;

/// Waits, then succeeds: for tests and demos. `failAttempts: n` makes the
/// first n attempts fail with a retryable error.
pub struct Sleep;

fn settings(config: &Value) -> Result<(f64, u32), String> {
    only_fields(config, &["seconds", "failAttempts"])?;
    let seconds = number(config, "seconds")?.unwrap_or(0.0);
    if !(0.0..=MAX_SECONDS).contains(&seconds) {
        return Err(format!("seconds must be from 0 to {MAX_SECONDS}"));
    }
    let fail_attempts = match number(config, "failAttempts")? {
        None => 0,
        Some(n) if n >= 0.0 && n.fract() == 0.0 && n <= 100.0 => n as u32,
        Some(_) => return Err("failAttempts must be a whole number from 0 to 100".into()),
    };
    Ok((seconds, fail_attempts))
}

#[async_trait]
impl Executor for Sleep {
    fn validate(&self, config: &Value) -> Result<(), String> {
        settings(config).map(|_| ())
    }

    fn max_run(&self, config: &Value) -> Option<(&'static str, Duration)> {
        let (seconds, _) = settings(config).ok()?;
        Some(("seconds", Duration::from_secs_f64(seconds)))
    }

    async fn run(&self, job: &Job<'_>) -> Result<Outcome, ExecError> {
        let (seconds, fail_attempts) = settings(job.config).map_err(ExecError::Permanent)?;
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        if job.attempt <= fail_attempts {
            return Err(ExecError::Retryable(format!(
                "sleep executor: attempt {} of the first {fail_attempts} fails by request",
                job.attempt
            )));
        }
        Ok(Outcome::Done(
            json!({"sleptSeconds": seconds, "attempt": job.attempt}),
        ))
    }
}
