//! The unicast transport on real sockets (loopback only: every node binds
//! its own port of 127.0.0.1 and sends to its peers there; no multicast
//! socket is opened): static peers under loss checked by the
//! no-silent-loss checker, peers given by a name (`localhost`), peers
//! learned from the datagrams that reach a node, and bad configurations.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::auth::{named, publish, Reader};
use cachecast::testkit::{Faults, LoopbackCluster};
use cachecast::wire::Body;
use cachecast::{Delivery, JoinError, Node, NodeConfig, PeerSpec, Transport};

/// `n` ports of 127.0.0.1 free now (held together, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A unicast node's configuration: listening on `port` of 127.0.0.1,
/// sending to `peers`.
fn unicast(cfg: &mut NodeConfig, port: u16, peers: Vec<PeerSpec>) {
    cfg.transport = Transport::Unicast;
    cfg.listen = Some(addr(port));
    cfg.peers = peers;
}

fn events_of(c: &LoopbackCluster, i: usize) -> usize {
    c.deliveries(i)
        .iter()
        .filter(|(_, d)| matches!(d, Delivery::Event { .. }))
        .count()
}

fn resets_of(c: &LoopbackCluster, i: usize) -> usize {
    c.deliveries(i)
        .iter()
        .filter(|(_, d)| matches!(d, Delivery::Reset { .. }))
        .count()
}

/// Four nodes that list each other (each its own address too: skipped),
/// one losing 10 % of what it receives: every event of every publisher
/// reaches every node, repaired over unicast, with no Reset; its `Nak`s go
/// to the publishers only and the repairs to it only (a node that neither
/// publishes nor loses hears none of either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_peers_under_loss_deliver_everything() {
    let names = ["u0", "u1", "u2", "u3"];
    let ports: HashMap<String, u16> = names
        .iter()
        .map(|n| n.to_string())
        .zip(free_ports(names.len()))
        .collect();
    let all: Vec<PeerSpec> = ports.values().map(|p| PeerSpec::Addr(addr(*p))).collect();
    let ports = Arc::new(ports);
    let c = LoopbackCluster::start_named(&names, 11, move |cfg| {
        let port = ports[&cfg.node_name];
        unicast(cfg, port, all.clone());
    })
    .await
    .unwrap();
    c.faults(3).set(Faults {
        loss: 0.1,
        ..Faults::default()
    });
    let naks_at_2 = Arc::new(AtomicU64::new(0));
    let counter = naks_at_2.clone();
    // Counts, drops nothing.
    c.faults(2).set(Faults::dropping(move |d| {
        if matches!(d.body, Body::Nak { .. } | Body::Repair { .. }) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        false
    }));
    let per = 300;
    for i in 0..per {
        for p in [0, 1] {
            c.publish(p, [format!("n{p}-{i}")]).await.unwrap();
        }
        if i % 10 == 9 {
            // Many datagrams, not a few large ones.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert!(c.settle(Duration::from_secs(20)).await, "did not settle");
    if let Err(v) = c.check() {
        panic!("{v}");
    }
    for (i, name) in names.iter().enumerate() {
        // Own events are delivered too (deliver_own).
        assert_eq!(events_of(&c, i), 2 * per, "{name}");
        assert_eq!(resets_of(&c, i), 0, "{name}");
    }
    assert!(c.faults(3).lost_data() > 0, "the loss was not applied");
    let s = c.stats(3).await.unwrap().protocol;
    assert!(s.naks_sent > 0 && s.events_repaired > 0, "{s:?}");
    assert_eq!(
        naks_at_2.load(Ordering::Relaxed),
        0,
        "a Nak went beyond its stream's origin, or a repair beyond its asker"
    );
}

/// Peers given by a name: `localhost` resolves (from /etc/hosts) to
/// 127.0.0.1 and ::1; the IPv6 answer is skipped by an IPv4 node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_given_by_name_are_resolved() {
    let ports = free_ports(2);
    let place = cachecast::testkit::Loopback::new();
    let by_name = |p: u16| {
        format!("localhost:{p}")
            .parse::<PeerSpec>()
            .expect("a name")
    };
    let mut a = place.config("a");
    unicast(&mut a, ports[0], vec![by_name(ports[1])]);
    let mut b = place.config("b");
    unicast(&mut b, ports[1], vec![by_name(ports[0])]);
    let (a, b) = tokio::join!(Node::join(a), Node::join(b));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut at_b = Reader::new(&b);
    publish(&a, "k", 50).await;
    at_b.until("a's 50 events at b", |r| r.keys(a.stream()).len() == 50)
        .await;
    assert_eq!(at_b.keys(a.stream()), named("k", 50));
    assert_eq!(at_b.resets(), 0);
    a.shutdown().await;
    b.shutdown().await;
}

