//! The tokio driver: owns the socket and one protocol core, and moves
//! bytes and time between them. Receive, feed, drain, sleep until the next
//! timeout. No protocol decision is taken here.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::batch::{BatchSocket, RecvBuffers, SendBatch};
use super::fine_timer::{FineTimer, FINE};
use super::hub::Hub;
use tokio::time::Instant;

use crate::proto::{NodeCore, Stats};
use crate::wire::{Event, Events};

/// The driver's test hooks. With the feature `test-util`, the test kit's
/// tap (faults on the datagrams the node receives and sends, a crash
/// switch, a record of what it publishes and of when it produced what it
/// hands its subscriptions), set only through the test kit; without it,
/// nothing.
#[derive(Default)]
pub(crate) struct Hooks {
    #[cfg(feature = "test-util")]
    pub tap: Option<crate::testkit::DriverTap>,
}

/// What the [`crate::node::Node`] handle asks of the driver.
pub(crate) enum Command {
    Publish(Event),
    /// A batch encoded by the application (`Node::publish_batch`,
    /// `Node::publish_many`).
    PublishEvents(Events),
    Stats(oneshot::Sender<DriverStats>),
    Streams(oneshot::Sender<Vec<crate::proto::StreamState>>),
    /// Await confirmation of these seqs of the node's stream.
    Confirm {
        seqs: std::ops::Range<u64>,
        timeout: Duration,
        reply: oneshot::Sender<crate::proto::ConfirmReport>,
    },
    Members(oneshot::Sender<Vec<crate::proto::Member>>),
    Staleness(oneshot::Sender<crate::proto::Staleness>),
    /// New keys (a reload); answers the key ids now held.
    SetKeyring(
        crate::wire::Keyring,
        oneshot::Sender<Result<Vec<u32>, crate::ConfigError>>,
    ),
    Shutdown,
}

/// Counters of the protocol plus the driver's own.
#[derive(Debug, Clone, Default)]
pub(crate) struct DriverStats {
    pub protocol: Stats,
    pub send_errors: u64,
    pub recv_errors: u64,
}

pub(crate) struct Driver {
    pub core: NodeCore,
    pub socket: BatchSocket,
    /// Multicast only: this node's own socket (see
    /// [`crate::net::socket::open_direct`]): its `Nak`s go out from it, and
    /// repairs meant for it alone come back to it.
    pub direct: Option<BatchSocket>,
    /// The multicast group, unless the transport is unicast only.
    pub group: Option<SocketAddr>,
    /// The peers, with a unicast transport.
    pub peers: Option<super::peers::PeerSet>,
    /// The peers' names' latest answers.
    pub resolved: Option<watch::Receiver<Vec<SocketAddr>>>,
    /// When the peers were last expired.
    pub peers_checked: std::time::Instant,
    pub commands: mpsc::Receiver<Command>,
    /// When the core's wall clock is next corrected.
    pub clock_at: std::time::Instant,
    pub deliveries: Arc<Hub>,
    #[cfg(feature = "test-util")]
    pub hooks: Hooks,
    pub linger: Duration,
    /// Where the driver leaves its last counters when it stops.
    pub final_stats: Arc<Mutex<Option<DriverStats>>>,
    /// Set to true when the driver has stopped, after `final_stats`.
    pub done: watch::Sender<bool>,
    /// Confirmations awaited, by the core's id.
    pub confirms: std::collections::HashMap<u64, oneshot::Sender<crate::proto::ConfirmReport>>,
}

/// How long the driver stops reading for a subscription that does not
/// move (see `run`).
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// After its linger, a closing node still sending paced data keeps going
/// for at most this long (65,536 small events at the slowest pace take
/// well under a second).
const MAX_FLUSH: Duration = Duration::from_secs(10);

/// Publishes at most this many queued events per loop turn, so that
/// receiving never starves behind a flood of publishes.
const MAX_PUBLISH_BATCH: usize = 4096;

impl Driver {
    fn now() -> std::time::Instant {
        Instant::now().into_std()
    }

    /// Tells the test kit's tap that the protocol gets an input at `now`
    /// (it times the deliveries handed out next by the first such).
    #[cfg(feature = "test-util")]
    fn input(&mut self, now: std::time::Instant) {
        if let Some(tap) = self.hooks.tap.as_mut() {
            tap.input(now);
        }
    }

