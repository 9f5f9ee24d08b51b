//! `GET /api/tasks` and the agent list on DynamoDB. GSI1 and GSI2 carry a task's keys and a few
//! attributes that seldom change ([`LIST_INDEX_ATTRIBUTES`]), not the whole task: with the whole
//! task projected, every task write copied up to the item's size into one partition per agency
//! (~2,200 WCU/s at 1M tasks/hour of 2 KB tasks, over the ~1,000 a partition takes). A list
//! therefore reads the page's keys from the index, filters there on what the index holds, and
//! reads the tasks themselves with BatchGetItem (status is checked on the task read).

use super::keys::{n, s, Index, AGENCY_INDEX, ASSIGNEE_INDEX, PK, SK, TASK_SK};
use super::{cursor, from_item, keys, Item};
use crate::domain::limits::{self, MAX_PAGE_BYTES};
use crate::domain::{AgencyId, Task, TaskId, TaskStatus};
use crate::error::AppError;
use crate::ports::{Page, TaskQuery};
use crate::store::from_sdk;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use aws_sdk_dynamodb::Client;
use std::collections::HashMap;

/// What GSI1 and GSI2 hold besides their keys (template.yaml's `NonKeyAttributes` for both; a
/// test keeps the two equal). Only attributes that a task's lifecycle does not change: a write
/// that changes no key and no projected attribute writes nothing to an index, so a task costs
/// its agency's partition one index write when it is created, not one per status change.
/// `priority` and `dueEpochMs` change only on an edit or a sweeper promotion or escalation.
pub const LIST_INDEX_ATTRIBUTES: &[&str] =
    &["entity", "type", "priority", "dueEpochMs", "automated"];

/// Upper bound on DynamoDB round trips for one list page, so a very selective
/// filter returns a short page with a cursor instead of scanning a whole partition.
const MAX_QUERIES_PER_PAGE: usize = 8;
/// Items each list query evaluates at least, before filtering.
const QUERY_READ_AHEAD: usize = 100;
/// BatchGetItem takes at most 100 keys.
const BATCH_GET_KEYS: usize = 100;

/// The filter on what the index holds (status is not there: it is checked on the task read).
pub(super) fn index_filter(query: &TaskQuery) -> (Option<String>, HashMap<String, String>, Item) {
    let mut clauses = Vec::new();
    let mut names = HashMap::new();
    let mut values = HashMap::new();
    if let Some(priority) = query.priority {
        clauses.push("priority = :priority");
        values.insert(":priority".to_owned(), s(priority.as_str()));
    }
    if let Some(task_type) = query.task_type {
        clauses.push("#type = :type");
        names.insert("#type".to_owned(), "type".to_owned());
        values.insert(":type".to_owned(), s(task_type.as_str()));
    }
    if let Some(due) = query.due_before {
        clauses.push("dueEpochMs < :due");
        values.insert(":due".to_owned(), n(due.timestamp_millis()));
    }
    let expression = (!clauses.is_empty()).then(|| clauses.join(" AND "));
    (expression, names, values)
}

/// The status part of the filter, on the task as read.
fn status_matches(query: &TaskQuery, task: &Task) -> bool {
    match query.status {
        Some(status) => task.status == status,
        None => query.include_archived || task.status != TaskStatus::Archived,
    }
}

