//! The local DLQ redrive (`make redrive`), which SQS's StartMessageMoveTask does on AWS.

use aws_sdk_sqs::types::MessageSystemAttributeName;
use integration_tests::stack;

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
