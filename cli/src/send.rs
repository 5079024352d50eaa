//! `cachecast send`: join, publish, say Goodbye, linger, exit.
//!
//! Input that would do harm is refused before anything is sent: an empty
//! key, an empty prefix (it would match every key: `clear` says that
//! openly), a key over the wire's limit.

use std::io::BufRead;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::args::{parse_duration, NetArgs};
use crate::failure::Failure;
use crate::stop::Stop;
use cachecast::wire::{self, Event};
use cachecast::Node;

const AFTER_HELP: &str = "\
Refused before anything is sent (exit status 2): an empty key, an empty \
prefix (it matches every key, so it would clear every cache of the cluster: \
use `cachecast send clear` if that is what you mean), a key longer than the \
wire allows, standard input without a key.

SIGINT or SIGTERM while publishing: the events not yet published are not \
sent, the node says Goodbye and lingers, and the exit status is 1. While \
lingering: the linger is finished (it is bounded by --linger) and the exit \
status stays 0. A second signal exits at once.";

/// Publish invalidations to the cluster.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct SendArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// After Goodbye, stay this long to answer receivers' requests.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub linger: Duration,
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
    let mut config = args.net.config("send");
    config.linger = args.linger;
    // `send` never subscribes: keep no backlog of deliveries, not even of
    // its own events.
    config.subscriber_queue = 16;
    config.deliver_own = false;
    let events = events(&args.what, config.protocol.max_datagram).map_err(Failure::Usage)?;
    stop.arm();
    let node = Node::join(config).await.map_err(|e| e.to_string())?;
    let n = events.len();
    let mut published = 0;
    let mut failed = None;
    for e in events {
        if stop.requested().is_some() {
            break;
        }
        if let Err(e) = node.publish(e).await {
            failed = Some(e.to_string());
            break;
        }
        published += 1;
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
    Ok(())
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
