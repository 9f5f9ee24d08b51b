//! A Catch's error as one readable line.

use serde_json::Value;

/// `{"Error": "...", "Cause": "..."}` from a Catch, as one readable line. Without a cause (the
/// engine does not always carry it), the last error the step's runs recorded stands in, so the
/// real failure is never replaced by the bare retry classification.
pub(crate) fn describe_error(error: &Value, last_run_error: Option<&str>) -> String {
    let name = error
        .get("Error")
        .and_then(Value::as_str)
        .unwrap_or("error");
    let cause = error
        .get("Cause")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .or(last_run_error)
        .unwrap_or("");
    match name {
        "States.Timeout" | "States.HeartbeatTimeout" => match last_run_error {
            Some(last) => format!(
                "{name}: the step did not finish (or heartbeat) in time; its last error: {last}"
            ),
            None => format!("{name}: the step did not finish (or heartbeat) in time"),
        },
        _ if cause.is_empty() => name.to_owned(),
        _ => format!("{name}: {cause}"),
    }
}

#[cfg(test)]
mod tests {
    use super::describe_error;
    use serde_json::json;

    #[test]
    fn a_catch_error_reads_as_one_line() {
        assert_eq!(
            describe_error(
                &json!({"Error": "States.HeartbeatTimeout", "Cause": "x"}),
                None
            ),
            "States.HeartbeatTimeout: the step did not finish (or heartbeat) in time"
        );
        assert_eq!(
            describe_error(&json!({"Error": "States.Timeout"}), None),
            "States.Timeout: the step did not finish (or heartbeat) in time"
        );
        assert_eq!(
            describe_error(
                &json!({"Error": "Taskflow.Permanent", "Cause": "POST returned 422"}),
                Some("an older error")
            ),
            "Taskflow.Permanent: POST returned 422"
        );
        assert_eq!(describe_error(&json!({"Error": "Boom"}), None), "Boom");
        assert_eq!(describe_error(&json!({}), None), "error");
    }

    /// The retry classification alone hid the real error (issue 19): the last run's error
    /// stands beside it.
    #[test]
    fn a_failure_without_its_cause_keeps_the_last_real_error() {
        let last = Some("POST https://crm.example/accounts: dns error: no such host");
        assert_eq!(
            describe_error(&json!({"Error": "Taskflow.Retryable.3"}), last),
            "Taskflow.Retryable.3: POST https://crm.example/accounts: dns error: no such host"
        );
        assert_eq!(
            describe_error(&json!({"Error": "Taskflow.Retryable.3", "Cause": ""}), last),
            "Taskflow.Retryable.3: POST https://crm.example/accounts: dns error: no such host"
        );
        assert_eq!(
            describe_error(&json!({"Error": "States.Timeout"}), Some("slow upstream")),
            "States.Timeout: the step did not finish (or heartbeat) in time; its last error: slow upstream"
        );
    }
}
