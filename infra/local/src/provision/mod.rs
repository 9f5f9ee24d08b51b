//! Creates every resource `template.yaml` declares on the emulator, and describes how each
//! function is wired (environment, timeout, events) for the in-process host.
//!
//! Created: `AWS::DynamoDB::Table`, `AWS::SQS::Queue`, `AWS::S3::Bucket`,
//! `AWS::Serverless::StateMachine` and `AWS::StepFunctions::StateMachine`, in dependency order.
//! `AWS::Serverless::Function` becomes a [`FunctionSpec`]. Every other type (Cognito, APIs,
//! IAM, CloudWatch, ...) is skipped; its `Ref`/`GetAtt` resolve to plausible placeholders.
//! Provisioning is idempotent: existing resources are kept and brought in line with the template
//! where the emulator allows it (queue attributes, missing GSIs, TTL, notifications, definitions).

mod buckets;
mod event_buses;
mod functions;
mod queues;
mod state;
mod state_machines;
mod tables;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_yaml::Value;

use crate::intrinsics::scalar_string;
use crate::template::{Resource, Template};
use state::{creation_order, State};

/// The account id moto uses by default (and the one placeholder ARNs carry).
pub const ACCOUNT_ID: &str = "123456789012";

const TABLE: &str = "AWS::DynamoDB::Table";
const QUEUE: &str = "AWS::SQS::Queue";
const BUCKET: &str = "AWS::S3::Bucket";
const SAM_STATE_MACHINE: &str = "AWS::Serverless::StateMachine";
const SFN_STATE_MACHINE: &str = "AWS::StepFunctions::StateMachine";
const SAM_FUNCTION: &str = "AWS::Serverless::Function";
const EVENT_BUS: &str = "AWS::Events::EventBus";
const CREATED_TYPES: [&str; 6] = [
    TABLE,
    QUEUE,
    BUCKET,
    SAM_STATE_MACHINE,
    SFN_STATE_MACHINE,
    EVENT_BUS,
];

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

    /// The URL (Ref) of the queue whose `Arn` is `arn`.
    pub fn queue_url_by_arn(&self, arn: &str) -> Option<String> {
        self.attributes
            .iter()
            .filter(|(_, value)| value.as_str() == arn)
            .filter_map(|(key, _)| key.strip_suffix(".Arn"))
            .filter_map(|id| self.refs.get(id))
            .find(|url| url.starts_with("http"))
            .cloned()
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
    /// `DynamoDB` events (a stream event source mapping).
    DynamoDb(StreamSource),
    /// `Schedule` (and `ScheduleV2`) events.
    Schedule {
        name: String,
        /// e.g. `rate(1 minute)` or `cron(...)`.
        expression: String,
        /// Parsed from `rate(...)`; `None` for `cron(...)`.
        period: Option<Duration>,
    },
}

/// A `DynamoDB` event: the stream and how the mapping reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSource {
    pub name: String,
    pub stream_arn: String,
    /// `TRIM_HORIZON` or `LATEST`.
    pub starting_position: String,
    /// Default 100.
    pub batch_size: u32,
    /// Default 0.
    pub max_batching_window_seconds: u32,
    /// `-1` (the default) retries until the record expires.
    pub maximum_retry_attempts: i64,
    pub bisect_batch_on_function_error: bool,
    pub report_batch_item_failures: bool,
    /// `DestinationConfig.OnFailure.Destination`, an SQS queue's ARN.
    pub on_failure_queue_arn: Option<String>,
    /// `FilterCriteria.Filters[].Pattern`, parsed.
    pub filters: Vec<serde_json::Value>,
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
        events: aws_sdk_eventbridge::Client::new(sdk),
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
// Creation

struct Provisioner<'t> {
    state: State<'t>,
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    s3: aws_sdk_s3::Client,
    sfn: aws_sdk_sfn::Client,
    events: aws_sdk_eventbridge::Client,
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
            EVENT_BUS => self.create_event_bus(r, &props).await,
            other => {
                tracing::debug!("skipping {} ({other})", r.logical_id);
                Ok(())
            }
        }
    }
}
