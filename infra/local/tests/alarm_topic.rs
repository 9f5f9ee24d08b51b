//! Alarms reach their topic, checked on template.yaml itself (the emulator has no CloudWatch
//! alarms and no KMS key policies to try it on):
//!
//! - a topic that a CloudWatch alarm notifies is either unencrypted or encrypted with a key
//!   the template declares (`AWS::KMS::Key`), never with an AWS managed key such as
//!   `alias/aws/sns`: AWS managed key policies cannot be changed, and they do not let CloudWatch
//!   use the key, so every alarm action fails ("CloudWatch Alarms does not have authorization to
//!   access the SNS topic encryption key");
//! - that key's policy lets `cloudwatch.amazonaws.com` call `kms:Decrypt` and
//!   `kms:GenerateDataKey*`, scoped by `aws:SourceAccount` and an `aws:SourceArn` pattern that
//!   matches the name of every alarm publishing to the topic.

use std::path::Path;

use local_stack::intrinsics::as_intrinsic;
use local_stack::template::{Resource, Template};
use serde_yaml::Value;

fn project_template() -> Template {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
    Template::load(&path).expect("template.yaml loads")
}

/// The text of a plain string or of an `!Sub` without variables map.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        other => match as_intrinsic(other)? {
            ("Fn::Sub", Value::String(s)) => Some(s.clone()),
            _ => None,
        },
    }
}

/// The logical id a `!Ref X` or `!GetAtt X.Arn` names.
fn target(value: &Value) -> Option<String> {
    match as_intrinsic(value)? {
        ("Ref", Value::String(s)) => Some(s.clone()),
        ("Fn::GetAtt", Value::Sequence(parts)) => parts.first()?.as_str().map(str::to_owned),
        ("Fn::GetAtt", Value::String(s)) => s.split('.').next().map(str::to_owned),
        _ => None,
    }
}

fn list(value: Option<&Value>) -> Vec<&Value> {
    match value {
        Some(Value::Sequence(items)) => items.iter().collect(),
        Some(other) => vec![other],
        None => Vec::new(),
    }
}

/// `*` matches any run of characters, as in an `ArnLike` condition.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(text) = text.strip_prefix(head) else {
                return false;
            };
            (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .any(|i| glob(rest, &text[i..]))
        }
    }
}

/// A key id, alias or ARN that names an AWS managed key (`alias/aws/<service>`).
fn aws_managed(key: &str) -> bool {
    key.starts_with("alias/aws/") || key.contains(":alias/aws/")
}

/// What is wrong with `key`'s policy for the alarms that publish under it.
fn key_policy_problems(key: &Resource, alarms: &[(&str, String)]) -> Vec<String> {
    let id = &key.logical_id;
    let statements = list(key.property_path(&["KeyPolicy", "Statement"]));
    let for_cloudwatch: Vec<&Value> = statements
        .into_iter()
        .filter(|s| s.get("Effect").and_then(Value::as_str) == Some("Allow"))
        .filter(|s| {
            list(s.get("Principal").and_then(|p| p.get("Service")))
                .iter()
                .any(|service| service.as_str() == Some("cloudwatch.amazonaws.com"))
        })
        .collect();
    let [statement] = for_cloudwatch.as_slice() else {
        return vec![format!(
            "{id}: expected one Allow statement for cloudwatch.amazonaws.com, found {}",
            for_cloudwatch.len()
        )];
    };
    let mut problems = Vec::new();
    let actions: Vec<&str> = list(statement.get("Action"))
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
    for needed in ["kms:Decrypt", "kms:GenerateDataKey*"] {
        if !actions.contains(&needed) {
            problems.push(format!("{id}: CloudWatch needs {needed} (has {actions:?})"));
        }
    }
    let condition = statement.get("Condition");
    let account = condition
        .and_then(|c| c.get("StringEquals"))
        .and_then(|c| c.get("aws:SourceAccount"));
    if account.and_then(target).as_deref() != Some("AWS::AccountId") {
        problems.push(format!(
            "{id}: scope CloudWatch by StringEquals aws:SourceAccount: !Ref AWS::AccountId"
        ));
    }
    let source_arn = condition
        .and_then(|c| c.get("ArnLike"))
        .and_then(|c| c.get("aws:SourceArn"))
        .and_then(text);
    match source_arn {
        None => problems.push(format!(
            "{id}: scope CloudWatch by ArnLike aws:SourceArn (this stack's alarms)"
        )),
        Some(pattern) => {
            if pattern.ends_with(":alarm:*") || !pattern.contains(":alarm:") {
                problems.push(format!(
                    "{id}: aws:SourceArn {pattern:?} is not narrowed to this stack's alarms"
                ));
            }
            for (alarm, arn) in alarms {
                if !glob(&pattern, arn) {
                    problems.push(format!(
                        "{id}: aws:SourceArn {pattern:?} does not match alarm {alarm} ({arn})"
                    ));
                }
            }
        }
    }
    problems
}

