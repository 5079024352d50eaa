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
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::proto::auth::{Auth, AuthConfig, AuthMode};
use crate::proto::config::{ConfigError, CoreConfig};
use crate::proto::delivery::{Delivery, Output, ResetReason};
use crate::proto::members::{
    ConfirmReport, Liveness, Member, MemberStream, Members, Staleness, StreamStaleness,
};
use crate::proto::receiver::{Arrival, Learned, Sink, StreamReceiver};
use crate::proto::sender::{PublishError, Sender};
use crate::proto::stats::Stats;
use crate::proto::timers::{Timer, TimerTable};
use crate::wire::{self, Body, EncodedEvent, Event, Header, Position, SeqRange};

/// Unchanged positions a periodic `Report` adds, in turn, to what changed.
const REFRESH: usize = 8;

/// Streams that ended are still reported for this many stream timeouts
/// (30 s by default), so that a node cut off from their side for up to that
/// long learns of them; a member back from a longer death costs a Reset.
const ENDED_KEPT: u32 = 3;

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
            learned: &mut $self.learned,
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
    /// The staleness bound: how long this node may have been missing an
    /// event of the stream without knowing it (at the snapshot).
    pub staleness: Duration,
}

/// One node's protocol state machine. See the module docs for the drive loop.
#[derive(Debug)]
pub struct NodeCore {
    cfg: CoreConfig,
    header: Header,
    /// The encoded header's length (where every body starts).
    header_len: usize,
    /// Keys, replay windows, the transmit counter.
    auth: Auth,
    rng: SmallRng,
    /// What this node learned of its network, for the timing of `Nak`s.
    learned: Learned,
    /// Membership's randomness (report jitter, acknowledgement delays).
    member_rng: SmallRng,
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
    /// Streams that said `Goodbye`, oldest first, bounded by `max_ended`
    /// (with the number of their retirement: a stream followed again and
    /// retired anew has a later one).
    ended: VecDeque<(u64, u64)>,
    ended_set: HashMap<u64, Ended>,
    /// Retirements so far (numbers the entries of `ended`).
    retired: u64,
    out: VecDeque<Body>,
    deliveries: VecDeque<Output>,
    stats: Stats,
    /// This node's name, for the deliveries of its own events.
    own_name: Arc<str>,
    /// The membership view, confirmations, acknowledgements owed.
    members: Members,
    /// Streams that timed out here, with the position their `Reset`
    /// covered, so that members' reports of them do not bring them back
    /// (bounded by `max_ended`, oldest forgotten first).
    timed_out: HashMap<u64, u64>,
    timed_out_order: VecDeque<u64>,
    /// When the next `AckRequest` of the confirmations goes out.
    next_ask: Option<Instant>,
    /// The latest `now` passed in (for snapshots).
    last_now: Instant,
    /// The source of the last datagram accepted (decoded, not this node's,
    /// authenticated unless the auth mode is off), until taken: a unicast
    /// driver learns its peers from it.
    accepted_from: Option<SocketAddr>,
    /// Where the datagram of the last `poll_transmit` is meant for, if one
    /// node only (see [`NodeCore::transmit_to`]).
    transmit_to: Option<SocketAddr>,
    /// Whether the datagram of the last `poll_transmit` is a `Nak`.
    transmit_nak: bool,
    /// With directed repairs on a group, the group's port: a `Nak` from
    /// it came from a node without a direct socket (see
    /// [`NodeCore::set_directed_multicast`]).
    group_port: Option<u16>,
}

impl NodeCore {
    /// A node joining at `now`: it sends its first `Hello` on the first
    /// [`NodeCore::poll_transmit`].
    pub fn new(mut cfg: CoreConfig, now: Instant) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let mut timers = TimerTable::default();
        timers.set(Timer::Hello, now);
        timers.set(Timer::Sweep, now + cfg.stream_timeout / 20);
        timers.set(Timer::Heartbeat, now + cfg.heartbeat_idle);
        timers.set(Timer::Members, now + cfg.lease / 4);
        // Membership draws from its own RNG, so that it leaves the
        // protocol's random choices (back-offs, jitter) as they were.
        let mut member_rng = SmallRng::seed_from_u64(cfg.seed ^ 0x6d65_6d62_6572_7321);
        let first_report = jitter(&mut member_rng, cfg.report_interval);
        timers.set(Timer::Report, now + first_report);
        Ok(NodeCore {
            header: cfg.header(),
            header_len: cfg.header().to_bytes().len(),
            // The keys live in `auth` only (replaced on reload, never kept
            // in the config).
            auth: Auth::new(
                AuthConfig {
                    keyring: std::mem::take(&mut cfg.auth.keyring),
                    ..cfg.auth.clone()
                },
                now,
            ),
            own_name: Arc::from(cfg.node_name.as_str()),
            rng: SmallRng::seed_from_u64(cfg.seed),
            learned: Learned::new(cfg.learn_timing, now),
            member_rng,
            sync_until: now + cfg.sync_window,
            hellos_left: cfg.hello_count,
            timers,
            sender: Sender::new(&cfg, now),
            streams: HashMap::new(),
            accepted_from: None,
            transmit_to: None,
            transmit_nak: false,
            group_port: None,
            wakes: BTreeSet::new(),
            evicted: Evicted::default(),
            ended: VecDeque::new(),
            ended_set: HashMap::new(),
            retired: 0,
            out: VecDeque::new(),
            deliveries: VecDeque::new(),
            stats: Stats::default(),
            members: Members::default(),
            timed_out: HashMap::new(),
            timed_out_order: VecDeque::new(),
            next_ask: None,
            last_now: now,
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
            staleness: r.staleness(self.last_now),
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
        s.ring_bytes = self.sender.ring_bytes() as u64;
        s.members_live = self.members.live() as u64;
        let st = self.staleness(self.last_now);
        s.staleness_ms = st.worst.as_millis() as u64;
        s.isolated = st.isolated as u64;
        s
    }

    /// Open gaps over all followed streams.
    pub fn open_gaps(&self) -> usize {
        self.streams.values().map(|r| r.gaps().len()).sum()
    }

    /// True when everything published, and anything else queued to send
    /// (`Goodbye` after `close`), has been sent: neither pacing nor
    /// coalescing holds anything back.
    /// After `close`, only once the `Goodbye` went out again a reorder
    /// window after the first (the heartbeat schedule repeats it at 1, 2, 4
    /// … ms), so that a receiver that lost the first still hears one (one
    /// that hears none times the stream out with a `Reset`).
    pub fn is_flushed(&self) -> bool {
        self.out.is_empty()
            && !self.sender.has_batch()
            && (!self.sender.is_closed() || self.sender.goodbye_repeated())
    }

    /// True while datagrams or deliveries wait to be polled, or published
    /// events wait to be sent (which pacing or coalescing may hold until
    /// [`NodeCore::poll_timeout`]: `poll_transmit` can return false then).
    pub fn has_pending_output(&self) -> bool {
        !self.out.is_empty() || !self.deliveries.is_empty() || self.sender.has_batch()
    }

    /// Events published and not yet sent: pacing holds them while
    /// receivers are losing data (and coalescing, briefly, at high rates).
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
    /// else was published before then (or, at high rates, on the first
    /// after [`CoreConfig::coalesce`] has passed: see `poll_transmit`).
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
        self.handle_datagram_from(now, None, bytes);
    }

