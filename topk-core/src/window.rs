//! Time: minute buckets, UTC days and the "last 7 days" window.
//!
//! The window ending at `now` is today (UTC, from midnight up to `now`) plus the
//! `days - 1` previous full UTC days. Events before the window's start are too old to count;
//! events more than [`MAX_FUTURE_SKEW_MS`] after `now` are rejected as clock errors.
//!
//! A user's own week ([`Window::last_week_in`]) starts at *local* midnight six days before
//! the local date of `now` instead: a moment inside a UTC day, so its first UTC day is only
//! partly in the window (readers take that day from minute rows, see `topk-api`'s store).
//! Which events count is still decided by the UTC window of the record ([`Window::for_record`]),
//! so a play in a local week's first hours that arrives more than six days late is not
//! counted, just as in the UTC week.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The product's window: today plus the 6 previous days.
pub const WINDOW_DAYS: u32 = 7;

/// How far in the future an event's `ts` may be before it is rejected (5 minutes).
pub const MAX_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;

const MS_PER_MINUTE: i64 = 60_000;

/// The start of the UTC minute holding `ts_ms`, in epoch seconds.
pub fn minute_bucket_secs(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(MS_PER_MINUTE) * 60
}

/// The UTC day holding `ts_ms`.
pub fn utc_day_of_ms(ts_ms: i64) -> Option<NaiveDate> {
    DateTime::<Utc>::from_timestamp_millis(ts_ms).map(|time| time.date_naive())
}

/// Midnight UTC at the start of `day`.
pub fn day_start(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_time(NaiveTime::MIN))
}

/// `day` as a ClickHouse `Date` number: days since 1970-01-01 (clamped to `Date`'s range).
pub fn day_number(day: NaiveDate) -> u16 {
    let days = day.signed_duration_since(NaiveDate::default()).num_days();
    u16::try_from(days.max(0)).unwrap_or(u16::MAX)
}

/// The UTC hour holding `time`, as hours since 1970 (what `flush_commits.minute_hours` lists).
pub fn hour_number(time: DateTime<Utc>) -> u32 {
    u32::try_from(time.timestamp().div_euclid(3_600).max(0)).unwrap_or(u32::MAX)
}

/// The start of the UTC hour numbered `number` ([`hour_number`]).
pub fn hour_start(number: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(number) * 3_600, 0).unwrap_or_default()
}

/// The distinct days ([`day_number`]) and hours ([`hour_number`]) of `minutes`, each sorted: what
/// a flush commit lists of its rows.
pub fn days_and_hours(minutes: impl Iterator<Item = DateTime<Utc>>) -> (Vec<u16>, Vec<u32>) {
    let mut days = std::collections::BTreeSet::new();
    let mut hours = std::collections::BTreeSet::new();
    for minute in minutes {
        days.insert(day_number(minute.date_naive()));
        hours.insert(hour_number(minute));
    }
    (days.into_iter().collect(), hours.into_iter().collect())
}

/// The day of a ClickHouse `Date` number.
pub fn day_from_number(number: u16) -> NaiveDate {
    NaiveDate::default()
        .checked_add_days(Days::new(u64::from(number)))
        .unwrap_or(NaiveDate::MAX)
}

/// The first moment of `day` in `tz`: local midnight, or, where a daylight-saving change
/// skips midnight (e.g. `America/Santiago`), the first local time after the gap.
pub fn local_day_start(day: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let mut local = day.and_time(NaiveTime::MIN);
    // Gaps last at most a few hours; 24 h of minutes bounds the search.
    for _ in 0..=24 * 60 {
        if let Some(start) = tz.from_local_datetime(&local).earliest() {
            return start.with_timezone(&Utc);
        }
        local += chrono::Duration::minutes(1);
    }
    day_start(day)
}

/// A window of days ending at a moment inside its last day: whole UTC days, or a user's
/// local days ([`Window::last_week_in`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The moment the window starts: midnight UTC of its first day, or, for a local week,
    /// local midnight (usually a moment inside a UTC day).
    pub from: DateTime<Utc>,
    /// The moment the window ends (usually "now").
    pub to: DateTime<Utc>,
}

