//! NAK repair on real sockets, on loopback (interface 127.0.0.1, TTL 0).

mod common;

use std::collections::HashSet;

use cachecast::testkit::{data_seqs, join_with_faults, Faults};
use cachecast::{Delivery, Node, ResetReason};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_dropping_10_percent_delivers_all_5000_events_without_reset() {
    let c = Loopback::new();
    let sender = c.join("sender").await;
    let mut cfg = c.config("lossy");
    cfg.seed = Some(7);
    // Lose 10 % of every received datagram: data, heartbeats and repairs.
    let loss = Faults {
        loss: 0.10,
        ..Faults::default()
    };
    let (receiver, faults) = join_with_faults(cfg, loss).await.unwrap();
    let mut subs = [receiver.subscribe()];
    publish_and_await(&sender, &mut subs, 5000).await;
    let rx = receiver.stats().await;
    let tx = sender.stats().await.protocol;
    let p = &rx.protocol;
    eprintln!(
        "5000 events in {} datagrams; receiver dropped {}; NAKs sent {}, suppressed {}; \
         repairs sent {} ({} events), received {}; events repaired {}; \
         time to repair p50 {} µs, p99 {} µs",
        tx.data_sent,
        faults.lost(),
        p.naks_sent,
        p.naks_suppressed,
        tx.repairs_sent,
        tx.repaired_events_sent,
        p.repairs_received,
        p.events_repaired,
        p.repair_time.quantile_us(0.5),
        p.repair_time.quantile_us(0.99),
    );
    assert_eq!(p.resets_total(), 0);
    assert!(faults.lost() > 0 && p.events_repaired > 0);
    assert!(
        tx.data_sent >= 200,
        "the test needs many datagrams: {}",
        tx.data_sent
    );
}

#[tokio::test]
async fn a_loss_the_sender_no_longer_holds_is_a_reset_with_reason_unavailable() {
    let c = Loopback::new();
    let mut tx_cfg = c.config("sender");
    // A ring of a few events only.
    tx_cfg.protocol.retransmit_bytes = 200;
    let sender = Node::join(tx_cfg).await.unwrap();
    let first_lost = Faults::dropping(|d| data_seqs(d).is_some_and(|r| r.start == 1));
    let (receiver, _) = join_with_faults(c.config("receiver"), first_lost)
        .await
        .unwrap();
    let mut sub = receiver.subscribe();
    sender.invalidate(["lost"]).await.unwrap();
    for i in 0..100 {
        sender
            .invalidate([format!("pushes-lost-out-of-the-ring-{i}")])
            .await
            .unwrap();
    }
    let d = recv_until(&mut sub, "the reset", |d| {
        matches!(d, Delivery::Reset { .. })
    })
    .await;
    // The dropped datagram held seq 1 and whatever was batched with it.
    let Delivery::Reset {
        reason: ResetReason::Unavailable { stream, missing },
    } = d
    else {
        panic!("expected Unavailable, got {d:?}");
    };
    assert_eq!(stream, sender.stream());
    assert!(
        missing.0 == 1 && missing.1 > 1 && missing.1 <= 101,
        "{missing:?}"
    );
    let s = receiver.stats().await.protocol;
    assert_eq!(s.resets.get("unavailable"), Some(&1));
    assert_eq!(s.events_repaired, 0);
}

#[tokio::test]
async fn shutdown_lingers_to_repair_a_lost_last_event() {
    let c = Loopback::new();
    let mut tx_cfg = c.config("sender");
    tx_cfg.linger = std::time::Duration::from_millis(300);
    let sender = Node::join(tx_cfg).await.unwrap();
    let stream = sender.stream();
    let no_data = Faults::dropping(|d| data_seqs(d).is_some());
    let (receiver, _) = join_with_faults(c.config("receiver"), no_data)
        .await
        .unwrap();
    let mut sub = receiver.subscribe();
    sender.invalidate(["last-words"]).await.unwrap();
    sender.shutdown().await;
    let d = recv_until(&mut sub, "the repaired event", |_| true).await;
    assert!(is_key(&d, stream, "last-words"), "{d:?}");
    assert_eq!(receiver.stats().await.protocol.resets_total(), 0);
}

