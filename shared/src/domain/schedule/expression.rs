//! A schedule's expression, `cron(...)` or `rate(value unit)`, and its firing times.

use super::cron::Cron;
use super::ExpressionError;
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

/// The largest rate value, in minutes (about 10 years): keeps the arithmetic in range.
const MAX_RATE_MINUTES: i64 = 10 * 366 * 24 * 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expression {
    Cron(Box<Cron>),
    /// A fixed period. A day is 24 hours whatever the time zone does, as on Scheduler.
    Rate(Duration),
}

impl Expression {
    pub fn parse(raw: &str) -> Result<Self, ExpressionError> {
        let raw = raw.trim();
        let inner = |prefix: &str| {
            raw.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(')'))
        };
        if let Some(body) = inner("cron(") {
            return Cron::parse(body).map(|cron| Self::Cron(Box::new(cron)));
        }
        if let Some(body) = inner("rate(") {
            return parse_rate(body).map(Self::Rate);
        }
        if raw.starts_with("at(") {
            return Err(ExpressionError(
                "one-time at(...) schedules are not supported; use cron(...) or rate(...)".into(),
            ));
        }
        Err(ExpressionError(
            "must be cron(minutes hours day-of-month month day-of-week year) or rate(value unit), \
             e.g. cron(0 6 ? * MON-FRI *) or rate(15 minutes)"
                .into(),
        ))
    }

    /// The first firing strictly after `after`. A rate fires at `anchor` (the start date, or
    /// when the schedule was created) and every period after it; a cron ignores the anchor.
    pub fn next_after(
        &self,
        after: DateTime<Utc>,
        tz: Tz,
        anchor: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron(cron) => cron.next_after(after, tz),
            Self::Rate(period) => {
                if anchor > after {
                    return Some(anchor);
                }
                let periods = (after - anchor).num_seconds() / period.num_seconds() + 1;
                let next = anchor + *period * i32::try_from(periods).ok()?;
                Some(next)
            }
        }
    }
}

fn parse_rate(body: &str) -> Result<Duration, ExpressionError> {
    let err = |problem: String| ExpressionError(format!("rate: {problem}"));
    let parts: Vec<&str> = body.split_whitespace().collect();
    let [value, unit] = parts[..] else {
        return Err(err(format!(
            "needs a value and a unit, e.g. rate(5 minutes); got '{body}'"
        )));
    };
    let value: i64 = value
        .parse()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| err(format!("'{value}' is not a positive whole number")))?;
    let (minutes, singular) = match unit {
        "minute" | "minutes" => (1, unit == "minute"),
        "hour" | "hours" => (60, unit == "hour"),
        "day" | "days" => (24 * 60, unit == "day"),
        _ => {
            return Err(err(format!(
                "unit '{unit}' must be minute(s), hour(s) or day(s)"
            )))
        }
    };
    // Scheduler's own rule: 1 takes the singular, anything else the plural.
    if singular != (value == 1) {
        let fix = if value == 1 { "singular" } else { "plural" };
        return Err(err(format!("{value} takes the {fix} unit")));
    }
    let total = value.saturating_mul(minutes);
    if total > MAX_RATE_MINUTES {
        return Err(err("the period must be at most 10 years".into()));
    }
    Ok(Duration::minutes(total))
}
