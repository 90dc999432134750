//! `GET /v1/charts/top-songs`: the top songs of everyone, a region, a genre or an artist over
//! the last hour, 24 hours or 7 days (`topk_core::chart` says what counts; `store::charts`
//! reads it).

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use topk_core::chart::{ChartWindow, MAX_AS_OF_AGE};

use crate::auth::Caller;
use crate::error::AppError;
use crate::routes::{
    cacheable, catalog_entries, check_path_id, content_tag, parse_include, rfc3339,
};
use crate::store::{ChartQuery, ChartScope};
use crate::AppState;

/// The `limit` of a chart request that names none.
pub const DEFAULT_CHART_LIMIT: usize = 10;
/// The largest chart page.
pub const MAX_CHART_LIMIT: usize = 100;
/// The largest `offset`: charts are read from the top.
pub const MAX_CHART_OFFSET: usize = 10_000;
/// The window of a request that names none.
pub const DEFAULT_CHART_WINDOW: ChartWindow = ChartWindow::Day;
/// The longest genre name accepted.
pub const MAX_GENRE_CHARS: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChartParams {
    scope: Option<String>,
    region: Option<String>,
    genre: Option<String>,
    artist_id: Option<String>,
    window: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
    as_of: Option<String>,
    include: Option<String>,
}

/// A chart request's query string, checked (every value; the bounds of `as_of` need the
/// clock and are checked by the handler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartParams {
    pub scope: ChartScope,
    pub window: ChartWindow,
    pub limit: usize,
    pub offset: usize,
    pub as_of: Option<DateTime<Utc>>,
    pub metadata: bool,
}

fn invalid(code: &'static str, message: String) -> AppError {
    AppError::InvalidParameter(code, message)
}

fn shown(text: &str) -> String {
    text.chars().take(64).collect()
}

