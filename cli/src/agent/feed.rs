//! The agent's feed: every delivery of its node, numbered and kept in a
//! bounded buffer, read by every consumer (SSE clients, webhooks,
//! appliers) at its own pace through a cursor.
//!
//! One mechanism for resume and for slowness: a consumer asks for what
//! follows its cursor; when that has already left the buffer, it learns so
//! ([`Read::Gone`]) and must deliver a `reset` before going on from the
//! oldest item still held. Nothing is ever skipped silently.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use base64::Engine;
use cachecast::wire::EventRef;
use cachecast::DeliveryRef;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::bounded::push_bounded;

/// What a delivery asks of a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Remove these keys.
    Invalidate(Vec<String>),
    /// Remove every key starting with this.
    Prefix(String),
    /// Remove everything (a published `ClearAll`).
    Clear,
    /// An application's own event: caches ignore it.
    Custom { topic: String, payload: Vec<u8> },
    /// Something may have been missed: remove everything.
    Reset { reason: String },
}

impl Action {
    /// The SSE event name and the JSON `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Invalidate(_) => "invalidate",
            Action::Prefix(_) => "prefix",
            Action::Clear => "clear",
            Action::Custom { .. } => "custom",
            Action::Reset { .. } => "reset",
        }
    }
}

/// Where an event came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub stream: u64,
    pub seq: u64,
    pub node: Option<String>,
}

/// One delivery as the agent hands it on.
#[derive(Debug)]
pub struct Item {
    /// Position in this agent's feed, from 1 (0 for a consumer's own
    /// `reset`, which takes the position it resumes after).
    pub id: u64,
    pub action: Action,
    /// The JSON object for SSE and webhooks (with the cursor as `id`);
    /// boxed to its length (65,536 items are held).
    pub json: Box<str>,
    /// When the item was built, i.e. reached the agent (apply latency is
    /// measured from here).
    pub at: std::time::Instant,
}

impl Item {
    fn new(
        epoch: u64,
        id: u64,
        action: Action,
        origin: Option<Origin>,
        detail: Option<Value>,
    ) -> Item {
        let mut o = Map::new();
        o.insert("id".into(), Value::String(cursor(epoch, id)));
        o.insert("type".into(), Value::String(action.kind().into()));
        match &action {
            Action::Invalidate(keys) => {
                o.insert("keys".into(), json!(keys));
            }
            Action::Prefix(p) => {
                o.insert("prefix".into(), json!(p));
            }
            Action::Clear => {}
            Action::Custom { topic, payload } => {
                o.insert("topic".into(), json!(topic));
                let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
                o.insert("payload".into(), json!(b64));
            }
            Action::Reset { reason } => {
                o.insert("reason".into(), json!(reason));
                if let Some(d) = detail {
                    o.insert("detail".into(), d);
                }
            }
        }
        if let Some(origin) = &origin {
            o.insert("stream".into(), json!(format!("{:016x}", origin.stream)));
            o.insert("seq".into(), json!(origin.seq));
            o.insert("node".into(), json!(origin.node));
        }
        let json = Value::Object(o).to_string().into_boxed_str();
        Item {
            id,
            action,
            json,
            at: std::time::Instant::now(),
        }
    }

    /// A delivery of the node, as an item at `id`.
    pub fn from_delivery(epoch: u64, id: u64, d: DeliveryRef<'_>) -> Item {
        match d {
            DeliveryRef::Event {
                stream,
                seq,
                node,
                event,
            } => {
                let action = match event {
                    EventRef::Invalidate { keys } => {
                        Action::Invalidate(keys.map(str::to_owned).collect())
                    }
                    EventRef::InvalidatePrefix { prefix } => Action::Prefix(prefix.to_owned()),
                    EventRef::ClearAll => Action::Clear,
                    EventRef::Custom { topic, payload } => Action::Custom {
                        topic: topic.to_owned(),
                        payload: payload.to_vec(),
                    },
                };
                let origin = Origin {
                    stream,
                    seq,
                    node: node.map(str::to_owned),
                };
                Item::new(epoch, id, action, Some(origin), None)
            }
            DeliveryRef::Reset { reason } => {
                let detail = serde_json::to_value(reason).ok();
                let action = Action::Reset {
                    reason: reason.kind().to_owned(),
                };
                Item::new(epoch, id, action, None, detail)
            }
        }
    }

