//! A timer finer than tokio's: a Linux `timerfd` read through the tokio
//! reactor. tokio's timer wheel counts whole milliseconds (a deadline
//! 50 µs away fires about a millisecond later), and the core has deadlines
//! well under one (a datagram held for coalescing, an acknowledgement's
//! delay, a repair's retry learned from a LAN's round trip). The driver
//! arms this one only for a deadline less than [`FINE`] away; later ones
//! stay with tokio, whose wheel costs no system call to move.
//!
//! Written by hand on `libc` (already a dependency): what is needed is a
//! `timerfd_create` and a `timerfd_settime` in an `AsyncFd`, which the
//! timerfd crates wrap with their own runtime glue or rustix.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// Deadlines nearer than this go to the fine timer.
pub(crate) const FINE: Duration = Duration::from_micros(500);

pub(crate) struct FineTimer {
    fd: AsyncFd<OwnedFd>,
    armed: Option<Instant>,
}

impl FineTimer {
    /// A disarmed timer (on `CLOCK_MONOTONIC`; armed with a wait relative
    /// to now, so that it follows tokio's clock, paused or not).
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain system call; the descriptor is checked, then owned.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the `AsyncFd` owns `fd`, which stays open and the same
        // descriptor until the `AsyncFd` is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(FineTimer { fd, armed: None })
    }

    /// Fires `wait` from now, for the deadline `at` (at once if `wait` is
    /// zero), unless already armed for that very deadline (no system call
    /// then).
    pub fn arm(&mut self, at: Instant, wait: Duration) {
        if self.armed == Some(at) {
            return;
        }
        // A zero `it_value` would disarm: at least a nanosecond.
        let wait = wait.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs().min(i32::MAX as u64) as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: a valid descriptor and a valid `itimerspec`.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc == 0 {
            self.armed = Some(at);
        } else {
            // Left to tokio's timer, a millisecond coarser.
            tracing::debug!(error = %io::Error::last_os_error(), "timerfd_settime failed");
        }
    }

    /// Ready once the armed deadline has passed (never while disarmed);
    /// disarmed then.
    pub async fn fired(&mut self) {
        if self.armed.is_none() {
            return std::future::pending().await;
        }
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return std::future::pending().await;
            };
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into an 8-byte buffer.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
            // (Fired or not, nothing more to read until armed again.)
            guard.clear_ready();
            if n == 8 {
                self.armed = None;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deadline 200 µs away fires after it and, some of the time at
    /// least, before tokio's wheel could (its next millisecond); a
    /// disarmed timer never does.
    #[tokio::test(flavor = "current_thread")]
    async fn fires_at_a_deadline_under_a_millisecond() {
        let mut t = FineTimer::new().expect("timerfd");
        // Disarmed: pending.
        let idle = tokio::time::timeout(Duration::from_millis(5), t.fired()).await;
        assert!(idle.is_err(), "a disarmed timer fired");
        let mut early = 0;
        for _ in 0..50 {
            let now = Instant::now();
            let wait = Duration::from_micros(200);
            t.arm(now + wait, wait);
            tokio::time::timeout(Duration::from_secs(5), t.fired())
                .await
                .expect("armed timer never fired");
            let took = now.elapsed();
            assert!(took >= Duration::from_micros(200), "fired early: {took:?}");
            if took < Duration::from_micros(900) {
                early += 1;
                break;
            }
        }
        // tokio's wheel never fires under a millisecond; a shared machine
        // may stall any one wake-up, not all of them.
        assert!(early >= 1, "none of 50 fired within 900 µs");
    }
}
