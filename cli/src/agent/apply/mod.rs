//! Appliers: the agent applies every delivery to the host's cache servers
//! itself (Redis, memcached), so that an application caching there needs no
//! code at all.

pub mod memcached;
pub mod redis;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::config::ApplySection;
use super::feed::Feed;
use super::metrics::Metrics;

/// A running applier.
pub struct Applier {
    /// `redis` or `memcached`, and its server, for logs and `/readyz`.
    pub name: String,
    /// True while its server is connected and it has flushed as needed
    /// (`/readyz` waits for every applier).
    pub connected: Arc<AtomicBool>,
    /// Ends once the feed is closed and everything in it applied (or the
    /// task is aborted).
    pub task: JoinHandle<()>,
}

/// Starts one applier per configured server, each reading `feed` from its
/// first item.
pub fn spawn_all(cfg: &ApplySection, feed: &Arc<Feed>, metrics: &Arc<Metrics>) -> Vec<Applier> {
    let mut all = Vec::new();
    for r in &cfg.redis {
        all.push(redis::spawn(r.clone(), feed.clone(), metrics.clone()));
    }
    for m in &cfg.memcached {
        all.push(memcached::spawn(m.clone(), feed.clone(), metrics.clone()));
    }
    all
}
