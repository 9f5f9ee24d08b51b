//! Reads each `AWS::Serverless::Function` into a [`FunctionSpec`] (environment, timeout,
//! memory, events); nothing is created on the emulator.

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use serde_yaml::{Mapping, Value};

use super::{
    opt_bool, opt_str, opt_u64, parse_rate, req_str, sdk_err, seq, to_u32, FunctionEvent,
    FunctionSpec, Provisioner, StreamSource,
};
use crate::intrinsics::{as_intrinsic, resolve, scalar_string};
use crate::template::{lookup, Resource};

impl Provisioner<'_> {
    pub(super) async fn function_spec(&self, r: &Resource) -> Result<FunctionSpec> {
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
            "DynamoDB" => {
                let props = resolve(&raw, &self.state)?.unwrap_or(Value::Null);
                if opt_bool(&props, "Enabled")? == Some(false) {
                    tracing::info!("DynamoDB event {name} is disabled; not reading its stream");
                    return Ok(None);
                }
                let filters = lookup(&props, &["FilterCriteria", "Filters"])
                    .and_then(Value::as_sequence)
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
                    .iter()
                    .map(|f| {
                        let pattern = req_str(f, "Pattern")?;
                        serde_json::from_str(&pattern)
                            .with_context(|| format!("filter pattern {pattern}"))
                    })
                    .collect::<Result<Vec<serde_json::Value>>>()?;
                let retries = match opt_str(&props, "MaximumRetryAttempts") {
                    Some(n) => n.parse().context("MaximumRetryAttempts must be a number")?,
                    None => -1,
                };
                Ok(Some(FunctionEvent::DynamoDb(StreamSource {
                    name: name.to_string(),
                    stream_arn: req_str(&props, "Stream")?,
                    starting_position: req_str(&props, "StartingPosition")?,
                    batch_size: to_u32(opt_u64(&props, "BatchSize")?, "BatchSize")?.unwrap_or(100),
                    max_batching_window_seconds: to_u32(
                        opt_u64(&props, "MaximumBatchingWindowInSeconds")?,
                        "MaximumBatchingWindowInSeconds",
                    )?
                    .unwrap_or(0),
                    maximum_retry_attempts: retries,
                    bisect_batch_on_function_error: opt_bool(&props, "BisectBatchOnFunctionError")?
                        .unwrap_or(false),
                    report_batch_item_failures: seq(&props, "FunctionResponseTypes")
                        .iter()
                        .any(|t| t.as_str() == Some("ReportBatchItemFailures")),
                    on_failure_queue_arn: lookup(
                        &props,
                        &["DestinationConfig", "OnFailure", "Destination"],
                    )
                    .and_then(scalar_string),
                    filters,
                })))
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
