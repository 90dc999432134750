//! The handlers and the extractors that validate their input.

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use topk_core::event::check_id;
use topk_core::window::Window;

use crate::auth::Caller;
use crate::error::AppError;
use crate::ranking::{rank, RankedSong};
use crate::AppState;

/// The `limit` used when a request names none.
pub const DEFAULT_LIMIT: usize = 10;
/// The largest `limit` accepted: what the daily top lists keep.
pub const MAX_LIMIT: usize = topk_core::schema::DAILY_TOP_SIZE;

/// `{user_id}` of the path, checked against the event contract's id rules.
#[derive(Debug)]
pub struct UserIdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for UserIdPath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Path(user_id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| AppError::InvalidUserId(rejection.body_text()))?;
        check_id("user_id", &user_id)
            .map_err(|rejection| AppError::InvalidUserId(rejection.detail))?;
        Ok(Self(user_id))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopSongsParams {
    limit: Option<String>,
}

/// The query string of a top-songs request: `?limit=1..=50`, nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopSongsParams {
    pub limit: usize,
}

impl<S: Send + Sync> FromRequestParts<S> for TopSongsParams {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Query(raw) = Query::<RawTopSongsParams>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| AppError::InvalidRequest(rejection.body_text()))?;
        let Some(text) = raw.limit else {
            return Ok(Self {
                limit: DEFAULT_LIMIT,
            });
        };
        match text.parse::<usize>() {
            Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(Self { limit }),
            _ => Err(AppError::InvalidLimit(format!(
                "limit must be a whole number from 1 to {MAX_LIMIT}, got {text:?}"
            ))),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TopSongsResponse {
    pub user_id: String,
    pub window: WindowBody,
    pub generated_at: String,
    pub songs: Vec<SongBody>,
    pub exact: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WindowBody {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SongBody {
    pub rank: u32,
    pub song_id: String,
    pub plays: u64,
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `GET /v1/users/{user_id}/top-songs`
pub async fn user_top_songs(
    State(state): State<AppState>,
    caller: Caller,
    UserIdPath(user_id): UserIdPath,
    params: TopSongsParams,
) -> Result<Json<TopSongsResponse>, AppError> {
    caller.authorize(&user_id)?;
    top_songs(&state, user_id, params).await
}

/// `GET /v1/me/top-songs`: the token's own user.
pub async fn my_top_songs(
    State(state): State<AppState>,
    caller: Caller,
    params: TopSongsParams,
) -> Result<Json<TopSongsResponse>, AppError> {
    let user_id = caller.own_user()?.to_owned();
    top_songs(&state, user_id, params).await
}

async fn top_songs(
    state: &AppState,
    user_id: String,
    params: TopSongsParams,
) -> Result<Json<TopSongsResponse>, AppError> {
    let window = Window::last_week(state.now());
    let stored = state.store().songs_in_window(&user_id, &window).await?;
    let ranking = rank(stored.songs, params.limit);
    Ok(Json(TopSongsResponse {
        user_id,
        window: WindowBody {
            from: rfc3339(window.from),
            to: rfc3339(window.to),
        },
        generated_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        songs: ranking
            .songs
            .into_iter()
            .map(
                |RankedSong {
                     rank,
                     song_id,
                     plays,
                 }| SongBody {
                    rank,
                    song_id,
                    plays,
                },
            )
            .collect(),
        exact: ranking.exact && stored.complete,
    }))
}

/// `GET /healthz`: the process is up (ClickHouse is not consulted).
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: ClickHouse answers and its schema is at this build's migration.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, AppError> {
    let expected = topk_core::migrate::latest_version();
    let applied = state.store().schema_version().await?;
    if applied != Some(expected) {
        return Err(AppError::SchemaNotReady { applied, expected });
    }
    Ok(Json(json!({"status": "ready", "schema_version": expected})))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics_handle().render(),
    )
}

/// `GET /openapi.json`
pub async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

pub async fn not_found() -> AppError {
    AppError::NotFound
}

pub async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}
