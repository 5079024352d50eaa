//! `cachecast bridge`: carries a cluster's events between sites through a
//! NATS JetStream stream.
//!
//! Each site runs one or more bridges, each a node of the site's cluster.
//! The active one (the holder of the site's lease, a key of a JetStream
//! key-value bucket) publishes every event it hears on its LAN to
//! `cachecast.<cluster>.<site>` of the stream `CACHECAST_<cluster>`, with a
//! `Nats-Msg-Id` made of the event's stream and seq (so a retry, a restart
//! or a second bridge publishes nothing twice within the stream's duplicate
//! window), and replays the other sites' messages into its LAN as events of
//! its own stream. What it injects is never published back: the streams of
//! the site's bridges are recorded in the bucket, and each active bridge
//! skips them.
//!
//! No silent loss across sites:
//! - JetStream's stream sequence is contiguous: a bridge that finds a hole
//!   (messages gone past the stream's retention while it was away, the
//!   cursor it saved older than the stream's first message) publishes a
//!   `ClearAll` into its LAN, never a silent skip.
//! - What a site's LAN had that no bridge published (the bridge was not
//!   running, or its node Reset) is announced as a gap record on the site's
//!   subject; every other site's bridge turns it into a `ClearAll`.
//! - A standby bridge keeps the events it heard for a while (two leases
//!   and 10 s, at most `BUFFER` events): when it takes over, it publishes
//!   them again (JetStream drops those already published), so a failover
//!   loses nothing and costs no gap record.
//!
//! Where the sites' bridges saved their place: the bucket's
//! `cursor.<site>` (the last stream sequence injected, saved once the
//! datagrams left), so a restart neither loses nor repeats.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use clap::Args;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use cachecast::wire::decode_event;
use cachecast::{Delivery, Event, Node, NodeConfig, ResetReason};

use crate::args::{join_failure, parse_duration, NetArgs};
use crate::bounded::push_bounded;
use crate::failure::Failure;
use crate::stop::Stop;

/// Events a standby keeps to publish again when it takes over.
const BUFFER: usize = 1 << 18;
/// At most this many places wait in `unsent` for their write.
const UNSENT: usize = 4096;
/// Publishes awaiting JetStream's acknowledgement before the bridge stops
/// reading its LAN (the node's subscription queue holds the rest).
const MAX_INFLIGHT: usize = 4096;
/// Messages injected into the LAN in one batch.
const MAX_INJECT: usize = 512;
/// Injector streams remembered per site.
const MAX_INJECTORS: usize = 64;
/// JetStream's duplicate window, at most the retention.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Failed publishes of one event before it becomes a gap record.
const MAX_ATTEMPTS: u32 = 20;
/// The header of a gap record (its value: why).
const GAP_HEADER: &str = "Cachecast-Gap";

const AFTER_HELP: &str = "\
Sites: every site runs `cachecast bridge` with the same --nats servers (or \
servers of one NATS super-cluster), the same --cluster, and its own --site. \
The bridge joins the site's cluster like any node, publishes every event of \
its LAN to the JetStream stream CACHECAST_<cluster> (subject \
cachecast.<cluster>.<site>; created on first use with --retention), and \
replays the other sites' events into its LAN as a stream of its own. What \
it replays is never sent back.

No silent loss: a bridge that was away longer than --retention, or that \
finds any other hole in the stream, publishes a ClearAll into its LAN \
(every node clears). Events of a site's LAN that no bridge published (no \
bridge was running, or its node Reset) become a gap record: the other \
sites clear. A restarted bridge resumes where it stopped (its place is kept \
in the key-value bucket CACHECAST_BRIDGE_<cluster>), so it neither loses \
nor repeats.

Availability: run two bridges per site. One is active (it holds the site's \
lease, renewed every --lease/4); the other listens and keeps what it hears, \
and takes over about --lease after the first one's last renewal (at most \
1.25 leases), publishing again what \
the first may not have published (JetStream drops duplicates by message id).

Logs (RUST_LOG=info): when the bridge becomes active or stands by, every \
ClearAll it injects and every gap record it publishes. SIGINT/SIGTERM: \
the active bridge saves its place, gives up its lease (a standby takes over \
at once) and says Goodbye.";

/// Carry this cluster's events to and from other sites through NATS
/// JetStream.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct BridgeArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// The NATS server(s), with JetStream enabled: nats://HOST:4222;
    /// several separated by commas. user:password@ in the URL
    /// authenticates.
    #[arg(long, env = "CACHECAST_NATS", value_name = "URL")]
    pub nats: String,
    /// This site's name: letters, digits, '-' and '_' (at most 64).
    #[arg(long, env = "CACHECAST_SITE", value_parser = parse_token)]
    pub site: String,
    /// How long JetStream keeps events (the stream's max age, set when a
    /// bridge creates it). A bridge away longer makes its site clear. At
    /// least 3 × --lease (a standby keeps what it hears no longer).
    #[arg(long, default_value = "1h", value_parser = parse_retention)]
    pub retention: Duration,
    /// The site's lease: a standby takes over this long after the active
    /// bridge stopped renewing it (from 500ms to 1m).
    #[arg(long, default_value = "3s", value_parser = parse_lease)]
    pub lease: Duration,
}

/// What a bridge needs besides its node's configuration.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub nats: String,
    pub site: String,
    pub retention: Duration,
    pub lease: Duration,
}

/// A NATS subject token, stream and bucket name part: the cluster and site.
pub fn parse_token(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 {
        return Err("needs 1 to 64 characters".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "{c:?} is not allowed: letters, digits, '-' and '_' only (it names NATS subjects)"
        ));
    }
    Ok(s.to_string())
}

