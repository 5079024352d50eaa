//! The agent's metrics, in Prometheus text format at `GET /metrics`
//! (prometheus-client): one `cachecast_` prefix, the agent's own (HTTP,
//! SSE, webhooks, appliers), and the node's counters and membership view
//! read at each scrape (collector.rs).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::collector::NodeCollector;
pub use super::collector::NodeSnapshot;

/// Labels of an applier's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ApplierLabels {
    /// `redis` or `memcached`.
    pub kind: String,
    /// The server's address as configured (password left out).
    pub target: String,
}

/// Labels of a webhook's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct WebhookLabels {
    pub url: String,
}

/// Labels of HTTP requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct HttpLabels {
    pub route: String,
    pub status: u16,
}

/// Labels naming a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ReasonLabels {
    pub reason: String,
}

// Label values come from the config (URLs, addresses) and are written as
// given by prometheus-client's derive: escape them here, so that a `"` or a
// newline in a value cannot break the exposition.
impl EncodeLabelSet for ApplierLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> std::fmt::Result {
        encode_labels(e, &[("kind", &self.kind), ("target", &self.target)])
    }
}

impl EncodeLabelSet for WebhookLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> std::fmt::Result {
        encode_labels(e, &[("url", &self.url)])
    }
}

impl EncodeLabelSet for HttpLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> std::fmt::Result {
        encode_labels(
            e,
            &[("route", &self.route), ("status", &self.status.to_string())],
        )
    }
}

impl EncodeLabelSet for ReasonLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> std::fmt::Result {
        encode_labels(e, &[("reason", &self.reason)])
    }
}

/// A label set given as pairs (names are literals of this file; values
/// are escaped).
pub(super) struct Pairs<'a>(pub &'a [(&'a str, &'a str)]);

impl EncodeLabelSet for Pairs<'_> {
    fn encode(&self, e: &mut LabelSetEncoder) -> std::fmt::Result {
        encode_labels(e, self.0)
    }
}

pub(super) fn encode_labels(e: &mut LabelSetEncoder, pairs: &[(&str, &str)]) -> std::fmt::Result {
    for (name, value) in pairs {
        let mut label = e.encode_label();
        let mut key = label.encode_label_key()?;
        key.write_str(name)?;
        let mut v = key.encode_label_value()?;
        for c in value.chars() {
            match c {
                '\\' => v.write_str("\\\\")?,
                '"' => v.write_str("\\\"")?,
                '\n' => v.write_str("\\n")?,
                c => v.write_char(c)?,
            }
        }
        v.finish()?;
    }
    Ok(())
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn confirm_histogram() -> Histogram {
    // 100 µs .. ~26 s (a confirmation waits at most 30 s).
    Histogram::new(exponential_buckets(0.000_1, 2.0, 19))
}

/// Labels of a confirmation's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct OutcomeLabels {
    /// `complete` (every member answered or gone) or `incomplete`
    /// (members pending at the timeout).
    pub outcome: &'static str,
}

impl EncodeLabelSet for OutcomeLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> std::fmt::Result {
        encode_labels(e, &[("outcome", self.outcome)])
    }
}

