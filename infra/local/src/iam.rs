//! Each function's own credentials on the emulator, holding that function's policies from
//! template.yaml, so that every AWS call a function process makes is checked as on AWS.
//!
//! On AWS a function runs as its execution role. Locally each function gets an IAM user
//! `<stack>-<LogicalId>` with one inline policy per entry of its `Policies`: SAM policy
//! templates expanded from the SAM translator's own `policy_templates.json` (in the project
//! venv), inline statements as written, intrinsics resolved against the provisioned stack.
//! The emulator (see `moto_launcher.py`) checks the signature and the action of every request
//! signed with such a user's key.
//!
//! What moto 5.2.5 checks, measured: the action always; the resource only for S3 and SQS. It
//! evaluates DynamoDB, Step Functions, EventBridge and EventBridge Scheduler requests against the
//! resource `*`, so a statement
//! scoped to an ARN there would never match. The local copy of a policy therefore widens
//! statements on those services to `*`: the action is still checked, the ARN is not (the
//! least-privilege test in `infra/local/tests/iam.rs` checks the template's ARNs instead).
//! Not modelled: the policies SAM attaches by itself (CloudWatch Logs, the SQS poller of an
//! event source mapping; the local host polls), and Step Functions' own calls, which run as
//! the account root locally instead of as the state machine's role.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value as Json};
use serde_yaml::Value;

use crate::intrinsics::{as_intrinsic, resolve, Scope};
use crate::template::Resource;

/// Services whose requests moto evaluates against the resource `*`.
const ACTION_ONLY_SERVICES: [&str; 4] = ["dynamodb", "states", "events", "scheduler"];

/// The SAM translator's policy templates (`DynamoDBCrudPolicy`, `S3ReadPolicy`, ...).
#[derive(Debug, Clone)]
pub struct PolicyTemplates {
    templates: serde_json::Map<String, Json>,
}

impl PolicyTemplates {
    /// `policy_templates.json` of the samtranslator package installed in `venv`.
    pub fn from_venv(venv: &Path) -> Result<PolicyTemplates> {
        let lib = venv.join("lib");
        let entries = std::fs::read_dir(&lib)
            .with_context(|| format!("reading {} (run `make venv`)", lib.display()))?;
        let path = entries
            .filter_map(|e| e.ok())
            .map(|e| {
                e.path()
                    .join("site-packages/samtranslator/policy_templates_data/policy_templates.json")
            })
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow!(
                    "no samtranslator policy templates under {} (aws-sam-cli is installed by `make venv`)",
                    lib.display()
                )
            })?;
        Self::load(&path)
    }

    pub fn load(path: &Path) -> Result<PolicyTemplates> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<PolicyTemplates> {
        let document: Json = serde_json::from_str(text)?;
        let templates = document
            .get("Templates")
            .and_then(Json::as_object)
            .cloned()
            .ok_or_else(|| anyhow!("no Templates object"))?;
        Ok(PolicyTemplates { templates })
    }

    /// The template `name` with its parameters put in, still holding intrinsics.
    fn expand(&self, name: &str, parameters: &Value) -> Result<Value> {
        let template = self
            .templates
            .get(name)
            .ok_or_else(|| anyhow!("unknown SAM policy template {name}"))?;
        let definition: Value = serde_yaml::to_value(&template["Definition"])?;
        let declared: Vec<&String> = template["Parameters"]
            .as_object()
            .map(|p| p.keys().collect())
            .unwrap_or_default();
        for parameter in &declared {
            if parameters.get(parameter.as_str()).is_none() {
                bail!("{name} needs the parameter {parameter}");
            }
        }
        Ok(put_parameters(definition, parameters, &declared))
    }
}

/// Replaces each `{Ref: <Parameter>}` of a policy template with the parameter's value.
fn put_parameters(value: Value, parameters: &Value, declared: &[&String]) -> Value {
    if let Some(("Ref", Value::String(name))) = as_intrinsic(&value) {
        if declared.iter().any(|d| d.as_str() == name) {
            return parameters[name.as_str()].clone();
        }
    }
    match value {
        Value::Sequence(items) => Value::Sequence(
            items
                .into_iter()
                .map(|v| put_parameters(v, parameters, declared))
                .collect(),
        ),
        Value::Mapping(map) => Value::Mapping(
            map.into_iter()
                .map(|(k, v)| (k, put_parameters(v, parameters, declared)))
                .collect(),
        ),
        other => other,
    }
}

