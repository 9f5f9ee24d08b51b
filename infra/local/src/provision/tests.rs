//! `parse_rate`, and the emulator-backed tests: provision the project template and an inline one
//! on moto.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::emulator::{free_port, sdk_config, Emulator};
use crate::template::Template;

#[test]
fn rates() {
    assert_eq!(parse_rate("rate(1 minute)"), Some(Duration::from_secs(60)));
    assert_eq!(
        parse_rate("rate(5 minutes)"),
        Some(Duration::from_secs(300))
    );
    assert_eq!(parse_rate("rate(2 hours)"), Some(Duration::from_secs(7200)));
    assert_eq!(parse_rate("rate(1 day)"), Some(Duration::from_secs(86_400)));
    assert_eq!(
        parse_rate("rate(10 seconds)"),
        Some(Duration::from_secs(10))
    );
    assert_eq!(parse_rate("rate(0 minutes)"), None);
    assert_eq!(parse_rate("cron(0 3 * * ? *)"), None);
    assert_eq!(parse_rate("rate(1 fortnight)"), None);
}

/// The venv with moto: `MOTO_VENV`, else the project's `.venv` (the Makefile creates it).
fn venv() -> PathBuf {
    let dir = std::env::var_os("MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    assert!(
        dir.join("bin/moto_server").is_file(),
        "no moto_server in {}: run `make venv` (or set MOTO_VENV to a venv with moto[server]) \
         before running the local-stack tests",
        dir.display()
    );
    dir
}

/// Starts moto with its log in `dir` (removed with the test's temp dir; a failed start
/// quotes the log's last lines).
async fn start_emulator(dir: &Path) -> (Emulator, aws_config::SdkConfig) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("local_stack=debug")
        .with_test_writer()
        .try_init();
    let emulator = Emulator::start_with_log(&venv(), free_port(), Some(&dir.join("moto.log")))
        .await
        .expect("starting moto");
    let sdk = sdk_config(&emulator.endpoint).await;
    (emulator, sdk)
}

struct TempDir(PathBuf);
impl TempDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("local-stack-test-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn provisions_the_project_template_twice() {
    let tmp = TempDir::new();
    let (emulator, sdk) = start_emulator(&tmp.0).await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
    let template = Template::load(&path).unwrap();

    let stack = provision(&template, &sdk, "taskflow-test")
        .await
        .expect("first provision");
    let table = stack.ref_value("TasksTable").expect("TasksTable ref");
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let described = ddb.describe_table().table_name(table).send().await.unwrap();
    let mut gsis: Vec<&str> = described
        .table()
        .unwrap()
        .global_secondary_indexes()
        .iter()
        .filter_map(|g| g.index_name())
        .collect();
    gsis.sort();
    assert_eq!(gsis, vec!["GSI1", "GSI2", "GSI3", "GSI4"]);
    assert!(!stack.functions.is_empty());

    let again = provision(&template, &sdk, "taskflow-test")
        .await
        .expect("second provision (idempotency)");
    assert_eq!(again.refs, stack.refs);
    assert_eq!(again.functions, stack.functions);

    // reset clears everything and the emulator stays usable; attach reuses it.
    let attached = Emulator::attach(&emulator.endpoint).await.unwrap();
    attached.reset().await.unwrap();
    let tables = ddb.list_tables().send().await.unwrap();
    assert!(tables.table_names().is_empty());
    attached.stop().await;
    provision(&template, &sdk, "taskflow-test")
        .await
        .expect("provision after reset");
    emulator.stop().await;
}

const INLINE: &str = r#"
Parameters:
  Stage: { Type: String, Default: dev }
Conditions:
  IsProd: !Equals [!Ref Stage, prod]
Globals:
  Function:
    Timeout: 10
    Environment:
      Variables:
        TABLE_NAME: !Ref Table
        STAGE: !Ref Stage
