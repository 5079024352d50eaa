//! The public async API: join a cluster, publish invalidations, subscribe
//! to deliveries.
//!
//! ```no_run
//! use cachecast::{Delivery, Node, NodeConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = NodeConfig::default();
//! config.cluster = "shop".into();
//! let node = Node::join(config).await?; // returns once in sync
//! let mut sub = node.subscribe();
//! node.invalidate(["user:42", "cart:42"]).await?;
//! while let Some(d) = sub.recv().await {
//!     match d {
//!         Delivery::Event { event, .. } => println!("invalidate {event:?}"),
//!         Delivery::Reset { reason } => println!("clear the whole cache: {reason:?}"),
//!     }
//! }
//! node.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! This layer only wires things together: the socket ([`crate::net::socket`]),
//! the driver task (`net::driver`) and the protocol
//! ([`crate::proto`]). It takes no protocol decision.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch, RwLock};

use crate::keys::{KeyFile, KeyFileError};
use crate::net::hub::{Cursor, Hub, Take};
use crate::proto::AuthMode;
use crate::wire::{KeyError, Keyring};

use crate::net::driver::{Command, Driver, DriverStats, Hooks};
use crate::net::peers::{PeerSet, PeerSpec, Transport};
use crate::net::socket::{self, InterfaceSpec, ResolvedInterface, SocketError, SocketOptions};
use crate::proto::NodeCore;
use crate::proto::{
    ConfigError, ConfirmReport, CoreConfig, Delivery, DeliveryRef, Member, PublishError,
    ResetReason, Staleness, Stats,
};
use crate::wire::{self, Event, EventBatch};

/// A random number from the operating system's entropy (stream ids,
/// seeds); through `SmallRng`, so that the library needs no `std_rng`.
pub(crate) fn random_u64() -> u64 {
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    SmallRng::from_entropy().gen()
}

/// The group used when none is given: administratively scoped (stays in
/// the organisation), in 239.255.0.0/16.
pub const DEFAULT_GROUP: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(239, 255, 67, 67), 7467));

