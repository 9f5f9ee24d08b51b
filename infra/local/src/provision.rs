//! Creates every resource `template.yaml` declares on the emulator, and describes how each
//! function is wired (environment, timeout, events) for the in-process host.
//!
//! Created: `AWS::DynamoDB::Table`, `AWS::SQS::Queue`, `AWS::S3::Bucket`,
//! `AWS::Serverless::StateMachine` and `AWS::StepFunctions::StateMachine`, in dependency order.
//! `AWS::Serverless::Function` becomes a [`FunctionSpec`]. Every other type (Cognito, APIs,
//! IAM, CloudWatch, ...) is skipped; its `Ref`/`GetAtt` resolve to plausible placeholders.
//! Provisioning is idempotent: existing resources are kept and brought in line with the template
//! where the emulator allows it (queue attributes, missing GSIs, TTL, notifications, definitions).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_yaml::{Mapping, Value};

use crate::intrinsics::{self, as_intrinsic, resolve, resolve_bool, scalar_string, Scope};
use crate::template::{lookup, Resource, Template};

/// The account id moto uses by default (and the one placeholder ARNs carry).
pub const ACCOUNT_ID: &str = "123456789012";

const TABLE: &str = "AWS::DynamoDB::Table";
const QUEUE: &str = "AWS::SQS::Queue";
const BUCKET: &str = "AWS::S3::Bucket";
const SAM_STATE_MACHINE: &str = "AWS::Serverless::StateMachine";
const SFN_STATE_MACHINE: &str = "AWS::StepFunctions::StateMachine";
const SAM_FUNCTION: &str = "AWS::Serverless::Function";
const CREATED_TYPES: [&str; 5] = [TABLE, QUEUE, BUCKET, SAM_STATE_MACHINE, SFN_STATE_MACHINE];

/// What [`provision`] made, and how the functions are wired.
#[derive(Debug, Clone, Default)]
pub struct ProvisionedStack {
    pub stack_name: String,
    /// Ref value per logical id (table name, queue URL, bucket name, state machine ARN,
    /// parameter values, pseudo parameters, placeholders for skipped resources).
    pub refs: HashMap<String, String>,
    /// GetAtt values of the created resources, keyed `"LogicalId.Attribute"`
    /// (e.g. `"TierQueue.Arn"`, `"TasksTable.Arn"`, `"Chain.Name"`).
    pub attributes: HashMap<String, String>,
    /// Keyed by logical id.
    pub functions: BTreeMap<String, FunctionSpec>,
}

impl ProvisionedStack {
    pub fn function(&self, logical_id: &str) -> Option<&FunctionSpec> {
        self.functions.get(logical_id)
    }

    /// The Ref value of a logical id or parameter.
    pub fn ref_value(&self, logical_id: &str) -> Option<&str> {
        self.refs.get(logical_id).map(String::as_str)
    }

    /// The GetAtt value of a created resource.
    pub fn attribute(&self, logical_id: &str, attribute: &str) -> Option<&str> {
        self.attributes
            .get(&format!("{logical_id}.{attribute}"))
            .map(String::as_str)
    }
}

/// One `AWS::Serverless::Function`.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub logical_id: String,
    /// `CodeUri` when it is a plain path (e.g. `functions/api`).
    pub code_uri: Option<String>,
    /// Globals.Function.Environment.Variables merged with the function's own, intrinsics resolved.
    pub environment: HashMap<String, String>,
    /// The function's `Timeout`, else `Globals.Function.Timeout`, else 3.
    pub timeout_seconds: u64,
    /// The function's `MemorySize` in MB, else `Globals.Function.MemorySize`, else 128.
    pub memory_mb: u64,
    /// Enabled events, in template order.
    pub events: Vec<FunctionEvent>,
}

/// One event source of a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunctionEvent {
    /// `Api` (and `HttpApi`) events.
    Api {
        name: String,
        path: String,
        /// Upper case; `ANY` allowed.
        method: String,
        /// False when `Auth.Authorizer: NONE` or when the API has no default authorizer.
        requires_auth: bool,
    },
    /// `SQS` events (an event source mapping).
    Sqs {
        name: String,
        queue_url: String,
        queue_arn: String,
        /// Default 10.
        batch_size: u32,
        /// Default 0.
        max_batching_window_seconds: u32,
        /// `ScalingConfig.MaximumConcurrency`.
        maximum_concurrency: Option<u32>,
        /// `FunctionResponseTypes` contains `ReportBatchItemFailures`.
        report_batch_item_failures: bool,
    },
    /// `Schedule` (and `ScheduleV2`) events.
    Schedule {
        name: String,
        /// e.g. `rate(1 minute)` or `cron(...)`.
        expression: String,
        /// Parsed from `rate(...)`; `None` for `cron(...)`.
        period: Option<Duration>,
    },
}

/// Creates every resource of `template` on the endpoint `sdk` points at (idempotently) and
/// returns the Ref values and function wiring.
pub async fn provision(
    template: &Template,
    sdk: &aws_config::SdkConfig,
    stack_name: &str,
) -> Result<ProvisionedStack> {
    let region = sdk
        .region()
        .map(|r| r.as_ref().to_string())
        .unwrap_or_else(|| "us-east-1".to_string());
    let mut p = Provisioner {
        state: State::new(template, stack_name, &region)?,
        dynamodb: aws_sdk_dynamodb::Client::new(sdk),
        sqs: aws_sdk_sqs::Client::new(sdk),
        s3: aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(sdk)
                .force_path_style(true)
                .build(),
        ),
        sfn: aws_sdk_sfn::Client::new(sdk),
        queue_urls_by_arn: HashMap::new(),
    };

    let order = creation_order(template, &p.state)?;
    let order_len = order.len();
    tracing::info!(
        stack = stack_name,
        resources = order.len(),
        "provisioning {} resources from {}",
        order.len(),
        template.path().display()
    );
    for resource in order {
        p.create(resource)
            .await
            .with_context(|| format!("provisioning {} ({})", resource.logical_id, resource.kind))?;
    }

    let mut functions = BTreeMap::new();
    for resource in template.resources_of_type(SAM_FUNCTION) {
        if !p.state.enabled(resource) {
            continue;
        }
        let spec = p
            .function_spec(resource)
            .await
            .with_context(|| format!("reading function {}", resource.logical_id))?;
        functions.insert(resource.logical_id.clone(), spec);
    }

    tracing::info!(
        stack = stack_name,
        "stack ready: {} resources, {} functions",
        order_len,
        functions.len()
    );
    Ok(ProvisionedStack {
        stack_name: stack_name.to_string(),
        refs: p.state.all_refs(),
        attributes: p.state.attributes,
        functions,
    })
}

