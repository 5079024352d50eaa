//! The loopback cluster: real nodes on this host, the test kit's faults in
//! each node's driver, every delivery read through an ordinary
//! subscription into a [`Record`], judged by the one checker. Each `Reset`
//! read is timed by when the node's driver produced it (the tap notes it),
//! not by when the subscription got to it.
//!
//! Every node uses interface 127.0.0.1 and multicast TTL 0 (nothing leaves
//! the host), and each cluster gets its own random group in 239.255.0.0/16,
//! a free port and its own cluster name ([`Loopback`]), so clusters of
//! tests running in parallel never hear each other.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::AbortHandle;

use super::check::{CheckReport, SilentLoss};
use super::faults::Faults;
use super::record::{NodeId, Published, Record};
use super::tap::{self, NodeFaults, Recording, Tap};
use crate::net::socket::InterfaceSpec;
use crate::node::{JoinError, Node, NodeConfig, NodeStats};
use crate::proto::{Delivery, PublishError, ResetReason};
use crate::wire::Event;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The runtime's clock, as the driver reads it.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// A place on loopback for one test's nodes: interface 127.0.0.1,
/// multicast TTL 0 (nothing leaves the host), a random group in
/// 239.255.0.0/16, a free port and a cluster name of its own, so that
/// tests running in parallel never hear each other.
#[derive(Debug, Clone)]
pub struct Loopback {
    group: SocketAddr,
    cluster: String,
}

impl Default for Loopback {
    fn default() -> Self {
        Loopback::new()
    }
}

impl Loopback {
    /// A fresh group, port and cluster name.
    pub fn new() -> Loopback {
        let r = crate::node::random_u64();
        let a = (r as u8).clamp(1, 254);
        let b = ((r >> 8) as u8).clamp(1, 254);
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .unwrap_or(47_000);
        Loopback {
            group: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(239, 255, a, b), port)),
            cluster: format!("testkit-{}", r >> 16),
        }
    }

    /// The group and port.
    pub fn group(&self) -> SocketAddr {
        self.group
    }

    /// The cluster name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The configuration of a node named `node` here (everything else
    /// default).
    pub fn config(&self, node: &str) -> NodeConfig {
        NodeConfig {
            group: self.group,
            interface: InterfaceSpec::loopback(),
            cluster: self.cluster.clone(),
            node_name: node.into(),
            ttl: 0,
            ..NodeConfig::default()
        }
    }

    /// Sends raw bytes to the group from a plain socket (127.0.0.1, TTL 0):
    /// hostile or foreign datagrams for a test.
    pub fn send_raw(&self, bytes: &[u8]) -> std::io::Result<()> {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.set_multicast_ttl_v4(0)?;
        socket2::SockRef::from(&s).set_multicast_if_v4(&Ipv4Addr::LOCALHOST)?;
        s.send_to(bytes, self.group).map(|_| ())
    }
}

struct Member {
    name: String,
    /// Its node while it runs.
    node: Option<Node>,
    faults: Arc<NodeFaults>,
    /// Its current life's tap and driver task (to crash it).
    tap: Option<(Arc<Tap>, AbortHandle)>,
    /// Its current life in the record.
    life: usize,
}

/// A cluster of real nodes on loopback ([`Loopback`]), with faults per
/// node ([`NodeFaults`]), crashes, restarts and late joins, every delivery
/// and publish in a [`Record`], and the one no-silent-loss checker.
pub struct LoopbackCluster {
    place: Loopback,
    seed: u64,
    members: Vec<Member>,
    record: Arc<Mutex<Record>>,
    /// Applied to every node's configuration before it joins.
    config: Box<dyn Fn(&mut NodeConfig) + Send + Sync>,
}

impl std::fmt::Debug for LoopbackCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopbackCluster")
            .field("place", &self.place)
            .field("nodes", &self.members.len())
            .finish()
    }
}

impl LoopbackCluster {
    /// Starts `n` nodes named `n0`, `n1`, … and waits until all have joined.
    pub async fn start(n: usize) -> Result<LoopbackCluster, JoinError> {
        Self::start_with(n, crate::node::random_u64(), |_| {}).await
    }

    /// Like [`LoopbackCluster::start`], with a seed for the fault RNGs and a
    /// hook that adjusts every node's configuration (e.g. protocol timers).
    pub async fn start_with(
        n: usize,
        seed: u64,
        config: impl Fn(&mut NodeConfig) + Send + Sync + 'static,
    ) -> Result<LoopbackCluster, JoinError> {
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        Self::start_named(&names, seed, config).await
    }

    /// Starts one node per name, with a seed for the fault RNGs and a hook
    /// that adjusts every node's configuration.
    pub async fn start_named(
        names: &[impl AsRef<str>],
        seed: u64,
        config: impl Fn(&mut NodeConfig) + Send + Sync + 'static,
    ) -> Result<LoopbackCluster, JoinError> {
        let mut c = LoopbackCluster {
            place: Loopback::new(),
            seed,
            members: Vec::new(),
            record: Arc::new(Mutex::new(Record::new(now()))),
            config: Box::new(config),
        };
        for name in names {
            c.add_node(name.as_ref()).await?;
        }
        Ok(c)
    }