impl Window {
    /// The window of `days` UTC days (today included) ending at `now`.
    pub fn ending_at(now: DateTime<Utc>, days: u32) -> Self {
        debug_assert!(days >= 1, "a window holds at least today");
        let today = now.date_naive();
        let first_day = today
            .checked_sub_days(Days::new(u64::from(days.saturating_sub(1))))
            .unwrap_or(NaiveDate::MIN);
        Self {
            from: day_start(first_day),
            to: now,
        }
    }

    /// The product window (7 days) ending at `now`.
    pub fn last_week(now: DateTime<Utc>) -> Self {
        Self::ending_at(now, WINDOW_DAYS)
    }

    /// The product window as a user in `tz` sees it: from local midnight six days before
    /// the local date of `now`, up to `now` (7 local days, today's included). Its length
    /// varies with daylight-saving changes inside it (167 to 169 hours for full days).
    pub fn last_week_in(now: DateTime<Utc>, tz: Tz) -> Self {
        let local_today = now.with_timezone(&tz).date_naive();
        let first_day = local_today
            .checked_sub_days(Days::new(u64::from(WINDOW_DAYS - 1)))
            .unwrap_or(NaiveDate::MIN);
        Self {
            from: local_day_start(first_day, tz),
            to: now,
        }
    }

    /// Whether the window starts inside a UTC day (a local week), so that its first UTC day
    /// is only partly in it.
    pub fn starts_inside_a_day(&self) -> bool {
        self.from != day_start(self.from.date_naive())
    }

    /// The window a consumed Kafka record is judged against: the product window ending at
    /// the record's timestamp, so that re-reading the record later (a replay after a crash,
    /// a restore from the archive) decides it exactly as the first read did. A record without
    /// a timestamp is checked against the contract only (every time is inside).
    pub fn for_record(record_timestamp_ms: Option<i64>) -> Self {
        record_timestamp_ms
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .map_or(
                Self {
                    from: DateTime::<Utc>::MIN_UTC,
                    to: DateTime::<Utc>::MAX_UTC,
                },
                Self::last_week,
            )
    }

    pub fn today(&self) -> NaiveDate {
        self.to.date_naive()
    }

    /// The UTC days before today, oldest first: full days, except the first one when the
    /// window [starts inside it](Self::starts_inside_a_day).
    pub fn previous_days(&self) -> Vec<NaiveDate> {
        self.from
            .date_naive()
            .iter_days()
            .take_while(|day| *day < self.today())
            .collect()
    }