/// `rate(N unit)` as a duration (`minute(s)`, `hour(s)`, `day(s)`; `second(s)` too, for local
/// use). `None` for `cron(...)` and anything unparsable.
pub fn parse_rate(expression: &str) -> Option<Duration> {
    let inner = expression.trim().strip_prefix("rate(")?.strip_suffix(')')?;
    let mut parts = inner.split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    let unit = parts.next()?;
    if parts.next().is_some() || n == 0 {
        return None;
    }
    let secs = match unit.trim_end_matches('s') {
        "second" => 1,
        "minute" => 60,
        "hour" => 3600,
        "day" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(n * secs))
}

// ---------------------------------------------------------------------------------------------
// Resolution state

struct State<'t> {
    template: &'t Template,
    stack: String,
    region: String,
    /// Parameters, pseudo parameters and created resources.
    refs: HashMap<String, String>,
    attributes: HashMap<String, String>,
    conditions: HashMap<String, bool>,
    /// Resources that are not created here (skipped types, functions, false conditions):
    /// logical id → type. Their Ref/GetAtt are placeholders.
    placeholders: HashMap<String, String>,
}

impl<'t> State<'t> {
    fn new(template: &'t Template, stack: &str, region: &str) -> Result<Self> {
        let mut refs = HashMap::new();
        for (k, v) in [
            ("AWS::StackName", stack.to_string()),
            (
                "AWS::StackId",
                format!("arn:aws:cloudformation:{region}:{ACCOUNT_ID}:stack/{stack}/local"),
            ),
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

    fn enabled(&self, r: &Resource) -> bool {
        r.condition
            .as_ref()
            .is_none_or(|c| self.conditions.get(c).copied().unwrap_or(true))
    }

    fn all_refs(&self) -> HashMap<String, String> {
        let mut refs = self.refs.clone();
        for id in self.placeholders.keys() {
            if let Some(v) = self.reference(id) {
                refs.insert(id.clone(), v);
            }
        }
        refs
    }

    fn set_ref(&mut self, id: &str, value: impl Into<String>) {
        self.refs.insert(id.to_string(), value.into());
    }

    fn set_attr(&mut self, id: &str, attr: &str, value: impl Into<String>) {
        self.attributes.insert(format!("{id}.{attr}"), value.into());
    }

    fn generated_name(&self, id: &str) -> String {
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
            SAM_FUNCTION | "AWS::Lambda::Function" | "AWS::IAM::Role" | "AWS::Logs::LogGroup" => {
                self.placeholder_name(id, kind)
            }
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
    fn properties(&self, r: &Resource) -> Result<Value> {
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
fn creation_order<'t>(template: &'t Template, state: &State<'_>) -> Result<Vec<&'t Resource>> {
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

// ---------------------------------------------------------------------------------------------
// Creation

struct Provisioner<'t> {
    state: State<'t>,
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    s3: aws_sdk_s3::Client,
    sfn: aws_sdk_sfn::Client,
    queue_urls_by_arn: HashMap<String, String>,
}

/// An SDK error with its full context (the plain Display is only "service error").
fn sdk_err<E: std::error::Error>(e: E) -> anyhow::Error {
    anyhow!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(e))
}

fn opt_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(scalar_string)
}

fn req_str(v: &Value, key: &str) -> Result<String> {
    opt_str(v, key).ok_or_else(|| anyhow!("missing {key}"))
}

fn opt_u64(v: &Value, key: &str) -> Result<Option<u64>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => {
            let s = scalar_string(x).ok_or_else(|| anyhow!("{key} must be a number"))?;
            Ok(Some(s.parse().with_context(|| {
                format!("{key} must be a number, got {s:?}")
            })?))
        }
    }
}

fn opt_bool(v: &Value, key: &str) -> Result<Option<bool>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => bail!("{key} must be a boolean, got {other:?}"),
    }
}

fn seq<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn to_u32(v: Option<u64>, what: &str) -> Result<Option<u32>> {
    v.map(|n| u32::try_from(n).with_context(|| format!("{what} {n} is too large")))
        .transpose()
}

