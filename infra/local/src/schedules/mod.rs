//! A local stand-in for EventBridge Scheduler. The API really creates its schedules on the
//! emulator (moto keeps them but fires nothing); this lists them from there, computes their
//! firing times with the same code the API shows `nextFirings` with (expression, time zone,
//! DST rules, start and end), and invokes each one's target with its Input, the scheduled time
//! filled in as Scheduler fills `<aws.scheduler.scheduled-time>`.
//!
//! At-least-once, as Scheduler: a schedule first seen by this host fires from a minute before
//! the host started, so a restart re-fires at most the firing times of that minute, and the
//! target's idempotency key (schedule and scheduled time) makes each one task.
//!
//! A failed invocation is retried as the target's retry policy says (its retry count, within
//! its maximum event age; Scheduler's defaults, 185 and a day, where it has none), each wait
//! twice the last, and then sent to the target's dead-letter queue with Scheduler's error
//! attributes. Nothing a firing could not deliver is dropped without a trace.

use anyhow::{Context, Result};
use aws_sdk_scheduler::types::ScheduleState;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::Value;
use shared::domain::schedule::{parse_time_zone, Expression};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

mod delivery;

/// Invokes one function with an event; `Err` is an invocation error.
pub type Target =
    Arc<dyn Fn(Value) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send>> + Send + Sync>;

/// How far before its start a host looks for firings of a schedule it has not seen.
pub const LOOKBACK: Duration = Duration::minutes(1);
/// Firings of one schedule one pass sends at most (a host that slept catches up gradually).
const MAX_PER_PASS: usize = 10;
/// Scheduler's placeholder in a target's Input.
const SCHEDULED_TIME: &str = "<aws.scheduler.scheduled-time>";

/// One invocation a pass made.
#[derive(Debug, Clone)]
pub struct Firing {
    pub schedule: String,
    pub scheduled_time: DateTime<Utc>,
    pub outcome: Result<Value, String>,
}

