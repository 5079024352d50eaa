//! The tokio driver: owns the socket and one protocol core, and moves
//! bytes and time between them. Receive, feed, drain, sleep until the next
//! timeout. No protocol decision is taken here.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::batch::{BatchSocket, RecvBuffers, SendBatch};
use super::hub::Hub;
use tokio::time::Instant;

use crate::proto::{Delivery, NodeCore, Output, Stats};
use crate::wire::{Event, Events};

/// What a [`FaultInjector`] does with a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the protocol.
    Deliver,
    /// Lose it.
    Drop,
    /// Hand it to the protocol twice.
    Duplicate,
    /// Hand it to the protocol this much later (reordering it).
    Delay(Duration),
}

/// Fault injection at the socket, for tests (see [`crate::harness`]).
pub trait FaultInjector: Send + Sync {
    /// Decides the fate of a received datagram.
    fn on_receive(&self, bytes: &[u8]) -> Verdict;
    /// True to lose a datagram this node is about to send.
    fn drop_outgoing(&self, bytes: &[u8]) -> bool;
    /// Sees every delivery the moment the protocol makes it.
    fn observe(&self, _delivery: &Delivery) {}
}

/// Delayed datagrams held by the driver at most; past it they are
/// delivered at once.
const MAX_DELAYED: usize = 4096;

/// What the [`crate::node::Node`] handle asks of the driver.
pub(crate) enum Command {
    Publish(Event),
    /// A batch encoded by the application (`Node::publish_batch`,
    /// `Node::publish_many`).
    PublishEvents(Events),
    /// Publish and say which seq it got, and when (for the harness).
    #[cfg(feature = "test-util")]
    PublishAcked(
        Event,
        oneshot::Sender<Result<(u64, std::time::Instant), crate::proto::PublishError>>,
    ),
    Stats(oneshot::Sender<DriverStats>),
    Shutdown,
}

/// Counters of the protocol plus the driver's own.
#[derive(Debug, Clone, Default)]
pub(crate) struct DriverStats {
    pub protocol: Stats,
    /// Order of delayed datagrams with the same due time.
    pub delayed_seq: u64,
    pub hook_dropped: u64,
    pub send_errors: u64,
    pub recv_errors: u64,
}

pub(crate) struct Driver {
    pub core: NodeCore,
    pub socket: BatchSocket,
    pub group: SocketAddr,
    pub commands: mpsc::Receiver<Command>,
    pub deliveries: Arc<Hub>,

    pub faults: Option<Arc<dyn FaultInjector>>,
    pub linger: Duration,
    /// Where the driver leaves its last counters when it stops.
    pub final_stats: Arc<Mutex<Option<DriverStats>>>,
    /// Set to true when the driver has stopped, after `final_stats`.
    pub done: watch::Sender<bool>,
    /// Set by a simulated crash (`Node::crash`) before the task is aborted:
    /// from then on nothing is sent, even before the abort takes effect.
    pub crashed: Arc<std::sync::atomic::AtomicBool>,
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

