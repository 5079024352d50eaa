//! The soak's figures and the pure logic over them: latency histograms
//! carried between processes and merged, per-receiver counters turned into
//! per-interval figures, loss from sequence gaps, and the targets (RSS
//! flat after the warm-up, no Reset, nothing lost).
//!
//! Nothing here reads a clock, a file or a socket.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Lowest latency told apart, ns (1 µs: the figures are in µs).
const HIST_LOW_NS: u64 = 1_000;
/// Highest latency recorded, ns (larger values count as this).
const HIST_HIGH_NS: u64 = 100_000_000_000;
/// Most buckets a histogram from another process may carry.
pub const MAX_BUCKETS: usize = 100_000;
/// Most Reset kinds kept per receiver; others count as `other`.
pub const MAX_KINDS: usize = 16;
/// Longest Reset kind kept; longer ones count as `other`.
const MAX_KIND_LEN: usize = 64;

/// A latency histogram in nanoseconds, 1 µs to 100 s, 3 significant
/// digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_NS, HIST_HIGH_NS, 3).expect("valid histogram bounds")
}

/// Records one latency, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    let _ = h.record(ns.clamp(HIST_LOW_NS, HIST_HIGH_NS));
}

/// A histogram as `(value, count)` pairs, to send to another process.
pub fn encode(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds pairs from [`encode`] (of another process: values are clamped,
/// and only the first [`MAX_BUCKETS`] pairs are taken).
pub fn merge(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(v, n) in pairs.iter().take(MAX_BUCKETS) {
        let _ = h.record_n(v.clamp(HIST_LOW_NS, HIST_HIGH_NS), n);
    }
}

/// Latency over one interval (or the whole run), µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Latency {
    /// `None` when nothing was recorded.
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Some(Latency {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            max_us: us(h.max()),
        })
    }
}

/// Loss seen by one receiver: gaps in each stream's sequence numbers
/// (which start at 1), over at most [`Gaps::MAX_STREAMS`] streams.
#[derive(Debug, Default)]
pub struct Gaps {
    /// (stream, next sequence number expected).
    streams: Vec<(u64, u64)>,
    /// Events never seen so far, all streams.
    pub lost: u64,
}

impl Gaps {
    /// Streams followed; events of others are not checked.
    pub const MAX_STREAMS: usize = 8;

    /// Event `seq` of `stream` arrived; returns how many before it were
    /// skipped. A repeat or an older event skips nothing.
    pub fn see(&mut self, stream: u64, seq: u64) -> u64 {
        let known = self.streams.iter().position(|(s, _)| *s == stream);
        let skipped = match known {
            Some(i) => {
                let next = &mut self.streams[i].1;
                if seq < *next {
                    return 0;
                }
                let skipped = seq - *next;
                *next = seq.saturating_add(1);
                skipped
            }
            None if self.streams.len() < Self::MAX_STREAMS => {
                self.streams.push((stream, seq.saturating_add(1)));
                seq.saturating_sub(1)
            }
            None => 0,
        };
        self.lost = self.lost.saturating_add(skipped);
        skipped
    }
}

/// Cumulative counts of one receiver (or of several, added).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Events delivered.
    pub delivered: u64,
    /// Events skipped (sequence gaps).
    pub lost: u64,
    /// Resets delivered, by kind.
    pub resets: BTreeMap<String, u64>,
    /// Events that arrived through a repair (cachecast nodes).
    #[serde(default)]
    pub repaired: u64,
}

impl Counters {
    /// Counts a Reset of `kind` (bounded: see [`MAX_KINDS`]).
    pub fn reset(&mut self, kind: &str) {
        let kind = if kind.len() <= MAX_KIND_LEN
            && (self.resets.contains_key(kind) || self.resets.len() < MAX_KINDS)
        {
            kind
        } else {
            "other"
        };
        *self.resets.entry(kind.to_owned()).or_default() += 1;
    }

