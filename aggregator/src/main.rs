use std::process::ExitCode;

use topk_aggregator::config::AggregatorConfig;

#[tokio::main]
async fn main() -> ExitCode {
    topk_core::telemetry::init();
    // Handlers first: a SIGTERM during startup still means "stop cleanly".
    let shutdown = topk_core::shutdown::on_signal();
    let config: AggregatorConfig = topk_core::config::load();
    match topk_aggregator::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "aggregator failed");
            eprintln!("topk-aggregator: {error}");
            ExitCode::FAILURE
        }
    }
}
