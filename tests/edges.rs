//! Edge cases of the protocol core (found in review), each once a bug:
//! driven through the sans-IO core or the simulator, in virtual time.

use std::time::{Duration, Instant};

use cachecast::proto::NodeCore;
use cachecast::testkit::{data_seqs, Faults, Sim};
use cachecast::wire::{self, Body, Event, Events, Header};
use cachecast::{CoreConfig, Delivery};

fn key(i: u64) -> Event {
    Event::Invalidate {
        keys: vec![format!("key-{i}")],
    }
}
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The repair token bucket once asked to be woken at `now` with no
/// progress possible (a sub-nanosecond deficit rounded to a zero wait): a
/// same-instant livelock, which the simulator turns into a panic.
#[test]
fn repair_pacing_never_wakes_at_the_same_instant_forever() {
    let mut sim = Sim::new(1);
    let tx = CoreConfig {
        repair_rate: 1200, // bytes/s, the smallest that validates is max_datagram
        ..CoreConfig::default()
    };
    sim.add_node("tx", tx);
    sim.add_node("rx", CoreConfig::default());
    sim.run_for(ms(200));
    // rx loses every Data datagram: everything must come by repair.
    sim.set_faults(1, Faults::dropping(|d| data_seqs(d).is_some()));
    for i in 0..2000 {
        sim.publish(0, key(i));
        sim.run_for(Duration::from_micros(300));
    }
    sim.run_for(Duration::from_secs(30)); // panics "livelock: 1,000,000 steps at the same instant"
    let tx = sim.core(0).unwrap().stats().clone();
    let rx = sim.core(1).unwrap().stats().clone();
    eprintln!(
        "deferred {} repairs_sent {} rx resets {:?} delivered {}",
        tx.repairs_deferred, tx.repairs_sent, rx.resets, rx.events_delivered
    );
    assert!(tx.repairs_deferred > 0, "the rate limit was exercised");
    assert!(rx.events_repaired > 0);
    if let Err(v) = sim.check() {
        panic!("{v}");
    }
}

/// The sender once packed more than `wire::MAX_EVENTS` small events into
/// one datagram, which every receiver rejects as invalid.
#[test]
fn many_tiny_events_are_split_at_max_events_per_datagram() {
    let mut sim = Sim::new(2);
    sim.add_nodes("n", 2);
    sim.run_for(ms(200));
    sim.publish_batch(0, (0..2000).map(|_| Event::ClearAll).collect());
    sim.run_for(Duration::from_secs(3));
    let s = sim.core(1).unwrap().stats().clone();
    eprintln!(
        "dropped {:?} resets {:?} delivered {}",
        s.dropped, s.resets, s.events_delivered
    );
    assert_eq!(
        s.events_delivered, 2000,
        "dropped {:?} resets {:?}",
        s.dropped, s.resets
    );
}

fn dgram(cluster: u32, stream: u64, body: Body) -> Vec<u8> {
    let mut b = Vec::new();
    wire::encode(&Header::new(cluster, stream), &body, &mut b);
    b
}

/// A receiving core driven by hand, in virtual time from `t0`, with what it
/// delivered.
struct Rx {
    core: NodeCore,
    cluster: u32,
    got: Vec<Delivery>,
}

impl Rx {
    fn new(t0: Instant) -> Rx {
        let cfg = CoreConfig::default();
        Rx {
            cluster: cfg.cluster,
            core: NodeCore::new(cfg, t0).unwrap(),
            got: Vec::new(),
        }
    }

    /// A datagram of stream `from` arrives at `t`.
    fn feed(&mut self, t: Instant, from: u64, body: Body) {
        self.core
            .handle_datagram(t, &dgram(self.cluster, from, body));
    }

    fn heartbeat(&mut self, t: Instant, s: u64, next_seq: u64, oldest: u64) {
        let node = "tx".into();
        self.feed(
            t,
            s,
            Body::Heartbeat {
                next_seq,
                oldest,
                node,
            },
        );
    }

