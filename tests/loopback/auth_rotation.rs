//! Key rotation on a running loopback cluster while events flow, as an
//! operator does it: one key file per node (as on real servers), edited
//! and reloaded on every node three times (append the new key; move it
//! first; delete the old one), each step taken once the membership view
//! shows every member ready for it. Every event is delivered everywhere
//! (the test kit's checker) and nobody Resets. And the mistake: retiring
//! the old key on one node before the others switched.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::auth::*;
use cachecast::keys;
use cachecast::testkit::LoopbackCluster;
use cachecast::{Delivery, Liveness, Member};

/// The secrets (hex lines) of a key file, in its order.
fn secrets(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// Rewrites the key file at `path` (keeping its mode) with `secrets`.
fn write_secrets(path: &Path, secrets: &[&String]) {
    let mut text =
        String::from("# cachecast key file: the first key sends, every key is accepted.\n");
    for s in secrets {
        text.push_str(s);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
    assert_private(path);
}

/// Copies the first node's key file to every other node's.
fn distribute(paths: &[PathBuf]) {
    for p in &paths[1..] {
        std::fs::copy(&paths[0], p).unwrap();
        assert_private(p);
    }
}

/// Reloads the key file of each node in `nodes`, which must then hold
/// `want` (the sending key first).
async fn reload(c: &LoopbackCluster, nodes: impl IntoIterator<Item = usize>, want: &[u32]) {
    for i in nodes {
        let held = c.node(i).unwrap().reload_keys().await.unwrap();
        assert_eq!(held, want, "n{i}");
    }
}

/// Waits until, in the membership view of each node in `nodes`, `n` members
/// are live and each of them satisfies `ready`.
async fn wait_view(
    c: &LoopbackCluster,
    nodes: impl IntoIterator<Item = usize> + Clone,
    n: usize,
    what: &str,
    ready: impl Fn(&Member) -> bool,
) {
    wait_for(what, async || {
        for i in nodes.clone() {
            let view = c.node(i).unwrap().members().await;
            let live: Vec<&Member> = view.iter().filter(|m| m.state == Liveness::Live).collect();
            if live.len() != n || !live.iter().all(|m| ready(m)) {
                return false;
            }
        }
        true
    })
    .await;
}

/// Publishes from node `i` continuously, about one event a millisecond,
/// until `stop` (or 20,000 events).
fn publisher(
    c: &LoopbackCluster,
    i: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    let node = c.node(i).unwrap().clone();
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) && n < 20_000 {
            node.invalidate([format!("n{i}-{n}")]).await.unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        n
    })
}

/// Waits until the cluster has recorded `more` publishes past `from`.
async fn wait_published(c: &LoopbackCluster, from: usize, more: usize) {
    wait_for("more events published", async || {
        c.published().len() >= from + more
    })
    .await;
}

fn resets_of_all_lives(c: &LoopbackCluster) -> Vec<usize> {
    let record = c.record();
    (0..c.len())
        .map(|i| {
            record
                .lives
                .iter()
                .filter(|l| l.node == i)
                .flat_map(|l| &l.deliveries)
                .filter(|(_, d)| matches!(d, Delivery::Reset { .. }))
                .count()
        })
        .collect()
}

