//! Configuration of the protocol core: every timer and bound, with its
//! documented default. Validated once, by [`CoreConfig::validate`].

use std::time::Duration;

use crate::proto::auth::AuthConfig;
use crate::wire;

/// Protocol settings of one node. `Default` gives the documented defaults;
/// `cluster`, `stream` and `seed` are normally filled in by the node layer.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// [`wire::cluster_hash`] of the cluster name.
    pub cluster: u32,
    /// This node's stream id (random per process start; never 0).
    pub stream: u64,
    /// Name announced in heartbeats and `Hello` (at most 64 bytes).
    pub node_name: String,
    /// Seed of the protocol's RNG (jitter, back-off).
    pub seed: u64,
    /// Largest datagram sent. Default 1200 bytes: no IP fragmentation on
    /// any LAN.
    pub max_datagram: usize,
    /// First heartbeat after data. Default 1 ms.
    pub heartbeat_min: Duration,
    /// Heartbeat interval once idle (the back-off doubles up to it).
    /// Default 1 s.
    pub heartbeat_idle: Duration,
    /// Join: how long `Hello`s are sent and answers collected. Default 100 ms.
    pub sync_window: Duration,
    /// Join: how many `Hello`s are sent over the sync window. Default 3.
    pub hello_count: u32,
    /// Answers to `Hello` are delayed by a random time up to this, so that
    /// a joiner is not answered by every node at once. Default 5 ms.
    pub hello_answer_jitter: Duration,
    /// At most one answer to `Hello` per this interval. Default 20 ms.
    pub hello_answer_min_interval: Duration,
    /// How long a gap may stay open before it is acted on, so that
    /// reordered datagrams are not mistaken for loss. With `learn_timing`,
    /// the most it waits: the window in force is twice the reordering
    /// actually seen lately (zero on a LAN that does not reorder). Default
    /// 5 ms.
    pub reorder_window: Duration,
    /// After the reorder window, a gap waits a random time up to this
    /// before its `Nak`, so that among many receivers missing the same
    /// datagram one asks and the others hear it and stay quiet. With
    /// `learn_timing`, the most it waits: nothing when this node and the
    /// stream's sender are the only members, and growing with the
    /// logarithm of the members up to this at about a thousand. Default
    /// 5 ms.
    pub nak_backoff: Duration,
    /// How long to wait for a repair before asking again; doubles with
    /// every try, up to 16 times this. With `learn_timing`, the most the
    /// first wait is: it follows the round trips of repairs seen (`srtt +
    /// 4·rttvar`, at least twice `repair_linger` and 1 ms). Default 20 ms.
    pub nak_retry: Duration,
    /// `Nak`s sent per gap before giving up with a `Reset` (an overheard
    /// `Nak` postpones ours but does not count).
    /// 0 disables repair: a gap becomes a `Reset` after the reorder window.
    /// Default 10 (about 1.2 s of asking with 2 ms round trips, 2.2 s
    /// before any was learned).
    pub max_nak_tries: u32,
    /// Learn the timing of `Nak`s from the network: the reordering seen
    /// (a gap filled by fresh data), the round trip of repairs, the number
    /// of live members (see `reorder_window`, `nak_backoff`, `nak_retry`).
    /// Samples only move the timing between floors and the configured
    /// values, so forged datagrams gain nothing. False: the configured
    /// values as they are. Default true.
    pub learn_timing: bool,
    /// A gap open longer than this is given up with a `Reset`, however
    /// often its `Nak`s were postponed. Default 5 s.
    pub max_gap_age: Duration,
    /// A stream's own claim of its position (heartbeat, `Goodbye`,
    /// `AckRequest`) below what this node has known of the stream for at
    /// least this long contradicts what it knew: that came from a forged
    /// (or bogus) datagram, and the node follows the stream again from the
    /// claim. Longer than any reordering on the network (a claim sent
    /// before the datagrams that moved the position on arrives after them
    /// by at most that). At least `reorder_window` is used. Default 250 ms.
    pub contradiction_window: Duration,
    /// Retransmit ring: memory for sent events kept for repair (each counts
    /// its encoded size plus its entry, about 48 bytes). Default 32 MiB: a
    /// second of a flat-out publisher on loopback, so that receivers that
    /// fall behind are repaired rather than Reset.
    pub retransmit_bytes: usize,
    /// Retransmit ring: events older than this are dropped. Default 30 s.
    pub retransmit_age: Duration,
    /// A seq repaired less than this long ago is not repaired again, so
    /// that many `Nak`s for one loss cost one repair (those that suppression
    /// did not stop arrive within a one-way delay of each other). Default
    /// 1 ms.
    pub repair_linger: Duration,
    /// Coalescing at high rates: while this node's `Data` datagrams go out
    /// less than this apart, a datagram that is not full waits until this
    /// long after the previous one, so that the events published meanwhile
    /// share it (a full datagram goes at once; a publisher slower than one
    /// datagram per `coalesce` is never held). Receivers then wake once
    /// per datagram of many events instead of once per event or two: at
    /// 100,000 events/s it cuts the datagrams about three times and a
    /// receiver's CPU by about 40 %, for at most this much latency. A
    /// confirmed publish is never held. 0 turns it off; at most 500 µs.
    /// Default 50 µs. (A driver without a timerfd, whose timers count
    /// whole milliseconds, turns it off.)
    pub coalesce: Duration,
    /// Repair bandwidth, bytes per second (a token bucket with one
    /// second's worth of burst at most 1 MiB). Repairs over it wait.
    /// Default 32 MiB/s.
    pub repair_rate: u64,
    /// Sender pacing floor, bytes per second: after a `Nak` the sender
    /// paces its data at 70 % of what it was sending, never below this,
    /// and speeds up again while no `Nak` comes (see `proto::pace`). 0
    /// turns pacing off. Default 4 MiB/s.
    pub pace_min_rate: u64,
    /// A stream not heard from for this long is dropped. Default 10 s.
    pub stream_timeout: Duration,
    /// Most streams tracked at once; past it the least recently heard is
    /// evicted (with a `Reset` if it had a gap). Default 1024.
    pub max_streams: usize,
    /// Most disjoint gaps per stream; past it the oldest gaps are Reset.
    /// Default 256.
    pub max_gaps: usize,
    /// Streams that said `Goodbye` are remembered (so that late datagrams
    /// do not bring them back) up to this many. Default 1024.
    pub max_ended: usize,
    /// This node never publishes: publishing is refused
    /// ([`PublishError::ReceiveOnly`](crate::proto::PublishError)), and every
    /// datagram it sends says so ([`wire::FLAG_RECEIVE_ONLY`]), so that other
    /// nodes do not follow its stream and its death, even by `kill -9`,
    /// costs them no `Reset`. Default false.
    pub receive_only: bool,
    /// This node's own events are delivered to its own subscribers too (as
    /// [`Delivery::Event`](crate::proto::Delivery) of its own stream, once
    /// each, when they are put in a datagram), so that an application that
    /// evicts on delivery evicts on the publishing server as well. Default
    /// true.
    pub deliver_own: bool,
    /// A member not heard for this long is dead (every node sends at least
    /// a heartbeat per `heartbeat_idle`): confirmations stop waiting for
    /// it, and a node that hears no member at all for this long knows it is
    /// cut off. Default 3 s.
    pub lease: Duration,
    /// Every node reports how far it has delivered each stream about this
    /// often (jittered by ±25 %), only what changed plus a few unchanged
    /// positions in turn. Default 1 s.
    pub report_interval: Duration,
    /// A member answers an `AckRequest` after a random delay up to this,
    /// once it has delivered what was asked for, coalescing its answers.
    /// Default 500 µs.
    pub ack_delay: Duration,
    /// A confirmation asks again, the members that have not answered,
    /// after this; doubling up to 16 times it. Default 20 ms.
    pub ack_retry: Duration,
    /// Most members kept in the view; past it, members that left or died
    /// are forgotten first. Default 4096.
    pub max_members: usize,
    /// Members that left or died stay in the view this long. Default 60 s.
    pub member_forget: Duration,
    /// Stability: when every live member has reported delivering this
    /// node's stream up to a seq, events below it leave the retransmit
    /// ring. Default true.
    pub stability: bool,
    /// Authenticated datagrams: mode, keys, freshness window (see
    /// [`AuthConfig`]). Default off.
    pub auth: AuthConfig,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            cluster: wire::cluster_hash("cachecast"),
            stream: 1,
            node_name: String::new(),
            seed: 0,
            max_datagram: 1200,
            heartbeat_min: Duration::from_millis(1),
            heartbeat_idle: Duration::from_secs(1),
            sync_window: Duration::from_millis(100),
            hello_count: 3,
            hello_answer_jitter: Duration::from_millis(5),
            hello_answer_min_interval: Duration::from_millis(20),
            reorder_window: Duration::from_millis(5),
            nak_backoff: Duration::from_millis(5),
            nak_retry: Duration::from_millis(20),
            max_nak_tries: 10,
            learn_timing: true,
            max_gap_age: Duration::from_secs(5),
            contradiction_window: Duration::from_millis(250),
            retransmit_bytes: 32 << 20,
            retransmit_age: Duration::from_secs(30),
            repair_linger: Duration::from_millis(1),
            coalesce: Duration::from_micros(50),
            repair_rate: 32 << 20,
            pace_min_rate: 4 << 20,
            stream_timeout: Duration::from_secs(10),
            max_streams: 1024,
            max_gaps: 256,
            max_ended: 1024,
            receive_only: false,
            deliver_own: true,
            lease: Duration::from_secs(3),
            report_interval: Duration::from_secs(1),
            ack_delay: Duration::from_micros(500),
            ack_retry: Duration::from_millis(20),
            max_members: 4096,
            member_forget: Duration::from_secs(60),
            stability: true,
            auth: AuthConfig::default(),
        }
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field} {problem}")]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it and what would be right.
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            field,
            problem: problem.into(),
        }
    }
}

