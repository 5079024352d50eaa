//! The soak's agent path: `POST /v1/invalidate` on agent A at a fixed
//! rate (one key per request, one keep-alive connection), received as SSE
//! events from agent B, both real `cachecast agent` processes.
//!
//! Each key is `cachecast-soak:<run>:<n>:<send time>`: B's reader counts
//! gaps in `n` as loss and times each event from the moment its `POST` was
//! written (the same `CLOCK_MONOTONIC`, this process). The reader keeps
//! only counters and the current interval's histogram.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::samples::{histogram, record, Counters, Gaps};
use crate::agent::http::{Conn, Sse};
use crate::agent::process::Agent;
use crate::common::mono_ns;

/// How long the SSE reader waits for data before checking whether to stop.
const POLL: Duration = Duration::from_millis(100);
/// Most times a broken connection is opened again.
const MAX_RECONNECTS: u32 = 100;

/// What both threads share with the soak.
struct Shared {
    run: String,
    go: AtomicBool,
    stop: AtomicBool,
    /// Invalidations A accepted (202).
    accepted: AtomicU64,
    /// POSTs A refused, or that failed.
    refused: AtomicU64,
    recv: Mutex<Recv>,
    /// The first errors of either thread (at most 10).
    errors: Mutex<Vec<String>>,
}

impl Shared {
    /// Nothing counted yet, for the run whose keys are tagged `run`.
    fn new(run: String) -> Self {
        Shared {
            run,
            go: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            recv: Mutex::new(Recv {
                counts: Counters::default(),
                gaps: Gaps::default(),
                hist: histogram(),
            }),
            errors: Mutex::new(Vec::new()),
        }
    }
}

struct Recv {
    counts: Counters,
    gaps: Gaps,
    hist: Histogram<u64>,
}

impl Shared {
    fn error(&self, e: String) {
        if let Ok(mut v) = self.errors.lock() {
            if v.len() < 10 {
                v.push(e);
            }
        }
    }

    /// The number and send time of one of this run's keys.
    fn parse(&self, key: &str) -> Option<(u64, u64)> {
        let rest = key.strip_prefix("cachecast-soak:")?;
        let mut parts = rest.splitn(3, ':');
        if parts.next()? != self.run {
            return None;
        }
        let n = parts.next()?.parse().ok()?;
        let ts = parts.next()?.parse().ok()?;
        Some((n, ts))
    }
}

/// The agent path while it runs.
pub struct AgentPath {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// One snapshot of the agent path.
pub struct AgentSample {
    pub accepted: u64,
    pub refused: u64,
    pub counts: Counters,
    /// Latency since the last snapshot.
    pub hist: Histogram<u64>,
}

impl AgentPath {
    /// Opens B's event stream and A's connection; publishing starts at
    /// [`AgentPath::go`] and lasts `time` at `rate` per second.
    pub fn start(a: &Agent, b: &Agent, rate: f64, time: Duration) -> Result<AgentPath, String> {
        let shared = Arc::new(Shared::new(format!("{:08x}", rand::random::<u32>())));
        let sse = Sse::open(b.http, "/v1/events", POLL).map_err(|e| format!("B's SSE: {e}"))?;
        let conn =
            Conn::connect(a.http, Duration::from_secs(5)).map_err(|e| format!("A's HTTP: {e}"))?;
        let (sh, b_http) = (shared.clone(), b.http);
        let reader = std::thread::spawn(move || read(sse, b_http, &sh));
        let (sh, a_http) = (shared.clone(), a.http);
        let writer = std::thread::spawn(move || publish(conn, a_http, &sh, rate, time));
        Ok(AgentPath {
            shared,
            threads: vec![reader, writer],
        })
    }

    /// Publishing starts.
    pub fn go(&self) {
        self.shared.go.store(true, Ordering::Release);
    }

    /// Counts so far, and the latency since the last call.
    pub fn sample(&self) -> AgentSample {
        let (counts, hist) = match self.shared.recv.lock() {
            Ok(mut r) => {
                r.counts.lost = r.gaps.lost;
                (
                    r.counts.clone(),
                    std::mem::replace(&mut r.hist, histogram()),
                )
            }
            Err(_) => (Counters::default(), histogram()),
        };
        AgentSample {
            accepted: self.shared.accepted.load(Ordering::Acquire),
            refused: self.shared.refused.load(Ordering::Relaxed),
            counts,
            hist,
        }
    }

    /// True once the publisher is done.
    pub fn published(&self) -> bool {
        self.threads.get(1).is_none_or(|t| t.is_finished())
    }

