//! The event publisher's FilterCriteria (template.yaml) against every status change the code
//! makes: each passes at least one filter, an insert of a task, step or batch passes, and a
//! write that keeps the status, or any other item, passes none. Evaluated with the local
//! stream mapping's matcher (`local_stack::event_filter`), the one `make dev` runs.

use local_stack::event_filter::passes;
use local_stack::template::Template;
use serde_json::{json, Value};
use shared::domain::{BatchStatus, StepStatus, TaskStatus};

fn filters() -> Vec<Value> {
    let template =
        Template::load(&local_stack::StackOptions::repo_root().join("template.yaml")).unwrap();
    let function = template.resource("EventPublisherFunction").unwrap();
    let filters = function
        .property_path(&[
            "Events",
            "TableStream",
            "Properties",
            "FilterCriteria",
            "Filters",
        ])
        .and_then(|f| f.as_sequence())
        .expect("the stream event has filters");
    // Lambda's default quota: five filters per event source mapping.
    assert!(filters.len() <= 5, "{} filters", filters.len());
    filters
        .iter()
        .map(|f| serde_json::from_str(f.get("Pattern").unwrap().as_str().unwrap()).unwrap())
        .collect()
}

fn record(entity: &str, old: Option<&str>, new: &str) -> Value {
    let image = |status: &str| json!({"entity": {"S": entity}, "status": {"S": status}});
    match old {
        Some(old) => {
            json!({"eventName": "MODIFY", "dynamodb": {"OldImage": image(old), "NewImage": image(new)}})
        }
        None => json!({"eventName": "INSERT", "dynamodb": {"NewImage": image(new)}}),
    }
}

/// Every (from, to) a task, step or batch can take, by entity.
fn transitions() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut all = Vec::new();
    for from in TaskStatus::ALL {
        for to in TaskStatus::ALL {
            if from != to && from.can_become(*to) {
                all.push(("task", from.as_str(), to.as_str()));
            }
        }
    }
    // Steps: started (running, or waiting for a person), settled, skipped, reset by a retry.
    use StepStatus::*;
    let steps = [
        (Pending, Running),
        (Pending, Waiting),
        (Pending, Skipped),
        (Pending, Failed),
        (Running, Completed),
        (Running, Failed),
        (Running, Skipped),
        (Running, Waiting),
        (Waiting, Completed),
        (Waiting, Failed),
        (Waiting, Skipped),
        (Waiting, Running),
        (Completed, Pending),
        (Failed, Pending),
        (Skipped, Pending),
        (Failed, Running),
    ];
    all.extend(steps.iter().map(|(a, b)| ("step", a.as_str(), b.as_str())));
    // Batches: prepared, settled, cancelled, put back after a failed start, retried.
    use BatchStatus as B;
    let batches = [
        (B::Pending, B::Processing),
        (B::Pending, B::Failed),
        (B::Pending, B::Cancelled),
        (B::Processing, B::Completed),
        (B::Processing, B::Failed),
        (B::Processing, B::Cancelled),
        (B::Processing, B::Pending),
        (B::Completed, B::Pending),
        (B::Failed, B::Pending),
    ];
    all.extend(
        batches
            .iter()
            .map(|(a, b)| ("batch", a.as_str(), b.as_str())),
    );
    all
}

#[test]
fn every_status_change_and_insert_passes() {
    let filters = filters();
    for (entity, from, to) in transitions() {
        assert!(
            passes(&filters, &record(entity, Some(from), to)),
            "{entity} {from} -> {to}"
        );
    }
    for (entity, status) in TaskStatus::ALL
        .iter()
        .map(|s| ("task", s.as_str()))
        .chain(StepStatus::ALL.iter().map(|s| ("step", s.as_str())))
        .chain(BatchStatus::ALL.iter().map(|s| ("batch", s.as_str())))
    {
        assert!(
            passes(&filters, &record(entity, None, status)),
            "{entity} created {status}"
        );
    }
}

#[test]
fn writes_keeping_the_status_other_items_and_deletions_pass_none() {
    let filters = filters();
    for (entity, status) in TaskStatus::ALL
        .iter()
        .map(|s| ("task", s.as_str()))
        .chain(StepStatus::ALL.iter().map(|s| ("step", s.as_str())))
        .chain(BatchStatus::ALL.iter().map(|s| ("batch", s.as_str())))
    {
        assert!(
            !passes(&filters, &record(entity, Some(status), status)),
            "{entity} {status} kept"
        );
    }
    for entity in [
        "idempotency",
        "step_token",
        "dedupe",
        "item_failure",
        "sla_breach",
    ] {
        assert!(
            !passes(&filters, &record(entity, None, "queued")),
            "{entity}"
        );
        assert!(
            !passes(&filters, &record(entity, Some("pending"), "queued")),
            "{entity}"
        );
    }
    let counter = json!({"eventName": "MODIFY", "dynamodb": {"NewImage": {"holders": {"M": {}}}, "OldImage": {}}});
    assert!(!passes(&filters, &counter));
    let removed = json!({"eventName": "REMOVE", "dynamodb": {"OldImage": {"entity": {"S": "task"}, "status": {"S": "completed"}}}});
    assert!(!passes(&filters, &removed));
}