    /// The group the cluster uses.
    pub fn group(&self) -> SocketAddr {
        self.place.group()
    }

    /// Where the cluster is (group, port, cluster name).
    pub fn place(&self) -> &Loopback {
        &self.place
    }

    /// The configuration node `name` joins with.
    pub fn node_config(&self, name: &str) -> NodeConfig {
        let mut cfg = self.place.config(name);
        (self.config)(&mut cfg);
        cfg
    }

    /// Adds a node (a late joiner) and waits until it has joined. Returns
    /// its index.
    pub async fn add_node(&mut self, name: &str) -> Result<NodeId, JoinError> {
        let i = self.members.len();
        let faults = NodeFaults::new(Faults::default(), self.seed.wrapping_add(i as u64));
        self.members.push(Member {
            name: name.into(),
            node: None,
            faults,
            tap: None,
            life: 0,
        });
        self.join(i).await?;
        Ok(i)
    }

    /// Starts a new life of node `i`: joins, then records its deliveries
    /// through its first subscription.
    async fn join(&mut self, i: NodeId) -> Result<(), JoinError> {
        let name = self.members[i].name.clone();
        let cfg = self.node_config(&name);
        let joined = now();
        let life = {
            let mut r = lock(&self.record);
            let life = r.begin_life(i, &name, 0, joined, joined);
            r.lives[life].deliver_own = cfg.deliver_own && !cfg.receive_only;
            life
        };
        let recording = Recording {
            record: self.record.clone(),
            node: i,
            life,
        };
        let tap = Tap::new(
            self.members[i].faults.clone(),
            &cfg.cluster,
            Some(recording),
        );
        let started = Node::start(cfg, tap::hooks(tap.clone())).await;
        let (node, task) = match started {
            Ok(s) => s,
            Err(e) => {
                lock(&self.record).lives[life].crashed = Some(now());
                return Err(e);
            }
        };
        {
            let mut r = lock(&self.record);
            let l = &mut r.lives[life];
            l.stream = node.stream();
            l.synced = now();
        }
        // The node's first subscription: it reads the node's delivery
        // sequence from its start (index 0), so it knows the index of each
        // delivery it reads, and the tap when that was produced.
        let mut sub = node.subscribe();
        let record = self.record.clone();
        let produced = tap.clone();
        tokio::spawn(async move {
            // Ends when the node stops (its subscriptions end).
            let mut got = Vec::new();
            let mut index = 0u64;
            while let Some(d) = sub.recv().await {
                let t = now();
                let mut next = Some(d);
                while let Some(d) = next {
                    // A `Lagged` stands for the deliveries it replaced: it
                    // is timed as the newest of them.
                    let n = match &d {
                        Delivery::Reset {
                            reason: ResetReason::Lagged { missed },
                        } => (*missed).max(1),
                        _ => 1,
                    };
                    let at = match &d {
                        Delivery::Reset { .. } => produced.produced_at(index + n - 1),
                        Delivery::Event { .. } => None,
                    };
                    index += n;
                    got.push((t, d, at));
                    next = if got.len() < 1024 {
                        sub.try_recv()
                    } else {
                        None
                    };
                }
                // Lets the tap forget the batches read past.
                let _ = produced.produced_at(index);
                let mut r = lock(&record);
                let l = &mut r.lives[life];
                for (t, d, at) in got.drain(..) {
                    if matches!(d, Delivery::Reset { .. }) {
                        // Never found only if the tap failed to note it:
                        // then the earliest possible, which excuses least.
                        l.produced
                            .insert(l.deliveries.len(), at.unwrap_or(l.joined));
                    }
                    l.deliveries.push((t, d));
                }
            }
        });
        let m = &mut self.members[i];
        m.node = Some(node);
        m.tap = Some((tap, task));
        m.life = life;
        Ok(())
    }

    /// Number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Node `i`'s name.
    pub fn name(&self, i: NodeId) -> &str {
        &self.members[i].name
    }

    /// Node `i`, unless it crashed or shut down.
    pub fn node(&self, i: NodeId) -> Option<&Node> {
        self.members[i].node.as_ref()
    }

    /// Node `i`'s faults (they stay across its restarts).
    pub fn faults(&self, i: NodeId) -> &NodeFaults {
        &self.members[i].faults
    }

    /// Cuts node `i` off (nothing in, nothing out), or heals it.
    pub fn partition(&self, i: NodeId, cut: bool) {
        self.faults(i).partition(cut);
    }

