//! The OpenAPI 3.0 description of the API, served at `/openapi.json`. Written by hand (the API
//! is small); the tests check it lists every route the router serves.

use serde_json::{json, Value};

use crate::charts::{
    DEFAULT_CHART_LIMIT, DEFAULT_CHART_WINDOW, MAX_CHART_LIMIT, MAX_CHART_OFFSET, MAX_GENRE_CHARS,
};
use crate::routes::{DEFAULT_LIMIT, INCLUDE_VALUES, MAX_LIMIT};
use topk_core::chart::{ChartWindow, DEFAULT_USER_HOUR_CAP};

/// Every path the router serves, as written in the document.
pub const PATHS: [&str; 8] = [
    "/v1/users/{user_id}/top-songs",
    "/v1/me/top-songs",
    "/v1/songs/{song_id}",
    "/v1/charts/top-songs",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

/// The error body every topk HTTP service answers with (shared with `topk-ingest`).
pub fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}
        }}
    })
}

/// Every name the `tz` parameter accepts (the tz database's zones and links).
fn time_zone_names() -> Vec<&'static str> {
    chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect()
}

/// A response with the [`error_schema`] body.
pub fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

/// `response` with its RFC 6750 `WWW-Authenticate` header.
fn challenged(mut response: Value, challenge: &str) -> Value {
    response["headers"] = json!({
        "WWW-Authenticate": {"description": challenge, "schema": {"type": "string"}}
    });
    response
}

fn top_songs_operation(summary: &str, with_user_id: bool, auth_on: bool) -> Value {
    let mut parameters = vec![
        json!({
            "name": "limit",
            "in": "query",
            "required": false,
            "description": "How many songs to list.",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}
        }),
        json!({
            "name": "include",
            "in": "query",
            "required": false,
            "description": "metadata: each song carries its catalog entry (title, artist, album, genre, length) in `metadata`, null for a song the catalog does not know. One extra indexed query.",
            "schema": {"type": "string", "enum": INCLUDE_VALUES}
        }),
        json!({
            "name": "tz",
            "in": "query",
            "required": false,
            "description": "The user's time zone (an IANA name as the tz database spells it, case-sensitive): the week starts at local midnight six days before the local date, instead of midnight UTC. Any other value: 400 invalid_time_zone.",
            "schema": {"type": "string", "enum": time_zone_names(), "default": "UTC"}
        }),
    ];
    if with_user_id {
        parameters.insert(
            0,
            json!({
                "name": "user_id",
                "in": "path",
                "required": true,
                "description": "1 to 128 characters, no control characters (ids longer than 128 bytes have no plays).",
                "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"}
            }),
        );
    }
    parameters.push(json!({
        "name": "If-None-Match",
        "in": "header",
        "required": false,
        "description": "An ETag of an earlier answer (or a list of them, or *): 304 when the answer is still the same.",
        "schema": {"type": "string"}
    }));
    let validators = json!({
        "ETag": {"description": "Weak tag of the answer's content (user, window start, songs, exact).", "schema": {"type": "string"}},
        "Cache-Control": {"description": "private, no-cache: a user's answer, revalidated each time.", "schema": {"type": "string"}},
        "Vary": {"description": "Authorization", "schema": {"type": "string"}}
    });
    let mut operation = json!({
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": parameters,
        "responses": {
            "200": {
                "description": "The top songs of the window: plays descending, then song_id ascending.",
                "headers": validators,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TopSongs"}}}
            },
            "304": {
                "description": "Not modified: the answer still has the ETag named in If-None-Match (no body).",
                "headers": validators
            },
            "400": error_response("Bad user id, limit, time zone, include or query parameter"),
            "401": challenged(error_response("Missing or invalid token (auth on); one message for every reason"), "Bearer realm=\"topk\", plus error=\"invalid_token\" when a token was sent"),
            "403": challenged(error_response("The token may not read this user"), "Bearer realm=\"topk\", error=\"insufficient_scope\", scope=\"topk:read:any\""),
            "500": error_response("A query ClickHouse refused: a bug, logged with the request id"),
            "503": error_response("ClickHouse unavailable or slow, or too many requests in flight; see Retry-After"),
        }
    });
    if !auth_on {
        // No token is read, so none can be missing, invalid or short of a scope.
        operation["security"] = json!([]);
        let responses = operation["responses"].as_object_mut().expect("an object");
        responses.remove("401");
        responses.remove("403");
    }
    operation
}

