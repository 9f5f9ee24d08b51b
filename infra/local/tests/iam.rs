//! IAM in template.yaml is least privilege, checked on the template itself:
//!
//! - every policy statement the template declares (functions' and state
//!   machines' `Policies`, `AWS::IAM::*`, queue/topic/bucket policies) allows
//!   only named actions (no `*`, no `service:*`, no wildcard at all) on named
//!   resources (no `*`, no ARN whose resource part is a bare wildcard), never
//!   through `NotAction`/`NotResource`, and resource policies name their principal;
//! - SAM policy templates (`DynamoDBCrudPolicy`, `S3CrudPolicy`, ...) are scoped
//!   by a `Ref`/`GetAtt` of a resource of the right type, never a literal or `*`;
//! - every SQS subscription reports partial batch failures, and every queue a
//!   function reads from has a redrive policy to a dead-letter queue;
//! - every DynamoDB stream subscription reports partial failures, bisects, retries a bounded
//!   number of times into an OnFailure queue it may send to, and is filtered.
//!
//! Not covered, because they are not in the template text: the managed policies
//! SAM attaches by itself (basic execution logs, the SQS poller permissions of
//! an SQS event, X-Ray writes for `Tracing`).

use std::collections::BTreeSet;
use std::path::Path;

use local_stack::intrinsics::as_intrinsic;
use local_stack::template::{Resource, Template};
use serde_yaml::Value;

/// Actions AWS grants on no resource narrower than `*` (no resource-level
/// permissions), by the logical id that needs them. Each entry needs a comment
/// saying why, and each must be used: the test fails on a stale one.
const WILDCARD_RESOURCE_ALLOWED: &[(&str, &str)] = &[
    // A task token names no ARN, and Distributed Map children run under ARNs of their
    // own: AWS documents no resource-level permissions for the SendTask* actions.
    ("ApiFunction", "states:SendTaskSuccess"),
    ("ApiFunction", "states:SendTaskFailure"),
    ("WorkerFunction", "states:SendTaskSuccess"),
    ("WorkerFunction", "states:SendTaskFailure"),
    ("WorkerFunction", "states:SendTaskHeartbeat"),
];

/// SAM policy template parameter → the resource type it must refer to.
const TEMPLATE_PARAMETERS: &[(&str, &str)] = &[
    ("TableName", "AWS::DynamoDB::Table"),
    ("BucketName", "AWS::S3::Bucket"),
    ("QueueName", "AWS::SQS::Queue"),
    ("TopicName", "AWS::SNS::Topic"),
    ("StateMachineName", "AWS::Serverless::StateMachine"),
    ("FunctionName", "AWS::Serverless::Function"),
    ("EventBusName", "AWS::Events::EventBus"),
];

fn project_template() -> Template {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
    Template::load(&path).expect("template.yaml loads")
}

/// Strings of a value that may be a list.
fn items(value: &Value) -> Vec<&Value> {
    match value {
        Value::Sequence(list) => list.iter().collect(),
        other => vec![other],
    }
}

/// What a policy check found, and how much it looked at.
#[derive(Default)]
struct Review {
    problems: Vec<String>,
    statements: usize,
    sam_templates: usize,
    /// The `WILDCARD_RESOURCE_ALLOWED` entries some statement used.
    wildcard_exceptions_used: BTreeSet<(String, String)>,
}

impl Review {
    fn problem(&mut self, at: &str, what: impl std::fmt::Display) {
        self.problems.push(format!("{at}: {what}"));
    }

    /// A policy document: `{Statement: [...]}` (a single statement also allowed).
    fn document(&mut self, at: &str, document: &Value, resource_policy: bool, owner: &str) {
        let Some(statements) = document.get("Statement") else {
            self.problem(at, "a policy document without Statement");
            return;
        };
        for (i, statement) in items(statements).into_iter().enumerate() {
            let at = format!("{at}.Statement[{i}]");
            self.statement(&at, statement, resource_policy, owner);
        }
    }