    /// Runs until shut down (or every handle is dropped), then says
    /// `Goodbye` and lingers to answer late requests.
    pub async fn run(mut self) {
        let mut rx = RecvBuffers::new();
        let mut tx_buf = Vec::with_capacity(2048);
        let mut tx = SendBatch::new();
        let mut stats = DriverStats::default();
        let mut linger_end: Option<Instant> = None;
        let mut flush_deadline: Option<Instant> = None;
        let mut delayed: Delayed = std::collections::BinaryHeap::new();
        let mut handles_alive = true;
        let mut paused_at: Option<Instant> = None;
        let mut gave_up = false;
        let (mut wake, mut delay_due, mut linger, mut pause_timer) =
            (Alarm::new(), Alarm::new(), Alarm::new(), Alarm::new());
        loop {
            // Timers first, whatever else is busy: a flood of datagrams or
            // of publishes must not hold back heartbeats, Naks or Resets.
            let now = Self::now();
            if self.core.poll_timeout().is_some_and(|w| w <= now) {
                self.core.handle_timeout(now);
                self.drain(&mut tx_buf, &mut tx, &mut stats).await;
            }
            wake.set(self.core.poll_timeout().map(Instant::from_std));
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
            delay_due.set(delayed.peek().map(|d| d.0 .0));
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
                            for d in rx.datagrams() {
                                self.receive(d, &mut delayed, &mut stats);
                            }
                        }
                        Err(e) => {
                            stats.recv_errors += 1;
                            tracing::debug!(error = %e, "receive failed");
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
                            self.command(Command::Shutdown, Self::now(), &mut stats, &mut linger_end);
                        }
                    }
                }
                _ = wake.fired() => {
                    self.core.handle_timeout(Self::now());
                }
                _ = delay_due.fired() => {
                    let now = Instant::now();
                    while delayed.peek().is_some_and(|d| d.0 .0 <= now) {
                        if let Some(std::cmp::Reverse((_, _, bytes))) = delayed.pop() {
                            self.core.handle_datagram(Self::now(), &bytes);
                        }
                    }
                }
                _ = linger.fired() => {
                    // Paced data (and the Goodbye behind it) may still be
                    // waiting: linger on until it is out (pacing never goes
                    // below `pace_min_rate`), within MAX_FLUSH.
                    let now = Instant::now();
                    if self.core.is_flushed() || now >= *flush_deadline.get_or_insert(now + MAX_FLUSH) {
                        break;
                    }
                    linger_end = Some(now + self.linger);
                }
            }
            self.drain(&mut tx_buf, &mut tx, &mut stats).await;
        }
        stats.protocol = self.core.stats_snapshot();
        *self.final_stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
        self.done.send_replace(true);
    }

    fn publish(&mut self, now: std::time::Instant, event: Event) {
        // The handle checked the event already; a failure here means the
        // stream is closed, and the handle reports that.
        if let Err(e) = self.core.publish(now, event) {
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
                    // Checked by the handle; refused only once closed.
                    if let Err(e) = self.core.publish_encoded(now, &event) {
                        tracing::debug!(error = %e, "publish refused");
                    }
                }
                return events.len();
            }
            #[cfg(feature = "test-util")]
            Command::PublishAcked(event, ack) => {
                let _ = ack.send(self.core.publish(now, event).map(|seq| (seq, now)));
            }
            Command::Stats(tx) => {
                stats.protocol = self.core.stats_snapshot();
                let _ = tx.send(stats.clone());
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

    /// A received datagram, through the fault injector if there is one.
    fn receive(&mut self, bytes: &[u8], delayed: &mut Delayed, stats: &mut DriverStats) {
        let verdict = self
            .faults
            .as_ref()
            .map_or(Verdict::Deliver, |f| f.on_receive(bytes));
        match verdict {
            Verdict::Deliver => self.core.handle_datagram(Self::now(), bytes),
            Verdict::Drop => stats.hook_dropped += 1,
            Verdict::Duplicate => {
                self.core.handle_datagram(Self::now(), bytes);
                self.core.handle_datagram(Self::now(), bytes);
            }
            Verdict::Delay(d) if delayed.len() < MAX_DELAYED => {
                stats.delayed_seq += 1;
                delayed.push(std::cmp::Reverse((
                    Instant::now() + d,
                    stats.delayed_seq,
                    bytes.to_vec(),
                )));
            }
            Verdict::Delay(_) => self.core.handle_datagram(Self::now(), bytes),
        }
    }

    /// Sends everything the core wants sent and hands deliveries out.
    /// Datagrams of one size go out together (GSO), however many the core
    /// produced since the last turn: opportunistic batching all the way to
    /// the kernel, with no timer holding anything back.
    async fn drain(&mut self, tx_buf: &mut Vec<u8>, tx: &mut SendBatch, stats: &mut DriverStats) {
        let now = Self::now();
        let max = self.socket.max_segments();
        while self.core.poll_transmit(now, tx_buf) {
            if self
                .faults
                .as_ref()
                .is_some_and(|f| f.drop_outgoing(tx_buf))
            {
                stats.hook_dropped += 1;
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
        if let Some(f) = &self.faults {
            // The fault injector sees every delivery, one at a time.
            while let Some(d) = self.core.poll_delivery() {
                f.observe(&d);
                batch.push(Output::One(d));
            }
        }
        while let Some(o) = self.core.poll_output() {
            batch.push(o);
        }
        self.deliveries.push(batch);
    }
}

impl Driver {
    async fn flush(&mut self, tx: &mut SendBatch, stats: &mut DriverStats) {
        if self.crashed.load(std::sync::atomic::Ordering::SeqCst) {
            tx.clear();
            return;
        }
        if let Err(e) = self.socket.send(self.group, tx).await {
            stats.send_errors += 1;
            tracing::debug!(error = %e, group = %self.group, "send failed");
        }
    }
}

impl Drop for Driver {
    /// However the driver ends (stopped, or aborted by a crash), its
    /// subscriptions end after what they have not read yet.
    fn drop(&mut self) {
        self.deliveries.close();
    }
}

/// Datagrams held back by a [`Verdict::Delay`], earliest first.
type Delayed = std::collections::BinaryHeap<std::cmp::Reverse<(Instant, u64, Vec<u8>)>>;

/// A timer kept across loop turns: setting it to the deadline it already
/// has, or to a later one, touches no timer wheel (tokio only moves an
/// entry when it fires or comes earlier). A fresh `sleep_until` each turn
/// registered and removed a wheel entry for every datagram.
struct Alarm {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    at: Option<Instant>,
}

impl Alarm {
    fn new() -> Self {
        Alarm {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            at: None,
        }
    }

    /// Arms the alarm for `at`, or disarms it (`None`).
    fn set(&mut self, at: Option<Instant>) {
        if let Some(t) = at {
            if self.at != Some(t) {
                self.sleep.as_mut().reset(t);
            }
        }
        self.at = at;
    }

    /// Ready once the armed deadline has passed; never while disarmed.
    async fn fired(&mut self) {
        match self.at {
            Some(_) => {
                self.sleep.as_mut().await;
                self.at = None;
            }
            None => std::future::pending().await,
        }
    }
}
