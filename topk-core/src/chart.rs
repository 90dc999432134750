//! Charts: which plays count, and over which span of time, for the top songs of everyone
//! (globally, in a region, of a genre or of an artist). The counting rules live here because
//! the rollup (which writes `chart_hourly`), the API (which reads it and the minute rows) and
//! the tests' brute force must agree on them.
//!
//! **What counts.** A valid play counts for the charts when it is chart-eligible
//! ([`crate::event::PlayEvent::chart_eligible`]: played at least 30 s, or of unknown length)
//! and falls inside the chart's window. Then, against spam, **one user counts at most
//! [`DEFAULT_USER_HOUR_CAP`] plays of one song per UTC clock hour and region**: a user's
//! plays of a song are grouped by (region, clock hour), and each group counts
//! `min(cap, plays)`, where a clock hour only partly inside the window counts the plays of
//! its part inside. **Listeners** are the distinct users with at least one counted play.
//!
//! Capping per clock hour keeps the counts additive: an hour's capped sum never changes when
//! other hours get plays, so `chart_hourly` can hold one row per (hour, region, song) and a
//! 7-day chart sums them.
//!
//! **Windows.** A chart is asked "as of" a moment (default now); every window ends at that
//! moment rounded up to the whole minute ([`ChartWindow::span`]). `1h` and `24h` are the 60
//! and 1 440 minutes before that, sliding minute by minute. `7d` starts at a whole UTC hour
//! (the first one at most 7 days back), so it holds up to 168 hours: the whole hours before
//! the current one, read from the hourly rollups, and the current hour up to the end minute.
//! The previous period ([`ChartWindow::previous`], for `prev_rank`) is the same window as of
//! this one's start: the 60 or 1 440 minutes right before it, or for `7d` the 168 whole hours
//! right before it (so it never needs minute rows, which are kept 7 days only).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, DurationRound, Utc};

/// How many plays of one song, in one region and one UTC clock hour, count for one user by
/// default. A 3-minute song played on repeat for a whole hour is 20 plays, so no real listener
/// loses a play to it, while a client faking plays (a 30-second play every 30 seconds is 120
/// an hour) counts 6× less. Over a day it is 480 plays of one song, about ListenBrainz's cap
/// of 500 listens per user and recording in its sitewide statistics.
pub const DEFAULT_USER_HOUR_CAP: u64 = 20;

/// How far back `as_of` may go: the minute rows the partial hours of a window and of its
/// previous period are read from are kept 7 days back, and the hourly rollups 16 days.
pub const MAX_AS_OF_AGE: Duration = Duration::hours(24);

/// Days of `chart_hourly` the rollup job keeps by default: a `7d` window as of 24 hours ago
/// and its previous period reach 15 days and an hour back.
pub const DEFAULT_CHART_RETENTION_DAYS: u32 = 16;

/// The length of a chart: `1h`, `24h` or `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChartWindow {
    Hour,
    Day,
    Week,
}

impl ChartWindow {
    pub const ALL: [ChartWindow; 3] = [Self::Hour, Self::Day, Self::Week];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "1h",
            Self::Day => "24h",
            Self::Week => "7d",
        }
    }

    /// The window's nominal length.
    pub fn length(self) -> Duration {
        match self {
            Self::Hour => Duration::hours(1),
            Self::Day => Duration::hours(24),
            Self::Week => Duration::days(7),
        }
    }

    /// The window of this length as of `as_of` (see the module docs).
    pub fn span(self, as_of: DateTime<Utc>) -> ChartSpan {
        let to = ceil_to(as_of, Duration::minutes(1));
        let from = match self {
            Self::Hour | Self::Day => to - self.length(),
            Self::Week => ceil_to(to - self.length(), Duration::hours(1)),
        };
        ChartSpan { from, to }
    }

    /// The previous period of `span` (a span of this window): the same window as of `span`'s
    /// start.
    pub fn previous(self, span: &ChartSpan) -> ChartSpan {
        self.span(span.from)
    }
}

