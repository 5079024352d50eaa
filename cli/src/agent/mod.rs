//! `cachecast agent`: one local daemon per server that joins the cluster
//! once and serves the applications on the host: publish over HTTP,
//! receive over Server-Sent Events and webhooks, and the host's Redis and
//! memcached kept coherent by appliers.
//!
//! Order of a start: config, HTTP listening (503 until joined), join, then
//! the appliers (each flushes once: the agent was not listening while it
//! was down, and a flush before the join would leave what changed in
//! between), then ready. A stop (SIGTERM): refuse publishing, Goodbye, end
//! SSE streams with a final event, drain webhooks and appliers for at most
//! 5 s, exit 0. SIGHUP (and `POST /v1/keys/reload`) reloads the key file
//! without leaving the group.

pub mod apply;
pub mod collector;
pub mod config;
pub mod feed;
pub mod http;
pub mod metrics;
pub mod sse;
pub mod systemd;
#[cfg(test)]
pub mod testprom;
#[cfg(test)]
pub mod testservers;
pub mod webhook;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Args;

use crate::failure::Failure;
use crate::stop::Stop;
use config::Config;
use feed::{Feed, Item};
use http::AppState;
use metrics::Metrics;

/// How long a stop waits for webhooks and appliers to finish what they hold.
const DRAIN: Duration = Duration::from_secs(5);

/// Run the local agent: HTTP, Server-Sent Events, webhooks, and this
/// host's Redis/memcached kept coherent.
///
/// Applications on this host publish with `POST /v1/invalidate` (with
/// `?confirm=1s`: wait until every live member has the events), receive
/// with `GET /v1/events` (Server-Sent Events, resumable with Last-Event-ID)
/// or webhooks, and the host's Redis and memcached are kept coherent by the
/// agent itself. Watch it with `/metrics`, `/livez`, `/readyz`,
/// `/v1/status`, `/v1/members`. See contrib/agent.toml
/// for every setting (each has a default; CACHECAST_* variables override
/// the file). With a key file ([auth] key_file), SIGHUP or
/// `POST /v1/keys/reload` reloads it without leaving the group.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The configuration file (TOML). Without it: the defaults, with
    /// CACHECAST_* environment variables applied.
    #[arg(long, short = 'c', env = "CACHECAST_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Check the configuration, print the effective one (token hidden) and
    /// exit: 0 if valid, 2 with one error naming the field if not.
    #[arg(long)]
    pub check_config: bool,
}

