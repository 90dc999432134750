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
