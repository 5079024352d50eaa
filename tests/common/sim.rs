//! Helpers shared by the simulator tests (virtual time, no sockets).

use std::time::Duration;

use cachecast::testkit::{Faults, GilbertElliott, Sim};
use cachecast::wire::Event;

/// The event `key-NNNNNN`.
pub fn key(i: u64) -> Event {
    Event::Invalidate {
        keys: vec![format!("key-{i:06}")],
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Independent loss on a link with a LAN's delay and jitter.
pub fn lossy(loss: f64) -> Faults {
    Faults {
        loss,
        delay: Duration::from_micros(100),
        jitter: Duration::from_micros(50),
        ..Faults::default()
    }
}

/// A cluster of `n` default nodes that have all finished joining.
pub fn cluster(seed: u64, n: usize) -> Sim {
    let mut sim = Sim::new(seed);
    sim.add_nodes("n", n);
    sim.run_for(ms(200));
    sim
}

/// The current stream of node `id`.
pub fn stream_of(sim: &Sim, id: usize) -> u64 {
    sim.core(id).unwrap().stream()
}

/// The seeds a chaos test runs: `CACHECAST_CHAOS_SEED=N` replays that one,
/// `CACHECAST_CHAOS_RUNS=N` runs seeds `0..N` (at least 1), else
/// `0..default`.
pub fn chaos_seeds(default: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("CACHECAST_CHAOS_SEED") {
        return vec![seed.parse().expect("CACHECAST_CHAOS_SEED: a number")];
    }
    let runs: u64 = std::env::var("CACHECAST_CHAOS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    assert!(runs > 0, "CACHECAST_CHAOS_RUNS=0 would test nothing");
    (0..runs).collect()
}

/// A random fault mix for a chaos run's links: loss up to 30 %, bursts
/// (three runs in ten), duplication, delay and reordering.
#[allow(dead_code)]
pub fn random_link(rng: &mut impl rand::Rng) -> Faults {
    Faults {
        loss: rng.gen_range(0.0..0.3),
        burst: rng.gen_bool(0.3).then(|| {
            GilbertElliott::with_average(rng.gen_range(0.01..0.2), rng.gen_range(2.0..20.0))
        }),
        duplicate: rng.gen_range(0.0..0.1),
        delay: Duration::from_micros(rng.gen_range(50..2000)),
        jitter: Duration::from_micros(rng.gen_range(0..10_000)),
        ..Faults::default()
    }
}

/// A chaos run's 200 to 800 random steps among nodes `0..n`, each followed
/// by up to 20 ms: mostly publishes, and partitions, heals, restarts and
/// crashes.
#[allow(dead_code)]
pub fn random_steps(rng: &mut impl rand::Rng, sim: &mut Sim, n: usize) {
    let steps = rng.gen_range(200..800);
    for _ in 0..steps {
        match rng.gen_range(0..100) {
            0..=79 => {
                let who = rng.gen_range(0..n);
                if sim.core(who).is_some() {
                    let k = rng.gen();
                    sim.publish(who, key(k));
                }
            }
            80..=84 => sim.partition(rng.gen_range(0..n), true),
            85..=92 => sim.partition(rng.gen_range(0..n), false),
            93..=95 => sim.restart(rng.gen_range(0..n)),
            96 => sim.crash(rng.gen_range(0..n)),
            _ => {
                let who = rng.gen_range(0..n);
                if sim.core(who).is_none() {
                    sim.restart(who);
                }
            }
        }
        sim.run_for(Duration::from_micros(rng.gen_range(100..20_000)));
    }
}

/// One random fault mix, from its seed: 3 to 8 nodes publishing, partitions,
/// crashes and restarts on lossy, bursty, duplicating, reordering links;
/// with `forger`, an adversary forging a datagram every 10 ms on average
/// all along (stopped before the network heals). Returns the datagrams
/// forged, or the silent loss found.
#[allow(dead_code)]
pub fn chaos(seed: u64, forger: bool) -> Result<u64, String> {
    chaos_over(seed, forger, false)
}

/// [`chaos`], over the unicast transport with `unicast` (`Sim::unicast`:
/// `Nak`s to their stream's origin only, so no receiver hears another's).
#[allow(dead_code)]
pub fn chaos_over(seed: u64, forger: bool, unicast: bool) -> Result<u64, String> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut sim = Sim::new(seed);
    sim.unicast = unicast;
    let n = rng.gen_range(3..=8);
    sim.add_nodes("n", n);
    sim.run_for(ms(200));
    let link = random_link(&mut rng);
    let mix = format!("{n} nodes, {link:?}");
    sim.default_link = link;
    if forger {
        sim.add_adversary(ms(10));
    }
    random_steps(&mut rng, &mut sim, n);
    if forger {
        // The forger stops; past the stream timeout (crashed streams, and
        // those it made up, are given up with their Resets), every node
        // publishes on a lossy network: what the forgeries left behind
        // must not make anyone lose these events silently, and no Reset
        // comes late enough to cover them.
        sim.stop_adversary();
        for p in 0..n {
            sim.partition(p, false);
            if sim.core(p).is_none() {
                sim.restart(p);
            }
        }
        sim.run_for(Duration::from_secs(11));
        sim.default_link = lossy(0.05);
        for i in 0..3000 {
            let who = rng.gen_range(0..n);
            sim.publish(who, key(u64::MAX - i));
            sim.run_for(ms(1));
        }
    }
    // The promise is eventual: heal the network, then settle past the
    // stream timeout, so that crashed streams are given up.
    sim.stop_adversary();
    sim.heal_all();
    sim.run_for(Duration::from_secs(15));
    let forged = sim.forged;
    if std::env::var("CACHECAST_CHAOS_DEBUG").is_ok() {
        for id in 0..n {
            if let Some(c) = sim.core(id) {
                let st = c.stats();
                eprintln!(
                    "seed {seed} node {id}: delivered {} resets {:?} dropped {:?} contradicted {} reopened {} conflicting {}",
                    st.events_delivered, st.resets, st.dropped, st.position_contradicted, st.streams_reopened, st.events_conflicting
                );
            }
        }
        eprintln!(
            "seed {seed}: {:?}",
            sim.check().map(|r| (
                r.expected,
                r.delivered,
                r.covered_by_reset,
                r.excused,
                r.forged_in_place
            ))
        );
    }
    sim.check()
        .map(|_| forged)
        .map_err(|v| format!("seed {seed} ({mix}, {forged} forged):\n{v}"))
}