    /// Adds `other` (another receiver).
    pub fn add(&mut self, other: &Counters) {
        self.delivered = self.delivered.saturating_add(other.delivered);
        self.lost = self.lost.saturating_add(other.lost);
        self.repaired = self.repaired.saturating_add(other.repaired);
        for (k, n) in other.resets.iter().take(MAX_KINDS) {
            let e = self.resets.entry(k.clone()).or_default();
            *e = e.saturating_add(*n);
        }
    }

    /// What happened since `before` (an earlier snapshot of the same
    /// counters; a counter that went down counts as 0).
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            delivered: self.delivered.saturating_sub(before.delivered),
            lost: self.lost.saturating_sub(before.lost),
            repaired: self.repaired.saturating_sub(before.repaired),
            resets: (self.resets.iter())
                .map(|(k, n)| {
                    (
                        k.clone(),
                        n.saturating_sub(*before.resets.get(k).unwrap_or(&0)),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }

    pub fn resets_total(&self) -> u64 {
        self.resets.values().fold(0, |a, n| a.saturating_add(*n))
    }
}

/// One path (publisher → subscribers, or agent A → agent B) over one
/// interval.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PathSample {
    /// Events published (accepted) in the interval.
    pub sent: u64,
    /// Delivered, lost, Reset and repaired in the interval, all receivers.
    pub counts: Counters,
    /// Events delivered per second per receiver.
    pub delivered_per_s: f64,
    /// Publish → delivery over the interval, all receivers' events.
    pub latency: Option<Latency>,
}

impl PathSample {
    /// The interval's figures from the cumulative counts of `receivers`
    /// now and at the last sample, the publisher's cumulative `sent` now
    /// and then, and the interval's merged latency histogram.
    pub fn new(
        now: &[Counters],
        before: &[Counters],
        sent: (u64, u64),
        seconds: f64,
        hist: &Histogram<u64>,
    ) -> PathSample {
        let mut counts = Counters::default();
        for (i, c) in now.iter().enumerate() {
            let zero = Counters::default();
            counts.add(&c.since(before.get(i).unwrap_or(&zero)));
        }
        let receivers = now.len().max(1) as f64;
        PathSample {
            sent: sent.0.saturating_sub(sent.1),
            delivered_per_s: if seconds > 0.0 {
                counts.delivered as f64 / receivers / seconds
            } else {
                0.0
            },
            counts,
            latency: Latency::of(hist),
        }
    }
}

/// One process's figures at one sample.
#[derive(Debug, Clone, Serialize)]
pub struct ProcSample {
    /// Resident memory, KiB (`None`: unreadable, e.g. it exited).
    pub rss_kib: Option<u64>,
    /// CPU over the interval, % of one core.
    pub cpu_pct: Option<f64>,
}

/// CPU % of one core between two readings of cumulative CPU seconds.
pub fn cpu_pct(now: Option<f64>, before: Option<f64>, seconds: f64) -> Option<f64> {
    match (now, before) {
        (Some(a), Some(b)) if seconds > 0.0 => Some(((a - b) / seconds * 100.0).max(0.0)),
        _ => None,
    }
}

/// Whether a process's RSS stayed flat after the warm-up: each later
/// sample against the first sample at or after the warm-up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flatness {
    pub process: String,
    /// The sample compared with (the first at or after the warm-up).
    pub base_t_s: Option<f64>,
    pub base_kib: Option<u64>,
    /// The last sample.
    pub end_kib: Option<u64>,
    /// Largest rise and fall against the base, fractions (0.05 = 5 %).
    pub max_rise: f64,
    pub max_fall: f64,
    /// Within the tolerance both ways; `None` when there is no later
    /// sample to compare.
    pub flat: Option<bool>,
}

