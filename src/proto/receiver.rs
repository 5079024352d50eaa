//! The receiving state of one remote stream.
//!
//! Delivers every event the moment it arrives (invalidations are idempotent
//! and commute, so order never delays one), drops duplicates, and tracks
//! what is missing as gaps: from a seq above the known end, or from a
//! heartbeat or `Goodbye` announcing a `next_seq` above it (tail loss).
//!
//! A gap's life: `open` (waits the reorder window plus a random back-off,
//! both learned: see [`Learned`]) → `Nak` (multicast; another receiver's
//! `Nak` or a `Repair` overheard for it postpones ours: suppression; if
//! that repair went to the other receiver alone, ours follows a retry
//! interval later, and the sender then repairs to everyone) → filled by a
//! `Repair`, or, when repair is impossible — `Unavailable`, the sender's
//! heartbeat says it is older than what it holds, retries exhausted, too
//! old — one `Reset` naming it.
//!
//! # Claims and evidence
//!
//! Without authentication any datagram may be forged, so what a receiver
//! knows of a stream's position is of two kinds. *Claims* — a heartbeat, a
//! `Goodbye`, an `AckRequest`, a member's report, an `Unavailable` — say
//! that seqs exist (or are gone) without showing them; *evidence* — an
//! event that arrived — shows that every seq below it was published. A
//! `Reset` only covers events published before it, so a gap given up while
//! only a claim said it existed (a *doubtful* give-up) may have been of
//! events not yet published: a forged far-future position, answered by
//! nobody, would otherwise make the receiver give up the stream's future
//! and never notice its losses. So:
//!
//! - Evidence above a doubtful give-up opens it again as a gap (its events
//!   may have been published after the `Reset`): repaired, or Reset again.
//!   Evidence inside one that runs to the known end shows the claim behind
//!   it was false: the receiver forgets it and follows the stream from
//!   the evidence on ("rewinds"), so that gap detection works again.
//! - A later claim of the stream itself above a doubtful give-up asks for
//!   it once more (once: given up again, it is covered), unless the claim
//!   is a heartbeat whose `oldest` is above it (the sender no longer holds
//!   it: it was published long before).
//! - A claim of the stream itself below what the receiver has known of it
//!   for longer than `contradiction_window` (no reordering delays a
//!   datagram that long) contradicts it: the receiver rewinds to the claim.
//! - A "duplicate" whose content differs from the event delivered at that
//!   seq is delivered: a forged event may have taken the seq first, and the
//!   forger cannot know a future event's content. A receiver keeps, for the
//!   last [`RECENT_RUNS`] runs it delivered from (and those ahead of the
//!   stream until it passes them), their seqs and a 64-bit fingerprint of
//!   their bytes; a `Data` datagram that is not the very run delivered at a
//!   seq conflicts with it (a sender sends each event in `Data` once, so in
//!   a run without forgery a duplicate `Data` is always the same run).
//!   Repairs are packed anew, with the sender's bytes of each event, so
//!   of a repair that delivered events a receiver keeps one record, over
//!   the seqs from the first it delivered to the last, with each event's
//!   fingerprint (the last [`REPAIRED_PRINTS`]); a seq between that it
//!   says nothing of keeps the record it had (for a repair arriving there,
//!   also once the marker left the store). A `Data` or a repair
//!   arriving at a seq last delivered from a repair is compared with that
//!   event alone (a `Data` held up past its repair is a duplicate, not a
//!   conflict); when that print has left the store, a `Data` is delivered
//!   again and a repair taken for a duplicate (a partition's catch-up
//!   brings more repairs of one seq than the store holds). A repair
//!   arriving at a seq last delivered from `Data` is compared over that
//!   run's seqs when it holds the whole run. (A repair that holds only
//!   part of it, or meets a print gone, is taken for a duplicate: a real
//!   event that reaches a receiver only in such a repair, its `Data` lost,
//!   after a forged event took its seq, is not told apart; nor is one
//!   whose forged stand-in's record was pushed out by [`RECENT_RUNS`]
//!   later runs.)
//! - A `Goodbye` retires a stream only once it has stood a heartbeat
//!   interval and a contradiction window with nothing of the stream
//!   contradicting it: a live stream sends a heartbeat or an event within
//!   that interval, and a heartbeat heard a reorder window or more after
//!   the `Goodbye` shows it forged (a stream that said `Goodbye` sends
//!   none), as events past it do. (A `Goodbye` forged for a publisher that
//!   crashed cannot be told from its own: see
//!   [`crate::testkit::Record::check`], exception 5.)
//!
//! Each of these costs at most a `Nak`, a duplicate delivery or a `Reset`;
//! none costs a silent loss (what cannot be defended without keys is
//! stated on [`crate::testkit::Record::check`], and, for the records of
//! runs, above: those cases are not among the checker's exceptions, and no
//! test builds them).
//!
//! Pure state machine: no clock, no I/O; the node passes `now` and a seeded
//! RNG in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::Rng;

use crate::proto::config::CoreConfig;
use crate::proto::delivery::{Delivery, Output, ResetReason};
use crate::proto::ranges::{Gap, GapSet, RangeSet};
use crate::proto::stats::Stats;
use crate::wire::{self, Body, Events, SeqRange};

/// Runs of events delivered lately whose seqs and fingerprint a stream
/// keeps, so that a "duplicate" whose content differs is recognised (about
/// 1.3 KiB per stream that carried events).
pub const RECENT_RUNS: usize = 32;

/// Events of repairs lately whose fingerprints a stream keeps, one by one
/// (a repair is packed anew, so its run's fingerprint says nothing of a
/// part of it): as many as one repair can carry, 8 KiB at most, per stream
/// that was repaired.
const REPAIRED_PRINTS: usize = crate::wire::MAX_EVENTS;

/// In [`Seen::repaired`]: a seq inside a repair's span that the repair
/// neither delivered nor compared (it says nothing of it).
const NOT_COVERED: u64 = u64::MAX;

/// A print of one event, as [`Seen::repaired`] keeps it (never
/// [`NOT_COVERED`]).
fn event_print(bytes: &[u8]) -> u64 {
    fingerprint(bytes).min(NOT_COVERED - 1)
}

/// What a repair's span says of one seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repaired {
    /// The event's print.
    Known(u64),
    /// Nothing: the repair neither delivered nor compared it.
    NotCovered,
    /// Its print left the store: unknown.
    Gone,
}

/// Doubtful give-ups kept per stream (over-approximated past it).
const MAX_DOUBTFUL: usize = 64;

/// Where a receiver's outputs go, and what it needs from its node.
pub struct Sink<'a> {
    /// Protocol settings.
    pub cfg: &'a CoreConfig,
    /// Deliveries for the application.
    pub deliveries: &'a mut VecDeque<Output>,
    /// Datagrams to send (`Nak`s).
    pub out: &'a mut VecDeque<Body>,
    /// Counters.
    pub stats: &'a mut Stats,
    /// The node's seeded RNG (back-off).
    pub rng: &'a mut SmallRng,
    /// What the node learned of its network (NAK timing).
    pub learned: &'a mut Learned,
}

/// What a receiver learned of one stream's repairs: 32 bytes per stream
/// followed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamRtt {
    /// The stream's own estimate, once sampled.
    est: Option<Rtt>,
    /// The wait doubles this many times (rounds of gaps asked for again
    /// since the last sample; at most [`MAX_RTT_SHIFT`]).
    shift: u8,
    /// When the wait last doubled: a gap opened before then was asked for
    /// under the shorter wait, and doubles it no further.
    doubled_at: Option<Instant>,
}

/// The most a stream's wait doubles without a sample (16 times the
/// estimate, within `nak_retry`).
const MAX_RTT_SHIFT: u8 = 4;

/// A smoothed round trip and its variation (RFC 6298), in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rtt {
    srtt_us: u32,
    var_us: u32,
}

impl Rtt {
    /// Takes a sample into `est` (the first one sets it).
    fn sample(est: &mut Option<Rtt>, rtt: Duration) {
        let us = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX);
        *est = Some(match *est {
            None => Rtt {
                srtt_us: us,
                var_us: us / 2,
            },
            Some(Rtt { srtt_us, var_us }) => {
                let err = srtt_us.abs_diff(us);
                Rtt {
                    srtt_us: srtt_us - srtt_us / 8 + us / 8,
                    var_us: var_us - var_us / 4 + err / 4,
                }
            }
        });
    }

    /// `srtt + 4·rttvar`.
    fn timeout(self) -> Duration {
        Duration::from_micros(u64::from(self.srtt_us) + 4 * u64::from(self.var_us))
    }
}

