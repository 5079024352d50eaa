//! All protocol state of one node: its own stream (sender) and every remote
//! stream it follows (receivers), as one sans-IO state machine.
//!
//! # Drive loop
//!
//! ```text
//! let mut core = NodeCore::new(cfg, now)?;
//! loop {
//!     // one input:
//!     core.handle_datagram(now, &bytes)   // a datagram arrived
//!     core.publish(now, event)            // the application published
//!     core.handle_timeout(now)            // the time from poll_timeout passed
//!     // then drain every output:
//!     while core.poll_transmit(now, &mut buf) { send buf to the group }
//!     while let Some(d) = core.poll_delivery() { hand d to subscribers }
//!     sleep until core.poll_timeout()
//! }
//! ```
//!
//! The core never reads a clock, a socket or a global RNG: `now` is always a
//! parameter, randomness comes from `CoreConfig::seed`.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::proto::config::{ConfigError, CoreConfig};
use crate::proto::delivery::{Delivery, Output, ResetReason};
use crate::proto::receiver::{Arrival, Sink, StreamReceiver};
use crate::proto::sender::{PublishError, Sender};
use crate::proto::stats::Stats;
use crate::proto::timers::{Timer, TimerTable};
use crate::wire::{self, Body, EncodedEvent, Event, Header, SeqRange};

/// Unsent events past which a node takes no more publishes (see
/// [`NodeCore::accepts_publishes`]): as many as one `EventBatch` holds.
const MAX_UNSENT: usize = wire::MAX_BATCH;

/// Borrows the node's output fields as a receiver [`Sink`] (a macro, so
/// that the borrow of each field stays separate from `self.streams`).
macro_rules! sink {
    ($self:ident) => {
        Sink {
            cfg: &$self.cfg,
            deliveries: &mut $self.deliveries,
            out: &mut $self.out,
            stats: &mut $self.stats,
            rng: &mut $self.rng,
        }
    };
}

/// A snapshot of one remote stream as a node follows it
/// ([`NodeCore::stream_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamState {
    /// The stream's id.
    pub stream: u64,
    /// Its node's name, once a heartbeat has told it.
    pub node: Option<Arc<str>>,
    /// Every seq below this was delivered or covered by a `Reset`, except
    /// those in `gaps`.
    pub next_expected: u64,
    /// One past the highest seq heard of (by data or a position).
    pub known_end: u64,
    /// The missing ranges waiting for repair (half-open), in order.
    pub gaps: Vec<SeqRange>,
    /// When anything of the stream was last heard.
    pub last_heard: Instant,
}

/// One node's protocol state machine. See the module docs for the drive loop.
#[derive(Debug)]
pub struct NodeCore {
    cfg: CoreConfig,
    header: Header,
    rng: SmallRng,
    /// When the join's sync window ends (a deadline, not a timer: nothing
    /// happens at it, it only changes how new streams are placed).
    sync_until: Instant,
    hellos_left: u32,
    /// Every timer of the node but the per-stream gap timers (`wakes`).
    timers: TimerTable,
    sender: Sender,
    streams: HashMap<u64, StreamReceiver>,
    /// When each stream with open gaps wants to be woken, so that neither a
    /// datagram nor a timeout has to look at every stream. Entries may be
    /// stale (earlier than needed); a stale one only costs a wake-up.
    wakes: BTreeSet<(Instant, u64)>,
    /// Streams evicted without a gap, until met again or timed out.
    evicted: Evicted,
    /// Streams that said `Goodbye`, oldest first, bounded by `max_ended`.
    ended: VecDeque<u64>,
    ended_set: HashSet<u64>,
    out: VecDeque<Body>,
    deliveries: VecDeque<Output>,
    stats: Stats,
    /// This node's name, for the deliveries of its own events.
    own_name: Arc<str>,
}

