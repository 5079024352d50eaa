//! `cachecast send`: join, publish, say Goodbye, linger, exit.

use std::io::BufRead;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::args::{parse_duration, NetArgs};
use cachecast::node::Node;
use cachecast::wire::{self, Event};

/// Publish invalidations to the cluster.
#[derive(Debug, Args)]
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
        /// The keys.
        #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
        keys: Vec<String>,
        /// Read keys from standard input, one per line (empty lines are
        /// skipped); they are batched into as few events as fit.
        #[arg(long)]
        stdin: bool,
    },
    /// Invalidate every key starting with a prefix.
    Prefix {
        /// The prefix.
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

/// Builds the events to publish, checking them against the limits.
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
        let key = line.trim_end_matches('\r');
        if key.is_empty() {
            continue;
        }
        if key.len() > wire::MAX_KEY_LEN {
            return Err(format!(
                "line {}: a key of {} bytes; at most {}",
                i + 1,
                key.len(),
                wire::MAX_KEY_LEN
            ));
        }
        keys.push(key.to_string());
    }
    if keys.is_empty() {
        return Err("no keys on standard input".into());
    }
    Ok(keys)
}

/// Packs keys into as few `Invalidate` events as fit in a datagram each.
pub fn pack_keys(keys: Vec<String>, max_datagram: usize) -> Result<Vec<Event>, String> {
    let budget = max_datagram - wire::DATA_OVERHEAD;
    let mut events = Vec::new();
    let mut current: Vec<String> = Vec::new();
    // Event tag + key count (varint) + per key: length (varint) + bytes.
    let mut size = 1 + 3;
    for key in keys {
        let cost = key.len() + 3;
        if !current.is_empty() && (size + cost > budget || current.len() == wire::MAX_KEYS) {
            events.push(Event::Invalidate {
                keys: std::mem::take(&mut current),
            });
            size = 1 + 3;
        }
        if size + cost > budget {
            return Err(format!(
                "key {key:?} does not fit in a {max_datagram}-byte datagram"
            ));
        }
        size += cost;
        current.push(key);
    }
    if !current.is_empty() {
        events.push(Event::Invalidate { keys: current });
    }
    Ok(events)
}

/// Runs `cachecast send`.
pub async fn run(args: SendArgs) -> Result<(), String> {
    let mut config = args.net.config("send");
    config.linger = args.linger;
    // `send` never subscribes: keep no backlog of deliveries.
    config.subscriber_queue = 16;
    let events = events(&args.what, config.protocol.max_datagram)?;
    let node = Node::join(config).await.map_err(|e| e.to_string())?;
    let n = events.len();
    for e in events {
        node.publish(e).await.map_err(|e| e.to_string())?;
    }
    node.shutdown().await;
    let stats = node.stats().await;
    tracing::info!(events = n, datagrams = stats.protocol.data_sent, "sent");
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
        let keys = read_keys("a\n\nb\r\n".as_bytes()).unwrap();
        assert_eq!(keys, ["a", "b"]);
        assert!(read_keys("\n\n".as_bytes())
            .unwrap_err()
            .contains("no keys"));
        let long = "x".repeat(wire::MAX_KEY_LEN + 1);
        assert!(read_keys(long.as_bytes()).unwrap_err().contains("line 1"));
    }
}
