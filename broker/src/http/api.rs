//! The admin JSON API under `/api/` (authorised by `http::authorized`
//! before it gets here).
//!
//! | request                                   | answer                                   |
//! |-------------------------------------------|------------------------------------------|
//! | `GET /api/stats`                          | counters and gauges (the dashboard polls it) |
//! | `GET /api/clients?offset&limit&q`         | sessions by client id, a page (`q`: contains) |
//! | `GET /api/clients/{id}/subscriptions`     | one session's subscriptions (router)     |
//! | `DELETE /api/clients/{id}`                | disconnects it (registry kick; will sent) |
//! | `GET /api/retained?offset&limit&filter&after` | retained messages, a page (router)   |
//! | `POST /api/publish` `{topic,payload,qos,retain}` | publishes through the router      |
//!
//! A path segment or query value is percent-decoded (a client id may hold
//! `/`). Errors are `{"error": "..."}` with 400, 404, 405 or 503.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tidemq_protocol::{QoS, RetainHandling, TopicFilter, TopicName};

use super::{Reply, State, MAX_BODY_BYTES};
use crate::census::version_name;
use crate::registry::ClientInfo;
use crate::router::query::MAX_RETAINED_PAGE;
use crate::types::{ClientId, Message, RetainedCursor};

/// Page size when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;
/// Largest page of clients.
const MAX_CLIENTS_PAGE: usize = 1000;
/// Bytes of a retained payload shown in a listing.
const PAYLOAD_PREVIEW: usize = 256;

pub(super) async fn handle(state: &State, request: Request<Incoming>) -> Reply {
    let path = request.uri().path().to_owned();
    let query = Query::parse(request.uri().query().unwrap_or(""));
    let segments: Vec<&str> = path.trim_start_matches("/api/").split('/').collect();
    let method = request.method().clone();
    match (segments.as_slice(), &method) {
        (["stats"], &Method::GET) => stats(state),
        (["clients"], &Method::GET) => clients(state, &query),
        (["clients", id, "subscriptions"], &Method::GET) => match decode(id) {
            Some(id) => subscriptions(state, ClientId::new(&id)).await,
            None => bad_encoding(),
        },
        (["clients", id], &Method::DELETE) => match decode(id) {
            Some(id) => kick(state, ClientId::new(&id)),
            None => bad_encoding(),
        },
        (["retained"], &Method::GET) => retained(state, &query).await,
        (["publish"], &Method::POST) => publish(state, request).await,
        (["stats"] | ["clients"] | ["clients", _] | ["clients", _, "subscriptions"], _)
        | (["retained"] | ["publish"], _) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "no such API endpoint"),
    }
}

pub(super) fn error(status: StatusCode, message: &str) -> Reply {
    reply(status, &json!({ "error": message }))
}

fn bad_encoding() -> Reply {
    error(StatusCode::BAD_REQUEST, "bad percent-encoding in the path")
}

fn reply(status: StatusCode, body: &Value) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.to_string())));
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply
}

fn ok(body: &Value) -> Reply {
    reply(StatusCode::OK, body)
}

/// `GET /api/stats`: every counter by name, the per-QoS counts, uptime and
/// resident memory.
fn stats(state: &State) -> Reply {
    let metrics = &state.ctx.metrics;
    let counters: serde_json::Map<String, Value> = metrics
        .snapshot()
        .named()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), Value::from(value)))
        .collect();
    ok(&json!({
        "uptime_secs": state.started.elapsed().as_secs_f64(),
        "version": env!("CARGO_PKG_VERSION"),
        "resident_memory_bytes": super::prom::resident_memory_bytes(),
        "messages_received_by_qos": metrics.census.received_by_qos(),
        "messages_sent_by_qos": metrics.census.packets_out.publish_by_qos(),
        "router_queue_depth": state.ctx.router.queued(),
        "metrics": counters,
    }))
}

/// `GET /api/clients`.
fn clients(state: &State, query: &Query) -> Reply {
    let (offset, limit) = match query.page(MAX_CLIENTS_PAGE) {
        Ok(page) => page,
        Err(problem) => return error(StatusCode::BAD_REQUEST, &problem),
    };
    let search = query.get("q").unwrap_or_default();
    let page = state.ctx.registry.clients(&search, offset, limit);
    let clients: Vec<Value> = page.clients.iter().map(client_json).collect();
    ok(&json!({
        "total": page.total,
        "offset": offset,
        "limit": limit,
        "clients": clients,
    }))
}