/// The least a learned retry waits (forged instant repairs cannot make
/// a receiver ask in a tight loop).
const MIN_RETRY: Duration = Duration::from_millis(1);

/// How long a reordering sample counts: the reorder window in force is
/// learned from the samples of the last one to two epochs.
const REORDER_EPOCH: Duration = Duration::from_secs(30);

/// What a node learns of its network, for the timing of its `Nak`s (one
/// for all the streams it follows; see [`CoreConfig::learn_timing`]):
///
/// - **Reordering actually seen.** A gap filled by fresh `Data` (not a
///   repair) was reordering, not loss: how long it was open is a sample.
///   The reorder window in force is twice the longest sample of the last
///   30 to 60 s, at most `reorder_window`: zero on a LAN that never
///   reorders, so that a loss is asked for as soon as it shows.
/// - **The round trip of a repair.** From a `Nak` (or one overheard for
///   the gap) to the repair that fills it: smoothed as TCP does its RTT
///   (RFC 6298), it sets when to ask again: `srtt + 4·rttvar`, at least
///   twice `repair_linger` (the sender does not repeat a repair within
///   it) and 1 ms, at most `nak_retry`. Each stream keeps its own estimate
///   ([`StreamRtt`]: a busy or distant sender answers later than the rest);
///   a stream not sampled yet takes the node's, over every stream. As in
///   TCP (Karn), a gap asked for again gives no sample (its repair may
///   answer either ask), but doubles the stream's wait until one does: a
///   stream whose round trip is longer than the node's would otherwise be
///   asked again before each repair and never sampled. It doubles once
///   per round: only for a gap opened after the last doubling (a burst
///   of losses asked for again together doubles it once). A stream whose
///   repairs always need a second ask (a direct path that drops them,
///   until the sender sends them to the group) stays at 16 times, within
///   `nak_retry`: no slower than without learning.
/// - **How many may share a loss.** The members known other than this
///   node and the stream's sender (live, left or dead until forgotten: a
///   forged `Goodbye` cannot lower it): alone, a receiver asks at once;
///   with more, its back-off grows with their logarithm, up to
///   `nak_backoff` at about a thousand (suppression needs a spread only
///   when many lose the same datagram).
///
/// Samples move the timing only between these floors and the configured
/// values: without keys, forged datagrams can make a receiver ask as soon
/// as a LAN allows, never faster.
#[derive(Debug, Clone)]
pub struct Learned {
    on: bool,
    /// Longest reordering of the current epoch and of the previous one.
    reorder: [Duration; 2],
    epoch_at: Instant,
    /// Smoothed round trip over every stream, once sampled.
    srtt: Option<Rtt>,
    /// Live members other than this node, as of the last membership tick
    /// (`None` before the first: the configured back-off in full).
    members: Option<usize>,
}

impl Learned {
    /// Nothing learned yet, at `now`; `on`: [`CoreConfig::learn_timing`].
    pub fn new(on: bool, now: Instant) -> Self {
        Learned {
            on,
            reorder: [Duration::ZERO; 2],
            epoch_at: now,
            srtt: None,
            members: None,
        }
    }

    fn rotate(&mut self, now: Instant) {
        if now.saturating_duration_since(self.epoch_at) >= REORDER_EPOCH {
            let idle = now.saturating_duration_since(self.epoch_at) >= REORDER_EPOCH * 2;
            self.reorder = [
                Duration::ZERO,
                if idle {
                    Duration::ZERO
                } else {
                    self.reorder[0]
                },
            ];
            self.epoch_at = now;
        }
    }

    /// A gap open for `open` was filled by fresh `Data`.
    pub fn reordered(&mut self, now: Instant, open: Duration) {
        self.rotate(now);
        self.reorder[0] = self.reorder[0].max(open);
    }

    /// A gap this node asked for once, `rtt` ago, was repaired by a stream
    /// whose own estimate is `stream`.
    pub fn repaired(&mut self, rtt: Duration, stream: &mut StreamRtt) {
        Rtt::sample(&mut self.srtt, rtt);
        Rtt::sample(&mut stream.est, rtt);
        stream.shift = 0;
        stream.doubled_at = None;
    }

    /// A gap opened at `opened`, which this node asked for more than once,
    /// was repaired at `now`: no sample, and the stream's wait doubles
    /// until one comes (Karn), once per round (see [`Learned`]). True if
    /// it doubled (false: the gap was of a round already counted).
    pub fn repaired_after_asking_again(
        &mut self,
        opened: Instant,
        now: Instant,
        stream: &mut StreamRtt,
    ) -> bool {
        let new_round = stream.doubled_at.is_none_or(|at| opened >= at);
        if new_round {
            stream.shift = (stream.shift + 1).min(MAX_RTT_SHIFT);
            stream.doubled_at = Some(now);
        }
        new_round
    }

    /// The number of members known other than this node.
    pub fn set_members(&mut self, n: usize) {
        self.members = Some(n);
    }

    /// How long a new gap waits for reordering.
    pub fn reorder_window(&mut self, now: Instant, cfg: &CoreConfig) -> Duration {
        if !self.on {
            return cfg.reorder_window;
        }
        self.rotate(now);
        (self.reorder[0].max(self.reorder[1]) * 2).min(cfg.reorder_window)
    }

    /// How long to wait for a repair before asking again (first try), of
    /// a stream whose own estimate is `stream`.
    pub fn retry(&self, cfg: &CoreConfig, stream: StreamRtt) -> Duration {
        match stream.est.or(self.srtt) {
            Some(rtt) if self.on => rtt
                .timeout()
                .max(cfg.repair_linger.saturating_mul(2))
                .max(MIN_RETRY)
                .saturating_mul(1 << stream.shift)
                .min(cfg.nak_retry),
            _ => cfg.nak_retry,
        }
    }

    /// The most a `Nak` is held back for suppression.
    pub fn backoff(&self, cfg: &CoreConfig) -> Duration {
        match self.members {
            Some(n) if self.on => {
                // Others who may share the loss: all but the sender.
                let others = n.saturating_sub(1);
                if others == 0 {
                    Duration::ZERO
                } else {
                    let scale = ((others + 1) as f64).log2() / 10.0;
                    cfg.nak_backoff.mul_f64(scale.min(1.0))
                }
            }
            _ => cfg.nak_backoff,
        }
    }
}

impl Sink<'_> {
    /// Delivers a `Reset`, logged at `warn`: it is what an operator needs
    /// to see (the application clears its whole cache).
    pub fn reset(&mut self, reason: ResetReason) {
        log_reset(&reason);
        self.stats.reset(reason.kind());
        self.deliveries
            .push_back(Output::One(Delivery::Reset { reason }));
    }

    fn backoff(&mut self) -> Duration {
        let max = self.learned.backoff(self.cfg).as_micros() as u64;
        Duration::from_micros(if max == 0 {
            0
        } else {
            self.rng.gen_range(0..=max)
        })
    }

    /// When a gap opened at `opened` that just got a `Nak` (sent or
    /// overheard) should be looked at again: the retry interval (learned,
    /// see [`Learned::retry`]) doubling per try, up to 16 times
    /// `nak_retry`, plus back-off; never past its maximum age.
    fn retry_due(&mut self, now: Instant, opened: Instant, tries: u32, rtt: StreamRtt) -> Instant {
        let exp = tries.saturating_sub(1).min(16);
        let wait = (self
            .learned
            .retry(self.cfg, rtt)
            .saturating_mul(1u32 << exp))
        .min(self.cfg.nak_retry.saturating_mul(16));
        let due = now + wait + self.backoff();
        due.min(opened + self.cfg.max_gap_age).max(now)
    }
}

/// How a batch of events reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Fresh `Data`.
    Data,
    /// A `Repair` (ours or another receiver's).
    Repair,
}

