use super::*;
use chrono::TimeZone;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn tz(name: &str) -> Tz {
    parse_time_zone(name).unwrap()
}

/// The next `n` firings of `expr` in `zone` after `after`, as RFC 3339 UTC strings.
fn firings(expr: &str, zone: &str, after: &str, n: usize) -> Vec<String> {
    let e = Expression::parse(expr).unwrap();
    let mut at = utc(after);
    let mut out = Vec::new();
    for _ in 0..n {
        at = e.next_after(at, tz(zone), at).unwrap();
        out.push(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    out
}

fn error(expr: &str) -> String {
    Expression::parse(expr).unwrap_err().0
}

#[test]
fn weekday_mornings_in_utc() {
    // 2026-12-04 is a Friday.
    assert_eq!(
        firings("cron(0 6 ? * MON-FRI *)", "UTC", "2026-12-04T05:00:00Z", 3),
        [
            "2026-12-04T06:00:00Z",
            "2026-12-07T06:00:00Z",
            "2026-12-08T06:00:00Z"
        ]
    );
}

#[test]
fn a_firing_time_is_strictly_after() {
    assert_eq!(
        firings("cron(0 6 * * ? *)", "UTC", "2026-12-04T06:00:00Z", 1),
        ["2026-12-05T06:00:00Z"]
    );
}

#[test]
fn steps_lists_and_ranges() {
    assert_eq!(
        firings("cron(0/20 9-10 * * ? *)", "UTC", "2026-01-01T00:00:00Z", 7),
        [
            "2026-01-01T09:00:00Z",
            "2026-01-01T09:20:00Z",
            "2026-01-01T09:40:00Z",
            "2026-01-01T10:00:00Z",
            "2026-01-01T10:20:00Z",
            "2026-01-01T10:40:00Z",
            "2026-01-02T09:00:00Z"
        ]
    );
    assert_eq!(
        firings(
            "cron(15,45 12 1 JAN,JUL ? *)",
            "UTC",
            "2026-01-01T12:20:00Z",
            3
        ),
        [
            "2026-01-01T12:45:00Z",
            "2026-07-01T12:15:00Z",
            "2026-07-01T12:45:00Z"
        ]
    );
}

#[test]
fn a_time_zone_moves_the_firing_in_utc() {
    // 06:00 in New York is 11:00 UTC in winter (EST) and 10:00 UTC in summer (EDT).
    assert_eq!(
        firings(
            "cron(0 6 * * ? *)",
            "America/New_York",
            "2026-01-15T00:00:00Z",
            1
        ),
        ["2026-01-15T11:00:00Z"]
    );
    assert_eq!(
        firings(
            "cron(0 6 * * ? *)",
            "America/New_York",
            "2026-07-15T00:00:00Z",
            1
        ),
        ["2026-07-15T10:00:00Z"]
    );
}

#[test]
fn new_york_spring_forward_skips_the_missing_hour() {
    // 2026-03-08: clocks go from 02:00 EST to 03:00 EDT; 02:30 does not exist that day.
    assert_eq!(
        firings(
            "cron(30 2 * * ? *)",
            "America/New_York",
            "2026-03-07T00:00:00Z",
            3
        ),
        [
            "2026-03-07T07:30:00Z",
            "2026-03-09T06:30:00Z",
            "2026-03-10T06:30:00Z"
        ]
    );
    // Every half hour through the change: 01:30 EST, then straight to 03:00 EDT.
    assert_eq!(
        firings(
            "cron(0/30 * * * ? *)",
            "America/New_York",
            "2026-03-08T06:15:00Z",
            3
        ),
        [
            "2026-03-08T06:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T07:30:00Z"
        ]
    );
}

#[test]
fn new_york_fall_back_fires_a_repeated_time_once() {
    // 2026-11-01: 01:30 happens at 05:30 UTC (EDT) and again at 06:30 UTC (EST): once only.
    assert_eq!(
        firings(
            "cron(30 1 * * ? *)",
            "America/New_York",
            "2026-10-31T12:00:00Z",
            3
        ),
        [
            "2026-11-01T05:30:00Z",
            "2026-11-02T06:30:00Z",
            "2026-11-03T06:30:00Z"
        ]
    );
    // Hourly through the change: 00:00 EDT, 01:00 EDT, then 02:00 EST (01:00 EST is skipped).
    assert_eq!(
        firings(
            "cron(0 * * * ? *)",
            "America/New_York",
            "2026-11-01T03:30:00Z",
            3
        ),
        [
            "2026-11-01T04:00:00Z",
            "2026-11-01T05:00:00Z",
            "2026-11-01T07:00:00Z"
        ]
    );
}

#[test]
fn london_changes_at_one_in_the_morning() {
    // 2026-03-29: 01:00 GMT → 02:00 BST, so 01:30 is skipped; 2026-10-25: 01:30 is repeated.
    assert_eq!(
        firings(
            "cron(30 1 * * ? *)",
            "Europe/London",
            "2026-03-28T00:00:00Z",
            2
        ),
        ["2026-03-28T01:30:00Z", "2026-03-30T00:30:00Z"]
    );
    assert_eq!(
        firings(
            "cron(30 1 * * ? *)",
            "Europe/London",
            "2026-10-24T12:00:00Z",
            2
        ),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
}

#[test]
fn a_rate_in_days_is_24_hours_across_a_dst_change() {
    let e = Expression::parse("rate(1 day)").unwrap();
    let anchor = utc("2026-03-07T11:00:00Z"); // 06:00 EST
    let next = e
        .next_after(utc("2026-03-08T00:00:00Z"), tz("America/New_York"), anchor)
        .unwrap();
    // 24 hours later, which is 07:00 EDT on the clock.
    assert_eq!(next, utc("2026-03-08T11:00:00Z"));
}

#[test]
fn rates_count_from_their_anchor() {
    let e = Expression::parse("rate(15 minutes)").unwrap();
    let anchor = utc("2026-12-01T10:07:00Z");
    assert_eq!(
        e.next_after(utc("2026-12-01T10:00:00Z"), Tz::UTC, anchor),
        Some(anchor)
    );
    assert_eq!(
        e.next_after(anchor, Tz::UTC, anchor),
        Some(utc("2026-12-01T10:22:00Z"))
    );
    assert_eq!(
        e.next_after(utc("2026-12-01T11:00:00Z"), Tz::UTC, anchor),
        Some(utc("2026-12-01T11:07:00Z"))
    );
}

#[test]
fn leap_days() {
    // The 29th of February fires only in leap years.
    assert_eq!(
        firings("cron(0 0 29 2 ? *)", "UTC", "2026-01-01T00:00:00Z", 2),
        ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
    );
    // L is the 29th in a leap February, the 28th otherwise.
    assert_eq!(
        firings("cron(0 12 L 2 ? *)", "UTC", "2027-01-01T00:00:00Z", 2),
        ["2027-02-28T12:00:00Z", "2028-02-29T12:00:00Z"]
    );
}

#[test]
fn last_nearest_weekday_and_nth() {
    // W: 2026-08-01 is a Saturday, so 1W is Monday the 3rd (it never leaves the month).
    assert_eq!(
        firings("cron(0 9 1W 8 ? 2026)", "UTC", "2026-07-01T00:00:00Z", 1),
        ["2026-08-03T09:00:00Z"]
    );
    // 15W: 2026-11-15 is a Sunday → Monday the 16th.
    assert_eq!(
        firings("cron(0 9 15W 11 ? 2026)", "UTC", "2026-07-01T00:00:00Z", 1),
        ["2026-11-16T09:00:00Z"]
    );
    // LW: the last weekday of May 2026 (the 31st is a Sunday) is Friday the 29th.
    assert_eq!(
        firings("cron(0 9 LW 5 ? 2026)", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-05-29T09:00:00Z"]
    );
    // 6L: the last Friday; 2#1: the first Monday.
    assert_eq!(
        firings("cron(0 9 ? 12 6L 2026)", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-12-25T09:00:00Z"]
    );
    assert_eq!(
        firings("cron(0 9 ? * 2#1 *)", "UTC", "2026-12-01T00:00:00Z", 2),
        ["2026-12-07T09:00:00Z", "2027-01-04T09:00:00Z"]
    );
}

#[test]
fn years_bound_the_schedule() {
    let e = Expression::parse("cron(0 0 1 1 ? 2027-2028)").unwrap();
    let after = utc("2026-06-01T00:00:00Z");
    let first = e.next_after(after, Tz::UTC, after).unwrap();
    assert_eq!(first, utc("2027-01-01T00:00:00Z"));
    let second = e.next_after(first, Tz::UTC, after).unwrap();
    assert_eq!(second, utc("2028-01-01T00:00:00Z"));
    assert_eq!(e.next_after(second, Tz::UTC, after), None);
}

#[test]
fn bad_expressions_say_what_and_where() {
    let cases = [
        (
            "cron(0 6 * * MON *)",
            "day-of-month and day-of-week cannot both be set; use ? in one of them",
        ),
        ("cron(0 6 ? * ? *)", "cannot both be ?"),
        ("cron(0 6 * *)", "needs 6 fields"),
        (
            "cron(60 6 * * ? *)",
            "cron minutes: 60 is out of range 0-59",
        ),
        ("cron(0 24 * * ? *)", "cron hours: 24 is out of range 0-23"),
        (
            "cron(0 6 32 * ? *)",
            "cron day-of-month: 32 is out of range 1-31",
        ),
        (
            "cron(0 6 ? FOO * *)",
            "cron month: 'FOO' is not a number from 1 to 12 or one of JAN",
        ),
        (
            "cron(0 6 ? * 8 *)",
            "cron day-of-week: 8 is out of range 1-7",
        ),
        ("cron(0 6 ? * 2#6 *)", "the number after # must be 1 to 5"),
        (
            "cron(0 6 * * ? 1969)",
            "cron year: 1969 is out of range 1970-2199",
        ),
        (
            "cron(0 10-8 * * ? *)",
            "cron hours: the range '10-8' runs backwards",
        ),
        (
            "cron(0/0 * * * ? *)",
            "cron minutes: the step in '0/0' must be a positive number",
        ),
        (
            "cron(? 6 * * ? *)",
            "cron minutes: '?' uses a wildcard only",
        ),
        ("cron(0 6 ? * 15W *)", "'W' belongs in day-of-month"),
        (
            "rate(0 minutes)",
            "rate: '0' is not a positive whole number",
        ),
        ("rate(5 minute)", "rate: 5 takes the plural unit"),
        ("rate(1 hours)", "rate: 1 takes the singular unit"),
        (
            "rate(5 weeks)",
            "unit 'weeks' must be minute(s), hour(s) or day(s)",
        ),
        ("rate(5)", "needs a value and a unit"),
        (
            "at(2026-12-01T10:00:00)",
            "one-time at(...) schedules are not supported",
        ),
        ("every day", "must be cron(minutes hours"),
    ];
    for (expr, expected) in cases {
        let message = error(expr);
        assert!(message.contains(expected), "{expr}: {message}");
    }
}

#[test]
fn unknown_time_zones_are_refused_by_name() {
    let err = parse_time_zone("Mars/Olympus").unwrap_err();
    assert!(
        err.contains("'Mars/Olympus' is not an IANA time zone"),
        "{err}"
    );
    assert!(parse_time_zone("Europe/London").is_ok());
}

fn schedule(expr: &str, start: Option<&str>, end: Option<&str>) -> Schedule {
    Schedule {
        id: crate::domain::ScheduleId::generate(),
        agency_id: AgencyId::parse("a").unwrap(),
        name: "n".into(),
        expression: expr.into(),
        time_zone: "UTC".into(),
        start_at: start.map(utc),
        end_at: end.map(utc),
        overlap_policy: OverlapPolicy::Skip,
        state: ScheduleState::Enabled,
        template: serde_json::json!({"title": "t"}),
        created_by: UserId::parse("m").unwrap(),
        created_at: utc("2026-12-01T00:00:00Z"),
        updated_at: utc("2026-12-01T00:00:00Z"),
        version: 1,
    }
}

#[test]
fn start_and_end_dates_bound_the_firings() {
    let s = schedule(
        "cron(0 12 * * ? *)",
        Some("2026-12-03T00:00:00Z"),
        Some("2026-12-05T12:00:00Z"),
    );
    let got = s.next_firings(utc("2026-12-01T00:00:00Z"), 5);
    // The end is exclusive: 12:00 on the 5th does not fire.
    assert_eq!(
        got,
        [utc("2026-12-03T12:00:00Z"), utc("2026-12-04T12:00:00Z")]
    );
    assert!(s.in_window(utc("2026-12-03T00:00:00Z")));
    assert!(!s.in_window(utc("2026-12-05T12:00:00Z")));
    // A rate starts at its start date.
    let r = schedule("rate(1 hour)", Some("2026-12-02T08:30:00Z"), None);
    assert_eq!(
        r.next_firings(utc("2026-12-01T00:00:00Z"), 2),
        [utc("2026-12-02T08:30:00Z"), utc("2026-12-02T09:30:00Z")]
    );
}

#[test]
fn the_firing_key_depends_on_schedule_and_time_only() {
    let id = crate::domain::ScheduleId::generate();
    let t = Utc.with_ymd_and_hms(2026, 12, 1, 6, 0, 0).unwrap();
    assert_eq!(firing_key(id, t), firing_key(id, t));
    assert_ne!(
        firing_key(id, t),
        firing_key(id, t + chrono::Duration::minutes(1))
    );
    assert_ne!(
        firing_key(id, t),
        firing_key(crate::domain::ScheduleId::generate(), t)
    );
}
