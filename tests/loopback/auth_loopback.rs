//! Authenticated datagrams on real sockets (loopback: interface 127.0.0.1,
//! TTL 0, a fresh group per test, key files under /tmp removed after):
//! who is refused and under which counter (a different secret, a forger
//! that copies the real key id), replays of every datagram of a real
//! exchange, forgeries without a key in `require` mode, and the roll-out
//! modes mixed in one cluster.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::auth::*;
use cachecast::proto::NodeCore;
use cachecast::testkit::{Loopback, LoopbackCluster};
use cachecast::wire::{self, Body, Event, Events, Header, Key, Keyring, Position, Trailer};
use cachecast::{AuthMode, CoreConfig, Delivery, Liveness, Node, Stats};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// What of a node's view a refused datagram must leave alone: every
/// stream it follows (position, gaps, name) and every member (name, state,
/// keys), without the clocks.
async fn view(node: &Node) -> String {
    let streams: Vec<_> = node
        .streams()
        .await
        .into_iter()
        .map(|s| (s.stream, s.node, s.next_expected, s.known_end, s.gaps))
        .collect();
    let members: Vec<_> = node
        .members()
        .await
        .into_iter()
        .map(|m| (m.stream, m.name, m.state, m.keys, m.sends_with))
        .collect();
    format!("streams {streams:?}\nmembers {members:?}")
}

/// The counters a refused datagram must leave alone.
fn decisions(s: &Stats) -> String {
    format!(
        "delivered {} resets {:?} gaps {} streams {} learned {}/{} naks {} repairs {} unavailable {} ended {}",
        s.events_delivered,
        s.resets,
        s.gaps_opened,
        s.streams,
        s.streams_learned,
        s.positions_learned,
        s.naks_sent,
        s.repairs_sent,
        s.unavailable_sent,
        s.streams_ended,
    )
}

// ---------------------------------------------------------------------------
// Right key, another secret, a copied key id.

/// A node holding another secret has another key id: everything it sends
/// is refused as `auth_unknown_key` (not `auth_bad_tag`: the receiver has
/// no key of that id to check a tag with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_secret_is_refused_as_auth_unknown_key() {
    let dir = KeyDir::new();
    let (good, good_id) = dir.new_key("good");
    let (other, other_id) = dir.new_key("other");
    assert_ne!(good_id, other_id);
    let place = Loopback::new();
    let listener = join(keyed(&place, "listener", &good, None)).await;
    let mut heard = Reader::new(&listener);
    let right = join(keyed(&place, "right", &good, None)).await;
    let wrong = join(keyed(&place, "wrong", &other, None)).await;
    for i in 0..50 {
        right.invalidate([format!("right-{i}")]).await.unwrap();
        wrong.invalidate([format!("wrong-{i}")]).await.unwrap();
    }
    heard
        .until("the right node's 50 events", |r| {
            r.keys(right.stream()).len() == 50
        })
        .await;
    // Every datagram the wrong node ever sent, and nothing else, is
    // counted: at the listener and at the right node.
    wrong.shutdown().await;
    let sent = wrong.stats().await.protocol.datagrams_sent;
    assert!(sent > 3, "{sent}");
    wait_dropped(&listener, "auth_unknown_key", sent).await;
    wait_dropped(&right, "auth_unknown_key", sent).await;
    heard.drain();
    assert_eq!(heard.keys(right.stream()), named("right", 50));
    assert!(heard.keys(wrong.stream()).is_empty());
    assert_eq!((heard.events(), heard.resets()), (50, 0));
    let s = listener.stats().await.protocol;
    assert_eq!(auth_drops(&s), vec![("auth_unknown_key", sent)]);
    assert_eq!(s.resets_total(), 0);
    // The wrong node is no member and no stream of the listener; the right
    // one is, holding and sending with the good key.
    assert!(listener
        .streams()
        .await
        .iter()
        .all(|st| st.stream != wrong.stream()));
    let members = listener.members().await;
    assert!(members.iter().all(|m| m.stream != wrong.stream()));
    let r = members.iter().find(|m| m.stream == right.stream()).unwrap();
    assert_eq!((r.sends_with, r.state), (Some(good_id), Liveness::Live));
    listener.shutdown().await;
    right.shutdown().await;
}