impl Provisioner<'_> {
    async fn create(&mut self, r: &Resource) -> Result<()> {
        let props = self.state.properties(r)?;
        match r.kind.as_str() {
            TABLE => self.create_table(r, &props).await,
            QUEUE => self.create_queue(r, &props).await,
            BUCKET => self.create_bucket(r, &props).await,
            SAM_STATE_MACHINE | SFN_STATE_MACHINE => self.create_state_machine(r, &props).await,
            other => {
                tracing::debug!("skipping {} ({other})", r.logical_id);
                Ok(())
            }
        }
    }

    // --- DynamoDB --------------------------------------------------------------------------

    async fn create_table(&mut self, r: &Resource, props: &Value) -> Result<()> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction,
            GlobalSecondaryIndex, GlobalSecondaryIndexUpdate, KeySchemaElement, KeyType,
            LocalSecondaryIndex, Projection, ProjectionType, ProvisionedThroughput,
            ScalarAttributeType, StreamSpecification, StreamViewType, TimeToLiveSpecification,
            TimeToLiveStatus,
        };
        let id = r.logical_id.as_str();
        let name = opt_str(props, "TableName").unwrap_or_else(|| self.state.generated_name(id));

        let attribute_definitions = seq(props, "AttributeDefinitions")
            .iter()
            .map(|a| {
                AttributeDefinition::builder()
                    .attribute_name(req_str(a, "AttributeName")?)
                    .attribute_type(ScalarAttributeType::from(
                        req_str(a, "AttributeType")?.as_str(),
                    ))
                    .build()
                    .map_err(Into::into)
            })
            .collect::<Result<Vec<_>>>()
            .context("AttributeDefinitions")?;
        let key_schema = |v: &Value| -> Result<Vec<KeySchemaElement>> {
            seq(v, "KeySchema")
                .iter()
                .map(|k| {
                    KeySchemaElement::builder()
                        .attribute_name(req_str(k, "AttributeName")?)
                        .key_type(KeyType::from(req_str(k, "KeyType")?.as_str()))
                        .build()
                        .map_err(Into::into)
                })
                .collect::<Result<Vec<_>>>()
                .context("KeySchema")
        };
        let throughput = |v: &Value| -> Result<Option<ProvisionedThroughput>> {
            let Some(t) = v.get("ProvisionedThroughput") else {
                return Ok(None);
            };
            let units = |k: &str| -> Result<i64> {
                opt_u64(t, k)?
                    .ok_or_else(|| anyhow!("ProvisionedThroughput.{k} missing"))?
                    .try_into()
                    .context(k.to_string())
            };
            Ok(Some(
                ProvisionedThroughput::builder()
                    .read_capacity_units(units("ReadCapacityUnits")?)
                    .write_capacity_units(units("WriteCapacityUnits")?)
                    .build()?,
            ))
        };
        let projection = |v: &Value| -> Projection {
            let p = v.get("Projection").cloned().unwrap_or(Value::Null);
            let non_key: Vec<String> = seq(&p, "NonKeyAttributes")
                .iter()
                .filter_map(scalar_string)
                .collect();
            Projection::builder()
                .projection_type(ProjectionType::from(
                    opt_str(&p, "ProjectionType")
                        .unwrap_or_else(|| "ALL".into())
                        .as_str(),
                ))
                .set_non_key_attributes((!non_key.is_empty()).then_some(non_key))
                .build()
        };

        let table_throughput = throughput(props)?;
        let billing = match opt_str(props, "BillingMode") {
            Some(b) => BillingMode::from(b.as_str()),
            None if table_throughput.is_some() => BillingMode::Provisioned,
            None => BillingMode::PayPerRequest,
        };
        let provisioned = billing == BillingMode::Provisioned;
        let default_throughput = || {
            ProvisionedThroughput::builder()
                .read_capacity_units(5)
                .write_capacity_units(5)
                .build()
        };

        let mut gsis = Vec::new();
        for g in seq(props, "GlobalSecondaryIndexes") {
            let index_name = req_str(g, "IndexName").context("GlobalSecondaryIndexes")?;
            let t = match throughput(g)? {
                Some(t) => Some(t),
                None if provisioned => Some(
                    table_throughput
                        .clone()
                        .map_or_else(default_throughput, Ok)?,
                ),
                None => None,
            };
            gsis.push(
                GlobalSecondaryIndex::builder()
                    .index_name(&index_name)
                    .set_key_schema(Some(key_schema(g).with_context(|| index_name.clone())?))
                    .projection(projection(g))
                    .set_provisioned_throughput(t)
                    .build()?,
            );
        }
        let mut lsis = Vec::new();
        for l in seq(props, "LocalSecondaryIndexes") {
            let index_name = req_str(l, "IndexName").context("LocalSecondaryIndexes")?;
            lsis.push(
                LocalSecondaryIndex::builder()
                    .index_name(&index_name)
                    .set_key_schema(Some(key_schema(l).with_context(|| index_name.clone())?))
                    .projection(projection(l))
                    .build()?,
            );
        }
        let stream = match props.get("StreamSpecification") {
            Some(s) => Some(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::from(
                        opt_str(s, "StreamViewType")
                            .unwrap_or_else(|| "NEW_AND_OLD_IMAGES".into())
                            .as_str(),
                    ))
                    .build()?,
            ),
            None => None,
        };
        let table_key_schema = key_schema(props)?;

        let created = self
            .dynamodb
            .create_table()
            .table_name(&name)
            .set_attribute_definitions(Some(attribute_definitions.clone()))
            .set_key_schema(Some(table_key_schema.clone()))
            .set_global_secondary_indexes((!gsis.is_empty()).then(|| gsis.clone()))
            .set_local_secondary_indexes((!lsis.is_empty()).then_some(lsis))
            .billing_mode(billing.clone())
            .set_provisioned_throughput(if provisioned {
                Some(
                    table_throughput
                        .clone()
                        .map_or_else(default_throughput, Ok)?,
                )
            } else {
                None
            })
            .set_stream_specification(stream)
            .send()
            .await;
        match created {
            Ok(_) => tracing::info!("created table {name} ({id}, {} GSIs)", gsis.len()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) =>
            {
                // Bring an existing table in line where that can be done without losing data.
                let existing = self
                    .dynamodb
                    .describe_table()
                    .table_name(&name)
                    .send()
                    .await
                    .map_err(sdk_err)
                    .with_context(|| format!("describing existing table {name}"))?;
                let table = existing.table();
                if table.map(|t| t.key_schema()) != Some(table_key_schema.as_slice()) {
                    tracing::warn!(
                        "table {name} ({id}) exists with a different key schema; reset the emulator to recreate it"
                    );
                }
                let have: HashSet<&str> = table
                    .map(|t| t.global_secondary_indexes())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|g| g.index_name())
                    .collect();
                let missing: Vec<&GlobalSecondaryIndex> = gsis
                    .iter()
                    .filter(|g| !have.contains(g.index_name()))
                    .collect();
                for g in &missing {
                    let action = CreateGlobalSecondaryIndexAction::builder()
                        .index_name(g.index_name())
                        .set_key_schema(Some(g.key_schema().to_vec()))
                        .set_projection(g.projection().cloned())
                        .set_provisioned_throughput(g.provisioned_throughput().cloned())
                        .build()?;
                    self.dynamodb
                        .update_table()
                        .table_name(&name)
                        .set_attribute_definitions(Some(attribute_definitions.clone()))
                        .global_secondary_index_updates(
                            GlobalSecondaryIndexUpdate::builder().create(action).build(),
                        )
                        .send()
                        .await
                        .map_err(sdk_err)
                        .with_context(|| format!("adding GSI {} to {name}", g.index_name()))?;
                    tracing::info!("added GSI {} to existing table {name}", g.index_name());
                }
                if missing.is_empty() {
                    tracing::info!("table {name} ({id}) already exists");
                }
            }
            Err(e) => return Err(sdk_err(e)).with_context(|| format!("creating table {name}")),
        }

        if let Some(ttl) = props.get("TimeToLiveSpecification") {
            let attribute = req_str(ttl, "AttributeName").context("TimeToLiveSpecification")?;
            let enabled = opt_bool(ttl, "Enabled")?.unwrap_or(false);
            let current = self
                .dynamodb
                .describe_time_to_live()
                .table_name(&name)
                .send()
                .await
                .map_err(sdk_err)
                .with_context(|| format!("describing TTL of {name}"))?;
            let desc = current.time_to_live_description();
            let is_enabled =
                desc.and_then(|d| d.time_to_live_status()) == Some(&TimeToLiveStatus::Enabled);
            let same_attr = desc.and_then(|d| d.attribute_name()) == Some(attribute.as_str());
            if enabled != is_enabled || (enabled && !same_attr) {
                self.dynamodb
                    .update_time_to_live()
                    .table_name(&name)
                    .time_to_live_specification(
                        TimeToLiveSpecification::builder()
                            .attribute_name(&attribute)
                            .enabled(enabled)
                            .build()?,
                    )
                    .send()
                    .await
                    .map_err(sdk_err)
                    .with_context(|| format!("setting TTL on {name}"))?;
                tracing::debug!("TTL on {name}: {attribute} enabled={enabled}");
            }
        }

        let described = self
            .dynamodb
            .describe_table()
            .table_name(&name)
            .send()
            .await
            .map_err(sdk_err)
            .with_context(|| format!("describing table {name}"))?;
        let table = described.table();
        let arn = table
            .and_then(|t| t.table_arn())
            .map(String::from)
            .unwrap_or_else(|| {
                format!(
                    "arn:aws:dynamodb:{}:{ACCOUNT_ID}:table/{name}",
                    self.state.region
                )
            });
        if let Some(stream_arn) = table.and_then(|t| t.latest_stream_arn()) {
            self.state.set_attr(id, "StreamArn", stream_arn);
        }
        self.state.set_attr(id, "Arn", arn);
        self.state.set_ref(id, name);
        Ok(())
    }

    // --- SQS -------------------------------------------------------------------------------

    async fn create_queue(&mut self, r: &Resource, props: &Value) -> Result<()> {
        use aws_sdk_sqs::error::ProvideErrorMetadata;
        use aws_sdk_sqs::types::QueueAttributeName;
        let id = r.logical_id.as_str();
        let fifo = opt_bool(props, "FifoQueue")?.unwrap_or(false);
        let name = match opt_str(props, "QueueName") {
            Some(n) => n,
            None if fifo => format!("{}.fifo", self.state.generated_name(id)),
            None => self.state.generated_name(id),
        };

        let mut attributes: HashMap<QueueAttributeName, String> = HashMap::new();
        for key in [
            "VisibilityTimeout",
            "MessageRetentionPeriod",
            "DelaySeconds",
            "ReceiveMessageWaitTimeSeconds",
            "MaximumMessageSize",
            "ContentBasedDeduplication",
            "DeduplicationScope",
            "FifoThroughputLimit",
            "KmsMasterKeyId",
            "KmsDataKeyReusePeriodSeconds",
            "SqsManagedSseEnabled",
        ] {
            if let Some(v) = opt_str(props, key) {
                attributes.insert(QueueAttributeName::from(key), v);
            }
        }
        for key in ["RedrivePolicy", "RedriveAllowPolicy"] {
            match props.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => {
                    attributes.insert(QueueAttributeName::from(key), s.clone());
                }
                Some(v) => {
                    let json = serde_json::to_string(v).with_context(|| key.to_string())?;
                    attributes.insert(QueueAttributeName::from(key), json);
                }
            }
        }
        let mut create_attributes = attributes.clone();
        if fifo {
            create_attributes.insert(QueueAttributeName::FifoQueue, "true".into());
        }

        // An existing queue is kept (with its messages) and its attributes updated, so that
        // template edits take effect; moto's CreateQueue would silently return it unchanged.
        let existing = match self.sqs.get_queue_url().queue_name(&name).send().await {
            Ok(out) => out.queue_url().map(String::from),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_queue_does_not_exist())
                    || matches!(
                        e.code(),
                        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist")
                    ) =>
            {
                None
            }
            Err(e) => {
                return Err(sdk_err(e)).with_context(|| format!("looking up queue {name}"));
            }
        };
        let url = match existing {
            Some(url) => {
                if !attributes.is_empty() {
                    self.sqs
                        .set_queue_attributes()
                        .queue_url(&url)
                        .set_attributes(Some(attributes))
                        .send()
                        .await
                        .map_err(sdk_err)
                        .with_context(|| format!("updating attributes of existing queue {name}"))?;
                }
                tracing::info!("queue {name} ({id}) already exists; attributes updated");
                url
            }
            None => {
                let created = self
                    .sqs
                    .create_queue()
                    .queue_name(&name)
                    .set_attributes(Some(create_attributes))
                    .send()
                    .await
                    .map_err(sdk_err)
                    .with_context(|| format!("creating queue {name}"))?;
                tracing::info!("created queue {name} ({id})");
                created
                    .queue_url()
                    .map(String::from)
                    .ok_or_else(|| anyhow!("CreateQueue returned no URL for {name}"))?
            }
        };

        let arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(sdk_err)
            .with_context(|| format!("reading the ARN of queue {name}"))?
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .unwrap_or_else(|| format!("arn:aws:sqs:{}:{ACCOUNT_ID}:{name}", self.state.region));

        self.queue_urls_by_arn.insert(arn.clone(), url.clone());
        self.state.set_attr(id, "Arn", arn);
        self.state.set_attr(id, "QueueName", &name);
        self.state.set_attr(id, "QueueUrl", &url);
        self.state.set_ref(id, url);
        Ok(())
    }

    // --- S3 --------------------------------------------------------------------------------

    async fn create_bucket(&mut self, r: &Resource, props: &Value) -> Result<()> {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        use aws_sdk_s3::types::{
            BucketLocationConstraint, BucketVersioningStatus, CorsConfiguration, CorsRule,
            CreateBucketConfiguration, VersioningConfiguration,
        };
        let id = r.logical_id.as_str();
        let region = self.state.region.clone();
        let name = match opt_str(props, "BucketName") {
            Some(n) => n,
            None => bucket_name(&self.state.stack, id),
        };

        // moto (like AWS in us-east-1) answers CreateBucket for an owned bucket with 200.
        let exists = self.s3.head_bucket().bucket(&name).send().await.is_ok();
        let created = if exists {
            Err(None)
        } else {
            self.s3
                .create_bucket()
                .bucket(&name)
                .set_create_bucket_configuration((region != "us-east-1").then(|| {
                    CreateBucketConfiguration::builder()
                        .location_constraint(BucketLocationConstraint::from(region.as_str()))
                        .build()
                }))
                .send()
                .await
                .map_err(Some)
        };
        match created {
            Ok(_) => tracing::info!("created bucket {name} ({id})"),
            Err(None) => tracing::info!("bucket {name} ({id}) already exists"),
            Err(Some(e))
                if matches!(
                    e.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                tracing::info!("bucket {name} ({id}) already exists");
            }
            Err(Some(e)) => {
                return Err(sdk_err(e)).with_context(|| format!("creating bucket {name}"))
            }
        }

        if let Some(cors) = props.get("CorsConfiguration") {
            let strings = |v: &Value, k: &str| -> Option<Vec<String>> {
                let items: Vec<String> = seq(v, k).iter().filter_map(scalar_string).collect();
                (!items.is_empty()).then_some(items)
            };
            let mut rules = Vec::new();
            for rule in seq(cors, "CorsRules") {
                rules.push(
                    CorsRule::builder()
                        .set_id(opt_str(rule, "Id"))
                        .set_allowed_methods(strings(rule, "AllowedMethods"))
                        .set_allowed_origins(strings(rule, "AllowedOrigins"))
                        .set_allowed_headers(strings(rule, "AllowedHeaders"))
                        .set_expose_headers(strings(rule, "ExposedHeaders"))
                        .set_max_age_seconds(
                            opt_u64(rule, "MaxAge")?.map(|n| n.try_into()).transpose()?,
                        )
                        .build()
                        .context("CorsRules")?,
                );
            }
            self.s3
                .put_bucket_cors()
                .bucket(&name)
                .cors_configuration(
                    CorsConfiguration::builder()
                        .set_cors_rules(Some(rules))
                        .build()?,
                )
                .send()
                .await
                .map_err(sdk_err)
                .with_context(|| format!("setting CORS on {name}"))?;
        }

        if let Some(status) = props
            .get("VersioningConfiguration")
            .and_then(|v| opt_str(v, "Status"))
        {
            self.s3
                .put_bucket_versioning()
                .bucket(&name)
                .versioning_configuration(
                    VersioningConfiguration::builder()
                        .status(BucketVersioningStatus::from(status.as_str()))
                        .build(),
                )
                .send()
                .await
                .map_err(sdk_err)
                .with_context(|| format!("setting versioning on {name}"))?;
        }

        if let Some(n) = props.get("NotificationConfiguration") {
            self.put_notifications(id, &name, n).await?;
        }

        self.state
            .set_attr(id, "Arn", format!("arn:aws:s3:::{name}"));
        self.state
            .set_attr(id, "DomainName", format!("{name}.s3.amazonaws.com"));
        self.state.set_attr(
            id,
            "RegionalDomainName",
            format!("{name}.s3.{region}.amazonaws.com"),
        );
        self.state.set_attr(
            id,
            "DualStackDomainName",
            format!("{name}.s3.dualstack.{region}.amazonaws.com"),
        );
        self.state.set_attr(
            id,
            "WebsiteURL",
            format!("http://{name}.s3-website-{region}.amazonaws.com"),
        );
        self.state.set_ref(id, name);
        Ok(())
    }

    async fn put_notifications(&mut self, id: &str, bucket: &str, config: &Value) -> Result<()> {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        use aws_sdk_s3::types::{
            Event, EventBridgeConfiguration, FilterRule, FilterRuleName, NotificationConfiguration,
            NotificationConfigurationFilter, QueueConfiguration, S3KeyFilter,
        };
        let mut wanted: Vec<QueueNotification> = Vec::new();
        for q in seq(config, "QueueConfigurations") {
            let queue = req_str(q, "Queue").context("QueueConfigurations")?;
            let event = req_str(q, "Event").context("QueueConfigurations")?;
            let rules: Vec<(String, String)> = q
                .get("Filter")
                .and_then(|f| f.get("S3Key"))
                .map(|k| seq(k, "Rules"))
                .unwrap_or_default()
                .iter()
                .map(|rule| {
                    Ok((
                        req_str(rule, "Name")?.to_lowercase(),
                        req_str(rule, "Value")?,
                    ))
                })
                .collect::<Result<_>>()
                .context("Filter.S3Key.Rules")?;
            wanted.push((queue, vec![event], rules));
        }
        for kind in ["TopicConfigurations", "LambdaConfigurations"] {
            if !seq(config, kind).is_empty() {
                tracing::warn!(
                    "{id}: NotificationConfiguration.{kind} is not supported locally (deliver S3 events through SQS)"
                );
            }
        }
        let eventbridge = config
            .get("EventBridgeConfiguration")
            .map(|e| opt_bool(e, "EventBridgeEnabled"))
            .transpose()?
            .flatten()
            .unwrap_or(false);

        // PutBucketNotificationConfiguration sends an s3:TestEvent to each queue; skip it when
        // the bucket is already configured this way. (moto answers the GET for a bucket without
        // notifications with a root element the SDK cannot parse: treat any failure as "unknown".)
        let current = self
            .s3
            .get_bucket_notification_configuration()
            .bucket(bucket)
            .send()
            .await;
        match current {
            Ok(current) => {
                let mut have: Vec<QueueNotification> = current
                    .queue_configurations()
                    .iter()
                    .map(|q| {
                        let rules = q
                            .filter()
                            .and_then(|f| f.key())
                            .map(|k| k.filter_rules())
                            .unwrap_or_default()
                            .iter()
                            .map(|r| {
                                (
                                    r.name()
                                        .map(|n| n.as_str().to_lowercase())
                                        .unwrap_or_default(),
                                    r.value().unwrap_or_default().to_string(),
                                )
                            })
                            .collect();
                        let events = q.events().iter().map(|e| e.as_str().to_string()).collect();
                        (q.queue_arn().to_string(), events, rules)
                    })
                    .collect();
                let mut sorted_wanted = wanted.clone();
                for list in [&mut have, &mut sorted_wanted] {
                    for entry in list.iter_mut() {
                        entry.1.sort();
                        entry.2.sort();
                    }
                    list.sort();
                }
                if have == sorted_wanted
                    && current.event_bridge_configuration().is_some() == eventbridge
                {
                    tracing::debug!("notifications of {bucket} unchanged");
                    return Ok(());
                }
            }
            Err(e) => tracing::debug!(
                "could not read the notifications of {bucket} ({}); putting them",
                e.code().unwrap_or("unparsable answer")
            ),
        }

        let mut builder = NotificationConfiguration::builder();
        for (queue, events, rules) in &wanted {
            let filter_rules: Vec<FilterRule> = rules
                .iter()
                .map(|(n, v)| {
                    FilterRule::builder()
                        .name(FilterRuleName::from(n.as_str()))
                        .value(v)
                        .build()
                })
                .collect();
            let filter = (!filter_rules.is_empty()).then(|| {
                NotificationConfigurationFilter::builder()
                    .key(
                        S3KeyFilter::builder()
                            .set_filter_rules(Some(filter_rules))
                            .build(),
                    )
                    .build()
            });
            builder = builder.queue_configurations(
                QueueConfiguration::builder()
                    .queue_arn(queue)
                    .set_events(Some(
                        events.iter().map(|e| Event::from(e.as_str())).collect(),
                    ))
                    .set_filter(filter)
                    .build()?,
            );
        }
        if eventbridge {
            builder =
                builder.event_bridge_configuration(EventBridgeConfiguration::builder().build());
        }
        self.s3
            .put_bucket_notification_configuration()
            .bucket(bucket)
            .notification_configuration(builder.build())
            .send()
            .await
            .map_err(sdk_err)
            .with_context(|| format!("setting notifications on {bucket}"))?;
        tracing::info!("bucket {bucket} ({id}) notifies {} queue(s)", wanted.len());
        Ok(())
    }

    // --- Step Functions ------------------------------------------------------------------------

    async fn create_state_machine(&mut self, r: &Resource, props: &Value) -> Result<()> {
        use aws_sdk_sfn::error::ProvideErrorMetadata;
        use aws_sdk_sfn::types::StateMachineType;
        let id = r.logical_id.as_str();
        let sam = r.kind == SAM_STATE_MACHINE;
        let name = opt_str(props, if sam { "Name" } else { "StateMachineName" })
            .unwrap_or_else(|| self.state.generated_name(id));
        let kind = opt_str(props, if sam { "Type" } else { "StateMachineType" })
            .unwrap_or_else(|| "STANDARD".into());
        let role_arn = format!(
            "arn:aws:iam::{ACCOUNT_ID}:role/{}",
            self.state.generated_name(id)
        );
        let definition = self.state_machine_definition(r, props)?;

        let existing = self.find_state_machine(&name).await?;
        let arn = match existing {
            Some(arn) => {
                self.update_state_machine(id, &name, &arn, &definition, &role_arn, &kind)
                    .await?;
                arn
            }
            None => {
                let created = self
                    .sfn
                    .create_state_machine()
                    .name(&name)
                    .definition(&definition)
                    .role_arn(&role_arn)
                    .r#type(StateMachineType::from(kind.as_str()))
                    .send()
                    .await;
                match created {
                    Ok(out) => {
                        tracing::info!("created state machine {name} ({id})");
                        out.state_machine_arn().to_string()
                    }
                    Err(e) if e.code() == Some("StateMachineAlreadyExists") => {
                        let arn = self.find_state_machine(&name).await?.ok_or_else(|| {
                            anyhow!("state machine {name} exists but is not listed")
                        })?;
                        self.update_state_machine(id, &name, &arn, &definition, &role_arn, &kind)
                            .await?;
                        arn
                    }
                    Err(e) => {
                        return Err(sdk_err(e))
                            .with_context(|| format!("creating state machine {name}"))
                    }
                }
            }
        };
        self.state.set_attr(id, "Arn", &arn);
        self.state.set_attr(id, "Name", &name);
        self.state.set_ref(id, arn);
        Ok(())
    }

    /// The definition JSON: from `DefinitionUri` (a file relative to the template), `Definition`
    /// (inline, intrinsics resolved) or `DefinitionString`, with `DefinitionSubstitutions` applied.
    fn state_machine_definition(&self, r: &Resource, props: &Value) -> Result<String> {
        let text = if let Some(uri) = props.get("DefinitionUri") {
            let rel = scalar_string(uri).ok_or_else(|| {
                anyhow!("DefinitionUri must be a local file path to run locally (S3 locations are not supported)")
            })?;
            let path = self.state.template.dir().join(&rel);
            let raw = std::fs::read_to_string(&path)
                .with_context(|| format!("reading DefinitionUri {}", path.display()))?;
            if matches!(
                Path::new(&rel).extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                let v: Value = serde_yaml::from_str(&raw)
                    .with_context(|| format!("parsing {}", path.display()))?;
                serde_json::to_string(&v)?
            } else {
                raw
            }
        } else if let Some(def) = props.get("Definition") {
            serde_json::to_string(def).context("serializing Definition")?
        } else if let Some(s) = props.get("DefinitionString").and_then(scalar_string) {
            s
        } else if props.get("DefinitionS3Location").is_some() {
            bail!("DefinitionS3Location is not supported locally; use DefinitionUri with a local file")
        } else {
            bail!("no Definition, DefinitionUri or DefinitionString")
        };

        let mut text = text;
        if let Some(subs) = props
            .get("DefinitionSubstitutions")
            .and_then(Value::as_mapping)
        {
            for (k, v) in subs {
                let k =
                    scalar_string(k).ok_or_else(|| anyhow!("DefinitionSubstitutions key {k:?}"))?;
                let v = match v {
                    Value::Sequence(_) | Value::Mapping(_) => serde_json::to_string(v)?,
                    other => scalar_string(other).unwrap_or_default(),
                };
                text = text.replace(&format!("${{{k}}}"), &v);
            }
        }
        let left = intrinsics::sub_placeholders(&text);
        if !left.is_empty() {
            tracing::warn!(
                "{}: definition still has placeholders without DefinitionSubstitutions: {}",
                r.logical_id,
                left.join(", ")
            );
        }
        serde_json::from_str::<serde_json::Value>(&text).with_context(|| {
            format!(
                "{}: the definition is not valid JSON after substitutions",
                r.logical_id
            )
        })?;
        Ok(text)
    }

    async fn find_state_machine(&self, name: &str) -> Result<Option<String>> {
        let mut token = None;
        loop {
            let page = self
                .sfn
                .list_state_machines()
                .set_next_token(token)
                .send()
                .await
                .map_err(sdk_err)
                .context("listing state machines")?;
            if let Some(sm) = page.state_machines().iter().find(|sm| sm.name() == name) {
                return Ok(Some(sm.state_machine_arn().to_string()));
            }
            match page.next_token() {
                Some(t) => token = Some(t.to_string()),
                None => return Ok(None),
            }
        }
    }

    async fn update_state_machine(
        &self,
        id: &str,
        name: &str,
        arn: &str,
        definition: &str,
        role_arn: &str,
        kind: &str,
    ) -> Result<()> {
        let current = self
            .sfn
            .describe_state_machine()
            .state_machine_arn(arn)
            .send()
            .await
            .map_err(sdk_err)
            .with_context(|| format!("describing state machine {name}"))?;
        if current.r#type().as_str() != kind {
            tracing::warn!(
                "state machine {name} ({id}) exists as {}, the template says {kind}; reset the emulator to change it",
                current.r#type().as_str()
            );
        }
        if current.definition() == definition && current.role_arn() == role_arn {
            tracing::info!("state machine {name} ({id}) already exists, unchanged");
            return Ok(());
        }
        self.sfn
            .update_state_machine()
            .state_machine_arn(arn)
            .definition(definition)
            .role_arn(role_arn)
            .send()
            .await
            .map_err(sdk_err)
            .with_context(|| format!("updating state machine {name}"))?;
        tracing::info!("updated state machine {name} ({id})");
        Ok(())
    }

    // --- Functions ------------------------------------------------------------------------------

    async fn function_spec(&self, r: &Resource) -> Result<FunctionSpec> {
        let id = r.logical_id.as_str();
        let template = self.state.template;
        let globals = template.globals_function();

        let mut environment = HashMap::new();
        let sources = [
            globals.and_then(|g| lookup(g, &["Environment", "Variables"])),
            r.property_path(&["Environment", "Variables"]),
        ];
        for vars in sources.into_iter().flatten() {
            let vars = vars
                .as_mapping()
                .ok_or_else(|| anyhow!("Environment.Variables must be a mapping"))?;
            for (k, v) in vars {
                let k = scalar_string(k).ok_or_else(|| anyhow!("variable name {k:?}"))?;
                match resolve(v, &self.state)
                    .with_context(|| format!("environment variable {k}"))?
                {
                    Some(v) => {
                        let s = scalar_string(&v)
                            .ok_or_else(|| anyhow!("environment variable {k} is not a scalar"))?;
                        environment.insert(k, s);
                    }
                    None => {
                        environment.remove(&k);
                    }
                }
            }
        }

        let resolved_prop = |v: Option<&Value>| -> Result<Option<Value>> {
            v.map(|v| resolve(v, &self.state))
                .transpose()
                .map(Option::flatten)
        };
        let mut timeout_seconds = 3;
        for source in [
            globals.and_then(|g| g.get("Timeout")),
            r.property("Timeout"),
        ] {
            if let Some(t) = resolved_prop(source)? {
                timeout_seconds = scalar_string(&t)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow!("Timeout must be a number of seconds, got {t:?}"))?;
            }
        }
        let mut memory_mb = 128;
        for source in [
            globals.and_then(|g| g.get("MemorySize")),
            r.property("MemorySize"),
        ] {
            if let Some(m) = resolved_prop(source)? {
                memory_mb = scalar_string(&m)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow!("MemorySize must be a number of MB, got {m:?}"))?;
            }
        }
        let code_uri = r.property("CodeUri").and_then(scalar_string);

        let mut events = Vec::new();
        if let Some(map) = r.property("Events").and_then(Value::as_mapping) {
            for (name, event) in map {
                let name = scalar_string(name).ok_or_else(|| anyhow!("event name {name:?}"))?;
                let event = self
                    .function_event(&name, event)
                    .await
                    .with_context(|| format!("event {name}"))?;
                if let Some(event) = event {
                    events.push(event);
                }
            }
        }
        tracing::debug!("function {id}: {} event(s)", events.len());

        Ok(FunctionSpec {
            logical_id: id.to_string(),
            code_uri,
            environment,
            timeout_seconds,
            memory_mb,
            events,
        })
    }

    async fn function_event(&self, name: &str, event: &Value) -> Result<Option<FunctionEvent>> {
        let kind = event
            .get("Type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let raw = event
            .get("Properties")
            .cloned()
            .unwrap_or_else(|| Value::Mapping(Mapping::new()));
        match kind {
            "Api" | "HttpApi" => {
                let props = resolve(&raw, &self.state)?.unwrap_or(Value::Null);
                let path = req_str(&props, "Path")?;
                let method = req_str(&props, "Method")?.to_uppercase();
                let requires_auth =
                    match lookup(&props, &["Auth", "Authorizer"]).and_then(scalar_string) {
                        Some(a) => a != "NONE",
                        None => {
                            let api_key = if kind == "Api" { "RestApiId" } else { "ApiId" };
                            let api = raw
                                .get(api_key)
                                .and_then(as_intrinsic)
                                .filter(|(f, _)| *f == "Ref")
                                .and_then(|(_, v)| v.as_str())
                                .and_then(|id| self.state.template.resource(id));
                            let default = api
                                .and_then(|a| a.property_path(&["Auth", "DefaultAuthorizer"]))
                                .or_else(|| {
                                    self.state
                                        .template
                                        .globals(kind)
                                        .and_then(|g| lookup(g, &["Auth", "DefaultAuthorizer"]))
                                });
                            match default {
                                Some(d) => resolve(d, &self.state)?
                                    .and_then(|v| scalar_string(&v))
                                    .is_some_and(|d| d != "NONE"),
                                None => false,
                            }
                        }
                    };
                Ok(Some(FunctionEvent::Api {
                    name: name.to_string(),
                    path,
                    method,
                    requires_auth,
                }))
            }
            "SQS" => {
                let props = resolve(&raw, &self.state)?.unwrap_or(Value::Null);
                if opt_bool(&props, "Enabled")? == Some(false) {
                    tracing::info!("SQS event {name} is disabled; not polling it");
                    return Ok(None);
                }
                let queue_arn = req_str(&props, "Queue")?;
                let queue_url = match self.queue_urls_by_arn.get(&queue_arn) {
                    Some(url) => url.clone(),
                    None => {
                        let queue_name = queue_arn.rsplit(':').next().unwrap_or(&queue_arn);
                        self.sqs
                            .get_queue_url()
                            .queue_name(queue_name)
                            .send()
                            .await
                            .map_err(sdk_err)
                            .with_context(|| format!("looking up queue {queue_arn}"))?
                            .queue_url()
                            .map(String::from)
                            .ok_or_else(|| anyhow!("no URL for queue {queue_arn}"))?
                    }
                };
                let report_batch_item_failures = seq(&props, "FunctionResponseTypes")
                    .iter()
                    .any(|t| t.as_str() == Some("ReportBatchItemFailures"));
                let maximum_concurrency = match props.get("ScalingConfig") {
                    Some(s) => to_u32(opt_u64(s, "MaximumConcurrency")?, "MaximumConcurrency")?,
                    None => None,
                };
                Ok(Some(FunctionEvent::Sqs {
                    name: name.to_string(),
                    queue_url,
                    queue_arn,
                    batch_size: to_u32(opt_u64(&props, "BatchSize")?, "BatchSize")?.unwrap_or(10),
                    max_batching_window_seconds: to_u32(
                        opt_u64(&props, "MaximumBatchingWindowInSeconds")?,
                        "MaximumBatchingWindowInSeconds",
                    )?
                    .unwrap_or(0),
                    maximum_concurrency,
                    report_batch_item_failures,
                }))
            }
            "Schedule" | "ScheduleV2" => {
                let props = resolve(&raw, &self.state)?.unwrap_or(Value::Null);
                let key = if kind == "Schedule" {
                    "Schedule"
                } else {
                    "ScheduleExpression"
                };
                let disabled = opt_bool(&props, "Enabled")? == Some(false)
                    || opt_str(&props, "State").is_some_and(|s| s.eq_ignore_ascii_case("DISABLED"));
                if disabled {
                    tracing::info!("schedule {name} is disabled");
                    return Ok(None);
                }
                let expression = req_str(&props, key)?;
                let period = parse_rate(&expression);
                if period.is_none() {
                    tracing::warn!(
                        "schedule {name}: {expression} is not a rate(...) expression; the local host cannot time it"
                    );
                }
                Ok(Some(FunctionEvent::Schedule {
                    name: name.to_string(),
                    expression,
                    period,
                }))
            }
            other => {
                tracing::debug!("event {name} of type {other} is not run locally");
                Ok(None)
            }
        }
    }
}

/// A queue notification, compared as (queue ARN, events, (filter rule name, value)).
type QueueNotification = (String, Vec<String>, Vec<(String, String)>);

/// A valid S3 bucket name `<stack>-<logical id>`, lower case.
fn bucket_name(stack: &str, logical_id: &str) -> String {
    let raw = format!("{stack}-{logical_id}").to_lowercase();
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(63);
    name.trim_matches(|c: char| c == '-' || c == '.')
        .to_string()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::emulator::{free_port, sdk_config, Emulator};

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

    #[test]
    fn bucket_names_are_valid() {
        assert_eq!(
            bucket_name("Taskflow-Dev", "BatchBucket"),
            "taskflow-dev-batchbucket"
        );
        assert_eq!(bucket_name("a_b", "C"), "a-b-c");
        assert!(bucket_name(&"x".repeat(70), "B").len() <= 63);
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
            let dir = std::env::temp_dir()
                .join(format!("local-stack-test-{}-{nanos}", std::process::id()));
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
        assert_eq!(bucket, "inline-batchbucket");
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
            serde_json::from_str(received.messages().first().and_then(|m| m.body()).unwrap())
                .unwrap();
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
}
