//! EventBridge Scheduler's cron syntax: `cron(minutes hours day-of-month month day-of-week year)`
//! with `* , - /` everywhere, `?` in one of the day fields, `L` and `W` in day-of-month and
//! `L` and `#` in day-of-week. Next firings are computed in the schedule's time zone, the way
//! Scheduler documents it: a local time skipped by a daylight-saving change does not fire, and a
//! local time repeated by one fires once (its first occurrence).

use super::ExpressionError;
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

/// The years the syntax allows.
pub const FIRST_YEAR: i32 = 1970;
pub const LAST_YEAR: i32 = 2199;

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
/// Day-of-week numbers are 1 (Sunday) to 7 (Saturday).
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A set of small numbers (at most 0..=63 for the time fields; years use an offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Bits(u64);

impl Bits {
    fn has(self, n: u32) -> bool {
        n < 64 && self.0 & (1 << n) != 0
    }
    fn iter(self, lo: u32, hi: u32) -> impl Iterator<Item = u32> {
        (lo..=hi).filter(move |n| self.has(*n))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DayOfMonth {
    Any,
    Days(Bits),
    /// `L`: the month's last day.
    Last,
    /// `nW`: the weekday nearest to day n, within the month.
    NearestWeekday(u32),
    /// `LW`: the month's last weekday.
    LastWeekday,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DayOfWeek {
    Any,
    /// 1 (Sunday) to 7 (Saturday).
    Days(Bits),
    /// `nL`: the month's last such weekday.
    Last(u32),
    /// `n#k`: the month's k-th such weekday.
    Nth(u32, u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: Bits,
    hours: Bits,
    day_of_month: DayOfMonth,
    months: Bits,
    day_of_week: DayOfWeek,
    /// Years as offsets from [`FIRST_YEAR`]; `None` is every year.
    years: Option<Vec<bool>>,
}

/// One field's name, position and range, for parsing and for errors.
struct Field {
    name: &'static str,
    lo: u32,
    hi: u32,
    names: &'static [&'static str],
}

const MINUTES: Field = Field {
    name: "minutes",
    lo: 0,
    hi: 59,
    names: &[],
};
const HOURS: Field = Field {
    name: "hours",
    lo: 0,
    hi: 23,
    names: &[],
};
const DAY_OF_MONTH: Field = Field {
    name: "day-of-month",
    lo: 1,
    hi: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    lo: 1,
    hi: 12,
    names: &MONTHS,
};
const DAY_OF_WEEK: Field = Field {
    name: "day-of-week",
    lo: 1,
    hi: 7,
    names: &WEEKDAYS,
};
const YEAR: Field = Field {
    name: "year",
    lo: FIRST_YEAR as u32,
    hi: LAST_YEAR as u32,
    names: &[],
};

impl Field {
    fn error(&self, problem: impl std::fmt::Display) -> ExpressionError {
        ExpressionError(format!("cron {}: {problem}", self.name))
    }

    fn value(&self, raw: &str) -> Result<u32, ExpressionError> {
        let upper = raw.to_ascii_uppercase();
        if let Some(i) = self.names.iter().position(|n| *n == upper) {
            return Ok(self.lo + i as u32);
        }
        let n: u32 = raw.parse().map_err(|_| {
            let names = if self.names.is_empty() {
                String::new()
            } else {
                format!(" or one of {}", self.names.join(","))
            };
            self.error(format!(
                "'{raw}' is not a number from {} to {}{names}",
                self.lo, self.hi
            ))
        })?;
        if n < self.lo || n > self.hi {
            return Err(self.error(format!("{n} is out of range {}-{}", self.lo, self.hi)));
        }
        Ok(n)
    }

    /// `*`, `a`, `a-b`, with an optional `/step`, comma-separated; calls `set` for each value.
    fn list(&self, raw: &str, mut set: impl FnMut(u32)) -> Result<(), ExpressionError> {
        for item in raw.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((range, step)) => {
                    let step: u32 = step.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        self.error(format!("the step in '{item}' must be a positive number"))
                    })?;
                    (range, step)
                }
                None => (item, 1),
            };
            let (lo, hi) = if range == "*" {
                (self.lo, self.hi)
            } else if let Some((a, b)) = range.split_once('-') {
                let (a, b) = (self.value(a)?, self.value(b)?);
                if a > b {
                    return Err(self.error(format!(
                        "the range '{range}' runs backwards; write it from the smaller value"
                    )));
                }
                (a, b)
            } else if range.is_empty() {
                return Err(self.error(format!("'{raw}' has an empty item")));
            } else {
                // `a/n` runs from a to the end of the range.
                let a = self.value(range)?;
                (
                    a,
                    if step > 1 || item.contains('/') {
                        self.hi
                    } else {
                        a
                    },
                )
            };
            (lo..=hi).step_by(step as usize).for_each(&mut set);
        }
        Ok(())
    }

    fn bits(&self, raw: &str) -> Result<Bits, ExpressionError> {
        let mut bits = Bits::default();
        self.list(raw, |n| bits.0 |= 1 << n)?;
        Ok(bits)
    }
}

