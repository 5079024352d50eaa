//! What every system of the benchmark shares: the message format, the
//! publish plan and pacing, the subscriber's recorder, and the reports.
//!
//! A message is `key_size` ASCII bytes: 16 hex digits of the publisher's
//! `CLOCK_MONOTONIC` nanoseconds, then `k` padding. Every process of the
//! run shares the host's monotonic clock, so a subscriber's latency is its
//! own clock reading minus the one in the message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Shortest key: the 16 hex digits of the timestamp.
pub const MIN_KEY_SIZE: usize = 16;

/// Nanoseconds of `CLOCK_MONOTONIC`, the same clock in every process.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn clock_secs(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// CPU seconds (user + system) of the calling thread.
pub fn thread_cpu() -> f64 {
    clock_secs(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU seconds (user + system) of this process, every thread.
pub fn process_cpu() -> f64 {
    clock_secs(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// Peak resident set of this process, in KiB (`VmHWM`), 0 if unknown.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Sleeps precisely: the default 50 µs timer slack would blur a 100 µs
/// publish interval.
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) };
}

/// Writes a message stamped `ts` into `out` (its length is the key size).
pub fn stamp(out: &mut [u8], ts: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = if i < 16 {
            HEX[((ts >> ((15 - i) * 4)) & 0xf) as usize]
        } else {
            b'k'
        };
    }
}

/// The timestamp of a message, `None` if it is not one of ours.
pub fn stamp_of(msg: &[u8]) -> Option<u64> {
    let digits = msg.get(..16)?;
    let mut ts = 0u64;
    for &b in digits {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        ts = ts << 4 | u64::from(d);
    }
    Some(ts)
}

/// What a publisher is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Events to publish.
    pub events: u64,
    /// Events per second; `None` is flat out.
    pub rate: Option<f64>,
    /// Bytes per key (message).
    pub key_size: usize,
    /// Keys per event (cachecast); messages per event elsewhere.
    pub keys_per_event: usize,
    /// Publishing stops after this long, whatever is left.
    pub max_time: Duration,
}

/// Spreads a plan's events over time: `due` says how many should have been
/// published by now.
pub struct Pacer {
    start: u64,
    rate: Option<f64>,
    total: u64,
}

impl Pacer {
    pub fn new(plan: &Plan) -> Self {
        Pacer {
            start: mono_ns(),
            rate: plan.rate,
            total: plan.events,
        }
    }

    /// Events due by now (all of them when flat out).
    pub fn due(&self) -> u64 {
        match self.rate {
            None => self.total,
            Some(r) => {
                let elapsed = (mono_ns() - self.start) as f64 * 1e-9;
                ((elapsed * r) as u64 + 1).min(self.total)
            }
        }
    }

    /// Sleeps until event number `sent` is due (no-op when flat out).
    pub fn wait_for(&self, sent: u64) {
        let Some(r) = self.rate else { return };
        let due_at = self.start + ((sent as f64 / r) * 1e9) as u64;
        let now = mono_ns();
        if due_at > now {
            std::thread::sleep(Duration::from_nanos(due_at - now));
        }
    }

    /// True once `max_time` has passed since the start.
    pub fn expired(&self, plan: &Plan) -> bool {
        mono_ns() - self.start > plan.max_time.as_nanos() as u64
    }

    /// What a publisher that has sent `sent` events does next: publish up
    /// to `max` more, wait ([`Pacer::wait_for`]), or stop (all sent, or
    /// `max_time` is up). The one loop condition of every publisher.
    pub fn step(&self, plan: &Plan, sent: u64, max: u64) -> Step {
        if sent >= plan.events || self.expired(plan) {
            return Step::Done;
        }
        match self.due() {
            due if due <= sent => Step::Wait,
            due => Step::Publish((due - sent).min(max).min(plan.events - sent)),
        }
    }
}

/// See [`Pacer::step`].
pub enum Step {
    Publish(u64),
    Wait,
    Done,
}

/// What a publisher reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PubReport {
    pub published: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    /// CPU seconds of the publishing thread (for cachecast, its driver too).
    pub cpu_s: f64,
    /// Datagrams (or, for the brokers, write calls) sent.
    pub datagrams: u64,
}

