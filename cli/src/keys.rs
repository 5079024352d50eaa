//! Keys on the command line: `cachecast keygen` (write a key file, append
//! a key for a rotation, list a file's key ids), and how key ids are shown
//! everywhere (8 hex digits; the membership view's keys, and the summary
//! that tells a rotation's operator when to take the next step).
//!
//! What it may not do: print, log or take on its command line a secret
//! (only key ids, which are a hash of it); replace a key file (a new one is
//! created with mode 0600 from the start, an existing one only appended to).

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};

use crate::failure::Failure;
use cachecast::keys::{self, KeyFile, KeyFileError};
use cachecast::{Liveness, Member, Node, ReloadError};

const AFTER_HELP: &str = "\
The key file: text, one secret per line (64 hex digits: 32 random bytes), \
`#` comments; mode 0600 (a file that group or others may read is refused). \
The FIRST key is the one a node sends with; every key in the file is \
accepted. Every node of the cluster gets the same file (--key-file PATH, \
CACHECAST_KEY_FILE, or key_file in the agent's [auth]). A key id (8 hex \
digits) names a key without revealing it; nothing here prints a secret.

Rotation, with nothing lost (the same file on every node; `reload` is \
SIGHUP to `cachecast listen` or `cachecast agent`, or POST /v1/keys/reload \
to an agent; other commands read the file when they start):
  1. keygen --append PATH adds a new key at the end: accepted, not yet sent \
with. Put the file on every node and reload each.
  2. When `cachecast members` shows that every live member holds the new \
id (its summary line: \"key ID: held by N/N live members\"), move the new \
key's line (and its comment) first in the file, everywhere, and reload: \
nodes send with it.
  3. When every live member sends with the new id (\"sent with by N/N\"), \
and at least a retransmit ring's age later (30 s by default), delete the old key's line everywhere and \
reload.

Exit status: 0 on success; 2 when the file cannot be used as asked (it \
exists, is missing, is readable by others, holds something that is not a \
key).";

/// Write a new key file, append a key to one (rotation), or list its key
/// ids.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct KeygenArgs {
    /// The key file (default: CACHECAST_KEY_FILE).
    #[arg(env = "CACHECAST_KEY_FILE", value_name = "PATH")]
    pub path: PathBuf,
    /// Add a new key at the end of an existing key file: accepted by the
    /// nodes that reload it, not yet sent with (a rotation's first step).
    #[arg(long, conflicts_with = "list")]
    pub append: bool,
    /// Print the file's key ids, one per line, the sending one first.
    #[arg(long)]
    pub list: bool,
    /// With --list: one JSON object instead
    /// (`{"path", "keys": [{"id", "sending"}]}`).
    #[arg(long, requires = "list")]
    pub json: bool,
}

/// A key id as the command line shows it: 8 hex digits.
pub fn key_hex(id: u32) -> String {
    format!("{id:08x}")
}

/// A key file's problem as a usage error (exit status 2).
fn usage(e: KeyFileError) -> Failure {
    Failure::Usage(e.to_string())
}

/// Runs `cachecast keygen`.
pub fn run(args: KeygenArgs) -> Result<(), Failure> {
    let path = &args.path;
    let shown = path.display();
    if args.list {
        let ids = KeyFile::load(path).map_err(usage)?.ids();
        if args.json {
            let keys: Vec<Value> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| json!({"id": key_hex(*id), "sending": i == 0}))
                .collect();
            println!("{}", json!({"path": path, "keys": keys}));
        } else {
            for (i, id) in ids.iter().enumerate() {
                let role = if i == 0 { "sending" } else { "accepted" };
                println!("{} {role}", key_hex(*id));
            }
        }
        return Ok(());
    }
    if args.append {
        let id = keys::append_new(path).map_err(usage)?;
        let ids = KeyFile::load(path).map_err(usage)?.ids();
        let id = key_hex(id);
        let held: Vec<String> = ids.iter().map(|i| key_hex(*i)).collect();
        println!("{id}");
        eprintln!(
            "appended key {id} to {shown}: accepted, not yet sent with (the file now holds {}; \
             {} sends)",
            held.join(", "),
            held[0]
        );
        eprintln!(
            "next: 1. put {shown} on every node and reload each (SIGHUP to cachecast listen or \
             agent, or POST /v1/keys/reload);\n      2. when `cachecast members` shows key {id} \
             held by every live member, move its line first in the file everywhere and \
             reload;\n      3. when every live member sends with {id}, delete the old key's \
             line everywhere and reload (cachecast keygen --help)"
        );
        return Ok(());
    }
    let id = key_hex(keys::write_new(path).map_err(usage)?);
    println!("{id}");
    eprintln!("wrote {shown} (mode 0600) holding one new key, {id}");
    eprintln!(
        "next: copy it to every node of the cluster, keeping mode 0600 (e.g. install -m 600), \
         and start each with --key-file {shown} (or CACHECAST_KEY_FILE, or key_file in the \
         agent's [auth]); a cluster already running without keys moves to them one node at a \
         time with --auth accept, then require"
    );
    Ok(())
}

