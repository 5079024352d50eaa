//! The node's side of `GET /metrics`: a prometheus-client collector that
//! writes, at each scrape, the node's counters and gauges (one per field
//! of `cachecast::Stats` and `NodeStats`), the Resets and drops by reason,
//! the repair-time histogram, the membership view (a bounded number of
//! per-member series), and the keys: those this node holds, and per key id
//! how many live members hold it and send with it (a rotation's progress).
//! It reads only the snapshot the scrape took.

use std::sync::{Arc, Mutex};

use cachecast::{Liveness, Member, NodeStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

#[cfg(doc)]
use super::metrics::Metrics;
use super::metrics::Pairs;

/// What the collector reads of the node at a scrape.
#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    /// The node's counters.
    pub stats: NodeStats,
    /// Its membership view ([`cachecast::Node::members`]).
    pub members: Vec<Member>,
}

/// Most members with per-member series at one scrape (this node and the
/// live ones first); the rest are counted in `member_series_omitted`.
pub const MAX_MEMBER_SERIES: usize = 256;

/// Most streams with a `member_lag_events` series per member (the most
/// lagging ones when a member follows more).
pub const MAX_LAG_STREAMS: usize = 64;

/// The node's counters and members, read from the snapshot
/// [`Metrics::encode`] stores at each scrape. Nothing is written before
/// the node has joined (no snapshot): a scrape then has only the agent's
/// own metrics.
#[derive(Debug)]
pub(super) struct NodeCollector {
    node: Arc<Mutex<Option<NodeSnapshot>>>,
}

impl NodeCollector {
    /// A collector reading what [`Metrics::encode`] stores in `node`.
    pub(super) fn new(node: Arc<Mutex<Option<NodeSnapshot>>>) -> NodeCollector {
        NodeCollector { node }
    }
}

/// Reset reasons always exposed (at 0 until one happens), so that
/// `increase(cachecast_resets_total[5m])` sees the first Reset of each
/// reason (`ResetReason::kind`); a reason the library adds appears once it
/// is counted.
const RESET_REASONS: [&str; 8] = [
    "unavailable",
    "retries_exhausted",
    "too_old",
    "too_many_gaps",
    "stream_timed_out",
    "stream_evicted",
    "lagged",
    "isolated",
];

/// Drop reasons of authentication always exposed (at 0 until one
/// happens), for the same reason: an alert on forged or replayed traffic
/// sees the first one.
const AUTH_DROP_REASONS: [&str; 5] = [
    "auth_unknown_key",
    "auth_bad_tag",
    "auth_replay",
    "auth_stale",
    "auth_missing",
];

/// Upper bounds of `cachecast_repair_time_seconds`: powers of two from
/// 64 µs to 33.5 s. Every power of two is an edge of the library's
/// histogram, so each bucket's count is exact, not interpolated.
const REPAIR_BUCKETS_LOG2_US: std::ops::RangeInclusive<u32> = 6..=25;

