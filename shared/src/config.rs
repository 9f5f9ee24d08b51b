//! Function configuration, read once per cold start from environment variables
//! (the ones template.yaml sets). Locally the host supplies the same variables.

use crate::domain::Priority;
use crate::error::AppError;
use crate::executors::egress::ALLOWED_HOSTS_VAR;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub table_name: String,
    pub attachments_bucket: String,
    /// Where the http executor may send requests beyond public addresses
    /// (`HTTP_EXECUTOR_ALLOWED_HOSTS`, parsed by
    /// [`crate::executors::egress::EgressPolicy::from_config`]), and the
    /// Runtime API it never may (`AWS_LAMBDA_RUNTIME_API`).
    pub http_allowed_hosts: String,
    pub runtime_api: Option<String>,
    /// Tier queue URLs (`QUEUE_URL_CRITICAL`, …).
    pub queue_urls: BTreeMap<Priority, String>,
    /// Dead-letter queue URLs (`DLQ_URL_CRITICAL`, …).
    pub dlq_urls: BTreeMap<Priority, String>,
    /// Batch inputs, chunks and results (`BATCH_BUCKET`).
    pub batch_bucket: String,
    /// The batch preparer's queue (`BATCH_PREPARATION_QUEUE_URL`).
    pub batch_preparation_queue_url: String,
    /// The batch state machine (`BATCH_STATE_MACHINE_ARN`).
    pub batch_state_machine_arn: String,
    /// The chain state machine (`CHAIN_STATE_MACHINE_ARN`).
    pub chain_state_machine_arn: String,
    /// How long a worker holds a task before another may take it over.
    pub lease_seconds: u64,
    /// Waiting longer than this fraction of the tier's SLA promotes a task one tier.
    pub aging_fraction: f64,
    /// Per-agency quotas (README "Quotas").
    pub quotas: Quotas,
    /// In-flight runs an agency may hold per tier while another agency waits there
    /// (`AGENCY_IN_FLIGHT_CAPS`: critical,high,normal,low,background; default
    /// [`DEFAULT_IN_FLIGHT_CAPS`]).
    pub in_flight_caps: BTreeMap<Priority, u32>,
    /// Task runs an agency may have sent to each tier's queue and not yet started; more wait
    /// parked in the table (`AGENCY_DISPATCH_WINDOWS`: critical,high,normal,low,background;
    /// default [`DEFAULT_DISPATCH_WINDOWS`]).
    pub dispatch_windows: BTreeMap<Priority, u32>,
    /// Who keeps each agency to its share of a tier (`FAIR_SHARE`).
    pub fair_share: FairShare,
}

/// Who keeps each agency to its share of a tier (README "Fair share").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FairShare {
    /// The project's own in-flight caps and dispatch windows, kept in the table (`table`, the
    /// default): measured on the emulator (BENCHMARKS "Fair share"); about six single-item
    /// writes per task run.
    #[default]
    Table,
    /// SQS fair queues alone (`sqs-fair-queues`): every message already names its agency as
    /// its `MessageGroupId`, and AWS delivers a quiet agency's messages ahead of a noisy one's
    /// backlog. Nothing is written to the table for it; no cap binds. AWS only: the emulator
    /// has no fair queues, so nothing here measures it.
    SqsFairQueues,
}

impl FairShare {
    fn parse(value: &str) -> Result<Self, AppError> {
        match value {
            "" | "table" => Ok(Self::Table),
            "sqs-fair-queues" => Ok(Self::SqsFairQueues),
            other => Err(AppError::internal(format!(
                "FAIR_SHARE must be table or sqs-fair-queues, not {other:?}"
            ))),
        }
    }
}

/// The template's default LeaseSeconds; openapi.json states the run limit it gives.
pub const DEFAULT_LEASE_SECONDS: u64 = 120;

/// Half of each tier's in-flight capacity in template.yaml (MaximumConcurrency × BatchSize:
/// 10, 25, 40, 20, 10), so that while another agency waits, half of a tier's deliveries are
/// left to reach that agency's work.
pub const DEFAULT_IN_FLIGHT_CAPS: &str = "5,12,20,10,5";

