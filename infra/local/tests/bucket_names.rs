//! Bucket names in template.yaml are valid for any stack, checked on the template itself by
//! resolving each `BucketName` as CloudFormation would, for stack names CloudFormation accepts
//! (upper case, up to 128 characters) in several Regions:
//!
//! - a bucket the template names gets a valid S3 name (3–63 characters of `a-z 0-9 -`, a letter
//!   or digit at each end), and no two stacks or Regions share one (S3 names are global);
//! - a policy that names a bucket before it exists (the upload queue's `aws:SourceArn`, since
//!   the bucket's notification needs that policy first) names exactly the bucket's name.
//!
//! Buckets without a `BucketName` get names CloudFormation generates, which are always valid;
//! the local host's stand-in for that (`provision::buckets::bucket_name`) is unit-tested there.

use std::collections::BTreeMap;
use std::path::Path;

use local_stack::intrinsics::{resolve, scalar_string, MapScope};
use local_stack::template::Template;

fn project_template() -> Template {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
    Template::load(&path).expect("template.yaml loads")
}

/// A scope as CloudFormation would give a stack of this name in this Region.
fn scope(stack: &str, region: &str, stack_uuid: &str) -> MapScope {
    let mut scope = MapScope::default();
    let account = "123456789012";
    for (name, value) in [
        ("AWS::StackName", stack.to_string()),
        (
            "AWS::StackId",
            format!("arn:aws:cloudformation:{region}:{account}:stack/{stack}/{stack_uuid}"),
        ),
        ("AWS::Region", region.to_string()),
        ("AWS::AccountId", account.to_string()),
        ("AWS::Partition", "aws".to_string()),
    ] {
        scope.refs.insert(name.into(), value);
    }
    scope
}

/// S3's rules for a general purpose bucket name that such names could break.
fn problem(name: &str) -> Option<String> {
    if !(3..=63).contains(&name.len()) {
        return Some(format!("{} characters", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
    {
        return Some(format!("{c:?} is not allowed"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Some("must start and end with a letter or digit".into());
    }
    if name.contains("..") || name.starts_with("xn--") || name.ends_with("-s3alias") {
        return Some("a reserved form".into());
    }
    None
}

/// Stacks CloudFormation accepts: (name, Region, stack id uuid).
fn stacks() -> Vec<(String, &'static str, &'static str)> {
    let long = format!("Taskflow-{}", "Production".repeat(12)); // 129 > 128: cut below
    let long = long[..128].to_string();
    vec![
        (
            "taskflow".into(),
            "us-east-1",
            "0a1b2c3d-1111-2222-3333-444455556666",
        ),
        (
            "taskflow".into(),
            "eu-west-1",
            "9f8e7d6c-1111-2222-3333-444455556666",
        ),
        (
            "Taskflow-PROD".into(),
            "ap-southeast-2",
            "5e4d3c2b-1111-2222-3333-444455556666",
        ),
        (
            long,
            "ap-southeast-5",
            "77aa88bb-1111-2222-3333-444455556666",
        ),
        (
            "x".into(),
            "us-gov-west-1",
            "c0ffee00-1111-2222-3333-444455556666",
        ),
    ]
}

#[test]
fn named_buckets_are_valid_and_unique_for_any_stack() {
    let template = project_template();
    let named: Vec<_> = template
        .resources_of_type("AWS::S3::Bucket")
        .filter_map(|b| Some((b.logical_id.clone(), b.property("BucketName")?.clone())))
        .collect();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut problems = Vec::new();
    for (stack, region, uuid) in stacks() {
        let scope = scope(&stack, region, uuid);
        for (id, expression) in &named {
            let name = resolve(expression, &scope)
                .unwrap()
                .and_then(|v| scalar_string(&v))
                .unwrap();
            if let Some(problem) = problem(&name) {
                problems.push(format!("{id} in {stack} ({region}): {name:?}: {problem}"));
            }
            let owner = format!("{id} of {stack} in {region}");
            if let Some(other) = seen.insert(name.clone(), owner.clone()) {
                problems.push(format!("{owner} and {other} share {name:?}"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn a_policy_naming_a_bucket_in_advance_names_it_exactly() {
    let template = project_template();
    let bucket = template.resource("BatchBucket").expect("BatchBucket");
    let policy = template
        .resource("BatchUploadsQueuePolicy")
        .expect("BatchUploadsQueuePolicy");
    let source_arn = policy
        .property_path(&["PolicyDocument", "Statement"])
        .and_then(|s| s.as_sequence())
        .and_then(|s| s.first())
        .and_then(|s| s.get("Condition"))
        .and_then(|c| c.get("ArnLike"))
        .and_then(|c| c.get("aws:SourceArn"))
        .expect("the queue policy's aws:SourceArn");
    for (stack, region, uuid) in stacks() {
        let scope = scope(&stack, region, uuid);
        let text = |v| {
            resolve(v, &scope)
                .unwrap()
                .and_then(|v| scalar_string(&v))
                .unwrap()
        };
        let name = text(bucket.property("BucketName").expect("a predictable name"));
        assert_eq!(text(source_arn), format!("arn:aws:s3:::{name}"), "{stack}");
    }
}

#[test]
fn the_name_check_refuses_what_s3_refuses() {
    assert_eq!(
        problem("taskflow-batches-123456789012-us-east-1-0a1b2c3d"),
        None
    );
    for bad in [
        "Taskflow-batches",
        "ab",
        &"a".repeat(64),
        "-a-b",
        "a_b",
        "xn--ab",
        "a..b",
    ] {
        assert!(problem(bad).is_some(), "{bad}");
    }
}
