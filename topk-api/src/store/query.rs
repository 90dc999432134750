//! The SQL of a read: which tables a window's days are read from, and the two queries that
//! read them for one user or for a batch of users at once (see the module docs of
//! [`super`]).
//!
//! A batch reads exactly what the users' own queries would read: the same conditions, with
//! `user_id IN (..)` instead of `user_id = ..`, rows summed per user and song, and the second
//! query restricted to each user's own truncated days (`(user_id, day) IN (..)`), so a day
//! truncated for one user is never read from minute rows for another.

use chrono::NaiveDate;
use topk_core::committed::CommittedFlushes;
use topk_core::schema::{DAILY_TOP, PLAYS_MINUTE};
use topk_core::snapshots::DayHeads;
use topk_core::window::{day_number, day_start, Window};

use super::{DaySource, ReadPlan};

/// Which tables one request reads for which days, and the SQL for it.
#[derive(Debug, Clone)]
pub(super) struct WindowPlan {
    first_day: NaiveDate,
    last_day: NaiveDate,
    window_end_secs: i64,
    committed: topk_core::committed::CommittedArrays,
    /// Snapshot ids of the days read from top lists.
    pub(super) snapshot_ids: Vec<u64>,
    /// Days read from top lists (with or without minute rows).
    top_list_days: Vec<u16>,
    /// Days read from top lists alone (their minute rows are gone).
    pub(super) top_lists_only_days: Vec<u16>,
    /// Days with plays committed after their snapshot, and their snapshots' heads.
    pub(super) late_days: Vec<u16>,
    pub(super) late_heads: DayHeads,
    /// The start of the first day every user's minute rows are needed for (a day read from
    /// minute rows, or with late plays).
    pub(super) minutes_from_secs: i64,
    /// A day read from top lists alone had plays committed after its rollup.
    pub(super) plays_lost: bool,
    /// See [`super::ReadPlan::data_through`].
    pub(super) data_through: Option<chrono::DateTime<chrono::Utc>>,
}

/// A user whose top lists of `days` (sorted day numbers, not empty) are truncated: the
/// second query reads those days' minute rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TruncatedDays<'a> {
    pub user_id: &'a str,
    pub days: Vec<u16>,
}

/// `user_id = ?` for one user, `user_id IN (?, ?, ..)` for several (both use the primary
/// key's index).
fn users_condition(count: usize) -> String {
    debug_assert!(count >= 1, "a query reads at least one user");
    if count <= 1 {
        return "user_id = ?".to_owned();
    }
    format!("user_id IN ({})", vec!["?"; count].join(", "))
}

fn bind_users(mut query: clickhouse::query::Query, users: &[&str]) -> clickhouse::query::Query {
    for user_id in users {
        query = query.bind(*user_id);
    }
    query
}

impl WindowPlan {
    pub(super) fn new(window: &Window, plan: &ReadPlan) -> Self {
        let today = window.today();
        let mut days: Vec<NaiveDate> = window.previous_days();
        days.push(today);
        let mut this = Self {
            first_day: window.from.date_naive(),
            last_day: today,
            window_end_secs: window.to.timestamp(),
            committed: plan.committed.arrays(),
            data_through: plan.data_through,
            snapshot_ids: Vec::new(),
            top_list_days: Vec::new(),
            top_lists_only_days: Vec::new(),
            late_days: Vec::new(),
            late_heads: DayHeads::default(),
            minutes_from_secs: day_start(today).timestamp(),
            plays_lost: false,
        };
        let mut late_snapshots = Vec::new();
        let mut first_minutes_day = today;
        // A local week's first UTC day is in the window from local midnight on: only its
        // minute rows can be cut there (a top list covers the whole day).
        let partial_first_day = window
            .starts_inside_a_day()
            .then(|| window.from.date_naive());
        if let Some(first) = partial_first_day {
            days.retain(|day| *day != first);
            first_minutes_day = first;
            this.first_day = first.succ_opt().unwrap_or(first);
            if matches!(plan.source(first, today), DaySource::TopListsOnly { .. }) {
                // Its minute rows are gone: the part of the day in the window cannot be read.
                this.plays_lost = true;
            }
        }
        for day in days {
            match plan.source(day, today) {
                DaySource::Minutes => first_minutes_day = first_minutes_day.min(day),
                DaySource::TopLists { snapshot_id, late } => {
                    this.snapshot_ids.push(snapshot_id);
                    this.top_list_days.push(day_number(day));
                    if late {
                        this.late_days.push(day_number(day));
                        late_snapshots.push(&plan.snapshots[&day]);
                        first_minutes_day = first_minutes_day.min(day);
                    }
                }
                DaySource::TopListsOnly { snapshot_id, late } => {
                    this.snapshot_ids.push(snapshot_id);
                    this.top_list_days.push(day_number(day));
                    this.top_lists_only_days.push(day_number(day));
                    this.plays_lost |= late;
                }
            }
        }
        this.late_heads = DayHeads::of(late_snapshots);
        this.minutes_from_secs = match partial_first_day {
            Some(first) if first == first_minutes_day => window.from.timestamp(),
            _ => day_start(first_minutes_day).timestamp(),
        };
        this
    }

