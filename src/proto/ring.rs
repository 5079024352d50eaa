//! The sender's retransmit ring: the events it sent, kept for repair,
//! bounded by bytes and by age (like str0m's `RtxCache::new(max_count,
//! max_age)`). Each entry remembers when it was last repaired, so that many
//! `Nak`s for one loss cost one repair (Aeron's retransmit linger).
//!
//! Events are held encoded, back to back in one byte queue: pushing one
//! allocates nothing once the queues have grown (no clone of the event),
//! and a repair copies the bytes it resends.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What one held event costs besides its encoded bytes: its entry.
pub const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>();

/// One sent event.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Where its bytes start, counted from the first byte ever held.
    start: u64,
    /// Its encoded size.
    pub size: u32,
    /// When it was published.
    pub sent: Instant,
    /// When it was last repaired.
    pub repaired: Option<Instant>,
}

/// Sent events `first_seq..first_seq + len`, oldest first.
#[derive(Debug)]
pub struct RetransmitRing {
    entries: VecDeque<Entry>,
    /// The encoded events; `data[0]` is byte `data_start` of the stream.
    data: VecDeque<u8>,
    data_start: u64,
    first_seq: u64,
    bytes: usize,
    max_bytes: usize,
    max_age: Duration,
}

impl RetransmitRing {
    /// An empty ring holding at most `max_bytes` (encoded events plus
    /// [`ENTRY_OVERHEAD`] each) for at most `max_age`.
    pub fn new(max_bytes: usize, max_age: Duration) -> Self {
        RetransmitRing {
            entries: VecDeque::new(),
            data: VecDeque::new(),
            data_start: 0,
            first_seq: 1,
            bytes: 0,
            max_bytes,
            max_age,
        }
    }

    /// Holds the next event (seq `end()`), given encoded, dropping the
    /// oldest ones while over the byte bound.
    pub fn push(&mut self, encoded: &[u8], now: Instant) {
        self.entries.push_back(Entry {
            start: self.data_start + self.data.len() as u64,
            size: encoded.len() as u32,
            sent: now,
            repaired: None,
        });
        self.data.extend(encoded);
        self.bytes += encoded.len() + ENTRY_OVERHEAD;
        while self.bytes > self.max_bytes {
            self.pop();
        }
    }

    /// Drops every event below `seq` (every member has it: stability).
    /// Returns how many.
    pub fn drop_below(&mut self, seq: u64, sent_before: Instant) -> usize {
        let mut n = 0;
        while self.first_seq < seq && self.entries.front().is_some_and(|e| e.sent < sent_before) {
            self.pop();
            n += 1;
        }
        n
    }

    /// Bytes held (encoded events plus their entries).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn pop(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            let size = e.size as usize;
            self.bytes -= size + ENTRY_OVERHEAD;
            self.data.drain(..size);
            self.data_start += size as u64;
            self.first_seq += 1;
        }
    }

    /// Drops what is older than `max_age`.
    pub fn expire(&mut self, now: Instant) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.sent + self.max_age <= now)
        {
            self.pop();
        }
    }

    /// The oldest seq held (`end()` when empty).
    pub fn oldest(&self) -> u64 {
        self.first_seq
    }

    #[cfg(test)]
    /// One past the newest seq held.
    pub fn end(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }

    /// The entry of `seq`, if held.
    pub fn get_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        let i = seq.checked_sub(self.first_seq)?;
        self.entries.get_mut(usize::try_from(i).ok()?)
    }

    /// Appends the encoded bytes of `seq` to `out`; false if not held.
    pub fn copy_event(&self, seq: u64, out: &mut impl Extend<u8>) -> bool {
        let Some(e) = seq
            .checked_sub(self.first_seq)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.entries.get(i))
        else {
            return false;
        };
        let from = (e.start - self.data_start) as usize;
        out.extend(self.data.range(from..from + e.size as usize).copied());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_bytes_and_age() {
        let t = Instant::now();
        let cost = 10 + ENTRY_OVERHEAD;
        let mut r = RetransmitRing::new(3 * cost, Duration::from_secs(1));
        for i in 0..5u8 {
            r.push(&[i; 10], t + Duration::from_millis(u64::from(i) * 300));
        }
        assert_eq!((r.oldest(), r.end(), r.bytes()), (3, 6, 3 * cost));
        assert!(r.get_mut(2).is_none() && r.get_mut(3).is_some() && r.get_mut(6).is_none());
        let mut out = Vec::new();
        assert!(!r.copy_event(2, &mut out) && out.is_empty());
        assert!(r.copy_event(4, &mut out) && r.copy_event(5, &mut out));
        assert_eq!(out, [[3u8; 10], [4u8; 10]].concat());
        r.expire(t + Duration::from_millis(1700));
        assert_eq!((r.oldest(), r.end()), (4, 6));
        r.expire(t + Duration::from_secs(10));
        assert_eq!((r.oldest(), r.end(), r.bytes()), (6, 6, 0));
    }

    #[test]
    fn events_of_different_sizes_come_back_whole() {
        let t = Instant::now();
        let mut r = RetransmitRing::new(1 << 20, Duration::from_secs(1));
        for n in 1..=20u8 {
            r.push(&vec![n; n as usize], t);
        }
        for n in 1..=20u8 {
            let mut out = Vec::new();
            assert!(r.copy_event(u64::from(n), &mut out));
            assert_eq!(out, vec![n; n as usize]);
        }
    }
}
