//! The simulator's adversary: anyone who can send to the group and port of
//! a cluster running without keys. It forges datagrams of every body kind
//! for the run's real streams — at their real positions, a little ahead, far
//! ahead, and in the past — and, now and then, for streams that do not
//! exist. What it may cost is stated by the receiver (`proto::receiver`);
//! what no protocol without keys can prevent, by [`Record::check`]
//! (exception 4).
//!
//! [`Record::check`]: super::Record::check

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::wire::{Body, Event, Events, Position};

/// A stream the adversary may speak for, as an observer of the network
/// sees it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The stream id.
    pub stream: u64,
    /// Its node's name.
    pub name: String,
    /// The seq its next event will have.
    pub next_seq: u64,
}

/// Forges datagrams, one at a time, on average every `interval` (see
/// [`Sim::add_adversary`](super::Sim::add_adversary)).
#[derive(Debug)]
pub(crate) struct Adversary {
    rng: SmallRng,
    /// Mean time between two forged datagrams.
    pub interval: Duration,
    /// Forged events so far (their keys are `forged-N`).
    events: u64,
}

impl Adversary {
    pub fn new(seed: u64, interval: Duration) -> Self {
        Adversary {
            rng: SmallRng::seed_from_u64(seed ^ 0xad7e_5a71),
            interval,
            events: 0,
        }
    }

    /// When to forge next, from now: uniform in `0..=2 * interval`.
    pub fn next_in(&mut self) -> Duration {
        let max = self.interval.as_nanos() as u64 * 2;
        Duration::from_nanos(self.rng.gen_range(0..=max.max(1)))
    }

    /// A position of `t`'s stream: its real one, a little ahead, far ahead,
    /// or in the past (never 0: the decoder would drop it).
    fn position(&mut self, t: &Target) -> u64 {
        let real = t.next_seq.max(1);
        match self.rng.gen_range(0..4) {
            0 => real,
            1 => real + self.rng.gen_range(1..=8),
            2 => real + self.rng.gen_range(1_000..1u64 << 30),
            _ => self.rng.gen_range(1..=real),
        }
    }

    fn ranges(&mut self, t: &Target) -> Vec<(u64, u64)> {
        let start = self.position(t);
        let len = if self.rng.gen_bool(0.2) {
            self.rng.gen_range(1_000..1u64 << 30)
        } else {
            self.rng.gen_range(1..=64)
        };
        vec![(start, start + len)]
    }

    fn events(&mut self) -> Events {
        let n = self.rng.gen_range(1..=3);
        let events: Vec<Event> = (0..n)
            .map(|_| {
                self.events += 1;
                Event::Invalidate {
                    keys: vec![format!("forged-{}", self.events)],
                }
            })
            .collect();
        Events::new(&events).expect("small events")
    }

    /// One forged datagram: the stream its header names, and its body.
    /// `None` when there is nobody to forge for.
    pub fn forge(&mut self, targets: &[Target]) -> Option<(u64, Body)> {
        if targets.is_empty() {
            return None;
        }
        let t = targets[self.rng.gen_range(0..targets.len())].clone();
        // Now and then a stream that does not exist.
        let from = if self.rng.gen_bool(0.05) {
            self.rng.gen_range(1..u64::MAX)
        } else {
            t.stream
        };
        let body = match self.rng.gen_range(0..9) {
            0 => {
                let next_seq = self.position(&t);
                let oldest = if self.rng.gen_bool(0.5) {
                    1
                } else {
                    self.rng.gen_range(1..=next_seq)
                };
                Body::Heartbeat {
                    next_seq,
                    oldest,
                    node: t.name.clone(),
                }
            }
            1 => Body::Goodbye {
                next_seq: self.position(&t),
            },
            2 => Body::Unavailable {
                stream: from,
                ranges: self.ranges(&t),
            },
            3 => Body::AckRequest {
                next_seq: self.position(&t),
                members: Vec::new(),
            },
            4 => {
                // A member's report, about one to three streams.
                let n = self.rng.gen_range(1..=3);
                let positions = (0..n)
                    .map(|_| {
                        let about = targets[self.rng.gen_range(0..targets.len())].clone();
                        let delivered = self.position(&about);
                        Position {
                            stream: about.stream,
                            delivered,
                            reset_end: if self.rng.gen_bool(0.5) {
                                0
                            } else {
                                self.rng.gen_range(0..=delivered)
                            },
                            idle_ms: 0,
                        }
                    })
                    .collect();
                Body::Report {
                    node: t.name.clone(),
                    positions,
                    keys: Vec::new(),
                }
            }
            5 => {
                // A Nak, in the name of anyone, for any stream.
                let about = targets[self.rng.gen_range(0..targets.len())].clone();
                Body::Nak {
                    stream: about.stream,
                    ranges: self.ranges(&about),
                }
            }
            6 => Body::Hello {
                node: t.name.clone(),
            },
            7 => Body::Data {
                first_seq: self.position(&t),
                events: self.events(),
            },
            _ => Body::Repair {
                first_seq: self.position(&t),
                events: self.events(),
            },
        };
        Some((from, body))
    }
}
