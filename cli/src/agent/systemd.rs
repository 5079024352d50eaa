//! Telling systemd how the agent is doing (`Type=notify`, the `sd-notify`
//! crate): `READY=1` once the node has joined, `STOPPING=1` at SIGTERM, a
//! `STATUS=` line, and watchdog pings when the unit sets `WatchdogSec=`.
//!
//! Every function is a no-op when `NOTIFY_SOCKET` is unset (not started
//! by systemd) and never fails the agent: a notification that cannot be
//! sent is logged and dropped. Nothing here reads or writes anything but
//! those environment variables and the notify socket.
//!
//! This file is also compiled into the test binary `cli/tests/systemd.rs`,
//! which owns its process environment: keep it free of other agent modules.

use std::time::Duration;

use sd_notify::NotifyState;

/// Sends `states` to the service manager, if there is one.
fn notify(states: &[NotifyState]) {
    // unset_env = false: the variable stays for the next notification.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// `READY=1`: the agent is up (call it once the node has joined).
pub fn ready() {
    notify(&[NotifyState::Ready]);
}

/// `STOPPING=1`: shutdown began (at SIGTERM).
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// `STATUS=<text>`, shown by `systemctl status`. Line breaks become
/// spaces (each line of a notification is one assignment) and the text is
/// cut at 200 bytes.
pub fn status(text: &str) {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > 200 {
        let mut end = 200;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    notify(&[NotifyState::Status(&line)]);
}

/// The watchdog ping interval the service manager asked for: half of
/// `WATCHDOG_USEC` when `WATCHDOG_PID` is this process (as
/// `sd_watchdog_enabled(3)` says), at least 1 ms; `None` when no watchdog
/// is set.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Starts pinging the watchdog (`WATCHDOG=1`) at half the interval the
/// service manager set, on a task of the current tokio runtime, so that a
/// stalled runtime stops the pings and systemd restarts the agent. `None`
/// (nothing started) when no watchdog is set. Abort the task to stop.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let every = watchdog_interval()?;
    tracing::debug!(?every, "systemd watchdog: pinging");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        // Never faster than asked, even after a stall.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            notify(&[NotifyState::Watchdog]);
        }
    }))
}
