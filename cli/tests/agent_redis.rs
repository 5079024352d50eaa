//! The agent keeping real Redis servers coherent, end to end: two agents
//! on loopback multicast, each with its own redis-server, plus an SSE
//! client and a webhook receiver of B; and the seed incident at agent
//! level (kill -9, start again, the very next invalidation applied).

use crate::agent;
use crate::process;
use crate::testprom;
use crate::testservers;

use std::time::{Duration, Instant};

use agent::{Agent, Hook, Net};
use testservers::TestServer;

/// One RESP command, inline form (keys without spaces).
fn redis(r: &TestServer, cmd: &str) -> String {
    let a = r
        .request(format!("{cmd}\r\n").as_bytes(), b"\r\n")
        .unwrap_or_else(|e| panic!("redis {cmd}: {e}"));
    String::from_utf8_lossy(&a).trim().to_owned()
}

fn exists(r: &TestServer, key: &str) -> bool {
    redis(r, &format!("EXISTS {key}")) == ":1"
}

fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + process::LIMIT;
    while !cond() {
        assert!(
            Instant::now() < end,
            "{what}: not within {:?}",
            process::LIMIT
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Flushes a Redis has seen (`INFO commandstats`).
fn flushes(r: &TestServer) -> u64 {
    let a = r
        .request(b"INFO commandstats\r\n", b"\r\n\r\n")
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&a);
    text.lines()
        .find_map(|l| l.strip_prefix("cmdstat_flushdb:calls="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn redis_config(r: &TestServer, extra: &str) -> String {
    format!(
        "[[apply.redis]]\nurl = \"{}\"\nkey_prefix = \"app:\"\n{extra}",
        r.url()
    )
}

fn wait_ready(a: &Agent) {
    wait("readyz", || a.get("/readyz").0 == 200);
}

#[test]
fn a_post_on_a_removes_the_key_from_bs_redis_and_reaches_bs_sse_and_webhook() {
    let net = Net::new();
    let (ra, rb) = (TestServer::redis(), TestServer::redis());
    let hook = Hook::start(0);
    let a = Agent::start(&net, "a", &redis_config(&ra, ""));
    let b = Agent::start(
        &net,
        "b",
        &format!(
            "{}[[webhook]]\nurl = \"{}\"\nbackoff = \"10ms\"\n",
            redis_config(&rb, ""),
            hook.url
        ),
    );
    wait_ready(&a);
    wait_ready(&b);
    // Both flushed once at start; now the applications cache.
    assert_eq!((flushes(&ra), flushes(&rb)), (1, 1));
    for r in [&ra, &rb] {
        redis(
            r,
            "MSET app:user:1 x app:user:2 y app:page:1 z other:user:1 w",
        );
    }
    let sse = b.events(None);
    a.invalidate(&["user:1"]);
    wait("user:1 gone from B's Redis", || !exists(&rb, "app:user:1"));
    wait("user:1 gone from A's own Redis", || {
        !exists(&ra, "app:user:1")
    });
    assert!(exists(&rb, "app:user:2") && exists(&rb, "other:user:1"));
    let e = sse.next().unwrap();
    assert_eq!(
        (e.event.as_str(), e.data["keys"][0].as_str()),
        ("invalidate", Some("user:1"))
    );
    let items = hook.wait("user:1 at B's webhook", |items| {
        items.iter().any(|i| i["keys"][0] == "user:1")
    });
    assert_eq!(items.last().unwrap()["seq"], 1);
    // A prefix through B: gone at A.
    let (s, _) = b.post(r#"{"prefix":"page:"}"#);
    assert_eq!(s, 202);
    wait("page:* gone from A's Redis", || !exists(&ra, "app:page:1"));
    assert!(exists(&ra, "app:user:2") && exists(&ra, "other:user:1"));
    // B's /metrics, as served, parses with the Python Prometheus client's
    // OpenMetrics parser and says what was applied and delivered.
    let (_, m) = b.get("/metrics");
    let (samples, _) = testprom::parse(&m);
    let value = |name: &str| {
        samples
            .iter()
            .find(|(k, _)| k.starts_with(name))
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {name}: {samples:?}"))
    };
    assert!(value("cachecast_applier_applied_total{kind=\"redis\"") > 0.0);
    assert!(value("cachecast_webhook_posts_ok_total{") > 0.0);
    assert_eq!(value("cachecast_build_info{"), 1.0);
}

/// The incident that started the project, at agent level: a front-end's
/// agent is killed (-9) and started again; it flushes its Redis once at
/// start (it heard nothing while down) and applies the very next
/// invalidation.
#[test]
fn a_restarted_agent_flushes_once_and_applies_the_very_next_invalidation() {
    let net = Net::new();
    let (ra, rb) = (TestServer::redis(), TestServer::redis());
    let a = Agent::start(&net, "a", &redis_config(&ra, ""));
    let b = Agent::start(&net, "b", &redis_config(&rb, ""));
    wait_ready(&b);
    let mut b = b;
    b.kill();
    // While B was down, the application cached a value that then changed
    // (its invalidation went out while B was not listening)...
    redis(&rb, "SET app:stale old");
    a.invalidate(&["stale"]);
    let b = b.restart();
    // ...B's start flush covers it (flushes counted: the first start, the
    // restart), and the first invalidation after the restart is applied.
    wait_ready(&b);
    assert!(!exists(&rb, "app:stale"));
    wait("B's restart flush", || flushes(&rb) == 2);
    redis(&rb, "SET app:next cached");
    a.invalidate(&["next"]);
    wait("the next invalidation applied at B", || {
        !exists(&rb, "app:next")
    });
    assert_eq!(flushes(&rb), 2, "no other flush: nothing was missed since");
}

/// Redis stopped for 2 s and started again: the applier flushes once it
/// is back (it may have missed something), then applies normally; what
/// was published meanwhile is never silently skipped.
#[test]
fn redis_down_for_2_s_is_flushed_when_back_then_applied_normally() {
    let net = Net::new();
    let mut rb = TestServer::redis();
    let a = Agent::start(&net, "a", "");
    let b = Agent::start(&net, "b", &redis_config(&rb, ""));
    wait_ready(&b);
    redis(&rb, "SET app:kept-on-disk v");
    rb.save();
    rb.stop();
    a.invalidate(&["while-down"]);
    wait("readyz says the applier is down", || {
        b.get("/readyz").0 == 503
    });
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
    }
    rb.restart();
    // The restarted server came back with the saved key: the flush on
    // reconnection removes it.
    wait_ready(&b);
    assert!(!exists(&rb, "app:kept-on-disk"));
    // (The counters are the new server process's.)
    assert_eq!(flushes(&rb), 1);
    redis(&rb, "SET app:after v");
    a.invalidate(&["after"]);
    wait("applied normally after", || !exists(&rb, "app:after"));
    let (_, st) = b.get("/v1/status");
    assert!(st.contains("\"connected\":true"), "{st}");
}
