//! `cachecast members`: joins the cluster receive-only, listens long enough
//! to hear every member and its position reports, and prints the
//! membership view (`Node::members`) with this node's staleness bounds: a
//! table, or one JSON document; with `--watch`, again every interval until
//! a signal.
//!
//! What it may not do: publish (it is receive-only, so that its end costs
//! nobody a Reset); wait without a bound; let a reader that stopped reading
//! hold it past a signal.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use clap::Args;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::args::{parse_duration, NetArgs};
use crate::failure::Failure;
use crate::keys::{hex_member_keys, key_hex, summary_lines};
use crate::listen::{hex_streams, stream_hex};
use crate::stop::Stop;
use cachecast::{Liveness, Member, Node, Staleness};

/// The longest `--wait` accepted.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// The shortest `--watch` interval accepted.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

const AFTER_HELP: &str = "\
What it does: joins the cluster as a receive-only node (it never publishes, \
so when it ends, even by kill -9, no other node Resets for it; while it \
runs it is a member like any other, and answers confirmations), listens for \
--wait, then prints what it heard. Every node sends at least a heartbeat \
every second and reports how far it has delivered each stream about every \
second (only what changed, plus a few unchanged positions in turn), so the \
default 1.5s hears every live member and, on a small cluster, every \
position; on a cluster of many streams, positions that do not move take a \
few reports to show (use --watch). It knows only what it heard: a member \
that ended before it started is not shown.

Columns, one row per member:
  NAME        the member's node name (--name; default <command>-<pid>)
  STREAM      its stream id, 16 hex digits (new at every start of a node)
  ADDRESS     where its datagrams come from
  STATE       live: heard within the lease (3 s); left: said Goodbye;
              dead: not heard for longer than the lease, without Goodbye
              (crashed, or cut off from this host). Members that left or
              died are shown for 60 s.
  HEARD       how long ago it was last heard
  ROLE        publisher, or receive-only (never publishes)
  KEYS        (when the cluster uses keys) the key ids it holds, as its
              last report said, the one it sends with first; - for none
  SENDS WITH  the key id of its last datagram heard; - if unauthenticated
and under it, one line per stream it reported:
  follows     the stream's node name (? if this node never heard it) and
              stream id
  delivered   every event of the stream below this seq was delivered (or
              covered by a Reset)
  lag         how many events of the stream, as far as this node knows
              it, the member had not delivered when it reported
  reported    how long ago it reported this position
  reset<      present when the member gave up events below this seq with
              a Reset (it cleared its cache)
With keys, one line per key id: how many live members hold it and how \
many send with it (\"key 5d1c0a7e: held by 4/4 live members, sent with by \
4/4\"): a rotation's next step is due when the new key is held by every \
live member (move it first) or sent with by every one (retire the old key; \
see cachecast keygen --help). This command reads the key file (--key-file) \
like every node: without the cluster's key, a cluster that requires keys \
is not heard at all.
The last line: this node's staleness bound per stream it follows, the \
longest it may have been missing an event of that stream without knowing \
it, and whether it is isolated (heard no member for longer than the lease).

This command's own node is left out of the table; --json includes it \
(\"this_node\": true), with its staleness per stream.

--json prints one JSON document: {\"at\", \"node\", \"members\": [...], \
\"key_summary\": [...], \"staleness\": {...}}, stream ids as strings of 16 \
hex digits, key ids (members' \"keys\" and \"sends_with\") of 8, durations in \
milliseconds (last_heard, reported, staleness, worst). With --watch, one \
document per line.

--watch[=INTERVAL] (default 2s, at least 100ms; `--watch 5s` works too) \
prints again every INTERVAL until SIGINT or SIGTERM (or --count tables), \
then says Goodbye and exits 0. Without --watch, a signal before the table \
is printed exits 1. Writing is abandoned at a signal if the reader does not \
read.";

/// Print the members of the cluster.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct MembersArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// Print one JSON document (with --watch, one per line) instead of the
    /// table.
    #[arg(long)]
    pub json: bool,
    /// How long to listen before the first table: the report interval (1 s,
    /// jittered ±25 %) and a margin. Above 0, at most 60s.
    #[arg(long, default_value = "1.5s", value_parser = parse_wait)]
    pub wait: Duration,
    /// Print again every INTERVAL (default 2s) until stopped.
    #[arg(
        long,
        value_name = "INTERVAL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "2s",
        value_parser = parse_interval
    )]
    pub watch: Option<Duration>,
    /// With --watch: stop after this many tables (at least 1).
    #[arg(long, requires = "watch", value_parser = parse_count)]
    pub count: Option<u64>,
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    crate::args::parse_wait(s, MAX_WAIT)
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_INTERVAL {
        return Err(format!("give an interval of at least {MIN_INTERVAL:?}"));
    }
    Ok(d)
}

