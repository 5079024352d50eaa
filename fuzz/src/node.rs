//! State-machine fuzzing of a node's receive path: a [`Scenario`] is one
//! [`NodeCore`] in virtual time and a list of [`Step`]s (time passes, a
//! datagram arrives — arbitrary bytes, or a well-formed header and body of
//! arbitrary values from a few fixed streams —, the application publishes,
//! timeouts run), every output drained after each step. [`run`] asserts:
//!
//! - nothing panics, and no step makes the node loop (outputs are bounded);
//! - a datagram that fails validation ([`judge`]: [`wire::decode`]
//!   rejects it; or, with keys, its tag does not verify under the node's
//!   keys or it has none in `require` mode), or one of the node's own
//!   stream, changes nothing but its counters: `datagrams_received` and the
//!   one drop counter of its reason (or `own_ignored`); the streams, the
//!   membership view, the staleness, the timers, the queues and the replay
//!   windows are equal before and after; a datagram whose tag verifies,
//!   fed again at once, changes nothing but counters either (a replay);
//! - handling one datagram allocates at most [`NODE_ALLOC_BOUND`] bytes;
//! - the node's tables stay within its configured bounds, and what it sends
//!   decodes, is its own, and fits `max_datagram`.
//!
//! The input's encoding is simple on purpose, so that seeds can be written
//! ([`SeedStep`]): a flags byte and a seed byte ([`Setup`]), then steps,
//! each an op byte and its fields; framed datagrams and published events
//! are read with `arbitrary`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use cachecast::proto::{NodeCore, StreamState};
use cachecast::wire::{
    self, Algorithm, Body, Event, Events, Header, Key, Keyring, Position, Trailer, FLAG_AUTH,
    FLAG_RECEIVE_ONLY, TRAILER_LEN,
};
use cachecast::{AuthConfig, AuthMode, CoreConfig, Member, Staleness, Stats};

use crate::alloc::allocated_by;
use crate::wire_checks::{cluster, DECODE_ALLOC_BOUND};

/// The fuzzed node's stream.
pub const OWN: u64 = 1;
/// The streams framed datagrams come from (or name): the node's own, two
/// small ids, and two large ones.
pub const STREAMS: [u64; 5] = [OWN, 2, 3, 0x0102_0304_0506_0708, u64::MAX];
/// Steps read from one input, at most.
pub const MAX_STEPS: usize = 256;
/// Most bytes handling one datagram may allocate: what decoding it may
/// ([`DECODE_ALLOC_BOUND`]) plus what the node keeps of it (a new stream's
/// receiver, a member, its tables growing by one entry) and queues in
/// answer, 256 KiB.
pub const NODE_ALLOC_BOUND: usize = DECODE_ALLOC_BOUND + (256 << 10);
/// Datagrams sent, or outputs delivered, after one step, at most: past it
/// the node is taken to loop.
const MAX_OUTPUTS: usize = 1 << 16;
/// Longest jump to the node's next wake-up.
const MAX_JUMP: Duration = Duration::from_secs(3600);

/// How the fuzzed node is configured: bit 0 small tables (4 streams, gaps,
/// members, ended streams, 2 replay windows; a 64 KiB retransmit ring), bit
/// 1 receive-only, bit 2 the smallest `max_datagram`, bit 3 no
/// `deliver_own`, bit 4 no stability, bits 5-6 keys (0 none, 1 `accept`, 2
/// `require`, 3 `require` and encrypt: the node holds [`keys`]' first two,
/// sending with the first); and the RNG's seed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Setup {
    /// The bits above.
    pub flags: u8,
    /// `CoreConfig::seed`.
    pub seed: u8,
}

