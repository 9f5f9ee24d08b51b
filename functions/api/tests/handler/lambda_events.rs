//! The non-HTTP fixtures deserialize into the `aws_lambda_events` types the
//! worker, batch and sweeper functions receive.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::SqsEvent;
use serde_json::{json, Value};

#[test]
fn sqs_tier_message() {
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
    let body: Value = serde_json::from_str(record.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"taskId": "01J00000000000000000000000", "agencyId": "acme", "attempt": 1})
    );
    assert!(shared::domain::TaskId::parse(body["taskId"].as_str().unwrap()).is_ok());
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
