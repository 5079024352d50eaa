//! The receiving state of one remote stream.
//!
//! Delivers every event the moment it arrives (invalidations are idempotent
//! and commute, so order never delays one), drops duplicates, and tracks
//! what is missing as gaps: from a seq above the known end, or from a
//! heartbeat or `Goodbye` announcing a `next_seq` above it (tail loss).
//! A gap goes `open → (repair) → filled | Reset`; a gap still open when it
//! falls due delivers one `Reset` naming the missing range, and the
//! receiver moves past it.
//!
//! Pure state machine: no clock, no I/O; the node passes `now` in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::proto::config::CoreConfig;
use crate::proto::delivery::{Delivery, ResetReason};
use crate::proto::ranges::{Gap, GapSet};
use crate::proto::stats::Stats;
use crate::wire::{Event, SeqRange};

/// Where a receiver's outputs go.
pub struct Sink<'a> {
    /// Protocol settings.
    pub cfg: &'a CoreConfig,
    /// Deliveries for the application.
    pub deliveries: &'a mut VecDeque<Delivery>,
    /// Counters.
    pub stats: &'a mut Stats,
}

impl Sink<'_> {
    fn reset(&mut self, reason: ResetReason) {
        tracing::debug!(kind = reason.kind(), ?reason, "reset");
        self.stats.reset(reason.kind());
        self.deliveries.push_back(Delivery::Reset { reason });
    }
}

/// Receiving state of one remote stream.
#[derive(Debug)]
pub struct StreamReceiver {
    stream: u64,
    node: Option<Arc<str>>,
    /// Seqs below this were before our starting point and are ignored.
    base: u64,
    /// One past the highest seq known to exist.
    known_end: u64,
    gaps: GapSet,
    last_heard: Instant,
    /// `next_seq` of the stream's `Goodbye`, once heard.
    ending: Option<u64>,
}

impl StreamReceiver {
    /// Starts following `stream` at seq `start`: nothing below it is expected.
    pub fn new(stream: u64, start: u64, now: Instant) -> Self {
        StreamReceiver {
            stream,
            node: None,
            base: start,
            known_end: start,
            gaps: GapSet::new(),
            last_heard: now,
            ending: None,
        }
    }

    /// The stream id.
    pub fn stream(&self) -> u64 {
        self.stream
    }

    /// When anything was last heard from the stream.
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// Lowest seq not yet delivered or reset.
    pub fn next_expected(&self) -> u64 {
        self.gaps.first().map_or(self.known_end, |(s, _)| s)
    }

    /// One past the highest seq known to exist.
    pub fn known_end(&self) -> u64 {
        self.known_end
    }

    /// The open gaps.
    pub fn gaps(&self) -> &GapSet {
        &self.gaps
    }

    /// The node name, once announced.
    pub fn node(&self) -> Option<&Arc<str>> {
        self.node.as_ref()
    }

    /// Records that the stream was heard from.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// Records the node name announced by a heartbeat or `Hello`.
    pub fn set_node(&mut self, name: &str) {
        if !name.is_empty() && self.node.as_deref() != Some(name) {
            self.node = Some(Arc::from(name));
        }
    }

    /// Events `first_seq..` arrived (data or repair).
    pub fn on_events(
        &mut self,
        now: Instant,
        first_seq: u64,
        events: Vec<Event>,
        sink: &mut Sink<'_>,
    ) {
        for (seq, event) in (first_seq..).zip(events) {
            if seq < self.base {
                sink.stats.before_start += 1;
                continue;
            }
            if seq >= self.known_end {
                if seq > self.known_end {
                    self.open_gap(now, self.known_end, seq, sink);
                }
                self.known_end = seq + 1;
            } else if self.gaps.fill(seq) {
                sink.stats.reordered += 1;
            } else {
                sink.stats.duplicates += 1;
                continue;
            }
            sink.stats.events_delivered += 1;
            sink.deliveries.push_back(Delivery::Event {
                stream: self.stream,
                seq,
                node: self.node.clone(),
                event,
            });
        }
    }

    /// The stream announced that everything below `next_seq` was sent
    /// (heartbeat or `Goodbye`): what we have not seen of it is a gap.
    pub fn on_position(&mut self, now: Instant, next_seq: u64, sink: &mut Sink<'_>) {
        if next_seq > self.known_end {
            self.open_gap(now, self.known_end, next_seq, sink);
            self.known_end = next_seq;
        }
    }

    /// The stream said `Goodbye` at `next_seq`.
    pub fn on_goodbye(&mut self, now: Instant, next_seq: u64, sink: &mut Sink<'_>) {
        self.on_position(now, next_seq, sink);
        self.ending = Some(next_seq);
    }

    /// True once the stream said `Goodbye` and nothing below its end is missing.
    pub fn is_finished(&self) -> bool {
        self.ending.is_some() && self.gaps.is_empty()
    }

    fn open_gap(&mut self, now: Instant, start: u64, end: u64, sink: &mut Sink<'_>) {
        sink.stats.gaps_opened += 1;
        tracing::trace!(stream = self.stream, start, end, "gap");
        self.gaps.insert(
            start,
            Gap {
                end,
                opened: now,
                due: now + sink.cfg.reorder_window,
                tries: 0,
            },
        );
        // Bounded memory: past `max_gaps` the oldest gaps are given up.
        while self.gaps.len() > sink.cfg.max_gaps {
            if let Some((s, g)) = self.gaps.first() {
                self.gaps.remove(s);
                sink.reset(ResetReason::Gap {
                    stream: self.stream,
                    missing: (s, g.end),
                });
            }
        }
    }

    /// When [`StreamReceiver::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.gaps.next_due()
    }

    /// Acts on due gaps: gives them up with one `Reset` covering them.
    pub fn handle_timeout(&mut self, now: Instant, sink: &mut Sink<'_>) {
        let due: Vec<(u64, Gap)> = self.gaps.iter().filter(|(_, g)| g.due <= now).collect();
        if due.is_empty() {
            return;
        }
        for (s, _) in &due {
            self.gaps.remove(*s);
        }
        let missing: SeqRange = (due[0].0, due[due.len() - 1].1.end);
        sink.reset(ResetReason::Gap {
            stream: self.stream,
            missing,
        });
    }

    /// The stream is evicted (table full): a `Reset` if anything is still
    /// missing. Nothing after it can be lost silently: if the stream is met
    /// again, it is met later, with its history a gap from seq 1.
    pub fn evict(&mut self, sink: &mut Sink<'_>) {
        if let Some(missing) = self.gaps.hull() {
            self.gaps = GapSet::new();
            sink.reset(ResetReason::StreamEvicted {
                stream: self.stream,
                missing,
            });
        }
    }

    /// The stream went silent without `Goodbye`: always a `Reset`, since
    /// its last events may have been lost with no heartbeat left to tell.
    pub fn time_out(&mut self, sink: &mut Sink<'_>) {
        let next_expected = self.next_expected();
        self.gaps = GapSet::new();
        sink.reset(ResetReason::StreamTimedOut {
            stream: self.stream,
            next_expected,
        });
    }
}
