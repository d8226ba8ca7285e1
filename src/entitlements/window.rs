//! The window a feature limit is counted over: a calendar hour, day, week or month in one time
//! zone, or the customer's billing period as BillaBear keeps it. Pure: the clock is passed in.

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone as _, Timelike, Utc,
};
use chrono_tz::Tz;

use crate::domain::FromText;

/// What a feature's count restarts with (`entitlements.windows`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Hour,
    Day,
    /// ISO weeks: from Monday 00:00.
    Week,
    Month,
    /// The customer's billing period ([`Period`]).
    BillingPeriod,
}

crate::written_as!(Window {
    "billing_period" => BillingPeriod, "hour" => Hour, "day" => Day, "week" => Week, "month" => Month
});

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Week => "week",
            Window::Month => "month",
            Window::BillingPeriod => "billing_period",
        }
    }
}

/// An IANA time zone, for calendar windows (`entitlements.time_zone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeZone(pub Tz);

impl FromText for TimeZone {
    fn from_text(text: &str) -> Result<Self, String> {
        text.parse::<Tz>().map(TimeZone).map_err(|_| {
            format!("must be an IANA time zone such as \"UTC\" or \"Europe/Paris\", got {text:?}")
        })
    }
    fn stand_in() -> Self {
        TimeZone(Tz::UTC)
    }
    fn to_text(&self) -> String {
        self.0.name().to_owned()
    }
}

/// A customer's billing period as BillaBear's usage warnings take it (`WarningCheck`): from the
/// latest start of a current period among its active subscriptions to the latest `valid_until`.
/// Seconds since [`PERIOD_EPOCH`] in a `u32` (until 2156): every snapshot holds one, and two
/// `i64` made it 128 bytes instead of 112.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Period {
    start: u32,
    end: u32,
}

/// 2020-01-01T00:00:00Z, Unix seconds.
const PERIOD_EPOCH: i64 = 1_577_836_800;

impl Period {
    /// From Unix seconds (clamped to what it can hold).
    pub fn new(start: i64, end: i64) -> Period {
        let held = |s: i64| (s - PERIOD_EPOCH).clamp(0, u32::MAX.into()) as u32;
        Period { start: held(start), end: held(end) }
    }

    /// Unix seconds.
    pub fn start(self) -> i64 {
        PERIOD_EPOCH + i64::from(self.start)
    }

    /// Unix seconds.
    pub fn end(self) -> i64 {
        PERIOD_EPOCH + i64::from(self.end)
    }

    /// The period from subscriptions' `(valid_until, schedule)`: each starts one schedule before
    /// it is valid until (week, month or year; anything else is read as a month).
    pub fn of<'a>(
        subscriptions: impl IntoIterator<Item = (DateTime<Utc>, Option<&'a str>)>,
    ) -> Option<Period> {
        subscriptions
            .into_iter()
            .map(|(until, schedule)| {
                let start = match schedule {
                    Some("week") => until - Duration::days(7),
                    Some("year") => until.checked_sub_months(chrono::Months::new(12)).unwrap_or(until),
                    _ => until.checked_sub_months(chrono::Months::new(1)).unwrap_or(until),
                };
                Period::new(start.timestamp(), until.timestamp())
            })
            .reduce(|a, b| Period { start: a.start.max(b.start), end: a.end.max(b.end) })
    }

    /// The period `now` falls in: this one until it ends, then the next of the same length (the
    /// subscription renewed; BillaBear's next answer says so too). Postgres places events by the
    /// same rule (`feature_counts::store`).
    pub fn current(self, now: i64) -> Bounds {
        let (start, end) = (self.start(), self.end());
        if now < end {
            return Bounds { start, end };
        }
        Bounds { start: end, end: end + (end - start).max(1) }
    }
}

/// A window's start (inclusive) and end (exclusive), Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub start: i64,
    pub end: i64,
}

impl Window {
    /// The window `now` falls in: calendar windows in `zone` (daylight saving by `chrono-tz`);
    /// the billing period when known, else the calendar month (a customer never fetched).
    pub fn bounds(self, now: DateTime<Utc>, zone: Tz, period: Option<Period>) -> Bounds {
        // Before the local time is read: the default window, on a counted check's path.
        if self == Window::BillingPeriod {
            return match period {
                Some(period) => period.current(now.timestamp()),
                None => Window::Month.bounds(now, zone, None),
            };
        }
        let local = now.with_timezone(&zone).naive_local();
        let date = local.date();
        let (start, end) = match self {
            Window::Hour => {
                let start = date.and_hms_opt(local.hour(), 0, 0).unwrap_or(local);
                (start, start + Duration::hours(1))
            }
            Window::Day => (midnight(date), midnight(date + Duration::days(1))),
            Window::Week => {
                let monday = date - Duration::days(date.weekday().num_days_from_monday().into());
                (midnight(monday), midnight(monday + Duration::days(7)))
            }
            // The billing period returned above.
            Window::Month | Window::BillingPeriod => {
                let first = date.with_day(1).unwrap_or(date);
                let next = first.checked_add_months(chrono::Months::new(1)).unwrap_or(first);
                (midnight(first), midnight(next))
            }
        };
        Bounds { start: instant(zone, start), end: instant(zone, end) }
    }
}

