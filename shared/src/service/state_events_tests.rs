//! State-change events: the mapping from stream images and the publisher's batching, retries
//! and batch item failure.

use super::state_events::{
    cap_error, events_for, status_title, EventDetail, Kind, StreamChange, MAX_ERROR_CHARS,
};
use super::state_publisher::{entry_bytes, StatePublisher, MAX_BYTES_PER_CALL};
use crate::error::AppError;
use crate::ports::BusEntry;
use crate::testing::{BusFault, MemoryEventBus};
use chrono::{TimeZone, Utc};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const TASK_ID: &str = "01JABCDEFGHJKMNPQRSTVWXYZ0";

/// An image as the stream carries it, from plain JSON (strings and numbers only).
fn image(fields: Value) -> serde_dynamo::Item {
    serde_dynamo::to_item(fields).unwrap()
}

fn task(status: &str, version: u64) -> serde_dynamo::Item {
    image(json!({
        "PK": format!("AGENCY#acme#TASK#{TASK_ID}"), "SK": "TASK", "entity": "task",
        "id": TASK_ID, "agencyId": "acme", "status": status, "priority": "high",
        "type": "automated", "version": version, "attempts": 1,
        "createdAt": "2026-12-01T10:00:00Z", "updatedAt": format!("2026-12-01T10:00:{version:02}Z"),
        "result": {"big": "x".repeat(10_000)}, "input": {"secret": "s"}, "metadata": {"m": "v"},
        "title": "Process invoice",
    }))
}

fn step(status: &str) -> serde_dynamo::Item {
    image(json!({
        "PK": format!("AGENCY#acme#TASK#{TASK_ID}"), "SK": "STEP#fetch", "entity": "step",
        "name": "fetch", "taskId": TASK_ID, "status": status, "attempts": 1,
        "config": {}, "result": {"body": "r"},
    }))
}

fn batch(status: &str) -> serde_dynamo::Item {
    image(json!({
        "PK": format!("AGENCY#acme#TASK#{TASK_ID}"), "SK": "BATCH", "entity": "batch",
        "id": TASK_ID, "taskId": TASK_ID, "agencyId": "acme", "status": status,
        "priority": "normal", "round": 0, "totalItems": 30, "successItems": 29, "failedItems": 1,
        "createdAt": "2026-12-01T10:00:00Z",
    }))
}

fn change(
    sequence: u128,
    old: Option<serde_dynamo::Item>,
    new: Option<serde_dynamo::Item>,
) -> StreamChange {
    StreamChange {
        sequence: sequence.to_string(),
        at: Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 30).unwrap(),
        old,
        new,
    }
}

fn only(change: &StreamChange) -> (String, EventDetail) {
    let mut events = events_for(change).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let event = events.remove(0);
    (event.detail_type, event.detail)
}

#[test]
fn a_task_status_change_is_one_event_with_a_small_detail() {
    let (detail_type, detail) = only(&change(
        1100000000017454423010,
        Some(task("in_progress", 3)),
        Some(task("completed", 4)),
    ));
    assert_eq!(detail_type, "Task Completed");
    assert_eq!(detail.kind, Kind::Task);
    assert_eq!(detail.agency_id, "acme");
    assert_eq!(detail.task_id, TASK_ID);
    assert_eq!(detail.status, "completed");
    assert_eq!(detail.previous_status.as_deref(), Some("in_progress"));
    assert_eq!(detail.priority.as_deref(), Some("high"));
    assert_eq!(detail.version, Some(4));
    assert_eq!(detail.sequence, "0000000000000000001100000000017454423010");
    assert_eq!(
        detail.event_id,
        format!("task:{TASK_ID}:0000000000000000001100000000017454423010")
    );
    assert_eq!(
        detail.occurred_at,
        Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 4).unwrap()
    );
    // Never the result, input, metadata or title.
    let text = serde_json::to_string(&detail).unwrap();
    for absent in ["result", "input", "metadata", "secret", "title", "xxxx"] {
        assert!(!text.contains(absent), "{absent} in {text}");
    }
    assert!(text.len() < 600, "{} bytes: {text}", text.len());
}

#[test]
fn an_inserted_item_is_an_event_without_a_previous_status() {
    let (detail_type, detail) = only(&change(5, None, Some(task("pending", 1))));
    assert_eq!(detail_type, "Task Pending");
    assert_eq!(detail.previous_status, None);
    let (detail_type, _) = only(&change(6, None, Some(task("in_progress", 1))));
    assert_eq!(detail_type, "Task In Progress");
}