/// Half of each tier's in-flight capacity in template.yaml (MaximumConcurrency × BatchSize), as
/// the caps, except on the tiers whose event source mapping waits to fill its batches (low and
/// background: 5 s and 10 s batching windows), which get their whole capacity. There a window
/// smaller than the pollers' batches leaves each poller holding part of a batch, waiting out
/// its batching window for runs that cannot be sent until those it holds start: a lone
/// agency's background backlog drained at about one task a second. Elsewhere another agency's
/// work sent now waits behind at most half a round of deliveries, and since runs leave the
/// window as they start (each refilling it), an agency alone still keeps every worker busy. (A
/// window of the whole capacity measured 3.7× on the fair-share bench, BENCHMARKS "Fair
/// share"; half of it 1.7×.) `infra/local/tests/dispatch_windows.rs` checks the template.
pub const DEFAULT_DISPATCH_WINDOWS: &str = "5,12,20,20,10";

/// Per-agency quotas, each refused with a 429 once used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// API requests per second, sustained (`QUOTA_REQUESTS_PER_SECOND`, default 50).
    pub requests_per_second: u64,
    /// API requests an idle agency may send at once (`QUOTA_REQUEST_BURST`, default 100).
    pub request_burst: u64,
    /// Batch items created per UTC day (`QUOTA_BATCH_ITEMS_PER_DAY`, default 1,000,000).
    pub batch_items_per_day: u64,
    /// Tasks an agency may have open at once, batch tasks excepted (`QUOTA_OPEN_TASKS`,
    /// default 100,000).
    pub open_tasks: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            requests_per_second: 50,
            request_burst: 100,
            batch_items_per_day: 1_000_000,
            open_tasks: 100_000,
        }
    }
}

impl Config {
    pub fn from_env() -> Result<Self, AppError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads configuration through `lookup`, so in-process hosts can give each
    /// function its own environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, AppError> {
        let required = |key: &str| {
            lookup(key)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| AppError::internal(format!("environment variable {key} is not set")))
        };
        let mut queue_urls = BTreeMap::new();
        let mut dlq_urls = BTreeMap::new();
        for tier in Priority::ALL {
            let suffix = tier.as_str().to_ascii_uppercase();
            queue_urls.insert(*tier, required(&format!("QUEUE_URL_{suffix}"))?);
            dlq_urls.insert(*tier, required(&format!("DLQ_URL_{suffix}"))?);
        }
        let number = |key: &str, default: f64| -> Result<f64, AppError> {
            match lookup(key).filter(|v| !v.is_empty()) {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| AppError::internal(format!("{key} must be a number"))),
            }
        };
        Ok(Self {
            table_name: required("TABLE_NAME")?,
            attachments_bucket: required("ATTACHMENTS_BUCKET")?,
            http_allowed_hosts: lookup(ALLOWED_HOSTS_VAR).unwrap_or_default(),
            runtime_api: lookup("AWS_LAMBDA_RUNTIME_API"),
            chain_state_machine_arn: required("CHAIN_STATE_MACHINE_ARN")?,
            batch_bucket: required("BATCH_BUCKET")?,
            batch_state_machine_arn: required("BATCH_STATE_MACHINE_ARN")?,
            batch_preparation_queue_url: required("BATCH_PREPARATION_QUEUE_URL")?,
            queue_urls,
            dlq_urls,
            lease_seconds: number("LEASE_SECONDS", DEFAULT_LEASE_SECONDS as f64)? as u64,
            aging_fraction: number("AGING_FRACTION", 0.5)?,
            quotas: Quotas::from_lookup(&lookup)?,
            in_flight_caps: per_tier(
                "AGENCY_IN_FLIGHT_CAPS",
                lookup("AGENCY_IN_FLIGHT_CAPS")
                    .filter(|v| !v.is_empty())
                    .as_deref()
                    .unwrap_or(DEFAULT_IN_FLIGHT_CAPS),
            )?,
            dispatch_windows: per_tier(
                "AGENCY_DISPATCH_WINDOWS",
                lookup("AGENCY_DISPATCH_WINDOWS")
                    .filter(|v| !v.is_empty())
                    .as_deref()
                    .unwrap_or(DEFAULT_DISPATCH_WINDOWS),
            )?,
            fair_share: FairShare::parse(&lookup("FAIR_SHARE").unwrap_or_default())?,
        })
    }

    /// The tier whose queue (or DLQ) has this URL or ARN suffix.
    pub fn tier_of_queue(&self, queue: &str) -> Option<Priority> {
        let name = queue.rsplit([':', '/']).next()?;
        self.queue_urls
            .iter()
            .find(|(_, url)| url.rsplit('/').next() == Some(name))
            .map(|(tier, _)| *tier)
    }
}