impl NodeCore {
    /// A node joining at `now`: it sends its first `Hello` on the first
    /// [`NodeCore::poll_transmit`].
    pub fn new(cfg: CoreConfig, now: Instant) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let mut timers = TimerTable::default();
        timers.set(Timer::Hello, now);
        timers.set(Timer::Sweep, now + cfg.stream_timeout / 20);
        timers.set(Timer::Heartbeat, now + cfg.heartbeat_idle);
        Ok(NodeCore {
            header: cfg.header(),
            own_name: Arc::from(cfg.node_name.as_str()),
            rng: SmallRng::seed_from_u64(cfg.seed),
            sync_until: now + cfg.sync_window,
            hellos_left: cfg.hello_count,
            timers,
            sender: Sender::new(&cfg, now),
            streams: HashMap::new(),
            wakes: BTreeSet::new(),
            evicted: Evicted::default(),
            ended: VecDeque::new(),
            ended_set: HashSet::new(),
            out: VecDeque::new(),
            deliveries: VecDeque::new(),
            stats: Stats::default(),
            cfg,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// This node's stream id.
    pub fn stream(&self) -> u64 {
        self.cfg.stream
    }

    /// When the join sync window ends: from then on the node is in sync and
    /// the application may cache.
    pub fn sync_deadline(&self) -> Instant {
        self.sync_until
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// What this node knows of a remote stream it follows, if it does.
    pub fn stream_state(&self, stream: u64) -> Option<StreamState> {
        let r = self.streams.get(&stream)?;
        Some(StreamState {
            stream,
            node: r.node().cloned(),
            next_expected: r.next_expected(),
            known_end: r.known_end(),
            gaps: r.gaps().iter().map(|(start, g)| (start, g.end)).collect(),
            last_heard: r.last_heard(),
        })
    }

    /// What this node knows of every remote stream it follows.
    pub fn stream_states(&self) -> Vec<StreamState> {
        let mut v: Vec<StreamState> = self
            .streams
            .keys()
            .filter_map(|s| self.stream_state(*s))
            .collect();
        v.sort_by_key(|s| s.stream);
        v
    }

    /// A copy of the counters with the gauges filled in.
    pub fn stats_snapshot(&self) -> Stats {
        let mut s = self.stats.clone();
        s.open_gaps = self.open_gaps() as u64;
        s.streams = self.streams.len() as u64;
        s
    }

    /// Open gaps over all followed streams.
    pub fn open_gaps(&self) -> usize {
        self.streams.values().map(|r| r.gaps().len()).sum()
    }

    /// True when everything published, and anything else queued to send
    /// (`Goodbye` after `close`), has been sent: pacing holds nothing back.
    pub fn is_flushed(&self) -> bool {
        self.out.is_empty() && !self.sender.has_batch()
    }

    /// True while datagrams or deliveries wait to be polled.
    pub fn has_pending_output(&self) -> bool {
        !self.out.is_empty() || !self.deliveries.is_empty() || self.sender.has_batch()
    }

    /// Events published and not yet sent: pacing holds them while
    /// receivers are losing data.
    pub fn unsent_events(&self) -> usize {
        (self
            .stats
            .events_published
            .saturating_sub(self.stats.events_sent)) as usize
    }

    /// False while too many published events wait to be sent (pacing holds
    /// them): the driver then takes no more publishes, so that `publish`
    /// waits instead of queueing without bound. One more batch of at most
    /// [`wire::MAX_BATCH`] is always accepted below the limit.
    pub fn accepts_publishes(&self) -> bool {
        self.unsent_events() < MAX_UNSENT
    }

    /// Number of remote streams followed.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The seq the next published event gets.
    pub fn next_seq(&self) -> u64 {
        self.sender.next_seq()
    }

    /// Publishes an event on this node's stream and returns its seq. It is
    /// sent on the next [`NodeCore::poll_transmit`], batched with whatever
    /// else was published before then.
    pub fn publish(&mut self, now: Instant, event: Event) -> Result<u64, PublishError> {
        if self.cfg.receive_only {
            return Err(PublishError::ReceiveOnly);
        }
        let queued = self.out.len();
        let seq = self.sender.publish(now, &event, &mut self.out)?;
        self.stats.events_published += 1;
        self.deliver_own(queued);
        Ok(seq)
    }

    /// [`NodeCore::publish`] for an event encoded already (no encoding, no
    /// allocation).
    pub fn publish_encoded(
        &mut self,
        now: Instant,
        event: &EncodedEvent,
    ) -> Result<u64, PublishError> {
        if self.cfg.receive_only {
            return Err(PublishError::ReceiveOnly);
        }
        let queued = self.out.len();
        let seq = self.sender.publish_encoded(now, event, &mut self.out)?;
        self.stats.events_published += 1;
        self.deliver_own(queued);
        Ok(seq)
    }

    /// With `deliver_own`, hands this node's own events to its own
    /// subscribers: every `Data` the sender sealed onto `out` past index
    /// `queued` (it only appends), as one run sharing the datagram's bytes.
    /// Each event is sealed, and so delivered, exactly once.
    fn deliver_own(&mut self, queued: usize) {
        if !self.cfg.deliver_own {
            return;
        }
        for body in self.out.range(queued..) {
            if let Body::Data { first_seq, events } = body {
                self.stats.own_delivered += events.len() as u64;
                self.deliveries.push_back(Output::Run {
                    stream: self.cfg.stream,
                    first_seq: *first_seq,
                    node: Some(self.own_name.clone()),
                    events: events.clone(),
                });
            }
        }
    }

    /// Ends this node's stream: everything published goes out, then `Goodbye`.
    pub fn close(&mut self, now: Instant) {
        let queued = self.out.len();
        self.sender.close(now, &mut self.out, &mut self.timers);
        self.deliver_own(queued);
        self.timers.stop(Timer::Hello);
    }

    /// True after [`NodeCore::close`].
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Feeds one received datagram. Anything that fails to decode or
    /// validate is counted and dropped.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        self.stats.datagrams_received += 1;
        // The header first: this node's own traffic (multicast loops back)
        // is ignored before its body is decoded.
        let dgram = match wire::decode_header(bytes, self.cfg.cluster) {
            Ok((header, _)) if header.stream == self.cfg.stream => {
                self.stats.own_ignored += 1;
                return;
            }
            Ok((header, used)) => {
                wire::decode_body(&bytes[used..]).map(|body| wire::Datagram { header, body })
            }
            Err(e) => Err(e),
        };
        let dgram = match dgram {
            Ok(d) => d,
            Err(e) => {
                tracing::trace!(error = %e, "dropped datagram");
                self.stats.drop(e.kind());
                return;
            }
        };
        let from = dgram.header.stream;
        if dgram.header.receive_only() {
            self.handle_receive_only(now, from, dgram.body);
            return;
        }
        let resets_before = self.stats.resets_total();
        let sync_until = self.sync_until;
        let mut sink = sink!(self);
        let streams = &mut self.streams;
        let evicted = &mut self.evicted;
        let ended = &self.ended_set;
        let in_sync = now < sync_until;
        let nak_target = match &dgram.body {
            Body::Nak { stream, .. } => Some(*stream),
            _ => None,
        };
        // The receiver of the datagram's sender (created if new), placed at
        // `pos` when the datagram tells its position.
        macro_rules! sender_of {
            ($pos:expr) => {
                receiver_for(
                    streams, evicted, ended, &mut sink, now, sync_until, from, $pos,
                )
            };
        }
        match dgram.body {
            Body::Hello { node } => {
                self.sender.on_hello(now, sink.rng, &mut self.timers);
                // A joiner publishes nothing before its join returns: its
                // stream starts at 1.
                if let Some(r) = sender_of!(Some(1)) {
                    r.set_node(&node);
                }
            }
            Body::Nak { stream, ranges } => {
                if stream == self.cfg.stream {
                    self.sender
                        .on_nak(now, &ranges, sink.out, sink.stats, &mut self.timers);
                } else if let Some(r) = streams.get_mut(&stream) {
                    r.on_overheard_nak(now, &ranges, &mut sink);
                }
                // Knowing that the NAK's sender exists matters: if it dies
                // unheard, its stream times out with a Reset.
                sender_of!(None);
            }
            Body::Unavailable { stream, ranges } => {
                if let Some(r) = sender_of!(None) {
                    // Only a stream's own sender speaks for what it holds.
                    if stream == from {
                        sink.stats.unavailable_received += 1;
                        r.unavailable(&ranges, &mut sink);
                    }
                }
            }
            Body::Data { first_seq, events } => {
                if let Some(r) = sender_of!(Some(first_seq)) {
                    r.on_events(now, first_seq, events, Arrival::Data, &mut sink);
                }
            }
            Body::Repair { first_seq, events } => {
                if let Some(r) = sender_of!(None) {
                    // A repair (asked for by someone else) does not place a
                    // stream: it would start at an arbitrary old seq.
                    if r.is_placed() || !in_sync {
                        r.on_events(now, first_seq, events, Arrival::Repair, &mut sink);
                    }
                }
            }
            Body::Heartbeat {
                next_seq,
                oldest,
                node,
            } => {
                if let Some(r) = sender_of!(Some(next_seq)) {
                    r.set_node(&node);
                    r.on_position(now, next_seq, Some(oldest), &mut sink);
                }
            }
            Body::Goodbye { next_seq } => {
                if let Some(r) = sender_of!(Some(next_seq)) {
                    r.on_goodbye(now, next_seq, &mut sink);
                }
            }
        }
        self.after_resets(resets_before);
        self.schedule(from);
        if let Some(target) = nak_target {
            self.schedule(target);
        }
        self.retire_if_finished(from);
    }

    /// A datagram of a node that never publishes: its `Hello` is answered
    /// and its `Nak`s served or overheard, but its stream is not followed
    /// (it has nothing to lose, so its silence costs no `Reset`).
    fn handle_receive_only(&mut self, now: Instant, from: u64, body: Body) {
        let mut sink = sink!(self);
        match body {
            Body::Hello { node } => {
                tracing::debug!(
                    stream = format_args!("{from:016x}"),
                    node,
                    "receive-only node joined (not followed)"
                );
                self.sender.on_hello(now, sink.rng, &mut self.timers);
            }
            Body::Nak { stream, ranges } => {
                if stream == self.cfg.stream {
                    self.sender
                        .on_nak(now, &ranges, sink.out, sink.stats, &mut self.timers);
                } else if let Some(r) = self.streams.get_mut(&stream) {
                    r.on_overheard_nak(now, &ranges, &mut sink);
                }
                self.schedule(stream);
            }
            Body::Heartbeat { .. } => self.stats.receive_only_heard += 1,
            Body::Goodbye { .. } => {
                self.stats.receive_only_heard += 1;
                tracing::debug!(
                    stream = format_args!("{from:016x}"),
                    "receive-only node left (Goodbye)"
                );
            }
            // Events or repairs from a node that says it never publishes:
            // malformed (or forged), never trusted.
            Body::Data { .. } | Body::Repair { .. } | Body::Unavailable { .. } => {
                self.stats.drop("receive_only_data");
            }
        }
    }

    /// Records when `stream` next wants to be woken (its earliest gap).
    fn schedule(&mut self, stream: u64) {
        if let Some(t) = self.streams.get(&stream).and_then(|r| r.poll_timeout()) {
            self.wakes.insert((t, stream));
        }
    }

    /// A `Reset` tells the application to clear everything, which covers
    /// every event sent before it — in particular everything any open gap
    /// is missing. Those gaps need no repair any more.
    fn after_resets(&mut self, resets_before: u64) {
        if self.stats.resets_total() == resets_before {
            return;
        }
        let mut sink = sink!(self);
        let mut finished = Vec::new();
        for r in self.streams.values_mut() {
            r.cover_gaps(&mut sink);
            if r.is_finished() {
                finished.push(r.stream());
            }
        }
        // A stream that said Goodbye and only waited for these gaps is done.
        for s in finished {
            self.retire_if_finished(s);
        }
    }

    fn retire_if_finished(&mut self, stream: u64) {
        if self.streams.get(&stream).is_some_and(|r| r.is_finished()) {
            self.streams.remove(&stream);
            tracing::debug!(
                stream = format_args!("{stream:016x}"),
                "stream ended (Goodbye)"
            );
            self.stats.streams_ended += 1;
            self.stats.streams = self.streams.len() as u64;
            self.ended.push_back(stream);
            self.ended_set.insert(stream);
            while self.ended.len() > self.cfg.max_ended {
                if let Some(old) = self.ended.pop_front() {
                    self.ended_set.remove(&old);
                }
            }
        }
    }

    /// Acts on everything due at `now`: hellos, heartbeats, gaps, timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        // A held (paced) datagram may go on the next poll_transmit.
        self.timers.take_due(Timer::Pace, now);
        if self.timers.take_due(Timer::Hello, now) && self.hellos_left > 0 {
            self.out.push_back(Body::Hello {
                node: self.cfg.node_name.clone(),
            });
            self.stats.hellos_sent += 1;
            self.hellos_left -= 1;
            if self.hellos_left > 0 {
                let next = now + self.cfg.sync_window / self.cfg.hello_count;
                self.timers.set(Timer::Hello, next);
            }
        }
        if self
            .sender
            .handle_timeout(now, &mut self.out, &mut self.stats, &mut self.timers)
        {
            self.stats.heartbeats_sent += 1;
        }
        let resets_before = self.stats.resets_total();
        let mut finished = Vec::new();
        let mut woken = Vec::new();
        while let Some(&(t, stream)) = self.wakes.first() {
            if t > now {
                break;
            }
            self.wakes.remove(&(t, stream));
            woken.push(stream);
        }
        let mut sink = sink!(self);
        for &stream in &woken {
            if let Some(r) = self.streams.get_mut(&stream) {
                if r.poll_timeout().is_some_and(|t| t <= now) {
                    r.handle_timeout(now, &mut sink);
                }
                if r.is_finished() {
                    finished.push(stream);
                }
            }
        }
        if self.timers.is_due(Timer::Sweep, now) {
            self.timers
                .set(Timer::Sweep, now + self.cfg.stream_timeout / 20);
            let timeout = self.cfg.stream_timeout;
            let timed_out: Vec<u64> = self
                .streams
                .values()
                .filter(|r| r.last_heard() + timeout <= now)
                .map(|r| r.stream())
                .collect();
            for s in timed_out {
                if let Some(mut r) = self.streams.remove(&s) {
                    tracing::debug!(stream = format_args!("{s:016x}"), "stream timed out");
                    sink.stats.streams_timed_out += 1;
                    r.time_out(&mut sink);
                }
            }
            self.evicted.sweep(now, &mut sink);
        }
        self.stats.streams = self.streams.len() as u64;
        self.after_resets(resets_before);
        for s in woken {
            self.schedule(s);
        }
        for s in finished {
            self.retire_if_finished(s);
        }
    }

    /// The earliest time [`NodeCore::handle_timeout`] has work, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let gap = self.wakes.first().map(|(t, _)| *t);
        match (self.timers.next(), gap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Writes the next datagram to send into `buf` (replacing its contents)
    /// and returns true; false when there is nothing to send. Call after
    /// every input until it returns false. Events published since the last
    /// call are batched into as few datagrams as fit.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        if self.out.is_empty() && self.sender.has_batch() {
            self.sender.flush(now, &mut self.out, &mut self.timers);
            self.deliver_own(0);
        }
        let Some(body) = self.out.front() else {
            return false;
        };
        wire::encode(&self.header, body, buf);
        if let Body::Data { events, .. } = body {
            // Data is paced (after a Nak); what is held waits, in order.
            if let Err(at) = self.sender.pace.check(now, buf.len()) {
                if self.timers.get(Timer::Pace).is_none() {
                    self.stats.data_paced += 1;
                }
                self.timers.set(Timer::Pace, at);
                return false;
            }
            self.timers.stop(Timer::Pace);
            self.sender.pace.on_sent(now, buf.len());
            self.stats.data_sent += 1;
            self.stats.events_sent += events.len() as u64;
        }
        self.out.pop_front();
        self.stats.datagrams_sent += 1;
        true
    }

