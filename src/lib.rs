//! cachecast: coherent caches over UDP multicast.
//!
//! A node that changes data publishes an invalidation; every other node of
//! the cluster receives it. Events carry sequence numbers, so a receiver
//! always knows when it may have missed something, and then tells its
//! application to clear its cache (`Delivery::Reset`). The promise:
//! **no silent loss** — for every event a receiver should have seen, it
//! delivers that event or a `Reset` after it.
//!
//! Layers (see `DESIGN.md`): [`wire`] (bytes), [`proto`] (sans-IO state
//! machines), [`net`] (sockets and the tokio driver), [`node`] (the async
//! API).

pub mod net;
pub mod node;
pub mod proto;
#[cfg(feature = "test-util")]
pub mod testkit;
pub mod wire;

/// The README's examples, compiled as doc tests so that they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
