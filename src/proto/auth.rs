//! Which datagrams a node accepts and how it seals its own: the modes, the
//! receive checks (in the order the design fixes, before anything of the
//! datagram changes state or is allocated), the replay windows, the
//! transmit counter and the sender's clock.
//!
//! # Receive checks
//!
//! For a datagram with a trailer: (1) its key id is held
//! (`auth_unknown_key`); (2) its tag verifies, in constant time
//! (`auth_bad_tag`); (3) its transmit counter is not in the stream's replay
//! window (`auth_replay`); (4) for a stream that has no window yet, its
//! timestamp is within `max_age` of this node's clock, and not older than
//! this node's start less `start_skew` (`auth_stale`): a node that just
//! started (a restart) takes nothing sent before it, so what an attacker
//! captured earlier cannot be replayed to it. Only then is the counter
//! marked in the window, and the body decoded. A datagram without a
//! trailer is dropped in `require` mode, and in `accept` mode when its
//! stream was heard authenticated (nobody can strip a keyed node's trailer
//! and speak for it) (`auth_missing`). Each reason is counted in
//! `Stats::dropped` and logged at most once a second; none causes a
//! `Reset`. Before the checks only the counters of received and own
//! datagrams change.
//!
//! Clocks must agree within `max_age` (NTP): a sender whose clock is
//! further off is never heard by a node that has not heard it yet (each
//! drop is counted as `auth_stale`, the skew in `Stats::auth_stale_skew_ms`
//! and in the log).
//!
//! # Replay windows
//!
//! One per sending stream and path, a sliding bitmap as in RFC 6479: 17
//! blocks of 64 bits, so any counter within 1,024 of the highest seen is
//! judged exactly, and older ones are replays. A stream on a multicast
//! group counts what it sends to one node alone (a directed repair) apart
//! from what it sends to everyone, from [`DIRECTED`] on, and a receiver keeps a window for each:
//! the two travel apart (a node reads its direct socket and the group's
//! in turns), and with one count a directed repair overtaken by more than
//! 1,024 of the group's datagrams (a receiver behind at high rates, the
//! moment it needs its repairs) was dropped as a replay. The counter is
//! sealed, so a datagram cannot be moved from one window to the other (a
//! unicast node counts everything in one: one socket carries it all). A
//! window starts at the first counter verified: everything below it counts as seen (a datagram that
//! arrives reordered before the first one heard is dropped; its loss is a
//! gap like any other, repaired with a new counter). A window is forgotten
//! once the newest timestamp its stream sent is older than `max_age`, as a
//! replay of anything of it then fails check (4); the windows are bounded
//! by `max_windows`, past which the stalest is forgotten early (counted as
//! `auth_windows_evicted`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::proto::stats::Stats;
use crate::wire::{self, Algorithm, AuthError, DecodeError, Header, Keyring, StreamKey, Trailer};

/// How a node uses keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No keys: datagrams are sent without a trailer. One that carries a
    /// MAC trailer is taken without checking it (a node that has no key yet,
    /// in a cluster moving to keys); an encrypted one cannot be read and is
    /// dropped (`auth_unknown_key`).
    #[default]
    Off,
    /// Send authenticated; accept datagrams with a valid trailer and those
    /// without one (the roll-out step: a cluster moves to keys one node at a
    /// time).
    Accept,
    /// Send authenticated; drop everything without a valid trailer.
    Require,
}

impl std::str::FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(AuthMode::Off),
            "accept" => Ok(AuthMode::Accept),
            "require" => Ok(AuthMode::Require),
            _ => Err(format!(
                "unknown auth mode {s:?}: use off, accept or require"
            )),
        }
    }
}

impl std::fmt::Display for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMode::Off => "off",
            AuthMode::Accept => "accept",
            AuthMode::Require => "require",
        })
    }
}

