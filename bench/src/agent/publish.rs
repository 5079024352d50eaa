//! Publish throughput: `POST /v1/invalidate` flat out over keep-alive
//! connections, one event or a batch per request; invalidations accepted
//! per second and the agent's CPU per thousand.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::http::Conn;
use super::process::Agent;

/// Rates are sampled this often for the spread.
const SLICE: Duration = Duration::from_millis(250);

/// One publish run.
#[derive(Debug, Clone, Serialize)]
pub struct PublishRun {
    pub connections: u16,
    /// Events (one key each) per request.
    pub batch: u16,
    pub seconds: f64,
    pub requests: u64,
    /// Invalidations answered 202.
    pub accepted: u64,
    /// Invalidations answered otherwise (the first answer is in `error`).
    pub refused: u64,
    /// Invalidations accepted per second over the run.
    pub per_s: f64,
    /// Slowest and fastest 250 ms slice, per second.
    pub slice_min_per_s: f64,
    pub slice_max_per_s: f64,
    /// Agent CPU (user + system) per thousand accepted invalidations, ms.
    pub cpu_ms_per_k: f64,
    /// Agent CPU over the run, % of one core.
    pub cpu_pct: f64,
    /// The agent's resident memory at the end of the run, KiB.
    pub rss_kib: u64,
    /// The first failure (a connection error or a status other than 202).
    pub error: Option<String>,
}

/// The request body of a batch of `batch` one-key events (distinct keys
/// per connection; the agent does nothing per key that repeats would
/// spare).
fn body(conn: usize, batch: u16) -> Vec<u8> {
    let key = |j: u16| format!("\"cachecast-bench:tp:{conn:02}:{j:08}\"");
    if batch == 1 {
        format!("{{\"keys\":[{}]}}", key(0)).into_bytes()
    } else {
        let events: Vec<String> = (0..batch)
            .map(|j| format!("{{\"keys\":[{}]}}", key(j)))
            .collect();
        format!("{{\"events\":[{}]}}", events.join(",")).into_bytes()
    }
}

/// Publishes flat out to `agent` over `connections` connections for
/// `time`, or until `max` invalidations were sent, whichever first.
pub fn run(agent: &Agent, connections: u16, batch: u16, time: Duration, max: u64) -> PublishRun {
    let addr: SocketAddr = agent.http;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(usize::from(connections) + 1));
    let mut threads = Vec::new();
    for c in 0..usize::from(connections) {
        let (stop, sent, accepted, barrier) = (
            stop.clone(),
            sent.clone(),
            accepted.clone(),
            barrier.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let conn = Conn::connect(addr, Duration::from_secs(10));
            barrier.wait();
            let mut conn = conn.map_err(|e| format!("connect: {e}"))?;
            let body = body(c, batch);
            let (mut requests, mut refused) = (0u64, 0u64);
            let mut error = None;
            while !stop.load(Ordering::Relaxed) {
                if sent.fetch_add(u64::from(batch), Ordering::Relaxed) >= max {
                    break;
                }
                requests += 1;
                match conn.post_json("/v1/invalidate", &body) {
                    Ok(202) => {
                        accepted.fetch_add(u64::from(batch), Ordering::Relaxed);
                    }
                    Ok(status) => {
                        refused += u64::from(batch);
                        error.get_or_insert_with(|| {
                            format!(
                                "status {status}: {}",
                                String::from_utf8_lossy(conn.body()).trim()
                            )
                        });
                    }
                    Err(e) => {
                        error.get_or_insert_with(|| e.to_string());
                        break;
                    }
                }
            }
            Ok::<_, String>((requests, refused, error))
        }));
    }
    barrier.wait();
    let cpu0 = agent.cpu_s();
    let t0 = Instant::now();
    let (mut slice_min, mut slice_max) = (f64::INFINITY, 0.0f64);
    let mut last = (t0, 0u64);
    while t0.elapsed() < time && !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(SLICE.min(time.saturating_sub(t0.elapsed())));
        let now = (Instant::now(), accepted.load(Ordering::Relaxed));
        let dt = (now.0 - last.0).as_secs_f64();
        // A slice cut short by the end of the run says little: skip it.
        if dt >= SLICE.as_secs_f64() * 0.8 {
            let r = (now.1 - last.1) as f64 / dt;
            slice_min = slice_min.min(r);
            slice_max = slice_max.max(r);
        }
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    let mut requests = 0;
    let mut refused = 0;
    let mut error = None;
    for t in threads {
        match t.join() {
            Ok(Ok((r, f, e))) => {
                requests += r;
                refused += f;
                if error.is_none() {
                    error = e;
                }
            }
            Ok(Err(e)) => error = error.or(Some(e)),
            Err(_) => error = error.or(Some("a publishing thread panicked".into())),
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = agent.cpu_s() - cpu0;
    let accepted = accepted.load(Ordering::Relaxed);
    PublishRun {
        connections,
        batch,
        seconds,
        requests,
        accepted,
        refused,
        per_s: accepted as f64 / seconds,
        slice_min_per_s: if slice_min.is_finite() {
            slice_min
        } else {
            0.0
        },
        slice_max_per_s: slice_max,
        cpu_ms_per_k: if accepted == 0 {
            0.0
        } else {
            cpu * 1e3 / (accepted as f64 / 1e3)
        },
        cpu_pct: cpu / seconds * 100.0,
        rss_kib: agent.rss_kib(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_the_agents_json_with_the_asked_number_of_events() {
        let one: serde_json::Value = serde_json::from_slice(&body(3, 1)).unwrap();
        assert_eq!(one["keys"][0], "cachecast-bench:tp:03:00000000");
        let many: serde_json::Value = serde_json::from_slice(&body(3, 100)).unwrap();
        let events = many["events"].as_array().unwrap();
        assert_eq!(events.len(), 100);
        assert_eq!(events[99]["keys"][0], "cachecast-bench:tp:03:00000099");
    }
}
