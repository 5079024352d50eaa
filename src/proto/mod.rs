//! The protocol, sans-IO: state machines that take `(now, datagram)` and
//! commands, and hand back datagrams to send, deliveries, and the next
//! time they want to be woken. No tokio, no sockets, no clocks, no global
//! RNG in here — which is what lets the simulator drive hundreds of nodes
//! in virtual time, deterministically.
//!
//! [`NodeCore`] is the entry point; its module docs give the drive loop.

mod config;
mod core;
mod delivery;
mod pace;
mod ranges;
mod receiver;
mod ring;
mod sender;
mod stats;
mod timers;

pub use self::core::{NodeCore, StreamState};
pub use config::{ConfigError, CoreConfig};
pub use delivery::{Delivery, DeliveryRef, Output, ResetReason};
pub use sender::PublishError;
pub use stats::{Histogram, Stats};
