//! Schedules end to end: the API creates them on the emulator's EventBridge Scheduler, the
//! host fires them (at times the test chooses) into the schedule runner's binary, and each
//! firing is one task, however often it is fired: across a host restart too. The overlap
//! policies and a daylight-saving change, on a stack of their own.

use chrono::{DateTime, Utc};
use integration_tests::{isolated_stack, unique_agency, Client};
use local_stack::schedules::{Firing, LocalScheduler};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn create(boss: &Client, body: Value) -> Value {
    let reply = boss.post("/api/schedules", &body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:#}", reply.body);
    reply.body
}

fn schedule(name: &str, expression: &str, zone: &str, policy: &str) -> Value {
    json!({
        "name": name,
        "expression": expression,
        "timeZone": zone,
        "overlapPolicy": policy,
        "template": {"title": name, "priority": "high", "metadata": {"team": "ops"}}
    })
}

/// The firings of one schedule in a pass, each with the task it answered.
fn of(fired: &[Firing], id: &str) -> Vec<(DateTime<Utc>, Value)> {
    fired
        .iter()
        .filter(|f| f.schedule == id)
        .map(|f| {
            let answer = f.outcome.clone().expect("the runner answered");
            (f.scheduled_time, answer["run"].clone())
        })
        .collect()
}

async fn fire(scheduler: &LocalScheduler, now: DateTime<Utc>) -> Vec<Firing> {
    scheduler.fire_due(now).await.expect("a pass")
}

#[tokio::test]
async fn schedules_fire_on_time_once_across_a_restart_by_their_policies_and_dst() {
    let stack = isolated_stack("taskflow-schedules").await;
    let scheduler = stack.schedules().expect("the host fires schedules").clone();
    let boss = Client::as_user(&unique_agency("sched"), "boss", "manager").at(&stack.api_url());

    // A bad expression is a 400 that explains it; nothing reaches Scheduler.
    let bad = boss
        .post(
            "/api/schedules",
            &schedule("Bad", "cron(0 6 * * MON *)", "UTC", "skip"),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body["error"]["fields"]["expression"]
        .as_str()
        .unwrap()
        .contains("use ? in one of them"));

    // On time: nothing before the firing, the task at it, linked to the schedule.
    let daily = create(
        &boss,
        schedule("Daily", "cron(0 6 * * ? *)", "UTC", "allow"),
    )
    .await;
    let daily_id = daily["id"].as_str().unwrap().to_owned();
    let due = at(daily["nextFirings"][0].as_str().unwrap());
    assert!(of(
        &fire(&scheduler, due - chrono::Duration::seconds(1)).await,
        &daily_id
    )
    .is_empty());
    let first = of(&fire(&scheduler, due).await, &daily_id);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(
        (first[0].0, &first[0].1["outcome"]),
        (due, &json!("created"))
    );
    let task_id = first[0].1["taskId"].as_str().unwrap().to_owned();
    let task = boss.get(&format!("/api/tasks/{task_id}")).await.body;
    assert_eq!(task["metadata"]["scheduleId"], json!(daily_id));
    assert_eq!(
        task["metadata"]["scheduledAt"],
        json!(due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    );
    assert_eq!(task["metadata"]["team"], "ops");

    // A restarted host fires the same time again: the same task, one run.
    let restarted = scheduler.restarted(Utc::now());
    let again = of(&fire(&restarted, due).await, &daily_id);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].1["taskId"], json!(task_id));
    let view = boss.get(&format!("/api/schedules/{daily_id}")).await.body;
    assert_eq!(view["lastRuns"].as_array().unwrap().len(), 1, "{view:#}");
    let tasks = boss.get("/api/tasks").await.body;
    assert_eq!(tasks["items"].as_array().unwrap().len(), 1, "{tasks:#}");
    let deleted = boss.delete(&format!("/api/schedules/{daily_id}")).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{:#}", deleted.body);

    // The overlap policies, over two firings a day apart while the first task is open.
    let skip = create(&boss, schedule("Skip", "cron(0 7 * * ? *)", "UTC", "skip")).await;
    let cancel = create(
        &boss,
        schedule("Cancel", "cron(0 7 * * ? *)", "UTC", "cancel_previous"),
    )
    .await;
    let t1 = at(skip["nextFirings"][0].as_str().unwrap());
    let fired = fire(&restarted, t1 + chrono::Duration::days(1)).await;
    let skips = of(&fired, skip["id"].as_str().unwrap());
    let cancels = of(&fired, cancel["id"].as_str().unwrap());
    assert_eq!(skips.len(), 2, "{skips:?}");
    assert_eq!(skips[1].1["outcome"], "skipped");
    assert_eq!(skips[1].1["previousTaskId"], skips[0].1["taskId"]);
    assert_eq!(cancels.len(), 2, "{cancels:?}");
    assert_eq!(cancels[1].1["previousTaskId"], cancels[0].1["taskId"]);
    let old = cancels[0].1["taskId"].as_str().unwrap();
    let new = cancels[1].1["taskId"].as_str().unwrap();
    assert_eq!(
        boss.get(&format!("/api/tasks/{old}")).await.body["status"],
        "cancelled"
    );
    assert_eq!(
        boss.get(&format!("/api/tasks/{new}")).await.body["status"],
        "pending"
    );
    for s in [&skip, &cancel] {
        let path = format!("/api/schedules/{}", s["id"].as_str().unwrap());
        assert_eq!(boss.delete(&path).await.status, StatusCode::NO_CONTENT);
        assert_eq!(boss.get(&path).await.status, StatusCode::NOT_FOUND);
    }

    // A paused schedule misses its firings; resumed, it goes on from then, without them.
    let paused = create(
        &boss,
        schedule("Paused", "cron(0 8 * * ? *)", "UTC", "allow"),
    )
    .await;
    let path = format!("/api/schedules/{}", paused["id"].as_str().unwrap());
    let t = at(paused["nextFirings"][0].as_str().unwrap());
    let reply = boss.post(&format!("{path}/pause"), &json!({})).await;
    assert_eq!(reply.status, StatusCode::OK, "{:#}", reply.body);
    assert!(of(&fire(&restarted, t).await, paused["id"].as_str().unwrap()).is_empty());
    let reply = boss.post(&format!("{path}/resume"), &json!({})).await;
    assert_eq!(reply.body["state"], "enabled");
    let resumed = of(
        &fire(&restarted, t + chrono::Duration::days(1)).await,
        paused["id"].as_str().unwrap(),
    );
    let times: Vec<DateTime<Utc>> = resumed.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, [t + chrono::Duration::days(1)]);
    assert_eq!(boss.delete(&path).await.status, StatusCode::NO_CONTENT);

    // DST in London: 01:30 on the last Sunday of March 2027 does not exist (no firing);
    // on the last Sunday of October it happens twice (one firing, the first: 00:30 UTC).
    let dst = create(
        &boss,
        schedule("Dst", "cron(30 1 ? 3,10 1L 2027)", "Europe/London", "allow"),
    )
    .await;
    assert_eq!(dst["nextFirings"], json!(["2027-10-31T00:30:00Z"]));
    let fired_all = fire(&restarted, at("2027-12-01T00:00:00Z")).await;
    let fired = of(&fired_all, dst["id"].as_str().unwrap());
    let times: Vec<DateTime<Utc>> = fired.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, [at("2027-10-31T00:30:00Z")]);
    // The deleted schedules are gone from Scheduler too: none of them fired in that pass.
    let names: std::collections::BTreeSet<&str> =
        fired_all.iter().map(|f| f.schedule.as_str()).collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [dst["id"].as_str().unwrap()]
    );
}

