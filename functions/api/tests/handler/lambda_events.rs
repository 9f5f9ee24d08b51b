//! The non-HTTP fixtures deserialize into the `aws_lambda_events` types the
//! worker, batch and sweeper functions receive.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::SqsEvent;
use serde_json::json;
use shared::domain::{Caller, DispatchMessage, Priority, Role, TaskStatus, UserId};
use shared::ports::TaskStore;
use shared::service::Delivery;
use shared::testing::MemoryWorld;

#[tokio::test]
async fn sqs_tier_message_is_a_dispatch_the_worker_runs() {
    let event: SqsEvent =
        serde_json::from_str(include_str!("../../../../events/sqs-tier-message.json")).unwrap();
    assert_eq!(event.records.len(), 1);
    let record = &event.records[0];
    let arn = record.event_source_arn.as_deref().unwrap();
    assert!(
        arn.starts_with("arn:aws:sqs:") && arn.ends_with("-critical"),
        "{arn}"
    );
    assert_eq!(record.event_source.as_deref(), Some("aws:sqs"));
    assert!(record.message_id.is_some() && record.receipt_handle.is_some());
    let body = record.body.as_deref().unwrap();
    let message: DispatchMessage = serde_json::from_str(body).expect("a dispatch message");
    assert_eq!(message.priority, Priority::Critical);

    // The worker's own runner takes it: a queued task under that dispatch runs to completion
    // (an invalid message would be dead-lettered instead).
    let world = MemoryWorld::new();
    let created = world
        .services()
        .tasks
        .create(
            &Caller {
                user: UserId::parse("boss").unwrap(),
                agency: message.agency_id.clone(),
                role: Role::Manager,
            },
            &json!({"title": "fixture", "priority": "critical", "executor": {"type": "echo"}, "input": {"n": 1}}),
            None,
        )
        .await
        .unwrap();
    let mut task = world
        .store
        .all_tasks()
        .into_iter()
        .find(|t| t.id.to_string() == created.task["id"])
        .unwrap();
    task.id = message.task_id;
    task.status = TaskStatus::Queued;
    task.dispatch_id = Some(message.dispatch_id.clone());
    world.store.insert(&task, &[], None).await.unwrap();
    let (delivery, report) = world.services().runner.process(body).await;
    assert_eq!(delivery, Delivery::Ack);
    assert_eq!(report.map(|r| r.outcome), Some("completed"));
    let ran = world
        .store
        .get(&message.agency_id, message.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ran.status, TaskStatus::Completed);
    assert_eq!(ran.result, Some(json!({"n": 1})));
}

#[test]
fn s3_batch_upload() {
    let event: S3Event =
        serde_json::from_str(include_str!("../../../../events/s3-batch-upload.json")).unwrap();
    assert_eq!(event.records.len(), 1);
    let record = &event.records[0];
    assert_eq!(record.event_name.as_deref(), Some("ObjectCreated:Put"));
    assert_eq!(record.s3.bucket.name.as_deref(), Some("taskflow-batches"));
    assert_eq!(
        record.s3.object.key.as_deref(),
        Some("uploads/acme/orders.csv")
    );
    assert!(record.s3.object.size.is_some_and(|s| s > 0));
}

#[test]
fn scheduled_sweep() {
    let event: EventBridgeEvent =
        serde_json::from_str(include_str!("../../../../events/scheduled-sweep.json")).unwrap();
    assert_eq!(event.detail_type, "Scheduled Event");
    assert_eq!(event.source, "aws.events");
    assert!(event.time.is_some());
    let rules = event.resources.unwrap_or_default();
    assert!(rules[0].starts_with("arn:aws:events:") && rules[0].contains(":rule/"));
}
