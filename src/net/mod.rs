//! Networking: socket setup ([`socket`]) and, later, the tokio driver.
//!
//! Nothing here takes a protocol decision; that is `proto`'s job.

pub mod socket;
