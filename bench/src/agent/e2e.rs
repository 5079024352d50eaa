//! End to end between two agents at a fixed rate: `POST` on A, then the
//! SSE event on B, and the key gone from B's Redis (B's applier), each
//! timed from the moment the `POST` was written.
//!
//! Every event invalidates one key, `cachecast-bench:<run>:<i>`; the
//! publisher records when it sent event `i` and the receivers (an SSE
//! client of B, a subscriber of Redis keyspace notifications) look it up.
//! All clocks are this process's `CLOCK_MONOTONIC`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::http::{Conn, Sse};
use super::process::Agent;
use super::resp::{Redis, Reply};
use crate::common::mono_ns;

/// How long receivers may take to see the last events once publishing
/// ended.
const DRAIN: Duration = Duration::from_secs(3);
/// Receivers wake up this often to check whether to stop.
const POLL: Duration = Duration::from_millis(100);
/// The keyevent channels an UNLINK or DEL of db 0 publishes on.
const CHANNELS: [&str; 2] = ["__keyevent@0__:del", "__keyevent@0__:unlink"];

/// Latency of one path, from the POST's send time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Events seen (each counted once).
    pub received: u64,
    /// Events sent but never seen.
    pub missing: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// The lowest and highest p99 of the 1-second windows (by send time).
    pub window_p99_min_us: f64,
    pub window_p99_max_us: f64,
    /// The first failure of the receiver, if it failed.
    pub error: Option<String>,
}

/// What the end-to-end run measured.
#[derive(Debug, Clone, Serialize)]
pub struct E2e {
    pub rate: f64,
    pub seconds: f64,
    pub sent: u64,
    /// POSTs not answered 202.
    pub refused: u64,
    /// POST → 202 on A.
    pub post: Latency,
    /// POST on A → the SSE event on B.
    pub sse: Latency,
    /// POST on A → the key gone from B's Redis (None without Redis).
    pub redis: Option<Latency>,
    /// `reset` events B's SSE client got.
    pub resets: u64,
    /// Agent CPU over the paced run, % of one core: A, B.
    pub cpu_pct: [f64; 2],
    /// Highest resident memory seen during the run, KiB: A, B.
    pub rss_kib: [u64; 2],
}

/// Latencies of one path, in nanoseconds.
struct Recorder {
    all: Histogram<u64>,
    windows: Vec<Histogram<u64>>,
    seen: Vec<bool>,
    received: u64,
}

impl Recorder {
    fn new(n: usize, seconds: usize) -> Self {
        let h = || Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid bounds");
        Recorder {
            all: h(),
            windows: (0..seconds.max(1)).map(|_| h()).collect(),
            seen: vec![false; n],
            received: 0,
        }
    }

    /// Event `i`, sent at `sent_ns` (relative to `start_ns` for its
    /// window), arrived at `now_ns`; duplicates are ignored.
    fn record(&mut self, i: usize, sent_ns: u64, start_ns: u64, now_ns: u64) {
        let Some(seen) = self.seen.get_mut(i) else {
            return;
        };
        if *seen || sent_ns == 0 {
            return;
        }
        *seen = true;
        self.received += 1;
        let v = now_ns.saturating_sub(sent_ns).max(1_000);
        let w = ((sent_ns.saturating_sub(start_ns)) / 1_000_000_000) as usize;
        self.all.saturating_record(v);
        let last = self.windows.len() - 1;
        if let Some(h) = self.windows.get_mut(w.min(last)) {
            h.saturating_record(v);
        }
    }

    fn report(&self, sent: u64, error: Option<String>) -> Latency {
        let us = |ns: u64| ns as f64 / 1e3;
        let p99s: Vec<u64> = self
            .windows
            .iter()
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(0.99))
            .collect();
        Latency {
            received: self.received,
            missing: sent.saturating_sub(self.received),
            p50_us: us(self.all.value_at_quantile(0.50)),
            p99_us: us(self.all.value_at_quantile(0.99)),
            p999_us: us(self.all.value_at_quantile(0.999)),
            max_us: us(self.all.max()),
            window_p99_min_us: us(p99s.iter().copied().min().unwrap_or(0)),
            window_p99_max_us: us(p99s.iter().copied().max().unwrap_or(0)),
            error,
        }
    }
}

