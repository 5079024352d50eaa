//! The node's timers in one table (as quinn-proto's `TimerTable`): each
//! thing the core waits for is a [`Timer`], set to an instant or stopped,
//! and [`TimerTable::next`] is the earliest of them. Per-stream gap timers
//! are not here: they live with their streams, ordered in the core's
//! wake-up set, so that a datagram never looks at every stream.

use std::time::Instant;

/// One thing the core waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The next `Hello` while joining.
    Hello,
    /// The next scan of every stream for the silence timeout.
    Sweep,
    /// Pacing lets the held `Data` datagram go.
    Pace,
    /// The next heartbeat (or repeated `Goodbye`) of this node's stream.
    Heartbeat,
    /// A heartbeat answering a `Hello`, after its random delay.
    HelloAnswer,
    /// The repair token bucket allows the next pending repair.
    Repair,
    /// The next periodic position `Report`.
    Report,
    /// Acknowledgements owed go out (after their random delay), coalesced.
    Ack,
    /// A confirmation's next `AckRequest`, or its deadline.
    Confirm,
    /// The next look at members' leases.
    Members,
    /// A `Data` datagram held for coalescing goes (`CoreConfig::coalesce`).
    Coalesce,
}

impl Timer {
    const COUNT: usize = 11;
}

/// When each [`Timer`] fires, if set.
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerTable {
    at: [Option<Instant>; Timer::COUNT],
}

impl TimerTable {
    /// Sets `timer` to fire at `at` (replacing any earlier setting).
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.at[timer as usize] = Some(at);
    }

    /// Stops `timer`.
    pub fn stop(&mut self, timer: Timer) {
        self.at[timer as usize] = None;
    }

    /// When `timer` fires, if set.
    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.at[timer as usize]
    }

    /// True if `timer` is set and due at `now`.
    pub fn is_due(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|t| t <= now)
    }

    /// True if `timer` was due at `now`; it is stopped then.
    pub fn take_due(&mut self, timer: Timer, now: Instant) -> bool {
        let due = self.is_due(timer, now);
        if due {
            self.stop(timer);
        }
        due
    }

    /// The earliest instant any timer fires.
    pub fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_earliest_set_timer_is_next_and_due_ones_are_taken_once() {
        let t0 = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Sweep, t0 + Duration::from_secs(1));
        t.set(Timer::Repair, t0 + Duration::from_millis(5));
        t.set(Timer::Hello, t0 + Duration::from_millis(9));
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(5)));
        assert!(!t.take_due(Timer::Repair, t0));
        assert!(t.take_due(Timer::Repair, t0 + Duration::from_millis(5)));
        assert!(!t.take_due(Timer::Repair, t0 + Duration::from_millis(5)));
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(9)));
        t.stop(Timer::Hello);
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        assert!(t.is_due(Timer::Sweep, t0 + Duration::from_secs(2)));
        assert_eq!(t.get(Timer::Pace), None);
    }
}
