//! A deterministic network simulator for the sans-IO core: N nodes on one
//! multicast group, virtual time, seeded faults per link (loss, bursty
//! Gilbert-Elliott loss, duplication, delay and reordering, partitions),
//! crashes and restarts; plus the no-silent-loss checker.
//!
//! Everything is driven from one seeded RNG, so a run is reproducible from
//! its seed. Time only moves when the simulator jumps to the next datagram
//! arrival or node wake-up, so simulated seconds cost microseconds. Every
//! run loop is bounded: a livelock (a node that wants to be woken at the
//! same instant forever, or a step budget exhausted) panics with context.
//!
//! Used by the crate's own tests; public so that users can test their
//! configuration the same way.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::proto::{CoreConfig, Delivery, NodeCore};
use crate::wire::{self, Body, Event};

/// Index of a node in the simulation (stable across restarts).
pub type NodeId = usize;

/// Faults applied to datagrams on one link (sender → receiver).
#[derive(Debug, Clone, Default)]
pub struct LinkFaults {
    /// Independent loss probability.
    pub loss: f64,
    /// Bursty loss, on top of `loss`.
    pub burst: Option<GilbertElliott>,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Base one-way delay.
    pub delay: Duration,
    /// Extra uniformly random delay in `0..=jitter` (reorders datagrams).
    pub jitter: Duration,
    /// Drop everything.
    pub partitioned: bool,
}

/// Two-state bursty loss model: in the good state datagrams pass, in the
/// bad state they are lost with probability `loss_bad`.
#[derive(Debug, Clone, Copy)]
pub struct GilbertElliott {
    /// Probability of going good → bad per datagram.
    pub p_good_to_bad: f64,
    /// Probability of going bad → good per datagram.
    pub p_bad_to_good: f64,
    /// Loss probability in the bad state.
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// A model with average loss `avg` and mean burst length `burst`
    /// datagrams (total loss in the bad state).
    pub fn with_average(avg: f64, burst: f64) -> Self {
        let p_bg = 1.0 / burst.max(1.0);
        // Stationary P(bad) = p_gb / (p_gb + p_bg) = avg.
        let p_gb = avg * p_bg / (1.0 - avg).max(1e-9);
        GilbertElliott {
            p_good_to_bad: p_gb.min(1.0),
            p_bad_to_good: p_bg,
            loss_bad: 1.0,
        }
    }
}

/// A datagram in flight, as a drop filter sees it.
pub struct InFlight<'a> {
    /// Sending node.
    pub from: NodeId,
    /// Receiving node.
    pub to: NodeId,
    /// The decoded datagram.
    pub datagram: &'a wire::Datagram,
}