/// Every metric of the agent. Cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    /// The node's counters and members at the last scrape (read by the
    /// collector).
    node: Arc<Mutex<Option<NodeSnapshot>>>,
    pub http_requests: Family<HttpLabels, Counter>,
    /// Seconds from a `POST /v1/invalidate` arriving to the node taking it.
    pub http_publish_latency: Histogram,
    /// Events accepted over HTTP.
    pub http_events_accepted: Counter,
    /// Seconds a `POST /v1/invalidate?confirm=` waited for its
    /// confirmation, by outcome.
    pub http_confirm_latency: Family<OutcomeLabels, Histogram>,
    pub sse_clients: Gauge,
    pub sse_events_sent: Counter,
    /// `reset`s the agent gave SSE clients of its own (cursor too old,
    /// restarted, client too slow).
    pub sse_resets: Family<ReasonLabels, Counter>,
    pub webhook_backlog: Family<WebhookLabels, Gauge>,
    pub webhook_posts_ok: Family<WebhookLabels, Counter>,
    pub webhook_posts_failed: Family<WebhookLabels, Counter>,
    /// Batches given up (replaced by a `reset`).
    pub webhook_resets: Family<WebhookLabels, Counter>,
    pub applied: Family<ApplierLabels, Counter>,
    pub apply_failed: Family<ApplierLabels, Counter>,
    pub apply_flushes: Family<ApplierLabels, Counter>,
    /// What an applier did not send: custom events, and keys its server
    /// cannot hold under that name (memcached: over 250 bytes, spaces,
    /// control characters).
    pub apply_skipped: Family<ApplierLabels, Counter>,
    /// 1 while the applier's server is reachable.
    pub applier_up: Family<ApplierLabels, Gauge>,
    /// Seconds from the delivery reaching the agent to the cache server
    /// confirming it.
    pub apply_latency: Family<ApplierLabels, Histogram>,
    /// Items in the agent's buffer of deliveries.
    pub feed_buffered: Gauge,
    /// Key reloads (SIGHUP, POST /v1/keys/reload), by outcome (`ok`,
    /// `failed`).
    pub key_reloads: Family<OutcomeLabels, Counter>,
    /// The `[bridge]`'s counts (its own when it runs).
    pub bridge: crate::bridge::Counts,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cachecast");
        let m = Metrics {
            node: Default::default(),
            http_requests: Family::default(),
            http_publish_latency: latency_histogram(),
            http_events_accepted: Counter::default(),
            http_confirm_latency: Family::new_with_constructor(confirm_histogram),
            sse_clients: Gauge::default(),
            sse_events_sent: Counter::default(),
            sse_resets: Family::default(),
            webhook_backlog: Family::default(),
            webhook_posts_ok: Family::default(),
            webhook_posts_failed: Family::default(),
            webhook_resets: Family::default(),
            applied: Family::default(),
            apply_failed: Family::default(),
            apply_flushes: Family::default(),
            apply_skipped: Family::default(),
            applier_up: Family::default(),
            apply_latency: Family::new_with_constructor(latency_histogram),
            feed_buffered: Gauge::default(),
            key_reloads: Family::default(),
            bridge: crate::bridge::Counts::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "http_requests",
            "HTTP requests by route and status",
            m.http_requests.clone(),
        );
        r.register(
            "http_publish_latency_seconds",
            "From a POST /v1/invalidate arriving to the node taking its events",
            m.http_publish_latency.clone(),
        );
        r.register(
            "http_events_accepted",
            "Events accepted over HTTP",
            m.http_events_accepted.clone(),
        );
        r.register(
            "http_confirm_latency_seconds",
            "From publishing the events of a POST /v1/invalidate?confirm= to its confirmation report, by outcome",
            m.http_confirm_latency.clone(),
        );
        r.register(
            "sse_clients",
            "Connected SSE clients",
            m.sse_clients.clone(),
        );
        r.register(
            "sse_events_sent",
            "SSE events sent",
            m.sse_events_sent.clone(),
        );
        r.register(
            "sse_resets",
            "Resets the agent gave SSE clients, by reason",
            m.sse_resets.clone(),
        );
        r.register(
            "webhook_backlog",
            "Deliveries not yet posted, per webhook",
            m.webhook_backlog.clone(),
        );
        r.register(
            "webhook_posts_ok",
            "Batches a webhook accepted",
            m.webhook_posts_ok.clone(),
        );
        r.register(
            "webhook_posts_failed",
            "Failed webhook posts",
            m.webhook_posts_failed.clone(),
        );
        r.register(
            "webhook_resets",
            "Batches given up and replaced by a reset",
            m.webhook_resets.clone(),
        );
        r.register(
            "applier_applied",
            "Deliveries applied to a cache server",
            m.applied.clone(),
        );
        r.register(
            "applier_failed",
            "Failed applies (retried)",
            m.apply_failed.clone(),
        );
        r.register(
            "applier_flushes",
            "Flushes of a cache server",
            m.apply_flushes.clone(),
        );
        r.register(
            "applier_skipped",
            "Custom events and keys the cache server cannot hold, not sent",
            m.apply_skipped.clone(),
        );
        r.register(
            "applier_up",
            "1 while the cache server is reachable",
            m.applier_up.clone(),
        );
        r.register(
            "applier_latency_seconds",
            "From a delivery reaching the agent to the cache server confirming it",
            m.apply_latency.clone(),
        );
        r.register(
            "feed_buffered",
            "Deliveries held for SSE resume",
            m.feed_buffered.clone(),
        );
        r.register(
            "key_reloads",
            "Key file reloads (SIGHUP, POST /v1/keys/reload), by outcome: ok, or failed (the keys in use stayed)",
            m.key_reloads.clone(),
        );
        let b = &m.bridge;
        r.register(
            "bridge_published",
            "Events of this site the [bridge] published to JetStream (acknowledged)",
            b.published.clone(),
        );
        r.register(
            "bridge_injected",
            "Other sites' events the [bridge] injected into this site",
            b.injected.clone(),
        );
        r.register(
            "bridge_clears",
            "ClearAlls the [bridge] injected (a hole in the stream, another site's gap record)",
            b.clears.clone(),
        );
        r.register(
            "bridge_gaps",
            "Gap records the [bridge] published for this site (the other sites clear)",
            b.gaps.clone(),
        );
        r.register(
            "bridge_activations",
            "Times the [bridge] took its site's lease",
            b.activations.clone(),
        );
        r.register(
            "bridge_active",
            "1 while the [bridge] holds its site's lease",
            b.active.clone(),
        );
        for outcome in ["ok", "failed"] {
            // Both at 0 from the start, so that the first failure is seen.
            let _ = m.key_reloads.get_or_create(&OutcomeLabels { outcome });
        }
        r.register_collector(Box::new(NodeCollector::new(m.node.clone())));
        Metrics { registry, ..m }
    }

    /// Counts a key reload by its outcome.
    pub fn key_reloaded(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.key_reloads
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The text exposition, with the node's counters and members as of
    /// `node` (`None` before the join).
    pub fn encode(&self, node: Option<NodeSnapshot>) -> String {
        *self.node.lock().unwrap_or_else(|p| p.into_inner()) = node;
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::agent::testprom::parse;

    #[test]
    fn without_a_node_only_the_agents_metrics_and_build_info() {
        let (samples, _) = parse(&Metrics::new().encode(None));
        assert!(samples
            .keys()
            .any(|k| k.starts_with("cachecast_build_info{")));
        assert!(!samples
            .keys()
            .any(|k| k.starts_with("cachecast_events_published")));
    }
}