/// What a subscriber reports (one JSON line on its standard output).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubReport {
    /// Messages (events) received.
    pub received: u64,
    /// Datagrams received (raw UDP, cachecast); 0 for the brokers.
    pub datagrams: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Publish-to-delivery latency, nanoseconds.
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    /// CPU seconds of the whole subscriber process while it ran.
    pub cpu_s: f64,
    /// Peak resident set, KiB.
    pub rss_kib: u64,
    /// cachecast only: Resets delivered (and by kind), events repaired,
    /// Naks sent.
    pub resets: u64,
    #[serde(default)]
    pub reset_kinds: std::collections::BTreeMap<String, u64>,
    pub repaired: u64,
    pub naks: u64,
    /// cachecast only: time from noticing a gap to the repair that filled
    /// it (the node's `repair_time`), µs.
    #[serde(default)]
    pub repair_p50_us: u64,
    #[serde(default)]
    pub repair_p99_us: u64,
    #[serde(default)]
    pub repair_max_us: u64,
    /// A subscriber that failed says why.
    pub error: Option<String>,
}

/// Counts and times what a subscriber receives.
pub struct Recorder {
    pub received: u64,
    pub datagrams: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    hist: hdrhistogram::Histogram<u64>,
    cpu_start: f64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            received: 0,
            datagrams: 0,
            first_ns: 0,
            last_ns: 0,
            // 1 ns to 100 s at 3 significant digits: always constructible.
            hist: hdrhistogram::Histogram::new_with_bounds(1, 100_000_000_000, 3)
                .expect("valid histogram bounds"),
            cpu_start: process_cpu(),
        }
    }

    /// Restarts the CPU clock (call once ready, so set-up is not counted).
    pub fn start(&mut self) {
        self.cpu_start = process_cpu();
    }

    /// One message received at `now`.
    #[inline]
    pub fn record(&mut self, msg: &[u8], now: u64) {
        self.received += 1;
        if self.first_ns == 0 {
            self.first_ns = now;
        }
        self.last_ns = now;
        if let Some(ts) = stamp_of(msg) {
            self.hist.saturating_record(now.saturating_sub(ts).max(1));
        }
    }

    /// The report, with the process's CPU and memory.
    pub fn report(&self) -> SubReport {
        let q = |q: f64| {
            if self.hist.is_empty() {
                0
            } else {
                self.hist.value_at_quantile(q)
            }
        };
        SubReport {
            received: self.received,
            datagrams: self.datagrams,
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            p50_ns: q(0.5),
            p99_ns: q(0.99),
            p999_ns: q(0.999),
            max_ns: if self.hist.is_empty() {
                0
            } else {
                self.hist.max()
            },
            cpu_s: process_cpu() - self.cpu_start,
            rss_kib: peak_rss_kib(),
            ..SubReport::default()
        }
    }
}

/// How a subscriber knows it is done: everything arrived, nothing arrived
/// for a while, or the parent said stop (closed our standard input).
pub struct Done {
    pub expect: u64,
    pub idle: Duration,
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Done {
    /// Everything arrived, or the parent said stop.
    pub fn complete(&self, rec: &Recorder) -> bool {
        self.stop.load(Ordering::Relaxed) || rec.received >= self.expect
    }

    /// Something arrived, then nothing for `idle`.
    pub fn idle(&self, rec: &Recorder) -> bool {
        rec.last_ns != 0 && mono_ns() - rec.last_ns > self.idle.as_nanos() as u64
    }

    /// Complete or idle.
    pub fn check(&self, rec: &Recorder) -> bool {
        self.complete(rec) || self.idle(rec)
    }
}

/// Publisher progress, read by the parent's progress line.
pub static PROGRESS: AtomicU64 = AtomicU64::new(0);

/// The bench's UDP destination: a group in 239.255.0.0/16 on loopback.
pub fn loopback_opts(group: std::net::SocketAddr) -> cachecast::net::socket::SocketOptions {
    cachecast::net::socket::SocketOptions {
        group,
        interface: cachecast::net::socket::InterfaceSpec::Addr(
            std::net::Ipv4Addr::LOCALHOST.into(),
        ),
        ttl: 0,
        loopback: true,
        recv_buffer: cachecast::net::socket::DEFAULT_RECV_BUFFER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let mut buf = [0u8; 32];
        for ts in [0, 1, 0xdead_beef, u64::MAX] {
            stamp(&mut buf, ts);
            assert_eq!(stamp_of(&buf), Some(ts));
            assert!(buf[16..].iter().all(|&b| b == b'k'));
        }
        assert_eq!(stamp_of(b"short"), None);
        assert_eq!(stamp_of(b"zzzzzzzzzzzzzzzzzz"), None);
    }
}
