//! Real sockets on loopback: interface 127.0.0.1, TTL 0, a random group in
//! 239.255.0.0/16 and a free port per test, so tests run in parallel and
//! nothing leaves the host.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachecast::testkit::{data_seqs, join_with_faults, Faults};
use cachecast::wire::{self, Body, Event, EventBatch, EventRef, Events, Header};
use cachecast::{Delivery, DeliveryRef, Node, ResetReason, Subscription};
use common::*;

#[tokio::test]
async fn three_nodes_exchange_events_each_delivering_its_own_too() {
    let c = Loopback::new();
    let nodes = [c.join("a").await, c.join("b").await, c.join("c").await];
    let mut subs: Vec<Subscription> = nodes.iter().map(|n| n.subscribe()).collect();
    for (i, n) in nodes.iter().enumerate() {
        n.invalidate([format!("from-{i}")]).await.unwrap();
    }
    // Every node delivers all three: the two others' and its own (each
    // with its publisher's stream), `invalidate` meaning everywhere.
    let streams: Vec<u64> = nodes.iter().map(|n| n.stream()).collect();
    for (i, sub) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < 3 {
            let d = recv_until(sub, "the three events", |d| keys_of(d).is_some()).await;
            let (stream, keys) = keys_of(&d).unwrap();
            got.push((keys[0].clone(), stream));
        }
        got.sort();
        let want: Vec<(String, u64)> = (0..3).map(|j| (format!("from-{j}"), streams[j])).collect();
        assert_eq!(got, want, "node {i}");
    }
    for n in &nodes {
        let s = n.stats().await;
        assert_eq!(s.protocol.resets_total(), 0, "{s:?}");
        n.shutdown().await;
    }
}

#[tokio::test]
async fn restarted_frontend_gets_the_backends_very_next_invalidation() {
    // The seed incident: a backend and two frontends; a frontend restarts,
    // and the backend's very next invalidation must reach it.
    let c = Loopback::new();
    let backend = c.join("backend").await;
    let fe1 = c.join("frontend-1").await;
    let fe2 = c.join("frontend-2").await;
    for i in 0..20 {
        backend.invalidate([format!("warmup-{i}")]).await.unwrap();
    }
    let mut sub1 = fe1.subscribe();
    recv_until(&mut sub1, "warm-up done", |d| {
        is_key(d, backend.stream(), "warmup-19")
    })
    .await;

    fe2.shutdown().await;
    drop(fe2);
    let fe2 = c.join("frontend-2").await;
    let mut sub2 = fe2.subscribe();
    backend.invalidate(["product:1"]).await.unwrap();
    // (Should the restarted frontend miss every Hello answer, it meets the
    // backend's stream later and replays its history first: still fine.)
    recv_until(&mut sub2, "the first invalidation after restart", |d| {
        assert!(!matches!(d, Delivery::Reset { .. }), "{d:?}");
        is_key(d, backend.stream(), "product:1")
    })
    .await;
    assert_eq!(fe2.stats().await.protocol.resets_total(), 0);
    recv_until(&mut sub1, "frontend-1 too", |d| {
        is_key(d, backend.stream(), "product:1")
    })
    .await;
}

#[tokio::test]
async fn a_datagram_dropped_on_receive_gives_a_reset_with_its_range_when_repair_is_off() {
    let c = Loopback::new();
    let sender = c.join("sender").await;
    let mut cfg = c.config("receiver");
    cfg.protocol.max_nak_tries = 0;
    let seq_2 = Faults::dropping(|d| data_seqs(d).is_some_and(|r| r.contains(&2)));
    let (receiver, faults) = join_with_faults(cfg, seq_2).await.unwrap();
    let mut sub = receiver.subscribe();
    sender.invalidate(["k1"]).await.unwrap();
    recv_until(&mut sub, "k1", |d| is_key(d, sender.stream(), "k1")).await;
    // One datagram per event, so that only seq 2 is dropped: the heartbeat
    // that follows it reveals the loss.
    sender.invalidate(["k2"]).await.unwrap();
    let d = recv_until(&mut sub, "the reset", |d| {
        keys_of(d).is_some() || matches!(d, Delivery::Reset { .. })
    })
    .await;
    assert_eq!(
        d,
        Delivery::Reset {
            reason: ResetReason::RetriesExhausted {
                stream: sender.stream(),
                missing: (2, 3),
                tries: 0,
            }
        }
    );
    sender.invalidate(["k3"]).await.unwrap();
    recv_until(&mut sub, "k3", |d| is_key(d, sender.stream(), "k3")).await;
    assert_eq!(faults.lost(), 1);
    assert_eq!(receiver.stats().await.protocol.events_delivered, 2);
}