    /// A `reset` of the agent's own (a consumer's cursor was lost, a
    /// webhook's batch given up), placed after item `after`: a consumer
    /// that resumes from its id continues with item `after + 1`.
    pub fn agent_reset(epoch: u64, after: u64, reason: &str) -> Item {
        Item::new(
            epoch,
            after,
            Action::Reset {
                reason: reason.to_owned(),
            },
            None,
            None,
        )
    }
}

/// The cursor text of item `id`: `<epoch as 16 hex digits>:<id>`.
pub fn cursor(epoch: u64, id: u64) -> String {
    format!("{epoch:016x}:{id}")
}

/// What a consumer's `Last-Event-ID` means to this feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Go on with the item after this id (all of it still held, or not
    /// yet there).
    After(u64),
    /// A `reset` first, with this reason, then go on after `after`.
    Reset { reason: &'static str, after: u64 },
}

/// What [`Feed::read`] found.
#[derive(Debug)]
pub enum Read {
    /// The next items (possibly none yet).
    Items(Vec<Arc<Item>>),
    /// What the cursor wanted has left the buffer: deliver a `reset`, then
    /// read on after `after` (the item before the oldest still held).
    Gone { after: u64 },
}

struct Inner {
    items: VecDeque<Arc<Item>>,
    /// Id of `items[0]` (or of the next item, when empty).
    first: u64,
}

/// The numbered, bounded buffer of deliveries.
pub struct Feed {
    epoch: u64,
    capacity: usize,
    inner: Mutex<Inner>,
    /// The id of the last item pushed; closed when the node has stopped.
    last: watch::Sender<u64>,
    closed: watch::Sender<bool>,
}

