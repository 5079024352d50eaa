//! The tokio driver: owns the socket and one protocol core, and moves
//! bytes and time between them. Receive, feed, drain, sleep until the next
//! timeout. No protocol decision is taken here.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::proto::{Delivery, NodeCore, Stats};
use crate::wire::Event;

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
    /// Publish and say which seq it got, and when (for the harness).
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
    pub socket: UdpSocket,
    pub group: SocketAddr,
    pub commands: mpsc::Receiver<Command>,
    pub deliveries: broadcast::Sender<Delivery>,

    pub faults: Option<Arc<dyn FaultInjector>>,
    pub linger: Duration,
    /// Where the driver leaves its last counters when it stops.
    pub final_stats: Arc<Mutex<Option<DriverStats>>>,
    /// Set to true when the driver has stopped, after `final_stats`.
    pub done: watch::Sender<bool>,
}

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
        let mut rx_buf = vec![0u8; crate::wire::MAX_DATAGRAM + 1];
        let mut tx_buf = Vec::with_capacity(2048);
        let mut stats = DriverStats::default();
        let mut linger_end: Option<Instant> = None;
        let mut delayed: Delayed = std::collections::BinaryHeap::new();
        let mut handles_alive = true;
        loop {
            // Timers first, whatever else is busy: a flood of datagrams or
            // of publishes must not hold back heartbeats, Naks or Resets.
            let now = Self::now();
            if self.core.poll_timeout().is_some_and(|w| w <= now) {
                self.core.handle_timeout(now);
                self.drain(&mut tx_buf, &mut stats).await;
            }
            let wake = self.core.poll_timeout().map(Instant::from_std);
            tokio::select! {
                r = self.socket.recv_from(&mut rx_buf) => {
                    match r {
                        Ok((n, _from)) => {
                            self.receive(&rx_buf[..n], &mut delayed, &mut stats);
                        }
                        Err(e) => {
                            stats.recv_errors += 1;
                            tracing::debug!(error = %e, "receive failed");
                        }
                    }
                }
                cmd = self.commands.recv(), if handles_alive => {
                    match cmd {
                        Some(cmd) => {
                            self.command(cmd, &mut stats, &mut linger_end);
                            // Opportunistic batching: whatever else is queued
                            // goes into the same datagrams.
                            for _ in 0..MAX_PUBLISH_BATCH {
                                match self.commands.try_recv() {
                                    Ok(cmd) => self.command(cmd, &mut stats, &mut linger_end),
                                    Err(_) => break,
                                }
                            }
                        }
                        None => {
                            // Every handle is gone: end as if shut down.
                            handles_alive = false;
                            self.command(Command::Shutdown, &mut stats, &mut linger_end);
                        }
                    }
                }
                _ = sleep_until_opt(wake) => {
                    self.core.handle_timeout(Self::now());
                }
                _ = sleep_until_opt(delayed.peek().map(|d| d.0 .0)) => {
                    let now = Instant::now();
                    while delayed.peek().is_some_and(|d| d.0 .0 <= now) {
                        if let Some(std::cmp::Reverse((_, _, bytes))) = delayed.pop() {
                            self.core.handle_datagram(Self::now(), &bytes);
                        }
                    }
                }
                _ = sleep_until_opt(linger_end) => {
                    break;
                }
            }
            self.drain(&mut tx_buf, &mut stats).await;
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

    fn command(&mut self, cmd: Command, stats: &mut DriverStats, linger_end: &mut Option<Instant>) {
        match cmd {
            Command::Publish(event) => self.publish(Self::now(), event),
            Command::PublishAcked(event, ack) => {
                let now = Self::now();
                let _ = ack.send(self.core.publish(now, event).map(|seq| (seq, now)));
            }
            Command::Stats(tx) => {
                stats.protocol = self.core.stats_snapshot();
                let _ = tx.send(stats.clone());
            }
            Command::Shutdown => {
                if linger_end.is_none() {
                    self.core.close(Self::now());
                    *linger_end = Some(Instant::now() + self.linger);
                }
            }
        }
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
    async fn drain(&mut self, tx_buf: &mut Vec<u8>, stats: &mut DriverStats) {
        let now = Self::now();
        while self.core.poll_transmit(now, tx_buf) {
            if self
                .faults
                .as_ref()
                .is_some_and(|f| f.drop_outgoing(tx_buf))
            {
                stats.hook_dropped += 1;
                continue;
            }
            if let Err(e) = self.socket.send_to(tx_buf, self.group).await {
                stats.send_errors += 1;
                tracing::debug!(error = %e, group = %self.group, "send failed");
            }
        }
        while let Some(d) = self.core.poll_delivery() {
            if let Some(f) = &self.faults {
                f.observe(&d);
            }
            // No subscriber is not an error: nobody is caching yet.
            let _ = self.deliveries.send(d);
        }
    }
}

/// Datagrams held back by a [`Verdict::Delay`], earliest first.
type Delayed = std::collections::BinaryHeap<std::cmp::Reverse<(Instant, u64, Vec<u8>)>>;

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
