//! A loopback test harness: a cluster of real nodes on this host, with
//! faults injected per node, every delivery recorded, and the
//! no-silent-loss checker run on the record.
//!
//! Every node uses interface 127.0.0.1 and multicast TTL 0 (nothing leaves
//! the host), and each cluster gets its own random group in 239.255.0.0/16,
//! a free port and its own cluster name, so clusters of tests running in
//! parallel never hear each other.
//!
//! ```no_run
//! use std::time::Duration;
//! use cachecast::harness::Cluster;
//!
//! # async fn t() -> Result<(), Box<dyn std::error::Error>> {
//! let mut c = Cluster::start(3).await?;     // nodes 0, 1, 2, joined
//! c.faults(2).partition(true);              // cut node 2 off
//! c.publish(0, ["user:1"]).await?;
//! c.faults(2).partition(false);             // heal
//! c.settle(Duration::from_secs(15)).await;  // until repaired (or Reset)
//! let report = c.check()?;                  // no silent loss, or why not
//! # Ok(()) }
//! ```
//!
//! Faults act on the receiving side (loss, duplication, delay and
//! reordering, partitions) and on sending (partitions), inside the node's
//! driver; crashes stop a node without `Goodbye`.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::net::driver::{FaultInjector, Verdict};
use crate::net::socket::InterfaceSpec;
use crate::node::{JoinError, Node, NodeConfig, NodeStats, PublishError};
use crate::proto::Delivery;
use crate::wire::{self, Body, Datagram, Event};

type Predicate = Box<dyn Fn(&Datagram) -> bool + Send + Sync>;

#[derive(Default)]
struct FaultState {
    drop_probability: f64,
    drop_next: u32,
    drop_if: Option<Predicate>,
    duplicate_probability: f64,
    delay: Option<(Duration, Duration)>,
    partitioned: bool,
}

/// The faults of one node. Changes apply to the next datagram.
pub struct Faults {
    cluster: u32,
    state: Mutex<FaultState>,
    rng: Mutex<SmallRng>,
    /// Streams the node's current life received a datagram of.
    heard: Mutex<HashSet<u64>>,
    /// The current life's record: deliveries are stamped and stored the
    /// moment the protocol makes them.
    life: Mutex<Option<Arc<Mutex<Life>>>>,
    /// Received `Data` datagrams lost to a fault.
    dropped_data: std::sync::atomic::AtomicU64,
}