/// What every receiver shares with the publisher.
struct Shared {
    run: String,
    /// When the paced run started (windows count from here).
    start_ns: AtomicU64,
    /// Send time of event i (0: not sent yet).
    sent_at: Vec<AtomicU64>,
    stop: AtomicBool,
}

impl Shared {
    /// The index of one of this run's keys.
    fn index(&self, key: &[u8]) -> Option<usize> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix("cachecast-bench:")?;
        let (run, i) = rest.split_once(':')?;
        (run == self.run).then(|| i.parse().ok())?
    }

    fn key(&self, i: usize) -> String {
        format!("cachecast-bench:{}:{i}", self.run)
    }

    fn seen(&self, rec: &mut Recorder, key: &[u8]) {
        if let Some(i) = self.index(key) {
            let sent = self.sent_at.get(i).map_or(0, |t| t.load(Ordering::Acquire));
            rec.record(i, sent, self.start_ns.load(Ordering::Relaxed), mono_ns());
        }
    }
}

/// Progress of a receiver, for the publisher's drain wait.
type Count = Arc<AtomicU64>;

/// B's SSE client: every invalidate event's keys, and resets counted.
fn sse_receiver(
    mut sse: Sse,
    sh: Arc<Shared>,
    n: usize,
    seconds: usize,
    count: Count,
) -> JoinHandle<(Recorder, u64, Option<String>)> {
    std::thread::spawn(move || {
        let mut rec = Recorder::new(n, seconds);
        let mut resets = 0;
        let error = loop {
            if sh.stop.load(Ordering::Relaxed) {
                break None;
            }
            match sse.next_event() {
                Ok(None) => {}
                Ok(Some(ev)) if ev.kind == "invalidate" => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&ev.data) else {
                        break Some(format!("an event's data is not JSON: {:?}", ev.data));
                    };
                    for k in v["keys"].as_array().into_iter().flatten() {
                        if let Some(k) = k.as_str() {
                            sh.seen(&mut rec, k.as_bytes());
                        }
                    }
                    count.store(rec.received, Ordering::Relaxed);
                }
                Ok(Some(ev)) if ev.kind == "reset" => resets += 1,
                Ok(Some(_)) => {}
                Err(e) => break Some(format!("event stream: {e}")),
            }
        };
        (rec, resets, error)
    })
}

