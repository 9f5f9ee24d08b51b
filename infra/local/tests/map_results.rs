//! Static checks of the batch Map's results (issue 13, item 14). A Distributed Map gathers every
//! child's output into its own result, and `ResultPath: null` does not discard it (aws-cdk issue
//! 24799): past 256 KiB (about 14,000 chunks) the execution fails with States.DataLimitExceeded,
//! which nothing can catch. No local test can show that: moto 5.2.5 keeps the results in memory
//! with no size limit. So these checks hold the definition and the template to the fix:
//! - every Distributed Map has a `ResultWriter` that puts the results into the batch bucket
//!   (`${BatchBucket}`, a definition substitution) under `map-results/`;
//! - the batch state machine's role may write there, with the actions AWS documents for
//!   ResultWriter, and only under `map-results/`.
//!
//! Bucket and Prefix are literal, not paths into the state input (`$.bucket`): moto 5.2.5
//! evaluates ResultWriter's Parameters against the Map's collected results
//! (`[{"status": "done"}, …]`), so a path fails the execution with States.Runtime ("The JSONPath
//! '$.bucket' could not be found in the input"). Literal, the same definition runs on AWS and on
//! moto, which parses ResultWriter and writes a results manifest (`map-results/<Map Run
//! id>/manifest.json`, with empty `ResultFiles`); the end-to-end batch tests run it.

use local_stack::template::Template;
use serde_json::Value;
use std::path::Path;

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every Distributed Map of a definition, nested ones included, as (name, state).
fn distributed_maps(definition: &Value) -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for (name, state) in definition["States"].as_object().into_iter().flatten() {
        if state["Type"] == "Map"
            && state["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
        {
            found.push((name.clone(), state.clone()));
        }
        for nested in ["ItemProcessor", "Iterator"] {
            found.extend(distributed_maps(&state[nested]));
        }
        for branch in state["Branches"].as_array().into_iter().flatten() {
            found.extend(distributed_maps(branch));
        }
    }
    found
}

fn problems(definition: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, map) in distributed_maps(definition) {
        let writer = &map["ResultWriter"];
        if writer.is_null() {
            problems.push(format!(
                "{name}: a Distributed Map without ResultWriter keeps every child's output"
            ));
            continue;
        }
        if writer["Resource"] != "arn:${Partition}:states:::s3:putObject" {
            problems.push(format!("{name}: ResultWriter must use s3:putObject"));
        }
        let parameters = &writer["Parameters"];
        if parameters["Bucket"] != "${BatchBucket}" {
            problems.push(format!(
                "{name}: ResultWriter must write to the batch bucket, literally"
            ));
        }
        if parameters["Prefix"] != "map-results" {
            problems.push(format!(
                "{name}: ResultWriter must write under map-results, literally"
            ));
        }
    }
    problems
}

#[test]
fn the_batch_map_writes_its_results_to_s3() {
    let text = std::fs::read_to_string(root().join("infra/batch.asl.json")).unwrap();
    let definition: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(distributed_maps(&definition).len(), 1, "the Chunks map");
    let problems = problems(&definition);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn the_check_catches_a_map_without_result_writer() {
    let definition = serde_json::json!({"States": {
        "M": {"Type": "Map", "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED"},
              "States": {"Inner": {"Type": "Map", "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED"}},
                  "ResultWriter": {"Resource": "arn:${Partition}:states:::s3:putObject",
                                   "Parameters": {"Bucket.$": "$.bucket", "Prefix": "map-results"}}}}},
              "ResultPath": null},
        "Inline": {"Type": "Map", "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}}}
    }});
    let problems = problems(&definition);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("M: a Distributed Map without"));
    assert!(problems[1].starts_with("Inner: ResultWriter must write to the batch bucket"));
}

/// The role may put, read back and clean up multipart uploads of the results (the actions AWS
/// documents for ResultWriter), under the map-results prefix of the batch bucket only, and the
/// definition is given that bucket.
#[test]
fn the_batch_state_machine_may_write_its_map_results() {
    let template = Template::load(&root().join("template.yaml")).expect("template loads");
    let machine = template
        .resources()
        .iter()
        .find(|r| r.logical_id == "BatchStateMachine")
        .expect("BatchStateMachine");
    let substitution = machine
        .property_path(&["DefinitionSubstitutions", "BatchBucket"])
        .map(|v| serde_yaml::to_string(v).unwrap());
    assert!(
        substitution
            .as_deref()
            .is_some_and(|s| s.contains("BatchBucket")),
        "the definition's ${{BatchBucket}} is not substituted: {substitution:?}"
    );
    let policies = machine.property("Policies").expect("policies");
    let policies: Value = serde_json::to_value(policies).unwrap();
    let statement = policies
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["Statement"].as_array().cloned().unwrap_or_default())
        .find(|s| s["Sid"] == "WriteMapResults")
        .expect("a WriteMapResults statement");
    let actions: Vec<&str> = statement["Action"]
        .as_array()
        .expect("a list of actions")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for wanted in [
        "s3:PutObject",
        "s3:GetObject",
        "s3:ListMultipartUploadParts",
        "s3:AbortMultipartUpload",
    ] {
        assert!(actions.contains(&wanted), "{wanted} missing: {actions:?}");
    }
    let resource = statement["Resource"].to_string();
    assert!(
        resource.contains("s3:::${BatchBucket}/map-results/*"),
        "{resource}"
    );
}