impl Faults {
    /// How many received `Data` datagrams the faults have lost so far: a
    /// fault applies when the node reads a datagram, so a test that lifts a
    /// fault can first wait until the datagram it meant to lose was lost.
    pub fn dropped_data(&self) -> u64 {
        self.dropped_data.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn new(cluster: u32, seed: u64) -> Self {
        Faults {
            cluster,
            state: Mutex::new(FaultState::default()),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            heard: Mutex::new(HashSet::new()),
            life: Mutex::new(None),
            dropped_data: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn hear(&self, decoded: &Option<Datagram>) {
        if let Some(d) = decoded {
            self.heard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(d.header.stream);
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut FaultState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Loses each received datagram with probability `p`.
    pub fn drop_probability(&self, p: f64) -> &Self {
        self.with(|s| s.drop_probability = p.clamp(0.0, 1.0));
        self
    }

    /// Loses the next `n` received `Data` datagrams.
    pub fn drop_next(&self, n: u32) -> &Self {
        self.with(|s| s.drop_next = n);
        self
    }

    /// Loses every received datagram for which `pred` is true (e.g. the
    /// `Data` datagram that holds a given seq), until cleared with `None`.
    pub fn drop_if(
        &self,
        pred: Option<impl Fn(&Datagram) -> bool + Send + Sync + 'static>,
    ) -> &Self {
        self.with(|s| s.drop_if = pred.map(|p| Box::new(p) as Predicate));
        self
    }

    /// Hands each received datagram to the node twice with probability `p`.
    pub fn duplicate_probability(&self, p: f64) -> &Self {
        self.with(|s| s.duplicate_probability = p.clamp(0.0, 1.0));
        self
    }

    /// Delays each received datagram by a random time in `min..=max`
    /// (which reorders them); `None` for no delay.
    pub fn delay(&self, range: Option<(Duration, Duration)>) -> &Self {
        self.with(|s| s.delay = range);
        self
    }

    /// Cuts the node off from the others (nothing in, nothing out), or heals it.
    pub fn partition(&self, cut: bool) -> &Self {
        self.with(|s| s.partitioned = cut);
        self
    }

    /// Removes every fault.
    pub fn clear(&self) -> &Self {
        self.with(|s| *s = FaultState::default());
        self
    }

    fn chance(&self, p: f64) -> bool {
        p > 0.0
            && self
                .rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .gen_bool(p)
    }
}

impl FaultInjector for Faults {
    fn on_receive(&self, bytes: &[u8]) -> Verdict {
        let decoded = wire::decode(bytes, self.cluster).ok();
        let verdict = self.verdict(&decoded);
        if verdict != Verdict::Drop {
            self.hear(&decoded);
        } else if decoded
            .as_ref()
            .is_some_and(|d| matches!(d.body, Body::Data { .. }))
        {
            self.dropped_data
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        verdict
    }

    fn drop_outgoing(&self, _bytes: &[u8]) -> bool {
        self.with(|s| s.partitioned)
    }

    fn observe(&self, delivery: &Delivery) {
        if let Some(life) = self.life.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            life.lock()
                .unwrap_or_else(|p| p.into_inner())
                .deliveries
                .push((Instant::now(), delivery.clone()));
        }
    }
}

impl Faults {
    fn verdict(&self, decoded: &Option<Datagram>) -> Verdict {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.partitioned {
            return Verdict::Drop;
        }
        if let Some(d) = decoded {
            if st.drop_next > 0 && matches!(d.body, Body::Data { .. }) {
                st.drop_next -= 1;
                return Verdict::Drop;
            }
            if st.drop_if.as_ref().is_some_and(|p| p(d)) {
                return Verdict::Drop;
            }
        }
        let (drop_p, dup_p, delay) = (st.drop_probability, st.duplicate_probability, st.delay);
        drop(st);
        if self.chance(drop_p) {
            return Verdict::Drop;
        }
        if self.chance(dup_p) {
            return Verdict::Duplicate;
        }
        if let Some((lo, hi)) = delay {
            let span = hi.saturating_sub(lo).as_micros() as u64;
            let extra = if span == 0 {
                0
            } else {
                self.rng
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .gen_range(0..=span)
            };
            return Verdict::Delay(lo + Duration::from_micros(extra));
        }
        Verdict::Deliver
    }
}

/// One life of a node: from join to crash, shutdown or now.
#[derive(Debug, Clone)]
pub struct Life {
    /// Its stream in this life.
    pub stream: u64,
    /// When its join returned (from then on it must see everything).
    pub synced: Instant,
    /// When it crashed or shut down.
    pub ended: Option<Instant>,
    /// Everything it delivered, with when its node delivered it.
    pub deliveries: Vec<(Instant, Delivery)>,
}

/// An event published through the harness.
#[derive(Debug, Clone)]
pub struct Published {
    /// The publishing node's index.
    pub node: usize,
    /// Its stream at the time.
    pub stream: u64,
    /// The seq it got.
    pub seq: u64,
    /// The event.
    pub event: Event,
    /// When the protocol took it (the driver's clock).
    pub at: Instant,
}

struct Member {
    name: String,
    node: Option<Node>,
    faults: Arc<Faults>,
    life: Arc<Mutex<Life>>,
}

/// A cluster of nodes on loopback multicast.
pub struct Cluster {
    group: SocketAddr,
    name: String,
    seed: u64,
    members: Vec<Member>,
    lives: Vec<Arc<Mutex<Life>>>,
    published: Vec<Published>,
    /// Applied to every node's configuration before it joins.
    config: Box<dyn Fn(&mut NodeConfig) + Send + Sync>,
    started: Instant,
}

/// What the checker found when the promise held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// (live node, event) pairs that had to be delivered or Reset.
    pub expected: u64,
    /// Of those, delivered.
    pub delivered: u64,
    /// Of those, covered by a later Reset.
    pub covered_by_reset: u64,
}

/// An event a node lost silently.
#[derive(Debug, Clone, thiserror::Error)]
#[error("silent loss: node {node} never delivered {event:?} (stream {stream:#x}) published {published_at:?} after start, and delivered no Reset after it; its last deliveries: {log:#?}")]
pub struct Violation {
    /// The node's name.
    pub node: String,
    /// The publishing stream.
    pub stream: u64,
    /// The event.
    pub event: Event,
    /// When it was published, since the cluster started.
    pub published_at: Duration,
    /// The node's last deliveries.
    pub log: Vec<String>,
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(47_000)
}

impl Cluster {
    /// Starts `n` nodes named `n0`, `n1`, … and waits until all have joined.
    pub async fn start(n: usize) -> Result<Cluster, JoinError> {
        Self::start_with(n, crate::node::random_u64(), |_| {}).await
    }

    /// Like [`Cluster::start`], with a seed for the fault RNGs and a hook
    /// that adjusts every node's configuration (e.g. protocol timers).
    pub async fn start_with(
        n: usize,
        seed: u64,
        config: impl Fn(&mut NodeConfig) + Send + Sync + 'static,
    ) -> Result<Cluster, JoinError> {
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        Self::start_named(&names, seed, config).await
    }

    /// Starts one node per name, with a seed for the fault RNGs and a hook
    /// that adjusts every node's configuration.
    pub async fn start_named(
        names: &[impl AsRef<str>],
        seed: u64,
        config: impl Fn(&mut NodeConfig) + Send + Sync + 'static,
    ) -> Result<Cluster, JoinError> {
        let r = crate::node::random_u64();
        let a = (r as u8).clamp(1, 254);
        let b = ((r >> 8) as u8).clamp(1, 254);
        let mut c = Cluster {
            group: SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::new(239, 255, a, b),
                free_port(),
            )),
            name: format!("harness-{}", r >> 16),
            seed,
            members: Vec::new(),
            lives: Vec::new(),
            published: Vec::new(),
            config: Box::new(config),
            started: Instant::now(),
        };
        for name in names {
            c.add_node(name.as_ref()).await?;
        }
        Ok(c)
    }

    /// The group the cluster uses.
    pub fn group(&self) -> SocketAddr {
        self.group
    }

    /// The configuration node `name` joins with.
    pub fn node_config(&self, name: &str) -> NodeConfig {
        let mut cfg = NodeConfig {
            group: self.group,
            interface: InterfaceSpec::Addr(Ipv4Addr::LOCALHOST.into()),
            cluster: self.name.clone(),
            node_name: name.into(),
            ttl: 0,
            ..NodeConfig::default()
        };
        (self.config)(&mut cfg);
        cfg
    }

    /// Adds a node (a late joiner) and waits until it has joined. Returns
    /// its index.
    pub async fn add_node(&mut self, name: &str) -> Result<usize, JoinError> {
        let i = self.members.len();
        let faults = Arc::new(Faults::new(
            wire::cluster_hash(&self.name),
            self.seed.wrapping_add(i as u64),
        ));
        let life = self.join_life(name, &faults).await?;
        self.members.push(Member {
            name: name.into(),
            node: Some(life.0),
            faults,
            life: life.1,
        });
        Ok(i)
    }

    async fn join_life(
        &mut self,
        name: &str,
        faults: &Arc<Faults>,
    ) -> Result<(Node, Arc<Mutex<Life>>), JoinError> {
        let mut cfg = self.node_config(name);
        cfg.faults = Some(faults.clone());
        faults
            .heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let life = Arc::new(Mutex::new(Life {
            stream: 0,
            synced: Instant::now(),
            ended: None,
            deliveries: Vec::new(),
        }));
        *faults.life.lock().unwrap_or_else(|p| p.into_inner()) = Some(life.clone());
        let node = Node::join(cfg).await?;
        {
            let mut l = life.lock().unwrap_or_else(|p| p.into_inner());
            l.stream = node.stream();
            l.synced = Instant::now();
        }
        self.lives.push(life.clone());
        Ok((node, life))
    }

    /// Number of nodes (live or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Node `i`'s name.
    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// Node `i`, unless it crashed.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.members[i].node.as_ref()
    }

    /// Node `i`'s faults.
    pub fn faults(&self, i: usize) -> &Faults {
        &self.members[i].faults
    }

    /// Publishes an invalidation of `keys` from node `i`.
    pub async fn publish<I, S>(&mut self, i: usize, keys: I) -> Result<(), PublishError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let event = Event::Invalidate {
            keys: keys.into_iter().map(Into::into).collect(),
        };
        self.publish_event(i, event).await
    }

