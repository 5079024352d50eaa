//! Authentication in the sans-IO core: two keyed nodes exchange events,
//! a node with the wrong key is refused, replays are refused, encryption
//! hides the body, and every refusal is counted by reason.

use std::time::{Duration, Instant};

use cachecast::proto::NodeCore;
use cachecast::wire::{self, Key, Keyring};
use cachecast::{AuthMode, CoreConfig, Delivery, Event};

const CLUSTER: &str = "auth-core";

fn keyring(secret: u8) -> Keyring {
    Keyring::single(Key::derive(&[secret; 32], wire::cluster_hash(CLUSTER)).unwrap())
}

const WALL: u64 = 1_800_000_000_000;

fn core(stream: u64, mode: AuthMode, keys: Keyring, encrypt: bool, t: Instant) -> NodeCore {
    core_at(stream, mode, keys, encrypt, WALL, t)
}

/// A core whose clock reads `wall` (ms since the epoch) at `t`.
fn core_at(
    stream: u64,
    mode: AuthMode,
    keys: Keyring,
    encrypt: bool,
    wall: u64,
    t: Instant,
) -> NodeCore {
    let mut cfg = CoreConfig {
        cluster: wire::cluster_hash(CLUSTER),
        stream,
        node_name: format!("n{stream}"),
        seed: stream,
        ..CoreConfig::default()
    };
    cfg.auth.mode = mode;
    cfg.auth.keyring = keys;
    cfg.auth.encrypt = encrypt;
    cfg.auth.wall_clock_ms = wall;
    NodeCore::new(cfg, t).unwrap()
}

/// Every datagram `from` has to send at `t`.
fn out(from: &mut NodeCore, t: Instant) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let mut buf = Vec::new();
    while from.poll_transmit(t, &mut buf) {
        v.push(buf.clone());
    }
    v
}

fn keys_delivered(n: &mut NodeCore) -> Vec<String> {
    let mut keys = Vec::new();
    while let Some(d) = n.poll_delivery() {
        match d {
            Delivery::Event { event, .. } => {
                if let Event::Invalidate { keys: k } = event.to_event() {
                    keys.extend(k);
                }
            }
            Delivery::Reset { .. } => panic!("unexpected reset"),
        }
    }
    keys
}

#[test]
fn keyed_nodes_exchange_events_and_refuse_wrong_keys_and_replays() {
    for encrypt in [false, true] {
        let t0 = Instant::now();
        let mut a = core(1, AuthMode::Require, keyring(1), encrypt, t0);
        let mut b = core(2, AuthMode::Require, keyring(1), encrypt, t0);
        let mut c = core(3, AuthMode::Require, keyring(9), encrypt, t0);
        let t = t0 + Duration::from_millis(1);
        a.publish(
            t,
            Event::Invalidate {
                keys: vec!["user:42".into()],
            },
        )
        .unwrap();
        let dgrams = out(&mut a, t);
        assert!(!dgrams.is_empty());
        for d in &dgrams {
            assert_eq!(d[5] & wire::FLAG_AUTH, wire::FLAG_AUTH);
            // Encrypted: the key is not in the clear.
            if encrypt {
                assert!(
                    !d.windows(7).any(|w| w == b"user:42"),
                    "an encrypted datagram shows its key"
                );
            }
            b.handle_datagram(t, d);
            c.handle_datagram(t, d);
        }
        let got = keys_delivered(&mut b);
        assert!(got.contains(&"user:42".to_string()), "{got:?}");
        assert!(keys_delivered(&mut c).is_empty());
        let cs = c.stats_snapshot();
        assert_eq!(
            cs.dropped.get("auth_unknown_key"),
            Some(&(dgrams.len() as u64))
        );
        // Replays, in order and reversed: all refused.
        for d in dgrams.iter().chain(dgrams.iter().rev()) {
            b.handle_datagram(t, d);
        }
        assert!(keys_delivered(&mut b).is_empty());
        assert_eq!(
            b.stats_snapshot().dropped.get("auth_replay"),
            Some(&(2 * dgrams.len() as u64))
        );
        // A flipped bit anywhere: refused.
        let d = &dgrams[dgrams.len() - 1];
        let mut b2 = core(4, AuthMode::Require, keyring(1), encrypt, t0);
        for i in 0..d.len() {
            let mut m = d.clone();
            m[i] ^= 0x10;
            b2.handle_datagram(t, &m);
        }
        let s = b2.stats_snapshot();
        assert_eq!(s.auth_verified, 0, "a bit-flipped datagram verified");
        assert!(keys_delivered(&mut b2).is_empty());
    }
}