/// Subscribes to Redis's keyevent notifications of deletes in db 0;
/// returns once subscribed.
fn redis_receiver(
    addr: SocketAddr,
    sh: Arc<Shared>,
    n: usize,
    seconds: usize,
    count: Count,
) -> Result<JoinHandle<(Recorder, Option<String>)>, String> {
    let mut r = Redis::connect(addr, Duration::from_secs(5)).map_err(|e| format!("redis: {e}"))?;
    let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
    args.extend(CHANNELS.iter().map(|c| c.as_bytes()));
    r.send(&args).map_err(|e| format!("redis SUBSCRIBE: {e}"))?;
    for _ in CHANNELS {
        match r.read() {
            Ok(Reply::Array(Some(a))) if a.first() == Some(&bulk("subscribe")) => {}
            other => return Err(format!("redis SUBSCRIBE answered {other:?}")),
        }
    }
    r.set_read_timeout(POLL).map_err(|e| e.to_string())?;
    Ok(std::thread::spawn(move || {
        let mut rec = Recorder::new(n, seconds);
        let error = loop {
            if sh.stop.load(Ordering::Relaxed) {
                break None;
            }
            match r.read() {
                Ok(Reply::Array(Some(a))) if a.first() == Some(&bulk("message")) => {
                    if let Some(Reply::Bulk(Some(key))) = a.get(2) {
                        sh.seen(&mut rec, key);
                        count.store(rec.received, Ordering::Relaxed);
                    }
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => break Some(format!("redis notifications: {e}")),
            }
        };
        (rec, error)
    }))
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(Some(s.as_bytes().to_vec()))
}

/// Sets every key of the run in Redis (MSET, 500 at a time) and turns
/// keyspace notifications of generic commands on; the setting it replaced.
fn prepare_redis(addr: SocketAddr, sh: &Shared, n: usize) -> Result<Vec<u8>, String> {
    let e = |e: std::io::Error| format!("redis {addr}: {e}");
    let mut r = Redis::connect(addr, Duration::from_secs(5)).map_err(e)?;
    let old = match r
        .command(&[b"CONFIG", b"GET", b"notify-keyspace-events"])
        .map_err(e)?
    {
        Reply::Array(Some(a)) => match a.get(1) {
            Some(Reply::Bulk(Some(v))) => v.clone(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    r.command(&[b"CONFIG", b"SET", b"notify-keyspace-events", b"Eg"])
        .map_err(e)?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|&i| sh.key(i)).collect();
        let mut args: Vec<&[u8]> = vec![b"MSET"];
        for k in &keys {
            args.push(k.as_bytes());
            args.push(b"1");
        }
        r.command(&args).map_err(e)?;
    }
    Ok(old)
}

/// Puts the notification setting back and deletes what is left of the
/// run's keys (those never invalidated).
fn restore_redis(addr: SocketAddr, sh: &Shared, n: usize, old: &[u8]) -> Result<(), String> {
    let e = |e: std::io::Error| format!("redis {addr}: {e}");
    let mut r = Redis::connect(addr, Duration::from_secs(5)).map_err(e)?;
    r.command(&[b"CONFIG", b"SET", b"notify-keyspace-events", old])
        .map_err(e)?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|&i| sh.key(i)).collect();
        let mut args: Vec<&[u8]> = vec![b"UNLINK"];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        r.command(&args).map_err(e)?;
    }
    Ok(())
}