/// A whole number from `range`, or `invalid_<name>`.
fn parse_bounded(
    name: &'static str,
    code: &'static str,
    text: Option<String>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, AppError> {
    let Some(text) = text else {
        return Ok(default);
    };
    match text.parse::<usize>() {
        Ok(value) if range.contains(&value) => Ok(value),
        _ => Err(invalid(
            code,
            format!(
                "{name} must be a whole number from {} to {}, got {:?}",
                range.start(),
                range.end(),
                shown(&text)
            ),
        )),
    }
}

impl ChartParams {
    fn parse(raw: RawChartParams) -> Result<Self, AppError> {
        let scope_name = raw.scope.as_deref().unwrap_or("global");
        let only_for = |field: &str, value: &Option<String>, scope: &str| {
            if value.is_some() && scope_name != scope {
                return Err(invalid(
                    "invalid_request",
                    format!("{field} is only taken with scope={scope}"),
                ));
            }
            Ok(())
        };
        only_for("region", &raw.region, "region")?;
        only_for("genre", &raw.genre, "genre")?;
        only_for("artist_id", &raw.artist_id, "artist")?;
        let required = |field: &str, value: Option<String>| {
            value.ok_or_else(|| {
                invalid(
                    "invalid_request",
                    format!("scope={scope_name} needs {field}"),
                )
            })
        };
        let scope = match scope_name {
            "global" => ChartScope::Global,
            "region" => {
                let region = required("region", raw.region)?;
                topk_core::event::check_region(&region)
                    .map_err(|rejection| invalid("invalid_region", rejection.detail))?;
                ChartScope::Region(region)
            }
            "genre" => {
                let genre = required("genre", raw.genre)?;
                let characters = genre.chars().count();
                if characters == 0
                    || characters > MAX_GENRE_CHARS
                    || genre.chars().any(char::is_control)
                {
                    return Err(invalid(
                        "invalid_genre",
                        format!(
                            "genre must be 1 to {MAX_GENRE_CHARS} characters without control \
                             characters, got {:?}",
                            shown(&genre)
                        ),
                    ));
                }
                // The catalog keeps genres in lower case.
                ChartScope::Genre(genre.to_lowercase())
            }
            "artist" => {
                let artist_id = required("artist_id", raw.artist_id)?;
                check_path_id("artist_id", &artist_id)
                    .map_err(|message| invalid("invalid_artist_id", message))?;
                ChartScope::Artist(artist_id)
            }
            other => {
                return Err(invalid(
                    "invalid_scope",
                    format!(
                        "scope must be one of global, region, genre, artist, got {:?}",
                        shown(other)
                    ),
                ))
            }
        };
        let window = match raw.window {
            None => DEFAULT_CHART_WINDOW,
            Some(text) => text
                .parse::<ChartWindow>()
                .map_err(|message| invalid("invalid_window", message))?,
        };
        let limit = parse_bounded(
            "limit",
            "invalid_limit",
            raw.limit,
            DEFAULT_CHART_LIMIT,
            1..=MAX_CHART_LIMIT,
        )?;
        let offset = parse_bounded(
            "offset",
            "invalid_offset",
            raw.offset,
            0,
            0..=MAX_CHART_OFFSET,
        )?;
        let as_of = raw
            .as_of
            .map(|text| {
                DateTime::parse_from_rfc3339(&text)
                    .map(|time| time.to_utc())
                    .map_err(|_| {
                        invalid(
                            "invalid_as_of",
                            format!(
                                "as_of must be an RFC 3339 time such as 2026-11-30T12:00:00Z, \
                                 got {:?}",
                                shown(&text)
                            ),
                        )
                    })
            })
            .transpose()?;
        let metadata = raw.include.as_deref().map(parse_include).transpose()?;
        Ok(Self {
            scope,
            window,
            limit,
            offset,
            as_of,
            metadata: metadata.unwrap_or(false),
        })
    }

    /// The moment the chart is as of: `as_of`, which must lie within the last
    /// [`MAX_AS_OF_AGE`] of `now`, or `now`.
    pub fn as_of(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, AppError> {
        let Some(as_of) = self.as_of else {
            return Ok(now);
        };
        if as_of > now {
            return Err(invalid(
                "invalid_as_of",
                format!(
                    "as_of {} is in the future (the server's time is {})",
                    rfc3339(as_of),
                    rfc3339(now)
                ),
            ));
        }
        if now - as_of > MAX_AS_OF_AGE {
            return Err(invalid(
                "invalid_as_of",
                format!(
                    "as_of may be at most {} hours in the past, got {}",
                    MAX_AS_OF_AGE.num_hours(),
                    rfc3339(as_of)
                ),
            ));
        }
        Ok(as_of)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ChartParams {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Query(raw) = Query::<RawChartParams>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| AppError::InvalidRequest(rejection.body_text()))?;
        Self::parse(raw)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChartResponse {
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genre: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artist_id: Option<String>,
    pub window: ChartWindowBody,
    pub as_of: String,
    pub generated_at: String,
    /// See the personal top songs' `data_through`.
    pub data_through: Option<String>,
    /// How many songs have counted plays in the window.
    pub total: u64,
    pub limit: usize,
    pub offset: usize,
    pub songs: Vec<ChartSongBody>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChartWindowBody {
    pub name: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChartSongBody {
    pub rank: u64,
    pub song_id: String,
    pub plays: u64,
    pub listeners: u64,
    pub prev_rank: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// `GET /v1/charts/top-songs`: any caller (a valid token when auth is on).
pub async fn top_songs(
    State(state): State<AppState>,
    _caller: Caller,
    params: ChartParams,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let now = state.now();
    let as_of = params.as_of(now)?;
    let span = params.window.span(as_of);
    let query = ChartQuery {
        scope: params.scope.clone(),
        window: params.window,
        span,
        offset: params.offset,
        limit: params.limit,
        user_hour_cap: state.chart_user_hour_cap(),
    };
    let page = state.store().chart(&query, now.date_naive()).await?;
    let (region, genre, artist_id) = match params.scope {
        ChartScope::Global => (None, None, None),
        ChartScope::Region(region) => (Some(region), None, None),
        ChartScope::Genre(genre) => (None, Some(genre), None),
        ChartScope::Artist(artist_id) => (None, None, Some(artist_id)),
    };
    let mut body = ChartResponse {
        scope: query.scope.name().to_owned(),
        region,
        genre,
        artist_id,
        window: ChartWindowBody {
            name: params.window.as_str().to_owned(),
            from: rfc3339(span.from),
            to: rfc3339(span.to),
        },
        as_of: as_of.to_rfc3339_opts(SecondsFormat::Millis, true),
        generated_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        data_through: page
            .data_through
            .map(|through| through.to_rfc3339_opts(SecondsFormat::Millis, true)),
        total: page.total,
        limit: params.limit,
        offset: params.offset,
        songs: page
            .songs
            .into_iter()
            .map(|song| ChartSongBody {
                rank: song.rank,
                song_id: song.song_id,
                plays: song.plays,
                listeners: song.listeners,
                prev_rank: song.prev_rank,
                metadata: None,
            })
            .collect(),
    };
    if params.metadata {
        let song_ids: Vec<&str> = body
            .songs
            .iter()
            .map(|song| song.song_id.as_str())
            .collect();
        let entries = catalog_entries(&state, &song_ids).await?;
        for (song, entry) in body.songs.iter_mut().zip(entries) {
            song.metadata = Some(entry);
        }
    }
    let etag = content_tag(&json!({
        "scope": body.scope,
        "region": body.region,
        "genre": body.genre,
        "artist_id": body.artist_id,
        "window": [body.window.name, body.window.from, body.window.to],
        "total": body.total,
        "offset": body.offset,
        "songs": body.songs,
    }));
    Ok(cacheable(body, &etag, &headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<ChartParams, AppError> {
        let raw: RawChartParams = serde_urlencoded::from_str(query).unwrap();
        ChartParams::parse(raw)
    }

    fn code(query: &str) -> &'static str {
        parse(query).unwrap_err().code()
    }

    #[test]
    fn defaults_are_the_global_24_hours_top_10() {
        let params = parse("").unwrap();
        assert_eq!(params.scope, ChartScope::Global);
        assert_eq!(params.window, ChartWindow::Day);
        assert_eq!((params.limit, params.offset), (10, 0));
        assert!(params.as_of.is_none() && !params.metadata);
    }

    #[test]
    fn every_scope_takes_its_own_filter_only() {
        assert_eq!(
            parse("scope=region&region=DE").unwrap().scope,
            ChartScope::Region("DE".to_owned())
        );
        assert_eq!(
            parse("scope=genre&genre=Hip-Hop").unwrap().scope,
            ChartScope::Genre("hip-hop".to_owned())
        );
        assert_eq!(
            parse("scope=artist&artist_id=a1").unwrap().scope,
            ChartScope::Artist("a1".to_owned())
        );
        assert_eq!(code("scope=region"), "invalid_request");
        assert_eq!(code("region=DE"), "invalid_request");
        assert_eq!(code("scope=genre&region=DE"), "invalid_request");
        assert_eq!(code("scope=region&region=de"), "invalid_region");
        assert_eq!(code("scope=region&region=XX"), "invalid_region");
        assert_eq!(code("scope=genre&genre="), "invalid_genre");
        assert_eq!(code("scope=artist&artist_id="), "invalid_artist_id");
        assert_eq!(code("scope=country"), "invalid_scope");
    }

    #[test]
    fn bad_windows_pages_and_times_are_refused() {
        assert_eq!(parse("window=7d").unwrap().window, ChartWindow::Week);
        assert_eq!(code("window=2h"), "invalid_window");
        assert_eq!(code("limit=0"), "invalid_limit");
        assert_eq!(code("limit=101"), "invalid_limit");
        assert_eq!(code("offset=-1"), "invalid_offset");
        assert_eq!(code("offset=10001"), "invalid_offset");
        assert_eq!(code("as_of=yesterday"), "invalid_as_of");
        assert_eq!(code("include=lyrics"), "invalid_request");
        let params = parse("as_of=2026-11-30T12:00:00Z&limit=100&offset=20").unwrap();
        let now = DateTime::parse_from_rfc3339("2026-11-30T13:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(params.as_of(now).unwrap(), now - chrono::Duration::hours(1));
        let future = parse("as_of=2026-11-30T13:00:01Z").unwrap();
        assert_eq!(future.as_of(now).unwrap_err().code(), "invalid_as_of");
        let old = parse("as_of=2026-11-29T12:59:59Z").unwrap();
        assert_eq!(old.as_of(now).unwrap_err().code(), "invalid_as_of");
    }
}
