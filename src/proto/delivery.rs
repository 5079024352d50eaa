//! What the protocol hands to the application: events, and `Reset`s when
//! something may have been missed.

use std::sync::Arc;

use serde::Serialize;

use crate::wire::{EncodedEvent, EventRef, Events, SeqRange};

/// One thing a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// An event of a node's stream: another node's, or this node's own
    /// (with `deliver_own`, the default).
    Event {
        /// The publishing node's stream id.
        stream: u64,
        /// The event's sequence number in that stream.
        seq: u64,
        /// The publishing node's name, once a heartbeat has told it.
        node: Option<Arc<str>>,
        /// The invalidation itself, still encoded and sharing the bytes it
        /// arrived in: read it in place with [`EncodedEvent::view`] (no
        /// allocation) or own it with [`EncodedEvent::to_event`].
        event: EncodedEvent,
    },
    /// Something may have been missed: clear the whole cache.
    Reset {
        /// Why.
        reason: ResetReason,
    },
}

/// A [`Delivery`] read in place (`Subscription::recv_each`): borrowed from
/// the node's queue, so nothing is allocated, copied or reference-counted
/// for it. Copy out what is needed beyond the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryRef<'a> {
    /// An event of a node's stream (see [`Delivery::Event`]).
    Event {
        /// The publishing node's stream id.
        stream: u64,
        /// The event's sequence number in that stream.
        seq: u64,
        /// The publishing node's name, once a heartbeat has told it.
        node: Option<&'a str>,
        /// The invalidation, read in place.
        event: EventRef<'a>,
    },
    /// Something may have been missed: clear the whole cache.
    Reset {
        /// Why.
        reason: &'a ResetReason,
    },
}

impl Delivery {
    /// This delivery, borrowed.
    pub fn view(&self) -> DeliveryRef<'_> {
        match self {
            Delivery::Event {
                stream,
                seq,
                node,
                event,
            } => DeliveryRef::Event {
                stream: *stream,
                seq: *seq,
                node: node.as_deref(),
                event: event.view(),
            },
            Delivery::Reset { reason } => DeliveryRef::Reset { reason },
        }
    }
}

/// Deliveries as the core hands them to its driver: one, or a whole run of
/// consecutive events of one stream (what one datagram brought, sharing its
/// bytes), which becomes [`Delivery::Event`]s one at a time as it is read.
/// A run costs one value where its events would cost one each.
#[derive(Debug, Clone)]
pub enum Output {
    /// One delivery.
    One(Delivery),
    /// Events `first_seq`, `first_seq + 1`, … of `stream`.
    Run {
        stream: u64,
        first_seq: u64,
        node: Option<Arc<str>>,
        events: Events,
    },
}

impl Output {
    /// The deliveries it holds.
    pub fn len(&self) -> usize {
        match self {
            Output::One(_) => 1,
            Output::Run { events, .. } => events.len(),
        }
    }

    /// True when it holds none (a run read to its end).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes its next delivery.
    pub fn pop(&mut self) -> Option<Delivery> {
        match self {
            Output::One(_) => {
                let Output::One(d) = std::mem::replace(self, Output::empty()) else {
                    return None;
                };
                Some(d)
            }
            Output::Run {
                stream,
                first_seq,
                node,
                events,
            } => {
                let event = events.pop_front()?;
                let seq = *first_seq;
                *first_seq += 1;
                Some(Delivery::Event {
                    stream: *stream,
                    seq,
                    node: node.clone(),
                    event,
                })
            }
        }
    }

    /// Hands every delivery in it to `f`, borrowed, in order; returns how
    /// many.
    pub fn each(&self, f: &mut impl FnMut(DeliveryRef<'_>)) -> usize {
        match self {
            Output::One(d) => {
                f(d.view());
                1
            }
            Output::Run {
                stream,
                first_seq,
                node,
                events,
            } => {
                let node = node.as_deref();
                let mut n = 0;
                for (seq, event) in (*first_seq..).zip(events.views()) {
                    f(DeliveryRef::Event {
                        stream: *stream,
                        seq,
                        node,
                        event,
                    });
                    n += 1;
                }
                n
            }
        }
    }

    /// Drops its first `n` deliveries.
    pub fn skip(&mut self, n: usize) {
        match self {
            Output::One(_) if n > 0 => *self = Output::empty(),
            Output::One(_) => {}
            Output::Run {
                first_seq, events, ..
            } => {
                let n = n.min(events.len());
                events.skip(n);
                *first_seq += n as u64;
            }
        }
    }

    fn empty() -> Output {
        Output::Run {
            stream: 0,
            first_seq: 0,
            node: None,
            events: Events::default(),
        }
    }
}

/// Why a `Reset` was delivered. Every variant names what was lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ResetReason {
    /// The sender of `stream` no longer holds `missing` (half-open seq
    /// range): it answered `Unavailable`, or its heartbeat said so.
    Unavailable { stream: u64, missing: SeqRange },
    /// `tries` `Nak`s for `missing` went unanswered (0: repair is disabled).
    RetriesExhausted {
        stream: u64,
        missing: SeqRange,
        tries: u32,
    },
    /// `missing` stayed open longer than `max_gap_age`.
    TooOld { stream: u64, missing: SeqRange },
    /// The stream had more than `max_gaps` gaps; the oldest, `missing`, was
    /// given up.
    TooManyGaps { stream: u64, missing: SeqRange },
    /// The stream went silent past its timeout without `Goodbye` (a crash,
    /// or a partition): anything from `next_expected` on may have been lost,
    /// since a sender that dies right after sending can leave no trace.
    StreamTimedOut { stream: u64, next_expected: u64 },
    /// The stream was evicted (table full, `max_streams`) with `missing`
    /// open (or, when `missing` is empty, it could no longer be tracked at
    /// all: from `missing.0` on anything may be lost).
    StreamEvicted { stream: u64, missing: SeqRange },
    /// The subscriber fell behind and `missed` deliveries were dropped.
    Lagged { missed: u64 },
    /// This node heard no member for longer than the lease (after some
    /// died) and now hears the cluster again: it was cut off for about
    /// `silent_ms`, and streams that began and ended meanwhile may have
    /// gone unheard.
    Isolated { silent_ms: u64 },
}

impl ResetReason {
    /// A short, stable name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ResetReason::Unavailable { .. } => "unavailable",
            ResetReason::RetriesExhausted { .. } => "retries_exhausted",
            ResetReason::TooOld { .. } => "too_old",
            ResetReason::TooManyGaps { .. } => "too_many_gaps",
            ResetReason::StreamTimedOut { .. } => "stream_timed_out",
            ResetReason::StreamEvicted { .. } => "stream_evicted",
            ResetReason::Lagged { .. } => "lagged",
            ResetReason::Isolated { .. } => "isolated",
        }
    }
}
