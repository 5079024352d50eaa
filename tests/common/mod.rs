//! Helpers shared by the loopback integration tests: a fresh cluster per
//! test (its own group in 239.255.0.0/16, free port and name), interface
//! 127.0.0.1 and TTL 0, so that tests run in parallel and nothing leaves
//! the host.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use cachecast::net::socket::InterfaceSpec;
use cachecast::node::{Delivery, FaultInjector, Node, NodeConfig, Subscription, Verdict};
use cachecast::wire::{self, Body, Event};

pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh cluster: its own group, port and name.
#[derive(Clone)]
pub struct Cluster {
    pub group: SocketAddr,
    pub name: String,
}

impl Cluster {
    pub fn new() -> Self {
        let a: u8 = rand::random::<u8>().clamp(1, 254);
        let b: u8 = rand::random::<u8>().clamp(1, 254);
        Cluster {
            group: SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::new(239, 255, a, b),
                free_port(),
            )),
            name: format!("test-{}", rand::random::<u64>()),
        }
    }

    pub fn config(&self, node: &str) -> NodeConfig {
        NodeConfig {
            group: self.group,
            interface: InterfaceSpec::Addr("127.0.0.1".parse().unwrap()),
            cluster: self.name.clone(),
            node_name: node.into(),
            ttl: 0,
            ..NodeConfig::default()
        }
    }

    pub async fn join(&self, node: &str) -> Node {
        Node::join(self.config(node)).await.expect("join")
    }

    /// Sends raw bytes to the group, from a plain socket (TTL 0, loopback).
    pub fn send_raw(&self, bytes: &[u8]) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_multicast_ttl_v4(0).unwrap();
        socket2::SockRef::from(&s)
            .set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
            .unwrap();
        s.send_to(bytes, self.group).unwrap();
    }
}

pub const DEADLINE: Duration = Duration::from_secs(5);

/// Receives until `pred` matches, failing after the deadline.
pub async fn recv_until(
    sub: &mut Subscription,
    what: &str,
    mut pred: impl FnMut(&Delivery) -> bool,
) -> Delivery {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(end, sub.recv()).await {
            Ok(Some(d)) if pred(&d) => return d,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("subscription closed while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

pub fn keys_of(d: &Delivery) -> Option<(u64, Vec<String>)> {
    match d {
        Delivery::Event { stream, event, .. } => match event.to_event() {
            Event::Invalidate { keys } => Some((*stream, keys)),
            _ => None,
        },
        _ => None,
    }
}

pub fn is_key(d: &Delivery, stream: u64, key: &str) -> bool {
    keys_of(d).is_some_and(|(s, k)| s == stream && k == [key])
}

/// Fault injection that drops every received datagram for which the
/// closure returns true.
pub struct DropIf<F>(pub F);

impl<F: Fn(&[u8]) -> bool + Send + Sync> FaultInjector for DropIf<F> {
    fn on_receive(&self, bytes: &[u8]) -> Verdict {
        if (self.0)(bytes) {
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }

    fn drop_outgoing(&self, _bytes: &[u8]) -> bool {
        false
    }
}

/// For `NodeConfig::faults`: drops received datagrams for which `pred` is true.
pub fn drop_if(
    pred: impl Fn(&[u8]) -> bool + Send + Sync + 'static,
) -> Option<Arc<dyn FaultInjector>> {
    Some(Arc::new(DropIf(pred)))
}

/// For `NodeConfig::faults`: drops received `Data` datagrams of cluster
/// `name` for which `pred(first_seq, event count)` is true.
pub fn drop_data(
    name: &str,
    pred: impl Fn(u64, u64) -> bool + Send + Sync + 'static,
) -> Option<Arc<dyn FaultInjector>> {
    let hash = wire::cluster_hash(name);
    drop_if(move |bytes: &[u8]| match wire::decode(bytes, hash) {
        Ok(d) => {
            matches!(d.body, Body::Data { first_seq, ref events } if pred(first_seq, events.len() as u64))
        }
        Err(_) => false,
    })
}
