//! `GET /api/batches`: an agency's batches, newest first, filtered and paged. Batches are read
//! through their batch tasks' index (the task list filtered to `type=batch`), so paging and
//! cursors behave as for tasks.

use super::{BatchService, BatchView};
use crate::domain::{BatchStatus, Caller, Priority, TaskStatus, TaskType};
use crate::error::{AppError, FieldErrors};
use crate::ports::{Page, TaskQuery};
use std::collections::HashMap;

pub const DEFAULT_BATCH_PAGE: usize = 20;
/// Smaller than a task page: a running batch's view sums its chunk counters (a query each).
pub const MAX_BATCH_PAGE: usize = 50;

/// The filters and paging of `GET /api/batches`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchQuery {
    pub status: Option<BatchStatus>,
    pub priority: Option<Priority>,
    pub limit: usize,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
}

impl BatchQuery {
    /// From query parameters; every problem is named, unknown parameters too.
    pub fn parse(params: &HashMap<String, String>) -> Result<BatchQuery, AppError> {
        const ALLOWED: [&str; 4] = ["status", "priority", "limit", "cursor"];
        let mut errors = FieldErrors::new();
        for key in params.keys().filter(|k| !ALLOWED.contains(&k.as_str())) {
            errors.add(
                key.clone(),
                format!("unknown query parameter; allowed: {}", ALLOWED.join(", ")),
            );
        }
        let get = |k: &str| params.get(k).map(String::as_str);
        let mut query = BatchQuery {
            limit: DEFAULT_BATCH_PAGE,
            ..BatchQuery::default()
        };
        if let Some(s) = get("status") {
            query.status = errors.check("status", s.parse::<BatchStatus>());
        }
        if let Some(p) = get("priority") {
            query.priority = errors.check("priority", p.parse());
        }
        if let Some(l) = get("limit") {
            query.limit = errors
                .check(
                    "limit",
                    match l.parse::<usize>() {
                        Ok(n) if (1..=MAX_BATCH_PAGE).contains(&n) => Ok(n),
                        _ => Err(format!("must be an integer from 1 to {MAX_BATCH_PAGE}")),
                    },
                )
                .unwrap_or(DEFAULT_BATCH_PAGE);
        }
        if let Some(c) = get("cursor") {
            if c.is_empty() || c.len() > 2048 {
                errors.add("cursor", "is not a cursor returned by this API");
            } else {
                query.cursor = Some(c.to_owned());
            }
        }
        errors.into_result()?;
        Ok(query)
    }
}

impl BatchService {
    /// The agency's batches, newest first. A status filter is applied to the batch tasks'
    /// status first (pending and processing batches have an in-progress task), then exactly:
    /// a page filtered by `pending` or `processing` may hold fewer than `limit` batches while
    /// more follow (`nextCursor` says so). Archived batch tasks are not listed.
    pub async fn list(
        &self,
        caller: &Caller,
        query: &BatchQuery,
    ) -> Result<Page<BatchView>, AppError> {
        let task_status = query.status.map(|status| match status {
            BatchStatus::Pending | BatchStatus::Processing => TaskStatus::InProgress,
            BatchStatus::Completed => TaskStatus::Completed,
            BatchStatus::Failed => TaskStatus::Failed,
            BatchStatus::Cancelled => TaskStatus::Cancelled,
        });
        let tasks = self
            .tasks
            .list(
                &caller.agency,
                &TaskQuery {
                    status: task_status,
                    priority: query.priority,
                    task_type: Some(TaskType::Batch),
                    limit: query.limit,
                    cursor: query.cursor.clone(),
                    ..TaskQuery::default()
                },
            )
            .await?;
        let batches = futures::future::try_join_all(
            tasks
                .items
                .iter()
                .map(|task| self.batches.get(&caller.agency, task.id)),
        )
        .await?;
        let mut items = Vec::with_capacity(batches.len());
        for batch in batches.into_iter().flatten() {
            if query.status.is_some_and(|wanted| wanted != batch.status) {
                continue;
            }
            items.push(self.view(batch).await?);
        }
        Ok(Page {
            items,
            next_cursor: tasks.next_cursor,
        })
    }
}
