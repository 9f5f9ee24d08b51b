//! Turns AWS request counts per unit of work into US dollars per million units.

use crate::counting_proxy::Counts;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Prices {
    pub date: String,
    pub region: String,
    pub note: String,
    pub lambda_arm64_gb_second: f64,
    pub lambda_request: f64,
    pub api_gateway_rest_request: f64,
    pub dynamodb_write_request_unit: f64,
    pub dynamodb_read_request_unit: f64,
    pub sqs_request: f64,
    pub step_functions_standard_transition: f64,
    pub s3_put_request: f64,
    pub s3_get_request: f64,
}

impl Prices {
    pub fn load() -> anyhow::Result<Prices> {
        Ok(serde_json::from_str(include_str!("../prices.json"))?)
    }
}

/// What one unit of work (a task, a chain step, a batch item) uses.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UnitUsage {
    /// AWS requests per unit, by "service:Operation".
    pub requests: Counts,
    pub api_requests: f64,
    pub lambda_invocations: f64,
    pub lambda_gb_seconds: f64,
    pub state_transitions: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub per_million_usd: f64,
    pub breakdown_usd: std::collections::BTreeMap<String, f64>,
}

/// Request counts are per unit already (possibly fractional, stored ×1000 in `requests`).
pub fn per_million(usage: &UnitUsage, per_unit_scale: f64, prices: &Prices) -> Cost {
    let count = |op: &str| usage.requests.get(op).copied().unwrap_or(0) as f64 / per_unit_scale;
    let prefixed = |prefix: &str| {
        usage
            .requests
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| *v as f64)
            .sum::<f64>()
            / per_unit_scale
    };
    // Transactions cost two units per item; a task create writes one or two items.
    let writes = count("dynamodb:PutItem")
        + count("dynamodb:UpdateItem")
        + count("dynamodb:DeleteItem")
        + count("dynamodb:BatchWriteItem")
        + 2.0 * count("dynamodb:TransactWriteItems");
    let reads = count("dynamodb:GetItem") + count("dynamodb:Query") + count("dynamodb:Scan");
    let mut breakdown = std::collections::BTreeMap::new();
    let million = 1_000_000.0;
    breakdown.insert(
        "dynamodb".to_owned(),
        million
            * (writes * prices.dynamodb_write_request_unit
                + reads * prices.dynamodb_read_request_unit),
    );
    breakdown.insert(
        "sqs".to_owned(),
        million * prefixed("sqs:") * prices.sqs_request,
    );
    breakdown.insert(
        "step_functions".to_owned(),
        million * usage.state_transitions * prices.step_functions_standard_transition,
    );
    breakdown.insert(
        "s3".to_owned(),
        million
            * (count("s3:PutObject") * prices.s3_put_request
                + (count("s3:GetObject") + count("s3:HeadObject")) * prices.s3_get_request),
    );
    breakdown.insert(
        "api_gateway".to_owned(),
        million * usage.api_requests * prices.api_gateway_rest_request,
    );
    breakdown.insert(
        "lambda".to_owned(),
        million
            * (usage.lambda_invocations * prices.lambda_request
                + usage.lambda_gb_seconds * prices.lambda_arm64_gb_second),
    );
    for value in breakdown.values_mut() {
        *value = (*value * 1000.0).round() / 1000.0;
    }
    let total = breakdown.values().sum::<f64>();
    Cost {
        per_million_usd: (total * 1000.0).round() / 1000.0,
        breakdown_usd: breakdown,
    }
}
