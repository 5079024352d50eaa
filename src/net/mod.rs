//! Networking: socket setup ([`socket`]), batched datagram I/O (`batch`:
//! GSO, `recvmmsg`, GRO), the tokio driver (`driver`), its sub-millisecond
//! timer (`fine_timer`) and the fan-out of deliveries to subscriptions
//! (`hub`).
//!
//! Nothing here takes a protocol decision; that is `proto`'s job.
//!
//! Linux only: the socket options and filters live in [`socket`] (its
//! `linux` file), which refuses to build for any other system; `batch`
//! reads and writes through quinn-udp's `recvmmsg` and GSO.

pub(crate) mod batch;
/// The driver's batched receive, for the bench crate: its raw-UDP baseline
/// receives exactly as the driver does.
#[doc(hidden)]
pub use batch::RecvBuffers;
pub(crate) mod driver;
pub(crate) mod fine_timer;
pub(crate) mod hub;
pub mod peers;
pub mod socket;
