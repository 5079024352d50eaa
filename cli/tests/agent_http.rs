//! The agent end to end over real HTTP, with real agents on loopback
//! multicast: publishing and its errors, SSE delivery and resume, the
//! token, the stop.

use crate::agent;
use crate::process;

use agent::{client, Agent, Net};
use serde_json::json;

fn keys(e: &agent::SseEvent) -> Vec<String> {
    e.data["keys"]
        .as_array()
        .map(|a| a.iter().map(|k| k.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn a_post_on_one_agent_reaches_the_sse_clients_of_both() {
    let net = Net::new();
    let a = Agent::start(&net, "a", "");
    let b = Agent::start(&net, "b", "");
    let (sa, sb) = (a.events(None), b.events(None));
    let r = a.invalidate(&["user:1", "user:2"]);
    assert_eq!(
        (r["first_seq"].as_u64(), r["last_seq"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(r["stream"], a.ready["stream"]);
    for s in [&sa, &sb] {
        let e = s.next().unwrap();
        assert_eq!(e.event, "invalidate");
        assert_eq!(keys(&e), ["user:1", "user:2"]);
        assert_eq!(e.data["stream"], a.ready["stream"]);
        assert_eq!(e.data["seq"], 1);
        assert_eq!(e.data["node"], "a");
        assert_eq!(e.id.as_deref(), e.data["id"].as_str());
    }
    // A batch, every kind, in order.
    let (status, r) = a.post(
        &json!({"events": [
            {"prefix": "page:"}, {"all": true}, {"topic": "t", "payload": "AP8="}
        ]})
        .to_string(),
    );
    assert_eq!(
        (status, r["first_seq"].as_u64(), r["last_seq"].as_u64()),
        (202, Some(2), Some(4))
    );
    let got = sb.take(3);
    let kinds: Vec<&str> = got.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["prefix", "clear", "custom"]);
    assert_eq!(got[0].data["prefix"], "page:");
    assert_eq!(got[2].data["payload"], "AP8=");
    // More keys than one datagram holds: split into consecutive events,
    // every key delivered in order.
    let many: Vec<String> = (0..300).map(|i| format!("bulk-key-{i:08}")).collect();
    let (status, r) = a.post(&json!({ "keys": many }).to_string());
    let n = r["events"].as_u64().unwrap();
    assert!(status == 202 && n > 1, "{r}");
    assert_eq!(
        r["last_seq"].as_u64().unwrap() - r["first_seq"].as_u64().unwrap() + 1,
        n
    );
    let got: Vec<String> = sb.take(n as usize).iter().flat_map(keys).collect();
    assert_eq!(got, many);
}

/// A client that heard no event at all before its agent restarted still
/// resumes with a cursor (the first, data-less event carries it), and so
/// gets a `reset` for what was published while the agent was down.
#[test]
fn a_client_that_heard_nothing_before_a_restart_still_gets_a_reset() {
    let net = Net::new();
    let a = Agent::start(&net, "a", "");
    let mut b = Agent::start(&net, "b", "");
    let cursor = b.events(None).wait_id();
    b.kill();
    a.invalidate(&["while-b-was-down"]);
    let b = b.restart();
    let s = b.events(Some(&cursor));
    let e = s.next().unwrap();
    assert_eq!(
        (e.event.as_str(), e.data["reason"].as_str()),
        ("reset", Some("agent_restarted"))
    );
}

#[test]
fn sse_resume_gives_exactly_what_was_missed_or_a_reset_first() {
    let net = Net::new();
    let a = Agent::start(&net, "a", "");
    let b = Agent::start(&net, "b", "[sse]\nbuffer = 150\n");
    let first = {
        let s = b.events(None);
        a.invalidate(&["k-first"]);
        let e = s.next().unwrap();
        assert_eq!(keys(&e), ["k-first"]);
        e.id.unwrap()
    };
    // Disconnected: 100 events published meanwhile.
    for i in 0..100 {
        a.invalidate(&[&format!("k{i}")]);
    }
    // Wait until B has them all (its status says where its feed is).
    let end = std::time::Instant::now() + process::LIMIT;
    loop {
        let (_, s) = b.get("/v1/status");
        let s: serde_json::Value = serde_json::from_str(&s).unwrap();
        if s["feed"]["last"].as_u64() >= Some(101) {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "B never got the 100 events: {s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let s = b.events(Some(&first));
    let got = s.take(100);
    let want: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    let got_keys: Vec<String> = got.iter().flat_map(keys).collect();
    assert_eq!(got_keys, want);
    // The same through ?last_event_id= (clients that cannot set headers).
    let s2 = agent::Sse::open(&format!("{}/v1/events?last_event_id={first}", b.url), None);
    assert_eq!(keys(&s2.take(1)[0]), ["k0"]);
    drop((s, s2));
    // 100 more: the first cursor has left B's buffer of 150.
    for i in 100..200 {
        a.invalidate(&[&format!("k{i}")]);
    }
    let live = b.events(None);
    a.invalidate(&["marker"]);
    assert_eq!(keys(&live.next().unwrap()), ["marker"]);
    let s = b.events(Some(&first));
    let e = s.next().unwrap();
    assert_eq!(
        (e.event.as_str(), e.data["reason"].as_str()),
        ("reset", Some("cursor_too_old"))
    );
    // Then everything still held, from the oldest on, ending with the marker.
    let rest = s.take(150);
    assert_eq!(keys(rest.last().unwrap()), ["marker"]);
    // A cursor of the agent's previous life: a reset first.
    let last = rest.last().unwrap().id.clone().unwrap();
    drop((s, live));
    let b = b.kill_and_restart();
    let s = b.events(Some(&last));
    let e = s.next().unwrap();
    assert_eq!(
        (e.event.as_str(), e.data["reason"].as_str()),
        ("reset", Some("agent_restarted"))
    );
    a.invalidate(&["after-restart"]);
    let e = s.next().unwrap();
    assert_eq!(keys(&e), ["after-restart"]);
    // Garbage: a reset too.
    let s = b.events(Some("not-a-cursor"));
    assert_eq!(s.next().unwrap().data["reason"], "unknown_cursor");
}

#[test]
fn bad_requests_get_their_status_and_a_json_error() {
    let net = Net::new();
    let a = Agent::start(&net, "a", "[http]\nmax_body = 2048\nmax_keys = 3\n");
    let post = |ct: &str, body: String| {
        let r = client()
            .post(format!("{}/v1/invalidate", a.url))
            .header("content-type", ct)
            .body(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().unwrap();
        (status, v["error"].as_str().unwrap_or("").to_owned())
    };
    let j = "application/json";
    for (ct, body, status, want) in [
        (j, r#"{"keys":[""]}"#.to_owned(), 400, "keys[0]: empty"),
        (
            j,
            json!({"keys": ["x".repeat(1025)]}).to_string(),
            400,
            "1025 bytes",
        ),
        (
            j,
            r#"{"keys":["a","b","c","d"]}"#.into(),
            400,
            "too many keys",
        ),
        (
            j,
            r#"{"keys":["a"],"ttl":3}"#.into(),
            400,
            "unknown field `ttl`",
        ),
        (j, r#"{"keys":["a"#.into(), 400, "malformed JSON"),
        (
            "text/plain",
            r#"{"keys":["a"]}"#.into(),
            400,
            "content type",
        ),
        (
            j,
            json!({"prefix": "p".repeat(3000)}).to_string(),
            413,
            "max_body",
        ),
    ] {
        let (s, err) = post(ct, body.clone());
        assert_eq!(s, status, "{body:.60}: {err}");
        assert!(err.contains(want), "{body:.60}: {err}");
    }
    let (s, body) = a.get("/nowhere");
    assert_eq!(s, 404, "{body}");
    let r = client()
        .get(format!("{}/v1/invalidate", a.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let v: serde_json::Value = r.json().unwrap();
    assert!(v["error"].as_str().unwrap().contains("method"), "{v}");
    // Nothing of that was published.
    let (_, st) = a.get("/v1/status");
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["counters"]["events_published"], 0, "{st}");
    assert_eq!(a.get("/livez").0, 200);
    assert_eq!(a.get("/readyz").0, 200);
}

#[test]
fn with_a_token_every_request_without_it_is_401() {
    let net = Net::new();
    let a = Agent::start(&net, "a", "[http]\ntoken = \"0123456789abcdef-secret\"\n");
    for path in [
        "/v1/status",
        "/v1/members",
        "/metrics",
        "/livez",
        "/v1/events",
    ] {
        let r = client().get(format!("{}{path}", a.url)).send().unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
        let r = client()
            .get(format!("{}{path}", a.url))
            .bearer_auth("0123456789abcdef-secreT")
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} with a wrong token");
    }
    let (s, _) = a.post(r#"{"keys":["a"]}"#);
    assert_eq!(s, 401);
    let r = client()
        .post(format!("{}/v1/invalidate", a.url))
        .bearer_auth("0123456789abcdef-secret")
        .header("content-type", "application/json")
        .body(r#"{"keys":["a"]}"#)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
}

#[test]
fn sigterm_ends_sse_streams_with_a_final_event_and_exits_0() {
    let net = Net::new();
    let mut a = Agent::start(&net, "a", "");
    let s = a.events(None);
    a.invalidate(&["x"]);
    assert_eq!(keys(&s.next().unwrap()), ["x"]);
    a.proc.signal(libc::SIGTERM);
    let e = s.next().unwrap();
    assert_eq!(e.event, "shutdown", "{e:?}");
    assert!(s.next().is_none(), "the stream ends after it");
    assert!(a.proc.wait_exit().success());
}

#[test]
fn check_config_prints_the_effective_config_or_one_error_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("cc-check-{}.toml", rand::random::<u64>()));
    std::fs::write(
        &dir,
        "[node]\ncluster = \"shop\"\n[http]\ntoken = \"0123456789abcdef\"\n",
    )
    .unwrap();
    let out = process::finish(
        std::process::Command::new(env!("CARGO_BIN_EXE_cachecast"))
            .args(["agent", "--check-config", "--config"])
            .arg(&dir)
            .env("CACHECAST_TTL", "0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("cluster = \"shop\"") && text.contains("ttl = 0"),
        "{text}"
    );
    assert!(
        !text.contains("0123456789abcdef"),
        "the token is never printed: {text}"
    );
    std::fs::write(&dir, "[http]\nlisten = \"0.0.0.0:7468\"\n").unwrap();
    let out = process::finish(
        std::process::Command::new(env!("CARGO_BIN_EXE_cachecast"))
            .args(["agent", "--check-config", "--config"])
            .arg(&dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("http.token: required"), "{err}");
    let _ = std::fs::remove_file(&dir);
}

#[test]
fn a_prefix_filter_passes_only_matching_keys_and_always_clears_and_resets() {
    let net = Net::new();
    let a = Agent::start(&net, "a", "");
    let s = agent::Sse::open(&format!("{}/v1/events?prefix=user:,cart:", a.url), None);
    a.invalidate(&["page:1"]);
    a.invalidate(&["user:1", "page:2", "cart:9"]);
    a.post(r#"{"prefix":"page:"}"#);
    a.post(r#"{"prefix":"us"}"#);
    a.post(r#"{"all":true}"#);
    let got = s.take(3);
    assert_eq!(keys(&got[0]), ["user:1", "cart:9"]);
    assert_eq!(got[0].data["seq"], 2);
    assert_eq!(
        (got[1].event.as_str(), got[1].data["prefix"].as_str()),
        ("prefix", Some("us"))
    );
    assert_eq!(got[2].event, "clear");
}

/// A client that stops reading while more than the buffer's worth is
/// published gets a `reset` and is disconnected, never a silent skip.
#[test]
fn an_sse_client_that_cannot_keep_up_gets_a_reset_and_is_disconnected() {
    use std::io::{Read, Write};
    let net = Net::new();
    let a = Agent::start(&net, "a", "[sse]\nbuffer = 64\n");
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", a.port).parse().unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut tcp: std::net::TcpStream = sock.into();
    tcp.write_all(b"GET /v1/events HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .unwrap();
    // It does not read while 10 MB of events are published.
    let key = "k".repeat(1000);
    let batch = json!({ "events": (0..100).map(|_| json!({"keys": [key]})).collect::<Vec<_>>() })
        .to_string();
    for _ in 0..100 {
        let (s, v) = a.post(&batch);
        assert_eq!(s, 202, "{v}");
    }
    tcp.set_read_timeout(Some(process::LIMIT)).unwrap();
    let mut all = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let end = std::time::Instant::now() + process::LIMIT;
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the stream did not end: {e}"),
        }
        assert!(std::time::Instant::now() < end, "the stream did not end");
        assert!(all.len() < 64 << 20);
    }
    let text = String::from_utf8_lossy(&all);
    let events = text.matches("event: invalidate").count();
    assert!(events < 10_000, "it could not have read them all: {events}");
    assert!(
        text.contains("event: reset") && text.contains("\"reason\":\"client_too_slow\""),
        "no reset before the end: ...{}",
        &text[text.len().saturating_sub(400)..]
    );
}
