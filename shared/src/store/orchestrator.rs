//! Chains on AWS Step Functions.

use super::from_sdk;
use crate::error::AppError;
use crate::ports::{ExecutionStatus, Orchestrator};
use async_trait::async_trait;
use aws_sdk_sfn::error::ProvideErrorMetadata;

#[derive(Debug, Clone)]
pub struct SfnOrchestrator {
    client: aws_sdk_sfn::Client,
    state_machine_arn: String,
}

impl SfnOrchestrator {
    pub fn new(client: aws_sdk_sfn::Client, state_machine_arn: impl Into<String>) -> Self {
        Self {
            client,
            state_machine_arn: state_machine_arn.into(),
        }
    }
}

/// Token errors mean "this callback no longer matters", not a failure to retry.
fn token_gone<E: ProvideErrorMetadata>(err: &E) -> bool {
    matches!(
        err.code(),
        Some("TaskTimedOut" | "TaskDoesNotExist" | "InvalidToken" | "ExecutionDoesNotExist")
    )
}

#[async_trait]
impl Orchestrator for SfnOrchestrator {
    async fn start(&self, name: &str, input: &serde_json::Value) -> Result<String, AppError> {
        let result = self
            .client
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(name)
            .input(input.to_string())
            .send()
            .await;
        match result {
            Ok(out) => Ok(out.execution_arn),
            // ExecutionAlreadyExists included: that execution may have closed long ago, so
            // only a describe (start_resolved) tells whether it counts as started.
            Err(err) => Err(from_sdk("states:StartExecution", err)),
        }
    }

    async fn describe(&self, name: &str) -> Result<Option<ExecutionStatus>, AppError> {
        use aws_sdk_sfn::types::ExecutionStatus as Sdk;
        match self
            .client
            .describe_execution()
            .execution_arn(self.execution_arn(name))
            .send()
            .await
        {
            Ok(out) => Ok(Some(match out.status {
                Sdk::Running => ExecutionStatus::Running,
                Sdk::Succeeded => ExecutionStatus::Succeeded,
                Sdk::TimedOut => ExecutionStatus::TimedOut,
                Sdk::Aborted => ExecutionStatus::Aborted,
                Sdk::PendingRedrive => ExecutionStatus::PendingRedrive,
                // Failed, and any status newer than this SDK: not running.
                _ => ExecutionStatus::Failed,
            })),
            Err(err) if err.code() == Some("ExecutionDoesNotExist") => Ok(None),
            Err(err) => Err(from_sdk("states:DescribeExecution", err)),
        }
    }

    /// `arn:…:stateMachine:<machine>` names its executions `arn:…:execution:<machine>:<name>`.
    fn execution_arn(&self, name: &str) -> String {
        let prefix = self
            .state_machine_arn
            .replacen(":stateMachine:", ":execution:", 1);
        format!("{prefix}:{name}")
    }

    async fn stop(&self, execution_arn: &str, cause: &str) -> Result<(), AppError> {
        match self
            .client
            .stop_execution()
            .execution_arn(execution_arn)
            .cause(cause)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if token_gone(&err) => Ok(()),
            Err(err) => Err(from_sdk("states:StopExecution", err)),
        }
    }

    async fn succeed(&self, token: &str, output: &serde_json::Value) -> Result<bool, AppError> {
        match self
            .client
            .send_task_success()
            .task_token(token)
            .output(output.to_string())
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if token_gone(&err) => Ok(false),
            Err(err) => Err(from_sdk("states:SendTaskSuccess", err)),
        }
    }

    async fn fail(&self, token: &str, error: &str, cause: &str) -> Result<bool, AppError> {
        let cause: String = cause.chars().take(32_000).collect();
        match self
            .client
            .send_task_failure()
            .task_token(token)
            .error(error)
            .cause(cause)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if token_gone(&err) => Ok(false),
            Err(err) => Err(from_sdk("states:SendTaskFailure", err)),
        }
    }

    async fn heartbeat(&self, token: &str) -> Result<bool, AppError> {
        match self
            .client
            .send_task_heartbeat()
            .task_token(token)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if token_gone(&err) => Ok(false),
            Err(err) => Err(from_sdk("states:SendTaskHeartbeat", err)),
        }
    }
}