/// Key ids as a list for logs and errors: `5d1c0a7e,8a2f1b3c` (the
/// sending one first).
pub fn ids_text(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| key_hex(*i))
        .collect::<Vec<_>>()
        .join(",")
}

/// Logs the outcome of a key reload that `via` asked for: the ids now
/// held (at info: `RUST_LOG=info` shows it), or why not (an error; the
/// keys in use stay).
pub fn log_reload(result: &Result<Vec<u32>, ReloadError>, via: &str) {
    match result {
        Ok(ids) => tracing::info!(
            keys = %ids_text(ids),
            sending = %ids.first().map_or_else(|| "-".into(), |i| key_hex(*i)),
            via,
            "keys reloaded"
        ),
        Err(e) => tracing::error!(
            error = %e,
            via,
            "keys not reloaded: the keys in use stay"
        ),
    }
}

/// Catches SIGHUP from now on (its default, ending the process, no longer
/// applies), and once `node` is given, reloads its key file at each one,
/// without leaving the group: logs the outcome ([`log_reload`]) and hands
/// it to `each`. The task ends when the node has stopped.
pub struct ReloadOnHangup {
    hup: tokio::signal::unix::Signal,
}

impl ReloadOnHangup {
    /// Installs the SIGHUP handler (before the join, so that a SIGHUP
    /// while joining does not end the process).
    pub fn install() -> std::io::Result<ReloadOnHangup> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ReloadOnHangup {
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Reloads `node`'s keys at every SIGHUP, in a task of its own.
    pub fn start(
        mut self,
        node: Node,
        each: impl Fn(&Result<Vec<u32>, ReloadError>) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while self.hup.recv().await.is_some() {
                let result = node.reload_keys().await;
                log_reload(&result, "SIGHUP");
                each(&result);
                if matches!(result, Err(ReloadError::Stopped)) {
                    break;
                }
            }
        })
    }
}

/// How many live members hold and send with one key id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyUse {
    /// The key id (8 hex digits).
    pub id: String,
    /// Live members (this node left out) whose last report lists it.
    pub held_by: usize,
    /// Live members whose last authenticated datagram was sealed with it.
    pub sent_with_by: usize,
    /// Live members (this node left out).
    pub live: usize,
}

/// Most key ids summarised (each member holds at most 8; a view of many
/// members claiming many ids is cut here).
pub const MAX_SUMMARY_KEYS: usize = 32;

/// Per key id that a live member (this node left out) holds or sends
/// with: how many hold it and send with it, the most held first. With it,
/// a rotation's operator sees when to take the next step.
pub fn key_summary(members: &[Member]) -> Vec<KeyUse> {
    let live: Vec<&Member> = members
        .iter()
        .filter(|m| !m.this_node && m.state == Liveness::Live)
        .collect();
    let mut ids: Vec<u32> = Vec::new();
    for m in &live {
        for id in m.keys.iter().chain(m.sends_with.iter()) {
            if !ids.contains(id) {
                ids.push(*id);
            }
        }
    }
    let mut out: Vec<KeyUse> = ids
        .into_iter()
        .map(|id| KeyUse {
            id: key_hex(id),
            held_by: live.iter().filter(|m| m.keys.contains(&id)).count(),
            sent_with_by: live.iter().filter(|m| m.sends_with == Some(id)).count(),
            live: live.len(),
        })
        .collect();
    out.sort_by(|a, b| {
        (b.held_by, b.sent_with_by)
            .cmp(&(a.held_by, a.sent_with_by))
            .then_with(|| a.id.cmp(&b.id))
    });
    out.truncate(MAX_SUMMARY_KEYS);
    out
}

/// Live members (this node left out) that hold no key (unauthenticated
/// nodes, in a cluster moving to keys).
pub fn keyless_live(members: &[Member]) -> usize {
    members
        .iter()
        .filter(|m| !m.this_node && m.state == Liveness::Live && m.keys.is_empty())
        .count()
}

