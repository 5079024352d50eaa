//! What the protocol hands to the application: events, and `Reset`s when
//! something may have been missed.

use std::sync::Arc;

use serde::Serialize;

use crate::wire::{EncodedEvent, SeqRange};

/// One thing a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// An event of another node's stream.
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
        }
    }
}
