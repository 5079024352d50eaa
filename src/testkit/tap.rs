//! The test kit's hook in a real node's driver: the [`Faults`] applied to
//! every datagram the node receives (and, for a partition, sends), a crash
//! switch, and, in a [`LoopbackCluster`](super::LoopbackCluster), the
//! record of what the node heard and published. Set only through the test
//! kit ([`join_with_faults`], the cluster); no production type carries it.
//!
//! Deliveries are not recorded here: the cluster records them through an
//! ordinary subscription, after the driver's production path (runs of
//! events handed to the subscriptions as they are). What the tap notes is
//! when the driver produced them: for each batch it hands its
//! subscriptions, the index of its end in the node's delivery sequence and
//! the first clock reading the driver gave the protocol in that loop turn
//! (never later than any of the batch was produced, and never earlier than
//! any event in it was published, since the turn began after its datagram
//! arrived or its publish was taken). The recording subscription, which
//! reads that sequence from its start, times each `Reset` it reads by it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::time::Instant;

use super::faults::{Fate, Faults};
use super::record::{NodeId, Published, Record};
use crate::net::driver::Hooks;
use crate::node::{JoinError, Node, NodeConfig};
use crate::proto::{NodeCore, Output};
use crate::wire::{self, Body, Event};

/// Datagrams a node's tap holds back (delayed) at most; past it they are
/// handed to the protocol at once.
const MAX_DELAYED: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The faults of one real node, changeable while it runs (a change applies
/// to the next datagram), and what they lost. A fault applies when the
/// node reads a datagram, so a test that lifts a fault can first wait until
/// what it meant to lose was lost ([`NodeFaults::lost_data`]).
pub struct NodeFaults {
    state: Mutex<State>,
    lost: AtomicU64,
    lost_data: AtomicU64,
    sent: AtomicU64,
    read: Mutex<HashMap<u64, u64>>,
}

struct State {
    faults: Faults,
    bad: bool,
    rng: SmallRng,
}

impl NodeFaults {
    pub(crate) fn new(faults: Faults, seed: u64) -> Arc<NodeFaults> {
        Arc::new(NodeFaults {
            state: Mutex::new(State {
                faults,
                bad: false,
                rng: SmallRng::seed_from_u64(seed),
            }),
            lost: AtomicU64::new(0),
            lost_data: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            read: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces the node's faults.
    pub fn set(&self, faults: Faults) {
        lock(&self.state).faults = faults;
    }

    /// Changes the node's faults in place.
    pub fn update(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut lock(&self.state).faults);
    }

    /// The node's faults now.
    pub fn get(&self) -> Faults {
        lock(&self.state).faults.clone()
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.set(Faults::default());
    }

    /// Cuts the node off (nothing in, nothing out), or heals it.
    pub fn partition(&self, cut: bool) {
        self.update(|f| f.partitioned = cut);
    }

    /// Datagrams the faults lost so far, received or to be sent.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::SeqCst)
    }

    /// Received `Data` datagrams the faults lost so far.
    pub fn lost_data(&self) -> u64 {
        self.lost_data.load(Ordering::SeqCst)
    }

    /// Datagrams that left the node (sent without error: not lost to a
    /// partition or a crash), in all its lives; one sent to several peers
    /// counts once per peer.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Datagrams of `stream` the node read from its sockets, whatever the
    /// faults then did with them. With [`NodeFaults::sent`], a test can
    /// wait until a node read everything another sent (nothing of it is
    /// left in a socket's buffer to be read later).
    pub fn read_of(&self, stream: u64) -> u64 {
        lock(&self.read).get(&stream).copied().unwrap_or(0)
    }

    fn fate(&self, datagram: Option<&wire::Datagram>) -> Fate {
        let mut st = lock(&self.state);
        let State { faults, bad, rng } = &mut *st;
        faults.fate(bad, rng, datagram)
    }

    fn partitioned(&self) -> bool {
        lock(&self.state).faults.partitioned
    }
}

/// Where a cluster node's tap writes: its life in the cluster's record.
pub(crate) struct Recording {
    pub record: Arc<Mutex<Record>>,
    pub node: NodeId,
    pub life: usize,
}

/// One life of a node, as its driver's hook sees it.
pub(crate) struct Tap {
    faults: Arc<NodeFaults>,
    cluster: u32,
    crashed: AtomicBool,
    recording: Option<Recording>,
    /// When recording: for each batch the driver handed its subscriptions
    /// and the recording subscription has not passed yet, the index (in
    /// the node's delivery sequence) just past its end, and when it was
    /// produced (see the module's docs).
    produced: Mutex<VecDeque<(u64, std::time::Instant)>>,
}

impl Tap {
    pub(crate) fn new(
        faults: Arc<NodeFaults>,
        cluster: &str,
        recording: Option<Recording>,
    ) -> Arc<Tap> {
        Arc::new(Tap {
            faults,
            cluster: wire::cluster_hash(cluster),
            crashed: AtomicBool::new(false),
            recording,
            produced: Mutex::new(VecDeque::new()),
        })
    }

    /// When the delivery at `index` of the node's delivery sequence was
    /// produced (see the module's docs); forgets every batch before it.
    /// Indices asked must not decrease.
    pub(crate) fn produced_at(&self, index: u64) -> Option<std::time::Instant> {
        let mut log = lock(&self.produced);
        while log.front().is_some_and(|(end, _)| *end <= index) {
            log.pop_front();
        }
        log.front().map(|(_, at)| *at)
    }

    /// From now on the node sends nothing (it is being crashed).
    pub(crate) fn crash(&self) {
        self.crashed.store(true, Ordering::SeqCst);
    }

    fn record(&self, f: impl FnOnce(&mut Record, NodeId, usize)) {
        if let Some(r) = &self.recording {
            f(&mut lock(&r.record), r.node, r.life);
        }
    }
}

/// A datagram held back: due time, order of arrival, stream, bytes.
type Delayed = Reverse<(Instant, u64, u64, SocketAddr, Vec<u8>)>;

/// The tap as the driver holds it: with the datagrams it delays.
pub(crate) struct DriverTap {
    tap: Arc<Tap>,
    delayed: BinaryHeap<Delayed>,
    order: u64,
    /// The first clock reading given to the protocol since the driver last
    /// handed out deliveries.
    since: Option<std::time::Instant>,
    /// Deliveries handed to the subscriptions so far (the index of the
    /// next one).
    handed: u64,
}

impl DriverTap {
    pub(crate) fn new(tap: Arc<Tap>) -> DriverTap {
        DriverTap {
            tap,
            delayed: BinaryHeap::new(),
            order: 0,
            since: None,
            handed: 0,
        }
    }

    /// The driver gives the protocol an input (a datagram, a timeout, a
    /// command) at `now`.
    pub(crate) fn input(&mut self, now: std::time::Instant) {
        self.since.get_or_insert(now);
    }

    /// The driver, at `now`, hands `batch` to the subscriptions: when
    /// recording, notes when it was produced (the turn's first input).
    pub(crate) fn handing(&mut self, batch: &[Output], now: std::time::Instant) {
        let at = self.since.take().unwrap_or(now);
        if self.tap.recording.is_none() {
            return;
        }
        let n: u64 = batch.iter().map(|o| o.len() as u64).sum();
        if n > 0 {
            self.handed += n;
            lock(&self.tap.produced).push_back((self.handed, at));
        }
    }

    /// A datagram read from the socket: through the faults to `core`.
    pub(crate) fn receive(&mut self, core: &mut NodeCore, from: SocketAddr, bytes: &[u8]) {
        let decoded = wire::decode(bytes, self.tap.cluster).ok();
        // From the header, which is in the clear even when the body is
        // encrypted (and `decoded` is `None`).
        let stream = wire::decode_header(bytes, self.tap.cluster).map_or(0, |(h, _)| h.stream);
        *lock(&self.tap.faults.read).entry(stream).or_default() += 1;
        match self.tap.faults.fate(decoded.as_ref()) {
            Fate::Lost => {
                self.tap.faults.lost.fetch_add(1, Ordering::SeqCst);
                if decoded
                    .as_ref()
                    .is_some_and(|d| matches!(d.body, Body::Data { .. }))
                {
                    self.tap.faults.lost_data.fetch_add(1, Ordering::SeqCst);
                }
            }
            Fate::Arrives { after, again } => {
                for d in [Some(after), again].into_iter().flatten() {
                    if d.is_zero() || self.delayed.len() >= MAX_DELAYED {
                        self.hand(core, stream, from, bytes);
                    } else {
                        self.order += 1;
                        self.delayed.push(Reverse((
                            Instant::now() + d,
                            self.order,
                            stream,
                            from,
                            bytes.to_vec(),
                        )));
                    }
                }
            }
        }
    }

    /// Hands a datagram of `stream` to the protocol, and records that the
    /// node heard it.
    fn hand(&mut self, core: &mut NodeCore, stream: u64, from: SocketAddr, bytes: &[u8]) {
        let now = Instant::now().into_std();
        self.input(now);
        core.handle_datagram_from(now, Some(from), bytes);
        self.tap.record(|r, _, life| {
            r.lives[life].heard.insert(stream, now);
        });
    }

    /// When the next delayed datagram is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.delayed.peek().map(|Reverse((t, ..))| *t)
    }

    /// Hands every delayed datagram that is due to the protocol.
    pub(crate) fn release(&mut self, core: &mut NodeCore) {
        let now = Instant::now();
        while self.next_due().is_some_and(|t| t <= now) {
            if let Some(Reverse((_, _, stream, from, bytes))) = self.delayed.pop() {
                self.hand(core, stream, from, &bytes);
            }
        }
    }

    /// False to lose a datagram the node is about to send (partitioned or
    /// crashed).
    pub(crate) fn sending(&self, _bytes: &[u8]) -> bool {
        if self.crashed() {
            return false;
        }
        if self.tap.faults.partitioned() {
            self.tap.faults.lost.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// `n` datagrams left the node (sent without error).
    pub(crate) fn left(&self, n: u64) {
        self.tap.faults.sent.fetch_add(n, Ordering::SeqCst);
    }

    /// True once the node is being crashed: nothing more may leave it.
    pub(crate) fn crashed(&self) -> bool {
        self.tap.crashed.load(Ordering::SeqCst)
    }

    /// The protocol took `event` as `seq` of `stream` at `at`.
    pub(crate) fn published(&self, stream: u64, seq: u64, at: std::time::Instant, event: Event) {
        self.tap.record(|r, node, _| {
            r.published.push(Published {
                node,
                stream,
                seq,
                at,
                event,
            })
        });
    }

    /// The node's protocol gave the outcome of a confirmation.
    pub(crate) fn confirmed(&self, report: &crate::proto::ConfirmReport) {
        let now = Instant::now().into_std();
        self.tap.record(|r, _, life| {
            r.lives[life].confirmations.push((now, report.clone()));
        });
    }

    /// True when the publishes need recording (else the driver need not
    /// copy them).
    pub(crate) fn records(&self) -> bool {
        self.tap.recording.is_some()
    }
}

/// Joins a node as [`Node::join`] does, with `faults` on what it receives
/// (and, for a partition, sends), applied in its driver to the datagrams
/// themselves. Returns the node and its faults, to change them while it
/// runs and to count what they lost.
///
/// ```
/// use cachecast::testkit::{join_with_faults, Faults, Loopback};
///
/// #[tokio::main(flavor = "current_thread")]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let place = Loopback::new(); // 127.0.0.1, TTL 0, a fresh group
///     let lossy = Faults {
///         loss: 0.1,
///         ..Faults::default()
///     };
///     let (node, faults) = join_with_faults(place.config("lossy"), lossy).await?;
///     faults.clear(); // no more loss from here on
///     node.shutdown().await;
///     Ok(())
/// }
/// ```
pub async fn join_with_faults(
    config: NodeConfig,
    faults: Faults,
) -> Result<(Node, Arc<NodeFaults>), JoinError> {
    let seed = config.seed.unwrap_or_else(crate::node::random_u64);
    let faults = NodeFaults::new(faults, seed);
    let tap = Tap::new(faults.clone(), &config.cluster, None);
    let (node, _) = Node::start(config, hooks(tap)).await?;
    Ok((node, faults))
}

/// The driver hooks that carry `tap`.
pub(crate) fn hooks(tap: Arc<Tap>) -> Hooks {
    Hooks {
        tap: Some(DriverTap::new(tap)),
    }
}