/// The datagrams a forger holding its own secret produces for `cluster`:
/// a `Hello`, then one `Data` per event.
fn forger_datagrams(cluster: &str, secret: &[u8], events: usize) -> Vec<Vec<u8>> {
    let t0 = Instant::now();
    let mut cfg = CoreConfig {
        cluster: wire::cluster_hash(cluster),
        stream: rand::random::<u64>() | 1,
        node_name: "forger".into(),
        seed: 1,
        ..CoreConfig::default()
    };
    cfg.auth.mode = AuthMode::Require;
    cfg.auth.keyring = Keyring::single(Key::derive(secret, cfg.cluster).unwrap());
    cfg.auth.wall_clock_ms = unix_ms();
    let mut core = NodeCore::new(cfg, t0).unwrap();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while core.poll_transmit(t0, &mut buf) {
        out.push(buf.clone());
    }
    for i in 0..events {
        let t = t0 + Duration::from_millis(i as u64 + 1);
        core.publish(
            t,
            Event::Invalidate {
                keys: vec![format!("forged-{i}")],
            },
        )
        .unwrap();
        while core.poll_transmit(t, &mut buf) {
            out.push(buf.clone());
        }
    }
    out
}

/// Overwrites the key id of a sealed datagram's trailer.
fn set_key_id(d: &mut [u8], id: u32) {
    let at = d.len() - wire::TRAILER_LEN;
    d[at..at + 4].copy_from_slice(&id.to_le_bytes());
}

/// A forger that puts the cluster's real key id on datagrams it sealed with
/// a secret of its own: the receivers hold a key of that id, the tag does
/// not verify, `auth_bad_tag`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forger_that_copies_the_real_key_id_is_refused_as_auth_bad_tag() {
    let dir = KeyDir::new();
    let (good, good_id) = dir.new_key("good");
    let place = Loopback::new();
    let listener = join(keyed(&place, "listener", &good, None)).await;
    let mut heard = Reader::new(&listener);
    let right = join(keyed(&place, "right", &good, None)).await;
    let mut forged = forger_datagrams(place.cluster(), &[0x5a; 32], 30);
    assert!(forged.len() > 1);
    for d in &mut forged {
        let (h, hl) = wire::decode_header(d, wire::cluster_hash(place.cluster())).unwrap();
        assert!(h.authenticated());
        assert_ne!(Trailer::read(d, hl).unwrap().0.key_id, good_id);
        set_key_id(d, good_id);
        place.send_raw(d).unwrap();
    }
    let n = forged.len() as u64;
    wait_dropped(&listener, "auth_bad_tag", n).await;
    wait_dropped(&right, "auth_bad_tag", n).await;
    // The real node's events after the forgeries still arrive, alone.
    publish(&right, "right", 10).await;
    heard
        .until("the right node's events", |r| {
            r.keys(right.stream()).len() == 10
        })
        .await;
    heard.drain();
    assert_eq!((heard.events(), heard.resets()), (10, 0));
    for node in [&listener, &right] {
        let s = node.stats().await.protocol;
        assert_eq!(auth_drops(&s), vec![("auth_bad_tag", n)]);
        assert_eq!(s.resets_total(), 0);
        assert_eq!(node.members().await.len(), 2, "the forger is no member");
    }
    listener.shutdown().await;
    right.shutdown().await;
}

// ---------------------------------------------------------------------------
// Replays.