/// Receiving state of one remote stream.
#[derive(Debug)]
pub struct StreamReceiver {
    stream: u64,
    node: Option<Arc<str>>,
    /// Seqs below this were before our starting point and are ignored.
    base: u64,
    /// One past the highest seq known to exist (by an event or a claim).
    known_end: u64,
    gaps: GapSet,
    last_heard: Instant,
    /// `next_seq` of the stream's `Goodbye`, once heard.
    ending: Option<u64>,
    /// When the stream may be retired after its `Goodbye` (once nothing
    /// is missing): a heartbeat interval and a contradiction window after
    /// it, so that a stream still alive (the `Goodbye` forged) shows it
    /// first, by a heartbeat or an event.
    finish_at: Option<Instant>,
    /// When that `Goodbye` was first heard (a heartbeat a reorder window
    /// later shows it forged).
    goodbye_at: Option<Instant>,
    /// Ranges given up with a `Reset`; at most 256 (over-approximated
    /// past it: a seq wrongly in it is at worst delivered twice).
    given_up: RangeSet,
    /// The part of `given_up` given up while only a claim said it existed
    /// (at or above `data_end` then): see the module docs.
    doubtful: RangeSet,
    /// One past the highest seq of any event received (the evidence).
    data_end: u64,
    /// `known_end` over the last contradiction window.
    frontier: Frontier,
    /// The runs delivered lately (see [`RECENT_RUNS`]), once the stream
    /// carried events.
    seen: Option<Box<Seen>>,
    /// False while only datagrams that do not tell the stream's position
    /// (`Nak`, `Repair`, `Unavailable`) were heard from it.
    placed: bool,
    /// One past the highest seq given up with a `Reset` (0: none).
    reset_end: u64,
    /// When the stream's position was last learned (data, a heartbeat, a
    /// `Goodbye`, an `AckRequest`, a member's report).
    position_at: Instant,
    /// When this node last had proof that it held everything the stream
    /// had sent (no gap, at a position learned then).
    proven_at: Instant,
    /// The gaps lately filled by repairs: seqs and when each opened (at
    /// most [`REPAIRED_KEPT`]). Fresh `Data` of one arriving after its
    /// repair was reordering, not loss, that outlasted the round trip: a
    /// sample for [`Learned`], which the fill itself never gives then.
    repaired_lately: VecDeque<(u64, u64, Instant)>,
    /// The round trip of this stream's repairs.
    rtt: StreamRtt,
}

/// Bound of `StreamReceiver::repaired_lately`.
const REPAIRED_KEPT: usize = 16;

/// A stream's known end over the last contradiction window: a few marks at
/// least a quarter window apart and the latest value, each with when it
/// was reached, so that a claim can be compared with what was known a
/// window ago. Values only grow, except when a rewind clamps them all.
#[derive(Debug, Clone)]
struct Frontier {
    /// Oldest first.
    marks: [(u64, Instant); 5],
    latest: (u64, Instant),
    /// When `latest` is to become a mark (a quarter window after the
    /// newest mark).
    commit_at: Instant,
}

impl Frontier {
    fn new(end: u64, now: Instant) -> Self {
        Frontier {
            marks: [(end, now); 5],
            latest: (end, now),
            commit_at: now,
        }
    }

    /// The known end became `end` at `now`.
    #[inline]
    fn advance(&mut self, end: u64, now: Instant, window: Duration) {
        if self.latest.1 >= self.commit_at {
            self.marks.rotate_left(1);
            self.marks[4] = self.latest;
            self.commit_at = self.latest.1 + window / 4;
        }
        self.latest = (end, now);
    }

    /// The known end as of `window` before `now` (a lower bound of it).
    fn settled(&self, now: Instant, window: Duration) -> u64 {
        let Some(then) = now.checked_sub(window) else {
            return self.marks[0].0;
        };
        if self.latest.1 <= then {
            return self.latest.0;
        }
        self.marks
            .iter()
            .rev()
            .find(|(_, t)| *t <= then)
            .map_or(0, |(v, _)| *v)
    }

    /// The highest known end recorded that is at most `end`: where the
    /// stream was before the known end went past `end` (`None` if that was
    /// before every mark).
    fn before(&self, end: u64) -> Option<u64> {
        (self.marks.iter().chain(std::iter::once(&self.latest)))
            .map(|(v, _)| *v)
            .filter(|v| *v <= end)
            .max()
            .filter(|_| self.marks[0].0 <= end)
    }

    /// A rewind: nothing at or above `end` is known any more.
    fn clamp(&mut self, end: u64) {
        for m in self
            .marks
            .iter_mut()
            .chain(std::iter::once(&mut self.latest))
        {
            m.0 = m.0.min(end);
        }
    }
}

/// A run delivered from: its seqs and the fingerprint of its bytes; or,
/// for a repair, the span of the seqs it delivered or compared, whose
/// events' prints are kept one by one ([`Seen::repaired`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RunPrint {
    first: u64,
    /// 0: an empty slot.
    count: u64,
    /// The run's fingerprint; for a repair's span, the index (counted
    /// since the stream's first, [`Seen::pushed`]) of its first event's
    /// print.
    print: u64,
    /// A repair's span.
    repair: bool,
}

impl RunPrint {
    fn of(first: u64, events: &Events) -> RunPrint {
        RunPrint {
            first,
            count: events.len() as u64,
            print: fingerprint(events.as_bytes()),
            repair: false,
        }
    }

    fn holds(&self, seq: u64) -> bool {
        seq >= self.first && seq - self.first < self.count
    }
}

/// The runs delivered from lately (see [`RECENT_RUNS`]), each with when
/// it was recorded.
#[derive(Debug)]
struct Seen {
    runs: [(RunPrint, u64); RECENT_RUNS],
    /// The slot written next (the oldest, in a stream's order).
    cursor: usize,
    /// Runs recorded so far.
    stamp: u64,
    /// The print of each seq of the repairs' spans recorded lately (the
    /// last [`REPAIRED_PRINTS`], oldest first), or [`NOT_COVERED`].
    repaired: VecDeque<u64>,
    /// Prints pushed to `repaired` so far.
    pushed: u64,
}

impl Seen {
    fn new() -> Box<Seen> {
        Box::new(Seen {
            runs: [(RunPrint::default(), 0); RECENT_RUNS],
            cursor: 0,
            stamp: 0,
            repaired: VecDeque::new(),
            pushed: 0,
        })
    }

    /// Records a repair that delivered events: `known`, the seqs and
    /// prints of those it delivered or compared equal, in seq order. One
    /// span, from the first to the last of them; the seqs between that it
    /// says nothing of (duplicates not compared) are [`NOT_COVERED`], so
    /// that the record they had stays theirs ([`Seen::last_at`]).
    fn record_repair(&mut self, known: &[(u64, u64)]) {
        let (Some(&(first, _)), Some(&(last, _))) = (known.first(), known.last()) else {
            return;
        };
        // Within one datagram's seqs: at most `MAX_EVENTS`.
        let end = last + 1;
        let run = RunPrint {
            first,
            count: end - first,
            print: self.pushed,
            repair: true,
        };
        let mut next = known.iter().peekable();
        for q in first..end {
            let print = next
                .next_if(|(d, _)| *d == q)
                .map_or(NOT_COVERED, |(_, p)| *p);
            if self.repaired.len() == REPAIRED_PRINTS {
                self.repaired.pop_front();
            }
            self.repaired.push_back(print);
            self.pushed += 1;
        }
        self.record(run);
    }

