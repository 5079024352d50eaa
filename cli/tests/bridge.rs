//! `cachecast bridge` between two sites through a real `nats-server -js`
//! (started by each test on free loopback ports, stopped by PID): two
//! clusters of one name on different groups (interface 127.0.0.1, TTL 0)
//! are the sites. A key published in one reaches the other's listeners;
//! a bridge killed and restarted loses nothing and repeats nothing; one
//! away past the stream's retention makes its site clear exactly once; a
//! second bridge takes over from a killed one, losing nothing, and nothing
//! a bridge injects comes back; NATS down and back loses nothing.

use crate::process;
use process::{finish, loopback, start_listen, Running, LIMIT};

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cachecast");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `nats-server -js` of this test, stopped (by PID) and its store
/// removed when dropped.
struct Nats {
    child: Child,
    port: u16,
    monitor: u16,
    dir: PathBuf,
}

impl Nats {
    fn start() -> Nats {
        let dir = std::env::temp_dir().join(format!("cachecast-nats-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let (port, monitor) = (free_port(), free_port());
        let mut nats = Nats {
            child: Self::spawn(port, monitor, &dir),
            port,
            monitor,
            dir,
        };
        nats.await_healthy();
        nats
    }

    fn spawn(port: u16, monitor: u16, dir: &std::path::Path) -> Child {
        Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor.to_string(), "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (installed by .ci/run: apt-get install nats-server)")
    }

    fn await_healthy(&mut self) {
        let end = Instant::now() + LIMIT;
        while self.get("healthz?js-enabled-only=true").is_none() {
            assert!(
                Instant::now() < end,
                "nats-server not healthy within {LIMIT:?}"
            );
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "nats-server exited at start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (its store stays).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same ports with the same store.
    fn start_again(&mut self) {
        self.child = Self::spawn(self.port, self.monitor, &self.dir);
        self.await_healthy();
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn get(&self, path: &str) -> Option<Value> {
        let r = reqwest::blocking::get(format!("http://127.0.0.1:{}/{path}", self.monitor)).ok()?;
        r.status().is_success().then(|| r.json().ok())?
    }

    /// The JetStream stream's state (`messages`, `first_seq`, `last_seq`).
    fn stream_state(&self, name: &str) -> Option<Value> {
        let jsz = self.get("jsz?accounts=true&streams=true")?;
        let accounts = jsz["account_details"].as_array()?;
        accounts
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
            .find(|s| s["name"] == name)
            .map(|s| s["state"].clone())
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A site: its network flags (its own group, the shared cluster).
fn site_net(cluster: &str) -> Vec<String> {
    let mut net = loopback(None);
    let i = net.iter().position(|a| a == "--cluster").unwrap();
    net[i + 1] = cluster.to_string();
    net
}

fn bridge(nats: &Nats, net: &[String], site: &str, extra: &[&str]) -> Running {
    Running::spawn(
        Command::new(BIN)
            .arg("bridge")
            .args(net)
            .args(["--nats", &nats.url(), "--site", site, "--lease", "1s"])
            .args(extra)
            .env("RUST_LOG", "cachecast=info")
            .env("CACHECAST_LOG_FORMAT", "json"),
    )
}

fn active(b: &mut Running) {
    b.wait_err("the bridge active", |l| {
        l.contains("active: this bridge holds")
    });
}

/// A listener, killed when dropped (a failed test leaves none behind).
struct Listener(Child);

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn listen(net: &[String]) -> (Listener, mpsc::Receiver<Value>) {
    let (child, rx) = start_listen(
        Command::new(BIN)
            .arg("listen")
            .args(net)
            .stderr(Stdio::null()),
    );
    (Listener(child), rx)
}

fn send(net: &[String], keys: &[String]) {
    let out = process::send(net, &["invalidate", "--stdin"], Some(&keys.join("\n")));
    assert!(out.status.success(), "send: {out:?}");
}

/// Stops bridges with SIGTERM: each exits 0.
fn stop_all<const N: usize>(bridges: [&mut Running; N]) {
    for b in bridges {
        b.signal(libc::SIGTERM);
        assert!(b.wait_exit().success(), "{:?}", b.err_seen);
    }
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}:{i}")).collect()
}

/// What a listener delivered: how often each key, and the ClearAlls and
/// Resets.
#[derive(Default, Debug)]
struct Seen {
    keys: HashMap<String, u32>,
    clears: u32,
    resets: u32,
    /// The kinds of the Resets.
    reset_kinds: Vec<String>,
}

impl Seen {
    fn take(&mut self, v: &Value) {
        match (v["type"].as_str(), v["event"].as_str()) {
            (Some("event"), Some("invalidate")) => {
                for k in v["keys"].as_array().unwrap() {
                    *self
                        .keys
                        .entry(k.as_str().unwrap().to_string())
                        .or_default() += 1;
                }
            }
            (Some("event"), Some("clear")) => self.clears += 1,
            (Some("reset"), _) => {
                self.resets += 1;
                self.reset_kinds
                    .push(v["reason"]["kind"].as_str().unwrap_or("?").into());
            }
            _ => panic!("unexpected delivery {v}"),
        }
    }

    /// Reads until `done` holds, within the deadline.
    fn until(&mut self, rx: &mpsc::Receiver<Value>, what: &str, done: impl Fn(&Seen) -> bool) {
        let end = Instant::now() + LIMIT;
        while !done(self) {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(v) => self.take(&v),
                Err(_) => panic!("no {what} within {LIMIT:?}: {self:?}"),
            }
        }
    }

    fn has_all(&self, keys: &[String]) -> bool {
        keys.iter().all(|k| self.keys.contains_key(k))
    }

    /// Nothing was delivered twice.
    fn assert_once(&self) {
        let twice: Vec<_> = self.keys.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    }
}

/// A marker published after everything else: once it arrives, whatever
/// came before it on that path has arrived too.
fn settle(net: &[String], rx: &mpsc::Receiver<Value>, seen: &mut Seen, marker: &str) {
    send(net, &[marker.to_string()]);
    seen.until(rx, marker, |s| s.keys.contains_key(marker));
}

/// Two sites of one cluster (each its own group), a listener in each.
struct Sites {
    cluster: String,
    a: Vec<String>,
    b: Vec<String>,
    la: Listener,
    rxa: mpsc::Receiver<Value>,
    lb: Listener,
    rxb: mpsc::Receiver<Value>,
}

fn two_sites() -> Sites {
    let cluster = format!("t{}", rand::random::<u32>());
    let (a, b) = (site_net(&cluster), site_net(&cluster));
    let (la, rxa) = listen(&a);
    let (lb, rxb) = listen(&b);
    Sites {
        cluster,
        a,
        b,
        la,
        rxa,
        lb,
        rxb,
    }
}

#[test]
fn two_sites_restart_and_retention() {
    let nats = Nats::start();
    let Sites {
        cluster,
        a,
        b,
        la,
        rxa,
        lb,
        rxb,
    } = two_sites();
    let (mut sa, mut sb) = (Seen::default(), Seen::default());
    let mut ba = bridge(&nats, &a, "east", &["--retention", "3s"]);
    active(&mut ba);
    let mut bb = bridge(&nats, &b, "west", &["--retention", "3s"]);
    active(&mut bb);

    // A key published in site A reaches site B's listeners, and B's in A.
    let first = keys("first", 50);
    send(&a, &first);
    sb.until(&rxb, "site A's keys in B", |s| s.has_all(&first));
    send(&b, &["from-west".to_string()]);
    sa.until(&rxa, "site B's key in A", |s| {
        s.keys.contains_key("from-west")
    });

    // Site B's bridge killed (no clean stop): what A publishes meanwhile
    // waits in JetStream; the restarted bridge takes over the stale lease
    // and delivers it, nothing twice.
    bb.signal(libc::SIGKILL);
    bb.wait_exit();
    let during = keys("during", 50);
    send(&a, &during);
    let mut bb = bridge(&nats, &b, "west", &[]);
    active(&mut bb);
    let after = keys("after", 50);
    send(&a, &after);
    sb.until(&rxb, "the keys of the outage in B", |s| {
        s.has_all(&during) && s.has_all(&after)
    });
    settle(&a, &rxb, &mut sb, "marker:1");
    assert_eq!(sb.clears, 0, "site B cleared: {sb:?}");
    // B's LAN had nobody publishing its events while its bridge was down:
    // site A is told (one gap record, one ClearAll there).
    sa.until(&rxa, "the ClearAll of B's gap in A", |s| s.clears >= 1);
    // The killed bridge's injecting node said no Goodbye: B's nodes Reset
    // when its stream times out (10 s), as for any publisher killed.
    sb.until(&rxb, "B's Reset for the killed bridge's stream", |s| {
        s.resets >= 1
    });
    assert_eq!(sb.reset_kinds, ["stream_timed_out"], "{sb:?}");

    // Stopped past the retention: A's events of the meantime are gone from
    // JetStream, so site B clears, exactly once, and goes on.
    bb.signal(libc::SIGTERM);
    assert!(bb.wait_exit().success(), "{:?}", bb.err_seen);
    let lost = keys("lost", 20);
    send(&a, &lost);
    let stream = format!("CACHECAST_{cluster}");
    let end = Instant::now() + LIMIT;
    loop {
        let state = nats.stream_state(&stream).expect("the stream's state");
        if state["messages"] == 0 && state["last_seq"].as_u64() > Some(0) {
            break;
        }
        assert!(Instant::now() < end, "the stream never expired: {state}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut bb = bridge(&nats, &b, "west", &[]);
    active(&mut bb);
    sb.until(&rxb, "the ClearAll in B", |s| s.clears >= 1);
    let later = keys("later", 10);
    send(&a, &later);
    sb.until(&rxb, "later keys in B", |s| s.has_all(&later));
    settle(&a, &rxb, &mut sb, "marker:2");
    assert_eq!(sb.clears, 1, "exactly one ClearAll in B: {sb:?}");
    assert_eq!(sb.resets, 1, "{sb:?}");
    assert!(lost.iter().all(|k| !sb.keys.contains_key(k)), "{sb:?}");
    sb.assert_once();

    stop_all([&mut ba, &mut bb]);
    drop((la, lb));
}

#[test]
fn a_standby_takes_over_and_nothing_comes_back() {
    let nats = Nats::start();
    let Sites {
        a,
        b,
        la,
        rxa,
        lb,
        rxb,
        ..
    } = two_sites();
    let (mut sa, mut sb) = (Seen::default(), Seen::default());
    let mut a1 = bridge(&nats, &a, "north", &[]);
    active(&mut a1);
    let mut a2 = bridge(&nats, &a, "north", &[]);
    let mut bb = bridge(&nats, &b, "south", &[]);
    active(&mut bb);

    // B's event is injected into A by a1; a2 hears it too, from a1's stream.
    send(&b, &["from-south".to_string()]);
    sa.until(&rxa, "B's key in A", |s| s.keys.contains_key("from-south"));
    let before = keys("before", 50);
    send(&a, &before);
    sb.until(&rxb, "A's keys in B", |s| s.has_all(&before));

    // a1 dies; what A publishes before a2 takes over is published by a2
    // from what it kept, and nothing twice.
    a1.signal(libc::SIGKILL);
    a1.wait_exit();
    let gap = keys("gap", 50);
    send(&a, &gap);
    active(&mut a2);
    sb.until(&rxb, "the keys of the failover in B", |s| s.has_all(&gap));
    send(&b, &["after-failover".to_string()]);
    sa.until(&rxa, "B's key in A after the failover", |s| {
        s.keys.contains_key("after-failover")
    });
    // a1's injecting node died without Goodbye: site A's nodes Reset for
    // it when its stream times out (10 s), as for any publisher killed; a2
    // tells the other site nothing of it.
    sa.until(&rxa, "A's Reset for the killed bridge's stream", |s| {
        s.resets >= 1
    });
    settle(&a, &rxb, &mut sb, "marker:a");
    settle(&b, &rxa, &mut sa, "marker:b");
    // No gap: a2 heard everything a1 may not have published.
    assert_eq!((sb.clears, sb.resets), (0, 0), "site B cleared: {sb:?}");
    assert_eq!(
        (sa.clears, sa.reset_kinds.as_slice()),
        (0, &["stream_timed_out".to_string()][..]),
        "site A: {sa:?}"
    );
    // B's key, injected into A by a1, was not published back by a2: B got
    // it once (from its own sender).
    assert_eq!(sb.keys.get("from-south"), Some(&1), "{sb:?}");
    sb.assert_once();
    sa.assert_once();

    stop_all([&mut a2, &mut bb]);
    drop((la, lb));
}

#[test]
fn bad_bridge_options_are_usage_errors() {
    for (args, needle) in [
        (&["--site", "a.b"][..], "--site"),
        (&["--site", "a", "--lease", "10ms"][..], "--lease"),
        (&["--site", "a", "--retention", "0s"][..], "--retention"),
        (&["--site", "a", "--cluster", "x.y"][..], "--cluster"),
        (
            &["--site", "a", "--retention", "5s", "--lease", "2s"][..],
            "--retention",
        ),
    ] {
        let out = finish(
            Command::new(BIN)
                .args(["bridge", "--nats", "nats://127.0.0.1:1"])
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // No NATS there: a clear failure, status 1.
    let out = finish(
        Command::new(BIN)
            .args([
                "bridge",
                "--nats",
                &format!("nats://127.0.0.1:{}", free_port()),
            ])
            .args(["--site", "a"])
            .args(loopback(None))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot connect to NATS"), "{err}");
}

/// The agent's `[bridge]`: an agent in site A runs a bridge beside its
/// node; what an application publishes through it reaches site B, and
/// what site B publishes reaches the agent's Server-Sent Events.
#[test]
fn the_agents_bridge_section_joins_it_to_another_site() {
    let nats = Nats::start();
    let net = crate::agent::Net::new();
    let cluster = net
        .env
        .iter()
        .find(|(k, _)| k == "CACHECAST_CLUSTER")
        .unwrap()
        .1
        .clone();
    let b = site_net(&cluster);
    let (lb, rxb) = listen(&b);
    let mut sb = Seen::default();
    let mut a = crate::agent::Agent::start(
        &net,
        "a",
        &format!(
            "[bridge]\nnats = \"{}\"\nsite = \"east\"\nlease = \"1s\"\n",
            nats.url()
        ),
    );
    a.proc.wait_err("the agent's bridge active", |l| {
        l.contains("active: this bridge holds")
    });
    let mut bb = bridge(&nats, &b, "west", &[]);
    active(&mut bb);
    let sse = a.events(None);
    let keys: Vec<&str> = vec!["agent:1", "agent:2", "agent:3"];
    a.invalidate(&keys);
    sb.until(&rxb, "the agent's keys in B", |s| {
        keys.iter().all(|k| s.keys.contains_key(*k))
    });
    send(&b, &["from-west".to_string()]);
    let end = Instant::now() + LIMIT;
    loop {
        let e = sse.next().expect("an SSE event from the agent");
        if e.data["keys"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "from-west"))
        {
            break;
        }
        assert!(Instant::now() < end, "site B's key never reached the agent");
    }
    assert_eq!((sb.clears, sb.resets), (0, 0), "{sb:?}");
    sb.assert_once();
    // Its metrics, read by a real Prometheus parser: active, A's event (its
    // three keys) published and acknowledged, B's injected, nothing
    // cleared.
    let end = Instant::now() + LIMIT;
    loop {
        let (status, text) = a.get("/metrics");
        assert_eq!(status, 200, "{text}");
        let m = crate::testprom::parse(&text).0;
        let v = |k: &str| m.get(k).copied().unwrap_or(-1.0);
        if v("cachecast_bridge_published_total{}") >= 1.0 {
            assert_eq!(v("cachecast_bridge_active{}"), 1.0, "{m:?}");
            assert_eq!(v("cachecast_bridge_activations_total{}"), 1.0, "{m:?}");
            assert!(v("cachecast_bridge_injected_total{}") >= 1.0, "{m:?}");
            assert_eq!(v("cachecast_bridge_clears_total{}"), 0.0, "{m:?}");
            assert_eq!(v("cachecast_bridge_gaps_total{}"), 0.0, "{m:?}");
            break;
        }
        assert!(
            Instant::now() < end,
            "bridge metrics never showed the keys: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    bb.signal(libc::SIGTERM);
    assert!(bb.wait_exit().success(), "{:?}", bb.err_seen);
    drop(lb);
}

/// NATS stopped and started again, its store kept: the bridges stand by
/// while they cannot renew, then take over again; what site A published
/// meanwhile reaches site B, or B clears after it: never a silent loss.
#[test]
fn nats_down_and_back_loses_nothing_silently() {
    let mut nats = Nats::start();
    let Sites {
        a, b, la, lb, rxb, ..
    } = two_sites();
    let mut sb = Seen::default();
    let mut ba = bridge(&nats, &a, "up", &[]);
    active(&mut ba);
    let mut bb = bridge(&nats, &b, "down", &[]);
    active(&mut bb);
    let before = keys("before", 20);
    send(&a, &before);
    sb.until(&rxb, "A's keys in B", |s| s.has_all(&before));

    nats.kill();
    for br in [&mut ba, &mut bb] {
        br.wait_err("the bridge standing by", |l| l.contains("standing by"));
    }
    let outage = keys("outage", 20);
    send(&a, &outage);
    nats.start_again();
    for br in [&mut ba, &mut bb] {
        active(br);
    }
    let after = keys("after", 20);
    send(&a, &after);
    sb.until(&rxb, "the keys after the outage in B", |s| {
        s.has_all(&after)
    });
    settle(&a, &rxb, &mut sb, "marker:n");
    // A's bridge heard the keys of the outage as a standby and published
    // them when it took over again; having seen no holder renew since, it
    // could not know it missed nothing, so it also sent a gap record: B
    // cleared (conservatively), and lost nothing.
    assert!(sb.has_all(&outage), "{sb:?}");
    assert!(sb.clears >= 1, "{sb:?}");
    assert_eq!(sb.resets, 0, "{sb:?}");
    stop_all([&mut ba, &mut bb]);
    drop((la, lb));
}
