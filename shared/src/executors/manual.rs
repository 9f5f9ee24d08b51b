use super::{only_fields, ExecError, Executor, Job, Outcome};
use async_trait::async_trait;
use serde_json::Value;

/// Work a person does: the task waits for its assignee to complete it through the API.
pub struct Manual;

#[async_trait]
impl Executor for Manual {
    fn validate(&self, config: &Value) -> Result<(), String> {
        only_fields(config, &[])
    }

    async fn run(&self, _job: &Job<'_>) -> Result<Outcome, ExecError> {
        Ok(Outcome::AwaitAssignee)
    }
}
