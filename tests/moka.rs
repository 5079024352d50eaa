//! The moka adapter (feature `moka`) on real nodes on loopback (interface
//! 127.0.0.1, TTL 0, a group and port of the test's own): what one node
//! publishes reaches the other node's moka cache, and its own.

use std::time::{Duration, Instant};

use cachecast::testkit::Loopback;
use cachecast::{Event, Node, NodeConfig};
use moka::future::Cache;

const DEADLINE: Duration = Duration::from_secs(10);

fn cache(closures: bool) -> Cache<String, u32> {
    let b = Cache::builder().max_capacity(10_000);
    if closures {
        b.support_invalidation_closures().build()
    } else {
        b.build()
    }
}

async fn fill(c: &Cache<String, u32>, keys: &[&str]) {
    for (i, k) in keys.iter().enumerate() {
        c.insert(k.to_string(), i as u32).await;
    }
}

/// Waits until `key` is gone from `c` (the adapter applied what removes it).
async fn wait_gone(c: &Cache<String, u32>, key: &str, what: &str) {
    let end = Instant::now() + DEADLINE;
    while c.get(key).await.is_some() {
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}: {key} still cached"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn present(c: &Cache<String, u32>, keys: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for k in keys {
        if c.get(*k).await.is_some() {
            out.push(k.to_string());
        }
    }
    out
}

/// Keys, prefixes, Custom and ClearAll from node a, applied to b's cache
/// and to a's own. Events of one stream arrive in order on loopback, so
/// once a later sentinel key is gone, everything published before it was
/// applied.
async fn publish_and_check(closures: bool) {
    let place = Loopback::new();
    let a = Node::join(place.config("a")).await.unwrap();
    let b = Node::join(place.config("b")).await.unwrap();
    let (ca, cb) = (cache(closures), cache(closures));
    let keys = [
        "user:1",
        "user:2",
        "order:1",
        "order:2",
        "page:home",
        "s1",
        "s2",
        "s3",
    ];
    fill(&ca, &keys).await;
    fill(&cb, &keys).await;
    let ta = cachecast::moka::spawn(a.subscribe(), ca.clone());
    let tb = cachecast::moka::spawn(b.subscribe(), cb.clone());

    a.invalidate(["order:1"]).await.unwrap();
    a.invalidate_prefix("user:").await.unwrap();
    a.publish(Event::Custom {
        topic: "page:home".into(),
        payload: b"page:home".to_vec(),
    })
    .await
    .unwrap();
    a.invalidate(["s1"]).await.unwrap();
    for c in [&ca, &cb] {
        wait_gone(c, "s1", "the first sentinel").await;
        assert_eq!(
            present(c, &keys).await,
            ["order:2", "page:home", "s2", "s3"],
            "a key, a prefix and a Custom applied (closures: {closures})"
        );
    }

    // Entries inserted after the prefix event are not touched by it.
    cb.insert("user:3".into(), 3).await;
    a.invalidate(["s2"]).await.unwrap();
    wait_gone(&cb, "s2", "the second sentinel").await;
    assert!(cb.get("user:3").await.is_some());

    a.clear_all().await.unwrap();
    for c in [&ca, &cb] {
        wait_gone(c, "page:home", "ClearAll").await;
        assert_eq!(present(c, &keys).await, Vec::<String>::new());
    }
    assert!(cb.get("user:3").await.is_none());

    // The adapter ends with the node.
    a.shutdown().await;
    b.shutdown().await;
    for t in [ta, tb] {
        tokio::time::timeout(DEADLINE, t)
            .await
            .expect("the adapter ends when its node stops")
            .unwrap();
    }
}

#[tokio::test]
async fn invalidations_prefixes_and_clears_reach_both_caches() {
    publish_and_check(true).await;
}

#[tokio::test]
async fn prefixes_work_without_invalidation_closures() {
    publish_and_check(false).await;
}

#[tokio::test]
async fn a_reset_invalidates_everything() {
    // b's subscriber may fall 8 deliveries behind: the adapter starts only
    // after 200 events were delivered, so its first delivery is a
    // Reset { Lagged }, and the cache must drop keys no event named.
    let place = Loopback::new();
    let a = Node::join(place.config("a")).await.unwrap();
    let b = Node::join(NodeConfig {
        subscriber_queue: 8,
        ..place.config("b")
    })
    .await
    .unwrap();
    let cb = cache(false);
    fill(&cb, &["untouched", "other"]).await;
    let sub = b.subscribe();
    for i in 0..200 {
        a.invalidate([format!("x{i}")]).await.unwrap();
    }
    let end = Instant::now() + DEADLINE;
    while b.stats().await.protocol.events_delivered < 200 {
        assert!(Instant::now() < end, "b never delivered the 200 events");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = cachecast::moka::spawn(sub, cb.clone());
    wait_gone(&cb, "untouched", "the Reset").await;
    assert!(cb.get("other").await.is_none());
    let resets = b.stats().await.protocol.resets;
    assert!(
        resets.get("lagged").copied().unwrap_or(0) >= 1,
        "{resets:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
    tokio::time::timeout(DEADLINE, t).await.unwrap().unwrap();
}
