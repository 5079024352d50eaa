//! `cachecast send`: join, publish, wait (bounded) until every live member
//! has the events, say Goodbye, linger, exit; with `--confirm`, print the
//! confirmation report and exit 0 only if it is complete.
//!
//! Input that would do harm is refused before anything is sent: an empty
//! key, an empty prefix (it would match every key: `clear` says that
//! openly), a key over the wire's limit.

use std::io::BufRead;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::args::{parse_duration, NetArgs};
use crate::confirm::{self, NoReport};
use crate::failure::Failure;
use crate::stop::Stop;
use cachecast::wire::{self, Event};
use cachecast::{Node, Receipt};

/// The longest `--confirm` or `--settle` accepted.
const MAX_WAIT: Duration = Duration::from_secs(600);

const AFTER_HELP: &str = "\
Refused before anything is sent (exit status 2): an empty key, an empty \
prefix (it matches every key, so it would clear every cache of the cluster: \
use `cachecast send clear` if that is what you mean), a key longer than the \
wire allows, standard input without a key.

Before it says Goodbye, send waits until every live member has delivered the \
events (they acknowledge on request), at most --settle (default 2s): under \
loss, the repair finishes while the sender is still there to answer it. \
Members that had not acknowledged at the bound are named in a warning on \
standard error; the exit status does not change. Then Goodbye, and --linger.

--confirm[=TIMEOUT] (default 2s; `--confirm 5s` works too) makes the wait \
the point: after publishing it asks every member that is live for an \
acknowledgement, waits at most TIMEOUT, and prints the report on standard \
output (text, or one JSON object with --json): confirmed (delivered every \
event), covered by reset (delivered a Reset after them, i.e. cleared its \
cache), departed (said Goodbye or its 3 s lease expired before it \
answered), pending (no answer at the timeout), each member by name and \
stream id. A node that just joined knows at once the members that answered \
its Hello, but one that cannot hear it (exactly what a confirmation must \
catch) only from that member's next heartbeat, sent at least every second: \
so the confirmation starts about 1.25 s after joining, whatever TIMEOUT is \
(the events themselves are published at once).

Exit status: 0 when everything was published (and, with --confirm, no \
member is pending); 1 when a member is pending at the --confirm timeout, \
the network or system failed, or a signal came before everything was \
published or confirmed; 2 for bad input.

SIGINT or SIGTERM while publishing: the events not yet published are not \
sent, the node says Goodbye and lingers, and the exit status is 1. While \
waiting for --confirm: no report, Goodbye, linger, exit status 1. While \
waiting for --settle or lingering: the wait ends (Goodbye and the linger, \
bounded by --linger, still happen) and the exit status stays 0. A second \
signal exits at once.";

/// Publish invalidations to the cluster.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct SendArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// After Goodbye, stay this long to answer receivers' requests.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub linger: Duration,
    /// Before Goodbye, wait at most this long until every live member has
    /// delivered the events (0s: do not wait). At most 10m.
    #[arg(long, default_value = "2s", value_parser = parse_settle, conflicts_with = "confirm")]
    pub settle: Duration,
    /// Await the confirmation of everything published, at most TIMEOUT
    /// (default 2s), print the report, and exit 1 if a member is pending.
    /// Above 0, at most 10m.
    #[arg(
        long,
        value_name = "TIMEOUT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "2s",
        value_parser = parse_confirm
    )]
    pub confirm: Option<Duration>,
    /// With --confirm: print the report as one JSON object (stream ids as
    /// 16 hex digits, durations in ms, and `complete`).
    #[arg(long, requires = "confirm")]
    pub json: bool,
    #[command(subcommand)]
    pub what: What,
}

/// What to publish.
#[derive(Debug, Subcommand)]
pub enum What {
    /// Invalidate keys, given as arguments or one per line on stdin (--stdin).
    Invalidate {
        /// The keys (not empty).
        #[arg(required_unless_present = "stdin", conflicts_with = "stdin", value_parser = parse_key)]
        keys: Vec<String>,
        /// Read keys from standard input, one per line; they are batched
        /// into as few events as fit. Empty lines (and a final newline) are
        /// skipped; a line is otherwise the key as written (a trailing CR
        /// removed). No key at all is an error.
        #[arg(long)]
        stdin: bool,
    },
    /// Invalidate every key starting with a prefix (not empty: to clear
    /// everything, use `clear`).
    Prefix {
        /// The prefix.
        #[arg(value_parser = parse_prefix)]
        prefix: String,
    },
    /// Clear every cache of the cluster.
    Clear,
    /// An application-defined message.
    Custom {
        /// Topic.
        topic: String,
        /// Payload (sent as UTF-8 bytes).
        payload: String,
    },
}