    /// What the repair's span `r` says of `seq`.
    fn repaired_at(&self, r: &RunPrint, seq: u64) -> Repaired {
        let oldest = self.pushed - self.repaired.len() as u64;
        let print = (seq.checked_sub(r.first))
            .and_then(|d| r.print.checked_add(d))
            .and_then(|at| at.checked_sub(oldest))
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.repaired.get(i).copied());
        match print {
            None => Repaired::Gone,
            Some(NOT_COVERED) => Repaired::NotCovered,
            Some(p) => Repaired::Known(p),
        }
    }

    /// True if the event at `seq` was last delivered from a run known, and
    /// `event`, of the `Data` run `run`, is not the same: the run is not
    /// that very run, or, when it was a repair's (packed anew), the event's
    /// bytes differ from the repaired event's (compared event by event; one
    /// whose print is not kept conflicts: delivered twice rather than taken
    /// for a duplicate unchecked).
    fn data_conflicts(&self, seq: u64, run: &RunPrint, event: &[u8]) -> bool {
        match self.last_at(seq) {
            None => false,
            Some(r) if r.repair => match self.repaired_at(r, seq) {
                Repaired::Known(p) => p != event_print(event),
                Repaired::NotCovered | Repaired::Gone => true,
            },
            Some(r) => r != run,
        }
    }

    /// Records `run`. The slot taken is the oldest, unless it holds a run
    /// ahead of this one (one that came before the stream reached it): that
    /// is kept until the stream passes it.
    #[inline]
    fn record(&mut self, run: RunPrint) {
        self.stamp += 1;
        for _ in 0..RECENT_RUNS {
            let i = self.cursor;
            self.cursor = (i + 1) % RECENT_RUNS;
            let (old, _) = self.runs[i];
            if old.count == 0 || old.first + old.count <= run.first {
                self.runs[i] = (run, self.stamp);
                return;
            }
        }
        let i = self.cursor;
        self.cursor = (i + 1) % RECENT_RUNS;
        self.runs[i] = (run, self.stamp);
    }

    /// The run last delivered from at `seq`, if known (a repair's span
    /// that says nothing of `seq` does not count).
    fn last_at(&self, seq: u64) -> Option<&RunPrint> {
        self.newest_at(seq, |a| a != Repaired::NotCovered)
    }

    /// The newest run at `seq` that is a `Data` run, or a repair's span
    /// whose word on `seq` passes `keep`.
    fn newest_at(&self, seq: u64, keep: impl Fn(Repaired) -> bool) -> Option<&RunPrint> {
        (self.runs.iter())
            .filter(|(r, _)| r.holds(seq) && (!r.repair || keep(self.repaired_at(r, seq))))
            .max_by_key(|(_, stamp)| *stamp)
            .map(|(r, _)| r)
    }

    /// Compares the repair's `event` at `seq` with the run last delivered
    /// from there: `Some(true)` if they differ, `Some(false)` if they are
    /// the same, `None` if they cannot be compared (taken for a
    /// duplicate). Event by event when that run was a repair's (not when
    /// its print left the store); else when the repair `events` (from
    /// `first_seq`) holds all of the run's seqs, over them (a repair
    /// carries the sender's bytes of each event, as its `Data` did, but
    /// packed anew: only a whole run can be compared). `compared` caches
    /// the answer for the run last compared.
    fn repair_conflicts(
        &self,
        seq: u64,
        first_seq: u64,
        events: &Events,
        event: &[u8],
        compared: &mut Option<(RunPrint, Option<bool>)>,
    ) -> Option<bool> {
        // A repair's span whose print of `seq` is gone (which may have
        // been a seq it said nothing of) gives way to the run before it;
        // none: a duplicate (repairs of one seq often come several times).
        let r = self.newest_at(seq, |a| matches!(a, Repaired::Known(_)))?;
        if r.repair {
            return match self.repaired_at(r, seq) {
                Repaired::Known(p) => Some(p != event_print(event)),
                Repaired::NotCovered | Repaired::Gone => None,
            };
        }
        if let Some((c, answer)) = *compared {
            if c == *r {
                return answer;
            }
        }
        let end = r.first + r.count;
        let answer = (r.first >= first_seq && end <= first_seq + events.len() as u64)
            .then(|| span_print(events, first_seq, r.first, end))
            .flatten()
            .map(|p| p != r.print);
        *compared = Some((*r, answer));
        answer
    }
}

/// The fingerprint of the events of seqs `from..to` of `events` (from
/// `first_seq`), as [`RunPrint::of`] takes it of a run of just those.
fn span_print(events: &Events, first_seq: u64, from: u64, to: u64) -> Option<u64> {
    let (mut start, mut at) = (0, 0);
    for (seq, e) in (first_seq..).zip(events.iter()) {
        if seq == from {
            start = at;
        }
        at += e.as_bytes().len();
        if seq + 1 == to {
            return events.as_bytes().get(start..at).map(fingerprint);
        }
    }
    None
}

/// A 64-bit fingerprint of a run's bytes (not cryptographic: a forger
/// cannot know a future event's content to match it, and matching a past
/// one only gets its run dropped as a duplicate).
///
/// Four independent lanes of 8 bytes, so that the multiplications of a
/// long run overlap (one chain would make a 1 KiB run cost about a
/// microsecond's worth of latency).
#[inline]
fn fingerprint(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    #[inline]
    fn mix(h: u64, w: u64) -> u64 {
        (h.rotate_left(5) ^ w).wrapping_mul(K)
    }
    #[inline]
    fn word(b: &[u8]) -> u64 {
        b.try_into().map_or(0, u64::from_le_bytes)
    }
    let n = bytes.len();
    let mut lanes = [n as u64, 1, 2, 3];
    let mut blocks = bytes.chunks_exact(32);
    for b in &mut blocks {
        lanes[0] = mix(lanes[0], word(&b[0..8]));
        lanes[1] = mix(lanes[1], word(&b[8..16]));
        lanes[2] = mix(lanes[2], word(&b[16..24]));
        lanes[3] = mix(lanes[3], word(&b[24..32]));
    }
    let rest = blocks.remainder();
    let mut words = rest.chunks_exact(8);
    for (i, w) in (&mut words).enumerate() {
        lanes[i] = mix(lanes[i], word(w));
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut w = 0u64;
        for (i, &b) in tail.iter().enumerate() {
            w |= u64::from(b) << (8 * i);
        }
        lanes[3] = mix(lanes[3], w);
    }
    let h = mix(mix(mix(lanes[0], lanes[1]), lanes[2]), lanes[3]);
    h ^ (h >> 29)
}

impl StreamReceiver {
    /// Starts following `stream` at seq `start`: nothing below it is
    /// expected. `None`: the position is not known yet; until
    /// [`StreamReceiver::place`] says otherwise, it is followed from seq 1.
    pub fn new(stream: u64, start: Option<u64>, now: Instant) -> Self {
        let base = start.unwrap_or(1);
        StreamReceiver {
            stream,
            node: None,
            base,
            known_end: base,
            gaps: GapSet::new(),
            last_heard: now,
            ending: None,
            finish_at: None,
            goodbye_at: None,
            given_up: RangeSet::new(256),
            doubtful: RangeSet::new(MAX_DOUBTFUL),
            data_end: base,
            frontier: Frontier::new(base, now),
            seen: None,
            placed: start.is_some(),
            reset_end: 0,
            position_at: now,
            proven_at: now,
            repaired_lately: VecDeque::new(),
            rtt: StreamRtt::default(),
        }
    }

    /// Sets the known end (it grows) and records it for contradictions.
    #[inline]
    fn set_end(&mut self, end: u64, now: Instant, cfg: &CoreConfig) {
        self.known_end = end;
        self.frontier.advance(end, now, cfg.contradiction());
    }

    /// Gives up `start..end` (a `Reset` covers it). Unless `checked`, the
    /// part no event has shown yet is doubtful (see the module docs).
    fn give_up(&mut self, start: u64, end: u64, checked: bool) {
        self.given_up.insert(start, end);
        self.reset_end = self.reset_end.max(end);
        if !checked && end > self.data_end {
            self.doubtful.insert(start.max(self.data_end), end);
        }
    }

    /// Everything below this was delivered, or given up with a `Reset`
    /// that covers it: the lowest doubtful give-up or missing seq.
    pub fn trusted_end(&self) -> u64 {
        let next = self.next_expected();
        self.doubtful
            .iter()
            .next()
            .map_or(next, |(s, _)| s.min(next))
    }

    /// The lowest seq given up with a `Reset`, if any.
    pub fn given_low(&self) -> Option<u64> {
        self.given_up.iter().next().map(|(s, _)| s)
    }

    /// The seq the stream said `Goodbye` at, if it did.
    pub fn ending(&self) -> Option<u64> {
        self.ending
    }

    /// Ends the stream at `next_seq`: a `Goodbye` heard (before the
    /// stream was retired, kept when it is followed again, or now).
    pub fn set_ending(&mut self, now: Instant, next_seq: u64, cfg: &CoreConfig) {
        self.ending = Some(next_seq);
        self.finish_at = Some(now + cfg.heartbeat_idle + cfg.contradiction());
        self.goodbye_at = Some(now);
    }

    /// The stream goes on past its `Goodbye`: that was forged.
    fn not_ending(&mut self) {
        self.ending = None;
        self.finish_at = None;
        self.goodbye_at = None;
    }

    /// One past the highest seq given up with a `Reset` (0: none).
    pub fn reset_end(&self) -> u64 {
        self.reset_end.min(self.next_expected())
    }

    /// Records that the stream's position was learned at `now`, and the
    /// proof of completeness if nothing is missing.
    pub fn learned_position(&mut self, now: Instant) {
        self.position_at = now;
        self.update_proof();
    }

    /// With no gap open, everything up to the last position learned is
    /// held: that is proof as of when it was learned.
    pub fn update_proof(&mut self) {
        if self.gaps.is_empty() {
            self.proven_at = self.position_at;
        }
    }