#[test]
fn writes_that_keep_the_status_deletions_and_other_items_are_no_event() {
    let same = change(
        1,
        Some(task("in_progress", 3)),
        Some(task("in_progress", 4)),
    );
    assert!(events_for(&same).unwrap().is_empty());
    let removed = change(2, Some(task("completed", 4)), None);
    assert!(events_for(&removed).unwrap().is_empty());
    for other in [
        json!({"PK": "AGENCY#acme#IDEMPOTENCY#k", "SK": "IDEMPOTENCY", "entity": "idempotency", "status": "x"}),
        json!({"PK": "AGENCY#acme#QUOTA", "SK": "IN_FLIGHT#normal", "holders": {}}),
        json!({"PK": format!("AGENCY#acme#TASK#{TASK_ID}"), "SK": "TOKEN#fetch", "entity": "step_token", "status": "waiting"}),
        json!({"PK": format!("AGENCY#acme#TASK#{TASK_ID}#C1"), "SK": "CHUNK#000#00001", "status": "running"}),
        // An item that says it is a task but is not keyed as one.
        json!({"PK": format!("AGENCY#acme#TASK#{TASK_ID}"), "SK": "FAIL#000000000001", "entity": "task", "status": "failed"}),
    ] {
        let record = change(3, None, Some(image(other.clone())));
        assert!(events_for(&record).unwrap().is_empty(), "{other}");
    }
}

#[test]
fn steps_and_batches_name_their_kind_step_and_counts() {
    let (detail_type, detail) = only(&change(7, Some(step("pending")), Some(step("running"))));
    assert_eq!(detail_type, "Step Running");
    assert_eq!(detail.kind, Kind::Step);
    assert_eq!(detail.step.as_deref(), Some("fetch"));
    assert_eq!(detail.task_id, TASK_ID);
    assert_eq!(detail.version, None);
    assert!(detail
        .event_id
        .starts_with(&format!("step:{TASK_ID}:fetch:")));
    assert!(!serde_json::to_string(&detail).unwrap().contains("body"));

    let (detail_type, detail) = only(&change(8, Some(batch("processing")), Some(batch("failed"))));
    assert_eq!(detail_type, "Batch Failed");
    assert_eq!(detail.batch_id.as_deref(), Some(TASK_ID));
    assert_eq!(detail.round, Some(0));
    assert_eq!(
        (
            detail.total_items,
            detail.success_items,
            detail.failed_items
        ),
        (Some(30), Some(29), Some(1))
    );
    assert_eq!(
        detail.occurred_at,
        Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 30).unwrap()
    );
}

#[test]
fn the_error_is_capped_and_the_largest_detail_stays_small() {
    let long = "é".repeat(70_000);
    let mut new = task("failed", 9);
    new.insert("error".into(), serde_dynamo::AttributeValue::S(long));
    // The longest ids the API accepts (64-character agencies) and a 64 KB error.
    let agency = "a".repeat(64);
    new.insert(
        "PK".into(),
        serde_dynamo::AttributeValue::S(format!("AGENCY#{agency}#TASK#{TASK_ID}")),
    );
    let (_, detail) = only(&change(9, Some(task("in_progress", 8)), Some(new)));
    let error = detail.error.clone().unwrap();
    assert_eq!(error.chars().count(), MAX_ERROR_CHARS + 1);
    assert!(error.ends_with('…'));
    let size = serde_json::to_string(&detail).unwrap().len();
    assert!(size < 3 * 1024, "{size} bytes");
    assert_eq!(cap_error("short"), "short");
}

#[test]
fn status_titles() {
    assert_eq!(status_title("in_progress"), "In Progress");
    assert_eq!(status_title("completed"), "Completed");
}

#[test]
fn an_unreadable_image_is_reported_not_panicked_on() {
    let bad = image(
        json!({"PK": "AGENCY#acme#TASK#x", "SK": "TASK", "entity": "task", "status": "queued", "version": "not a number"}),
    );
    assert!(events_for(&change(1, None, Some(bad))).is_err());
    let bad_key =
        image(json!({"PK": "SOMETHING", "SK": "TASK", "entity": "task", "status": "queued"}));
    assert!(events_for(&change(1, None, Some(bad_key))).is_err());
}

/// A run of a task's transitions, one record each.
fn transitions(statuses: &[&str]) -> Vec<StreamChange> {
    let mut records = vec![change(100, None, Some(task(statuses[0], 1)))];
    for (i, pair) in statuses.windows(2).enumerate() {
        let v = i as u64 + 1;
        records.push(change(
            101 + i as u128,
            Some(task(pair[0], v)),
            Some(task(pair[1], v + 1)),
        ));
    }
    records
}

fn publisher(bus: &Arc<MemoryEventBus>) -> StatePublisher {
    StatePublisher::new(bus.clone()).with_retries(2, Duration::ZERO)
}

fn detail_types(entries: &[BusEntry]) -> Vec<String> {
    entries.iter().map(|e| e.detail_type.clone()).collect()
}