/// A node that nobody lists is learned from its datagrams: `c` lists only
/// `a`, `a` and `b` list each other. `c`'s events reach `a`, and `a`'s
/// reach `c`, which `a` learned; `b`, which never heard `c`, does not send
/// to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_learned_from_what_reaches_a_node() {
    let ports = free_ports(3);
    let place = cachecast::testkit::Loopback::new();
    let cfg = |name: &str, port: u16, peers: &[u16]| {
        let mut cfg = place.config(name);
        unicast(
            &mut cfg,
            port,
            peers.iter().map(|p| PeerSpec::Addr(addr(*p))).collect(),
        );
        cfg
    };
    let a = Node::join(cfg("a", ports[0], &[ports[1]])).await.unwrap();
    let b = Node::join(cfg("b", ports[1], &[ports[0]])).await.unwrap();
    let c = Node::join(cfg("c", ports[2], &[ports[0]])).await.unwrap();
    let (mut at_a, mut at_c) = (Reader::new(&a), Reader::new(&c));
    publish(&c, "from-c", 20).await;
    at_a.until("c's events at a", |r| r.keys(c.stream()).len() == 20)
        .await;
    publish(&a, "from-a", 20).await;
    at_c.until("a's events at c", |r| r.keys(a.stream()).len() == 20)
        .await;
    assert_eq!(at_c.keys(a.stream()), named("from-a", 20));
    assert_eq!(at_a.resets() + at_c.resets(), 0);
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

/// Configurations that cannot work are refused at join, naming the field.
#[tokio::test]
async fn bad_unicast_configurations_are_refused() {
    let place = cachecast::testkit::Loopback::new();
    let port = free_ports(1)[0];
    let peer = PeerSpec::Addr(addr(port));
    let refused = |cfg: NodeConfig| async move {
        match Node::join(cfg).await {
            Err(JoinError::Config(e)) => e.to_string(),
            Err(e) => panic!("refused, but not as a configuration error: {e}"),
            Ok(_) => panic!("joined"),
        }
    };
    let mut no_peers = place.config("x");
    no_peers.transport = Transport::Unicast;
    assert!(refused(no_peers).await.contains("must be given"));
    let mut peers_on_multicast = place.config("x");
    peers_on_multicast.peers = vec![peer.clone()];
    assert!(refused(peers_on_multicast).await.contains("peers"));
    let mut listen_on_both = place.config("x");
    listen_on_both.transport = Transport::Both;
    listen_on_both.peers = vec![peer.clone()];
    listen_on_both.listen = Some(addr(port));
    assert!(refused(listen_on_both).await.contains("listen"));
    let mut v6_peer = place.config("x");
    v6_peer.transport = Transport::Unicast;
    v6_peer.listen = Some(addr(port));
    v6_peer.peers = vec!["[::1]:7000".parse().unwrap()];
    assert!(refused(v6_peer).await.contains("IPv6"));
    // Two nodes on one address: the second cannot bind.
    let mut first = place.config("first");
    unicast(&mut first, port, vec![peer.clone()]);
    let first = Node::join(first).await.unwrap();
    let mut second = place.config("second");
    unicast(&mut second, port, vec![peer]);
    match Node::join(second).await {
        Err(e) => assert!(e.to_string().contains("its own port"), "{e}"),
        Ok(_) => panic!("two nodes bound one address"),
    }
    first.shutdown().await;
}