/// Authentication settings of a node ([`CoreConfig::auth`](super::CoreConfig)).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Off, accept or require. Default off.
    pub mode: AuthMode,
    /// Encrypt bodies (XAES-256-GCM) rather than only authenticate them
    /// (HMAC-SHA256): also the cheaper of the two on a CPU with AES-NI.
    /// Every receiver must hold the key: a node in `off` mode cannot read
    /// an encrypted datagram. Stream ids must be unique under a key (see
    /// `wire::auth`; a `Node` draws them at random). Default false.
    pub encrypt: bool,
    /// The keys: every one accepted, one sending. Needs a sending key unless
    /// the mode is off.
    pub keyring: Keyring,
    /// A stream heard for the first time is accepted only if its
    /// datagram's timestamp is within this of this node's clock. Default
    /// 60 s.
    pub max_age: Duration,
    /// This node's clock (ms since the Unix epoch) at the core's creation;
    /// the core counts on from it with `now` (the driver corrects it with
    /// `NodeCore::set_wall_clock`). Default 0 (the simulator's epoch).
    pub wall_clock_ms: u64,
    /// A stream first heard after this node started is accepted only if
    /// its datagram was sent after the start less this (clock skew between
    /// hosts). Default 2 s.
    pub start_skew: Duration,
    /// Replay windows kept at most (one per stream heard within
    /// `max_age`, and one more for a stream that sent this node a directed
    /// repair). Default 8,192 (about 1.3 MB; 6 MB if every stream
    /// encrypts, as each window then keeps its stream's 560-byte key).
    /// Past it the stalest is forgotten (`auth_windows_evicted`), and a
    /// replay of that stream's last `max_age` could be taken once: only
    /// more authenticated streams than this within `max_age` (key holders)
    /// can cause it.
    pub max_windows: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Off,
            encrypt: false,
            keyring: Keyring::default(),
            max_age: Duration::from_secs(60),
            wall_clock_ms: 0,
            start_skew: Duration::from_secs(2),
            max_windows: 8192,
        }
    }
}

impl AuthConfig {
    /// Bytes each datagram of this node needs beyond its body (the
    /// trailer, when keyed).
    pub fn overhead(&self) -> usize {
        if self.mode == AuthMode::Off {
            0
        } else {
            wire::TRAILER_LEN
        }
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if self.mode != AuthMode::Off && self.keyring.sending().is_none() {
            return Err(format!("is {}, which needs a sending key", self.mode));
        }
        if self.encrypt && self.mode == AuthMode::Off {
            return Err("is off, but encrypt needs keys".into());
        }
        if self.max_age.is_zero() || self.max_windows == 0 {
            return Err("max_age and max_windows must be above zero".into());
        }
        Ok(())
    }
}

/// The first counter of what a stream on a multicast group sends to one
/// node alone (directed repairs): its own count, below it what goes to
/// the group. Sealed like
/// the rest, so the receiver's choice of window is authenticated.
pub const DIRECTED: u64 = 1 << 63;

/// Counters judged exactly: within this many of the highest seen.
pub const REPLAY_WINDOW: u64 = (BLOCKS as u64 - 1) * 64;
const BLOCKS: usize = 17;

/// A sliding bitmap of the counters seen near the highest (RFC 6479).
#[derive(Debug)]
struct ReplayWindow {
    top: u64,
    bits: [u64; BLOCKS],
    /// The newest timestamp verified from the stream.
    newest_ms: u64,
    /// The stream's XAES-256-GCM key, once a datagram of it verified with
    /// one (about 600 bytes, kept so that it is derived once).
    stream_key: Option<Box<StreamKey>>,
}

impl ReplayWindow {
    /// A window whose first counter is `counter`: it and everything below
    /// count as seen.
    fn starting_at(counter: u64, ts: u64) -> Self {
        let mut bits = [!0u64; BLOCKS];
        let bit = counter % 64;
        // Below and at `counter` in its block: seen; above: not yet.
        bits[Self::block(counter)] = if bit == 63 {
            !0
        } else {
            (1u64 << (bit + 1)) - 1
        };
        ReplayWindow {
            top: counter,
            bits,
            newest_ms: ts,
            stream_key: None,
        }
    }

