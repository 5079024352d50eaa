//! The agent's HTTP API (axum): publish (`POST /v1/invalidate`, with
//! `?confirm=` to await every live member), receive (`GET /v1/events`, in
//! sse.rs), and watch (`/v1/status`, `/v1/members`, `/metrics`, `/livez`,
//! `/readyz`), and reload the key file (`POST /v1/keys/reload`). Every
//! request is hostile: bounded in size (413), checked
//! field by field (400 with a JSON error naming the problem), and nothing
//! reaches the node before all of it is valid.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use cachecast::wire::{Event, EventBatch, MAX_KEY_LEN};
use cachecast::{Node, PublishError};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::config::Config;
use super::feed::Feed;
use super::metrics::{HttpLabels, Metrics, NodeSnapshot, OutcomeLabels};

/// What every handler shares.
pub struct AppState {
    pub config: Arc<Config>,
    /// Set once the node has joined.
    pub node: OnceLock<Node>,
    pub feed: Arc<Feed>,
    pub metrics: Arc<Metrics>,
    /// Each applier's name and whether it is connected (for `/readyz`);
    /// set once the node has joined (appliers start after the join).
    pub appliers: OnceLock<Vec<(String, Arc<AtomicBool>)>>,
    /// True once the agent is stopping: publishing is refused, SSE
    /// streams end with a final event.
    pub stopping: watch::Receiver<bool>,
    pub started: Instant,
    /// The node's largest datagram: a long key list is split to fit.
    pub max_datagram: usize,
}

/// The router, with the bearer-token check when a token is configured.
pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.config.http.max_body;
    Router::new()
        .route("/v1/invalidate", post(invalidate))
        .route("/v1/events", get(super::sse::events))
        .route("/v1/status", get(status))
        .route("/v1/members", get(members))
        .route("/v1/keys/reload", post(reload_keys))
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint".into(),
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// A JSON error: `{"error": "..."}`.
pub fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Checks the bearer token (when one is set) and counts every request
/// by route and status.
async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_owned();
    let token = &st.config.http.token;
    let resp = if !token.is_empty() && !bearer_matches(req.headers(), token) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <http.token>)".into(),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"cachecast\""),
        );
        r
    } else {
        next.run(req).await
    };
    st.metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// Constant-time comparison of the `Authorization: Bearer` token.
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 7235).
            let (scheme, rest) = v.split_at_checked(7)?;
            scheme.eq_ignore_ascii_case("bearer ").then_some(rest)
        })
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One event of a request, or (at the top) a batch of them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventIn {
    keys: Option<Vec<String>>,
    prefix: Option<String>,
    all: Option<bool>,
    topic: Option<String>,
    payload: Option<String>,
    events: Option<Vec<EventIn>>,
}

impl EventIn {
    /// The event this names, checked; `at` names it in errors.
    fn to_event(&self, at: &str) -> Result<Event, String> {
        let kinds = [
            self.keys.is_some(),
            self.prefix.is_some(),
            self.all.is_some(),
            self.topic.is_some(),
        ];
        let n = kinds.iter().filter(|k| **k).count();
        if self.events.is_some() {
            return Err(format!("{at}events: only at the top level, and alone"));
        }
        if n != 1 {
            return Err(format!(
                "{at}exactly one of \"keys\", \"prefix\", \"all\", \"topic\" (found {n})"
            ));
        }
        if self.payload.is_some() && self.topic.is_none() {
            return Err(format!("{at}payload: only with \"topic\""));
        }
        let text = |what: &str, s: &str| -> Result<(), String> {
            if s.is_empty() {
                return Err(format!("{at}{what}: empty"));
            }
            if s.len() > MAX_KEY_LEN {
                return Err(format!(
                    "{at}{what}: {} bytes, at most {MAX_KEY_LEN}",
                    s.len()
                ));
            }
            Ok(())
        };
        if let Some(keys) = &self.keys {
            if keys.is_empty() {
                return Err(format!("{at}keys: empty list"));
            }
            for (i, k) in keys.iter().enumerate() {
                text(&format!("keys[{i}]"), k)?;
            }
            return Ok(Event::Invalidate { keys: keys.clone() });
        }
        if let Some(p) = &self.prefix {
            text("prefix", p)?;
            return Ok(Event::InvalidatePrefix { prefix: p.clone() });
        }
        if let Some(all) = self.all {
            if !all {
                return Err(format!("{at}all: must be true"));
            }
            return Ok(Event::ClearAll);
        }
        let topic = self.topic.as_deref().unwrap_or_default();
        text("topic", topic)?;
        let payload = match &self.payload {
            None => Vec::new(),
            Some(p) => base64::engine::general_purpose::STANDARD
                .decode(p)
                .map_err(|e| format!("{at}payload: not base64 ({e})"))?,
        };
        Ok(Event::Custom {
            topic: topic.to_owned(),
            payload,
        })
    }

