//! The record of a run: every life of every node (what it heard and what
//! it delivered) and every event published. The simulator and the
//! loopback cluster write the same record; [`Record::check`] judges it.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::proto::Delivery;
use crate::wire::{EncodedEvent, Event};

/// Index of a node in a [`Sim`](super::Sim) or a
/// [`LoopbackCluster`](super::LoopbackCluster) (the same across its
/// restarts).
pub type NodeId = usize;

/// Everything a run did that the promise speaks of. Plain data: a test may
/// read it, or build one from a run of its own and [`check`](Record::check)
/// it.
///
/// Times: in the simulator, virtual time. In the loopback cluster, the
/// clock of the runtime (`tokio::time::Instant`); a publish is stamped when
/// the node's protocol took it, a datagram when the node read it from its
/// socket, and a delivery when the cluster's recording subscriber (an
/// ordinary subscription, taken at join) read it. That reader may be late
/// (a loaded runtime), so each `Reset` also carries when the node produced
/// it ([`Life::produced`]), and the checker judges by that.
#[derive(Debug, Clone)]
pub struct Record {
    /// When the run started (times in reports are relative to it).
    pub start: Instant,
    /// Every life of every node, in the order they began.
    pub lives: Vec<Life>,
    /// Every event published, in the order the publishers' protocols took
    /// them.
    pub published: Vec<Published>,
    /// Forged datagrams were sent during the run (the simulator's
    /// adversary, [`Sim::add_adversary`](super::Sim::add_adversary)): an
    /// event delivered counts only if its content is the one published,
    /// and [`Life::received`] is kept (see [`Record::check`], exception 4).
    pub forgery: bool,
}

/// One life of a node: one process, from its join to its crash, its
/// `Goodbye`, or the end of the run. A restart begins a new life, with a
/// new stream.
#[derive(Debug, Clone)]
pub struct Life {
    /// The node.
    pub node: NodeId,
    /// Its name (the same in every life).
    pub name: String,
    /// Its stream in this life.
    pub stream: u64,
    /// When it began to join.
    pub joined: Instant,
    /// When its join returned (the end of its sync window): from then on
    /// it must see every event published.
    pub synced: Instant,
    /// When it said `Goodbye` (shutdown), if it did.
    pub closed: Option<Instant>,
    /// When it crashed (stopped without `Goodbye`), if it did.
    pub crashed: Option<Instant>,
    /// Every stream it received a datagram of, with the last time.
    pub heard: HashMap<u64, Instant>,
    /// Everything it delivered, with when (see [`Record`] for the clocks).
    pub deliveries: Vec<(Instant, Delivery)>,
    /// When the node produced the `Reset` at each of these indices of
    /// [`Life::deliveries`], where that is earlier than when it was read
    /// (the loopback cluster; a `Reset` not here was produced when it was
    /// delivered, as in the simulator). For a protocol `Reset`, the
    /// earliest the driver can have produced it: the first clock reading it
    /// gave the protocol in the loop turn whose deliveries held it. For a
    /// `Reset { Lagged }`, the same time of the newest delivery it stands
    /// for (see [`Record::check`]).
    pub produced: HashMap<usize, Instant>,
    /// Whether this life delivers its own events to its own subscribers
    /// (`deliver_own`): if so, it owes them like anyone else's.
    /// [`Record::begin_life`] sets false; the simulator and the loopback
    /// cluster set it from the node's configuration.
    pub deliver_own: bool,
    /// Every confirmation this life awaited, with when its outcome came
    /// (the checker verifies that no member is claimed falsely).
    pub confirmations: Vec<(Instant, crate::proto::ConfirmReport)>,
    /// The (stream, seq) of every real event (not forged) that reached this
    /// life in a `Data` or `Repair` datagram, whether or not it was
    /// delivered. Kept only when [`Record::forgery`] is set.
    pub received: HashSet<(u64, u64)>,
    /// Every stream a real datagram (not forged) of reached this life, with
    /// the last time. Kept only when [`Record::forgery`] is set.
    pub heard_real: HashMap<u64, Instant>,
    /// The streams in whose name a forged `Goodbye` reached this life. Kept
    /// only when [`Record::forgery`] is set.
    pub forged_goodbyes: HashSet<u64>,
}

/// An event a node published.
#[derive(Debug, Clone)]
pub struct Published {
    /// The publishing node.
    pub node: NodeId,
    /// Its stream at the time.
    pub stream: u64,
    /// The event's seq in that stream.
    pub seq: u64,
    /// When its protocol took it.
    pub at: Instant,
    /// The event.
    pub event: Event,
}

impl Record {
    /// An empty record of a run starting at `start`.
    pub fn new(start: Instant) -> Record {
        Record {
            start,
            lives: Vec::new(),
            published: Vec::new(),
            forgery: false,
        }
    }

    /// Begins a life of `node` with `stream`, joining at `joined`, in sync
    /// at `synced`; returns its index in [`Record::lives`].
    pub fn begin_life(
        &mut self,
        node: NodeId,
        name: &str,
        stream: u64,
        joined: Instant,
        synced: Instant,
    ) -> usize {
        self.lives.push(Life {
            node,
            name: name.to_string(),
            stream,
            joined,
            synced,
            closed: None,
            crashed: None,
            heard: HashMap::new(),
            deliveries: Vec::new(),
            produced: HashMap::new(),
            deliver_own: false,
            confirmations: Vec::new(),
            received: HashSet::new(),
            heard_real: HashMap::new(),
            forged_goodbyes: HashSet::new(),
        });
        self.lives.len() - 1
    }

    /// The lives of `node`, oldest first.
    pub fn lives_of(&self, node: NodeId) -> impl Iterator<Item = &Life> {
        self.lives.iter().filter(move |l| l.node == node)
    }

    /// The latest life of `node`.
    pub fn life(&self, node: NodeId) -> Option<&Life> {
        self.lives_of(node).last()
    }

    /// The life whose stream is `stream`.
    pub fn life_of_stream(&self, stream: u64) -> Option<&Life> {
        self.lives.iter().find(|l| l.stream == stream)
    }
}

impl Life {
    /// When this life ended: its crash or its `Goodbye`, whichever came
    /// first; `None` while it runs.
    pub fn ended(&self) -> Option<Instant> {
        match (self.closed, self.crashed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The (stream, seq) of every event it delivered (a forged one at the
    /// seq of a real one too: see [`Life::delivered_events`]).
    pub fn events(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.deliveries.iter().filter_map(|(_, d)| match d {
            Delivery::Event { stream, seq, .. } => Some((*stream, *seq)),
            Delivery::Reset { .. } => None,
        })
    }

    /// Every event it delivered, with its (stream, seq).
    pub fn delivered_events(&self) -> impl Iterator<Item = ((u64, u64), &EncodedEvent)> + '_ {
        self.deliveries.iter().filter_map(|(_, d)| match d {
            Delivery::Event {
                stream, seq, event, ..
            } => Some(((*stream, *seq), event)),
            Delivery::Reset { .. } => None,
        })
    }

    /// Every `Reset` it delivered, with when it was produced
    /// ([`Life::produced`], else when it was delivered).
    pub fn resets(&self) -> impl Iterator<Item = (Instant, &crate::proto::ResetReason)> + '_ {
        (self.deliveries.iter().enumerate()).filter_map(|(i, (t, d))| match d {
            Delivery::Reset { reason } => {
                Some((self.produced.get(&i).copied().unwrap_or(*t), reason))
            }
            Delivery::Event { .. } => None,
        })
    }
}
