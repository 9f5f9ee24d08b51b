//! Schedule use cases against in-memory ports: validation, quota, versions, tenancy and the
//! trigger kept in step (firings: fire_tests.rs).

use super::*;
use crate::domain::schedule::OverlapPolicy;
use crate::domain::{AgencyId, Role, UserId};
use crate::testing::{MemoryScheduleStore, MemoryWorld, RecordingTrigger};
use serde_json::json;

pub(super) struct World {
    pub(super) svc: ScheduleService,
    pub(super) trigger: Arc<RecordingTrigger>,
}

pub(super) fn world(limit: u32) -> World {
    let trigger = Arc::new(RecordingTrigger::default());
    let svc = ScheduleService {
        store: Arc::new(MemoryScheduleStore::default()),
        trigger: trigger.clone(),
        tasks: MemoryWorld::new().services().tasks,
        limit,
    };
    World { svc, trigger }
}

pub(super) fn caller(role: Role) -> Caller {
    Caller {
        user: UserId::parse("boss").unwrap(),
        agency: AgencyId::parse("a1").unwrap(),
        role,
    }
}

pub(super) fn body(policy: &str) -> Value {
    json!({
        "name": "Reconcile invoices",
        "expression": "cron(0 6 ? * MON-FRI *)",
        "timeZone": "Europe/London",
        "overlapPolicy": policy,
        "template": {"title": "Reconcile", "priority": "critical", "metadata": {"team": "ap"}}
    })
}

pub(super) fn at(s: &str) -> DateTime<Utc> {
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
