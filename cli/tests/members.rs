//! `cachecast members`, through the built binary, against nodes in this
//! process (the test kit's loopback cluster: 127.0.0.1, TTL 0, a fresh
//! group and cluster).

use crate::process;
use process::{finish, Running};

use std::process::{Command, Output, Stdio};

use cachecast::testkit::LoopbackCluster;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cachecast");

fn members_cmd(c: &LoopbackCluster, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("members")
        .args(["--group", &c.group().to_string()])
        .args(["--interface", "127.0.0.1", "--ttl", "0"])
        .args(["--cluster", c.place().cluster()])
        .args(args);
    cmd
}

/// Runs `cachecast members NET ARGS` to its end (bounded), off the runtime
/// that drives the cluster.
async fn members(c: &LoopbackCluster, args: &[&str]) -> Output {
    let child = members_cmd(c, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::task::spawn_blocking(move || finish(child))
        .await
        .unwrap()
}

fn hex(s: u64) -> String {
    format!("{s:016x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_json_lists_every_node_with_its_positions() {
    let mut c = LoopbackCluster::start(3).await.unwrap();
    for i in 0..3 {
        c.publish(0, [format!("k{i}")]).await.unwrap();
    }
    assert!(c.settle(std::time::Duration::from_secs(10)).await);
    let streams: Vec<String> = (0..3).map(|i| hex(c.node(i).unwrap().stream())).collect();

    // The default --wait: it must hear every member and its reports.
    let out = members(&c, &["--json", "--name", "observer"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "one document: {stdout}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["node"], "observer");
    let list = v["members"].as_array().unwrap();
    let me = &list[0];
    assert_eq!(
        (&me["name"], &me["this_node"], &me["receive_only"]),
        (
            &Value::from("observer"),
            &Value::from(true),
            &Value::from(true)
        ),
        "this node first: {me}"
    );
    for (i, s) in streams.iter().enumerate() {
        let m = list
            .iter()
            .find(|m| m["stream"] == *s)
            .unwrap_or_else(|| panic!("n{i} ({s}) missing: {v}"));
        assert_eq!(m["name"], format!("n{i}"), "{m}");
        assert_eq!(m["state"], "live", "{m}");
        assert_eq!(m["this_node"], false, "{m}");
        assert_eq!(m["receive_only"], false, "{m}");
        assert!(m["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{m}");
        assert!(m["last_heard"].as_f64().unwrap() < 3000.0, "{m}");
    }
    // n1 and n2 reported n0's stream: all three events delivered (seqs
    // 1..=3, so delivered up to 4), no lag.
    for s in &streams[1..] {
        let m = list.iter().find(|m| m["stream"] == *s).unwrap();
        let p = m["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["stream"] == streams[0])
            .unwrap_or_else(|| panic!("no position of n0's stream: {m}"));
        assert_eq!(
            (&p["delivered"], &p["lag"]),
            (&Value::from(4), &Value::from(0)),
            "{p}"
        );
        assert_eq!(p["node"], "n0", "{p}");
    }
    // This node follows n0's stream too, with a staleness bound.
    let own = v["staleness"]["streams"].as_array().unwrap();
    assert!(own.iter().any(|s| s["stream"] == streams[0]), "{v}");
    assert_eq!(v["staleness"]["isolated"], false);

    // The table: one row per member, this command's node left out.
    let out = members(&c, &["--name", "observer"]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("3 member(s): 3 live, 0 left, 0 dead"),
        "{table}"
    );
    assert!(lines[1].starts_with("NAME"), "{table}");
    for (i, s) in streams.iter().enumerate() {
        let row = lines
            .iter()
            .find(|l| l.starts_with(&format!("n{i} ")))
            .unwrap_or_else(|| panic!("no row for n{i}: {table}"));
        assert!(
            row.contains(s.as_str()) && row.contains(" live ") && row.ends_with("publisher"),
            "{row}"
        );
    }
    assert!(!table.contains("observer "), "{table}");
    assert!(
        lines.last().unwrap().starts_with("staleness here: worst "),
        "{table}"
    );
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_watch_reprints_until_its_count_or_a_signal_and_exits_0() {
    let mut c = LoopbackCluster::start(2).await.unwrap();
    let out = members(
        &c,
        &[
            "--json", "--wait", "200ms", "--watch", "200ms", "--count", "3",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 3, "--count 3");
    for d in &docs {
        let live = d["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "live" && m["this_node"] == false)
            .count();
        assert_eq!(live, 2, "{d}");
    }

    // Until SIGTERM: a clean stop, exit 0.
    let mut cmd = members_cmd(&c, &["--wait", "200ms", "--watch=200ms"]);
    let (status, err) = tokio::task::spawn_blocking(move || {
        let mut r = Running::spawn(&mut cmd);
        r.wait_text_out("a first table", |l| l.starts_with("NAME"));
        r.wait_text_out("a second table", |l| l.starts_with("NAME"));
        r.signal(libc::SIGTERM);
        (r.wait_exit(), r.err_seen.clone())
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}: {err:?}");
    c.shutdown_all().await;
}

#[test]
fn members_help_explains_the_columns_and_states() {
    let out = finish(
        Command::new(BIN)
            .args(["members", "--help"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--watch[=<INTERVAL>]",
        "--json",
        "--wait",
        "live: heard within the lease (3 s)",
        "left: said Goodbye",
        "dead:",
        "delivered",
        "lag",
        "staleness",
        "receive-only",
        "SIGTERM",
    ] {
        assert!(help.contains(word), "members --help lacks {word}: {help}");
    }
}
