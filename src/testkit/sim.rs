//! The simulator: N protocol cores on one multicast group, in virtual
//! time, with the test kit's faults on every link and every node, crashes
//! and restarts, every delivery in a [`Record`].
//!
//! Everything is driven from one seeded RNG, so a run is reproducible from
//! its seed. Time only moves when the simulator jumps to the next datagram
//! arrival or node wake-up, so simulated seconds cost microseconds. Every
//! run loop is bounded: a livelock (a node that wants to be woken at the
//! same instant forever, or a step budget exhausted) panics with context.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::adversary::{Adversary, Target};
use super::check::{CheckReport, SilentLoss};
use super::faults::{Fate, Faults};
use super::record::{Life, NodeId, Published, Record};
use super::traffic::Traffic;
use crate::proto::{ConfirmReport, CoreConfig, NodeCore, ResetReason};
use crate::wire::{self, Body, BodyTag, Event, Header};

/// The port of every simulated node's address (see [`Sim::addr`]).
pub const SIM_PORT: u16 = 7467;

/// The sender of forged datagrams (no node of the run), as arrivals name it.
const ADVERSARY: NodeId = NodeId::MAX;

/// One simulated node.
struct SimNode {
    name: String,
    core: Option<NodeCore>,
    config: CoreConfig,
    /// Index of its current life in the record.
    life: usize,
    /// Faults of everything it receives (`partitioned`: and sends).
    faults: Faults,
    /// Burst state of `faults`.
    bad: bool,
    /// The outcomes of its current life's confirmations, by id.
    outcomes: HashMap<u64, ConfirmReport>,
    /// What it sent and received.
    traffic: Traffic,
}

