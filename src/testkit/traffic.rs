//! What each simulated node sent and received, by body kind: the
//! simulator counts it ([`Sim::traffic`](super::Sim::traffic)) so that a
//! benchmark can tell the cost of each kind of datagram per node.

use crate::wire::BodyTag;

/// Datagrams and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// Datagrams.
    pub datagrams: u64,
    /// Their bytes (whole datagrams: header, body, trailer).
    pub bytes: u64,
}

impl Count {
    pub(crate) fn add(&mut self, bytes: usize) {
        self.datagrams += 1;
        self.bytes += bytes as u64;
    }
}

/// What one simulated node put on the network and took off it, by body
/// kind, over all its lives ([`Sim::traffic`](super::Sim::traffic)). A datagram it sends counts
/// once, however many nodes receive it; a datagram it receives counts when
/// it reaches its protocol (after every fault; its own looped-back
/// datagrams are not counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traffic {
    pub(crate) sent: Vec<Count>,
    pub(crate) received: Vec<Count>,
    /// Datagrams sent to an address no node has (lost on the way).
    pub(crate) misdirected: u64,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            sent: vec![Count::default(); BodyTag::ALL.len()],
            received: vec![Count::default(); BodyTag::ALL.len()],
            misdirected: 0,
        }
    }
}

impl Traffic {
    /// Datagrams sent to one address that no node has: the simulator's
    /// network loses them (a repair directed to a wrong address must not
    /// reach the node that asked).
    pub fn misdirected(&self) -> u64 {
        self.misdirected
    }

    /// Datagrams of kind `tag` sent.
    pub fn sent(&self, tag: BodyTag) -> Count {
        self.sent[tag as usize]
    }

    /// Datagrams of kind `tag` received.
    pub fn received(&self, tag: BodyTag) -> Count {
        self.received[tag as usize]
    }

    /// Every datagram sent.
    pub fn sent_total(&self) -> Count {
        sum(&self.sent)
    }

    /// Every datagram received.
    pub fn received_total(&self) -> Count {
        sum(&self.received)
    }

    /// What happened since `earlier` (a copy of this node's traffic taken
    /// before).
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        let diff = |a: &[Count], b: &[Count]| {
            a.iter()
                .zip(b)
                .map(|(a, b)| Count {
                    datagrams: a.datagrams - b.datagrams,
                    bytes: a.bytes - b.bytes,
                })
                .collect()
        };
        Traffic {
            sent: diff(&self.sent, &earlier.sent),
            received: diff(&self.received, &earlier.received),
            misdirected: self.misdirected - earlier.misdirected,
        }
    }
}

fn sum(counts: &[Count]) -> Count {
    counts.iter().fold(Count::default(), |a, c| Count {
        datagrams: a.datagrams + c.datagrams,
        bytes: a.bytes + c.bytes,
    })
}