impl Quotas {
    fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, AppError> {
        let defaults = Self::default();
        // A quota of 0 would refuse everything; a typo must fail the cold start, not every request.
        let positive = |key: &str, default: u64| match lookup(key).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(v) => v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                AppError::internal(format!("{key} must be a whole number of at least 1"))
            }),
        };
        let quotas = Self {
            requests_per_second: positive(
                "QUOTA_REQUESTS_PER_SECOND",
                defaults.requests_per_second,
            )?,
            request_burst: positive("QUOTA_REQUEST_BURST", defaults.request_burst)?,
            batch_items_per_day: positive(
                "QUOTA_BATCH_ITEMS_PER_DAY",
                defaults.batch_items_per_day,
            )?,
            open_tasks: positive("QUOTA_OPEN_TASKS", defaults.open_tasks)?,
        };
        Ok(quotas)
    }
}

/// The largest cap or window per tier: each is a map of that many leases in one item (at most
/// ~70 bytes an entry: ~70 KB, far under DynamoDB's 400 KB), and a refill's query reads at most
/// that many parked dispatches (DynamoDB returns up to 1 MB a page).
pub const MAX_PER_TIER: u32 = 1_000;

/// Parses one number per tier, in tier order; a missing, zero, too large or non-numeric one
/// fails the cold start.
fn per_tier(variable: &str, value: &str) -> Result<BTreeMap<Priority, u32>, AppError> {
    let caps: Vec<Option<u32>> = value
        .split(',')
        .map(|cap| {
            cap.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_PER_TIER).contains(n))
        })
        .collect();
    if caps.len() != Priority::ALL.len() || caps.iter().any(Option::is_none) {
        return Err(AppError::internal(format!(
            "{variable} must be {} whole numbers from 1 to {MAX_PER_TIER} (critical,high,normal,low,background), not {value:?}",
            Priority::ALL.len()
        )));
    }
    Ok(Priority::ALL
        .iter()
        .copied()
        .zip(caps.into_iter().flatten())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_share_is_the_table_unless_sqs_fair_queues_are_named() {
        assert_eq!(FairShare::parse("").unwrap(), FairShare::Table);
        assert_eq!(FairShare::parse("table").unwrap(), FairShare::Table);
        assert_eq!(
            FairShare::parse("sqs-fair-queues").unwrap(),
            FairShare::SqsFairQueues
        );
        let err = FairShare::parse("sqs").unwrap_err();
        assert!(err.to_string().contains("FAIR_SHARE"), "{err}");
    }

    #[test]
    fn caps_and_windows_take_one_number_per_tier_from_1_to_the_largest_an_item_holds() {
        let parsed = per_tier("AGENCY_DISPATCH_WINDOWS", "1,2,3,4,1000").unwrap();
        assert_eq!(parsed[&Priority::Background], MAX_PER_TIER);
        for bad in ["1,2,3,4,1001", "0,2,3,4,5", "1,2,3,4", "1,2,x,4,5"] {
            let err = per_tier("AGENCY_DISPATCH_WINDOWS", bad).unwrap_err();
            assert!(
                err.to_string().contains("AGENCY_DISPATCH_WINDOWS"),
                "{bad}: {err}"
            );
        }
    }
}