/// The DynamoDB adapter on moto: the per-agency count moves with creates and deletes in their
/// transactions (the quota's 429), versions guard changes, runs come back newest first.
#[tokio::test]
async fn the_schedule_store_keeps_its_count_versions_and_runs_on_dynamodb() {
    use shared::domain::schedule::{RunOutcome, ScheduleRun};
    use shared::ports::ScheduleStore;
    use shared::store::dynamo::DynamoScheduleStore;

    let stack = integration_tests::stack();
    let store = DynamoScheduleStore::new(stack.clients().await.dynamodb, &stack.config.table_name);
    let agency = unique_agency("store");
    let first = stored_schedule(&agency);
    let second = stored_schedule(&agency);
    store.create(&first, 1).await.expect("the first fits");
    let refused = store.create(&second, 1).await.unwrap_err();
    assert_eq!(refused.status_code(), 429, "{refused:?}");
    assert_eq!(store.list(&first.agency_id).await.unwrap().len(), 1);

    // The template comes back whole; the list leaves it out.
    let got = store
        .get(&first.agency_id, first.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, first);
    assert_eq!(
        store.list(&first.agency_id).await.unwrap()[0].template,
        Value::Null
    );

    let mut changed = first.clone();
    changed.version = 2;
    changed.expression = "rate(5 minutes)".into();
    store.replace(&changed, 1).await.unwrap();
    let stale = store.replace(&changed, 1).await.unwrap_err();
    assert_eq!(stale.status_code(), 409, "{stale:?}");
    assert_eq!(
        store
            .delete(&first.agency_id, first.id, 1)
            .await
            .unwrap_err()
            .status_code(),
        409
    );

    for (day, outcome) in [
        (7, RunOutcome::Created),
        (8, RunOutcome::Skipped),
        (9, RunOutcome::Created),
    ] {
        let run = ScheduleRun {
            scheduled_at: at(&format!("2026-12-0{day}T06:00:00Z")),
            fired_at: Utc::now(),
            outcome,
            task_id: None,
            previous_task_id: None,
        };
        store
            .record_run(&first.agency_id, first.id, &run)
            .await
            .unwrap();
    }
    let runs = store.runs(&first.agency_id, first.id, 2).await.unwrap();
    let times: Vec<DateTime<Utc>> = runs.iter().map(|r| r.scheduled_at).collect();
    assert_eq!(
        times,
        [at("2026-12-09T06:00:00Z"), at("2026-12-08T06:00:00Z")]
    );

    // Deleting frees the place: the second schedule fits now.
    store.delete(&first.agency_id, first.id, 2).await.unwrap();
    assert!(store
        .get(&first.agency_id, first.id)
        .await
        .unwrap()
        .is_none());
    store.create(&second, 1).await.expect("a place was freed");
}

fn stored_schedule(agency: &str) -> shared::domain::schedule::Schedule {
    use shared::domain::schedule::{OverlapPolicy, Schedule, ScheduleState};
    // Whole milliseconds, as the store keeps them.
    let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    Schedule {
        id: shared::domain::ScheduleId::generate(),
        agency_id: shared::domain::AgencyId::parse(agency).unwrap(),
        name: "Reconcile invoices".into(),
        expression: "cron(0 6 ? * MON-FRI *)".into(),
        time_zone: "Europe/London".into(),
        start_at: None,
        end_at: None,
        overlap_policy: OverlapPolicy::Skip,
        state: ScheduleState::Enabled,
        template: json!({"title": "Reconcile invoices", "metadata": {"n": 1.5, "k": [1, "x"]}}),
        created_by: shared::domain::UserId::parse("boss").unwrap(),
        created_at: now,
        updated_at: now,
        version: 1,
    }
}
