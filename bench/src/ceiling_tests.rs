//! The ceiling's replay against the emulator: each lifecycle makes the mix's calls, on a twin
//! of the source table whose index the task-shaped puts reach.

use super::{lifecycles_per_second, CallMix};
use crate::counting_proxy::CountingProxy;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, StreamSpecification, StreamViewType,
};
use local_stack::emulator::{free_port, sdk_config, Emulator};
use std::collections::BTreeMap;
use std::time::Duration;

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_lifecycle_makes_the_mixs_calls_on_a_twin_of_the_table() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let emulator = Emulator::start(&repo.join(".venv"), free_port())
        .await
        .expect("moto from .venv (make venv)");
    let proxy = CountingProxy::start(&emulator.endpoint).await.unwrap();
    let sdk = sdk_config(&proxy.endpoint).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    dynamodb
        .create_table()
        .table_name("tasks")
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(["PK", "SK", "GPK", "GSK"].map(attribute).to_vec()))
        .key_schema(key("PK", KeyType::Hash))
        .key_schema(key("SK", KeyType::Range))
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("G")
                .key_schema(key("GPK", KeyType::Hash))
                .key_schema(key("GSK", KeyType::Range))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::KeysOnly)
                        .build(),
                )
                .build()
                .unwrap(),
        )
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
    aws_sdk_eventbridge::Client::new(&sdk)
        .create_event_bus()
        .name("events")
        .send()
        .await
        .unwrap();
    let mix = CallMix(BTreeMap::from(
        [
            ("dynamodb:PutItem", 3.0),
            ("dynamodb:UpdateItem", 2.0),
            ("dynamodb:GetItem", 1.0),
            ("dynamodb:Query", 1.0),
            ("dynamodb:DeleteItem", 1.0),
            ("sqs:SendMessage", 1.0),
            ("sqs:ReceiveMessage", 1.0),
            ("AWSEvents:PutEvents", 1.0),
        ]
        .map(|(op, n)| (op.to_owned(), n)),
    ));
    proxy.take();
    let rate = lifecycles_per_second(&sdk, &mix, "tasks", "events", 2, Duration::from_secs(1))
        .await
        .unwrap();
    let counts = proxy.take();
    let lifecycles = counts["dynamodb:PutItem"] / 3;
    assert!(lifecycles >= 2, "{counts:?}");
    assert_eq!(rate, lifecycles as f64, "over one second");
    for (op, per_lifecycle) in [
        ("dynamodb:PutItem", 3),
        ("dynamodb:UpdateItem", 2),
        ("dynamodb:GetItem", 1),
        ("dynamodb:Query", 1),
        ("dynamodb:DeleteItem", 1),
        ("sqs:SendMessage", 1),
        ("sqs:ReceiveMessage", 1),
        ("AWSEvents:PutEvents", 1),
    ] {
        assert_eq!(counts[op], per_lifecycle * lifecycles, "{op}: {counts:?}");
    }
    assert!(!counts.contains_key("sqs:DeleteMessage"), "not in the mix");
    // The twin has the source's index, and the task-shaped puts reached it.
    let twin = dynamodb
        .list_tables()
        .send()
        .await
        .unwrap()
        .table_names()
        .iter()
        .find(|name| name.starts_with("bench-ceiling-"))
        .cloned()
        .expect("the twin table");
    let indexed = dynamodb
        .scan()
        .table_name(&twin)
        .index_name("G")
        .send()
        .await
        .unwrap()
        .count();
    assert_eq!(
        indexed as u64, lifecycles,
        "one task item per lifecycle in the index"
    );
}
