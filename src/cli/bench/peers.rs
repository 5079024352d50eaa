//! The brokers users already know, as benchmark peers: Redis pub/sub and
//! NATS core, spoken to over plain TCP on 127.0.0.1.
//!
//! (Filled in separately.)

use std::io;
use std::net::SocketAddr;

use super::common::{Done, Plan, PubReport, Recorder};

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Redis,
    Nats,
}

/// The channel / subject the benchmark uses.
pub const SUBJECT: &str = "cachecast-bench";

/// Publishes `plan` to the broker at `addr`.
pub fn publish(_broker: Broker, _addr: SocketAddr, _plan: &Plan) -> io::Result<PubReport> {
    Err(io::Error::other("not yet"))
}

/// Subscribes at `addr` until `done`; `ready` once the subscription is
/// confirmed by the broker.
pub fn subscribe(
    _broker: Broker,
    _addr: SocketAddr,
    _msg_len: usize,
    _done: &Done,
    _ready: impl FnOnce(),
) -> io::Result<Recorder> {
    Err(io::Error::other("not yet"))
}