/// Every datagram of a real exchange, captured and sent again in order,
/// reversed and shuffled: each is refused as `auth_replay` by the node it
/// reaches (the listener the publisher's, the publisher the listener's;
/// a node never reads its own), nothing is delivered, nothing Resets.
/// Then the listener restarts, hears the live publisher (its window starts
/// above every captured counter), and refuses the publisher's captured
/// datagrams again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_of_a_real_exchange_are_refused_in_any_order_and_after_a_restart() {
    let dir = KeyDir::new();
    let (key, _) = dir.new_key("cluster");
    let place = Loopback::new();
    let capture = Capture::start(&place);
    let listener = join(keyed(&place, "listener", &key, None)).await;
    let mut heard = Reader::new(&listener);
    let publisher = join(keyed(&place, "publisher", &key, None)).await;
    publish(&publisher, "live", 100).await;
    heard
        .until("100 events", |r| r.keys(publisher.stream()).len() == 100)
        .await;
    // The exchange also holds the membership's reports: wait for one of
    // each node's, heard by the other.
    wait_for("reports both ways", async || {
        listener.stats().await.protocol.reports_received > 0
            && publisher.stats().await.protocol.reports_received > 0
    })
    .await;
    let of_publisher = capture.of(place.cluster(), publisher.stream());
    let of_listener = capture.of(place.cluster(), listener.stream());
    assert!(of_publisher.len() >= 3, "{}", of_publisher.len());
    assert!(!of_listener.is_empty());
    let mut exchange: Vec<Vec<u8>> = of_publisher.iter().chain(&of_listener).cloned().collect();
    let (p, l) = (of_publisher.len() as u64, of_listener.len() as u64);
    let before = (view(&listener).await, view(&publisher).await);
    let decided = decisions(&listener.stats().await.protocol);
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    for (pass, order) in ["in order", "reversed", "shuffled"].iter().enumerate() {
        match *order {
            "reversed" => exchange.reverse(),
            "shuffled" => exchange.shuffle(&mut rng),
            _ => {}
        }
        for d in &exchange {
            place.send_raw(d).unwrap();
        }
        let k = pass as u64 + 1;
        wait_dropped(&listener, "auth_replay", k * p).await;
        wait_dropped(&publisher, "auth_replay", k * l).await;
        assert_eq!(
            (view(&listener).await, view(&publisher).await),
            before,
            "{order}"
        );
        assert_eq!(
            decisions(&listener.stats().await.protocol),
            decided,
            "{order}"
        );
    }
    heard.drain();
    assert_eq!((heard.events(), heard.resets()), (100, 0));
    for node in [&listener, &publisher] {
        let s = node.stats().await.protocol;
        assert_eq!(s.resets_total(), 0);
        assert_eq!(auth_drops(&s).len(), 1, "{:?}", s.dropped);
    }

    // A restart: a new stream with no window yet. It joins and hears the
    // live publisher first, so the publisher's captured counters are all
    // below the start of its window. (The old listener's own datagrams are
    // not replayed to it: they are of a stream it never heard, fresh within
    // `max_age`, which a receiver cannot tell from a member it has not met.)
    listener.shutdown().await;
    let restarted = join(keyed(&place, "listener", &key, None)).await;
    let mut heard = Reader::new(&restarted);
    wait_for(
        "the restarted listener to follow the publisher",
        async || {
            restarted
                .streams()
                .await
                .iter()
                .any(|s| s.stream == publisher.stream())
        },
    )
    .await;
    let before = view(&restarted).await;
    for d in &of_publisher {
        place.send_raw(d).unwrap();
    }
    wait_dropped(&restarted, "auth_replay", p).await;
    assert_eq!(view(&restarted).await, before);
    publish(&publisher, "after", 5).await;
    heard
        .until("the events after the replays", |r| {
            r.keys(publisher.stream()) == named("after", 5)
        })
        .await;
    heard.drain();
    assert_eq!((heard.events(), heard.resets()), (5, 0));
    let s = restarted.stats().await.protocol;
    assert_eq!(auth_drops(&s), vec![("auth_replay", p)]);
    assert_eq!(s.resets_total(), 0);
    restarted.shutdown().await;
    publisher.shutdown().await;
}