fn client_json(client: &ClientInfo) -> Value {
    let conn = client.conn.as_ref();
    json!({
        "client_id": client.client_id.as_str(),
        "online": client.online,
        "resting": client.resting,
        "persistent": client.persistent,
        "address": conn.map(|conn| conn.peer.to_string()),
        "listener": conn.and_then(|conn| conn.listener.addr()).map(|addr| addr.to_string()),
        "protocol_version": conn.map(|conn| version_name(conn.version)),
        "keepalive": conn.map(|conn| conn.keep_alive),
        "connected_since_ms": conn.map(|conn| conn.since_ms),
        "queued": client.queued,
        "queued_bytes": client.queued_bytes,
        "in_flight": client.in_flight,
    })
}

/// `GET /api/clients/{id}/subscriptions`: 404 for an unknown session.
async fn subscriptions(state: &State, client_id: ClientId) -> Reply {
    if state.ctx.registry.slot(&client_id).is_none() {
        return error(StatusCode::NOT_FOUND, "no such client");
    }
    let Ok(found) = state.ctx.router.subscriptions_of(client_id.clone()).await else {
        return shutting_down();
    };
    let subscriptions: Vec<Value> = found
        .iter()
        .map(|sub| {
            json!({
                "filter": sub.filter.as_str(),
                "qos": sub.options.qos as u8,
                "no_local": sub.options.no_local,
                "retain_as_published": sub.options.retain_as_published,
                "retain_handling": match sub.options.retain_handling {
                    RetainHandling::OnSubscribe => 0,
                    RetainHandling::OnNewSubscription => 1,
                    RetainHandling::Never => 2,
                },
                "subscription_id": sub.id,
            })
        })
        .collect();
    ok(&json!({
        "client_id": client_id.as_str(),
        "subscriptions": subscriptions,
    }))
}

/// `DELETE /api/clients/{id}`: 404 unless a connection owned the session.
fn kick(state: &State, client_id: ClientId) -> Reply {
    if state.ctx.registry.kick(&client_id) {
        tracing::info!(%client_id, "admin API: disconnecting client");
        ok(&json!({ "client_id": client_id.as_str(), "disconnected": true }))
    } else {
        error(StatusCode::NOT_FOUND, "no such client connected")
    }
}

/// `GET /api/retained`: `filter` (default `#`), `after` (a topic: the
/// page starts after it, cheaper than a large `offset`), `offset`,
/// `limit`. The router is asked a page at a time, so a large offset costs
/// several short router steps, never one long one.
async fn retained(state: &State, query: &Query) -> Reply {
    let (offset, limit) = match query.page(MAX_RETAINED_PAGE) {
        Ok(page) => page,
        Err(problem) => return error(StatusCode::BAD_REQUEST, &problem),
    };
    let filter_text = query.get("filter").unwrap_or_else(|| "#".to_owned());
    let Ok(filter) = TopicFilter::new(&filter_text) else {
        return error(
            StatusCode::BAD_REQUEST,
            "filter is not a valid topic filter",
        );
    };
    let mut cursor = RetainedCursor::new(filter, QoS::AtMostOnce);
    if let Some(after) = query.get("after").filter(|after| !after.is_empty()) {
        let Ok(after) = TopicName::new(&after) else {
            return error(StatusCode::BAD_REQUEST, "after is not a valid topic name");
        };
        cursor.after = Some(after);
    }
    let router = &state.ctx.router;
    let (mut skip, mut exhausted) = (offset, false);
    while skip > 0 && !exhausted {
        let Ok((skipped, more)) = router.retained_page(&mut cursor, skip).await else {
            return shutting_down();
        };
        skip = skip.saturating_sub(skipped.len());
        exhausted = !more;
    }
    let (page, more) = match exhausted {
        true => (Vec::new(), false),
        false => match router.retained_page(&mut cursor, limit).await {
            Ok(answer) => answer,
            Err(_) => return shutting_down(),
        },
    };
    let messages: Vec<Value> = page.iter().map(retained_json).collect();
    let total = state
        .ctx
        .metrics
        .retained_messages_current
        .load(std::sync::atomic::Ordering::Relaxed);
    ok(&json!({
        "total": total,
        "offset": offset,
        "limit": limit,
        "filter": filter_text,
        "retained": messages,
        "next_after": if more { page.last().map(|m| m.topic.as_str()) } else { None },
    }))
}

fn retained_json(message: &Arc<Message>) -> Value {
    let preview = message
        .payload
        .get(..PAYLOAD_PREVIEW)
        .unwrap_or(&message.payload);
    json!({
        "topic": message.topic.as_str(),
        "qos": message.qos as u8,
        "bytes": message.payload.len(),
        "payload": String::from_utf8_lossy(preview),
        "truncated": message.payload.len() > PAYLOAD_PREVIEW,
    })
}