fn parse_retention(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d < Duration::from_secs(1) => Err("must be at least 1s".into()),
        d => Ok(d),
    }
}

/// A standby keeps what it hears at most the retention (JetStream's
/// duplicate window is no longer), and must keep it past a takeover.
pub fn check_retention(retention: Duration, lease: Duration) -> Result<(), String> {
    if retention < lease * 3 {
        return Err(format!(
            "--retention ({}) must be at least 3 times --lease ({}): a standby keeps what it hears no longer than the retention, and must keep it past a takeover",
            humantime::format_duration(retention),
            humantime::format_duration(lease)
        ));
    }
    Ok(())
}

pub fn parse_lease(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d < Duration::from_millis(500) || d > Duration::from_secs(60) => {
            Err("must be from 500ms to 1m".into())
        }
        d => Ok(d),
    }
}

pub async fn run(args: BridgeArgs, stop: &Stop) -> Result<(), Failure> {
    let node_config = args.net.config("bridge")?;
    parse_token(&node_config.cluster).map_err(|e| {
        Failure::Usage(format!(
            "--cluster (the bridge names NATS subjects after it): {e}"
        ))
    })?;
    let config = BridgeConfig {
        nats: args.nats,
        site: args.site,
        retention: args.retention,
        lease: args.lease,
    };
    check_retention(config.retention, config.lease).map_err(Failure::Usage)?;
    stop.arm();
    let counts = bridge(config, node_config, stop.wait(), Counts::default()).await?;
    tracing::info!(?counts, "bridge stopped");
    Ok(())
}

/// What a bridge did: logged when it stops, and the agent's metrics
/// (clones share the values).
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Local events published to JetStream (acknowledged).
    pub published: Counter,
    /// Other sites' events injected into the LAN.
    pub injected: Counter,
    /// ClearAlls injected (a hole, a gap record, an unreadable message).
    pub clears: Counter,
    /// Gap records published for this site (acknowledged).
    pub gaps: Counter,
    /// Times this bridge became active.
    pub activations: Counter,
    /// 1 while this bridge holds its site's lease.
    pub active: Gauge,
}

/// One message for this site's subject: an event, or a gap record.
struct Out {
    id: String,
    payload: Bytes,
    gap: Option<String>,
    /// Set at its first publish: its place among the unacknowledged.
    n: u64,
    /// Failed publishes of it so far.
    attempts: u32,
}

type AckResult = (
    Out,
    Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
);

type AckFuture = Pin<
    Box<
        dyn Future<
                Output = (
                    Out,
                    Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
                ),
            > + Send,
    >,
>;

/// Names derived from the cluster and site.
struct Names {
    site: String,
    stream: String,
    bucket: String,
    /// `cachecast.<cluster>.`
    prefix: String,
    /// `cachecast.<cluster>.<site>`
    subject: String,
    lease: String,
    cursor: String,
    injectors: String,
}

impl Names {
    fn new(cluster: &str, site: &str) -> Names {
        Names {
            site: site.into(),
            stream: format!("CACHECAST_{cluster}"),
            bucket: format!("CACHECAST_BRIDGE_{cluster}"),
            prefix: format!("cachecast.{cluster}."),
            subject: format!("cachecast.{cluster}.{site}"),
            lease: format!("lease.{site}"),
            cursor: format!("cursor.{site}"),
            injectors: format!("injectors.{site}"),
        }
    }
}

fn nats_error(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Failed(format!("{what}: {e}"))
}

/// Runs a bridge until `stopped` completes.
pub async fn bridge(
    config: BridgeConfig,
    mut node_config: NodeConfig,
    stopped: impl Future<Output = impl Sized>,
    counts: Counts,
) -> Result<Counts, Failure> {
    let names = Names::new(&node_config.cluster, &config.site);
    let client = async_nats::ConnectOptions::new()
        .name(format!("cachecast bridge {}", config.site))
        .connection_timeout(Duration::from_secs(5))
        .connect(config.nats.as_str())
        .await
        .map_err(|e| nats_error(&format!("cannot connect to NATS at {}", config.nats), e))?;
    let js = jetstream::new(client);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: names.stream.clone(),
            subjects: vec![format!("{}>", names.prefix)],
            max_age: config.retention,
            duplicate_window: DUPLICATE_WINDOW.min(config.retention),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            nats_error(
                &format!(
                    "cannot open the JetStream stream {} (is JetStream enabled: nats-server -js?)",
                    names.stream
                ),
                e,
            )
        })?;
    // The bucket's stream made here, as async-nats would (its
    // create_key_value first asks for account details that Debian's
    // nats-server 2.9 answers in a shape it cannot read).
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{}", names.bucket),
        subjects: vec![format!("$KV.{}.>", names.bucket)],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .map_err(|e| nats_error(&format!("cannot open the bucket {}", names.bucket), e))?;
    let kv = js
        .get_key_value(&names.bucket)
        .await
        .map_err(|e| nats_error(&format!("cannot open the bucket {}", names.bucket), e))?;
    // Two nodes: one that listens (receive-only, so that a standby that
    // dies costs nobody a Reset), and, while active, one that injects the
    // other sites' events (its own are not delivered to it).
    let mut injector_config = node_config.clone();
    injector_config.receive_only = false;
    injector_config.deliver_own = false;
    injector_config.node_name = format!("{}-inject", node_config.node_name);
    injector_config.node_name.truncate(64);
    if injector_config.transport == cachecast::Transport::Unicast {
        // A port of its own (the listener has the configured one); peers
        // learn it from its datagrams.
        let ip = node_config.listen.map_or_else(
            || match node_config.group {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            },
            |l| l.ip(),
        );
        injector_config.listen = Some(std::net::SocketAddr::new(ip, 0));
    }
    node_config.receive_only = true;
    let node = Node::join(node_config).await.map_err(join_failure)?;
    // (Zero: the server's default window, two minutes; no age limit.)
    let nonzero = |d: Duration, or: Duration| if d.is_zero() { or } else { d };
    let keep = (config.lease * 2 + Duration::from_secs(10))
        .min(nonzero(
            stream.cached_info().config.duplicate_window,
            DUPLICATE_WINDOW,
        ))
        .min(nonzero(stream.cached_info().config.max_age, Duration::MAX));
    let mut bridge = Bridge {
        me: format!("{}/{:016x}", config.site, node.stream()),
        sub: node.subscribe(),
        node,
        injector: None,
        injector_config,
        js,
        stream,
        kv,
        names,
        config,
        role: Role::Standby,
        buffer: VecDeque::new(),
        standby_loss: false,
        standby_resets: Vec::new(),
        observed: None,
        counts,
        keep,
    };
    tracing::info!(site = %bridge.names.site, stream = %format_args!("{:016x}", bridge.node.stream()), "bridge joined the cluster: standing by until it holds the site's lease");
    let result = bridge.run(stopped).await;
    if let Some(injector) = bridge.injector.take() {
        injector.shutdown().await;
    }
    bridge.node.shutdown().await;
    bridge.counts.active.set(0);
    result.map(|()| bridge.counts)
}

