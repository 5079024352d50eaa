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
    /// Events that left in `Data` datagrams (equals `events_published` once
    /// everything published was sent).
    pub events_sent: u64,
    /// `Data` datagrams sent (each carries one or more events).
    pub data_sent: u64,
    /// Times pacing held a `Data` datagram back (see `CoreConfig::pace_min_rate`).
    pub data_paced: u64,
    /// Heartbeats sent (after data, idle, and answers to `Hello`).
    pub heartbeats_sent: u64,
    /// `Hello`s sent while joining.
    pub hellos_sent: u64,
    /// Events of other streams delivered (this node's own: `own_delivered`).
    pub events_delivered: u64,
    /// This node's own events delivered to its own subscribers
    /// (`deliver_own`).
    pub own_delivered: u64,
    /// Heartbeats and `Goodbye`s of receive-only nodes (not followed as
    /// streams: they have nothing to lose).
    pub receive_only_heard: u64,
    /// Events received twice and dropped.
    pub duplicates: u64,
    /// Events that arrived out of order and filled a gap before it was acted on.
    pub reordered: u64,
    /// Events below a stream's starting point (sent before this node joined).
    pub before_start: u64,
    /// Gaps opened (from data or from a heartbeat's `next_seq`).
    pub gaps_opened: u64,
    /// Own datagrams heard back through multicast loopback and ignored
    /// (on Linux a socket filter drops them first: this stays 0).
    pub own_ignored: u64,
    /// Streams currently tracked.
    pub streams: u64,
    /// Gaps currently open (waiting for repair), over all streams. Filled
    /// in when a snapshot is taken ([`crate::proto::NodeCore::stats_snapshot`]).
    pub open_gaps: u64,
    /// Streams that ended with `Goodbye`.
    pub streams_ended: u64,
    /// Streams dropped after their timeout.
    pub streams_timed_out: u64,
    /// Streams evicted because the table was full.
    pub streams_evicted: u64,
    /// `Nak`s this node sent for gaps of other streams.
    pub naks_sent: u64,
    /// `Nak`s not sent because another receiver's `Nak` or a `Repair` for
    /// the same gap was heard first.
    pub naks_suppressed: u64,
    /// `Nak`s for this node's stream that it received.
    pub naks_received: u64,
    /// `Repair` datagrams this node sent.
    pub repairs_sent: u64,
    /// Events those repairs carried.
    pub repaired_events_sent: u64,
    /// Repairs not repeated because the same seq was repaired within the linger.
    pub repairs_lingered: u64,
    /// Of `repairs_sent`, those meant for the one node that asked (a
    /// unicast transport: sent to it alone).
    pub repairs_directed: u64,
    /// Times the repair rate limit made repairs wait.
    pub repairs_deferred: u64,
    /// `Unavailable` answers this node sent.
    pub unavailable_sent: u64,
    /// `Unavailable` answers received for followed streams.
    pub unavailable_received: u64,
    /// `Repair` datagrams received for followed streams.
    pub repairs_received: u64,
    /// Missing events that a repair filled.
    pub events_repaired: u64,
    /// Events that arrived after their gap was given up with a `Reset`
    /// (delivered anyway).
    pub late_after_reset: u64,
    /// Gaps dropped because a `Reset` was delivered after them (a Reset
    /// covers everything sent before it, so they need no repair).
    pub gaps_covered_by_reset: u64,
    /// Times a stream's position as this node knew it proved false (a
    /// forged or bogus claim): events or the stream's own claim contradicted
    /// it, and the node followed the stream again from the truth, asking
    /// again for what it had given up on the claim's word.
    pub position_contradicted: u64,
    /// Events delivered although an event of that seq was delivered before,
    /// because their content differs (one of the two was forged).
    pub events_conflicting: u64,
    /// Streams that said `Goodbye` and were followed again because their
    /// events or heartbeats went on past it (the `Goodbye` was forged).
    pub streams_reopened: u64,
    /// Time from noticing a gap to the repair that filled it.
    pub repair_time: Histogram,
    /// Received datagrams whose trailer verified.
    pub auth_verified: u64,
    /// Received datagrams with a MAC trailer taken unchecked (`off` mode:
    /// this node holds no key).
    pub auth_unverified: u64,
    /// Replay windows forgotten early because `max_windows` were held.
    pub auth_windows_evicted: u64,
    /// Datagrams verified with a MAC only (their body in the clear) while
    /// this node encrypts: a member not configured to encrypt.
    pub auth_cleartext: u64,
    /// The largest clock skew (ms, either way) of a datagram dropped as
    /// `auth_stale`: above `max_age`, a sender's clock is off.
    pub auth_stale_skew_ms: u64,
    /// Received datagrams dropped, by reason (`DecodeError::kind`, or
    /// `ended_stream` for late datagrams of a stream that said Goodbye).
    pub dropped: BTreeMap<&'static str, u64>,
    /// `Reset`s delivered, by reason (`ResetReason::kind`).
    pub resets: BTreeMap<&'static str, u64>,
    /// `AckRequest`s this node sent (a confirmation was awaited).
    pub ack_requests_sent: u64,
    /// `Report`s this node sent (periodic, and answers to `AckRequest`s).
    pub reports_sent: u64,
    /// `Report`s received from members.
    pub reports_received: u64,
    /// Confirmations that ended with every member answered or gone.
    pub confirmations_complete: u64,
    /// Confirmations that ended at their deadline with members pending.
    pub confirmations_incomplete: u64,
    /// Streams this node learned of from members' reports, not from the
    /// stream itself (it had missed them: a partition, a loss).
    pub streams_learned: u64,
    /// Times a member's report showed a followed stream further on than
    /// this node knew (a gap opened from it).
    pub positions_learned: u64,
    /// Events dropped from the retransmit ring because every live member
    /// had them (stability).
    pub ring_trimmed: u64,
    /// Bytes the retransmit ring holds (a gauge, at the snapshot).
    pub ring_bytes: u64,
    /// Live members besides this node (a gauge, at the snapshot).
    pub members_live: u64,
    /// The staleness bound in milliseconds (a gauge, at the snapshot; see
    /// `Node::staleness`).
    pub staleness_ms: u64,
    /// 1 while this node is cut off (no member heard within the lease).
    pub isolated: u64,
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

