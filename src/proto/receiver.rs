//! The receiving state of one remote stream.
//!
//! Delivers every event the moment it arrives (invalidations are idempotent
//! and commute, so order never delays one), drops duplicates, and tracks
//! what is missing as gaps: from a seq above the known end, or from a
//! heartbeat or `Goodbye` announcing a `next_seq` above it (tail loss).
//!
//! A gap's life: `open` (waits the reorder window plus a random back-off)
//! → `Nak` (multicast; another receiver's `Nak` or a `Repair` overheard for
//! it postpones ours: suppression) → filled by a `Repair`, or, when repair
//! is impossible — `Unavailable`, the sender's heartbeat says it is older
//! than what it holds, retries exhausted, too old — one `Reset` naming it.
//!
//! Pure state machine: no clock, no I/O; the node passes `now` and a seeded
//! RNG in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::Rng;

use crate::proto::config::CoreConfig;
use crate::proto::delivery::{Delivery, Output, ResetReason};
use crate::proto::ranges::{Gap, GapSet, RangeSet};
use crate::proto::stats::Stats;
use crate::wire::{self, Body, Events, SeqRange};

/// Where a receiver's outputs go, and what it needs from its node.
pub struct Sink<'a> {
    /// Protocol settings.
    pub cfg: &'a CoreConfig,
    /// Deliveries for the application.
    pub deliveries: &'a mut VecDeque<Output>,
    /// Datagrams to send (`Nak`s).
    pub out: &'a mut VecDeque<Body>,
    /// Counters.
    pub stats: &'a mut Stats,
    /// The node's seeded RNG (back-off).
    pub rng: &'a mut SmallRng,
}

impl Sink<'_> {
    /// Delivers a `Reset`, logged at `warn`: it is what an operator needs
    /// to see (the application clears its whole cache).
    pub fn reset(&mut self, reason: ResetReason) {
        log_reset(&reason);
        self.stats.reset(reason.kind());
        self.deliveries
            .push_back(Output::One(Delivery::Reset { reason }));
    }

    fn backoff(&mut self) -> Duration {
        let max = self.cfg.nak_backoff.as_micros() as u64;
        Duration::from_micros(if max == 0 {
            0
        } else {
            self.rng.gen_range(0..=max)
        })
    }

    /// When a gap opened at `opened` that just got a `Nak` (sent or
    /// overheard) should be looked at again: the retry interval doubling per
    /// try (up to 16 times), plus back-off; never past its maximum age.
    fn retry_due(&mut self, now: Instant, opened: Instant, tries: u32) -> Instant {
        let exp = tries.saturating_sub(1).min(4);
        let due = now + self.cfg.nak_retry * (1u32 << exp) + self.backoff();
        due.min(opened + self.cfg.max_gap_age).max(now)
    }
}

/// How a batch of events reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Fresh `Data`.
    Data,
    /// A `Repair` (ours or another receiver's).
    Repair,
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
    /// Ranges given up with a `Reset`; at most 256 (the lowest forgotten
    /// first).
    given_up: RangeSet,
    /// False while only datagrams that do not tell the stream's position
    /// (`Nak`, `Repair`, `Unavailable`) were heard from it.
    placed: bool,
    /// One past the highest seq given up with a `Reset` (0: none).
    reset_end: u64,
    /// When the stream's position was last learned (data, a heartbeat, a
    /// `Goodbye`, an `AckRequest`, a member's report).
    position_at: Instant,
    /// When this node last had proof that it held everything the stream
    /// had sent (no gap, at a position learned then).
    proven_at: Instant,
}

impl StreamReceiver {
    /// Starts following `stream` at seq `start`: nothing below it is
    /// expected. `None`: the position is not known yet; until
    /// [`StreamReceiver::place`] says otherwise, it is followed from seq 1.
    pub fn new(stream: u64, start: Option<u64>, now: Instant) -> Self {
        let base = start.unwrap_or(1);
        StreamReceiver {
            stream,
            node: None,
            base,
            known_end: base,
            gaps: GapSet::new(),
            last_heard: now,
            ending: None,
            given_up: RangeSet::new(256),
            placed: start.is_some(),
            reset_end: 0,
            position_at: now,
            proven_at: now,
        }
    }