impl fmt::Display for ChartWindow {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for ChartWindow {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|window| window.as_str() == text)
            .ok_or_else(|| {
                let shown: String = text.chars().take(32).collect();
                format!("window must be one of 1h, 24h, 7d, got {shown:?}")
            })
    }
}

/// A span of time `[from, to)`, both on whole minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChartSpan {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl ChartSpan {
    pub fn contains(&self, time: DateTime<Utc>) -> bool {
        self.from <= time && time < self.to
    }

    /// The whole UTC clock hours inside the span, as `[first, end)` (empty when `first >=
    /// end`).
    pub fn whole_hours(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        (
            ceil_to(self.from, Duration::hours(1)),
            floor_to(self.to, Duration::hours(1)),
        )
    }
}

/// `time` rounded down to a multiple of `unit` since the epoch.
pub fn floor_to(time: DateTime<Utc>, unit: Duration) -> DateTime<Utc> {
    time.duration_trunc(unit).unwrap_or(time)
}

/// `time` rounded up to a multiple of `unit` since the epoch.
pub fn ceil_to(time: DateTime<Utc>, unit: Duration) -> DateTime<Utc> {
    let floor = floor_to(time, unit);
    if floor == time {
        time
    } else {
        floor + unit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn windows_end_at_as_of_rounded_up_to_the_minute() {
        let as_of = at("2026-11-30T12:34:20Z");
        let hour = ChartWindow::Hour.span(as_of);
        assert_eq!(hour.from, at("2026-11-30T11:35:00Z"));
        assert_eq!(hour.to, at("2026-11-30T12:35:00Z"));
        let day = ChartWindow::Day.span(as_of);
        assert_eq!(day.from, at("2026-11-29T12:35:00Z"));
        assert_eq!(day.to, hour.to);
        // On a whole minute, that minute is not in the window.
        assert_eq!(
            ChartWindow::Hour.span(at("2026-11-30T12:00:00Z")).to,
            at("2026-11-30T12:00:00Z")
        );
    }

    #[test]
    fn the_week_starts_on_a_whole_hour_at_most_seven_days_back() {
        let week = ChartWindow::Week.span(at("2026-11-30T12:34:20Z"));
        assert_eq!(week.from, at("2026-11-23T13:00:00Z"));
        assert_eq!(week.to, at("2026-11-30T12:35:00Z"));
        assert_eq!(week.whole_hours(), (week.from, at("2026-11-30T12:00:00Z")));
        let previous = ChartWindow::Week.previous(&week);
        assert_eq!(previous.to, week.from);
        assert_eq!(previous.from, week.from - Duration::days(7));
        let hour = ChartWindow::Hour.span(at("2026-11-30T12:34:20Z"));
        let before = ChartWindow::Hour.previous(&hour);
        assert_eq!(
            (before.from, before.to),
            (hour.from - Duration::hours(1), hour.from)
        );
        let on_the_hour = ChartWindow::Week.span(at("2026-11-30T12:00:00Z"));
        assert_eq!(on_the_hour.to - on_the_hour.from, Duration::days(7));
    }

    #[test]
    fn windows_parse_from_their_names_only() {
        for window in ChartWindow::ALL {
            assert_eq!(window.as_str().parse::<ChartWindow>(), Ok(window));
        }
        assert!("1d".parse::<ChartWindow>().is_err());
        assert!("".parse::<ChartWindow>().is_err());
    }

    #[test]
    fn whole_hours_of_a_sliding_hour_may_be_none() {
        let hour = ChartWindow::Hour.span(at("2026-11-30T12:34:20Z"));
        let (first, end) = hour.whole_hours();
        assert_eq!(first, at("2026-11-30T12:00:00Z"));
        assert_eq!(end, at("2026-11-30T12:00:00Z"));
    }
}