/// A datagram on its way to one node.
struct Arrival {
    at: Instant,
    order: u64,
    from: NodeId,
    to: NodeId,
    /// The sending stream, from the header (0 if it did not decode).
    stream: u64,
    /// Its body's kind, if it decoded.
    tag: Option<BodyTag>,
    /// The seqs of its events (`Data` and `Repair`), if it decoded.
    seqs: Option<Range<u64>>,
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
///
/// A datagram from one node to another crosses the link's faults
/// ([`Sim::default_link`], or the link's own from [`Sim::set_link`]), then
/// the receiving node's ([`Sim::set_faults`]: the same faults a
/// [`LoopbackCluster`](super::LoopbackCluster) node has). A node always
/// hears its own datagrams (multicast loopback), and ignores them. Each
/// datagram reaches the protocol with its sender's address ([`Sim::addr`]),
/// as on a real network.
///
/// After every input the simulator drains the node's outputs: datagrams go
/// on the network, deliveries and the outcomes of confirmations
/// ([`Sim::confirm`]) into the node's [`Life`].
pub struct Sim {
    now: Instant,
    rng: SmallRng,
    nodes: Vec<SimNode>,
    record: Record,
    queue: BinaryHeap<Reverse<Arrival>>,
    order: u64,
    /// Faults of every link without its own.
    pub default_link: Faults,
    links: HashMap<(NodeId, NodeId), Faults>,
    /// Burst state per link.
    link_bad: HashMap<(NodeId, NodeId), bool>,
    /// Each node's next wake-up, indexed so that finding the next event
    /// does not poll every node.
    timers: BTreeSet<(Instant, NodeId)>,
    timer_of: Vec<Option<Instant>>,
    /// Datagrams (copies) lost by the faults, one per receiver that missed
    /// one.
    pub lost: u64,
    /// Of those, `Data` datagrams (the losses repair is for).
    pub lost_data: u64,
    /// Datagrams put on the network (one per receiver).
    pub sent: u64,
    buf: Vec<u8>,
    steps: u64,
    /// A run fails (panics) after this many steps in total.
    pub max_steps: u64,
    /// The adversary, if any ([`Sim::add_adversary`]), and when it forges
    /// next.
    adversary: Option<(Adversary, Instant)>,
    /// Forged datagrams sent (each to every node).
    pub forged: u64,
    /// The unicast transport: a datagram the node's core means for one node
    /// only (`NodeCore::transmit_to`: a `Nak`, for its stream's origin; a
    /// `Repair` only one node asked for, for it) goes to that node alone,
    /// as a unicast driver sends it; everything else to every node, as the
    /// fan-out to every peer does. Set before adding nodes (their cores are
    /// made `set_directed`). Default false (multicast: everyone hears
    /// everything).
    pub unicast: bool,
    /// Multicast with direct repairs (a node's default on a real group):
    /// a `Repair` the core means for one node goes to it alone, everything
    /// else (its `Nak`s included) to every node. Set before adding nodes.
    /// Default false (every repair to every node). Ignored with `unicast`.
    pub directed: bool,
}

impl Sim {
    /// An empty network whose links have a delay of 100 µs and no other
    /// fault; everything random derives from `seed`.
    pub fn new(seed: u64) -> Self {
        let start = Instant::now();
        Sim {
            now: start,
            rng: SmallRng::seed_from_u64(seed),
            nodes: Vec::new(),
            record: Record::new(start),
            queue: BinaryHeap::new(),
            order: 0,
            default_link: Faults {
                delay: Duration::from_micros(100),
                ..Faults::default()
            },
            links: HashMap::new(),
            link_bad: HashMap::new(),
            timers: BTreeSet::new(),
            timer_of: Vec::new(),
            lost: 0,
            lost_data: 0,
            sent: 0,
            buf: Vec::with_capacity(2048),
            steps: 0,
            max_steps: 50_000_000,
            adversary: None,
            forged: 0,
            unicast: false,
            directed: false,
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.record.start
    }

    /// Adds a node that joins now, with `config` (its stream id and seed are
    /// drawn from the simulation's RNG).
    pub fn add_node(&mut self, name: &str, config: CoreConfig) -> NodeId {
        let id = self.nodes.len();
        self.nodes.push(SimNode {
            name: name.to_string(),
            core: None,
            config,
            life: 0,
            faults: Faults::default(),
            bad: false,
            outcomes: HashMap::new(),
            traffic: Traffic::default(),
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
        // Every node reads one wall clock (it stamps and judges
        // authenticated datagrams): the configured one at the start of the
        // simulation, counted on in virtual time, so that a node started
        // or restarted later agrees with the others.
        cfg.auth.wall_clock_ms = cfg
            .auth
            .wall_clock_ms
            .saturating_add(self.elapsed().as_millis() as u64);
        let deliver_own = cfg.deliver_own && !cfg.receive_only;
        let mut core = NodeCore::new(cfg, self.now).expect("valid simulated node config");
        if self.unicast {
            core.set_directed(true);
        } else {
            core.set_directed_multicast(self.directed, None);
        }
        let node = &mut self.nodes[id];
        node.life = self.record.begin_life(
            id,
            &node.name,
            core.stream(),
            self.now,
            core.sync_deadline(),
        );
        self.record.lives[node.life].deliver_own = deliver_own;
        node.core = Some(core);
        node.outcomes.clear();
        self.pump(id);
    }

    /// A node's current protocol state (`None` while crashed).
    pub fn core(&self, id: NodeId) -> Option<&NodeCore> {
        self.nodes[id].core.as_ref()
    }

    /// Number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when no node was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `id`'s name.
    pub fn name(&self, id: NodeId) -> &str {
        &self.nodes[id].name
    }

    /// Node `id`'s address as the others see it: `10.x.y.z:7467`, node 0
    /// being 10.0.0.1 (never sent to; only shown, as in its members' views).
    pub fn addr(&self, id: NodeId) -> SocketAddr {
        let ip = Ipv4Addr::from(0x0a00_0000 | ((id as u32 + 1) & 0x00ff_ffff));
        SocketAddr::V4(SocketAddrV4::new(ip, SIM_PORT))
    }

    /// What node `id` sent and received so far (all lives).
    pub fn traffic(&self, id: NodeId) -> &Traffic {
        &self.nodes[id].traffic
    }

    /// Everything the run did so far: every life, delivery and publish.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// Node `id`'s current (latest) life.
    pub fn life(&self, id: NodeId) -> &Life {
        &self.record.lives[self.nodes[id].life]
    }

    /// Every event published so far.
    pub fn published(&self) -> &[Published] {
        &self.record.published
    }

    /// Events delivered by `id` (all lives), as (stream, seq).
    pub fn delivered_events(&self, id: NodeId) -> Vec<(u64, u64)> {
        self.record.lives_of(id).flat_map(Life::events).collect()
    }

    /// Resets delivered by `id` (all lives).
    pub fn resets(&self, id: NodeId) -> Vec<(Instant, ResetReason)> {
        self.record
            .lives_of(id)
            .flat_map(Life::resets)
            .map(|(t, r)| (t, r.clone()))
            .collect()
    }

    /// Sets the faults of the link `from → to` (in place of
    /// [`Sim::default_link`]).
    pub fn set_link(&mut self, from: NodeId, to: NodeId, faults: Faults) {
        self.links.insert((from, to), faults);
    }

    /// Sets the faults of everything node `id` receives (after the link's);
    /// `partitioned` also stops everything it sends.
    pub fn set_faults(&mut self, id: NodeId, faults: Faults) {
        self.nodes[id].faults = faults;
    }

    /// Node `id`'s faults (see [`Sim::set_faults`]).
    pub fn faults(&self, id: NodeId) -> &Faults {
        &self.nodes[id].faults
    }

    /// Removes node `id`'s faults.
    pub fn clear_faults(&mut self, id: NodeId) {
        self.nodes[id].faults = Faults::default();
    }

    /// Cuts `id` off from every other node (both directions), or heals it:
    /// its faults' `partitioned`.
    pub fn partition(&mut self, id: NodeId, cut: bool) {
        self.nodes[id].faults.partitioned = cut;
    }

    /// Ends every fault: every node's faults and the per-link faults are
    /// removed and the default link becomes loss-free (same delay). Use it
    /// before checking an eventual property such as [`Sim::check`].
    pub fn heal_all(&mut self) {
        self.links.clear();
        self.link_bad.clear();
        for n in &mut self.nodes {
            n.faults = Faults::default();
            n.bad = false;
        }
        self.default_link = Faults {
            delay: self.default_link.delay,
            ..Faults::default()
        };
    }

    /// Adds an adversary: from now on, on average every `interval`, it
    /// multicasts a forged datagram of a random body kind for a random
    /// running node's stream (now and then for a stream that does not
    /// exist), at the stream's real position, a little or far ahead of it,
    /// or in its past: what anyone can do to a cluster that runs without
    /// keys. Its datagrams cross the default link's faults and each node's
    /// own, like any other. The record is marked as forged
    /// ([`Record::forgery`]), so the checker judges events by content.
    pub fn add_adversary(&mut self, interval: Duration) {
        let mut adversary = Adversary::new(self.rng.gen(), interval);
        let at = self.now + adversary.next_in().max(Duration::from_micros(1));
        self.adversary = Some((adversary, at));
        self.record.forgery = true;
    }

    /// Stops the adversary (its datagrams in flight still arrive).
    pub fn stop_adversary(&mut self) {
        self.adversary = None;
    }

    /// Multicasts one forged datagram now: `body` under a header naming
    /// stream `from` (of the run's cluster), from no node of the run, to
    /// every node (across the default link's faults and each node's own).
    /// Marks the record as forged ([`Record::forgery`]).
    pub fn forge(&mut self, from: u64, body: &Body) {
        self.record.forgery = true;
        let cluster = self
            .nodes
            .first()
            .map_or(CoreConfig::default().cluster, |n| n.config.cluster);
        let header = Header::new(cluster, from);
        let mut buf = Vec::new();
        wire::encode(&header, body, &mut buf);
        self.forged += 1;
        let bytes: Rc<[u8]> = Rc::from(buf);
        let decoded = Some(wire::Datagram {
            header,
            body: body.clone(),
        });
        let tag = Some(body.tag());
        for to in 0..self.nodes.len() {
            self.sent += 1;
            let mut good = false;
            let fate = self
                .default_link
                .fate(&mut good, &mut self.rng, decoded.as_ref());
            let Fate::Arrives { after, again } = fate else {
                self.lost += 1;
                continue;
            };
            for on_link in [Some(after), again].into_iter().flatten() {
                let node = &mut self.nodes[to];
                if let Fate::Arrives { after, again } =
                    node.faults
                        .fate(&mut node.bad, &mut self.rng, decoded.as_ref())
                {
                    for at_node in [Some(after), again].into_iter().flatten() {
                        let at = self.now + on_link + at_node;
                        self.enqueue(at, (ADVERSARY, to), (from, tag, None), bytes.clone());
                    }
                } else {
                    self.lost += 1;
                }
            }
        }
    }

    /// The adversary's turn: one forged datagram, and when the next comes.
    fn adversary_turn(&mut self) {
        let targets: Vec<Target> = (self.nodes.iter())
            .filter(|n| !n.config.receive_only)
            .filter_map(|n| {
                let core = n.core.as_ref()?;
                Some(Target {
                    stream: core.stream(),
                    name: n.name.clone(),
                    next_seq: core.next_seq(),
                })
            })
            .collect();
        let Some((adversary, at)) = self.adversary.as_mut() else {
            return;
        };
        let forged = adversary.forge(&targets);
        *at = self.now + adversary.next_in().max(Duration::from_micros(1));
        if let Some((from, body)) = forged {
            self.forge(from, &body);
        }
    }

    /// Publishes `event` on node `id` and sends it. Returns its seq.
    pub fn publish(&mut self, id: NodeId, event: Event) -> u64 {
        let seq = self.publish_unsent(id, event);
        self.pump(id);
        seq
    }

    /// Publishes several events at once (they share datagrams). Returns
    /// their seqs.
    pub fn publish_batch(&mut self, id: NodeId, events: Vec<Event>) -> Range<u64> {
        let next = self.nodes[id].core.as_ref().map_or(0, |c| c.next_seq());
        let mut seqs = next..next;
        for event in events {
            seqs.end = self.publish_unsent(id, event) + 1;
        }
        self.pump(id);
        seqs
    }

    /// Awaits confirmation of `seqs` of node `id`'s stream
    /// ([`NodeCore::confirm`]), with a deadline `timeout` from now. Returns
    /// the confirmation's id: its outcome comes from [`Sim::outcome`] once
    /// known, and is recorded in the node's [`Life::confirmations`] (the
    /// checker verifies it).
    pub fn confirm(&mut self, id: NodeId, seqs: Range<u64>, timeout: Duration) -> u64 {
        let now = self.now;
        let core = self.nodes[id]
            .core
            .as_mut()
            .expect("confirm on a live node");
        let confirm = core.confirm(now, seqs, now + timeout);
        self.pump(id);
        confirm
    }

    /// The outcome of node `id`'s confirmation `confirm` (of its current
    /// life), once known.
    pub fn outcome(&self, id: NodeId, confirm: u64) -> Option<&ConfirmReport> {
        self.nodes[id].outcomes.get(&confirm)
    }

    /// Runs until node `id`'s confirmation `confirm` has its outcome, at
    /// most `limit` of virtual time; `None` if it has none by then (or the
    /// node crashed).
    pub fn await_outcome(
        &mut self,
        id: NodeId,
        confirm: u64,
        limit: Duration,
    ) -> Option<ConfirmReport> {
        let end = self.now + limit;
        let life = self.nodes[id].life;
        loop {
            if self.nodes[id].life != life {
                return None;
            }
            if let Some(r) = self.outcome(id, confirm) {
                return Some(r.clone());
            }
            if self.now >= end || self.nodes[id].core.is_none() {
                return None;
            }
            // To the next thing that happens: the outcome's time is exact.
            let next = self.next_event().map_or(end, |t| t.min(end));
            self.run_until(next);
        }
    }

    /// Publishes `events` on node `id` and awaits their confirmation
    /// ([`Sim::confirm`]): runs until the outcome, at the latest the
    /// deadline `timeout` from now. Panics if the node crashed meanwhile.
    pub fn publish_confirmed(
        &mut self,
        id: NodeId,
        events: Vec<Event>,
        timeout: Duration,
    ) -> ConfirmReport {
        let seqs = self.publish_batch(id, events);
        let confirm = self.confirm(id, seqs, timeout);
        // The deadline is a timer of the node: the outcome comes by then.
        self.await_outcome(id, confirm, timeout + Duration::from_millis(1))
            .unwrap_or_else(|| panic!("node {} gave no outcome by its deadline", self.name(id)))
    }

    /// Publishes `event` on node `id` and records it, sending nothing yet.
    fn publish_unsent(&mut self, id: NodeId, event: Event) -> u64 {
        let now = self.now;
        let core = self.nodes[id]
            .core
            .as_mut()
            .expect("publish on a live node");
        let seq = core.publish(now, event.clone()).expect("publishable event");
        self.record.published.push(Published {
            node: id,
            stream: core.stream(),
            seq,
            at: now,
            event,
        });
        seq
    }

    /// Crashes node `id`: it stops at once, without `Goodbye`; what it had
    /// not sent is lost.
    pub fn crash(&mut self, id: NodeId) {
        if self.nodes[id].core.take().is_some() {
            let life = &mut self.record.lives[self.nodes[id].life];
            life.crashed.get_or_insert(self.now);
        }
        self.update_timer(id);
    }

    /// Closes node `id` cleanly: `Goodbye`, and it keeps answering `Nak`s
    /// (lingers) until crashed or restarted.
    pub fn close(&mut self, id: NodeId) {
        let now = self.now;
        if let Some(core) = self.nodes[id].core.as_mut() {
            core.close(now);
            self.record.lives[self.nodes[id].life]
                .closed
                .get_or_insert(now);
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
            let only = if self.unicast || (self.directed && !core.transmit_is_nak()) {
                core.transmit_to().map(|a| self.node_at(a))
            } else {
                None
            };
            match only {
                // Sent to an address no node has: lost, as on a network.
                Some(None) => self.nodes[id].traffic.misdirected += 1,
                Some(Some(to)) => self.transmit(id, &buf, Some(to)),
                None => self.transmit(id, &buf, None),
            }
        }
        let node = &mut self.nodes[id];
        if let Some(core) = node.core.as_mut() {
            let life = &mut self.record.lives[node.life];
            while let Some(d) = core.poll_delivery() {
                life.deliveries.push((now, d));
            }
            while let Some((confirm, report)) = core.poll_confirmation() {
                life.confirmations.push((now, report.clone()));
                node.outcomes.insert(confirm, report);
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

    /// The node whose address is `addr` ([`Sim::addr`]), if any.
    fn node_at(&self, addr: SocketAddr) -> Option<NodeId> {
        let SocketAddr::V4(a) = addr else {
            return None;
        };
        let id = (u32::from(*a.ip()) & 0x00ff_ffff).checked_sub(1)? as usize;
        (a.port() == SIM_PORT && u32::from(*a.ip()) >> 24 == 10 && id < self.nodes.len())
            .then_some(id)
    }

    /// Puts a datagram of `from` on the network: to every node (itself too,
    /// as multicast loops back), or to `only`.
    fn transmit(&mut self, from: NodeId, bytes: &[u8], only: Option<NodeId>) {
        let bytes: Rc<[u8]> = Rc::from(bytes);
        let cluster = self.nodes[from].config.cluster;
        let decoded = wire::decode(&bytes, cluster).ok();
        // From the header, which is in the clear even when the body is
        // encrypted (and `decoded` is `None`).
        let stream = wire::decode_header(&bytes, cluster).map_or(0, |(h, _)| h.stream);
        let tag = decoded.as_ref().map(|d| d.body.tag());
        if let Some(tag) = tag {
            self.nodes[from].traffic.sent[tag as usize].add(bytes.len());
        }
        // What the checker's exception 4 needs to know reached a node.
        let seqs = (self.record.forgery)
            .then(|| decoded.as_ref().and_then(super::faults::event_seqs))
            .flatten();
        let is_data = matches!(
            decoded,
            Some(wire::Datagram {
                body: Body::Data { .. },
                ..
            })
        );
        let cut_off = self.nodes[from].faults.partitioned;
        for to in 0..self.nodes.len() {
            if only.is_some_and(|o| o != to) {
                continue;
            }
            if to == from {
                // Multicast loopback: a node hears itself (and ignores it).
                self.enqueue(self.now, (from, to), (stream, tag, None), bytes.clone());
                continue;
            }
            self.sent += 1;
            let link = if self.links.is_empty() {
                &self.default_link
            } else {
                self.links.get(&(from, to)).unwrap_or(&self.default_link)
            };
            // Burst state is kept only for links with bursts (a map of
            // every pair costs a thousand nodes dearly).
            let mut good = false;
            let bad = match link.burst {
                Some(_) => self.link_bad.entry((from, to)).or_insert(false),
                None => &mut good,
            };
            let fate = if cut_off {
                Fate::Lost
            } else {
                link.fate(bad, &mut self.rng, decoded.as_ref())
            };
            let Fate::Arrives { after, again } = fate else {
                self.lost += 1;
                self.lost_data += u64::from(is_data);
                continue;
            };
            for on_link in [Some(after), again].into_iter().flatten() {
                let node = &mut self.nodes[to];
                match node
                    .faults
                    .fate(&mut node.bad, &mut self.rng, decoded.as_ref())
                {
                    Fate::Lost => {
                        self.lost += 1;
                        self.lost_data += u64::from(is_data);
                    }
                    Fate::Arrives { after, again } => {
                        for at_node in [Some(after), again].into_iter().flatten() {
                            let at = self.now + on_link + at_node;
                            let seqs = seqs.clone();
                            self.enqueue(at, (from, to), (stream, tag, seqs), bytes.clone());
                        }
                    }
                }
            }
        }
    }

    fn enqueue(
        &mut self,
        at: Instant,
        (from, to): (NodeId, NodeId),
        (stream, tag, seqs): (u64, Option<BodyTag>, Option<Range<u64>>),
        bytes: Rc<[u8]>,
    ) {
        self.order += 1;
        self.queue.push(Reverse(Arrival {
            at,
            order: self.order,
            from,
            to,
            stream,
            tag,
            seqs,
            bytes,
        }));
    }

    /// The next instant anything happens: an arrival or a node wake-up.
    fn next_event(&self) -> Option<Instant> {
        let arrival = self.queue.peek().map(|Reverse(a)| a.at);
        let timer = self.timers.first().map(|(t, _)| *t);
        let timer = match (timer, self.adversary.as_ref().map(|(_, at)| *at)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
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
            let addr = if a.from == ADVERSARY {
                SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::new(10, 255, 255, 254),
                    SIM_PORT,
                ))
            } else {
                self.addr(a.from)
            };
            let node = &mut self.nodes[a.to];
            if let Some(core) = node.core.as_mut() {
                if let Some(tag) = a.tag.filter(|_| a.from != a.to) {
                    node.traffic.received[tag as usize].add(a.bytes.len());
                }
                core.handle_datagram_from(t, Some(addr), &a.bytes);
                let life = &mut self.record.lives[node.life];
                if self.record.forgery && a.from != a.to {
                    // What reached the node of the real stream, and of the
                    // forger (exceptions 4 and 5 of the checker).
                    if a.from == ADVERSARY {
                        if a.tag == Some(BodyTag::Goodbye) {
                            life.forged_goodbyes.insert(a.stream);
                        }
                    } else {
                        life.heard_real.insert(a.stream, t);
                        if let Some(seqs) = a.seqs {
                            life.received.extend(seqs.map(|q| (a.stream, q)));
                        }
                    }
                }
                let heard = &mut life.heard;
                match heard.get_mut(&a.stream) {
                    Some(at) => *at = t,
                    None => {
                        heard.insert(a.stream, t);
                    }
                }
                self.pump(a.to);
            }
            return false;
        }
        if self.adversary.as_ref().is_some_and(|(_, at)| *at <= t) {
            self.adversary_turn();
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

    /// Checks the no-silent-loss promise over the whole run: the test
    /// kit's one checker, [`Record::check`]. Run it once the network has
    /// settled (every fault healed, and past the stream timeout if a node
    /// crashed).
    pub fn check(&self) -> Result<CheckReport, Box<SilentLoss>> {
        self.record.check()
    }
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("elapsed", &self.elapsed())
            .field("nodes", &self.nodes.len())
            .field("in_flight", &self.queue.len())
            .field("sent", &self.sent)
            .field("lost", &self.lost)
            .finish()
    }
}
