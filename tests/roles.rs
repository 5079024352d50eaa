//! Who a node is: a receive-only node (a listener) never publishes, says so
//! in every datagram, and so costs nobody a `Reset` when it dies, even
//! unannounced; and a node delivers its own events to its own subscribers
//! (`deliver_own`). Driven through the sans-IO core in virtual time, then
//! once on loopback sockets.

mod common;

use std::time::{Duration, Instant};

use cachecast::proto::NodeCore;
use cachecast::wire::{self, Body, Event, Events, Header};
use cachecast::CoreConfig;
use cachecast::{Delivery, Node, NodeConfig, PublishError, ResetReason};
use common::*;

fn key(i: u64) -> Event {
    Event::Invalidate {
        keys: vec![format!("key-{i}")],
    }
}

/// Cores exchanging every datagram, in virtual time.
struct Net {
    t: Instant,
    cores: Vec<Option<NodeCore>>,
    got: Vec<Vec<Delivery>>,
}

impl Net {
    fn new() -> Net {
        Net {
            t: Instant::now(),
            cores: Vec::new(),
            got: Vec::new(),
        }
    }

    /// Adds a node (stream `id + 1`) joining now.
    fn add(&mut self, tweak: impl FnOnce(&mut CoreConfig)) -> usize {
        let id = self.cores.len();
        let mut cfg = CoreConfig {
            stream: id as u64 + 1,
            node_name: format!("n{id}"),
            seed: id as u64,
            ..CoreConfig::default()
        };
        tweak(&mut cfg);
        self.cores.push(Some(NodeCore::new(cfg, self.t).unwrap()));
        self.got.push(Vec::new());
        id
    }

    fn core(&mut self, id: usize) -> &mut NodeCore {
        self.cores[id].as_mut().expect("a live node")
    }

    /// Stops a node dead: nothing more is sent (kill -9).
    fn kill(&mut self, id: usize) {
        self.cores[id] = None;
    }

    /// Runs for `d` in steps of 1 ms: timers, then every datagram to every
    /// other live node, then deliveries.
    fn run_for(&mut self, d: Duration) {
        let end = self.t + d;
        while self.t < end {
            self.t += Duration::from_millis(1);
            let t = self.t;
            let mut sent = Vec::new();
            for (id, c) in self.cores.iter_mut().enumerate() {
                let Some(c) = c else { continue };
                if c.poll_timeout().is_some_and(|w| w <= t) {
                    c.handle_timeout(t);
                }
                let mut buf = Vec::new();
                while c.poll_transmit(t, &mut buf) {
                    sent.push((id, buf.clone()));
                }
            }
            for (from, bytes) in &sent {
                for (id, c) in self.cores.iter_mut().enumerate() {
                    if let (Some(c), true) = (c, id != *from) {
                        c.handle_datagram(t, bytes);
                    }
                }
            }
            for (id, c) in self.cores.iter_mut().enumerate() {
                let Some(c) = c else { continue };
                while let Some(d) = c.poll_delivery() {
                    self.got[id].push(d);
                }
            }
        }
    }

    fn resets(&self, id: usize) -> Vec<&ResetReason> {
        self.got[id]
            .iter()
            .filter_map(|d| match d {
                Delivery::Reset { reason } => Some(reason),
                _ => None,
            })
            .collect()
    }

    /// (stream, seq) of every event `id` delivered, in order.
    fn events(&self, id: usize) -> Vec<(u64, u64)> {
        self.got[id]
            .iter()
            .filter_map(|d| match d {
                Delivery::Event { stream, seq, .. } => Some((*stream, *seq)),
                _ => None,
            })
            .collect()
    }
}

fn receive_only(c: &mut CoreConfig) {
    c.receive_only = true;
}

/// The point of receive-only: listeners die (SIGKILL, OOM) and restart all
/// the time. A dead listener must not cost the others a Reset, while a dead
/// publisher still must (its last events may be lost).
#[test]
fn a_dead_receive_only_node_costs_nobody_a_reset_while_a_dead_publisher_does() {
    let mut net = Net::new();
    let publisher = net.add(|_| {});
    let watcher = net.add(|_| {});
    let listener = net.add(receive_only);
    let silent = net.add(|_| {}); // may publish, never did
    net.run_for(Duration::from_millis(300));
    let t = net.t;
    for i in 0..5 {
        net.core(publisher).publish(t, key(i)).unwrap();
    }
    net.run_for(Duration::from_millis(300));
    assert_eq!(net.events(listener).len(), 5, "the listener receives");
    // The watcher follows the publisher and the silent node, not the listener.
    assert_eq!(net.core(watcher).stream_count(), 2);
    assert!(net.core(watcher).stats().receive_only_heard > 0);

    net.kill(listener);
    net.kill(silent);
    let timeout = CoreConfig::default().stream_timeout;
    net.run_for(timeout + Duration::from_secs(2));
    let resets = net.resets(watcher);
    assert_eq!(resets.len(), 1, "{resets:?}");
    assert!(
        matches!(resets[0], ResetReason::StreamTimedOut { stream, .. } if *stream == silent as u64 + 1),
        "only the node that could publish costs a Reset: {resets:?}"
    );
    assert!(
        net.resets(publisher).len() == 1,
        "{:?}",
        net.resets(publisher)
    );
}