    /// The one node the datagram of the last [`NodeCore::poll_transmit`] is
    /// meant for, if it is meant for one: a `Nak` for the stream's origin
    /// (its address as heard: a unicast transport sends it there only, a
    /// group gets it anyway); with [`NodeCore::set_directed`] or
    /// [`NodeCore::set_directed_multicast`], a `Repair` for the one node
    /// whose `Nak`s it answers, sent to it alone.
    pub fn transmit_to(&self) -> Option<SocketAddr> {
        self.transmit_to
    }

    /// Whether the datagram of the last [`NodeCore::poll_transmit`] is a
    /// `Nak` (a multicast driver with a direct socket sends it from there,
    /// so that a repair meant for this node alone can come back to it).
    pub fn transmit_is_nak(&self) -> bool {
        self.transmit_nak
    }

    /// Repairs may go to the one node that asked (a unicast transport that
    /// honours [`NodeCore::transmit_to`]): repairs asked for by one node
    /// only are then meant for it, and do not hold back the same events'
    /// repair for another node (no `repair_linger`). Off by default: a
    /// repair reaches everyone. For a group, see
    /// [`NodeCore::set_directed_multicast`].
    pub fn set_directed(&mut self, directed: bool) {
        self.sender.directed = directed;
        self.sender.overheard = false;
    }

    /// [`NodeCore::set_directed`] for a multicast group, where every node
    /// hears every `Nak` (and a node that lost what another asked for
    /// waits for that repair instead of asking): a repair goes to the one
    /// node that asked, at the address its `Nak` came from (its direct
    /// socket), unless another node asks for any of it lately, or the
    /// same node asks again twice (once with `max_nak_tries` 2 or less),
    /// or it asks for much at once; then to everyone. `group_port`: a `Nak`
    /// from it came from a node without a direct socket (every node of its
    /// host shares the port): its repairs go to everyone.
    pub fn set_directed_multicast(&mut self, directed: bool, group_port: Option<u16>) {
        self.sender.directed = directed;
        self.sender.overheard = directed;
        self.group_port = group_port;
    }

    /// The source address of the last datagram accepted since the last call
    /// (decoded, another node's, and authenticated unless the auth mode is
    /// off): a peer, for a unicast transport.
    pub fn take_accepted_from(&mut self) -> Option<SocketAddr> {
        self.accepted_from.take()
    }