    /// Runs until shut down (or every handle is dropped), then says
    /// `Goodbye` and lingers to answer late requests.
    pub async fn run(mut self) {
        let mut rx = RecvBuffers::new();
        // (Repairs only, and few: two buffers.)
        let mut rx_direct = RecvBuffers::with_buffers(2);
        let mut tx_buf = Vec::with_capacity(2048);
        let mut tx = SendBatch::new();
        let mut stats = DriverStats::default();
        let mut linger_end: Option<Instant> = None;
        let mut flush_deadline: Option<Instant> = None;
        let mut handles_alive = true;
        let mut paused_at: Option<Instant> = None;
        let mut gave_up = false;
        let (mut wake, mut linger, mut pause_timer) = (Alarm::fine(), Alarm::new(), Alarm::new());
        if wake.fine.is_none() {
            // Holding a datagram 50 µs would take a millisecond or two.
            self.core.set_coalesce(Duration::ZERO);
        }
        loop {
            // Timers first, whatever else is busy: a flood of datagrams or
            // of publishes must not hold back heartbeats, Naks or Resets.
            let now = Self::now();
            if self.core.poll_timeout().is_some_and(|w| w <= now) {
                #[cfg(feature = "test-util")]
                self.input(now);
                if now >= self.clock_at {
                    // The wall clock (trailer timestamps, freshness) may
                    // have been stepped since the core counted from it.
                    self.core.set_wall_clock(now, crate::node::unix_ms());
                    self.clock_at = now + Duration::from_secs(10);
                }
                self.core.handle_timeout(now);
                self.drain(&mut tx_buf, &mut tx, &mut stats).await;
            }
            #[allow(unused_mut)] // assigned again only with test-util
            let mut wake_at = self.core.poll_timeout().map(Instant::from_std);
            #[cfg(feature = "test-util")]
            if let Some(due) = self.hooks.tap.as_ref().and_then(|t| t.next_due()) {
                wake_at = Some(wake_at.map_or(due, |w| w.min(due)));
            }
            wake.set(wake_at);
            // Backpressure: while a subscription is far behind, leave
            // datagrams in the socket (the kernel buffers them; what
            // overflows is repaired) rather than drop deliveries. A
            // subscription that does not move for MAX_PAUSE is given up
            // on until it catches up: it will get `Reset { Lagged }`.
            let behind = self.deliveries.wants_pause();
            if !behind {
                paused_at = None;
                gave_up = false;
            }
            let pause = behind && !gave_up;
            pause_timer.set(pause.then(|| *paused_at.get_or_insert_with(Instant::now) + MAX_PAUSE));
            linger.set(linger_end);
            tokio::select! {
                _ = self.deliveries.room(), if pause => {}
                _ = pause_timer.fired(), if pause => {
                    gave_up = true;
                    tracing::debug!("a subscription stopped reading: no longer waiting for it");
                }
                r = self.socket.recv(&mut rx), if !pause => {
                    match r {
                        Ok(()) => {
                            for (from, d) in rx.datagrams() {
                                self.receive(from, d);
                            }
                        }
                        Err(e) => {
                            stats.recv_errors += 1;
                            tracing::debug!(error = %e, "receive failed");
                        }
                    }
                }
                r = recv_direct(self.direct.as_ref(), &mut rx_direct), if !pause && self.direct.is_some() => {
                    match r {
                        Ok(()) => {
                            for (from, d) in rx_direct.datagrams() {
                                self.receive(from, d);
                            }
                        }
                        Err(e) => {
                            stats.recv_errors += 1;
                            tracing::debug!(error = %e, "receive on the direct socket failed");
                        }
                    }
                }
                // While pacing holds too much back, publishes wait (in
                // the channel, then in `publish`): nothing is dropped.
                cmd = self.commands.recv(), if handles_alive && self.core.accepts_publishes() => {
                    match cmd {
                        Some(cmd) => {
                            // Opportunistic batching: whatever else is queued
                            // goes into the same datagrams, up to a budget,
                            // with one clock reading for all of it.
                            let now = Self::now();
                            #[cfg(feature = "test-util")]
                            self.input(now);
                            let mut budget = MAX_PUBLISH_BATCH;
                            let mut next = Some(cmd);
                            while let Some(cmd) = next {
                                budget = budget.saturating_sub(self.command(cmd, now, &mut stats, &mut linger_end));
                                next = if budget > 0 { self.commands.try_recv().ok() } else { None };
                            }
                        }
                        None => {
                            // Every handle is gone: end as if shut down.
                            handles_alive = false;
                            let now = Self::now();
                            #[cfg(feature = "test-util")]
                            self.input(now);
                            self.command(Command::Shutdown, now, &mut stats, &mut linger_end);
                        }
                    }
                }
                _ = wake.fired() => {
                    #[cfg(feature = "test-util")]
                    if let Some(tap) = self.hooks.tap.as_mut() {
                        tap.release(&mut self.core);
                    }
                    let now = Self::now();
                    #[cfg(feature = "test-util")]
                    self.input(now);
                    self.core.handle_timeout(now);
                }
                _ = linger.fired() => {
                    // Paced data (and the Goodbye behind it) may still be
                    // waiting, or the Goodbye not yet repeated a reorder
                    // window after the first: linger on until it is out
                    // (pacing never goes below `pace_min_rate`), within
                    // MAX_FLUSH.
                    let now = Instant::now();
                    if self.core.is_flushed() || now >= *flush_deadline.get_or_insert(now + MAX_FLUSH) {
                        break;
                    }
                    // (At least a millisecond: a zero linger must not spin
                    // while the Goodbye waits to be repeated.)
                    linger_end = Some(now + self.linger.max(Duration::from_millis(1)));
                }
            }
            self.drain(&mut tx_buf, &mut tx, &mut stats).await;
        }
        stats.protocol = self.core.stats_snapshot();
        *self.final_stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
        self.done.send_replace(true);
    }

