//! Networking: socket setup ([`socket`]) and the tokio driver ([`driver`]).
//!
//! Nothing here takes a protocol decision; that is `proto`'s job.

pub(crate) mod batch;
pub mod driver;
pub(crate) mod hub;
pub mod socket;
