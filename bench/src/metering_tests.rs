//! The metering proxy against the emulator: requests through it are billed as the rules in
//! `dynamodb_units` and `metering` say, and pass through unchanged.

use crate::counting_proxy::CountingProxy;
use crate::metering::Metering;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue as V, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType,
};
use local_stack::emulator::{free_port, sdk_config, Emulator};

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .unwrap()
}

fn index(name: &str, hash: &str, range: &str, projection: Projection) -> GlobalSecondaryIndex {
    GlobalSecondaryIndex::builder()
        .index_name(name)
        .key_schema(key(hash, KeyType::Hash))
        .key_schema(key(range, KeyType::Range))
        .projection(projection)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bills_capacity_units_and_esm_requests_for_what_passes_through() {
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
        .table_name("metered")
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(
            ["PK", "SK", "GPK", "GSK", "KPK", "KSK"]
                .map(attribute)
                .to_vec(),
        ))
        .key_schema(key("PK", KeyType::Hash))
        .key_schema(key("SK", KeyType::Range))
        .global_secondary_indexes(index(
            "G",
            "GPK",
            "GSK",
            Projection::builder()
                .projection_type(ProjectionType::Include)
                .non_key_attributes("p")
                .build(),
        ))
        .global_secondary_indexes(index(
            "K",
            "KPK",
            "KSK",
            Projection::builder()
                .projection_type(ProjectionType::KeysOnly)
                .build(),
        ))
        .send()
        .await
        .unwrap();

    proxy.set_metering(Metering::Full);
    proxy.take_window();
    let s = |v: &str| V::S(v.to_owned());
    // 1.5 KB: two write units in the table; its G entry (keys and p) is small: one.
    dynamodb
        .put_item()
        .table_name("metered")
        .item("PK", s("a"))
        .item("SK", s("1"))
        .item("GPK", s("g"))
        .item("GSK", s("1"))
        .item("p", s("high"))
        .item("body", s(&"x".repeat(1500)))
        .send()
        .await
        .unwrap();
    let window = proxy.take_window();
    let d = &window.metered.dynamodb;
    assert_eq!(d.table_write_units["PutItem"], 2.0);
    assert_eq!(d.index_write_units.get("G"), Some(&1.0));
    assert_eq!(d.index_write_units.get("K"), None, "{d:?}");
    assert_eq!(
        window.counts["dynamodb:PutItem"], 1,
        "the meter's own reads are not counted"
    );

    // An index key changes: a delete and a put in G; an attribute no index holds: nothing.
    let update = |expression: &str, value: &str| {
        dynamodb
            .update_item()
            .table_name("metered")
            .key("PK", s("a"))
            .key("SK", s("1"))
            .update_expression(expression)
            .expression_attribute_values(":v", s(value))
    };
    update("SET GSK = :v", "2").send().await.unwrap();
    update("SET note = :v", "y").send().await.unwrap();
    let d = proxy.take_window().metered.dynamodb;
    assert_eq!(d.table_write_units["UpdateItem"], 4.0);
    assert_eq!(d.index_write_units["G"], 2.0);

    // A failed condition still bills the existing item; the caller still sees the failure.
    let refused = dynamodb
        .put_item()
        .table_name("metered")
        .item("PK", s("a"))
        .item("SK", s("1"))
        .condition_expression("attribute_not_exists(PK)")
        .send()
        .await;
    assert!(refused.is_err());
    let d = proxy.take_window().metered.dynamodb;
    assert_eq!(d.table_write_units["PutItem"], 2.0);
    assert!(d.index_write_units.is_empty());

    // Reads bill the item's size, not what a projection returns; a missing item the minimum.
    let got = dynamodb
        .get_item()
        .table_name("metered")
        .key("PK", s("a"))
        .key("SK", s("1"))
        .projection_expression("PK")
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert_eq!(got.item.unwrap().len(), 1, "the caller gets its projection");
    dynamodb
        .get_item()
        .table_name("metered")
        .key("PK", s("none"))
        .key("SK", s("1"))
        .send()
        .await
        .unwrap();
    let queried = dynamodb
        .query()
        .table_name("metered")
        .index_name("G")
        .key_condition_expression("GPK = :g")
        .filter_expression("p = :p")
        .expression_attribute_values(":g", s("g"))
        .expression_attribute_values(":p", s("nothing matches"))
        .send()
        .await
        .unwrap();
    assert_eq!(queried.count, 0);
    let d = proxy.take_window().metered.dynamodb;
    // 1 strongly consistent + 0.5 eventually consistent.
    assert_eq!(d.read_units["GetItem"], 1.5);
    // The filtered-out entry was still read, from an index: eventually consistent.
    assert_eq!(d.read_units["Query"], 0.5);

    dynamodb
        .delete_item()
        .table_name("metered")
        .key("PK", s("a"))
        .key("SK", s("1"))
        .send()
        .await
        .unwrap();
    let d = proxy.take_window().metered.dynamodb;
    assert_eq!(
        (d.table_write_units["DeleteItem"], d.index_write_units["G"]),
        (2.0, 1.0)
    );

    // SQS: a 100 KB message bills two requests to send and two to receive; its batch one
    // delete, and the span from receive to delete is an invocation.
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = sqs
        .create_queue()
        .queue_name("metered")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    sqs.send_message()
        .queue_url(&queue)
        .message_body("m".repeat(100 * 1024))
        .send()
        .await
        .unwrap();
    let received = sqs
        .receive_message()
        .queue_url(&queue)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    let empty = sqs
        .receive_message()
        .queue_url(&queue)
        .send()
        .await
        .unwrap();
    assert!(empty.messages.unwrap_or_default().is_empty());
    let message = &received.messages.unwrap()[0];
    sqs.delete_message()
        .queue_url(&queue)
        .receipt_handle(message.receipt_handle.clone().unwrap())
        .send()
        .await
        .unwrap();
    let window = proxy.take_window();
    let q = &window.metered.sqs;
    assert_eq!((q.send_requests, q.send_billed), (1.0, 2.0));
    assert_eq!(
        (q.receives, q.receive_billed, q.messages_received),
        (1.0, 2.0, 1.0)
    );
    assert_eq!((q.empty_receives, q.delete_batches), (1.0, 1.0));
    assert_eq!(q.sends_inside_emulator, 0.0);
    assert_eq!(q.other_requests["CreateQueue"], 1.0);
    assert_eq!(q.billed_requests(), 2.0 + 2.0 + 1.0 + 1.0);
    assert_eq!(window.metered.invocations[&queue].count, 1.0);
    assert_eq!(window.metered.errors, 0.0);

    // Timing only: SQS and invocations, no DynamoDB reads of the meter's own.
    proxy.set_metering(Metering::Timing);
    dynamodb
        .put_item()
        .table_name("metered")
        .item("PK", s("b"))
        .item("SK", s("1"))
        .send()
        .await
        .unwrap();
    sqs.send_message()
        .queue_url(&queue)
        .message_body("t")
        .send()
        .await
        .unwrap();
    let window = proxy.take_window();
    assert!(window.metered.dynamodb.table_write_units.is_empty());
    assert_eq!(window.metered.sqs.send_billed, 1.0);

    // Metering off: counts only.
    proxy.set_metering(Metering::Off);
    sqs.get_queue_attributes()
        .queue_url(&queue)
        .send()
        .await
        .unwrap();
    let window = proxy.take_window();
    assert_eq!(window.counts["sqs:GetQueueAttributes"], 1);
    assert_eq!(window.metered, Default::default());
}

#[test]
fn the_emulators_connection_close_is_not_passed_on() {
    let (mut parts, _) = hyper::Response::new(()).into_parts();
    parts.headers.insert("connection", "close".parse().unwrap());
    parts
        .headers
        .insert("transfer-encoding", "chunked".parse().unwrap());
    parts
        .headers
        .insert("x-amzn-requestid", "r1".parse().unwrap());
    let response = super::Answer {
        parts,
        body: hyper::body::Bytes::from_static(b"{}"),
    }
    .into_response();
    assert!(response.headers().get("connection").is_none());
    assert!(response.headers().get("transfer-encoding").is_none());
    assert_eq!(response.headers()["x-amzn-requestid"], "r1");
}