    fn publish(&mut self, now: std::time::Instant, event: Event) {
        #[cfg(feature = "test-util")]
        let copy = self
            .hooks
            .tap
            .as_ref()
            .filter(|t| t.records())
            .map(|_| event.clone());
        let result = self.core.publish(now, event);
        #[cfg(feature = "test-util")]
        if let (Some(tap), Ok(seq), Some(event)) = (&self.hooks.tap, &result, copy) {
            tap.published(self.core.stream(), *seq, now, event);
        }
        // The handle checked the event already; a failure here means the
        // stream is closed, and the handle reports that.
        if let Err(e) = result {
            tracing::debug!(error = %e, "publish refused");
        }
    }

    /// Carries out one command; returns how many events it published.
    fn command(
        &mut self,
        cmd: Command,
        now: std::time::Instant,
        stats: &mut DriverStats,
        linger_end: &mut Option<Instant>,
    ) -> usize {
        match cmd {
            Command::Publish(event) => self.publish(now, event),
            Command::PublishEvents(events) => {
                for event in events.iter() {
                    let result = self.core.publish_encoded(now, &event);
                    #[cfg(feature = "test-util")]
                    if let (Some(tap), Ok(seq)) = (&self.hooks.tap, &result) {
                        if tap.records() {
                            tap.published(self.core.stream(), *seq, now, event.to_event());
                        }
                    }
                    // Checked by the handle; refused only once closed.
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "publish refused");
                    }
                }
                return events.len();
            }
            Command::Stats(tx) => {
                stats.protocol = self.core.stats_snapshot();
                let _ = tx.send(stats.clone());
            }
            Command::Streams(tx) => {
                let _ = tx.send(self.core.stream_states());
            }
            Command::Confirm {
                seqs,
                timeout,
                reply,
            } => {
                // A huge timeout means "as long as it takes": a day.
                let timeout = timeout.min(Duration::from_secs(86_400));
                let id = self.core.confirm(now, seqs, now + timeout);
                self.confirms.insert(id, reply);
            }
            Command::Members(tx) => {
                let _ = tx.send(self.core.members(now));
            }
            Command::Staleness(tx) => {
                let _ = tx.send(self.core.staleness(now));
            }
            Command::SetKeyring(keyring, tx) => {
                let result = self.core.set_keyring(keyring).map(|()| self.core.key_ids());
                if result.is_ok() {
                    tracing::info!(keys = ?self.core.key_ids(), "keys reloaded");
                }
                let _ = tx.send(result);
            }
            Command::Shutdown => {
                if linger_end.is_none() {
                    self.core.close(now);
                    *linger_end = Some(Instant::now() + self.linger);
                }
            }
        }
        1
    }

    /// A received datagram, to the protocol (through the test kit's
    /// faults, if it set them).
    fn receive(&mut self, from: SocketAddr, bytes: &[u8]) {
        #[cfg(feature = "test-util")]
        let tapped = if let Some(tap) = self.hooks.tap.as_mut() {
            tap.receive(&mut self.core, from, bytes);
            true
        } else {
            false
        };
        #[cfg(not(feature = "test-util"))]
        let tapped = false;
        if !tapped {
            self.core
                .handle_datagram_from(Self::now(), Some(from), bytes);
        }
        // Unicast only: with `both`, every member of the LAN would become a
        // unicast peer too, and get everything twice.
        if let (None, Some(peers)) = (self.group, self.peers.as_mut()) {
            if let Some(a) = self.core.take_accepted_from() {
                peers.heard(a, Self::now());
            }
        }
    }

    /// The peers' names resolved again, and peers silent too long
    /// forgotten (once a second).
    fn update_peers(&mut self, now: std::time::Instant) {
        let Some(peers) = self.peers.as_mut() else {
            return;
        };
        if let Some(rx) = self.resolved.as_mut() {
            if rx.has_changed().unwrap_or(false) {
                let addrs = rx.borrow_and_update().clone();
                peers.set_resolved(addrs, now);
                tracing::debug!(peers = ?peers.destinations(), "peer names resolved again");
            }
        }
        if now.saturating_duration_since(self.peers_checked) >= Duration::from_secs(1) {
            self.peers_checked = now;
            peers.expire(now);
        }
    }

    /// Sends everything the core wants sent and hands deliveries out.
    /// Datagrams of one size go out together (GSO), however many the core
    /// produced since the last turn: opportunistic batching all the way to
    /// the kernel. (Only the core holds data back, and only briefly: pacing
    /// after a `Nak`, and coalescing at high rates, `CoreConfig::coalesce`.)
    async fn drain(&mut self, tx_buf: &mut Vec<u8>, tx: &mut SendBatch, stats: &mut DriverStats) {
        let now = Self::now();
        self.update_peers(now);
        let max = self.socket.max_segments();
        while self.core.poll_transmit(now, tx_buf) {
            #[cfg(feature = "test-util")]
            if self.hooks.tap.as_ref().is_some_and(|t| !t.sending(tx_buf)) {
                continue;
            }
            // Unicast only: a datagram meant for one node (a Nak, for the
            // stream's origin; a repair, for its asker) goes to it alone, if
            // it is a peer (else to every peer: nothing is sent to an
            // address that is not one).
            let to = (self.core.transmit_to()).filter(|to| {
                self.group.is_none() && self.peers.as_ref().is_some_and(|p| p.is_peer(*to))
            });
            // Multicast with a direct socket: a Nak goes to the group from
            // it; a repair meant for one node goes to that node's direct
            // socket (the core checked that the address is the node's).
            if let (true, Some(group)) = (self.direct.is_some(), self.group) {
                let nak = self.core.transmit_is_nak();
                let repair_to = if nak { None } else { self.core.transmit_to() };
                if nak || repair_to.is_some() {
                    #[cfg(feature = "test-util")]
                    if self.hooks.tap.as_ref().is_some_and(|t| t.crashed()) {
                        continue;
                    }
                    if !tx.is_empty() {
                        self.flush(tx, stats).await;
                    }
                    let dest = repair_to.unwrap_or(group);
                    let Some(direct) = self.direct.as_ref() else {
                        continue;
                    };
                    match direct.send_single(dest, tx_buf).await {
                        Ok(()) => self.left(1),
                        Err(e) => {
                            stats.send_errors += 1;
                            tracing::debug!(error = %e, %dest, "send from the direct socket failed");
                        }
                    }
                    continue;
                }
            }
            if let Some(to) = to {
                #[cfg(feature = "test-util")]
                if self.hooks.tap.as_ref().is_some_and(|t| t.crashed()) {
                    continue;
                }
                // What is queued goes first: the order is kept.
                if !tx.is_empty() {
                    self.flush(tx, stats).await;
                }
                match self.socket.send_single(to, tx_buf).await {
                    Ok(()) => self.left(1),
                    Err(e) => {
                        stats.send_errors += 1;
                        tracing::debug!(error = %e, %to, "send to one node failed");
                    }
                }
                continue;
            }
            if !tx.try_push(tx_buf, max) {
                self.flush(tx, stats).await;
                tx.try_push(tx_buf, max);
            }
        }
        if !tx.is_empty() {
            self.flush(tx, stats).await;
        }
        // Everything delivered in this turn goes to the subscriptions as one
        // batch (no subscriber is not an error: nobody is caching yet).
        let mut batch = Vec::new();
        while let Some(o) = self.core.poll_output() {
            batch.push(o);
        }
        #[cfg(feature = "test-util")]
        if let Some(tap) = self.hooks.tap.as_mut() {
            tap.handing(&batch, now);
        }
        self.deliveries.push(batch);
        while let Some((id, report)) = self.core.poll_confirmation() {
            #[cfg(feature = "test-util")]
            if let Some(tap) = self.hooks.tap.as_ref() {
                tap.confirmed(&report);
            }
            if let Some(reply) = self.confirms.remove(&id) {
                let _ = reply.send(report);
            }
        }
    }
}

