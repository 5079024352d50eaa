//! Sender pacing: a flat-out publisher must not overrun its receivers into
//! Resets. Loss is the only signal a multicast sender gets (a `Nak`), so the
//! rate follows it, AIMD-like: unpaced until a `Nak` arrives; then paced at
//! 70 % of what was being sent (at most one cut per 10 ms window, never
//! below `pace_min_rate`); then 10 % faster per window without a `Nak`,
//! until unpaced again. A publisher below its receivers' capacity is never
//! slowed; one above it settles near that capacity, and what it cannot
//! send yet waits in the sender (the driver stops taking publishes while
//! too much waits, so `publish` waits instead of anything being dropped).
//!
//! Pure: time is passed in.

use std::time::{Duration, Instant};

/// Length of a measurement and adjustment window.
pub const WINDOW: Duration = Duration::from_millis(10);
/// Bytes that may go out at once when paced (one GSO batch).
const BURST: f64 = 64.0 * 1024.0;
/// Rate kept after a loss.
const CUT: f64 = 0.7;
/// Growth per window without loss.
const RAISE: f64 = 1.1;
/// Past this the sender is unpaced again (bytes/s).
const UNPACED_ABOVE: f64 = 4e9;

/// The pacing state of one sender.
#[derive(Debug)]
pub struct Pace {
    min_rate: f64,
    /// Bytes per second; `None` while unpaced.
    rate: Option<f64>,
    tokens: f64,
    tokens_at: Instant,
    last_cut: Option<Instant>,
    last_raise: Instant,
    window_start: Instant,
    window_bytes: u64,
    last_window_rate: f64,
}

impl Pace {
    /// Unpaced; `min_rate` 0 disables pacing altogether.
    pub fn new(min_rate: u64, now: Instant) -> Self {
        Pace {
            min_rate: min_rate as f64,
            rate: None,
            tokens: BURST,
            tokens_at: now,
            last_cut: None,
            last_raise: now,
            window_start: now,
            window_bytes: 0,
            last_window_rate: 0.0,
        }
    }

    #[cfg(test)]
    /// The current rate in bytes/s, `None` while unpaced.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    fn measured(&self, now: Instant) -> f64 {
        let elapsed = now
            .saturating_duration_since(self.window_start)
            .as_secs_f64()
            .max(1e-3);
        self.last_window_rate
            .max(self.window_bytes as f64 / elapsed)
    }

    /// A receiver lost something of ours (a `Nak` arrived).
    pub fn on_loss(&mut self, now: Instant) {
        if self.min_rate <= 0.0 || self.last_cut.is_some_and(|t| now < t + WINDOW) {
            return;
        }
        let base = self.rate.unwrap_or_else(|| self.measured(now));
        self.rate = Some((base * CUT).max(self.min_rate));
        self.tokens = self.tokens.min(BURST);
        self.tokens_at = now;
        self.last_cut = Some(now);
        self.last_raise = now;
    }

    /// `Ok` if `bytes` may go out now, else when they may.
    pub fn check(&mut self, now: Instant, bytes: usize) -> Result<(), Instant> {
        let Some(mut rate) = self.rate else {
            return Ok(());
        };
        // (Stops once unpaced: after a long quiet spell this is a few
        // steps, not one per window since the cut.)
        while now >= self.last_raise + WINDOW && rate <= UNPACED_ABOVE {
            rate *= RAISE;
            self.last_raise += WINDOW;
        }
        if rate > UNPACED_ABOVE {
            self.rate = None;
            return Ok(());
        }
        self.rate = Some(rate);
        let elapsed = now.saturating_duration_since(self.tokens_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(BURST);
        self.tokens_at = now;
        if self.tokens >= bytes as f64 {
            return Ok(());
        }
        // Rounded up to a whole microsecond, so that the bucket has refilled
        // when the timer fires.
        let wait_us = ((bytes as f64 - self.tokens) / rate * 1e6).ceil().max(1.0);
        Err(now + Duration::from_micros(wait_us as u64))
    }

    /// `bytes` went out.
    pub fn on_sent(&mut self, now: Instant, bytes: usize) {
        if now >= self.window_start + WINDOW {
            let elapsed = (now - self.window_start).as_secs_f64();
            self.last_window_rate = self.window_bytes as f64 / elapsed;
            self.window_start = now;
            self.window_bytes = 0;
        }
        self.window_bytes += bytes as u64;
        if self.rate.is_some() {
            self.tokens -= bytes as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Sends 1200-byte datagrams as fast as the pacer allows between `from`
    /// and `to` (1 µs steps); returns the bytes sent.
    fn blast(p: &mut Pace, from: Instant, to: Instant) -> u64 {
        let mut t = from;
        let mut sent = 0;
        while t < to {
            match p.check(t, 1200) {
                Ok(()) => {
                    p.on_sent(t, 1200);
                    sent += 1200;
                }
                Err(at) => {
                    assert!(at > t, "a wait in the future");
                    t = at;
                }
            }
        }
        sent
    }

    #[test]
    fn unpaced_until_a_loss_then_cut_then_raised_back() {
        let t0 = Instant::now();
        let mut p = Pace::new(1 << 20, t0);
        // 120 MB/s for 20 ms: never held back.
        for i in 0..2000u32 {
            let t = t0 + Duration::from_micros(u64::from(i) * 10);
            assert!(p.check(t, 1200).is_ok());
            p.on_sent(t, 1200);
        }
        let t1 = t0 + 20 * MS;
        p.on_loss(t1);
        let rate = p.rate().expect("paced after a loss");
        assert!((70e6..100e6).contains(&rate), "70 % of ~120 MB/s: {rate}");
        // A second Nak within the window does not cut again.
        p.on_loss(t1 + MS);
        assert_eq!(p.rate(), Some(rate));
        // Over the next 10 ms at most the rate (plus one burst) goes out.
        let sent = blast(&mut p, t1 + MS, t1 + 11 * MS) as f64;
        assert!(
            sent <= rate * 0.011 + BURST + 1200.0,
            "{sent} bytes at {rate} B/s"
        );
        assert!(sent >= rate * 0.009, "paced, not stopped: {sent}");
        // Without loss the rate climbs back to unpaced.
        let later = t1 + Duration::from_secs(2);
        assert!(p.check(later, 1200).is_ok());
        assert_eq!(p.rate(), None);
    }

    #[test]
    fn never_below_the_floor_and_off_when_disabled() {
        let t0 = Instant::now();
        let mut p = Pace::new(1 << 20, t0);
        for i in 0..50 {
            p.on_loss(t0 + WINDOW * i);
        }
        assert!(p.rate().is_some_and(|r| r >= f64::from(1 << 20)));
        let mut off = Pace::new(0, t0);
        off.on_loss(t0);
        assert_eq!(off.rate(), None);
    }
}