    /// [`NodeCore::handle_datagram`], with the address it came from (for
    /// the membership view).
    pub fn handle_datagram_from(&mut self, now: Instant, addr: Option<SocketAddr>, bytes: &[u8]) {
        self.last_now = now;
        self.stats.datagrams_received += 1;
        // The header first: this node's own traffic (multicast loops back)
        // is ignored before its body is decoded.
        let mut key_id = None;
        let dgram = match wire::decode_header(bytes, self.cfg.cluster) {
            Ok((header, _)) if header.stream == self.cfg.stream => {
                self.stats.own_ignored += 1;
                return;
            }
            Ok((header, used)) => {
                // Authentication, before anything of the datagram is
                // decoded or changes state.
                let Some(opened) = self.auth.open(now, &header, used, bytes, &mut self.stats)
                else {
                    return;
                };
                key_id = opened.key_id;
                opened.body.map(|body| wire::Datagram { header, body })
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
        // With keys (accept or require), only an authenticated datagram
        // makes its source a peer: a forger could otherwise point the
        // fan-out, and repairs, at any address (reflection).
        if addr.is_some() && (key_id.is_some() || self.auth.mode() == AuthMode::Off) {
            self.accepted_from = addr;
        }
        let from = dgram.header.stream;
        // A repair goes to the one node that asked (when directed) only at
        // an address that is that node's: authenticated, or on the host
        // its stream was already heard from; and, on a group, not at the
        // group's port (shared by every node of a host: a node without a
        // direct socket asked). Without keys a forger can still name any
        // host of the LAN (by a forged datagram from it first); directed
        // repairs are few per `Nak` and leave with the group's TTL.
        let known_ip = self.members.addr_of(from).map(|a| a.ip());
        let asker = addr.filter(|a| {
            (key_id.is_some() || known_ip == Some(a.ip())) && Some(a.port()) != self.group_port
        });
        let resets_before = self.stats.resets_total();
        let receive_only = dgram.header.receive_only();
        if let Some(silent) = self.members.heard(
            now,
            from,
            addr,
            receive_only,
            self.cfg.max_members,
            self.cfg.stream_timeout * ENDED_KEPT,
        ) {
            // Cut off for longer than the lease: streams may have begun and
            // ended unheard meanwhile. Nothing proves otherwise: Reset.
            let mut sink = sink!(self);
            sink.reset(ResetReason::Isolated {
                silent_ms: silent.as_millis() as u64,
            });
        }
        self.members.sent_with(from, key_id);
        match &dgram.body {
            Body::Report { node, keys, .. } => {
                self.members.named(from, node);
                self.members.holds(from, keys);
            }
            Body::Hello { node } | Body::Heartbeat { node, .. } => self.members.named(from, node),
            Body::Goodbye { .. } => {
                self.members.left(now, from);
                self.members.finish(now);
            }
            _ => {}
        }
        if receive_only {
            self.handle_receive_only(now, from, asker, dgram.body);
            self.after_resets(resets_before);
            self.check_acks(now);
            return;
        }
        if !self.ended_set.is_empty() {
            self.reopen_if_alive(now, from, &dgram.body);
        }
        let sync_until = self.sync_until;
        // Events below a stream's start matter once the join returned and
        // any datagram sent before it has arrived (no reordering delays one
        // a contradiction window): one of them arriving later shows the
        // start false (see `StreamReceiver::on_events`).
        let after_sync = now >= sync_until + self.cfg.contradiction();
        let mut sink = sink!(self);
        let streams = &mut self.streams;
        let evicted = &mut self.evicted;
        let ended = &self.ended_set;
        let in_sync = now < sync_until;
        let nak_target = match &dgram.body {
            Body::Nak { stream, .. } => Some(*stream),
            _ => None,
        };
        let mut report = None;
        // Set when the stream's events or heartbeat go past its Goodbye.
        let mut not_gone = false;
        // The receiver of the datagram's sender (created if new), placed at
        // `pos` when the datagram tells its position.
        macro_rules! sender_of {
            ($pos:expr) => {
                receiver_for(
                    streams, evicted, ended, &mut sink, now, sync_until, from, $pos, true,
                )
            };
            ($pos:expr, event) => {
                receiver_for(
                    streams, evicted, ended, &mut sink, now, sync_until, from, $pos, false,
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
                        .on_nak(now, &ranges, asker, sink.out, sink.stats, &mut self.timers);
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
                if let Some(r) = sender_of!(Some(first_seq), event) {
                    let ending = r.ending().is_some();
                    r.on_events(now, first_seq, events, Arrival::Data, after_sync, &mut sink);
                    not_gone = ending && r.ending().is_none();
                }
            }
            Body::Repair { first_seq, events } => {
                if let Some(r) = sender_of!(None) {
                    // A repair (asked for by someone else) does not place a
                    // stream: it would start at an arbitrary old seq.
                    if r.is_placed() || !in_sync {
                        r.on_events(
                            now,
                            first_seq,
                            events,
                            Arrival::Repair,
                            after_sync,
                            &mut sink,
                        );
                    }
                }
            }
            Body::Heartbeat {
                next_seq,
                oldest,
                node,
            } => {
                if let Some(r) = sender_of!(Some(next_seq)) {
                    let ending = r.ending().is_some();
                    r.set_node(&node);
                    r.on_heartbeat(now, &mut sink);
                    r.on_claim(now, next_seq, Some(oldest), &mut sink);
                    r.learned_position(now);
                    not_gone = ending && r.ending().is_none();
                }
            }
            Body::Goodbye { next_seq } => {
                if let Some(r) = sender_of!(Some(next_seq)) {
                    r.on_goodbye(now, next_seq, &mut sink);
                    r.learned_position(now);
                }
            }
            Body::AckRequest { next_seq, members } => {
                if let Some(r) = sender_of!(Some(next_seq)) {
                    r.on_claim(now, next_seq, None, &mut sink);
                    r.learned_position(now);
                }
                if (members.is_empty() || members.contains(&self.cfg.stream))
                    && (self.members.ack_wanted.len() < self.cfg.max_streams
                        || self.members.ack_wanted.contains_key(&from))
                {
                    // The lowest request outstanding: a retry asking for
                    // more must not starve the answer to the first.
                    let want = self.members.ack_wanted.entry(from).or_insert(next_seq);
                    *want = (*want).min(next_seq);
                }
            }
            Body::Report { positions, .. } => {
                sender_of!(None);
                report = Some(positions);
            }
        }
        if let Some(positions) = report {
            self.on_report(now, from, &positions);
        }
        if not_gone {
            // The member a (forged) Goodbye marked as left is live.
            self.members.back(now, from);
        }
        self.after_resets(resets_before);
        self.check_acks(now);
        self.schedule(from);
        if let Some(target) = nak_target {
            self.schedule(target);
        }
        self.retire_if_finished(from);
    }

    /// A datagram of a node that never publishes: its `Hello` is answered
    /// and its `Nak`s served or overheard, but its stream is not followed
    /// (it has nothing to lose, so its silence costs no `Reset`).
    fn handle_receive_only(
        &mut self,
        now: Instant,
        from: u64,
        addr: Option<SocketAddr>,
        body: Body,
    ) {
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
                        .on_nak(now, &ranges, addr, sink.out, sink.stats, &mut self.timers);
                } else if let Some(r) = self.streams.get_mut(&stream) {
                    r.on_overheard_nak(now, &ranges, &mut sink);
                }
                self.schedule(stream);
            }
            Body::Heartbeat { .. } => self.stats.receive_only_heard += 1,
            Body::Report { positions, .. } => self.on_report(now, from, &positions),
            Body::Goodbye { .. } => {
                self.stats.receive_only_heard += 1;
                tracing::debug!(
                    stream = format_args!("{from:016x}"),
                    "receive-only node left (Goodbye)"
                );
            }
            // Events or repairs from a node that says it never publishes:
            // malformed (or forged), never trusted.
            Body::Data { .. }
            | Body::Repair { .. }
            | Body::Unavailable { .. }
            | Body::AckRequest { .. } => {
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
        let mut ending = Vec::new();
        for r in self.streams.values_mut() {
            r.cover_gaps(&mut sink);
            if r.is_finished(self.last_now) {
                finished.push(r.stream());
            } else if r.ending().is_some() {
                ending.push(r.stream());
            }
        }
        // A stream that said Goodbye and waits no more for gaps retires
        // when its Goodbye has stood long enough.
        for s in ending {
            self.schedule(s);
        }
        // A stream that said Goodbye and only waited for these gaps is done.
        for s in finished {
            self.retire_if_finished(s);
        }
    }

    fn retire_if_finished(&mut self, stream: u64) {
        if !(self.streams.get(&stream)).is_some_and(|r| r.is_finished(self.last_now)) {
            return;
        }
        let Some(r) = self.streams.remove(&stream) else {
            return;
        };
        // Still reported for a while: a member that missed the whole stream
        // (cut off meanwhile) learns of it.
        self.members.reported.remove(&stream);
        self.members.ended.push_back((
            Position {
                stream,
                delivered: r.next_expected(),
                reset_end: r.reset_end(),
                idle_ms: 0,
            },
            r.last_heard(),
        ));
        while self.members.ended.len() > self.cfg.max_ended {
            self.members.ended.pop_front();
        }
        tracing::debug!(
            stream = format_args!("{stream:016x}"),
            "stream ended (Goodbye)"
        );
        self.stats.streams_ended += 1;
        self.stats.streams = self.streams.len() as u64;
        self.retired += 1;
        self.ended.push_back((stream, self.retired));
        self.ended_set.insert(
            stream,
            Ended {
                number: self.retired,
                trusted_end: r.trusted_end(),
                given_low: r.given_low(),
                known_end: r.known_end(),
                goodbye: r.ending().unwrap_or(r.known_end()),
            },
        );
        while self.ended.len() > self.cfg.max_ended {
            if let Some((old, n)) = self.ended.pop_front() {
                if self.ended_set.get(&old).is_some_and(|e| e.number == n) {
                    self.ended_set.remove(&old);
                }
            }
        }
    }

    /// A datagram of a stream that said `Goodbye` and was retired: if its
    /// events or heartbeats go on past what this node had of it, the
    /// `Goodbye` was forged (or it would not speak on): the stream is
    /// followed again from where this node had it, so that what it sent
    /// since is delivered, and what it lost asked for.
    fn reopen_if_alive(&mut self, now: Instant, from: u64, body: &Body) {
        let Some(e) = self.ended_set.get(&from).copied() else {
            return;
        };
        // Past `trusted_end` events are news. A heartbeat at all: a stream
        // that said Goodbye sends none, and the Goodbye stood (unanswered)
        // for longer than any reordering before the stream was retired, so
        // it was forged; what this node knew of the stream then may rest
        // on forged datagrams too, so it follows the stream again from its
        // heartbeat, or from its lowest give-up if lower. The stream's own
        // Goodbye or AckRequest, repeated while it lingers, only when it
        // claims more than this node knew.
        let mut from_seq = e.trusted_end;
        let (alive, ending) = match body {
            Body::Data { first_seq, events } | Body::Repair { first_seq, events } => {
                let top = first_seq + events.len() as u64;
                (top > e.trusted_end, (top <= e.goodbye).then_some(e.goodbye))
            }
            Body::Heartbeat { next_seq, .. } => {
                from_seq = (e.trusted_end.min(*next_seq)).min(e.given_low.unwrap_or(u64::MAX));
                (true, None)
            }
            Body::Goodbye { next_seq } => (*next_seq > e.known_end, Some(*next_seq)),
            Body::AckRequest { next_seq, .. } => (
                *next_seq > e.known_end,
                (*next_seq <= e.goodbye).then_some(e.goodbye),
            ),
            _ => (false, None),
        };
        if !alive {
            return;
        }
        self.ended_set.remove(&from);
        self.members.ended.retain(|(p, _)| p.stream != from);
        if ending.is_none() {
            self.members.back(now, from);
        }
        self.stats.streams_reopened += 1;
        self.stats.position_contradicted += 1;
        tracing::debug!(
            stream = format_args!("{from:016x}"),
            from_seq,
            "a stream that said Goodbye goes on: followed again"
        );
        let mut r = StreamReceiver::new(from, Some(from_seq), now);
        if let Some(g) = ending {
            r.set_ending(now, g, &self.cfg);
        }
        if let Some(name) = self.members.name(from) {
            r.set_node(&name);
        }
        if self.streams.len() >= self.cfg.max_streams {
            let mut sink = sink!(self);
            evict_one(&mut self.streams, &mut self.evicted, &mut sink);
        }
        self.streams.insert(from, r);
        self.stats.streams = self.streams.len() as u64;
    }

    /// Acts on everything due at `now`: hellos, heartbeats, gaps, timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        self.membership_timeout(now);
        // A held (paced, or coalescing) datagram may go on the next
        // poll_transmit.
        self.timers.take_due(Timer::Pace, now);
        self.timers.take_due(Timer::Coalesce, now);
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
                if r.is_finished(now) {
                    finished.push(stream);
                }
            }
        }
        if self.timers.is_due(Timer::Sweep, now) {
            self.timers
                .set(Timer::Sweep, now + self.cfg.stream_timeout / 20);
            self.auth.sweep(now);
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
                    // The Reset covers everything the stream sent so far.
                    self.timed_out.insert(s, r.known_end());
                    self.timed_out_order.push_back(s);
                    self.members.reported.remove(&s);
                    while self.timed_out_order.len() > self.cfg.max_ended {
                        if let Some(old) = self.timed_out_order.pop_front() {
                            self.timed_out.remove(&old);
                        }
                    }
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
        self.check_acks(now);
    }