/// Problems of every topic an alarm notifies, and how many such topics there are.
fn alarm_topic_problems(template: &Template) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let mut topics: Vec<(String, Vec<(&str, String)>)> = Vec::new();
    for alarm in template.resources_of_type("AWS::CloudWatch::Alarm") {
        let arn = match alarm.property("AlarmName").and_then(text) {
            Some(name) => format!(
                "arn:${{AWS::Partition}}:cloudwatch:${{AWS::Region}}:${{AWS::AccountId}}:alarm:{name}"
            ),
            None => {
                problems.push(format!(
                    "{}: no AlarmName, so no key policy can name it",
                    alarm.logical_id
                ));
                continue;
            }
        };
        for field in ["AlarmActions", "OKActions", "InsufficientDataActions"] {
            for action in list(alarm.property(field)) {
                let Some(topic) = target(action) else {
                    continue;
                };
                match topics.iter_mut().find(|(id, _)| *id == topic) {
                    Some((_, alarms)) => alarms.push((&alarm.logical_id, arn.clone())),
                    None => topics.push((topic, vec![(&alarm.logical_id, arn.clone())])),
                }
            }
        }
    }
    for (topic_id, alarms) in &topics {
        let Some(topic) = template.resource(topic_id) else {
            problems.push(format!(
                "{topic_id}: alarms notify it, but it is not declared"
            ));
            continue;
        };
        let Some(key) = topic.property("KmsMasterKeyId") else {
            continue; // unencrypted: CloudWatch needs no key
        };
        if let Some(literal) = text(key).filter(|_| target(key).is_none()) {
            let why = if aws_managed(&literal) {
                "an AWS managed key, whose policy does not let CloudWatch use it"
            } else {
                "a key outside this template, whose policy this check cannot see"
            };
            problems.push(format!("{topic_id}: KmsMasterKeyId {literal:?} is {why}"));
            continue;
        }
        match target(key).and_then(|id| template.resource(&id)) {
            Some(key) if key.kind == "AWS::KMS::Key" => {
                problems.extend(key_policy_problems(key, alarms))
            }
            _ => problems.push(format!(
                "{topic_id}: KmsMasterKeyId must refer to an AWS::KMS::Key of this template"
            )),
        }
    }
    (problems, topics.len())
}

#[test]
fn alarm_topics_use_a_key_cloudwatch_may_use() {
    let (problems, topics) = alarm_topic_problems(&project_template());
    assert!(topics >= 1, "no alarm notifies a topic");
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_check_refuses_an_aws_managed_key_and_a_loose_policy() {
    let template = |topic_key: &str, source_arn: &str, alarm_name: &str| {
        Template::parse(
            &format!(
                r#"
Resources:
  Key:
    Type: AWS::KMS::Key
    Properties:
      KeyPolicy:
        Statement:
          - Effect: Allow
            Principal: {{Service: cloudwatch.amazonaws.com}}
            Action: [kms:Decrypt, kms:GenerateDataKey*]
            Resource: "*"
            Condition:
              StringEquals: {{aws:SourceAccount: !Ref AWS::AccountId}}
              ArnLike: {{aws:SourceArn: !Sub "{source_arn}"}}
  Topic:
    Type: AWS::SNS::Topic
    Properties:
      KmsMasterKeyId: {topic_key}
  Alarm:
    Type: AWS::CloudWatch::Alarm
    Properties:
      AlarmName: !Sub "{alarm_name}"
      AlarmActions: [!Ref Topic]
"#
            ),
            Path::new("."),
        )
        .expect("parses")
    };
    let scoped = "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:${AWS::StackName}-*";
    let named = "${AWS::StackName}-dlq";
    let (ok, topics) = alarm_topic_problems(&template("!Ref Key", scoped, named));
    assert_eq!((ok, topics), (Vec::<String>::new(), 1));

    let (managed, _) = alarm_topic_problems(&template("alias/aws/sns", scoped, named));
    assert!(managed[0].contains("AWS managed key"), "{managed:?}");
    let (arn, _) = alarm_topic_problems(&template(
        "arn:aws:kms:us-east-1:123456789012:alias/aws/sns",
        scoped,
        named,
    ));
    assert!(arn[0].contains("AWS managed key"), "{arn:?}");

    let everyone = scoped.replace("${AWS::StackName}-*", "*");
    let (loose, _) = alarm_topic_problems(&template("!Ref Key", &everyone, named));
    assert!(loose[0].contains("not narrowed"), "{loose:?}");

    let (unmatched, _) = alarm_topic_problems(&template("!Ref Key", scoped, "other-dlq"));
    assert!(
        unmatched[0].contains("does not match alarm"),
        "{unmatched:?}"
    );
}

#[test]
fn glob_matches_as_arn_like() {
    assert!(glob("a:*", "a:b-c"));
    assert!(glob("a:${S}-*", "a:${S}-dlq"));
    assert!(!glob("a:${S}-*", "a:other"));
    assert!(glob("*", ""));
    assert!(!glob("a", "ab"));
}