fn midnight(date: NaiveDate) -> NaiveDateTime {
    date.and_hms_opt(0, 0, 0).unwrap_or_default()
}

/// The instant a local time names in `zone`: the earlier of two (clocks turned back), or the
/// first instant after a gap (clocks turned forward past it, as at midnight in some zones).
fn instant(zone: Tz, local: NaiveDateTime) -> i64 {
    let mut probe = local;
    for _ in 0..4 {
        match zone.from_local_datetime(&probe) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                return t.timestamp();
            }
            // In a gap: the boundary is when the gap ends, at most a few hours later.
            LocalResult::None => probe += Duration::minutes(30),
        }
    }
    Utc.from_utc_datetime(&local).timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn bounds(window: Window, now: &str, zone: &str) -> (String, String) {
        let zone: Tz = zone.parse().unwrap();
        let b = window.bounds(at(now), zone, None);
        let show = |s: i64| DateTime::from_timestamp(s, 0).unwrap().to_rfc3339();
        (show(b.start), show(b.end))
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (at(a).to_rfc3339(), at(b).to_rfc3339())
    }

    #[test]
    fn calendar_windows_start_at_the_boundary_in_their_time_zone() {
        let now = "2026-03-11T22:30:00Z"; // a Wednesday
        assert_eq!(bounds(Window::Hour, now, "UTC"), pair("2026-03-11T22:00:00Z", "2026-03-11T23:00:00Z"));
        assert_eq!(bounds(Window::Day, now, "UTC"), pair("2026-03-11T00:00:00Z", "2026-03-12T00:00:00Z"));
        // 23:30 in Paris is still the 11th; in Tokyo it is already the 12th.
        assert_eq!(
            bounds(Window::Day, now, "Europe/Paris"),
            pair("2026-03-10T23:00:00Z", "2026-03-11T23:00:00Z")
        );
        assert_eq!(
            bounds(Window::Day, now, "Asia/Tokyo"),
            pair("2026-03-11T15:00:00Z", "2026-03-12T15:00:00Z")
        );
        assert_eq!(bounds(Window::Week, now, "UTC"), pair("2026-03-09T00:00:00Z", "2026-03-16T00:00:00Z"));
        assert_eq!(bounds(Window::Month, now, "UTC"), pair("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"));
        // Half-hour zones keep their own hours.
        assert_eq!(
            bounds(Window::Hour, now, "Asia/Kolkata"),
            pair("2026-03-11T22:30:00Z", "2026-03-11T23:30:00Z")
        );
    }

    #[test]
    fn daylight_saving_makes_days_of_23_and_25_hours() {
        // New York springs forward on 2026-03-08 and falls back on 2026-11-01.
        assert_eq!(
            bounds(Window::Day, "2026-03-08T12:00:00Z", "America/New_York"),
            pair("2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z")
        );
        assert_eq!(
            bounds(Window::Day, "2026-11-01T12:00:00Z", "America/New_York"),
            pair("2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z")
        );
        // Santiago's clocks skip midnight (00:00 → 01:00) on 2026-09-06: the day starts at 01:00.
        assert_eq!(
            bounds(Window::Day, "2026-09-06T12:00:00Z", "America/Santiago"),
            pair("2026-09-06T04:00:00Z", "2026-09-07T03:00:00Z")
        );
    }

    #[test]
    fn a_billing_period_runs_to_its_end_then_renews_and_unknown_is_a_month() {
        let until = at("2026-04-15T10:00:00Z");
        let period =
            Period::of([(until, Some("month")), (at("2026-04-01T00:00:00Z"), Some("week"))]).unwrap();
        assert_eq!(
            (period.start(), period.end()),
            (at("2026-03-25T00:00:00Z").timestamp(), until.timestamp())
        );
        let utc = Tz::UTC;
        let b = Window::BillingPeriod.bounds(at("2026-04-10T00:00:00Z"), utc, Some(period));
        assert_eq!((b.start, b.end), (period.start(), period.end()));
        let next = Window::BillingPeriod.bounds(until, utc, Some(period));
        assert_eq!((next.start, next.end - next.start), (until.timestamp(), period.end() - period.start()));
        assert_eq!(
            bounds(Window::BillingPeriod, "2026-04-10T00:00:00Z", "UTC"),
            pair("2026-04-01T00:00:00Z", "2026-05-01T00:00:00Z")
        );
        assert_eq!(Period::of([]), None);
    }
}
