//! `cachecast`: the command line (send, listen, members, demo, doctor,
//! agent, bridge, keygen).

mod agent;
mod args;
mod bounded;
mod bridge;
mod confirm;
mod demo;
mod doctor;
mod failure;
mod keys;
mod listen;
mod logs;
mod members;
mod send;
mod stop;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
use failure::Failure;
use stop::Stop;

/// jemalloc, not the system's malloc: the agent's feed holds 65,536
/// deliveries whose sizes creep up as their ids and seqs gain digits, and
/// glibc's malloc did not reuse the smaller blocks they freed (the soak's
/// agents grew 45 %, 43 to 62 MiB, while the feed turned over once after
/// id 100,000, then stayed there). jemalloc keeps them flat, and lower
/// (41 MiB, with each item's JSON boxed to its length); mimalloc kept
/// them flat at 65 MiB.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // First, so that a parent that ends later is noticed (--exit-with-parent).
    let parent = stop::parent_pid();
    let cli = Cli::parse_from(args::join_optional_values(std::env::args_os()));
    logs::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(Failure::Failed(format!("cannot start the runtime: {e}"))),
    };
    match runtime.block_on(run(cli.command, parent)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => fail(f),
    }
}

async fn run(command: Command, parent: libc::pid_t) -> Result<(), Failure> {
    // Before anything joins: a SIGTERM from now on is a clean stop.
    let stop = Stop::install().map_err(|e| format!("cannot catch SIGINT/SIGTERM: {e}"))?;
    match command {
        Command::Demo(args) => demo::run(args, &stop).await,
        Command::Send(args) => send::run(args, &stop).await,
        Command::Listen(args) => listen::run(args, &stop, parent).await,
        Command::Members(args) => members::run(args, &stop).await,
        // No node: a signal ends it at once (its probe's Goodbye is sent
        // right after the Hello).
        Command::Doctor(args) => doctor::run(args).await,
        Command::Agent(args) => agent::run(args, &stop).await,
        Command::Bridge(args) => bridge::run(args, &stop).await,
        // Files only: no node, nothing to clean up at a signal.
        Command::Keygen(args) => keys::run(args),
    }
}

fn fail(f: Failure) -> ExitCode {
    eprintln!("cachecast: error: {f}");
    ExitCode::from(f.exit_code())
}