/// `POST /api/publish` with `{"topic", "payload", "qos", "retain"}`: goes
/// to the router like a client's PUBLISH (retained store, store, fan-out),
/// counted against the memory budget; not subject to any listener's ACL.
async fn publish(state: &State, request: Request<Incoming>) -> Reply {
    let ctx = &state.ctx;
    let max = MAX_BODY_BYTES.min(ctx.live.get().limits.max_packet_size);
    let body = match Limited::new(request.into_body(), max).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large or cut short"),
    };
    let Ok(asked) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    let Some(topic) = asked.get("topic").and_then(Value::as_str) else {
        return error(StatusCode::BAD_REQUEST, "topic (a string) is required");
    };
    let Ok(topic) = TopicName::new(topic) else {
        return error(StatusCode::BAD_REQUEST, "topic is not a valid topic name");
    };
    if !ctx.topic_caps.fits(topic.as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            "topic over max_topic_levels or max_topic_len",
        );
    }
    let payload = match asked.get("payload") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(_) => return error(StatusCode::BAD_REQUEST, "payload must be a string"),
    };
    let qos = match asked.get("qos").map(Value::as_u64) {
        None => QoS::AtMostOnce,
        Some(Some(0)) => QoS::AtMostOnce,
        Some(Some(1)) => QoS::AtLeastOnce,
        Some(Some(2)) => QoS::ExactlyOnce,
        Some(_) => return error(StatusCode::BAD_REQUEST, "qos must be 0, 1 or 2"),
    };
    let retain = match asked.get("retain") {
        None => false,
        Some(Value::Bool(retain)) => *retain,
        Some(_) => return error(StatusCode::BAD_REQUEST, "retain must be true or false"),
    };
    let clears = retain && payload.is_empty();
    if ctx.budget.is_over() && !clears {
        return error(StatusCode::SERVICE_UNAVAILABLE, "over memory_limit_mb");
    }
    let message = Message::charged(topic, Bytes::from(payload), qos, retain, &ctx.budget);
    let topic = message.topic.as_str().to_owned();
    if ctx.router.publish(message, None).await.is_err() {
        return shutting_down();
    }
    ok(&json!({ "topic": topic, "qos": qos as u8, "retain": retain, "published": true }))
}

fn shutting_down() -> Reply {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the broker is shutting down",
    )
}

/// A query string's `key=value` pairs, percent-decoded.
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Query {
        Query(
            query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    Some((decode_query(key)?, decode_query(value)?))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.clone())
    }

    /// `offset` (default 0) and `limit` (default [`DEFAULT_LIMIT`], at most
    /// `max`); the problem when either is not a number.
    fn page(&self, max: usize) -> Result<(usize, usize), String> {
        let number = |key: &str, default: usize| match self.get(key) {
            None => Ok(default),
            Some(text) => text
                .parse::<usize>()
                .map_err(|_| format!("{key} must be a non-negative integer")),
        };
        let offset = number("offset", 0)?;
        let limit = number("limit", DEFAULT_LIMIT)?.min(max);
        Ok((offset, limit))
    }
}

/// Percent-decodes a path segment; `None` for bad escapes or UTF-8.
fn decode(text: &str) -> Option<String> {
    percent_decode(text, false)
}

/// Percent-decodes a query key or value (`+` is a space there).
fn decode_query(text: &str) -> Option<String> {
    percent_decode(text, true)
}

fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        match byte {
            b'%' => {
                let high = hex(bytes.next()?)?;
                let low = hex(bytes.next()?)?;
                out.push(high << 4 | low);
            }
            b'+' if plus_is_space => out.push(b' '),
            other => out.push(other),
        }
    }
    String::from_utf8(out).ok()
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_takes_utf8_and_refuses_bad_escapes() {
        assert_eq!(decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(decode("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(decode("a+b").as_deref(), Some("a+b"));
        assert_eq!(decode_query("a+b").as_deref(), Some("a b"));
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%4"), None);
        assert_eq!(decode("%FF"), None, "not UTF-8");
    }

    #[test]
    fn a_page_has_defaults_a_cap_and_refuses_garbage() {
        let query = Query::parse("offset=5&limit=5000&q=dev%2F1");
        assert_eq!(query.page(1000).ok(), Some((5, 1000)));
        assert_eq!(query.get("q").as_deref(), Some("dev/1"));
        assert_eq!(Query::parse("").page(1000).ok(), Some((0, DEFAULT_LIMIT)));
        assert!(Query::parse("limit=-1").page(1000).is_err());
    }
}