#[tokio::test]
async fn tail_loss_is_noticed_and_repaired_within_50_ms() {
    let c = Loopback::new();
    let sender = c.join("sender").await;
    let dropping = Arc::new(AtomicBool::new(false));
    let flag = dropping.clone();
    let data_while_dropping =
        Faults::dropping(move |d| data_seqs(d).is_some() && flag.load(Ordering::SeqCst));
    let (receiver, _) = join_with_faults(c.config("receiver"), data_while_dropping)
        .await
        .unwrap();
    let mut sub = receiver.subscribe();
    sender.invalidate(["first"]).await.unwrap();
    recv_until(&mut sub, "first", |d| is_key(d, sender.stream(), "first")).await;

    dropping.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    sender.invalidate(["last"]).await.unwrap();
    let d = recv_until(&mut sub, "the repaired tail", |d| {
        keys_of(d).is_some() || matches!(d, Delivery::Reset { .. })
    })
    .await;
    let took = t0.elapsed();
    assert!(is_key(&d, sender.stream(), "last"), "{d:?}");
    eprintln!("tail loss repaired after {took:?}");
    assert!(
        took < Duration::from_millis(50),
        "tail loss repaired after {took:?}"
    );
    let s = receiver.stats().await.protocol;
    assert!(s.naks_sent >= 1);
    assert_eq!((s.events_repaired, s.resets_total()), (1, 0));
}

#[tokio::test]
async fn garbage_foreign_cluster_and_other_versions_are_counted_and_ignored() {
    let c = Loopback::new();
    let node = c.join("node").await;
    let mut sub = node.subscribe();
    let hash = wire::cluster_hash(c.cluster());
    let mut buf = Vec::new();
    let event = Body::Data {
        first_seq: 1,
        events: Events::new(&[Event::ClearAll]).unwrap(),
    };
    c.send_raw(b"definitely not cachecast").unwrap();
    wire::encode(&Header::new(hash ^ 0xdead, 99), &event, &mut buf);
    c.send_raw(&buf).unwrap();
    let mut v2 = Header::new(hash, 99);
    v2.version = 2;
    wire::encode(&v2, &event, &mut buf);
    c.send_raw(&buf).unwrap();
    let mut flagged = Header::new(hash, 99);
    flagged.flags = 0x80;
    wire::encode(&flagged, &event, &mut buf);
    c.send_raw(&buf).unwrap();
    // Says it is authenticated, but has no trailer.
    flagged.flags = wire::FLAG_AUTH;
    wire::encode(&flagged, &event, &mut buf);
    c.send_raw(&buf).unwrap();
    // Then one valid datagram: once it is delivered, the others were handled.
    wire::encode(&Header::new(hash, 98), &event, &mut buf);
    c.send_raw(&buf).unwrap();
    let d = recv_until(&mut sub, "the valid datagram", |_| true).await;
    assert!(
        matches!(
            &d,
            Delivery::Event {
                stream: 98,
                seq: 1,
                event,
                ..
            } if *event == Event::ClearAll
        ),
        "{d:?}"
    );
    let s = node.stats().await.protocol;
    for kind in [
        "bad_magic",
        "wrong_cluster",
        "bad_version",
        "bad_flags",
        "auth_bad_tag",
    ] {
        assert_eq!(s.dropped.get(kind), Some(&1), "{kind}: {:?}", s.dropped);
    }
    assert_eq!(s.events_delivered, 1);
}

