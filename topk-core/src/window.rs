//! Time: minute buckets, UTC days and the "last 7 days" window.
//!
//! The window ending at `now` is today (UTC, from midnight up to `now`) plus the
//! `days - 1` previous full UTC days. Events before the window's start are too old to count;
//! events more than [`MAX_FUTURE_SKEW_MS`] after `now` are rejected as clock errors.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeZone, Utc};

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

/// The day of a ClickHouse `Date` number.
pub fn day_from_number(number: u16) -> NaiveDate {
    NaiveDate::default()
        .checked_add_days(Days::new(u64::from(number)))
        .unwrap_or(NaiveDate::MAX)
}

/// A window of whole UTC days ending at a moment inside its last day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Midnight UTC of the first day in the window.
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

    /// The full days before today, oldest first.
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
