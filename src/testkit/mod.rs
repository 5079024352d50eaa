//! The test kit (feature `test-util`): check the no-silent-loss promise on
//! your own configuration, in virtual time or on real sockets.
//!
//! - [`Sim`]: the simulator. Many protocol cores on a simulated multicast
//!   group, in virtual time, deterministic from a seed: simulated seconds
//!   cost microseconds.
//! - [`LoopbackCluster`]: real [`Node`](crate::node::Node)s on this host
//!   (interface 127.0.0.1, TTL 0, a random group in 239.255.0.0/16, a free
//!   port and a cluster name of their own: [`Loopback`]). Each node's
//!   deliveries are read through an ordinary subscription, so what is
//!   tested is the path an application uses.
//! - One fault model, [`Faults`], for both: random and bursty
//!   ([`GilbertElliott`]) loss, duplication, delay and jitter (which
//!   reorders), partitions, and losses chosen by a predicate ([`DropIf`]).
//!   In the simulator faults sit on links and on nodes; in the loopback
//!   cluster on nodes ([`NodeFaults`]), inside each node's driver, on the
//!   datagrams themselves. A lone node can have them too:
//!   [`join_with_faults`].
//! - One [`Record`] of a run (every [`Life`] of every node, what it heard
//!   and delivered, and every event [`Published`]) and one checker,
//!   [`Record::check`], whose rules are stated there. It returns a
//!   [`CheckReport`], or the first [`SilentLoss`] with the node's log.
//!   Every confirmation's outcome is recorded too ([`Life::confirmations`];
//!   in the simulator [`Sim::confirm`], [`Sim::publish_confirmed`]), and
//!   the checker holds each report to what its members delivered: no
//!   member claimed falsely ([`FalseConfirmation`]).
//!
//! In the simulator:
//!
//! ```
//! use std::time::Duration;
//! use cachecast::testkit::{Faults, Sim};
//! use cachecast::wire::Event;
//!
//! let mut sim = Sim::new(7); // everything random derives from the seed
//! sim.default_link = Faults {
//!     loss: 0.05,
//!     jitter: Duration::from_millis(2),
//!     ..Faults::default()
//! };
//! sim.add_nodes("n", 3);
//! sim.run_for(Duration::from_millis(200)); // every join has returned
//! for i in 0..100 {
//!     sim.publish(0, Event::Invalidate { keys: vec![format!("user:{i}")] });
//!     sim.run_for(Duration::from_millis(1));
//! }
//! sim.heal_all();
//! sim.run_for(Duration::from_secs(1));
//! let report = sim.check().expect("no silent loss");
//! // 100 events, to two receivers and to the publisher itself (`deliver_own`)
//! assert_eq!(report.expected, 300);
//! ```
//!
//! On loopback, in a `#[tokio::test]` or as here:
//!
//! ```
//! use std::time::Duration;
//! use cachecast::testkit::LoopbackCluster;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut c = LoopbackCluster::start(3).await?; // nodes 0, 1, 2, joined
//!     c.partition(2, true); // cut node 2 off
//!     c.publish(0, ["user:1"]).await?;
//!     c.partition(2, false); // heal: node 2 repairs what it missed
//!     assert!(c.settle(Duration::from_secs(15)).await);
//!     let report = c.check()?; // or the silent loss, with the node's log
//!     assert_eq!(report.expected, 3); // two receivers, and node 0 itself
//!     c.shutdown_all().await;
//!     Ok(())
//! }
//! ```

mod adversary;
mod check;
mod faults;
mod harness;
mod record;
mod sim;
mod tap;
mod traffic;

pub use check::{CheckReport, FalseConfirmation, SilentLoss};
pub use faults::{data_seqs, DropIf, Faults, GilbertElliott};
pub use harness::{Loopback, LoopbackCluster};
pub use record::{Life, NodeId, Published, Record};
pub use sim::{Sim, SIM_PORT};
pub use tap::{join_with_faults, NodeFaults};
pub use traffic::{Count, Traffic};

pub(crate) use tap::DriverTap;
