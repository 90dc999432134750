//! `POST /v1/plays` and the operational routes.
//!
//! A request goes through, in order: authentication (401), the body cap (413, also for more
//! than `max_events_per_request` events), cutting the body into events (415/400), the event
//! contract for each event, authorization of every valid event (403 for the whole request if
//! any is another user's and the token lacks [`INGEST_ANY_SCOPE`]), the caller's rate limit
//! (429, charged one token per event), then Kafka. The answer lists every event with its
//! outcome; it is sent once Kafka acknowledged every accepted event (`202`, or `422` when no
//! event was valid), or is a `503` that accepts nothing when Kafka did not within the deadline.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use topk_api::auth::Caller;
use topk_core::event::{parse_play_event, PlayEvent};
use topk_core::window::Window;

use crate::body::{split_events, BodyFormat};
use crate::error::IngestError;
use crate::rate_limit::QuotaClass;
use crate::IngestState;

/// The scope that lets a token post anyone's plays (a service: a gateway, a backfill).
pub const INGEST_ANY_SCOPE: &str = "topk:ingest";

/// The answer to a `POST /v1/plays` that was processed: one result per event, in the order
/// of the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResponse {
    pub accepted: usize,
    pub rejected: usize,
    pub results: Vec<EventResult>,
}

/// One event's outcome. `accepted`: Kafka acknowledged it (it will be counted, once per
/// `event_id`). `rejected`: it breaks the event contract; `reason` is the stable label the
/// aggregator's dead-letter topic uses for the same rule (`topk-dlq-reason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EventResult {
    Accepted {
        index: usize,
        event_id: String,
    },
    Rejected {
        index: usize,
        reason: String,
        detail: String,
    },
}

/// Whom a caller may post for, and which quota it draws on.
fn quota_class(caller: &Caller) -> QuotaClass {
    match caller {
        Caller::Anyone => QuotaClass::Service,
        user if user.has_scope(INGEST_ANY_SCOPE) => QuotaClass::Service,
        Caller::User { .. } => QuotaClass::User,
    }
}

/// Whether `caller` may post `event` (its own plays, or anyone's with the scope).
fn authorize(caller: &Caller, event: &PlayEvent) -> Result<(), IngestError> {
    match caller {
        Caller::User { subject, .. }
            if *subject != event.user_id && !caller.has_scope(INGEST_ANY_SCOPE) =>
        {
            Err(IngestError::Forbidden {
                user_id: event.user_id.clone(),
            })
        }
        _ => Ok(()),
    }
}

/// The rate limit's key: the token's subject, or one shared key with auth off.
fn rate_key(caller: &Caller) -> &str {
    match caller {
        Caller::Anyone => "-",
        Caller::User { subject, .. } => subject,
    }
}