Resources:
  WorkQueue:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Sub "${AWS::StackName}-work"
      VisibilityTimeout: __VISIBILITY__
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt WorkDlq.Arn
        maxReceiveCount: 3
  WorkDlq:
    Type: AWS::SQS::Queue
    Properties:
      MessageRetentionPeriod: 1209600
  BatchQueue:
    Type: AWS::SQS::Queue
  BatchBucket:
    Type: AWS::S3::Bucket
    Properties:
      NotificationConfiguration:
        QueueConfigurations:
          - Event: "s3:ObjectCreated:*"
            Queue: !GetAtt BatchQueue.Arn
            Filter: { S3Key: { Rules: [{ Name: prefix, Value: incoming/ }] } }
  ProdOnlyQueue:
    Type: AWS::SQS::Queue
    Condition: IsProd
  Table:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: !Sub "${AWS::StackName}-t"
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions:
        - { AttributeName: PK, AttributeType: S }
        - { AttributeName: GSI1PK, AttributeType: S }
        - { AttributeName: GSI2PK, AttributeType: S }
      KeySchema: [{ AttributeName: PK, KeyType: HASH }]
      GlobalSecondaryIndexes:
        - IndexName: GSI1
          KeySchema: [{ AttributeName: GSI1PK, KeyType: HASH }]
          Projection: { ProjectionType: KEYS_ONLY }
        - IndexName: __GSI2__
          KeySchema: [{ AttributeName: GSI2PK, KeyType: HASH }]
          Projection: { ProjectionType: INCLUDE, NonKeyAttributes: [title] }
      TimeToLiveSpecification: { AttributeName: expiresAt, Enabled: true }
  Chain:
    Type: AWS::Serverless::StateMachine
    Properties:
      DefinitionUri: sm/chain.asl.json
      DefinitionSubstitutions:
        WorkQueueUrl: !Ref WorkQueue
        TableName: !Ref Table
  UserPool:
    Type: AWS::Cognito::UserPool
  Api:
    Type: AWS::Serverless::Api
    Properties:
      StageName: dev
      Auth:
        DefaultAuthorizer: Cognito
        Authorizers: { Cognito: { UserPoolArn: !GetAtt UserPool.Arn } }
  Worker:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/worker
      Timeout: 60
      Environment:
        Variables:
          CHAIN_ARN: !Ref Chain
          WORK_QUEUE_URL: !Ref WorkQueue
          POOL_ARN: !GetAtt UserPool.Arn
          STAGE: !Ref AWS::NoValue
      Events:
        Work:
          Type: SQS
          Properties:
            Queue: !GetAtt WorkQueue.Arn
            BatchSize: 5
            MaximumBatchingWindowInSeconds: 1
            ScalingConfig: { MaximumConcurrency: 2 }
            FunctionResponseTypes: [ReportBatchItemFailures]
        Batch:
          Type: SQS
          Properties: { Queue: !GetAtt BatchQueue.Arn }
        Sweep:
          Type: Schedule
          Properties: { Schedule: rate(1 minute) }
        Nightly:
          Type: Schedule
          Properties: { Schedule: "cron(0 3 * * ? *)" }
        Off:
          Type: Schedule
          Properties: { Schedule: rate(5 minutes), Enabled: false }
        Public:
          Type: Api
          Properties: { RestApiId: !Ref Api, Path: /health, Method: get, Auth: { Authorizer: NONE } }
        Private:
          Type: Api
          Properties: { RestApiId: !Ref Api, Path: "/things/{id}", Method: ANY }
        Upload:
          Type: S3
          Properties: { Bucket: !Ref BatchBucket, Events: "s3:ObjectCreated:*" }
"#;

const ASL: &str = r#"{
  "Comment": "__COMMENT__",
  "StartAt": "Send",
  "States": {
    "Send": {
      "Type": "Task",
      "Resource": "arn:aws:states:::sqs:sendMessage",
      "Parameters": { "QueueUrl": "${WorkQueueUrl}", "MessageBody": { "table": "${TableName}" } },
      "End": true
    }
  }
}"#;