fn parse_count(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1 (leave --count out to watch until stopped)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e} (give a whole number of tables)")),
    }
}

/// Runs `cachecast members`.
pub async fn run(args: MembersArgs, stop: &Stop) -> Result<(), Failure> {
    stop.arm();
    let mut config = args.net.config("members")?;
    // Receive-only: its end, however it comes, costs nobody a Reset.
    config.receive_only = true;
    // It never subscribes: keep no backlog of deliveries.
    config.subscriber_queue = 16;
    let name = config.node_name.clone();
    let node = Node::join(config)
        .await
        .map_err(crate::args::join_failure)?;
    let mut out = tokio::io::stdout();
    let mut printed = 0u64;
    let mut next = Instant::now() + args.wait;
    let mut stopped = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            r = stop.wait() => {
                stopped = Some(r);
                break;
            }
        }
        let members = node.members().await;
        let staleness = node.staleness().await;
        let text = if args.json {
            format!("{}\n", document(&name, &members, staleness.as_ref()))
        } else {
            let mut t = table(&name, &members, staleness.as_ref());
            if args.watch.is_some() {
                t.push('\n');
            }
            t
        };
        let written = tokio::select! {
            w = async {
                out.write_all(text.as_bytes()).await?;
                out.flush().await
            } => w,
            r = stop.wait() => {
                stopped = Some(r);
                break;
            }
        };
        if written.is_err() {
            // Standard output closed (e.g. piped into head): done.
            break;
        }
        printed += 1;
        match args.watch {
            Some(every) if args.count.is_none_or(|c| printed < c) => {
                // Keeps the rhythm; after a slow round, the next at once.
                next = (next + every).max(Instant::now());
            }
            _ => break,
        }
    }
    node.shutdown().await;
    match stopped {
        Some(why) if printed == 0 && args.watch.is_none() => Err(Failure::Failed(format!(
            "stopped by {why} before the members were printed"
        ))),
        _ => Ok(()),
    }
}

/// The view as one JSON document.
pub fn document(name: &str, members: &[Member], staleness: Option<&Staleness>) -> Value {
    let mut v = json!({
        "at": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "node": name,
        "members": members,
        "staleness": staleness,
    });
    hex_streams(&mut v);
    hex_member_keys(&mut v, members);
    v
}

fn state(s: Liveness) -> &'static str {
    match s {
        Liveness::Live => "live",
        Liveness::Left => "left",
        Liveness::Dead => "dead",
    }
}

/// A duration for people: `850ms`, `2.4s`, `130s`.
fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(100) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// Rows with their columns padded to the widest cell (two spaces apart;
/// the last column not padded).
fn align(rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = Vec::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            let w = c.chars().count();
            match widths.get_mut(i) {
                Some(x) => *x = (*x).max(w),
                None => widths.push(w),
            }
        }
    }
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(c);
                } else {
                    let _ = write!(line, "{c:<w$}  ", w = widths[i]);
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}