/// `GET /v1/songs/{song_id}`: any valid token may read the catalog (auth on), or anyone.
fn song_operation(auth_on: bool) -> Value {
    let mut operation = json!({
        "summary": "A song's catalog entry",
        "security": [{"bearer": []}],
        "parameters": [{
            "name": "song_id",
            "in": "path",
            "required": true,
            "description": "1 to 128 characters, no control characters.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"}
        }],
        "responses": {
            "200": {
                "description": "The song's current catalog entry",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SongMetadata"}}}
            },
            "400": error_response("Bad song id or a query parameter (none is taken)"),
            "401": challenged(error_response("Missing or invalid token (auth on); one message for every reason"), "Bearer realm=\"topk\", plus error=\"invalid_token\" when a token was sent"),
            "404": error_response("song_not_found: the catalog has no such song"),
            "500": error_response("A query ClickHouse refused: a bug, logged with the request id"),
            "503": error_response("ClickHouse unavailable or slow, or too many requests in flight; see Retry-After"),
        }
    });
    if !auth_on {
        operation["security"] = json!([]);
        let responses = operation["responses"].as_object_mut().expect("an object");
        responses.remove("401");
    }
    operation
}

/// `GET /v1/charts/top-songs`: any valid token (auth on), or anyone.
fn chart_operation(auth_on: bool) -> Value {
    let windows: Vec<&str> = ChartWindow::ALL
        .iter()
        .map(|window| window.as_str())
        .collect();
    let validators = json!({
        "ETag": {"description": "Weak tag of the chart's content (scope, window, page, songs with their counts and ranks).", "schema": {"type": "string"}},
        "Cache-Control": {"description": "private, no-cache: revalidated each time.", "schema": {"type": "string"}},
        "Vary": {"description": "Authorization", "schema": {"type": "string"}}
    });
    let mut operation = json!({
        "summary": "The top songs of everyone, a region, a genre or an artist",
        "description": format!("Chart plays: valid plays of at least 30 s (or of unknown length) inside the window, each user counting at most {DEFAULT_USER_HOUR_CAP} plays of one song per UTC hour and region (the server's cap). Listeners: the users with a counted play. Ranked by plays descending, then song_id ascending. Exact, and seconds fresh (data_through)."),
        "security": [{"bearer": []}],
        "parameters": [
            {"name": "scope", "in": "query", "required": false, "description": "global (default), region (needs region), genre (needs genre) or artist (needs artist_id); genre and artist come from the song catalog.",
             "schema": {"type": "string", "enum": ["global", "region", "genre", "artist"], "default": "global"}},
            {"name": "region", "in": "query", "required": false, "description": "With scope=region only: an assigned ISO 3166-1 alpha-2 code, upper case.",
             "schema": {"type": "string", "enum": topk_core::event::assigned_regions().collect::<Vec<_>>()}},
            {"name": "genre", "in": "query", "required": false, "description": "With scope=genre only: a catalog genre (compared in lower case).",
             "schema": {"type": "string", "minLength": 1, "maxLength": MAX_GENRE_CHARS}},
            {"name": "artist_id", "in": "query", "required": false, "description": "With scope=artist only: a catalog artist id.",
             "schema": {"type": "string", "minLength": 1, "maxLength": 128}},
            {"name": "window", "in": "query", "required": false, "description": "1h and 24h: the 60 or 1440 minutes up to as_of (rounded up to the minute), sliding by the minute. 7d: from the first whole UTC hour at most 7 days back.",
             "schema": {"type": "string", "enum": windows, "default": DEFAULT_CHART_WINDOW.as_str()}},
            {"name": "limit", "in": "query", "required": false, "description": "Songs per page.",
             "schema": {"type": "integer", "minimum": 1, "maximum": MAX_CHART_LIMIT, "default": DEFAULT_CHART_LIMIT}},
            {"name": "offset", "in": "query", "required": false, "description": "Songs to skip (rank offset+1 comes first).",
             "schema": {"type": "integer", "minimum": 0, "maximum": MAX_CHART_OFFSET, "default": 0}},
            {"name": "as_of", "in": "query", "required": false, "description": "The chart as of this moment (RFC 3339), at most 24 hours back; default now. The same as_of in the past gives the same chart.",
             "schema": {"type": "string", "format": "date-time"}},
            {"name": "include", "in": "query", "required": false, "description": "metadata: each song carries its catalog entry in `metadata`, null for a song the catalog does not know.",
             "schema": {"type": "string", "enum": INCLUDE_VALUES}},
            {"name": "If-None-Match", "in": "header", "required": false, "description": "An ETag of an earlier answer (or a list of them, or *): 304 when the answer is still the same.",
             "schema": {"type": "string"}}
        ],
        "responses": {
            "200": {
                "description": "One page of the chart",
                "headers": validators,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Chart"}}}
            },
            "304": {
                "description": "Not modified: the answer still has the ETag named in If-None-Match (no body).",
                "headers": validators
            },
            "400": error_response("A bad parameter: invalid_scope, invalid_region, invalid_genre, invalid_artist_id, invalid_window, invalid_limit, invalid_offset, invalid_as_of, or invalid_request (a missing or misplaced filter, an unknown parameter)"),
            "401": challenged(error_response("Missing or invalid token (auth on); one message for every reason"), "Bearer realm=\"topk\", plus error=\"invalid_token\" when a token was sent"),
            "500": error_response("A query ClickHouse refused: a bug, logged with the request id"),
            "503": error_response("ClickHouse unavailable or slow, or too many requests in flight; see Retry-After"),
        }
    });
    if !auth_on {
        operation["security"] = json!([]);
        let responses = operation["responses"].as_object_mut().expect("an object");
        responses.remove("401");
    }
    operation
}