/// The lease holder as a standby last saw it.
struct Observed {
    revision: u64,
    /// When this revision was first seen.
    since: Instant,
    /// The holder (the first word of the lease's value).
    holder: String,
    /// A renewal (a new revision by the same holder) was seen after this
    /// bridge joined.
    renewed_after_join: bool,
}

enum Role {
    Standby,
    Active(Box<Active>),
}

struct Active {
    /// The lease's revision this bridge wrote last.
    revision: u64,
    /// When the last renewal that succeeded was sent: this bridge acts
    /// (publishes, injects) only within half a lease of it.
    renewed: Instant,
    /// The site's bridges' streams: never published back.
    injectors: HashSet<u64>,
    inflight: FuturesOrdered<AckFuture>,
    /// Publishes not yet acknowledged: number → first sent.
    unacked: BTreeMap<u64, Instant>,
    next_n: u64,
    /// Gap records not yet acknowledged: the lease says so meanwhile, and
    /// a takeover then is never whole.
    gaps_pending: u32,
    messages: consumer::pull::Ordered,
    /// The consumer failed: made again at the next tick.
    consumer_broken: bool,
    /// The next stream sequence expected.
    expect: u64,
    /// The last stream sequence injected (or skipped).
    cursor: u64,
    /// (cursor, events the injector had published then), oldest first:
    /// a cursor is saved once its events have left.
    unsent: VecDeque<(u64, u64)>,
    /// The cursor saved in the bucket, and the revision it was saved as.
    saved: u64,
    cursor_revision: u64,
    /// The stream's creation time, saved with the cursor.
    created: i128,
    /// Events the injector published (the receipts').
    published: u64,
}

struct Bridge {
    config: BridgeConfig,
    names: Names,
    /// The listener (receive-only).
    node: Node,
    /// The node that injects, while active.
    injector: Option<Node>,
    injector_config: NodeConfig,
    sub: cachecast::Subscription,
    js: jetstream::Context,
    stream: stream::Stream,
    kv: kv::Store,
    /// This bridge's lease value.
    me: String,
    role: Role,
    /// A standby's events: (heard at, event), oldest first.
    buffer: VecDeque<(Instant, u64, Out)>,
    /// A standby missed something: its buffer is not whole.
    standby_loss: bool,
    /// The streams of a standby's Resets: a loss, unless each is an
    /// injector's (known at the takeover).
    standby_resets: Vec<u64>,
    observed: Option<Observed>,
    counts: Counts,
    /// How long a standby keeps what it heard: two leases and 10 s, at
    /// most JetStream's duplicate window (older events would no longer be
    /// known as duplicates).
    keep: Duration,
}

/// What the main loop woke for (one at a time, on the stack).
#[allow(clippy::large_enum_variant)]
enum Wake {
    Stop,
    Lan(Option<Delivery>),
    Tick,
    Flush,
    Ack(Box<AckResult>),
    Nats(Option<Result<jetstream::Message, consumer::pull::OrderedError>>),
}

