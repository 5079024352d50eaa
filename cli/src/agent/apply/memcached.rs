//! The memcached applier (to be written).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::Applier;
use crate::agent::config::MemcachedConfig;
use crate::agent::feed::Feed;
use crate::agent::metrics::Metrics;

pub fn spawn(cfg: MemcachedConfig, feed: Arc<Feed>, metrics: Arc<Metrics>) -> Applier {
    let _ = (&feed, &metrics);
    Applier {
        name: format!("memcached {}", cfg.url),
        connected: Arc::new(AtomicBool::new(false)),
        task: tokio::spawn(async {}),
    }
}