#[test]
fn a_receive_only_node_refuses_to_publish_and_its_losses_are_still_repaired() {
    let mut net = Net::new();
    let publisher = net.add(|_| {});
    let listener = net.add(receive_only);
    net.run_for(Duration::from_millis(300));
    let t = net.t;
    assert_eq!(
        net.core(listener).publish(t, key(0)),
        Err(PublishError::ReceiveOnly)
    );
    // The listener misses seqs 1..=3 (sent while it is not fed), then hears
    // seq 4: its Nak (from a receive-only node) is served.
    for i in 1..=3 {
        net.core(publisher).publish(t, key(i)).unwrap();
    }
    let mut buf = Vec::new();
    while net.core(publisher).poll_transmit(t, &mut buf) {}
    net.core(publisher).publish(t, key(4)).unwrap();
    net.run_for(Duration::from_millis(500));
    let mut got = net.events(listener);
    got.sort();
    assert_eq!(got, (1..=4).map(|q| (1, q)).collect::<Vec<_>>());
    assert!(
        net.resets(listener).is_empty(),
        "{:?}",
        net.resets(listener)
    );
    assert!(net.core(publisher).stats().repairs_sent > 0);
}

/// A datagram that says "receive-only" and carries events is forged or
/// broken: never delivered, counted.
#[test]
fn events_from_a_receive_only_stream_are_dropped() {
    let mut net = Net::new();
    let rx = net.add(|_| {});
    net.run_for(Duration::from_millis(300));
    let cfg = CoreConfig::default();
    let mut header = Header::new(cfg.cluster, 99);
    header.flags |= wire::FLAG_RECEIVE_ONLY;
    let mut bytes = Vec::new();
    let events = Events::new(&[key(1)]).unwrap();
    wire::encode(
        &header,
        &Body::Data {
            first_seq: 1,
            events,
        },
        &mut bytes,
    );
    let t = net.t;
    net.core(rx).handle_datagram(t, &bytes);
    net.run_for(Duration::from_millis(50));
    assert!(net.events(rx).is_empty());
    assert_eq!(net.core(rx).stream_count(), 0);
    assert_eq!(
        net.core(rx).stats().dropped.get("receive_only_data"),
        Some(&1)
    );
    // Any other unknown flag is refused outright.
    bytes[5] = 0x04;
    net.core(rx).handle_datagram(t, &bytes);
    assert_eq!(net.core(rx).stats().dropped.get("bad_flags"), Some(&1));
}

#[test]
fn own_events_are_delivered_once_each_unless_turned_off() {
    let mut net = Net::new();
    let a = net.add(|_| {});
    let quiet = net.add(|c| c.deliver_own = false);
    net.run_for(Duration::from_millis(300));
    let t = net.t;
    // 200 events: several datagrams, sealed both when full and when sent.
    for i in 0..200 {
        net.core(a).publish(t, key(i)).unwrap();
        net.core(quiet).publish(t, key(i)).unwrap();
    }
    net.run_for(Duration::from_millis(300));
    let own: Vec<(u64, u64)> = net.events(a).into_iter().filter(|e| e.0 == 1).collect();
    assert_eq!(own, (1..=200).map(|q| (1, q)).collect::<Vec<_>>());
    assert!(net.events(quiet).iter().all(|e| e.0 != 2));
    assert_eq!(net.events(quiet).len(), 200, "it still receives a's");
    assert_eq!(net.core(a).stats().own_delivered, 200);
    // Own deliveries carry the node's name, like everyone's.
    let named = net.got[a]
        .iter()
        .any(|d| matches!(d, Delivery::Event { stream: 1, node: Some(n), .. } if &**n == "n0"));
    assert!(named);
}

/// On real sockets: `Node::invalidate` reaches the node's own subscription,
/// and a receive-only node's publish calls are refused at once.
#[tokio::test]
async fn a_node_sees_its_own_invalidation_and_a_receive_only_node_cannot_publish() {
    let c = Loopback::new();
    let node = c.join("a").await;
    let mut sub = node.subscribe();
    node.invalidate(["user:42"]).await.unwrap();
    recv_until(&mut sub, "its own invalidation", |d| {
        is_key(d, node.stream(), "user:42")
    })
    .await;

    let listener = Node::join(NodeConfig {
        receive_only: true,
        ..c.config("listener")
    })
    .await
    .unwrap();
    assert_eq!(
        listener.invalidate(["x"]).await,
        Err(PublishError::ReceiveOnly)
    );
    let mut lsub = listener.subscribe();
    node.invalidate(["user:43"]).await.unwrap();
    recv_until(&mut lsub, "the listener receives", |d| {
        is_key(d, node.stream(), "user:43")
    })
    .await;
    listener.shutdown().await;
    node.shutdown().await;
}
