//! `State`: the scope intrinsics resolve in (parameters, pseudo parameters, created resources,
//! placeholders for skipped and SAM-implicit resources), and the creation order.

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, bail, Context, Result};
use serde_yaml::{Mapping, Value};

use super::{ACCOUNT_ID, CREATED_TYPES, SAM_FUNCTION, SAM_STATE_MACHINE};
use crate::intrinsics::{self, resolve, resolve_bool, scalar_string, Scope};
use crate::template::{Resource, Template};

pub(super) struct State<'t> {
    pub(super) template: &'t Template,
    pub(super) stack: String,
    pub(super) region: String,
    /// Parameters, pseudo parameters and created resources.
    refs: HashMap<String, String>,
    pub(super) attributes: HashMap<String, String>,
    conditions: HashMap<String, bool>,
    /// Resources that are not created here (skipped types, functions, false conditions):
    /// logical id → type. Their Ref/GetAtt are placeholders.
    placeholders: HashMap<String, String>,
}

impl<'t> State<'t> {
    pub(super) fn new(template: &'t Template, stack: &str, region: &str) -> Result<Self> {
        let mut refs = HashMap::new();
        for (k, v) in [
            ("AWS::StackName", stack.to_string()),
            ("AWS::StackId", stack_id(stack, region)),
            ("AWS::Region", region.to_string()),
            ("AWS::AccountId", ACCOUNT_ID.to_string()),
            ("AWS::Partition", "aws".to_string()),
            ("AWS::URLSuffix", "amazonaws.com".to_string()),
            ("AWS::NotificationARNs", String::new()),
        ] {
            refs.insert(k.to_string(), v);
        }
        for p in template.parameters() {
            match &p.default {
                Some(d) => {
                    refs.insert(p.name.clone(), d.clone());
                }
                None => tracing::warn!("parameter {} has no Default; Ref to it will fail", p.name),
            }
        }
        let mut state = State {
            template,
            stack: stack.to_string(),
            region: region.to_string(),
            refs,
            attributes: HashMap::new(),
            conditions: HashMap::new(),
            placeholders: HashMap::new(),
        };
        state.evaluate_conditions()?;
        for r in template.resources() {
            if !CREATED_TYPES.contains(&r.kind.as_str()) || !state.enabled(r) {
                if r.kind != SAM_FUNCTION {
                    tracing::debug!(
                        "skipping {} ({}): not created locally",
                        r.logical_id,
                        r.kind
                    );
                }
                state
                    .placeholders
                    .insert(r.logical_id.clone(), r.kind.clone());
            }
        }
        Ok(state)
    }

