//! The HTTP edge: accepting connections with limits a public endpoint needs, which
//! `axum::serve` does not offer.
//!
//! - **Connection cap** ([`EdgeLimits::max_connections`]): at the cap the server stops
//!   accepting; further clients wait in the kernel's backlog until a connection closes (no
//!   file-descriptor exhaustion, no unbounded memory per idle client).
//! - **Header-read timeout** ([`EdgeLimits::header_read_timeout`]): a client has that long to
//!   send a request's headers, from the moment the server waits for them, so a slow-header
//!   client (slowloris) or an idle keep-alive connection is closed after it.
//! - **Keep-alive**: HTTP/1.1 connections are reused; the header-read timeout bounds how long
//!   one may sit idle between requests.
//! - The per-request timeout is a layer of the router ([`crate::app`]), so it also holds for
//!   requests served in-process.
//!
//! Shutdown stops accepting, lets every connection finish the request it is serving (idle
//! ones close at once) and returns when all are closed.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// The limits of the HTTP edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers (and to stay idle between
    /// requests on a kept-alive connection).
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then drains.
pub async fn serve_with_limits(
    listener: TcpListener,
    router: Router,
    limits: EdgeLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // A free slot first: at the cap, clients wait in the backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: keep serving the others.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        metrics::gauge!("http_connections_open").increment(1.0);
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set tcp_nodelay");
        }
        let service = TowerToHyperService::new(router.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = async { let _ = stop.wait_for(|stopping| *stopping).await; } => {
                    connection.as_mut().graceful_shutdown();
                    connection.as_mut().await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
            metrics::gauge!("http_connections_open").decrement(1.0);
            drop(slot);
        });
    }
    let _ = stop_tx.send(true);
    // Every connection gives its slot back when it is closed.
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let _closed = slots.acquire_many(all).await;
    Ok(())
}