    fn block(counter: u64) -> usize {
        ((counter / 64) % BLOCKS as u64) as usize
    }

    /// True if `counter` may be new (not seen, not too old).
    fn fresh(&self, counter: u64) -> bool {
        if counter > self.top {
            return true;
        }
        if self.top - counter >= REPLAY_WINDOW {
            return false;
        }
        self.bits[Self::block(counter)] & (1 << (counter % 64)) == 0
    }

    /// Marks `counter` seen (after its tag verified).
    fn mark(&mut self, counter: u64, ts: u64) {
        if counter > self.top {
            let (from, to) = (self.top / 64, counter / 64);
            for b in (from + 1)..=(to.min(from + BLOCKS as u64)) {
                self.bits[Self::block(b * 64)] = 0;
            }
            self.top = counter;
        }
        self.bits[Self::block(counter)] |= 1 << (counter % 64);
        self.newest_ms = self.newest_ms.max(ts);
    }
}

/// The drop reasons, in the order they are checked.
const REASONS: [&str; 5] = [
    "auth_unknown_key",
    "auth_bad_tag",
    "auth_replay",
    "auth_stale",
    "auth_missing",
];

/// What a received datagram turned out to be, once checked.
pub(crate) struct Opened {
    /// The decoded body, or why it did not decode.
    pub body: Result<wire::Body, DecodeError>,
    /// The key it verified with (`None`: it carried no trailer, or one not
    /// checked in `off` mode).
    pub key_id: Option<u32>,
}

/// A node's authentication state.
#[derive(Debug)]
pub(crate) struct Auth {
    cfg: AuthConfig,
    /// The stream's transmit counter: the last one sent to everyone.
    counter: u64,
    /// The last one sent to one node alone, from [`DIRECTED`] on.
    directed: u64,
    /// `cfg.wall_clock_ms` at `wall_at`.
    wall_ms: u64,
    /// This node's clock when it started, less `start_skew`: a stream
    /// first heard must have sent after it.
    floor_ms: u64,
    wall_at: Instant,
    /// By stream and path (true: directed, counters from [`DIRECTED`]).
    windows: HashMap<(u64, bool), ReplayWindow>,
    /// The body of an encrypted datagram, decrypted (one datagram at most,
    /// reused).
    scratch: Vec<u8>,
    /// The sending stream's XAES-256-GCM key (derived once per sending key).
    send_key: Option<StreamKey>,
    /// When each reason was last logged.
    logged: [Option<Instant>; REASONS.len()],
}

impl Auth {
    pub fn new(cfg: AuthConfig, now: Instant) -> Self {
        Auth {
            counter: 0,
            directed: DIRECTED,
            wall_ms: cfg.wall_clock_ms,
            floor_ms: cfg
                .wall_clock_ms
                .saturating_sub(cfg.start_skew.as_millis() as u64),
            wall_at: now,
            windows: HashMap::new(),
            scratch: Vec::new(),
            send_key: None,
            logged: [None; REASONS.len()],
            cfg,
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.cfg.mode
    }

    pub fn keyring(&self) -> &Keyring {
        &self.cfg.keyring
    }

    /// Replaces the keys (a reload). The mode stays.
    pub fn set_keyring(&mut self, keyring: Keyring) -> Result<(), String> {
        let mut cfg = self.cfg.clone();
        cfg.keyring = keyring;
        cfg.check()?;
        self.cfg = cfg;
        // Stream keys are kept by key id: a new secret whose id were an old
        // one's must not find the old one's keys.
        self.send_key = None;
        for w in self.windows.values_mut() {
            w.stream_key = None;
        }
        Ok(())
    }

    /// This node's clock now, ms since the Unix epoch.
    pub fn wall_ms(&self, now: Instant) -> u64 {
        self.wall_ms
            .saturating_add(now.saturating_duration_since(self.wall_at).as_millis() as u64)
    }

    pub fn set_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.wall_ms = unix_ms;
        self.wall_at = now;
    }