/// `POST /v1/plays`
pub async fn post_plays(
    State(state): State<IngestState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, IngestError> {
    let caller = state.authenticator().authenticate(&headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            IngestError::BodyTooLarge {
                limit: state.max_body_bytes(),
            }
        } else {
            IngestError::UnreadableBody(rejection.body_text())
        }
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or("(not text)"));
    let format = BodyFormat::from_content_type(content_type)?;
    let payloads = split_events(&body, format, state.max_events_per_request())?;

    let window = Window::last_week(Utc::now());
    let mut results = Vec::with_capacity(payloads.len());
    let mut valid = Vec::with_capacity(payloads.len());
    for (index, payload) in payloads.iter().enumerate() {
        match parse_play_event(payload, &window) {
            Ok(event) => {
                authorize(&caller, &event)?;
                results.push(EventResult::Accepted {
                    index,
                    event_id: event.event_id.clone(),
                });
                valid.push(event);
            }
            Err(rejection) => results.push(EventResult::Rejected {
                index,
                reason: rejection.reason.as_str().to_owned(),
                detail: rejection.detail,
            }),
        }
    }

    let events = u32::try_from(payloads.len()).unwrap_or(u32::MAX);
    let class = quota_class(&caller);
    if let Err(wait) = state.rate_limits().check(class, rate_key(&caller), events) {
        metrics::counter!("topk_ingest_requests_rate_limited_total", "quota" => class.as_str())
            .increment(1);
        return Err(IngestError::RateLimited(wait));
    }

    if !valid.is_empty() {
        let in_flight = metrics::gauge!("topk_ingest_events_in_flight");
        in_flight.increment(valid.len() as f64);
        let started = Instant::now();
        let produced = state.producer().produce(&valid).await;
        in_flight.decrement(valid.len() as f64);
        metrics::histogram!("topk_ingest_kafka_ack_seconds")
            .record(started.elapsed().as_secs_f64());
        produced?;
    }

    for result in &results {
        if let EventResult::Rejected { reason, .. } = result {
            metrics::counter!("topk_ingest_events_rejected_total", "reason" => reason.clone())
                .increment(1);
        }
    }
    metrics::counter!("topk_ingest_events_accepted_total").increment(valid.len() as u64);
    let response = IngestResponse {
        accepted: valid.len(),
        rejected: results.len() - valid.len(),
        results,
    };
    let status = if response.accepted > 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((status, Json(response)).into_response())
}

/// `GET /healthz`: the process is up (Kafka is not consulted).
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the broker answers a metadata request for the plays topic.
pub async fn readyz(
    State(state): State<IngestState>,
) -> Result<Json<serde_json::Value>, IngestError> {
    state
        .producer()
        .check_topic(state.kafka_deadline())
        .await
        .map_err(|error| IngestError::NotReady(error.to_string()))?;
    Ok(Json(
        json!({"status": "ready", "topic": state.producer().topic()}),
    ))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<IngestState>) -> impl IntoResponse {
    metrics::gauge!("topk_ingest_producer_queued").set(f64::from(state.producer().queued()));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics_handle().render(),
    )
}

/// `GET /openapi.json`
pub async fn openapi(State(state): State<IngestState>) -> Json<serde_json::Value> {
    Json(crate::openapi::document(state.authenticator().is_on()))
}

pub async fn not_found() -> IngestError {
    IngestError::NotFound
}

pub async fn method_not_allowed() -> IngestError {
    IngestError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user_id: &str) -> PlayEvent {
        PlayEvent::new("e", user_id, "s", 0)
    }

    #[test]
    fn users_post_their_own_plays_and_services_anyones() {
        let user = Caller::User {
            subject: "alice".to_owned(),
            scopes: vec!["topk:read:any".to_owned()],
        };
        assert!(authorize(&user, &event("alice")).is_ok());
        assert!(matches!(
            authorize(&user, &event("bob")),
            Err(IngestError::Forbidden { .. })
        ));
        assert_eq!(quota_class(&user), QuotaClass::User);
        let service = Caller::User {
            subject: "gateway".to_owned(),
            scopes: vec![INGEST_ANY_SCOPE.to_owned()],
        };
        assert!(authorize(&service, &event("bob")).is_ok());
        assert_eq!(quota_class(&service), QuotaClass::Service);
        assert!(authorize(&Caller::Anyone, &event("bob")).is_ok());
        assert_eq!(rate_key(&Caller::Anyone), "-");
    }

    #[test]
    fn results_serialize_with_their_status() {
        let accepted = serde_json::to_value(EventResult::Accepted {
            index: 0,
            event_id: "e1".to_owned(),
        })
        .unwrap();
        assert_eq!(
            accepted,
            json!({"status": "accepted", "index": 0, "event_id": "e1"})
        );
        let rejected = serde_json::to_value(EventResult::Rejected {
            index: 1,
            reason: "ts_too_old".to_owned(),
            detail: "old".to_owned(),
        })
        .unwrap();
        assert_eq!(rejected["status"], "rejected");
        assert_eq!(rejected["reason"], "ts_too_old");
    }
}