#[tokio::test]
async fn publishes_every_transition_in_order_ten_per_call() {
    let bus = Arc::new(MemoryEventBus::new());
    let statuses = [
        "pending",
        "assigned",
        "pending",
        "queued",
        "in_progress",
        "queued",
        "in_progress",
        "failed",
        "queued",
        "in_progress",
        "completed",
        "archived",
    ];
    let mut records = transitions(&statuses);
    // Writes without a status change in between are no event.
    records.insert(
        3,
        change(99, Some(task("pending", 3)), Some(task("pending", 3))),
    );
    let report = publisher(&bus).publish(&records).await;
    assert_eq!(report.published, statuses.len());
    assert_eq!(report.ignored, 1);
    assert_eq!(report.failed_sequence, None);
    assert_eq!(bus.calls(), vec![10, 2]);
    let expected: Vec<String> = statuses
        .iter()
        .map(|s| format!("Task {}", status_title(s)))
        .collect();
    assert_eq!(detail_types(&bus.accepted()), expected);
}

#[tokio::test]
async fn refused_entries_are_sent_again_alone() {
    let bus = Arc::new(MemoryEventBus::new());
    bus.fail_next(BusFault::Entries(vec![1]));
    let records = transitions(&["queued", "in_progress", "completed"]);
    let report = publisher(&bus).publish(&records).await;
    assert_eq!(report.failed_sequence, None);
    assert_eq!(report.published, 3);
    assert_eq!(bus.calls(), vec![3, 1]);
    // Each once; the refused one arrives after its neighbours (consumers order by sequence).
    assert_eq!(
        detail_types(&bus.accepted()),
        ["Task Queued", "Task Completed", "Task In Progress"]
    );
}

#[tokio::test]
async fn a_failed_call_is_retried_within_the_invocation() {
    let bus = Arc::new(MemoryEventBus::new());
    bus.fail_next(BusFault::Call(AppError::Unavailable("throttled".into())));
    let report = publisher(&bus)
        .publish(&transitions(&["queued", "in_progress"]))
        .await;
    assert_eq!(report.failed_sequence, None);
    assert_eq!(bus.accepted().len(), 2);
}

#[tokio::test]
async fn events_that_keep_failing_stop_the_batch_at_their_record() {
    let bus = Arc::new(MemoryEventBus::new());
    // Every attempt refuses the second entry of the first call (attempt 1 and two retries).
    bus.fail_next(BusFault::Entries(vec![1]));
    bus.fail_next(BusFault::Entries(vec![0]));
    bus.fail_next(BusFault::Entries(vec![0]));
    let mut statuses = vec!["pending"];
    statuses.extend(["assigned", "pending"].repeat(7));
    let records = transitions(&statuses); // 15 records: two calls
    let report = publisher(&bus).publish(&records).await;
    // The record of the refused entry is the batch item failure; the second call never runs.
    assert_eq!(report.failed_sequence.as_deref(), Some("101"));
    assert_eq!(report.published, 9);
    assert_eq!(bus.calls(), vec![10, 1, 1]);

    // The mapping's retry from that record delivers the rest: every event at least once,
    // the refused one exactly once.
    let retry = publisher(&bus).publish(&records[1..]).await;
    assert_eq!(retry.failed_sequence, None);
    let accepted = bus.accepted();
    let ids: Vec<String> = accepted
        .iter()
        .map(|e| {
            serde_json::from_str::<EventDetail>(&e.detail)
                .unwrap()
                .event_id
        })
        .collect();
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), records.len());
    let refused = format!("task:{TASK_ID}:{:0>40}", 101);
    assert_eq!(ids.iter().filter(|id| **id == refused).count(), 1);
}

#[test]
fn calls_stay_under_the_size_limit() {
    let entry = BusEntry {
        detail_type: "Task Failed".into(),
        detail: "x".repeat(5 * 1024),
    };
    assert!(10 * entry_bytes(&entry) < MAX_BYTES_PER_CALL);
}

#[test]
fn the_detail_is_what_openapi_json_documents() {
    let doc: Value =
        serde_json::from_str(include_str!("../../../functions/api/openapi.json")).unwrap();
    let schema = &doc["components"]["schemas"]["StateChangeDetail"];
    let documented: std::collections::BTreeSet<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let statuses = schema["properties"]["status"]["enum"].as_array().unwrap();
    let records = [
        change(1, Some(task("in_progress", 3)), Some(task("failed", 4))),
        change(2, None, Some(step("pending"))),
        change(3, Some(batch("pending")), Some(batch("processing"))),
    ];
    for record in &records {
        let (_, detail) = only(record);
        let mut with_error = detail.clone();
        with_error.error = Some("boom".into());
        let value = serde_json::to_value(&with_error).unwrap();
        for key in value.as_object().unwrap().keys() {
            assert!(documented.contains(key.as_str()), "{key} is not documented");
        }
        for required in schema["required"].as_array().unwrap() {
            assert!(
                value.get(required.as_str().unwrap()).is_some(),
                "{required}"
            );
        }
        assert!(statuses.contains(&value["status"]), "{}", value["status"]);
    }
    // Every status of every kind is documented.
    for status in crate::domain::TaskStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .chain(crate::domain::StepStatus::ALL.iter().map(|s| s.as_str()))
        .chain(crate::domain::BatchStatus::ALL.iter().map(|s| s.as_str()))
    {
        assert!(statuses.contains(&json!(status)), "{status}");
    }
}
