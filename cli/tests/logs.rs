//! The `cachecast` binary's logs, on loopback (interface 127.0.0.1, TTL 0):
//! a Reset shows at the default level, without colour codes in a pipe, as
//! text or JSON, with the stream id written as in the JSON output.

use crate::process;
use process::{loopback, Running, LIMIT};

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

use cachecast::wire::{self, Body, Header};

const BIN: &str = env!("CARGO_BIN_EXE_cachecast");

fn flag<'a>(net: &'a [String], name: &str) -> &'a str {
    let i = net.iter().position(|a| a == name).unwrap();
    &net[i + 1]
}

/// A socket that sends to the group on loopback with TTL 0.
fn sender() -> Socket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    s.set_multicast_ttl_v4(0).unwrap();
    s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .unwrap();
    s
}

/// Makes every listener deliver a Reset: a heartbeat of a new stream that
/// no longer holds its first 9 events (`Unavailable`). A stream first heard
/// during a listener's join window is followed from where it is, without
/// a gap, so a new stream is announced until each listener has Reset (or a
/// deadline). Returns each listener's Reset line.
fn make_them_reset(net: &[String], listeners: &mut [&mut Running]) -> Vec<Value> {
    let group: SocketAddr = flag(net, "--group").parse().unwrap();
    let cluster = wire::cluster_hash(flag(net, "--cluster"));
    let s = sender();
    let mut resets: Vec<Option<Value>> = vec![None; listeners.len()];
    let end = Instant::now() + LIMIT;
    while resets.iter().any(Option::is_none) {
        assert!(Instant::now() < end, "no Reset within {LIMIT:?}");
        let header = Header::new(cluster, rand::random::<u64>() | 1);
        let body = Body::Heartbeat {
            next_seq: 10,
            oldest: 10,
            node: "ghost".into(),
        };
        let mut buf = Vec::new();
        wire::encode(&header, &body, &mut buf);
        s.send_to(&buf, &group.into()).unwrap();
        for (l, reset) in listeners.iter_mut().zip(&mut resets) {
            if reset.is_none() {
                *reset =
                    l.wait_out_until("a reset", Instant::now() + Duration::from_millis(50), |v| {
                        v["type"] == "reset"
                    });
            }
        }
    }
    resets.into_iter().flatten().collect()
}

fn listen(net: &[String], extra: &[&str]) -> Running {
    let mut l = Running::spawn(
        Command::new(BIN)
            .arg("listen")
            .args(net)
            .args(extra)
            .env_remove("RUST_LOG")
            .env_remove("CACHECAST_LOG_FORMAT")
            .env_remove("NO_COLOR"),
    );
    l.wait_out("the ready line", |v| v["type"] == "ready");
    l
}

#[test]
fn a_reset_is_logged_at_the_default_level_as_text_or_json_with_the_stream_id_of_the_output() {
    let net = loopback(None);
    let mut text = listen(&net, &[]);
    let mut json = listen(&net, &["--log-format", "json"]);
    let resets = make_them_reset(&net, &mut [&mut text, &mut json]);

    let stream = resets[0]["reason"]["stream"].as_str().unwrap().to_owned();
    assert_eq!(stream.len(), 16, "{}", resets[0]);
    assert!(stream.chars().all(|c| c.is_ascii_hexdigit()), "{stream}");
    assert_eq!(resets[0]["reason"]["kind"], "unavailable");

    let line = text.wait_err("the Reset's log line", |l| l.contains("Reset"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&format!("stream={stream}")), "{line}");

    let stream = resets[1]["reason"]["stream"].as_str().unwrap().to_owned();
    let line = json.wait_err("the Reset's JSON log line", |l| l.contains("Reset"));
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert_eq!(v["level"], "WARN", "{v}");
    assert_eq!(v["kind"], "unavailable", "{v}");
    assert_eq!(v["stream"], stream.as_str(), "{v}");

    for l in [&mut text, &mut json] {
        l.signal(libc::SIGTERM);
        assert_eq!(l.wait_exit().code(), Some(0), "{:?}", l.err_seen);
    }
    // Standard error is a pipe here: no colour codes, anywhere.
    for line in text.err_seen.iter().chain(&json.err_seen) {
        assert!(!line.contains('\x1b'), "colour codes in a pipe: {line:?}");
    }
    for line in &json.err_seen {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{v}");
    }
}

#[test]
fn json_logs_by_environment_name_the_stream_as_the_output_does() {
    let net = loopback(None);
    let mut l = Running::spawn(
        Command::new(BIN)
            .arg("listen")
            .args(&net)
            .env("RUST_LOG", "cachecast=info")
            .env("CACHECAST_LOG_FORMAT", "json"),
    );
    let ready = l.wait_out("the ready line", |v| v["type"] == "ready");
    let line = l.wait_err("the joining log line", |l| l.contains("joining"));
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["stream"], ready["stream"], "{v} vs {ready}");
    l.signal(libc::SIGTERM);
    assert_eq!(l.wait_exit().code(), Some(0), "{:?}", l.err_seen);
}