#[test]
fn accept_takes_both_and_require_refuses_unkeyed() {
    let t0 = Instant::now();
    let mut plain = core(1, AuthMode::Off, Keyring::default(), false, t0);
    let mut acc = core(2, AuthMode::Accept, keyring(1), false, t0);
    let mut req = core(3, AuthMode::Require, keyring(1), false, t0);
    let t = t0 + Duration::from_millis(1);
    plain
        .publish(
            t,
            Event::Invalidate {
                keys: vec!["p".into()],
            },
        )
        .unwrap();
    acc.publish(
        t,
        Event::Invalidate {
            keys: vec!["a".into()],
        },
    )
    .unwrap();
    let from_plain = out(&mut plain, t);
    let from_acc = out(&mut acc, t);
    for d in &from_plain {
        acc.handle_datagram(t, d);
        req.handle_datagram(t, d);
    }
    for d in &from_acc {
        plain.handle_datagram(t, d);
        req.handle_datagram(t, d);
    }
    assert_eq!(keys_delivered(&mut acc), vec!["a", "p"]);
    assert_eq!(keys_delivered(&mut plain), vec!["p", "a"]);
    assert_eq!(keys_delivered(&mut req), vec!["a"]);
    assert_eq!(
        req.stats_snapshot().dropped.get("auth_missing"),
        Some(&(from_plain.len() as u64))
    );
}

fn inv(k: &str) -> Event {
    Event::Invalidate {
        keys: vec![k.into()],
    }
}

/// A receiver that restarts takes nothing sent before it started (less the
/// start skew, 2 s): what an attacker captured from the old life cannot be
/// replayed to the new one, though it is well within `max_age`.
#[test]
fn a_restarted_receiver_refuses_replays_of_before_its_start() {
    let t0 = Instant::now();
    let mut a = core(1, AuthMode::Require, keyring(1), false, t0);
    let mut b = core(2, AuthMode::Require, keyring(1), false, t0);
    let t = t0 + Duration::from_millis(1);
    a.publish(t, inv("user:42")).unwrap();
    let captured = out(&mut a, t);
    for d in &captured {
        b.handle_datagram(t, d);
    }
    assert!(keys_delivered(&mut b).contains(&"user:42".to_string()));
    // B restarts 30 s later (a new core, same key); the capture is replayed.
    let t2 = t0 + Duration::from_secs(30);
    let mut b2 = core_at(3, AuthMode::Require, keyring(1), false, WALL + 30_000, t2);
    for d in &captured {
        b2.handle_datagram(t2, d);
    }
    assert!(keys_delivered(&mut b2).is_empty());
    let s = b2.stats_snapshot();
    assert_eq!(s.auth_verified, 0);
    assert_eq!(s.dropped.get("auth_stale"), Some(&(captured.len() as u64)));
    assert_eq!(s.auth_stale_skew_ms, 30_000 - 1);
    // What A sends now is taken.
    let t3 = t2 + Duration::from_millis(1);
    let mut a_now = core_at(4, AuthMode::Require, keyring(1), false, WALL + 30_000, t2);
    a_now.publish(t3, inv("user:43")).unwrap();
    for d in &out(&mut a_now, t3) {
        b2.handle_datagram(t3, d);
    }
    assert_eq!(keys_delivered(&mut b2), vec!["user:43"]);
}