pub(super) async fn tasks(
    client: &Client,
    table: &str,
    agency: &AgencyId,
    query: &TaskQuery,
) -> Result<Page<Task>, AppError> {
    let (index, partition): (Index, String) = match &query.assignee {
        Some(user) => (
            ASSIGNEE_INDEX,
            keys::assignee_partition(agency, user.as_str()),
        ),
        None => (AGENCY_INDEX, keys::agency_partition(agency)),
    };
    let cursor_attrs = [PK, SK, index.pk, index.sk];
    let mut start = match &query.cursor {
        Some(c) => Some(cursor::decode(c, &cursor_attrs, index.pk, &partition)?),
        None => None,
    };
    let (filter, names, values) = index_filter(query);
    // Resumes right after an entry returned.
    let cursor_after = |entry: &Item| -> HashMap<String, AttributeValue> {
        cursor_attrs
            .iter()
            .filter_map(|a| Some(((*a).to_owned(), entry.get(*a)?.clone())))
            .collect()
    };
    let mut tasks: Vec<Task> = Vec::new();
    let mut bytes = 0;
    'pages: for _ in 0..MAX_QUERIES_PER_PAGE {
        let from = start.take();
        let mut request = client
            .query()
            .table_name(table)
            .index_name(index.name)
            .key_condition_expression("#pk = :partition")
            .expression_attribute_names("#pk", index.pk)
            .expression_attribute_values(":partition", s(partition.clone()))
            .scan_index_forward(false)
            // Read ahead so sparse filters fill a page in few round trips.
            .limit(query.limit.max(QUERY_READ_AHEAD) as i32)
            .set_exclusive_start_key(from.clone())
            .set_filter_expression(filter.clone());
        for (k, v) in &names {
            request = request.expression_attribute_names(k, v);
        }
        for (k, v) in &values {
            request = request.expression_attribute_values(k, v.clone());
        }
        let out = request
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:Query", e))?;
        let entries = out.items.unwrap_or_default();
        let mut previous: Option<&Item> = None;
        let mut next = 0;
        while next < entries.len() {
            // Read no more tasks than the page can still take (each entry gives at most one).
            let want = query.limit.saturating_sub(tasks.len());
            if want == 0 {
                start = match previous {
                    Some(previous) => Some(cursor_after(previous)),
                    None => from,
                };
                break 'pages;
            }
            let chunk = &entries[next..(next + want.min(BATCH_GET_KEYS)).min(entries.len())];
            next += chunk.len();
            let mut read = read_tasks(client, table, agency, chunk).await?;
            for entry in chunk {
                // Gone since the index was read (deleted): not listed.
                let Some(task) = entry_task_id(entry).and_then(|id| read.remove(&id)) else {
                    continue;
                };
                if !status_matches(query, &task) {
                    continue;
                }
                // The page ends at `limit` items or before its items would pass the byte
                // budget (the first item always fits: one task is far below it).
                let size = limits::page_item_bytes(&task);
                if !tasks.is_empty() && bytes + size > MAX_PAGE_BYTES {
                    start = match previous {
                        Some(previous) => Some(cursor_after(previous)),
                        // The page ended with the previous query: resume where it stopped.
                        None => from,
                    };
                    break 'pages;
                }
                bytes += size;
                tasks.push(task);
                previous = Some(entry);
            }
        }
        start = out.last_evaluated_key;
        if tasks.len() >= query.limit || start.is_none() {
            break;
        }
    }
    Ok(Page {
        items: tasks,
        next_cursor: start.as_ref().map(cursor::encode),
    })
}

/// The task id of an index entry (its GSI1SK or GSI2SK, both the id).
fn entry_task_id(entry: &Item) -> Option<TaskId> {
    let pk = entry.get(PK)?.as_s().ok()?;
    TaskId::parse(pk.rsplit('#').next()?).ok()
}

/// The tasks behind index entries, by id (strongly consistent: an entry the index already
/// shows is always found, unless the task was deleted since).
async fn read_tasks(
    client: &Client,
    table: &str,
    agency: &AgencyId,
    entries: &[Item],
) -> Result<HashMap<TaskId, Task>, AppError> {
    let keys = entries
        .iter()
        .filter_map(entry_task_id)
        .map(|id| {
            Item::from([
                (PK.to_owned(), s(keys::task_pk(agency, id))),
                (SK.to_owned(), s(TASK_SK)),
            ])
        })
        .collect();
    let mut read = HashMap::new();
    for item in batch_get(client, table, keys, true).await? {
        let task: Task = from_item(item)?;
        read.insert(task.id, task);
    }
    Ok(read)
}

