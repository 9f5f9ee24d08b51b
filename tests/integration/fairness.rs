//! Fair share between agencies within a tier: every message the project sends to a tier queue
//! carries `MessageGroupId` = its agency, so SQS fair queues keep one agency's backlog from
//! holding up another's. (The Step Functions senders are checked on the state machine
//! definitions by `infra/local/tests/state_machines.rs`.)

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