    /// A member's `Report`: its positions update the view (and this
    /// node's confirmations and ring); a stream it reports further on than
    /// this node knows, or that this node never heard, is a gap to repair
    /// from the stream's origin (a `Reset` if the origin is gone).
    fn on_report(&mut self, now: Instant, from: u64, positions: &[Position]) {
        self.stats.reports_received += 1;
        let me = self.cfg.stream;
        if self
            .members
            .report(now, from, positions, me, self.cfg.max_streams)
        {
            self.stabilize();
            self.members.finish(now);
        }
        let in_sync = now < self.sync_until;
        let mut touched = Vec::new();
        // New streams learned per report: a bogus report costs at most
        // this many gaps (and their Resets).
        let mut learn_left = 16;
        let mut sink = sink!(self);
        for p in positions {
            if p.stream == me || self.ended_set.contains_key(&p.stream) {
                continue;
            }
            match self.streams.get_mut(&p.stream) {
                Some(r) => {
                    if p.delivered > r.known_end() && r.is_placed() {
                        sink.stats.positions_learned += 1;
                        r.on_position(now, p.delivered, None, &mut sink);
                        touched.push(p.stream);
                    }
                }
                None => {
                    let covered = self.timed_out.get(&p.stream).copied();
                    // Last heard by the member before this node joined: it
                    // holds nothing this node needs (it ended before, or it
                    // is idle and its next heartbeat will place it).
                    let heard = now.checked_sub(Duration::from_millis(p.idle_ms));
                    let joined = self.sync_until.checked_sub(self.cfg.sync_window);
                    if covered.is_some_and(|c| p.delivered <= c)
                        || self.streams.len() >= self.cfg.max_streams
                        || heard.zip(joined).is_none_or(|(h, j)| h < j)
                    {
                        continue;
                    }
                    // Never heard (or not since its Reset): followed from
                    // where nothing is known to be covered. During the
                    // sync window nothing before the join matters.
                    let start = if in_sync {
                        p.delivered
                    } else {
                        covered.unwrap_or(1)
                    };
                    // Nothing missing (an empty stream, or all covered).
                    if !in_sync && p.delivered <= start || learn_left == 0 {
                        continue;
                    }
                    learn_left -= 1;
                    tracing::debug!(
                        stream = format_args!("{:016x}", p.stream),
                        from = format_args!("{from:016x}"),
                        delivered = p.delivered,
                        "stream learned from a member's report"
                    );
                    let mut r = StreamReceiver::new(p.stream, Some(start), now);
                    if let Some(name) = self.members.name(p.stream) {
                        r.set_node(&name);
                    }
                    r.on_position(now, p.delivered, None, &mut sink);
                    sink.stats.streams_learned += 1;
                    self.streams.insert(p.stream, r);
                    sink.stats.streams = self.streams.len() as u64;
                    touched.push(p.stream);
                }
            }
        }
        for s in touched {
            self.schedule(s);
        }
    }