    /// Publishes `event` from node `i`.
    pub async fn publish_event(&mut self, i: usize, event: Event) -> Result<(), PublishError> {
        let node = self.members[i].node.as_ref().ok_or(PublishError::Closed)?;
        let (seq, at) = node.publish_acked(event.clone()).await?;
        self.published.push(Published {
            node: i,
            stream: node.stream(),
            seq,
            event,
            at,
        });
        Ok(())
    }

    /// Crashes node `i`: it stops at once, without `Goodbye`.
    pub fn crash(&mut self, i: usize) {
        if let Some(node) = self.members[i].node.take() {
            node.crash();
            self.end_life(i);
        }
    }

    /// Shuts node `i` down cleanly (`Goodbye`, linger).
    pub async fn shutdown(&mut self, i: usize) {
        if let Some(node) = self.members[i].node.take() {
            node.shutdown().await;
            self.end_life(i);
        }
    }

    fn end_life(&mut self, i: usize) {
        let m = &self.members[i];
        *m.faults.life.lock().unwrap_or_else(|p| p.into_inner()) = None;
        m.life.lock().unwrap_or_else(|p| p.into_inner()).ended = Some(Instant::now());
    }

    /// Restarts node `i` as a new process (crashing it first if it runs):
    /// a new stream and a fresh join.
    pub async fn restart(&mut self, i: usize) -> Result<(), JoinError> {
        self.crash(i);
        self.rejoin(i).await
    }

