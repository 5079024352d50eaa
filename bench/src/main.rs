//! `cachecast-bench`: the benchmark binary (unpublished). Run it through
//! `scripts/bench.sh`; `cachecast-bench --help` lists every option.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cachecast_bench::agent::AgentArgs;
use cachecast_bench::confirm::ConfirmArgs;
use cachecast_bench::forged::ForgedArgs;
use cachecast_bench::{BenchArgs, SubArgs};

/// Measure cachecast against raw UDP multicast (and Redis / NATS) on this
/// host: flat-out throughput, latency at a fixed rate, a rate sweep, and
/// a subscriber's memory with many streams.
///
/// Everything stays on this host: multicast on interface 127.0.0.1 with
/// TTL 0, brokers on 127.0.0.1. Prints a progress line on standard error
/// and a table at the end (--json for machines). scripts/bench.sh --peers
/// starts Redis and NATS and passes --redis / --nats.
#[derive(Debug, Parser)]
#[command(
    name = "cachecast-bench",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The `cachecast agent` daemon through its HTTP API: publish
    /// throughput, end to end between two agents (SSE, Redis), memory and
    /// CPU (scripts/bench.sh agent).
    Agent(AgentArgs),
    /// Two sites joined by two `cachecast bridge` processes through a
    /// NATS server with JetStream (--nats): publish in A → delivered in B
    /// at 1,000 events/s (p50 / p99), and the bridges' throughput limit
    /// (scripts/bench.sh bridge).
    Bridge(cachecast_bench::bridge::BridgeArgs),
    /// Confirmed publish on loopback: publish → confirmed by every member
    /// at a fixed rate and flat out, side by side with unconfirmed publish
    /// (scripts/bench.sh confirm).
    Confirm(ConfirmArgs),
    /// The cost of rejecting forged datagrams: a listener requiring keys
    /// receives real events, then real events and --rate forged
    /// datagrams per second; its CPU per forged datagram, and that it
    /// keeps delivering with no Reset (scripts/bench.sh auth).
    Forged(ForgedArgs),
    /// cachecast beside the reliable-multicast references, ZeroMQ over
    /// OpenPGM (epgm://) and over NORM (norm://), on a LAN of network
    /// namespaces: flat out, and with receive loss at one subscriber
    /// (scripts/bench.sh reliable makes the LAN and runs it).
    Reliable(cachecast_bench::reliable::ReliableArgs),
    /// A long run at a steady rate (50 k events/s, 1 publisher → 3
    /// subscriber processes, and POST on agent A → SSE on agent B
    /// alongside), sampled every --sample: RSS and CPU of every process,
    /// delivered, lost, Resets, p50 / p99; targets: RSS flat within 10 %
    /// after the first minute, zero Resets, nothing lost (scripts/bench.sh
    /// soak).
    Soak(cachecast_bench::soak::SoakArgs),
    /// The soak's publisher process (internal).
    #[command(hide = true)]
    SoakPub(cachecast_bench::soak::nodes::SoakPubArgs),
    /// A soak subscriber process (internal).
    #[command(hide = true)]
    SoakSub(cachecast_bench::soak::nodes::SoakSubArgs),
    /// One subscriber process of the bench (internal).
    #[command(hide = true)]
    Sub(SubArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Sub(args)) => cachecast_bench::run_sub(args),
        Some(Command::Soak(args)) => {
            tokio::task::spawn_blocking(move || cachecast_bench::soak::run(args))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        }
        // Their own runtimes, on threads of their own.
        Some(Command::SoakPub(args)) => {
            std::thread::spawn(move || cachecast_bench::soak::nodes::run_pub(args))
                .join()
                .unwrap_or_else(|_| Err("the soak publisher panicked".into()))
        }
        Some(Command::SoakSub(args)) => {
            std::thread::spawn(move || cachecast_bench::soak::nodes::run_sub(args))
                .join()
                .unwrap_or_else(|_| Err("a soak subscriber panicked".into()))
        }
        Some(Command::Agent(args)) => {
            tokio::task::spawn_blocking(move || cachecast_bench::agent::run(args))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        }
        Some(Command::Bridge(args)) => {
            tokio::task::spawn_blocking(move || cachecast_bench::bridge::run(args))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        }
        Some(Command::Confirm(args)) => {
            tokio::task::spawn_blocking(move || cachecast_bench::confirm::run(args))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        }
        Some(Command::Reliable(args)) => {
            tokio::task::spawn_blocking(move || cachecast_bench::reliable::run(args))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        }
        Some(Command::Forged(args)) => {
            tokio::task::spawn_blocking(move || cachecast_bench::forged::run(args))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        }
        None => cachecast_bench::run(cli.bench)
            .await
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cachecast-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}