fn write_inline(dir: &Path, visibility: u32, comment: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("sm")).unwrap();
    std::fs::write(
        dir.join("sm/chain.asl.json"),
        ASL.replace("__COMMENT__", comment),
    )
    .unwrap();
    let path = dir.join("template.yaml");
    // The second version adds a GSI to the existing table.
    let gsi2 = if comment == "v1" { "GSI2" } else { "GSI3" };
    let text = INLINE
        .replace("__VISIBILITY__", &visibility.to_string())
        .replace("__GSI2__", gsi2);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn provisions_queues_buckets_state_machines_and_function_wiring() {
    use aws_sdk_sqs::types::QueueAttributeName;
    let tmp = TempDir::new();
    let (emulator, sdk) = start_emulator(&tmp.0).await;
    let path = write_inline(&tmp.0, 60, "v1");
    let stack_name = "inline";
    let stack = provision(&Template::load(&path).unwrap(), &sdk, stack_name)
        .await
        .expect("provision");
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);

    // Queue + DLQ with a redrive policy (the DLQ is declared after the queue).
    let work_url = stack.ref_value("WorkQueue").unwrap().to_string();
    assert!(work_url.ends_with("/inline-work"), "{work_url}");
    let dlq_arn = stack.attribute("WorkDlq", "Arn").unwrap().to_string();
    assert!(dlq_arn.ends_with(":inline-WorkDlq"), "{dlq_arn}");
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&work_url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let attrs = attrs.attributes().unwrap();
    assert_eq!(attrs[&QueueAttributeName::VisibilityTimeout], "60");
    let redrive: serde_json::Value =
        serde_json::from_str(&attrs[&QueueAttributeName::RedrivePolicy]).unwrap();
    assert_eq!(redrive["deadLetterTargetArn"], dlq_arn.as_str());
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "3"
    );
    // The condition-false queue is not created, but its Ref resolves.
    let queues = sqs.list_queues().send().await.unwrap();
    assert_eq!(queues.queue_urls().len(), 3, "{:?}", queues.queue_urls());
    assert_eq!(stack.ref_value("ProdOnlyQueue"), Some("ProdOnlyQueue"));

    // Table with GSI and TTL.
    let ttl = ddb
        .describe_time_to_live()
        .table_name("inline-t")
        .send()
        .await
        .unwrap();
    assert_eq!(
        ttl.time_to_live_description()
            .and_then(|d| d.attribute_name()),
        Some("expiresAt")
    );

    // Bucket notification to the queue, with the prefix filter.
    let bucket = stack.ref_value("BatchBucket").unwrap().to_string();
    assert_eq!(
        bucket, "inline-batchbucket-us-east-1",
        "named like CloudFormation would"
    );
    let batch_arn = stack.attribute("BatchQueue", "Arn").unwrap();
    let n = s3
        .get_bucket_notification_configuration()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let q = &n.queue_configurations()[0];
    assert_eq!(q.queue_arn(), batch_arn);
    let rule = &q.filter().unwrap().key().unwrap().filter_rules()[0];
    assert_eq!(rule.value(), Some("incoming/"));
    s3.put_object()
        .bucket(&bucket)
        .key("incoming/job.json")
        .body(b"[]".to_vec().into())
        .send()
        .await
        .unwrap();
    let batch_url = stack.ref_value("BatchQueue").unwrap();
    let received = sqs
        .receive_message()
        .queue_url(batch_url)
        .max_number_of_messages(10)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap();
    let bodies: Vec<&str> = received
        .messages()
        .iter()
        .filter_map(|m| m.body())
        .collect();
    assert!(
        // moto URL-encodes the key (incoming%2Fjob.json); it also sends an s3:TestEvent
        // when the notification configuration is put, as AWS does.
        bodies
            .iter()
            .any(|b| b.contains("ObjectCreated:Put") && b.contains("job.json")),
        "{bodies:?}"
    );

    // State machine from DefinitionUri with substitutions applied.
    let chain_arn = stack.ref_value("Chain").unwrap().to_string();
    assert_eq!(stack.attribute("Chain", "Name"), Some("inline-Chain"));
    let sm = sfn
        .describe_state_machine()
        .state_machine_arn(&chain_arn)
        .send()
        .await
        .unwrap();
    assert!(sm.definition().contains(&work_url), "{}", sm.definition());
    assert!(sm.definition().contains("\"table\": \"inline-t\""));
    assert!(!sm.definition().contains("${"));
    // Executions run (the emulator's Step Functions interpreter is switched on) and the
    // substituted queue URL is the real one.
    let exec = sfn
        .start_execution()
        .state_machine_arn(&chain_arn)
        .name("run-1")
        .input("{}")
        .send()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let d = sfn
            .describe_execution()
            .execution_arn(exec.execution_arn())
            .send()
            .await
            .unwrap();
        if d.status().as_str() != "RUNNING" || std::time::Instant::now() > deadline {
            break d.status().as_str().to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, "SUCCEEDED");
    let received = sqs
        .receive_message()
        .queue_url(&work_url)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value =
        serde_json::from_str(received.messages().first().and_then(|m| m.body()).unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({ "table": "inline-t" }));

    // Function wiring.
    let worker = stack.function("Worker").unwrap();
    assert_eq!(worker.timeout_seconds, 60);
    assert_eq!(worker.code_uri.as_deref(), Some("functions/worker"));
    assert_eq!(worker.environment["TABLE_NAME"], "inline-t");
    assert_eq!(worker.environment["CHAIN_ARN"], chain_arn);
    assert_eq!(worker.environment["WORK_QUEUE_URL"], work_url);
    assert_eq!(
        worker.environment["POOL_ARN"],
        "arn:aws:cognito-idp:us-east-1:123456789012:userpool/us-east-1_UserPool"
    );
    assert!(!worker.environment.contains_key("STAGE"));
    let work_arn = stack.attribute("WorkQueue", "Arn").unwrap().to_string();
    assert_eq!(
        worker.events,
        vec![
            FunctionEvent::Sqs {
                name: "Work".into(),
                queue_url: work_url.clone(),
                queue_arn: work_arn,
                batch_size: 5,
                max_batching_window_seconds: 1,
                maximum_concurrency: Some(2),
                report_batch_item_failures: true,
            },
            FunctionEvent::Sqs {
                name: "Batch".into(),
                queue_url: batch_url.to_string(),
                queue_arn: batch_arn.to_string(),
                batch_size: 10,
                max_batching_window_seconds: 0,
                maximum_concurrency: None,
                report_batch_item_failures: false,
            },
            FunctionEvent::Schedule {
                name: "Sweep".into(),
                expression: "rate(1 minute)".into(),
                period: Some(Duration::from_secs(60)),
            },
            FunctionEvent::Schedule {
                name: "Nightly".into(),
                expression: "cron(0 3 * * ? *)".into(),
                period: None,
            },
            FunctionEvent::Api {
                name: "Public".into(),
                path: "/health".into(),
                method: "GET".into(),
                requires_auth: false,
            },
            FunctionEvent::Api {
                name: "Private".into(),
                path: "/things/{id}".into(),
                method: "ANY".into(),
                requires_auth: true,
            },
        ]
    );

    // Edits take effect on a second run against the same emulator.
    let path = write_inline(&tmp.0, 90, "v2");
    let again = provision(&Template::load(&path).unwrap(), &sdk, stack_name)
        .await
        .expect("second provision");
    assert_eq!(again.ref_value("WorkQueue"), Some(work_url.as_str()));
    assert_eq!(again.ref_value("Chain"), Some(chain_arn.as_str()));
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&work_url)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .send()
        .await
        .unwrap();
    assert_eq!(
        attrs.attributes().unwrap()[&QueueAttributeName::VisibilityTimeout],
        "90"
    );
    let sm = sfn
        .describe_state_machine()
        .state_machine_arn(&chain_arn)
        .send()
        .await
        .unwrap();
    assert!(sm.definition().contains("\"v2\""), "{}", sm.definition());
    let table = ddb
        .describe_table()
        .table_name("inline-t")
        .send()
        .await
        .unwrap();
    let mut gsis: Vec<&str> = table
        .table()
        .unwrap()
        .global_secondary_indexes()
        .iter()
        .filter_map(|g| g.index_name())
        .collect();
    gsis.sort();
    assert_eq!(gsis, vec!["GSI1", "GSI2", "GSI3"]);

    emulator.stop().await;
}
