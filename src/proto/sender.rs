//! The sending half of a node: one stream of sequenced events.
//!
//! Numbers events from 1, packs consecutive events into datagrams up to
//! `max_datagram` (opportunistic batching: whatever was published before
//! the driver next polls goes into one datagram), and schedules heartbeats
//! (quickly after data, then backing off to the idle interval) so that the
//! loss of the last datagram is noticed in milliseconds. Answers `Hello`
//! with a jittered, rate-limited heartbeat, and ends with `Goodbye`.
//!
//! Repair: keeps what it sent in a [`RetransmitRing`]; answers `Nak` with
//! `Repair`s (packed, paced by a token bucket at `repair_rate`) and with
//! `Unavailable` for what has left the ring. A repair goes to everyone (not
//! repeated within `repair_linger`), or, directed (a unicast transport, or
//! a group whose nodes have direct sockets), to the one node that asked
//! (see `direct_to`). It keeps answering after `Goodbye`, while it
//! lingers.
//!
//! Pure state machine: time is passed in, randomness comes from the
//! caller's seeded RNG, bodies go to the caller's outgoing queue.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::proto::config::CoreConfig;
use crate::proto::pace::Pace;
use crate::proto::ranges::RangeSet;
use crate::proto::ring::RetransmitRing;
use crate::proto::stats::Stats;
use crate::proto::timers::{Timer, TimerTable};
use bytes::BytesMut;

use crate::wire::{self, Body, EncodedEvent, Event, EventError, Events, RunBuf, SeqRange};

/// Bytes the open batch reserves at a time: sealed batches share one
/// allocation until it is used up.
const BATCH_BUFFER: usize = 64 * 1024;

/// Why an event was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The event breaks a limit or does not fit in one datagram.
    #[error(transparent)]
    Invalid(#[from] EventError),
    /// The node was shut down; nothing can be published any more.
    #[error("the node is shut down; join again to publish")]
    Closed,
    /// The node was configured receive-only (`receive_only`): it never
    /// publishes, which is what lets it die without costing anybody a Reset.
    #[error("this node is receive-only (receive_only is set): it cannot publish")]
    ReceiveOnly,
}

/// One stream's sender state.
#[derive(Debug)]
pub struct Sender {
    node: String,
    max_datagram: usize,
    heartbeat_min: Duration,
    heartbeat_idle: Duration,
    hello_jitter: Duration,
    hello_min_interval: Duration,

    next_seq: u64,
    /// Events published but not yet put in a datagram, encoded back to
    /// back; the first has seq `next_seq - batch.len()`.
    batch: RunBuf,

    heartbeat_interval: Duration,
    last_hello_answer: Option<Instant>,
    closed: bool,
    /// When the first `Goodbye` went out, and whether one went out again a
    /// reorder window later or more: a closing node lingers at least until
    /// then, so that a receiver that lost the first (or a loss burst
    /// around it) still hears one and retires the stream without a timeout
    /// `Reset`.
    goodbye_sent: Option<(Instant, bool)>,
    reorder_window: Duration,

