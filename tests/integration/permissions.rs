//! Each function's AWS calls are held to that function's own policies in template.yaml, and
//! signatures are checked: the emulator enforces IAM for the functions' keys (see
//! `infra/local/src/iam.rs` and `moto_launcher.py`).

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use integration_tests::{skip_on_localstack, stack, unique_agency, Client};
use reqwest::StatusCode;
use serde_json::json;

/// SDK clients signing as `function` does under the local runtime.
async fn clients_of(function: &str) -> shared::aws::AwsClients {
    let config = stack()
        .functions
        .iter()
        .find(|f| f.name == function)
        .unwrap_or_else(|| panic!("{function} does not run as a process"));
    let env = |name: &str| {
        config
            .environment
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{function} has no {name}"))
    };
    let (key_id, secret) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"));
    assert_ne!(key_id, "test", "{function} runs with the root's dummy key");
    let sdk = stack()
        .sdk_config()
        .await
        .into_builder()
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            aws_sdk_dynamodb::config::Credentials::new(key_id, secret, None, None, "function"),
        ))
        .build();
    shared::aws::AwsClients::new(&sdk)
}

/// The error an SDK call ended with, with the service's code and message.
fn denial<E, R>(
    result: Result<
        R,
        aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
    >,
) -> String
where
    E: std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(_) => "allowed".to_string(),
        Err(err) => aws_sdk_dynamodb::error::DisplayErrorContext(err).to_string(),
    }
}

fn assert_denied(what: &str, outcome: &str, action: &str) {
    assert!(
        outcome.contains("AccessDenied") && outcome.contains(&format!("perform: {action}")),
        "{what} should be AccessDenied for {action}: {outcome}"
    );
}

fn assert_not_denied(what: &str, outcome: &str) {
    assert!(
        !outcome.contains("AccessDenied") && !outcome.contains("not authorized"),
        "{what} should pass IAM: {outcome}"
    );
}

#[tokio::test]
async fn a_missing_iam_action_is_access_denied_for_each_function() {
    if skip_on_localstack("LocalStack's community IAM enforces nothing") {
        return;
    }
    let refs = &stack().refs;
    let table = &refs["TasksTable"];
    let key = || {
        [
            ("PK".to_string(), AttributeValue::S("IAM#probe".into())),
            ("SK".to_string(), AttributeValue::S("IAM#probe".into())),
        ]
        .into_iter()
        .collect::<std::collections::HashMap<_, _>>()
    };

    let api = clients_of("ApiFunction").await;
    // Granted: item reads and writes (DynamoDBCrudPolicy), a transaction (authorized by
    // the actions inside it, as on AWS), a tier queue.
    let read = api
        .dynamodb
        .get_item()
        .table_name(table)
        .set_key(Some(key()))
        .send()
        .await;
    assert_not_denied("ApiFunction GetItem", &denial(read));
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(key()))
        .build()
        .unwrap();
    let transaction = api
        .dynamodb
        .transact_write_items()
        .transact_items(TransactWriteItem::builder().put(put).build())
        .send()
        .await;
    assert_not_denied("ApiFunction TransactWriteItems(Put)", &denial(transaction));
    let send = api
        .sqs
        .send_message()
        .queue_url(&refs["BackgroundQueue"])
        .message_body("{}")
        .send()
        .await;
    assert_not_denied("ApiFunction SendMessage to a tier queue", &denial(send));
    // Not granted: table administration, sending to a dead-letter queue (the API may only
    // inspect those: the resource is checked), deleting a bucket.
    let drop = api.dynamodb.delete_table().table_name(table).send().await;
    assert_denied(
        "ApiFunction DeleteTable",
        &denial(drop),
        "dynamodb:DeleteTable",
    );
    let to_dlq = api
        .sqs
        .send_message()
        .queue_url(&refs["BackgroundDeadLetterQueue"])
        .message_body("{}")
        .send()
        .await;
    assert_denied(
        "ApiFunction SendMessage to a DLQ",
        &denial(to_dlq),
        "sqs:SendMessage",
    );
    let bucket = api
        .s3
        .delete_bucket()
        .bucket(&refs["AttachmentsBucket"])
        .send()
        .await;
    let bucket = denial(bucket);
    assert!(
        bucket.contains("AccessDenied"),
        "ApiFunction DeleteBucket: {bucket}"
    );

    // The worker answers chain steps but never starts executions.
    let worker = clients_of("WorkerFunction").await;
    let start = worker
        .sfn
        .start_execution()
        .state_machine_arn(&stack().config.chain_state_machine_arn)
        .input("{}")
        .send()
        .await;
    assert_denied(
        "WorkerFunction StartExecution",
        &denial(start),
        "states:StartExecution",
    );

    // The sweeper has no S3 at all.
    let sweeper = clients_of("SweeperFunction").await;
    let list = sweeper
        .s3
        .list_objects_v2()
        .bucket(&refs["BatchBucket"])
        .send()
        .await;
    let list = denial(list);
    assert!(
        list.contains("AccessDenied"),
        "SweeperFunction ListObjectsV2: {list}"
    );
    // A key that is nobody's signs as the account root, which policies do not restrict.
    let root = stack().clients().await;
    let read = root
        .dynamodb
        .get_item()
        .table_name(table)
        .set_key(Some(key()))
        .send()
        .await;
    assert_not_denied("the root's GetItem", &denial(read));
}

#[tokio::test]
async fn a_presigned_url_works_for_its_own_key_only() {
    if skip_on_localstack("LocalStack's community S3 does not check presigned signatures") {
        return;
    }
    let agency = unique_agency("presign");
    let boss = Client::as_user(&agency, "boss", "manager");
    let id = boss.create_task(&json!({"title": "Two files"})).await;
    let mut uploads = Vec::new();
    for name in ["a.txt", "b.txt"] {
        let reply = boss
            .post(
                &format!("/api/tasks/{id}/attachments"),
                &json!({"fileName": name, "contentType": "text/plain"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        let url = reqwest::Url::parse(reply.body["upload"]["url"].as_str().unwrap()).unwrap();
        uploads.push(url);
    }
    let http = reqwest::Client::new();
    let put = |url: reqwest::Url| {
        http.put(url)
            .header("content-type", "text/plain")
            .body("hello")
            .send()
    };
    // a.txt's signature on b.txt's path.
    let mut swapped = uploads[0].clone();
    swapped.set_path(uploads[1].path());
    let refused = put(swapped).await.unwrap();
    let status = refused.status();
    let body = refused.text().await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");
    // A changed signed header fails too; the genuine URLs work.
    let wrong_type = http
        .put(uploads[1].clone())
        .header("content-type", "application/octet-stream")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), StatusCode::FORBIDDEN);
    for url in uploads {
        let stored = put(url).await.unwrap();
        assert!(stored.status().is_success(), "{}", stored.status());
    }
}