/// The view as a table: a summary line, one row per member (this node
/// left out) with one line under it per stream it reported, and this
/// node's staleness bounds.
pub fn table(name: &str, members: &[Member], staleness: Option<&Staleness>) -> String {
    let mut others: Vec<&Member> = members.iter().filter(|m| !m.this_node).collect();
    others.sort_by(|a, b| (&a.name, a.stream).cmp(&(&b.name, b.stream)));
    let count = |s: Liveness| others.iter().filter(|m| m.state == s).count();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{} member(s): {} live, {} left, {} dead (as heard by {name})",
        others.len(),
        count(Liveness::Live),
        count(Liveness::Left),
        count(Liveness::Dead)
    );
    // Key columns only when the cluster uses keys.
    let keyed = others
        .iter()
        .any(|m| !m.keys.is_empty() || m.sends_with.is_some());
    let mut header = ["NAME", "STREAM", "ADDRESS", "STATE", "HEARD", "ROLE"]
        .map(String::from)
        .to_vec();
    if keyed {
        header.extend(["KEYS".into(), "SENDS WITH".into()]);
    }
    let mut rows = vec![header];
    let mut follows: Vec<Vec<String>> = Vec::new();
    // For each member row, the range of its lines in `follows`.
    let mut under = Vec::new();
    for m in &others {
        let mut row = vec![
            m.name.clone().unwrap_or_else(|| "?".into()),
            stream_hex(m.stream),
            m.addr.map_or_else(|| "-".into(), |a| a.to_string()),
            state(m.state).into(),
            format!("{} ago", human(m.last_heard)),
            if m.receive_only {
                "receive-only"
            } else {
                "publisher"
            }
            .into(),
        ];
        if keyed {
            let held: Vec<String> = m.keys.iter().map(|k| key_hex(*k)).collect();
            row.push(if held.is_empty() {
                "-".into()
            } else {
                held.join(",")
            });
            row.push(m.sends_with.map_or_else(|| "-".into(), key_hex));
        }
        rows.push(row);
        let from = follows.len();
        for s in &m.streams {
            follows.push(vec![
                "  follows".into(),
                s.node.clone().unwrap_or_else(|| "?".into()),
                stream_hex(s.stream),
                format!("delivered {}", s.delivered),
                format!("lag {}", s.lag),
                format!("reported {} ago", human(s.reported)),
                if s.reset_end > 0 {
                    format!("reset<{}", s.reset_end)
                } else {
                    String::new()
                },
            ]);
        }
        under.push(from..follows.len());
    }
    let rows = align(&rows);
    let follows = align(&follows);
    let _ = writeln!(t, "{}", rows[0]);
    for (row, lines) in rows[1..].iter().zip(under) {
        let _ = writeln!(t, "{row}");
        for l in &follows[lines] {
            let _ = writeln!(t, "{l}");
        }
    }
    for line in summary_lines(members) {
        let _ = writeln!(t, "{line}");
    }
    match staleness {
        Some(s) => {
            let per: Vec<String> = s
                .streams
                .iter()
                .map(|x| {
                    format!(
                        "{} {} {}",
                        x.node.as_deref().unwrap_or("?"),
                        stream_hex(x.stream),
                        human(x.staleness)
                    )
                })
                .collect();
            let _ = writeln!(
                t,
                "staleness here: worst {}{}{}{}",
                human(s.worst),
                if s.isolated { " (ISOLATED)" } else { "" },
                if per.is_empty() { "" } else { "; " },
                per.join(", ")
            );
        }
        None => {
            let _ = writeln!(t, "staleness here: unknown (the node stopped)");
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use cachecast::{MemberStream, StreamStaleness};

    fn view() -> (Vec<Member>, Staleness) {
        let me = Member {
            keys: vec![],
            sends_with: None,
            stream: 9,
            name: Some("members-1".into()),
            addr: None,
            this_node: true,
            receive_only: true,
            state: Liveness::Live,
            last_heard: Duration::ZERO,
            streams: vec![],
        };
        let pubr = Member {
            keys: vec![],
            sends_with: None,
            stream: 0xa1,
            name: Some("backend".into()),
            addr: Some("127.0.0.1:7467".parse().unwrap()),
            this_node: false,
            receive_only: false,
            state: Liveness::Live,
            last_heard: Duration::from_millis(250),
            streams: vec![],
        };
        let listener = Member {
            keys: vec![],
            sends_with: None,
            stream: u64::MAX,
            name: Some("cache-1".into()),
            addr: Some("127.0.0.1:7467".parse().unwrap()),
            this_node: false,
            receive_only: true,
            state: Liveness::Dead,
            last_heard: Duration::from_millis(4200),
            streams: vec![MemberStream {
                stream: 0xa1,
                node: Some("backend".into()),
                delivered: 42,
                lag: 3,
                reset_end: 7,
                reported: Duration::from_millis(1500),
                staleness: None,
            }],
        };
        let staleness = Staleness {
            worst: Duration::from_millis(300),
            isolated: false,
            streams: vec![StreamStaleness {
                stream: 0xa1,
                node: Some("backend".into()),
                staleness: Duration::from_millis(300),
            }],
        };
        (vec![me, pubr, listener], staleness)
    }

    #[test]
    fn the_table_has_one_aligned_row_per_member_and_its_streams_under_it() {
        let (members, staleness) = view();
        let t = table("members-1", &members, Some(&staleness));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "2 member(s): 1 live, 0 left, 1 dead (as heard by members-1)"
        );
        assert_eq!(
            lines[1],
            "NAME     STREAM            ADDRESS         STATE  HEARD      ROLE"
        );
        assert_eq!(
            lines[2],
            "backend  00000000000000a1  127.0.0.1:7467  live   250ms ago  publisher"
        );
        assert_eq!(
            lines[3],
            "cache-1  ffffffffffffffff  127.0.0.1:7467  dead   4.2s ago   receive-only"
        );
        assert_eq!(
            lines[4],
            "  follows  backend  00000000000000a1  delivered 42  lag 3  reported 1.5s ago  reset<7"
        );
        assert_eq!(
            lines[5],
            "staleness here: worst 300ms; backend 00000000000000a1 300ms"
        );
        assert_eq!(lines.len(), 6, "{t}");
        assert!(!t.contains("members-1 "), "this node is left out: {t}");
    }

    #[test]
    fn the_document_keeps_every_member_with_hex_streams() {
        let (members, staleness) = view();
        let v = document("members-1", &members, Some(&staleness));
        let m = v["members"].as_array().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0]["this_node"], true);
        assert_eq!(m[2]["stream"], "ffffffffffffffff");
        assert_eq!(m[2]["state"], "dead");
        assert_eq!(m[2]["last_heard"], 4200.0);
        assert_eq!(m[2]["streams"][0]["stream"], "00000000000000a1");
        assert_eq!(m[2]["streams"][0]["reported"], 1500.0);
        assert_eq!(m[1]["addr"], "127.0.0.1:7467");
        assert_eq!(v["staleness"]["streams"][0]["stream"], "00000000000000a1");
        assert_eq!(v["staleness"]["worst"], 300.0);
        assert_eq!(v["node"], "members-1");
    }

    /// With keys: two more columns and one summary line per key id.
    #[test]
    fn with_keys_the_table_shows_each_members_keys_and_the_summary() {
        let (mut members, staleness) = view();
        members[1].keys = vec![0xb1, 0x5d1c_0a7e];
        members[1].sends_with = Some(0xb1);
        members[2].keys = vec![0x5d1c_0a7e];
        let t = table("members-1", &members, Some(&staleness));
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].ends_with("ROLE          KEYS               SENDS WITH"),
            "{t}"
        );
        assert!(
            lines[2].ends_with("publisher     000000b1,5d1c0a7e  000000b1"),
            "{t}"
        );
        assert!(
            lines[3].ends_with("receive-only  5d1c0a7e           -"),
            "{t}"
        );
        // Only live members count (cache-1 is dead).
        assert_eq!(
            lines[5],
            "key 000000b1: held by 1/1 live members, sent with by 1/1"
        );
        assert_eq!(
            lines[6],
            "key 5d1c0a7e: held by 1/1 live members, sent with by 0/1"
        );
        let v = document("members-1", &members, Some(&staleness));
        assert_eq!(v["members"][1]["keys"], json!(["000000b1", "5d1c0a7e"]));
        assert_eq!(v["members"][1]["sends_with"], "000000b1");
        assert_eq!(v["key_summary"][0]["sent_with_by"], 1);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_millis(2449)), "2.4s");
        assert_eq!(human(Duration::from_secs(130)), "130s");
    }
}