    stream: u64,
    ring: RetransmitRing,
    /// Seq ranges asked for and not yet repaired: start → end.
    pending: RangeSet,
    repair_linger: Duration,
    repair_rate: u64,
    repair_burst: f64,
    tokens: f64,
    tokens_at: Instant,
    /// Where repairs are assembled (sealed repairs share it, like batches).
    scratch: BytesMut,
    /// Data pacing, driven by `Nak`s.
    pub pace: Pace,
    /// See [`CoreConfig::coalesce`].
    coalesce: Duration,
    /// When the last `Data` datagram went out, and the one before at an
    /// earlier instant (datagrams of one burst go out at one instant).
    last_data: Option<Instant>,
    data_before: Option<Instant>,
    /// Whether a repair may go to the one node that asked for it (a
    /// unicast transport, or a group with direct sockets): then who asked
    /// is kept.
    pub directed: bool,
    /// Who asked for what is pending, one entry per `Nak` range (`None`: an
    /// asker of unknown address). At most [`MAX_ASKED`]; past it, every
    /// pending repair goes to everyone.
    asked: Vec<(u64, u64, Option<SocketAddr>)>,
    /// With `directed`, where each `Repair` queued in the core's `out` goes
    /// (`None`: everyone), in the same order: `out` sends its `Repair`s in
    /// the order they were queued and never drops one.
    repair_to: VecDeque<Option<SocketAddr>>,
    /// With `directed`: `Nak`s reach every node (a group), so that a node
    /// that lost what another asked for heard that `Nak` and waited (see
    /// `directed_lately`). False with a unicast transport (each `Nak`
    /// reaches the origin only, so each asker asks for itself).
    pub overheard: bool,
    /// With `directed` and `overheard`, the repairs lately sent to one node: seqs, where,
    /// when. Another node asking for any of them within
    /// `directed_window` lost them too (it had heard the first asker's
    /// `Nak` and waited): they go to everyone then, so that a loss shared
    /// by many costs two repairs, not one per receiver; so do they when
    /// the same node asks a third time (the direct path may be failing).
    /// At most [`MAX_ASKED`], oldest forgotten first.
    directed_lately: VecDeque<(u64, u64, SocketAddr, Instant)>,
    directed_window: Duration,
    /// How often a node may ask again for a repair directed to it before
    /// it goes to the group (the direct path may be failing): 2, fewer
    /// when `max_nak_tries` leaves no room for it.
    asks_before_group: usize,
}

/// Bound of `Sender::asked`.
const MAX_ASKED: usize = 256;

/// Bound of `Sender::directed_lately`.
const MAX_DIRECTED: usize = 1024;

/// On a group, the most events one `Nak` may have directed to its asker; a
/// larger ask goes to the group (without keys a forged `Nak` could
/// otherwise aim a whole ring at one address).
const MAX_DIRECTED_EVENTS: u64 = 256;

impl Sender {
    /// A new stream at seq 1; its first heartbeat is an idle interval away.
    pub fn new(cfg: &CoreConfig, now: Instant) -> Self {
        Sender {
            node: cfg.node_name.clone(),
            max_datagram: cfg.body_limit(),
            heartbeat_min: cfg.heartbeat_min,
            heartbeat_idle: cfg.heartbeat_idle,
            hello_jitter: cfg.hello_answer_jitter,
            hello_min_interval: cfg.hello_answer_min_interval,
            next_seq: 1,
            batch: RunBuf::default(),
            heartbeat_interval: cfg.heartbeat_idle,
            last_hello_answer: None,
            closed: false,
            goodbye_sent: None,
            reorder_window: cfg.reorder_window,
            stream: cfg.stream,
            ring: RetransmitRing::new(cfg.retransmit_bytes, cfg.retransmit_age),
            pending: RangeSet::new(usize::MAX),
            repair_linger: cfg.repair_linger,
            repair_rate: cfg.repair_rate,
            repair_burst: (cfg.repair_rate as f64).min(1024.0 * 1024.0),
            tokens: (cfg.repair_rate as f64).min(1024.0 * 1024.0),
            tokens_at: now,
            scratch: BytesMut::new(),
            pace: Pace::new(cfg.pace_min_rate, now),
            coalesce: cfg.coalesce,
            last_data: None,
            data_before: None,
            directed: false,
            asked: Vec::new(),
            repair_to: VecDeque::new(),
            overheard: false,
            directed_lately: VecDeque::new(),
            // Every retry of a gap falls within its maximum age.
            directed_window: cfg.max_gap_age.max(cfg.nak_retry.saturating_mul(16)),
            // Room for the group's repair within the receiver's tries (with
            // one try only, never directed: a blocked path would cost a
            // Reset).
            asks_before_group: match cfg.max_nak_tries {
                0 | 1 => 0,
                2..=4 => 1,
                _ => 2,
            },
        }
    }