    /// Stability: drops from the ring what every live member has.
    fn stabilize(&mut self) {
        if !self.cfg.stability {
            return;
        }
        if let Some(p) = self.members.stable(self.cfg.stream) {
            // Only what is also older than a joiner's sync and two idle
            // heartbeats: a node that meets the stream late (after its
            // sync window, or after an eviction) follows it from seq 1 and
            // is repaired rather than Reset.
            let age = self.cfg.heartbeat_idle * 2 + self.cfg.sync_window;
            let Some(before) = self.last_now.checked_sub(age) else {
                return;
            };
            self.stats.ring_trimmed += self.sender.trim_below(p, before) as u64;
        }
    }

    /// Acknowledgements owed whose streams are now delivered far enough
    /// become ready; they go out after a random delay, together.
    fn check_acks(&mut self, now: Instant) {
        if self.members.ack_wanted.is_empty() {
            return;
        }
        let streams = &self.streams;
        let ended = &self.members.ended;
        let mut ready = Vec::new();
        self.members.ack_wanted.retain(|s, want| {
            let have = match streams.get(s) {
                Some(r) => r.next_expected(),
                None => match ended.iter().find(|(p, _)| p.stream == *s) {
                    Some((p, _)) => p.delivered,
                    // Neither followed nor ended here (timed out, evicted):
                    // nothing to answer; the requester asks again.
                    None => return false,
                },
            };
            if have >= *want {
                ready.push(*s);
                false
            } else {
                true
            }
        });
        if ready.is_empty() {
            return;
        }
        for s in ready {
            if !self.members.ack_ready.contains(&s) {
                self.members.ack_ready.push(s);
            }
        }
        if self.timers.get(Timer::Ack).is_none() {
            let max = self.cfg.ack_delay.as_micros() as u64;
            let delay = if max == 0 {
                0
            } else {
                self.member_rng.gen_range(0..=max)
            };
            self.timers
                .set(Timer::Ack, now + Duration::from_micros(delay));
        }
    }

