//! `cachecast`: the command line (send, listen, demo, doctor).

mod args;
mod demo;
mod doctor;
mod listen;
mod send;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use args::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Send(args) => send::run(args).await,
        Command::Listen(args) => listen::run(args).await,
        Command::Doctor(args) => doctor::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cachecast: error: {e}");
            ExitCode::FAILURE
        }
    }
}