/// Captured datagrams older than a receiver's `max_age` (1 s here), sent
/// to a receiver that never heard their stream: `auth_stale`, every one.
/// A receiver that did hear the stream refuses them too (as replays while
/// it keeps the stream's window, as stale once it forgot it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_older_than_max_age_are_refused_as_auth_stale() {
    let dir = KeyDir::new();
    let (key, _) = dir.new_key("cluster");
    let place = Loopback::new();
    let max_age = Duration::from_secs(1);
    let short = |name: &str| {
        let mut cfg = keyed(&place, name, &key, None);
        cfg.protocol.auth.max_age = max_age;
        cfg
    };
    let capture = Capture::start(&place);
    let witness = join(short("witness")).await;
    let mut heard = Reader::new(&witness);
    let publisher = join(keyed(&place, "publisher", &key, None)).await;
    publish(&publisher, "old", 20).await;
    heard
        .until("20 events", |r| r.keys(publisher.stream()).len() == 20)
        .await;
    // The publisher leaves; the capture holds every datagram it sent.
    publisher.shutdown().await;
    let sent = publisher.stats().await.protocol.datagrams_sent;
    wait_for("every datagram of the publisher captured", async || {
        capture.of(place.cluster(), publisher.stream()).len() as u64 == sent
    })
    .await;
    let old = capture.of(place.cluster(), publisher.stream());
    let cluster = wire::cluster_hash(place.cluster());
    let newest = old
        .iter()
        .map(|d| {
            let (_, hl) = wire::decode_header(d, cluster).unwrap();
            Trailer::read(d, hl).unwrap().0.timestamp_ms
        })
        .max()
        .unwrap();
    // A receiver that never heard the publisher.
    let fresh = join(short("fresh")).await;
    let mut fresh_heard = Reader::new(&fresh);
    let max_age_ms = max_age.as_millis() as u64;
    wait_for("the captured datagrams to age past max_age", async || {
        unix_ms() > newest + max_age_ms + 20
    })
    .await;
    let before = (view(&fresh).await, view(&witness).await);
    for d in &old {
        place.send_raw(d).unwrap();
    }
    let n = old.len() as u64;
    wait_dropped(&fresh, "auth_stale", n).await;
    wait_for("the witness to refuse every one", async || {
        let s = witness.stats().await.protocol;
        dropped(&s, "auth_stale") + dropped(&s, "auth_replay") == n
    })
    .await;
    assert_eq!((view(&fresh).await, view(&witness).await), before);
    assert!(fresh
        .streams()
        .await
        .iter()
        .all(|s| s.stream != publisher.stream()));
    fresh_heard.drain();
    heard.drain();
    assert_eq!((fresh_heard.events(), fresh_heard.resets()), (0, 0));
    assert_eq!((heard.events(), heard.resets()), (20, 0));
    let s = fresh.stats().await.protocol;
    assert_eq!(auth_drops(&s), vec![("auth_stale", n)]);
    assert_eq!(s.resets_total(), 0);
    assert_eq!(witness.stats().await.protocol.resets_total(), 0);
    fresh.shutdown().await;
    witness.shutdown().await;
}

// ---------------------------------------------------------------------------
// Forgeries without the key, in require mode.

/// `d` with flag bit 0 set and a trailer: `key_id`, `algorithm`, this
/// host's clock, `counter`, and a random tag.
fn with_fake_trailer(mut d: Vec<u8>, key_id: u32, algorithm: u8, counter: u64) -> Vec<u8> {
    d[5] |= wire::FLAG_AUTH;
    d.extend_from_slice(&key_id.to_le_bytes());
    d.push(algorithm);
    d.extend_from_slice(&unix_ms().to_le_bytes());
    d.extend_from_slice(&counter.to_le_bytes());
    d.extend_from_slice(&rand::random::<[u8; 16]>());
    d
}