impl Setup {
    /// The node's configuration.
    pub fn config(&self) -> CoreConfig {
        let mut cfg = CoreConfig {
            cluster: cluster(),
            stream: OWN,
            node_name: "fuzz".into(),
            seed: u64::from(self.seed),
            ..CoreConfig::default()
        };
        if self.flags & 1 != 0 {
            cfg.max_streams = 4;
            cfg.max_gaps = 4;
            cfg.max_members = 4;
            cfg.max_ended = 4;
            cfg.retransmit_bytes = 64 << 10;
            cfg.auth.max_windows = 2;
        }
        cfg.receive_only = self.flags & 2 != 0;
        let keys = keys();
        match (self.flags >> 5) & 3 {
            0 => {}
            auth => {
                cfg.auth.mode = if auth == 1 {
                    AuthMode::Accept
                } else {
                    AuthMode::Require
                };
                cfg.auth.encrypt = auth == 3;
                cfg.auth.keyring =
                    Keyring::new(vec![keys[0].clone(), keys[1].clone()], Some(keys[0].id()))
                        .expect("two keys");
            }
        }
        cfg.auth.wall_clock_ms = WALL_CLOCK_MS;
        if self.flags & 4 != 0 {
            cfg.max_datagram = wire::DATA_OVERHEAD + 64 + cfg.auth.overhead();
        }
        cfg.deliver_own = self.flags & 8 == 0;
        cfg.stability = self.flags & 16 == 0;
        cfg
    }
}

/// One input: the node's setup and what happens to it.
#[derive(Debug)]
pub struct Scenario {
    /// The node's configuration.
    pub setup: Setup,
    /// In order.
    pub steps: Vec<Step>,
}

/// One thing that happens to the node; all outputs are drained after it.
#[derive(Debug)]
pub enum Step {
    /// Time passes (microseconds).
    Advance(u32),
    /// Time jumps to the node's next wake-up (at most an hour) and
    /// `handle_timeout` runs.
    Wake,
    /// `handle_timeout` now, whether due or not.
    Timeout,
    /// A datagram of arbitrary bytes.
    Raw(Vec<u8>),
    /// A well-formed header and body of arbitrary values.
    Framed(Framed),
    /// The application publishes.
    Publish(EventSpec),
    /// The application closes the node (its stream ends).
    Close,
    /// The application asks to confirm the last `back` seqs it published.
    Confirm {
        /// Seqs back from the next one.
        back: u8,
        /// Deadline, from now.
        deadline_ms: u16,
    },
}

/// Op bytes of the steps (the op byte is taken modulo their number).
const OPS: u8 = 8;

impl Scenario {
    /// Reads an input: two setup bytes, then steps until the input ends
    /// (or [`MAX_STEPS`]). Missing bytes read as zero.
    pub fn from_bytes(data: &[u8]) -> Scenario {
        let mut u = Unstructured::new(data);
        let setup = Setup {
            flags: byte(&mut u),
            seed: byte(&mut u),
        };
        let mut steps = Vec::new();
        while !u.is_empty() && steps.len() < MAX_STEPS {
            match Step::read(&mut u) {
                Ok(step) => steps.push(step),
                Err(_) => break,
            }
        }
        Scenario { setup, steps }
    }
}

impl Scenario {
    /// [`Scenario::from_bytes`], keyed: without keys in the setup bits,
    /// the node takes them in `require` mode.
    pub fn keyed_from_bytes(data: &[u8]) -> Scenario {
        let mut s = Scenario::from_bytes(data);
        if (s.setup.flags >> 5) & 3 == 0 {
            s.setup.flags |= 2 << 5;
        }
        s
    }
}

fn byte(u: &mut Unstructured<'_>) -> u8 {
    u.bytes(1).map(|b| b[0]).unwrap_or(0)
}

impl Step {
    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Step> {
        Ok(match byte(u) % OPS {
            0 => {
                let mut b = [0; 4];
                let n = u.len().min(4);
                b[..n].copy_from_slice(u.bytes(n)?);
                Step::Advance(u32::from_le_bytes(b))
            }
            1 => Step::Wake,
            2 => Step::Timeout,
            3 => {
                let len = u16::from_le_bytes([byte(u), byte(u)]) as usize;
                Step::Raw(u.bytes(len.min(u.len()))?.to_vec())
            }
            4 => Step::Framed(Framed::arbitrary(u)?),
            5 => Step::Publish(EventSpec::arbitrary(u)?),
            6 => Step::Close,
            _ => Step::Confirm {
                back: u.arbitrary()?,
                deadline_ms: u.arbitrary()?,
            },
        })
    }
}

/// The steps a seed is written with: their encoding is
/// [`Scenario::from_bytes`]'s.
#[derive(Debug, Clone)]
pub enum SeedStep {
    /// [`Step::Advance`] (several, past `u32::MAX` microseconds).
    Advance(Duration),
    /// [`Step::Timeout`].
    Timeout,
    /// [`Step::Raw`] (at most 65,535 bytes).
    Raw(Vec<u8>),
}