    /// Seals the datagram in `buf` (header of `header_len` bytes with
    /// `FLAG_AUTH` set, then its body) unless the mode is off; `directed`:
    /// it goes to one node alone, apart from the group's datagrams
    /// (counted from [`DIRECTED`]).
    pub fn seal(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        header_len: usize,
        stream: u64,
        directed: bool,
    ) {
        if self.cfg.mode == AuthMode::Off {
            return;
        }
        let Some(key) = self.cfg.keyring.sending() else {
            return;
        };
        let algorithm = if self.cfg.encrypt {
            Algorithm::Aes256Gcm
        } else {
            Algorithm::HmacSha256
        };
        if algorithm == Algorithm::Aes256Gcm
            && !self
                .send_key
                .as_ref()
                .is_some_and(|k| k.is_for(key.id(), stream))
        {
            self.send_key = Some(key.stream_key(stream));
        }
        let count = if directed {
            &mut self.directed
        } else {
            &mut self.counter
        };
        *count += 1;
        let counter = *count;
        let ts = self.wall_ms(now);
        key.seal_with(
            self.send_key.as_ref(),
            buf,
            header_len,
            stream,
            algorithm,
            ts,
            counter,
        );
    }

    /// Checks a received datagram whose header (`header_len` bytes) decoded
    /// as `header`, and decodes its body if it passes. `None`: dropped,
    /// counted in `stats` by reason.
    pub fn open(
        &mut self,
        now: Instant,
        header: &Header,
        header_len: usize,
        bytes: &[u8],
        stats: &mut Stats,
    ) -> Option<Opened> {
        if !header.authenticated() {
            // Require: never. Accept: not for a stream heard authenticated
            // (a forger would strip the trailer and speak for it).
            if self.cfg.mode == AuthMode::Require
                || (self.cfg.mode == AuthMode::Accept && self.heard_keyed(header.stream))
            {
                self.refuse(now, 4, header.stream, stats);
                return None;
            }
            return Some(Opened {
                body: wire::decode_body(&bytes[header_len..]),
                key_id: None,
            });
        }
        let (trailer, tag) = match Trailer::read(bytes, header_len) {
            Ok(t) => t,
            Err(AuthError::UnknownAlgorithm(_)) => {
                self.refuse(now, 0, header.stream, stats);
                return None;
            }
            Err(_) => {
                self.refuse(now, 1, header.stream, stats);
                return None;
            }
        };
        let body_end = bytes.len() - wire::TRAILER_LEN;
        if self.cfg.mode == AuthMode::Off {
            // No key here: a MAC'd datagram is taken as an unkeyed one
            // would be; an encrypted one cannot be read.
            if trailer.algorithm != Algorithm::HmacSha256 {
                self.refuse(now, 0, header.stream, stats);
                return None;
            }
            stats.auth_unverified += 1;
            return Some(Opened {
                body: wire::decode_body(&bytes[header_len..body_end]),
                key_id: None,
            });
        }
        // (1) a key we hold.
        let Some(key) = self.cfg.keyring.get(trailer.key_id) else {
            self.refuse(now, 0, header.stream, stats);
            return None;
        };
        // (2) the tag, in constant time. An XAES-256-GCM stream's key is
        // the one a window of it keeps, or derived here and kept only once
        // the datagram verified.
        let path = (header.stream, trailer.counter >= DIRECTED);
        let mut derived = None;
        let stream_key = match trailer.algorithm {
            Algorithm::Aes256Gcm => {
                let kept = [path.1, !path.1]
                    .into_iter()
                    .filter_map(|d| self.windows.get(&(header.stream, d)))
                    .filter_map(|w| w.stream_key.as_deref())
                    .find(|k| k.is_for(key.id(), header.stream));
                match kept {
                    Some(k) => Some(k),
                    // On the stack: boxed only if kept.
                    None => Some(&*derived.insert(key.stream_key(header.stream))),
                }
            }
            _ => None,
        };
        let verified = key
            .open_with(
                stream_key,
                bytes,
                header_len,
                header.stream,
                &trailer,
                &tag,
                &mut self.scratch,
            )
            .is_ok();
        if !verified {
            self.refuse(now, 1, header.stream, stats);
            return None;
        }
        // (3) the replay window; (4) freshness for a stream not heard yet.
        let wall = self.wall_ms(now);
        let max_age = self.cfg.max_age.as_millis() as u64;
        match self.windows.get_mut(&path) {
            Some(w) => {
                if !w.fresh(trailer.counter) {
                    self.refuse(now, 2, header.stream, stats);
                    return None;
                }
                w.mark(trailer.counter, trailer.timestamp_ms);
                if let Some(k) = derived {
                    w.stream_key = Some(Box::new(k));
                }
            }
            None => {
                let ts = trailer.timestamp_ms;
                if wall.abs_diff(ts) > max_age || ts < self.floor_ms {
                    let skew = ts as i64 - wall as i64;
                    stats.auth_stale_skew_ms = stats.auth_stale_skew_ms.max(skew.unsigned_abs());
                    if ts < self.floor_ms && wall.abs_diff(ts) <= max_age {
                        tracing::debug!(
                            stream = format_args!("{:016x}", header.stream),
                            skew_ms = skew,
                            "sent before this node started: not taken (a replay, or a clock behind)"
                        );
                    }
                    self.refuse_skewed(now, header.stream, skew, stats);
                    return None;
                }
                if self.windows.len() >= self.cfg.max_windows {
                    self.make_room(wall, stats);
                }
                let mut w = ReplayWindow::starting_at(trailer.counter, trailer.timestamp_ms);
                w.stream_key = derived.map(Box::new);
                self.windows.insert(path, w);
            }
        }
        stats.auth_verified += 1;
        if self.cfg.encrypt && trailer.algorithm == Algorithm::HmacSha256 {
            // A member that does not encrypt: its bodies travel in the
            // clear (a configuration to fix, counted).
            stats.auth_cleartext += 1;
        }
        // The body's bytes are the datagram's (MAC) or the scratch
        // buffer's (decrypted): decoded into owned values either way.
        let body = match trailer.algorithm {
            Algorithm::HmacSha256 => wire::decode_body(&bytes[header_len..body_end]),
            Algorithm::Aes256Gcm => wire::decode_body(&self.scratch),
        };
        Some(Opened {
            body,
            key_id: Some(trailer.key_id),
        })
    }