    /// The longest this node may have been missing an event of the stream
    /// without knowing it: the time since its last proof of completeness.
    pub fn staleness(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.proven_at)
    }

    /// True once the stream's position is known.
    pub fn is_placed(&self) -> bool {
        self.placed
    }

    /// The stream's position `pos` is now known. During the joiner's sync
    /// window, a stream not placed yet starts there (nothing before the join
    /// matters); afterwards it stays followed from seq 1. `claim`: the
    /// stream's own claim of its position (not an event): during the sync
    /// window, a claim lower than where the stream was placed moves its
    /// start down while no event has arrived (the first claim may have been
    /// forged; the lowest of them is safe).
    pub fn place(&mut self, now: Instant, pos: u64, in_sync: bool, claim: bool) {
        if self.placed {
            if claim
                && in_sync
                && pos < self.base
                && self.data_end <= self.base
                && self.given_up.is_empty()
            {
                self.start_at(now, pos);
            }
            return;
        }
        self.placed = true;
        if in_sync && self.gaps.is_empty() && self.known_end == self.base {
            self.start_at(now, pos);
        }
    }

    /// Follows the stream from `pos`, knowing nothing of it yet.
    fn start_at(&mut self, now: Instant, pos: u64) {
        self.base = pos;
        self.known_end = pos;
        self.data_end = pos;
        self.gaps = GapSet::new();
        self.doubtful = RangeSet::new(MAX_DOUBTFUL);
        self.frontier = Frontier::new(pos, now);
    }

    /// The stream id.
    pub fn stream(&self) -> u64 {
        self.stream
    }

    /// When anything was last heard from the stream.
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// Lowest seq not yet delivered or reset.
    pub fn next_expected(&self) -> u64 {
        self.gaps.first().map_or(self.known_end, |(s, _)| s)
    }

    /// One past the highest seq known to exist.
    pub fn known_end(&self) -> u64 {
        self.known_end
    }

    /// The open gaps.
    pub fn gaps(&self) -> &GapSet {
        &self.gaps
    }

    /// The node name, once announced.
    pub fn node(&self) -> Option<&Arc<str>> {
        self.node.as_ref()
    }

    /// Records that the stream was heard from.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// Records the node name announced by a heartbeat or `Hello`.
    pub fn set_node(&mut self, name: &str) {
        if !name.is_empty() && self.node.as_deref() != Some(name) {
            self.node = Some(Arc::from(name));
        }
    }

    /// Events `first_seq..` arrived. `after_sync`: this node's join
    /// returned more than a contradiction window ago (events below the
    /// stream's start sent before the join have all arrived by then, so
    /// one below it shows the start false).
    pub fn on_events(
        &mut self,
        now: Instant,
        first_seq: u64,
        events: Events,
        how: Arrival,
        after_sync: bool,
        sink: &mut Sink<'_>,
    ) {
        let n = events.len() as u64;
        if n == 0 {
            return;
        }
        let top = first_seq + n;
        if how == Arrival::Repair {
            sink.stats.repairs_received += 1;
            // Someone is repairing this stretch: what is still missing right
            // after it is likely on its way too (suppression).
            self.postpone(now, first_seq, top, false, sink);
        }
        if how == Arrival::Data
            && first_seq >= self.known_end
            && first_seq >= self.base
            && self.doubtful.is_empty()
            && self.ending.is_none()
        {
            // The common case: new events past everything known. The run
            // is delivered whole (after opening a gap for what it skipped).
            if first_seq > self.known_end {
                self.open_gap(now, self.known_end, first_seq, false, sink);
            }
            self.set_end(top, now, sink.cfg);
            self.data_end = top;
            self.learned_position(now);
            sink.stats.events_delivered += n;
            let run = RunPrint::of(first_seq, &events);
            self.seen.get_or_insert_with(Seen::new).record(run);
            sink.deliveries.push_back(Output::Run {
                stream: self.stream,
                first_seq,
                node: self.node.clone(),
                events,
            });
            return;
        }
        if how == Arrival::Data && after_sync && first_seq < self.base {
            // Fresh events below where this node started following the
            // stream, after its join: that start came from a false claim.
            self.lower_base(now, sink);
        }
        if top > self.base && !self.doubtful.is_empty() {
            self.on_evidence(now, top, sink);
        }
        if self.ending.is_some_and(|g| top > g) {
            sink.stats.position_contradicted += 1;
            self.not_ending();
        }
        let mut conflict = None;
        let mut delivered = false;
        // This run, when it is needed.
        let mut run: Option<RunPrint> = None;
        // A repair: the last run it was compared with, and the answer.
        let mut compared: Option<(RunPrint, Option<bool>)> = None;
        // Whether this repair gave its round-trip sample.
        let mut sampled = false;
        // A repair: the seq and print of each event it delivered, or
        // compared equal after its first delivered one; and how many of
        // them run to its last delivered one.
        let mut repaired = Vec::new();
        let mut repaired_kept = 0;
        for (seq, event) in (first_seq..).zip(events.iter()) {
            if seq < self.base {
                sink.stats.before_start += 1;
                continue;
            }
            if seq >= self.known_end {
                // (A repair asked for by a receiver that knew more than we
                // did also tells us the stream's position.)
                if seq > self.known_end {
                    self.open_gap(now, self.known_end, seq, false, sink);
                }
                self.set_end(seq + 1, now, sink.cfg);
            } else if let Some(gap) = self.gaps.fill(seq) {
                match how {
                    Arrival::Repair => {
                        sink.stats.events_repaired += 1;
                        sink.stats.repair_time.record(now - gap.opened);
                        // One sample per repair, and only of a gap asked
                        // for once (Karn: the answer to an earlier ask
                        // would read as a short round trip); one asked
                        // for again doubles the stream's wait instead
                        // (once per round: one of an earlier round leaves
                        // the next gap its say).
                        match (gap.asked, sampled, gap.tries) {
                            (Some(asked), false, 0..=1) => {
                                let rtt = now.saturating_duration_since(asked);
                                sink.learned.repaired(rtt, &mut self.rtt);
                                sampled = true;
                            }
                            (Some(_), false, _) => {
                                sampled = sink.learned.repaired_after_asking_again(
                                    gap.opened,
                                    now,
                                    &mut self.rtt,
                                );
                            }
                            _ => {}
                        }
                        self.note_repaired(seq, gap.opened);
                    }
                    Arrival::Data => {
                        sink.stats.reordered += 1;
                        sink.learned
                            .reordered(now, now.saturating_duration_since(gap.opened));
                    }
                }
            } else if self.given_up.take(seq) {
                // Given up (a Reset covered it) but here after all: deliver
                // it anyway, which is harmless, rather than drop it as a
                // duplicate, which would be wrong if the range was bogus
                // (e.g. a far-future seq that made a huge gap).
                self.doubtful.take(seq);
                sink.stats.late_after_reset += 1;
            } else if self.seen.as_ref().is_some_and(|s| match how {
                Arrival::Data => {
                    let run = run.get_or_insert_with(|| RunPrint::of(first_seq, &events));
                    s.data_conflicts(seq, run, event.as_bytes())
                }
                Arrival::Repair => {
                    match s.repair_conflicts(
                        seq,
                        first_seq,
                        &events,
                        event.as_bytes(),
                        &mut compared,
                    ) {
                        Some(differs) => {
                            if !differs && delivered {
                                repaired.push((seq, event_print(event.as_bytes())));
                            }
                            differs
                        }
                        None => false,
                    }
                }
            }) {
                // Delivered before with other content: one of the two was
                // forged (or corrupt). Delivering both is harmless.
                sink.stats.events_conflicting += 1;
                conflict = Some(seq);
            } else {
                sink.stats.duplicates += 1;
                if how == Arrival::Data {
                    self.reordered_after_repair(now, seq, sink);
                }
                continue;
            }
            delivered = true;
            if how == Arrival::Repair {
                repaired.push((seq, event_print(event.as_bytes())));
                repaired_kept = repaired.len();
            }
            sink.stats.events_delivered += 1;
            sink.deliveries.push_back(Output::One(Delivery::Event {
                stream: self.stream,
                seq,
                node: self.node.clone(),
                event,
            }));
        }
        if top > self.base {
            self.data_end = self.data_end.max(top);
        }
        if delivered {
            // A repair's span runs from the first event it delivered to the
            // last (seqs compared equal outside it add nothing).
            repaired.truncate(repaired_kept);
            let seen = self.seen.get_or_insert_with(Seen::new);
            match how {
                Arrival::Data => {
                    seen.record(run.unwrap_or_else(|| RunPrint::of(first_seq, &events)))
                }
                Arrival::Repair => seen.record_repair(&repaired),
            }
        }
        if let Some(seq) = conflict {
            self.forged_below(now, seq, sink);
        }
        if how == Arrival::Data {
            self.position_at = now;
        }
        self.update_proof();
    }

    /// The stream is being forged (an event conflicts with one delivered,
    /// or the stream contradicts its known position at `end`): what was
    /// given up below `end` since the position went past it may have been
    /// given up on the forger's word, before its events were published, so
    /// it is asked for again (once).
    fn forged_below(&mut self, now: Instant, end: u64, sink: &mut Sink<'_>) {
        let low = self.frontier.before(end).unwrap_or(self.base);
        let given: Vec<SeqRange> = (self.given_up.iter())
            .filter(|(s, e)| *s < end && *e > low)
            .map(|(s, e)| (s.max(low), e.min(end)))
            .collect();
        if given.is_empty() {
            return;
        }
        sink.stats.position_contradicted += 1;
        for (s, e) in given {
            self.reopen(now, s, e, true, sink);
        }
    }

    /// Events up to `top` arrived while doubtful give-ups are held: those
    /// below `top` may have been of events published after their `Reset`,
    /// so they are asked for again; one that runs from inside the events to
    /// the known end was only a claim, now shown false: it is forgotten.
    fn on_evidence(&mut self, now: Instant, top: u64, sink: &mut Sink<'_>) {
        if self
            .doubtful
            .range_of(top - 1)
            .is_some_and(|(_, end)| end >= self.known_end)
        {
            self.forget_above(top);
        }
        let below = self.doubtful.remove_range(0, top);
        if below.is_empty() {
            return;
        }
        sink.stats.position_contradicted += 1;
        tracing::debug!(
            stream = format_args!("{:016x}", self.stream),
            top,
            "events past a doubtful give-up: asked for again"
        );
        for (s, e) in below {
            self.reopen(now, s, e, false, sink);
        }
    }

    /// Forgets everything at or above `end`: what was only claimed there
    /// (gaps, give-ups, a `Goodbye` beyond it) and what was delivered there
    /// (a duplicate of it may be delivered again).
    fn forget_above(&mut self, end: u64) {
        if end >= self.known_end {
            return;
        }
        self.gaps.remove_range(end, self.known_end);
        self.given_up.remove_range(end, u64::MAX);
        self.doubtful.remove_range(end, u64::MAX);
        self.known_end = end;
        self.data_end = self.data_end.min(end);
        self.frontier.clamp(end);
        if self.ending.is_some_and(|g| g > end) {
            self.not_ending();
        }
    }

    /// Opens `start..end` again as missing (but what is already missing):
    /// it leaves the give-ups.
    fn reopen(&mut self, now: Instant, start: u64, end: u64, checked: bool, sink: &mut Sink<'_>) {
        self.given_up.remove_range(start, end);
        self.doubtful.remove_range(start, end);
        let (start, end) = (start.max(self.base), end.min(self.known_end));
        if start >= end {
            return;
        }
        let missing: Vec<SeqRange> = (self.gaps.overlapping(start, end))
            .map(|(s, g)| (s, g.end))
            .collect();
        let mut at = start;
        for (s, e) in missing {
            if at < s {
                self.open_gap(now, at, s, checked, sink);
            }
            at = at.max(e);
        }
        if at < end {
            self.open_gap(now, at, end, checked, sink);
        }
    }

    /// The stream's start proved false (it was placed on a forged claim
    /// during the join): it is followed from seq 1 instead, as a stream met
    /// after the join is, so that whatever it published since the join, and
    /// this node lost, is asked for (history it no longer holds costs a
    /// `Reset`).
    fn lower_base(&mut self, now: Instant, sink: &mut Sink<'_>) {
        if self.base <= 1 {
            return;
        }
        sink.stats.position_contradicted += 1;
        tracing::debug!(
            stream = format_args!("{:016x}", self.stream),
            from = self.base,
            "the stream's start proved false: followed from seq 1"
        );
        let old = self.base;
        self.base = 1;
        self.open_gap(now, 1, old, true, sink);
    }

    /// The stream itself claimed that everything below `next_seq` was sent
    /// (heartbeat, `Goodbye`, `AckRequest`) and, for a heartbeat, that it
    /// still holds everything from `oldest` on. A claim below what has been
    /// known for the contradiction window contradicts it (rewind); one above
    /// doubtful give-ups asks for them once more.
    pub fn on_claim(
        &mut self,
        now: Instant,
        next_seq: u64,
        oldest: Option<u64>,
        sink: &mut Sink<'_>,
    ) {
        if self.ending.is_some_and(|g| next_seq > g) {
            // The stream claims more than its Goodbye did.
            sink.stats.position_contradicted += 1;
            self.not_ending();
        }
        if next_seq < self.known_end
            && next_seq < self.frontier.settled(now, sink.cfg.contradiction())
        {
            self.contradicted(now, next_seq, sink);
        } else if !self.doubtful.is_empty() {
            // Below `oldest` the stream says it holds nothing: what it gave
            // up there has left its ring, so was published (and given up)
            // long ago: no doubt left. Above, asked for once more.
            if let Some(oldest) = oldest {
                self.doubtful.remove_range(0, oldest);
            }
            let below = self.doubtful.remove_range(0, next_seq);
            if !below.is_empty() {
                sink.stats.position_contradicted += 1;
                for (s, e) in below {
                    self.reopen(now, s, e, true, sink);
                }
            }
        }
        self.on_position(now, next_seq, oldest, sink);
    }

    /// The stream claims `next_seq`, below what this node has known of it
    /// for longer than any reordering: what it knew above it came from a
    /// false claim or event. It follows the stream from `next_seq` again
    /// (from seq 1 if its start was above it: see
    /// [`StreamReceiver::lower_base`]), and asks again for what it gave up
    /// below it since.
    fn contradicted(&mut self, now: Instant, next_seq: u64, sink: &mut Sink<'_>) {
        sink.stats.position_contradicted += 1;
        tracing::debug!(
            stream = format_args!("{:016x}", self.stream),
            known_end = self.known_end,
            next_seq,
            "the stream contradicts its known position: followed from its claim"
        );
        let false_start = next_seq < self.base;
        // Given up below the claim since the position went past it: maybe
        // on the word of a forged event, before the real ones existed.
        self.forged_below(now, next_seq, sink);
        self.forget_above(next_seq);
        if false_start {
            self.start_at(now, next_seq);
            self.lower_base(now, sink);
        }
        let below = self.doubtful.remove_range(0, next_seq);
        for (s, e) in below {
            self.reopen(now, s, e, true, sink);
        }
    }

    /// Something announced that everything below `next_seq` was sent (the
    /// stream itself, through [`StreamReceiver::on_claim`], or a member's
    /// report) and, for a heartbeat, that the stream still holds everything
    /// from `oldest` on.
    pub fn on_position(
        &mut self,
        now: Instant,
        next_seq: u64,
        oldest: Option<u64>,
        sink: &mut Sink<'_>,
    ) {
        if next_seq > self.known_end {
            self.open_gap(now, self.known_end, next_seq, false, sink);
            self.set_end(next_seq, now, sink.cfg);
        }
        if let Some(oldest) = oldest {
            if self.gaps.first().is_some_and(|(s, _)| s < oldest) {
                self.unavailable(&[(1, oldest)], sink);
            }
        }
        self.update_proof();
    }

    /// The stream said `Goodbye` at `next_seq`. It is retired once nothing
    /// below is missing and the `Goodbye` has stood for a heartbeat
    /// interval and a contradiction window ([`StreamReceiver::is_finished`])
    /// with no heartbeat or event of the stream going past it. Its repeats
    /// (a closing sender repeats it while it lingers) change nothing.
    pub fn on_goodbye(&mut self, now: Instant, next_seq: u64, sink: &mut Sink<'_>) {
        self.on_claim(now, next_seq, None, sink);
        if self.ending != Some(next_seq) || self.finish_at.is_none() {
            self.set_ending(now, next_seq, sink.cfg);
        }
    }

    /// The stream sent a heartbeat. A stream that said `Goodbye` sends
    /// none (it repeats its `Goodbye`), so one heard a reorder window or
    /// more after the `Goodbye` shows that `Goodbye` forged: the stream is
    /// not ending (closer than that, it may be an older heartbeat
    /// reordered).
    pub fn on_heartbeat(&mut self, now: Instant, sink: &mut Sink<'_>) {
        if let Some(first) = self.goodbye_at {
            if self.ending.is_some()
                && now.saturating_duration_since(first) >= sink.cfg.reorder_window
            {
                sink.stats.position_contradicted += 1;
                self.not_ending();
            }
        }
    }

    /// The stream's sender no longer holds `ranges`: give up those gaps.
    pub fn unavailable(&mut self, ranges: &[SeqRange], sink: &mut Sink<'_>) {
        let mut lost: Option<SeqRange> = None;
        for &(start, end) in ranges {
            for (s, g) in self.gaps.remove_range(start, end) {
                let e = g.end;
                self.give_up(s, e, g.checked);
                lost = Some(lost.map_or((s, e), |(a, b)| (a.min(s), b.max(e))));
            }
        }
        if let Some(missing) = lost {
            sink.reset(ResetReason::Unavailable {
                stream: self.stream,
                missing,
            });
        }
        self.update_proof();
    }

    /// `seq`, of a gap opened at `opened`, was repaired.
    fn note_repaired(&mut self, seq: u64, opened: Instant) {
        if let Some(last) = self.repaired_lately.back_mut() {
            if last.1 == seq && last.2 == opened {
                last.1 = seq + 1;
                return;
            }
        }
        if self.repaired_lately.len() >= REPAIRED_KEPT {
            self.repaired_lately.pop_front();
        }
        self.repaired_lately.push_back((seq, seq + 1, opened));
    }

    /// Fresh `Data` of `seq` arrived after it was delivered: if a repair
    /// delivered it lately, its gap was reordering (one sample per gap).
    fn reordered_after_repair(&mut self, now: Instant, seq: u64, sink: &mut Sink<'_>) {
        if let Some(i) = self
            .repaired_lately
            .iter()
            .position(|&(s, e, _)| s <= seq && seq < e)
        {
            if let Some((_, _, opened)) = self.repaired_lately.remove(i) {
                sink.learned
                    .reordered(now, now.saturating_duration_since(opened));
            }
        }
    }

    /// Another receiver asked for `start..end` of this stream: our own
    /// `Nak` for it would be redundant, so wait for the repair instead.
    pub fn on_overheard_nak(&mut self, now: Instant, ranges: &[SeqRange], sink: &mut Sink<'_>) {
        for &(start, end) in ranges {
            self.postpone(now, start, end, true, sink);
        }
    }

    /// Pushes back the next ask of the gaps in `start..end`: they were
    /// asked for by another receiver (`overheard`), or a repair of that
    /// stretch is arriving.
    fn postpone(
        &mut self,
        now: Instant,
        start: u64,
        end: u64,
        overheard: bool,
        sink: &mut Sink<'_>,
    ) {
        let hit: Vec<u64> = self.gaps.overlapping(start, end).map(|(s, _)| s).collect();
        for s in hit {
            let Some(g) = self.gaps.get_mut(s) else {
                continue;
            };
            let (tries, opened) = (g.tries, g.opened);
            let due = sink.retry_due(now, opened, tries.max(1), self.rtt);
            if let Some(g) = self.gaps.get_mut(s) {
                if g.due < due {
                    g.due = due;
                    // (Its repair then times the round trip too. A repair
                    // arriving is no ask: the gap it fills would read as
                    // repaired at once, and every sample as zero.)
                    if overheard {
                        g.asked = Some(now);
                    }
                    sink.stats.naks_suppressed += 1;
                }
            }
        }
    }

    /// True once the stream said `Goodbye`, nothing below its end is
    /// missing, and the `Goodbye` has stood long enough (see
    /// [`StreamReceiver::on_goodbye`]).
    pub fn is_finished(&self, now: Instant) -> bool {
        self.ending.is_some() && self.gaps.is_empty() && self.finish_at.is_some_and(|t| t <= now)
    }

    /// Opens the gap `start..end` (`checked`: see [`Gap::checked`]).
    fn open_gap(&mut self, now: Instant, start: u64, end: u64, checked: bool, sink: &mut Sink<'_>) {
        sink.stats.gaps_opened += 1;
        tracing::trace!(
            stream = format_args!("{:016x}", self.stream),
            start,
            end,
            "gap"
        );
        let due = now + sink.learned.reorder_window(now, sink.cfg) + sink.backoff();
        self.gaps.insert(
            start,
            Gap {
                end,
                opened: now,
                due,
                tries: 0,
                asked: None,
                checked,
            },
        );
        // Bounded memory: past `max_gaps` the oldest gaps are given up.
        while self.gaps.len() > sink.cfg.max_gaps {
            if let Some((s, g)) = self.gaps.first() {
                self.gaps.remove(s);
                self.give_up(s, g.end, g.checked);
                sink.reset(ResetReason::TooManyGaps {
                    stream: self.stream,
                    missing: (s, g.end),
                });
            }
        }
    }

    /// Drops every gap without a `Reset`: the caller delivered one that
    /// covers them (everything missing was sent before it).
    pub fn cover_gaps(&mut self, sink: &mut Sink<'_>) {
        sink.stats.gaps_covered_by_reset += self.gaps.len() as u64;
        let gaps: Vec<(u64, Gap)> = self.gaps.iter().collect();
        for (s, g) in gaps {
            self.give_up(s, g.end, g.checked);
        }
        self.gaps = GapSet::new();
        self.update_proof();
    }

    /// When [`StreamReceiver::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.finish_at {
            Some(t) if self.ending.is_some() && self.gaps.is_empty() => Some(t),
            _ => self.gaps.next_due(),
        }
    }

    /// Acts on due gaps: a `Nak` for those that may still be repaired, one
    /// `Reset` for those that cannot.
    pub fn handle_timeout(&mut self, now: Instant, sink: &mut Sink<'_>) {
        let due: Vec<(u64, Gap)> = self.gaps.iter().filter(|(_, g)| g.due <= now).collect();
        if due.is_empty() {
            return;
        }
        let cfg = sink.cfg;
        let mut too_old: Option<SeqRange> = None;
        let mut exhausted: Option<(SeqRange, u32)> = None;
        let mut ask = Vec::new();
        for (s, g) in due {
            if now.saturating_duration_since(g.opened) >= cfg.max_gap_age {
                self.gaps.remove(s);
                self.give_up(s, g.end, g.checked);
                too_old = Some(too_old.map_or((s, g.end), |(a, _)| (a, g.end)));
            } else if g.tries >= cfg.max_nak_tries {
                self.gaps.remove(s);
                self.give_up(s, g.end, g.checked);
                exhausted = Some(exhausted.map_or(((s, g.end), g.tries), |((a, _), t)| {
                    ((a, g.end), t.max(g.tries))
                }));
            } else {
                ask.push((s, g.end));
                let due = sink.retry_due(now, g.opened, g.tries + 1, self.rtt);
                if let Some(g) = self.gaps.get_mut(s) {
                    g.tries += 1;
                    g.due = due;
                    g.asked = Some(now);
                }
            }
        }
        for ranges in ask.chunks(wire::MAX_RANGES) {
            sink.stats.naks_sent += 1;
            sink.out.push_back(Body::Nak {
                stream: self.stream,
                ranges: ranges.to_vec(),
            });
        }
        if let Some(missing) = too_old {
            sink.reset(ResetReason::TooOld {
                stream: self.stream,
                missing,
            });
        }
        if let Some((missing, tries)) = exhausted {
            sink.reset(ResetReason::RetriesExhausted {
                stream: self.stream,
                missing,
                tries,
            });
        }
        self.update_proof();
    }

    /// The stream is evicted (table full): a `Reset` if anything is still
    /// missing (returns true then). If the stream is met again, it is met
    /// later, with its history a gap from seq 1; if it is not, the node
    /// Resets at its timeout (it may have died with its last events lost).
    pub fn evict(&mut self, sink: &mut Sink<'_>) -> bool {
        match self.gaps.hull() {
            Some(missing) => {
                self.gaps = GapSet::new();
                sink.reset(ResetReason::StreamEvicted {
                    stream: self.stream,
                    missing,
                });
                true
            }
            None => false,
        }
    }

    /// The stream went silent without `Goodbye`: always a `Reset`, since
    /// its last events may have been lost with no heartbeat left to tell.
    pub fn time_out(&mut self, sink: &mut Sink<'_>) {
        let next_expected = self.next_expected();
        self.gaps = GapSet::new();
        sink.reset(ResetReason::StreamTimedOut {
            stream: self.stream,
            next_expected,
        });
    }
}

