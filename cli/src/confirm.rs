//! `cachecast send`'s confirmation: waiting for it (`--confirm`, or the
//! silent wait before `Goodbye`), and the report as text or JSON.
//!
//! What it may not do: wait without a bound, or past a signal.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::listen::{hex_streams, stream_hex};
use crate::stop::{Reason, Stop};
use cachecast::{ConfirmReport, MemberRef, Node, Receipt};

/// How long after a node's join every live member has been heard: every
/// node sends at least a heartbeat per `heartbeat_idle` (1 s), plus a
/// margin for a busy host. Members that answered the join's `Hello` are
/// known at once; one that cannot hear this node (a cut receive path: what
/// a confirmation is for) only from its next heartbeat.
pub const VIEW_MARGIN: Duration = Duration::from_millis(250);

/// Why a confirmation gave no report.
#[derive(Debug)]
pub enum NoReport {
    /// A signal came first.
    Stopped(Reason),
    /// The node stopped.
    Closed(String),
}

/// Awaits the confirmation of `receipt`: first until `view_at` (when every
/// live member has been heard, so that the snapshot of members counts one
/// that did not answer the join), then at most `timeout`; a signal ends
/// either wait.
pub async fn confirm(
    node: &Node,
    receipt: &Receipt,
    view_at: Instant,
    timeout: Duration,
    stop: &Stop,
) -> Result<ConfirmReport, NoReport> {
    tokio::select! {
        _ = tokio::time::sleep_until(view_at) => {}
        r = stop.wait() => return Err(NoReport::Stopped(r)),
    }
    tokio::select! {
        r = node.confirm(receipt, timeout) => r.map_err(|e| NoReport::Closed(e.to_string())),
        r = stop.wait() => Err(NoReport::Stopped(r)),
    }
}

/// Waits, at most `bound`, until every member live now has delivered what
/// `receipt` published (no report: a warning names the members still
/// pending at the bound). A signal ends the wait.
pub async fn settle(node: &Node, receipt: &Receipt, bound: Duration, stop: &Stop) {
    if bound.is_zero() {
        return;
    }
    let report = tokio::select! {
        r = node.confirm(receipt, bound) => r,
        _ = stop.wait() => return,
    };
    match report {
        Ok(r) if !r.is_complete() => tracing::warn!(
            pending = %names(&r.pending),
            bound_ms = bound.as_millis() as u64,
            "not every live member acknowledged the events within --settle: \
             they may still repair them, or Reset, after this sender is gone"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "no confirmation before Goodbye"),
    }
}

/// Members as `name (stream)`, comma-separated; `-` for none.
pub fn names(members: &[MemberRef]) -> String {
    if members.is_empty() {
        return "-".into();
    }
    let v: Vec<String> = members
        .iter()
        .map(|m| match &m.name {
            Some(n) => format!("{n} ({})", stream_hex(m.stream)),
            None => stream_hex(m.stream),
        })
        .collect();
    v.join(", ")
}

/// The report as text: a summary line, then one line per outcome with the
/// members' names and stream ids.
pub fn report_text(r: &ConfirmReport) -> String {
    let mut s = String::new();
    let last = r.seqs.end.saturating_sub(1);
    let what = format!(
        "stream {}, seqs {}..={last}, {:.1} ms",
        stream_hex(r.stream),
        r.seqs.start,
        r.elapsed.as_secs_f64() * 1e3
    );
    if r.is_complete() {
        let _ = writeln!(s, "complete: no member pending ({what})");
    } else {
        let _ = writeln!(
            s,
            "INCOMPLETE: {} member(s) pending at the timeout ({what})",
            r.pending.len()
        );
    }
    for (label, list) in [
        ("confirmed", &r.confirmed),
        ("covered by reset", &r.covered_by_reset),
        ("departed", &r.departed),
        ("pending", &r.pending),
    ] {
        let _ = writeln!(s, "{label:<17} {:>3}  {}", list.len(), names(list));
    }
    s
}

/// The report as one JSON object: the report's fields (stream ids as 16
/// hex digits, durations in ms) and `complete`.
pub fn report_json(r: &ConfirmReport) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    hex_streams(&mut v);
    if let Some(o) = v.as_object_mut() {
        o.insert("complete".into(), json!(r.is_complete()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: Option<&str>, stream: u64) -> MemberRef {
        MemberRef {
            name: name.map(str::to_owned),
            stream,
        }
    }

    fn report(pending: Vec<MemberRef>) -> ConfirmReport {
        ConfirmReport {
            stream: 0xabc,
            seqs: 1..4,
            confirmed: vec![member(Some("a"), 1), member(None, 2)],
            covered_by_reset: vec![],
            departed: vec![member(Some("c"), 3)],
            pending,
            elapsed: Duration::from_micros(2500),
        }
    }

    #[test]
    fn the_text_names_every_member_by_name_and_stream() {
        let t = report_text(&report(vec![]));
        assert!(
            t.starts_with(
                "complete: no member pending (stream 0000000000000abc, seqs 1..=3, 2.5 ms)"
            ),
            "{t}"
        );
        assert!(
            t.contains("confirmed           2  a (0000000000000001), 0000000000000002\n"),
            "{t}"
        );
        assert!(t.contains("covered by reset    0  -\n"), "{t}");
        assert!(
            t.contains("departed            1  c (0000000000000003)\n"),
            "{t}"
        );
        let t = report_text(&report(vec![member(Some("d"), 4)]));
        assert!(t.starts_with("INCOMPLETE: 1 member(s) pending"), "{t}");
        assert!(
            t.contains("pending             1  d (0000000000000004)\n"),
            "{t}"
        );
    }

    #[test]
    fn the_json_has_hex_streams_and_says_whether_complete() {
        let v = report_json(&report(vec![member(Some("d"), u64::MAX)]));
        assert_eq!(v["complete"], false);
        assert_eq!(v["stream"], "0000000000000abc");
        assert_eq!(v["pending"][0]["stream"], "ffffffffffffffff");
        assert_eq!(v["pending"][0]["name"], "d");
        assert_eq!(v["confirmed"][1]["name"], Value::Null);
        assert_eq!(v["seqs"], json!({"start": 1, "end": 4}));
        assert_eq!(v["elapsed"], 2.5);
    }
}