    /// Whether a datagram of `stream` verified lately (a window of it is
    /// held).
    fn heard_keyed(&self, stream: u64) -> bool {
        self.windows.contains_key(&(stream, false)) || self.windows.contains_key(&(stream, true))
    }

    /// Forgets the windows of streams whose newest datagram is older than
    /// `max_age` (a replay of them fails the freshness check).
    pub fn sweep(&mut self, now: Instant) {
        let wall = self.wall_ms(now);
        let max_age = self.cfg.max_age.as_millis() as u64;
        self.windows
            .retain(|_, w| wall.saturating_sub(w.newest_ms) <= max_age);
    }

    /// Room for one more window: the stale ones go, or else the stalest.
    fn make_room(&mut self, wall: u64, stats: &mut Stats) {
        let max_age = self.cfg.max_age.as_millis() as u64;
        self.windows
            .retain(|_, w| wall.saturating_sub(w.newest_ms) <= max_age);
        if self.windows.len() < self.cfg.max_windows {
            return;
        }
        if let Some((&path, _)) = self.windows.iter().min_by_key(|(_, w)| w.newest_ms) {
            self.windows.remove(&path);
            stats.auth_windows_evicted += 1;
        }
    }

    /// Counts a drop by reason, and logs it at most once a second.
    fn refuse(&mut self, now: Instant, reason: usize, stream: u64, stats: &mut Stats) {
        let kind = REASONS[reason];
        stats.drop(kind);
        if self.log_due(now, reason) {
            tracing::warn!(
                reason = kind,
                stream = format_args!("{stream:016x}"),
                total = stats.dropped.get(kind).copied().unwrap_or(0),
                "dropped a datagram that failed authentication (logged at most once a second per reason)"
            );
        }
    }

