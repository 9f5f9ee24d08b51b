//! Schedule use cases against in-memory ports: validation, quota, versions, the trigger kept
//! in step, and each overlap policy of a firing.

use super::*;
use crate::domain::schedule::{OverlapPolicy, RunOutcome};
use crate::domain::{AgencyId, Role, TaskStatus, UserId};
use crate::testing::{MemoryScheduleStore, MemoryWorld, RecordingTrigger};
use serde_json::json;

struct World {
    svc: ScheduleService,
    trigger: Arc<RecordingTrigger>,
}

fn world(limit: u32) -> World {
    let trigger = Arc::new(RecordingTrigger::default());
    let svc = ScheduleService {
        store: Arc::new(MemoryScheduleStore::default()),
        trigger: trigger.clone(),
        tasks: MemoryWorld::new().services().tasks,
        limit,
    };
    World { svc, trigger }
}

fn caller(role: Role) -> Caller {
    Caller {
        user: UserId::parse("boss").unwrap(),
        agency: AgencyId::parse("a1").unwrap(),
        role,
    }
}

fn body(policy: &str) -> Value {
    json!({
        "name": "Reconcile invoices",
        "expression": "cron(0 6 ? * MON-FRI *)",
        "timeZone": "Europe/London",
        "overlapPolicy": policy,
        "template": {"title": "Reconcile", "priority": "critical", "metadata": {"team": "ap"}}
    })
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn field_errors(err: AppError) -> Vec<(String, String)> {
    match err {
        AppError::Validation(errors) => {
            errors.iter().map(|(f, p)| (f.clone(), p.clone())).collect()
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[tokio::test]
async fn create_stores_triggers_and_shows_next_firings() {
    let w = world(10);
    let view = w
        .svc
        .create(&caller(Role::Manager), &body("skip"))
        .await
        .unwrap();
    assert_eq!(view.schedule.version, 1);
    assert_eq!(view.next_firings.len(), VIEW_FIRINGS);
    assert!(view.next_firings.windows(2).all(|p| p[0] < p[1]));
    let calls = w.trigger.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [format!(
            "put {} Enabled cron(0 6 ? * MON-FRI *)",
            view.schedule.id
        )]
    );
    let got = w
        .svc
        .get(&caller(Role::Member), view.schedule.id)
        .await
        .unwrap();
    assert_eq!(got.schedule, view.schedule);
    let listed = w.svc.list(&caller(Role::Member)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].get("template").is_none());
}

#[tokio::test]
async fn bad_fields_are_named_template_problems_under_template() {
    let w = world(10);
    let err = w
        .svc
        .create(
            &caller(Role::Manager),
            &json!({
                "name": "",
                "expression": "cron(0 6 * * MON *)",
                "timeZone": "Mars/Olympus",
                "startAt": "2026-12-02T00:00:00Z",
                "endAt": "2026-12-01T00:00:00Z",
                "overlapPolicy": "sometimes",
                "template": {"priority": "urgent", "metadata": {"scheduleId": "x"}},
                "extra": 1
            }),
        )
        .await
        .unwrap_err();
    let fields: Vec<String> = field_errors(err).into_iter().map(|(f, _)| f).collect();
    for expected in [
        "name",
        "expression",
        "timeZone",
        "endAt",
        "overlapPolicy",
        "template.title",
        "template.priority",
        "template.metadata.scheduleId",
        "extra",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} missing from {fields:?}"
        );
    }
    let err = w
        .svc
        .create(
            &caller(Role::Manager),
            &json!({"name": "x", "expression": "cron(0 6 * * MON *)", "template": {"title": "t"}}),
        )
        .await
        .unwrap_err();
    let problems = field_errors(err);
    assert_eq!(problems[0].0, "expression");
    assert!(
        problems[0].1.contains("use ? in one of them"),
        "{problems:?}"
    );
    assert!(w.trigger.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn members_read_managers_write() {
    let w = world(10);
    let err = w
        .svc
        .create(&caller(Role::Member), &body("skip"))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 403);
}

#[tokio::test]
async fn the_agency_limit_is_a_429_naming_the_quota() {
    let w = world(1);
    w.svc
        .create(&caller(Role::Manager), &body("skip"))
        .await
        .unwrap();
    let err = w
        .svc
        .create(&caller(Role::Manager), &body("skip"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AppError::QuotaExceeded {
                quota: SCHEDULES_QUOTA,
                limit: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_trigger_that_cannot_be_created_takes_the_schedule_back() {
    let w = world(10);
    *w.trigger.fail_next_put.lock().unwrap() = Some(AppError::Unavailable("scheduler".into()));
    let err = w
        .svc
        .create(&caller(Role::Manager), &body("skip"))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 503);
    assert!(w.svc.list(&caller(Role::Manager)).await.unwrap().is_empty());
}

#[tokio::test]
async fn pause_resume_update_delete_follow_versions_and_the_trigger() {
    let w = world(10);
    let boss = caller(Role::Manager);
    let id = w
        .svc
        .create(&boss, &body("skip"))
        .await
        .unwrap()
        .schedule
        .id;
    let paused = w
        .svc
        .set_state(&boss, id, ScheduleState::Paused, Some(1))
        .await
        .unwrap();
    assert_eq!(
        (paused.schedule.version, paused.schedule.state),
        (2, ScheduleState::Paused)
    );
    assert!(paused.next_firings.is_empty());
    let stale = w
        .svc
        .set_state(&boss, id, ScheduleState::Enabled, Some(1))
        .await
        .unwrap_err();
    assert_eq!(stale.status_code(), 409);
    let mut changed = body("allow");
    changed["expression"] = json!("rate(2 hours)");
    let updated = w.svc.update(&boss, id, &changed, Some(2)).await.unwrap();
    assert_eq!(
        updated.schedule.state,
        ScheduleState::Paused,
        "PUT keeps the state"
    );
    assert_eq!(updated.schedule.overlap_policy, OverlapPolicy::Allow);
    let resumed = w
        .svc
        .set_state(&boss, id, ScheduleState::Enabled, None)
        .await
        .unwrap();
    assert_eq!(resumed.next_firings.len(), VIEW_FIRINGS);
    w.svc.delete(&boss, id, Some(4)).await.unwrap();
    assert_eq!(w.svc.get(&boss, id).await.unwrap_err().status_code(), 404);
    let calls = w.trigger.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            format!("put {id} Enabled cron(0 6 ? * MON-FRI *)"),
            format!("put {id} Paused cron(0 6 ? * MON-FRI *)"),
            format!("put {id} Paused rate(2 hours)"),
            format!("put {id} Enabled rate(2 hours)"),
            format!("delete {id}"),
        ]
    );
}

async fn fired(w: &World, id: ScheduleId, when: &str) -> ScheduleRun {
    match w
        .svc
        .fire(&AgencyId::parse("a1").unwrap(), id, at(when))
        .await
        .unwrap()
    {
        Fired::Run(run) => run,
        other => panic!("expected a run, got {other:?}"),
    }
}

#[tokio::test]
async fn a_firing_creates_a_linked_task_once_however_often_it_repeats() {
    let w = world(10);
    let boss = caller(Role::Manager);
    let id = w
        .svc
        .create(&boss, &body("allow"))
        .await
        .unwrap()
        .schedule
        .id;
    let first = fired(&w, id, "2026-12-07T06:00:00Z").await;
    let again = fired(&w, id, "2026-12-07T06:00:00Z").await;
    assert_eq!(first.task_id, again.task_id);
    let task = w
        .svc
        .tasks
        .get(&boss, first.task_id.unwrap())
        .await
        .unwrap();
    assert_eq!(task.title.as_str(), "Reconcile");
    let metadata = task.metadata.as_map();
    assert_eq!(metadata["scheduleId"], json!(id.to_string()));
    assert_eq!(metadata["scheduledAt"], json!("2026-12-07T06:00:00Z"));
    assert_eq!(metadata["team"], json!("ap"));
    let page = w.svc.tasks.list(&boss, &Default::default()).await.unwrap();
    assert_eq!(page.items.len(), 1, "one task for one firing time");
    let view = w.svc.get(&boss, id).await.unwrap();
    assert_eq!(view.last_runs, [again]);
}

#[tokio::test]
async fn overlap_skip_records_a_skip_while_the_last_task_is_open() {
    let w = world(10);
    let boss = caller(Role::Manager);
    let id = w
        .svc
        .create(&boss, &body("skip"))
        .await
        .unwrap()
        .schedule
        .id;
    let first = fired(&w, id, "2026-12-07T06:00:00Z").await;
    let second = fired(&w, id, "2026-12-08T06:00:00Z").await;
    assert_eq!(second.outcome, RunOutcome::Skipped);
    assert_eq!(
        (second.task_id, second.previous_task_id),
        (None, first.task_id)
    );
    // However many firings it skips, each still finds the open task.
    for day in 10..=30 {
        let skipped = fired(&w, id, &format!("2026-12-{day}T06:00:00Z")).await;
        assert_eq!(skipped.outcome, RunOutcome::Skipped, "day {day}");
        assert_eq!(skipped.previous_task_id, first.task_id, "day {day}");
    }
    // Once the task ends, the next firing creates again.
    w.svc
        .tasks
        .cancel(&boss, first.task_id.unwrap(), None)
        .await
        .unwrap();
    let third = fired(&w, id, "2026-12-31T06:00:00Z").await;
    assert_eq!(third.outcome, RunOutcome::Created);
    assert!(third.task_id.is_some() && third.task_id != first.task_id);
}

#[tokio::test]
async fn overlap_allow_creates_beside_the_open_task() {
    let w = world(10);
    let boss = caller(Role::Manager);
    let id = w
        .svc
        .create(&boss, &body("allow"))
        .await
        .unwrap()
        .schedule
        .id;
    let first = fired(&w, id, "2026-12-07T06:00:00Z").await;
    let second = fired(&w, id, "2026-12-08T06:00:00Z").await;
    assert_eq!(second.outcome, RunOutcome::Created);
    assert_eq!(second.previous_task_id, first.task_id);
    let open = w
        .svc
        .tasks
        .get(&boss, first.task_id.unwrap())
        .await
        .unwrap();
    assert_eq!(open.status, TaskStatus::Pending);
}

#[tokio::test]
async fn overlap_cancel_previous_cancels_then_creates() {
    let w = world(10);
    let boss = caller(Role::Manager);
    let id = w
        .svc
        .create(&boss, &body("cancel_previous"))
        .await
        .unwrap()
        .schedule
        .id;
    let first = fired(&w, id, "2026-12-07T06:00:00Z").await;
    let second = fired(&w, id, "2026-12-08T06:00:00Z").await;
    assert_eq!(second.outcome, RunOutcome::Created);
    assert_eq!(second.previous_task_id, first.task_id);
    let old = w
        .svc
        .tasks
        .get(&boss, first.task_id.unwrap())
        .await
        .unwrap();
    assert_eq!(old.status, TaskStatus::Cancelled);
    let new = w
        .svc
        .tasks
        .get(&boss, second.task_id.unwrap())
        .await
        .unwrap();
    assert_eq!(new.status, TaskStatus::Pending);
}

#[tokio::test]
async fn paused_deleted_and_out_of_window_firings_do_nothing() {
    let w = world(10);
    let boss = caller(Role::Manager);
    let mut windowed = body("allow");
    windowed["endAt"] = json!("2026-12-08T00:00:00Z");
    let id = w.svc.create(&boss, &windowed).await.unwrap().schedule.id;
    let agency = AgencyId::parse("a1").unwrap();
    let late = w
        .svc
        .fire(&agency, id, at("2026-12-08T06:00:00Z"))
        .await
        .unwrap();
    assert!(matches!(late, Fired::Ignored(_)), "{late:?}");
    w.svc
        .set_state(&boss, id, ScheduleState::Paused, None)
        .await
        .unwrap();
    let paused = w
        .svc
        .fire(&agency, id, at("2026-12-07T06:00:00Z"))
        .await
        .unwrap();
    assert!(matches!(paused, Fired::Ignored(_)), "{paused:?}");
    let gone = w
        .svc
        .fire(&agency, ScheduleId::generate(), at("2026-12-07T06:00:00Z"))
        .await
        .unwrap();
    assert!(matches!(gone, Fired::Ignored(_)), "{gone:?}");
    let page = w.svc.tasks.list(&boss, &Default::default()).await.unwrap();
    assert!(page.items.is_empty());
}

#[tokio::test]
async fn another_agency_sees_nothing() {
    let w = world(10);
    let id = w
        .svc
        .create(&caller(Role::Manager), &body("skip"))
        .await
        .unwrap()
        .schedule
        .id;
    let other = Caller {
        agency: AgencyId::parse("a2").unwrap(),
        ..caller(Role::Manager)
    };
    assert_eq!(w.svc.get(&other, id).await.unwrap_err().status_code(), 404);
    assert!(w.svc.list(&other).await.unwrap().is_empty());
    let err = w
        .svc
        .set_state(&other, id, ScheduleState::Paused, None)
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 404);
    assert_eq!(
        w.svc
            .delete(&other, id, None)
            .await
            .unwrap_err()
            .status_code(),
        404
    );
    // A firing names its agency: another agency's id is not found, and nothing is created.
    let fired = w
        .svc
        .fire(&other.agency, id, at("2026-12-07T06:00:00Z"))
        .await
        .unwrap();
    assert!(matches!(fired, Fired::Ignored(_)), "{fired:?}");
}

#[test]
fn settings_come_all_or_none_and_bound_the_quota() {
    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        }
    }
    let none = ScheduleSettings::from_lookup(env(&[])).unwrap();
    assert_eq!(none, ScheduleSettings::default());
    let all = ScheduleSettings::from_lookup(env(&[
        ("SCHEDULE_GROUP", "g"),
        ("SCHEDULE_TARGET_ARN", "arn:f"),
        ("SCHEDULE_ROLE_ARN", "arn:r"),
        ("SCHEDULE_DLQ_ARN", "arn:q"),
        ("QUOTA_SCHEDULES", "7"),
    ]))
    .unwrap();
    assert_eq!((all.target.unwrap().group, all.limit), ("g".to_owned(), 7));
    assert!(ScheduleSettings::from_lookup(env(&[("SCHEDULE_GROUP", "g")])).is_err());
    assert!(ScheduleSettings::from_lookup(env(&[("QUOTA_SCHEDULES", "1001")])).is_err());
    assert!(ScheduleSettings::from_lookup(env(&[("QUOTA_SCHEDULES", "0")])).is_err());
}

#[tokio::test]
async fn a_chain_template_fires_as_a_chain_started_once() {
    let world = MemoryWorld::new();
    let svc = ScheduleService {
        store: Arc::new(MemoryScheduleStore::default()),
        trigger: Arc::new(RecordingTrigger::default()),
        tasks: world.services().tasks,
        limit: 10,
    };
    let boss = caller(Role::Manager);
    let mut chain = body("allow");
    chain["template"] = json!({"title": "Nightly build", "type": "multi_step", "autoDispatch": true,
        "steps": [{"name": "build"}, {"name": "publish", "dependsOn": ["build"]}]});
    let id = svc.create(&boss, &chain).await.unwrap().schedule.id;
    let agency = AgencyId::parse("a1").unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        match svc
            .fire(&agency, id, at("2026-12-07T06:00:00Z"))
            .await
            .unwrap()
        {
            Fired::Run(run) => runs.push(run),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(runs[0].task_id, runs[1].task_id);
    let (task, steps) = svc
        .tasks
        .steps(&boss, runs[0].task_id.unwrap())
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::InProgress);
    assert_eq!(steps.len(), 2);
    // The repeated firing started nothing more.
    assert_eq!(world.orchestrator.started.lock().unwrap().len(), 1);
}
