//! The fuzz targets' seed corpus (`fuzz/corpus/<target>/seed-*`): written
//! from a real exchange between nodes in virtual time, and every file of the
//! corpus run through the targets' own checks (the files of `fuzz/src/`,
//! included here), on the stable toolchain, so that the seeds stay
//! meaningful as the format changes. `CACHECAST_WRITE_FUZZ_CORPUS=1` writes
//! the seeds instead of comparing them (after a change of the format).

#[path = "../fuzz/src/alloc.rs"]
mod alloc;
#[path = "../fuzz/src/auth_checks.rs"]
mod auth_checks;
#[path = "../fuzz/src/node.rs"]
mod node;
#[path = "../fuzz/src/wire_checks.rs"]
mod wire_checks;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cachecast::proto::NodeCore;
use cachecast::wire::{self, Body, Event, Trailer};
use cachecast::CoreConfig;

use node::{SeedStep, Setup};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

const TARGETS: [&str; 6] = ["header", "body", "datagram", "node", "trailer", "node_auth"];

/// Setups of the fuzzed node with keys: `accept`, `require`, `require`
/// and encrypt.
const ACCEPT: u8 = 1 << 5;
const REQUIRE: u8 = 2 << 5;
const ENCRYPT: u8 = 3 << 5;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A peer of the fuzzed node (set up as `setup`: with its keys, if any).
fn peer(setup: Setup, stream: u64, retransmit_bytes: usize) -> CoreConfig {
    let fuzzed = setup.config();
    CoreConfig {
        cluster: wire_checks::cluster(),
        stream,
        node_name: format!("peer-{stream}"),
        seed: stream,
        retransmit_bytes,
        auth: fuzzed.auth,
        ..CoreConfig::default()
    }
}

/// The body of a datagram of the exchange (opened with the keys, if
/// sealed).
fn body_of(bytes: &[u8]) -> Body {
    let (header, used) = wire::decode_header(bytes, wire_checks::cluster()).unwrap();
    if !header.authenticated() {
        return wire::decode(bytes, wire_checks::cluster()).unwrap().body;
    }
    let (trailer, tag) = Trailer::read(bytes, used).unwrap();
    let mut scratch = Vec::new();
    let body = node::keys()[0]
        .open(bytes, used, header.stream, &trailer, &tag, &mut scratch)
        .unwrap();
    wire::decode_body(body).unwrap()
}

/// The second peer's stream: an id of nine bytes on the wire.
const FAR: u64 = node::STREAMS[3];

/// One event of each kind (published at once: one `Data`).
fn one_of_each_event() -> Vec<Event> {
    vec![
        Event::Invalidate {
            keys: vec!["user:1".into(), "user:2".into()],
        },
        Event::InvalidatePrefix {
            prefix: "session:".into(),
        },
        Event::ClearAll,
        Event::Custom {
            topic: "reload".into(),
            payload: vec![0xde, 0xad],
        },
    ]
}

fn key(k: &str) -> Event {
    Event::Invalidate {
        keys: vec![k.to_string()],
    }
}

/// What the exchange produced: the fuzzed node's inputs, as seed steps,
/// and every datagram sent by anyone.
struct Exchange {
    steps: Vec<SeedStep>,
    sent: Vec<Vec<u8>>,
}