impl Driver {
    async fn flush(&mut self, tx: &mut SendBatch, stats: &mut DriverStats) {
        #[cfg(feature = "test-util")]
        if self.hooks.tap.as_ref().is_some_and(|t| t.crashed()) {
            tx.clear();
            return;
        }
        if let Some(group) = self.group {
            match self.socket.send_to(group, tx).await {
                Ok(()) => self.left_batch(tx),
                Err(e) => {
                    stats.send_errors += 1;
                    tracing::debug!(error = %e, %group, "send failed");
                }
            }
        }
        if let Some(peers) = &self.peers {
            // Encoded once, sent to each (a GSO batch per peer).
            for &peer in peers.destinations() {
                match self.socket.send_to(peer, tx).await {
                    Ok(()) => self.left_batch(tx),
                    Err(e) => {
                        stats.send_errors += 1;
                        tracing::debug!(error = %e, %peer, "send to a peer failed");
                    }
                }
            }
        }
        tx.clear();
    }

    /// The test kit counts the datagrams that left (`NodeFaults::sent`).
    #[inline]
    fn left(&self, _n: u64) {
        #[cfg(feature = "test-util")]
        if let Some(tap) = self.hooks.tap.as_ref() {
            tap.left(_n);
        }
    }

    #[inline]
    fn left_batch(&self, _tx: &SendBatch) {
        #[cfg(feature = "test-util")]
        self.left(_tx.len() as u64);
    }
}

