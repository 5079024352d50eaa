//! `cachecast listen`: join and print every delivery as one JSON object
//! per line on stdout, until a signal, a count, a timeout, or (when asked)
//! the end of standard input or of the parent process.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use crate::args::{parse_duration, NetArgs};
use crate::failure::Failure;
use crate::keys::ReloadOnHangup;
use crate::stop::Stop;
use cachecast::wire::EventRef;
use cachecast::{Delivery, Node};

const AFTER_HELP: &str = "\
Output: first {\"type\":\"ready\",\"stream\":\"…\"} once joined, then one line \
per delivery ({\"type\":\"event\",...} or {\"type\":\"reset\",...}), and with \
--stats a last {\"type\":\"stats\",...}. Stream ids are strings of 16 hex \
digits, as in the logs.

A listener is receive-only: it never publishes, says so in every datagram, \
and so its end, even by kill -9, costs the other nodes no Reset.

Stopping: SIGINT and SIGTERM (systemd, Docker, Kubernetes) stop it cleanly: \
the node says Goodbye, lingers, prints its stats with --stats, and exits 0; \
a reader that stopped reading holds it at most 2 s more; a second signal \
exits at once. So do --count, --timeout, and, when asked, the end of standard \
input (--exit-on-stdin-close) or of the parent process (--exit-with-parent). \
Without these it runs until stopped, also when its parent is gone.

Keys: with a key file (--key-file, CACHECAST_KEY_FILE), SIGHUP reloads it \
without leaving the group (the rotation's steps: cachecast keygen --help); \
the ids now held, or why the file was refused (the keys in use then stay), \
are logged (RUST_LOG=info shows a successful reload). Without a key file, \
SIGHUP ends the process as usual.";

/// Print deliveries as JSON lines.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct ListenArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// Stop after this many deliveries (events and resets); at least 1.
    /// Without it: no limit.
    #[arg(long, value_parser = parse_count)]
    pub count: Option<u64>,
    /// Stop after this long (e.g. 10s, 500ms); above 0.
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// On exit, print the node's counters as a last JSON line
    /// (`{"type":"stats",...}`).
    #[arg(long)]
    pub stats: bool,
    /// Stop cleanly when standard input reaches its end (what is read is
    /// ignored): for a parent that holds a pipe to it, which closes however
    /// the parent ends. Without it, standard input is not read.
    #[arg(long)]
    pub exit_on_stdin_close: bool,
    /// Stop cleanly when the parent process ends (Linux: the kernel sends
    /// SIGTERM; strictly, when the thread that started it ends).
    #[arg(long)]
    pub exit_with_parent: bool,
}

/// Parses `--count`: 0 would stop before the first delivery.
fn parse_count(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1 (leave --count out to listen without a limit)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e} (give a whole number of deliveries)")),
    }
}

/// Parses `--timeout`: 0 would stop at once.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => {
            Err("must be above 0 (leave --timeout out to listen without a limit)".into())
        }
        d => Ok(d),
    }
}

/// A stream id as JSON: a hex string (JSON numbers lose precision past 2^53).
pub fn stream_hex(stream: u64) -> String {
    format!("{stream:016x}")
}

/// Rewrites every `"stream"` field holding a number, at any depth, as 16
/// hex digits ([`stream_hex`]): the library's types serialize stream ids as
/// numbers, which JSON readers round past 2^53.
pub fn hex_streams(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                match x.as_u64() {
                    Some(s) if k == "stream" => *x = json!(stream_hex(s)),
                    _ => hex_streams(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(hex_streams),
        _ => {}
    }
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

/// Lines for stdout, written by a thread of their own: a reader that stops
/// reading blocks that thread, never the node, its signals or its Goodbye.
struct Lines {
    tx: tokio::sync::mpsc::Sender<String>,
    done: tokio::sync::oneshot::Receiver<()>,
}

impl Lines {
    fn start() -> Lines {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
        let (done_tx, done) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut out = std::io::stdout().lock();
            while let Some(line) = rx.blocking_recv() {
                let flush = rx.is_empty();
                let written =
                    writeln!(out, "{line}").and_then(|_| if flush { out.flush() } else { Ok(()) });
                if written.is_err() {
                    break; // closed: the sender sees it on its next line
                }
            }
            let _ = out.flush();
            let _ = done_tx.send(());
        });
        Lines { tx, done }
    }

    /// Queues a line; false if stdout is closed, or a stop came while the
    /// queue was full (the reader is not reading).
    async fn send(&self, line: String, stop: &Stop) -> bool {
        // Biased: a line that fits is queued even after a stop (the stats
        // line comes after one); only a full queue gives way to the stop.
        tokio::select! {
            biased;
            sent = self.tx.send(line) => sent.is_ok(),
            _ = stop.wait() => false,
        }
    }

    /// Waits until every queued line is written; after a stop, at most
    /// [`FLUSH_ON_STOP`] (a reader that stopped reading cannot hold the
    /// process).
    async fn finish(self, stop: &Stop) {
        let Lines { tx, done } = self;
        drop(tx);
        tokio::pin!(done);
        tokio::select! {
            biased;
            _ = &mut done => {}
            _ = stop.wait() => {
                let _ = tokio::time::timeout(FLUSH_ON_STOP, done).await;
            }
        }
    }
}

/// How long a stopping listener waits for its reader to take what is queued.
const FLUSH_ON_STOP: Duration = Duration::from_secs(2);

/// Runs `cachecast listen`; `parent` is the parent's pid at start.
pub async fn run(args: ListenArgs, stop: &Stop, parent: libc::pid_t) -> Result<(), Failure> {
    stop.arm();
    if args.exit_with_parent {
        stop.with_parent(parent)
            .map_err(|e| format!("--exit-with-parent: {e}"))?;
    }
    if args.exit_on_stdin_close {
        stop.on_stdin_close();
    }
    // A listener never publishes: receive-only, so that stopping it, even
    // by kill -9, costs the other nodes no Reset.
    let mut config = args.net.config("listen")?;
    config.receive_only = true;
    // With a key file, SIGHUP reloads it (caught before the join).
    let hangup = match &config.key_file {
        Some(_) => {
            Some(ReloadOnHangup::install().map_err(|e| format!("cannot catch SIGHUP: {e}"))?)
        }
        None => None,
    };
    let node = Node::join(config)
        .await
        .map_err(crate::args::join_failure)?;
    let reloads = hangup.map(|h| h.start(node.clone(), |_| {}));
    let mut sub = node.subscribe();
    let deadline = args.timeout.map(|t| tokio::time::Instant::now() + t);
    let out = Lines::start();
    let ready = json!({"type": "ready", "stream": stream_hex(node.stream())});
    let mut open = out.send(ready.to_string(), stop).await;
    let mut seen = 0u64;
    while open {
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
            _ = stop.wait() => None,
        };
        let Some(d) = d else { break };
        seen += 1;
        // False once stdout is closed (e.g. piped into head: stop quietly)
        // or a stop came while the reader was not reading.
        open = out.send(delivery_json(&d).to_string(), stop).await;
    }
    // Goodbye and linger (a listener is receive-only: nobody follows it,
    // so even without this nobody would Reset for it).
    node.shutdown().await;
    if args.stats && open {
        let stats = node.stats().await;
        let mut v = serde_json::to_value(&stats).map_err(|e| e.to_string())?;
        v["type"] = json!("stats");
        out.send(v.to_string(), stop).await;
    }
    out.finish(stop).await;
    if let Some(r) = reloads {
        r.abort();
    }
    Ok(())
}
