//! The sending half of a node: one stream of sequenced events.
//!
//! Numbers events from 1, packs consecutive events into datagrams up to
//! `max_datagram` (opportunistic batching: whatever was published before
//! the driver next polls goes into one datagram), and schedules heartbeats
//! (quickly after data, then backing off to the idle interval) so that the
//! loss of the last datagram is noticed in milliseconds. Answers `Hello`
//! with a jittered, rate-limited heartbeat, and ends with `Goodbye`.
//!
//! Pure state machine: time is passed in, randomness comes from the
//! caller's seeded RNG, bodies go to the caller's outgoing queue.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::proto::config::CoreConfig;
use crate::wire::{self, Body, Event, EventError};

/// Why an event was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The event breaks a limit or does not fit in one datagram.
    #[error(transparent)]
    Invalid(#[from] EventError),
    /// The node was shut down; nothing can be published any more.
    #[error("the node is shut down; join again to publish")]
    Closed,
}

/// One stream's sender state.
#[derive(Debug)]
pub struct Sender {
    node: String,
    max_datagram: usize,
    heartbeat_min: Duration,
    heartbeat_idle: Duration,
    hello_jitter: Duration,
    hello_min_interval: Duration,

    next_seq: u64,
    /// Events published but not yet put in a datagram; the first has seq
    /// `next_seq - batch.len()`.
    batch: Vec<Event>,
    batch_bytes: usize,

    heartbeat_at: Instant,
    heartbeat_interval: Duration,
    hello_answer_at: Option<Instant>,
    last_hello_answer: Option<Instant>,
    closed: bool,
}

impl Sender {
    /// A new stream at seq 1; its first heartbeat is an idle interval away.
    pub fn new(cfg: &CoreConfig, now: Instant) -> Self {
        Sender {
            node: cfg.node_name.clone(),
            max_datagram: cfg.max_datagram,
            heartbeat_min: cfg.heartbeat_min,
            heartbeat_idle: cfg.heartbeat_idle,
            hello_jitter: cfg.hello_answer_jitter,
            hello_min_interval: cfg.hello_answer_min_interval,
            next_seq: 1,
            batch: Vec::new(),
            batch_bytes: 0,
            heartbeat_at: now + cfg.heartbeat_idle,
            heartbeat_interval: cfg.heartbeat_idle,
            hello_answer_at: None,
            last_hello_answer: None,
            closed: false,
        }
    }

    /// The seq the next published event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// True after [`Sender::close`].
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Assigns the next seq to `event` and adds it to the open batch; a full
    /// batch is moved to `out` first. Returns the seq.
    pub fn publish(&mut self, event: Event, out: &mut VecDeque<Body>) -> Result<u64, PublishError> {
        if self.closed {
            return Err(PublishError::Closed);
        }
        let size = wire::check_event(&event, self.max_datagram)?;
        if !self.batch.is_empty()
            && wire::DATA_OVERHEAD + self.batch_bytes + size > self.max_datagram
        {
            self.seal(out);
        }
        self.batch.push(event);
        self.batch_bytes += size;
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// True when events wait in the open batch.
    pub fn has_batch(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Moves the open batch, if any, into a `Data` body on `out`.
    fn seal(&mut self, out: &mut VecDeque<Body>) {
        if self.batch.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.batch);
        let first_seq = self.next_seq - events.len() as u64;
        self.batch_bytes = 0;
        out.push_back(Body::Data { first_seq, events });
    }

    /// Seals the open batch (called when the driver is about to send) and
    /// restarts the fast heartbeat schedule.
    pub fn flush(&mut self, now: Instant, out: &mut VecDeque<Body>) {
        if self.batch.is_empty() {
            return;
        }
        self.seal(out);
        self.heartbeat_interval = self.heartbeat_min;
        self.heartbeat_at = now + self.heartbeat_min;
    }

    /// A `Hello` was heard: schedule a jittered heartbeat, at most one per
    /// `hello_answer_min_interval`.
    pub fn on_hello(&mut self, now: Instant, rng: &mut impl Rng) {
        if self.closed || self.hello_answer_at.is_some() {
            return;
        }
        if let Some(last) = self.last_hello_answer {
            if now < last + self.hello_min_interval {
                return;
            }
        }
        let jitter_us = self.hello_jitter.as_micros() as u64;
        let delay = Duration::from_micros(if jitter_us == 0 {
            0
        } else {
            rng.gen_range(0..=jitter_us)
        });
        self.hello_answer_at = Some(now + delay);
    }

    /// The next time [`Sender::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        Some(match self.hello_answer_at {
            Some(t) => t.min(self.heartbeat_at),
            None => self.heartbeat_at,
        })
    }

    /// Sends due heartbeats. Returns true if one was queued.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut VecDeque<Body>) -> bool {
        if self.closed {
            return false;
        }
        let mut send = false;
        if self.hello_answer_at.is_some_and(|t| t <= now) {
            self.hello_answer_at = None;
            self.last_hello_answer = Some(now);
            send = true;
        }
        if self.heartbeat_at <= now {
            self.heartbeat_interval = (self.heartbeat_interval * 2).min(self.heartbeat_idle);
            self.heartbeat_at = now + self.heartbeat_interval;
            send = true;
        }
        if send {
            // Events still in the open batch are not sent yet: announce only
            // what was.
            let next_seq = self.next_seq - self.batch.len() as u64;
            out.push_back(Body::Heartbeat {
                next_seq,
                oldest: next_seq,
                node: self.node.clone(),
            });
        }
        send
    }

    /// Ends the stream: seals the batch and queues `Goodbye`.
    pub fn close(&mut self, out: &mut VecDeque<Body>) {
        if self.closed {
            return;
        }
        self.seal(out);
        out.push_back(Body::Goodbye {
            next_seq: self.next_seq,
        });
        self.closed = true;
    }
}