pub async fn run(args: AgentArgs, stop: &Stop) -> Result<(), Failure> {
    let config = Config::load(args.config.as_deref(), std::env::vars())
        .map_err(|e| Failure::Usage(format!("config: {e}")))?;
    if args.check_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let feed = Feed::new(rand::random(), config.sse.buffer);
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let state = Arc::new(AppState {
        config: config.clone(),
        node: OnceLock::new(),
        feed: feed.clone(),
        metrics: metrics.clone(),
        appliers: OnceLock::new(),
        stopping,
        started: Instant::now(),
        max_datagram: crate::args::body_limit(&config.node_config()),
    });

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (http.listen): {e}", config.http.listen))?;
    let app = http::router(state.clone());
    let mut server_stop = state.stopping.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .await
    });

    stop.arm();
    // SIGHUP reloads the keys (caught from here on: never the end of the
    // agent, with a key file or not).
    let hangup =
        crate::keys::ReloadOnHangup::install().map_err(|e| format!("cannot catch SIGHUP: {e}"))?;
    // Under systemd with WatchdogSec=: pings from this runtime from now on.
    let watchdog = systemd::spawn_watchdog();
    systemd::status("joining the cluster");
    let node_config = config.node_config();
    tracing::info!(
        group = %node_config.group,
        cluster = %node_config.cluster,
        http = %config.http.listen,
        "agent joining"
    );
    let node = tokio::select! {
        r = cachecast::Node::join(node_config) => r.map_err(|e| format!("cannot join: {e}"))?,
        _ = stop.wait() => return Ok(()),
    };
    let sub = node.subscribe();
    let _ = state.node.set(node.clone());
    let reload_metrics = metrics.clone();
    let reloads = hangup.start(node.clone(), move |r| {
        reload_metrics.key_reloaded(r.is_ok())
    });
    let feeder = tokio::spawn(feed_from(sub, feed.clone()));
    let appliers = apply::spawn_all(&config.apply, &feed, &metrics);
    let _ = state.appliers.set(
        appliers
            .iter()
            .map(|a| (a.name.clone(), a.connected.clone()))
            .collect(),
    );
    let webhooks = webhook::spawn_all(&config.webhooks, &feed, &metrics);
    let bridge = config.bridge().map(|(b, n)| {
        tokio::spawn(run_bridge(
            b,
            n,
            state.stopping.clone(),
            metrics.bridge.clone(),
        ))
    });
    tracing::info!(stream = %format_args!("{:016x}", node.stream()), "agent ready");
    systemd::ready();
    systemd::status(&format!(
        "joined cluster {} as stream {:016x}; HTTP on {}",
        config.node.cluster,
        node.stream(),
        config.http.listen
    ));
    println!(
        "{}",
        serde_json::json!({
            "ready": true,
            "http": config.http.listen.to_string(),
            "stream": format!("{:016x}", node.stream()),
            "epoch": format!("{:016x}", feed.epoch()),
        })
    );

    let reason = stop.wait().await;
    tracing::info!(%reason, "agent stopping");
    systemd::stopping();
    let _ = stopping_tx.send(true);
    if let Some(b) = bridge {
        if tokio::time::timeout(DRAIN, b).await.is_err() {
            tracing::warn!("the bridge did not stop within 5 s");
        }
    }
    node.shutdown().await;
    // The subscription ends with the node: the feed closes, and consumers
    // finish what it holds.
    let _ = feeder.await;
    let deadline = tokio::time::Instant::now() + DRAIN;
    for a in appliers {
        if tokio::time::timeout_at(deadline, a.task).await.is_err() {
            tracing::warn!(applier = %a.name, "stopped before applying everything");
        }
    }
    webhook::drain(
        webhooks,
        deadline.saturating_duration_since(tokio::time::Instant::now()),
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    reloads.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    Ok(())
}

/// `[bridge]`: runs the bridge until the agent stops; when it fails (NATS
/// unreachable, the stream refused), logs why and starts it again 5 s later.
async fn run_bridge(
    config: crate::bridge::BridgeConfig,
    node: cachecast::NodeConfig,
    stopping: tokio::sync::watch::Receiver<bool>,
    counts: crate::bridge::Counts,
) {
    loop {
        let mut stopped = stopping.clone();
        let result = crate::bridge::bridge(
            config.clone(),
            node.clone(),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
            counts.clone(),
        )
        .await;
        match result {
            Ok(counts) => {
                tracing::info!(?counts, "bridge stopped");
                return;
            }
            Err(e) => tracing::error!(error = %e, "bridge failed: starting it again in 5 s"),
        }
        let mut stopped = stopping.clone();
        if tokio::time::timeout(Duration::from_secs(5), stopped.wait_for(|s| *s))
            .await
            .is_ok()
        {
            return;
        }
    }
}

/// Copies every delivery of the node into the feed, numbered; closes the
/// feed when the node has stopped.
async fn feed_from(mut sub: cachecast::Subscription, feed: Arc<Feed>) {
    let epoch = feed.epoch();
    let mut items = Vec::new();
    loop {
        let mut next = feed.last() + 1;
        let got = sub
            .recv_each(|d| {
                items.push(Item::from_delivery(epoch, next, d));
                next += 1;
            })
            .await;
        feed.extend(std::mem::take(&mut items));
        if got.is_none() {
            break;
        }
    }
    feed.close();
}