/// Parses `--settle`: 0 (no wait) up to [`MAX_WAIT`].
fn parse_settle(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d > MAX_WAIT => Err(format!("at most {}", humantime::format_duration(MAX_WAIT))),
        d => Ok(d),
    }
}

/// Parses `--confirm`'s timeout: above 0 (a confirmation that cannot wait
/// confirms nothing), at most [`MAX_WAIT`].
fn parse_confirm(s: &str) -> Result<Duration, String> {
    match parse_settle(s)? {
        d if d.is_zero() => Err("must be above 0 (leave --confirm out not to confirm)".into()),
        d => Ok(d),
    }
}

/// Parses a key given as an argument: not empty, within the wire's limit.
fn parse_key(s: &str) -> Result<String, String> {
    check_key(s)?;
    Ok(s.to_owned())
}

/// Parses a prefix: not empty (it would match every key), within the
/// wire's limit.
fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err(
            "an empty prefix matches every key: it would clear every cache of \
                    the cluster; if that is what you mean, use `cachecast send clear`"
                .into(),
        );
    }
    check_len("prefix", s)?;
    Ok(s.to_owned())
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("an empty key: give the key to invalidate".into());
    }
    check_len("key", key)
}

fn check_len(what: &str, s: &str) -> Result<(), String> {
    if s.len() > wire::MAX_KEY_LEN {
        return Err(format!(
            "a {what} of {} bytes; at most {}",
            s.len(),
            wire::MAX_KEY_LEN
        ));
    }
    Ok(())
}

/// Builds the events to publish, checking them against the limits; a
/// failure is bad input.
pub fn events(what: &What, max_datagram: usize) -> Result<Vec<Event>, String> {
    let events = match what {
        What::Invalidate { keys, stdin: false } => vec![Event::Invalidate { keys: keys.clone() }],
        What::Invalidate { stdin: true, .. } => {
            let keys = read_keys(std::io::stdin().lock())?;
            pack_keys(keys, max_datagram)?
        }
        What::Prefix { prefix } => vec![Event::InvalidatePrefix {
            prefix: prefix.clone(),
        }],
        What::Clear => vec![Event::ClearAll],
        What::Custom { topic, payload } => vec![Event::Custom {
            topic: topic.clone(),
            payload: payload.clone().into_bytes(),
        }],
    };
    for e in &events {
        wire::check_event(e, max_datagram).map_err(|e| e.to_string())?;
    }
    Ok(events)
}

fn read_keys(input: impl BufRead) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("reading standard input, line {}: {e}", i + 1))?;
        let key = line.strip_suffix('\r').unwrap_or(&line);
        if key.is_empty() {
            continue;
        }
        check_key(key).map_err(|e| format!("standard input, line {}: {e}", i + 1))?;
        keys.push(key.to_string());
    }
    if keys.is_empty() {
        return Err("no keys on standard input".into());
    }
    Ok(keys)
}

/// Packs keys into as few `Invalidate` events as fit in a datagram each
/// ([`wire::pack_keys`]), the error as one line.
pub fn pack_keys(keys: Vec<String>, max_datagram: usize) -> Result<Vec<Event>, String> {
    wire::pack_keys(keys, max_datagram).map_err(|e| match e {
        wire::EventError::TooLarge { .. } => {
            format!("a key does not fit in a {max_datagram}-byte datagram ({e})")
        }
        e => e.to_string(),
    })
}