    /// The next delivery for the application, if any. Call after every
    /// input until it returns `None`.
    #[must_use]
    pub fn poll_delivery(&mut self) -> Option<Delivery> {
        loop {
            let front = self.deliveries.front_mut()?;
            if let Some(d) = front.pop() {
                if front.is_empty() {
                    self.deliveries.pop_front();
                }
                return Some(d);
            }
            self.deliveries.pop_front();
        }
    }

    /// Like [`NodeCore::poll_delivery`], but a run of events of one stream
    /// comes whole (the driver's way: one value per datagram, not per
    /// event).
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.deliveries.pop_front()
    }
}

/// The receiver of `stream` (created if new), marked as heard from now.
/// `pos` is the first seq the datagram speaks of, if it tells one. A stream
/// met during the sync window is followed from its position (nothing before
/// the join matters); one met later is followed from seq 1, so that history
/// we never saw is a gap to repair. `None` for a stream that already said
/// `Goodbye`.
// The node's fields, borrowed apart (the caller holds other fields too).
#[allow(clippy::too_many_arguments)]
fn receiver_for<'a>(
    streams: &'a mut HashMap<u64, StreamReceiver>,
    evicted: &mut Evicted,
    ended: &HashSet<u64>,
    sink: &mut Sink<'_>,
    now: Instant,
    sync_until: Instant,
    stream: u64,
    pos: Option<u64>,
) -> Option<&'a mut StreamReceiver> {
    if ended.contains(&stream) {
        sink.stats.drop("ended_stream");
        return None;
    }
    let in_sync = now < sync_until;
    if !streams.contains_key(&stream) {
        if streams.len() >= sink.cfg.max_streams {
            evict_one(streams, evicted, sink);
        }
        // Met again after an eviction: followed from seq 1 (it is after the
        // sync window), so nothing it sent meanwhile is lost silently.
        evicted.remove(stream);
        let start = if in_sync { pos } else { Some(1) };
        tracing::debug!(stream = format_args!("{stream:016x}"), ?start, "new stream");
        streams.insert(stream, StreamReceiver::new(stream, start, now));
        sink.stats.streams = streams.len() as u64;
    }
    let r = streams.get_mut(&stream)?;
    r.heard(now);
    if let Some(pos) = pos {
        r.place(pos, in_sync);
    }
    Some(r)
}

