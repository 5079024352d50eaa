//! Networking: socket setup ([`socket`]) and the tokio driver ([`driver`]).
//!
//! Nothing here takes a protocol decision; that is `proto`'s job.

pub mod driver;
pub mod socket;