/// The input that [`Scenario::from_bytes`] reads as `setup` and `steps`.
pub fn seed_bytes(setup: Setup, steps: &[SeedStep]) -> Vec<u8> {
    let mut out = vec![setup.flags, setup.seed];
    for step in steps {
        match step {
            SeedStep::Advance(d) => {
                // Longer than a u32 of microseconds: several steps.
                let mut us = d.as_micros();
                loop {
                    let n = us.min(u128::from(u32::MAX)) as u32;
                    out.push(0);
                    out.extend_from_slice(&n.to_le_bytes());
                    us -= u128::from(n);
                    if us == 0 {
                        break;
                    }
                }
            }
            SeedStep::Timeout => out.push(2),
            SeedStep::Raw(bytes) => {
                out.push(3);
                let len = u16::try_from(bytes.len()).expect("a datagram");
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(bytes);
            }
        }
    }
    out
}

/// A stream id: one of [`STREAMS`] or any.
#[derive(Debug, Arbitrary)]
pub enum StreamPick {
    /// `STREAMS[i % len]`.
    Known(u8),
    /// Any id.
    Any(u64),
}

impl StreamPick {
    fn id(&self) -> u64 {
        match self {
            StreamPick::Known(i) => STREAMS[*i as usize % STREAMS.len()],
            StreamPick::Any(id) => *id,
        }
    }
}

/// A sequence number: mostly small, so that datagrams of one stream meet.
#[derive(Debug, Arbitrary)]
pub enum Seq {
    /// 0 to 255.
    Near(u8),
    /// 0 to 65,535.
    Far(u16),
    /// Any.
    Any(u64),
}

impl Seq {
    fn get(&self) -> u64 {
        match self {
            Seq::Near(n) => u64::from(*n),
            Seq::Far(n) => u64::from(*n),
            Seq::Any(n) => *n,
        }
    }
}

/// An event, possibly invalid (no keys, too long): receivers reject those.
#[derive(Debug, Arbitrary)]
pub enum EventSpec {
    /// [`Event::Invalidate`].
    Invalidate(Vec<String>),
    /// [`Event::InvalidatePrefix`].
    Prefix(String),
    /// [`Event::ClearAll`].
    ClearAll,
    /// [`Event::Custom`].
    Custom(String, Vec<u8>),
}

impl EventSpec {
    fn event(&self) -> Event {
        match self {
            EventSpec::Invalidate(keys) => Event::Invalidate {
                keys: keys.iter().take(64).cloned().collect(),
            },
            EventSpec::Prefix(p) => Event::InvalidatePrefix { prefix: p.clone() },
            EventSpec::ClearAll => Event::ClearAll,
            EventSpec::Custom(t, p) => Event::Custom {
                topic: t.clone(),
                payload: p.clone(),
            },
        }
    }
}

/// A half-open range `start..start + len` (empty or reversed when it
/// overflows: receivers reject those).
#[derive(Debug, Arbitrary)]
pub struct RangeSpec {
    start: Seq,
    len: Seq,
}

impl RangeSpec {
    fn get(&self) -> (u64, u64) {
        let start = self.start.get();
        (start, start.wrapping_add(self.len.get()))
    }
}

/// A `Report`'s entry.
#[derive(Debug, Arbitrary)]
pub struct PositionSpec {
    stream: StreamPick,
    delivered: Seq,
    reset_end: Seq,
    idle_ms: u32,
}

/// A body of arbitrary values (counts up to a little over each limit).
#[derive(Debug, Arbitrary)]
pub enum BodySpec {
    /// [`Body::Data`].
    Data(Seq, Vec<EventSpec>),
    /// [`Body::Heartbeat`].
    Heartbeat(Seq, Seq, String),
    /// [`Body::Hello`].
    Hello(String),
    /// [`Body::Nak`].
    Nak(StreamPick, Vec<RangeSpec>),
    /// [`Body::Repair`].
    Repair(Seq, Vec<EventSpec>),
    /// [`Body::Unavailable`].
    Unavailable(StreamPick, Vec<RangeSpec>),
    /// [`Body::Goodbye`].
    Goodbye(Seq),
    /// [`Body::AckRequest`].
    AckRequest(Seq, Vec<StreamPick>),
    /// [`Body::Report`].
    Report(String, Vec<PositionSpec>, Vec<u32>),
}

