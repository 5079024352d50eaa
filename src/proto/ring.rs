//! The sender's retransmit ring: the events it sent, kept for repair,
//! bounded by bytes and by age (like str0m's `RtxCache::new(max_count,
//! max_age)`). Each entry remembers when it was last repaired, so that many
//! `Nak`s for one loss cost one repair (Aeron's retransmit linger).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wire::Event;

/// What one held event costs besides its encoded bytes: the entry itself
/// and the heap blocks of its strings, roughly.
pub const ENTRY_OVERHEAD: usize = 128;

/// One sent event.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The event.
    pub event: Event,
    /// Its encoded size.
    pub size: usize,
    /// When it was published.
    pub sent: Instant,
    /// When it was last repaired.
    pub repaired: Option<Instant>,
}

/// Sent events `first_seq..first_seq + len`, oldest first.
#[derive(Debug)]
pub struct RetransmitRing {
    entries: VecDeque<Entry>,
    first_seq: u64,
    bytes: usize,
    max_bytes: usize,
    max_age: Duration,
}

impl RetransmitRing {
    /// An empty ring whose next event is seq 1.
    pub fn new(max_bytes: usize, max_age: Duration) -> Self {
        RetransmitRing {
            entries: VecDeque::new(),
            first_seq: 1,
            bytes: 0,
            max_bytes,
            max_age,
        }
    }

    /// Adds the next event; evicts the oldest past the byte bound. Each
    /// event counts its encoded size plus [`ENTRY_OVERHEAD`], so that the
    /// bound holds for memory, not only for bytes on the wire.
    pub fn push(&mut self, event: Event, size: usize, now: Instant) {
        self.entries.push_back(Entry {
            event,
            size,
            sent: now,
            repaired: None,
        });
        self.bytes += size + ENTRY_OVERHEAD;
        while self.bytes > self.max_bytes {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.size + ENTRY_OVERHEAD;
            self.first_seq += 1;
        }
    }

    /// Drops events older than the age bound.
    pub fn expire(&mut self, now: Instant) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.sent + self.max_age <= now)
        {
            self.pop();
        }
    }

    /// The oldest seq still held (equals the next seq when empty).
    pub fn oldest(&self) -> u64 {
        self.first_seq
    }

    /// One past the newest seq held.
    pub fn end(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }

    /// The entry of `seq`, if still held.
    pub fn get_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        let i = seq.checked_sub(self.first_seq)?;
        self.entries.get_mut(usize::try_from(i).ok()?)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> Event {
        Event::ClearAll
    }

    #[test]
    fn bounded_by_bytes_and_age() {
        let t = Instant::now();
        let cost = 10 + ENTRY_OVERHEAD;
        let mut r = RetransmitRing::new(3 * cost, Duration::from_secs(1));
        for i in 0..5 {
            r.push(ev(), 10, t + Duration::from_millis(i * 300));
        }
        assert_eq!((r.oldest(), r.end(), r.bytes()), (3, 6, 3 * cost));
        assert!(r.get_mut(2).is_none() && r.get_mut(3).is_some() && r.get_mut(6).is_none());
        r.expire(t + Duration::from_millis(1700));
        assert_eq!((r.oldest(), r.end()), (4, 6));
        r.expire(t + Duration::from_secs(10));
        assert_eq!((r.oldest(), r.end(), r.bytes()), (6, 6, 0));
    }
}
