use anyhow::Context;
use clap::Parser;
use serde::{Deserialize, Serialize};
use topk_loadgen::generate::{generate, GeneratedMessage, GeneratorSpec, Truth};
use topk_loadgen::listeners::{generate_listeners, to_messages, ListenerSpec, ListenerTier};
use topk_loadgen::produce::{produce_all, producer};

/// Produces realistic play events to Kafka: Zipf-distributed users and songs, with a chosen
/// share of duplicates (client retries), malformed and late events; or, with --listeners, a
/// week of realistic listeners.
#[derive(Debug, Parser, Serialize, Deserialize)]
#[command(name = "topk-loadgen", version, about, long_about = None)]
struct LoadgenConfig {
    /// TOML file with any of the options below; env vars and flags override it.
    #[arg(long, env = "TOPK_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "TOPK_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// Topic of play events.
    #[arg(long, env = "TOPK_PLAYS_TOPIC", default_value = "plays")]
    plays_topic: String,
    /// Messages to produce (duplicates included).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Distinct users.
    #[arg(long, default_value_t = 1_000)]
    users: u64,
    /// Distinct songs.
    #[arg(long, default_value_t = 5_000)]
    songs: u64,
    /// Zipf exponent of users and songs.
    #[arg(long, default_value_t = 1.1)]
    zipf_exponent: f64,
    /// Random seed: the same seed gives the same events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of events sent twice, 0..1.
    #[arg(long, default_value_t = 0.01)]
    duplicate_share: f64,
    /// Share of malformed events, 0..1.
    #[arg(long, default_value_t = 0.01)]
    malformed_share: f64,
    /// Share of late (earlier in the 7-day window) events, 0..1.
    #[arg(long, default_value_t = 0.0)]
    late_share: f64,
    /// Produce a week of realistic listeners instead: tiers of users with personal libraries
    /// of 2000–5000 songs and a Zipf taste that drifts daily, the 7-day window's plays up to
    /// now in arrival order, offline plays delivered late and client resends (a share of
    /// --duplicate-share). --seed and --rate apply; --events, --users, --songs,
    /// --zipf-exponent, --malformed-share and --late-share do not.
    #[arg(long, help_heading = "Realistic listeners")]
    listeners: bool,
    /// With --listeners: tiers of users as USERSxPLAYS_PER_DAY[@ZIPF_EXPONENT],
    /// comma-separated (the exponent defaults to 1.0).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100x30,100x100,50x300",
        help_heading = "Realistic listeners"
    )]
    listener_tiers: Vec<String>,
    /// With --listeners: share of listening time spent offline, 0..1; those plays arrive when
    /// the device reconnects, an hour to 5 days later.
    #[arg(long, default_value_t = 0.03, help_heading = "Realistic listeners")]
    offline_share: f64,
    /// Messages per second; 0 sends as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Create the plays topic with this many partitions first (if it does not exist), plus
    /// the topics named by --create-topics.
    #[arg(long)]
    create_partitions: Option<i32>,
    /// More topics to create (one partition each) when --create-partitions is given, e.g.
    /// the dead-letter topic.
    #[arg(long, value_delimiter = ',')]
    create_topics: Vec<String>,
    /// Also write a sample song catalog of the --songs songs (`song-1` .. `song-N`: titles,
    /// artists, albums, genres, lengths) to this NDJSON file, for `topk-catalog load`.
    #[arg(long)]
    catalog_out: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    topk_core::telemetry::init();
    let config: LoadgenConfig = topk_core::config::load();
    if let Some(partitions) = config.create_partitions {
        let mut topics = vec![(config.plays_topic.clone(), partitions)];
        topics.extend(config.create_topics.iter().map(|topic| (topic.clone(), 1)));
        topk_loadgen::produce::ensure_topics(&config.kafka_brokers, &topics)
            .await
            .context("creating topics")?;
    }
    if let Some(path) = &config.catalog_out {
        use std::io::Write;
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        for line in topk_loadgen::catalog::sample_catalog(config.songs, config.seed) {
            writeln!(out, "{line}").with_context(|| format!("writing {}", path.display()))?;
        }
        out.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "loadgen: a sample catalog of {} songs written to {}",
            config.songs,
            path.display()
        );
    }
    let messages = if config.listeners {
        listener_messages(&config)?
    } else {
        let mut spec = GeneratorSpec::new(config.events, chrono::Utc::now());
        spec.users = config.users;
        spec.songs = config.songs;
        spec.zipf_exponent = config.zipf_exponent;
        spec.seed = config.seed;
        spec.duplicate_share = config.duplicate_share;
        spec.malformed_share = config.malformed_share;
        spec.late_share = config.late_share;
        generate(&spec)
    };
    let producer = producer(&config.kafka_brokers).context("creating the Kafka producer")?;
    let started = std::time::Instant::now();
    produce_all(
        &producer,
        &config.plays_topic,
        &messages,
        config.rate,
        |sent| {
            eprintln!("loadgen: {sent}/{} messages sent", messages.len());
        },
    )
    .await
    .with_context(|| {
        format!(
            "producing to {} at {}",
            config.plays_topic, config.kafka_brokers
        )
    })?;
    let malformed = messages
        .iter()
        .filter(|m| matches!(m.truth, Truth::Malformed(_)))
        .count();
    let duplicates = messages
        .iter()
        .filter(|m| matches!(m.truth, Truth::Duplicate { .. }))
        .count();
    println!(
        "produced {} messages ({} duplicates, {} malformed) to {} in {:.1}s",
        messages.len(),
        duplicates,
        malformed,
        config.plays_topic,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The messages of a week of realistic listeners ending now, in arrival order.
fn listener_messages(config: &LoadgenConfig) -> anyhow::Result<Vec<GeneratedMessage>> {
    let mut spec = ListenerSpec::new(chrono::Utc::now());
    spec.tiers = config
        .listener_tiers
        .iter()
        .map(|tier| tier.parse::<ListenerTier>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()
        .context("--listener-tiers")?;
    spec.seed = config.seed;
    spec.retry_share = config.duplicate_share;
    spec.offline_share = config.offline_share;
    let traffic = generate_listeners(&spec);
    eprintln!(
        "loadgen: {} listeners, {} deliveries in the week ending {}",
        traffic.listeners.len(),
        traffic.plays.len(),
        spec.now.to_rfc3339()
    );
    Ok(to_messages(&traffic.plays))
}