    /// Evaluates `Conditions` until no more can be (they may refer to each other).
    fn evaluate_conditions(&mut self) -> Result<()> {
        let mut pending: Vec<&(String, Value)> = self.template.conditions().iter().collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            let mut last_err = None;
            for entry in &pending {
                match resolve_bool(&entry.1, self) {
                    Ok(v) => {
                        self.conditions.insert(entry.0.clone(), v);
                    }
                    Err(e) => {
                        last_err = Some(e.context(format!("condition {}", entry.0)));
                        still.push(*entry);
                    }
                }
            }
            if still.len() == pending.len() {
                return Err(last_err.unwrap_or_else(|| anyhow!("conditions do not resolve")));
            }
            pending = still;
        }
        Ok(())
    }

    pub(super) fn enabled(&self, r: &Resource) -> bool {
        r.condition
            .as_ref()
            .is_none_or(|c| self.conditions.get(c).copied().unwrap_or(true))
    }

    pub(super) fn all_refs(&self) -> HashMap<String, String> {
        let mut refs = self.refs.clone();
        for id in self.placeholders.keys() {
            if let Some(v) = self.reference(id) {
                refs.insert(id.clone(), v);
            }
        }
        refs
    }

    pub(super) fn set_ref(&mut self, id: &str, value: impl Into<String>) {
        self.refs.insert(id.to_string(), value.into());
    }

    pub(super) fn set_attr(&mut self, id: &str, attr: &str, value: impl Into<String>) {
        self.attributes.insert(format!("{id}.{attr}"), value.into());
    }

    pub(super) fn generated_name(&self, id: &str) -> String {
        format!("{}-{}", self.stack, id)
    }

    /// The name a skipped resource would have: its name property when that is a plain string.
    fn placeholder_name(&self, id: &str, kind: &str) -> String {
        let key = match kind {
            SAM_FUNCTION | "AWS::Lambda::Function" => "FunctionName",
            "AWS::IAM::Role" => "RoleName",
            "AWS::SNS::Topic" => "TopicName",
            "AWS::Cognito::UserPool" => "UserPoolName",
            _ => "Name",
        };
        self.template
            .resource(id)
            .and_then(|r| r.property(key))
            .and_then(|v| resolve(v, self).ok().flatten())
            .and_then(|v| scalar_string(&v))
            .unwrap_or_else(|| self.generated_name(id))
    }

    fn placeholder_ref(&self, id: &str, kind: &str) -> String {
        let (region, acct) = (&self.region, ACCOUNT_ID);
        match kind {
            SAM_FUNCTION
            | "AWS::Lambda::Function"
            | "AWS::IAM::Role"
            | "AWS::Logs::LogGroup"
            | "AWS::Scheduler::ScheduleGroup" => self.placeholder_name(id, kind),
            "AWS::SNS::Topic" => {
                format!(
                    "arn:aws:sns:{region}:{acct}:{}",
                    self.placeholder_name(id, kind)
                )
            }
            "AWS::Cognito::UserPool" => format!("{region}_{id}"),
            "AWS::IAM::ManagedPolicy" => {
                format!("arn:aws:iam::{acct}:policy/{}", self.generated_name(id))
            }
            "AWS::Serverless::Api" | "AWS::Serverless::HttpApi" | "AWS::ApiGateway::RestApi" => {
                id.to_lowercase()
            }
            _ => id.to_string(),
        }
    }

    fn placeholder_attribute(&self, id: &str, kind: &str, attr: &str) -> String {
        let (region, acct) = (&self.region, ACCOUNT_ID);
        let name = self.placeholder_name(id, kind);
        let reference = self.placeholder_ref(id, kind);
        match (kind, attr) {
            (SAM_FUNCTION | "AWS::Lambda::Function", "Arn") => {
                format!("arn:aws:lambda:{region}:{acct}:function:{name}")
            }
            ("AWS::IAM::Role", "Arn") => format!("arn:aws:iam::{acct}:role/{name}"),
            ("AWS::IAM::Role", "RoleId") => format!("AROA{}", id.to_uppercase()),
            ("AWS::SNS::Topic", "TopicArn") => reference,
            ("AWS::SNS::Topic", "TopicName") => name,
            ("AWS::Cognito::UserPool", "Arn") => {
                format!("arn:aws:cognito-idp:{region}:{acct}:userpool/{reference}")
            }
            ("AWS::Cognito::UserPool", "ProviderURL") => {
                format!("https://cognito-idp.{region}.amazonaws.com/{reference}")
            }
            ("AWS::Cognito::UserPool", "ProviderName") => {
                format!("cognito-idp.{region}.amazonaws.com/{reference}")
            }
            ("AWS::Cognito::UserPool", "UserPoolId") => reference,
            (_, "Arn") => {
                let service = kind.split("::").nth(1).unwrap_or("local").to_lowercase();
                format!("arn:aws:{service}:{region}:{acct}:{id}")
            }
            (_, a) if a.ends_with("Arn") => {
                let service = kind.split("::").nth(1).unwrap_or("local").to_lowercase();
                format!("arn:aws:{service}:{region}:{acct}:{id}/{a}")
            }
            (_, a) if a.ends_with("Name") || a.ends_with("Id") => reference,
            _ => format!("{id}.{attr}"),
        }
    }

    /// Resolves the `Properties` of a resource.
    pub(super) fn properties(&self, r: &Resource) -> Result<Value> {
        Ok(resolve(&r.properties, self)
            .with_context(|| format!("resolving the properties of {}", r.logical_id))?
            .unwrap_or_else(|| Value::Mapping(Mapping::new())))
    }
}

