//! The handlers and the extractors that validate their input.

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use topk_core::event::MAX_ID_BYTES;
use topk_core::window::Window;

use crate::auth::Caller;
use crate::error::AppError;
use crate::ranking::{rank, RankedSong};
use crate::store::SongMetadata;
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
        check_path_user_id(&user_id).map_err(AppError::InvalidUserId)?;
        Ok(Self(user_id))
    }
}

/// `{song_id}` of the path, checked like a user id.
#[derive(Debug)]
pub struct SongIdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for SongIdPath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Path(song_id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| AppError::InvalidSongId(rejection.body_text()))?;
        check_path_id("song_id", &song_id).map_err(AppError::InvalidSongId)?;
        Ok(Self(song_id))
    }
}

/// The path's `user_id`: 1 to [`MAX_ID_BYTES`] characters, no control character (what the
/// OpenAPI document says: JSON Schema counts characters). The event contract limits ids to
/// that many *bytes*; a longer id cannot occur in the data, and its answer is an empty list.
pub fn check_path_user_id(user_id: &str) -> Result<(), String> {
    check_path_id("user_id", user_id)
}

/// An id of the path (`field` names it in the message): see [`check_path_user_id`].
pub(crate) fn check_path_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{field} is empty"));
    }
    let characters = id.chars().count();
    if characters > MAX_ID_BYTES {
        return Err(format!(
            "{field} is {characters} characters, at most {MAX_ID_BYTES}"
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(format!("{field} contains a control character"));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopSongsParams {
    limit: Option<String>,
    tz: Option<String>,
    include: Option<String>,
}

/// The query string of a top-songs request: `?limit=1..=50`, `?tz=` an IANA time zone
/// name (the user's own week) and `?include=metadata` (each song's catalog entry), nothing
/// else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopSongsParams {
    pub limit: usize,
    /// The week from local midnight in this zone; `None`: the UTC week.
    pub tz: Option<Tz>,
    /// Whether each song carries its catalog entry (`metadata`).
    pub metadata: bool,
}

/// What `include` may name (comma-separated).
pub const INCLUDE_VALUES: [&str; 1] = ["metadata"];

/// `?include=`: a comma-separated list of [`INCLUDE_VALUES`]; returns whether `metadata` is
/// named.
pub fn parse_include(text: &str) -> Result<bool, AppError> {
    let mut metadata = false;
    for part in text.split(',') {
        match part {
            "metadata" => metadata = true,
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(AppError::InvalidRequest(format!(
                    "include may name {}, got {shown:?}",
                    INCLUDE_VALUES.join(", ")
                )));
            }
        }
    }
    Ok(metadata)
}

impl TopSongsParams {
    /// The window these parameters ask for, ending at `now`.
    pub fn window(&self, now: DateTime<Utc>) -> Window {
        match self.tz {
            Some(tz) => Window::last_week_in(now, tz),
            None => Window::last_week(now),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for TopSongsParams {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Query(raw) = Query::<RawTopSongsParams>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| AppError::InvalidRequest(rejection.body_text()))?;
        let limit = match raw.limit {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<usize>() {
                Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => limit,
                _ => {
                    return Err(AppError::InvalidLimit(format!(
                        "limit must be a whole number from 1 to {MAX_LIMIT}, got {text:?}"
                    )))
                }
            },
        };
        let tz = raw.tz.map(|name| parse_time_zone(&name)).transpose()?;
        let metadata = raw.include.as_deref().map(parse_include).transpose()?;
        Ok(Self {
            limit,
            tz,
            metadata: metadata.unwrap_or(false),
        })
    }
}

/// An IANA time zone name as the tz database spells it (`Europe/Berlin`, `UTC`).
pub fn parse_time_zone(name: &str) -> Result<Tz, AppError> {
    name.parse::<Tz>().map_err(|_| {
        let shown: String = name.chars().take(64).collect();
        AppError::InvalidTimeZone(format!(
            "tz must be an IANA time zone name such as Europe/Berlin or America/New_York \
             (case-sensitive), got {shown:?}"
        ))
    })
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TopSongsResponse {
    pub user_id: String,
    pub window: WindowBody,
    pub generated_at: String,
    /// How fresh the counts are: plays up to this moment (Kafka record time) are counted on
    /// every partition; `null` while that is not known.
    pub data_through: Option<String>,
    pub songs: Vec<SongBody>,
    pub exact: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WindowBody {
    pub from: String,
    pub to: String,
    /// The zone whose midnight starts the window (`UTC` unless the request named one).
    pub tz: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SongBody {
    pub rank: u32,
    pub song_id: String,
    pub plays: u64,
    /// With `?include=metadata`: the song's catalog entry, `null` when the catalog does not
    /// know the song; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// `time` in RFC 3339 with whole seconds, UTC (`Z`).
pub(crate) fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `GET /v1/users/{user_id}/top-songs`
pub async fn user_top_songs(
    State(state): State<AppState>,
    caller: Caller,
    UserIdPath(user_id): UserIdPath,
    params: TopSongsParams,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    caller.authorize(&user_id)?;
    let body = top_songs(&state, user_id, params).await?;
    Ok(cacheable_top_songs(body, &headers))
}

/// `GET /v1/me/top-songs`: the token's own user.
pub async fn my_top_songs(
    State(state): State<AppState>,
    caller: Caller,
    params: TopSongsParams,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let user_id = caller.own_user()?.to_owned();
    let body = top_songs(&state, user_id, params).await?;
    Ok(cacheable_top_songs(body, &headers))
}

/// The answer with its validators: a weak `ETag` over what the answer says ([`entity_tag`]),
/// `304 Not Modified` without a body when the request's `If-None-Match` names it, and
/// `Cache-Control: private, no-cache` with `Vary: Authorization` (a user's answer is theirs:
/// shared caches must not keep it, and the client revalidates each time).
fn cacheable_top_songs(body: TopSongsResponse, request_headers: &HeaderMap) -> Response {
    let etag = entity_tag(&body);
    cacheable(body, &etag, request_headers)
}

/// `body` as JSON with `etag` (see [`content_tag`]), or `304 Not Modified` without a body when
/// the request's `If-None-Match` names it; `Cache-Control: private, no-cache` and `Vary:
/// Authorization`.
pub(crate) fn cacheable<T: Serialize>(
    body: T,
    etag: &str,
    request_headers: &HeaderMap,
) -> Response {
    let mut response = if if_none_match(request_headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(body).into_response()
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Authorization"));
    response
}

/// The top songs' weak `ETag`: over the user, the window's first day and zone, the songs with
/// their plays and `exact`; not `generated_at`, `data_through` nor the window's end, which
/// move every second while the counts stay.
pub fn entity_tag(body: &TopSongsResponse) -> String {
    content_tag(&json!({
        "user_id": body.user_id,
        "from": body.window.from,
        "tz": body.window.tz,
        "songs": body.songs,
        "exact": body.exact,
    }))
}

/// `W/"<32 hex digits>"`: the first 128 bits of a SHA-256 over `content`.
pub(crate) fn content_tag(content: &serde_json::Value) -> String {
    let digest = Sha256::digest(content.to_string().as_bytes());
    let hex: String = digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("W/\"{hex}\"")
}

/// Whether `If-None-Match` names `etag` (weak comparison, RFC 9110 §13.1.2) or is `*`.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| tag.trim() == "*" || opaque(tag) == opaque(etag))
}

async fn top_songs(
    state: &AppState,
    user_id: String,
    params: TopSongsParams,
) -> Result<TopSongsResponse, AppError> {
    let window = params.window(state.now());
    let stored = state.store().songs_in_window(&user_id, &window).await?;
    let ranking = rank(stored.songs, params.limit);
    let mut body = TopSongsResponse {
        user_id,
        window: WindowBody {
            from: rfc3339(window.from),
            to: rfc3339(window.to),
            tz: params.tz.map_or("UTC", |tz| tz.name()).to_owned(),
        },
        generated_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        data_through: stored
            .data_through
            .map(|through| through.to_rfc3339_opts(SecondsFormat::Millis, true)),
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
                    metadata: None,
                },
            )
            .collect(),
        exact: ranking.exact && stored.complete,
    };
    if params.metadata {
        let song_ids: Vec<&str> = body
            .songs
            .iter()
            .map(|song| song.song_id.as_str())
            .collect();
        let entries = catalog_entries(state, &song_ids).await?;
        for (song, entry) in body.songs.iter_mut().zip(entries) {
            song.metadata = Some(entry);
        }
    }
    Ok(body)
}

/// The catalog entry of each of `song_ids` as JSON, in order (`null` for a song the catalog
/// does not know): what `include=metadata` adds to an answer, one indexed query.
pub(crate) async fn catalog_entries(
    state: &AppState,
    song_ids: &[&str],
) -> Result<Vec<serde_json::Value>, AppError> {
    if song_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut entries = state.store().songs_metadata(song_ids).await?;
    song_ids
        .iter()
        .map(|song_id| {
            serde_json::to_value(entries.remove(*song_id))
                .map_err(|error| AppError::Internal(format!("song metadata as JSON: {error}")))
        })
        .collect()
}

/// `GET /v1/songs/{song_id}`: the song's catalog entry.
pub async fn song(
    State(state): State<AppState>,
    _caller: Caller,
    SongIdPath(song_id): SongIdPath,
    params: Result<Query<NoParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SongMetadata>, AppError> {
    params.map_err(|rejection| AppError::InvalidRequest(rejection.body_text()))?;
    let mut entries = state.store().songs_metadata(&[song_id.as_str()]).await?;
    entries
        .remove(&song_id)
        .map(Json)
        .ok_or(AppError::SongNotFound(song_id))
}

/// A query string that must name no parameter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

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
pub async fn openapi(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(crate::openapi::document(state.authenticator().is_on()))
}

pub async fn not_found() -> AppError {
    AppError::NotFound
}

pub async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}
