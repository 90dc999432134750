//! The OpenAPI 3.0 description of the ingest service, served at `/openapi.json`. Written by
//! hand, as `topk-api`'s; the tests check it lists every route the router serves.

use serde_json::{json, Value};
use topk_api::openapi::{error_response, error_schema};
use topk_core::event::{RejectReason, DEFAULT_CHART_MIN_PLAYED_MS, MAX_ID_BYTES, MAX_PLAYED_MS};

/// Every path the router serves, as written in the document.
pub const PATHS: [&str; 5] = [
    "/v1/plays",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

fn with_retry_after(mut response: Value, description: &str) -> Value {
    response["headers"] = json!({
        "Retry-After": {"description": description, "schema": {"type": "integer", "minimum": 1}}
    });
    response
}

fn play_event_schema() -> Value {
    let id = |what: &str| {
        json!({
            "type": "string", "minLength": 1, "maxLength": MAX_ID_BYTES,
            "description": format!("{what}: 1 to {MAX_ID_BYTES} bytes (UTF-8), no control characters")
        })
    };
    json!({
        "type": "object",
        "required": ["event_id", "user_id", "song_id", "ts"],
        "properties": {
            "event_id": id("Chosen by the client, unique per play and kept on retries: the aggregator counts an event_id once, so resending an event after a timeout or a 503 cannot count it twice. The server does not make one up, because a server-made id would differ on every retry"),
            "user_id": id("The listener; with a user token, the token's subject"),
            "song_id": id("The song"),
            "ts": {
                "description": "When the play happened: epoch milliseconds or an RFC 3339 string; within the last 7 days (UTC) and at most 5 minutes ahead",
                "oneOf": [{"type": "integer"}, {"type": "string", "format": "date-time"}]
            },
            "region": {
                "description": "Optional: where the play happened, an assigned ISO 3166-1 alpha-2 code in upper case (regional charts)",
                "type": "string", "nullable": true, "pattern": "^[A-Z]{2}$"
            },
            "played_ms": {
                "description": format!("Optional: how long the song was played, in milliseconds; a play shorter than the charts' minimum (default {DEFAULT_CHART_MIN_PLAYED_MS}) is not counted in charts, and is still counted in the user's own top songs"),
                "type": "integer", "nullable": true, "minimum": 0, "maximum": MAX_PLAYED_MS
            }
        },
        "additionalProperties": true
    })
}

fn post_plays(auth_on: bool) -> Value {
    let reasons: Vec<&str> = RejectReason::ALL
        .iter()
        .map(|reason| reason.as_str())
        .collect();
    let results = json!({"$ref": "#/components/schemas/IngestResponse"});
    let mut operation = json!({
        "summary": "Post play events: one, a JSON array, or NDJSON lines",
        "description": "Each event is checked by the event contract the aggregator applies; the valid ones are produced to Kafka (idempotent producer, acks=all) and the answer comes once Kafka acknowledged all of them. Events are rejected one by one with a reason; the batch is not all-or-nothing. A 503 accepts nothing: retry the same events with the same event_ids.",
        "security": [{"bearer": []}],
        "requestBody": {
            "required": true,
            "content": {
                "application/json": {"schema": {"oneOf": [
                    {"$ref": "#/components/schemas/PlayEvent"},
                    {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/PlayEvent"}}
                ]}},
                "application/x-ndjson": {"schema": {"type": "string", "description": "One PlayEvent JSON object per line"}}
            }
        },
        "responses": {
            "202": {"description": "Every accepted event is acknowledged by Kafka; rejected ones say why", "content": {"application/json": {"schema": results}}},
            "422": {"description": "No event was valid; each says why", "content": {"application/json": {"schema": results}}},
            "400": error_response("The body is empty or not a JSON array"),
            "401": error_response("Missing or invalid token"),
            "403": error_response("A user token posting another user's plays (needs scope topk:ingest); nothing is accepted"),
            "413": error_response("The body is over the size cap, or holds more events than a request may"),
            "415": error_response("Neither application/json nor application/x-ndjson"),
            "429": with_retry_after(error_response("The token's rate limit (events per second) is reached; nothing is accepted"), "Seconds until the events fit"),
            "503": with_retry_after(error_response("Kafka did not acknowledge within the deadline, or too many requests in flight; nothing is accepted"), "Seconds to wait"),
        }
    });
    operation["x-reject-reasons"] = json!(reasons);
    if !auth_on {
        operation["security"] = json!([]);
        let responses = operation["responses"].as_object_mut().expect("an object");
        responses.remove("401");
        responses.remove("403");
    }
    operation
}

/// The document of this server: with auth on (`auth_on`) posting requires a bearer token.
pub fn document(auth_on: bool) -> Value {
    let reasons: Vec<&str> = RejectReason::ALL
        .iter()
        .map(|reason| reason.as_str())
        .collect();
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "topk-ingest",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Play events in over HTTP: validated by the event contract, produced to Kafka, acknowledged after Kafka acknowledged them."
        },
        "paths": {
            (PATHS[0]): {"post": post_plays(auth_on)},
            (PATHS[1]): {"get": {"summary": "The process is up", "responses": {"200": {"description": "ok"}}}},
            (PATHS[2]): {"get": {
                "summary": "The broker answers for the plays topic",
                "responses": {"200": {"description": "ready"}, "503": error_response("Not ready")}
            }},
            (PATHS[3]): {"get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}}
            }},
            (PATHS[4]): {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.0"}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "PlayEvent": play_event_schema(),
                "IngestResponse": {
                    "type": "object",
                    "required": ["accepted", "rejected", "results"],
                    "properties": {
                        "accepted": {"type": "integer", "minimum": 0},
                        "rejected": {"type": "integer", "minimum": 0},
                        "results": {"type": "array", "items": {
                            "type": "object",
                            "required": ["index", "status"],
                            "properties": {
                                "index": {"type": "integer", "minimum": 0, "description": "The event's position in the body"},
                                "status": {"type": "string", "enum": ["accepted", "rejected"]},
                                "event_id": {"type": "string", "description": "Accepted events"},
                                "reason": {"type": "string", "enum": reasons, "description": "Rejected events: the rule broken (the dead-letter topic's topk-dlq-reason)"},
                                "detail": {"type": "string", "description": "Rejected events: what was wrong"}
                            }
                        }}
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
    fn document_lists_every_path_and_every_reason() {
        for auth_on in [true, false] {
            let document = document(auth_on);
            let paths = document["paths"].as_object().unwrap();
            assert_eq!(paths.len(), PATHS.len());
            let post = &paths[PATHS[0]]["post"];
            assert!(post["responses"]["202"].is_object());
            assert_eq!(post["responses"].get("403").is_some(), auth_on);
            let reasons = document["components"]["schemas"]["IngestResponse"]["properties"]
                ["results"]["items"]["properties"]["reason"]["enum"]
                .as_array()
                .unwrap()
                .len();
            assert_eq!(reasons, RejectReason::ALL.len());
        }
    }

    #[test]
    fn the_router_serves_every_documented_path() {
        let source = include_str!("app.rs");
        for path in PATHS {
            assert!(
                source.contains(&format!(".route(\"{path}\"")),
                "{path} is not routed"
            );
        }
    }
}
