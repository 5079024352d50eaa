//! The one fault model: what may happen to a datagram on its way to a
//! node — lost (at random, in bursts, by a predicate, or cut off by a
//! partition), duplicated, delayed (which reorders). The simulator and the
//! loopback cluster decide every datagram's fate with the same function.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::Rng;

use crate::wire::{Body, Datagram};

/// Faults of one path a datagram takes: in the simulator a link (sender →
/// receiver) or everything a node receives; in the loopback cluster
/// everything a node receives. On a node, `partitioned` also stops what it
/// sends. `Faults::default()` is a perfect path.
///
/// Probabilities are clamped to `0.0..=1.0`; a fault whose probability is
/// 0 draws nothing from the random generator.
#[derive(Clone, Default)]
pub struct Faults {
    /// Independent loss probability.
    pub loss: f64,
    /// Bursty loss, on top of `loss`.
    pub burst: Option<GilbertElliott>,
    /// Probability that a datagram arrives twice (each copy delayed on its
    /// own).
    pub duplicate: f64,
    /// Base one-way delay.
    pub delay: Duration,
    /// Extra uniformly random delay in `0..=jitter` (reorders datagrams).
    pub jitter: Duration,
    /// Loses everything.
    pub partitioned: bool,
    /// Loses every datagram for which the predicate is true (checked
    /// before the random faults; a datagram that does not decode is never
    /// matched).
    pub drop_if: Option<DropIf>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("loss", &self.loss)
            .field("burst", &self.burst)
            .field("duplicate", &self.duplicate)
            .field("delay", &self.delay)
            .field("jitter", &self.jitter)
            .field("partitioned", &self.partitioned)
            .field("drop_if", &self.drop_if.is_some())
            .finish()
    }
}

impl Faults {
    /// Loses every datagram for which `pred` is true, and nothing else.
    pub fn dropping(pred: impl Fn(&Datagram) -> bool + Send + Sync + 'static) -> Faults {
        Faults {
            drop_if: Some(DropIf::new(pred)),
            ..Faults::default()
        }
    }

    /// Loses the next `n` `Data` datagrams, and nothing else.
    pub fn dropping_next_data(n: u32) -> Faults {
        let left = AtomicU32::new(n);
        Faults::dropping(move |d| {
            matches!(d.body, Body::Data { .. })
                && left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
                    .is_ok()
        })
    }

    /// Loses everything (a partition).
    pub fn partitioned() -> Faults {
        Faults {
            partitioned: true,
            ..Faults::default()
        }
    }

    /// The fate of one datagram on this path. `bad` is the path's burst
    /// state (see [`GilbertElliott`]); `datagram` is `None` when it does
    /// not decode. The random draws, in order: burst (flip, then loss in
    /// the bad state), loss, duplication, then each copy's jitter.
    pub(crate) fn fate(
        &self,
        bad: &mut bool,
        rng: &mut SmallRng,
        datagram: Option<&Datagram>,
    ) -> Fate {
        if self.partitioned {
            return Fate::Lost;
        }
        if let (Some(pred), Some(d)) = (&self.drop_if, datagram) {
            if pred.matches(d) {
                return Fate::Lost;
            }
        }
        if let Some(ge) = self.burst {
            let flip = if *bad {
                ge.p_bad_to_good
            } else {
                ge.p_good_to_bad
            };
            if chance(rng, flip) {
                *bad = !*bad;
            }
            if *bad && chance(rng, ge.loss_bad) {
                return Fate::Lost;
            }
        }
        if chance(rng, self.loss) {
            return Fate::Lost;
        }
        let twice = chance(rng, self.duplicate);
        let after = self.delay + jitter(rng, self.jitter);
        let again = twice.then(|| self.delay + jitter(rng, self.jitter));
        Fate::Arrives { after, again }
    }
}

fn chance(rng: &mut SmallRng, p: f64) -> bool {
    p > 0.0 && rng.gen_bool(p.min(1.0))
}

fn jitter(rng: &mut SmallRng, max: Duration) -> Duration {
    if max.is_zero() {
        Duration::ZERO
    } else {
        Duration::from_nanos(rng.gen_range(0..=max.as_nanos() as u64))
    }
}

/// What [`Faults`] did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Lost.
    Lost,
    /// Arrives after `after`, and a second copy after `again`.
    Arrives {
        after: Duration,
        again: Option<Duration>,
    },
}

/// Two-state bursty loss model: in the good state datagrams pass, in the
/// bad state they are lost with probability `loss_bad`. The state is kept
/// per path.
#[derive(Debug, Clone, Copy)]
pub struct GilbertElliott {
    /// Probability of going good → bad per datagram.
    pub p_good_to_bad: f64,
    /// Probability of going bad → good per datagram.
    pub p_bad_to_good: f64,
    /// Loss probability in the bad state.
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// A model with average loss `avg` and mean burst length `burst`
    /// datagrams (total loss in the bad state).
    pub fn with_average(avg: f64, burst: f64) -> Self {
        let p_bg = 1.0 / burst.max(1.0);
        // Stationary P(bad) = p_gb / (p_gb + p_bg) = avg.
        let p_gb = avg * p_bg / (1.0 - avg).max(1e-9);
        GilbertElliott {
            p_good_to_bad: p_gb.min(1.0),
            p_bad_to_good: p_bg,
            loss_bad: 1.0,
        }
    }
}

