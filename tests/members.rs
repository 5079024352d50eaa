//! The membership view on real sockets (the loopback cluster of the test
//! kit): a node that joins is shown live, one that leaves with `Goodbye`
//! left, one that is killed dead — each within the lease (3 s by default),
//! the last not before it.

use std::time::{Duration, Instant};

use cachecast::testkit::LoopbackCluster;
use cachecast::{CoreConfig, Liveness, Member, Node};

/// The member named `name` in `node`'s view, if any.
async fn member(node: &Node, name: &str) -> Option<Member> {
    node.members()
        .await
        .into_iter()
        .find(|m| m.name.as_deref() == Some(name))
}

/// Waits until `node` shows `name` in state `want`, at most `limit`;
/// returns the member and how long that took.
async fn wait_for(node: &Node, name: &str, want: Liveness, limit: Duration) -> (Member, Duration) {
    let start = Instant::now();
    loop {
        let m = member(node, name).await;
        if let Some(m) = m.as_ref().filter(|m| m.state == want) {
            return (m.clone(), start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "{name} not {want:?} within {limit:?}: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_leaves_and_deaths_show_in_the_view_within_the_lease() {
    let defaults = CoreConfig::default();
    let (lease, idle) = (defaults.lease, defaults.heartbeat_idle);
    let mut c = LoopbackCluster::start_named(&["watcher"], rand::random(), |_| {})
        .await
        .unwrap();
    let watcher = c.node(0).unwrap().clone();

    // Joins: live within the lease (in fact at once: its Hello).
    let joiner = c.add_node("joiner").await.unwrap();
    let (m, took) = wait_for(&watcher, "joiner", Liveness::Live, lease).await;
    assert_eq!(m.stream, c.node(joiner).unwrap().stream());
    assert!(!m.this_node && !m.receive_only, "{m:?}");
    let addr = m.addr.expect("an address once heard");
    assert!(addr.ip().is_loopback(), "{addr}");
    assert!(m.last_heard < lease, "{m:?}");
    let view = watcher.members().await;
    assert!(
        view[0].this_node && view[0].name.as_deref() == Some("watcher"),
        "this node first: {view:?}"
    );
    println!("joined: live after {took:?}");

    // Leaves with Goodbye: left within the lease.
    c.shutdown(joiner).await;
    let left_at = Instant::now();
    let (_, took) = wait_for(&watcher, "joiner", Liveness::Left, lease).await;
    println!("Goodbye: left after {took:?}");

    // Killed (no Goodbye, nothing more sent): dead within the lease and a
    // margin (leases are checked every quarter lease), and not before its
    // lease ran out: it was last heard at most a heartbeat before the kill.
    let victim = c.add_node("victim").await.unwrap();
    wait_for(&watcher, "victim", Liveness::Live, lease).await;
    c.crash(victim);
    let (m, took) = wait_for(
        &watcher,
        "victim",
        Liveness::Dead,
        lease + lease / 4 + Duration::from_secs(1),
    )
    .await;
    assert!(
        took >= lease - idle,
        "dead after {took:?}, before its lease"
    );
    assert!(m.last_heard >= lease, "{m:?}");
    println!("killed: dead after {took:?}");

    // Left stays left: not declared dead when its lease has run out (and
    // a lease check has passed since).
    let after = lease + lease / 4 + Duration::from_millis(100);
    if let Some(rest) = after.checked_sub(left_at.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let m = member(&watcher, "joiner").await.expect("still shown");
    assert_eq!(
        m.state,
        Liveness::Left,
        "{:?} after Goodbye: {m:?}",
        left_at.elapsed()
    );
    c.shutdown_all().await;
}
