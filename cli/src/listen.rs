//! `cachecast listen`: join and print every delivery as one JSON object
//! per line on stdout.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use crate::args::{parse_duration, NetArgs};
use cachecast::node::{Delivery, Node};
use cachecast::wire::EventRef;

/// Print deliveries as JSON lines.
#[derive(Debug, Args)]
pub struct ListenArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// Stop after this many deliveries (events and resets).
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long (e.g. 10s, 500ms).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// On exit, print the node's counters as a last JSON line
    /// (`{"type":"stats",...}`).
    #[arg(long)]
    pub stats: bool,
}

/// A stream id as JSON: a hex string (JSON numbers lose precision past 2^53).
pub fn stream_hex(stream: u64) -> String {
    format!("{stream:016x}")
}

/// One delivery as a JSON object.
pub fn delivery_json(d: &Delivery) -> Value {
    match d {
        Delivery::Event {
            stream,
            seq,
            node,
            event,
        } => {
            let mut v = json!({
                "type": "event",
                "stream": stream_hex(*stream),
                "seq": seq,
                "node": node.as_deref(),
            });
            let obj = v.as_object_mut().expect("object");
            match event.view() {
                EventRef::Invalidate { keys } => {
                    obj.insert("event".into(), "invalidate".into());
                    obj.insert("keys".into(), json!(keys.collect::<Vec<_>>()));
                }
                EventRef::InvalidatePrefix { prefix } => {
                    obj.insert("event".into(), "prefix".into());
                    obj.insert("prefix".into(), json!(prefix));
                }
                EventRef::ClearAll => {
                    obj.insert("event".into(), "clear".into());
                }
                EventRef::Custom { topic, payload } => {
                    obj.insert("event".into(), "custom".into());
                    obj.insert("topic".into(), json!(topic));
                    obj.insert(
                        "payload".into(),
                        json!(String::from_utf8_lossy(payload).into_owned()),
                    );
                }
            }
            v
        }
        Delivery::Reset { reason } => {
            let mut r = serde_json::to_value(reason).unwrap_or(Value::Null);
            if let Some(s) = r.get("stream").and_then(Value::as_u64) {
                r["stream"] = json!(stream_hex(s));
            }
            json!({ "type": "reset", "reason": r })
        }
    }
}

/// Runs `cachecast listen`.
pub async fn run(args: ListenArgs) -> Result<(), String> {
    let node = Node::join(args.net.config("listen"))
        .await
        .map_err(|e| e.to_string())?;
    let mut sub = node.subscribe();
    let deadline = args.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        json!({"type": "ready", "stream": stream_hex(node.stream())})
    )
    .and_then(|_| out.flush())
    .map_err(|e| format!("writing to stdout: {e}"))?;
    drop(out);
    let mut seen = 0u64;
    loop {
        if args.count.is_some_and(|c| seen >= c) {
            break;
        }
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, sub.recv()).await.ok().flatten(),
                None => sub.recv().await,
            }
        };
        let d = tokio::select! {
            d = next => d,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(d) = d else { break };
        seen += 1;
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{}", delivery_json(&d))
            .and_then(|_| out.flush())
            .is_err()
        {
            break; // stdout closed (e.g. piped into head): stop quietly.
        }
    }
    node.shutdown().await;
    if args.stats {
        let stats = node.stats().await;
        let mut v = serde_json::to_value(&stats).map_err(|e| e.to_string())?;
        v["type"] = json!("stats");
        println!("{v}");
    }
    Ok(())
}
