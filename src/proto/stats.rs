//! Counters for every decision the protocol takes.

use std::collections::BTreeMap;

use serde::Serialize;

/// A snapshot of a node's counters. Monotonic except `streams`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Datagrams handed to the core by the driver.
    pub datagrams_received: u64,
    /// Datagrams the core produced for sending.
    pub datagrams_sent: u64,
    /// Events this node published.
    pub events_published: u64,
    /// `Data` datagrams sent (each carries one or more events).
    pub data_sent: u64,
    /// Heartbeats sent (after data, idle, and answers to `Hello`).
    pub heartbeats_sent: u64,
    /// `Hello`s sent while joining.
    pub hellos_sent: u64,
    /// Events of other streams delivered.
    pub events_delivered: u64,
    /// Events received twice and dropped.
    pub duplicates: u64,
    /// Events that arrived out of order and filled a gap before it was acted on.
    pub reordered: u64,
    /// Events below a stream's starting point (sent before this node joined).
    pub before_start: u64,
    /// Gaps opened (from data or from a heartbeat's `next_seq`).
    pub gaps_opened: u64,
    /// Own datagrams heard back through multicast loopback and ignored.
    pub own_ignored: u64,
    /// Streams currently tracked.
    pub streams: u64,
    /// Streams that ended with `Goodbye`.
    pub streams_ended: u64,
    /// Streams dropped after their timeout.
    pub streams_timed_out: u64,
    /// Streams evicted because the table was full.
    pub streams_evicted: u64,
    /// Received datagrams dropped, by reason (`DecodeError::kind`, or
    /// `ended_stream` for late datagrams of a stream that said Goodbye).
    pub dropped: BTreeMap<&'static str, u64>,
    /// `Reset`s delivered, by reason (`ResetReason::kind`).
    pub resets: BTreeMap<&'static str, u64>,
}

impl Stats {
    /// Counts one dropped datagram.
    pub fn drop(&mut self, kind: &'static str) {
        *self.dropped.entry(kind).or_default() += 1;
    }

    /// Counts one Reset.
    pub fn reset(&mut self, kind: &'static str) {
        *self.resets.entry(kind).or_default() += 1;
    }

    /// Total Resets of all reasons.
    pub fn resets_total(&self) -> u64 {
        self.resets.values().sum()
    }

    /// Total datagrams dropped for all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}
