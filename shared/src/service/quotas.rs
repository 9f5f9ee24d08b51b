//! Per-agency quotas: their names, their refusals and their tests. The API request rate is
//! `request_rate`; batch items per day are counted in the batch store's creation transaction,
//! open tasks by the task store (`store::dynamo::open_tasks`).

use crate::error::AppError;

/// The request-rate quota's name in errors and docs.
pub const REQUEST_RATE: &str = "requestRate";
/// The daily batch-items quota's name in errors and docs.
pub const BATCH_ITEMS_PER_DAY: &str = "batchItemsPerDay";
/// The open-tasks ceiling's name in errors and docs.
pub const OPEN_TASKS: &str = "openTasks";
/// Retry-After for the open-tasks ceiling: a slot frees only when one of the agency's tasks
/// ends, which no clock predicts, so the client is told to look again in a minute.
pub const OPEN_TASKS_RETRY_AFTER_SECONDS: u64 = 60;

/// The refusal when a batch would take an agency past its daily item quota.
pub fn batch_items_refused(limit: u64, now: chrono::DateTime<chrono::Utc>) -> AppError {
    AppError::QuotaExceeded {
        quota: BATCH_ITEMS_PER_DAY,
        limit,
        retry_after_seconds: seconds_to_next_utc_day(now),
        detail: format!(
            "quota {BATCH_ITEMS_PER_DAY} exceeded: this agency may create {limit} batch items per UTC day; this batch would pass it"
        ),
    }
}

/// The refusal when opening a task would take an agency past its open-tasks ceiling.
pub fn open_tasks_refused(limit: u64) -> AppError {
    AppError::QuotaExceeded {
        quota: OPEN_TASKS,
        limit,
        retry_after_seconds: OPEN_TASKS_RETRY_AFTER_SECONDS,
        detail: format!(
            "quota {OPEN_TASKS} exceeded: this agency may have {limit} open tasks (not completed, failed, cancelled or archived); finish, cancel or archive some first"
        ),
    }
}

/// The UTC day a batch's items count against, as `YYYY-MM-DD`.
pub fn quota_day(now: chrono::DateTime<chrono::Utc>) -> String {
    now.format("%Y-%m-%d").to_string()
}