impl Cron {
    /// Parses the inside of `cron(...)`.
    pub fn parse(body: &str) -> Result<Self, ExpressionError> {
        let fields: Vec<&str> = body.split_whitespace().collect();
        if fields.len() != 6 {
            return Err(ExpressionError(format!(
                "cron needs 6 fields (minutes hours day-of-month month day-of-week year), got {}",
                fields.len()
            )));
        }
        for (field, raw) in [
            (&MINUTES, fields[0]),
            (&HOURS, fields[1]),
            (&MONTH, fields[3]),
            (&YEAR, fields[5]),
        ] {
            if raw == "?" || raw.contains(['L', 'W', '#']) && field.names.is_empty() {
                return Err(field.error(format!(
                    "'{raw}' uses a wildcard only day-of-month and day-of-week take"
                )));
            }
        }
        let minutes = MINUTES.bits(fields[0])?;
        let hours = HOURS.bits(fields[1])?;
        let months = MONTH.bits(fields[3])?;
        let day_of_month = parse_day_of_month(fields[2])?;
        let day_of_week = parse_day_of_week(fields[4])?;
        match (&day_of_month, &day_of_week) {
            (DayOfMonth::Any, DayOfWeek::Any) if fields[2] == "?" && fields[4] == "?" => {
                return Err(ExpressionError(
                    "cron: day-of-month and day-of-week cannot both be ?; use * in one of them"
                        .into(),
                ))
            }
            (_, _) if fields[2] != "?" && fields[4] != "?" => {
                return Err(ExpressionError(
                    "cron: day-of-month and day-of-week cannot both be set; use ? in one of them"
                        .into(),
                ))
            }
            _ => {}
        }
        let years = if fields[5] == "*" {
            None
        } else {
            let mut years = vec![false; (LAST_YEAR - FIRST_YEAR + 1) as usize];
            YEAR.list(fields[5], |y| years[(y - YEAR.lo) as usize] = true)?;
            Some(years)
        };
        Ok(Self {
            minutes,
            hours,
            day_of_month,
            months,
            day_of_week,
            years,
        })
    }

    fn year_ok(&self, year: i32) -> bool {
        (FIRST_YEAR..=LAST_YEAR).contains(&year)
            && self
                .years
                .as_ref()
                .is_none_or(|years| years[(year - FIRST_YEAR) as usize])
    }

    fn day_ok(&self, date: NaiveDate) -> bool {
        let day = date.day();
        let last = last_day_of_month(date);
        let dom = match &self.day_of_month {
            DayOfMonth::Any => true,
            DayOfMonth::Days(bits) => bits.has(day),
            DayOfMonth::Last => day == last,
            DayOfMonth::NearestWeekday(n) => {
                *n <= last && nearest_weekday(date.with_day(*n).unwrap_or(date)) == date
            }
            DayOfMonth::LastWeekday => {
                let mut d = date.with_day(last).unwrap_or(date);
                while is_weekend(d) {
                    d = d.pred_opt().unwrap_or(d);
                }
                d == date
            }
        };
        let weekday = date.weekday().num_days_from_sunday() + 1;
        let dow = match &self.day_of_week {
            DayOfWeek::Any => true,
            DayOfWeek::Days(bits) => bits.has(weekday),
            DayOfWeek::Last(n) => *n == weekday && day + 7 > last,
            DayOfWeek::Nth(n, k) => *n == weekday && (day - 1) / 7 + 1 == *k,
        };
        dom && dow
    }