/// Runs `cachecast send`.
pub async fn run(args: SendArgs, stop: &Stop) -> Result<(), Failure> {
    let mut config = args.net.config("send")?;
    config.linger = args.linger;
    // `send` never subscribes: keep no backlog of deliveries, not even of
    // its own events.
    config.subscriber_queue = 16;
    config.deliver_own = false;
    let view_after = config.protocol.heartbeat_idle + confirm::VIEW_MARGIN;
    let events = events(&args.what, crate::args::body_limit(&config)).map_err(Failure::Usage)?;
    stop.arm();
    let node = Node::join(config)
        .await
        .map_err(crate::args::join_failure)?;
    let joined = tokio::time::Instant::now();
    let n = events.len();
    let mut published = 0;
    let mut failed = None;
    // Everything published: one range of this node's stream.
    let mut all: Option<Receipt> = None;
    for e in events {
        if stop.requested().is_some() {
            break;
        }
        match node.publish(e).await {
            Ok(r) => {
                let all = all.get_or_insert(Receipt {
                    stream: r.stream,
                    seqs: r.seqs.start..r.seqs.start,
                });
                all.seqs.end = r.seqs.end;
            }
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        }
        published += 1;
    }
    let mut report = None;
    if let (Some(all), true) = (&all, failed.is_none() && published == n) {
        match args.confirm {
            Some(timeout) => {
                report =
                    Some(confirm::confirm(&node, all, joined + view_after, timeout, stop).await);
            }
            None => confirm::settle(&node, all, args.settle, stop).await,
        }
    }
    // Goodbye and linger, also after a signal or a failure: the other nodes
    // then forget this stream instead of timing it out with a Reset.
    node.shutdown().await;
    let stats = node.stats().await;
    tracing::info!(
        events = published,
        datagrams = stats.protocol.data_sent,
        "sent"
    );
    if let Some(e) = failed {
        return Err(Failure::Failed(e));
    }
    if published < n {
        let why = stop
            .requested()
            .map_or("a stop".to_owned(), |r| r.to_string());
        return Err(Failure::Failed(format!(
            "stopped by {why}: published {published} of {n} events, the rest were not sent"
        )));
    }
    match report {
        None => Ok(()),
        Some(Err(NoReport::Stopped(why))) => Err(Failure::Failed(format!(
            "stopped by {why}: published {n} events, not confirmed"
        ))),
        Some(Err(NoReport::Closed(e))) => Err(Failure::Failed(format!(
            "published {n} events, no confirmation: {e}"
        ))),
        Some(Ok(r)) => {
            let text = if args.json {
                format!("{}\n", confirm::report_json(&r))
            } else {
                confirm::report_text(&r)
            };
            print_out(&text)?;
            if r.is_complete() {
                Ok(())
            } else {
                Err(Failure::Failed(format!(
                    "not confirmed: {} member(s) pending at the timeout: {}",
                    r.pending.len(),
                    confirm::names(&r.pending)
                )))
            }
        }
    }
}

/// Writes `text` to standard output (the node is stopped by now: a slow
/// reader holds nothing but this process).
fn print_out(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Failure::Failed(format!("writing the report to standard output: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_many_keys_into_few_events_that_all_fit() {
        let keys: Vec<String> = (0..5000).map(|i| format!("user:{i:08}")).collect();
        let events = pack_keys(keys.clone(), 1200).unwrap();
        assert!(events.len() < 100, "{} events", events.len());
        let mut back = Vec::new();
        for e in &events {
            wire::check_event(e, 1200).unwrap();
            if let Event::Invalidate { keys } = e {
                back.extend(keys.iter().cloned());
            }
        }
        assert_eq!(back, keys);
    }

    #[test]
    fn stdin_keys_skip_blank_lines_and_reject_oversize() {
        let keys = read_keys("a\n\nb\r\n\r\n c\n".as_bytes()).unwrap();
        assert_eq!(keys, ["a", "b", " c"]);
        assert!(read_keys("\n\n".as_bytes())
            .unwrap_err()
            .contains("no keys"));
        let long = "x".repeat(wire::MAX_KEY_LEN + 1);
        assert!(read_keys(long.as_bytes()).unwrap_err().contains("line 1"));
    }

    #[test]
    fn empty_keys_and_prefixes_are_refused_with_what_to_do() {
        assert!(parse_key("").unwrap_err().contains("empty key"));
        assert_eq!(parse_key("k").unwrap(), "k");
        let e = parse_prefix("").unwrap_err();
        assert!(e.contains("every cache") && e.contains("send clear"), "{e}");
        assert_eq!(parse_prefix("cart:").unwrap(), "cart:");
        let long = "x".repeat(wire::MAX_KEY_LEN + 1);
        assert!(parse_key(&long).unwrap_err().contains("at most"));
        assert!(parse_prefix(&long).unwrap_err().contains("at most"));
    }
}
