//! Helpers shared by the simulator tests (virtual time, no sockets).

use std::time::Duration;

use cachecast::testkit::{Faults, Sim};
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