    /// The first firing strictly after `after`, evaluated in `tz`; `None` past the last year.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let mut date = after.with_timezone(&tz).date_naive();
        // A skipped day is cheap; the loop ends at the syntax's last year in any case.
        while date.year() <= LAST_YEAR {
            if !self.year_ok(date.year()) {
                date = NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)?;
                continue;
            }
            if !self.months.has(date.month()) {
                date = first_of_next_month(date)?;
                continue;
            }
            if self.day_ok(date) {
                for hour in self.hours.iter(0, 23) {
                    for minute in self.minutes.iter(0, 59) {
                        let local = date.and_hms_opt(hour, minute, 0)?;
                        // None: skipped by a DST change; Ambiguous: repeated, fires once (the first).
                        let Some(at) = tz.from_local_datetime(&local).earliest() else {
                            continue;
                        };
                        let at = at.with_timezone(&Utc);
                        if at > after {
                            return Some(at);
                        }
                    }
                }
            }
            date = date.succ_opt()?;
        }
        None
    }
}

fn parse_day_of_month(raw: &str) -> Result<DayOfMonth, ExpressionError> {
    let f = &DAY_OF_MONTH;
    match raw {
        "?" | "*" => Ok(DayOfMonth::Any),
        "L" => Ok(DayOfMonth::Last),
        "LW" => Ok(DayOfMonth::LastWeekday),
        _ if raw.contains('#') => {
            Err(f.error("'#' belongs in day-of-week (e.g. 2#1, the first Monday)"))
        }
        _ if raw.ends_with('W') => {
            let n = f.value(&raw[..raw.len() - 1])?;
            Ok(DayOfMonth::NearestWeekday(n))
        }
        _ if raw.contains(['L', 'W']) => Err(f.error(format!(
            "'{raw}': L and W stand alone (L, LW) or follow one day (15W)"
        ))),
        _ => f.bits(raw).map(DayOfMonth::Days),
    }
}

fn parse_day_of_week(raw: &str) -> Result<DayOfWeek, ExpressionError> {
    let f = &DAY_OF_WEEK;
    match raw {
        "?" | "*" => Ok(DayOfWeek::Any),
        // `L` alone is the last day of the week, Saturday.
        "L" => Ok(DayOfWeek::Days(Bits(1 << 7))),
        _ if raw.contains('W') && !raw.to_ascii_uppercase().contains("WED") => {
            Err(f.error("'W' belongs in day-of-month (e.g. 15W, the weekday nearest the 15th)"))
        }
        _ if raw.contains('#') => {
            let (day, nth) = raw.split_once('#').unwrap_or((raw, ""));
            let day = f.value(day)?;
            let nth: u32 = nth
                .parse()
                .ok()
                .filter(|n| (1..=5).contains(n))
                .ok_or_else(|| f.error(format!("'{raw}': the number after # must be 1 to 5")))?;
            Ok(DayOfWeek::Nth(day, nth))
        }
        _ if raw.len() > 1 && raw.ends_with('L') => {
            Ok(DayOfWeek::Last(f.value(&raw[..raw.len() - 1])?))
        }
        _ => f.bits(raw).map(DayOfWeek::Days),
    }
}

fn first_of_next_month(date: NaiveDate) -> Option<NaiveDate> {
    if date.month() == 12 {
        NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)
    }
}

fn last_day_of_month(date: NaiveDate) -> u32 {
    first_of_next_month(date)
        .and_then(|d| d.pred_opt())
        .map_or(28, |d| d.day())
}

fn is_weekend(date: NaiveDate) -> bool {
    matches!(date.weekday(), Weekday::Sat | Weekday::Sun)
}

/// The weekday nearest to `date` inside its month (Saturday → Friday, Sunday → Monday, except
/// across the month's edges, as Quartz defines `W`).
fn nearest_weekday(date: NaiveDate) -> NaiveDate {
    let last = last_day_of_month(date);
    match date.weekday() {
        Weekday::Sat if date.day() == 1 => date + Duration::days(2),
        Weekday::Sat => date - Duration::days(1),
        Weekday::Sun if date.day() == last => date - Duration::days(2),
        Weekday::Sun => date + Duration::days(1),
        _ => date,
    }
}