    /// The one node the next `Repair` sent is meant for, if it answers
    /// `Nak`s of that node only (call once per `Repair`, in order).
    pub fn take_repair_to(&mut self) -> Option<SocketAddr> {
        self.repair_to.pop_front().flatten()
    }

    /// The one node a repair of `start..end` goes to at `now`: the one
    /// node that asked for every seq of it, if one did and no other node
    /// got any of it directed lately.
    fn direct_to(&mut self, now: Instant, start: u64, end: u64) -> Option<SocketAddr> {
        let to = self.single_asker(start, end)?;
        if !self.overheard {
            return Some(to);
        }
        let window = self.directed_window;
        while self
            .directed_lately
            .front()
            .is_some_and(|&(.., at)| now.saturating_duration_since(at) >= window)
        {
            self.directed_lately.pop_front();
        }
        // Another node lost them too; or this one asks again, twice (the
        // direct path may be failing: a firewall, say).
        // (Counted per seq: a retry of two asks merged into one range is
        // one ask again, not two.)
        let mut mine = Vec::new();
        for &(s, e, a, _) in &self.directed_lately {
            if s < end && start < e {
                if a != to {
                    return None;
                }
                mine.push((s.max(start), e.min(end)));
            }
        }
        // The most of them covering one seq: a sweep over their ends (an
        // end sorts before a start at the same seq: the ranges are
        // half-open). O(n log n) in the 1,024 kept at most.
        let mut ends: Vec<(u64, i32)> = mine.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
        ends.sort_unstable();
        let (mut open, mut again) = (0i32, 0i32);
        for (_, step) in ends {
            open += step;
            again = again.max(open);
        }
        if again as usize >= self.asks_before_group {
            return None;
        }
        if self.directed_lately.len() >= MAX_DIRECTED {
            self.directed_lately.pop_front();
        }
        self.directed_lately.push_back((start, end, to, now));
        Some(to)
    }

    /// The one node that asked for every seq of `start..end`, if one did.
    fn single_asker(&self, start: u64, end: u64) -> Option<SocketAddr> {
        let mut who = None;
        for &(s, e, a) in &self.asked {
            if s < end && start < e {
                match (who, a) {
                    (_, None) => return None,
                    (None, Some(a)) => who = Some(a),
                    (Some(w), Some(a)) if w != a => return None,
                    _ => {}
                }
            }
        }
        who
    }

    /// The seq the next published event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// One past the last seq put in a datagram (events still in the open
    /// batch were not sent).
    pub fn sent_end(&self) -> u64 {
        self.next_seq - self.batch.len() as u64
    }

    /// Stability: every live member has everything below `seq`, so the
    /// ring need not hold it. Returns how many events left the ring.
    pub fn trim_below(&mut self, seq: u64, sent_before: Instant) -> usize {
        self.ring.drop_below(seq.min(self.sent_end()), sent_before)
    }

    /// Bytes the retransmit ring holds.
    pub fn ring_bytes(&self) -> usize {
        self.ring.bytes()
    }

    /// True after [`Sender::close`].
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Assigns the next seq to `event` and adds it to the open batch; a full
    /// batch is moved to `out` first. Returns the seq.
    pub fn publish(
        &mut self,
        now: Instant,
        event: &Event,
        out: &mut VecDeque<Body>,
    ) -> Result<u64, PublishError> {
        if self.closed {
            return Err(PublishError::Closed);
        }
        let size = wire::check_event(event, self.max_datagram)?;
        self.make_room(size, out);
        let start = self.batch.as_bytes().len();
        self.batch.push(event);
        Ok(self.added(start, now))
    }

