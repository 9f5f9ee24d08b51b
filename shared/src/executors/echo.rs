use super::{only_fields, ExecError, Executor, Job, Outcome};
use async_trait::async_trait;
use serde_json::Value;

/// Returns its input as the result.
pub struct Echo;

#[async_trait]
impl Executor for Echo {
    fn validate(&self, config: &Value) -> Result<(), String> {
        only_fields(config, &[])
    }

    async fn run(&self, job: &Job<'_>) -> Result<Outcome, ExecError> {
        Ok(Outcome::Done(job.input.clone()))
    }
}