/// [`Flatness`] of `points` (seconds since the start, RSS KiB).
pub fn flatness(process: &str, points: &[(f64, Option<u64>)], warmup_s: f64, tol: f64) -> Flatness {
    let base = points
        .iter()
        .enumerate()
        .find_map(|(i, &(t, r))| (t >= warmup_s).then_some(r.map(|r| (i, t, r))).flatten());
    let end_kib = points.iter().rev().find_map(|&(_, r)| r);
    let Some((i, base_t, base_kib)) = base else {
        return Flatness {
            process: process.to_owned(),
            base_t_s: None,
            base_kib: None,
            end_kib,
            max_rise: 0.0,
            max_fall: 0.0,
            flat: None,
        };
    };
    let (mut rise, mut fall, mut later) = (0.0f64, 0.0f64, 0usize);
    for r in points[i + 1..].iter().filter_map(|&(_, r)| r) {
        later += 1;
        let d = (r as f64 - base_kib as f64) / (base_kib.max(1) as f64);
        rise = rise.max(d);
        fall = fall.max(-d);
    }
    Flatness {
        process: process.to_owned(),
        base_t_s: Some(base_t),
        base_kib: Some(base_kib),
        end_kib,
        max_rise: rise,
        max_fall: fall,
        flat: (later > 0).then_some(rise <= tol && fall <= tol),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_the_trip_and_merge() {
        let mut a = histogram();
        let mut b = histogram();
        for i in 1..=99u64 {
            record(&mut a, i * 10_000); // 10 µs .. 990 µs
        }
        record(&mut b, 50_000_000); // 50 ms: the p99 of the merge
        record(&mut b, 0); // below the range: counted as 1 µs
        let mut m = histogram();
        merge(&mut m, &encode(&a));
        merge(&mut m, &encode(&b));
        let l = Latency::of(&m).unwrap();
        assert_eq!(l.count, 101);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max_us - 50_000.0).abs() < 50.0, "{l:?}");
        assert_eq!(Latency::of(&histogram()), None);
        // Hostile pairs: out of range values clamp, nothing panics.
        merge(&mut m, &[(u64::MAX, 1), (0, 1), (5_000, u64::MAX)]);
        assert!(m.max() >= 99_000_000_000);
    }

    #[test]
    fn gaps_count_what_never_arrived() {
        let mut g = Gaps::default();
        assert_eq!(g.see(7, 1), 0);
        assert_eq!(g.see(7, 2), 0);
        assert_eq!(g.see(7, 5), 2); // 3 and 4
        assert_eq!(g.see(7, 4), 0); // late or repeated: nothing
        assert_eq!(g.see(7, 5), 0);
        assert_eq!(g.see(9, 3), 2); // a stream first seen at 3: 1 and 2
        assert_eq!(g.lost, 4);
        for s in 100..120 {
            g.see(s, 1);
        }
        assert_eq!(g.streams.len(), Gaps::MAX_STREAMS);
        assert_eq!(g.see(7, u64::MAX), u64::MAX - 6);
        assert_eq!(g.lost, u64::MAX - 2);
        assert_eq!(g.see(9, u64::MAX), u64::MAX - 4);
        assert_eq!(g.lost, u64::MAX, "saturates");
        assert_eq!(g.see(9, u64::MAX), 0, "no wrap past the end");
    }

    #[test]
    fn counters_give_the_interval_summed_over_receivers() {
        let mut a0 = Counters {
            delivered: 100,
            ..Counters::default()
        };
        a0.reset("lagged");
        let mut a1 = a0.clone();
        a1.delivered = 250;
        a1.lost = 3;
        a1.reset("lagged");
        a1.reset("too_old");
        let b0 = Counters {
            delivered: 90,
            ..Counters::default()
        };
        let b1 = Counters {
            delivered: 240,
            repaired: 5,
            ..Counters::default()
        };
        let mut h = histogram();
        record(&mut h, 2_000);
        let s = PathSample::new(&[a1, b1], &[a0, b0], (1_000, 850), 2.0, &h);
        assert_eq!(s.sent, 150);
        assert_eq!(s.counts.delivered, 300);
        assert_eq!(s.counts.lost, 3);
        assert_eq!(s.counts.repaired, 5);
        let kinds: Vec<(&str, u64)> = s
            .counts
            .resets
            .iter()
            .map(|(k, n)| (k.as_str(), *n))
            .collect();
        assert_eq!(kinds, [("lagged", 1), ("too_old", 1)]);
        assert_eq!(s.counts.resets_total(), 2);
        assert_eq!(s.delivered_per_s, 75.0);
        assert_eq!(s.latency.unwrap().count, 1);
        // A receiver that restarted (counters went down) counts 0, and a
        // receiver without an earlier snapshot counts from zero.
        let s = PathSample::new(
            &[
                Counters::default(),
                Counters {
                    delivered: 7,
                    ..Counters::default()
                },
            ],
            &[Counters {
                delivered: 9,
                ..Counters::default()
            }],
            (0, 10),
            0.0,
            &histogram(),
        );
        assert_eq!((s.sent, s.counts.delivered, s.delivered_per_s), (0, 7, 0.0));
        assert_eq!(s.latency, None);
    }

    #[test]
    fn reset_kinds_are_bounded() {
        let mut c = Counters::default();
        for i in 0..40 {
            c.reset(&format!("kind{i}"));
        }
        c.reset(&"x".repeat(1000));
        assert_eq!(c.resets.len(), MAX_KINDS + 1);
        assert_eq!(c.resets["other"], 40 - MAX_KINDS as u64 + 1);
        c.reset("kind0"); // known kinds still count
        assert_eq!(c.resets["kind0"], 2);
        assert_eq!(c.resets_total(), 42);
    }

    #[test]
    fn cpu_is_a_share_of_one_core() {
        assert_eq!(cpu_pct(Some(3.0), Some(1.5), 10.0), Some(15.0));
        assert_eq!(cpu_pct(Some(3.0), None, 10.0), None);
        assert_eq!(cpu_pct(Some(3.0), Some(1.0), 0.0), None);
        assert_eq!(cpu_pct(Some(1.0), Some(3.0), 1.0), Some(0.0));
    }

    #[test]
    fn flat_is_within_the_tolerance_of_the_sample_after_the_warmup() {
        let p = |v: &[(f64, Option<u64>)]| v.to_vec();
        // Minute 0 is set-up (ignored); from minute 1 on: 10.0 .. 10.9 MiB.
        let flat = p(&[
            (0.0, Some(3000)),
            (60.0, Some(10_000)),
            (120.0, Some(10_900)),
            (180.0, Some(10_500)),
        ]);
        let f = flatness("sub-1", &flat, 60.0, 0.10);
        assert_eq!(f.flat, Some(true));
        assert_eq!(
            (f.base_kib, f.end_kib, f.base_t_s),
            (Some(10_000), Some(10_500), Some(60.0))
        );
        assert!((f.max_rise - 0.09).abs() < 1e-9);
        // 11.1 MiB at minute 2: not flat.
        let grows = p(&[
            (60.0, Some(10_000)),
            (120.0, Some(11_100)),
            (180.0, Some(10_000)),
        ]);
        assert_eq!(flatness("p", &grows, 60.0, 0.10).flat, Some(false));
        // Falling by more than the tolerance is not flat either.
        let falls = p(&[(60.0, Some(10_000)), (120.0, Some(8_000))]);
        let f = flatness("p", &falls, 60.0, 0.10);
        assert_eq!(f.flat, Some(false));
        assert!((f.max_fall - 0.2).abs() < 1e-9);
        // An unreadable base: the next readable sample is the base.
        let gap = p(&[
            (60.0, None),
            (80.0, Some(10_000)),
            (100.0, None),
            (120.0, Some(10_100)),
        ]);
        let f = flatness("p", &gap, 60.0, 0.10);
        assert_eq!((f.base_t_s, f.flat), (Some(80.0), Some(true)));
        // Nothing after the base, or no base at all: not evaluated.
        assert_eq!(
            flatness("p", &p(&[(0.0, Some(1)), (60.0, Some(5))]), 60.0, 0.1).flat,
            None
        );
        assert_eq!(flatness("p", &p(&[(0.0, Some(1))]), 60.0, 0.1).flat, None);
        assert_eq!(flatness("p", &[], 60.0, 0.1).flat, None);
    }
}