    /// [`Auth::refuse`] for `auth_stale`, with the sender's clock skew.
    fn refuse_skewed(&mut self, now: Instant, stream: u64, skew_ms: i64, stats: &mut Stats) {
        stats.drop(REASONS[3]);
        if self.log_due(now, 3) {
            tracing::warn!(
                reason = REASONS[3],
                stream = format_args!("{stream:016x}"),
                skew_ms,
                total = stats.dropped.get(REASONS[3]).copied().unwrap_or(0),
                "dropped a datagram of a stream not heard yet: sent too long ago, or the sender's clock is off \
                 (clocks must agree within max_age; logged at most once a second)"
            );
        }
    }

    fn log_due(&mut self, now: Instant, reason: usize) -> bool {
        let due = self.logged[reason]
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
        if due {
            self.logged[reason] = Some(now);
        }
        due
    }

    /// Replay windows held.
    pub fn windows(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a window holds at most: the bitmap, and the stream's
    /// XAES-256-GCM key once it sent encrypted (boxed: `AuthConfig::max_windows`
    /// states the bound).
    #[test]
    fn a_window_and_its_stream_key_stay_within_the_documented_bound() {
        let w = std::mem::size_of::<ReplayWindow>();
        let k = std::mem::size_of::<StreamKey>();
        assert!(w <= 192 && k <= 640, "window {w} B, stream key {k} B");
    }

    #[test]
    fn window_judges_counters_exactly_within_1024() {
        let mut w = ReplayWindow::starting_at(5000, 0);
        // Everything at or below the first counter counts as seen.
        for c in [1, 4000, 4999, 5000] {
            assert!(!w.fresh(c), "{c}");
        }
        assert!(w.fresh(5001));
        // Out of order within the window: each once.
        for c in [5010, 5003, 5002, 5100, 5050] {
            assert!(w.fresh(c), "{c}");
            w.mark(c, 0);
            assert!(!w.fresh(c), "{c} twice");
        }
        assert!(w.fresh(5001) && w.fresh(5004) && w.fresh(5099));
        // A jump past the window: the old ones are too old, the skipped
        // ones near the top are still new.
        w.mark(9000, 0);
        assert!(!w.fresh(9000 - REPLAY_WINDOW));
        assert!(w.fresh(9000 - REPLAY_WINDOW + 1));
        assert!(w.fresh(8999));
        assert!(!w.fresh(5100));
        // Block boundaries.
        let mut w = ReplayWindow::starting_at(63, 0);
        assert!(w.fresh(64) && !w.fresh(63) && !w.fresh(0));
        w.mark(64, 0);
        assert!(!w.fresh(64) && w.fresh(65) && w.fresh(127) && w.fresh(128));
        w.mark(64 * 40 + 3, 0);
        for c in 64 * 40 + 4..64 * 41 {
            assert!(w.fresh(c), "{c}");
        }
        assert!(w.fresh(64 * 40 + 2) && !w.fresh(64 * 40 + 3));
    }

    #[test]
    fn window_matches_a_set_model_on_random_counters() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for _ in 0..200 {
            let start: u64 = rng.gen_range(1..10_000);
            let mut w = ReplayWindow::starting_at(start, 0);
            let mut seen = std::collections::BTreeSet::new();
            let mut top = start;
            for _ in 0..2000 {
                let c = if rng.gen_bool(0.5) {
                    top.saturating_sub(rng.gen_range(0..1200)).max(1)
                } else {
                    top + rng.gen_range(1..300)
                };
                let model = c > start && !seen.contains(&c) && (c > top || top - c < REPLAY_WINDOW);
                assert_eq!(w.fresh(c), model, "counter {c}, top {top}");
                if model {
                    w.mark(c, 0);
                    seen.insert(c);
                    top = top.max(c);
                }
            }
        }
    }
}