    fn key_count(&self) -> usize {
        self.keys.as_ref().map_or(1, Vec::len)
    }
}

/// Parses and checks a request body into events.
fn parse_events(
    headers: &HeaderMap,
    body: &[u8],
    max_keys: usize,
    max_datagram: usize,
) -> Result<Vec<Event>, String> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(format!(
            "content type {:?}: send application/json",
            if ct.is_empty() { "(none)" } else { ct }
        ));
    }
    let req: EventIn = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    let events: Vec<(String, &EventIn)> = match &req.events {
        Some(list) => {
            if req.keys.is_some()
                || req.prefix.is_some()
                || req.all.is_some()
                || req.topic.is_some()
                || req.payload.is_some()
            {
                return Err("events: alone at the top level, not beside an event's fields".into());
            }
            if list.is_empty() {
                return Err("events: empty list".into());
            }
            list.iter()
                .enumerate()
                .map(|(i, e)| (format!("events[{i}]."), e))
                .collect()
        }
        None => vec![(String::new(), &req)],
    };
    let keys: usize = events.iter().map(|(_, e)| e.key_count()).sum();
    if keys > max_keys {
        return Err(format!(
            "too many keys: {keys} in one request, at most {max_keys}"
        ));
    }
    let mut out = Vec::with_capacity(events.len());
    for (at, e) in &events {
        match e.to_event(at)? {
            // A long list becomes several events (consecutive seqs), each
            // fitting in one datagram.
            Event::Invalidate { keys } => out.extend(
                cachecast::wire::pack_keys(keys, max_datagram)
                    .map_err(|err| format!("{at}keys: {err}"))?,
            ),
            other => out.push(other),
        }
    }
    Ok(out)
}

/// The longest `?confirm=` a request may wait.
pub const MAX_CONFIRM: Duration = Duration::from_secs(30);

/// The query string of `POST /v1/invalidate`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidateQuery {
    /// Await confirmation for this long (`1s`, `250ms`).
    confirm: Option<String>,
}

/// Reads `?confirm=`: a duration above zero, at most [`MAX_CONFIRM`].
fn parse_confirm(v: &str) -> Result<Duration, String> {
    // The value is echoed in the error: cut to a readable length.
    let shown: String = v.chars().take(40).collect();
    let d = humantime::parse_duration(v.trim()).map_err(|e| {
        format!("confirm: {shown:?} is not a duration ({e}); e.g. confirm=1s or confirm=250ms")
    })?;
    if d.is_zero() {
        return Err("confirm: must be more than 0 (e.g. confirm=1s)".into());
    }
    if d > MAX_CONFIRM {
        return Err(format!(
            "confirm: {shown} is over the limit of {}",
            humantime::format_duration(MAX_CONFIRM)
        ));
    }
    Ok(d)
}

/// Rewrites every `"stream": <u64>` in `v` as 16 hex digits, as the rest
/// of the API writes stream ids (a JSON number above 2^53 loses digits in
/// JavaScript).
fn hex_streams(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                match x.as_u64() {
                    Some(id) if k == "stream" => *x = json!(format!("{id:016x}")),
                    _ => hex_streams(x),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(hex_streams),
        _ => {}
    }
}