impl CoreConfig {
    /// The bytes every datagram of this node starts with (its header). A
    /// node ignores its own datagrams, looped back by multicast; a driver
    /// may have them dropped before they are even read (a socket filter on
    /// this prefix).
    /// Bytes of a datagram this node may fill with its body: `max_datagram`
    /// less the authentication trailer, if any.
    pub fn body_limit(&self) -> usize {
        self.max_datagram - self.auth.overhead()
    }

    pub fn own_prefix(&self) -> Vec<u8> {
        self.header().to_bytes()
    }

    /// The header of every datagram this node sends (its flags say whether
    /// it is receive-only).
    pub fn header(&self) -> wire::Header {
        let mut header = wire::Header::new(self.cluster, self.stream);
        if self.receive_only {
            header.flags |= wire::FLAG_RECEIVE_ONLY;
        }
        if self.auth.overhead() > 0 {
            header.flags |= wire::FLAG_AUTH;
        }
        header
    }

    /// The contradiction window in force: `contradiction_window`, at least
    /// `reorder_window`.
    pub fn contradiction(&self) -> Duration {
        self.contradiction_window.max(self.reorder_window)
    }

    /// Checks every bound once, so that the hot path never has to.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(problem) = self.auth.check() {
            return Err(ConfigError::new("auth", problem));
        }
        let min_dgram = wire::DATA_OVERHEAD + 64 + self.auth.overhead();
        if self.max_datagram < min_dgram || self.max_datagram > wire::MAX_DATAGRAM {
            return Err(ConfigError::new(
                "max_datagram",
                format!(
                    "is {}; use {min_dgram}..={} (1200 avoids IP fragmentation)",
                    self.max_datagram,
                    wire::MAX_DATAGRAM
                ),
            ));
        }
        if self.node_name.len() > wire::MAX_NODE_NAME {
            return Err(ConfigError::new(
                "node_name",
                format!(
                    "is {} bytes; at most {}",
                    self.node_name.len(),
                    wire::MAX_NODE_NAME
                ),
            ));
        }
        if self.heartbeat_min.is_zero() || self.heartbeat_min > self.heartbeat_idle {
            return Err(ConfigError::new(
                "heartbeat_min",
                "must be above zero and at most heartbeat_idle",
            ));
        }
        if self.stream_timeout <= self.heartbeat_idle * 2 {
            return Err(ConfigError::new(
                "stream_timeout",
                "must be more than twice heartbeat_idle, or live streams time out",
            ));
        }
        if self.hello_count == 0 {
            return Err(ConfigError::new("hello_count", "must be at least 1"));
        }
        if self.contradiction_window.is_zero() {
            return Err(ConfigError::new(
                "contradiction_window",
                "must be above zero (reordered claims are not contradictions)",
            ));
        }
        // (The driver's fine timer takes deadlines under 500 µs away; a
        // longer wait would round up to tokio's next millisecond.)
        if self.coalesce > Duration::from_micros(500) {
            return Err(ConfigError::new(
                "coalesce",
                "must be at most 500 µs (it delays events by up to this much)",
            ));
        }
        if self.nak_retry.is_zero() {
            return Err(ConfigError::new("nak_retry", "must be above zero"));
        }
        if self.repair_rate < self.max_datagram as u64 {
            return Err(ConfigError::new(
                "repair_rate",
                format!(
                    "must be at least max_datagram ({}) bytes/s",
                    self.max_datagram
                ),
            ));
        }
        if self.pace_min_rate != 0 && self.pace_min_rate < self.max_datagram as u64 {
            return Err(ConfigError::new(
                "pace_min_rate",
                format!(
                    "must be 0 (no pacing) or at least max_datagram ({}) bytes/s",
                    self.max_datagram
                ),
            ));
        }
        if self.lease < self.heartbeat_idle * 2 {
            return Err(ConfigError::new(
                "lease",
                "must be at least twice heartbeat_idle, or live members expire",
            ));
        }
        if self.report_interval.is_zero() || self.ack_retry.is_zero() {
            return Err(ConfigError::new(
                "report_interval/ack_retry",
                "must be above zero",
            ));
        }
        if self.stream == 0 {
            return Err(ConfigError::new(
                "stream",
                "must not be 0 (receivers drop datagrams of stream 0)",
            ));
        }
        if self.max_members == 0 {
            return Err(ConfigError::new("max_members", "must be at least 1"));
        }
        if self.max_streams == 0 || self.max_gaps == 0 {
            return Err(ConfigError::new(
                "max_streams/max_gaps",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
