//! `cachecast send` → `cachecast listen` end to end, through the built
//! binary, on loopback (interface 127.0.0.1, TTL 0).

use crate::process;
use process::{finish, loopback, start_listen};

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cachecast");

/// Runs a command to completion, with a deadline.
fn run(cmd: &mut Command) -> Output {
    finish(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Starts `listen`, waits for its "ready" line, and returns the child and a
/// channel of its remaining stdout lines.
fn listen(net: &[String], extra: &[&str]) -> (std::process::Child, mpsc::Receiver<Value>) {
    start_listen(
        Command::new(BIN)
            .arg("listen")
            .args(net)
            .args(extra)
            .stderr(Stdio::inherit()),
    )
}

fn send(net: &[String], what: &[&str], stdin: Option<&str>) -> std::process::Output {
    process::send(net, what, stdin)
}

fn next(rx: &mpsc::Receiver<Value>) -> Value {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("a line from listen in time")
}

#[test]
fn send_reaches_listen_for_every_kind_of_event() {
    let net = loopback(None);
    let (child, rx) = listen(&net, &["--count", "5", "--timeout", "30s", "--stats"]);

    let out = send(
        &net,
        &["--name", "backend", "invalidate", "user:1", "user:2"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = next(&rx);
    assert_eq!(v["type"], "event");
    assert_eq!(v["event"], "invalidate");
    assert_eq!(v["keys"], serde_json::json!(["user:1", "user:2"]));
    assert_eq!(v["seq"], 1);
    assert_eq!(v["node"], "backend");
    assert_eq!(v["stream"].as_str().unwrap().len(), 16);

    assert!(send(&net, &["prefix", "cart:"], None).status.success());
    let v = next(&rx);
    assert_eq!(
        (v["event"].as_str(), v["prefix"].as_str()),
        (Some("prefix"), Some("cart:"))
    );

    assert!(send(&net, &["clear"], None).status.success());
    assert_eq!(next(&rx)["event"], "clear");

    assert!(send(&net, &["custom", "reload", "v2"], None)
        .status
        .success());
    let v = next(&rx);
    assert_eq!(
        (v["topic"].as_str(), v["payload"].as_str()),
        (Some("reload"), Some("v2"))
    );

    let keys: String = (0..300).map(|i| format!("key:{i}\n")).collect();
    assert!(send(&net, &["invalidate", "--stdin"], Some(&keys))
        .status
        .success());
    // 300 keys batched into few events of one stream; --count 5 stops at
    // the first, so only check that the keys arrive in order.
    let v = next(&rx);
    let got = v["keys"].as_array().unwrap();
    assert!(got.len() > 10, "keys batched: {}", got.len());
    assert_eq!(got[0], "key:0");

    let stats = next(&rx);
    assert_eq!(stats["type"], "stats");
    assert!(stats["events_delivered"].as_u64().unwrap() >= 5);
    assert_eq!(stats["resets"], serde_json::json!({}));
    assert!(finish(child).status.success());
}

#[test]
fn bad_input_exits_non_zero_with_a_one_line_error() {
    let net = loopback(None);
    let group = net[1].clone();
    let cases: [(Vec<String>, &[&str], &str); 3] = [
        (net.clone(), &["invalidate"], "required"),
        (
            vec![],
            &["--group", "10.1.2.3:4000", "clear"],
            "not a multicast group",
        ),
        (
            vec!["--group".into(), group],
            &["--interface", "nonexistent0", "clear"],
            "nonexistent0",
        ),
    ];
    for (net, args, needle) in cases {
        let out = run(Command::new(BIN).arg("send").args(&net).args(args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = send(&net, &["invalidate", "--stdin"], Some("\n\n"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no keys"), "{err}");
}

/// Asserts that `out` is a usage error: exit status 2, one error line that
/// contains `needle`, and nothing published.
fn assert_usage_error(what: &str, out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "{what}: one error line: {err}");
    assert!(errors[0].contains(needle), "{what}: {needle:?} in {err}");
}

#[test]
fn dangerous_input_is_refused_before_anything_is_sent() {
    let net = loopback(None);
    // A listener on the group: none of these may reach it.
    let (child, rx) = listen(&net, &["--timeout", "30s"]);
    let long = "x".repeat(2000);
    let cases: [(&[&str], &str); 5] = [
        (&["prefix", ""], "use `cachecast send clear`"),
        (&["invalidate", "a", ""], "an empty key"),
        (&["invalidate", &long], "at most"),
        (&["--interface", "", "clear"], "an empty interface"),
        (&["--interface", " ", "clear"], "an empty interface"),
    ];
    // The loopback flags without their --interface.
    let at = net.iter().position(|a| a == "--interface").unwrap();
    let mut no_interface = net.clone();
    no_interface.drain(at..at + 2);
    for (args, needle) in cases {
        let flags = if args.contains(&"--interface") {
            &no_interface
        } else {
            &net
        };
        let out = send(flags, args, None);
        assert_usage_error(&format!("send {args:?}"), &out, needle);
    }
    let out = run(Command::new(BIN)
        .args(["send"])
        .args(&no_interface)
        .arg("clear")
        .env("CACHECAST_INTERFACE", ""));
    assert_usage_error("CACHECAST_INTERFACE=''", &out, "an empty interface");

    // Standard input: empty lines are skipped, a key too long is refused
    // with its line, no key at all is refused.
    let out = send(
        &net,
        &["invalidate", "--stdin"],
        Some(&format!("a\n\n{long}\n")),
    );
    assert_usage_error("a long key on stdin", &out, "line 3");
    let out = send(&net, &["invalidate", "--stdin"], Some("\n\r\n"));
    assert_usage_error("only empty lines on stdin", &out, "no keys");

    // And what is fine still goes through: the first delivery is this one.
    let out = send(&net, &["invalidate", "--stdin"], Some("\nok:1\n\nok:2\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = next(&rx);
    assert_eq!(v["keys"], serde_json::json!(["ok:1", "ok:2"]), "{v}");
    drop(rx);
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn listen_refuses_a_count_or_timeout_that_would_stop_it_at_once() {
    let net = loopback(None);
    for (args, needle) in [
        (["--count", "0"], "at least 1"),
        (["--timeout", "0s"], "above 0"),
    ] {
        let out = run(Command::new(BIN).arg("listen").args(&net).args(args));
        assert_usage_error(&format!("listen {args:?}"), &out, needle);
        assert!(out.stdout.is_empty(), "listen {args:?} joined");
    }
}

#[test]
fn help_explains_the_commands() {
    let out = run(Command::new(BIN).arg("--help"));
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["send", "listen", "Reset"] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
    let out = run(Command::new(BIN).args(["send", "--help"]));
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--group",
        "--interface",
        "--cluster",
        "--ttl",
        "--log-format",
        "invalidate",
        "prefix",
        "clear",
        "custom",
        "empty prefix",
        "SIGTERM",
    ] {
        assert!(help.contains(word), "send --help lacks {word}: {help}");
    }
    let out = run(Command::new(BIN).args(["listen", "--help"]));
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--exit-on-stdin-close",
        "--exit-with-parent",
        "SIGTERM",
        "Goodbye",
        "at least 1",
        "16 hex",
    ] {
        assert!(help.contains(word), "listen --help lacks {word}: {help}");
    }
    let out = run(Command::new(BIN).args(["send", "invalidate", "--help"]));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Empty lines"), "{help}");
}

#[test]
fn the_demo_ends_with_a_no_silent_loss_verdict() {
    let out = run(Command::new(BIN).args(["demo", "--seed", "1"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for scene in [
        "recycles",
        "delivered product:42",
        "repaired",
        "heartbeat revealed the loss",
        "crashes",
        "Lagged",
    ] {
        assert!(
            text.contains(scene),
            "the timeline lacks {scene:?}:\n{text}"
        );
    }
    let verdict = text.lines().last().unwrap_or_default();
    assert!(
        verdict.starts_with("verdict:") && verdict.ends_with("no silent loss"),
        "{verdict}"
    );
}

#[test]
fn the_demo_rejects_bad_options() {
    let out = run(Command::new(BIN).args(["demo", "--loss", "150"]));
    assert_usage_error("demo --loss 150", &out, "--loss");
}

/// Without multicast: `send` and `listen` over the unicast transport, each
/// on its own port of 127.0.0.1 and naming the other as its peer (the
/// sender by `localhost`, resolved); a configuration that cannot work is a
/// usage error naming the field.
#[test]
fn send_reaches_listen_over_unicast() {
    let ports: Vec<u16> = {
        let held: Vec<std::net::UdpSocket> = (0..2)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        held.iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect()
    };
    let mut base = loopback(None);
    base.extend(["--transport".into(), "unicast".into()]);
    let with = |me: u16, peer: String| {
        let mut net = base.clone();
        net.extend([format!("--listen=127.0.0.1:{me}"), format!("--peer={peer}")]);
        net
    };
    let listener = with(ports[0], format!("127.0.0.1:{}", ports[1]));
    let sender = with(ports[1], format!("localhost:{}", ports[0]));
    let (child, rx) = listen(&listener, &["--count", "1", "--timeout", "30s"]);
    let out = send(&sender, &["invalidate", "over:unicast"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = next(&rx);
    assert_eq!(v["keys"], serde_json::json!(["over:unicast"]));
    assert!(finish(child).status.success());

    let mut no_peer = base.clone();
    no_peer.push(format!("--listen=127.0.0.1:{}", ports[1]));
    let out = send(&no_peer, &["invalidate", "k"], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("peers"),
        "{out:?}"
    );
    let out = send(&base, &["--peer", "10.0.0.1", "invalidate", "k"], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected IP:PORT"),
        "{out:?}"
    );
}