/// `POST /v1/invalidate`: publishes one event or a batch; 202 with the
/// stream and sequence numbers once the node has taken them. With
/// `?confirm=1s`, then awaits every member live at that moment (for at
/// most that long): 200 with the report added when nobody is pending, 504
/// with it (the pending members named) when somebody is.
async fn invalidate(
    State(st): State<Arc<AppState>>,
    query: Result<Query<InvalidateQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let t0 = Instant::now();
    let confirm = match query.map(|Query(q)| q.confirm.as_deref().map(parse_confirm)) {
        Ok(None) => None,
        Ok(Some(Ok(d))) => Some(d),
        Ok(Some(Err(msg))) => return error(StatusCode::BAD_REQUEST, msg),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("query: {} (only ?confirm=DURATION)", e.body_text()),
            )
        }
    };
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "body over {} bytes (http.max_body)",
                    st.config.http.max_body
                ),
            )
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let Some(node) = st.node.get() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not joined yet: the agent is joining the cluster".into(),
        );
    };
    if *st.stopping.borrow() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is stopping".into(),
        );
    }
    let events = match parse_events(&headers, &body, st.config.http.max_keys, st.max_datagram) {
        Ok(ev) => ev,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let mut batch = EventBatch::new();
    for (i, e) in events.iter().enumerate() {
        if let Err(err) = batch.push(e) {
            return error(StatusCode::BAD_REQUEST, format!("events[{i}]: {err}"));
        }
    }
    let n = events.len() as u64;
    let receipt = match node.publish_batch(&mut batch).await {
        Ok(r) => r,
        Err(PublishError::Invalid(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    st.metrics.http_events_accepted.inc_by(n);
    st.metrics
        .http_publish_latency
        .observe(t0.elapsed().as_secs_f64());
    let mut answer = json!({
        "stream": format!("{:016x}", receipt.stream),
        "first_seq": receipt.seqs.start,
        "last_seq": receipt.seqs.end.saturating_sub(1),
        "events": n,
    });
    let Some(timeout) = confirm else {
        return (StatusCode::ACCEPTED, Json(answer)).into_response();
    };
    // The receipt spans every event of the request (a batch, or a key
    // list split over several): one confirmation covers them all.
    let t1 = Instant::now();
    let status = match node.confirm(&receipt, timeout).await {
        Ok(report) => {
            let complete = report.is_complete();
            st.metrics
                .http_confirm_latency
                .get_or_create(&OutcomeLabels {
                    outcome: if complete { "complete" } else { "incomplete" },
                })
                .observe(t1.elapsed().as_secs_f64());
            let mut report = serde_json::to_value(&report).unwrap_or_default();
            hex_streams(&mut report);
            answer["confirmation"] = report;
            if complete {
                StatusCode::OK
            } else {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
        // Published (the events reach every member, or a Reset does), but
        // the node stopped before it could confirm.
        Err(e) => {
            answer["error"] = json!(format!("published, but not confirmed: {e}"));
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    (status, Json(answer)).into_response()
}

/// `GET /v1/members`: the node's membership view (this node first, then
/// every member heard, live, left or dead, with how far each delivered
/// each stream) and its staleness bound; 503 before the join.
async fn members(State(st): State<Arc<AppState>>) -> Response {
    let Some(node) = st.node.get() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not joined yet: the agent is joining the cluster".into(),
        );
    };
    let members = node.members().await;
    let live = members
        .iter()
        .filter(|m| !m.this_node && m.state == cachecast::Liveness::Live)
        .count();
    let mut v = json!({
        "node": format!("{:016x}", node.stream()),
        "live": live,
        "members": &members,
        "staleness": node.staleness().await,
    });
    hex_streams(&mut v);
    crate::keys::hex_member_keys(&mut v, &members);
    Json(v).into_response()
}

/// The key ids this node holds (hex, the sending one first; empty without
/// keys), from its own entry of the membership view.
async fn held_keys(node: &Node) -> Vec<String> {
    node.members()
        .await
        .iter()
        .find(|m| m.this_node)
        .map(|m| m.keys.iter().map(|k| crate::keys::key_hex(*k)).collect())
        .unwrap_or_default()
}

/// `POST /v1/keys/reload`: reads the key file (`auth.key_file`) again and
/// uses its keys from now on, without leaving the group (a rotation's
/// step; `cachecast keygen --help`). 200 with the key ids now held,
/// `{"keys": [...], "sending": "…"}`. On an error the keys in use stay, and
/// the body says why and which keys are held (`{"error", "keys"}`): 409
/// when the agent runs without a key file, 422 when the file cannot be
/// used (missing, readable by others, not a key file, no sending key), 503
/// before the join or once stopping.
async fn reload_keys(State(st): State<Arc<AppState>>) -> Response {
    use cachecast::ReloadError;
    let Some(node) = st.node.get() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not joined yet: the agent is joining the cluster".into(),
        );
    };
    if *st.stopping.borrow() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is stopping".into(),
        );
    }
    let result = node.reload_keys().await;
    crate::keys::log_reload(&result, "POST /v1/keys/reload");
    st.metrics.key_reloaded(result.is_ok());
    match result {
        Ok(ids) => {
            let keys: Vec<String> = ids.iter().map(|k| crate::keys::key_hex(*k)).collect();
            Json(json!({ "keys": keys, "sending": keys.first() })).into_response()
        }
        Err(e) => {
            let status = match e {
                ReloadError::NoKeyFile => StatusCode::CONFLICT,
                ReloadError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            let message = match e {
                ReloadError::NoKeyFile => {
                    "the agent runs without a key file (auth.key_file): nothing to reload".into()
                }
                e => format!("{e}; the keys in use stay"),
            };
            let keys = held_keys(node).await;
            (status, Json(json!({ "error": message, "keys": keys }))).into_response()
        }
    }
}

/// `GET /readyz`: 200 once joined and every applier connected.
async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let mut reasons = Vec::new();
    if st.node.get().is_none() {
        reasons.push("not joined yet".to_owned());
    }
    if *st.stopping.borrow() {
        reasons.push("stopping".to_owned());
    }
    for (name, up) in st.appliers.get().into_iter().flatten() {
        if !up.load(Ordering::Relaxed) {
            reasons.push(format!("{name}: not connected"));
        }
    }
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reasons": reasons })),
        )
            .into_response()
    }
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let node = match st.node.get() {
        Some(n) => Some(NodeSnapshot {
            stats: n.stats().await,
            members: n.members().await,
        }),
        None => None,
    };
    st.metrics.feed_buffered.set(st.feed.len() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(node),
    )
        .into_response()
}