/// A function's policies as the emulator evaluates them: one named document per entry of its
/// `Policies`, intrinsics resolved, widened where moto checks the action only.
pub fn function_policies(
    function: &Resource,
    scope: &dyn Scope,
    templates: &PolicyTemplates,
) -> Result<Vec<(String, Json)>> {
    let Some(policies) = function.property("Policies") else {
        return Ok(Vec::new());
    };
    let entries: Vec<&Value> = match policies {
        Value::Sequence(list) => list.iter().collect(),
        one => vec![one],
    };
    let mut documents = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let name = format!("{}Policy{i}", function.logical_id);
        let document = match entry {
            Value::Mapping(m) if m.contains_key("Statement") => entry.clone(),
            Value::Mapping(m) if m.len() == 1 => {
                let (template, parameters) = m.iter().next().expect("one entry");
                let template = template.as_str().unwrap_or_default();
                templates
                    .expand(template, parameters)
                    .with_context(|| format!("{name}: {template}"))?
            }
            Value::String(managed) => bail!(
                "{name}: the managed policy {managed} cannot be modelled locally; use a SAM policy template or statements"
            ),
            other => bail!("{name}: not a policy: {other:?}"),
        };
        let resolved = resolve(&document, scope)
            .with_context(|| format!("resolving {name}"))?
            .ok_or_else(|| anyhow!("{name} resolves to AWS::NoValue"))?;
        let mut json: Json = serde_json::to_value(&resolved)?;
        widen_action_only_services(&mut json);
        if json.get("Version").is_none() {
            json["Version"] = json!("2012-10-17");
        }
        documents.push((name, json));
    }
    Ok(documents)
}

/// Splits each statement by service and puts `*` as the resource of the services moto
/// evaluates against `*` (see the module docs).
fn widen_action_only_services(document: &mut Json) {
    let statements = match document.get_mut("Statement") {
        Some(Json::Array(list)) => std::mem::take(list),
        Some(one) => vec![one.take()],
        None => return,
    };
    let mut out = Vec::new();
    for statement in statements {
        let actions: Vec<String> = match &statement["Action"] {
            Json::String(a) => vec![a.clone()],
            Json::Array(list) => list
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
            _ => {
                out.push(statement);
                continue;
            }
        };
        let (action_only, scoped): (Vec<String>, Vec<String>) = actions
            .into_iter()
            .partition(|a| ACTION_ONLY_SERVICES.contains(&a.split(':').next().unwrap_or_default()));
        if !scoped.is_empty() {
            let mut kept = statement.clone();
            kept["Action"] = json!(scoped);
            out.push(kept);
        }
        if !action_only.is_empty() {
            let mut widened = statement;
            widened["Action"] = json!(action_only);
            widened["Resource"] = json!("*");
            out.push(widened);
        }
    }
    document["Statement"] = Json::Array(out);
}

/// An IAM user's access key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// The IAM user name of a function: `<stack>-<LogicalId>`, within IAM's 64 characters.
pub fn user_name(stack_name: &str, logical_id: &str) -> String {
    let name = format!("{stack_name}-{logical_id}");
    name.chars().take(64).collect()
}

/// Creates (or updates) the user of each function with its policies, and a fresh access key.
/// An earlier key is kept while the user has fewer than two, so that functions another host
/// started on the same emulator keep working; IAM allows two keys per user.
pub async fn create_function_users(
    iam: &aws_sdk_iam::Client,
    stack_name: &str,
    functions: &BTreeMap<String, Vec<(String, Json)>>,
) -> Result<BTreeMap<String, AccessKey>> {
    let mut keys = BTreeMap::new();
    for (logical_id, policies) in functions {
        let user = user_name(stack_name, logical_id);
        match iam.create_user().user_name(&user).send().await {
            Ok(_) => {}
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_entity_already_exists_exception()) => {}
            Err(err) => {
                return Err(iam_error(err)).with_context(|| format!("creating the IAM user {user}"))
            }
        }
        for (name, document) in policies {
            iam.put_user_policy()
                .user_name(&user)
                .policy_name(name)
                .policy_document(document.to_string())
                .send()
                .await
                .map_err(iam_error)
                .with_context(|| format!("putting {name} on {user}"))?;
        }
        let existing = iam
            .list_access_keys()
            .user_name(&user)
            .send()
            .await
            .map_err(iam_error)
            .with_context(|| format!("listing the keys of {user}"))?;
        let mut existing = existing.access_key_metadata;
        existing.sort_by_key(|k| k.create_date);
        if existing.len() >= 2 {
            if let Some(oldest) = existing[0].access_key_id() {
                iam.delete_access_key()
                    .user_name(&user)
                    .access_key_id(oldest)
                    .send()
                    .await
                    .map_err(iam_error)
                    .with_context(|| format!("deleting an old key of {user}"))?;
            }
        }
        let created = iam
            .create_access_key()
            .user_name(&user)
            .send()
            .await
            .map_err(iam_error)
            .with_context(|| format!("creating a key for {user}"))?;
        let key = created
            .access_key
            .ok_or_else(|| anyhow!("CreateAccessKey for {user} returned no key"))?;
        keys.insert(
            logical_id.clone(),
            AccessKey {
                access_key_id: key.access_key_id,
                secret_access_key: key.secret_access_key,
            },
        );
    }
    Ok(keys)
}