/// Everything needed to join a cluster. [`NodeConfig::default`] is for a
/// LAN (the system's interface, TTL 1); [`NodeConfig::loopback`] keeps
/// everything on this host (interface 127.0.0.1, TTL 0), for trying things
/// out and for tests. Change any field with struct update syntax:
///
/// ```
/// use cachecast::{InterfaceSpec, NodeConfig};
///
/// let lan = NodeConfig {
///     cluster: "shop".into(),
///     interface: "eth0".parse::<InterfaceSpec>().unwrap(),
///     ..NodeConfig::default()
/// };
/// let here = NodeConfig::loopback("shop");
/// assert_eq!((here.ttl, lan.ttl), (0, 1));
/// ```
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Multicast group and port (IPv4 or IPv6). Default [`DEFAULT_GROUP`].
    pub group: SocketAddr,
    /// Interface to send and receive on, by name or address (see
    /// [`InterfaceSpec`]). Default: the system's choice.
    pub interface: InterfaceSpec,
    /// Cluster name: nodes of other clusters on the same group and port are
    /// ignored. Default `"default"`.
    pub cluster: String,
    /// This node's name in heartbeats and logs (at most 64 bytes). Default
    /// `node-<pid>`.
    pub node_name: String,
    /// Multicast TTL (IPv6 hop limit). Default 1: stays on the LAN. 0 keeps
    /// everything on this host.
    pub ttl: u32,
    /// Deliver multicast to other sockets of this host. Default true (many
    /// nodes on one host hear each other).
    pub loopback: bool,
    /// Receive buffer requested from the kernel. Default 32 MiB
    /// ([`socket::DEFAULT_RECV_BUFFER`]); the granted size is in
    /// [`NodeStats`].
    pub recv_buffer: usize,
    /// Deliveries a subscriber may fall behind by before it gets a
    /// `Reset { Lagged }` instead. Once a subscription was handed out and is
    /// half of it behind, the node stops reading its socket so that the
    /// subscriber can catch up (what the kernel then drops is repaired); a
    /// subscriber that does not move for 50 ms is no longer waited for
    /// until it has caught up.
    /// Default 65536.
    pub subscriber_queue: usize,
    /// After `Goodbye`, how long `shutdown` keeps the node running to
    /// answer late requests (and repeat the `Goodbye`). It lasts at least
    /// until the `Goodbye` was repeated a `reorder_window` after the first
    /// (about 7 ms by default), so that a node that lost the first still
    /// hears one. Default 50 ms.
    pub linger: Duration,
    /// Seed of the protocol's RNG; `None` draws one.
    pub seed: Option<u64>,
    /// This node never publishes (a listener, a cache that only evicts):
    /// its publish calls are refused with [`PublishError::ReceiveOnly`], and
    /// it says so when it joins and in every heartbeat, so that when it
    /// stops, even by `kill -9`, no other node Resets for it. Default false.
    pub receive_only: bool,
    /// Deliver this node's own events to its own subscriptions (as
    /// [`Delivery::Event`]s of [`Node::stream`]), so that
    /// [`Node::invalidate`] invalidates everywhere, this server included.
    /// Default true; turn it off when the application already evicts
    /// locally before publishing.
    pub deliver_own: bool,
    /// The key file of the cluster (see [`crate::keys`]): with one, every
    /// datagram is authenticated. Its first key sends, every key in it is
    /// accepted; [`Node::reload_keys`] reads it again. Default none.
    pub key_file: Option<PathBuf>,
    /// How keys are used: [`AuthMode::Require`] when a `key_file` is given
    /// and this is `None`, else [`AuthMode::Off`]. `Accept` is the roll-out
    /// step (authenticated and unauthenticated datagrams both accepted).
    pub auth: Option<AuthMode>,
    /// Encrypt bodies, not only authenticate them (needs a key file; every
    /// node must hold the key). Default false.
    pub encrypt: bool,
    /// How datagrams travel: to the multicast `group` (the default), to
    /// `peers` one unicast copy each (where multicast does not work:
    /// clouds, most Kubernetes networks), or both (see
    /// [`crate::net::peers`]). Every receiver rule and the no-silent-loss
    /// promise are the same.
    pub transport: Transport,
    /// The peers of a unicast transport: addresses (`IP:PORT`) and names
    /// (`NAME:PORT`, re-resolved every `peer_refresh`: a Kubernetes headless
    /// service). With `Unicast`, the sources of datagrams this node accepts
    /// are added (learned; authenticated ones only, with keys), so a node
    /// that others list is answered even if it does not list them. Nothing
    /// passes addresses on: of every two nodes, one must list the other.
    pub peers: Vec<PeerSpec>,
    /// Where a unicast node receives: default the unspecified address on
    /// the `group`'s port (the family of the group). Every node on one
    /// host needs its own. With `Both`, the multicast socket receives (on
    /// the group's port) and this must be unset.
    pub listen: Option<SocketAddr>,
    /// How often `peers`' names are resolved again. Default 15 s.
    pub peer_refresh: Duration,
    /// Multicast only: this node has a socket of its own (a port of the
    /// system's choosing on the interface's address) and sends its `Nak`s
    /// from it; a repair it alone asked for comes back to it alone, and
    /// goes to the group when several nodes asked (or it asked again
    /// twice, once with few `max_nak_tries`, or for much at once). Nodes
    /// that lost nothing then receive no repairs. As a sender, a node
    /// directs repairs only when this is on. Turn it off on every node where a host firewall lets only the
    /// group's port in: a node with it off asks from the group's port and
    /// is always repaired through the group. Default true.
    pub direct_repairs: bool,
    /// Protocol timers and bounds (`max_datagram`, `sync_window`,
    /// `heartbeat_idle`, `reorder_window`, `stream_timeout`, `max_streams`,
    /// …). Its `cluster`, `stream`, `node_name`, `seed`, `receive_only` and
    /// `deliver_own` are set from the fields above at join; so are its
    /// `auth.keyring` when `key_file` is given, `auth.mode` when `auth` or
    /// `key_file` is, and `auth.encrypt` when `encrypt` is true.
    pub protocol: CoreConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            group: DEFAULT_GROUP,
            interface: InterfaceSpec::Default,
            cluster: "default".into(),
            node_name: format!("node-{}", std::process::id()),
            ttl: 1,
            loopback: true,
            recv_buffer: socket::DEFAULT_RECV_BUFFER,
            subscriber_queue: 65536,
            linger: Duration::from_millis(50),
            seed: None,
            receive_only: false,
            deliver_own: true,
            key_file: None,
            auth: None,
            encrypt: false,
            transport: Transport::Multicast,
            peers: Vec::new(),
            listen: None,
            peer_refresh: Duration::from_secs(15),
            direct_repairs: true,
            protocol: CoreConfig::default(),
        }
    }
}

impl NodeConfig {
    /// The multicast socket options this configuration asks for (the
    /// group's socket, the direct socket, and `cachecast doctor`'s probes).
    pub fn socket_options(&self) -> SocketOptions {
        SocketOptions {
            group: self.group,
            interface: self.interface.clone(),
            ttl: self.ttl,
            loopback: self.loopback,
            recv_buffer: self.recv_buffer,
        }
    }

    /// A configuration for cluster `cluster` that keeps everything on this
    /// host: interface 127.0.0.1 and multicast TTL 0 (nothing it sends
    /// leaves the host), on the default group. Other fields as
    /// [`NodeConfig::default`].
    pub fn loopback(cluster: impl Into<String>) -> Self {
        NodeConfig {
            interface: InterfaceSpec::loopback(),
            ttl: 0,
            cluster: cluster.into(),
            ..NodeConfig::default()
        }
    }
}