/// `GET /v1/status`: joined, the streams followed with their last-heard
/// age, the feed, the appliers, the counters.
async fn status(State(st): State<Arc<AppState>>) -> Response {
    let cfg = &st.config;
    let (node, streams, stats) = match st.node.get() {
        Some(n) => {
            let keys = held_keys(n).await;
            let now = Instant::now();
            let streams: Vec<_> = n
                .streams()
                .await
                .into_iter()
                .map(|s| {
                    json!({
                        "stream": format!("{:016x}", s.stream),
                        "node": s.node.as_deref(),
                        "next_expected": s.next_expected,
                        "open_gaps": s.gaps.len(),
                        "last_heard_ms": now.saturating_duration_since(s.last_heard).as_millis() as u64,
                    })
                })
                .collect();
            let stats = n.stats().await;
            (
                json!({ "stream": format!("{:016x}", n.stream()), "keys": keys }),
                streams,
                serde_json::to_value(stats).unwrap_or_default(),
            )
        }
        None => (json!(null), Vec::new(), json!(null)),
    };
    let appliers: Vec<_> = st
        .appliers
        .get()
        .into_iter()
        .flatten()
        .map(|(name, up)| json!({ "name": name, "connected": up.load(Ordering::Relaxed) }))
        .collect();
    Json(json!({
        "joined": st.node.get().is_some(),
        "stopping": *st.stopping.borrow(),
        "version": env!("CARGO_PKG_VERSION"),
        "cluster": cfg.node.cluster,
        "group": cfg.node.group.to_string(),
        "node": node,
        "epoch": format!("{:016x}", st.feed.epoch()),
        "uptime_s": st.started.elapsed().as_secs(),
        "streams": streams,
        "feed": { "last": st.feed.last(), "buffered": st.feed.len() },
        "sse_clients": st.metrics.sse_clients.get(),
        "appliers": appliers,
        "counters": stats,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(ct: &str, body: &str) -> Result<Vec<Event>, String> {
        let mut h = HeaderMap::new();
        if !ct.is_empty() {
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        }
        parse_events(&h, body.as_bytes(), 5, 1200)
    }

    #[test]
    fn bodies_become_events_or_errors_naming_the_problem() {
        let j = "application/json";
        assert_eq!(
            parse(j, r#"{"keys":["a","b"]}"#).unwrap(),
            [Event::Invalidate {
                keys: vec!["a".into(), "b".into()]
            }]
        );
        assert_eq!(
            parse(
                "application/json; charset=utf-8",
                r#"{"events":[{"prefix":"p"},{"all":true},{"topic":"t","payload":"AP8="}]}"#
            )
            .unwrap(),
            [
                Event::InvalidatePrefix { prefix: "p".into() },
                Event::ClearAll,
                Event::Custom {
                    topic: "t".into(),
                    payload: vec![0, 255]
                },
            ]
        );
        // 200 keys of 20 bytes: more than one datagram's worth, split.
        let many: Vec<String> = (0..200).map(|i| format!("key-{i:016}")).collect();
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, j.parse().unwrap());
        let body = json!({ "keys": many }).to_string();
        let ev = parse_events(&h, body.as_bytes(), 1000, 1200).unwrap();
        assert!(ev.len() > 1, "{}", ev.len());
        let mut back = Vec::new();
        for e in &ev {
            cachecast::wire::check_event(e, 1200).unwrap();
            let Event::Invalidate { keys } = e else {
                panic!()
            };
            back.extend(keys.iter().cloned());
        }
        assert_eq!(back, many);
        let long = "x".repeat(MAX_KEY_LEN + 1);
        for (ct, body, want) in [
            ("text/plain", r#"{"keys":["a"]}"#, "content type"),
            ("", r#"{"keys":["a"]}"#, "content type"),
            (j, r#"{"keys":["a"]"#, "malformed JSON"),
            (j, r#"{"kyes":["a"]}"#, "unknown field `kyes`"),
            (j, r#"{"keys":[""]}"#, "keys[0]: empty"),
            (
                j,
                &format!(r#"{{"keys":["{long}"]}}"#),
                "keys[0]: 1025 bytes",
            ),
            (j, r#"{"keys":[]}"#, "keys: empty list"),
            (
                j,
                r#"{"keys":["a","b","c","d","e","f"]}"#,
                "too many keys: 6",
            ),
            (j, r#"{"keys":["a"],"prefix":"p"}"#, "exactly one"),
            (j, r#"{}"#, "exactly one"),
            (j, r#"{"all":false}"#, "all: must be true"),
            (j, r#"{"topic":"t","payload":"%%"}"#, "payload: not base64"),
            (
                j,
                r#"{"prefix":"p","payload":"AA=="}"#,
                "payload: only with",
            ),
            (j, r#"{"events":[]}"#, "events: empty list"),
            (j, r#"{"events":[{"events":[]}]}"#, "events[0].events"),
            (
                j,
                r#"{"events":[{"keys":["a"]}],"all":true}"#,
                "events: alone",
            ),
            (
                j,
                r#"{"events":[{"keys":["a"]},{"prefix":""}]}"#,
                "events[1].prefix: empty",
            ),
            (j, r#"[1,2]"#, "malformed JSON"),
        ] {
            let err = parse(ct, body).unwrap_err();
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    /// Before the join: 503 with the reason for publishing, SSE and
    /// readiness; alive all the same.
    #[tokio::test]
    async fn until_the_node_has_joined_publishing_is_503_with_the_reason() {
        use tower::ServiceExt;
        let (_tx, stopping) = watch::channel(false);
        let st = Arc::new(AppState {
            config: Arc::new(Config::default()),
            node: OnceLock::new(),
            feed: Feed::new(1, 16),
            metrics: Arc::new(Metrics::new()),
            appliers: OnceLock::new(),
            stopping,
            started: Instant::now(),
            max_datagram: 1200,
        });
        let call = |method: &str, path: &str| {
            let req = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .header(header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(r#"{"keys":["a"]}"#))
                .unwrap();
            router(st.clone()).oneshot(req)
        };
        // SSE is served before the join (EventSource clients give up on a
        // 503): it starts, with the retry hint first.
        let resp = call("GET", "/v1/events").await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let mut body = resp.into_body().into_data_stream();
        let first = futures_util::StreamExt::next(&mut body)
            .await
            .unwrap()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&first).starts_with("retry:"),
            "{first:?}"
        );
        for (method, path, want) in [
            ("POST", "/v1/invalidate", 503),
            ("POST", "/v1/invalidate?confirm=1s", 503),
            ("GET", "/v1/members", 503),
            ("POST", "/v1/keys/reload", 503),
            ("GET", "/readyz", 503),
            ("GET", "/livez", 200),
            ("GET", "/v1/status", 200),
        ] {
            let resp = call(method, path).await.unwrap();
            assert_eq!(resp.status().as_u16(), want, "{method} {path}");
            if want == 503 {
                let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
                    .await
                    .unwrap();
                let text = String::from_utf8_lossy(&body);
                assert!(text.contains("not joined yet"), "{path}: {text}");
            }
        }
    }

    #[test]
    fn confirm_takes_a_bounded_duration_or_names_the_problem() {
        assert_eq!(parse_confirm("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_confirm("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_confirm("30s"), Ok(MAX_CONFIRM));
        for (v, want) in [
            ("", "is not a duration"),
            ("abc", "is not a duration"),
            ("1", "is not a duration"),
            ("-1s", "is not a duration"),
            ("0s", "more than 0"),
            ("31s", "over the limit of 30s"),
            ("1h", "over the limit"),
            ("99999999999999999999999s", "is not a duration"),
        ] {
            let err = parse_confirm(v).unwrap_err();
            assert!(
                err.starts_with("confirm: ") && err.contains(want),
                "{v}: {err}"
            );
        }
        // A long value is not echoed whole.
        let err = parse_confirm(&"9".repeat(10_000)).unwrap_err();
        assert!(err.len() < 400, "{err}");
    }

    #[test]
    fn stream_ids_become_hex_wherever_they_are() {
        let mut v = json!({
            "stream": 255u64,
            "members": [{"stream": u64::MAX, "streams": [{"stream": 1, "lag": 3}]}],
            "pending": [{"name": "b", "stream": 16}],
            "other": 7,
        });
        hex_streams(&mut v);
        assert_eq!(
            v,
            json!({
                "stream": "00000000000000ff",
                "members": [{"stream": "ffffffffffffffff",
                             "streams": [{"stream": "0000000000000001", "lag": 3}]}],
                "pending": [{"name": "b", "stream": "0000000000000010"}],
                "other": 7,
            })
        );
    }

    #[test]
    fn the_token_is_compared_whole() {
        let mut h = HeaderMap::new();
        assert!(!bearer_matches(&h, "secret-token-123"));
        h.insert(
            header::AUTHORIZATION,
            "Bearer secret-token-123".parse().unwrap(),
        );
        assert!(bearer_matches(&h, "secret-token-123"));
        assert!(!bearer_matches(&h, "secret-token-1234"));
        h.insert(
            header::AUTHORIZATION,
            "Bearer secret-token-12".parse().unwrap(),
        );
        assert!(!bearer_matches(&h, "secret-token-123"));
        h.insert(
            header::AUTHORIZATION,
            "Basic secret-token-123".parse().unwrap(),
        );
        assert!(!bearer_matches(&h, "secret-token-123"));
    }
}
