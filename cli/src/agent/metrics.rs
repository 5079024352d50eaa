//! The agent's metrics, in Prometheus text format at `GET /metrics`
//! (prometheus-client): one `cachecast_` prefix, the node's counters read
//! at each scrape, and the agent's own (HTTP, SSE, webhooks, appliers).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use cachecast::NodeStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

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
struct Pairs<'a>(&'a [(&'a str, &'a str)]);

impl EncodeLabelSet for Pairs<'_> {
    fn encode(&self, e: &mut LabelSetEncoder) -> std::fmt::Result {
        encode_labels(e, self.0)
    }
}

fn encode_labels(e: &mut LabelSetEncoder, pairs: &[(&str, &str)]) -> std::fmt::Result {
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

/// Every metric of the agent. Cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    /// The node's counters at the last scrape (read by the collector).
    pub node: Arc<Mutex<Option<NodeStats>>>,
    pub http_requests: Family<HttpLabels, Counter>,
    /// Seconds from a `POST /v1/invalidate` arriving to the node taking it.
    pub http_publish_latency: Histogram,
    /// Events accepted over HTTP.
    pub http_events_accepted: Counter,
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
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cachecast");
        let m = Metrics {
            node: Default::default(),
            http_requests: Family::default(),
            http_publish_latency: latency_histogram(),
            http_events_accepted: Counter::default(),
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
        r.register_collector(Box::new(NodeCollector {
            node: m.node.clone(),
        }));
        Metrics { registry, ..m }
    }

    /// The text exposition, with the node's counters as of `stats`.
    pub fn encode(&self, stats: Option<NodeStats>) -> String {
        *self.node.lock().unwrap_or_else(|p| p.into_inner()) = stats;
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The node's counters, read from the snapshot [`Metrics::encode`] stored
/// at each scrape. Nothing is written before the node has joined (no
/// snapshot): a scrape then has only the agent's own metrics.
#[derive(Debug)]
struct NodeCollector {
    node: Arc<Mutex<Option<NodeStats>>>,
}

/// Reset reasons always exposed (at 0 until one happens), so that
/// `increase(cachecast_resets_total[5m])` sees the first Reset of each
/// reason (`ResetReason::kind`); a reason the library adds appears once it
/// is counted.
const RESET_REASONS: [&str; 7] = [
    "unavailable",
    "retries_exhausted",
    "too_old",
    "too_many_gaps",
    "stream_timed_out",
    "stream_evicted",
    "lagged",
];

/// Upper bounds of `cachecast_repair_time_seconds`: powers of two from
/// 64 µs to 33.5 s. Every power of two is an edge of the library's
/// histogram, so each bucket's count is exact, not interpolated.
const REPAIR_BUCKETS_LOG2_US: std::ops::RangeInclusive<u32> = 6..=25;

/// The node's monotonic counters: metric name (without prefix and
/// `_total`), help, value. One entry per counter of [`cachecast::Stats`]
/// and [`NodeStats`] (a test checks none is missing).
fn node_counters(n: &NodeStats) -> [(&'static str, &'static str, u64); 34] {
    let s = &n.protocol;
    [
        (
            "datagrams_received",
            "Datagrams handed to the protocol by the driver",
            s.datagrams_received,
        ),
        (
            "datagrams_sent",
            "Datagrams the protocol produced for sending",
            s.datagrams_sent,
        ),
        (
            "events_published",
            "Events this node published",
            s.events_published,
        ),
        (
            "events_sent",
            "Events that left in Data datagrams",
            s.events_sent,
        ),
        ("data_sent", "Data datagrams sent", s.data_sent),
        (
            "data_paced",
            "Times pacing held a Data datagram back",
            s.data_paced,
        ),
        ("heartbeats_sent", "Heartbeats sent", s.heartbeats_sent),
        ("hellos_sent", "Hellos sent while joining", s.hellos_sent),
        (
            "events_delivered",
            "Events of other streams delivered",
            s.events_delivered,
        ),
        (
            "own_delivered",
            "This node's own events delivered to its own subscribers",
            s.own_delivered,
        ),
        (
            "receive_only_heard",
            "Heartbeats and Goodbyes of receive-only nodes",
            s.receive_only_heard,
        ),
        (
            "duplicates",
            "Events received twice and dropped",
            s.duplicates,
        ),
        (
            "reordered",
            "Events that arrived out of order and filled a gap before it was acted on",
            s.reordered,
        ),
        (
            "before_start",
            "Events below a stream's starting point (sent before this node joined)",
            s.before_start,
        ),
        ("gaps_opened", "Gaps opened", s.gaps_opened),
        (
            "own_ignored",
            "Own datagrams heard back through multicast loopback and ignored",
            s.own_ignored,
        ),
        (
            "streams_ended",
            "Streams that ended with Goodbye",
            s.streams_ended,
        ),
        (
            "streams_timed_out",
            "Streams dropped after their timeout",
            s.streams_timed_out,
        ),
        (
            "streams_evicted",
            "Streams evicted because the table was full",
            s.streams_evicted,
        ),
        (
            "naks_sent",
            "Naks sent for gaps of other streams",
            s.naks_sent,
        ),
        (
            "naks_suppressed",
            "Naks not sent because another receiver's Nak or a Repair was heard first",
            s.naks_suppressed,
        ),
        (
            "naks_received",
            "Naks for this node's stream received",
            s.naks_received,
        ),
        ("repairs_sent", "Repair datagrams sent", s.repairs_sent),
        (
            "repaired_events_sent",
            "Events the repairs sent carried",
            s.repaired_events_sent,
        ),
        (
            "repairs_lingered",
            "Repairs not repeated because the same seq was repaired within the linger",
            s.repairs_lingered,
        ),
        (
            "repairs_deferred",
            "Times the repair rate limit made repairs wait",
            s.repairs_deferred,
        ),
        (
            "unavailable_sent",
            "Unavailable answers sent",
            s.unavailable_sent,
        ),
        (
            "unavailable_received",
            "Unavailable answers received for followed streams",
            s.unavailable_received,
        ),
        (
            "repairs_received",
            "Repair datagrams received for followed streams",
            s.repairs_received,
        ),
        (
            "events_repaired",
            "Missing events that a repair filled",
            s.events_repaired,
        ),
        (
            "late_after_reset",
            "Events that arrived after their gap was given up with a Reset",
            s.late_after_reset,
        ),
        (
            "gaps_covered_by_reset",
            "Gaps dropped because a Reset was delivered after them",
            s.gaps_covered_by_reset,
        ),
        ("send_errors", "Sends the OS refused", n.send_errors),
        (
            "recv_errors",
            "Receives the OS reported as failed",
            n.recv_errors,
        ),
    ]
}

/// The node's gauges: name, help, value.
fn node_gauges(n: &NodeStats) -> [(&'static str, &'static str, u64); 4] {
    [
        ("streams", "Streams currently followed", n.protocol.streams),
        (
            "open_gaps",
            "Gaps currently open (waiting for repair), over all streams",
            n.protocol.open_gaps,
        ),
        (
            "recv_buffer_requested_bytes",
            "Receive buffer asked for",
            n.recv_buffer_requested as u64,
        ),
        (
            "recv_buffer_granted_bytes",
            "Receive buffer the kernel granted (Linux reports twice the usable size)",
            n.recv_buffer_granted as u64,
        ),
    ]
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let version = Pairs(&[("version", env!("CARGO_PKG_VERSION"))]);
        let mut m = e.encode_descriptor(
            "build_info",
            "The agent's version (always 1)",
            None,
            MetricType::Gauge,
        )?;
        m.encode_family(&version)?.encode_gauge(&1u64)?;

        let guard = self.node.lock().unwrap_or_else(|p| p.into_inner());
        let Some(n) = guard.as_ref() else {
            return Ok(());
        };
        let s = &n.protocol;
        for (name, help, v) in node_counters(n) {
            let c = ConstCounter::new(v);
            c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        for (name, help, v) in node_gauges(n) {
            let g = ConstGauge::new(v);
            g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)?;
        }

        let mut m = e.encode_descriptor(
            "resets",
            "Resets delivered (clear everything), by reason",
            None,
            MetricType::Counter,
        )?;
        let extra = s.resets.keys().filter(|k| !RESET_REASONS.contains(k));
        for reason in RESET_REASONS.iter().chain(extra) {
            let v = s.resets.get(reason).copied().unwrap_or(0);
            m.encode_family(&Pairs(&[("reason", reason)]))?
                .encode_counter::<Pairs, _, u64>(&v, None)?;
        }

        let mut m = e.encode_descriptor(
            "datagrams_dropped",
            "Received datagrams dropped, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, v) in &s.dropped {
            m.encode_family(&Pairs(&[("reason", reason)]))?
                .encode_counter::<Pairs, _, u64>(v, None)?;
        }

        // Per-bucket (not cumulative) counts; the encoder accumulates.
        let h = &s.repair_time;
        let mut buckets = Vec::with_capacity(REPAIR_BUCKETS_LOG2_US.clone().count() + 1);
        let mut below = 0;
        for k in REPAIR_BUCKETS_LOG2_US {
            let edge = 1u64 << k;
            let cum: u64 = h
                .buckets()
                .filter(|(r, _)| r.end <= edge)
                .map(|(_, c)| c)
                .sum();
            buckets.push((edge as f64 / 1e6, cum - below));
            below = cum;
        }
        buckets.push((f64::MAX, h.count() - below));
        let mut m = e.encode_descriptor(
            "repair_time_seconds",
            "From noticing a gap to the repair that filled it",
            None,
            MetricType::Histogram,
        )?;
        m.encode_histogram::<Pairs>(h.sum_us() as f64 / 1e6, h.count(), &buckets, None)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use cachecast::testkit::Loopback;
    use cachecast::Node;

    use super::*;

    use crate::agent::testprom::parse;

    #[tokio::test]
    async fn node_counters_parse_with_a_real_prometheus_parser() {
        let place = Loopback::new();
        let a = Node::join(place.config("a")).await.unwrap();
        let b = Node::join(place.config("b")).await.unwrap();
        for i in 0..5 {
            a.invalidate([format!("k{i}")]).await.unwrap();
        }
        a.invalidate_prefix("user:").await.unwrap();
        a.clear_all().await.unwrap();
        // A foreign datagram, dropped by reason.
        place.send_raw(b"not cachecast").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let stats = loop {
            let s = b.stats().await;
            if s.protocol.events_delivered >= 7 && s.protocol.dropped_total() >= 1 {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "b never got the 7 events and the bad datagram: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let published = a.stats().await;
        assert_eq!(published.protocol.events_published, 7);

        let m = Metrics::new();
        m.webhook_posts_ok
            .get_or_create(&WebhookLabels {
                url: "http://h/\"x\"\\\ny".into(),
            })
            .inc();
        let (samples, types) = parse(&m.encode(Some(published)));
        assert_eq!(samples["cachecast_events_published_total{}"], 7.0);
        assert_eq!(types["cachecast_events_published"], "counter");
        assert_eq!(
            samples["cachecast_build_info{version=\"0.1.0\"}"
                .replace("0.1.0", env!("CARGO_PKG_VERSION"))
                .as_str()],
            1.0
        );
        // The escaped label value came back whole.
        assert_eq!(
            samples["cachecast_webhook_posts_ok_total{url=\"http://h/\"x\"\\\ny\"}"], 1.0,
            "{samples:#?}"
        );

        let (samples, types) = parse(&m.encode(Some(stats.clone())));
        assert_eq!(
            samples["cachecast_events_delivered_total{}"],
            stats.protocol.events_delivered as f64
        );
        assert!(samples["cachecast_events_delivered_total{}"] >= 7.0);
        assert_eq!(
            samples["cachecast_streams{}"],
            stats.protocol.streams as f64
        );
        assert!(samples["cachecast_streams{}"] >= 1.0);
        // Every reset reason is there (all 0), and the bad datagram by its reason.
        for r in RESET_REASONS {
            assert_eq!(
                samples[&format!("cachecast_resets_total{{reason=\"{r}\"}}")],
                0.0
            );
        }
        let dropped: f64 = samples
            .iter()
            .filter(|(k, _)| k.starts_with("cachecast_datagrams_dropped_total{reason="))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(dropped, stats.protocol.dropped_total() as f64);
        assert_eq!(types["cachecast_repair_time_seconds"], "histogram");
        assert_eq!(
            samples["cachecast_repair_time_seconds_bucket{le=\"+Inf\"}"],
            samples["cachecast_repair_time_seconds_count{}"]
        );

        // Every counter of the snapshot is a metric: Stats' and NodeStats'
        // fields, read through their serde names, so that a counter added to
        // the library without a metric fails here.
        let json = serde_json::to_value(&stats).unwrap();
        let exported: Vec<&str> = node_counters(&stats)
            .iter()
            .chain(node_gauges(&stats).iter())
            .map(|(n, _, _)| *n)
            .collect();
        for (field, _) in json.as_object().unwrap() {
            let covered = match field.as_str() {
                "dropped" => "datagrams_dropped",
                "resets" => "resets",
                "repair_time" => "repair_time_seconds",
                // In resets_total{reason="lagged"} (the node adds it there).
                "lagged_resets" => "resets",
                "interface" => "build_info",
                "recv_buffer_requested" => "recv_buffer_requested_bytes",
                "recv_buffer_granted" => "recv_buffer_granted_bytes",
                f => f,
            };
            assert!(
                exported.contains(&covered) || types.contains_key(&format!("cachecast_{covered}")),
                "field {field} of NodeStats has no metric"
            );
        }
        a.shutdown().await;
        b.shutdown().await;
    }

    #[test]
    fn repair_time_buckets_are_exact_and_cumulative() {
        let mut stats = NodeStats {
            protocol: cachecast::Stats::default(),
            lagged_resets: 0,
            send_errors: 0,
            recv_errors: 0,
            recv_buffer_requested: 0,
            recv_buffer_granted: 0,
            interface: "lo".into(),
        };
        // 100 µs, 1 ms, 3 ms, 2 s: at the 2^k µs bounds, exactly those below.
        for us in [100, 1_000, 3_000, 2_000_000] {
            stats.protocol.repair_time.record(Duration::from_micros(us));
        }
        let (samples, _) = parse(&Metrics::new().encode(Some(stats)));
        let bucket = |le: &str| {
            let k = format!("cachecast_repair_time_seconds_bucket{{le=\"{le}\"}}");
            let keys: Vec<_> = samples.keys().filter(|k| k.contains("_bucket")).collect();
            *samples
                .get(&k)
                .unwrap_or_else(|| panic!("no {k} in {keys:#?}"))
        };
        assert_eq!(bucket("0.000064"), 0.0);
        assert_eq!(bucket("0.000128"), 1.0);
        assert_eq!(bucket("0.001024"), 2.0);
        assert_eq!(bucket("0.004096"), 3.0);
        assert_eq!(bucket("1.048576"), 3.0);
        assert_eq!(bucket("2.097152"), 4.0);
        assert_eq!(bucket("+Inf"), 4.0);
        assert_eq!(samples["cachecast_repair_time_seconds_count{}"], 4.0);
        assert!((samples["cachecast_repair_time_seconds_sum{}"] - 2.0041).abs() < 1e-9);
    }

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