impl Feed {
    /// An empty feed of this agent run (`epoch`, new at every start)
    /// holding at most `capacity` items.
    pub fn new(epoch: u64, capacity: usize) -> Arc<Feed> {
        Arc::new(Feed {
            epoch,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                first: 1,
            }),
            last: watch::Sender::new(0),
            closed: watch::Sender::new(false),
        })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The id of the last item pushed (0 before the first).
    pub fn last(&self) -> u64 {
        *self.last.borrow()
    }

    /// Items held now, and the capacity.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends the items `make` builds, each given its id, in one step.
    pub fn push_with(&self, n: usize, mut make: impl FnMut(u64, usize) -> Item) {
        if n == 0 {
            return;
        }
        let last = {
            let mut g = self.lock();
            let mut id = g.first + g.items.len() as u64;
            for i in 0..n {
                let item = Arc::new(make(id, i));
                if push_bounded(&mut g.items, self.capacity, item) {
                    g.first += 1;
                }
                id += 1;
            }
            id - 1
        };
        self.last.send_replace(last);
    }

    /// Appends items built by the one writer (the agent's feed task),
    /// numbered from `last() + 1` on.
    pub fn extend(&self, items: Vec<Item>) {
        let mut items = items.into_iter();
        let n = items.len();
        self.push_with(n, |id, _| {
            let item = items.next().expect("n items");
            debug_assert_eq!(item.id, id, "items are numbered from last() + 1");
            item
        });
    }

    /// Appends one action (tests).
    #[cfg(test)]
    pub fn push(&self, action: Action, origin: Option<Origin>) -> u64 {
        let epoch = self.epoch;
        let mut action = Some(action);
        let mut origin = origin;
        self.push_with(1, |id, _| {
            Item::new(
                epoch,
                id,
                action.take().unwrap_or(Action::Clear),
                origin.take(),
                None,
            )
        });
        self.last()
    }

    /// Up to `max` items after `after`.
    pub fn read(&self, after: u64, max: usize) -> Read {
        let g = self.lock();
        if after + 1 < g.first {
            return Read::Gone { after: g.first - 1 };
        }
        let skip = (after + 1 - g.first) as usize;
        Read::Items(g.items.iter().skip(skip).take(max).cloned().collect())
    }

    /// Waits until an item after `after` exists; false once the feed is
    /// closed and there is none.
    pub async fn wait(&self, after: u64) -> bool {
        let mut last = self.last.subscribe();
        let mut closed = self.closed.subscribe();
        loop {
            if *last.borrow_and_update() > after {
                return true;
            }
            if *closed.borrow_and_update() {
                return false;
            }
            tokio::select! {
                r = last.changed() => if r.is_err() { return false },
                r = closed.changed() => if r.is_err() { return false },
            }
        }
    }

    /// No more items will come (the node stopped): waiters wake.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// What a client's `Last-Event-ID` means here.
    pub fn resume(&self, last_event_id: &str) -> Resume {
        let now = self.last();
        let parsed = last_event_id
            .split_once(':')
            .and_then(|(e, n)| Some((u64::from_str_radix(e, 16).ok()?, n.parse::<u64>().ok()?)));
        match parsed {
            None => Resume::Reset {
                reason: "unknown_cursor",
                after: now,
            },
            Some((e, _)) if e != self.epoch => Resume::Reset {
                reason: "agent_restarted",
                after: now,
            },
            Some((_, n)) if n > now => Resume::Reset {
                reason: "unknown_cursor",
                after: now,
            },
            Some((_, n)) => {
                let first = self.lock().first;
                if n + 1 < first {
                    Resume::Reset {
                        reason: "cursor_too_old",
                        after: first - 1,
                    }
                } else {
                    Resume::After(n)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(r: Read) -> Vec<u64> {
        match r {
            Read::Items(v) => v.iter().map(|i| i.id).collect(),
            Read::Gone { after } => vec![u64::MAX, after],
        }
    }

    /// A full buffer drops its oldest before it takes a new item: its
    /// array stays within the bound (it doubled past it before).
    #[test]
    fn a_full_buffer_keeps_its_array_within_the_bound() {
        let f = Feed::new(1, 1024);
        for i in 0..1100 {
            f.push(Action::Invalidate(vec![format!("k{i}")]), None);
        }
        f.extend(
            (1101..=1200)
                .map(|id| Item::new(1, id, Action::Clear, None, None))
                .collect(),
        );
        let g = f.lock();
        assert_eq!((g.items.len(), g.first), (1024, 177));
        assert!(g.items.capacity() < 2048, "{}", g.items.capacity());
    }

    #[test]
    fn reads_resume_and_report_what_left_the_buffer() {
        let f = Feed::new(0xab, 3);
        for i in 0..5 {
            f.push(Action::Invalidate(vec![format!("k{i}")]), None);
        }
        // Holds 3, 4, 5.
        assert_eq!(ids(f.read(2, 10)), [3, 4, 5]);
        assert_eq!(ids(f.read(3, 1)), [4]);
        assert_eq!(ids(f.read(5, 10)), Vec::<u64>::new());
        assert_eq!(ids(f.read(1, 10)), [u64::MAX, 2]);
        assert_eq!(f.resume("00000000000000ab:4"), Resume::After(4));
        assert_eq!(f.resume("00000000000000ab:2"), Resume::After(2));
        assert_eq!(
            f.resume("00000000000000ab:1"),
            Resume::Reset {
                reason: "cursor_too_old",
                after: 2
            }
        );
        assert_eq!(
            f.resume("00000000000000ac:4"),
            Resume::Reset {
                reason: "agent_restarted",
                after: 5
            }
        );
        for bad in ["", "x", "ab:", ":3", "00000000000000ab:9", "ab:-1"] {
            assert!(matches!(f.resume(bad), Resume::Reset { .. }), "{bad}");
        }
    }

    #[test]
    fn items_carry_their_cursor_and_kind() {
        let f = Feed::new(1, 8);
        f.push(
            Action::Custom {
                topic: "t".into(),
                payload: vec![0, 255],
            },
            Some(Origin {
                stream: 2,
                seq: 7,
                node: Some("a".into()),
            }),
        );
        let Read::Items(v) = f.read(0, 1) else {
            panic!()
        };
        let j: Value = serde_json::from_str(&v[0].json).unwrap();
        assert_eq!(j["id"], "0000000000000001:1");
        assert_eq!(j["type"], "custom");
        assert_eq!(j["payload"], "AP8=");
        assert_eq!(j["stream"], "0000000000000002");
        assert_eq!(j["seq"], 7);
    }
}