/// Three nodes for four seconds, delivery instant: the fuzzed node (its
/// setup's config) and two peers. Peer 2 publishes three events and the
/// second one's `Data` is lost on its way to the fuzzed node (`Nak`,
/// `Repair`), asks for confirmation (`AckRequest`, `Report`) and leaves
/// (`Goodbye`), publishing one event of each kind at once before; peer
/// `FAR` holds nothing to repair with, so its lost event is
/// `Unavailable` (its heartbeats, which would say so first, are lost too).
fn exchange(setup: Setup) -> Exchange {
    let start = Instant::now();
    let mut nodes = [
        NodeCore::new(setup.config(), start).unwrap(),
        NodeCore::new(peer(setup, 2, 32 << 20), start).unwrap(),
        NodeCore::new(peer(setup, FAR, 1), start).unwrap(),
    ];
    let mut ex = Exchange {
        steps: Vec::new(),
        sent: Vec::new(),
    };
    let mut last = start;
    let mut buf = Vec::new();
    // (when, node, what): the application's part.
    let script: Vec<(u64, usize, &str)> = vec![
        (200, 1, "a"),
        (210, 1, "b"),
        (220, 1, "c"),
        (300, 2, "x"),
        (310, 2, "y"),
        (320, 2, "z"),
        (500, 1, "confirm"),
        (600, 1, "batch"),
        (2500, 1, "close"),
    ];
    let mut script = script.into_iter().peekable();
    let mut now = start;
    // Long enough after the close for the Goodbye (repeated while peer 2
    // lingers) to stand a heartbeat interval and a contradiction window:
    // the fuzzed node retires the stream.
    let end = start + ms(4000);
    for _ in 0..100_000 {
        // Exchange everything until quiet.
        loop {
            let mut moved = false;
            for i in 0..nodes.len() {
                while nodes[i].poll_transmit(now, &mut buf) {
                    moved = true;
                    ex.sent.push(buf.clone());
                    // Lost on the way to the fuzzed node: each peer's
                    // second event, and peer 3's heartbeats for a while
                    // (they would tell that it holds nothing any more).
                    let lost_on_way = match body_of(&buf) {
                        Body::Data { first_seq, .. } => first_seq == 2,
                        Body::Heartbeat { .. } => i == 2 && now < start + ms(400),
                        _ => false,
                    };
                    for (j, n) in nodes.iter_mut().enumerate() {
                        if j == i || (j == 0 && lost_on_way) {
                            continue;
                        }
                        if j == 0 {
                            ex.steps.push(SeedStep::Advance(now - last));
                            ex.steps.push(SeedStep::Raw(buf.clone()));
                            last = now;
                        }
                        n.handle_datagram(now, &buf);
                    }
                }
                while nodes[i].poll_output().is_some() {}
                while nodes[i].poll_confirmation().is_some() {}
            }
            if !moved {
                break;
            }
        }
        if now >= end {
            break;
        }
        // The next thing to happen: a wake-up or the script.
        let wake = nodes.iter().filter_map(|n| n.poll_timeout()).min();
        let act = script.peek().map(|&(t, _, _)| start + ms(t));
        let next = [wake, act, Some(end)].into_iter().flatten().min().unwrap();
        now = next.max(now);
        if act == Some(now) {
            let (_, i, what) = script.next().unwrap();
            match what {
                "confirm" => {
                    let next = nodes[i].next_seq();
                    nodes[i].confirm(now, 1..next, now + ms(1000));
                }
                "close" => nodes[i].close(now),
                "batch" => {
                    for e in one_of_each_event() {
                        nodes[i].publish(now, e).unwrap();
                    }
                }
                k => {
                    nodes[i].publish(now, key(k)).unwrap();
                }
            }
        } else {
            for (i, n) in nodes.iter_mut().enumerate() {
                if n.poll_timeout().is_some_and(|t| t <= now) {
                    n.handle_timeout(now);
                    if i == 0 {
                        ex.steps.push(SeedStep::Advance(now - last));
                        ex.steps.push(SeedStep::Timeout);
                        last = now;
                    }
                }
            }
        }
    }
    ex
}