impl Bridge {
    async fn run(&mut self, stopped: impl Future<Output = impl Sized>) -> Result<(), Failure> {
        let mut stopped = std::pin::pin!(stopped);
        let mut tick = tokio::time::interval(self.config.lease / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = match &mut self.role {
                Role::Standby => tokio::select! {
                    _ = &mut stopped => Wake::Stop,
                    d = self.sub.recv() => Wake::Lan(d),
                    _ = tick.tick() => Wake::Tick,
                },
                Role::Active(a) => {
                    let room = a.inflight.len() < MAX_INFLIGHT;
                    let fresh = a.renewed.elapsed() < self.config.lease / 2;
                    if fresh && room && !self.buffer.is_empty() {
                        Wake::Flush
                    } else {
                        tokio::select! {
                            _ = &mut stopped => Wake::Stop,
                            d = self.sub.recv(), if room && fresh => Wake::Lan(d),
                            Some(r) = a.inflight.next(), if !a.inflight.is_empty() => Wake::Ack(Box::new(r)),
                            m = a.messages.next(), if fresh && !a.consumer_broken => Wake::Nats(m),
                            _ = tick.tick() => Wake::Tick,
                        }
                    }
                }
            };
            match wake {
                Wake::Stop => break,
                Wake::Lan(None) => return Err(Failure::Failed("the node stopped".into())),
                Wake::Lan(Some(d)) => {
                    self.lan(d);
                    // What else is queued, without waiting.
                    for _ in 0..256 {
                        if matches!(&self.role, Role::Active(a) if a.inflight.len() >= MAX_INFLIGHT)
                        {
                            break;
                        }
                        match self.sub.try_recv() {
                            Some(d) => self.lan(d),
                            None => break,
                        }
                    }
                    self.flush_lan().await;
                }
                Wake::Tick => self.tick().await,
                Wake::Flush => self.flush_lan().await,
                Wake::Ack(r) => {
                    let Role::Active(a) = &mut self.role else {
                        continue;
                    };
                    match *r {
                        (out, Ok(ack)) => {
                            a.unacked.remove(&out.n);
                            if out.gap.is_some() {
                                a.gaps_pending = a.gaps_pending.saturating_sub(1);
                                self.counts.gaps.inc();
                            } else if !ack.duplicate {
                                self.counts.published.inc();
                            }
                        }
                        (mut out, Err(e)) => {
                            out.attempts += 1;
                            let heard = a.unacked.get(&out.n).copied().unwrap_or_else(Instant::now);
                            if out.attempts >= MAX_ATTEMPTS && out.gap.is_none() {
                                // Refused for good (a payload too large for
                                // the server, say): the other sites clear.
                                tracing::warn!(error = %e, id = %out.id, "JetStream refuses an event: a gap record instead");
                                a.unacked.remove(&out.n);
                                let gap = self.gap(format!("JetStream refused an event: {e}"));
                                self.buffer.push_front((Instant::now(), 0, gap));
                            } else {
                                tracing::debug!(error = %e, id = %out.id, "publish not acknowledged: again");
                                // Again, in turn with what waits (the room
                                // check of flush_lan applies).
                                self.buffer.push_front((heard, 0, out));
                            }
                        }
                    }
                }
                Wake::Nats(None) => {
                    tracing::warn!("the JetStream consumer ended: made again at the next tick");
                    if let Role::Active(a) = &mut self.role {
                        a.consumer_broken = true;
                    }
                }
                Wake::Nats(Some(Err(e))) => {
                    tracing::warn!(error = %e, "reading JetStream failed: the consumer is made again at the next tick");
                    if let Role::Active(a) = &mut self.role {
                        a.consumer_broken = true;
                    }
                }
                Wake::Nats(Some(Ok(m))) => self.inject(m).await,
            }
        }
        self.release().await;
        Ok(())
    }

    /// One delivery of the LAN: published (active) or kept (standby).
    fn lan(&mut self, d: Delivery) {
        let out = match &d {
            Delivery::Event {
                stream, seq, event, ..
            } => {
                if let Role::Active(a) = &self.role {
                    if a.injectors.contains(stream) {
                        return;
                    }
                }
                (
                    *stream,
                    Out {
                        id: format!("{}.{stream:016x}.{seq}", self.names.site),
                        payload: Bytes::copy_from_slice(event.as_bytes()),
                        gap: None,
                        n: 0,
                        attempts: 0,
                    },
                )
            }
            Delivery::Reset { reason } => {
                let stream = reset_stream(reason);
                match (&self.role, stream) {
                    // What a bridge of this site injected is never published
                    // again: its loss costs the other sites nothing (a killed
                    // bridge's stream times out like any publisher's).
                    (Role::Active(a), Some(s)) if a.injectors.contains(&s) => {
                        tracing::info!(
                            ?reason,
                            "a Reset for a bridge's stream: nothing to tell the other sites"
                        );
                        return;
                    }
                    (Role::Standby, Some(s)) if self.standby_resets.len() < MAX_INJECTORS => {
                        self.standby_resets.push(s);
                        return;
                    }
                    (Role::Standby, _) => {
                        self.standby_loss = true;
                        return;
                    }
                    (Role::Active(_), _) => {}
                }
                tracing::warn!(
                    ?reason,
                    "this bridge's node Reset: the other sites will clear"
                );
                (0, self.gap(format!("the bridge's node Reset: {reason:?}")))
            }
        };
        match &mut self.role {
            Role::Standby => {
                if push_bounded(&mut self.buffer, BUFFER, (Instant::now(), out.0, out.1)) {
                    self.standby_loss = true;
                }
            }
            Role::Active(_) => self.buffer.push_back((Instant::now(), out.0, out.1)),
        }
    }

    /// A gap record for this site.
    fn gap(&self, why: String) -> Out {
        Out {
            id: format!("{}.gap.{:016x}", self.names.site, rand::random::<u64>()),
            payload: Bytes::new(),
            gap: Some(why),
            n: 0,
            attempts: 0,
        }
    }

    /// An active bridge publishes what `lan` queued, while there is room
    /// (the rest at the next turn of the loop).
    async fn flush_lan(&mut self) {
        if matches!(self.role, Role::Standby) {
            self.trim_buffer();
            return;
        }
        loop {
            let Role::Active(a) = &self.role else {
                return;
            };
            if a.inflight.len() >= MAX_INFLIGHT || a.renewed.elapsed() >= self.config.lease / 2 {
                return;
            }
            let Some((heard, stream, out)) = self.buffer.pop_front() else {
                return;
            };
            if stream != 0 && a.injectors.contains(&stream) {
                continue;
            }
            if !self.publish(out, heard).await {
                return;
            }
        }
    }

    /// A standby forgets what no takeover can need. What it forgets was
    /// heard `keep` ago; a takeover is whole only if the last holder was
    /// seen renewing within `keep / 2`, and a holder renews only while
    /// nothing it publishes waited longer than that.
    fn trim_buffer(&mut self) {
        let now = Instant::now();
        while self
            .buffer
            .front()
            .is_some_and(|(at, _, _)| now.duration_since(*at) > self.keep)
        {
            self.buffer.pop_front();
        }
    }