    /// Publishes an invalidation of `keys` from node `i`.
    pub async fn publish<I, S>(&self, i: NodeId, keys: I) -> Result<(), PublishError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let event = Event::Invalidate {
            keys: keys.into_iter().map(Into::into).collect(),
        };
        self.publish_event(i, event).await
    }

    /// Publishes `event` from node `i`, and returns once its protocol took
    /// it (so it is in the record). A node's publishes made any other way
    /// (`node(i).publish_batch`, …) are recorded too, when its protocol
    /// takes them.
    pub async fn publish_event(&self, i: NodeId, event: Event) -> Result<(), PublishError> {
        let node = self.members[i].node.as_ref().ok_or(PublishError::Closed)?;
        node.publish(event).await?;
        // The driver takes commands in order: once it answered this one,
        // it has taken the publish.
        node.stats().await;
        Ok(())
    }

    /// Crashes node `i`: it stops at once, without `Goodbye`, and sends
    /// nothing more.
    pub fn crash(&mut self, i: NodeId) {
        let m = &mut self.members[i];
        if let (Some(_node), Some((tap, task))) = (m.node.take(), m.tap.take()) {
            tap.crash();
            task.abort();
            lock(&self.record).lives[m.life].crashed = Some(now());
        }
    }

    /// Shuts node `i` down cleanly (`Goodbye`, linger).
    pub async fn shutdown(&mut self, i: NodeId) {
        let m = &mut self.members[i];
        if let Some(node) = m.node.take() {
            m.tap = None;
            lock(&self.record).lives[m.life].closed = Some(now());
            node.shutdown().await;
        }
    }

    /// Restarts node `i` as a new process (crashing it first if it runs):
    /// a new stream and a fresh join.
    pub async fn restart(&mut self, i: NodeId) -> Result<(), JoinError> {
        self.crash(i);
        self.join(i).await
    }

    /// Recycles node `i` cleanly, as a deploy would: `Goodbye`, then a new
    /// process with a new stream and a fresh join.
    pub async fn recycle(&mut self, i: NodeId) -> Result<(), JoinError> {
        self.shutdown(i).await;
        self.join(i).await
    }

    /// Waits until everything node `i` published has left it (so that a
    /// crash that follows cannot take it along), or `limit` passes.
    pub async fn wait_sent(&self, i: NodeId, limit: Duration) -> bool {
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

    /// Node `i`'s counters (of its current life), unless it is stopped.
    pub async fn stats(&self, i: NodeId) -> Option<NodeStats> {
        Some(self.members[i].node.as_ref()?.stats().await)
    }

    /// What node `i` delivered in its current (or last) life, as read by
    /// the cluster's subscription.
    pub fn deliveries(&self, i: NodeId) -> Vec<(std::time::Instant, Delivery)> {
        lock(&self.record).lives[self.members[i].life]
            .deliveries
            .clone()
    }

    /// Everything published so far.
    pub fn published(&self) -> Vec<Published> {
        lock(&self.record).published.clone()
    }

    /// A copy of the record so far.
    pub fn record(&self) -> Record {
        lock(&self.record).clone()
    }

    /// When the cluster started (times in reports are relative to it).
    pub fn started(&self) -> std::time::Instant {
        lock(&self.record).start
    }

    /// Waits until the promise is kept — [`LoopbackCluster::check`] passes
    /// — and no running node has a gap open, or until `limit` passes.
    /// Returns true if it settled; on false, `check` says what is missing.
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

    /// Checks the no-silent-loss promise on the record with the test kit's
    /// one checker, [`Record::check`]. Call [`LoopbackCluster::settle`]
    /// first.
    pub fn check(&self) -> Result<CheckReport, Box<SilentLoss>> {
        lock(&self.record).check()
    }

    /// Shuts every running node down cleanly.
    pub async fn shutdown_all(&mut self) {
        for i in 0..self.members.len() {
            self.shutdown(i).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// With faults on (the tap in the driver: duplication, delay), the
    /// cluster still records what the production path hands out: the
    /// receiver's driver passes a datagram's events to the subscriptions as
    /// one run, and the recording subscription reads them from it. A
    /// driver that split runs into single deliveries for the harness to
    /// observe would push no run, and fail here.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cluster_records_through_the_run_path_with_faults_on() {
        let c = LoopbackCluster::start(2).await.unwrap();
        c.faults(1).set(Faults {
            duplicate: 1.0,
            jitter: Duration::from_millis(2),
            ..Faults::default()
        });
        let events = (0..20).map(|i| Event::Invalidate {
            keys: vec![format!("k{i}")],
        });
        let sender = c.node(0).unwrap();
        sender.publish_many(events).await.unwrap();
        assert!(c.settle(Duration::from_secs(10)).await);
        let report = c.check().unwrap();
        // 20 to the receiver, and 20 to the sender itself (deliver_own).
        assert_eq!((report.expected, report.delivered), (40, 40), "{report:?}");
        assert_eq!(c.published().len(), 20, "publish_many is recorded too");
        let receiver = c.node(1).unwrap();
        let in_runs = receiver.hub().run_events.load(Ordering::SeqCst);
        assert!(in_runs >= 20, "{in_runs} of 20 events came in runs");
        assert!(c.faults(1).lost() == 0 && receiver.stats().await.protocol.duplicates >= 1);
    }
}
