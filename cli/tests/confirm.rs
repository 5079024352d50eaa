//! `cachecast send --confirm` and the wait of a plain `send` before its
//! Goodbye, through the built binary, against listener nodes in this
//! process (the test kit's loopback cluster: real sockets on 127.0.0.1,
//! TTL 0, a fresh group and cluster; faults in each node's driver).

use crate::process;
use process::finish;

use std::collections::HashSet;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachecast::testkit::{Faults, LoopbackCluster};
use cachecast::wire::{Body, Event};
use cachecast::Delivery;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cachecast");

/// Three receive-only listeners, as `cachecast listen` would be.
async fn listeners() -> LoopbackCluster {
    let names = ["cache-a", "cache-b", "cache-c"];
    LoopbackCluster::start_named(&names, rand::random(), |cfg| cfg.receive_only = true)
        .await
        .unwrap()
}

/// The network flags of the cluster's place.
fn net(c: &LoopbackCluster) -> Vec<String> {
    [
        "--group",
        &c.group().to_string(),
        "--interface",
        "127.0.0.1",
        "--ttl",
        "0",
        "--cluster",
        c.place().cluster(),
    ]
    .map(String::from)
    .to_vec()
}

/// Runs `cachecast send NET ARGS` to its end (bounded), off the runtime
/// that drives the listeners.
async fn send(c: &LoopbackCluster, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("send")
        .args(net(c))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    tokio::task::spawn_blocking(move || finish(child))
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The streams on which node `i` delivered an invalidation of `key`.
fn delivered(c: &LoopbackCluster, i: usize, key: &str) -> Vec<u64> {
    c.deliveries(i)
        .into_iter()
        .filter_map(|(_, d)| match d {
            Delivery::Event { stream, event, .. } => match event.to_event() {
                Event::Invalidate { keys } if keys.iter().any(|k| k == key) => Some(stream),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Waits (bounded) until node `i` has delivered `key`; its streams.
async fn wait_delivered(c: &LoopbackCluster, i: usize, key: &str) -> Vec<u64> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let got = delivered(c, i, key);
        if !got.is_empty() || Instant::now() > end {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn streams(c: &LoopbackCluster) -> HashSet<u64> {
    (0..c.len()).map(|i| c.node(i).unwrap().stream()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_listeners_confirm_and_send_exits_0_naming_them() {
    let mut c = listeners().await;
    let out = send(
        &c,
        &[
            "--name",
            "pub",
            "--confirm",
            "2s",
            "--json",
            "invalidate",
            "k1",
        ],
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON document: {stdout}");
    let r: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(r["complete"], true, "{r}");
    assert_eq!(
        names(&r["confirmed"]),
        ["cache-a", "cache-b", "cache-c"],
        "{r}"
    );
    for list in ["covered_by_reset", "departed", "pending"] {
        assert_eq!(r[list], serde_json::json!([]), "{list}: {r}");
    }
    assert_eq!(r["seqs"], serde_json::json!({"start": 1, "end": 2}));
    // The report is about the stream the listeners got k1 on, and true:
    // each has it.
    let stream = u64::from_str_radix(r["stream"].as_str().unwrap(), 16).unwrap();
    for i in 0..3 {
        assert_eq!(delivered(&c, i, "k1"), [stream], "{}", c.name(i));
    }

    // Text: the same, for people.
    let out = send(&c, &["--confirm", "invalidate", "k2"]).await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.starts_with("complete: no member pending"),
        "{stdout}"
    );
    let confirmed = stdout.lines().find(|l| l.starts_with("confirmed")).unwrap();
    for n in ["cache-a (", "cache-b (", "cache-c ("] {
        assert!(confirmed.contains(n), "{n} in {confirmed}");
    }
    assert!(stdout.contains("\npending             0  -\n"), "{stdout}");
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_hear_the_sender_is_pending_and_send_exits_1() {
    let mut c = listeners().await;
    // cache-c's receive path is cut for every datagram but the listeners'
    // own: it hears nothing of the sender, not even its Hello (the sender
    // learns of it from its heartbeat alone), while it still sends.
    let known = streams(&c);
    c.faults(2)
        .set(Faults::dropping(move |d| !known.contains(&d.header.stream)));
    let started = Instant::now();
    let out = send(
        &c,
        &["--name", "pub", "--confirm=500ms", "invalidate", "k1"],
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("INCOMPLETE: 1 member(s) pending"),
        "{stdout}"
    );
    let line = |label: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line: {stdout}"))
            .to_owned()
    };
    let pending = line("pending");
    assert!(
        pending.starts_with("pending             1  cache-c ("),
        "{pending}"
    );
    let confirmed = line("confirmed");
    assert!(
        confirmed.contains("cache-a (")
            && confirmed.contains("cache-b (")
            && !confirmed.contains("cache-c"),
        "{confirmed}"
    );
    let err_line = stderr
        .lines()
        .find(|l| l.contains("error:"))
        .unwrap_or_default();
    assert!(
        err_line.contains("not confirmed") && err_line.contains("cache-c"),
        "{stderr}"
    );
    // The others have it; cache-c really did not hear it.
    assert!(!wait_delivered(&c, 0, "k1").await.is_empty());
    assert!(delivered(&c, 2, "k1").is_empty());
    assert!(c.faults(2).lost() > 0);
    // The report came after the pending member's timeout, not before.
    assert!(started.elapsed() >= Duration::from_millis(500));
    c.shutdown_all().await;
}

/// Drops every datagram from outside `known` but `Hello`s, for `burst`
/// from the first one: the sender is known to the listener (it answers
/// its Hello) and then loses everything from it, its events, heartbeats,
/// requests and Goodbye, for the burst.
fn burst_from_the_sender(known: HashSet<u64>, burst: Duration) -> Faults {
    let until: Mutex<Option<Instant>> = Mutex::new(None);
    Faults::dropping(move |d| {
        if known.contains(&d.header.stream) || matches!(d.body, Body::Hello { .. }) {
            return false;
        }
        let mut u = until.lock().unwrap();
        Instant::now() < *u.get_or_insert_with(|| Instant::now() + burst)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_send_stays_until_a_burst_of_loss_is_repaired() {
    let mut c = listeners().await;
    let known = Arc::new(streams(&c));

    // Without the wait (--settle 0s), the sender leaves during the burst:
    // cache-c never gets the event (at best a Reset once the others'
    // reports reveal the stream).
    c.faults(2).set(burst_from_the_sender(
        (*known).clone(),
        Duration::from_millis(400),
    ));
    let out = send(
        &c,
        &["--settle", "0s", "--linger", "50ms", "invalidate", "gone"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!wait_delivered(&c, 0, "gone").await.is_empty());
    let lost_then = c.faults(2).lost();
    assert!(lost_then > 0);

    // With the default wait, it stays until cache-c has repaired.
    c.faults(2).set(burst_from_the_sender(
        (*known).clone(),
        Duration::from_millis(400),
    ));
    let started = Instant::now();
    let out = send(&c, &["--linger", "50ms", "invalidate", "kept"]).await;
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(out.stdout.is_empty(), "a plain send prints nothing");
    assert!(!stderr.contains("WARN"), "nobody was pending: {stderr}");
    assert!(
        c.faults(2).lost() > lost_then,
        "the second burst lost datagrams"
    );
    // Delivered as the event itself (repaired), not a Reset.
    let got = wait_delivered(&c, 2, "kept").await;
    assert_eq!(got.len(), 1, "cache-c got `kept` once");
    // It waited out the burst, and not much more.
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(
        took < Duration::from_secs(2) + Duration::from_secs(1),
        "{took:?}"
    );
    assert!(
        delivered(&c, 2, "gone").is_empty(),
        "without the wait `gone` was lost to cache-c"
    );
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_send_warns_of_members_pending_at_its_bound_and_still_exits_0() {
    let mut c = listeners().await;
    // cache-c hears the sender's Hello (so the sender knows it) and
    // nothing else from it.
    let known = streams(&c);
    c.faults(2).set(Faults::dropping(move |d| {
        !known.contains(&d.header.stream) && !matches!(d.body, Body::Hello { .. })
    }));
    let started = Instant::now();
    let out = send(
        &c,
        &["--settle", "300ms", "--linger", "50ms", "invalidate", "k"],
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warn = stderr
        .lines()
        .find(|l| l.contains("WARN"))
        .unwrap_or_default();
    assert!(
        warn.contains("--settle") && warn.contains("cache-c (") && !warn.contains("cache-a"),
        "{stderr}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    c.shutdown_all().await;
}

#[test]
fn send_help_explains_confirm_settle_and_the_exit_status() {
    let out = finish(
        Command::new(BIN)
            .args(["send", "--help"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let help = text(&out.stdout);
    for word in [
        "--confirm[=<TIMEOUT>]",
        "--settle",
        "--json",
        "covered by reset",
        "departed",
        "pending",
        "Exit status: 0",
        "1.25 s",
    ] {
        assert!(help.contains(word), "send --help lacks {word}: {help}");
    }
    // A timeout of 0 and --json without --confirm are refused.
    for args in [&["--confirm=0s", "clear"][..], &["--json", "clear"]] {
        let out = finish(
            Command::new(BIN)
                .arg("send")
                .args(args)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}
