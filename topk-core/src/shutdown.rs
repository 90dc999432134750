//! Graceful shutdown on SIGTERM or SIGINT (Ctrl-C).
//!
//! [`on_signal`] installs the handlers when it is called, not when its future is first
//! polled: a binary calls it first thing, so a SIGTERM that arrives while it is still starting
//! up (connecting, checking the schema) is a request to stop cleanly, not the default action
//! that kills the process with nothing flushed and no exit code.

use std::future::Future;

/// Installs the SIGTERM and SIGINT handlers now; the future completes on the first signal.
/// Must be called inside a tokio runtime.
pub fn on_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let installed = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match installed {
                (Ok(mut terminate), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => tracing::info!("SIGTERM received"),
                        _ = interrupt.recv() => tracing::info!("SIGINT received"),
                    }
                }
                (terminate, interrupt) => {
                    let error = terminate.err().or(interrupt.err());
                    tracing::error!(?error, "cannot install signal handlers; stop with SIGKILL");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_sent_before_the_first_poll_is_not_lost() {
        let shutdown = on_signal();
        // Delivered before anyone awaits the future: the handler installed by `on_signal`
        // must catch it (with the default action the test process would die here).
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(std::time::Duration::from_secs(5), shutdown)
            .await
            .expect("the signal completes the future");
    }
}
