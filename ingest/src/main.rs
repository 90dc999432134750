use anyhow::Context;
use topk_ingest::config::IngestConfig;
use topk_ingest::IngestState;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    topk_core::telemetry::init();
    // Handlers first: a SIGTERM during startup still means "stop cleanly".
    let shutdown = topk_api::shutdown_signal();
    let config: IngestConfig = topk_core::config::load();
    let state = IngestState::from_config(&config).context("invalid configuration")?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        kafka_brokers = %config.kafka_brokers,
        topic = %config.plays_topic,
        auth_mode = ?config.auth_mode,
        kafka_deadline_ms = config.kafka_deadline_ms,
        "ingest listening"
    );
    topk_ingest::serve(listener, state, shutdown, config.shutdown_timeout())
        .await
        .context("serving http")?;
    tracing::info!("ingest stopped");
    Ok(())
}
