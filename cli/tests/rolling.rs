//! A rolling restart of five `cachecast listen` processes, each stopped
//! once by SIGTERM (how systemd, Docker and Kubernetes stop things) and
//! once by SIGKILL, while a publisher keeps publishing: nobody Resets (a
//! listener is receive-only, so its death, even unannounced, costs the
//! others nothing), and every listener delivers every event published while
//! it ran (no silent loss: the checker's rule, which with no Reset allowed
//! needs no excuse). On loopback: interface 127.0.0.1, TTL 0.

use crate::process;
use process::{loopback, start_listen};

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cachecast::net::socket::InterfaceSpec;
use cachecast::{Delivery, Node, NodeConfig};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cachecast");
const LISTENERS: usize = 5;
const PER_PHASE: usize = 20;
/// The publisher's stream timeout (the least that validates: more than
/// twice the listeners' 1 s heartbeat interval): a listener it followed
/// would cost it a Reset this long after dying unannounced.
const STREAM_TIMEOUT: Duration = Duration::from_millis(2500);

/// One life of a listener process: what it printed so far.
struct Life {
    child: Child,
    lines: mpsc::Receiver<Value>,
    keys: HashSet<String>,
    resets: Vec<Value>,
    /// Its last counters (`--stats`), once it stopped cleanly.
    stats: Option<Value>,
}

impl Life {
    fn start(net: &[String], name: &str) -> Life {
        let (child, lines) = start_listen(
            Command::new(BIN)
                .arg("listen")
                .args(net)
                .args(["--name", name, "--stats"])
                .stdin(Stdio::null())
                .stderr(Stdio::null()),
        );
        Life {
            child,
            lines,
            keys: HashSet::new(),
            resets: Vec::new(),
            stats: None,
        }
    }

    /// Takes in what it printed, waiting up to `limit` for the next line.
    fn read(&mut self, limit: Duration) -> bool {
        let Ok(v) = self.lines.recv_timeout(limit) else {
            return false;
        };
        match v["type"].as_str() {
            Some("event") => {
                for k in v["keys"].as_array().into_iter().flatten() {
                    self.keys.insert(k.as_str().unwrap_or_default().to_owned());
                }
            }
            Some("reset") => self.resets.push(v),
            Some("stats") => self.stats = Some(v),
            _ => {}
        }
        true
    }

    /// Waits until it delivered every key of `want` (or fails).
    fn wait_for(&mut self, want: &[String], who: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        while !want.iter().all(|k| self.keys.contains(k)) {
            assert!(Instant::now() < end, "{who} did not deliver {want:?}");
            self.read(Duration::from_millis(100));
        }
    }

    /// Stops it with `signal` and waits (with a deadline) for it to exit.
    fn stop(mut self, signal: i32) -> (std::process::ExitStatus, Life) {
        // SAFETY: kill(2) on our own child's pid, which it still is (not
        // reaped yet).
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let end = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < end, "listener did not exit on {signal}");
            // Drain its output meanwhile (a full pipe would block it).
            self.read(Duration::from_millis(10));
        };
        while self.read(Duration::from_millis(200)) {}
        (status, self)
    }
}

#[test]
fn a_rolling_restart_of_listeners_by_sigterm_and_kill_costs_nobody_a_reset() {
    let net = loopback(None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let publisher = rt
        .block_on(Node::join(NodeConfig {
            group: net[1].parse().unwrap(),
            interface: InterfaceSpec::loopback(),
            ttl: 0,
            cluster: net[7].clone(),
            node_name: "publisher".into(),
            protocol: cachecast::CoreConfig {
                stream_timeout: STREAM_TIMEOUT,
                ..Default::default()
            },
            ..NodeConfig::default()
        }))
        .unwrap();
    let mut sub = publisher.subscribe();
    let mut lives: Vec<Life> = (0..LISTENERS)
        .map(|i| Life::start(&net, &format!("listener-{i}")))
        .collect();
    let mut phase = 0;
    // Publishes a phase of keys; every listener running must deliver them.
    let mut publish_phase = |lives: &mut [Life]| {
        let keys: Vec<String> = (0..PER_PHASE).map(|k| format!("p{phase}-{k}")).collect();
        phase += 1;
        for k in &keys {
            rt.block_on(publisher.invalidate([k.as_str()])).unwrap();
        }
        for (i, l) in lives.iter_mut().enumerate() {
            l.wait_for(&keys, &format!("listener-{i}"));
        }
    };
    publish_phase(&mut lives);
    let mut ended = Vec::new();
    let mut last_kill = Instant::now();
    for round in 0..2 * LISTENERS {
        let i = round % LISTENERS;
        let (signal, how) = if round < LISTENERS {
            (libc::SIGTERM, "SIGTERM")
        } else {
            (libc::SIGKILL, "SIGKILL")
        };
        let replacement = Life::start(&net, &format!("listener-{i}"));
        let old = std::mem::replace(&mut lives[i], replacement);
        let (status, old) = old.stop(signal);
        if signal == libc::SIGTERM {
            assert!(status.success(), "listener-{i} on SIGTERM: {status}");
        } else {
            last_kill = Instant::now();
        }
        ended.push((format!("listener-{i} ({how})"), old));
        publish_phase(&mut lives);
    }
    // Past the publisher's stream timeout after the last kill (a followed
    // listener would have cost it a Reset by then: its sweep runs every
    // twentieth of the timeout).
    // Time itself is the condition here: nothing may happen at the
    // timeout, so there is nothing else to wait for.
    let quiet_until = last_kill + STREAM_TIMEOUT + Duration::from_secs(1);
    std::thread::sleep(quiet_until.saturating_duration_since(Instant::now()));
    publish_phase(&mut lives);
    for (i, l) in lives.into_iter().enumerate() {
        let (status, l) = l.stop(libc::SIGTERM);
        assert!(status.success(), "listener-{i}: {status}");
        ended.push((format!("listener-{i} (last)"), l));
    }
    for (who, l) in &ended {
        assert!(l.resets.is_empty(), "{who} Reset: {:?}", l.resets);
        // A listener follows the publisher's stream only: the other
        // listeners are heard (receive-only) but never followed, so none of
        // their deaths could ever cost it a Reset, whatever its timeout.
        if let Some(stats) = &l.stats {
            assert_eq!(stats["streams"], 1, "{who}: {stats}");
            assert_eq!(stats["streams_timed_out"], 0, "{who}: {stats}");
            assert!(
                stats["receive_only_heard"].as_u64() > Some(0),
                "{who}: {stats}"
            );
        }
    }
    let clean = ended.iter().filter(|(_, l)| l.stats.is_some()).count();
    assert_eq!(
        clean,
        2 * LISTENERS,
        "every SIGTERM'd life printed its stats"
    );
    let stats = rt.block_on(publisher.stats());
    assert_eq!(
        stats.protocol.resets_total(),
        0,
        "{:?}",
        stats.protocol.resets
    );
    assert_eq!(stats.protocol.streams_timed_out, 0);
    while let Some(d) = sub.try_recv() {
        assert!(!matches!(d, Delivery::Reset { .. }), "{d:?}");
    }
    rt.block_on(publisher.shutdown());
}