/// Why a node could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// A configuration value is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The socket could not be set up.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The key file could not be used.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The keys could not be derived or combined.
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
    /// Must be called inside a tokio runtime with IO and time enabled.
    #[error("the socket could not be registered with tokio: {0}")]
    Runtime(std::io::Error),
}

/// Why keys could not be reloaded ([`Node::reload_keys`]).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The node was started without a key file.
    #[error("the node has no key file to reload")]
    NoKeyFile,
    /// The key file could not be used.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The keys could not be derived or combined.
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
    /// The protocol refused the keyring (e.g. no sending key).
    #[error(transparent)]
    Refused(ConfigError),
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
}

/// This host's clock, ms since the Unix epoch (0 if it is before it).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Counters of a node: the protocol's, and the driver's and socket's.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStats {
    /// Protocol counters.
    #[serde(flatten)]
    pub protocol: Stats,
    /// `Reset { Lagged }` given to subscribers that fell behind.
    pub lagged_resets: u64,
    /// Sends the OS refused.
    pub send_errors: u64,
    /// Receives the OS reported as failed.
    pub recv_errors: u64,
    /// Receive buffer asked for.
    pub recv_buffer_requested: usize,
    /// Receive buffer the kernel granted (Linux reports twice the usable size).
    pub recv_buffer_granted: usize,
    /// The interface in use.
    pub interface: String,
}

struct Shared {
    /// The driver's delivery hub (subscriptions end when the driver stops
    /// and closes it).
    deliveries: Arc<Hub>,
    /// Subscribed at join, so that the first subscriber misses nothing
    /// between `join` returning and its `subscribe`.
    first: Mutex<Option<Cursor>>,
    /// The seq the next published event gets: taken and advanced in the
    /// same critical section that hands its command to the driver, so that
    /// it is the seq the core gives it (the core numbers from 1, in command
    /// order, and refuses nothing the handle checked, unless closed).
    next_seq: Mutex<u64>,
    lagged: Arc<AtomicU64>,
    final_stats: Arc<Mutex<Option<DriverStats>>>,
    /// True once shutdown began. Publishers hold it for reading while they
    /// queue an event, so that no event is queued behind the `Shutdown`
    /// (where it would be lost while the caller was told it was sent).
    closed: RwLock<bool>,
    /// Becomes true when the driver has stopped.
    done: watch::Receiver<bool>,
    max_datagram: usize,
    receive_only: bool,
    stream: u64,
    interface: ResolvedInterface,
    recv_buffer_requested: usize,
    recv_buffer_granted: usize,
    local_addr: Option<SocketAddr>,
    /// Where the keys were read from, for reloads.
    key_file: Option<PathBuf>,
    /// The cluster's hash (the keys' derivation binds it).
    cluster: u32,
}

/// A member of a cluster. Cheap to clone; every clone publishes on the same
/// stream. The node stops (with `Goodbye`) on [`Node::shutdown`] or when
/// every clone is dropped.
#[derive(Clone)]
pub struct Node {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("stream", &format_args!("{:#018x}", self.shared.stream))
            .field("interface", &self.shared.interface)
            .finish()
    }
}

impl Node {
    /// Opens the socket, joins the group, announces itself with `Hello` and
    /// waits out the sync window, during which every live stream answers
    /// with its position. Returns once in sync: from then on, every event
    /// another node publishes is delivered to subscribers, or a `Reset`
    /// after it (and so is every event this node publishes, with
    /// [`NodeConfig::deliver_own`]). Start caching only after this returns.
    pub async fn join(config: NodeConfig) -> Result<Node, JoinError> {
        Ok(Self::start(config, Hooks::default()).await?.0)
    }