    /// This node's position in `stream`, if it follows it (or did until
    /// its `Goodbye`).
    fn position_of(&self, stream: u64) -> Option<Position> {
        match self.streams.get(&stream) {
            Some(r) => Some(Position {
                stream,
                delivered: r.next_expected(),
                reset_end: r.reset_end(),
                idle_ms: self
                    .last_now
                    .saturating_duration_since(r.last_heard())
                    .as_millis() as u64,
            }),
            None => self
                .members
                .ended
                .iter()
                .find(|(p, _)| p.stream == stream)
                .map(|(p, at)| Position {
                    idle_ms: self.last_now.saturating_duration_since(*at).as_millis() as u64,
                    ..*p
                }),
        }
    }

    /// Queues a `Report`: the acknowledgements owed, then what changed
    /// since the last report, then (periodic ones) streams that ended
    /// lately and a few unchanged positions in turn; at most what fits one
    /// datagram. Nothing when there is nothing to say.
    fn send_report(&mut self, periodic: bool) {
        // A position encodes to at most 46 bytes (stream, delivered,
        // reset_end, idle_ms, each a varint of at most 9); besides, the
        // header, the tag, the name and the count.
        let keys = self.report_keys();
        let room = self
            .cfg
            .body_limit()
            .saturating_sub(40 + wire::MAX_NODE_NAME + 10 + 1 + 5 * keys.len());
        let cap = (room / 46).clamp(1, wire::MAX_POSITIONS);
        let mut positions: Vec<Position> = Vec::new();
        let mut seen = HashSet::new();
        let acks = std::mem::take(&mut self.members.ack_ready);
        for s in acks {
            if positions.len() < cap && seen.insert(s) {
                if let Some(p) = self.position_of(s) {
                    positions.push(p);
                }
            } else if positions.len() >= cap {
                // The rest go in the next report, soon.
                self.members.ack_ready.push(s);
            }
        }
        let mut ids: Vec<u64> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        for &s in &ids {
            if positions.len() >= cap {
                break;
            }
            let r = &self.streams[&s];
            if !r.is_placed() {
                continue;
            }
            if self.members.reported.get(&s) != Some(&r.next_expected()) && seen.insert(s) {
                positions.extend(self.position_of(s));
            }
        }
        if periodic {
            // Streams that ended lately, in turn (at most half a report).
            let n = self.members.ended.len();
            let take = n.min(cap.saturating_sub(positions.len()).div_ceil(2));
            for i in 0..take {
                let at = (self.members.ended_from + i) % n;
                let (p, heard) = self.members.ended[at];
                if seen.insert(p.stream) {
                    positions.push(Position {
                        idle_ms: self.last_now.saturating_duration_since(heard).as_millis() as u64,
                        ..p
                    });
                }
            }
            if n > 0 {
                self.members.ended_from = (self.members.ended_from + take) % n;
            }
            // A few unchanged positions, in turn, so that every member
            // eventually hears every position, lost reports included.
            let from = self.members.refresh_from;
            let mut added = 0;
            let order = ids
                .iter()
                .filter(|s| **s > from)
                .chain(ids.iter().filter(|s| **s <= from));
            for &s in order {
                if added >= REFRESH || positions.len() >= cap {
                    break;
                }
                if self.streams[&s].is_placed() && seen.insert(s) {
                    positions.extend(self.position_of(s));
                    self.members.refresh_from = s;
                    added += 1;
                }
            }
        }
        if positions.is_empty() {
            return;
        }
        for p in &positions {
            if self.streams.contains_key(&p.stream) {
                self.members.reported.insert(p.stream, p.delivered);
            }
        }
        self.stats.reports_sent += 1;
        self.out.push_back(Body::Report {
            node: self.cfg.node_name.clone(),
            positions,
            keys,
        });
    }

    /// The key ids a `Report` carries: every key held, the sending one
    /// first; none when this node does not use keys.
    fn report_keys(&self) -> Vec<u32> {
        if self.auth.mode() == AuthMode::Off {
            Vec::new()
        } else {
            self.auth.keyring().ids()
        }
    }

    /// Replaces the keys (a reload: the node stays in the group, its
    /// stream and transmit counter go on). The mode stays what it was; a
    /// keyring without a sending key is refused unless the mode is off.
    /// Members learn the new key ids from the next `Report`.
    pub fn set_keyring(&mut self, keyring: wire::Keyring) -> Result<(), ConfigError> {
        self.auth
            .set_keyring(keyring)
            .map_err(|problem| ConfigError::new("auth", problem))?;
        // Tell the members soon, not at the next periodic report only.
        let soon = self.last_now + self.cfg.report_interval / 8;
        if self.timers.get(Timer::Report).is_none_or(|t| t > soon) {
            self.timers.set(Timer::Report, soon);
        }
        Ok(())
    }