/// Forged datagrams of every body kind, with the right cluster hash and
/// real stream ids, each of which would change the listener's state if it
/// were taken: data at the publisher's next seq, a far-future heartbeat, a
/// `Goodbye` at its real position, an `Unavailable` of everything it sent,
/// an `AckRequest` far ahead, a `Nak` of the listener's own stream, and a
/// `Hello` and a `Report` of a made-up member. Sent without a trailer
/// (`auth_missing`), with a random key id (`auth_unknown_key`) and with the
/// real key id and a random tag, MAC or encrypted (`auth_bad_tag`): none
/// changes anything, and the publisher's next events all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgeries_without_the_key_change_nothing_in_require_mode() {
    let dir = KeyDir::new();
    let (key, key_id) = dir.new_key("cluster");
    let place = Loopback::new();
    let listener = join(keyed(&place, "listener", &key, Some(AuthMode::Require))).await;
    let mut heard = Reader::new(&listener);
    let publisher = join(keyed(&place, "publisher", &key, None)).await;
    publish(&publisher, "real", 10).await;
    heard
        .until("10 events", |r| r.keys(publisher.stream()).len() == 10)
        .await;
    let p = publisher.stream();
    wait_for("the listener at the publisher's position", async || {
        listener
            .streams()
            .await
            .iter()
            .any(|s| s.stream == p && s.next_expected == 11 && s.known_end == 11)
    })
    .await;
    let cluster = wire::cluster_hash(place.cluster());
    let ghost = rand::random::<u64>() | 1;
    let far = 1u64 << 40;
    let kinds: Vec<(u64, Body)> = vec![
        (
            p,
            Body::Data {
                first_seq: 11,
                events: Events::new_unchecked(&[Event::Invalidate {
                    keys: vec!["forged:data".into()],
                }]),
            },
        ),
        (
            p,
            Body::Heartbeat {
                next_seq: far,
                oldest: 1,
                node: "forged".into(),
            },
        ),
        (p, Body::Goodbye { next_seq: 11 }),
        (
            p,
            Body::Unavailable {
                stream: p,
                ranges: vec![(1, 11)],
            },
        ),
        (
            p,
            Body::AckRequest {
                next_seq: far,
                members: vec![],
            },
        ),
        (
            ghost,
            Body::Nak {
                stream: listener.stream(),
                ranges: vec![(1, 5)],
            },
        ),
        (
            ghost,
            Body::Hello {
                node: "forged".into(),
            },
        ),
        (
            ghost,
            Body::Report {
                node: "forged".into(),
                positions: vec![Position {
                    stream: p,
                    delivered: far,
                    reset_end: 0,
                    idle_ms: 0,
                }],
                keys: vec![key_id],
            },
        ),
    ];
    let before = view(&listener).await;
    let decided = decisions(&listener.stats().await.protocol);
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let mut forged = Vec::new();
    for (i, (stream, body)) in kinds.iter().enumerate() {
        let mut unkeyed = Vec::new();
        wire::encode(&Header::new(cluster, *stream), body, &mut unkeyed);
        let counter = 1_000_000 + i as u64;
        let other_id = rng.gen::<u32>() | 1;
        let other_id = if other_id == key_id {
            other_id ^ 2
        } else {
            other_id
        };
        forged.push(("auth_missing", unkeyed.clone()));
        forged.push((
            "auth_unknown_key",
            with_fake_trailer(unkeyed.clone(), other_id, 1, counter),
        ));
        forged.push((
            "auth_bad_tag",
            with_fake_trailer(unkeyed.clone(), key_id, 1, counter),
        ));
        forged.push((
            "auth_bad_tag",
            with_fake_trailer(unkeyed, key_id, 2, counter),
        ));
    }
    for (_, d) in &forged {
        place.send_raw(d).unwrap();
    }
    for reason in ["auth_missing", "auth_unknown_key", "auth_bad_tag"] {
        let n = forged.iter().filter(|(r, _)| *r == reason).count() as u64;
        wait_dropped(&listener, reason, n).await;
    }
    assert_eq!(view(&listener).await, before);
    assert_eq!(decisions(&listener.stats().await.protocol), decided);
    // The publisher's next events, the first at the seq the forged data
    // claimed, all arrive.
    publish(&publisher, "next", 10).await;
    heard
        .until("the next 10 events", |r| r.keys(p).len() == 20)
        .await;
    heard.drain();
    let mut want = named("real", 10);
    want.extend(named("next", 10));
    assert_eq!(heard.keys(p), want);
    assert_eq!((heard.events(), heard.resets()), (20, 0));
    let s = listener.stats().await.protocol;
    assert_eq!(
        auth_drops(&s),
        vec![
            ("auth_bad_tag", 16),
            ("auth_missing", 8),
            ("auth_unknown_key", 8)
        ]
    );
    assert_eq!((s.resets_total(), s.unavailable_sent), (0, 0));
    assert_eq!(publisher.stats().await.protocol.resets_total(), 0);
    listener.shutdown().await;
    publisher.shutdown().await;
}

// ---------------------------------------------------------------------------
// Roll-out: off, accept and require nodes together.