    /// Recycles node `i` cleanly, as a deploy would: `Goodbye`, then a new
    /// process with a new stream and a fresh join.
    pub async fn recycle(&mut self, i: usize) -> Result<(), JoinError> {
        self.shutdown(i).await;
        self.rejoin(i).await
    }

    async fn rejoin(&mut self, i: usize) -> Result<(), JoinError> {
        let name = self.members[i].name.clone();
        let faults = self.members[i].faults.clone();
        let (node, life) = self.join_life(&name, &faults).await?;
        self.members[i].node = Some(node);
        self.members[i].life = life;
        Ok(())
    }

    /// Waits until everything node `i` published has left it (so that a
    /// crash that follows cannot take it along), or `limit` passes.
    pub async fn wait_sent(&self, i: usize, limit: Duration) -> bool {
        let end = tokio::time::Instant::now() + limit;
        while let Some(s) = self.stats(i).await {
            if s.protocol.events_sent >= s.protocol.events_published {
                return true;
            }
            if tokio::time::Instant::now() >= end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        false
    }

    /// Node `i`'s counters (of its current life).
    pub async fn stats(&self, i: usize) -> Option<NodeStats> {
        Some(self.members[i].node.as_ref()?.stats().await)
    }

    /// What node `i` delivered in its current life.
    pub fn deliveries(&self, i: usize) -> Vec<(Instant, Delivery)> {
        self.members[i]
            .life
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .deliveries
            .clone()
    }

    /// Everything published so far.
    pub fn published(&self) -> &[Published] {
        &self.published
    }

    /// When the cluster started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits until the promise is fulfilled — every live node delivered
    /// every event it should have seen, or a `Reset` after it
    /// ([`Cluster::check`] passes) — and no node has a gap open, or until
    /// `limit` passes. Returns true if it settled; on false, `check` says
    /// what is missing.
    pub async fn settle(&self, limit: Duration) -> bool {
        let end = tokio::time::Instant::now() + limit;
        loop {
            let mut open = 0;
            for m in &self.members {
                if let Some(node) = &m.node {
                    open += node.stats().await.protocol.open_gaps;
                }
            }
            if open == 0 && self.check().is_ok() {
                return true;
            }
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Checks the no-silent-loss promise on the record: for every live
    /// node and every event another node published after that node's join
    /// returned, the node delivered it, or delivered a `Reset` after it was
    /// published. Call [`Cluster::settle`] first. (Events of a publisher
    /// that crashed without a single datagram reaching the node are not
    /// counted: no protocol can know of them.)
    pub fn check(&self) -> Result<CheckReport, Box<Violation>> {
        let mut report = CheckReport::default();
        let lives: Vec<Life> = self
            .lives
            .iter()
            .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        for (i, m) in self.members.iter().enumerate() {
            if m.node.is_none() {
                continue;
            }
            let life = m.life.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let heard = m
                .faults
                .heard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let got: HashSet<(u64, u64)> = life
                .deliveries
                .iter()
                .filter_map(|(_, d)| match d {
                    Delivery::Event { stream, seq, .. } => Some((*stream, *seq)),
                    Delivery::Reset { .. } => None,
                })
                .collect();
            let last_reset = life
                .deliveries
                .iter()
                .filter(|(_, d)| matches!(d, Delivery::Reset { .. }))
                .map(|(t, _)| *t)
                .max();
            for p in &self.published {
                if p.stream == life.stream || p.at < life.synced {
                    continue;
                }
                let publisher_dead = lives
                    .iter()
                    .any(|l| l.stream == p.stream && l.ended.is_some());
                if publisher_dead && !heard.contains(&p.stream) {
                    continue;
                }
                report.expected += 1;
                if got.contains(&(p.stream, p.seq)) {
                    report.delivered += 1;
                } else if last_reset.is_some_and(|r| r >= p.at) {
                    report.covered_by_reset += 1;
                } else {
                    let log = life
                        .deliveries
                        .iter()
                        .rev()
                        .take(10)
                        .map(|(t, d)| format!("{:?}: {d:?}", t.duration_since(self.started)))
                        .collect();
                    return Err(Box::new(Violation {
                        node: format!("{} (#{i})", m.name),
                        stream: p.stream,
                        event: p.event.clone(),
                        published_at: p.at.duration_since(self.started),
                        log,
                    }));
                }
            }
        }
        Ok(report)
    }

    /// Shuts every live node down cleanly.
    pub async fn shutdown_all(&mut self) {
        for i in 0..self.members.len() {
            self.shutdown(i).await;
        }
    }
}
