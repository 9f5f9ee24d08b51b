//! The local Scheduler's delivery on moto: a failing target is retried by the schedule's retry
//! policy, and a firing that still fails goes to the dead-letter queue with Scheduler's error
//! attributes; one that recovers within its retries is delivered and dead-letters nothing.

use aws_sdk_scheduler::types::{
    DeadLetterConfig, FlexibleTimeWindow, FlexibleTimeWindowMode, RetryPolicy, Target,
};
use chrono::{DateTime, Duration, Utc};
use local_stack::emulator::{free_port, sdk_config, Emulator};
use local_stack::schedules::{self, LocalScheduler};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

const GROUP: &str = "local-retries";
const TARGET: &str = "arn:aws:lambda:us-east-1:123456789012:function:runner";

fn venv() -> PathBuf {
    std::env::var_os("MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv")))
}

/// The next 06:00 UTC after `now`: the daily schedule's first firing.
fn next_six(now: DateTime<Utc>) -> DateTime<Utc> {
    let today = now.date_naive().and_hms_opt(6, 0, 0).unwrap().and_utc();
    if today > now {
        today
    } else {
        today + Duration::days(1)
    }
}

/// A target that fails its first `failures` invocations, counting them all.
fn flaky(failures: u32, calls: &Arc<AtomicU32>) -> schedules::Target {
    let calls = calls.clone();
    Arc::new(move |event: Value| {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if call < failures {
                Err(format!("the runner is down (call {call})"))
            } else {
                Ok(json!({"run": "created", "event": event}))
            }
        })
    })
}

async fn dead_letters(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    sqs.receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
}

#[tokio::test]
async fn a_failing_target_is_retried_by_its_policy_then_dead_lettered_and_a_recovering_one_is_not()
{
    let emulator = Emulator::start(&venv(), free_port()).await.unwrap();
    let sdk = sdk_config(&emulator.endpoint).await;
    let (scheduler, sqs) = (
        aws_sdk_scheduler::Client::new(&sdk),
        aws_sdk_sqs::Client::new(&sdk),
    );
    let dlq_url = sqs
        .create_queue()
        .queue_name("schedule-dlq")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = "arn:aws:sqs:us-east-1:123456789012:schedule-dlq";
    let started = Utc::now();
    let calls = Arc::new(AtomicU32::new(0));

    for (name, failures) in [("down", 100), ("recovers", 2)] {
        calls.store(0, Ordering::SeqCst);
        let host = LocalScheduler::new(
            scheduler.clone(),
            sqs.clone(),
            GROUP,
            HashMap::from([(TARGET.to_owned(), flaky(failures, &calls))]),
            started,
        );
        host.create_group().await.unwrap();
        scheduler
            .create_schedule()
            .group_name(GROUP)
            .name(name)
            .schedule_expression("cron(0 6 * * ? *)")
            .flexible_time_window(
                FlexibleTimeWindow::builder()
                    .mode(FlexibleTimeWindowMode::Off)
                    .build()
                    .unwrap(),
            )
            .target(
                Target::builder()
                    .arn(TARGET)
                    .role_arn("arn:aws:iam::123456789012:role/scheduler")
                    .input(
                        r#"{"scheduleId": "s1", "scheduledAt": "<aws.scheduler.scheduled-time>"}"#,
                    )
                    .retry_policy(
                        RetryPolicy::builder()
                            .maximum_retry_attempts(3)
                            .maximum_event_age_in_seconds(600)
                            .build(),
                    )
                    .dead_letter_config(DeadLetterConfig::builder().arn(dlq_arn).build())
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        let due = next_six(started);
        let fired = host.fire_due(due).await.unwrap();
        let mine: Vec<_> = fired.iter().filter(|f| f.schedule == name).collect();
        assert_eq!(mine.len(), 1, "{fired:?}");
        let stamp = due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let letters = dead_letters(&sqs, &dlq_url).await;
        if name == "down" {
            assert_eq!(calls.load(Ordering::SeqCst), 4, "one try and three retries");
            assert!(mine[0].outcome.is_err());
            assert_eq!(letters.len(), 1, "{letters:?}");
            let letter = &letters[0];
            let body: Value = serde_json::from_str(letter.body().unwrap()).unwrap();
            assert_eq!(body["scheduledAt"], stamp.as_str());
            let attribute = |key: &str| {
                letter.message_attributes().unwrap()[key]
                    .string_value()
                    .unwrap()
                    .to_owned()
            };
            assert_eq!(attribute("RETRY_ATTEMPTS"), "3");
            assert_eq!(attribute("TARGET_ARN"), TARGET);
            assert!(attribute("ERROR_MESSAGE").contains("the runner is down"));
            assert!(attribute("SCHEDULE_ARN").ends_with(&format!("{GROUP}/down")));
        } else {
            assert_eq!(
                calls.load(Ordering::SeqCst),
                3,
                "two failures, then delivered"
            );
            assert_eq!(mine[0].outcome.as_ref().unwrap()["run"], "created");
            assert!(letters.is_empty(), "{letters:?}");
        }
        scheduler
            .delete_schedule()
            .group_name(GROUP)
            .name(name)
            .send()
            .await
            .unwrap();
    }
}