/// In `accept` mode an unauthenticated datagram is refused for a stream
/// heard authenticated: a forger cannot strip a keyed node's trailer and
/// speak for it (here, a forged Goodbye that would retire the stream).
#[test]
fn accept_mode_refuses_unkeyed_datagrams_of_a_keyed_stream() {
    let t0 = Instant::now();
    let mut a = core(1, AuthMode::Accept, keyring(1), false, t0);
    let mut r = core(2, AuthMode::Accept, keyring(1), false, t0);
    let t = t0 + Duration::from_millis(1);
    a.publish(t, inv("k1")).unwrap();
    for d in &out(&mut a, t) {
        r.handle_datagram(t, d);
    }
    assert_eq!(keys_delivered(&mut r), vec!["k1"]);
    let mut forged = Vec::new();
    wire::encode(
        &wire::Header::new(wire::cluster_hash(CLUSTER), 1),
        &wire::Body::Goodbye { next_seq: 2 },
        &mut forged,
    );
    r.handle_datagram(t, &forged);
    assert_eq!(r.stats_snapshot().dropped.get("auth_missing"), Some(&1));
    let t2 = t + Duration::from_millis(5);
    a.publish(t2, inv("k2")).unwrap();
    for d in &out(&mut a, t2) {
        r.handle_datagram(t2, d);
    }
    assert_eq!(keys_delivered(&mut r), vec!["k2"]);
}

/// A unicast node learns a peer from a datagram only if it was
/// authenticated, when keys are in use: in `accept` mode an unkeyed
/// datagram is taken but teaches no address (a forger could otherwise
/// point the node's fan-out and repairs anywhere); in `off` mode any
/// datagram does (there is nothing to check).
#[test]
fn only_authenticated_datagrams_teach_a_peer_address_when_keys_are_used() {
    let t = Instant::now();
    let from: std::net::SocketAddr = "10.9.0.2:7467".parse().unwrap();
    let mut keyed = core(1, AuthMode::Require, keyring(1), false, t);
    let mut unkeyed = core(2, AuthMode::Off, Keyring::default(), false, t);
    let t = t + Duration::from_millis(1);
    let event = || Event::Invalidate {
        keys: vec!["k".into()],
    };
    keyed.publish(t, event()).unwrap();
    unkeyed.publish(t, event()).unwrap();
    let keyed_hello = out(&mut keyed, t);
    let unkeyed_hello = out(&mut unkeyed, t);
    assert!(!keyed_hello.is_empty() && !unkeyed_hello.is_empty());

    let mut accept = core(3, AuthMode::Accept, keyring(1), false, t);
    accept.handle_datagram_from(t, Some(from), &unkeyed_hello[0]);
    assert_eq!(accept.stats().datagrams_received, 1);
    // Taken (accept mode), not refused: the test is about learning.
    assert!(accept.stats().dropped.is_empty(), "{:?}", accept.stats());
    assert_eq!(
        accept.take_accepted_from(),
        None,
        "unauthenticated, yet learned"
    );
    accept.handle_datagram_from(t, Some(from), &keyed_hello[0]);
    assert_eq!(accept.take_accepted_from(), Some(from));
    assert_eq!(accept.take_accepted_from(), None, "taken once");

    let mut off = core(4, AuthMode::Off, Keyring::default(), false, t);
    off.handle_datagram_from(t, Some(from), &unkeyed_hello[0]);
    assert_eq!(off.take_accepted_from(), Some(from));
}

