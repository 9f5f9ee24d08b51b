//! Use-case rules checked against an in-memory store behind the same port.

use super::*;
use crate::domain::{AgencyId, Role, UserId};
use crate::ports::{IdempotencyRecord, Page};
use async_trait::async_trait;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
struct MemoryStore {
    tasks: Mutex<HashMap<(String, TaskId), Task>>,
    records: Mutex<HashMap<(String, String), IdempotencyRecord>>,
}

#[async_trait]
impl TaskStore for MemoryStore {
    async fn insert(
        &self,
        task: &Task,
        _: &[TaskStep],
        rec: Option<&IdempotencyRecord>,
    ) -> Result<InsertOutcome, AppError> {
        if let Some(rec) = rec {
            let key = (task.agency_id.to_string(), rec.key.clone());
            let mut records = self.records.lock().unwrap();
            if let Some(previous) = records.get(&key) {
                return Ok(InsertOutcome::AlreadyDone(previous.clone()));
            }
            records.insert(key, rec.clone());
        }
        self.tasks
            .lock()
            .unwrap()
            .insert((task.agency_id.to_string(), task.id), task.clone());
        Ok(InsertOutcome::Inserted)
    }
    async fn get(&self, agency: &AgencyId, id: TaskId) -> Result<Option<Task>, AppError> {
        Ok(self
            .tasks
            .lock()
            .unwrap()
            .get(&(agency.to_string(), id))
            .cloned())
    }
    async fn replace(&self, task: &Task, expected: u64) -> Result<(), AppError> {
        let mut tasks = self.tasks.lock().unwrap();
        let current = tasks
            .get_mut(&(task.agency_id.to_string(), task.id))
            .ok_or(AppError::NotFound { what: "task" })?;
        if current.version != expected {
            return Err(AppError::VersionConflict {
                expected,
                current: current.version,
            });
        }
        *current = task.clone();
        Ok(())
    }
    async fn delete(&self, agency: &AgencyId, id: TaskId) -> Result<bool, AppError> {
        Ok(self
            .tasks
            .lock()
            .unwrap()
            .remove(&(agency.to_string(), id))
            .is_some())
    }
    async fn list(&self, _: &AgencyId, _: &TaskQuery) -> Result<Page<Task>, AppError> {
        unimplemented!("not used by these tests")
    }
    async fn steps(&self, _: &AgencyId, _: TaskId) -> Result<Vec<TaskStep>, AppError> {
        Ok(Vec::new())
    }
    async fn idempotency_record(
        &self,
        agency: &AgencyId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, AppError> {
        Ok(self
            .records
            .lock()
            .unwrap()
            .get(&(agency.to_string(), key.to_owned()))
            .cloned())
    }
}

struct FakeUrls;

#[async_trait]
impl AttachmentStorage for FakeUrls {
    async fn presign_upload(&self, key: &str, _: &str, _: Duration) -> Result<String, AppError> {
        Ok(format!("https://uploads.example/{key}"))
    }
}

fn service() -> TaskService {
    TaskService::new(Arc::new(MemoryStore::default()), Arc::new(FakeUrls))
}

fn caller(user: &str, agency: &str, role: Role) -> Caller {
    Caller {
        user: UserId::parse(user).unwrap(),
        agency: AgencyId::parse(agency).unwrap(),
        role,
    }
}

fn id_of(created: &Created) -> TaskId {
    TaskId::parse(created.task["id"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn full_lifecycle_by_manager_and_assignee() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let worker = caller("w1", "a1", Role::Member);
    let created = svc
        .create(&boss, &json!({"title": "Ship"}), None)
        .await
        .unwrap();
    let id = id_of(&created);
    assert_eq!(created.task["status"], "pending");

    let t = svc
        .assign(
            &boss,
            id,
            &AssignInput {
                assignee: worker.user.clone(),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!((t.status, t.version), (TaskStatus::Assigned, 2));
    let t = svc.start(&worker, id, Some(2)).await.unwrap();
    assert!(t.started_at.is_some());
    let t = svc
        .complete(
            &worker,
            id,
            &CompleteInput::Succeeded(Some(json!(42))),
            None,
        )
        .await
        .unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!(42)));
    assert!(t.completed_at.is_some());
}

#[tokio::test]
async fn roles_are_enforced() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let member = caller("m1", "a1", Role::Member);
    let err = svc
        .create(&member, &json!({"title": "x"}), None)
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 403);
    let id = id_of(
        &svc.create(&boss, &json!({"title": "x", "assignedTo": "w1"}), None)
            .await
            .unwrap(),
    );
    // Not the assignee.
    assert_eq!(
        svc.start(&member, id, None)
            .await
            .unwrap_err()
            .status_code(),
        403
    );
    assert_eq!(
        svc.start(&boss, id, None).await.unwrap_err().status_code(),
        403
    );
}

#[tokio::test]
async fn other_agencies_see_nothing() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let intruder = caller("boss", "a2", Role::Manager);
    let id = id_of(
        &svc.create(&boss, &json!({"title": "x"}), None)
            .await
            .unwrap(),
    );
    assert_eq!(svc.get(&intruder, id).await.unwrap_err().status_code(), 404);
    assert_eq!(
        svc.archive(&intruder, id, None)
            .await
            .unwrap_err()
            .status_code(),
        404
    );
    assert_eq!(
        svc.get(&boss, id).await.unwrap().status,
        TaskStatus::Pending
    );
}

#[tokio::test]
async fn stale_if_match_is_a_conflict_and_changes_nothing() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let id = id_of(
        &svc.create(&boss, &json!({"title": "x"}), None)
            .await
            .unwrap(),
    );
    let patch = TaskPatch::parse(&json!({"title": "y"})).unwrap();
    svc.update(&boss, id, &patch, Some(1)).await.unwrap();
    let err = svc
        .update(
            &boss,
            id,
            &TaskPatch::parse(&json!({"title": "z"})).unwrap(),
            Some(1),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        AppError::VersionConflict {
            expected: 1,
            current: 2
        }
    ));
    assert_eq!(svc.get(&boss, id).await.unwrap().title.as_str(), "y");
}

#[tokio::test]
async fn idempotent_create_replays_and_detects_key_reuse() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let body = json!({"title": "once"});
    let first = svc.create(&boss, &body, Some("k1")).await.unwrap();
    let again = svc.create(&boss, &body, Some("k1")).await.unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!(first.task, again.task);
    let err = svc
        .create(&boss, &json!({"title": "other"}), Some("k1"))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 422);
}

#[tokio::test]
async fn invalid_transition_names_states() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let id = id_of(
        &svc.create(&boss, &json!({"title": "x"}), None)
            .await
            .unwrap(),
    );
    svc.archive(&boss, id, None).await.unwrap();
    let err = svc
        .assign(
            &boss,
            id,
            &AssignInput {
                assignee: UserId::parse("w").unwrap(),
            },
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot move task from 'archived' to 'assigned'"
    );
}

#[tokio::test]
async fn attachments_are_listed_and_scoped_to_one_key() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let id = id_of(
        &svc.create(&boss, &json!({"title": "x"}), None)
            .await
            .unwrap(),
    );
    let input =
        AttachmentInput::parse(&json!({"fileName": "a.pdf", "contentType": "application/pdf"}))
            .unwrap();
    let added = svc.add_attachment(&boss, id, &input).await.unwrap();
    assert!(added.upload_url.ends_with(&added.attachment.key));
    assert!(added
        .attachment
        .key
        .starts_with(&format!("attachments/a1/{id}/")));
    assert_eq!(
        svc.get(&boss, id).await.unwrap().attachments,
        vec![added.attachment]
    );
}
