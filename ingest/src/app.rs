//! The router, its layers, and serving it until shutdown.
//!
//! The layers are `topk-api`'s: a request id, a tracing span carrying it, the request metrics,
//! a whole-request timeout (503), and on `POST /v1/plays` a concurrency limit that sheds
//! (503 at once rather than a queue) and the body cap (413).

use std::future::Future;
use std::time::{Duration, Instant};

use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{BoxError, Router};
use tokio::net::TcpListener;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::error::Overloaded;
use tower::load_shed::LoadShedLayer;
use tower::ServiceBuilder;

use crate::error::IngestError;
use crate::routes;
use crate::IngestState;

/// How often buckets of quiet callers are forgotten.
const FORGET_IDLE_BUCKETS_EVERY: Duration = Duration::from_secs(60);

/// The whole service.
pub fn app(state: IngestState) -> Router {
    let ingest = Router::new()
        .route("/v1/plays", post(routes::post_plays))
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(shed_error))
                .layer(LoadShedLayer::new())
                .layer(GlobalConcurrencyLimitLayer::with_semaphore(
                    state.in_flight(),
                )),
        )
        .layer(DefaultBodyLimit::max(state.max_body_bytes()));
    let router = Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/openapi.json", get(routes::openapi))
        .merge(ingest)
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_timeout,
        ));
    topk_api::app::observed(router).with_state(state)
}

async fn shed_error(error: BoxError) -> IngestError {
    if error.is::<Overloaded>() {
        metrics::counter!("http_requests_shed_total").increment(1);
        return IngestError::Overloaded;
    }
    IngestError::Internal(error.to_string())
}

/// Answers 503 (with `Retry-After`) for a request still unanswered at the request timeout.
async fn request_timeout(
    State(state): State<IngestState>,
    request: Request,
    next: Next,
) -> Response {
    let timeout = state.request_timeout();
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("http_requests_timed_out_total").increment(1);
            IngestError::RequestTimeout(timeout).into_response()
        }
    }
}

/// Serves `state`'s routes on `listener` until `shutdown` completes; then stops accepting,
/// gives the requests in flight (they wait for Kafka's acknowledgements) and then the
/// producer's queue `shutdown_timeout` in all to finish.
pub async fn serve(
    listener: TcpListener,
    state: IngestState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    shutdown_timeout: Duration,
) -> std::io::Result<()> {
    let forgetting = tokio::spawn({
        let state = state.clone();
        async move {
            let mut every = tokio::time::interval(FORGET_IDLE_BUCKETS_EVERY);
            loop {
                every.tick().await;
                state.rate_limits().forget_idle();
            }
        }
    });
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<Instant>();
    let signalled = async move {
        shutdown.await;
        let _ = stopping_tx.send(Instant::now());
    };
    let limits = state.edge_limits();
    let server = topk_api::edge::serve_with_limits(listener, app(state.clone()), limits, signalled);
    tokio::pin!(server);
    let stopped_at = tokio::select! {
        result = &mut server => {
            result?;
            Instant::now()
        }
        Ok(stopped_at) = stopping_rx => {
            match tokio::time::timeout(shutdown_timeout, &mut server).await {
                Ok(result) => result?,
                Err(_) => tracing::warn!(?shutdown_timeout, "requests still in flight at the shutdown deadline"),
            }
            stopped_at
        }
    };
    forgetting.abort();
    let remaining = shutdown_timeout.saturating_sub(stopped_at.elapsed());
    let producer = state.producer().clone();
    let queued = producer.queued();
    let flushed = tokio::task::spawn_blocking(move || producer.flush(remaining))
        .await
        .map_err(std::io::Error::other)?;
    match flushed {
        Ok(()) => tracing::info!(queued, "producer flushed"),
        Err(error) => {
            tracing::warn!(%error, queued, "producer not flushed by the shutdown deadline")
        }
    }
    Ok(())
}