fn events(specs: &[EventSpec]) -> Events {
    let events: Vec<Event> = specs.iter().take(80).map(EventSpec::event).collect();
    Events::new_unchecked(&events)
}

fn ranges(specs: &[RangeSpec]) -> Vec<(u64, u64)> {
    specs
        .iter()
        .take(wire::MAX_RANGES + 2)
        .map(RangeSpec::get)
        .collect()
}

impl BodySpec {
    fn body(&self) -> Body {
        match self {
            BodySpec::Data(first, ev) => Body::Data {
                first_seq: first.get(),
                events: events(ev),
            },
            BodySpec::Heartbeat(next, oldest, node) => Body::Heartbeat {
                next_seq: next.get(),
                oldest: oldest.get(),
                node: node.clone(),
            },
            BodySpec::Hello(node) => Body::Hello { node: node.clone() },
            BodySpec::Nak(stream, r) => Body::Nak {
                stream: stream.id(),
                ranges: ranges(r),
            },
            BodySpec::Repair(first, ev) => Body::Repair {
                first_seq: first.get(),
                events: events(ev),
            },
            BodySpec::Unavailable(stream, r) => Body::Unavailable {
                stream: stream.id(),
                ranges: ranges(r),
            },
            BodySpec::Goodbye(next) => Body::Goodbye {
                next_seq: next.get(),
            },
            BodySpec::AckRequest(next, members) => Body::AckRequest {
                next_seq: next.get(),
                members: members
                    .iter()
                    .take(wire::MAX_ACK_MEMBERS + 2)
                    .map(StreamPick::id)
                    .collect(),
            },
            BodySpec::Report(node, positions, keys) => Body::Report {
                node: node.clone(),
                positions: positions
                    .iter()
                    .take(wire::MAX_POSITIONS + 2)
                    .map(|p| Position {
                        stream: p.stream.id(),
                        delivered: p.delivered.get(),
                        reset_end: p.reset_end.get(),
                        idle_ms: u64::from(p.idle_ms),
                    })
                    .collect(),
                keys: keys
                    .iter()
                    .take(wire::MAX_REPORT_KEYS + 2)
                    .copied()
                    .collect(),
            },
        }
    }
}

/// A header's flags.
#[derive(Debug, Arbitrary)]
pub enum FlagSpec {
    /// None.
    None,
    /// [`FLAG_RECEIVE_ONLY`].
    ReceiveOnly,
    /// Any bits.
    Any(u8),
}

/// A datagram framed properly (magic, version, cluster) from one of the
/// streams, with a body of arbitrary values; optionally one byte changed
/// afterwards.
#[derive(Debug, Arbitrary)]
pub struct Framed {
    flags: FlagSpec,
    from: StreamPick,
    body: BodySpec,
    seal: SealSpec,
    /// `(at, xor)`: byte `at % len` is XORed with `xor`.
    flip: Option<(u16, u8)>,
}

/// A framed datagram's trailer.
#[derive(Debug, Arbitrary)]
pub enum SealSpec {
    /// None (the flags as they are).
    None,
    /// Sealed with `keys()[key % 3]` (the third is one the node does not
    /// hold), stamped `age_s` seconds before the node's clock.
    Key {
        /// Which key.
        key: u8,
        /// XAES-256-GCM rather than HMAC.
        encrypt: bool,
        /// The transmit counter.
        counter: u32,
        /// Seconds before the node's clock (negative: after).
        age_s: i16,
    },
    /// The authentication flag and these bytes as the trailer.
    Raw([u8; TRAILER_LEN]),
}

impl Framed {
    /// The datagram's bytes, sealed (if so) at the node's clock `wall_ms`.
    pub fn bytes(&self, wall_ms: u64) -> Vec<u8> {
        let mut header = Header::new(cluster(), self.from.id());
        header.flags = match self.flags {
            FlagSpec::None => 0,
            FlagSpec::ReceiveOnly => FLAG_RECEIVE_ONLY,
            FlagSpec::Any(f) => f,
        };
        if !matches!(self.seal, SealSpec::None) {
            header.flags |= FLAG_AUTH;
        }
        let mut buf = Vec::new();
        wire::encode(&header, &self.body.body(), &mut buf);
        match &self.seal {
            SealSpec::None => {}
            SealSpec::Key {
                key,
                encrypt,
                counter,
                age_s,
            } => {
                let algorithm = if *encrypt {
                    Algorithm::Aes256Gcm
                } else {
                    Algorithm::HmacSha256
                };
                let ts = wall_ms.saturating_add_signed(-1000 * i64::from(*age_s));
                let header_len = header.to_bytes().len();
                keys()[*key as usize % 3].seal(
                    &mut buf,
                    header_len,
                    header.stream,
                    algorithm,
                    ts,
                    u64::from(*counter),
                );
            }
            SealSpec::Raw(trailer) => buf.extend_from_slice(trailer),
        }
        if let Some((at, xor)) = self.flip {
            let i = at as usize % buf.len();
            buf[i] ^= xor;
        }
        buf
    }
}