/// The documented roll-out on a running cluster: three nodes without keys
/// move to `accept` one at a time (each a restart with the new
/// configuration), then to `require` one at a time; at every step every
/// node publishes and every event reaches every node. No node ever Resets,
/// and at the end nobody drops anything for authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_out_keys_one_node_at_a_time_loses_nothing_and_never_resets() {
    let dir = KeyDir::new();
    let (key, key_id) = dir.new_key("cluster");
    let modes = Arc::new(Mutex::new([None::<AuthMode>; 3]));
    let mut c = {
        let modes = modes.clone();
        LoopbackCluster::start_with(3, 14, move |cfg| {
            let i: usize = cfg.node_name[1..].parse().unwrap();
            if let Some(mode) = modes.lock().unwrap()[i] {
                cfg.key_file = Some(key.clone());
                cfg.auth = Some(mode);
            }
        })
        .await
        .unwrap()
    };
    let steps = [
        (0, AuthMode::Accept),
        (1, AuthMode::Accept),
        (2, AuthMode::Accept),
        (0, AuthMode::Require),
        (1, AuthMode::Require),
        (2, AuthMode::Require),
    ];
    for (step, (i, mode)) in steps.into_iter().enumerate() {
        modes.lock().unwrap()[i] = Some(mode);
        c.recycle(i).await.unwrap();
        for n in 0..3 {
            for j in 0..5 {
                c.publish(n, [format!("step{step}-n{n}-{j}")])
                    .await
                    .unwrap();
            }
        }
        let settled = c.settle(DEADLINE).await;
        assert!(
            settled,
            "step {step} ({mode} on n{i}): {:?}",
            c.check().err()
        );
        // This step's 15 events reached each of the 3 running nodes.
        let report = c.check().unwrap();
        assert!(report.delivered >= 15 * 3, "step {step}: {report:?}");
        assert_eq!(report.covered_by_reset, 0, "step {step}: {report:?}");
    }
    let resets: usize = c
        .record()
        .lives
        .iter()
        .map(|l| {
            l.deliveries
                .iter()
                .filter(|(_, d)| matches!(d, Delivery::Reset { .. }))
                .count()
        })
        .sum();
    assert_eq!(resets, 0);
    for i in 0..3 {
        let s = c.stats(i).await.unwrap().protocol;
        assert!(
            s.auth_verified > 0 && auth_drops(&s).is_empty(),
            "n{i}: {:?}",
            s.dropped
        );
        // Once each has reported, the view shows every member keyed.
        let node = c.node(i).unwrap();
        wait_for(
            "every live member holding and sending the key",
            async || {
                let members = node.members().await;
                let live: Vec<_> = members
                    .iter()
                    .filter(|m| m.state == Liveness::Live)
                    .collect();
                live.len() == 3
                    && live
                        .iter()
                        .all(|m| m.keys == [key_id] && m.sends_with == Some(key_id))
            },
        )
        .await;
    }
    c.shutdown_all().await;
}