/// Publishes `rate` one-key events per second on `a` for `time` and
/// times them through `b` (its SSE stream and, with `redis`, the Redis its
/// applier serves).
pub fn run(
    a: &Agent,
    b: &Agent,
    redis: Option<SocketAddr>,
    rate: f64,
    time: Duration,
) -> Result<E2e, String> {
    let n = (rate * time.as_secs_f64()).ceil().max(1.0) as usize;
    let seconds = time.as_secs_f64().ceil() as usize + 1;
    let sh = Arc::new(Shared {
        run: format!("{:08x}", rand::random::<u32>()),
        start_ns: AtomicU64::new(0),
        sent_at: (0..n).map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
    });
    let old_notify = match redis {
        Some(addr) => Some(prepare_redis(addr, &sh, n)?),
        None => None,
    };
    let result = run_inner(a, b, redis, rate, time, n, seconds, sh.clone());
    if let (Some(addr), Some(old)) = (redis, old_notify) {
        if let Err(e) = restore_redis(addr, &sh, n, &old) {
            eprintln!("bench: could not restore Redis: {e}");
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn run_inner(
    a: &Agent,
    b: &Agent,
    redis: Option<SocketAddr>,
    rate: f64,
    time: Duration,
    n: usize,
    seconds: usize,
    sh: Arc<Shared>,
) -> Result<E2e, String> {
    let sse = Sse::open(b.http, "/v1/events", POLL).map_err(|e| format!("B's SSE: {e}"))?;
    let mut conn =
        Conn::connect(a.http, Duration::from_secs(5)).map_err(|e| format!("A's HTTP: {e}"))?;
    let start_ns = mono_ns();
    sh.start_ns.store(start_ns, Ordering::Relaxed);
    let (sse_count, redis_count): (Count, Count) = Default::default();
    let sse_thread = sse_receiver(sse, sh.clone(), n, seconds, sse_count.clone());
    let redis_thread = match redis {
        Some(addr) => Some(redis_receiver(
            addr,
            sh.clone(),
            n,
            seconds,
            redis_count.clone(),
        )?),
        None => None,
    };

    let mut post = Recorder::new(n, seconds);
    let interval = 1e9 / rate;
    let cpu0 = [a.cpu_s(), b.cpu_s()];
    let t0 = Instant::now();
    let hard_stop = t0 + time + Duration::from_secs(2);
    let mut rss = [a.rss_kib(), b.rss_kib()];
    let (mut sent, mut refused) = (0u64, 0u64);
    let mut body = Vec::with_capacity(128);
    let mut error = None;
    for i in 0..n {
        let due = start_ns + (i as f64 * interval) as u64;
        let now = mono_ns();
        if now < due {
            std::thread::sleep(Duration::from_nanos(due - now));
        }
        if Instant::now() > hard_stop {
            break;
        }
        body.clear();
        body.extend_from_slice(format!("{{\"keys\":[\"{}\"]}}", sh.key(i)).as_bytes());
        let t = mono_ns();
        sh.sent_at[i].store(t, Ordering::Release);
        match conn.post_json("/v1/invalidate", &body) {
            Ok(202) => post.record(i, t, start_ns, mono_ns()),
            Ok(status) => {
                refused += 1;
                error.get_or_insert_with(|| format!("A answered {status}"));
            }
            Err(e) => {
                error = Some(format!("A's HTTP: {e}"));
                break;
            }
        }
        sent += 1;
        if i % 100 == 0 {
            rss[0] = rss[0].max(a.rss_kib());
            rss[1] = rss[1].max(b.rss_kib());
        }
    }
    let seconds_run = t0.elapsed().as_secs_f64();
    let cpu = [a.cpu_s() - cpu0[0], b.cpu_s() - cpu0[1]];
    rss = [rss[0].max(a.rss_kib()), rss[1].max(b.rss_kib())];

    let want = sent - refused;
    let drain_end = Instant::now() + DRAIN;
    while Instant::now() < drain_end
        && (sse_count.load(Ordering::Relaxed) < want
            || (redis.is_some() && redis_count.load(Ordering::Relaxed) < want))
        && !sse_thread.is_finished()
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    sh.stop.store(true, Ordering::Relaxed);
    let (sse_rec, resets, sse_err) = sse_thread
        .join()
        .map_err(|_| "the SSE receiver panicked".to_string())?;
    let redis = match redis_thread {
        Some(t) => {
            let (rec, err) = t
                .join()
                .map_err(|_| "the Redis receiver panicked".to_string())?;
            Some(rec.report(want, err))
        }
        None => None,
    };
    Ok(E2e {
        rate,
        seconds: seconds_run,
        sent,
        refused,
        post: post.report(sent, error),
        sse: sse_rec.report(want, sse_err),
        redis,
        resets,
        cpu_pct: [cpu[0] / seconds_run * 100.0, cpu[1] / seconds_run * 100.0],
        rss_kib: rss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(n: usize) -> Shared {
        Shared {
            run: "0000abcd".into(),
            start_ns: AtomicU64::new(1_000),
            sent_at: (0..n).map(|_| AtomicU64::new(0)).collect(),
            stop: AtomicBool::new(false),
        }
    }

    #[test]
    fn only_this_runs_keys_are_matched() {
        let sh = shared(10);
        assert_eq!(sh.index(sh.key(7).as_bytes()), Some(7));
        assert_eq!(sh.index(b"cachecast-bench:0000abce:7"), None);
        assert_eq!(sh.index(b"cachecast-bench:0000abcd:x"), None);
        assert_eq!(sh.index(b"other:0000abcd:7"), None);
    }

    #[test]
    fn each_event_counts_once_in_its_send_window() {
        let mut r = Recorder::new(4, 3);
        r.record(0, 1_000, 1_000, 501_000); // 500 µs, window 0
        r.record(0, 1_000, 1_000, 901_000); // duplicate: ignored
        r.record(1, 1_500_000_000, 1_000, 1_502_000_000); // 2 ms, window 1
        r.record(2, 0, 1_000, 5_000); // never sent: ignored
        r.record(9, 1_000, 1_000, 2_000); // not of this run: ignored
        let l = r.report(4, None);
        assert_eq!((l.received, l.missing), (2, 2));
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.max_us - 2_000.0).abs() < 2.0, "{l:?}");
        assert!((l.window_p99_min_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.window_p99_max_us - 2_000.0).abs() < 2.0, "{l:?}");
    }
}