/// A sender, and a node with room for 8 deliveries whose subscription has
/// not read any of the 100 events (k0..k99) the node has delivered.
async fn lagging_subscriber(c: &Loopback) -> (Node, Node, Subscription) {
    let sender = c.join("sender").await;
    let mut cfg = c.config("slow");
    cfg.subscriber_queue = 8;
    let slow = Node::join(cfg).await.unwrap();
    let sub = slow.subscribe();
    for i in 0..100 {
        sender.invalidate([format!("k{i}")]).await.unwrap();
    }
    let end = Instant::now() + DEADLINE;
    while slow.stats().await.protocol.events_delivered < 100 {
        assert!(Instant::now() < end, "events not delivered in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (sender, slow, sub)
}

#[tokio::test]
async fn a_subscriber_that_lags_gets_a_reset_not_a_silent_drop() {
    let c = Loopback::new();
    let (sender, slow, mut sub) = lagging_subscriber(&c).await;
    let first = sub.recv().await.unwrap();
    assert!(
        matches!(first, Delivery::Reset { reason: ResetReason::Lagged { missed } } if missed == 92),
        "{first:?}"
    );
    // Then the 8 most recent, in order.
    for i in 92..100 {
        let d = sub.recv().await.unwrap();
        assert!(is_key(&d, sender.stream(), &format!("k{i}")), "{d:?}");
    }
    assert_eq!(slow.stats().await.lagged_resets, 1);
}

/// What `recv_each` handed out, owned: ("reset", missed) or (key, seq).
fn each_owned(d: DeliveryRef<'_>, stream: u64) -> (String, u64) {
    match d {
        DeliveryRef::Reset {
            reason: ResetReason::Lagged { missed },
        } => ("reset".into(), *missed),
        DeliveryRef::Event {
            stream: s,
            seq,
            event: EventRef::Invalidate { keys },
            ..
        } if s == stream => (keys.collect::<Vec<_>>().join(","), seq),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn reading_in_place_gets_what_recv_gets_lag_resets_included() {
    let c = Loopback::new();
    let (sender, slow, mut sub) = lagging_subscriber(&c).await;
    let stream = sender.stream();
    // All of it in one call: the Reset first, exact, then the 8 most
    // recent in order.
    let mut got = Vec::new();
    let n = tokio::time::timeout(DEADLINE, sub.recv_each(|d| got.push(each_owned(d, stream))))
        .await
        .unwrap();
    assert_eq!(n, Some(9));
    let want: Vec<(String, u64)> = std::iter::once(("reset".to_string(), 92))
        .chain((92..100).map(|i| (format!("k{i}"), i + 1)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(slow.stats().await.lagged_resets, 1);
    assert_eq!(sub.try_recv_each(|d| panic!("nothing more: {d:?}")), 0);
    // Mixed with recv: one each way, in order, nothing twice.
    sender.invalidate(["k100"]).await.unwrap();
    sender.invalidate(["k101"]).await.unwrap();
    let first = tokio::time::timeout(DEADLINE, sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(is_key(&first, stream, "k100"), "{first:?}");
    let mut rest = Vec::new();
    while rest.is_empty() {
        tokio::time::timeout(
            DEADLINE,
            sub.recv_each(|d| rest.push(each_owned(d, stream))),
        )
        .await
        .unwrap()
        .unwrap();
    }
    assert_eq!(rest, vec![("k101".to_string(), 102)]);
    // Once the node stops and everything was read: `None`.
    slow.shutdown().await;
    let ended = tokio::time::timeout(DEADLINE, sub.recv_each(|_| {}))
        .await
        .unwrap();
    assert_eq!(ended, None);
}

#[tokio::test]
async fn publishing_after_shutdown_and_oversize_events_are_clear_errors() {
    let c = Loopback::new();
    let node = c.join("n").await;
    let huge = "x".repeat(1000);
    let err = node.invalidate([huge.clone(), huge]).await.unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    node.shutdown().await;
    let err = node.invalidate(["k"]).await.unwrap_err();
    assert_eq!(err, cachecast::PublishError::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_racing_shutdown_is_sent_or_refused_never_dropped() {
    let c = Loopback::new();
    let rx = c.join("rx").await;
    let mut sub = rx.subscribe();
    let tx = c.join("tx").await;
    let other = tx.clone();
    let sd = tokio::spawn({
        let tx = tx.clone();
        async move { tx.shutdown().await }
    });
    // Load shaping, not a wait for a condition: land inside the linger.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let r = other.invalidate(["written-after-shutdown-began"]).await;
    sd.await.unwrap();
    if r.is_ok() {
        recv_until(&mut sub, "the accepted event", |d| {
            is_key(d, tx.stream(), "written-after-shutdown-began")
        })
        .await;
    } else {
        assert_eq!(r, Err(cachecast::PublishError::Closed));
    }
}

#[tokio::test]
async fn subscriptions_end_after_shutdown() {
    let c = Loopback::new();
    let n = c.join("n").await;
    let mut sub = n.subscribe();
    n.shutdown().await;
    let r = tokio::time::timeout(DEADLINE, sub.recv()).await;
    assert!(matches!(r, Ok(None)), "recv() after shutdown: {r:?}");
    let mut late = n.subscribe();
    assert!(
        late.recv().await.is_none(),
        "a subscription made after shutdown has ended"
    );
    // And the counters are still there.
    assert_eq!(n.stats().await.protocol.hellos_sent, 3);
}

#[tokio::test]
async fn publish_many_delivers_all_in_order_or_refuses_all() {
    let c = Loopback::new();
    let sender = c.join("sender").await;
    let rx = c.join("rx").await;
    let mut sub = rx.subscribe();
    let huge = Event::Invalidate {
        keys: vec!["x".repeat(1000), "y".repeat(1000)],
    };
    let bad = [
        Event::Invalidate {
            keys: vec!["never".into()],
        },
        huge,
    ];
    assert!(sender.publish_many(bad).await.is_err());
    sender
        .publish_many((0..500).map(|i| Event::Invalidate {
            keys: vec![format!("k{i}")],
        }))
        .await
        .unwrap();
    expect_keys_in_order(&mut sub, &sender, &rx, 500).await;
}

#[tokio::test]
async fn publish_batch_delivers_all_in_order_or_refuses_all() {
    let c = Loopback::new();
    let sender = c.join("sender").await;
    let rx = c.join("rx").await;
    let mut sub = rx.subscribe();
    let mut batch = EventBatch::new();
    batch.invalidate(&["never"]).unwrap();
    let (x, y) = ("x".repeat(1000), "y".repeat(1000));
    batch.invalidate(&[&x, &y]).unwrap();
    assert!(sender.publish_batch(&mut batch).await.is_err());
    assert_eq!(batch.len(), 2, "a refused batch is left as it was");
    batch.clear();
    for i in 0..500 {
        if i % 2 == 0 {
            batch.invalidate(&[&format!("k{i}")]).unwrap();
        } else {
            batch
                .push(&Event::Invalidate {
                    keys: vec![format!("k{i}")],
                })
                .unwrap();
        }
    }
    sender.publish_batch(&mut batch).await.unwrap();
    assert!(batch.is_empty(), "a published batch is left empty");
    expect_keys_in_order(&mut sub, &sender, &rx, 500).await;
    // After shutdown: refused, and the batch keeps its events.
    batch.invalidate(&["late"]).unwrap();
    sender.shutdown().await;
    assert!(matches!(
        sender.publish_batch(&mut batch).await,
        Err(cachecast::PublishError::Closed)
    ));
    assert_eq!(batch.len(), 1);
}

/// On Linux a socket filter drops a node's own looped-back datagrams in the
/// kernel: it never wakes up for them, and still hears everyone else.
#[tokio::test]
async fn own_datagrams_are_dropped_by_the_kernel() {
    let c = Loopback::new();
    let a = c.join("a").await;
    let b = c.join("b").await;
    let mut sub_a = a.subscribe();
    let mut sub_b = b.subscribe();
    for i in 0..20 {
        a.invalidate([format!("from-a-{i}")]).await.unwrap();
    }
    b.invalidate(["from-b"]).await.unwrap();
    for i in 0..20 {
        let key = format!("from-a-{i}");
        recv_until(&mut sub_b, &key, |d| is_key(d, a.stream(), &key)).await;
    }
    recv_until(&mut sub_a, "from-b", |d| is_key(d, b.stream(), "from-b")).await;
    let s = a.stats().await.protocol;
    assert_eq!(s.own_ignored, 0, "own datagrams reached the node: {s:?}");
    assert!(s.data_sent > 0 && s.events_delivered == 1, "{s:?}");
}

/// `sub` (of `rx`) gets keys k0, k1, … of `sender` in order, and `rx`
/// delivered nothing else (nothing of a refused batch).
async fn expect_keys_in_order(sub: &mut Subscription, sender: &Node, rx: &Node, n: u64) {
    for i in 0..n {
        let d = tokio::time::timeout(DEADLINE, sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(is_key(&d, sender.stream(), &format!("k{i}")), "{i}: {d:?}");
    }
    assert_eq!(rx.stats().await.protocol.events_delivered, n);
}

/// A receipt names the seqs the events really got: publishers racing on
/// clones of one node, with single events and batches, each get the seqs
/// the receivers then deliver those events under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_name_the_seqs_receivers_deliver() {
    let c = Loopback::new();
    let (tx, rx) = (c.join("tx").await, c.join("rx").await);
    let mut sub = rx.subscribe();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..50 {
                let key = format!("t{t}-{i}");
                if i % 2 == 0 {
                    let r = tx.invalidate([key.clone()]).await.unwrap();
                    assert_eq!(r.seqs.end - r.seqs.start, 1);
                    mine.push((r.stream, r.seqs.start, key));
                } else {
                    let mut batch = EventBatch::new();
                    batch.invalidate(&[key.as_str()]).unwrap();
                    batch.invalidate(&[format!("{key}b").as_str()]).unwrap();
                    let r = tx.publish_batch(&mut batch).await.unwrap();
                    assert_eq!(r.seqs.end - r.seqs.start, 2);
                    mine.push((r.stream, r.seqs.start, key.clone()));
                    mine.push((r.stream, r.seqs.start + 1, format!("{key}b")));
                }
            }
            mine
        }));
    }
    let mut want = Vec::new();
    for t in tasks {
        want.extend(t.await.unwrap());
    }
    want.sort();
    let mut got = Vec::new();
    while got.len() < want.len() {
        let d = recv_until(&mut sub, "every published event", |d| keys_of(d).is_some()).await;
        if let Delivery::Event { stream, seq, .. } = &d {
            let (_, keys) = keys_of(&d).unwrap();
            got.push((*stream, *seq, keys[0].clone()));
        }
    }
    got.sort();
    assert_eq!(got, want);
    assert_eq!(tx.stream(), want[0].0);
    // And the receiver's view of the stream says the same position.
    let seen = rx.streams().await;
    let st = seen.iter().find(|s| s.stream == tx.stream()).unwrap();
    assert_eq!(
        (st.next_expected, st.gaps.len()),
        (want.len() as u64 + 1, 0)
    );
    tx.shutdown().await;
    assert!(tx.streams().await.is_empty());
    rx.shutdown().await;
}

/// A confirmed publish on three nodes: the publisher's report names both
/// others as confirmed, and the first confirmation on a quiet cluster
/// takes one round trip (no fixed wait).
#[tokio::test]
async fn a_confirmed_invalidation_names_every_live_member() {
    let c = Loopback::new();
    let nodes = [c.join("a").await, c.join("b").await, c.join("c").await];
    // Wait until a sees both others live (every node heartbeats at join).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let live = nodes[0]
            .members()
            .await
            .iter()
            .filter(|m| !m.this_node && m.state == cachecast::Liveness::Live)
            .count();
        if live == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "a never saw b and c live");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..5 {
        let report = nodes[0]
            .invalidate_confirmed([format!("k{i}")], Duration::from_secs(2))
            .await
            .unwrap();
        let names: Vec<String> = report
            .confirmed
            .iter()
            .filter_map(|m| m.name.clone())
            .collect();
        assert_eq!(names, ["b", "c"], "{report:?}");
        assert!(report.is_complete(), "{report:?}");
    }
    let s = nodes[0].stats().await.protocol;
    assert_eq!(s.confirmations_complete, 5, "{s:?}");
    for n in &nodes {
        n.shutdown().await;
    }
}