/// A repair sent to one node alone travels apart from the group's
/// datagrams (to its direct socket), and a receiver reads the two in
/// turns: it may take more than 1,024 of the group's datagrams sealed
/// after the repair before the repair itself. The repair is counted apart
/// (from `DIRECTED`), so it is still taken; and it is taken once.
#[test]
fn a_directed_repair_overtaken_by_many_group_datagrams_is_not_a_replay() {
    for encrypt in [false, true] {
        let t0 = Instant::now();
        let mut a = core(1, AuthMode::Require, keyring(1), encrypt, t0);
        a.set_directed_multicast(true, Some(7467));
        let mut b = core(2, AuthMode::Require, keyring(1), encrypt, t0);
        let (repair, mut t) = directed_repair(&mut a, &mut b, t0);
        // Counted apart from the group's datagrams.
        assert!(counter(&repair) >= 1 << 63, "{:x}", counter(&repair));
        // 1,100 of the group's datagrams, sealed after it, reach B first.
        let mut group = 0;
        for i in 0..1100 {
            t += Duration::from_millis(1);
            a.publish(t, inv(&format!("later{i}"))).unwrap();
            for d in out(&mut a, t) {
                b.handle_datagram(t, &d);
                group += 1;
            }
            assert_eq!(keys_delivered(&mut b), vec![format!("later{i}")]);
        }
        assert!(group > 1024, "{group} group datagrams");
        b.handle_datagram_from(t, Some("127.0.0.1:7467".parse().unwrap()), &repair);
        assert_eq!(keys_delivered(&mut b), vec!["k1"], "encrypt: {encrypt}");
        let s = b.stats_snapshot();
        assert_eq!(s.dropped.get("auth_replay"), None, "{:?}", s.dropped);
        // Taken once: the same repair again is a replay.
        b.handle_datagram(t, &repair);
        assert_eq!(b.stats_snapshot().dropped.get("auth_replay"), Some(&1));
    }
}

/// A publishes k0, k1, k2; B misses k1, asks for it from `B_ADDR`, and A
/// answers B alone: returns that repair, not yet given to B.
fn directed_repair(a: &mut NodeCore, b: &mut NodeCore, t0: Instant) -> (Vec<u8>, Instant) {
    let mut t = t0 + Duration::from_millis(1);
    // k0 reaches B, k1 is lost, k2 shows B the gap.
    for (k, heard) in [("k0", true), ("k1", false), ("k2", true)] {
        a.publish(t, inv(k)).unwrap();
        for d in out(a, t) {
            if heard {
                b.handle_datagram(t, &d);
            }
        }
        t += Duration::from_millis(1);
    }
    // Events are delivered as they come; the gap is asked for.
    assert_eq!(keys_delivered(b), vec!["k0", "k2"]);
    // B asks (from its direct socket); A answers B alone.
    let mut nak = None;
    let deadline = t + Duration::from_secs(2);
    let mut buf = Vec::new();
    while nak.is_none() && t < deadline {
        if b.poll_timeout().is_some_and(|at| at <= t) {
            b.handle_timeout(t);
        }
        while b.poll_transmit(t, &mut buf) {
            if b.transmit_is_nak() {
                nak = Some(buf.clone());
            }
        }
        t += Duration::from_millis(1);
    }
    let nak = nak.expect("B asks for k1");
    a.handle_datagram_from(t, Some(B_ADDR), &nak);
    let mut repair = None;
    while a.poll_transmit(t, &mut buf) {
        if a.transmit_to() == Some(B_ADDR) {
            repair = Some(buf.clone());
        }
    }
    (repair.expect("a repair for B alone"), t)
}

const B_ADDR: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    40002,
));

/// The transmit counter in a sealed datagram's trailer.
fn counter(dgram: &[u8]) -> u64 {
    wire::Trailer::read(dgram, 0).unwrap().0.counter
}

/// Over unicast every datagram goes to one node on one socket: a repair
/// for one node is counted with the rest (so that keyed builds from
/// before the directed count still take it during a rolling upgrade).
#[test]
fn a_unicast_repair_is_counted_with_the_rest() {
    let t0 = Instant::now();
    let mut a = core(1, AuthMode::Require, keyring(1), false, t0);
    a.set_directed(true);
    let mut b = core(2, AuthMode::Require, keyring(1), false, t0);
    let (repair, t) = directed_repair(&mut a, &mut b, t0);
    assert!(counter(&repair) < 1 << 63, "{:x}", counter(&repair));
    b.handle_datagram_from(t, Some(B_ADDR), &repair);
    assert_eq!(keys_delivered(&mut b), vec!["k1"]);
}
