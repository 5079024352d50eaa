//! The soak's cachecast processes: the publisher (`soak-pub`) and each
//! subscriber (`soak-sub`), this binary again with a hidden subcommand,
//! each one cachecast node on loopback multicast (interface 127.0.0.1,
//! TTL 0), talking to the soak over standard input and output
//! ([`super::lines`]).
//!
//! The publisher joins, says `READY`, waits for `GO`, then publishes
//! `--rate` events per second for `--duration` (never more events, never
//! longer than `--max-time`), and stays up answering `Nak`s until its input
//! ends. A subscriber counts what it is delivered (events, sequence gaps,
//! Resets by kind) and keeps the latency of the current interval in a
//! histogram that each `SAMPLE` sends and empties: its memory does not grow
//! with the length of the run.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cachecast::wire::{EventBatch, EventRef};
use cachecast::{DeliveryRef, Node, NodeConfig};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::lines::read_line;
use super::samples::{encode, histogram, record, Counters, Gaps};
use crate::cachecast_sys::{config, runtime};
use crate::common::{mono_ns, stamp, stamp_of, tighten_timer_slack, Pacer, Plan, Step};
use crate::{parse_duration, Rate};

/// Options of the hidden `soak-pub`.
#[derive(Debug, Clone, Args)]
pub struct SoakPubArgs {
    #[arg(long)]
    pub group: SocketAddr,
    #[arg(long)]
    pub rate: Rate,
    #[arg(long, value_parser = parse_duration)]
    pub duration: Duration,
    /// Bytes per key (at least 16: the timestamp).
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
}

/// Options of the hidden `soak-sub`.
#[derive(Debug, Clone, Args)]
pub struct SoakSubArgs {
    #[arg(long)]
    pub group: SocketAddr,
    #[arg(long)]
    pub name: String,
    /// Leaves after this long whatever happens.
    #[arg(long, value_parser = parse_duration)]
    pub max_time: Duration,
}

/// A publisher's answer to `SAMPLE`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PubSample {
    /// Events published so far.
    pub published: u64,
    /// All published (or its time is up).
    pub done: bool,
}

/// A subscriber's answer to `SAMPLE`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SubSample {
    /// Everything so far.
    pub counts: Counters,
    /// Latency since the last sample, as `(ns, count)` pairs.
    pub hist: Vec<(u64, u64)>,
}

/// A line from the soak.
enum Cmd {
    Go,
    Sample(u64),
}

/// Reads the soak's lines on a thread of its own; the channel closes at
/// the end of input (the soak closed it, or died).
fn commands() -> tokio::sync::mpsc::Receiver<Cmd> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut input = std::io::stdin().lock();
        while let Ok(Some(line)) = read_line(&mut input, 256) {
            let cmd = match line.split_once(' ') {
                None if line == "GO" => Cmd::Go,
                Some(("SAMPLE", id)) => match id.parse() {
                    Ok(id) => Cmd::Sample(id),
                    Err(_) => continue,
                },
                _ => continue,
            };
            if tx.blocking_send(cmd).is_err() {
                break;
            }
        }
    });
    rx
}

/// One line to the soak; a closed pipe (the soak is gone) is not an
/// error here: the end of input follows.
fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
}

