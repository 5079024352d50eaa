//! # cachecast: coherent caches over UDP multicast
//!
//! A server that changes data publishes an invalidation; every other server
//! of the cluster receives it over UDP multicast, and so does the publishing
//! server's own application. Every event carries a sequence number, so a
//! receiver always knows when it may have missed something: it gets it back
//! (NAK repair, in milliseconds) or, when that is impossible, tells the
//! application to clear its whole cache ([`Delivery::Reset`]).
//!
//! **The promise: no silent loss.** For every event a node should have seen
//! (one published after its [`Node::join`] returned), it delivers that event
//! or a `Reset` after it.
//!
//! ## Start here
//!
//! ```no_run
//! use cachecast::{Delivery, EventRef, Node, NodeConfig};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // On this host only (127.0.0.1, TTL 0); on a LAN, NodeConfig::default().
//!     let node = Node::join(NodeConfig::loopback("shop")).await?; // in sync: cache from now on
//!     let mut sub = node.subscribe(); // misses nothing since join
//!     node.invalidate(["user:42"]).await?; // everywhere, this node included
//!     while let Some(d) = sub.recv().await {
//!         match d {
//!             Delivery::Event { event, .. } => match event.view() {
//!                 EventRef::Invalidate { keys } => keys.for_each(|k| println!("drop {k}")),
//!                 EventRef::InvalidatePrefix { prefix } => println!("drop {prefix}*"),
//!                 EventRef::ClearAll => println!("drop everything"),
//!                 EventRef::Custom { topic, .. } => println!("custom {topic}"),
//!             },
//!             Delivery::Reset { reason } => println!("clear the whole cache: {reason:?}"),
//!         }
//!     }
//!     node.shutdown().await; // Goodbye: the others forget this node cleanly
//!     Ok(())
//! }
//! ```
//!
//! - [`Node`]: join a cluster ([`NodeConfig`]), publish ([`Node::invalidate`],
//!   [`Node::invalidate_prefix`], [`Node::clear_all`], [`Node::publish`],
//!   [`Node::publish_batch`] with an [`EventBatch`]; each returns a [`Receipt`]
//!   with the events' stream and seqs), subscribe
//!   ([`Subscription::recv`], or [`Subscription::recv_each`] to read in place),
//!   read counters ([`Node::stats`]), leave ([`Node::shutdown`]).
//! - What a subscriber gets: [`Delivery`] (an event, as an [`EncodedEvent`]
//!   read with [`EncodedEvent::view`] into an [`EventRef`], or a `Reset` with
//!   its [`ResetReason`]).
//! - A node that only listens sets [`NodeConfig::receive_only`]: when it
//!   stops, even by `kill -9`, nobody Resets for it.
//! - Errors: [`JoinError`], [`PublishError`], [`ConfigError`].
//!
//! Linux only (recvmmsg, UDP GSO/GRO, socket filters: see the README's
//! limits).
//!
//! ## Layers
//!
//! [`wire`] is the datagram format (version 1, bincode 2, golden bytes);
//! [`proto`] the sans-IO protocol ([`proto::NodeCore`]: no sockets, no clocks,
//! driven in virtual time by the simulator); [`net`] the sockets and the one
//! tokio driver; [`Node`] the async API on top. With the feature `test-util`,
//! `cachecast::testkit`: a loopback harness and a simulator that check the promise
//! (one checker, one fault model) for your own tests. With the feature
//! `moka`, `cachecast::moka` keeps a `moka::future::Cache` coherent from a
//! [`Subscription`].

pub mod keys;
#[cfg(feature = "moka")]
pub mod moka;
pub mod net;
mod node;
pub mod proto;
#[cfg(feature = "test-util")]
pub mod testkit;
pub mod wire;

pub use net::peers::{PeerSpec, Transport};
pub use net::socket::InterfaceSpec;
pub use node::{
    JoinError, Node, NodeConfig, NodeStats, Receipt, ReloadError, Subscription, DEFAULT_GROUP,
};
pub use proto::auth::{AuthConfig, AuthMode};
pub use proto::config::{ConfigError, CoreConfig};
pub use proto::delivery::{Delivery, DeliveryRef, ResetReason};
pub use proto::members::{
    ConfirmReport, Liveness, Member, MemberRef, MemberStream, Staleness, StreamStaleness,
};
pub use proto::sender::PublishError;
pub use proto::stats::{Histogram, Stats};
pub use wire::{EncodedEvent, Event, EventBatch, EventRef};

/// The README's examples, compiled as doc tests so that they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
