//! Webhooks (to be written): batches of deliveries POSTed to a local
//! application, in order, with retries; a batch given up becomes a `reset`
//! at the head of the next successful POST.

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::config::WebhookConfig;
use super::feed::Feed;
use super::metrics::Metrics;

/// Starts one task per webhook, each reading `feed` from its first item;
/// each ends once the feed is closed and drained (the agent aborts it
/// after its drain time).
pub fn spawn_all(
    cfgs: &[WebhookConfig],
    feed: &Arc<Feed>,
    metrics: &Arc<Metrics>,
) -> Vec<JoinHandle<()>> {
    cfgs.iter()
        .map(|c| {
            let (_c, _f, _m) = (c.clone(), feed.clone(), metrics.clone());
            tokio::spawn(async {})
        })
        .collect()
}