type DropFilter = Box<dyn FnMut(&InFlight<'_>) -> bool>;

/// One simulated node and everything it did.
pub struct SimNode {
    /// The node's name (kept across restarts).
    pub name: String,
    core: Option<NodeCore>,
    /// Every incarnation (life) of the node.
    pub incarnations: Vec<Incarnation>,
    /// Every delivery with its time.
    pub deliveries: Vec<(Instant, Delivery)>,
    config: CoreConfig,
}

/// One life of a node, from join to crash, close or the end of the run.
#[derive(Debug, Clone)]
pub struct Incarnation {
    /// The stream id of this life.
    pub stream: u64,
    /// When the node joined.
    pub joined: Instant,
    /// When its join returned (end of the sync window).
    pub synced: Instant,
    /// When it crashed; `None` while alive (a clean close is `closed`).
    pub ended: Option<Instant>,
    /// Index into `deliveries` where this life's deliveries start.
    pub first_delivery: usize,
    /// Streams this life received datagrams of, with the last time.
    pub heard: HashMap<u64, Instant>,
    /// When it said `Goodbye` (it may linger after).
    pub closed: Option<Instant>,
}

/// An event some node published.
#[derive(Debug, Clone)]
pub struct Published {
    /// Publishing node.
    pub node: NodeId,
    /// Its stream at the time.
    pub stream: u64,
    /// The event's seq.
    pub seq: u64,
    /// When it was handed to the network.
    pub at: Instant,
}

struct Arrival {
    at: Instant,
    order: u64,
    to: NodeId,
    /// The sending stream, from the header (0 if it did not decode).
    stream: u64,
    bytes: Rc<[u8]>,
}

impl PartialEq for Arrival {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Arrival {}
impl PartialOrd for Arrival {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Arrival {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

/// The simulated network and its nodes.
pub struct Sim {
    start: Instant,
    now: Instant,
    rng: SmallRng,
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Reverse<Arrival>>,
    order: u64,
    /// Faults of every link without its own entry.
    pub default_link: LinkFaults,
    links: HashMap<(NodeId, NodeId), LinkFaults>,
    burst_bad: HashMap<(NodeId, NodeId), bool>,
    drop_filter: Option<DropFilter>,
    /// Each node's next wake-up, indexed so that finding the next event
    /// does not poll every node.
    timers: BTreeSet<(Instant, NodeId)>,
    timer_of: Vec<Option<Instant>>,
    /// Every event published, in order.
    pub published: Vec<Published>,
    /// Datagrams lost by the network (faults, partitions, filter), one per
    /// receiver that missed it.
    pub lost: u64,
    /// Of those, `Data` datagrams (the losses repair is for).
    pub lost_data: u64,
    /// Datagrams put on the network (one per receiver).
    pub sent: u64,
    buf: Vec<u8>,
    steps: u64,
    /// A run fails (panics) after this many steps in total.
    pub max_steps: u64,
}

impl Sim {
    /// An empty network; everything random derives from `seed`.
    pub fn new(seed: u64) -> Self {
        let start = Instant::now();
        Sim {
            start,
            now: start,
            rng: SmallRng::seed_from_u64(seed),
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            order: 0,
            default_link: LinkFaults {
                delay: Duration::from_micros(100),
                ..LinkFaults::default()
            },
            links: HashMap::new(),
            burst_bad: HashMap::new(),
            drop_filter: None,
            timers: BTreeSet::new(),
            timer_of: Vec::new(),
            published: Vec::new(),
            lost: 0,
            lost_data: 0,
            sent: 0,
            buf: Vec::with_capacity(2048),
            steps: 0,
            max_steps: 50_000_000,
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Adds a node that joins now, with `config` (its stream id and seed are
    /// drawn from the simulation's RNG).
    pub fn add_node(&mut self, name: &str, config: CoreConfig) -> NodeId {
        let id = self.nodes.len();
        self.nodes.push(SimNode {
            name: name.to_string(),
            core: None,
            incarnations: Vec::new(),
            deliveries: Vec::new(),
            config,
        });
        self.timer_of.push(None);
        self.start_node(id);
        id
    }

    /// Adds `n` nodes named `{prefix}{i}` with the default configuration.
    pub fn add_nodes(&mut self, prefix: &str, n: usize) -> Vec<NodeId> {
        (0..n)
            .map(|i| self.add_node(&format!("{prefix}{i}"), CoreConfig::default()))
            .collect()
    }

    fn start_node(&mut self, id: NodeId) {
        let mut cfg = self.nodes[id].config.clone();
        cfg.stream = self.rng.gen_range(1..u64::MAX);
        cfg.seed = self.rng.gen();
        cfg.node_name = self.nodes[id].name.clone();
        let core = NodeCore::new(cfg, self.now).expect("valid simulated node config");
        let node = &mut self.nodes[id];
        node.incarnations.push(Incarnation {
            stream: core.stream(),
            joined: self.now,
            synced: core.sync_deadline(),
            ended: None,
            first_delivery: node.deliveries.len(),
            heard: HashMap::new(),
            closed: None,
        });
        node.core = Some(core);
        self.pump(id);
    }

    /// A node's current protocol state (`None` while crashed).
    pub fn core(&self, id: NodeId) -> Option<&NodeCore> {
        self.nodes[id].core.as_ref()
    }

    /// A node and its record.
    pub fn node(&self, id: NodeId) -> &SimNode {
        &self.nodes[id]
    }

    /// All nodes.
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    /// Events delivered by `id` (all incarnations), as (stream, seq).
    pub fn delivered_events(&self, id: NodeId) -> Vec<(u64, u64)> {
        self.nodes[id]
            .deliveries
            .iter()
            .filter_map(|(_, d)| match d {
                Delivery::Event { stream, seq, .. } => Some((*stream, *seq)),
                Delivery::Reset { .. } => None,
            })
            .collect()
    }

    /// Resets delivered by `id` (all incarnations).
    pub fn resets(&self, id: NodeId) -> Vec<(Instant, crate::proto::ResetReason)> {
        self.nodes[id]
            .deliveries
            .iter()
            .filter_map(|(t, d)| match d {
                Delivery::Reset { reason } => Some((*t, reason.clone())),
                Delivery::Event { .. } => None,
            })
            .collect()
    }

    /// Sets the faults of the link `from → to`.
    pub fn set_link(&mut self, from: NodeId, to: NodeId, faults: LinkFaults) {
        self.links.insert((from, to), faults);
    }

    /// Cuts `id` off from every other node (both directions), or heals it.
    pub fn partition(&mut self, id: NodeId, cut: bool) {
        for other in 0..self.nodes.len() {
            if other == id {
                continue;
            }
            for key in [(id, other), (other, id)] {
                let mut f = self
                    .links
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| self.default_link.clone());
                f.partitioned = cut;
                self.links.insert(key, f);
            }
        }
    }

    /// Ends every fault: per-link faults and partitions are removed and the
    /// default link becomes loss-free (same delay). Use it before checking
    /// an eventual property such as [`Sim::check`].
    pub fn heal_all(&mut self) {
        self.links.clear();
        self.burst_bad.clear();
        self.default_link = LinkFaults {
            delay: self.default_link.delay,
            ..LinkFaults::default()
        };
    }

    /// Drops every datagram for which `filter` returns true (a test hook,
    /// applied before the link faults).
    pub fn set_drop_filter(&mut self, filter: impl FnMut(&InFlight<'_>) -> bool + 'static) {
        self.drop_filter = Some(Box::new(filter));
    }

    /// Removes the drop filter.
    pub fn clear_drop_filter(&mut self) {
        self.drop_filter = None;
    }

    /// Publishes `event` on node `id` and sends it. Returns its seq.
    pub fn publish(&mut self, id: NodeId, event: Event) -> u64 {
        let now = self.now;
        let core = self.nodes[id]
            .core
            .as_mut()
            .expect("publish on a live node");
        let seq = core.publish(now, event).expect("publishable event");
        self.published.push(Published {
            node: id,
            stream: core.stream(),
            seq,
            at: now,
        });
        self.pump(id);
        seq
    }

    /// Publishes several events at once (they share datagrams).
    pub fn publish_batch(&mut self, id: NodeId, events: Vec<Event>) -> Vec<u64> {
        let now = self.now;
        let core = self.nodes[id]
            .core
            .as_mut()
            .expect("publish on a live node");
        let stream = core.stream();
        let mut seqs = Vec::with_capacity(events.len());
        for e in events {
            let seq = core.publish(now, e).expect("publishable event");
            seqs.push(seq);
        }
        for &seq in &seqs {
            self.published.push(Published {
                node: id,
                stream,
                seq,
                at: now,
            });
        }
        self.pump(id);
        seqs
    }

    /// Crashes node `id`: it stops without `Goodbye`.
    pub fn crash(&mut self, id: NodeId) {
        self.nodes[id].core = None;
        self.update_timer(id);
        if let Some(inc) = self.nodes[id].incarnations.last_mut() {
            inc.ended.get_or_insert(self.now);
        }
    }

    /// Closes node `id` cleanly (`Goodbye`); it keeps running until crashed
    /// or restarted, so it can still answer.
    pub fn close(&mut self, id: NodeId) {
        let now = self.now;
        if let Some(core) = self.nodes[id].core.as_mut() {
            core.close(now);
            if let Some(life) = self.nodes[id].incarnations.last_mut() {
                life.closed.get_or_insert(now);
            }
        }
        self.pump(id);
    }

    /// Restarts node `id` as a new process: a new stream, a fresh join.
    pub fn restart(&mut self, id: NodeId) {
        self.crash(id);
        self.start_node(id);
    }

    /// Drains node `id`'s outputs: transmits go on the network, deliveries
    /// into its record.
    fn pump(&mut self, id: NodeId) {
        let now = self.now;
        let mut buf = std::mem::take(&mut self.buf);
        while let Some(core) = self.nodes[id].core.as_mut() {
            if !core.poll_transmit(now, &mut buf) {
                break;
            }
            self.multicast(id, &buf);
        }
        let node = &mut self.nodes[id];
        if let Some(core) = node.core.as_mut() {
            while let Some(d) = core.poll_delivery() {
                node.deliveries.push((now, d));
            }
        }
        self.buf = buf;
        self.update_timer(id);
    }

    /// Re-reads node `id`'s next wake-up into the index.
    fn update_timer(&mut self, id: NodeId) {
        let next = self.nodes[id].core.as_ref().and_then(|c| c.poll_timeout());
        if self.timer_of[id] != next {
            if let Some(old) = self.timer_of[id] {
                self.timers.remove(&(old, id));
            }
            if let Some(t) = next {
                self.timers.insert((t, id));
            }
            self.timer_of[id] = next;
        }
    }

    fn multicast(&mut self, from: NodeId, bytes: &[u8]) {
        let bytes: Rc<[u8]> = Rc::from(bytes);
        let decoded = wire::decode(&bytes, self.nodes[from].config.cluster).ok();
        let stream = decoded.as_ref().map_or(0, |d| d.header.stream);
        let is_data = matches!(
            decoded,
            Some(wire::Datagram {
                body: Body::Data { .. },
                ..
            })
        );
        for to in 0..self.nodes.len() {
            if to == from {
                // Multicast loopback: a node hears itself (and ignores it).
                self.enqueue(self.now, to, stream, bytes.clone());
                continue;
            }
            self.sent += 1;
            if let (Some(filter), Some(d)) = (self.drop_filter.as_mut(), decoded.as_ref()) {
                if filter(&InFlight {
                    from,
                    to,
                    datagram: d,
                }) {
                    self.lost += 1;
                    self.lost_data += u64::from(is_data);
                    continue;
                }
            }
            let link = self
                .links
                .get(&(from, to))
                .unwrap_or(&self.default_link)
                .clone();
            if self.lose(&link, from, to) {
                self.lost += 1;
                self.lost_data += u64::from(is_data);
                continue;
            }
            let copies = if self.rng.gen_bool(link.duplicate.clamp(0.0, 1.0)) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let jitter = if link.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    Duration::from_nanos(self.rng.gen_range(0..=link.jitter.as_nanos() as u64))
                };
                self.enqueue(self.now + link.delay + jitter, to, stream, bytes.clone());
            }
        }
    }

    fn lose(&mut self, link: &LinkFaults, from: NodeId, to: NodeId) -> bool {
        if link.partitioned {
            return true;
        }
        if let Some(ge) = link.burst {
            let bad = self.burst_bad.entry((from, to)).or_insert(false);
            let flip = if *bad {
                ge.p_bad_to_good
            } else {
                ge.p_good_to_bad
            };
            if self.rng.gen_bool(flip.clamp(0.0, 1.0)) {
                *bad = !*bad;
            }
            if *bad && self.rng.gen_bool(ge.loss_bad.clamp(0.0, 1.0)) {
                return true;
            }
        }
        link.loss > 0.0 && self.rng.gen_bool(link.loss.clamp(0.0, 1.0))
    }

    fn enqueue(&mut self, at: Instant, to: NodeId, stream: u64, bytes: Rc<[u8]>) {
        self.order += 1;
        self.queue.push(Reverse(Arrival {
            at,
            order: self.order,
            to,
            stream,
            bytes,
        }));
    }

    /// The next instant anything happens: an arrival or a node wake-up.
    fn next_event(&self) -> Option<Instant> {
        let arrival = self.queue.peek().map(|Reverse(a)| a.at);
        let timer = self.timers.first().map(|(t, _)| *t);
        match (arrival, timer) {
            (Some(a), Some(t)) => Some(a.min(t)),
            (a, t) => a.or(t),
        }
    }

    /// Runs everything due up to and including `deadline`, then sets the
    /// clock to `deadline`. Panics on livelock.
    pub fn run_until(&mut self, deadline: Instant) {
        let mut same_instant = 0u32;
        let mut last = self.now;
        while let Some(t) = self.next_event() {
            if t > deadline {
                break;
            }
            self.steps += 1;
            assert!(
                self.steps <= self.max_steps,
                "simulation exceeded {} steps at t={:?}: livelock?",
                self.max_steps,
                self.elapsed()
            );
            let t = t.max(self.now);
            if t != last {
                same_instant = 0;
                last = t;
            }
            self.now = t;
            // Arrivals are finite (each was sent once); a node that wants
            // to be woken at the same instant over and over is a livelock.
            if self.step_at(t) {
                same_instant += 1;
                assert!(
                    same_instant < 100_000,
                    "livelock: 100,000 wake-ups at the same instant t={:?}",
                    self.elapsed()
                );
            }
        }
        self.now = self.now.max(deadline);
    }

    /// Runs until the network is quiet — nothing in flight, no node with an
    /// open gap — and returns the virtual time that took. Panics if that
    /// takes more than `limit` of virtual time (a protocol that never
    /// settles), or on livelock.
    pub fn drive(&mut self, limit: Duration) -> Duration {
        let start = self.now;
        let step = Duration::from_millis(1);
        loop {
            let quiet = self.queue.is_empty()
                && self.nodes.iter().all(|n| {
                    n.core
                        .as_ref()
                        .is_none_or(|c| c.open_gaps() == 0 && !c.has_pending_output())
                });
            if quiet {
                return self.now - start;
            }
            assert!(
                self.now - start <= limit,
                "the network did not settle within {limit:?} (t={:?}): {} datagrams in flight",
                self.elapsed(),
                self.queue.len()
            );
            self.run_for(step);
        }
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// One step at `t`: the next arrival, or else every due wake-up.
    /// Returns true for a wake-up step.
    fn step_at(&mut self, t: Instant) -> bool {
        if self.queue.peek().is_some_and(|Reverse(a)| a.at <= t) {
            let Reverse(a) = self.queue.pop().expect("peeked");
            let node = &mut self.nodes[a.to];
            if let Some(core) = node.core.as_mut() {
                core.handle_datagram(t, &a.bytes);
                if let Some(life) = node.incarnations.last_mut() {
                    life.heard.insert(a.stream, t);
                }
                self.pump(a.to);
            }
            return false;
        }
        // Each due node once per step: one that stays due forever is caught
        // by the livelock check in `run_until`.
        let due: Vec<NodeId> = self
            .timers
            .iter()
            .take_while(|(w, _)| *w <= t)
            .map(|(_, id)| *id)
            .collect();
        for id in due {
            if let Some(core) = self.nodes[id].core.as_mut() {
                core.handle_timeout(t);
            }
            self.pump(id);
        }
        true
    }

    /// Checks the no-silent-loss promise over the whole run; see
    /// [`check_no_silent_loss`].
    pub fn check(&self) -> Result<CheckReport, Box<Violation>> {
        check_no_silent_loss(self)
    }
}

/// What the checker found when the promise held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// (receiver life, event) pairs that had to be delivered or Reset.
    pub expected: u64,
    /// Of those, delivered as events.
    pub delivered: u64,
    /// Of those, covered by a later Reset instead.
    pub covered_by_reset: u64,
}

/// The first event a receiver lost silently.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Receiving node and its life.
    pub receiver: String,
    /// The receiver's stream in that life.
    pub receiver_stream: u64,
    /// Publishing stream and the lost seq.
    pub stream: u64,
    /// The seq lost.
    pub seq: u64,
    /// When it was published (since the start of the run).
    pub published_at: Duration,
    /// The receiver's life: joined, synced, ended (since the start).
    pub life: (Duration, Duration, Option<Duration>),
    /// The receiver's last deliveries from that stream, and its Resets.
    pub log: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "silent loss: receiver {} (stream {:#x}, life {:?}) never delivered seq {} of stream {:#x} \
             published at {:?}, and delivered no Reset after it",
            self.receiver, self.receiver_stream, self.life, self.seq, self.stream, self.published_at
        )?;
        for line in &self.log {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// The promise: for each live node and each event published by another
/// node after that node's join returned, the node delivered the event, or
/// delivered a `Reset` no earlier than the event was published. Lives that
/// ended (crash, restart) are not checked: their caches ended with them.
/// Nor are events of a publisher that crashed without a single datagram of
/// its stream ever reaching the node: no protocol can know of those.
/// Run it after the simulation has settled (every partition healed, and
/// past the stream timeout if nodes crashed).
pub fn check_no_silent_loss(sim: &Sim) -> Result<CheckReport, Box<Violation>> {
    let mut report = CheckReport::default();
    for node in &sim.nodes {
        for (i, life) in node.incarnations.iter().enumerate() {
            // A life that crashed took its cache with it: nothing it could
            // still serve stale. (It may have been partitioned away from an
            // event until its end, with no chance to learn of it.)
            if life.ended.is_some() {
                continue;
            }
            let end = node
                .incarnations
                .get(i + 1)
                .map_or(node.deliveries.len(), |n| n.first_delivery);
            let deliveries = &node.deliveries[life.first_delivery..end];
            let mut got: HashMap<(u64, u64), ()> = HashMap::new();
            let mut last_reset: Option<Instant> = None;
            for (t, d) in deliveries {
                match d {
                    Delivery::Event { stream, seq, .. } => {
                        got.insert((*stream, *seq), ());
                    }
                    Delivery::Reset { .. } => last_reset = Some(*t),
                }
            }
            let timed_out: HashMap<u64, Instant> = deliveries
                .iter()
                .filter_map(|(t, d)| match d {
                    Delivery::Reset {
                        reason: crate::proto::ResetReason::StreamTimedOut { stream, .. },
                    } => Some((*stream, *t)),
                    _ => None,
                })
                .collect();
            for p in &sim.published {
                if p.stream == life.stream || p.at < life.synced {
                    continue;
                }
                // A publisher that is dead (or said Goodbye) and was never heard
                // by this life, or not since this life gave its stream up with
                // a timeout Reset, cannot be known to it by any protocol (cut
                // off from it, then dead): a documented limit.
                let publisher_dead = sim.nodes[p.node]
                    .incarnations
                    .iter()
                    .any(|l| l.stream == p.stream && (l.ended.is_some() || l.closed.is_some()));
                let unseen = match life.heard.get(&p.stream) {
                    None => true,
                    Some(heard) => timed_out.get(&p.stream).is_some_and(|t| heard <= t),
                };
                if publisher_dead && unseen {
                    continue;
                }
                report.expected += 1;
                if got.contains_key(&(p.stream, p.seq)) {
                    report.delivered += 1;
                } else if last_reset.is_some_and(|r| r >= p.at) {
                    report.covered_by_reset += 1;
                } else {
                    let rel = |t: Instant| t - sim.start;
                    let log = deliveries
                        .iter()
                        .filter(|(_, d)| match d {
                            Delivery::Event { stream, .. } => *stream == p.stream,
                            Delivery::Reset { .. } => true,
                        })
                        .rev()
                        .take(20)
                        .map(|(t, d)| format!("{:?}: {d:?}", rel(*t)))
                        .collect();
                    return Err(Box::new(Violation {
                        receiver: node.name.clone(),
                        receiver_stream: life.stream,
                        stream: p.stream,
                        seq: p.seq,
                        published_at: rel(p.at),
                        life: (rel(life.joined), rel(life.synced), life.ended.map(rel)),
                        log,
                    }));
                }
            }
        }
    }
    Ok(report)
}

/// A `Data` datagram's seqs, for drop filters.
pub fn data_seqs(d: &wire::Datagram) -> Option<std::ops::Range<u64>> {
    match &d.body {
        Body::Data { first_seq, events } => Some(*first_seq..*first_seq + events.len() as u64),
        _ => None,
    }
}