/// Logs a `Reset` at `warn` with what was lost; the stream id in 16 hex
/// digits, as everywhere.
fn log_reset(reason: &ResetReason) {
    let kind = reason.kind();
    match *reason {
        ResetReason::Unavailable { stream, missing }
        | ResetReason::RetriesExhausted {
            stream, missing, ..
        }
        | ResetReason::TooOld { stream, missing }
        | ResetReason::TooManyGaps { stream, missing }
        | ResetReason::StreamEvicted { stream, missing } => tracing::warn!(
            kind,
            stream = format_args!("{stream:016x}"),
            missing_from = missing.0,
            missing_to = missing.1,
            "Reset: events may be lost (missing_from..missing_to); clear the cache"
        ),
        ResetReason::StreamTimedOut {
            stream,
            next_expected,
        } => tracing::warn!(
            kind,
            stream = format_args!("{stream:016x}"),
            next_expected,
            "Reset: the stream went silent without Goodbye; events from next_expected on may be lost"
        ),
        ResetReason::Lagged { missed } => tracing::warn!(kind, missed, "Reset: a subscriber fell behind"),
        ResetReason::Isolated { silent_ms } => tracing::warn!(
            kind,
            silent_ms,
            "Reset: this node heard no member for longer than the lease; events of that time may be lost"
        ),
    }
}

