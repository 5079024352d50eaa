//! The protocol, sans-IO: state machines that take `(now, datagram)` and
//! commands, and hand back datagrams to send, deliveries, and the next
//! time they want to be woken. No tokio, no sockets, no clocks, no global
//! RNG in here — which is what lets the simulator drive hundreds of nodes
//! in virtual time, deterministically.
//!
//! [`NodeCore`] is the entry point; its module docs give the drive loop.

pub mod config;
pub mod core;
pub mod delivery;
pub mod pace;
pub mod ranges;
pub mod receiver;
pub mod ring;
pub mod sender;
pub mod stats;

pub use self::core::NodeCore;
pub use config::{ConfigError, CoreConfig};
pub use delivery::{Delivery, DeliveryRef, Output, ResetReason};
pub use sender::PublishError;
pub use stats::Stats;