/// Every seed file, by target and name.
fn seeds() -> BTreeMap<(&'static str, String), Vec<u8>> {
    let mut out = BTreeMap::new();
    let ex = exchange(Setup::default());
    // Two datagrams of each body kind (the first and the last sent).
    let mut by_kind: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for d in &ex.sent {
        let kind = format!("{:?}", body_of(d).tag()).to_lowercase();
        by_kind.entry(kind).or_default().push(d.clone());
    }
    for (kind, all) in &by_kind {
        let picks = [all.first(), all.last()];
        for (n, d) in picks.into_iter().flatten().enumerate() {
            if n == 1 && all.len() == 1 {
                break;
            }
            let name = format!("seed-{kind}-{n}");
            let (_, used) = wire::decode_header(d, wire_checks::cluster()).unwrap();
            out.insert(("datagram", name.clone()), d.clone());
            out.insert(("body", name.clone()), d[used..].to_vec());
            if n == 0 {
                out.insert(("header", name), d[..used].to_vec());
            }
        }
    }
    // Events alone (the datagram target reads its input as one too).
    let last_data = by_kind["data"].last().unwrap();
    let run = match wire::decode(last_data, wire_checks::cluster())
        .unwrap()
        .body
    {
        Body::Data { events, .. } => events,
        _ => unreachable!(),
    };
    for (n, e) in run.iter().enumerate() {
        out.insert(
            ("datagram", format!("seed-event-{n}")),
            e.as_bytes().to_vec(),
        );
    }
    // Sealed datagrams: every kind with a MAC, a few encrypted; and for the
    // decoder, a MAC'd one of each kind with events.
    for (flags, kinds) in [
        (
            REQUIRE,
            &[
                "data",
                "heartbeat",
                "hello",
                "nak",
                "repair",
                "goodbye",
                "ackrequest",
                "report",
            ][..],
        ),
        (ENCRYPT, &["data", "heartbeat", "report"][..]),
    ] {
        let keyed = exchange(Setup { flags, seed: 0 });
        let mut done = Vec::new();
        for d in &keyed.sent {
            let kind = format!("{:?}", body_of(d).tag()).to_lowercase();
            if !kinds.contains(&kind.as_str()) || done.contains(&kind) {
                continue;
            }
            let alg = if flags == ENCRYPT { "encrypted" } else { "mac" };
            out.insert(("trailer", format!("seed-{alg}-{kind}")), d.clone());
            if flags == REQUIRE && (kind == "data" || kind == "repair") {
                out.insert(("datagram", format!("seed-mac-{kind}")), d.clone());
            }
            done.push(kind);
        }
    }
    // The keyed node: the exchange among keyed nodes replayed to it.
    for flags in [REQUIRE, ENCRYPT, ACCEPT] {
        let setup = Setup { flags, seed: 0 };
        out.insert(
            ("node_auth", format!("seed-exchange-{flags}")),
            node::seed_bytes(setup, &exchange(setup).steps),
        );
    }
    // The node: the exchange replayed to it, under a few setups.
    for flags in [0, 1, 2, 4] {
        let setup = Setup { flags, seed: 0 };
        let steps = if flags == 0 {
            ex.steps.clone()
        } else {
            let other = exchange(setup);
            if flags == 2 {
                // A receive-only node's header (flag bit 1).
                let d = &other.sent[0];
                let (_, used) = wire::decode_header(d, wire_checks::cluster()).unwrap();
                out.insert(("header", "seed-receive-only".into()), d[..used].to_vec());
            }
            other.steps
        };
        out.insert(
            ("node", format!("seed-exchange-{flags}")),
            node::seed_bytes(setup, &steps),
        );
    }
    out
}

/// Every body kind is among the seeds, and the committed seeds are the
/// ones written from the exchange now (or are written, when asked).
#[test]
fn the_seeds_are_real_datagrams_of_every_kind_and_committed() {
    let seeds = seeds();
    for tag in wire::BodyTag::ALL {
        let name = format!("seed-{:?}-0", tag).to_lowercase();
        assert!(
            seeds.contains_key(&("body", name.clone())),
            "no seed {name}"
        );
    }
    let write = std::env::var("CACHECAST_WRITE_FUZZ_CORPUS").is_ok_and(|v| v == "1");
    let total: usize = seeds.values().map(Vec::len).sum();
    assert!(
        seeds.len() < 100 && total < 200_000,
        "{} seeds, {total} bytes",
        seeds.len()
    );
    for ((target, name), bytes) in &seeds {
        let path = corpus_dir(target).join(name);
        if write {
            std::fs::create_dir_all(corpus_dir(target)).unwrap();
            std::fs::write(&path, bytes).unwrap();
        } else {
            let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (CACHECAST_WRITE_FUZZ_CORPUS=1 writes the seeds)",
                    path.display()
                )
            });
            assert!(
                &on_disk == bytes,
                "{} differs from the exchange's (CACHECAST_WRITE_FUZZ_CORPUS=1 rewrites it)",
                path.display()
            );
        }
    }
    // No stale seed left behind.
    for target in TARGETS {
        for entry in std::fs::read_dir(corpus_dir(target)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.starts_with("seed-") {
                assert!(
                    seeds.contains_key(&(target, name.clone())),
                    "{target}/{name} is not a seed any more: remove it"
                );
            }
        }
    }
}