    /// Publishes one message; `heard` is when its event was heard (the
    /// age that counts for renewing). False if it could not even be sent.
    async fn publish(&mut self, mut out: Out, heard: Instant) -> bool {
        let Role::Active(a) = &mut self.role else {
            return false;
        };
        if out.n == 0 {
            a.next_n += 1;
            out.n = a.next_n;
            a.unacked.insert(out.n, heard);
            if let Some(why) = &out.gap {
                a.gaps_pending += 1;
                tracing::warn!(why = %why, "gap record published: the other sites will clear");
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", out.id.as_str());
        if let Some(why) = &out.gap {
            headers.insert(GAP_HEADER, why.as_str());
        }
        let sent = self
            .js
            .publish_with_headers(self.names.subject.clone(), headers, out.payload.clone())
            .await;
        let ok = sent.is_ok();
        let fut: AckFuture = match sent {
            Ok(ack) => Box::pin(async move { (out, ack.await) }),
            // Not even sent: again after a pause (no busy loop while NATS
            // is away).
            Err(e) => Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                (out, Err(e))
            }),
        };
        a.inflight.push_back(fut);
        ok
    }

    /// Lease upkeep, retries, the consumer made again, the cursor saved.
    async fn tick(&mut self) {
        match &mut self.role {
            Role::Standby => {
                self.trim_buffer();
                if let Err(e) = self.try_acquire().await {
                    tracing::warn!(error = %e, "lease check failed");
                }
            }
            Role::Active(a) => {
                let broken = a.consumer_broken;
                self.renew().await;
                if !matches!(self.role, Role::Active(_)) {
                    return;
                }
                if broken {
                    if let Err(e) = self.remake_consumer().await {
                        tracing::warn!(error = %e, "making the JetStream consumer again failed");
                    }
                }
                if !self.save_cursor().await {
                    self.step_down().await;
                }
            }
        }
    }

    async fn remake_consumer(&mut self) -> Result<(), String> {
        let Role::Active(a) = &mut self.role else {
            return Ok(());
        };
        a.messages = consumer_from(&self.stream, &self.names, a.expect).await?;
        a.consumer_broken = false;
        Ok(())
    }