/// The node's monotonic counters: metric name (without prefix and
/// `_total`), help, value. One entry per counter of [`cachecast::Stats`]
/// and [`NodeStats`] (a test checks none is missing).
fn node_counters(n: &NodeStats) -> [(&'static str, &'static str, u64); 50] {
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
            "streams_reopened",
            "Streams followed again after their Goodbye, because their events or heartbeats went on (the Goodbye was forged)",
            s.streams_reopened,
        ),
        (
            "position_contradicted",
            "Times a stream's position, believed on a claim alone, was contradicted by its events or its own later claim, and what was given up on it asked for again",
            s.position_contradicted,
        ),
        (
            "events_conflicting",
            "Events delivered although their seq was delivered before with other content (one of the two forged)",
            s.events_conflicting,
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
            "repairs_directed",
            "Repairs sent to the one node that asked (unicast transport)",
            s.repairs_directed,
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
        (
            "ack_requests_sent",
            "AckRequests sent while a confirmation was awaited",
            s.ack_requests_sent,
        ),
        (
            "reports_sent",
            "Position reports sent (periodic, and answers to AckRequests)",
            s.reports_sent,
        ),
        (
            "reports_received",
            "Position reports received from members",
            s.reports_received,
        ),
        (
            "confirmations_complete",
            "Confirmations that ended with every member answered or gone",
            s.confirmations_complete,
        ),
        (
            "confirmations_incomplete",
            "Confirmations that ended at their deadline with members pending",
            s.confirmations_incomplete,
        ),
        (
            "streams_learned",
            "Streams learned of from members' reports, not from the stream itself",
            s.streams_learned,
        ),
        (
            "positions_learned",
            "Times a member's report showed a followed stream further on than this node knew",
            s.positions_learned,
        ),
        (
            "ring_trimmed",
            "Events dropped from the retransmit ring because every live member had them",
            s.ring_trimmed,
        ),
        (
            "auth_verified",
            "Received datagrams whose authentication trailer verified",
            s.auth_verified,
        ),
        (
            "auth_unverified",
            "Received datagrams with a MAC trailer taken unchecked (auth off: this node holds no key)",
            s.auth_unverified,
        ),
        (
            "auth_windows_evicted",
            "Replay windows forgotten early because the most streams were held",
            s.auth_windows_evicted,
        ),
        (
            "auth_cleartext",
            "Datagrams verified with a MAC only (body in the clear) while this node encrypts: a member not configured to encrypt",
            s.auth_cleartext,
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
fn node_gauges(n: &NodeStats) -> [(&'static str, &'static str, u64); 7] {
    [
        ("streams", "Streams currently followed", n.protocol.streams),
        (
            "ring_bytes",
            "Bytes the retransmit ring holds",
            n.protocol.ring_bytes,
        ),
        (
            "members_live",
            "Live members besides this node (heard within the lease)",
            n.protocol.members_live,
        ),
        (
            "isolated",
            "1 while this node is cut off (no member heard within the lease, after some died)",
            n.protocol.isolated,
        ),
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
        let Some(snap) = guard.as_ref() else {
            return Ok(());
        };
        let n = &snap.stats;
        let s = &n.protocol;
        for (name, help, v) in node_counters(n) {
            let c = ConstCounter::new(v);
            c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        for (name, help, v) in node_gauges(n) {
            let g = ConstGauge::new(v);
            g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let g = ConstGauge::new(s.auth_stale_skew_ms as f64 / 1e3);
        g.encode(e.encode_descriptor(
            "auth_stale_skew_seconds",
            "The largest clock skew (either way) of a datagram dropped as auth_stale: above the 60 s window, a sender's clock is off",
            None,
            g.metric_type(),
        )?)?;
        let g = ConstGauge::new(s.staleness_ms as f64 / 1e3);
        g.encode(e.encode_descriptor(
            "staleness_seconds",
            "The staleness bound: the longest this node may have been missing an event without knowing it, over every stream it follows",
            None,
            g.metric_type(),
        )?)?;
        encode_members(&mut e, &snap.members)?;

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
        let extra = s.dropped.keys().filter(|k| !AUTH_DROP_REASONS.contains(k));
        for reason in AUTH_DROP_REASONS.iter().chain(extra) {
            let v = s.dropped.get(reason).copied().unwrap_or(0);
            m.encode_family(&Pairs(&[("reason", reason)]))?
                .encode_counter::<Pairs, _, u64>(&v, None)?;
        }
        encode_keys(&mut e, &snap.members)?;

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

/// The per-member series: `member_live{member,stream}` for every member
/// known (this node and the live ones first), and
/// `member_lag_events{member,stream,stream_of}` for every stream a live
/// member reported; bounded by [`MAX_MEMBER_SERIES`] members and
/// [`MAX_LAG_STREAMS`] streams each, what is left out counted in
/// `member_series_omitted`. `stream` (the member's stream id) is in both,
/// since names repeat: a restarted node has a new stream under the same
/// name, and the old one stays in the view (dead) for a while.
fn encode_members(e: &mut DescriptorEncoder, members: &[Member]) -> std::fmt::Result {
    let mut order: Vec<&Member> = members.iter().collect();
    // Stable: this node, then the live ones, then those gone; each in the
    // view's order.
    order.sort_by_key(|m| (!m.this_node, m.state != Liveness::Live));
    let mut omitted = order.len().saturating_sub(MAX_MEMBER_SERIES);
    order.truncate(MAX_MEMBER_SERIES);
    let hex = |s: u64| format!("{s:016x}");
    let label = |m: &Member| m.name.clone().unwrap_or_else(|| hex(m.stream));

    let mut d = e.encode_descriptor(
        "member_live",
        "1 while the member is live (heard within the lease), 0 once it left or died",
        None,
        MetricType::Gauge,
    )?;
    for m in &order {
        let (name, stream) = (label(m), hex(m.stream));
        let live = u64::from(m.state == Liveness::Live);
        d.encode_family(&Pairs(&[("member", &name), ("stream", &stream)]))?
            .encode_gauge(&live)?;
    }

    let mut d = e.encode_descriptor(
        "member_lag_events",
        "Events of stream_of a live member had not delivered when it last reported",
        None,
        MetricType::Gauge,
    )?;
    for m in order.iter().filter(|m| m.state == Liveness::Live) {
        let (name, stream) = (label(m), hex(m.stream));
        let mut streams: Vec<_> = m.streams.iter().collect();
        if streams.len() > MAX_LAG_STREAMS {
            omitted += streams.len() - MAX_LAG_STREAMS;
            streams.sort_by_key(|s| std::cmp::Reverse(s.lag));
            streams.truncate(MAX_LAG_STREAMS);
            streams.sort_by_key(|s| s.stream);
        }
        for st in streams {
            let of = hex(st.stream);
            d.encode_family(&Pairs(&[
                ("member", &name),
                ("stream", &stream),
                ("stream_of", &of),
            ]))?
            .encode_gauge(&st.lag)?;
        }
    }

    let g = ConstGauge::new(omitted as u64);
    g.encode(e.encode_descriptor(
        "member_series_omitted",
        "Members and members' streams left out of member_live and member_lag_events by their caps",
        None,
        g.metric_type(),
    )?)
}

/// The keys: `key_info{key,role}` (1 per key id this node holds; role
/// `sending` for the one it sends with, else `accepted`), and per key id a
/// live member holds or sends with (at most
/// [`MAX_SUMMARY_KEYS`](crate::keys::MAX_SUMMARY_KEYS)),
/// `key_members_holding{key}` and `key_members_sending{key}`: a rotation's
/// next step is due when they reach `members_live`.
fn encode_keys(e: &mut DescriptorEncoder, members: &[Member]) -> std::fmt::Result {
    use crate::keys::{key_hex, key_summary};
    let own = members.iter().find(|m| m.this_node);
    let mut d = e.encode_descriptor(
        "key_info",
        "The key ids this node holds (always 1): role sending for the one it sends with, accepted for the others",
        None,
        MetricType::Gauge,
    )?;
    for (i, id) in own.map_or(&[][..], |m| &m.keys).iter().enumerate() {
        let role = if i == 0 { "sending" } else { "accepted" };
        d.encode_family(&Pairs(&[("key", &key_hex(*id)), ("role", role)]))?
            .encode_gauge(&1u64)?;
    }
    let summary = key_summary(members);
    let mut d = e.encode_descriptor(
        "key_members_holding",
        "Live members (this node left out) whose last report lists the key id",
        None,
        MetricType::Gauge,
    )?;
    for k in &summary {
        d.encode_family(&Pairs(&[("key", &k.id)]))?
            .encode_gauge(&(k.held_by as u64))?;
    }
    let mut d = e.encode_descriptor(
        "key_members_sending",
        "Live members (this node left out) whose last authenticated datagram was sealed with the key id",
        None,
        MetricType::Gauge,
    )?;
    for k in &summary {
        d.encode_family(&Pairs(&[("key", &k.id)]))?
            .encode_gauge(&(k.sent_with_by as u64))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use cachecast::testkit::Loopback;
    use cachecast::Node;

    use super::*;

    use crate::agent::testprom::parse;

    use crate::agent::metrics::{Metrics, WebhookLabels};

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
            if s.protocol.events_delivered >= 7
                && s.protocol.dropped_total() >= 1
                && s.protocol.members_live >= 1
            {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "b never got the 7 events, the bad datagram and a live a: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let b_members = b.members().await;
        let published = NodeSnapshot {
            stats: a.stats().await,
            members: a.members().await,
        };
        assert_eq!(published.stats.protocol.events_published, 7);

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

        let (samples, types) = parse(&m.encode(Some(NodeSnapshot {
            stats: stats.clone(),
            members: b_members.clone(),
        })));
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

        // The membership: a live member besides b, each member's liveness
        // and each live member's lag per stream as in the view.
        assert_eq!(
            samples["cachecast_members_live{}"],
            stats.protocol.members_live as f64
        );
        assert_eq!(samples["cachecast_isolated{}"], 0.0);
        assert_eq!(
            samples["cachecast_staleness_seconds{}"],
            stats.protocol.staleness_ms as f64 / 1e3
        );
        assert_eq!(types["cachecast_staleness_seconds"], "gauge");
        assert!(b_members.iter().any(|m| m.name.as_deref() == Some("a")));
        let mut lags = 0;
        for mb in &b_members {
            let (name, stream) = (mb.name.clone().unwrap(), format!("{:016x}", mb.stream));
            let live =
                samples[&format!("cachecast_member_live{{member=\"{name}\",stream=\"{stream}\"}}")];
            assert_eq!(live, 1.0, "{name}: {:?}", mb.state);
            for st in &mb.streams {
                let k = format!(
                    "cachecast_member_lag_events{{member=\"{name}\",stream=\"{stream}\",stream_of=\"{:016x}\"}}",
                    st.stream
                );
                assert_eq!(samples[&k], st.lag as f64, "{k}");
                lags += 1;
            }
        }
        assert!(lags >= 1, "{b_members:?}");
        assert_eq!(samples["cachecast_member_series_omitted{}"], 0.0);

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
                "staleness_ms" => "staleness_seconds",
                "auth_stale_skew_ms" => "auth_stale_skew_seconds",
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
        let (samples, _) = parse(&Metrics::new().encode(Some(NodeSnapshot {
            stats,
            members: Vec::new(),
        })));
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

    fn member(i: usize, state: Liveness, streams: usize) -> Member {
        Member {
            keys: vec![],
            sends_with: None,
            stream: 1000 + i as u64,
            // Names repeat (a restarted node keeps its name).
            name: Some(format!("web-{}", i % 100)),
            addr: None,
            this_node: i == 0,
            receive_only: false,
            state,
            last_heard: Duration::ZERO,
            streams: (0..streams)
                .map(|k| cachecast::MemberStream {
                    stream: k as u64 + 1,
                    node: None,
                    delivered: 10,
                    lag: k as u64,
                    reset_end: 0,
                    reported: Duration::ZERO,
                    staleness: None,
                })
                .collect(),
        }
    }

    /// 300 members (names repeated, a third dead), one following 100
    /// streams: at most 256 members, this node and the live first, at most
    /// 64 streams each (the most lagging), the rest counted; and the
    /// exposition stays valid (no two series with one label set).
    #[test]
    fn per_member_series_are_capped_and_unique() {
        let mut members: Vec<Member> = (0..300)
            .map(|i| {
                let state = if i % 3 == 2 {
                    Liveness::Dead
                } else {
                    Liveness::Live
                };
                member(i, state, 1)
            })
            .collect();
        members[1] = member(1, Liveness::Live, 100);
        // This node last in the list: still exported.
        members.rotate_left(1);
        let stats = NodeStats {
            protocol: cachecast::Stats::default(),
            lagged_resets: 0,
            send_errors: 0,
            recv_errors: 0,
            recv_buffer_requested: 0,
            recv_buffer_granted: 0,
            interface: "lo".into(),
        };
        let (samples, _) = parse(&Metrics::new().encode(Some(NodeSnapshot { stats, members })));
        let count = |p: &str| samples.keys().filter(|k| k.starts_with(p)).count();
        assert_eq!(count("cachecast_member_live{"), MAX_MEMBER_SERIES);
        let live = samples
            .iter()
            .filter(|(k, v)| k.starts_with("cachecast_member_live{") && **v == 1.0)
            .count();
        // 200 live of 300: every live one kept, 56 dead ones after them.
        assert_eq!(live, 200);
        assert!(samples.contains_key(&format!(
            "cachecast_member_live{{member=\"web-0\",stream=\"{:016x}\"}}",
            1000
        )));
        // 199 live members with one stream, one with 100 capped at 64.
        assert_eq!(count("cachecast_member_lag_events{"), 199 + MAX_LAG_STREAMS);
        let web1 = format!("member=\"web-1\",stream=\"{:016x}\"", 1001);
        assert!(samples.contains_key(&format!(
            "cachecast_member_lag_events{{{web1},stream_of=\"{:016x}\"}}",
            100
        )));
        assert!(!samples.contains_key(&format!(
            "cachecast_member_lag_events{{{web1},stream_of=\"{:016x}\"}}",
            1
        )));
        assert_eq!(
            samples["cachecast_member_series_omitted{}"],
            (300 - MAX_MEMBER_SERIES + 100 - MAX_LAG_STREAMS) as f64
        );
    }

    /// The authentication counters, every auth drop reason (0 until
    /// counted), the keys this node holds, and per key how many live
    /// members hold it and send with it: through a real Prometheus parser.
    #[test]
    fn keys_and_auth_counters_are_exported() {
        let mut stats = NodeStats {
            protocol: cachecast::Stats::default(),
            lagged_resets: 0,
            send_errors: 0,
            recv_errors: 0,
            recv_buffer_requested: 0,
            recv_buffer_granted: 0,
            interface: "lo".into(),
        };
        stats.protocol.auth_verified = 41;
        stats.protocol.auth_unverified = 2;
        stats.protocol.auth_windows_evicted = 3;
        stats.protocol.auth_cleartext = 5;
        stats.protocol.auth_stale_skew_ms = 61_500;
        stats.protocol.dropped.insert("auth_bad_tag", 100_000);
        stats.protocol.dropped.insert("ended_stream", 4);
        let (old, new) = (0x5d1c_0a7e, 0xb1);
        let mut members: Vec<Member> = (0..4).map(|i| member(i, Liveness::Live, 0)).collect();
        members[0].keys = vec![new, old];
        members[1].keys = vec![new, old];
        members[1].sends_with = Some(new);
        members[2].keys = vec![old, new];
        members[2].sends_with = Some(old);
        members[3].keys = vec![old];
        members[3].sends_with = Some(old);
        let (samples, types) = parse(&Metrics::new().encode(Some(NodeSnapshot { stats, members })));
        assert_eq!(samples["cachecast_auth_verified_total{}"], 41.0);
        assert_eq!(samples["cachecast_auth_unverified_total{}"], 2.0);
        assert_eq!(samples["cachecast_auth_windows_evicted_total{}"], 3.0);
        assert_eq!(samples["cachecast_auth_cleartext_total{}"], 5.0);
        assert_eq!(samples["cachecast_auth_stale_skew_seconds{}"], 61.5);
        assert_eq!(types["cachecast_auth_stale_skew_seconds"], "gauge");
        let dropped =
            |r: &str| samples[&format!("cachecast_datagrams_dropped_total{{reason=\"{r}\"}}")];
        assert_eq!(dropped("auth_bad_tag"), 100_000.0);
        assert_eq!(dropped("ended_stream"), 4.0);
        for r in AUTH_DROP_REASONS.iter().filter(|r| **r != "auth_bad_tag") {
            assert_eq!(dropped(r), 0.0, "{r}");
        }
        assert_eq!(
            samples["cachecast_key_info{key=\"000000b1\",role=\"sending\"}"],
            1.0
        );
        assert_eq!(
            samples["cachecast_key_info{key=\"5d1c0a7e\",role=\"accepted\"}"],
            1.0
        );
        assert_eq!(types["cachecast_key_info"], "gauge");
        // Three live members besides this node: the old key held by 3,
        // sent with by 2; the new one held by 2, sent with by 1.
        assert_eq!(
            samples["cachecast_key_members_holding{key=\"5d1c0a7e\"}"],
            3.0
        );
        assert_eq!(
            samples["cachecast_key_members_sending{key=\"5d1c0a7e\"}"],
            2.0
        );
        assert_eq!(
            samples["cachecast_key_members_holding{key=\"000000b1\"}"],
            2.0
        );
        assert_eq!(
            samples["cachecast_key_members_sending{key=\"000000b1\"}"],
            1.0
        );
    }
}