#[cfg(test)]
mod seen_tests {
    use super::*;

    fn data(first: u64, count: u64, print: u64) -> RunPrint {
        RunPrint {
            first,
            count,
            print,
            repair: false,
        }
    }

    fn at(seen: &Seen, q: u64) -> Option<(bool, Repaired)> {
        let r = *seen.last_at(q)?;
        Some((r.repair, seen.repaired_at(&r, q)))
    }

    /// A repair's record speaks for the seqs it delivered or compared: a
    /// seq between that it says nothing of keeps the record it had.
    #[test]
    fn a_repair_records_the_seqs_it_knows() {
        let mut seen = Seen::new();
        seen.record(data(1, 10, 77));
        seen.record_repair(&[(5, 50), (6, 60), (9, 90)]);
        assert_eq!(at(&seen, 5), Some((true, Repaired::Known(50))));
        assert_eq!(at(&seen, 6), Some((true, Repaired::Known(60))));
        assert_eq!(at(&seen, 9), Some((true, Repaired::Known(90))));
        // Not covered by the repair: the Data run is still the record.
        assert_eq!(at(&seen, 7).map(|a| a.0), Some(false));
        assert_eq!(at(&seen, 10).map(|a| a.0), Some(false));
        // Nothing before it: none.
        let mut alone = Seen::new();
        alone.record_repair(&[(5, 50), (9, 90)]);
        assert_eq!(at(&alone, 7), None);
        assert!(!alone.data_conflicts(7, &data(7, 1, 0), b"x"));
    }