    async fn try_acquire(&mut self) -> Result<(), String> {
        let entry = self
            .kv
            .entry(self.names.lease.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        let previous = match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                match &mut self.observed {
                    Some(o) if o.revision == e.revision => {
                        if now.duration_since(o.since) < self.config.lease {
                            return Ok(());
                        }
                    }
                    _ => {
                        let value = String::from_utf8_lossy(&e.value);
                        let holder = value.split_whitespace().next().unwrap_or("").to_string();
                        // A takeover's write is not a renewal.
                        let renewed_after_join =
                            self.observed.as_ref().is_some_and(|o| o.holder == holder);
                        self.observed = Some(Observed {
                            revision: e.revision,
                            since: now,
                            holder,
                            renewed_after_join,
                        });
                        return Ok(());
                    }
                }
                // Stale for a whole lease: take it over.
                let revision = match self
                    .kv
                    .update(
                        self.names.lease.as_str(),
                        self.me.clone().into(),
                        e.revision,
                    )
                    .await
                {
                    Ok(r) => r,
                    Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        return Ok(())
                    }
                    Err(err) => return Err(err.to_string()),
                };
                Some((String::from_utf8_lossy(&e.value).into_owned(), revision))
            }
            // Free (never held, or given up).
            _ => {
                let revision = match self
                    .kv
                    .create(self.names.lease.as_str(), self.me.clone().into())
                    .await
                {
                    Ok(r) => r,
                    Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(()),
                    Err(err) => return Err(err.to_string()),
                };
                let r = self.activate(None, revision, now).await;
                if r.is_err() {
                    self.observed = None;
                }
                return r;
            }
        };
        let (holder, revision) = previous.expect("set above");
        let r = self.activate(Some(holder), revision, now).await;
        if r.is_err() {
            // Its own takeover must not look like a renewal to it later.
            self.observed = None;
        }
        r
    }

    /// Becomes the site's active bridge (the lease is held as `revision`).
    async fn activate(
        &mut self,
        previous: Option<String>,
        revision: u64,
        acquired: Instant,
    ) -> Result<(), String> {
        // 1. The site's injectors, this one included: never published back.
        let injectors = self.add_injector().await?;
        let whole_heard = self.standby_resets.iter().all(|s| injectors.contains(s));
        // 2. Where to resume in the stream.
        let cursor_entry = self
            .kv
            .entry(self.names.cursor.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let info = self.stream.get_info().await.map_err(|e| e.to_string())?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let created = info.created.unix_timestamp_nanos();
        let cursor_revision = cursor_entry
            .as_ref()
            .filter(|e| e.operation == kv::Operation::Put)
            .map_or(0, |e| e.revision);
        // "<the stream's creation, ns> <last sequence injected>"
        let saved = cursor_entry
            .as_ref()
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| {
                let text = std::str::from_utf8(&e.value).ok()?;
                let (c, q) = text.split_once(' ')?;
                Some((c.parse::<i128>().ok()?, q.parse::<u64>().ok()?))
            });
        let (cursor, hole) = match saved {
            // First bridge of this site: from now on.
            None if previous.is_none() && cursor_revision == 0 => (last, false),
            // The place is lost (unreadable, or gone while a bridge held
            // the lease).
            None => (last, true),
            // Another stream than the one the place was in (deleted and
            // made again), or a place past its end.
            Some((c, q)) if c != created || q > last => (last, true),
            // Messages past the saved place are gone (retention).
            Some((_, q)) if first > q + 1 && last >= first => (first - 1, true),
            Some((_, q)) if first > q + 1 => (last, true),
            Some((_, q)) => (q, false),
        };
        let messages = consumer_from(&self.stream, &self.names, cursor.saturating_add(1)).await?;
        // 3. Did this site's LAN have events that no bridge published? Not
        // if this bridge heard everything since the last holder was seen
        // alive, or if there never was one.
        // A lease given up (deleted) was held after this bridge joined if
        // this bridge saw it held; a stale one, if it saw it renewed.
        let whole = !self.standby_loss
            && whole_heard
            && match &previous {
                None => self.observed.is_some(),
                // (A holder whose gap record was not acknowledged says so.)
                Some(p) if p.contains("gap-pending") => false,
                Some(_) => self
                    .observed
                    .as_ref()
                    .is_some_and(|o| o.renewed_after_join && o.since.elapsed() <= self.keep / 2),
            };
        let first_ever = previous.is_none() && cursor_revision == 0;
        self.counts.activations.inc();
        self.counts.active.set(1);
        tracing::info!(
            site = %self.names.site,
            previous = previous.as_deref().unwrap_or("none"),
            resume_after = cursor,
            replay = self.buffer.len(),
            "active: this bridge holds the site's lease"
        );
        self.role = Role::Active(Box::new(Active {
            revision,
            renewed: acquired,
            injectors,
            inflight: FuturesOrdered::new(),
            unacked: BTreeMap::new(),
            next_n: 0,
            gaps_pending: 0,
            messages,
            consumer_broken: false,
            expect: cursor.saturating_add(1),
            cursor,
            unsent: VecDeque::new(),
            // Written below, whatever it was: the claim of the place (a
            // bridge that lost the lease can no longer write it).
            saved: u64::MAX,
            cursor_revision,
            created,
            published: 0,
        }));
        self.observed = None;
        self.standby_loss = false;
        self.standby_resets.clear();
        if !whole && !first_ever {
            let out = self.gap(format!(
                "bridge {} took over without hearing everything since the last one (it was not running, or not continuously)",
                self.me
            ));
            self.buffer.push_front((Instant::now(), 0, out));
        }
        if hole {
            tracing::warn!(
                saved = ?saved, first, "events of other sites are gone (past the retention) since this site's bridge stopped: ClearAll"
            );
            self.inject_events(vec![Event::ClearAll]).await;
        }
        // The place is claimed (written, whatever it was) once the ClearAll
        // left: a bridge that lost the lease can no longer write it.
        if let Role::Active(a) = &mut self.role {
            a.unsent.push_back((cursor, a.published));
        }
        if !self.save_cursor_after_sent().await {
            self.step_down().await;
            return Err(
                "cannot claim the site's place in the bucket (another bridge wrote it)".into(),
            );
        }
        // What this bridge heard as a standby, again: JetStream drops what
        // the previous holder published already.
        self.flush_lan().await;
        Ok(())
    }

    /// Adds this bridge's stream to the site's injectors; returns them all.
    async fn add_injector(&mut self) -> Result<HashSet<u64>, String> {
        let own = match &self.injector {
            Some(n) => n.stream(),
            None => {
                let n = Node::join(self.injector_config.clone())
                    .await
                    .map_err(|e| format!("cannot join the injecting node: {e}"))?;
                let s = n.stream();
                self.injector = Some(n);
                s
            }
        };
        for _ in 0..10 {
            let entry = self
                .kv
                .entry(self.names.injectors.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let mut list: Vec<u64> = entry
                .as_ref()
                .filter(|e| e.operation == kv::Operation::Put)
                .map(|e| {
                    String::from_utf8_lossy(&e.value)
                        .split_whitespace()
                        .filter_map(|s| u64::from_str_radix(s, 16).ok())
                        .collect()
                })
                .unwrap_or_default();
            list.retain(|s| *s != own);
            list.push(own);
            if list.len() > MAX_INJECTORS {
                list.drain(..list.len() - MAX_INJECTORS);
            }
            let value: Bytes = list
                .iter()
                .map(|s| format!("{s:016x}"))
                .collect::<Vec<_>>()
                .join(" ")
                .into();
            let written = match entry.filter(|e| e.operation == kv::Operation::Put) {
                Some(e) => self
                    .kv
                    .update(self.names.injectors.as_str(), value, e.revision)
                    .await
                    .map_err(|e| e.to_string()),
                None => self
                    .kv
                    .create(self.names.injectors.as_str(), value)
                    .await
                    .map_err(|e| e.to_string()),
            };
            if written.is_ok() {
                return Ok(list.into_iter().collect());
            }
        }
        Err("cannot record this bridge's stream in the bucket (contended)".into())
    }

    async fn renew(&mut self) {
        let lease = self.config.lease;
        let Role::Active(a) = &mut self.role else {
            return;
        };
        // A holder renews only while nothing it publishes (or still has to)
        // was heard longer ago than half of what a standby keeps: else a
        // takeover must not count as whole.
        let oldest = (a.unacked.values().min().copied())
            .into_iter()
            .chain(self.buffer.front().map(|(at, _, _)| *at))
            .min()
            .map(|t| t.elapsed());
        if oldest.is_some_and(|o| o > self.keep / 2) {
            tracing::warn!(
                ?oldest,
                "an event waits for JetStream for long: not renewing the lease"
            );
        } else {
            let value = lease_value(&self.me, a.gaps_pending > 0);
            let sent = Instant::now();
            let renewed = tokio::time::timeout(
                lease / 4,
                self.kv
                    .update(self.names.lease.as_str(), value.clone(), a.revision),
            )
            .await;
            match renewed {
                Ok(Ok(r)) => {
                    a.revision = r;
                    a.renewed = sent;
                    return;
                }
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // A renewal that timed out may have been written.
                    match self.kv.entry(self.names.lease.as_str()).await {
                        Ok(Some(e)) if e.operation == kv::Operation::Put && e.value == value => {
                            a.revision = e.revision;
                            a.renewed = sent;
                            return;
                        }
                        _ => {
                            tracing::warn!(
                                "another bridge holds this site's lease now: standing by"
                            );
                            self.step_down().await;
                            return;
                        }
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "renewing the lease failed: again"),
                Err(_) => tracing::debug!("renewing the lease timed out: again"),
            }
        }
        // A standby takes over a lease after seeing it unchanged for a
        // whole lease; this bridge stopped acting half a lease after its
        // last renewal, and stands by at three quarters.
        if a.renewed.elapsed() > lease * 3 / 4 {
            tracing::warn!("cannot renew the site's lease: standing by");
            self.step_down().await;
        }
    }

    /// Stops being active: the injector says Goodbye (so no node of the
    /// site Resets for it, and everything it was given has left), the place
    /// is saved if the bucket still has this bridge's; what JetStream did
    /// not acknowledge is left to the next holder's replay (or its gap
    /// record).
    async fn step_down(&mut self) {
        if let Some(injector) = self.injector.take() {
            injector.shutdown().await;
            if let Role::Active(a) = &mut self.role {
                a.unsent.clear();
            }
        }
        self.save_cursor().await;
        self.role = Role::Standby;
        self.counts.active.set(0);
        // This bridge heard everything since its join, but from now on a
        // takeover must see the new holder renew first.
        self.observed = None;
        self.buffer.clear();
        self.standby_resets.clear();
    }

    /// A clean stop: acknowledgements awaited (at most 2 s), the injector's
    /// Goodbye, place saved, lease given up (if everything was
    /// acknowledged: else it lapses, and a standby replays what it kept).
    async fn release(&mut self) {
        let Role::Active(a) = &mut self.role else {
            return;
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !a.inflight.is_empty() {
            match tokio::time::timeout_at(deadline, a.inflight.next()).await {
                Ok(Some((out, Ok(_)))) => {
                    a.unacked.remove(&out.n);
                    if out.gap.is_none() {
                        self.counts.published.inc();
                    }
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let (revision, all_acked) = (a.revision, a.unacked.is_empty() && self.buffer.is_empty());
        if let Some(injector) = self.injector.take() {
            injector.shutdown().await;
            if let Role::Active(a) = &mut self.role {
                a.unsent.clear();
            }
        }
        self.save_cursor().await;
        if !all_acked {
            tracing::warn!("stopping with publishes not acknowledged: the lease lapses, a standby publishes them again");
            return;
        }
        if let Err(e) = self
            .kv
            .delete_expect_revision(self.names.lease.as_str(), Some(revision))
            .await
        {
            tracing::debug!(error = %e, "giving up the lease failed (it expires)");
        }
    }

    /// Saves the place, as far as the injected datagrams have left (all of
    /// it once the injector is gone), if the bucket still has this
    /// bridge's: false if another bridge wrote it since.
    async fn save_cursor(&mut self) -> bool {
        let sent = match &self.injector {
            Some(n) => Some(n.stats().await.protocol.events_sent),
            None => None,
        };
        let Role::Active(a) = &mut self.role else {
            return true;
        };
        // Entries leave `unsent` only once their place is written.
        let (mut savable, mut done) = (a.saved, 0);
        for &(cursor, published) in &a.unsent {
            if sent.is_some_and(|sent| published > sent) {
                break;
            }
            savable = cursor;
            done += 1;
        }
        // The injector is gone (its Goodbye sent what it held): all of it.
        if sent.is_none() {
            (savable, done) = (a.cursor, a.unsent.len());
        }
        if savable == a.saved {
            a.unsent.drain(..done);
            return true;
        }
        let value: Bytes = format!("{} {savable}", a.created).into();
        let written = if a.cursor_revision == 0 {
            self.kv
                .create(self.names.cursor.as_str(), value)
                .await
                .map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                })
        } else {
            self.kv
                .update(self.names.cursor.as_str(), value, a.cursor_revision)
                .await
                .map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                })
        };
        let written = match written {
            // A write that timed out may have been made: then it is ours.
            Err((true, e)) => match self.kv.entry(self.names.cursor.as_str()).await {
                Ok(Some(entry))
                    if entry.operation == kv::Operation::Put
                        && entry.value == format!("{} {savable}", a.created).as_bytes() =>
                {
                    Ok(entry.revision)
                }
                _ => Err((true, e)),
            },
            w => w,
        };
        match written {
            Ok(r) => {
                a.saved = savable;
                a.cursor_revision = r;
                a.unsent.drain(..done);
                true
            }
            Err((true, _)) => {
                tracing::warn!(
                    "another bridge saved this site's place: this one no longer holds it"
                );
                false
            }
            Err((false, e)) => {
                tracing::debug!(error = %e, "saving the cursor failed: again");
                true
            }
        }
    }

    /// One message of the stream, and those ready behind it: into the LAN.
    async fn inject(&mut self, first: jetstream::Message) {
        let mut events: Vec<Event> = Vec::new();
        let mut clear = false;
        let mut pending = Some(first);
        let mut n = 0;
        while let Some(m) = pending.take() {
            n += 1;
            let read = self.read(&m);
            let Ok(seq) = m.info().map(|i| i.stream_sequence) else {
                tracing::warn!("a JetStream message without its sequence: ClearAll");
                clear = true;
                break;
            };
            let Role::Active(a) = &mut self.role else {
                return;
            };
            if seq >= a.expect {
                if seq > a.expect {
                    tracing::warn!(
                        expected = a.expect,
                        got = seq,
                        "a hole in the stream (past its retention): ClearAll"
                    );
                    events.push(Event::ClearAll);
                }
                // (Received: a sequence at the end of u64 must not wrap.)
                a.expect = seq.saturating_add(1);
                a.cursor = seq;
                match read {
                    Read::Own => {}
                    Read::Event(e) => events.push(e),
                    Read::Clear(why) => {
                        tracing::warn!(subject = %m.subject, why = %why, "ClearAll");
                        events.push(Event::ClearAll);
                    }
                }
            }
            // (Below `expect`: delivered again, the ordered consumer was
            // recreated.)
            if n >= MAX_INJECT {
                break;
            }
            if let Some(Some(Ok(next))) = a.messages.next().now_or_never() {
                pending = Some(next);
            }
        }
        if clear {
            events.push(Event::ClearAll);
        }
        // Consecutive ClearAlls are one.
        events.dedup_by(|a, b| matches!((a, b), (Event::ClearAll, Event::ClearAll)));
        let published = self.inject_events(events).await;
        if let Role::Active(a) = &mut self.role {
            push_bounded(&mut a.unsent, UNSENT, (a.cursor, published));
        }
        if !self.save_cursor_after_sent().await {
            self.step_down().await;
        }
    }

    /// Publishes `events` into the LAN; returns how many events the
    /// injector has published in all, these included (from the receipts:
    /// the core numbers its events from 1).
    async fn inject_events(&mut self, events: Vec<Event>) -> u64 {
        let Some(node) = &self.injector else {
            return 0;
        };
        let Role::Active(a) = &mut self.role else {
            return 0;
        };
        if events.is_empty() {
            return a.published;
        }
        let clears = events
            .iter()
            .filter(|e| matches!(e, Event::ClearAll))
            .count() as u64;
        let n = events.len() as u64;
        match node.publish_many(events.clone()).await {
            Ok(r) => {
                a.published = a.published.max(r.seqs.end.saturating_sub(1));
                self.counts.injected.inc_by(n - clears);
                self.counts.clears.inc_by(clears);
            }
            // One of them does not fit in this cluster's datagrams (another
            // site's are larger): each alone, and what fails is a ClearAll.
            Err(_) => {
                for e in events {
                    let clear = matches!(e, Event::ClearAll);
                    let r = match (!clear).then_some(e) {
                        Some(e) => match node.publish(e).await {
                            Ok(r) => {
                                self.counts.injected.inc();
                                Some(r)
                            }
                            Err(_) => None,
                        },
                        None => None,
                    };
                    let r = match r {
                        Some(r) => Ok(r),
                        None => {
                            if !clear {
                                tracing::warn!(
                                    "an event of another site cannot be published here: ClearAll"
                                );
                            }
                            self.counts.clears.inc();
                            node.clear_all().await
                        }
                    };
                    if let Ok(r) = r {
                        a.published = a.published.max(r.seqs.end.saturating_sub(1));
                    }
                }
            }
        }
        a.published
    }

    /// Waits (200 ms at most) until the injector has sent everything it
    /// was given, saving the place as far as it has: a crash loses
    /// nothing, and after a quiet moment repeats nothing. False if another
    /// bridge wrote the place since.
    async fn save_cursor_after_sent(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_millis(200);
        loop {
            if !self.save_cursor().await {
                return false;
            }
            let Role::Active(a) = &self.role else {
                return true;
            };
            if a.unsent.is_empty() || Instant::now() > deadline {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// What a message of the stream means for this site.
    fn read(&self, m: &jetstream::Message) -> Read {
        let Some(site) = m.subject.as_str().strip_prefix(self.names.prefix.as_str()) else {
            return Read::Clear("a subject outside the cluster's".into());
        };
        if site == self.names.site {
            return Read::Own;
        }
        if site.contains('.') {
            return Read::Clear(format!("an unknown subject {}", m.subject));
        }
        if let Some(why) = m.headers.as_ref().and_then(|h| h.get(GAP_HEADER)) {
            return Read::Clear(format!("site {site} announced a gap: {why}"));
        }
        match decode_event(&m.payload) {
            Ok(e) => Read::Event(e),
            Err(e) => Read::Clear(format!("an unreadable event from site {site}: {e}")),
        }
    }
}

/// The lease's value: the holder, and whether a gap record of its is not
/// yet acknowledged (a takeover then is never whole).
fn lease_value(me: &str, gap_pending: bool) -> Bytes {
    if gap_pending {
        format!("{me} gap-pending").into()
    } else {
        me.to_string().into()
    }
}

/// An ordered consumer of every site's messages, from `start`.
async fn consumer_from(
    stream: &stream::Stream,
    names: &Names,
    start: u64,
) -> Result<consumer::pull::Ordered, String> {
    stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("{}>", names.prefix),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .messages()
        .await
        .map_err(|e| e.to_string())
}

/// The stream a Reset is about, if one.
fn reset_stream(r: &ResetReason) -> Option<u64> {
    match r {
        ResetReason::Unavailable { stream, .. }
        | ResetReason::RetriesExhausted { stream, .. }
        | ResetReason::TooOld { stream, .. }
        | ResetReason::TooManyGaps { stream, .. }
        | ResetReason::StreamTimedOut { stream, .. }
        | ResetReason::StreamEvicted { stream, .. } => Some(*stream),
        _ => None,
    }
}

enum Read {
    Own,
    Event(Event),
    Clear(String),
}