    /// The key ids this node holds, the sending one first (empty without
    /// keys).
    pub fn key_ids(&self) -> Vec<u32> {
        self.report_keys()
    }

    /// Corrects this node's clock (ms since the Unix epoch) at `now`: it
    /// stamps the trailers and judges new streams' freshness with it.
    pub fn set_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.auth.set_wall_clock(now, unix_ms);
    }

    /// Replay windows held: one per authenticated stream heard lately,
    /// and a second for a stream that also sent this node directed repairs.
    pub fn replay_windows(&self) -> usize {
        self.auth.windows()
    }

    /// Reports, acknowledgements, confirmations and leases that are due.
    fn membership_timeout(&mut self, now: Instant) {
        if self.timers.take_due(Timer::Ack, now) {
            self.send_report(false);
        }
        if self.timers.is_due(Timer::Report, now) {
            let next = jitter(&mut self.member_rng, self.cfg.report_interval);
            self.timers.set(Timer::Report, now + next);
            let keep = self.cfg.stream_timeout * ENDED_KEPT;
            self.members.ended.retain(|(_, at)| *at + keep > now);
            let streams = &self.streams;
            self.members.reported.retain(|s, _| streams.contains_key(s));
            self.send_report(true);
        }
        if self.timers.is_due(Timer::Members, now) {
            self.timers.set(Timer::Members, now + self.cfg.lease / 4);
            self.members
                .tick(now, self.cfg.lease, self.cfg.member_forget);
            self.learned.set_members(self.members.known());
            self.stabilize();
        }
        if self.timers.is_due(Timer::Confirm, now) {
            self.members.finish(now);
            if self.next_ask.is_some_and(|t| t <= now) {
                self.ask(now);
            }
            self.arm_confirm();
        }
    }

    /// Queues an `AckRequest` for what the confirmations wait for, naming
    /// the members that have not answered (every member, if too many).
    fn ask(&mut self, now: Instant) {
        let waiting = self.members.unanswered();
        if waiting.is_empty() {
            self.next_ask = None;
            return;
        }
        let members = if waiting.len() <= wire::MAX_ACK_MEMBERS && self.members.ask_tries > 0 {
            waiting
        } else {
            Vec::new()
        };
        self.stats.ack_requests_sent += 1;
        self.out.push_back(Body::AckRequest {
            next_seq: self.sender.sent_end().max(1),
            members,
        });
        let exp = self.members.ask_tries.min(4);
        self.members.ask_tries += 1;
        self.next_ask = Some(now + self.cfg.ack_retry * (1u32 << exp));
    }

    /// Sets the confirmation timer: the next ask or deadline.
    fn arm_confirm(&mut self) {
        if !self.members.confirming() {
            self.next_ask = None;
            self.timers.stop(Timer::Confirm);
            return;
        }
        let at = match (self.next_ask, self.members.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match at {
            Some(t) => self.timers.set(Timer::Confirm, t),
            None => self.timers.stop(Timer::Confirm),
        }
    }

    /// Awaits confirmation of `seqs` of this node's stream (a publish's
    /// [`Receipt`](crate::Receipt)): every member live now must deliver
    /// them (or a `Reset` after them), or leave, or die, by `deadline`.
    /// Sends what is published at once, then an `AckRequest`. The outcome
    /// comes from [`NodeCore::poll_confirmation`] with the returned id.
    pub fn confirm(&mut self, now: Instant, seqs: Range<u64>, deadline: Instant) -> u64 {
        self.last_now = now;
        if self.sender.has_batch() {
            let queued = self.out.len();
            self.sender.flush(now, &mut self.out, &mut self.timers);
            self.deliver_own(queued);
        }
        let id = self.members.confirm(now, seqs, deadline, self.cfg.stream);
        if self.members.confirming() {
            self.members.ask_tries = 0;
            self.ask(now);
        }
        self.arm_confirm();
        id
    }

    /// The outcome of a confirmation started by [`NodeCore::confirm`], once
    /// it is known. Call after every input.
    pub fn poll_confirmation(&mut self) -> Option<(u64, ConfirmReport)> {
        let (id, mut report) = self.members.poll_done()?;
        report.stream = self.cfg.stream;
        if report.is_complete() {
            self.stats.confirmations_complete += 1;
        } else {
            self.stats.confirmations_incomplete += 1;
        }
        if !self.members.confirming() {
            self.next_ask = None;
            self.timers.stop(Timer::Confirm);
        }
        Some((id, report))
    }

    /// The membership view at `now`: this node first, then every member
    /// heard (live, left or dead), in stream order.
    pub fn members(&self, now: Instant) -> Vec<Member> {
        let me = self.cfg.stream;
        let end_of = |s: u64| {
            if s == me {
                Some(self.sender.sent_end())
            } else {
                self.streams.get(&s).map(|r| r.known_end())
            }
        };
        let name_of = |s: u64| {
            if s == me {
                return Some(self.cfg.node_name.clone());
            }
            self.streams
                .get(&s)
                .and_then(|r| r.node().map(|n| n.to_string()))
                .or_else(|| self.members.name(s).map(|n| n.to_string()))
        };
        let mut own: Vec<MemberStream> = self
            .streams
            .values()
            .map(|r| MemberStream {
                stream: r.stream(),
                node: name_of(r.stream()),
                delivered: r.next_expected(),
                lag: r.known_end() - r.next_expected(),
                reset_end: r.reset_end(),
                reported: Duration::ZERO,
                staleness: Some(r.staleness(now)),
            })
            .collect();
        own.sort_by_key(|m| m.stream);
        let mut v = vec![Member {
            stream: me,
            name: Some(self.cfg.node_name.clone()),
            addr: None,
            this_node: true,
            receive_only: self.cfg.receive_only,
            state: if self.sender.is_closed() {
                Liveness::Left
            } else {
                Liveness::Live
            },
            last_heard: Duration::ZERO,
            streams: own,
            keys: self.report_keys(),
            sends_with: self.report_keys().first().copied(),
        }];
        v.extend(
            self.members
                .view(now, end_of, name_of)
                .into_iter()
                .filter(|m| m.stream != me),
        );
        v
    }

    /// The staleness bound at `now`: per stream followed, the time since
    /// this node last had proof of holding everything it had sent; while
    /// the node is cut off, at least the time since any member was heard.
    pub fn staleness(&self, now: Instant) -> Staleness {
        let mut streams: Vec<StreamStaleness> = self
            .streams
            .values()
            .map(|r| StreamStaleness {
                stream: r.stream(),
                node: r.node().map(|n| n.to_string()),
                staleness: r.staleness(now),
            })
            .collect();
        streams.sort_by_key(|s| s.stream);
        let mut worst = streams
            .iter()
            .map(|s| s.staleness)
            .max()
            .unwrap_or_default();
        let isolated = self.members.isolated_since.is_some();
        if isolated {
            if let Some(at) = self.members.last_heard_any {
                worst = worst.max(now.saturating_duration_since(at));
            }
        }
        Staleness {
            worst,
            isolated,
            streams,
        }
    }

    /// Turns coalescing off (`Duration::ZERO`) or sets its wait (see
    /// [`CoreConfig::coalesce`]; at most 500 µs): a driver whose timers
    /// cannot wait that finely turns it off.
    pub fn set_coalesce(&mut self, coalesce: Duration) {
        self.sender.set_coalesce(coalesce);
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
    /// call are batched into as few datagrams as fit. While `Data` goes out
    /// less than [`CoreConfig::coalesce`] apart, a datagram that is not full
    /// is held (false is returned with events unsent) until the instant
    /// [`NodeCore::poll_timeout`] then gives: call
    /// [`NodeCore::handle_timeout`] then, and this again.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        if self.out.is_empty() && self.sender.has_batch() {
            // At a high rate, a datagram that is not full waits a little
            // for more events (full ones were sealed as they filled).
            if let Some(until) = self.sender.hold_until(now) {
                self.timers.set(Timer::Coalesce, until);
                return false;
            }
            self.sender.flush(now, &mut self.out, &mut self.timers);
            self.deliver_own(0);
        }
        let Some(body) = self.out.front() else {
            return false;
        };
        wire::encode(&self.header, body, buf);
        self.transmit_nak = matches!(body, Body::Nak { .. });
        self.transmit_to = match body {
            Body::Nak { stream, .. } => self.members.addr_of(*stream),
            Body::Repair { .. } => self.sender.take_repair_to(),
            _ => None,
        };
        let events_sent = match body {
            Body::Data { events, .. } => Some(events.len()),
            _ => None,
        };
        if let Some(events) = events_sent {
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
            self.sender.data_sent(now);
            self.stats.data_sent += 1;
            self.stats.events_sent += events as u64;
        }
        if matches!(body, Body::Goodbye { .. }) {
            self.sender.goodbye_sent(now);
        }
        // On a multicast group, a repair for one node alone travels apart
        // from the group's datagrams (to its direct socket): counted apart,
        // so that the group's cannot push it out of the receiver's replay
        // window. Unicast sends everything on one socket, in one count.
        // (`overheard` is set by `set_directed_multicast` alone: a group
        // with direct sockets.)
        let directed = self.sender.overheard
            && self.transmit_to.is_some()
            && matches!(body, Body::Repair { .. });
        self.auth
            .seal(now, buf, self.header_len, self.cfg.stream, directed);
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
/// we never saw is a gap to repair. `claim`: `pos` is the stream's claim of
/// its position, not an event's seq (see [`StreamReceiver::place`]). `None`
/// for a stream that already said `Goodbye`.
// The node's fields, borrowed apart (the caller holds other fields too).
#[allow(clippy::too_many_arguments)]
fn receiver_for<'a>(
    streams: &'a mut HashMap<u64, StreamReceiver>,
    evicted: &mut Evicted,
    ended: &HashMap<u64, Ended>,
    sink: &mut Sink<'_>,
    now: Instant,
    sync_until: Instant,
    stream: u64,
    pos: Option<u64>,
    claim: bool,
) -> Option<&'a mut StreamReceiver> {
    if ended.contains_key(&stream) {
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
        r.place(now, pos, in_sync, claim);
    }
    Some(r)
}

/// What a node keeps of a stream it retired after its `Goodbye`.
#[derive(Debug, Clone, Copy)]
struct Ended {
    /// Which retirement (see `NodeCore::ended`).
    number: u64,
    /// Everything below it was delivered, or given up with a `Reset` that
    /// covers it: where to follow the stream from again.
    trusted_end: u64,
    /// One past the highest seq known to exist then.
    known_end: u64,
    /// The lowest seq given up with a `Reset`, if any (everything below it
    /// was delivered).
    given_low: Option<u64>,
    /// The `Goodbye`'s `next_seq`.
    goodbye: u64,
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

/// `base` jittered by ±25 %, so that periodic reports spread out.
fn jitter(rng: &mut SmallRng, base: Duration) -> Duration {
    let us = base.as_micros() as u64;
    let quarter = us / 4;
    Duration::from_micros(us - quarter + rng.gen_range(0..=quarter * 2))
}