pub struct LocalScheduler {
    client: aws_sdk_scheduler::Client,
    /// Sends what a target could not take to its dead-letter queue.
    sqs: aws_sdk_sqs::Client,
    group: String,
    /// Function ARN → how to invoke it.
    targets: HashMap<String, Target>,
    /// Where a schedule not seen before starts looking.
    started: DateTime<Utc>,
    /// Per schedule name, the last firing time handled.
    cursors: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl LocalScheduler {
    pub fn new(
        client: aws_sdk_scheduler::Client,
        sqs: aws_sdk_sqs::Client,
        group: impl Into<String>,
        targets: HashMap<String, Target>,
        started: DateTime<Utc>,
    ) -> Self {
        Self {
            client,
            sqs,
            group: group.into(),
            targets,
            started,
            cursors: Mutex::default(),
        }
    }

    /// Creates the schedule group on the emulator (the template's `AWS::Scheduler::ScheduleGroup`).
    pub async fn create_group(&self) -> Result<()> {
        match self
            .client
            .create_schedule_group()
            .name(&self.group)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conflict_exception()) =>
            {
                Ok(())
            }
            Err(err) => Err(anyhow::anyhow!(
                "{}",
                aws_sdk_scheduler::error::DisplayErrorContext(err)
            ))
            .with_context(|| format!("creating schedule group {}", self.group)),
        }
    }

    /// Fires every firing due in (last handled, `now`] of each enabled schedule in the group,
    /// oldest first, waiting for each invocation. Tests call it with the clock they choose.
    pub async fn fire_due(&self, now: DateTime<Utc>) -> Result<Vec<Firing>> {
        let mut fired = Vec::new();
        for name in self.schedule_names().await? {
            let schedule = self
                .client
                .get_schedule()
                .group_name(&self.group)
                .name(&name)
                .send()
                .await;
            // Deleted between the list and the get.
            let Ok(schedule) = schedule else { continue };
            if schedule.state() != Some(&ScheduleState::Enabled) {
                // A disabled schedule misses its firings; resumed, it goes on from then.
                self.lock().insert(name.clone(), now);
                continue;
            }
            let Some(target) = schedule.target() else {
                continue;
            };
            let Some(invoke) = self.targets.get(target.arn()) else {
                tracing::warn!(schedule = %name, arn = target.arn(), "no local function for this target");
                continue;
            };
            let due = self.due(&name, &schedule, now);
            for at in due {
                let stamp = at.to_rfc3339_opts(SecondsFormat::Secs, true);
                let input = target
                    .input()
                    .unwrap_or("{}")
                    .replace(SCHEDULED_TIME, &stamp);
                let outcome = self
                    .deliver(invoke, target, schedule.arn().unwrap_or(&name), &input, at)
                    .await;
                self.lock().insert(name.clone(), at);
                fired.push(Firing {
                    schedule: name.clone(),
                    scheduled_time: at,
                    outcome,
                });
            }
        }
        Ok(fired)
    }

    async fn schedule_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_schedules()
                .group_name(&self.group)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!("{}", aws_sdk_scheduler::error::DisplayErrorContext(e))
                })
                .context("listing schedules")?;
            names.extend(
                page.schedules()
                    .iter()
                    .filter_map(|s| s.name().map(str::to_owned)),
            );
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(names);
            }
        }
    }

    /// The firing times of one schedule in (its cursor, `now`], inside its dates.
    fn due(
        &self,
        name: &str,
        schedule: &aws_sdk_scheduler::operation::get_schedule::GetScheduleOutput,
        now: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        let Some(expression) = schedule
            .schedule_expression()
            .and_then(|e| Expression::parse(e).ok())
        else {
            return Vec::new();
        };
        let tz = schedule
            .schedule_expression_timezone()
            .and_then(|z| parse_time_zone(z).ok())
            .unwrap_or(chrono_tz::UTC);
        let time = |t: Option<&aws_sdk_scheduler::primitives::DateTime>| {
            t.and_then(|t| DateTime::from_timestamp(t.secs(), 0))
        };
        let (start, end) = (time(schedule.start_date()), time(schedule.end_date()));
        // A rate without a start runs from when it was last set, as Scheduler's does.
        let anchor = start
            .or_else(|| time(schedule.last_modification_date()))
            .unwrap_or(self.started);
        let mut cursor = self
            .lock()
            .get(name)
            .copied()
            .unwrap_or(self.started - LOOKBACK);
        // Nothing fires before the schedule was last set (created, edited or resumed), nor
        // before its start.
        for floor in [time(schedule.last_modification_date()), start]
            .into_iter()
            .flatten()
        {
            cursor = cursor.max(floor - Duration::seconds(1));
        }
        let mut due = Vec::new();
        while due.len() < MAX_PER_PASS {
            let Some(next) = expression.next_after(cursor, tz, anchor) else {
                break;
            };
            if next > now || end.is_some_and(|end| next >= end) {
                break;
            }
            due.push(next);
            cursor = next;
        }
        due
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, DateTime<Utc>>> {
        self.cursors.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Fires due schedules every `tick` until shutdown (Scheduler's precision is a minute).
pub fn spawn(
    scheduler: Arc<LocalScheduler>,
    tick: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    if let Err(err) = scheduler.fire_due(Utc::now()).await {
                        tracing::warn!(error = %err, "local schedules: a pass failed; the next one retries");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    })
}

impl LocalScheduler {
    /// A fresh host on the same emulator and targets, started at `started` (its cursors
    /// empty): what a restart of the host would run.
    pub fn restarted(&self, started: DateTime<Utc>) -> Self {
        Self::new(
            self.client.clone(),
            self.sqs.clone(),
            self.group.clone(),
            self.targets.clone(),
            started,
        )
    }
}

/// The schedule runner called in this process, configured from its template environment.
pub fn in_process_target(
    spec: &crate::provision::FunctionSpec,
    clients: &shared::aws::AwsClients,
) -> Result<Target> {
    let config = shared::config::Config::from_lookup(|key| spec.environment.get(key).cloned())
        .map_err(|e| anyhow::anyhow!("{}: {e}", spec.logical_id))?;
    let runner = Arc::new(schedule_runner::ScheduleRunner::from_config(
        &config, clients,
    ));
    Ok(Arc::new(move |event| {
        let runner = runner.clone();
        Box::pin(async move { runner.handle(&event).await.map_err(|e| e.to_string()) })
    }))
}

/// The schedule runner's binary under the local Lambda runtime.
pub fn process_target(runtime: crate::runtime::FunctionRuntime) -> Target {
    Arc::new(move |event| {
        let runtime = runtime.clone();
        Box::pin(async move {
            let body = runtime
                .invoke(event.to_string().into_bytes())
                .await
                .map_err(|e| e.to_string())?;
            serde_json::from_slice(&body).map_err(|e| format!("unreadable answer: {e}"))
        })
    })
}