    /// [`Node::join`] with the driver's `hooks` (the test kit's); also
    /// returns the driver task, which the test kit aborts to crash it.
    pub(crate) async fn start(
        config: NodeConfig,
        hooks: Hooks,
    ) -> Result<(Node, tokio::task::AbortHandle), JoinError> {
        let mut core_cfg = config.protocol.clone();
        core_cfg.cluster = wire::cluster_hash(&config.cluster);
        core_cfg.node_name = config.node_name.clone();
        core_cfg.receive_only = config.receive_only;
        core_cfg.deliver_own = config.deliver_own;
        core_cfg.stream = loop {
            let s = random_u64();
            if s != 0 {
                break s;
            }
        };
        core_cfg.seed = config.seed.unwrap_or_else(random_u64);
        // `protocol.auth` as given (a keyring set by hand), unless the
        // fields above say otherwise.
        core_cfg.auth.mode = match (config.auth, &config.key_file) {
            (Some(mode), _) => mode,
            (None, Some(_)) => AuthMode::Require,
            (None, None) => core_cfg.auth.mode,
        };
        core_cfg.auth.encrypt |= config.encrypt;
        if let Some(path) = &config.key_file {
            core_cfg.auth.keyring = KeyFile::load(path)?.keyring(core_cfg.cluster)?;
            if core_cfg.auth.mode == AuthMode::Off {
                tracing::warn!(
                    key_file = %path.display(),
                    "auth is off: the key file is not used (nothing is sent authenticated or checked)"
                );
            }
        }
        core_cfg.auth.wall_clock_ms = unix_ms();
        core_cfg.validate()?;
        if config.subscriber_queue == 0 {
            return Err(ConfigError::new("subscriber_queue", "must be at least 1").into());
        }

        let (fixed, names) = check_peers(&config)?;
        let opts = config.socket_options();
        let sock = if config.transport == Transport::Unicast {
            let listen = config.listen.unwrap_or_else(|| match config.group {
                SocketAddr::V4(g) => SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, g.port())),
                SocketAddr::V6(g) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, g.port())),
            });
            socket::open_unicast(listen, config.recv_buffer)?
        } else {
            socket::open(&opts)?
        };
        // This node's own datagrams, looped back, are dropped by the kernel
        // where it can (else the core ignores them after their header).
        let own = core_cfg.own_prefix();
        if let Err(e) = socket::drop_prefix(&socket2::SockRef::from(&sock.socket), &own) {
            tracing::debug!(error = %e, "no socket filter: own datagrams are read and ignored");
        }
        let local_addr = sock.socket.local_addr().ok();
        let (peers, resolved) = if config.transport.unicast() {
            let own = local_addr.unwrap_or(sock.group);
            let local_ips = socket::list_interfaces()
                .into_iter()
                .flat_map(|i| i.addrs)
                .collect();
            let mut set = PeerSet::new(fixed, own, local_ips, core_cfg.stream_timeout);
            // The names once before the first Hello, so that it reaches
            // them; then again every `peer_refresh`.
            let resolved = if names.is_empty() {
                None
            } else {
                let answers = resolve_each(&names).await;
                let first = union(&answers);
                set.set_resolved(first.clone(), std::time::Instant::now());
                let (tx, rx) = watch::channel(first);
                tokio::spawn(keep_resolving(names, config.peer_refresh, answers, tx));
                Some(rx)
            };
            tracing::info!(transport = %config.transport, peers = ?set.destinations(), "unicast peers");
            (Some(set), resolved)
        } else {
            (None, None)
        };
        // Multicast only: a socket of this node's own, so that a repair
        // one node asked for can go to it alone (see `socket::open_direct`).
        // Without it (it could not be opened), repairs go to the group.
        let direct = if config.transport == Transport::Multicast && config.direct_repairs {
            match socket::open_direct(&opts, &sock.interface).and_then(|d| {
                tokio::net::UdpSocket::from_std(d.socket)
                    .and_then(crate::net::batch::BatchSocket::new)
                    .map_err(|source| SocketError::Create {
                        group: config.group,
                        source,
                    })
            }) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, "no direct socket: every repair goes to the group");
                    None
                }
            }
        } else {
            None
        };
        let udp = tokio::net::UdpSocket::from_std(sock.socket)
            .and_then(crate::net::batch::BatchSocket::new)
            .map_err(JoinError::Runtime)?;
        tracing::info!(
            group = %config.group,
            interface = %sock.interface.name,
            cluster = %config.cluster,
            node = %config.node_name,
            stream = format_args!("{:016x}", core_cfg.stream),
            recv_buffer = sock.recv_buffer_granted,
            "joining"
        );

        let now = tokio::time::Instant::now();
        let mut core = NodeCore::new(core_cfg.clone(), now.into_std())?;
        // A repair one node asked for goes to it alone: unicast, or
        // multicast with a direct socket.
        if config.transport == Transport::Unicast {
            core.set_directed(true);
        } else {
            core.set_directed_multicast(direct.is_some(), Some(config.group.port()));
        }
        let sync_deadline = tokio::time::Instant::from_std(core.sync_deadline());
        let (tx, rx) = mpsc::channel(4096);
        let deliveries = Hub::new(config.subscriber_queue);
        let first = deliveries.subscribe();
        let final_stats = Arc::new(Mutex::new(None));
        let (done_tx, done) = watch::channel(false);
        #[cfg(not(feature = "test-util"))]
        let Hooks {} = hooks;
        let driver = Driver {
            core,
            socket: udp,
            direct,
            group: config.transport.multicast().then_some(config.group),
            peers,
            resolved,
            peers_checked: now.into_std(),
            commands: rx,
            clock_at: now.into_std() + Duration::from_secs(10),
            deliveries: deliveries.clone(),
            #[cfg(feature = "test-util")]
            hooks,
            linger: config.linger,
            final_stats: final_stats.clone(),
            done: done_tx,
            confirms: std::collections::HashMap::new(),
        };
        let task = tokio::spawn(driver.run());
        tokio::time::sleep_until(sync_deadline).await;
        let node = Node {
            commands: tx,
            shared: Arc::new(Shared {
                deliveries,
                first: Mutex::new(Some(first)),
                next_seq: Mutex::new(1),
                lagged: Arc::new(AtomicU64::new(0)),
                final_stats,
                closed: RwLock::new(false),
                done,
                max_datagram: core_cfg.body_limit(),
                receive_only: core_cfg.receive_only,
                stream: core_cfg.stream,
                interface: sock.interface,
                recv_buffer_requested: sock.recv_buffer_requested,
                recv_buffer_granted: sock.recv_buffer_granted,
                local_addr,
                key_file: config.key_file.clone(),
                cluster: core_cfg.cluster,
            }),
        };
        Ok((node, task.abort_handle()))
    }

    /// The node's delivery hub, for the crate's tests.
    #[cfg(test)]
    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.shared.deliveries
    }

    /// This node's stream id (new at every join).
    pub fn stream(&self) -> u64 {
        self.shared.stream
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.local_addr
    }

    /// Publishes an event to every node of the cluster (this one's own
    /// subscribers too, with [`NodeConfig::deliver_own`]). It is checked
    /// here (limits, size against `max_datagram`) and sent at once, batched
    /// with whatever else is being published (at high rates, within
    /// [`CoreConfig::coalesce`](crate::CoreConfig::coalesce): 50 µs).
    pub async fn publish(&self, event: Event) -> Result<Receipt, PublishError> {
        wire::check_event(&event, self.shared.max_datagram)?;
        self.send_publish(1, || Command::Publish(event)).await
    }

    /// Hands a publish command to the driver, unless the node is shut
    /// down: the gate makes a publish either sent or refused, never lost.
    /// The command is built only once the driver has room for it, so that a
    /// refused or cancelled publish takes nothing from the caller.
    async fn send_publish(
        &self,
        events: u64,
        cmd: impl FnOnce() -> Command,
    ) -> Result<Receipt, PublishError> {
        if self.shared.receive_only {
            return Err(PublishError::ReceiveOnly);
        }
        let closed = self.shared.closed.read().await;
        if *closed {
            return Err(PublishError::Closed);
        }
        let permit = (self.commands.reserve().await).map_err(|_| PublishError::Closed)?;
        let mut next = self
            .shared
            .next_seq
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let first = *next;
        *next += events;
        permit.send(cmd());
        Ok(Receipt {
            stream: self.shared.stream,
            seqs: first..first + events,
        })
    }

    /// Publishes several events at once, in order: one hand-over to the
    /// driver for all of them (see [`Node::publish_batch`], which this
    /// fills; at most [`wire::MAX_BATCH`] events). Every event is checked
    /// first; if one is invalid, none is published.
    pub async fn publish_many(
        &self,
        events: impl IntoIterator<Item = Event>,
    ) -> Result<Receipt, PublishError> {
        let mut batch = EventBatch::new();
        for event in events {
            batch.push(&event)?;
        }
        self.publish_batch(&mut batch).await
    }

    /// Publishes the events of `batch`, in order, in one hand-over, with
    /// nothing left to encode: the fastest way to publish, and with
    /// [`EventBatch::invalidate`] no allocation per event. The batch is left
    /// empty, ready for more. If its largest event does not fit in
    /// `max_datagram`, nothing is published.
    pub async fn publish_batch(&self, batch: &mut EventBatch) -> Result<Receipt, PublishError> {
        wire::check_size(batch.largest(), self.shared.max_datagram)?;
        if batch.is_empty() {
            return Ok(Receipt {
                stream: self.shared.stream,
                seqs: 0..0,
            });
        }
        let n = batch.len() as u64;
        self.send_publish(n, || Command::PublishEvents(batch.take()))
            .await
    }

    /// Invalidates these keys everywhere.
    pub async fn invalidate<I, S>(&self, keys: I) -> Result<Receipt, PublishError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let keys = keys.into_iter().map(Into::into).collect();
        self.publish(Event::Invalidate { keys }).await
    }

    /// Invalidates every key starting with `prefix` everywhere.
    pub async fn invalidate_prefix(
        &self,
        prefix: impl Into<String>,
    ) -> Result<Receipt, PublishError> {
        self.publish(Event::InvalidatePrefix {
            prefix: prefix.into(),
        })
        .await
    }

    /// Clears every cache of the cluster.
    pub async fn clear_all(&self) -> Result<Receipt, PublishError> {
        self.publish(Event::ClearAll).await
    }

    /// A new subscription, with deliveries in the order the protocol
    /// produced them. The first subscription gets everything since the
    /// node joined (nothing is lost between `join` and `subscribe`); later
    /// ones get everything from the moment they subscribe.
    pub fn subscribe(&self) -> Subscription {
        let first = self
            .shared
            .first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.shared.deliveries.activate();
        Subscription {
            cursor: first.unwrap_or_else(|| self.shared.deliveries.subscribe()),
            lagged: self.shared.lagged.clone(),
        }
    }

    /// A snapshot of the counters (the last one, after shutdown).
    pub async fn stats(&self) -> NodeStats {
        let (tx, rx) = oneshot::channel();
        let mut done = self.shared.done.clone();
        let d = if self.commands.send(Command::Stats(tx)).await.is_ok() {
            // The driver may stop before it reads the request: then its
            // last counters are in `final_stats`.
            tokio::select! {
                r = rx => r.ok(),
                _ = done.wait_for(|d| *d) => None,
            }
        } else {
            None
        };
        let d = d
            .or_else(|| {
                self.shared
                    .final_stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
            })
            .unwrap_or_default();
        let lagged = self.shared.lagged.load(Ordering::Relaxed);
        let mut protocol = d.protocol;
        if lagged > 0 {
            *protocol.resets.entry("lagged").or_default() += lagged;
        }
        NodeStats {
            protocol,
            lagged_resets: lagged,
            send_errors: d.send_errors,
            recv_errors: d.recv_errors,
            recv_buffer_requested: self.shared.recv_buffer_requested,
            recv_buffer_granted: self.shared.recv_buffer_granted,
            interface: self.shared.interface.name.clone(),
        }
    }

    /// What this node knows of every other node's stream it follows
    /// (their names, positions, open gaps, when last heard), in stream
    /// order; empty once the node has stopped.
    pub async fn streams(&self) -> Vec<crate::proto::StreamState> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Streams(tx)).await.is_err() {
            return Vec::new();
        }
        let mut done = self.shared.done.clone();
        tokio::select! {
            r = rx => r.unwrap_or_default(),
            _ = done.wait_for(|d| *d) => Vec::new(),
        }
    }

    /// Awaits confirmation of what `receipt` (from a publish call of this
    /// node) published: resolves when every member that was live at this
    /// call has delivered those events, or a `Reset` after them, or has
    /// left (`Goodbye`) or died (its lease expired), or at `timeout` with
    /// the members still pending. Acknowledgements are asked for only while
    /// a confirmation is awaited.
    ///
    /// ```no_run
    /// # async fn f(node: cachecast::Node) -> Result<(), cachecast::PublishError> {
    /// use std::time::Duration;
    /// let receipt = node.invalidate(["user:42"]).await?;
    /// let report = node.confirm(&receipt, Duration::from_secs(1)).await?;
    /// if !report.is_complete() {
    ///     eprintln!("not confirmed by: {:?}", report.pending);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// Fails with [`PublishError::Closed`] once the node has stopped.
    pub async fn confirm(
        &self,
        receipt: &Receipt,
        timeout: Duration,
    ) -> Result<ConfirmReport, PublishError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Confirm {
            seqs: receipt.seqs.clone(),
            timeout,
            reply,
        };
        self.commands
            .send(cmd)
            .await
            .map_err(|_| PublishError::Closed)?;
        let mut done = self.shared.done.clone();
        tokio::select! {
            r = rx => r.map_err(|_| PublishError::Closed),
            _ = done.wait_for(|d| *d) => Err(PublishError::Closed),
        }
    }

    /// Publishes `events` (as [`Node::publish_many`]) and awaits their
    /// confirmation (as [`Node::confirm`]).
    pub async fn publish_confirmed(
        &self,
        events: impl IntoIterator<Item = Event>,
        timeout: Duration,
    ) -> Result<ConfirmReport, PublishError> {
        let receipt = self.publish_many(events).await?;
        self.confirm(&receipt, timeout).await
    }

    /// Invalidates these keys everywhere and awaits confirmation (as
    /// [`Node::confirm`]).
    pub async fn invalidate_confirmed<I, S>(
        &self,
        keys: I,
        timeout: Duration,
    ) -> Result<ConfirmReport, PublishError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let receipt = self.invalidate(keys).await?;
        self.confirm(&receipt, timeout).await
    }

    /// The membership view: this node first, then every member heard
    /// (live, left or dead; those gone are kept for `member_forget`), with
    /// how far each has delivered each stream; empty once the node has
    /// stopped.
    pub async fn members(&self) -> Vec<Member> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Members(tx)).await.is_err() {
            return Vec::new();
        }
        let mut done = self.shared.done.clone();
        tokio::select! {
            r = rx => r.unwrap_or_default(),
            _ = done.wait_for(|d| *d) => Vec::new(),
        }
    }

    /// The staleness bound: per stream followed, the longest this node may
    /// have been missing an event without knowing it; and whether it is cut
    /// off. An application may refuse to serve from its cache while
    /// [`Staleness::worst`] is over its tolerance. `None` once the node has
    /// stopped.
    pub async fn staleness(&self) -> Option<Staleness> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Staleness(tx)).await.ok()?;
        let mut done = self.shared.done.clone();
        tokio::select! {
            r = rx => r.ok(),
            _ = done.wait_for(|d| *d) => None,
        }
    }

    /// Reads the key file again ([`NodeConfig::key_file`]) and uses its
    /// keys from now on, without leaving the group: the first key sends,
    /// every key is accepted (see [`crate::keys`] for the rotation). Returns
    /// the key ids now held, the sending one first. On any error the keys
    /// in use stay.
    pub async fn reload_keys(&self) -> Result<Vec<u32>, ReloadError> {
        let path = self
            .shared
            .key_file
            .as_ref()
            .ok_or(ReloadError::NoKeyFile)?;
        let file = KeyFile::load(path)?;
        let keyring = file.keyring(self.shared.cluster)?;
        self.set_keyring(keyring).await
    }

    /// Uses `keyring` from now on (see [`Node::reload_keys`]). Refused
    /// without a sending key when the node uses keys; the mode cannot
    /// change.
    pub async fn set_keyring(&self, keyring: Keyring) -> Result<Vec<u32>, ReloadError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::SetKeyring(keyring, tx))
            .await
            .map_err(|_| ReloadError::Stopped)?;
        match rx.await {
            Ok(r) => r.map_err(ReloadError::Refused),
            Err(_) => Err(ReloadError::Stopped),
        }
    }

    /// Sends everything published so far, says `Goodbye`, lingers to answer
    /// late requests, and stops. Publishing afterwards fails with
    /// [`PublishError::Closed`]; subscriptions end.
    pub async fn shutdown(&self) {
        {
            let mut closed = self.shared.closed.write().await;
            if !*closed {
                *closed = true;
                let _ = self.commands.send(Command::Shutdown).await;
            }
        }
        let mut done = self.shared.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }
}

