//! Helpers shared by the loopback integration tests. Each test takes a
//! fresh place on loopback (the test kit's `Loopback`: its own group in
//! 239.255.0.0/16, free port and cluster name, interface 127.0.0.1 and TTL
//! 0), so that tests run in parallel and nothing leaves the host.
#![allow(dead_code)]

pub mod auth;
pub mod sim;

use std::future::Future;
use std::time::Duration;

pub use cachecast::testkit::Loopback;
use cachecast::wire::Event;
use cachecast::{Delivery, Node, Subscription};

/// Joining at a place, failing the test if the node cannot join.
pub trait JoinHere {
    /// Joins a node named `node` with the place's configuration.
    fn join(&self, node: &str) -> impl Future<Output = Node>;
}

impl JoinHere for Loopback {
    async fn join(&self, node: &str) -> Node {
        Node::join(self.config(node)).await.expect("join")
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