/// Everything of a node that a datagram could change, at `now`; the gauges
/// that depend on when they were last computed are taken at `now`.
#[derive(Debug, PartialEq)]
struct Snapshot {
    stats: Stats,
    streams: Vec<StreamState>,
    members: Vec<Member>,
    staleness: Staleness,
    poll_timeout: Option<Instant>,
    pending: bool,
    flushed: bool,
    unsent: usize,
    next_seq: u64,
    closed: bool,
    replay_windows: usize,
}

impl Snapshot {
    fn take(core: &NodeCore, now: Instant) -> Snapshot {
        let mut stats = core.stats_snapshot();
        // Computed at the last `now` the node saw: see `staleness`.
        stats.staleness_ms = 0;
        stats.isolated = 0;
        let streams = core
            .stream_states()
            .into_iter()
            .map(|mut s| {
                s.staleness = Duration::ZERO;
                s
            })
            .collect();
        Snapshot {
            stats,
            streams,
            members: core.members(now),
            staleness: core.staleness(now),
            poll_timeout: core.poll_timeout(),
            pending: core.has_pending_output(),
            flushed: core.is_flushed(),
            unsent: core.unsent_events(),
            next_seq: core.next_seq(),
            closed: core.is_closed(),
            replay_windows: core.replay_windows(),
        }
    }
}

/// The fuzzed node's clock at its start (ms since the Unix epoch).
pub const WALL_CLOCK_MS: u64 = 1_750_000_000_000;

/// Three keys of the cluster: the node sends with the first and accepts
/// the second; the third is one it does not hold.
pub fn keys() -> &'static [Key; 3] {
    static KEYS: OnceLock<[Key; 3]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = |n: u8| Key::derive(&[n; 32], cluster()).expect("a 32-byte secret");
        [key(1), key(2), key(3)]
    })
}

/// Runs `scenario` and checks what the module docs say.
pub fn run(scenario: &Scenario) {
    run_stats(scenario);
}

/// [`run`], returning the node's counters at the end.
pub fn run_stats(scenario: &Scenario) -> Stats {
    let cfg = scenario.setup.config();
    let start = Instant::now();
    let mut now = start;
    let mut core = NodeCore::new(cfg.clone(), now).expect("a valid config");
    let mut buf = Vec::new();
    let mut counter = 0;
    drain(&mut core, &cfg, now, &mut buf, &mut counter);
    for (i, step) in scenario.steps.iter().enumerate() {
        match step {
            Step::Advance(us) => now += Duration::from_micros(u64::from(*us)),
            Step::Wake => {
                if let Some(at) = core.poll_timeout() {
                    now = now.max(at.min(now + MAX_JUMP));
                }
                core.handle_timeout(now);
            }
            Step::Timeout => core.handle_timeout(now),
            Step::Raw(bytes) => feed(&mut core, &cfg, now, bytes),
            Step::Framed(f) => {
                let wall_ms = WALL_CLOCK_MS + (now - start).as_millis() as u64;
                feed(&mut core, &cfg, now, &f.bytes(wall_ms))
            }
            Step::Publish(e) => {
                let _ = core.publish(now, e.event());
            }
            Step::Close => core.close(now),
            Step::Confirm { back, deadline_ms } => {
                let next = core.next_seq();
                let from = next.saturating_sub(u64::from(*back)).max(1);
                if from < next {
                    let deadline = now + Duration::from_millis(u64::from(*deadline_ms));
                    core.confirm(now, from..next, deadline);
                }
            }
        }
        drain(&mut core, &cfg, now, &mut buf, &mut counter);
        // The membership view is costly to build: every few steps.
        check_bounds(&core, &cfg, now, i % 8 == 7);
    }
    check_bounds(&core, &cfg, now, true);
    core.stats_snapshot()
}