impl State<'_> {
    /// The type of a resource SAM generates implicitly (`ServerlessRestApi`, `<Function>Role`,
    /// `<StateMachine>Role`, `<Api>.Stage`, `<Api>Deployment`), so references to them resolve.
    fn implicit_kind(&self, name: &str) -> Option<&'static str> {
        let kind_of = |id: &str| self.template.resource(id).map(|r| r.kind.as_str());
        match name {
            "ServerlessRestApi" => return Some("AWS::Serverless::Api"),
            "ServerlessHttpApi" => return Some("AWS::Serverless::HttpApi"),
            _ => {}
        }
        if let Some(base) = name.strip_suffix("Role") {
            if matches!(kind_of(base), Some(SAM_FUNCTION | SAM_STATE_MACHINE)) {
                return Some("AWS::IAM::Role");
            }
        }
        let is_api = |id: &str| {
            matches!(
                kind_of(id),
                Some("AWS::Serverless::Api" | "AWS::Serverless::HttpApi")
            ) || id == "ServerlessRestApi"
                || id == "ServerlessHttpApi"
        };
        if name
            .strip_suffix(".Stage")
            .or_else(|| name.strip_suffix("Stage"))
            .is_some_and(is_api)
        {
            return Some("AWS::ApiGateway::Stage");
        }
        if name
            .strip_suffix(".Deployment")
            .or_else(|| name.strip_suffix("Deployment"))
            .is_some_and(is_api)
        {
            return Some("AWS::ApiGateway::Deployment");
        }
        None
    }

    fn implicit_ref(&self, name: &str, kind: &str) -> String {
        if kind == "AWS::ApiGateway::Stage" {
            let api = name
                .strip_suffix(".Stage")
                .or_else(|| name.strip_suffix("Stage"))
                .unwrap_or(name);
            return self
                .template
                .resource(api)
                .and_then(|r| r.property("StageName"))
                .and_then(|v| resolve(v, self).ok().flatten())
                .and_then(|v| scalar_string(&v))
                .unwrap_or_else(|| "Prod".to_string());
        }
        self.placeholder_ref(name, kind)
    }
}

impl Scope for State<'_> {
    fn reference(&self, name: &str) -> Option<String> {
        if let Some(v) = self.refs.get(name) {
            return Some(v.clone());
        }
        if let Some(kind) = self.placeholders.get(name) {
            return Some(self.placeholder_ref(name, kind));
        }
        let kind = self.implicit_kind(name)?;
        Some(self.implicit_ref(name, kind))
    }

    fn attribute(&self, logical_id: &str, attribute: &str) -> Option<String> {
        if let Some(v) = self.attributes.get(&format!("{logical_id}.{attribute}")) {
            return Some(v.clone());
        }
        if let Some(kind) = self.placeholders.get(logical_id) {
            return Some(self.placeholder_attribute(logical_id, kind, attribute));
        }
        let kind = self.implicit_kind(logical_id)?;
        Some(self.placeholder_attribute(logical_id, kind, attribute))
    }

    fn condition(&self, name: &str) -> Option<bool> {
        self.conditions.get(name).copied()
    }

    fn mappings(&self) -> Option<&Mapping> {
        Some(self.template.mappings())
    }
}

