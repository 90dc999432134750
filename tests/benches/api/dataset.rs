//! The reference dataset: Zipf-distributed plays, six rolled-up days and today's minute rows.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use topk_core::db::ClickHouseOptions;
use topk_core::schema::{
    DailyTopRow, MinuteRow, RollupProgressRow, DAILY_TOP, DAILY_TOP_SIZE, PLAYS_MINUTE,
    ROLLUP_PROGRESS,
};
use topk_core::window::day_start;

const CATALOG_SONGS: u64 = 200_000;

/// Six rolled-up days (daily top 50 + progress row) and today's minute rows up to `now`.
pub async fn load(
    options: &ClickHouseOptions,
    users: u64,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let client = options.client();
    let started = Instant::now();
    let zipf = Zipf::new(CATALOG_SONGS as f64, 1.1)?;
    let mut rng = StdRng::seed_from_u64(42);
    let today = now.date_naive();
    let minutes_so_far = (now - day_start(today)).num_minutes();
    let mut daily_rows = 0u64;
    let mut minute_rows = 0u64;
    let mut truncated_user_days = 0u64;
    for offset in (0..=6u64).rev() {
        let day: NaiveDate = today - Days::new(offset);
        let mut daily = client.insert::<DailyTopRow>(DAILY_TOP).await?;
        let mut minutes = client.insert::<MinuteRow>(PLAYS_MINUTE).await?;
        for user in 0..users {
            // Plays per user and day: heavy-tailed, from 1 to 400 (mean about 17).
            let plays = ((5.0 / rng.random::<f64>().powf(0.7)) as u64).clamp(1, 400);
            let mut counts: HashMap<u64, u64> = HashMap::new();
            for _ in 0..plays {
                // Each user's own favourites: the Zipf rank shifted per user.
                let rank = zipf.sample(&mut rng) as u64;
                *counts
                    .entry((rank + user * 7919) % CATALOG_SONGS)
                    .or_default() += 1;
            }
            let user_id = format!("u{user}");
            if offset == 0 {
                for (song, song_plays) in counts {
                    minutes
                        .write(&MinuteRow {
                            user_id: user_id.clone(),
                            song_id: format!("s{song}"),
                            minute: day_start(day)
                                + chrono::Duration::minutes(rng.random_range(0..minutes_so_far)),
                            plays: song_plays,
                            topic: "plays".to_owned(),
                            kafka_partition: 0,
                            flush_offset: 0,
                            claim_id: 0,
                            flush_seq: 0,
                        })
                        .await?;
                    minute_rows += 1;
                }
                continue;
            }
            let mut ranked: Vec<(String, u64)> = counts
                .into_iter()
                .map(|(song, song_plays)| (format!("s{song}"), song_plays))
                .collect();
            ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let user_songs = ranked.len() as u64;
            let truncated = ranked.len() > DAILY_TOP_SIZE;
            let cutoff = if truncated {
                ranked[DAILY_TOP_SIZE - 1].1
            } else {
                0
            };
            truncated_user_days += u64::from(truncated);
            for ((song_id, song_plays), rank) in ranked.into_iter().take(DAILY_TOP_SIZE).zip(1u16..)
            {
                daily
                    .write(&DailyTopRow {
                        day,
                        user_id: user_id.clone(),
                        rank,
                        song_id,
                        plays: song_plays,
                        user_songs,
                        user_truncated: u8::from(truncated),
                        user_cutoff_plays: cutoff,
                        snapshot_id: 0,
                    })
                    .await?;
                daily_rows += 1;
            }
        }
        daily.end().await?;
        minutes.end().await?;
        if offset > 0 {
            let mut progress = client.insert::<RollupProgressRow>(ROLLUP_PROGRESS).await?;
            progress
                .write(&RollupProgressRow {
                    day,
                    rolled_up_at: day_start(day) + chrono::Duration::hours(25),
                    minute_rows_read: 0,
                    plays_read: 0,
                    users,
                    rows_written: 0,
                    seconds: 0.0,
                    snapshot_id: 0,
                    snapshot_partitions: Vec::new(),
                    snapshot_newest_claim_ids: Vec::new(),
                    snapshot_newest_max_seqs: Vec::new(),
                })
                .await?;
            progress.end().await?;
        }
        println!(
            "loaded {day}: {daily_rows} daily rows, {minute_rows} minute rows so far ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    println!(
        "dataset: {users} users × 7 days, {daily_rows} daily top rows ({truncated_user_days} truncated user-days), \
         {minute_rows} minute rows today, in {:.1} s ({:.0} rows/s)",
        started.elapsed().as_secs_f64(),
        (daily_rows + minute_rows) as f64 / started.elapsed().as_secs_f64()
    );
    wait_for_merges(&client).await
}

/// Background merges right after a bulk load would compete with the measured runs.
async fn wait_for_merges(client: &clickhouse::Client) -> anyhow::Result<()> {
    let started = Instant::now();
    for table in [DAILY_TOP, PLAYS_MINUTE] {
        client
            .query(&format!("OPTIMIZE TABLE {table} FINAL"))
            .execute()
            .await?;
    }
    loop {
        let merges: u64 = client
            .query("SELECT count() FROM system.merges WHERE database = currentDatabase()")
            .fetch_one()
            .await?;
        if merges == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("merged in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
