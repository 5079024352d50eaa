//! The protocol in the simulator (virtual time, the sans-IO core): one
//! test binary for what used to be five (each binary costs CI a link).
//!
//! - `basics`: joins, publishes, restarts, one node at a time;
//! - `confirm`: confirmed publish and membership;
//! - `forgery`: forged datagrams of every kind, without keys;
//! - `isolation`: nodes cut off and healed;
//! - `repair`: loss and its repair, and the random fault mixes (chaos),
//!   over multicast and unicast.

#[path = "../common/mod.rs"]
mod common;

mod basics;
mod confirm;
mod forgery;
mod isolation;
mod repair;
