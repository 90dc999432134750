//! The router, its layers, and serving it until shutdown.
//!
//! Layers, outermost first: a request id (`x-request-id`, kept when the client sends one, else
//! a new UUID) set on the request, a tracing span carrying it (so every log line of the
//! request names it), the id copied to the response, and the request metrics. The top-songs
//! routes also pass a concurrency limit that sheds: when `max_concurrent_requests` are in
//! flight, a further request is answered 503 at once instead of waiting in a queue.

use std::future::Future;
use std::time::Instant;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{BoxError, Router};
use tokio::net::TcpListener;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::error::Overloaded;
use tower::load_shed::LoadShedLayer;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::error::AppError;
use crate::routes;
use crate::AppState;

/// The whole API.
pub fn app(state: AppState) -> Router {
    let limited = Router::new()
        .route("/v1/users/{user_id}/top-songs", get(routes::user_top_songs))
        .route("/v1/me/top-songs", get(routes::my_top_songs))
        .route("/v1/songs/{song_id}", get(routes::song))
        .route("/v1/charts/top-songs", get(crate::charts::top_songs))
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(shed_error))
                .layer(LoadShedLayer::new())
                .layer(GlobalConcurrencyLimitLayer::with_semaphore(
                    state.in_flight(),
                )),
        );
    let router = Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/openapi.json", get(routes::openapi))
        .merge(limited)
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_timeout,
        ));
    observed(router).with_state(state)
}

/// The outer layers every topk HTTP service has (shared with `topk-ingest`): the request
/// metrics, then a request id set on the request, a tracing span carrying it and the id
/// copied to the response.
pub fn observed<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .layer(middleware::from_fn(record_request_metrics))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        // 5xx are counted in metrics and logged where they arise; a log line
                        // per shed request would cost the most exactly when load is highest.
                        .on_failure(()),
                )
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
}

/// The span of one request: method, path and request id (shared with `topk-ingest`).
pub fn request_span(request: &Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id,
    )
}

async fn shed_error(error: BoxError) -> AppError {
    if error.is::<Overloaded>() {
        metrics::counter!("http_requests_shed_total").increment(1);
        return AppError::Overloaded;
    }
    AppError::Internal(error.to_string())
}

/// `http_requests_total{route,status}` and `http_request_duration_seconds{route,status}`
/// (shared with `topk-ingest`).
pub async fn record_request_metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Serves `state`'s API on `listener` within its edge limits ([`crate::edge`]) until
/// `shutdown` completes, then lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.edge_limits();
    crate::edge::serve_with_limits(listener, app(state), limits, shutdown).await
}

/// Answers 503 (with `Retry-After`) for a request still unanswered at the request timeout.
async fn request_timeout(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let timeout = state.request_timeout();
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("http_requests_timed_out_total").increment(1);
            AppError::RequestTimeout(timeout).into_response()
        }
    }
}

/// Installs the Ctrl-C and SIGTERM handlers now; completes on the first signal.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let signal = topk_core::shutdown::on_signal();
    async move {
        signal.await;
        tracing::info!("shutdown signal received, finishing requests in flight");
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use axum::body::Body;
    use axum::http::StatusCode;
    use tower::ServiceExt;

    use super::*;
    use crate::config::ApiConfig;

    #[tokio::test]
    async fn a_request_unanswered_at_the_request_timeout_is_a_503() {
        let mut config = ApiConfig::with_clickhouse(topk_core::db::ClickHouseOptions::new(
            "http://127.0.0.1:1",
            "topk",
        ));
        config.query_timeout_ms = 100;
        config.request_timeout_ms = 300;
        let state = AppState::from_config(&config).unwrap();
        // Never below the query timeout plus a second.
        assert_eq!(state.request_timeout(), Duration::from_millis(1100));
        let slow = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    "late"
                }),
            )
            .layer(middleware::from_fn_with_state(
                state.clone(),
                request_timeout,
            ))
            .with_state(state);
        let started = Instant::now();
        let response = slow
            .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1100) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }
}
