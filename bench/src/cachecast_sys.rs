//! cachecast itself in the benchmark: a publisher node and subscriber
//! nodes, each on its own single-threaded tokio runtime, through the
//! public API only (`Node::join`, `publish`, `subscribe`).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cachecast::wire::{EventBatch, EventRef};
use cachecast::DeliveryRef;
use cachecast::{Node, NodeConfig};

use super::common::{
    loopback_opts, mono_ns, stamp, thread_cpu, Done, Pacer, Plan, PubReport, Recorder, Step,
    PROGRESS,
};

/// The keys of a keyed run: every node holds `file` (auth "require"),
/// and encrypts with `encrypt`.
#[derive(Debug, Clone)]
pub struct Keys {
    pub file: PathBuf,
    pub encrypt: bool,
}

/// A node over the unicast transport: where it receives, whom it sends to.
#[derive(Debug, Clone)]
pub struct Unicast {
    pub listen: SocketAddr,
    pub peers: Vec<SocketAddr>,
}

/// On a namespace LAN (`--lan`): this host's address; nodes then send on
/// it with TTL 1 instead of on 127.0.0.1 with TTL 0.
pub static LAN_HOST: std::sync::OnceLock<std::net::Ipv4Addr> = std::sync::OnceLock::new();

/// `--coalesce-us`: the nodes' `CoreConfig::coalesce`, if given.
pub static COALESCE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

pub(crate) fn config(
    group: SocketAddr,
    name: &str,
    keys: Option<&Keys>,
    unicast: Option<&Unicast>,
) -> NodeConfig {
    let o = loopback_opts(group);
    let (interface, ttl) = match LAN_HOST.get() {
        Some(ip) => (cachecast::InterfaceSpec::Addr((*ip).into()), 1),
        None => (o.interface, o.ttl),
    };
    let mut cfg = NodeConfig {
        group,
        interface,
        ttl,
        cluster: "cachecast-bench".into(),
        node_name: name.into(),
        key_file: keys.map(|k| k.file.clone()),
        encrypt: keys.is_some_and(|k| k.encrypt),
        ..NodeConfig::default()
    };
    if let Some(c) = COALESCE.get() {
        cfg.protocol.coalesce = *c;
    }
    if let Some(u) = unicast {
        cfg.transport = cachecast::Transport::Unicast;
        cfg.listen = Some(u.listen);
        cfg.peers = u
            .peers
            .iter()
            .map(|a| cachecast::PeerSpec::Addr(*a))
            .collect();
    }
    cfg
}