fn seconds_to_next_utc_day(now: chrono::DateTime<chrono::Utc>) -> u64 {
    use chrono::Timelike;
    let elapsed = u64::from(now.num_seconds_from_midnight());
    (86_400 - elapsed).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Quotas;
    use crate::domain::{AgencyId, TaskId};
    use crate::ports::TaskStore;

    fn agency(name: &str) -> AgencyId {
        AgencyId::parse(name).expect("valid agency")
    }

    #[test]
    fn quotas_come_from_the_environment_with_documented_defaults() {
        let config = |set: &'static [(&str, &str)]| {
            crate::config::Config::from_lookup(move |key| {
                let required = [
                    "TABLE_NAME",
                    "ATTACHMENTS_BUCKET",
                    "BATCH_BUCKET",
                    "BATCH_PREPARATION_QUEUE_URL",
                ];
                if let Some((_, value)) = set.iter().find(|(k, _)| *k == key) {
                    Some(value.to_string())
                } else if required.contains(&key) || key.contains("_URL_") || key.ends_with("_ARN")
                {
                    Some(format!("memory://{key}"))
                } else {
                    None // everything else keeps its default
                }
            })
            .map(|c| c.quotas)
        };
        assert_eq!(config(&[]).expect("defaults"), Quotas::default());
        assert_eq!(
            (
                Quotas::default().requests_per_second,
                Quotas::default().request_burst
            ),
            (50, 100)
        );
        assert_eq!(Quotas::default().batch_items_per_day, 1_000_000);
        assert_eq!(Quotas::default().open_tasks, 100_000);
        let set = config(&[
            ("QUOTA_REQUESTS_PER_SECOND", "7"),
            ("QUOTA_REQUEST_BURST", "9"),
            ("QUOTA_BATCH_ITEMS_PER_DAY", "11"),
            ("QUOTA_OPEN_TASKS", "13"),
        ])
        .expect("valid");
        assert_eq!(
            (
                set.requests_per_second,
                set.request_burst,
                set.batch_items_per_day,
                set.open_tasks
            ),
            (7, 9, 11, 13)
        );
        for bad in [
            &[("QUOTA_REQUEST_BURST", "0")],
            &[("QUOTA_REQUEST_BURST", "-1")],
            &[("QUOTA_REQUEST_BURST", "lots")],
            &[("QUOTA_OPEN_TASKS", "0")],
        ] {
            let err = config(bad).unwrap_err();
            assert!(err.to_string().contains(bad[0].0), "{err}");
        }
    }

    #[tokio::test]
    async fn an_upload_over_the_daily_quota_is_recorded_as_a_failed_batch() {
        use crate::domain::{BatchStatus, Caller, Role, TaskType, UserId};
        use crate::ports::{BatchStore, ObjectStore};
        let world = crate::testing::MemoryWorld::new();
        let boss = Caller {
            user: UserId::parse("boss").expect("valid"),
            agency: agency("a1"),
            role: Role::Manager,
        };
        // The agency is known once it has a task.
        let services = world.services();
        services
            .tasks
            .create(&boss, &serde_json::json!({"title": "first"}), None)
            .await
            .expect("created");
        *world.batches.daily_item_limit.lock().expect("lock") = Some(1);
        let key = "uploads/a1/orders.jsonl";
        let body = b"{\"n\": 1}\n{\"n\": 2}\n".to_vec();
        world
            .objects
            .put(key, body, "application/x-ndjson")
            .await
            .expect("stored");
        let id = services
            .batches
            .create_from_upload(key, "v1")
            .await
            .expect("recorded, not retried")
            .expect("a batch");
        // Counted once prepared, when the number of items is known.
        let prepared = world.run_preparations(&services.batch_preparer).await;
        assert!(
            matches!(
                prepared.as_slice(),
                [Ok(crate::service::Prepared::Failed(_))]
            ),
            "{prepared:?}"
        );
        let batch = world
            .batches
            .get(&boss.agency, id)
            .await
            .expect("read")
            .expect("recorded");
        assert_eq!(batch.status, BatchStatus::Failed);
        let error = batch.error.unwrap_or_default();
        assert!(
            error.contains(BATCH_ITEMS_PER_DAY) && error.contains('1'),
            "{error}"
        );
        let task = world
            .store
            .all_tasks()
            .into_iter()
            .find(|t| t.task_type == TaskType::Batch)
            .expect("the batch task");
        assert_eq!(task.status, crate::domain::TaskStatus::Failed);
        assert!(world.orchestrator.started.lock().expect("lock").is_empty());
        let counted: u64 = world
            .batches
            .daily_items
            .lock()
            .expect("lock")
            .values()
            .sum();
        assert_eq!(counted, 0, "a refused upload counts nothing");
        // A redelivery of the same event creates nothing more.
        let again = services.batches.create_from_upload(key, "v1").await;
        assert!(matches!(again, Ok(None)), "{again:?}");
        assert_eq!(
            world
                .store
                .all_tasks()
                .iter()
                .filter(|t| t.task_type == TaskType::Batch)
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn open_tasks_are_capped_and_closing_or_retrying_moves_the_count() {
        use crate::domain::{Caller, Role, TaskStatus, UserId};
        let world = crate::testing::MemoryWorld::new();
        *world.store.open_task_limit.lock().expect("lock") = Some(3);
        let services = world.services();
        let boss = Caller {
            user: UserId::parse("boss").expect("valid"),
            agency: agency("a1"),
            role: Role::Manager,
        };
        let create = |title: &str| {
            let body = serde_json::json!({"title": title, "executor": {"type": "echo"}});
            let services = services.clone();
            let boss = boss.clone();
            async move { services.tasks.create(&boss, &body, None).await }
        };
        let mut ids = Vec::new();
        for n in 0..3 {
            let created = create(&format!("t{n}")).await.expect("under the ceiling");
            ids.push(TaskId::parse(created.task["id"].as_str().expect("id")).expect("id"));
        }
        assert_eq!(world.store.open_tasks(&boss.agency), 3);
        let refused = create("one too many").await.unwrap_err();
        assert!(
            matches!(
                refused,
                AppError::QuotaExceeded {
                    quota: OPEN_TASKS,
                    limit: 3,
                    retry_after_seconds: OPEN_TASKS_RETRY_AFTER_SECONDS,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert_eq!(refused.status_code(), 429);
        assert_eq!(world.store.all_tasks().len(), 3, "nothing was written");
        // Another agency has its own ceiling.
        let other = Caller {
            agency: agency("a2"),
            ..boss.clone()
        };
        let body = serde_json::json!({"title": "elsewhere"});
        services
            .tasks
            .create(&other, &body, None)
            .await
            .expect("own ceiling");

        // Cancelling one frees its slot; archiving the cancelled task frees nothing more.
        services
            .tasks
            .cancel(&boss, ids[0], None)
            .await
            .expect("cancelled");
        assert_eq!(world.store.open_tasks(&boss.agency), 2);
        services
            .tasks
            .archive(&boss, ids[0], None)
            .await
            .expect("archived");
        assert_eq!(world.store.open_tasks(&boss.agency), 2);
        create("fits again").await.expect("a slot was freed");
        create("full again").await.unwrap_err();

        // A failed task is closed; retrying it opens it again, which needs a free slot.
        let mut failed = world
            .store
            .get(&boss.agency, ids[1])
            .await
            .unwrap()
            .unwrap();
        let read = failed.version;
        failed.status = TaskStatus::Failed;
        failed.version += 1;
        world.store.replace(&failed, read).await.expect("failed");
        assert_eq!(world.store.open_tasks(&boss.agency), 2);
        create("takes the failed one's slot").await.expect("room");
        let retry = services.tasks.retry(&boss, ids[1], None).await.unwrap_err();
        assert!(
            matches!(
                retry,
                AppError::QuotaExceeded {
                    quota: OPEN_TASKS,
                    ..
                }
            ),
            "{retry:?}"
        );
        assert_eq!(
            world
                .store
                .get(&boss.agency, ids[1])
                .await
                .unwrap()
                .unwrap()
                .status,
            TaskStatus::Failed,
            "a refused retry changes nothing"
        );
        // Archiving an open task and deleting one both free a slot.
        services
            .tasks
            .archive(&boss, ids[2], None)
            .await
            .expect("archived");
        assert_eq!(world.store.open_tasks(&boss.agency), 2);
        let retried = services
            .tasks
            .retry(&boss, ids[1], None)
            .await
            .expect("retried");
        assert!(!retried.status.is_final());
        assert_eq!(world.store.open_tasks(&boss.agency), 3);
        services
            .tasks
            .hard_delete(&boss, ids[1], None)
            .await
            .expect("deleted");
        assert_eq!(world.store.open_tasks(&boss.agency), 2);
        let open = world
            .store
            .all_tasks()
            .iter()
            .filter(|t| t.agency_id == boss.agency && t.counts_as_open())
            .count();
        assert_eq!(open, 2, "the count is the number of open tasks");
    }

    #[test]
    fn the_daily_quota_waits_for_the_next_utc_day() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-30T23:59:30Z")
            .expect("valid")
            .with_timezone(&chrono::Utc);
        assert_eq!(seconds_to_next_utc_day(at), 30);
        assert_eq!(quota_day(at), "2026-11-30");
    }
}