/// What a received datagram is to a node, judged without the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It must change nothing but counters: `datagrams_received`, and one
    /// drop reason (this one, when it can be told beforehand). `unverified`:
    /// `auth_unverified` may count it too (a MAC trailer taken unchecked).
    Dropped {
        /// The drop reason expected, if known.
        reason: Option<&'static str>,
        /// `auth_unverified` may go up by one.
        unverified: bool,
    },
    /// The node's own: only `own_ignored` and `datagrams_received`.
    Own,
    /// Its tag verifies under one of the node's keys: it may change the
    /// node (once: the same bytes again must not).
    Verified,
    /// No keys involved, and it decodes: it may change the node.
    Accepted,
}

/// How a node configured as `cfg` (with its keys) must take `bytes`:
/// decoded and checked here with `wire` alone (the tag with the keys).
pub fn judge(cfg: &CoreConfig, bytes: &[u8]) -> Verdict {
    let dropped = |reason| Verdict::Dropped {
        reason,
        unverified: false,
    };
    let (header, used) = match wire::decode_header(bytes, cfg.cluster) {
        Ok(h) => h,
        Err(e) => return dropped(Some(e.kind())),
    };
    if header.stream == cfg.stream {
        return Verdict::Own;
    }
    let keyed = cfg.auth.mode != AuthMode::Off;
    if !header.authenticated() {
        return match cfg.auth.mode {
            AuthMode::Require => dropped(Some("auth_missing")),
            // Refused as `auth_missing` if its stream was heard
            // authenticated (a state this judge does not keep).
            AuthMode::Accept => match wire::decode(bytes, cfg.cluster) {
                Ok(_) => Verdict::Accepted,
                Err(_) => dropped(None),
            },
            AuthMode::Off => match wire::decode(bytes, cfg.cluster) {
                Ok(_) => Verdict::Accepted,
                Err(e) => dropped(Some(e.kind())),
            },
        };
    }
    if !keyed {
        // A MAC trailer is taken unchecked, an encrypted body dropped.
        return match wire::decode(bytes, cfg.cluster) {
            Ok(_) => Verdict::Accepted,
            Err(_) => Verdict::Dropped {
                reason: None,
                unverified: true,
            },
        };
    }
    if verifies(&cfg.auth, bytes, used, header.stream) {
        Verdict::Verified
    } else {
        dropped(None)
    }
}

/// True if the trailer of `bytes` verifies under one of `auth`'s keys.
fn verifies(auth: &AuthConfig, bytes: &[u8], header_len: usize, stream: u64) -> bool {
    let Ok((trailer, tag)) = Trailer::read(bytes, header_len) else {
        return false;
    };
    let Some(key) = auth.keyring.get(trailer.key_id) else {
        return false;
    };
    let mut scratch = Vec::new();
    key.open(bytes, header_len, stream, &trailer, &tag, &mut scratch)
        .is_ok()
}

/// Feeds one datagram to `core`, configured as `cfg` (with its keys: the
/// core keeps them to itself), checking it against its [`Verdict`]: one
/// that must be dropped (or is the node's own) changes nothing but its
/// counters, and one that verified changes nothing the second time.
pub fn feed(core: &mut NodeCore, cfg: &CoreConfig, now: Instant, bytes: &[u8]) {
    let verdict = judge(cfg, bytes);
    feed_expecting(core, now, bytes, verdict);
    if verdict == Verdict::Verified {
        // A replay, at once: dropped (a replay, or stale as before).
        let again = Verdict::Dropped {
            reason: None,
            unverified: false,
        };
        feed_expecting(core, now, bytes, again);
    }
}