/// Receives on the direct socket (never called without one).
async fn recv_direct(direct: Option<&BatchSocket>, bufs: &mut RecvBuffers) -> std::io::Result<()> {
    match direct {
        Some(d) => d.recv(bufs).await,
        None => std::future::pending().await,
    }
}

impl Drop for Driver {
    /// However the driver ends (stopped, or aborted by a crash), its
    /// subscriptions end after what they have not read yet.
    fn drop(&mut self) {
        self.deliveries.close();
    }
}

/// A timer kept across loop turns: setting it to the deadline it already
/// has, or to a later one, touches no timer wheel (tokio only moves an
/// entry when it fires or comes earlier). A fresh `sleep_until` each turn
/// registered and removed a wheel entry for every datagram.
///
/// With a [`FineTimer`] (the driver's wake-up alarm), a deadline less than
/// [`FINE`] away is also given to it: tokio's wheel would fire up to a
/// millisecond late.
struct Alarm {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    at: Option<Instant>,
    fine: Option<FineTimer>,
}

impl Alarm {
    fn new() -> Self {
        Alarm {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            at: None,
            fine: None,
        }
    }

    /// An alarm that fires on time for deadlines under [`FINE`] away too
    /// (if this system lends it a timerfd; else as [`Alarm::new`]).
    fn fine() -> Self {
        let fine = FineTimer::new()
            .map_err(|e| {
                tracing::warn!(error = %e, "no timerfd: timers round up to a millisecond, no coalescing")
            })
            .ok();
        Alarm {
            fine,
            ..Alarm::new()
        }
    }

    /// Arms the alarm for `at`, or disarms it (`None`).
    fn set(&mut self, at: Option<Instant>) {
        if let Some(t) = at {
            if self.at != Some(t) {
                self.sleep.as_mut().reset(t);
            }
            if let Some(fine) = self.fine.as_mut() {
                // (tokio's clock, which the deadline is on.)
                let now = Instant::now();
                if t < now + FINE {
                    fine.arm(t, t.saturating_duration_since(now));
                }
            }
        }
        self.at = at;
    }

    /// Ready once the armed deadline has passed; never while disarmed.
    async fn fired(&mut self) {
        if self.at.is_none() {
            return std::future::pending().await;
        }
        match self.fine.as_mut() {
            // (A fine timer left armed for an earlier deadline costs one
            // loop turn with nothing due.)
            Some(fine) => tokio::select! {
                _ = self.sleep.as_mut() => {}
                _ = fine.fired() => {}
            },
            None => self.sleep.as_mut().await,
        }
        self.at = None;
    }
}