/// An IAM SDK error with the service's code and message.
fn iam_error<E: std::error::Error + Send + Sync + 'static>(
    err: aws_sdk_iam::error::SdkError<E>,
) -> anyhow::Error {
    anyhow!(aws_sdk_iam::error::DisplayErrorContext(err).to_string())
}

/// The project venv's policy templates: `MOTO_VENV`, else `<repo>/.venv`.
pub fn venv_for(repo_root: &Path, moto_venv: Option<&Path>) -> PathBuf {
    moto_venv
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("MOTO_VENV").map(PathBuf::from))
        .unwrap_or_else(|| repo_root.join(".venv"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intrinsics::MapScope;

    fn templates() -> PolicyTemplates {
        PolicyTemplates::parse(
            r#"{"Templates": {"S3ReadPolicy": {"Parameters": {"BucketName": {}},
              "Definition": {"Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"],
                "Resource": [{"Fn::Sub": ["arn:${AWS::Partition}:s3:::${bucketName}/*",
                  {"bucketName": {"Ref": "BucketName"}}]}]}]}}}}"#,
        )
        .unwrap()
    }

    fn scope() -> MapScope {
        let mut scope = MapScope::default();
        scope.refs.insert("AWS::Partition".into(), "aws".into());
        scope.refs.insert("Bucket".into(), "my-bucket".into());
        scope.refs.insert("Table".into(), "my-table".into());
        scope
            .attributes
            .insert("Queue.Arn".into(), "arn:aws:sqs:us-east-1:1:q".into());
        scope
    }

    fn function(yaml: &str) -> Resource {
        let template = crate::template::Template::parse(
            &format!(
                "Resources:\n  Fn:\n    Type: AWS::Serverless::Function\n    Properties:\n{yaml}"
            ),
            Path::new("."),
        )
        .unwrap();
        template.resource("Fn").unwrap().clone()
    }

    #[test]
    fn sam_templates_expand_with_their_parameters_resolved() {
        let f = function(
            "      Policies:\n        - S3ReadPolicy:\n            BucketName: !Ref Bucket\n",
        );
        let policies = function_policies(&f, &scope(), &templates()).unwrap();
        assert_eq!(policies.len(), 1);
        assert_eq!(policies[0].0, "FnPolicy0");
        assert_eq!(
            policies[0].1["Statement"][0]["Resource"],
            json!(["arn:aws:s3:::my-bucket/*"])
        );
        assert_eq!(policies[0].1["Version"], json!("2012-10-17"));
    }

    #[test]
    fn a_template_without_its_parameter_or_unknown_is_an_error() {
        let missing = function("      Policies:\n        - S3ReadPolicy: {}\n");
        let err = function_policies(&missing, &scope(), &templates()).unwrap_err();
        assert!(
            format!("{err:#}").contains("needs the parameter BucketName"),
            "{err:#}"
        );
        let unknown = function("      Policies:\n        - NoSuchPolicy: {}\n");
        let err = function_policies(&unknown, &scope(), &templates()).unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown SAM policy template NoSuchPolicy"),
            "{err:#}"
        );
    }

    #[test]
    fn dynamodb_and_states_are_widened_and_the_rest_keeps_its_resources() {
        let f = function(
            "      Policies:\n        - Statement:\n            - Effect: Allow\n              Action: [sqs:SendMessage, dynamodb:PutItem, states:StartExecution]\n              Resource: !GetAtt Queue.Arn\n",
        );
        let policies = function_policies(&f, &scope(), &templates()).unwrap();
        let statements = policies[0].1["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 2, "{statements:?}");
        assert_eq!(statements[0]["Action"], json!(["sqs:SendMessage"]));
        assert_eq!(
            statements[0]["Resource"],
            json!("arn:aws:sqs:us-east-1:1:q")
        );
        assert_eq!(
            statements[1]["Action"],
            json!(["dynamodb:PutItem", "states:StartExecution"])
        );
        assert_eq!(statements[1]["Resource"], json!("*"));
    }

    #[test]
    fn user_names_fit_iam() {
        assert_eq!(user_name("dev", "ApiFunction"), "dev-ApiFunction");
        assert_eq!(user_name(&"s".repeat(70), "ApiFunction").len(), 64);
    }

    #[test]
    fn the_venv_policy_templates_hold_what_the_template_uses() {
        let venv = venv_for(&crate::stack::StackOptions::repo_root(), None);
        let Ok(templates) = PolicyTemplates::from_venv(&venv) else {
            panic!(
                "no policy templates in {} (run `make venv`)",
                venv.display()
            );
        };
        for name in ["DynamoDBCrudPolicy", "S3CrudPolicy", "S3ReadPolicy"] {
            assert!(templates.templates.contains_key(name), "{name}");
        }
    }
}
