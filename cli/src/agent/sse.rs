//! `GET /v1/events`: every delivery as a Server-Sent Event, resumable.
//!
//! Each event's `id:` is its cursor (`<agent epoch>:<n>`). A client that
//! reconnects with `Last-Event-ID` (or `?last_event_id=`) gets exactly what
//! it missed while that is still in the feed; otherwise (too old, another
//! agent epoch, unknown) a `reset` event first, never a silent gap. A
//! client that falls further behind than the feed holds gets a `reset` and
//! is disconnected.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use serde_json::Value;

use super::feed::{cursor, Action, Item, Read, Resume};
use super::http::{error, AppState};
use super::metrics::ReasonLabels;

/// Items read from the feed at a time, per client.
const READ_MAX: usize = 256;

/// The query: other parameters (a cache-buster) are ignored, since an
/// EventSource gives up for good on a 400.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    last_event_id: Option<String>,
    /// Comma-separated key prefixes: only events touching them (a reset
    /// and a clear always pass).
    prefix: Option<String>,
}

/// One client's stream.
struct Client {
    st: Arc<AppState>,
    after: u64,
    hello: bool,
    reset: Option<Item>,
    items: VecDeque<Arc<Item>>,
    filter: Option<Vec<String>>,
    stopping: tokio::sync::watch::Receiver<bool>,
    done: bool,
    _count: Counted,
}

/// Keeps the SSE clients gauge while a stream lives.
struct Counted(Arc<AppState>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.metrics.sse_clients.dec();
    }
}

pub async fn events(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    // Served before the join and while stopping too: the feed exists from
    // the start, and an EventSource gives up for good on any answer but
    // 200. While stopping, the stream is the hello and the final event.
    let filter = match q.prefix.as_deref() {
        None => None,
        Some(p) => {
            let list: Vec<String> = p
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if list.is_empty() || list.len() > 256 {
                return error(
                    StatusCode::BAD_REQUEST,
                    "prefix: 1 to 256 comma-separated prefixes".into(),
                );
            }
            Some(list)
        }
    };
    // A header that is there but not text is an unknown cursor (a reset),
    // never "no cursor".
    let last_id = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().unwrap_or("(not text)").to_owned()),
        None => q.last_event_id,
    };
    let feed = &st.feed;
    let (after, reset) = match last_id.as_deref().map(|id| feed.resume(id.trim())) {
        None => (feed.last(), None),
        Some(Resume::After(n)) => (n, None),
        Some(Resume::Reset { reason, after }) => {
            count_reset(&st, reason);
            (after, Some(Item::agent_reset(feed.epoch(), after, reason)))
        }
    };
    st.metrics.sse_clients.inc();
    let client = Client {
        after,
        hello: true,
        reset,
        items: VecDeque::new(),
        filter,
        stopping: st.stopping.clone(),
        done: false,
        _count: Counted(st.clone()),
        st: st.clone(),
    };
    let keepalive = KeepAlive::new()
        .interval(st.config.sse.keepalive)
        .text("keep-alive");
    Sse::new(stream::unfold(client, |mut c| async move {
        let ev = c.next().await?;
        c.st.metrics.sse_events_sent.inc();
        Some((Ok::<Event, Infallible>(ev), c))
    }))
    .keep_alive(keepalive)
    .into_response()
}

fn count_reset(st: &AppState, reason: &str) {
    st.metrics
        .sse_resets
        .get_or_create(&ReasonLabels {
            reason: reason.to_owned(),
        })
        .inc();
}

impl Client {
    async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        if self.hello {
            self.hello = false;
            let epoch = self.st.feed.epoch();
            // With the cursor of where it starts: a client that hears no
            // event before the agent restarts still resumes with a cursor,
            // and so gets the `reset` for what it missed meanwhile.
            return Some(
                Event::default()
                    .retry(self.st.config.sse.retry)
                    .id(cursor(epoch, self.after))
                    .comment(format!("cachecast agent, epoch {epoch:016x}")),
            );
        }
        if let Some(r) = self.reset.take() {
            return Some(sse_event(self.st.feed.epoch(), &r, &r.json));
        }
        loop {
            while let Some(item) = self.items.pop_front() {
                self.after = item.id;
                if let Some(json) = self.filtered(&item) {
                    return Some(sse_event(self.st.feed.epoch(), &item, &json));
                }
            }
            match self.st.feed.read(self.after, READ_MAX) {
                Read::Items(v) if !v.is_empty() => self.items.extend(v),
                Read::Items(_) => {
                    let feed = self.st.feed.clone();
                    let after = self.after;
                    let mut stopping = self.stopping.clone();
                    let why = tokio::select! {
                        more = feed.wait(after) => (!more).then_some("the node stopped"),
                        _ = stopping.wait_for(|s| *s) => Some("the agent is stopping"),
                    };
                    if let Some(why) = why {
                        return self.bye(why);
                    }
                }
                Read::Gone { after } => {
                    // Too slow: what it needed is gone. A reset, then the
                    // end; it reconnects and resumes after the reset.
                    count_reset(&self.st, "client_too_slow");
                    self.after = after;
                    self.done = true;
                    let r = Item::agent_reset(self.st.feed.epoch(), after, "client_too_slow");
                    return Some(sse_event(self.st.feed.epoch(), &r, &r.json));
                }
            }
        }
    }

    /// The final event of a stream.
    fn bye(&mut self, why: &str) -> Option<Event> {
        self.done = true;
        let data = serde_json::json!({ "reason": why, "resume_from": cursor(self.st.feed.epoch(), self.after) });
        Some(Event::default().event("shutdown").data(data.to_string()))
    }

    /// The item's JSON as this client should see it, or None to skip it.
    fn filtered(&self, item: &Item) -> Option<String> {
        let Some(f) = &self.filter else {
            return Some(item.json.to_string());
        };
        let matches = |s: &str| f.iter().any(|p| s.starts_with(p.as_str()));
        match &item.action {
            Action::Clear | Action::Reset { .. } => Some(item.json.to_string()),
            Action::Prefix(p) => f
                .iter()
                .any(|x| p.starts_with(x.as_str()) || x.starts_with(p.as_str()))
                .then(|| item.json.to_string()),
            Action::Custom { topic, .. } => matches(topic).then(|| item.json.to_string()),
            Action::Invalidate(keys) => {
                let kept: Vec<&String> = keys.iter().filter(|k| matches(k)).collect();
                if kept.is_empty() {
                    None
                } else if kept.len() == keys.len() {
                    Some(item.json.to_string())
                } else {
                    let mut v: Value = serde_json::from_str(&item.json).ok()?;
                    v["keys"] = serde_json::json!(kept);
                    Some(v.to_string())
                }
            }
        }
    }
}

fn sse_event(epoch: u64, item: &Item, json: &str) -> Event {
    Event::default()
        .event(item.action.kind())
        .id(cursor(epoch, item.id))
        .data(json)
}
