//! The protocol, sans-IO: state machines that take `(now, datagram)` and
//! commands, and hand back datagrams to send, deliveries, and the next
//! time they want to be woken. No tokio, no sockets, no clocks, no global
//! RNG in here — which is what lets the simulator drive hundreds of nodes
//! in virtual time, deterministically.
//!
//! [`NodeCore`] is the entry point; its module docs give the drive loop.

pub(crate) mod auth;
pub(crate) mod config;
mod core;
pub(crate) mod delivery;
pub(crate) mod members;
mod pace;
mod ranges;
mod receiver;
mod ring;
pub(crate) mod sender;
pub(crate) mod stats;
mod timers;

pub use self::core::{NodeCore, StreamState};
pub use auth::{AuthConfig, AuthMode, REPLAY_WINDOW};
pub use delivery::Output;
pub use members::{
    ConfirmReport, Liveness, Member, MemberRef, MemberStream, Staleness, StreamStaleness,
};

// At the crate root for users (one path each); here for the crate.
pub(crate) use config::{ConfigError, CoreConfig};
pub(crate) use delivery::{Delivery, DeliveryRef, ResetReason};
pub(crate) use sender::PublishError;
pub(crate) use stats::Stats;
