//! cachecast itself in the benchmark: a publisher node and subscriber
//! nodes, each on its own single-threaded tokio runtime, through the
//! public API only (`Node::join`, `publish`, `subscribe`).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::node::{Node, NodeConfig};
use crate::proto::Delivery;
use crate::wire::Event;

use super::common::{
    loopback_opts, message, mono_ns, thread_cpu, Done, Pacer, Plan, PubReport, Recorder, PROGRESS,
};

fn config(group: SocketAddr, name: &str) -> NodeConfig {
    let o = loopback_opts(group);
    NodeConfig {
        group,
        interface: o.interface,
        ttl: o.ttl,
        cluster: "cachecast-bench".into(),
        node_name: name.into(),
        ..NodeConfig::default()
    }
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn event(plan: &Plan) -> Event {
    Event::Invalidate {
        keys: (0..plan.keys_per_event)
            .map(|_| message(plan.key_size))
            .collect(),
    }
}

/// The publisher's end: `done` gets the report once everything is
/// published; the node(s) then keep answering until `release`, and shut
/// down (Goodbye).
type Release = tokio::sync::oneshot::Receiver<()>;

/// Publishes `plan` from one node (see [`Release`]).
pub fn publish(
    group: SocketAddr,
    plan: &Plan,
    done: impl FnOnce(io::Result<PubReport>),
    release: Release,
) {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return done(Err(e)),
    };
    rt.block_on(async {
        let r = publish_one(group, plan).await;
        let node = match r {
            Ok((node, report)) => {
                done(Ok(report));
                node
            }
            Err(e) => return done(Err(e)),
        };
        let _ = release.await;
        node.shutdown().await;
    })
}

async fn publish_one(group: SocketAddr, plan: &Plan) -> io::Result<(Node, PubReport)> {
    {
        let node = Node::join(config(group, "bench-pub"))
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let cpu0 = thread_cpu();
        let pacer = Pacer::new(plan);
        let start_ns = mono_ns();
        let mut sent = 0u64;
        while sent < plan.events && !pacer.expired(plan) {
            let due = pacer.due();
            if due <= sent {
                // Let the driver send what was published, then sleep.
                tokio::task::yield_now().await;
                pacer.wait_for(sent);
                continue;
            }
            // What is due goes to the driver in one hand-over (at most
            // 1024 events at a time), as a pipelining client would.
            while sent < due {
                let n = (due - sent).min(1024);
                node.publish_many((0..n).map(|_| event(plan)))
                    .await
                    .map_err(|e| io::Error::other(e.to_string()))?;
                sent += n;
                PROGRESS.store(sent, std::sync::atomic::Ordering::Relaxed);
            }
            PROGRESS.store(sent, std::sync::atomic::Ordering::Relaxed);
        }
        // Everything handed over has left before the report.
        while node.stats().await.protocol.events_sent < sent {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let end_ns = mono_ns();
        let stats = node.stats().await;
        let report = PubReport {
            published: sent,
            start_ns,
            end_ns,
            cpu_s: thread_cpu() - cpu0,
            datagrams: stats.protocol.data_sent,
        };
        Ok((node, report))
    }
}

/// One subscriber node until `done`.
pub fn subscribe(
    group: SocketAddr,
    name: &str,
    done: &Done,
    ready: impl FnOnce(),
) -> io::Result<(Recorder, crate::node::NodeStats)> {
    runtime()?.block_on(async {
        let node = Node::join(config(group, name))
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut sub = node.subscribe();
        let mut rec = Recorder::new();
        ready();
        rec.start();
        let mut resets = 0u64;
        loop {
            // Idle is not done while a gap is open: its repair or its Reset
            // is still to come.
            if done.check(&rec)
                && (rec.received >= done.expect
                    || done.stop.load(std::sync::atomic::Ordering::Relaxed)
                    || node.stats().await.protocol.open_gaps == 0)
            {
                break;
            }
            let first = match tokio::time::timeout(Duration::from_millis(50), sub.recv()).await {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(_) => continue,
            };
            let now = mono_ns();
            let mut next = Some(first);
            while let Some(d) = next {
                match d {
                    Delivery::Event {
                        event: Event::Invalidate { keys },
                        ..
                    } => rec.record(keys.first().map_or(&b""[..], |k| k.as_bytes()), now),
                    Delivery::Event { .. } => rec.record(b"", now),
                    Delivery::Reset { .. } => resets += 1,
                }
                next = sub.try_recv();
            }
        }
        let stats = node.stats().await;
        let _ = resets;
        node.shutdown().await;
        Ok((rec, stats))
    })
}

/// Publishes `plan` from `streams` nodes at once (round robin), for the
/// receiver-memory measurement: every subscriber follows that many streams.
pub fn publish_streams(
    group: SocketAddr,
    streams: usize,
    plan: &Plan,
    done: impl FnOnce(io::Result<PubReport>),
    release: Release,
) {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return done(Err(e)),
    };
    rt.block_on(async {
        match publish_many_streams(group, streams, plan).await {
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

async fn publish_many_streams(
    group: SocketAddr,
    streams: usize,
    plan: &Plan,
) -> io::Result<(Vec<Node>, PubReport)> {
    {
        let mut nodes = Vec::with_capacity(streams);
        for i in 0..streams {
            let node = Node::join(config(group, &format!("bench-pub-{i}")))
                .await
                .map_err(|e| io::Error::other(e.to_string()))?;
            nodes.push(node);
        }
        let cpu0 = thread_cpu();
        let pacer = Pacer::new(plan);
        let start_ns = mono_ns();
        let mut sent = 0u64;
        while sent < plan.events && !pacer.expired(plan) {
            let due = pacer.due();
            if due <= sent {
                tokio::task::yield_now().await;
                pacer.wait_for(sent);
                continue;
            }
            while sent < due {
                let node = &nodes[(sent % streams as u64) as usize];
                node.publish(event(plan))
                    .await
                    .map_err(|e| io::Error::other(e.to_string()))?;
                sent += 1;
            }
            PROGRESS.store(sent, std::sync::atomic::Ordering::Relaxed);
        }
        let mut datagrams = 0;
        for node in &nodes {
            datagrams += node.stats().await.protocol.data_sent;
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
}
