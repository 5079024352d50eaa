use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cachecast::cli::{self, Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => cli::demo::run(args).await,
        Command::Send(args) => cli::send::run(args).await,
        Command::Listen(args) => cli::listen::run(args).await,
        Command::Doctor(args) => cli::doctor::run(args).await,
        Command::Bench(args) => cli::bench::run(args).await.map_err(|e| e.to_string()),
        Command::BenchSub(args) => cli::bench::run_sub(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cachecast: error: {e}");
            ExitCode::FAILURE
        }
    }
}