/// A cluster of `names` whose nodes each read their own key file, all
/// holding one new key; `n2` encrypts. Returns it, the key files and the key id.
async fn keyed_cluster(
    dir: &KeyDir,
    names: &[&str],
    seed: u64,
) -> (LoopbackCluster, Vec<PathBuf>, u32) {
    let (first, id) = dir.new_key(names[0]);
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.path(n)).collect();
    distribute(&paths);
    assert_eq!(first, paths[0]);
    let by_name: Vec<(String, PathBuf)> = names
        .iter()
        .map(|n| n.to_string())
        .zip(paths.clone())
        .collect();
    let c = LoopbackCluster::start_named(names, seed, move |cfg| {
        let (_, path) = by_name
            .iter()
            .find(|(n, _)| *n == cfg.node_name)
            .expect("a key file per node");
        cfg.key_file = Some(path.clone());
        // One node encrypts: its stream's XAES-256-GCM key changes with
        // the sending key, at both ends.
        cfg.encrypt = cfg.node_name == "n2";
    })
    .await
    .unwrap();
    (c, paths, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_keys_while_events_flow_loses_nothing_and_never_resets() {
    let dir = KeyDir::new();
    let names = ["n0", "n1", "n2", "n3"];
    let (mut c, paths, old) = keyed_cluster(&dir, &names, 6).await;
    let all = 0..names.len();
    let stop = Arc::new(AtomicBool::new(false));
    let publishers = [
        publisher(&c, 0, stop.clone()),
        publisher(&c, 2, stop.clone()),
    ];
    wait_published(&c, 0, 100).await;

    // 1. Install: the new key appended to every file, reloaded everywhere;
    //    accepted, not yet sent with. Wait until every node sees every
    //    member hold it.
    let new = keys::append_new(&paths[0]).unwrap();
    assert_ne!(new, old);
    distribute(&paths);
    reload(&c, all.clone(), &[old, new]).await;
    wait_view(
        &c,
        all.clone(),
        4,
        "every member holding the new key",
        |m| m.keys == [old, new],
    )
    .await;
    let mark = c.published().len();
    wait_published(&c, mark, 100).await;

    // 2. Switch: the new key first in every file, reloaded everywhere.
    //    Wait until every node hears every member send with it.
    let s = secrets(&paths[0]);
    assert_eq!(s.len(), 2);
    write_secrets(&paths[0], &[&s[1], &s[0]]);
    distribute(&paths);
    reload(&c, all.clone(), &[new, old]).await;
    wait_view(
        &c,
        all.clone(),
        4,
        "every member sending with the new key",
        |m| m.sends_with == Some(new) && m.keys == [new, old],
    )
    .await;
    let mark = c.published().len();
    wait_published(&c, mark, 100).await;

    // 3. Retire: the old key deleted from every file, reloaded everywhere.
    //    (On loopback nothing sealed with the old key is still in flight
    //    once every member was heard sending with the new one: no node
    //    drops anything below proves it.)
    write_secrets(&paths[0], &[&s[1]]);
    distribute(&paths);
    reload(&c, all.clone(), &[new]).await;
    let mark = c.published().len();
    wait_published(&c, mark, 200).await;
    stop.store(true, Ordering::SeqCst);
    let mut published = 0;
    for p in publishers {
        published += p.await.unwrap();
    }
    assert!(c.settle(DEADLINE).await, "{:?}", c.check().err());
    let report = c.check().unwrap();
    // Every event to each of the 4 nodes (its publisher's own included).
    assert_eq!(report.expected, 4 * published as u64, "{report:?}");
    assert_eq!(report.delivered, report.expected, "{report:?}");
    assert_eq!(resets_of_all_lives(&c), vec![0; 4]);
    wait_view(
        &c,
        all.clone(),
        4,
        "every member holding the new key only",
        |m| m.keys == [new] && m.sends_with == Some(new),
    )
    .await;
    for i in all {
        let s = c.stats(i).await.unwrap().protocol;
        assert!(auth_drops(&s).is_empty(), "n{i}: {:?}", s.dropped);
        assert_eq!(s.resets_total(), 0, "n{i}");
        assert_eq!(c.node(i).unwrap().members().await[0].keys, [new]);
    }
    c.shutdown_all().await;
}

/// The mistake: one node retires the old key while the others still send
/// with it. It refuses them (`auth_unknown_key`) until they switch; then
/// it hears them again and catches up by repair (or a Reset): the promise
/// holds, nothing is lost silently. The nodes that held both keys drop
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retiring_the_old_key_too_early_on_one_node_refuses_the_others_until_they_switch() {
    let dir = KeyDir::new();
    let names = ["n0", "n1", "n2"];
    let (mut c, paths, old) = keyed_cluster(&dir, &names, 7).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = publisher(&c, 0, stop.clone());
    wait_published(&c, 0, 50).await;
    let new = keys::append_new(&paths[0]).unwrap();
    distribute(&paths);
    reload(&c, 0..3, &[old, new]).await;
    wait_view(&c, 0..3, 3, "every member holding the new key", |m| {
        m.keys == [old, new]
    })
    .await;
    let s = secrets(&paths[0]);

    // n2 alone jumps to step 3: it sends with the new key and accepts
    // nothing else, while n0 and n1 still send with the old one.
    write_secrets(&paths[2], &[&s[1]]);
    reload(&c, [2], &[new]).await;
    let mark = c.published().len();
    wait_published(&c, mark, 50).await;
    let n2 = c.node(2).unwrap();
    wait_for("n2 refusing the others", async || {
        dropped(&n2.stats().await.protocol, "auth_unknown_key") >= 20
    })
    .await;

    // The others switch (step 2): n2 hears them again.
    write_secrets(&paths[0], &[&s[1], &s[0]]);
    distribute(&paths[..2]);
    reload(&c, 0..2, &[new, old]).await;
    wait_view(
        &c,
        [2],
        3,
        "n2 hearing every member send with the new key",
        |m| m.sends_with == Some(new),
    )
    .await;
    let mark = c.published().len();
    wait_published(&c, mark, 50).await;
    stop.store(true, Ordering::SeqCst);
    let published = publishing.await.unwrap();
    assert!(c.settle(DEADLINE).await, "{:?}", c.check().err());
    let report = c.check().unwrap();
    assert_eq!(report.expected, 3 * published as u64, "{report:?}");
    let resets = resets_of_all_lives(&c);
    assert_eq!(&resets[..2], [0, 0], "n0 and n1 held both keys");
    let s2 = c.stats(2).await.unwrap().protocol;
    assert!(dropped(&s2, "auth_unknown_key") >= 20, "{:?}", s2.dropped);
    // What n2 missed came back by repair, or a Reset covers it (counted in
    // the report; the checker accepts either, never a silent loss).
    assert!(
        s2.events_repaired > 0 || resets[2] > 0,
        "n2 neither repaired nor Reset: {s2:?}"
    );
    eprintln!(
        "early retirement: n2 refused {} datagrams, repaired {} events, {} Resets; {report:?}",
        dropped(&s2, "auth_unknown_key"),
        s2.events_repaired,
        resets[2]
    );
    for i in 0..2 {
        let s = c.stats(i).await.unwrap().protocol;
        assert!(auth_drops(&s).is_empty(), "n{i}: {:?}", s.dropped);
    }
    c.shutdown_all().await;
}