    /// Gives up `start..end` (a `Reset` covers it).
    fn give_up(&mut self, start: u64, end: u64) {
        self.given_up.insert(start, end);
        self.reset_end = self.reset_end.max(end);
    }

    /// One past the highest seq given up with a `Reset` (0: none).
    pub fn reset_end(&self) -> u64 {
        self.reset_end.min(self.next_expected())
    }

    /// Records that the stream's position was learned at `now`, and the
    /// proof of completeness if nothing is missing.
    pub fn learned_position(&mut self, now: Instant) {
        self.position_at = now;
        self.update_proof();
    }

    /// With no gap open, everything up to the last position learned is
    /// held: that is proof as of when it was learned.
    pub fn update_proof(&mut self) {
        if self.gaps.is_empty() {
            self.proven_at = self.position_at;
        }
    }

    /// The longest this node may have been missing an event of the stream
    /// without knowing it: the time since its last proof of completeness.
    pub fn staleness(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.proven_at)
    }

    /// True once the stream's position is known.
    pub fn is_placed(&self) -> bool {
        self.placed
    }

    /// The stream's position `pos` is now known. During the joiner's sync
    /// window, a stream not placed yet starts there (nothing before the join
    /// matters); afterwards it stays followed from seq 1.
    pub fn place(&mut self, pos: u64, in_sync: bool) {
        if self.placed {
            return;
        }
        self.placed = true;
        if in_sync && self.gaps.is_empty() && self.known_end == self.base {
            self.base = pos;
            self.known_end = pos;
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

    /// Events `first_seq..` arrived.
    pub fn on_events(
        &mut self,
        now: Instant,
        first_seq: u64,
        events: Events,
        how: Arrival,
        sink: &mut Sink<'_>,
    ) {
        if how == Arrival::Repair {
            sink.stats.repairs_received += 1;
            let end = first_seq + events.len() as u64;
            // Someone is repairing this stretch: what is still missing right
            // after it is likely on its way too (suppression).
            self.postpone(now, first_seq, end, sink);
        }
        if how == Arrival::Data && first_seq >= self.known_end && first_seq >= self.base {
            // The common case: new events past everything known. The run
            // is delivered whole (after opening a gap for what it skipped).
            if first_seq > self.known_end {
                self.open_gap(now, self.known_end, first_seq, sink);
            }
            let n = events.len() as u64;
            self.known_end = first_seq + n;
            self.learned_position(now);
            sink.stats.events_delivered += n;
            sink.deliveries.push_back(Output::Run {
                stream: self.stream,
                first_seq,
                node: self.node.clone(),
                events,
            });
            return;
        }
        for (seq, event) in (first_seq..).zip(events.iter()) {
            if seq < self.base {
                sink.stats.before_start += 1;
                continue;
            }
            if seq >= self.known_end {
                // (A repair asked for by a receiver that knew more than we
                // did also tells us the stream's position.)
                if seq > self.known_end {
                    self.open_gap(now, self.known_end, seq, sink);
                }
                self.known_end = seq + 1;
            } else if self.given_up.take(seq) {
                // Given up (a Reset covered it) but here after all: deliver
                // it anyway, which is harmless, rather than drop it as a
                // duplicate, which would be wrong if the range was bogus
                // (e.g. a far-future seq that made a huge gap).
                sink.stats.late_after_reset += 1;
            } else if let Some(gap) = self.gaps.fill(seq) {
                match how {
                    Arrival::Repair => {
                        sink.stats.events_repaired += 1;
                        sink.stats.repair_time.record(now - gap.opened);
                    }
                    Arrival::Data => sink.stats.reordered += 1,
                }
            } else {
                sink.stats.duplicates += 1;
                continue;
            }
            sink.stats.events_delivered += 1;
            sink.deliveries.push_back(Output::One(Delivery::Event {
                stream: self.stream,
                seq,
                node: self.node.clone(),
                event,
            }));
        }
        if how == Arrival::Data {
            self.position_at = now;
        }
        self.update_proof();
    }

    /// The stream announced that everything below `next_seq` was sent
    /// (heartbeat or `Goodbye`) and, for a heartbeat, that it still holds
    /// everything from `oldest` on.
    pub fn on_position(
        &mut self,
        now: Instant,
        next_seq: u64,
        oldest: Option<u64>,
        sink: &mut Sink<'_>,
    ) {
        if next_seq > self.known_end {
            self.open_gap(now, self.known_end, next_seq, sink);
            self.known_end = next_seq;
        }
        if let Some(oldest) = oldest {
            if self.gaps.first().is_some_and(|(s, _)| s < oldest) {
                self.unavailable(&[(1, oldest)], sink);
            }
        }
        self.update_proof();
    }

    /// The stream said `Goodbye` at `next_seq`.
    pub fn on_goodbye(&mut self, now: Instant, next_seq: u64, sink: &mut Sink<'_>) {
        self.on_position(now, next_seq, None, sink);
        self.ending = Some(next_seq);
    }

    /// The stream's sender no longer holds `ranges`: give up those gaps.
    pub fn unavailable(&mut self, ranges: &[SeqRange], sink: &mut Sink<'_>) {
        let mut lost: Option<SeqRange> = None;
        for &(start, end) in ranges {
            for (s, e) in self.gaps.remove_range(start, end) {
                self.give_up(s, e);
                lost = Some(lost.map_or((s, e), |(a, b)| (a.min(s), b.max(e))));
            }
        }
        if let Some(missing) = lost {
            sink.reset(ResetReason::Unavailable {
                stream: self.stream,
                missing,
            });
        }
        self.update_proof();
    }

    /// Another receiver asked for `start..end` of this stream: our own
    /// `Nak` for it would be redundant, so wait for the repair instead.
    pub fn on_overheard_nak(&mut self, now: Instant, ranges: &[SeqRange], sink: &mut Sink<'_>) {
        for &(start, end) in ranges {
            self.postpone(now, start, end, sink);
        }
    }

    fn postpone(&mut self, now: Instant, start: u64, end: u64, sink: &mut Sink<'_>) {
        let hit: Vec<u64> = self.gaps.overlapping(start, end).map(|(s, _)| s).collect();
        for s in hit {
            let Some(g) = self.gaps.get_mut(s) else {
                continue;
            };
            let (tries, opened) = (g.tries, g.opened);
            let due = sink.retry_due(now, opened, tries.max(1));
            if let Some(g) = self.gaps.get_mut(s) {
                if g.due < due {
                    g.due = due;
                    sink.stats.naks_suppressed += 1;
                }
            }
        }
    }

    /// True once the stream said `Goodbye` and nothing below its end is missing.
    pub fn is_finished(&self) -> bool {
        self.ending.is_some() && self.gaps.is_empty()
    }

    fn open_gap(&mut self, now: Instant, start: u64, end: u64, sink: &mut Sink<'_>) {
        sink.stats.gaps_opened += 1;
        tracing::trace!(
            stream = format_args!("{:016x}", self.stream),
            start,
            end,
            "gap"
        );
        let due = now + sink.cfg.reorder_window + sink.backoff();
        self.gaps.insert(
            start,
            Gap {
                end,
                opened: now,
                due,
                tries: 0,
            },
        );
        // Bounded memory: past `max_gaps` the oldest gaps are given up.
        while self.gaps.len() > sink.cfg.max_gaps {
            if let Some((s, g)) = self.gaps.first() {
                self.gaps.remove(s);
                self.give_up(s, g.end);
                sink.reset(ResetReason::TooManyGaps {
                    stream: self.stream,
                    missing: (s, g.end),
                });
            }
        }
    }

    /// Drops every gap without a `Reset`: the caller delivered one that
    /// covers them (everything missing was sent before it).
    pub fn cover_gaps(&mut self, sink: &mut Sink<'_>) {
        sink.stats.gaps_covered_by_reset += self.gaps.len() as u64;
        let gaps: Vec<(u64, u64)> = self.gaps.iter().map(|(s, g)| (s, g.end)).collect();
        for (s, e) in gaps {
            self.give_up(s, e);
        }
        self.gaps = GapSet::new();
        self.update_proof();
    }

    /// When [`StreamReceiver::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.gaps.next_due()
    }

    /// Acts on due gaps: a `Nak` for those that may still be repaired, one
    /// `Reset` for those that cannot.
    pub fn handle_timeout(&mut self, now: Instant, sink: &mut Sink<'_>) {
        let due: Vec<(u64, Gap)> = self.gaps.iter().filter(|(_, g)| g.due <= now).collect();
        if due.is_empty() {
            return;
        }
        let cfg = sink.cfg;
        let mut too_old: Option<SeqRange> = None;
        let mut exhausted: Option<(SeqRange, u32)> = None;
        let mut ask = Vec::new();
        for (s, g) in due {
            if now.saturating_duration_since(g.opened) >= cfg.max_gap_age {
                self.gaps.remove(s);
                self.give_up(s, g.end);
                too_old = Some(too_old.map_or((s, g.end), |(a, _)| (a, g.end)));
            } else if g.tries >= cfg.max_nak_tries {
                self.gaps.remove(s);
                self.give_up(s, g.end);
                exhausted = Some(exhausted.map_or(((s, g.end), g.tries), |((a, _), t)| {
                    ((a, g.end), t.max(g.tries))
                }));
            } else {
                ask.push((s, g.end));
                let due = sink.retry_due(now, g.opened, g.tries + 1);
                if let Some(g) = self.gaps.get_mut(s) {
                    g.tries += 1;
                    g.due = due;
                }
            }
        }
        for ranges in ask.chunks(wire::MAX_RANGES) {
            sink.stats.naks_sent += 1;
            sink.out.push_back(Body::Nak {
                stream: self.stream,
                ranges: ranges.to_vec(),
            });
        }
        if let Some(missing) = too_old {
            sink.reset(ResetReason::TooOld {
                stream: self.stream,
                missing,
            });
        }
        if let Some((missing, tries)) = exhausted {
            sink.reset(ResetReason::RetriesExhausted {
                stream: self.stream,
                missing,
                tries,
            });
        }
        self.update_proof();
    }

    /// The stream is evicted (table full): a `Reset` if anything is still
    /// missing (returns true then). If the stream is met again, it is met
    /// later, with its history a gap from seq 1; if it is not, the node
    /// Resets at its timeout (it may have died with its last events lost).
    pub fn evict(&mut self, sink: &mut Sink<'_>) -> bool {
        match self.gaps.hull() {
            Some(missing) => {
                self.gaps = GapSet::new();
                sink.reset(ResetReason::StreamEvicted {
                    stream: self.stream,
                    missing,
                });
                true
            }
            None => false,
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

/// Logs a `Reset` at `warn` with what was lost; the stream id in 16 hex
/// digits, as everywhere.
fn log_reset(reason: &ResetReason) {
    let kind = reason.kind();
    match *reason {
        ResetReason::Unavailable { stream, missing }
        | ResetReason::RetriesExhausted {
            stream, missing, ..
        }
        | ResetReason::TooOld { stream, missing }
        | ResetReason::TooManyGaps { stream, missing }
        | ResetReason::StreamEvicted { stream, missing } => tracing::warn!(
            kind,
            stream = format_args!("{stream:016x}"),
            missing_from = missing.0,
            missing_to = missing.1,
            "Reset: events may be lost (missing_from..missing_to); clear the cache"
        ),
        ResetReason::StreamTimedOut {
            stream,
            next_expected,
        } => tracing::warn!(
            kind,
            stream = format_args!("{stream:016x}"),
            next_expected,
            "Reset: the stream went silent without Goodbye; events from next_expected on may be lost"
        ),
        ResetReason::Lagged { missed } => tracing::warn!(kind, missed, "Reset: a subscriber fell behind"),
        ResetReason::Isolated { silent_ms } => tracing::warn!(
            kind,
            silent_ms,
            "Reset: this node heard no member for longer than the lease; events of that time may be lost"
        ),
    }
}