    /// In-memory twin of the SQL (for the model test): whether the first query reads a
    /// committed minute row of day `day` (a day number)
    /// that was (`late_row`) or was not committed after that day's snapshot: rows of the days
    /// no top list covers from the first minute day on, and late rows of late days.
    #[cfg(test)]
    pub(super) fn first_query_reads(&self, day: u16, late_row: bool) -> bool {
        i64::from(day) * 86_400 >= self.minutes_from_secs
            && (!self.top_list_days.contains(&day) || (late_row && self.late_days.contains(&day)))
    }

    /// In-memory twin of the SQL: whether the truncated-days query reads such a row of a user
    /// whose lists of `truncated` days are truncated: every row of those days but the late
    /// rows the first query already read.
    #[cfg(test)]
    pub(super) fn truncated_query_reads(
        &self,
        truncated: &[u16],
        day: u16,
        late_row: bool,
    ) -> bool {
        truncated.contains(&day) && !(late_row && self.late_days.contains(&day))
    }

    /// The first query, for `users` (distinct, not empty): each user's top lists of the days
    /// read from them (a truncated list that has minute rows as one marker row with an empty
    /// `song_id` listing those days in `truncated_days_unread`) and the minute rows
    /// [`Self::first_query_reads`] names, summed per user and song. Every value is bound;
    /// clauses the plan does not need are left out.
    pub(super) fn first_query(
        &self,
        client: &clickhouse::Client,
        users: &[&str],
    ) -> clickhouse::query::Query {
        let only_days = !self.top_lists_only_days.is_empty();
        let (kind, keep_truncated) = if only_days {
            (
                "multiIf(user_truncated = 0, 0, has(CAST(? AS Array(UInt16)), toUInt16(day)), 1, 2)",
                "(user_truncated = 0 OR rank = 1 OR has(CAST(? AS Array(UInt16)), toUInt16(day)))",
            )
        } else {
            (
                "if(user_truncated = 0, 0, 2)",
                "(user_truncated = 0 OR rank = 1)",
            )
        };
        let minutes_to_day = self.window_end_secs.div_euclid(86_400);
        let minutes_from_day = self.minutes_from_secs.div_euclid(86_400);
        let top_list_in_minutes = self
            .top_list_days
            .iter()
            .any(|&day| (minutes_from_day..=minutes_to_day).contains(&i64::from(day)));
        let day_filter = match (top_list_in_minutes, self.late_days.is_empty()) {
            (false, _) => String::new(),
            (true, true) => {
                " AND NOT has(CAST(? AS Array(UInt16)), toUInt16(toDate(minute)))".to_owned()
            }
            (true, false) => format!(
                " AND (NOT has(CAST(? AS Array(UInt16)), toUInt16(toDate(minute))) \
                   OR (has(CAST(? AS Array(UInt16)), toUInt16(toDate(minute))) AND {late}))",
                late = DayHeads::condition("toUInt16(toDate(minute))"),
            ),
        };
        let sql = format!(
            "SELECT user_id, song AS song_id, sum(song_plays) AS total_plays, \
             groupArrayIf((day_number, cutoff_plays), kind = 1) AS truncated_days_present, \
             groupArrayIf(day_number, kind = 2) AS truncated_days_unread \
             FROM ( \
                 SELECT user_id, if(kind = 2, '', song_id) AS song, \
                        if(kind = 2, 0, plays) AS song_plays, \
                        toUInt16(day) AS day_number, {kind} AS kind, \
                        user_cutoff_plays AS cutoff_plays \
                 FROM {DAILY_TOP} PREWHERE {users} \
                 WHERE day >= toDate(?) AND day <= toDate(?) \
                   AND has(CAST(? AS Array(UInt64)), snapshot_id) AND {keep_truncated} \
                 UNION ALL \
                 SELECT user_id, song_id AS song, plays AS song_plays, \
                        toUInt16(toDate(minute)) AS day_number, \
                        toUInt8(0) AS kind, toUInt64(0) AS cutoff_plays \
                 FROM {PLAYS_MINUTE} PREWHERE {users} \
                 WHERE minute >= toDateTime(?) AND minute <= toDateTime(?) \
                   AND {committed}{day_filter} \
             ) GROUP BY user_id, song HAVING total_plays > 0 OR song = ''",
            users = users_condition(users.len()),
            committed = CommittedFlushes::condition(""),
        );
        let minutes_from = u32::try_from(self.minutes_from_secs.max(0)).unwrap_or(u32::MAX);
        let mut query = client.query(&sql);
        if only_days {
            query = query.bind(&self.top_lists_only_days);
        }
        query = bind_users(query, users)
            .bind(self.first_day.to_string())
            .bind(self.last_day.to_string())
            .bind(&self.snapshot_ids);
        if only_days {
            query = query.bind(&self.top_lists_only_days);
        }
        query = bind_users(query, users)
            .bind(minutes_from)
            .bind(self.window_end_secs);
        query = self.committed.bind(query);
        if top_list_in_minutes {
            query = query.bind(&self.top_list_days);
            if !self.late_days.is_empty() {
                query = self.late_heads.bind(query.bind(&self.late_days));
            }
        }
        query
    }

