//! Authentication and the unicast transport, on real sockets (loopback)
//! and in the simulator: one test binary for what used to be five (each
//! binary costs CI a link of the whole library and its dependencies).
//!
//! - `auth_core`: a keyed core fed datagrams directly;
//! - `auth_loopback`: keyed nodes on loopback (refusals, replays,
//!   forgeries, the roll-out modes);
//! - `auth_rotation`: rotating keys while events flow;
//! - `auth_sim`: keyed chaos runs in the simulator;
//! - `unicast`: the unicast transport on loopback.

#[path = "../common/mod.rs"]
mod common;

mod auth_core;
mod auth_loopback;
mod auth_rotation;
mod auth_sim;
mod unicast;