pub(crate) fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Adds one event of `plan` to `batch`, its keys stamped now (written into
/// `keys`, reused: with one key per event, no allocation per event).
fn add_event(plan: &Plan, keys: &mut [Vec<u8>], batch: &mut EventBatch) -> io::Result<()> {
    for k in keys.iter_mut() {
        k.resize(plan.key_size, 0);
        stamp(k, mono_ns());
    }
    // Hex digits and `k`: always ASCII.
    fn text(k: &[u8]) -> &str {
        std::str::from_utf8(k).unwrap_or_default()
    }
    match keys {
        [one] => batch.invalidate(&[text(one)]),
        many => batch.invalidate(&many.iter().map(|k| text(k)).collect::<Vec<_>>()),
    }
    .map_err(io_err)
}

/// Publishes `plan` from `streams` nodes (one for the throughput, latency
/// and sweep runs; `--streams` for the memory run, so that every subscriber
/// follows that many streams). `done` gets the report once everything has
/// left; the nodes keep answering `Nak`s until `release`, then shut down
/// (`Goodbye`): a publisher that leaves early cannot repair.
pub fn publish(
    group: SocketAddr,
    streams: usize,
    plan: &Plan,
    keys: Option<&Keys>,
    unicast: Option<&Unicast>,
    done: impl FnOnce(io::Result<PubReport>),
    release: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return done(Err(e)),
    };
    rt.block_on(async {
        match publish_from(group, streams.max(1), plan, keys, unicast).await {
            Ok((nodes, report)) => {
                done(Ok(report));
                let _ = release.await;
                for node in &nodes {
                    node.shutdown().await;
                }
            }
            Err(e) => done(Err(e)),
        }
    })
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

async fn publish_from(
    group: SocketAddr,
    streams: usize,
    plan: &Plan,
    keys: Option<&Keys>,
    unicast: Option<&Unicast>,
) -> io::Result<(Vec<Node>, PubReport)> {
    let mut nodes = Vec::with_capacity(streams);
    for i in 0..streams {
        nodes.push(
            Node::join(NodeConfig {
                // No subscription here: its own events would only queue.
                deliver_own: false,
                ..config(group, &format!("bench-pub-{i}"), keys, unicast)
            })
            .await
            .map_err(io_err)?,
        );
    }
    let mut keys = vec![Vec::new(); plan.keys_per_event];
    let mut batch = EventBatch::new();
    let cpu0 = thread_cpu();
    let pacer = Pacer::new(plan);
    let start_ns = mono_ns();
    let (mut sent, mut turn) = (0u64, 0usize);
    loop {
        // What is due goes to a driver in one hand-over (at most 1024
        // events at a time), as a pipelining client would; with several
        // nodes, each hand-over to the next one.
        let n = match pacer.step(plan, sent, 1024) {
            Step::Done => break,
            Step::Wait => {
                // Let the drivers send what was published, then sleep.
                tokio::task::yield_now().await;
                pacer.wait_for(sent);
                continue;
            }
            Step::Publish(n) => n,
        };
        for _ in 0..n {
            add_event(plan, &mut keys, &mut batch)?;
        }
        nodes[turn % streams]
            .publish_batch(&mut batch)
            .await
            .map_err(io_err)?;
        turn += 1;
        sent += n;
        PROGRESS.store(sent, std::sync::atomic::Ordering::Relaxed);
    }
    // The report once everything handed over has left (bounded: a node
    // that cannot send is an error, not a hang).
    let deadline = tokio::time::Instant::now() + plan.max_time;
    let mut datagrams = 0;
    for node in &nodes {
        let published = node.stats().await.protocol.events_published;
        loop {
            let stats = node.stats().await.protocol;
            if stats.events_sent >= published {
                datagrams += stats.data_sent;
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(io_err("published events never left the node"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let report = PubReport {
        published: sent,
        start_ns,
        end_ns: mono_ns(),
        cpu_s: thread_cpu() - cpu0,
        datagrams,
    };
    Ok((nodes, report))
}

/// One subscriber node until `done`.
pub fn subscribe(
    group: SocketAddr,
    name: &str,
    keys: Option<&Keys>,
    unicast: Option<&Unicast>,
    done: Done,
    ready: impl FnOnce() + Send + 'static,
) -> io::Result<(Recorder, cachecast::NodeStats)> {
    let rt = runtime()?;
    let name = name.to_string();
    let keys = keys.cloned();
    let unicast = unicast.cloned();
    // A spawned task, not the `block_on` future: woken by the driver, a
    // task runs as soon as the driver yields, where the `block_on` future
    // would first wait for the runtime to poll for I/O once more.
    let task = rt.spawn(async move {
        let done = &done;
        let node = Node::join(NodeConfig {
            receive_only: true,
            ..config(group, &name, keys.as_ref(), unicast.as_ref())
        })
        .await
        .map_err(io_err)?;
        let mut sub = node.subscribe();
        let mut rec = Recorder::new();
        // One timer for the whole run (not one per receive) wakes the loop
        // to check whether it is done.
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        ready();
        rec.start();
        loop {
            // Idle is not done while a gap is open: its repair or its Reset
            // is still to come. (Resets are counted by the node's stats.)
            if done.complete(&rec)
                || (done.idle(&rec) && node.stats().await.protocol.open_gaps == 0)
            {
                break;
            }
            // Everything ready, read in place (`recv_each`), with one clock
            // reading per wake-up.
            let mut now = None;
            let mut record = |d: DeliveryRef<'_>| {
                if let DeliveryRef::Event { event, .. } = d {
                    // The first key carries the stamp.
                    let key = match event {
                        EventRef::Invalidate { mut keys } => keys.next().unwrap_or(""),
                        _ => "",
                    };
                    rec.record(key.as_bytes(), *now.get_or_insert_with(mono_ns));
                }
            };
            tokio::select! {
                biased;
                n = sub.recv_each(&mut record) => if n.is_none() {
                    break;
                },
                _ = tick.tick() => {}
            }
        }
        let stats = node.stats().await;
        node.shutdown().await;
        Ok((rec, stats))
    });
    rt.block_on(task).map_err(io_err)?
}
