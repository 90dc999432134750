//! `topk-rollup`: the operator's batch tool (see `topk-rollup --help` and the crate's README).

use std::process::ExitCode;

use topk_rollup::config::RollupConfig;

#[tokio::main]
async fn main() -> ExitCode {
    topk_core::telemetry::init();
    // Argument and config-file errors print and exit with code 2 here.
    let config: RollupConfig = topk_core::config::load();
    match topk_rollup::execute(&config).await {
        Ok(()) => ExitCode::from(topk_rollup::error::EXIT_OK),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
