//! Fair share between agencies within a tier: every message the project sends to a tier queue
//! carries `MessageGroupId` = its agency, so SQS fair queues keep one agency's backlog from
//! holding up another's. (The Step Functions senders are checked on the state machine
//! definitions by `infra/local/tests/state_machines.rs`.) Also the local DLQ redrive, which keeps
//! the group.

use aws_sdk_sqs::types::MessageSystemAttributeName;
use integration_tests::stack;
use shared::domain::{AgencyId, DispatchMessage, Priority, TaskId};
use shared::ports::Dispatcher;
use std::collections::BTreeMap;
use std::time::Duration;
use worker::QueueActions;

/// The group of the one message on `queue`.
async fn group_of_next(sqs: &aws_sdk_sqs::Client, queue: &str) -> Option<String> {
    let received = sqs
        .receive_message()
        .queue_url(queue)
        .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
        .wait_time_seconds(5)
        .send()
        .await
        .expect("receive");
    let message = received.messages().first().expect("a message").clone();
    sqs.delete_message()
        .queue_url(queue)
        .receipt_handle(message.receipt_handle().unwrap())
        .send()
        .await
        .expect("delete");
    message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
        .cloned()
}

#[tokio::test]
async fn every_sender_puts_its_agency_as_the_message_group() {
    let sqs = stack().clients().await.sqs;
    // A queue of its own: no poller takes the messages before the test reads them.
    let queue = sqs
        .create_queue()
        .queue_name(format!("fairness-{}", ulid::Ulid::new()))
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("queue url");

    // The API's and the sweeper's dispatches.
    let urls = BTreeMap::from([(Priority::Normal, queue.clone())]);
    let dispatcher = shared::store::SqsDispatcher::new(sqs.clone(), urls.clone(), urls);
    let run = DispatchMessage {
        task_id: TaskId::generate(),
        agency_id: AgencyId::parse("fair-acme").unwrap(),
        dispatch_id: "d1".into(),
        priority: Priority::Normal,
        enqueued_at: chrono::Utc::now(),
    };
    dispatcher
        .dispatch(&run, Duration::ZERO)
        .await
        .expect("dispatch");
    assert_eq!(
        group_of_next(&sqs, &queue).await.as_deref(),
        Some("fair-acme")
    );

    // The worker's copies (a requeued chunk, a delayed retry, a dead letter).
    let chunk = r#"{"kind": "chunk", "batchId": "b", "agencyId": "fair-other", "chunkKey": "k", "chunkIndex": 0, "round": 0, "taskToken": "t"}"#;
    worker::SqsQueue::new(sqs.clone())
        .send(&queue, chunk, &[], Duration::ZERO)
        .await
        .expect("send");
    assert_eq!(
        group_of_next(&sqs, &queue).await.as_deref(),
        Some("fair-other")
    );
    let _ = sqs.delete_queue().queue_url(&queue).send().await;
}

/// `make redrive`: a tier's dead letters go back to its queue, bodies, attributes and message
/// group kept (SQS's StartMessageMoveTask does this on AWS; moto answers it with HTTP 500).
#[tokio::test]
async fn redrive_moves_dead_letters_back_with_their_attributes_and_group() {
    let sqs = stack().clients().await.sqs;
    let queue = |name: &str| {
        let sqs = sqs.clone();
        let name = format!("{name}-{}", ulid::Ulid::new());
        async move {
            sqs.create_queue()
                .queue_name(name)
                .send()
                .await
                .expect("create queue")
                .queue_url
                .expect("url")
        }
    };
    let (source, dead_letters) = (queue("redrive-src").await, queue("redrive-dlq").await);
    for n in 0..25 {
        sqs.send_message()
            .queue_url(&dead_letters)
            .message_body(format!(r#"{{"agencyId": "redrive-{}", "n": {n}}}"#, n % 2))
            .message_attributes(
                "error",
                aws_sdk_sqs::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(format!("failure {n}"))
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("send");
    }
    let mut reports = Vec::new();
    let moved = local_stack::redrive::redrive(&sqs, &dead_letters, &source, |n| reports.push(n))
        .await
        .expect("redrive");
    assert_eq!(moved, 25);
    assert_eq!(
        reports.last(),
        Some(&25),
        "progress is reported: {reports:?}"
    );

    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 25 {
        let received = sqs
            .receive_message()
            .queue_url(&source)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        let messages = received.messages.unwrap_or_default();
        assert!(!messages.is_empty(), "only {} came back", seen.len());
        for message in messages {
            let body: serde_json::Value = serde_json::from_str(message.body().unwrap()).unwrap();
            let n = body["n"].as_u64().unwrap();
            let group = message
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .cloned();
            assert_eq!(group, Some(format!("redrive-{}", n % 2)));
            let error = message.message_attributes().unwrap()["error"]
                .string_value()
                .unwrap()
                .to_owned();
            assert_eq!(error, format!("failure {n}"));
            assert!(seen.insert(n), "message {n} twice");
            sqs.delete_message()
                .queue_url(&source)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    let left = sqs
        .receive_message()
        .queue_url(&dead_letters)
        .wait_time_seconds(0)
        .send()
        .await
        .unwrap();
    assert!(left.messages.unwrap_or_default().is_empty());
    for url in [source, dead_letters] {
        let _ = sqs.delete_queue().queue_url(url).send().await;
    }
}