/// The summary as lines of text: `key 5d1c0a7e: held by 4/4 live members,
/// sent with by 4/4`.
pub fn summary_lines(members: &[Member]) -> Vec<String> {
    let mut lines: Vec<String> = key_summary(members)
        .iter()
        .map(|k| {
            format!(
                "key {}: held by {}/{} live members, sent with by {}/{}",
                k.id, k.held_by, k.live, k.sent_with_by, k.live
            )
        })
        .collect();
    let keyless = keyless_live(members);
    if !lines.is_empty() && keyless > 0 {
        lines.push(format!("{keyless} live member(s) hold no key"));
    }
    lines
}

/// Rewrites, in a JSON membership document, every member's `keys` and
/// `sends_with` as key ids of 8 hex digits ([`key_hex`]), and adds the
/// `key_summary` ([`key_summary`]) beside `members`.
pub fn hex_member_keys(doc: &mut Value, members: &[Member]) {
    if let Some(list) = doc.get_mut("members").and_then(Value::as_array_mut) {
        for m in list {
            if let Some(keys) = m.get_mut("keys").and_then(Value::as_array_mut) {
                for k in keys {
                    if let Some(id) = k.as_u64() {
                        *k = json!(key_hex(id as u32));
                    }
                }
            }
            if let Some(s) = m.get_mut("sends_with") {
                if let Some(id) = s.as_u64() {
                    *s = json!(key_hex(id as u32));
                }
            }
        }
    }
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("key_summary".into(), json!(key_summary(members)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn member(stream: u64, keys: &[u32], sends_with: Option<u32>, state: Liveness) -> Member {
        Member {
            stream,
            name: Some(format!("n{stream}")),
            addr: None,
            this_node: stream == 0,
            receive_only: false,
            state,
            last_heard: Duration::ZERO,
            streams: vec![],
            keys: keys.to_vec(),
            sends_with,
        }
    }

    /// Mid-rotation: the new key held by 2 of 3 live members, sent with by
    /// one; dead members and this node do not count.
    #[test]
    fn the_summary_counts_live_members_per_key() {
        let (old, new) = (0x5d1c_0a7e, 0x0000_00b1);
        let members = vec![
            member(0, &[new, old], Some(new), Liveness::Live),
            member(1, &[new, old], Some(new), Liveness::Live),
            member(2, &[old, new], Some(old), Liveness::Live),
            member(3, &[old], Some(old), Liveness::Live),
            member(4, &[new], Some(new), Liveness::Dead),
            member(5, &[], None, Liveness::Live),
        ];
        let s = key_summary(&members);
        assert_eq!(
            s,
            [
                KeyUse {
                    id: "5d1c0a7e".into(),
                    held_by: 3,
                    sent_with_by: 2,
                    live: 4
                },
                KeyUse {
                    id: "000000b1".into(),
                    held_by: 2,
                    sent_with_by: 1,
                    live: 4
                },
            ]
        );
        assert_eq!(
            summary_lines(&members),
            [
                "key 5d1c0a7e: held by 3/4 live members, sent with by 2/4",
                "key 000000b1: held by 2/4 live members, sent with by 1/4",
                "1 live member(s) hold no key",
            ]
        );
        // No keys anywhere: no summary.
        let plain = vec![member(1, &[], None, Liveness::Live)];
        assert!(summary_lines(&plain).is_empty());
    }

    #[test]
    fn member_keys_become_hex_in_json() {
        let members = vec![member(1, &[0xab, 0x5d1c_0a7e], Some(0xab), Liveness::Live)];
        let mut doc = json!({ "members": serde_json::to_value(&members).unwrap() });
        hex_member_keys(&mut doc, &members);
        assert_eq!(doc["members"][0]["keys"], json!(["000000ab", "5d1c0a7e"]));
        assert_eq!(doc["members"][0]["sends_with"], "000000ab");
        assert_eq!(doc["key_summary"][0]["id"], "000000ab");
        assert_eq!(doc["key_summary"][0]["held_by"], 1);
        let unkeyed = vec![member(1, &[], None, Liveness::Live)];
        let mut doc = json!({ "members": serde_json::to_value(&unkeyed).unwrap() });
        hex_member_keys(&mut doc, &unkeyed);
        assert_eq!(doc["members"][0]["keys"], json!([]));
        assert_eq!(doc["members"][0]["sends_with"], Value::Null);
    }
}
