//! Authenticated datagrams in the simulator: the chaos runs (loss, bursts,
//! duplication, reordering, partitions, crashes and restarts) with every
//! node in `require` mode, some encrypting, checked by the one checker;
//! restarted nodes whose clock must agree with the others' for the
//! freshness check; and the record attributing encrypted datagrams to
//! their stream.

use std::time::Duration;

use crate::common::sim::*;
use cachecast::testkit::Sim;
use cachecast::wire::{Key, Keyring};
use cachecast::{AuthMode, CoreConfig, Stats};

/// A node of the default cluster in `require` mode with the one key,
/// encrypting or not, judging new streams' freshness within `max_age`.
fn keyed(encrypt: bool, max_age: Duration) -> CoreConfig {
    let mut cfg = CoreConfig::default();
    cfg.auth.mode = AuthMode::Require;
    cfg.auth.keyring = Keyring::single(Key::derive(&[0x42; 32], cfg.cluster).unwrap());
    cfg.auth.encrypt = encrypt;
    cfg.auth.max_age = max_age;
    cfg
}

/// The `auth_*` drops of `s` other than replays (a duplicated datagram,
/// or one reordered before the first heard of its stream, is a replay).
fn unexpected_auth_drops(s: &Stats) -> Vec<(&'static str, u64)> {
    s.dropped
        .iter()
        .filter(|(k, v)| k.starts_with("auth_") && **k != "auth_replay" && **v > 0)
        .map(|(k, v)| (*k, *v))
        .collect()
}

/// One random fault mix from its seed, as tests/sim/repair.rs's chaos,
/// with every node keyed (`require`; every other one encrypting) and a
/// freshness window of 2 s, shorter than a run, so that nodes restarted
/// late must share the others' clock. Returns the replays refused and the
/// datagrams verified.
fn keyed_chaos(seed: u64) -> Result<(u64, u64), String> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut sim = Sim::new(seed);
    let n = rng.gen_range(3..=8);
    for i in 0..n {
        sim.add_node(&format!("n{i}"), keyed(i % 2 == 1, secs(2)));
    }
    sim.run_for(ms(200));
    let link = random_link(&mut rng);
    let mix = format!("{n} nodes, {link:?}");
    sim.default_link = link;
    random_steps(&mut rng, &mut sim, n);
    sim.heal_all();
    sim.run_for(secs(15));
    let fail = |why: String| format!("seed {seed} ({mix}):\n{why}");
    sim.check().map_err(|v| fail(v.to_string()))?;
    let (mut replays, mut verified) = (0, 0);
    for i in 0..n {
        if let Some(core) = sim.core(i) {
            let s = core.stats();
            let odd = unexpected_auth_drops(s);
            if !odd.is_empty() {
                return Err(fail(format!("n{i} refused authentic datagrams: {odd:?}")));
            }
            replays += s.dropped.get("auth_replay").copied().unwrap_or(0);
            verified += s.auth_verified;
        }
    }
    Ok((replays, verified))
}

#[test]
fn keyed_chaos_never_loses_silently() {
    let seeds = chaos_seeds(20);
    let runs = seeds.len();
    let mut failures = Vec::new();
    let (mut replays, mut verified) = (0, 0);
    for seed in seeds {
        match keyed_chaos(seed) {
            Ok((r, v)) => {
                replays += r;
                verified += v;
            }
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} keyed seeds failed (replay with CACHECAST_CHAOS_SEED=N):\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Duplication was on in the runs: the replay windows caught copies.
    assert!(
        verified > 0 && replays > 0,
        "{verified} verified, {replays} replays"
    );
}

/// A node restarted long after the others started (more than `max_age`)
/// stamps and judges timestamps with the same clock as they do: it hears
/// every stream after its join, and they hear it.
#[test]
fn a_node_restarted_after_max_age_is_in_sync() {
    let mut sim = Sim::new(3);
    for i in 0..3 {
        sim.add_node(&format!("n{i}"), keyed(i == 1, secs(1)));
    }
    sim.run_for(secs(3));
    sim.restart(2);
    sim.run_for(ms(200));
    for i in 0..30 {
        sim.publish(i % 3, key(i as u64));
        sim.run_for(ms(1));
    }
    sim.run_for(secs(1));
    let report = sim.check().unwrap_or_else(|v| panic!("{v}"));
    // 30 events, each to 3 nodes (its publisher's own included).
    assert_eq!((report.expected, report.delivered), (90, 90), "{report:?}");
    for i in 0..3 {
        let s = sim.core(i).unwrap().stats();
        assert!(s.dropped.is_empty(), "n{i}: {:?}", s.dropped);
        assert_eq!(s.resets_total(), 0, "n{i}");
    }
}

/// The record notes, for each node, when it last heard each stream (the
/// checker's rule 3 excuses a node only for streams it never heard after
/// giving them up). An encrypted datagram must count for its stream, read
/// from its header, though its body cannot be decoded without the key.
#[test]
fn the_record_attributes_encrypted_datagrams_to_their_stream() {
    let mut sim = Sim::new(5);
    sim.add_node("clear", keyed(false, secs(60)));
    sim.add_node("encrypted", keyed(true, secs(60)));
    sim.run_for(ms(200));
    sim.publish(1, key(1));
    sim.run_for(ms(100));
    let encrypted = stream_of(&sim, 1);
    assert!(
        sim.life(0).heard.contains_key(&encrypted),
        "heard: {:?}",
        sim.life(0).heard.keys().collect::<Vec<_>>()
    );
    assert!(!sim.life(0).heard.contains_key(&0));
    assert_eq!(sim.delivered_events(0), vec![(encrypted, 1)]);
}