/// Evicts the least recently heard stream (table full).
fn evict_one(
    streams: &mut HashMap<u64, StreamReceiver>,
    evicted: &mut Evicted,
    sink: &mut Sink<'_>,
) {
    let Some(victim) = streams
        .values()
        .min_by_key(|r| r.last_heard())
        .map(|r| r.stream())
    else {
        return;
    };
    if let Some(mut r) = streams.remove(&victim) {
        tracing::debug!(
            stream = format_args!("{victim:016x}"),
            "stream evicted: table full"
        );
        sink.stats.streams_evicted += 1;
        if !r.evict(sink) {
            evicted.insert(victim, r.last_heard(), r.next_expected(), sink);
        }
    }
}

/// Streams evicted (table full) with no gap open. One that is met again is
/// followed from seq 1; one that is never met again may have died with its
/// last events lost, so it gets the Reset of a timed-out stream when its
/// timeout comes. Bounded by `max_streams`; past it the oldest is Reset.
#[derive(Debug, Default)]
struct Evicted {
    streams: HashMap<u64, (Instant, u64)>,
    order: VecDeque<u64>,
}

impl Evicted {
    fn insert(
        &mut self,
        stream: u64,
        last_heard: Instant,
        next_expected: u64,
        sink: &mut Sink<'_>,
    ) {
        self.streams.insert(stream, (last_heard, next_expected));
        self.order.push_back(stream);
        while self.streams.len() > sink.cfg.max_streams {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, next)) = self.streams.remove(&old) {
                sink.reset(ResetReason::StreamEvicted {
                    stream: old,
                    missing: (next, next),
                });
            }
        }
    }

    fn remove(&mut self, stream: u64) {
        if self.streams.remove(&stream).is_some() {
            self.order.retain(|s| *s != stream);
        }
    }

    /// Resets for every evicted stream whose timeout passed unseen.
    fn sweep(&mut self, now: Instant, sink: &mut Sink<'_>) {
        let timeout = sink.cfg.stream_timeout;
        let due: Vec<(u64, u64)> = self
            .streams
            .iter()
            .filter(|(_, (heard, _))| *heard + timeout <= now)
            .map(|(s, (_, next))| (*s, *next))
            .collect();
        for (stream, next_expected) in due {
            self.remove(stream);
            sink.stats.streams_timed_out += 1;
            sink.reset(ResetReason::StreamTimedOut {
                stream,
                next_expected,
            });
        }
    }
}