fn answer(id: u64, body: &impl Serialize) {
    match serde_json::to_string(body) {
        Ok(json) => say(format_args!("SAMPLE {id} {json}")),
        Err(e) => say(format_args!("ERROR sample: {e}")),
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// `cachecast-bench soak-pub`.
pub fn run_pub(args: SoakPubArgs) -> Result<(), String> {
    if args.key_size < crate::common::MIN_KEY_SIZE || args.key_size > cachecast::wire::MAX_KEY_LEN {
        return Err(format!(
            "--key-size must be 16..={}",
            cachecast::wire::MAX_KEY_LEN
        ));
    }
    tighten_timer_slack();
    runtime().map_err(err)?.block_on(publisher(args))
}

async fn publisher(args: SoakPubArgs) -> Result<(), String> {
    let node = Node::join(NodeConfig {
        deliver_own: false,
        ..config(args.group, "soak-pub", None, None)
    })
    .await
    .map_err(err)?;
    let mut cmds = commands();
    say(format_args!("READY"));
    let mut state = PubSample::default();
    loop {
        match cmds.recv().await {
            Some(Cmd::Go) => break,
            Some(Cmd::Sample(id)) => answer(id, &state),
            None => {
                node.shutdown().await;
                return Ok(());
            }
        }
    }
    let plan = Plan {
        events: (args.rate.0 * args.duration.as_secs_f64()).ceil() as u64,
        rate: Some(args.rate.0),
        key_size: args.key_size,
        keys_per_event: 1,
        // Behind schedule (a busy machine), it catches up for a tenth
        // longer at most.
        max_time: args.duration + args.duration / 10,
    };
    let pacer = Pacer::new(&plan);
    let mut key = vec![0u8; args.key_size];
    let mut batch = EventBatch::new();
    let mut input_open = true;
    loop {
        loop {
            match cmds.try_recv() {
                Ok(Cmd::Sample(id)) => answer(id, &state),
                Ok(Cmd::Go) => {}
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    input_open = false;
                    break;
                }
            }
        }
        if !input_open {
            break;
        }
        let n = match pacer.step(&plan, state.published, 1024) {
            Step::Done => break,
            Step::Wait => {
                // Let the driver send what was published, then sleep until
                // the next event is due.
                tokio::task::yield_now().await;
                pacer.wait_for(state.published);
                continue;
            }
            Step::Publish(n) => n,
        };
        for _ in 0..n {
            stamp(&mut key, mono_ns());
            // Hex digits and `k`: always ASCII.
            let text = std::str::from_utf8(&key).unwrap_or_default();
            batch.invalidate(&[text]).map_err(err)?;
        }
        node.publish_batch(&mut batch).await.map_err(err)?;
        state.published += n;
    }
    state.done = true;
    // Up until the end of input: repairs are still asked for.
    while let Some(cmd) = cmds.recv().await {
        if let Cmd::Sample(id) = cmd {
            answer(id, &state);
        }
    }
    node.shutdown().await;
    Ok(())
}

/// What a subscriber keeps.
struct Receiver {
    counts: Counters,
    gaps: Gaps,
    hist: hdrhistogram::Histogram<u64>,
}

impl Receiver {
    fn on(&mut self, d: DeliveryRef<'_>, now: &mut Option<u64>) {
        match d {
            DeliveryRef::Event {
                stream, seq, event, ..
            } => {
                self.counts.delivered += 1;
                self.gaps.see(stream, seq);
                if let EventRef::Invalidate { mut keys } = event {
                    if let Some(ts) = keys.next().and_then(|k| stamp_of(k.as_bytes())) {
                        let now = *now.get_or_insert_with(mono_ns);
                        record(&mut self.hist, now.saturating_sub(ts));
                    }
                }
            }
            DeliveryRef::Reset { reason } => self.counts.reset(reason.kind()),
        }
    }
}

/// `cachecast-bench soak-sub`.
pub fn run_sub(args: SoakSubArgs) -> Result<(), String> {
    let rt = runtime().map_err(err)?;
    // A spawned task: woken by the driver, it runs as soon as the driver
    // yields (see `cachecast_sys::subscribe`).
    rt.block_on(async move { tokio::spawn(subscriber(args)).await.map_err(err)? })
}

async fn subscriber(args: SoakSubArgs) -> Result<(), String> {
    let node = Node::join(NodeConfig {
        receive_only: true,
        ..config(args.group, &args.name, None, None)
    })
    .await
    .map_err(err)?;
    let mut sub = node.subscribe();
    let mut cmds = commands();
    let mut rx = Receiver {
        counts: Counters::default(),
        gaps: Gaps::default(),
        hist: histogram(),
    };
    let end = tokio::time::Instant::from_std(Instant::now() + args.max_time);
    say(format_args!("READY"));
    enum Wake {
        Cmd(Option<Cmd>),
        Delivered(Option<usize>),
        TimeUp,
    }
    loop {
        // One clock reading per wake-up.
        let mut now = None;
        let wake = tokio::select! {
            biased;
            c = cmds.recv() => Wake::Cmd(c),
            n = sub.recv_each(|d| rx.on(d, &mut now)) => Wake::Delivered(n),
            () = tokio::time::sleep_until(end) => Wake::TimeUp,
        };
        match wake {
            Wake::Cmd(Some(Cmd::Sample(id))) => {
                rx.counts.lost = rx.gaps.lost;
                rx.counts.repaired = node.stats().await.protocol.events_repaired;
                answer(
                    id,
                    &SubSample {
                        counts: rx.counts.clone(),
                        hist: encode(&rx.hist),
                    },
                );
                rx.hist.reset();
            }
            Wake::Cmd(Some(Cmd::Go)) | Wake::Delivered(Some(_)) => {}
            Wake::Cmd(None) | Wake::Delivered(None) | Wake::TimeUp => break,
        }
    }
    node.shutdown().await;
    Ok(())
}
