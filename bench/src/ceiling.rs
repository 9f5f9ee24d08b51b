//! The emulator's own ceiling for the call mix of a simple task lifecycle:
//! the same SDK calls with no project logic in between, as fast as the
//! harness can issue them at the same client concurrency.

use anyhow::Result;
use aws_sdk_dynamodb::types::AttributeValue;
use std::time::{Duration, Instant};

/// Lifecycles per second the emulator sustains: each one is a conditional
/// create, two reads and two conditional writes on DynamoDB, and one SQS
/// send, receive and delete.
pub async fn lifecycles_per_second(
    sdk: &aws_config::SdkConfig,
    concurrency: usize,
    duration: Duration,
) -> Result<f64> {
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let table = format!(
        "bench-ceiling-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    dynamodb
        .create_table()
        .table_name(&table)
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .attribute_definitions(
            aws_sdk_dynamodb::types::AttributeDefinition::builder()
                .attribute_name("PK")
                .attribute_type(aws_sdk_dynamodb::types::ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            aws_sdk_dynamodb::types::KeySchemaElement::builder()
                .attribute_name("PK")
                .key_type(aws_sdk_dynamodb::types::KeyType::Hash)
                .build()?,
        )
        .send()
        .await?;
    let queue = sqs
        .create_queue()
        .queue_name(&table)
        .send()
        .await?
        .queue_url
        .unwrap_or_default();
    let deadline = Instant::now() + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (dynamodb, sqs, table, queue) =
                (dynamodb.clone(), sqs.clone(), table.clone(), queue.clone());
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let pk = AttributeValue::S(ulid::Ulid::new().to_string());
                    let put = |version: i64| {
                        dynamodb
                            .put_item()
                            .table_name(&table)
                            .item("PK", pk.clone())
                            .item("version", AttributeValue::N(version.to_string()))
                            .item("payload", AttributeValue::S("x".repeat(300)))
                    };
                    let ok = async {
                        put(1)
                            .condition_expression("attribute_not_exists(PK)")
                            .send()
                            .await
                            .ok()?;
                        sqs.send_message()
                            .queue_url(&queue)
                            .message_body("{}")
                            .send()
                            .await
                            .ok()?;
                        let received = sqs
                            .receive_message()
                            .queue_url(&queue)
                            .max_number_of_messages(1)
                            .send()
                            .await
                            .ok()?;
                        for m in received.messages.unwrap_or_default() {
                            sqs.delete_message()
                                .queue_url(&queue)
                                .receipt_handle(m.receipt_handle.unwrap_or_default())
                                .send()
                                .await
                                .ok()?;
                        }
                        for version in [2, 3] {
                            dynamodb
                                .get_item()
                                .table_name(&table)
                                .key("PK", pk.clone())
                                .consistent_read(true)
                                .send()
                                .await
                                .ok()?;
                            put(version)
                                .condition_expression("version = :v")
                                .expression_attribute_values(
                                    ":v",
                                    AttributeValue::N((version - 1).to_string()),
                                )
                                .send()
                                .await
                                .ok()?;
                        }
                        Some(())
                    };
                    if ok.await.is_some() {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await?;
    }
    Ok(total as f64 / duration.as_secs_f64())
}