/// A log-scale histogram of durations, in microseconds: 4 buckets per power
/// of two from 1 µs to about 1.2 hours (relative error under 19 %).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    /// Sum of the recorded durations in µs (saturating).
    sum_us: u64,
    max_us: u64,
}

const SUB: u32 = 4;

impl Histogram {
    fn bucket(us: u64) -> usize {
        if us < 4 {
            return us as usize;
        }
        let log = 63 - us.leading_zeros();
        let frac = ((us >> (log - 2)) & 3) as u32;
        (4 + (log - 2) * SUB + frac) as usize
    }

    fn bucket_floor(b: usize) -> u64 {
        if b < 4 {
            return b as u64;
        }
        let b = b as u32 - 4;
        let log = b / SUB + 2;
        let frac = u64::from(b % SUB);
        (1u64 << log) + (frac << (log - 2))
    }

    /// Records one duration.
    pub fn record(&mut self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros())
            .unwrap_or(u64::MAX)
            .min(1 << 32);
        let b = Self::bucket(us);
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        self.total += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    /// Number of durations recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Sum of the durations recorded, in microseconds (each clamped as
    /// recorded; saturates at `u64::MAX`).
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// The buckets, in order: the range of microseconds each holds and how
    /// many durations fell in it. Every power of two is a bucket edge, so
    /// the number of durations below `1 << k` µs is exact (what a
    /// Prometheus histogram with power-of-two bounds needs).
    pub fn buckets(&self) -> impl Iterator<Item = (std::ops::Range<u64>, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .map(|(b, &c)| (Self::bucket_floor(b)..Self::bucket_floor(b + 1), c))
    }

    /// The `q` quantile (0..=1), in microseconds (the lower edge of its
    /// bucket); 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::bucket_floor(b).min(self.max_us);
            }
        }
        self.max_us
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.max_us = self.max_us.max(other.max_us);
    }
}

impl Serialize for Histogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Histogram", 4)?;
        st.serialize_field("count", &self.total)?;
        st.serialize_field("p50_us", &self.quantile_us(0.5))?;
        st.serialize_field("p99_us", &self.quantile_us(0.99))?;
        st.serialize_field("max_us", &self.max_us)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_are_monotonic_and_quantiles_close() {
        let mut last = 0;
        for us in 0..100_000u64 {
            let b = Histogram::bucket(us);
            assert!(b >= last);
            assert!(Histogram::bucket_floor(b) <= us, "{us}");
            last = b;
        }
        let mut h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile_us(0.5);
        let p99 = h.quantile_us(0.99);
        assert!((400..=500).contains(&p50), "{p50}");
        assert!((800..=990).contains(&p99), "{p99}");
        assert_eq!(h.count(), 1000);
        assert_eq!(h.sum_us(), 500_500);
        // The buckets tile the line and hold every duration once.
        let mut next = 0;
        let mut n = 0;
        for (range, c) in h.buckets() {
            assert_eq!(range.start, next);
            assert!(range.end > range.start);
            next = range.end;
            n += c;
        }
        assert_eq!(n, 1000);
        // Power-of-two edges: exactly the durations below 512 µs (1..=511).
        let below: u64 = h
            .buckets()
            .filter(|(r, _)| r.end <= 512)
            .map(|(_, c)| c)
            .sum();
        assert_eq!(below, 511);
    }
}
