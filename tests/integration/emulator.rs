//! The emulator's DynamoDB transactions keep DynamoDB's all-or-nothing rule. The local host
//! replaces moto's TransactWriteItems (which deep-copied whole tables) with one that checks
//! every condition first and undoes only the items it wrote: these pin what the code relies on.

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use integration_tests::{stack, unique_agency};
use std::collections::HashMap;

type Item = HashMap<String, AttributeValue>;

fn key(pk: &str, sk: &str) -> Item {
    HashMap::from([
        ("PK".to_owned(), AttributeValue::S(pk.to_owned())),
        ("SK".to_owned(), AttributeValue::S(sk.to_owned())),
    ])
}

fn add_one(pk: &str, sk: &str, condition: Option<&str>) -> TransactWriteItem {
    let table = &stack().config.table_name;
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(key(pk, sk)))
        .update_expression("ADD n :one")
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .set_condition_expression(condition.map(str::to_owned));
    let update = match condition {
        Some(_) => update.expression_attribute_values(":zero", AttributeValue::N("0".into())),
        None => update,
    };
    TransactWriteItem::builder()
        .update(update.build().expect("update"))
        .build()
}

fn put_new(pk: &str, sk: &str) -> TransactWriteItem {
    let put = Put::builder()
        .table_name(&stack().config.table_name)
        .set_item(Some(key(pk, sk)))
        .condition_expression("attribute_not_exists(PK)")
        .build()
        .expect("put");
    TransactWriteItem::builder().put(put).build()
}

#[tokio::test]
async fn a_transaction_that_fails_anywhere_writes_nothing() {
    let dynamodb = stack().clients().await.dynamodb;
    let table = &stack().config.table_name;
    let pk = format!("EMULATOR#{}", unique_agency("tx"));
    let read = |sk: &'static str| {
        let (dynamodb, pk) = (dynamodb.clone(), pk.clone());
        async move {
            dynamodb
                .get_item()
                .table_name(table)
                .set_key(Some(key(&pk, sk)))
                .consistent_read(true)
                .send()
                .await
                .expect("get")
                .item
        }
    };
    let count = |item: Option<Item>| match item.and_then(|i| i.get("n").cloned()) {
        Some(AttributeValue::N(n)) => n,
        other => panic!("no count: {other:?}"),
    };
    dynamodb
        .put_item()
        .table_name(table)
        .set_item(Some(key(&pk, "counter")))
        .item("n", AttributeValue::N("1".into()))
        .item("text", AttributeValue::S("words".into()))
        .send()
        .await
        .expect("seed");

    // A failed condition on the second item: the first item's write is not made, and the
    // reasons name each item in order.
    let cancelled = dynamodb
        .transact_write_items()
        .transact_items(put_new(&pk, "fresh"))
        .transact_items(add_one(&pk, "counter", Some("n = :zero")))
        .send()
        .await
        .expect_err("the condition fails");
    let reasons = match cancelled.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(e)) => {
            e.cancellation_reasons.clone().unwrap_or_default()
        }
        other => panic!("not a cancellation: {other:?}"),
    };
    let codes: Vec<_> = reasons.iter().map(|r| r.code.as_deref()).collect();
    assert_eq!(codes, [Some("None"), Some("ConditionalCheckFailed")]);
    assert!(read("fresh").await.is_none(), "the put was not made");
    assert_eq!(count(read("counter").await), "1");

    // Every condition holds but a later write is invalid (a number added to a string): the
    // writes made before it are undone.
    let invalid = Update::builder()
        .table_name(table)
        .set_key(Some(key(&pk, "counter")))
        .update_expression("SET #t = #t + :one")
        .expression_attribute_names("#t", "text")
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .build()
        .expect("update");
    let failed = dynamodb
        .transact_write_items()
        .transact_items(put_new(&pk, "fresh"))
        .transact_items(add_one(&pk, "other", None))
        .transact_items(TransactWriteItem::builder().update(invalid).build())
        .send()
        .await;
    assert!(failed.is_err(), "an invalid write fails the transaction");
    assert!(read("fresh").await.is_none(), "the put was undone");
    assert!(read("other").await.is_none(), "the new counter was undone");
    assert_eq!(count(read("counter").await), "1");

    // And a transaction that holds writes every item.
    dynamodb
        .transact_write_items()
        .transact_items(put_new(&pk, "fresh"))
        .transact_items(add_one(&pk, "counter", None))
        .send()
        .await
        .expect("commits");
    assert!(read("fresh").await.is_some());
    assert_eq!(count(read("counter").await), "2");
}
