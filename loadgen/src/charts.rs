//! The brute-force charts: from the generated events alone, what every chart must say
//! (`topk_core::chart` states the rules; this counts them the slow, obvious way).

use std::collections::{BTreeSet, HashMap};

use topk_core::chart::ChartSpan;
use topk_core::event::PlayEvent;

use crate::generate::{counted_events, GeneratedMessage};

/// One song of a chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedChartSong {
    pub song_id: String,
    pub plays: u64,
    pub listeners: u64,
}

/// The whole chart of `span` over the valid, distinct events that `in_scope` keeps: each
/// chart-eligible play (`chart_min_played_ms`) inside the span is counted per (user, song,
/// region, UTC clock hour), each such group counting at most `cap`; ranked by plays
/// descending, then song id ascending.
pub fn expected_chart(
    messages: &[GeneratedMessage],
    span: &ChartSpan,
    in_scope: impl Fn(&PlayEvent) -> bool,
    cap: u64,
    chart_min_played_ms: u64,
) -> Vec<ExpectedChartSong> {
    let from_ms = span.from.timestamp_millis();
    let to_ms = span.to.timestamp_millis();
    let mut groups: HashMap<(&str, &str, &str, i64), u64> = HashMap::new();
    for event in counted_events(messages) {
        if event.ts < from_ms
            || event.ts >= to_ms
            || !event.chart_eligible(chart_min_played_ms)
            || !in_scope(event)
        {
            continue;
        }
        let hour = event.ts.div_euclid(3_600_000);
        let region = event.region.as_deref().unwrap_or("");
        *groups
            .entry((&event.user_id, &event.song_id, region, hour))
            .or_default() += 1;
    }
    let mut songs: HashMap<&str, (u64, BTreeSet<&str>)> = HashMap::new();
    for ((user_id, song_id, _, _), plays) in groups {
        let song = songs.entry(song_id).or_default();
        song.0 += plays.min(cap);
        song.1.insert(user_id);
    }
    let mut chart: Vec<ExpectedChartSong> = songs
        .into_iter()
        .map(|(song_id, (plays, listeners))| ExpectedChartSong {
            song_id: song_id.to_owned(),
            plays,
            listeners: listeners.len() as u64,
        })
        .collect();
    chart.sort_by(|a, b| {
        b.plays
            .cmp(&a.plays)
            .then_with(|| a.song_id.cmp(&b.song_id))
    });
    chart
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::Truth;
    use chrono::{DateTime, Utc};

    fn play(
        event_id: &str,
        user: &str,
        song: &str,
        ts: &str,
        played_ms: Option<u64>,
    ) -> GeneratedMessage {
        let ts = DateTime::parse_from_rfc3339(ts).unwrap().timestamp_millis();
        let mut event = PlayEvent::new(event_id, user, song, ts);
        event.played_ms = played_ms;
        event.region = Some("DE".into());
        GeneratedMessage {
            key: user.into(),
            payload: Vec::new(),
            truth: Truth::Valid(event),
        }
    }

    #[test]
    fn plays_are_capped_per_user_song_region_and_hour() {
        let mut messages = Vec::new();
        // u1 plays s1 five times in hour 12 and twice in hour 13; u2 once; a short play and
        // one outside the span do not count.
        for index in 0..5 {
            messages.push(play(
                &format!("a{index}"),
                "u1",
                "s1",
                "2026-11-30T12:10:00Z",
                None,
            ));
        }
        messages.push(play("b0", "u1", "s1", "2026-11-30T13:10:00Z", Some(40_000)));
        messages.push(play("b1", "u1", "s1", "2026-11-30T13:20:00Z", Some(40_000)));
        messages.push(play("c0", "u2", "s2", "2026-11-30T13:00:00Z", None));
        messages.push(play("c1", "u2", "s2", "2026-11-30T13:01:00Z", Some(29_999)));
        messages.push(play("d0", "u3", "s3", "2026-11-30T14:00:00Z", None));
        // A resend counts once.
        messages.push(messages[0].clone());
        let span = ChartSpan {
            from: "2026-11-30T12:00:00Z".parse::<DateTime<Utc>>().unwrap(),
            to: "2026-11-30T14:00:00Z".parse::<DateTime<Utc>>().unwrap(),
        };
        let chart = expected_chart(&messages, &span, |_| true, 3, 30_000);
        assert_eq!(
            chart,
            vec![
                ExpectedChartSong {
                    song_id: "s1".into(),
                    plays: 3 + 2,
                    listeners: 1
                },
                ExpectedChartSong {
                    song_id: "s2".into(),
                    plays: 1,
                    listeners: 1
                },
            ]
        );
        let none = expected_chart(&messages, &span, |event| event.song_id == "s9", 3, 30_000);
        assert!(none.is_empty());
    }
}