    /// The spans of repairs, when every slot holds runs ahead of them,
    /// take the oldest slot one after the other: each repair's record
    /// stays (one record per repair).
    #[test]
    fn a_repair_is_one_record() {
        let mut seen = Seen::new();
        for i in 0..RECENT_RUNS as u64 {
            seen.record(data(100 + i, 1, i));
        }
        seen.record_repair(&[(10, 1), (12, 2), (14, 3), (16, 4), (18, 5)]);
        for (q, p) in [(10, 1), (12, 2), (14, 3), (16, 4), (18, 5)] {
            assert_eq!(at(&seen, q), Some((true, Repaired::Known(p))), "{q}");
        }
    }

    /// A seq a repair said nothing of, once its marker left the store, is
    /// `Gone`: a `Data` there conflicts (delivered again), and a repair
    /// arriving there is compared with the run before (it may differ).
    #[test]
    fn a_marker_gone_gives_way_to_the_run_before_for_a_repair() {
        let mut seen = Seen::new();
        seen.record(data(10, 12, 77));
        seen.record_repair(&[(7, 1), (19, 2)]);
        assert_eq!(at(&seen, 12).map(|a| a.0), Some(false));
        let many: Vec<(u64, u64)> = (0..REPAIRED_PRINTS as u64).map(|i| (2000 + i, i)).collect();
        seen.record_repair(&many);
        assert_eq!(at(&seen, 12), Some((true, Repaired::Gone)));
        assert!(seen.data_conflicts(12, &data(10, 12, 77), b"x"));
        let before = seen.newest_at(12, |a| matches!(a, Repaired::Known(_)));
        assert_eq!(before.map(|r| (r.repair, r.print)), Some((false, 77)));
    }

    /// A print that left the bounded store is unknown: a `Data` there is a
    /// conflict (delivered again), never dropped unchecked.
    #[test]
    fn prints_that_left_the_store_are_unknown() {
        let mut seen = Seen::new();
        seen.record_repair(&[(1, event_print(b"a"))]);
        let first = *seen.last_at(1).unwrap();
        assert!(!seen.data_conflicts(1, &data(1, 1, 0), b"a"));
        assert!(seen.data_conflicts(1, &data(1, 1, 0), b"b"));
        let many: Vec<(u64, u64)> = (0..REPAIRED_PRINTS as u64).map(|i| (100 + i, i)).collect();
        seen.record_repair(&many);
        assert_eq!(seen.repaired_at(&first, 1), Repaired::Gone);
        assert_eq!(
            seen.repaired_at(seen.last_at(100).unwrap(), 100),
            Repaired::Known(0)
        );
        assert!(seen.data_conflicts(1, &data(1, 1, 0), b"a"));
    }
}

#[cfg(test)]
mod learned_tests {
    use super::*;

    /// A stream's own round trip sets its wait; a stream not sampled takes
    /// the node's; a repair after asking again doubles the wait (up to
    /// `nak_retry`) until a sample comes, which resets it.
    #[test]
    fn each_stream_waits_its_own_round_trip_and_backs_off_without_samples() {
        let cfg = CoreConfig::default();
        let mut l = Learned::new(true, Instant::now());
        let (mut near, mut far, unsampled) = (
            StreamRtt::default(),
            StreamRtt::default(),
            StreamRtt::default(),
        );
        assert_eq!(
            l.retry(&cfg, unsampled),
            cfg.nak_retry,
            "nothing learned yet"
        );
        for _ in 0..20 {
            l.repaired(Duration::from_micros(200), &mut near);
        }
        l.repaired(Duration::from_millis(6), &mut far);
        for _ in 0..20 {
            l.repaired(Duration::from_millis(6), &mut far);
            l.repaired(Duration::from_micros(200), &mut near);
        }
        let floor = cfg.repair_linger * 2;
        assert_eq!(l.retry(&cfg, near), floor);
        let far_wait = l.retry(&cfg, far);
        assert!(
            (Duration::from_millis(6)..Duration::from_millis(8)).contains(&far_wait),
            "{far_wait:?}"
        );
        // The node's estimate, for a stream not sampled: between the two.
        let node = l.retry(&cfg, unsampled);
        assert!(node > floor && node < cfg.nak_retry, "{node:?}");
        // Asked again: no sample, the wait doubles, within nak_retry.
        let t = Instant::now();
        let ms = Duration::from_millis;
        l.repaired_after_asking_again(t, t + ms(5), &mut near);
        assert_eq!(l.retry(&cfg, near), floor * 2);
        // Gaps of the same burst (opened before it doubled): no further.
        l.repaired_after_asking_again(t, t + ms(6), &mut near);
        l.repaired_after_asking_again(t + ms(1), t + ms(7), &mut near);
        assert_eq!(l.retry(&cfg, near), floor * 2, "once per round");
        // A gap opened under the doubled wait and asked for again: again.
        l.repaired_after_asking_again(t + ms(5), t + ms(9), &mut near);
        assert_eq!(l.retry(&cfg, near), floor * 4);
        for i in 0..10 {
            l.repaired_after_asking_again(t + ms(10 + i * 10), t + ms(15 + i * 10), &mut near);
        }
        assert_eq!(l.retry(&cfg, near), (floor * 16).min(cfg.nak_retry));
        // The cap itself, where nak_retry does not hide it.
        let roomy = CoreConfig {
            nak_retry: floor * 100,
            ..cfg.clone()
        };
        assert_eq!(l.retry(&roomy, near), floor * 16, "at most 16 times");
        l.repaired(Duration::from_micros(200), &mut near);
        assert_eq!(l.retry(&cfg, near), floor, "a sample resets the back-off");
        // ... and the round: a gap opened before the last doubling doubles
        // the wait again, once.
        assert!(l.repaired_after_asking_again(t, t + ms(200), &mut near));
        assert!(!l.repaired_after_asking_again(t, t + ms(201), &mut near));
        assert_eq!(l.retry(&cfg, near), floor * 2);
        // Learning off: the configured wait.
        let off = Learned::new(false, Instant::now());
        assert_eq!(off.retry(&cfg, far), cfg.nak_retry);
    }
}
