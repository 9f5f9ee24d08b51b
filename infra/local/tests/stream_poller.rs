//! The local DynamoDB stream mapping on moto's stream: filters, a batch item failure retried
//! from its record, an invocation error bisected, and a batch that keeps failing sent to the
//! OnFailure queue while the shard moves on.

use aws_lambda_events::event::dynamodb::Event;
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, StreamSpecification, StreamViewType,
};
use local_stack::emulator::{free_port, sdk_config, Emulator};
use local_stack::provision::StreamSource;
use local_stack::stream_poller::{self, StreamHandler, StreamMapping, StreamStats};
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn venv() -> PathBuf {
    std::env::var_os("MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv")))
}

/// The keys of each invocation's records, in order.
type Calls = Arc<Mutex<Vec<Vec<String>>>>;

struct Setup {
    _emulator: Emulator,
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    dlq: String,
    calls: Calls,
    stats: Arc<StreamStats>,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

fn keys(event: &Event) -> Vec<String> {
    event
        .records
        .iter()
        .map(|r| match r.change.keys.get("PK") {
            Some(serde_dynamo::AttributeValue::S(k)) => k.clone(),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// A table with a stream, a DLQ, and a mapping whose function answers with `answer`.
async fn setup(
    items: usize,
    retries: i64,
    answer: impl Fn(&Event, usize) -> Result<DynamoDbEventResponse, String> + Send + Sync + 'static,
) -> Setup {
    let emulator = Emulator::start(&venv(), free_port()).await.unwrap();
    let sdk = sdk_config(&emulator.endpoint).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = dynamodb
        .create_table()
        .table_name("t")
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("PK")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("PK")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let stream_arn = table
        .table_description()
        .unwrap()
        .latest_stream_arn()
        .unwrap()
        .to_owned();
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dlq = sqs
        .create_queue()
        .queue_name("dlq")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let calls: Calls = Default::default();
    let recorded = calls.clone();
    let answer = Arc::new(answer);
    let handler: StreamHandler = Arc::new(move |event: Event| {
        let n = {
            let mut calls = recorded.lock().unwrap();
            calls.push(keys(&event));
            calls.len()
        };
        let outcome = answer(&event, n);
        Box::pin(async move { outcome })
    });
    // Written before the mapping starts, so its first read takes them as one batch.
    write(&dynamodb, items).await;
    let stats = Arc::new(StreamStats::default());
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let source = StreamSource {
        name: "TableStream".into(),
        stream_arn,
        starting_position: "TRIM_HORIZON".into(),
        batch_size: 10,
        max_batching_window_seconds: 0,
        maximum_retry_attempts: retries,
        bisect_batch_on_function_error: true,
        report_batch_item_failures: true,
        on_failure_queue_arn: None,
        // Only items marked `pass`.
        filters: vec![json!({"dynamodb": {"NewImage": {"pass": {"S": ["yes"]}}}})],
    };
    stream_poller::spawn(
        StreamMapping {
            source,
            on_failure_queue_url: Some(dlq.clone()),
            stats: stats.clone(),
        },
        aws_sdk_dynamodbstreams::Client::new(&sdk),
        sqs.clone(),
        handler,
        shutdown_rx,
    );
    Setup {
        _emulator: emulator,
        dynamodb,
        sqs,
        dlq,
        calls,
        stats,
        _shutdown: shutdown,
    }
}

/// Writes `n` items (`k0`…) that pass the filter, each followed by one that does not.
async fn write(dynamodb: &aws_sdk_dynamodb::Client, n: usize) {
    for i in 0..n {
        for (key, pass) in [(format!("k{i}"), "yes"), (format!("skip{i}"), "no")] {
            dynamodb
                .put_item()
                .table_name("t")
                .item("PK", AttributeValue::S(key))
                .item("pass", AttributeValue::S(pass.into()))
                .send()
                .await
                .unwrap();
        }
    }
}

impl Setup {
    /// Every key delivered, in delivery order, once `want` have been (or panics after 30 s).
    async fn delivered(&self, want: usize) -> Vec<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let calls = self.calls.lock().unwrap().clone();
            let seen: std::collections::HashSet<_> = calls.iter().flatten().collect();
            if seen.len() >= want {
                return calls;
            }
            assert!(Instant::now() < deadline, "delivered so far: {calls:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn failure_at(event: &Event, index: usize) -> DynamoDbEventResponse {
    let mut failure = DynamoDbBatchItemFailure::default();
    failure.item_identifier = event.records[index].change.sequence_number.clone();
    let mut response = DynamoDbEventResponse::default();
    response.batch_item_failures.push(failure);
    response
}

fn flat(calls: &[Vec<String>]) -> Vec<String> {
    calls.iter().flatten().cloned().collect()
}

#[tokio::test]
async fn an_item_failure_is_retried_from_its_record_and_filters_apply() {
    // The first invocation reports its third record; every later one succeeds.
    let setup = setup(6, 3, |event, n| {
        Ok(if n == 1 && event.records.len() >= 3 {
            failure_at(event, 2)
        } else {
            Default::default()
        })
    })
    .await;
    let calls = setup.delivered(6).await;
    // Filtered records never reach the function.
    assert!(flat(&calls).iter().all(|k| k.starts_with('k')), "{calls:?}");
    // The retry starts at the reported record: k0 and k1 once, the rest once after the retry.
    let all = flat(&calls);
    for key in ["k0", "k1"] {
        assert_eq!(all.iter().filter(|k| *k == key).count(), 1, "{calls:?}");
    }
    assert_eq!(calls[1][0], calls[0][2], "{calls:?}");
    assert!(
        setup
            .stats
            .failed_invocations
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[tokio::test]
async fn an_invocation_error_bisects_and_exhausted_retries_go_to_the_dlq() {
    // Any batch holding k2 fails as a whole; the others succeed.
    let setup = setup(4, 2, |event, _| {
        if keys(event).iter().any(|k| k == "k2") {
            Err("boom".into())
        } else {
            Ok(Default::default())
        }
    })
    .await;
    setup.delivered(4).await;
    // Bisected down to k2 alone; everything else delivered; k2's batch dead-lettered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let out = setup
            .sqs
            .receive_message()
            .queue_url(&setup.dlq)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if let Some(message) = out.messages.unwrap_or_default().into_iter().next() {
            break serde_json::from_str::<serde_json::Value>(message.body().unwrap()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "nothing dead-lettered: {:?}",
            setup.calls.lock().unwrap()
        );
    };
    assert_eq!(body["DDBStreamBatchInfo"]["batchSize"], 1, "{body}");
    assert_eq!(
        body["requestContext"]["condition"],
        "RetryAttemptsExhausted"
    );
    let calls_now = setup.calls.lock().unwrap().clone();
    assert!(
        calls_now.iter().any(|c| c == &vec!["k2".to_string()]),
        "{calls_now:?}"
    );
    for key in ["k0", "k1", "k3"] {
        assert!(
            flat(&calls_now).iter().any(|k| k == key),
            "{key}: {calls_now:?}"
        );
    }
    // The shard moved on: a record written afterwards is delivered.
    setup
        .dynamodb
        .put_item()
        .table_name("t")
        .item("PK", AttributeValue::S("later".into()))
        .item("pass", AttributeValue::S("yes".into()))
        .send()
        .await
        .unwrap();
    let calls = setup.delivered(5).await;
    assert_eq!(
        calls.last().unwrap(),
        &vec!["later".to_string()],
        "{calls:?}"
    );
}