    /// The second query, for users whose lists of some days are truncated (`truncated`: not
    /// empty, one entry per user): each user's minute rows of their own truncated days as
    /// [`Self::truncated_query_reads`] names them, summed per user and song.
    pub(super) fn truncated_days_query(
        &self,
        client: &clickhouse::Client,
        truncated: &[TruncatedDays<'_>],
    ) -> clickhouse::query::Query {
        debug_assert!(truncated.iter().all(|user| !user.days.is_empty()));
        let late_overlap = truncated
            .iter()
            .flat_map(|user| &user.days)
            .any(|day| self.late_days.contains(day));
        let not_late = if late_overlap {
            format!(
                " AND NOT (has(CAST(? AS Array(UInt16)), toUInt16(toDate(minute))) AND {late})",
                late = DayHeads::condition("toUInt16(toDate(minute))"),
            )
        } else {
            String::new()
        };
        // One user: their days as an array, as a lone request has always sent it; several:
        // (user, day) pairs.
        let own_days = match truncated {
            [_] => "has(CAST(? AS Array(UInt16)), toUInt16(toDate(minute)))".to_owned(),
            _ => {
                let pairs = truncated.iter().map(|user| user.days.len()).sum();
                format!(
                    "(user_id, toUInt16(toDate(minute))) IN ({})",
                    vec!["?"; pairs].join(", ")
                )
            }
        };
        let sql = format!(
            "SELECT user_id, song_id, sum(plays) AS total_plays FROM {PLAYS_MINUTE} \
             PREWHERE {users} \
             WHERE minute >= toDateTime(?) AND minute < toDateTime(?) \
               AND {own_days} AND {committed}{not_late} \
             GROUP BY user_id, song_id",
            users = users_condition(truncated.len()),
            committed = CommittedFlushes::condition(""),
        );
        let days = truncated.iter().flat_map(|user| user.days.iter().copied());
        let first = u32::from(days.clone().min().unwrap_or(0)) * 86_400;
        let end = (u32::from(days.max().unwrap_or(0)) + 1) * 86_400;
        let users: Vec<&str> = truncated.iter().map(|user| user.user_id).collect();
        let mut query = bind_users(client.query(&sql), &users).bind(first).bind(end);
        match truncated {
            [user] => query = query.bind(&user.days),
            _ => {
                for user in truncated {
                    for day in &user.days {
                        query = query.bind((user.user_id, *day));
                    }
                }
            }
        }
        let query = self.committed.bind(query);
        if late_overlap {
            self.late_heads.bind(query.bind(&self.late_days))
        } else {
            query
        }
    }
}

/// A row of [`WindowPlan::first_query`].
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub(super) struct FirstQueryRow {
    pub user_id: String,
    pub song_id: String,
    pub total_plays: u64,
    pub truncated_days_present: Vec<(u16, u64)>,
    pub truncated_days_unread: Vec<u16>,
}

/// A row of [`WindowPlan::truncated_days_query`].
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub(super) struct MinuteSongRow {
    pub user_id: String,
    pub song_id: String,
    pub total_plays: u64,
}