/// An `off` node (no key), an `accept` node and a `require` node, each
/// publishing: the off node takes the keyed nodes' MAC'd datagrams
/// unverified, the accept node takes everything, the require node drops
/// the off node's (`auth_missing`). Every event that should arrive does,
/// and the off and accept nodes never Reset. The require node cannot have
/// the off node's events, and is told: it learns the off node's stream from
/// the accept node's `Report`, cannot get it repaired, and Resets — the
/// promise (an event, or a Reset after it), not a silent gap. Hence the
/// roll-out's order: every node in `accept` before any in `require`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_accept_and_require_nodes_together() {
    let dir = KeyDir::new();
    let (key, key_id) = dir.new_key("cluster");
    let place = Loopback::new();
    let off = join(place.config("off")).await;
    let accept = join(keyed(&place, "accept", &key, Some(AuthMode::Accept))).await;
    let require = join(keyed(&place, "require", &key, Some(AuthMode::Require))).await;
    let mut readers = [
        Reader::new(&off),
        Reader::new(&accept),
        Reader::new(&require),
    ];
    let nodes = [&off, &accept, &require];
    for (node, prefix) in nodes.iter().zip(["off", "accept", "require"]) {
        publish(node, prefix, 20).await;
    }
    let (o, a, r) = (off.stream(), accept.stream(), require.stream());
    // Who hears whom (each delivers its own events too).
    let hears: [&[u64]; 3] = [&[o, a, r], &[o, a, r], &[a, r]];
    for (reader, streams) in readers.iter_mut().zip(hears) {
        reader
            .until("every event it should hear", |x| {
                streams.iter().all(|s| x.keys(*s).len() == 20)
            })
            .await;
    }
    // The require node learns the off node's stream from the accept node's
    // reports and, unable to get it, Resets.
    wait_for("a Reset at the require node", async || {
        require.stats().await.protocol.resets_total() > 0
    })
    .await;
    for (i, (reader, node)) in readers.iter_mut().zip(nodes).enumerate() {
        reader.drain();
        let s = node.stats().await.protocol;
        if i < 2 {
            assert_eq!(reader.resets(), 0, "node {i}: {:?}", s.resets);
            assert_eq!(s.resets_total(), 0, "node {i}");
        }
        assert_eq!(reader.events(), hears[i].len() * 20, "node {i}");
    }
    assert!(readers[2].resets() > 0);
    let so = off.stats().await.protocol;
    let sa = accept.stats().await.protocol;
    let sr = require.stats().await.protocol;
    assert!(so.auth_unverified > 0 && so.auth_verified == 0, "{so:?}");
    assert!(auth_drops(&so).is_empty(), "{:?}", so.dropped);
    assert!(
        sa.auth_verified > 0 && auth_drops(&sa).is_empty(),
        "{:?}",
        sa.dropped
    );
    let missing = dropped(&sr, "auth_missing");
    assert!(missing > 0 && auth_drops(&sr) == vec![("auth_missing", missing)]);
    // The membership view shows who uses keys.
    let members = accept.members().await;
    let of = |s: u64| members.iter().find(|m| m.stream == s).unwrap().clone();
    assert_eq!((of(o).keys, of(o).sends_with), (vec![], None));
    assert_eq!((of(r).keys, of(r).sends_with), (vec![key_id], Some(key_id)));
    for node in nodes {
        node.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// Encryption.

/// A keyed cluster where one node encrypts: every event reaches every
/// node (the checker), the encrypting node's bodies never show a key in
/// the clear on the group, the record notes each node hearing it (by its
/// header: its body cannot be decoded without the key), and a node
/// without keys cannot read it (`auth_unknown_key`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypting_node_is_read_by_key_holders_only() {
    let dir = KeyDir::new();
    let (key, _) = dir.new_key("cluster");
    let mut c = LoopbackCluster::start_with(3, 9, move |cfg| {
        cfg.key_file = Some(key.clone());
        cfg.encrypt = cfg.node_name == "n1";
    })
    .await
    .unwrap();
    let capture = Capture::start(c.place());
    let outsider = join(c.place().config("outsider")).await;
    for n in 0..3 {
        for j in 0..10 {
            c.publish(n, [format!("secret-{n}-{j}")]).await.unwrap();
        }
    }
    assert!(c.settle(DEADLINE).await, "{:?}", c.check().err());
    let report = c.check().unwrap();
    assert_eq!((report.expected, report.delivered), (90, 90), "{report:?}");
    let encrypted = c.node(1).unwrap().stream();
    let record = c.record();
    for life in &record.lives {
        if life.node != 1 {
            assert!(life.heard.contains_key(&encrypted), "{}", life.name);
        }
    }
    let sent = capture.of(c.place().cluster(), encrypted);
    assert!(!sent.is_empty());
    assert!(sent.iter().all(|d| !d.windows(7).any(|w| w == b"secret-")));
    let plain = capture.of(c.place().cluster(), c.node(0).unwrap().stream());
    assert!(plain.iter().any(|d| d.windows(7).any(|w| w == b"secret-")));
    // The outsider (no key, off) can read nothing of the encrypting node.
    let s = outsider.stats().await.protocol;
    assert!(dropped(&s, "auth_unknown_key") > 0, "{:?}", s.dropped);
    outsider.shutdown().await;
    c.shutdown_all().await;
}
