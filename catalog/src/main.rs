//! `topk-catalog`: loads the song catalog (see `topk-catalog --help` and the crate's README).

use std::process::ExitCode;

use topk_catalog::config::CatalogConfig;

#[tokio::main]
async fn main() -> ExitCode {
    topk_core::telemetry::init();
    // Argument and config-file errors print and exit with code 2 here.
    let config: CatalogConfig = topk_core::config::load();
    match topk_catalog::execute(&config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