    /// [`Sender::publish`] for an event already encoded (and so checked
    /// against the limits, but not yet against `max_datagram`).
    pub fn publish_encoded(
        &mut self,
        now: Instant,
        event: &EncodedEvent,
        out: &mut VecDeque<Body>,
    ) -> Result<u64, PublishError> {
        if self.closed {
            return Err(PublishError::Closed);
        }
        let size = event.as_bytes().len();
        wire::check_size(size, self.max_datagram)?;
        self.make_room(size, out);
        let start = self.batch.as_bytes().len();
        self.batch.push_encoded(event);
        Ok(self.added(start, now))
    }

    /// Seals the open batch if an event of `size` bytes does not fit in it.
    fn make_room(&mut self, size: usize, out: &mut VecDeque<Body>) {
        let full = wire::DATA_OVERHEAD + self.batch.as_bytes().len() + size > self.max_datagram
            || self.batch.len() >= wire::MAX_EVENTS;
        if full {
            self.seal(out);
        }
        if self.batch.spare() < size {
            // Room for many datagrams at once: sealed batches share it.
            self.batch.reserve(size.max(BATCH_BUFFER));
        }
    }

    /// The event encoded at `batch[start..]` was added: hold it for repair
    /// and number it.
    fn added(&mut self, start: usize, now: Instant) -> u64 {
        self.ring.push(&self.batch.as_bytes()[start..], now);
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// True when events wait in the open batch.
    pub fn has_batch(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Coalescing (see [`CoreConfig::coalesce`]): until when the open
    /// batch, not full, waits for more events, if it does. It waits while
    /// the previous `Data` datagram went out less than `coalesce` ago: only
    /// a sender already sending datagrams that often is held, never the
    /// first datagram after a quiet spell.
    pub fn hold_until(&self, now: Instant) -> Option<Instant> {
        if self.coalesce.is_zero() || self.closed {
            return None;
        }
        // As good as full (the batch's average event would not fit): no
        // use waiting.
        let (bytes, len) = (self.batch.as_bytes().len(), self.batch.len());
        let room = self
            .max_datagram
            .saturating_sub(wire::DATA_OVERHEAD + bytes);
        if len >= wire::MAX_EVENTS || room < bytes / len.max(1) {
            return None;
        }
        // The datagrams of this very instant are this burst's own: the
        // tail of a burst after a quiet spell goes with them.
        let last = self.last_data?;
        let previous = if last < now { last } else { self.data_before? };
        if now >= previous + self.coalesce {
            return None;
        }
        // Until a `coalesce` after the last datagram (not the one before:
        // waking then would only hold it again).
        Some(last + self.coalesce)
    }

    /// Sets [`CoreConfig::coalesce`] (0: off; at most 500 µs).
    pub fn set_coalesce(&mut self, coalesce: Duration) {
        self.coalesce = coalesce.min(Duration::from_micros(500));
    }

    /// A `Data` datagram went out at `now`.
    pub fn data_sent(&mut self, now: Instant) {
        if self.last_data != Some(now) {
            self.data_before = self.last_data;
            self.last_data = Some(now);
        }
    }

    /// A `Goodbye` went out at `now`.
    pub fn goodbye_sent(&mut self, now: Instant) {
        let window = self.reorder_window;
        self.goodbye_sent = Some(match self.goodbye_sent {
            None => (now, false),
            Some((first, again)) => (
                first,
                again || now.saturating_duration_since(first) >= window,
            ),
        });
    }

    /// True once the stream's `Goodbye` went out twice, a reorder window
    /// apart or more (a receiver that lost the first then heard one).
    pub fn goodbye_repeated(&self) -> bool {
        self.goodbye_sent.is_some_and(|(_, again)| again)
    }

    /// Moves the open batch, if any, into a `Data` body on `out`.
    fn seal(&mut self, out: &mut VecDeque<Body>) {
        if self.batch.is_empty() {
            return;
        }
        let events = self.batch.take();
        let first_seq = self.next_seq - events.len() as u64;
        out.push_back(Body::Data { first_seq, events });
    }

    /// Seals the open batch (called when the driver is about to send) and
    /// restarts the fast heartbeat schedule.
    pub fn flush(&mut self, now: Instant, out: &mut VecDeque<Body>, timers: &mut TimerTable) {
        if self.batch.is_empty() {
            return;
        }
        self.seal(out);
        timers.stop(Timer::Coalesce);
        self.heartbeat_interval = self.heartbeat_min;
        timers.set(Timer::Heartbeat, now + self.heartbeat_min);
    }

    /// A `Hello` was heard: schedule a jittered heartbeat, at most one per
    /// `hello_answer_min_interval`.
    pub fn on_hello(&mut self, now: Instant, rng: &mut impl Rng, timers: &mut TimerTable) {
        if self.closed || timers.get(Timer::HelloAnswer).is_some() {
            return;
        }
        if let Some(last) = self.last_hello_answer {
            if now < last + self.hello_min_interval {
                return;
            }
        }
        let jitter_us = self.hello_jitter.as_micros() as u64;
        let delay = Duration::from_micros(if jitter_us == 0 {
            0
        } else {
            rng.gen_range(0..=jitter_us)
        });
        timers.set(Timer::HelloAnswer, now + delay);
    }

    /// A `Nak` for this stream: queue repairs for what the ring holds and
    /// answer `Unavailable` for what it no longer does.
    pub fn on_nak(
        &mut self,
        now: Instant,
        ranges: &[SeqRange],
        from: Option<SocketAddr>,
        out: &mut VecDeque<Body>,
        stats: &mut Stats,
        timers: &mut TimerTable,
    ) {
        stats.naks_received += 1;
        self.ring.expire(now);
        // Events still in the open batch were never sent: they need no repair.
        let sent_end = self.next_seq - self.batch.len() as u64;
        let oldest = self.ring.oldest();
        let mut unavailable = Vec::new();
        let mut lost = false;
        let asked_events: u64 = ranges
            .iter()
            .map(|&(s, e)| e.min(sent_end).saturating_sub(s))
            .fold(0, u64::saturating_add);
        // (On a group only: a unicast transport's peers are configured.)
        let from = from.filter(|_| !self.overheard || asked_events <= MAX_DIRECTED_EVENTS);
        for &(start, end) in ranges {
            let end = end.min(sent_end);
            if start >= end {
                continue;
            }
            // Only a Nak for what was sent says that receivers lose data: one
            // for seqs never sent (bogus, or hostile) does not slow us down.
            lost = true;
            if start < oldest {
                unavailable.push((start, end.min(oldest)));
            }
            let start = start.max(oldest);
            if start < end {
                self.pending.insert(start, end);
                if self.directed {
                    if self.asked.len() >= MAX_ASKED {
                        // Too many to follow: everyone gets what is pending.
                        self.asked.clear();
                        self.asked.push((0, u64::MAX, None));
                    }
                    self.asked.push((start, end, from));
                }
            }
        }
        if lost {
            self.pace.on_loss(now);
        }
        if !unavailable.is_empty() {
            stats.unavailable_sent += 1;
            out.push_back(Body::Unavailable {
                stream: self.stream,
                ranges: unavailable,
            });
        }
        self.send_repairs(now, out, stats, timers);
    }

    /// Sends pending repairs while the token bucket allows.
    fn send_repairs(
        &mut self,
        now: Instant,
        out: &mut VecDeque<Body>,
        stats: &mut Stats,
        timers: &mut TimerTable,
    ) {
        let elapsed = now.saturating_duration_since(self.tokens_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.repair_rate as f64).min(self.repair_burst);
        self.tokens_at = now;
        timers.stop(Timer::Repair);
        while let Some((start, end)) = self.pending.first() {
            let mut seq = start;
            let mut first = None;
            let mut count = 0;
            self.scratch.clear();
            let mut bytes = wire::DATA_OVERHEAD;
            while seq < end {
                let Some(entry) = self.ring.get_mut(seq).copied() else {
                    // Left the ring since the Nak: the next Nak learns it.
                    if first.is_some() {
                        break;
                    }
                    seq += 1;
                    continue;
                };
                if entry.repaired.is_some_and(|t| now < t + self.repair_linger) {
                    if first.is_some() {
                        break;
                    }
                    stats.repairs_lingered += 1;
                    seq += 1;
                    continue;
                }
                let size = entry.size as usize;
                if first.is_some()
                    && (bytes + size > self.max_datagram || count >= wire::MAX_EVENTS)
                {
                    break;
                }
                self.ring.copy_event(seq, &mut self.scratch);
                first.get_or_insert(seq);
                bytes += size;
                count += 1;
                seq += 1;
            }
            let Some(first) = first else {
                self.pending.remove(start);
                continue;
            };
            if self.tokens < bytes as f64 {
                // Rounded up to a whole microsecond, so that the bucket has
                // refilled when the timer fires (never a wake-up at `now`).
                let wait_us = ((bytes as f64 - self.tokens) / self.repair_rate as f64 * 1e6).ceil();
                timers.set(
                    Timer::Repair,
                    now + Duration::from_micros((wait_us as u64).max(1)),
                );
                stats.repairs_deferred += 1;
                return;
            }
            self.tokens -= bytes as f64;
            let to = if self.directed {
                self.direct_to(now, first, seq)
            } else {
                None
            };
            match to {
                Some(_) => {
                    // To the asker alone: no linger (another node asking
                    // for the same events now did not get them).
                    stats.repairs_directed += 1;
                }
                None => {
                    for q in first..seq {
                        if let Some(e) = self.ring.get_mut(q) {
                            e.repaired = Some(now);
                        }
                    }
                }
            }
            self.pending.remove(start);
            if seq < end {
                self.pending.insert(seq, end);
            }
            stats.repairs_sent += 1;
            stats.repaired_events_sent += count as u64;
            // The ring holds bytes, not events: they are checked as a
            // receiver checks them (never fails: the ring holds whole
            // events as this sender encoded them).
            match Events::from_bytes(self.scratch.split().freeze(), count as u32) {
                Ok(events) => {
                    out.push_back(Body::Repair {
                        first_seq: first,
                        events,
                    });
                    // Paired with its Repair: queued together, or not at all.
                    if self.directed {
                        self.repair_to.push_back(to);
                    }
                }
                Err(e) => debug_assert!(false, "the ring gave back a bad run: {e}"),
            }
        }
        self.prune_asked();
    }

    /// Forgets who asked for what is no longer pending.
    fn prune_asked(&mut self) {
        if self.asked.is_empty() {
            return;
        }
        let pending = &self.pending;
        self.asked
            .retain(|&(s, e, _)| pending.iter().any(|(ps, pe)| ps < e && s < pe));
    }

    /// Sends due heartbeats and paced repairs. Returns true if a heartbeat
    /// was queued.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        out: &mut VecDeque<Body>,
        stats: &mut Stats,
        timers: &mut TimerTable,
    ) -> bool {
        if timers.is_due(Timer::Repair, now) {
            self.send_repairs(now, out, stats, timers);
        }
        if self.closed {
            if timers.is_due(Timer::Heartbeat, now) {
                self.heartbeat_interval = (self.heartbeat_interval * 2).min(self.heartbeat_idle);
                timers.set(Timer::Heartbeat, now + self.heartbeat_interval);
                out.push_back(Body::Goodbye {
                    next_seq: self.next_seq,
                });
            }
            return false;
        }
        let mut send = false;
        if timers.take_due(Timer::HelloAnswer, now) {
            self.last_hello_answer = Some(now);
            send = true;
        }
        if timers.is_due(Timer::Heartbeat, now) {
            self.heartbeat_interval = (self.heartbeat_interval * 2).min(self.heartbeat_idle);
            timers.set(Timer::Heartbeat, now + self.heartbeat_interval);
            send = true;
        }
        if send {
            // Events still in the open batch are not sent yet: announce only
            // what was.
            let next_seq = self.next_seq - self.batch.len() as u64;
            self.ring.expire(now);
            out.push_back(Body::Heartbeat {
                next_seq,
                oldest: self.ring.oldest().min(next_seq),
                node: self.node.clone(),
            });
        }
        send
    }

    /// Ends the stream: seals the batch and queues `Goodbye`, which is then
    /// repeated on the fast heartbeat schedule (1, 2, 4 … ms, up to the idle
    /// interval) for as long as the node lingers: a single lost `Goodbye`
    /// would leave receivers unaware of a lost last datagram, and cost them
    /// a timeout `Reset` even when nothing was lost.
    pub fn close(&mut self, now: Instant, out: &mut VecDeque<Body>, timers: &mut TimerTable) {
        if self.closed {
            return;
        }
        self.seal(out);
        out.push_back(Body::Goodbye {
            next_seq: self.next_seq,
        });
        self.closed = true;
        timers.stop(Timer::HelloAnswer);
        timers.stop(Timer::Coalesce);
        self.heartbeat_interval = self.heartbeat_min;
        timers.set(Timer::Heartbeat, now + self.heartbeat_min);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender on a group with direct repairs that published and sent
    /// seqs 1..=10 (one event each), the queued datagrams dropped.
    fn sender(now: Instant, cfg: &CoreConfig) -> (Sender, VecDeque<Body>, Stats, TimerTable) {
        let mut s = Sender::new(cfg, now);
        s.directed = true;
        s.overheard = true;
        let mut out = VecDeque::new();
        let mut timers = TimerTable::default();
        for i in 0..10 {
            let event = Event::Invalidate {
                keys: vec![format!("k{i}")],
            };
            s.publish(now, &event, &mut out).unwrap();
            s.flush(now, &mut out, &mut timers);
        }
        out.clear();
        (s, out, Stats::default(), timers)
    }

    /// Coalescing holds a batch that is not full until a `coalesce` after
    /// the last datagram, and never one as good as full.
    #[test]
    fn coalescing_holds_what_is_not_full_until_a_coalesce_after_the_last_datagram() {
        let t0 = Instant::now();
        let us = Duration::from_micros;
        let cfg = CoreConfig::default();
        let mut s = Sender::new(&cfg, t0);
        let (mut out, mut timers) = (VecDeque::new(), TimerTable::default());
        let event = |i: usize| Event::Invalidate {
            keys: vec![format!("key-{i:04}")],
        };
        s.publish(t0, &event(0), &mut out).unwrap();
        assert_eq!(s.hold_until(t0), None, "the first datagram waited");
        s.flush(t0, &mut out, &mut timers);
        s.data_sent(t0);
        out.clear();
        s.publish(t0 + us(10), &event(1), &mut out).unwrap();
        assert_eq!(s.hold_until(t0 + us(10)), Some(t0 + cfg.coalesce));
        assert_eq!(s.hold_until(t0 + cfg.coalesce), None, "held past coalesce");
        // Filled to within an event of max_datagram: not held.
        let mut i = 2;
        while out.is_empty() {
            s.publish(t0 + us(20), &event(i), &mut out).unwrap();
            i += 1;
            if s.hold_until(t0 + us(20)).is_none() {
                break;
            }
        }
        assert!(out.is_empty(), "sealed before it was seen as full");
        assert_eq!(
            s.hold_until(t0 + us(20)),
            None,
            "an all but full batch waited"
        );
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    /// Where the repairs answering one `Nak` of `ranges` from `from` go
    /// (`None`: the group).
    fn ask(
        s: &mut (Sender, VecDeque<Body>, Stats, TimerTable),
        now: Instant,
        ranges: &[SeqRange],
        from: SocketAddr,
    ) -> Vec<Option<SocketAddr>> {
        let (sender, out, stats, timers) = s;
        sender.on_nak(now, ranges, Some(from), out, stats, timers);
        let mut to = Vec::new();
        while let Some(body) = out.pop_front() {
            if matches!(body, Body::Repair { .. }) {
                to.push(sender.take_repair_to());
            }
        }
        to
    }

    #[test]
    fn a_repair_one_node_asked_for_goes_to_it_until_another_asks_too() {
        let t = Instant::now();
        let mut s = sender(t, &CoreConfig::default());
        let ms = Duration::from_millis;
        assert_eq!(ask(&mut s, t, &[(3, 4)], addr(1)), [Some(addr(1))]);
        // Another node asks for the same seq: it lost it too, and waited
        // on the first Nak. Everyone gets it.
        assert_eq!(ask(&mut s, t + ms(3), &[(3, 4)], addr(2)), [None]);
        // Other seqs of one node's asking are directed again.
        assert_eq!(ask(&mut s, t + ms(4), &[(5, 6)], addr(2)), [Some(addr(2))]);
        assert_eq!(s.2.repairs_directed, 2);
    }

    #[test]
    fn a_node_that_asks_again_twice_is_repaired_through_the_group() {
        let t = Instant::now();
        let mut s = sender(t, &CoreConfig::default());
        let ms = Duration::from_millis;
        assert_eq!(ask(&mut s, t, &[(3, 4)], addr(1)), [Some(addr(1))]);
        assert_eq!(ask(&mut s, t + ms(3), &[(3, 4)], addr(1)), [Some(addr(1))]);
        // The direct path may be blocked (a firewall).
        assert_eq!(ask(&mut s, t + ms(9), &[(3, 4)], addr(1)), [None]);
        // Two asks directed apart, retried as one range: one ask again.
        let mut s = sender(t, &CoreConfig::default());
        assert_eq!(ask(&mut s, t, &[(3, 4)], addr(1)), [Some(addr(1))]);
        assert_eq!(ask(&mut s, t + ms(1), &[(4, 5)], addr(1)), [Some(addr(1))]);
        assert_eq!(ask(&mut s, t + ms(4), &[(3, 5)], addr(1)), [Some(addr(1))]);
        // With one try only, never directed.
        let one = CoreConfig {
            max_nak_tries: 1,
            ..CoreConfig::default()
        };
        let mut s = sender(t, &one);
        assert_eq!(ask(&mut s, t, &[(3, 4)], addr(1)), [None]);
        // With at most 2 tries, after the first directed one already.
        let few = CoreConfig {
            max_nak_tries: 2,
            ..CoreConfig::default()
        };
        let mut s = sender(t, &few);
        assert_eq!(ask(&mut s, t, &[(3, 4)], addr(1)), [Some(addr(1))]);
        assert_eq!(ask(&mut s, t + ms(3), &[(3, 4)], addr(1)), [None]);
    }

    #[test]
    fn a_large_ask_goes_to_the_group_on_a_group_only() {
        let t = Instant::now();
        let cfg = CoreConfig::default();
        // Ten events: directed.
        let mut s = sender(t, &cfg);
        assert_eq!(ask(&mut s, t, &[(1, 11)], addr(1)), [Some(addr(1))]);
        // 300, past MAX_DIRECTED_EVENTS: to the group.
        let mut s2 = sender(t, &cfg);
        for i in 0..290 {
            let event = Event::Invalidate {
                keys: vec![format!("more-{i}")],
            };
            s2.0.publish(t, &event, &mut s2.1).unwrap();
        }
        s2.0.flush(t, &mut s2.1, &mut s2.3);
        s2.1.clear();
        assert!(ask(&mut s2, t, &[(1, 301)], addr(1))
            .iter()
            .all(Option::is_none));
        // A unicast transport (no overheard Naks) directs it all the same.
        s2.0.overheard = false;
        let to = ask(&mut s2, t + Duration::from_millis(10), &[(1, 301)], addr(3));
        assert!(
            !to.is_empty() && to.iter().all(|a| *a == Some(addr(3))),
            "{to:?}"
        );
    }
}
