//! CloudWatch metrics as Embedded Metric Format log lines: no API calls, the
//! Lambda log pipeline turns them into metrics.

use serde_json::json;
use shared::service::RunReport;
use std::io::Write;

pub const NAMESPACE: &str = "Taskflow";

pub fn emit(report: &RunReport) {
    let line = json!({
        "_aws": {
            "Timestamp": chrono::Utc::now().timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Tier"], ["Tier", "Outcome"]],
                "Metrics": [
                    {"Name": "QueueWaitMs", "Unit": "Milliseconds"},
                    {"Name": "RunMs", "Unit": "Milliseconds"},
                    {"Name": "Runs", "Unit": "Count"}
                ]
            }]
        },
        "Tier": report.tier.as_str(),
        "Outcome": report.outcome,
        "QueueWaitMs": report.wait_ms.unwrap_or(0),
        "RunMs": report.run_ms,
        "Runs": 1,
        "Attempt": report.attempt,
    });
    if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() {
        // EMF must be the whole log line, so it bypasses the log formatter.
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    } else {
        tracing::debug!(metrics = %line, "run metrics");
    }
}