    /// Whether `ts_ms` is inside the window, allowing [`MAX_FUTURE_SKEW_MS`] past its end.
    pub fn admits(&self, ts_ms: i64) -> Result<(), OutsideWindow> {
        if ts_ms < self.from.timestamp_millis() {
            return Err(OutsideWindow::TooOld);
        }
        if ts_ms
            > self
                .to
                .timestamp_millis()
                .saturating_add(MAX_FUTURE_SKEW_MS)
        {
            return Err(OutsideWindow::InFuture);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutsideWindow {
    TooOld,
    InFuture,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_local_week_starts_at_local_midnight_six_days_ago() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let los_angeles: Tz = "America/Los_Angeles".parse().unwrap();
        // 11:15 in Berlin (UTC+1): the week starts 2026-11-18 00:00 CET.
        let window = Window::last_week_in(at("2026-11-24T10:15:00Z"), berlin);
        assert_eq!(window.from, at("2026-11-17T23:00:00Z"));
        assert!(window.starts_inside_a_day());
        assert_eq!(window.previous_days().len(), 7);
        // 02:15 in Los Angeles (UTC-8): 2026-11-18 00:00 PST.
        let window = Window::last_week_in(at("2026-11-24T10:15:00Z"), los_angeles);
        assert_eq!(window.from, at("2026-11-18T08:00:00Z"));
        assert_eq!(window.previous_days().len(), 6);
        // Across local midnight in Los Angeles: 23:59 on the 23rd, then 00:01 on the 24th.
        let before = Window::last_week_in(at("2026-11-24T07:59:00Z"), los_angeles);
        let after = Window::last_week_in(at("2026-11-24T08:01:00Z"), los_angeles);
        assert_eq!(before.from, at("2026-11-17T08:00:00Z"));
        assert_eq!(after.from, at("2026-11-18T08:00:00Z"));
        // UTC itself: the UTC week.
        let now = at("2026-11-24T10:15:00Z");
        assert_eq!(Window::last_week_in(now, Tz::UTC), Window::last_week(now));
        assert!(!Window::last_week(now).starts_inside_a_day());
    }

    #[test]
    fn daylight_saving_changes_inside_the_week_move_its_start() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // Summer time ended on 2026-10-25: the week's first midnight was still CEST (UTC+2).
        let window = Window::last_week_in(at("2026-10-27T12:00:00Z"), berlin);
        assert_eq!(window.from, at("2026-10-20T22:00:00Z"));
        // Santiago skips from 00:00 to 01:00 on 2026-09-06: the day starts at 01:00 (UTC-3).
        let santiago: Tz = "America/Santiago".parse().unwrap();
        assert_eq!(
            local_day_start(NaiveDate::from_ymd_opt(2026, 9, 6).unwrap(), santiago),
            at("2026-09-06T04:00:00Z")
        );
        // A zone 5:45 ahead: the week starts at a quarter past a UTC hour.
        let kathmandu: Tz = "Asia/Kathmandu".parse().unwrap();
        let window = Window::last_week_in(at("2026-11-24T10:15:00Z"), kathmandu);
        assert_eq!(window.from, at("2026-11-17T18:15:00Z"));
    }

    #[test]
    fn window_spans_today_and_six_previous_days() {
        let window = Window::last_week(at("2026-11-24T10:15:00Z"));
        assert_eq!(window.from, at("2026-11-18T00:00:00Z"));
        assert_eq!(window.previous_days().len(), 6);
        assert_eq!(
            window.previous_days().first().copied(),
            NaiveDate::from_ymd_opt(2026, 11, 18)
        );
        assert_eq!(
            window.today(),
            NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()
        );
    }

    #[test]
    fn admits_the_edges_and_rejects_outside() {
        let now = at("2026-11-24T10:15:00Z");
        let window = Window::last_week(now);
        let start = window.from.timestamp_millis();
        assert_eq!(window.admits(start), Ok(()));
        assert_eq!(window.admits(start - 1), Err(OutsideWindow::TooOld));
        let latest = now.timestamp_millis() + MAX_FUTURE_SKEW_MS;
        assert_eq!(window.admits(latest), Ok(()));
        assert_eq!(window.admits(latest + 1), Err(OutsideWindow::InFuture));
    }

    #[test]
    fn a_record_is_judged_by_its_own_timestamp() {
        let record_time = at("2026-11-24T10:15:00Z");
        let window = Window::for_record(Some(record_time.timestamp_millis()));
        assert_eq!(window, Window::last_week(record_time));
        let unbounded = Window::for_record(None);
        assert_eq!(unbounded.admits(0), Ok(()));
        assert_eq!(unbounded.admits(32_503_680_000_000), Ok(())); // year 3000
    }

    #[test]
    fn day_numbers_match_clickhouse_dates() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 18).unwrap();
        assert_eq!(day_number(NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()), 0);
        assert_eq!(day_number(day), 20775);
        assert_eq!(day_from_number(20775), day);
    }

    #[test]
    fn minute_bucket_of_negative_times_rounds_down() {
        assert_eq!(minute_bucket_secs(-1), -60);
        assert_eq!(minute_bucket_secs(59_999), 0);
        assert_eq!(minute_bucket_secs(60_000), 60);
    }

    proptest! {
        #[test]
        fn bucket_holds_its_timestamp(ts_ms in -10_000_000_000_000i64..10_000_000_000_000) {
            let bucket_ms = minute_bucket_secs(ts_ms) * 1000;
            prop_assert!(bucket_ms <= ts_ms && ts_ms < bucket_ms + 60_000);
            prop_assert_eq!(utc_day_of_ms(bucket_ms), utc_day_of_ms(ts_ms));
        }
    }
}