/// Every file of every target's corpus passes that target's checks.
#[test]
fn the_corpus_passes_the_targets_checks() {
    let mut files = 0;
    for target in TARGETS {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        assert!(!entries.is_empty(), "no corpus for {target}");
        for path in entries {
            let data = std::fs::read(&path).unwrap();
            match target {
                "header" => wire_checks::check_header(&data),
                "body" => wire_checks::check_body(&data),
                "datagram" => wire_checks::check_datagram(&data),
                "trailer" => auth_checks::check_trailer(&data),
                "node_auth" => node::run(&node::Scenario::keyed_from_bytes(&data)),
                _ => node::run(&node::Scenario::from_bytes(&data)),
            }
            files += 1;
        }
    }
    assert!(files >= 50, "{files} corpus files");
}

/// The node seeds replay the exchange: the fuzzed node ends it with the
/// events of both peers delivered or Reset, with keys or without (a run
/// would be meaningless if the input encoding drifted from the writer, or
/// the keyed node dropped the peers' datagrams).
#[test]
fn the_node_seeds_replay_the_exchange() {
    for flags in [0, ACCEPT, REQUIRE, ENCRYPT] {
        let setup = Setup { flags, seed: 0 };
        let ex = exchange(setup);
        let scenario = node::Scenario::from_bytes(&node::seed_bytes(setup, &ex.steps));
        assert_eq!(scenario.steps.len(), ex.steps.len());
        let stats = node::run_stats(&scenario);
        assert_eq!(stats.events_delivered, 10 - 1, "{flags}: {stats:?}");
        assert_eq!(stats.events_repaired, 1, "{flags}: {stats:?}");
        assert_eq!(stats.resets_total(), 1, "{flags}: {stats:?}");
        assert_eq!(stats.unavailable_received, 1, "{flags}: {stats:?}");
        assert_eq!(stats.streams_ended, 1, "{flags}: {stats:?}");
        assert!(stats.reports_sent >= 1, "{flags}: {stats:?}");
        let keyed = flags != 0;
        assert_eq!(stats.auth_verified > 0, keyed, "{flags}: {stats:?}");
        if keyed {
            // Each fed twice (the target replays what verifies at once):
            // verified once, a replay once.
            assert_eq!(
                2 * stats.auth_verified,
                stats.datagrams_received,
                "{flags}: every datagram verified"
            );
            assert_eq!(
                stats.dropped.get("auth_replay").copied(),
                Some(stats.auth_verified),
                "{flags}: every replay dropped"
            );
        }
    }
}

/// A `Report` of a build before keys (no key list at its end), which the
/// node takes as having no keys, passes the body and datagram checks: the
/// fuzzer's first finding was the checks refusing it (the node's decoder
/// takes more than the definition there, on purpose).
#[test]
fn a_report_without_its_key_list_passes_the_checks() {
    let body = Body::Report {
        node: "old".into(),
        positions: vec![wire::Position {
            stream: 2,
            delivered: 4,
            reset_end: 1,
            idle_ms: 4,
        }],
        keys: Vec::new(),
    };
    let header = wire::Header::new(wire_checks::cluster(), 1);
    let mut bytes = Vec::new();
    wire::encode(&header, &body, &mut bytes);
    assert_eq!(bytes.pop(), Some(0), "the empty key list is one byte");
    let legacy = wire::decode(&bytes, wire_checks::cluster()).unwrap();
    assert_eq!(legacy.body, body);
    wire_checks::check_datagram(&bytes);
    let (_, used) = wire::decode_header(&bytes, wire_checks::cluster()).unwrap();
    wire_checks::check_body(&bytes[used..]);
}