    fn statement(&mut self, at: &str, statement: &Value, resource_policy: bool, owner: &str) {
        self.statements += 1;
        if statement.get("Effect").and_then(Value::as_str) == Some("Deny") {
            return; // a Deny narrows; wildcards there only make it safer
        }
        for key in ["NotAction", "NotResource", "NotPrincipal"] {
            if statement.get(key).is_some() {
                self.problem(
                    at,
                    format!("{key} allows everything it does not name; list what is allowed"),
                );
            }
        }
        let mut actions = Vec::new();
        match statement.get("Action") {
            None => self.problem(at, "no Action"),
            Some(value) => {
                for action in items(value) {
                    match action.as_str() {
                        Some(a) if a == "*" || a.ends_with(":*") => {
                            self.problem(at, format!("action '{a}' allows a whole service"))
                        }
                        Some(a) if a.contains('*') => self
                            .problem(at, format!("action '{a}' is a wildcard; name the actions")),
                        Some(a) if !a.contains(':') => {
                            self.problem(at, format!("'{a}' is not a service:Action"))
                        }
                        Some(a) => actions.push(a.to_owned()),
                        None => self.problem(at, "an Action that is not a literal name"),
                    }
                }
            }
        }
        match statement.get("Resource") {
            None => self.problem(at, "no Resource"),
            Some(value) => {
                for resource in items(value) {
                    if let Some(why) = too_broad(resource) {
                        let allowed = !actions.is_empty()
                            && actions
                                .iter()
                                .all(|a| WILDCARD_RESOURCE_ALLOWED.contains(&(owner, a.as_str())));
                        if allowed {
                            for action in &actions {
                                self.wildcard_exceptions_used
                                    .insert((owner.to_owned(), action.clone()));
                            }
                        } else {
                            self.problem(at, format!("resource {why}"));
                        }
                    }
                }
            }
        }
        if resource_policy {
            match statement.get("Principal") {
                None => self.problem(at, "a resource policy statement without Principal"),
                Some(principal) => {
                    let everyone = principal.as_str() == Some("*")
                        || principal.as_mapping().is_some_and(|m| {
                            m.values().flat_map(items).any(|p| p.as_str() == Some("*"))
                        });
                    if everyone {
                        self.problem(at, "Principal '*' lets anyone in");
                    }
                }
            }
        }
    }

    /// A function's or state machine's `Policies`.
    fn sam_policies(&mut self, template: &Template, resource: &Resource) {
        let id = &resource.logical_id;
        let Some(policies) = resource.property("Policies") else {
            return;
        };
        // `Policies` may be one entry or a list; a mapping with Statement is one document.
        let entries = match policies {
            Value::Mapping(m) if m.contains_key("Statement") => vec![policies],
            other => items(other),
        };
        for (i, entry) in entries.into_iter().enumerate() {
            let at = format!("{id}.Policies[{i}]");
            match entry {
                Value::String(name) => self.problem(
                    &at,
                    format!("managed policy '{name}' is not scoped to this stack's resources"),
                ),
                Value::Mapping(m) if m.contains_key("Statement") => {
                    self.document(&at, entry, false, id)
                }
                Value::Mapping(m) if m.len() == 1 => {
                    let (name, parameters) = m.iter().next().expect("one entry");
                    let name = name.as_str().unwrap_or("?");
                    self.sam_template(template, &format!("{at}.{name}"), parameters);
                }
                _ => self.problem(
                    &at,
                    "an entry that is neither a policy nor a SAM policy template",
                ),
            }
        }
    }

    fn sam_template(&mut self, template: &Template, at: &str, parameters: &Value) {
        self.sam_templates += 1;
        let Some(parameters) = parameters.as_mapping().filter(|m| !m.is_empty()) else {
            self.problem(
                at,
                "a SAM policy template without parameters is not scoped to a resource",
            );
            return;
        };
        for (name, value) in parameters {
            let name = name.as_str().unwrap_or("?");
            let at = format!("{at}.{name}");
            let target = match as_intrinsic(value) {
                Some(("Ref", Value::String(target))) => target.clone(),
                Some(("Fn::GetAtt", Value::Sequence(parts))) => parts
                    .first()
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                Some(("Fn::GetAtt", Value::String(s))) => {
                    s.split('.').next().unwrap_or("").to_owned()
                }
                _ => {
                    self.problem(
                        &at,
                        format!(
                            "must be a Ref or GetAtt of a resource of this stack, got {value:?}"
                        ),
                    );
                    continue;
                }
            };
            match template.resource(&target) {
                None => self.problem(
                    &at,
                    format!("refers to '{target}', not a resource of this stack"),
                ),
                Some(resource) => {
                    let expected = TEMPLATE_PARAMETERS
                        .iter()
                        .find(|(p, _)| *p == name)
                        .map(|(_, kind)| *kind);
                    if let Some(kind) = expected.filter(|k| *k != resource.kind) {
                        self.problem(
                            &at,
                            format!("refers to '{target}', a {}, not a {kind}", resource.kind),
                        );
                    }
                }
            }
        }
    }
}