/// The body of a chart answer.
fn chart_schema() -> Value {
    json!({
        "type": "object",
        "required": ["scope", "window", "as_of", "generated_at", "data_through", "total", "limit", "offset", "songs"],
        "properties": {
            "scope": {"type": "string", "enum": ["global", "region", "genre", "artist"]},
            "region": {"type": "string", "description": "scope=region only"},
            "genre": {"type": "string", "description": "scope=genre only, lower case"},
            "artist_id": {"type": "string", "description": "scope=artist only"},
            "window": {
                "type": "object",
                "required": ["name", "from", "to"],
                "properties": {
                    "name": {"type": "string", "enum": ChartWindow::ALL.iter().map(|window| window.as_str()).collect::<Vec<_>>()},
                    "from": {"type": "string", "format": "date-time"},
                    "to": {"type": "string", "format": "date-time", "description": "as_of rounded up to the whole minute (exclusive)"}
                }
            },
            "as_of": {"type": "string", "format": "date-time"},
            "generated_at": {"type": "string", "format": "date-time"},
            "data_through": {"type": "string", "nullable": true, "format": "date-time", "description": "As in the personal top songs: plays up to this Kafka record time are counted on every partition"},
            "total": {"type": "integer", "minimum": 0, "description": "Songs with a counted play in the window"},
            "limit": {"type": "integer", "minimum": 1},
            "offset": {"type": "integer", "minimum": 0},
            "songs": {"type": "array", "items": {
                "type": "object",
                "required": ["rank", "song_id", "plays", "listeners", "prev_rank"],
                "properties": {
                    "rank": {"type": "integer", "minimum": 1, "description": "1-based: plays descending, then song_id ascending"},
                    "song_id": {"type": "string"},
                    "plays": {"type": "integer", "minimum": 1},
                    "listeners": {"type": "integer", "minimum": 1, "description": "Distinct users with a counted play: exact up to 1 024, above that an estimate with a 0.8 % standard error"},
                    "prev_rank": {"type": "integer", "minimum": 1, "nullable": true, "description": "The rank in the same window one period earlier; null when the song had no counted play then"},
                    "metadata": {
                        "description": "With include=metadata only: the song's catalog entry, null when the catalog does not know the song",
                        "nullable": true,
                        "allOf": [{"$ref": "#/components/schemas/SongMetadata"}]
                    }
                }
            }}
        }
    })
}

/// `/v1/me` on a server without auth: there is no "me".
fn me_without_auth() -> Value {
    json!({
        "summary": "The token's own user's top songs: not served, auth is off on this server",
        "security": [],
        "responses": {
            "404": error_response("auth_disabled: use /v1/users/{user_id}/top-songs")
        }
    })
}