/// Publishes `n` events, paced (many datagrams), and waits until every one
/// of `subs` has all of them (none may see a Reset).
async fn publish_and_await(sender: &Node, subs: &mut [cachecast::Subscription], n: usize) {
    let publisher = sender.clone();
    let publish = tokio::spawn(async move {
        for i in 0..n {
            publisher.invalidate([format!("k{i}")]).await.unwrap();
            if i % 10 == 9 {
                // Load shaping, not a wait for a condition.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    });
    let end = tokio::time::Instant::now() + DEADLINE * 4;
    for (i, sub) in subs.iter_mut().enumerate() {
        let mut seen = HashSet::new();
        while seen.len() < n {
            let d = tokio::time::timeout_at(end, sub.recv())
                .await
                .unwrap_or_else(|_| panic!("listener {i}: only {} of {n} events", seen.len()))
                .expect("subscription open");
            match d {
                Delivery::Event { seq, .. } => {
                    seen.insert(seq);
                }
                Delivery::Reset { reason } => panic!("listener {i}: unexpected reset: {reason:?}"),
            }
        }
    }
    publish.await.unwrap();
}

/// Repairs cost only who lost: one listener of three loses 30 % of what it
/// receives. With direct repairs (the default) its repairs go to it alone
/// and the clean listeners receive (almost) none; with them off, every
/// repair reaches every listener. Both runs in one test, compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repairs_one_listener_asked_for_go_to_it_alone() {
    const EVENTS: usize = 3000;
    let mut clean_repairs = Vec::new();
    for direct in [true, false] {
        let c = Loopback::new();
        let mut cfg = c.config("sender");
        cfg.direct_repairs = direct;
        let sender = Node::join(cfg).await.unwrap();
        let mut subs = Vec::new();
        let mut clean = Vec::new();
        for name in ["clean-1", "clean-2"] {
            let mut cfg = c.config(name);
            cfg.direct_repairs = direct;
            let node = Node::join(cfg).await.unwrap();
            subs.push(node.subscribe());
            clean.push(node);
        }
        let mut cfg = c.config("lossy");
        cfg.direct_repairs = direct;
        cfg.seed = Some(11);
        let loss = Faults {
            loss: 0.30,
            ..Faults::default()
        };
        let (lossy, faults) = join_with_faults(cfg, loss).await.unwrap();
        subs.push(lossy.subscribe());
        publish_and_await(&sender, &mut subs, EVENTS).await;
        let tx = sender.stats().await.protocol;
        let lossy = lossy.stats().await.protocol;
        let mut at_clean = 0;
        for node in &clean {
            let s = node.stats().await.protocol;
            assert_eq!(s.resets_total(), 0);
            // Not those it asked for itself (a clean listener starved of
            // CPU on a busy host may drop datagrams in its kernel buffer).
            at_clean += s.repairs_received.saturating_sub(s.naks_sent);
        }
        eprintln!(
            "direct repairs {direct}: lossy dropped {}, repaired {} events from {} repairs; \
             sender sent {} repairs ({} directed); clean listeners received {at_clean} repairs",
            faults.lost(),
            lossy.events_repaired,
            lossy.repairs_received,
            tx.repairs_sent,
            tx.repairs_directed,
        );
        assert!(faults.lost() > 0 && lossy.events_repaired > 0);
        assert_eq!(lossy.resets_total(), 0);
        if direct {
            assert!(tx.repairs_directed > 0, "no repair was directed");
        } else {
            assert_eq!(tx.repairs_directed, 0);
        }
        clean_repairs.push((at_clean, tx.repairs_sent));
    }
    let ((with, _), (without, sent)) = (clean_repairs[0], clean_repairs[1]);
    // Without direct repairs each clean listener gets about every repair.
    assert!(
        without >= sent,
        "{without} repairs at clean listeners of {sent} sent"
    );
    // With them, a repair reaches a clean listener only when the lossy one
    // asked a third time for it (a repair lost twice: about 9 % at 30 %).
    assert!(
        with * 4 <= without,
        "clean listeners received {with} repairs with direct repairs, {without} without"
    );
}