    /// Seq `q` of stream `s` (the event `key(q)`).
    fn data(&mut self, t: Instant, s: u64, q: u64) {
        let events = Events::new(&[key(q)]).unwrap();
        self.feed(
            t,
            s,
            Body::Data {
                first_seq: q,
                events,
            },
        );
    }

    /// Timers due by `t`, then everything to send and deliver.
    fn tick(&mut self, t: Instant) {
        if self.core.poll_timeout().is_some_and(|w| w <= t) {
            self.core.handle_timeout(t);
        }
        let mut buf = Vec::new();
        while self.core.poll_transmit(t, &mut buf) {}
        while let Some(d) = self.core.poll_delivery() {
            self.got.push(d);
        }
    }

    fn resets(&self) -> usize {
        self.got
            .iter()
            .filter(|d| matches!(d, Delivery::Reset { .. }))
            .count()
    }
}

/// One heartbeat with a far-future `next_seq` (a bug, or a spoofed
/// datagram without authentication) once cost a Reset, and left the range
/// given up blocking what followed. The stream's own next heartbeat
/// contradicts it now: the bogus range is forgotten before it is given up
/// (no Reset at all), and the real events that follow are delivered, not
/// dropped as "duplicates" of it.
#[test]
fn a_far_future_heartbeat_does_not_block_the_events_that_follow() {
    let t0 = Instant::now();
    let mut rx = Rx::new(t0);
    let s = 42u64;
    // Met during the sync window at seq 1.
    rx.heartbeat(t0, s, 1, 1);
    let mut t = t0 + ms(200);
    rx.data(t, s, 1);
    // The bogus position.
    rx.heartbeat(t, s, 1 << 40, 1);
    for i in 0..400 {
        t += ms(10);
        rx.tick(t);
        // The real stream stays alive meanwhile (an idle heartbeat a
        // second): it is not a member that died.
        if i % 100 == 99 {
            rx.heartbeat(t, s, 2, 1);
        }
    }
    assert_eq!(rx.resets(), 0, "{:?}", rx.got);
    assert_eq!(rx.core.stats().position_contradicted, 1);
    assert!(rx.core.stream_state(s).unwrap().gaps.is_empty());
    rx.got.clear();
    // The real stream carries on: seq 2, 3, ...
    for q in 2..10 {
        t += ms(10);
        rx.data(t, s, q);
        rx.tick(t);
    }
    let seqs: Vec<u64> = (rx.got.iter())
        .filter_map(|d| match d {
            Delivery::Event { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(
        seqs,
        (2..10).collect::<Vec<_>>(),
        "seqs 2..10 must be delivered, not dropped as duplicates: {:?}",
        rx.got
    );
    assert_eq!(rx.resets(), 0, "no further Reset: {:?}", rx.got);
}

/// Overheard Naks postpone a gap's own Nak; they must not keep it open
/// (no delivery, no Reset) past `max_gap_age`.
#[test]
fn overheard_naks_cannot_keep_a_gap_open_past_max_gap_age() {
    let t0 = Instant::now();
    let mut rx = Rx::new(t0);
    let (s, peer) = (42u64, 43u64);
    rx.heartbeat(t0, s, 1, 1);
    let mut t = t0 + ms(200);
    rx.data(t, s, 1);
    rx.data(t, s, 3);
    // For 30 s: the stream stays alive (heartbeats), and some other receiver
    // keeps asking for seq 2 every 10 ms; the repairs never reach us.
    for i in 0..3000 {
        t += ms(10);
        let ranges = vec![(2, 3)];
        rx.feed(t, peer, Body::Nak { stream: s, ranges });
        if i % 50 == 0 {
            rx.heartbeat(t, s, 4, 1);
        }
        rx.tick(t);
    }
    let st = rx.core.stream_state(s).unwrap();
    assert!(
        rx.resets() > 0,
        "gap {:?} still open after 30 s (max_gap_age {:?}), no Reset; naks sent {}",
        st.gaps,
        rx.core.config().max_gap_age,
        rx.core.stats().naks_sent
    );
}

/// A stream that said Goodbye with a gap open (repeated a reorder window
/// later, as its lingering sender does), whose gap is then covered by a
/// Reset of another stream, is finished: it must be retired (once its
/// Goodbye has stood a heartbeat interval and a contradiction window), not
/// time out 10 s later with a spurious `StreamTimedOut` Reset.
#[test]
fn goodbye_stream_covered_by_another_reset_is_retired() {
    let t0 = Instant::now();
    let mut rx = Rx::new(t0);
    let (a, b) = (42u64, 44u64);
    for s in [a, b] {
        rx.heartbeat(t0, s, 1, 1);
    }
    let mut t = t0 + ms(200);
    // b: the sender no longer holds seq 1..3 -> Reset (Unavailable).
    // a: Goodbye at 2, but seq 1 never arrived -> gap (1, 2), ending set;
    // repeated a reorder window later.
    rx.feed(t, a, Body::Goodbye { next_seq: 2 });
    t += rx.core.config().reorder_window;
    rx.feed(t, a, Body::Goodbye { next_seq: 2 });
    rx.heartbeat(t, b, 3, 3);
    rx.tick(t);
    assert_eq!(rx.resets(), 1, "{:?}", rx.got);
    rx.got.clear();
    let retire_by = t + rx.core.config().heartbeat_idle + rx.core.config().contradiction();
    for _ in 0..1200 {
        t += ms(10);
        rx.heartbeat(t, b, 3, 3);
        rx.tick(t);
        if t >= retire_by {
            assert!(
                rx.core.stream_state(a).is_none(),
                "a retired once b's Reset covered its gap and its Goodbye stood: {:?}",
                rx.core.stream_state(a)
            );
        }
    }
    assert!(rx.got.is_empty(), "spurious: {:?}", rx.got);
}

/// Random mutations of valid datagrams never panic the core.
#[test]
fn mutated_datagrams_never_panic() {
    use rand::{Rng, SeedableRng};
    let cfg = CoreConfig::default();
    let t0 = Instant::now();
    let mut core = NodeCore::new(cfg.clone(), t0).unwrap();
    let seeds = [
        dgram(
            cfg.cluster,
            7,
            Body::Data {
                first_seq: 3,
                events: Events::new(&[
                    key(1),
                    Event::Custom {
                        topic: "t".into(),
                        payload: vec![1, 2, 3],
                    },
                    Event::InvalidatePrefix { prefix: "p".into() },
                    Event::ClearAll,
                ])
                .unwrap(),
            },
        ),
        dgram(
            cfg.cluster,
            7,
            Body::Heartbeat {
                next_seq: 9,
                oldest: 2,
                node: "n".into(),
            },
        ),
        dgram(
            cfg.cluster,
            7,
            Body::Nak {
                stream: 1,
                ranges: vec![(1, 5), (7, 9)],
            },
        ),
        dgram(
            cfg.cluster,
            7,
            Body::Unavailable {
                stream: 7,
                ranges: vec![(1, 5)],
            },
        ),
        dgram(
            cfg.cluster,
            7,
            Body::Repair {
                first_seq: 1,
                events: Events::new(&[key(1)]).unwrap(),
            },
        ),
        dgram(cfg.cluster, 7, Body::Goodbye { next_seq: 4 }),
    ];
    let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
    let mut t = t0;
    for i in 0..300_000u64 {
        let mut b = seeds[(i % seeds.len() as u64) as usize].clone();
        for _ in 0..rng.gen_range(1..4) {
            match rng.gen_range(0..3) {
                0 => {
                    let j = rng.gen_range(0..b.len());
                    b[j] = rng.gen();
                }
                1 => {
                    let j = rng.gen_range(0..=b.len());
                    b.insert(j, rng.gen());
                }
                _ => {
                    if b.len() > 1 {
                        let j = rng.gen_range(0..b.len());
                        b.remove(j);
                    }
                }
            }
        }
        // A run that decodes reads back the same every way: by value, in
        // place, taken apart, and each event checked again on its own
        // (a wrong event boundary would show here).
        if let Ok(wire::Datagram {
            body: Body::Data { events, .. } | Body::Repair { events, .. },
            ..
        }) = wire::decode(&b, cfg.cluster)
        {
            let owned: Vec<Event> = events
                .iter()
                .map(|e| {
                    let fresh = wire::decode_event(e.as_bytes()).expect("an event decodes alone");
                    assert_eq!(e.to_event(), fresh);
                    fresh
                })
                .collect();
            assert_eq!(owned.len(), events.len());
            let viewed: Vec<Event> = events.views().map(|v| v.to_event()).collect();
            assert_eq!(viewed, owned);
            let mut rest = events.clone();
            rest.skip(1);
            assert_eq!(rest.to_vec(), owned.get(1..).unwrap_or_default());
        }
        t += Duration::from_micros(50);
        core.handle_datagram(t, &b);
        if core.poll_timeout().is_some_and(|w| w <= t) {
            core.handle_timeout(t);
        }
        let mut buf = Vec::new();
        while core.poll_transmit(t, &mut buf) {}
        while let Some(d) = core.poll_delivery() {
            if let Delivery::Event { event, .. } = d {
                let _ = event.to_event();
            }
        }
    }
    eprintln!("{:?}", core.stats().dropped);
}

/// A stream evicted without a gap, whose next event is lost and which then
/// dies, was once forgotten for good: no gap, no timeout, no Reset.
#[test]
fn an_evicted_stream_that_dies_unseen_is_reset_at_its_timeout() {
    let mut sim = Sim::new(11);
    let rx_cfg = CoreConfig {
        max_streams: 1,
        ..CoreConfig::default()
    };
    let a = sim.add_node("a", CoreConfig::default());
    let b = sim.add_node("b", CoreConfig::default());
    let rx = sim.add_node("rx", rx_cfg);
    sim.run_for(ms(300));
    sim.publish(a, key(1));
    sim.run_for(ms(50));
    sim.publish(b, key(2)); // rx meets b: a is evicted, with no gap
    sim.run_for(ms(5));
    let sa = sim.core(a).unwrap().stream();
    sim.set_faults(rx, Faults::dropping(move |d| d.header.stream == sa));
    sim.publish(a, key(3)); // lost to rx...
    sim.run_for(ms(1));
    sim.crash(a); // ...and a dies
    sim.clear_faults(rx);
    sim.run_for(Duration::from_secs(15));
    if let Err(v) = sim.check() {
        panic!("{v}");
    }
    assert!(sim
        .resets(rx)
        .iter()
        .any(|(_, r)| matches!(r, cachecast::ResetReason::StreamTimedOut { .. })));
}

/// A flat-out publisher whose receiver loses data is paced (after the
/// `Nak`) instead of overrunning it further, and everything still arrives:
/// held data waits in the sender, nothing is dropped.
#[test]
fn a_nak_paces_a_flat_out_publisher_and_nothing_is_lost() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut sim = Sim::new(9);
    sim.add_nodes("n", 2);
    sim.run_for(ms(200));
    let dropped = AtomicBool::new(false);
    sim.set_faults(
        1,
        Faults::dropping(move |d| {
            data_seqs(d).is_some_and(|r| r.contains(&5_000))
                && !dropped.swap(true, Ordering::SeqCst)
        }),
    );
    // 40,000 events at about 35 MB/s: 1,000 per ms.
    for b in 0..40u64 {
        sim.publish_batch(0, (0..1000).map(|i| key(b * 1000 + i)).collect());
        sim.run_for(ms(1));
    }
    sim.run_for(Duration::from_secs(5));
    let tx = sim.core(0).unwrap().stats().clone();
    let rx = sim.core(1).unwrap().stats().clone();
    assert_eq!(tx.naks_received, 1, "one loss, one Nak");
    assert!(tx.data_paced > 0, "the Nak paced the sender: {tx:?}");
    assert_eq!(
        sim.core(0).unwrap().unsent_events(),
        0,
        "all sent in the end"
    );
    assert_eq!(rx.events_delivered, 40_000);
    assert!(rx.resets.is_empty(), "{:?}", rx.resets);
    if let Err(v) = sim.check() {
        panic!("{v}");
    }
}

/// A `Nak` for seqs that were never sent (bogus, or forged) does not slow
/// the publisher down; one for what was sent does.
#[test]
fn only_a_nak_for_sent_data_paces_the_sender_and_close_waits_for_paced_data() {
    let cfg = CoreConfig::default();
    let t0 = Instant::now();
    let mut tx = NodeCore::new(cfg.clone(), t0).unwrap();
    let mut buf = Vec::new();
    // Flat out: bursts of 20,000 events (about 700 kB, well past the
    // pacer's burst allowance) sent at once, with a Nak between them.
    let mut burst = |tx: &mut NodeCore, t: Instant, from: u64| {
        for q in from..from + 20_000 {
            tx.publish(t, key(q)).unwrap();
        }
        while tx.poll_transmit(t, &mut buf) {}
    };
    let nak = |start: u64, end: u64| {
        dgram(
            cfg.cluster,
            99,
            Body::Nak {
                stream: cfg.stream,
                ranges: vec![(start, end)],
            },
        )
    };
    burst(&mut tx, t0, 0);
    tx.handle_datagram(t0 + ms(1), &nak(1 << 40, (1 << 40) + 10));
    burst(&mut tx, t0 + ms(1), 20_000);
    assert_eq!(tx.stats().naks_received, 1);
    assert_eq!(tx.stats().data_paced, 0, "{:?}", tx.stats());
    tx.handle_datagram(t0 + ms(2), &nak(5, 6));
    burst(&mut tx, t0 + ms(2), 40_000);
    assert!(tx.stats().data_paced > 0, "{:?}", tx.stats());
    // Closing while paced data waits: not flushed (the driver lingers on)
    // until the data and then the Goodbye are out.
    tx.close(t0 + ms(2));
    assert!(!tx.is_flushed());
    let mut t = t0 + ms(2);
    let mut goodbye = false;
    while !tx.is_flushed() {
        assert!(t < t0 + Duration::from_secs(10), "never flushed");
        t += ms(1);
        tx.handle_timeout(t);
        while tx.poll_transmit(t, &mut buf) {
            goodbye |= matches!(wire::decode(&buf, cfg.cluster), Ok(d) if matches!(d.body, Body::Goodbye { .. }));
        }
    }
    assert!(goodbye);
    assert_eq!(tx.unsent_events(), 0);
}

/// A closing node is not flushed (the driver lingers on) before its
/// `Goodbye` went out again a reorder window after the first: receivers
/// retire a stream only on a `Goodbye` heard twice that far apart.
#[test]
fn close_waits_for_the_goodbye_to_be_repeated_a_reorder_window_apart() {
    let t0 = Instant::now();
    let cfg = CoreConfig {
        stream: 5,
        ..Default::default()
    };
    let mut tx = NodeCore::new(cfg.clone(), t0).unwrap();
    let mut buf = Vec::new();
    tx.publish(t0, key(1)).unwrap();
    tx.close(t0);
    let mut goodbyes = Vec::new();
    let mut t = t0;
    loop {
        tx.handle_timeout(t);
        while tx.poll_transmit(t, &mut buf) {
            if matches!(wire::decode(&buf, cfg.cluster), Ok(d) if matches!(d.body, Body::Goodbye { .. }))
            {
                goodbyes.push(t);
            }
        }
        if tx.is_flushed() {
            break;
        }
        assert!(t < t0 + Duration::from_secs(1), "never flushed");
        t += Duration::from_micros(500);
    }
    assert!(goodbyes.len() >= 2, "{goodbyes:?}");
    let (first, last) = (goodbyes[0], goodbyes[goodbyes.len() - 1]);
    assert!(last - first >= cfg.reorder_window, "{goodbyes:?}");
    // Not flushed before: the last Goodbye is the first that far apart.
    assert!(goodbyes[goodbyes.len() - 2] - first < cfg.reorder_window);
}

fn report(t: Instant, rx: &mut Rx, from: u64, stream: u64, delivered: u64, idle_ms: u64) {
    rx.feed(
        t,
        from,
        Body::Report {
            node: "peer".into(),
            positions: vec![wire::Position {
                stream,
                delivered,
                reset_end: 0,
                idle_ms,
            }],
            keys: vec![],
        },
    );
}

/// A member reports a stream this node never heard (it was cut off while
/// the stream came and went): the node asks the stream for it, and, the
/// stream being gone, Resets. Never silent.
#[test]
fn a_stream_learned_from_a_members_report_is_repaired_or_reset() {
    let t0 = Instant::now();
    let mut rx = Rx::new(t0);
    let mut t = t0 + ms(500);
    // Heard since the join, 20 events, never heard here.
    report(t, &mut rx, 9, 77, 21, 100);
    for _ in 0..500 {
        t += ms(10);
        rx.tick(t);
        if rx.resets() > 0 {
            break;
        }
    }
    assert!(
        rx.core.stats().naks_sent > 0,
        "asked the origin: {:?}",
        rx.core.stats()
    );
    assert!(
        rx.got.iter().any(|d| matches!(
            d,
            Delivery::Reset {
                reason: cachecast::ResetReason::RetriesExhausted { stream: 77, .. }
            }
        )),
        "{:?}",
        rx.got
    );
    assert_eq!(rx.core.stats().streams_learned, 1);
}

/// A stream that ended before this node joined, still reported by a member,
/// is nothing this node needs: no gap, no Reset.
#[test]
fn a_stream_that_ended_before_the_join_is_not_learned() {
    let t0 = Instant::now();
    let mut rx = Rx::new(t0 + ms(5_000));
    let mut t = t0 + ms(5_500);
    // Last heard by the member 2 s ago: before this node joined (at 5 s).
    report(t, &mut rx, 9, 77, 21, 2_000);
    // 8 s: a learned stream would have been asked for and Reset within
    // about 2.5 s (and the reporter's own stream is not timed out yet).
    for _ in 0..800 {
        t += ms(10);
        rx.tick(t);
    }
    assert_eq!(rx.core.stats().streams_learned, 0);
    assert_eq!(rx.core.stats().naks_sent, 0);
    assert_eq!(rx.resets(), 0, "{:?}", rx.got);
}

/// A datagram of stream 0 (no node has that id) was once followed: the
/// node then named stream 0 in its Reports, which every receiver refuses as
/// invalid, so its Reports (and the confirmations that wait on them) were
/// lost until the stream was forgotten, about 40 s. Found by fuzzing
/// (fuzz/, the node target). Such a datagram is now invalid, and no node
/// may be configured with stream 0.
#[test]
fn a_datagram_of_stream_zero_is_dropped_and_reports_stay_valid() {
    let t0 = Instant::now();
    let cfg = CoreConfig {
        node_name: "rx".into(),
        ..CoreConfig::default()
    };
    assert!(NodeCore::new(
        CoreConfig {
            stream: 0,
            ..cfg.clone()
        },
        t0
    )
    .is_err());
    let mut rx = NodeCore::new(cfg.clone(), t0).unwrap();
    let forged = Body::Heartbeat {
        next_seq: 5,
        oldest: 1,
        node: "forged".into(),
    };
    rx.handle_datagram(t0, &dgram(cfg.cluster, 0, forged));
    assert_eq!(rx.stream_count(), 0);
    assert_eq!(rx.stats().dropped.get("invalid"), Some(&1));
    // A real member, which its Reports are about.
    let real = Body::Heartbeat {
        next_seq: 3,
        oldest: 1,
        node: "real".into(),
    };
    rx.handle_datagram(t0, &dgram(cfg.cluster, 2, real));
    assert_eq!(rx.stream_count(), 1);
    // Every datagram it sends, its Reports among them, decodes.
    let mut buf = Vec::new();
    let mut t = t0;
    let mut reports = 0;
    for _ in 0..10_000 {
        while rx.poll_transmit(t, &mut buf) {
            let d = wire::decode(&buf, cfg.cluster).expect("what it sends decodes");
            reports += usize::from(matches!(d.body, Body::Report { .. }));
        }
        if reports >= 3 {
            break;
        }
        t = rx.poll_timeout().expect("a node always has a timer");
        rx.handle_timeout(t);
    }
    assert!(reports >= 3, "{reports} reports");
}