/// The document of this server: with auth on (`auth_on`) the top-songs operations require a
/// bearer token and may answer 401/403; with auth off they take none, and `/v1/me` only says
/// 404.
pub fn document(auth_on: bool) -> Value {
    let me = if auth_on {
        top_songs_operation("The token's own user's top songs", false, true)
    } else {
        me_without_auth()
    };
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "topk-api",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Each user's top songs of the last 7 days: today (UTC, up to now) plus the 6 previous full UTC days."
        },
        "paths": {
            (PATHS[0]): {"get": top_songs_operation("A user's top songs of the last 7 days", true, auth_on)},
            (PATHS[1]): {"get": me},
            (PATHS[2]): {"get": song_operation(auth_on)},
            (PATHS[3]): {"get": chart_operation(auth_on)},
            (PATHS[4]): {"get": {"summary": "The process is up", "responses": {"200": {"description": "ok"}}}},
            (PATHS[5]): {"get": {
                "summary": "ClickHouse answers and the schema is at the expected migration",
                "responses": {"200": {"description": "ready"}, "503": error_response("Not ready")}
            }},
            (PATHS[6]): {"get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}}
            }},
            (PATHS[7]): {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.0"}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "TopSongs": {
                    "type": "object",
                    "required": ["user_id", "window", "generated_at", "songs", "exact"],
                    "properties": {
                        "user_id": {"type": "string"},
                        "window": {
                            "type": "object",
                            "required": ["from", "to", "tz"],
                            "properties": {
                                "from": {"type": "string", "format": "date-time", "description": "Midnight starting the oldest day (in tz), as a UTC time"},
                                "to": {"type": "string", "format": "date-time", "description": "Now"},
                                "tz": {"type": "string", "description": "The time zone whose midnight starts the window: the request's tz, or UTC"}
                            }
                        },
                        "generated_at": {"type": "string", "format": "date-time"},
                        "data_through": {"type": "string", "nullable": true, "format": "date-time", "description": "How fresh the counts are: on every Kafka partition, the plays up to this moment (the Kafka record time of the newest play counted, the oldest over the partitions) are counted. Null while not known (nothing counted yet, or data written before schema 7). A partition without new plays holds it back"},
                        "songs": {"type": "array", "items": {
                            "type": "object",
                            "required": ["rank", "song_id", "plays"],
                            "properties": {
                                "rank": {"type": "integer", "minimum": 1},
                                "song_id": {"type": "string"},
                                "plays": {"type": "integer", "minimum": 1},
                                "metadata": {
                                    "description": "With include=metadata only: the song's catalog entry, null when the catalog does not know the song",
                                    "nullable": true,
                                    "allOf": [{"$ref": "#/components/schemas/SongMetadata"}]
                                }
                            }
                        }},
                        "exact": {"type": "boolean", "description": "True when the list and its counts are exactly those of all plays of the window committed up to the moment the answer reflects (at most a few seconds before generated_at). False only when a day's per-minute data inside the window was deleted by an operator and the day's stored top 50 cannot prove the list"}
                    }
                },
                "Chart": chart_schema(),
                "SongMetadata": {
                    "type": "object",
                    "required": ["song_id", "title", "artist_id", "artist_name", "album", "genre", "duration_ms"],
                    "properties": {
                        "song_id": {"type": "string"},
                        "title": {"type": "string"},
                        "artist_id": {"type": "string"},
                        "artist_name": {"type": "string"},
                        "album": {"type": "string", "nullable": true},
                        "genre": {"type": "string", "nullable": true, "description": "Lower case"},
                        "duration_ms": {"type": "integer", "nullable": true, "minimum": 1}
                    }
                },
                "Error": error_schema()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_every_path_with_a_get() {
        let document = document(true);
        let paths = document["paths"].as_object().unwrap();
        assert_eq!(paths.len(), PATHS.len());
        for path in PATHS {
            assert!(paths[path]["get"]["responses"]["200"].is_object(), "{path}");
        }
        assert_eq!(paths[PATHS[0]]["get"]["security"], json!([{"bearer": []}]));
    }

    #[test]
    fn without_auth_no_operation_asks_for_a_token_and_me_is_not_served() {
        let document = document(false);
        let paths = document["paths"].as_object().unwrap();
        assert_eq!(paths.len(), PATHS.len());
        let users = &paths[PATHS[0]]["get"];
        assert_eq!(users["security"], json!([]));
        assert!(users["responses"].get("401").is_none());
        let me = &paths[PATHS[1]]["get"]["responses"];
        assert!(me.get("200").is_none() && me["404"].is_object());
    }
}