/// A predicate that loses the datagrams it matches (see
/// [`Faults::drop_if`]). Clones share the predicate, and any state it
/// keeps.
#[derive(Clone)]
pub struct DropIf(Arc<dyn Fn(&Datagram) -> bool + Send + Sync>);

impl DropIf {
    /// Loses every datagram for which `pred` is true. The sender of a
    /// datagram is `datagram.header.stream`.
    pub fn new(pred: impl Fn(&Datagram) -> bool + Send + Sync + 'static) -> DropIf {
        DropIf(Arc::new(pred))
    }

    /// True if the datagram is to be lost.
    pub fn matches(&self, datagram: &Datagram) -> bool {
        (self.0)(datagram)
    }
}

impl fmt::Debug for DropIf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DropIf(..)")
    }
}

/// The seqs of a `Data` or `Repair` datagram's events.
pub(crate) fn event_seqs(d: &Datagram) -> Option<std::ops::Range<u64>> {
    match &d.body {
        Body::Data { first_seq, events } | Body::Repair { first_seq, events } => {
            Some(*first_seq..*first_seq + events.len() as u64)
        }
        _ => None,
    }
}

/// A `Data` datagram's seqs, for predicates.
pub fn data_seqs(d: &Datagram) -> Option<std::ops::Range<u64>> {
    match &d.body {
        Body::Data { first_seq, events } => Some(*first_seq..*first_seq + events.len() as u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn fates(f: &Faults, n: usize) -> Vec<Fate> {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut bad = false;
        (0..n).map(|_| f.fate(&mut bad, &mut rng, None)).collect()
    }

    #[test]
    fn a_perfect_path_delivers_everything_once_at_its_delay() {
        let f = Faults {
            delay: Duration::from_millis(3),
            ..Faults::default()
        };
        let want = Fate::Arrives {
            after: Duration::from_millis(3),
            again: None,
        };
        assert!(fates(&f, 1000).iter().all(|x| *x == want));
    }

    #[test]
    fn loss_duplication_and_jitter_happen_at_their_rates() {
        let f = Faults {
            loss: 0.2,
            duplicate: 0.5,
            jitter: Duration::from_millis(10),
            ..Faults::default()
        };
        let all = fates(&f, 10_000);
        let lost = all.iter().filter(|x| **x == Fate::Lost).count();
        let twice = all
            .iter()
            .filter(|x| matches!(x, Fate::Arrives { again: Some(_), .. }))
            .count();
        assert!((1_700..2_300).contains(&lost), "{lost} lost");
        assert!((3_600..4_400).contains(&twice), "{twice} twice");
        let delays: Vec<Duration> = all
            .iter()
            .filter_map(|x| match x {
                Fate::Arrives { after, .. } => Some(*after),
                Fate::Lost => None,
            })
            .collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(10)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(5)));
    }

    #[test]
    fn bursts_lose_in_runs() {
        let f = Faults {
            burst: Some(GilbertElliott::with_average(0.1, 10.0)),
            ..Faults::default()
        };
        let all = fates(&f, 20_000);
        let lost = all.iter().filter(|x| **x == Fate::Lost).count();
        let runs = all
            .windows(2)
            .filter(|w| w[0] != Fate::Lost && w[1] == Fate::Lost)
            .count();
        assert!((1_200..2_800).contains(&lost), "{lost} lost");
        let mean = lost as f64 / runs.max(1) as f64;
        assert!(mean > 5.0, "mean burst {mean}");
    }

    #[test]
    fn a_partition_and_a_predicate_lose_without_drawing() {
        let d = Datagram {
            header: crate::wire::Header::new(1, 2),
            body: Body::Goodbye { next_seq: 1 },
        };
        let mut rng = SmallRng::seed_from_u64(1);
        let untouched = rng.clone();
        let mut bad = false;
        for f in [Faults::partitioned(), Faults::dropping(|_| true)] {
            assert_eq!(f.fate(&mut bad, &mut rng, Some(&d)), Fate::Lost);
        }
        assert_eq!(rng.gen::<u64>(), untouched.clone().gen::<u64>());
        // A predicate never matches what did not decode.
        assert_ne!(
            Faults::dropping(|_| true).fate(&mut bad, &mut rng, None),
            Fate::Lost
        );
    }

    #[test]
    fn dropping_next_data_loses_exactly_that_many_data_datagrams() {
        let f = Faults::dropping_next_data(2);
        let data = |q| Datagram {
            header: crate::wire::Header::new(1, 2),
            body: Body::Data {
                first_seq: q,
                events: crate::wire::Events::new(&[crate::wire::Event::ClearAll]).unwrap(),
            },
        };
        let hb = Datagram {
            header: crate::wire::Header::new(1, 2),
            body: Body::Goodbye { next_seq: 1 },
        };
        let mut rng = SmallRng::seed_from_u64(1);
        let mut bad = false;
        let mut fate = |d: &Datagram| f.fate(&mut bad, &mut rng, Some(d)) == Fate::Lost;
        assert!(!fate(&hb));
        assert!(fate(&data(1)));
        assert!(!fate(&hb));
        assert!(fate(&data(2)));
        assert!(!fate(&data(3)));
    }
}