/// The created resources, dependencies first (declaration order otherwise).
pub(super) fn creation_order<'t>(
    template: &'t Template,
    state: &State<'_>,
) -> Result<Vec<&'t Resource>> {
    let created: Vec<&Resource> = template
        .resources()
        .iter()
        .filter(|r| CREATED_TYPES.contains(&r.kind.as_str()) && state.enabled(r))
        .collect();
    let ids: HashSet<&str> = created.iter().map(|r| r.logical_id.as_str()).collect();
    let deps: HashMap<&str, Vec<String>> = created
        .iter()
        .map(|r| {
            let mut d: Vec<String> = intrinsics::references(&r.properties)
                .into_iter()
                .chain(r.depends_on.iter().cloned())
                .filter(|id| ids.contains(id.as_str()) && *id != r.logical_id)
                .collect();
            d.dedup();
            (r.logical_id.as_str(), d)
        })
        .collect();

    let mut done: HashSet<&str> = HashSet::new();
    let mut order = Vec::with_capacity(created.len());
    while order.len() < created.len() {
        let next = created.iter().find(|r| {
            !done.contains(r.logical_id.as_str())
                && deps[r.logical_id.as_str()]
                    .iter()
                    .all(|d| done.contains(d.as_str()))
        });
        match next {
            Some(r) => {
                done.insert(r.logical_id.as_str());
                order.push(*r);
            }
            None => {
                let stuck: Vec<&str> = created
                    .iter()
                    .map(|r| r.logical_id.as_str())
                    .filter(|id| !done.contains(id))
                    .collect();
                bail!("circular dependency between {}", stuck.join(", "));
            }
        }
    }
    Ok(order)
}

/// The stack's id as CloudFormation forms it, `…:stack/<name>/<uuid>`. Names built from it
/// (the batch bucket's) must differ between stacks as they do on AWS, and stay the same when the
/// same stack is provisioned again, so the uuid is a hash of the Region and the stack name.
pub(super) fn stack_id(stack: &str, region: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(format!("{region}/{stack}"));
    let hex: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    format!("arn:aws:cloudformation:{region}:{ACCOUNT_ID}:stack/{stack}/{uuid}")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::template::Template;

    #[test]
    fn stack_ids_are_stable_and_differ_by_stack_and_region() {
        let id = stack_id("Taskflow-Dev", "eu-west-1");
        assert_eq!(id, stack_id("Taskflow-Dev", "eu-west-1"));
        assert_ne!(id, stack_id("Taskflow-Dev", "us-east-1"));
        assert_ne!(id, stack_id("taskflow-dev", "eu-west-1"));
        let uuid = id.rsplit('/').next().unwrap();
        let groups: Vec<usize> = uuid.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{uuid}");
        assert!(uuid
            .chars()
            .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn creation_order_puts_dependencies_first() {
        let t = Template::parse(
            r#"
Resources:
  Bucket:
    Type: AWS::S3::Bucket
    Properties:
      NotificationConfiguration:
        QueueConfigurations: [{Event: "s3:ObjectCreated:*", Queue: !GetAtt Q.Arn}]
  Q:
    Type: AWS::SQS::Queue
    Properties:
      RedrivePolicy: {deadLetterTargetArn: !GetAtt Dlq.Arn, maxReceiveCount: 3}
  Fn:
    Type: AWS::Serverless::Function
  Dlq:
    Type: AWS::SQS::Queue
    DependsOn: Fn
"#,
            Path::new("."),
        )
        .unwrap();
        let state = State::new(&t, "s", "us-east-1").unwrap();
        let order: Vec<&str> = creation_order(&t, &state)
            .unwrap()
            .iter()
            .map(|r| r.logical_id.as_str())
            .collect();
        assert_eq!(order, vec!["Dlq", "Q", "Bucket"]);
        // SAM's implicit resources resolve too.
        assert_eq!(state.reference("FnRole").as_deref(), Some("s-FnRole"));
        assert_eq!(
            state.attribute("FnRole", "Arn").as_deref(),
            Some("arn:aws:iam::123456789012:role/s-FnRole")
        );
        assert_eq!(state.reference("QRole"), None);
        assert_eq!(state.reference("Nope"), None);
        // Skipped resources resolve to placeholders.
        assert_eq!(state.reference("Fn").as_deref(), Some("s-Fn"));
        assert_eq!(
            state.attribute("Fn", "Arn").as_deref(),
            Some("arn:aws:lambda:us-east-1:123456789012:function:s-Fn")
        );
    }
}