/// BatchGetItem of `keys` (any number, 100 per request), resending what DynamoDB left
/// unprocessed; the items come back in no particular order.
pub(crate) async fn batch_get(
    client: &Client,
    table: &str,
    keys: Vec<Item>,
    consistent: bool,
) -> Result<Vec<Item>, AppError> {
    let mut items = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(BATCH_GET_KEYS) {
        let mut pending = Some(
            KeysAndAttributes::builder()
                .set_keys(Some(chunk.to_vec()))
                .consistent_read(consistent)
                .build()
                .map_err(AppError::internal)?,
        );
        for attempt in 0..8u32 {
            let Some(request) = pending.take() else { break };
            let out = client
                .batch_get_item()
                .request_items(table, request)
                .send()
                .await
                .map_err(|e| from_sdk("dynamodb:BatchGetItem", e))?;
            items.extend(
                out.responses
                    .and_then(|mut r| r.remove(table))
                    .unwrap_or_default(),
            );
            pending = out
                .unprocessed_keys
                .and_then(|mut u| u.remove(table))
                .filter(|k| !k.keys.is_empty());
            if pending.is_some() {
                tokio::time::sleep(std::time::Duration::from_millis(25 << attempt)).await;
            }
        }
        if pending.is_some() {
            return Err(AppError::Unavailable(
                "dynamodb:BatchGetItem left keys unprocessed".into(),
            ));
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Priority, TaskType};
    use std::collections::BTreeSet;

    /// The `NonKeyAttributes` of an index's `Projection` in template.yaml (INCLUDE), or the
    /// projection type when it is not INCLUDE.
    fn template_projection(index: &str) -> Result<BTreeSet<String>, String> {
        let template: serde_yaml::Value = serde_yaml::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../template.yaml"
        )))
        .unwrap();
        let gsis = template["Resources"]["TasksTable"]["Properties"]["GlobalSecondaryIndexes"]
            .as_sequence()
            .expect("the table's GSIs");
        let gsi = gsis
            .iter()
            .find(|g| g["IndexName"].as_str() == Some(index))
            .expect("the index");
        let projection = &gsi["Projection"];
        match projection["ProjectionType"].as_str() {
            Some("INCLUDE") => Ok(projection["NonKeyAttributes"]
                .as_sequence()
                .expect("NonKeyAttributes")
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect()),
            other => Err(format!("{other:?}")),
        }
    }

    /// Static check (no local test can show a partition's write rate): the list indexes do not
    /// copy whole tasks, hold exactly what the code reads from them, and every attribute a list
    /// filter reads from an index is one it holds.
    #[test]
    fn the_list_indexes_project_what_the_list_reads_and_not_the_whole_task() {
        let wanted: BTreeSet<String> = LIST_INDEX_ATTRIBUTES
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
        for index in [AGENCY_INDEX.name, ASSIGNEE_INDEX.name] {
            assert_eq!(template_projection(index), Ok(wanted.clone()), "{index}");
        }
        let every_filter = TaskQuery {
            status: Some(TaskStatus::Queued),
            priority: Some(Priority::High),
            task_type: Some(TaskType::Simple),
            due_before: Some(chrono::Utc::now()),
            limit: 10,
            ..TaskQuery::default()
        };
        let (expression, names, _) = index_filter(&every_filter);
        let expression = expression.expect("a filter");
        for word in expression.split(|c: char| !(c.is_alphanumeric() || c == '#' || c == ':')) {
            let attribute = match word {
                "" | "AND" => continue,
                placeholder if placeholder.starts_with(':') => continue,
                name if name.starts_with('#') => names[name].as_str(),
                attribute => attribute,
            };
            assert!(
                wanted.contains(attribute),
                "the list filters on {attribute}, which the index does not hold"
            );
        }
        // Status changes on every step of a task's life: projecting it would write the index
        // on each one. It is checked on the task read instead.
        assert!(!wanted.contains("status"));
    }

    #[test]
    fn status_is_filtered_on_the_task_read_with_archived_hidden_unless_asked_for() {
        let now = chrono::Utc::now();
        let task = |status: &str| -> Task {
            serde_json::from_value(serde_json::json!({
                "id": TaskId::generate(), "agencyId": "acme", "createdBy": "boss", "title": "t",
                "type": "simple", "priority": "low", "status": status, "version": 1,
                "createdAt": now, "updatedAt": now,
            }))
            .unwrap()
        };
        let all = TaskQuery::default();
        assert!(status_matches(&all, &task("queued")));
        assert!(!status_matches(&all, &task("archived")));
        let archived = TaskQuery {
            include_archived: true,
            ..TaskQuery::default()
        };
        assert!(status_matches(&archived, &task("archived")));
        let queued = TaskQuery {
            status: Some(TaskStatus::Queued),
            ..TaskQuery::default()
        };
        assert!(status_matches(&queued, &task("queued")));
        assert!(!status_matches(&queued, &task("pending")));
    }
}