/// Why a `Resource` entry covers more than named resources, if it does.
fn too_broad(resource: &Value) -> Option<String> {
    match as_intrinsic(resource) {
        // The ARN of one resource of this stack.
        Some(("Ref" | "Fn::GetAtt", _)) => None,
        Some(("Fn::Sub", Value::String(text))) => broad_arn(text),
        Some(("Fn::Sub", Value::Sequence(parts))) => {
            parts.first().and_then(Value::as_str).and_then(broad_arn)
        }
        Some(("Fn::Join", Value::Sequence(parts))) => {
            let separator = parts.first().and_then(Value::as_str).unwrap_or("");
            let pieces: Vec<String> = parts
                .get(1)
                .map(items)
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    p.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| "${…}".into())
                })
                .collect();
            broad_arn(&pieces.join(separator))
        }
        // Conditional values: every branch must be narrow.
        Some(("Fn::If", Value::Sequence(parts))) => parts.iter().skip(1).find_map(too_broad),
        Some((function, _)) => Some(format!(
            "built with {function}, which this check cannot read"
        )),
        None => match resource.as_str() {
            Some(text) => broad_arn(text),
            None => Some(format!("{resource:?} is not an ARN")),
        },
    }
}

/// `*`, or an ARN whose resource part is a bare wildcard (`arn:aws:s3:::*`,
/// `arn:aws:states:…:stateMachine:*`, `arn:aws:dynamodb:…:table/*`).
fn broad_arn(text: &str) -> Option<String> {
    if text == "*" {
        return Some("'*' is every resource".into());
    }
    // `${AWS::Region}` and friends hold colons of their own: read them as one opaque name.
    let mut plain = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        plain.push_str(&rest[..start]);
        match rest[start..].find('}') {
            Some(end) => {
                plain.push_str("${}");
                rest = &rest[start + end + 1..];
            }
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    plain.push_str(rest);
    let parts: Vec<&str> = plain.splitn(6, ':').collect();
    if parts.len() == 6 && parts[0] == "arn" {
        let resource = parts[5];
        // `type/name` or `type:name`, except S3, whose resource part is `bucket/key`.
        let after_type = match parts[2] {
            "s3" => resource,
            _ => resource
                .split_once([':', '/'])
                .map(|(_, rest)| rest)
                .unwrap_or(resource),
        };
        if resource == "*" || after_type == "*" || resource.starts_with('*') {
            return Some(format!("'{text}' is every resource of its type"));
        }
    }
    None
}

/// Every policy the template declares, reviewed.
fn review(template: &Template) -> Review {
    let mut review = Review::default();
    for resource in template.resources() {
        let id = resource.logical_id.as_str();
        match resource.kind.as_str() {
            "AWS::Serverless::Function" | "AWS::Serverless::StateMachine" => {
                review.sam_policies(template, resource)
            }
            "AWS::IAM::Role" => {
                if let Some(policies) = resource.property("Policies") {
                    for (i, policy) in items(policies).into_iter().enumerate() {
                        match policy.get("PolicyDocument") {
                            Some(doc) => {
                                review.document(&format!("{id}.Policies[{i}]"), doc, false, id)
                            }
                            None => {
                                review.problem(&format!("{id}.Policies[{i}]"), "no PolicyDocument")
                            }
                        }
                    }
                }
                if let Some(arns) = resource.property("ManagedPolicyArns") {
                    for arn in items(arns) {
                        review.problem(
                            id,
                            format!(
                                "managed policy {arn:?} is not scoped to this stack's resources"
                            ),
                        );
                    }
                }
            }
            "AWS::IAM::Policy" | "AWS::IAM::ManagedPolicy" => {
                match resource.property("PolicyDocument") {
                    Some(doc) => review.document(&format!("{id}.PolicyDocument"), doc, false, id),
                    None => review.problem(id, "no PolicyDocument"),
                }
            }
            kind if kind.starts_with("AWS::IAM::") => {}
            "AWS::SQS::QueuePolicy" | "AWS::SNS::TopicPolicy" | "AWS::S3::BucketPolicy" => {
                match resource.property("PolicyDocument") {
                    Some(doc) => review.document(&format!("{id}.PolicyDocument"), doc, true, id),
                    None => review.problem(id, "no PolicyDocument"),
                }
            }
            _ => {}
        }
    }
    review
}

/// The logical id of the resource a `!GetAtt X.Arn` (or `!Ref X`) names.
fn target(value: &Value) -> Option<String> {
    match as_intrinsic(value)? {
        ("Fn::GetAtt", Value::Sequence(parts)) => parts.first()?.as_str().map(str::to_owned),
        ("Fn::GetAtt", Value::String(s)) => s.split('.').next().map(str::to_owned),
        ("Ref", Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// SQS subscriptions report partial failures, and their queues dead-letter.
fn queue_problems(template: &Template) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let mut subscriptions = 0;
    let mut read_queues: Vec<(String, Option<String>)> = Vec::new();
    for function in template.resources_of_type("AWS::Serverless::Function") {
        let Some(Value::Mapping(events)) = function.property("Events") else {
            continue;
        };
        for (name, event) in events {
            if event.get("Type").and_then(Value::as_str) != Some("SQS") {
                continue;
            }
            subscriptions += 1;
            let at = format!(
                "{}.Events.{}",
                function.logical_id,
                name.as_str().unwrap_or("?")
            );
            let properties = event.get("Properties").cloned().unwrap_or(Value::Null);
            let types: Vec<&str> = properties
                .get("FunctionResponseTypes")
                .map(items)
                .unwrap_or_default()
                .into_iter()
                .filter_map(Value::as_str)
                .collect();
            if types != ["ReportBatchItemFailures"] {
                problems.push(format!(
                    "{at}: FunctionResponseTypes must be [ReportBatchItemFailures] (one bad message must not fail its batch), got {types:?}"
                ));
            }
            read_queues.push((at, properties.get("Queue").and_then(target)));
        }
    }
    for mapping in template.resources_of_type("AWS::Lambda::EventSourceMapping") {
        subscriptions += 1;
        let at = mapping.logical_id.clone();
        let types: Vec<&str> = mapping
            .property("FunctionResponseTypes")
            .map(items)
            .unwrap_or_default()
            .into_iter()
            .filter_map(Value::as_str)
            .collect();
        if types != ["ReportBatchItemFailures"] {
            problems.push(format!(
                "{at}: FunctionResponseTypes must be [ReportBatchItemFailures], got {types:?}"
            ));
        }
        read_queues.push((at, mapping.property("EventSourceArn").and_then(target)));
    }
    for (at, queue) in read_queues {
        let Some(queue) = queue else {
            problems.push(format!(
                "{at}: Queue must be a GetAtt of a queue of this stack"
            ));
            continue;
        };
        let Some(resource) = template
            .resource(&queue)
            .filter(|r| r.kind == "AWS::SQS::Queue")
        else {
            problems.push(format!(
                "{at}: '{queue}' is not an AWS::SQS::Queue of this stack"
            ));
            continue;
        };
        let Some(redrive) = resource.property("RedrivePolicy") else {
            problems.push(format!("{queue}: read by {at} but has no RedrivePolicy"));
            continue;
        };
        match redrive.get("deadLetterTargetArn").and_then(target) {
            Some(dlq) if dlq != queue
                && template
                    .resource(&dlq)
                    .is_some_and(|r| r.kind == "AWS::SQS::Queue") => {}
            other => problems.push(format!(
                "{queue}: deadLetterTargetArn must be a GetAtt of another queue of this stack, got {other:?}"
            )),
        }
        if redrive.get("maxReceiveCount").is_none() {
            problems.push(format!("{queue}: RedrivePolicy without maxReceiveCount"));
        }
    }
    (problems, subscriptions)
}

#[test]
fn template_policies_are_least_privilege() {
    let template = project_template();
    let review = review(&template);
    assert!(
        review.problems.is_empty(),
        "template.yaml grants more than it names:\n{}",
        review.problems.join("\n")
    );
    // Exactly the documented exceptions, no stale ones.
    let allowed: BTreeSet<(String, String)> = WILDCARD_RESOURCE_ALLOWED
        .iter()
        .map(|(owner, action)| (owner.to_string(), action.to_string()))
        .collect();
    assert_eq!(
        review.wildcard_exceptions_used, allowed,
        "the `*` resource exceptions in use differ from WILDCARD_RESOURCE_ALLOWED"
    );
    // The walk saw the policies (a reshaped template must not pass by being skipped).
    let with_policies: BTreeSet<&str> = template
        .resources()
        .iter()
        .filter(|r| r.kind.starts_with("AWS::Serverless::") && r.property("Policies").is_some())
        .map(|r| r.logical_id.as_str())
        .collect();
    for expected in [
        "ApiFunction",
        "WorkerFunction",
        "SweeperFunction",
        "ChainStateMachine",
    ] {
        assert!(
            with_policies.contains(expected),
            "{expected} declares no Policies"
        );
    }
    assert!(
        review.statements >= 10,
        "only {} statements reviewed",
        review.statements
    );
    assert!(
        review.sam_templates >= 5,
        "only {} SAM templates reviewed",
        review.sam_templates
    );
}

#[test]
fn sqs_subscriptions_report_partial_failures_and_their_queues_dead_letter() {
    let template = project_template();
    let (problems, subscriptions) = queue_problems(&template);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Five tiers and the batch uploads.
    assert!(
        subscriptions >= 6,
        "only {subscriptions} SQS subscriptions found"
    );
}

#[test]
fn the_checks_catch_what_they_are_for() {
    let yaml = r#"
Resources:
  Table: { Type: AWS::DynamoDB::Table }
  Bucket: { Type: AWS::S3::Bucket }
  Dlq: { Type: AWS::SQS::Queue }
  Work:
    Type: AWS::SQS::Queue
  Drained:
    Type: AWS::SQS::Queue
    Properties:
      RedrivePolicy: { deadLetterTargetArn: !GetAtt Dlq.Arn, maxReceiveCount: 5 }
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Policies:
        - AmazonDynamoDBFullAccess
        - DynamoDBCrudPolicy: { TableName: "*" }
        - S3CrudPolicy: { BucketName: !Ref Table }
        - CloudWatchPutMetricPolicy: {}
        - Statement:
            - Effect: Allow
              Action: "*"
              Resource: !GetAtt Work.Arn
            - Effect: Allow
              Action: [sqs:*, s3:Get*]
              Resource: !GetAtt Work.Arn
            - Effect: Allow
              Action: sqs:SendMessage
              Resource: "*"
            - Effect: Allow
              Action: states:StartExecution
              Resource: !Sub "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:*"
            - Effect: Allow
              NotAction: iam:PassRole
              Resource: !Sub "arn:${AWS::Partition}:s3:::*"
            - Effect: Deny
              Action: "*"
              Resource: "*"
      Events:
        NoPartial:
          Type: SQS
          Properties: { Queue: !GetAtt Work.Arn }
        Fine:
          Type: SQS
          Properties:
            Queue: !GetAtt Drained.Arn
            FunctionResponseTypes: [ReportBatchItemFailures]
  Open:
    Type: AWS::SQS::QueuePolicy
    Properties:
      Queues: [!Ref Work]
      PolicyDocument:
        Statement:
          - Effect: Allow
            Principal: { AWS: "*" }
            Action: sqs:SendMessage
            Resource: !GetAtt Work.Arn
"#;
    // Placeholders hold colons; a wildcard after a name is narrow, a bare one is not.
    for narrow in [
        "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:execution:${Chain.Name}:*",
        "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:execution:${AWS::StackName}-batch*",
        "arn:aws:s3:::my-bucket/*",
    ] {
        assert_eq!(broad_arn(narrow), None, "{narrow}");
    }
    for broad in [
        "*",
        "arn:aws:sqs:*:*:*",
        "arn:aws:dynamodb:us-east-1:123456789012:table/*",
        "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:execution:*",
    ] {
        assert!(broad_arn(broad).is_some(), "{broad}");
    }

    let template = Template::parse(yaml, Path::new(".")).expect("test template parses");
    let problems = review(&template).problems.join("\n");
    for expected in [
        "Fn.Policies[0]: managed policy 'AmazonDynamoDBFullAccess'",
        "Fn.Policies[1].DynamoDBCrudPolicy.TableName: must be a Ref or GetAtt",
        "Fn.Policies[2].S3CrudPolicy.BucketName: refers to 'Table', a AWS::DynamoDB::Table, not a AWS::S3::Bucket",
        "Fn.Policies[3].CloudWatchPutMetricPolicy: a SAM policy template without parameters",
        "Fn.Policies[4].Statement[0]: action '*'",
        "Fn.Policies[4].Statement[1]: action 'sqs:*'",
        "Fn.Policies[4].Statement[1]: action 's3:Get*' is a wildcard",
        "Fn.Policies[4].Statement[2]: resource '*' is every resource",
        "Fn.Policies[4].Statement[3]: resource 'arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:*' is every resource of its type",
        "Fn.Policies[4].Statement[4]: NotAction",
        "Fn.Policies[4].Statement[4]: no Action",
        "Fn.Policies[4].Statement[4]: resource 'arn:${AWS::Partition}:s3:::*'",
        "Open.PolicyDocument.Statement[0]: Principal '*'",
    ] {
        assert!(problems.contains(expected), "missed {expected:?} in:\n{problems}");
    }
    assert!(
        !problems.contains("Statement[5]"),
        "a Deny was flagged:\n{problems}"
    );

    let (queue_problems, subscriptions) = queue_problems(&template);
    let queue_problems = queue_problems.join("\n");
    assert_eq!(subscriptions, 2);
    assert!(
        queue_problems.contains("Fn.Events.NoPartial: FunctionResponseTypes"),
        "{queue_problems}"
    );
    assert!(
        queue_problems.contains("Work: read by Fn.Events.NoPartial but has no RedrivePolicy"),
        "{queue_problems}"
    );
    assert!(!queue_problems.contains("Fine"), "{queue_problems}");
}

/// The resources (as YAML text) of a function's own statements that allow `action`.
fn resources_allowing(template: &Template, function: &str, action: &str) -> Vec<String> {
    let resource = template
        .resources()
        .iter()
        .find(|r| r.logical_id == function)
        .unwrap_or_else(|| panic!("{function}"));
    let mut resources = Vec::new();
    for policy in items(resource.property("Policies").expect("policies")) {
        let Some(statements) = policy.get("Statement") else {
            continue;
        };
        for statement in items(statements) {
            let allows = statement
                .get("Action")
                .is_some_and(|a| items(a).iter().any(|a| a.as_str() == Some(action)));
            if allows {
                for resource in items(statement.get("Resource").expect("a resource")) {
                    resources.push(serde_yaml::to_string(resource).unwrap());
                }
            }
        }
    }
    resources
}

/// Whoever starts executions resolves an ambiguous start by describing the execution's
/// deterministic name: the API for chains, the batch preparer (the batch trigger) for
/// batches. The API no longer starts batches, so it may neither start nor describe them.
#[test]
fn starters_may_describe_the_executions_they_start() {
    let template = project_template();
    let api = resources_allowing(&template, "ApiFunction", "states:DescribeExecution");
    let chains = ":execution:${ChainStateMachine.Name}:*";
    assert!(
        api.iter().any(|r| r.contains(chains)),
        "no DescribeExecution on {chains} in {api:?}"
    );
    let batches = ":execution:${BatchStateMachine.Name}:*";
    assert!(
        !api.iter().any(|r| r.contains(batches)),
        "the API describes batch executions it no longer starts: {api:?}"
    );
    assert!(
        resources_allowing(&template, "ApiFunction", "states:StartExecution")
            .iter()
            .all(|r| !r.contains("BatchStateMachine")),
        "the API starts batches"
    );
    let trigger = resources_allowing(
        &template,
        "BatchTriggerFunction",
        "states:DescribeExecution",
    );
    assert!(
        trigger
            .iter()
            .any(|r| r.contains(":execution:${AWS::StackName}-batch:*")),
        "no DescribeExecution on the batch executions in {trigger:?}"
    );
    // The sweeper describes a stuck batch's execution before it fails the batch.
    let sweeper = resources_allowing(&template, "SweeperFunction", "states:DescribeExecution");
    assert!(
        sweeper
            .iter()
            .any(|r| r.contains(":execution:${BatchStateMachine.Name}:*")),
        "no DescribeExecution on the batch executions in {sweeper:?}"
    );
}

/// Cancelling a task stops its chain's or its batch's execution: the API may call
/// StopExecution on the executions of both state machines.
#[test]
fn the_api_may_stop_chain_and_batch_executions() {
    let template = project_template();
    let resources = resources_allowing(&template, "ApiFunction", "states:StopExecution");
    for machine in ["ChainStateMachine", "BatchStateMachine"] {
        let wanted = format!(":execution:${{{machine}.Name}}:*");
        assert!(
            resources.iter().any(|r| r.contains(&wanted)),
            "no StopExecution on {wanted} in {resources:?}"
        );
    }
}

/// A DynamoDB stream subscription retries from a failed record (not its whole batch),
/// bisects a batch whose invocation fails, gives up after a bound into a queue of this stack
/// that the function may send to, and filters (without, every write of the table invokes it).
#[test]
fn stream_subscriptions_retry_from_the_failed_record_and_dead_letter() {
    let template = project_template();
    let mut streams = 0;
    for function in template.resources_of_type("AWS::Serverless::Function") {
        let Some(events) = function.property("Events").and_then(Value::as_mapping) else {
            continue;
        };
        for (name, event) in events {
            if event.get("Type").and_then(Value::as_str) != Some("DynamoDB") {
                continue;
            }
            streams += 1;
            let at = format!("{}.{}", function.logical_id, name.as_str().unwrap_or("?"));
            let properties = event.get("Properties").expect("properties");
            let types: Vec<&str> = properties
                .get("FunctionResponseTypes")
                .map(items)
                .unwrap_or_default()
                .into_iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(types, ["ReportBatchItemFailures"], "{at}");
            assert_eq!(
                properties
                    .get("BisectBatchOnFunctionError")
                    .and_then(Value::as_bool),
                Some(true),
                "{at}"
            );
            let retries = properties
                .get("MaximumRetryAttempts")
                .and_then(Value::as_i64)
                .unwrap_or(-1);
            assert!(
                (0..=10_000).contains(&retries),
                "{at}: MaximumRetryAttempts {retries}"
            );
            let destination = properties
                .get("DestinationConfig")
                .and_then(|d| d.get("OnFailure"))
                .and_then(|d| d.get("Destination"))
                .and_then(target)
                .unwrap_or_else(|| panic!("{at}: no OnFailure destination of this stack"));
            let queue = template.resource(&destination).expect("destination");
            assert_eq!(queue.kind, "AWS::SQS::Queue", "{at}");
            let filters = properties
                .get("FilterCriteria")
                .and_then(|f| f.get("Filters"))
                .and_then(Value::as_sequence)
                .map(Vec::len)
                .unwrap_or(0);
            assert!((1..=5).contains(&filters), "{at}: {filters} filters");
            // The function's role sends the OnFailure record: it must be allowed to.
            let by_template = items(function.property("Policies").expect("policies"))
                .into_iter()
                .filter_map(|p| p.get("SQSSendMessagePolicy"))
                .filter_map(|p| p.get("QueueName").and_then(target))
                .any(|queue| queue == destination);
            let sends = resources_allowing(&template, &function.logical_id, "sqs:SendMessage");
            assert!(
                by_template || sends.iter().any(|r| r.contains(&destination)),
                "{at}: may not send to {destination}: {sends:?}"
            );
        }
    }
    assert!(streams > 0, "the template has a stream subscription");
}