    /// The errors seen so far.
    pub fn errors(&self) -> Vec<String> {
        self.shared
            .errors
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Stops both threads (each within about a second).
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn sleep_until(at: Instant, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= at {
            return;
        }
        std::thread::sleep((at - now).min(Duration::from_millis(100)));
    }
}

/// The publishing thread: `rate` POSTs a second for `time` (at most
/// `rate × time` of them, and stopping 10 s after `time` in any case).
fn publish(mut conn: Conn, addr: std::net::SocketAddr, sh: &Shared, rate: f64, time: Duration) {
    while !sh.go.load(Ordering::Acquire) {
        if sh.stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let n = (rate * time.as_secs_f64()).ceil() as u64;
    let t0 = Instant::now();
    let hard_stop = t0 + time + Duration::from_secs(10);
    let (mut next, mut reconnects) = (1u64, 0u32);
    let mut body = Vec::with_capacity(128);
    for i in 0..n {
        sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate), &sh.stop);
        if sh.stop.load(Ordering::Relaxed) || Instant::now() > hard_stop {
            return;
        }
        let ts = mono_ns();
        body.clear();
        body.extend_from_slice(
            format!("{{\"keys\":[\"cachecast-soak:{}:{next}:{ts}\"]}}", sh.run).as_bytes(),
        );
        match conn.post_json("/v1/invalidate", &body) {
            Ok(202) => {
                // Numbers only go to accepted events: a gap at B is loss.
                next += 1;
                sh.accepted.fetch_add(1, Ordering::Release);
            }
            Ok(status) => {
                sh.refused.fetch_add(1, Ordering::Relaxed);
                sh.error(format!("A answered {status}"));
            }
            Err(e) => {
                sh.refused.fetch_add(1, Ordering::Relaxed);
                sh.error(format!("A's HTTP: {e}"));
                reconnects += 1;
                if reconnects > MAX_RECONNECTS {
                    return;
                }
                match Conn::connect(addr, Duration::from_secs(5)) {
                    Ok(c) => conn = c,
                    Err(e) => sh.error(format!("A's HTTP, reconnecting: {e}")),
                }
            }
        }
    }
}

/// The SSE reader: every invalidation of this run, and every reset.
fn read(mut sse: Sse, addr: std::net::SocketAddr, sh: &Shared) {
    let mut reconnects = 0;
    while !sh.stop.load(Ordering::Relaxed) {
        let ev = match sse.next_event() {
            Ok(Some(ev)) => ev,
            Ok(None) => continue,
            Err(e) => {
                sh.error(format!("B's event stream: {e}"));
                reconnects += 1;
                if reconnects > MAX_RECONNECTS {
                    return;
                }
                sleep_until(Instant::now() + Duration::from_millis(500), &sh.stop);
                match Sse::open(addr, "/v1/events", POLL) {
                    Ok(s) => sse = s,
                    Err(e) => sh.error(format!("B's event stream, reconnecting: {e}")),
                }
                continue;
            }
        };
        match ev.kind.as_str() {
            "invalidate" => {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&ev.data) else {
                    sh.error("an SSE event's data is not JSON".into());
                    continue;
                };
                let now = mono_ns();
                let Ok(mut r) = sh.recv.lock() else { return };
                for k in v["keys"].as_array().into_iter().flatten() {
                    if let Some((n, ts)) = k.as_str().and_then(|k| sh.parse(k)) {
                        r.counts.delivered += 1;
                        r.gaps.see(0, n);
                        record(&mut r.hist, now.saturating_sub(ts));
                    }
                }
            }
            "reset" => {
                let v = serde_json::from_str::<serde_json::Value>(&ev.data).unwrap_or_default();
                let reason = v["reason"].as_str().unwrap_or("unknown");
                if let Ok(mut r) = sh.recv.lock() {
                    r.counts.reset(reason);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_runs_keys_are_read() {
        let sh = Shared::new("0000beef".into());
        assert_eq!(
            sh.parse("cachecast-soak:0000beef:7:123456"),
            Some((7, 123456))
        );
        assert_eq!(sh.parse("cachecast-soak:0000dead:7:123456"), None);
        assert_eq!(sh.parse("cachecast-soak:0000beef:7"), None);
        assert_eq!(sh.parse("cachecast-soak:0000beef:x:1"), None);
        assert_eq!(
            sh.parse("cachecast-soak:0000beef:1:99999999999999999999999"),
            None
        );
        assert_eq!(sh.parse("user:42"), None);
        for i in 0..20 {
            sh.error(format!("e{i}"));
        }
        assert_eq!(sh.errors.lock().unwrap().len(), 10);
    }
}