/// What a publish call handed to the node: the events' stream and their
/// sequence numbers, in order. Every one of them reaches every node that
/// follows the stream, or a `Reset` after it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// This node's stream ([`Node::stream`]).
    pub stream: u64,
    /// The events' sequence numbers (empty for an empty batch).
    pub seqs: std::ops::Range<u64>,
}

/// A stream of deliveries. A subscriber that falls more than
/// `subscriber_queue` deliveries behind gets `Reset { Lagged }` in place of
/// what it missed, never a silent drop.
pub struct Subscription {
    cursor: Cursor,
    lagged: Arc<AtomicU64>,
}

/// Batches of the driver one [`Subscription::recv_each`] takes at most
/// after the one in hand, so that one call ends even while the driver
/// keeps pushing.
const MAX_BATCHES_PER_READ: usize = 64;

impl Subscription {
    /// The next delivery; `None` once the node has stopped and everything
    /// before was read.
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            if let Some(d) = self.try_take() {
                return d;
            }
            self.cursor.changed().await;
        }
    }

    /// The next delivery if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.try_take().flatten()
    }

    /// Waits until something is ready, then hands `f` every delivery
    /// ready now, in order: the fastest way to read many. Each is borrowed
    /// from the node's queue, so nothing is allocated, copied or
    /// reference-counted per event; copy out what you keep. The same
    /// deliveries as [`Subscription::recv`], `Reset`s included, and the two
    /// may be mixed. One call reads at most 65 of the driver's batches
    /// (each what one turn of its loop delivered), so that it ends while
    /// the node keeps receiving; call again for the rest. Returns how many;
    /// `None` once the node has stopped and everything before was read.
    ///
    /// ```no_run
    /// # async fn f(mut sub: cachecast::Subscription) {
    /// use cachecast::DeliveryRef;
    /// use cachecast::wire::EventRef;
    /// while let Some(_n) = sub
    ///     .recv_each(|d| match d {
    ///         DeliveryRef::Event { event: EventRef::Invalidate { keys }, .. } => {
    ///             for key in keys {
    ///                 let _ = key; // cache.remove(key)
    ///             }
    ///         }
    ///         DeliveryRef::Event { .. } => { /* other events */ }
    ///         DeliveryRef::Reset { .. } => { /* cache.clear() */ }
    ///     })
    ///     .await
    /// {}
    /// # }
    /// ```
    pub async fn recv_each(&mut self, mut f: impl FnMut(DeliveryRef<'_>)) -> Option<usize> {
        loop {
            match self.take_each(&mut f) {
                (0, true) => return None,
                (0, false) => self.cursor.changed().await,
                (n, _) => return Some(n),
            }
        }
    }

    /// [`Subscription::recv_each`] without waiting: 0 when nothing is
    /// ready (or the subscription has ended).
    pub fn try_recv_each(&mut self, mut f: impl FnMut(DeliveryRef<'_>)) -> usize {
        self.take_each(&mut f).0
    }

    /// Hands `f` what is ready: the batch in hand and up to
    /// [`MAX_BATCHES_PER_READ`] more (a lag counts as one);
    /// returns how many deliveries, and whether the subscription has ended.
    fn take_each(&mut self, f: &mut impl FnMut(DeliveryRef<'_>)) -> (usize, bool) {
        let mut n = self.cursor.each_in_batch(f);
        for _ in 0..MAX_BATCHES_PER_READ {
            match self.cursor.next_batch() {
                Take::Batch => n += self.cursor.each_in_batch(f),
                Take::Lagged(missed) => {
                    let reason = self.lagged_by(missed);
                    f(DeliveryRef::Reset { reason: &reason });
                    n += 1;
                }
                Take::Closed => return (n, true),
                Take::Empty => break,
            }
        }
        (n, false)
    }

    /// Counts and logs a `Reset { Lagged }`.
    fn lagged_by(&self, missed: u64) -> ResetReason {
        self.lagged.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(missed, "subscriber fell behind: Reset");
        ResetReason::Lagged { missed }
    }

    /// `Some(next)` when there is an answer now (`Some(None)`: ended).
    fn try_take(&mut self) -> Option<Option<Delivery>> {
        loop {
            if let Some(d) = self.cursor.next_in_batch() {
                return Some(Some(d));
            }
            match self.cursor.next_batch() {
                Take::Batch => continue,
                Take::Lagged(missed) => {
                    return Some(Some(Delivery::Reset {
                        reason: self.lagged_by(missed),
                    }));
                }
                Take::Closed => return Some(None),
                Take::Empty => return None,
            }
        }
    }
}

/// The peers of `config`, checked against its transport: the addresses,
/// and the names to resolve (with their ports).
#[allow(clippy::type_complexity)]
fn check_peers(config: &NodeConfig) -> Result<(Vec<SocketAddr>, Vec<(String, u16)>), ConfigError> {
    let unicast = config.transport.unicast();
    if !unicast && !config.peers.is_empty() {
        return Err(ConfigError::new(
            "peers",
            "are sent to only with transport unicast or both (multicast sends to the group)",
        ));
    }
    if unicast && config.peers.is_empty() {
        return Err(ConfigError::new(
            "peers",
            "must be given for transport unicast or both: addresses (IP:PORT) or names (NAME:PORT, e.g. a Kubernetes headless service)",
        ));
    }
    if config.listen.is_some() && config.transport != Transport::Unicast {
        return Err(ConfigError::new(
            "listen",
            "is only for transport unicast (multicast and both receive on the group's port)",
        ));
    }
    if config.peer_refresh.is_zero() {
        return Err(ConfigError::new("peer_refresh", "must be above zero"));
    }
    let v4 = match (config.transport, config.listen) {
        (Transport::Unicast, Some(l)) => l.is_ipv4(),
        _ => config.group.is_ipv4(),
    };
    let mut fixed = Vec::new();
    let mut names = Vec::new();
    for p in &config.peers {
        match p {
            PeerSpec::Addr(a) if a.is_ipv4() != v4 => {
                return Err(ConfigError::new(
                    "peers",
                    format!(
                        "hold {a}, an IPv{} address, but this node's socket is IPv{} (set listen, or group, to the peers' family)",
                        if a.is_ipv4() { 4 } else { 6 },
                        if v4 { 4 } else { 6 }
                    ),
                ));
            }
            PeerSpec::Addr(a) => fixed.push(*a),
            PeerSpec::Name { host, port } => names.push((host.clone(), *port)),
        }
    }
    names.sort();
    names.dedup();
    Ok((fixed, names))
}

/// Resolves every name (A and AAAA; at most 5 s each): each name's
/// answers, `None` for a name that did not resolve (logged).
async fn resolve_each(names: &[(String, u16)]) -> Vec<Option<Vec<SocketAddr>>> {
    let mut all = Vec::with_capacity(names.len());
    for (host, port) in names {
        let lookup = tokio::net::lookup_host((host.as_str(), *port));
        all.push(match tokio::time::timeout(Duration::from_secs(5), lookup).await {
            Ok(Ok(addrs)) => Some(addrs.collect()),
            Ok(Err(e)) => {
                tracing::warn!(peer = %host, error = %e, "peer name did not resolve (tried again every peer_refresh)");
                None
            }
            Err(_) => {
                tracing::warn!(peer = %host, "peer name did not resolve within 5 s (tried again every peer_refresh)");
                None
            }
        });
    }
    all
}

/// Every name's answers together, deduplicated.
fn union(answers: &[Option<Vec<SocketAddr>>]) -> Vec<SocketAddr> {
    let mut all: Vec<SocketAddr> = answers.iter().flatten().flatten().copied().collect();
    all.sort();
    all.dedup();
    all
}

/// Resolves `names` every `every` until the driver is gone, starting from
/// `last` (each name's answers at join). A name that does not resolve
/// keeps its last answers (a DNS outage does not empty the peer list).
async fn keep_resolving(
    names: Vec<(String, u16)>,
    every: Duration,
    mut last: Vec<Option<Vec<SocketAddr>>>,
    tx: watch::Sender<Vec<SocketAddr>>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tx.closed() => return,
        }
        for (kept, now) in last.iter_mut().zip(resolve_each(&names).await) {
            if now.is_some() {
                *kept = now;
            }
        }
        let now = union(&last);
        tx.send_if_modified(|v| {
            let changed = *v != now;
            *v = now;
            changed
        });
    }
}