fn feed_expecting(core: &mut NodeCore, now: Instant, bytes: &[u8], verdict: Verdict) {
    let checked = matches!(verdict, Verdict::Dropped { .. } | Verdict::Own);
    let before = checked.then(|| Snapshot::take(core, now));
    let ((), allocated) = allocated_by(|| core.handle_datagram(now, bytes));
    assert!(
        allocated <= NODE_ALLOC_BOUND,
        "handling a datagram of {} bytes allocated {allocated}",
        bytes.len()
    );
    let Some(mut expected) = before else {
        return;
    };
    let mut after = Snapshot::take(core, now);
    expected.stats.datagrams_received += 1;
    match verdict {
        Verdict::Own => expected.stats.own_ignored += 1,
        Verdict::Dropped { reason, unverified } => {
            if unverified && after.stats.auth_unverified == expected.stats.auth_unverified + 1 {
                expected.stats.auth_unverified += 1;
            }
            // Exactly one drop reason counted it: the one expected, if known.
            let counted: Vec<&str> = after
                .stats
                .dropped
                .iter()
                .filter(|(k, n)| expected.stats.dropped.get(*k).copied().unwrap_or(0) != **n)
                .map(|(k, _)| *k)
                .collect();
            assert_eq!(
                counted.len(),
                1,
                "{verdict:?} ({} mode): dropped before {:?}, after {:?}; datagram {bytes:02x?}",
                core.config().auth.mode,
                expected.stats.dropped,
                after.stats.dropped
            );
            let kind = counted[0];
            if let Some(reason) = reason {
                assert_eq!(kind, reason, "{verdict:?}");
            }
            *expected.stats.dropped.entry(kind).or_insert(0) += 1;
        }
        _ => unreachable!(),
    }
    // Logged drops are rate-limited, which is no state a datagram shows.
    after.stats.dropped.retain(|_, n| *n != 0);
    assert_eq!(
        after, expected,
        "a datagram judged {verdict:?} changed the node"
    );
}

/// Drains every output, checking what is sent: within `max_datagram`, its
/// own header, sealed with the sending key (a transmit counter that only
/// grows) when keyed, and a body that decodes.
fn drain(
    core: &mut NodeCore,
    cfg: &CoreConfig,
    now: Instant,
    buf: &mut Vec<u8>,
    counter: &mut u64,
) {
    let mut n = 0;
    while core.poll_transmit(now, buf) {
        n += 1;
        assert!(n <= MAX_OUTPUTS, "poll_transmit does not end");
        assert!(
            buf.len() <= cfg.max_datagram,
            "sent {} bytes, max_datagram {}",
            buf.len(),
            cfg.max_datagram
        );
        let (header, used) = wire::decode_header(buf, cfg.cluster).expect("its own header");
        assert_eq!(header.stream, cfg.stream);
        assert_eq!(header.receive_only(), cfg.receive_only);
        let keyed = cfg.auth.mode != AuthMode::Off;
        assert_eq!(header.authenticated(), keyed);
        let body = if keyed {
            let (trailer, tag) = Trailer::read(buf, used).expect("a trailer");
            let key = cfg.auth.keyring.sending().expect("a sending key");
            assert_eq!(trailer.key_id, key.id());
            assert!(trailer.counter > *counter, "transmit counter reused");
            *counter = trailer.counter;
            let mut scratch = Vec::new();
            let body = key
                .open(buf, used, header.stream, &trailer, &tag, &mut scratch)
                .expect("its own datagram verifies");
            wire::decode_body(body)
        } else {
            wire::decode(buf, cfg.cluster).map(|d| d.body)
        };
        let body = match body {
            Ok(b) => b,
            Err(e) => panic!("sent a datagram it would drop ({e}): {buf:02x?}"),
        };
        if cfg.receive_only {
            assert!(
                !matches!(body, Body::Data { .. } | Body::Repair { .. }),
                "a receive-only node sent {:?}",
                body.tag()
            );
        }
    }
    let mut n = 0;
    while core.poll_output().is_some() {
        n += 1;
        assert!(n <= MAX_OUTPUTS, "poll_output does not end");
    }
    while core.poll_confirmation().is_some() {}
}

/// The node's tables within its bounds; each stream's state coherent.
fn check_bounds(core: &NodeCore, cfg: &CoreConfig, now: Instant, members: bool) {
    assert!(core.stream_count() <= cfg.max_streams);
    for s in core.stream_states() {
        assert!(s.gaps.len() <= cfg.max_gaps, "{s:?}");
        assert!(s.next_expected <= s.known_end, "{s:?}");
        let mut end = 0;
        for &(a, b) in &s.gaps {
            assert!(a < b && a >= end && b <= s.known_end, "{s:?}");
            end = b;
        }
    }
    if !members {
        return;
    }
    let members = core.members(now);
    assert!(
        members.len() <= cfg.max_members + 1,
        "{} members",
        members.len()
    );
}
