//! The task lifecycle: pending → assigned → in_progress → completed | failed,
//! plus cancelled and archived. Automated work passes through `queued` while it
//! waits on its tier queue (and again between retries). Every status change
//! goes through `transition`.

use super::fields::string_enum;
use crate::error::AppError;

string_enum!(
    TaskStatus, "status" {
        Pending => "pending",
        Assigned => "assigned",
        Queued => "queued",
        InProgress => "in_progress",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
        Archived => "archived",
    }
);

impl TaskStatus {
    /// No more work will happen on the task.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed
                | TaskStatus::Failed
                | TaskStatus::Cancelled
                | TaskStatus::Archived
        )
    }

    pub fn can_become(self, next: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, next),
            (
                Pending,
                Assigned | Queued | InProgress | Cancelled | Archived
            ) | (
                Assigned,
                Assigned | Pending | Queued | InProgress | Cancelled | Archived
            ) | (Queued, Queued | InProgress | Cancelled)
                | (
                    InProgress,
                    Completed | Failed | Cancelled | InProgress | Queued | Assigned
                )
                | (Completed | Cancelled, Archived)
                | (Failed, Pending | Queued | Archived)
        )
    }

    /// Checks a requested change, naming both states when it is not allowed.
    pub fn transition(self, next: TaskStatus) -> Result<TaskStatus, AppError> {
        if self.can_become(next) {
            Ok(next)
        } else {
            Err(AppError::InvalidTransition {
                current: self.as_str().into(),
                requested: next.as_str().into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TaskStatus::*;

    #[test]
    fn happy_path_is_allowed() {
        assert!(Pending.can_become(Assigned));
        assert!(Assigned.can_become(InProgress));
        assert!(InProgress.can_become(Completed));
        assert!(InProgress.can_become(Failed));
        assert!(Completed.can_become(Archived));
    }

    #[test]
    fn final_states_do_not_reopen_except_failed_for_retry() {
        for from in [Completed, Cancelled, Archived] {
            for to in [Pending, Assigned, Queued, InProgress, Completed, Failed] {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
        assert!(Failed.can_become(Pending));
        assert!(!Archived.can_become(Archived));
    }

    #[test]
    fn invalid_transition_names_both_states() {
        let err = Completed.transition(InProgress).unwrap_err();
        assert_eq!(err.status_code(), 409);
        assert_eq!(
            err.to_string(),
            "cannot move task from 'completed' to 'in_progress'"
        );
    }
}
