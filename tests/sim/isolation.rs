//! Isolation, in virtual time: a node is isolated only when it hears
//! nobody at all for longer than the lease, not merely when no member is
//! live — short-lived publishers that come and go prove it is connected.

use std::time::Duration;

use cachecast::testkit::Sim;
use cachecast::wire::Event;
use cachecast::{CoreConfig, ResetReason};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Two listeners; the second is cut off for `cut`, from 2 s on, while a
/// new publisher comes every second, publishes one key, says Goodbye after
/// 250 ms and is gone after 350 ms (as `cachecast send` does).
fn short_lived_publishers_during_a_cut(seed: u64, cut: Duration) -> Sim {
    let listener = CoreConfig {
        receive_only: true,
        ..CoreConfig::default()
    };
    let publisher = CoreConfig {
        deliver_own: false,
        ..CoreConfig::default()
    };
    let mut sim = Sim::new(seed);
    sim.add_node("r1", listener.clone());
    sim.add_node("r2", listener);
    sim.run_for(ms(200));
    let start = sim.elapsed();
    let mut cut_at = None;
    let mut healed = false;
    for i in 0..(cut.as_secs() + 8) {
        let p = sim.add_node(&format!("p{i}"), publisher.clone());
        sim.run_for(ms(150)); // past the sync window
        sim.publish(
            p,
            Event::Invalidate {
                keys: vec![format!("k{i}")],
            },
        );
        sim.run_for(ms(100));
        sim.close(p);
        sim.run_for(ms(100));
        sim.crash(p); // the linger is over: the process exits
                      // The rest of the second, in steps that can cut and heal.
        for _ in 0..13 {
            let t = sim.elapsed() - start;
            if cut_at.is_none() && t >= Duration::from_secs(2) {
                sim.partition(1, true);
                cut_at = Some(t);
            }
            if let Some(c) = cut_at {
                if !healed && t >= c + cut {
                    sim.partition(1, false);
                    healed = true;
                }
            }
            sim.run_for(ms(50));
        }
    }
    assert!(healed, "the cut healed before the last publisher");
    sim.run_for(Duration::from_secs(12));
    sim
}

#[test]
fn a_listener_that_hears_publishers_is_not_isolated_while_its_only_peer_is_cut_off() {
    for cut in [3, 15] {
        let sim = short_lived_publishers_during_a_cut(7, Duration::from_secs(cut));
        // r1 heard every publisher: nothing to reset for.
        assert!(
            sim.resets(0).is_empty(),
            "cut {cut} s: r1 was never cut off, yet: {:?}",
            sim.resets(0)
        );
        // r2 missed publishers: Resets cover them, and none is silent.
        assert!(!sim.resets(1).is_empty(), "cut {cut} s: r2 missed events");
        if let Err(v) = sim.check() {
            panic!("cut {cut} s: {v}");
        }
    }
}

#[test]
fn a_listener_cut_off_past_the_lease_resets_as_isolated_when_it_hears_the_cluster_again() {
    let sim = short_lived_publishers_during_a_cut(8, Duration::from_secs(15));
    let isolated: Vec<u64> = sim
        .resets(1)
        .into_iter()
        .filter_map(|(_, r)| match r {
            ResetReason::Isolated { silent_ms } => Some(silent_ms),
            _ => None,
        })
        .collect();
    assert_eq!(isolated.len(), 1, "{:?}", sim.resets(1));
    assert!(
        (14_000..=16_000).contains(&isolated[0]),
        "silent for the cut: {isolated:?}"
    );
}

#[test]
fn silence_after_a_member_died_long_before_is_a_quiet_cluster_not_isolation() {
    let listener = CoreConfig {
        receive_only: true,
        ..CoreConfig::default()
    };
    let mut sim = Sim::new(9);
    sim.add_node("r1", listener.clone());
    sim.add_node("r2", listener);
    sim.run_for(ms(500));
    sim.crash(1);
    // r1 alone hears nobody: r2's death makes it think itself cut off, and
    // the next node it hears costs it one Reset (it cannot tell).
    sim.run_for(Duration::from_secs(5));
    publish_one(&mut sim, 0);
    assert_eq!(sim.resets(0).len(), 1, "{:?}", sim.resets(0));
    // Then publishers now and then, with silences longer than the lease in
    // between: nobody died in them, so no more Resets.
    for i in 1..4 {
        sim.run_for(Duration::from_secs(5));
        publish_one(&mut sim, i);
    }
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.resets(0).len(), 1, "{:?}", sim.resets(0));
    assert!(matches!(sim.resets(0)[0].1, ResetReason::Isolated { .. }));
    if let Err(v) = sim.check() {
        panic!("{v}");
    }
}

/// A publisher joins, publishes one key, says Goodbye and exits.
fn publish_one(sim: &mut Sim, i: u64) {
    let p = sim.add_node(&format!("p{i}"), CoreConfig::default());
    sim.run_for(ms(150));
    sim.publish(
        p,
        Event::Invalidate {
            keys: vec![format!("k{i}")],
        },
    );
    sim.run_for(ms(100));
    sim.close(p);
    sim.run_for(ms(100));
    sim.crash(p);
}

/// Two nodes cut off from two others for 25 s (each side still hears its
/// own half, so nobody is isolated); on the far side a publisher publishes
/// and ends 12 s into the cut. After the heal, each near node has the
/// events or a Reset after them: it learns the stream from the far side's
/// reports (still kept), or Resets for a member back from a long death.
#[test]
fn a_two_sided_partition_loses_nothing_silently() {
    let mut sim = Sim::new(7);
    let listener = CoreConfig {
        receive_only: true,
        ..CoreConfig::default()
    };
    let n0 = sim.add_node("n0", listener.clone());
    let n1 = sim.add_node("n1", listener.clone());
    let n2 = sim.add_node("n2", listener);
    sim.run_for(ms(500));
    let cut = |sim: &mut Sim, far: &[usize], on: bool| {
        for &a in &[n0, n1] {
            for &b in far {
                let f = if on {
                    cachecast::testkit::Faults::dropping(|_| true)
                } else {
                    cachecast::testkit::Faults::default()
                };
                sim.set_link(a, b, f.clone());
                sim.set_link(b, a, f);
            }
        }
    };
    cut(&mut sim, &[n2], true);
    sim.run_for(Duration::from_secs(11));
    let p = sim.add_node("p", CoreConfig::default());
    cut(&mut sim, &[n2, p], true);
    sim.run_for(ms(200));
    let published_at = sim.now();
    for i in 0..10 {
        sim.publish(
            p,
            Event::Invalidate {
                keys: vec![format!("k{i}")],
            },
        );
    }
    sim.run_for(ms(100));
    sim.close(p);
    sim.run_for(ms(300));
    sim.crash(p);
    sim.run_for(Duration::from_secs(13));
    cut(&mut sim, &[n2, p], false);
    sim.run_for(Duration::from_secs(15));
    let stream = sim.life(p).stream;
    for n in [n0, n1] {
        let got = sim
            .delivered_events(n)
            .iter()
            .filter(|(s, _)| *s == stream)
            .count();
        let reset_after = sim.resets(n).iter().any(|(at, _)| *at >= published_at);
        assert!(
            got == 10 || reset_after,
            "node {n}: {got} of 10 delivered and no Reset after them: {:?}",
            sim.resets(n)
        );
    }
}
