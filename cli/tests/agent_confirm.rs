//! Confirmed publishing and the membership view through the agent, with
//! real agents on loopback multicast: `POST /v1/invalidate?confirm=` answers
//! 200 with every live member confirmed, 504 naming a member that cannot
//! answer (its process stopped with SIGSTOP: a stopped process receives
//! nothing), 400 for a bad value; `GET /v1/members`; the membership metrics
//! through a real Prometheus parser.

use crate::agent;
use crate::process;
use crate::testprom;

use std::time::{Duration, Instant};

use agent::{client, Agent, Net};
use serde_json::{json, Value};

/// POSTs `body` to `/v1/invalidate{query}`; the status and JSON answer.
fn post(a: &Agent, query: &str, body: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{}/v1/invalidate{query}", a.url))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

/// The names of a report's list (`confirmed`, `pending`, …).
fn names(report: &Value, list: &str) -> Vec<String> {
    report[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {report}"))
        .iter()
        .map(|m| m["name"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn get_json(a: &Agent, path: &str) -> (u16, Value) {
    let (status, text) = a.get(path);
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")),
    )
}

/// The member named `name` in `a`'s `/v1/members`.
fn member(view: &Value, name: &str) -> Option<Value> {
    view["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
}

/// Polls `a`'s `/v1/members` until `name` is in `state`; the view.
fn wait_member(a: &Agent, name: &str, state: &str) -> Value {
    let end = Instant::now() + process::LIMIT;
    loop {
        let (status, view) = get_json(a, "/v1/members");
        assert_eq!(status, 200, "{view}");
        if member(&view, name).is_some_and(|m| m["state"] == state) {
            return view;
        }
        assert!(
            Instant::now() < end,
            "{} never saw {name} {state} within {:?}: {view:#}",
            a.name,
            process::LIMIT
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metrics(a: &Agent) -> std::collections::BTreeMap<String, f64> {
    let (status, text) = a.get("/metrics");
    assert_eq!(status, 200, "{text}");
    testprom::parse(&text).0
}

#[test]
fn confirm_answers_200_when_every_live_member_has_the_events_and_504_naming_one_that_cannot() {
    let net = Net::new();
    let a = Agent::start(&net, "a", "");
    let mut b = Agent::start(&net, "b", "");
    let (a_stream, b_stream) = (
        a.ready["stream"].as_str().unwrap().to_owned(),
        b.ready["stream"].as_str().unwrap().to_owned(),
    );
    let sb = b.events(None);
    wait_member(&a, "b", "live");

    // A batch of two events, confirmed as one: 200, B named.
    let body = json!({"events": [{"keys": ["user:1"]}, {"prefix": "page:"}]}).to_string();
    let (status, r) = post(&a, "?confirm=2s", &body);
    assert_eq!(status, 200, "{r:#}");
    assert_eq!(
        (
            r["first_seq"].as_u64(),
            r["last_seq"].as_u64(),
            r["events"].as_u64()
        ),
        (Some(1), Some(2), Some(2)),
        "{r}"
    );
    let report = &r["confirmation"];
    assert_eq!(report["stream"], a_stream.as_str());
    assert_eq!(report["seqs"], json!({"start": 1, "end": 3}));
    assert_eq!(names(report, "confirmed"), ["b"], "{report:#}");
    for list in ["pending", "departed", "covered_by_reset"] {
        assert!(names(report, list).is_empty(), "{list}: {report:#}");
    }
    assert_eq!(report["confirmed"][0]["stream"], b_stream.as_str());
    let got = sb.take(2);
    assert_eq!(
        (got[0].event.as_str(), got[1].event.as_str()),
        ("invalidate", "prefix")
    );

    // The view on A: A itself first, B live, and B has delivered A's
    // stream up to what was confirmed.
    let (status, view) = get_json(&a, "/v1/members");
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["node"], a_stream.as_str());
    assert_eq!(view["live"], 1, "{view:#}");
    let me = &view["members"][0];
    assert_eq!(
        (&me["name"], &me["this_node"], &me["state"]),
        (&json!("a"), &json!(true), &json!("live")),
        "{view:#}"
    );
    let mb = member(&view, "b").unwrap();
    assert_eq!(
        (&mb["stream"], &mb["state"], &mb["this_node"]),
        (&json!(b_stream), &json!("live"), &json!(false)),
        "{view:#}"
    );
    let of_a = mb["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == a_stream.as_str())
        .unwrap_or_else(|| panic!("b reported nothing of a's stream: {mb:#}"));
    assert!(of_a["delivered"].as_u64() >= Some(3), "{of_a}");
    assert_eq!(view["staleness"]["isolated"], false, "{view:#}");
    assert!(view["staleness"]["worst"].is_number(), "{view:#}");

    // Bad values: 400 naming the problem, nothing published.
    for (query, want) in [
        ("?confirm=abc", "is not a duration"),
        ("?confirm=", "is not a duration"),
        ("?confirm=5", "is not a duration"),
        ("?confirm=0s", "more than 0"),
        ("?confirm=31s", "over the limit of 30s"),
        ("?confirm=1s&confirm=2s", "duplicate field"),
        ("?confirmm=1s", "unknown field `confirmm`"),
    ] {
        let (status, r) = post(&a, query, r#"{"keys":["never"]}"#);
        let err = r["error"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{query}: {r}");
        assert!(err.contains(want), "{query}: {err}");
    }
    let (_, st) = get_json(&a, "/v1/status");
    assert_eq!(st["counters"]["events_published"], 2, "{st}");

    // The metrics, through a real Prometheus parser.
    let m = metrics(&a);
    assert_eq!(m["cachecast_members_live{}"], 1.0);
    assert_eq!(m["cachecast_isolated{}"], 0.0);
    assert!(m.contains_key("cachecast_staleness_seconds{}"));
    assert!(m.contains_key("cachecast_ring_bytes{}"));
    assert_eq!(m["cachecast_confirmations_complete_total{}"], 1.0);
    assert_eq!(m["cachecast_confirmations_incomplete_total{}"], 0.0);
    assert!(m["cachecast_ack_requests_sent_total{}"] >= 1.0);
    assert!(m["cachecast_reports_received_total{}"] >= 1.0);
    // A follows no stream that moved: it may have had nothing to report.
    assert!(m.contains_key("cachecast_reports_sent_total{}"));
    assert_eq!(m["cachecast_resets_total{reason=\"isolated\"}"], 0.0);
    assert_eq!(
        m[&format!("cachecast_member_live{{member=\"b\",stream=\"{b_stream}\"}}")],
        1.0
    );
    assert_eq!(
        m[&format!("cachecast_member_live{{member=\"a\",stream=\"{a_stream}\"}}")],
        1.0
    );
    assert_eq!(
        m[&format!(
            "cachecast_member_lag_events{{member=\"b\",stream=\"{b_stream}\",stream_of=\"{a_stream}\"}}"
        )],
        0.0
    );
    assert_eq!(
        m["cachecast_http_confirm_latency_seconds_count{outcome=\"complete\"}"],
        1.0
    );

    // B answers once more (so A heard it just now), then is stopped: it
    // is still live in A's view (lease 3 s) but cannot acknowledge.
    let (status, r) = post(&a, "?confirm=2s", r#"{"keys":["user:2"]}"#);
    assert_eq!(
        (status, names(&r["confirmation"], "confirmed")),
        (200, vec!["b".to_owned()]),
        "{r:#}"
    );
    b.proc.stop();
    let t = Instant::now();
    let (status, r) = post(&a, "?confirm=500ms", r#"{"keys":["user:3"]}"#);
    let waited = t.elapsed();
    assert_eq!(status, 504, "{r:#}");
    assert_eq!(r["first_seq"], 4, "published all the same: {r}");
    let report = &r["confirmation"];
    assert_eq!(names(report, "pending"), ["b"], "{report:#}");
    assert_eq!(report["pending"][0]["stream"], b_stream.as_str());
    assert!(names(report, "confirmed").is_empty(), "{report:#}");
    assert!(names(report, "departed").is_empty(), "{report:#}");
    assert!(report["elapsed"].as_f64() >= Some(500.0), "{report}");
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    let m = metrics(&a);
    assert_eq!(m["cachecast_confirmations_incomplete_total{}"], 1.0);
    assert_eq!(
        m["cachecast_http_confirm_latency_seconds_count{outcome=\"incomplete\"}"],
        1.0
    );

    // B resumes: it catches up, and confirms again.
    b.proc.signal(libc::SIGCONT);
    wait_member(&a, "b", "live");
    let (status, r) = post(&a, "?confirm=2s", r#"{"keys":["user:4"]}"#);
    assert_eq!(status, 200, "{r:#}");
    assert_eq!(names(&r["confirmation"], "confirmed"), ["b"], "{r:#}");
    let keys: Vec<Value> = sb
        .take(3)
        .iter()
        .map(|e| e.data["keys"][0].clone())
        .collect();
    assert_eq!(keys, [json!("user:2"), json!("user:3"), json!("user:4")]);

    // B stops (SIGTERM: Goodbye): A's view says it left.
    b.proc.signal(libc::SIGTERM);
    assert!(b.proc.wait_exit().success());
    wait_member(&a, "b", "left");
    let m = metrics(&a);
    assert_eq!(m["cachecast_members_live{}"], 0.0);
    assert_eq!(
        m[&format!("cachecast_member_live{{member=\"b\",stream=\"{b_stream}\"}}")],
        0.0
    );
}
