//! Settling a chain: stopping it (the task failed, its unfinished steps skipped) and settling
//! the task from its steps' outcomes once every wave ran.

use super::ChainRunner;
use crate::domain::{
    AgencyId, OnFailure, StepConfig, StepStatus, Task, TaskId, TaskStatus, TaskStep,
};
use crate::error::AppError;
use crate::ports::TaskStore;
use chrono::Utc;
use serde_json::{json, Value};

impl ChainRunner {
    /// Fails an in-progress task with `error` and skips its unfinished steps.
    pub(super) async fn stop_chain(
        &self,
        agency: &AgencyId,
        task: &mut Task,
        error: String,
    ) -> Result<(), AppError> {
        if task.status != TaskStatus::InProgress {
            return Ok(());
        }
        let read_version = task.version;
        task.move_to(TaskStatus::Failed, Utc::now())?;
        task.error = Some(error);
        match self.store.replace(task, read_version).await {
            Ok(()) | Err(AppError::VersionConflict { .. }) => {}
            Err(err) => return Err(err),
        }
        skip_unfinished(
            self.store.as_ref(),
            agency,
            task.id,
            "skipped: the chain stopped",
        )
        .await
    }

    pub(super) async fn finalize(
        &self,
        agency: &AgencyId,
        id: TaskId,
        token: &str,
    ) -> Result<(), AppError> {
        self.settle_task(agency, id).await?;
        self.orchestrator
            .succeed(token, &json!({"status": "finalized"}))
            .await?;
        Ok(())
    }

    /// Settles an in-progress task from its steps' outcomes (completed unless a step failed
    /// whose onFailure is not continue).
    pub(super) async fn settle_task(&self, agency: &AgencyId, id: TaskId) -> Result<(), AppError> {
        if let Some(mut task) = self.store.get(agency, id).await? {
            if task.status == TaskStatus::InProgress {
                let steps = self.store.steps(agency, id).await?;
                let failed: Vec<&str> = steps
                    .iter()
                    .filter(|s| s.status == StepStatus::Failed)
                    .filter(|s| {
                        StepConfig::parse(&s.config).map(|c| c.on_failure)
                            != Ok(OnFailure::Continue)
                    })
                    .map(|s| s.name.as_str())
                    .collect();
                let summary: serde_json::Map<String, Value> = steps
                    .iter()
                    .map(|s| (s.name.clone(), json!(s.status.as_str())))
                    .collect();
                let read_version = task.version;
                let now = Utc::now();
                if failed.is_empty() {
                    task.move_to(TaskStatus::Completed, now)?;
                } else {
                    task.move_to(TaskStatus::Failed, now)?;
                    task.error = Some(format!("steps failed: {}", failed.join(", ")));
                }
                task.result = Some(json!({"steps": summary}));
                match self.store.replace(&task, read_version).await {
                    Ok(()) | Err(AppError::VersionConflict { .. }) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }
}

/// Marks every step that has not finished as skipped.
pub(crate) async fn skip_unfinished(
    store: &dyn TaskStore,
    agency: &AgencyId,
    id: TaskId,
    reason: &str,
) -> Result<(), AppError> {
    let now = Utc::now();
    for step in store.steps(agency, id).await? {
        settle_step(store, agency, step, |step| {
            step.status = StepStatus::Skipped;
            step.error = Some(reason.to_owned());
            step.completed_at = Some(now);
            step.run_until = None;
        })
        .await?;
    }
    Ok(())
}

/// Gives an unfinished step its final state with `settle`. A worker may write the same step
/// at the same moment (marking it running), so a lost race re-reads and settles again; a
/// step that finished meanwhile keeps its outcome.
pub(super) async fn settle_step(
    store: &dyn TaskStore,
    agency: &AgencyId,
    mut step: TaskStep,
    settle: impl Fn(&mut TaskStep),
) -> Result<(), AppError> {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        if step.is_finished() {
            return Ok(());
        }
        let read = step.status;
        settle(&mut step);
        if store.replace_step(agency, &step, read).await? {
            return Ok(());
        }
        match store.get_step(agency, step.task_id, &step.name).await? {
            Some(current) => step = current,
            None => return Ok(()),
        }
    }
    Err(AppError::Unavailable(format!(
        "step '{}' kept changing while it was being settled",
        step.name
    )))
}
