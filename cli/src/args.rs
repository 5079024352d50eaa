//! The command line's shared arguments: the subcommands, where the cluster
//! is and with which keys ([`NetArgs`]), durations, and the options whose
//! value is optional (`--confirm[=TIMEOUT]`, `--watch[=INTERVAL]`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use cachecast::keys::{KeyFile, KeyFileError};
use cachecast::net::socket::InterfaceSpec;
use cachecast::{AuthMode, JoinError, NodeConfig, PeerSpec, Transport, DEFAULT_GROUP};

use crate::failure::Failure;
use crate::logs::LogFormat;
use crate::{agent, bridge, demo, doctor, keys, listen, members, send};

/// cachecast: coherent caches over UDP multicast.
///
/// Nodes of one cluster publish invalidations to a multicast group; every
/// other node delivers them, or a Reset (clear the whole cache) when it may
/// have missed one. Never a silent loss.
///
/// SIGINT and SIGTERM stop every command the same way: a running node says
/// Goodbye (so no other node Resets), lingers, and prints its stats; a
/// second signal, or one before any node runs (doctor), exits at once.
/// Logs go to standard error, filtered by RUST_LOG (default: warn, which
/// shows Resets and a capped receive buffer); stream ids are 16 hex digits
/// everywhere. Bad input exits with status 2, other failures with 1.
#[derive(Debug, Parser)]
#[command(name = "cachecast", version, about, long_about)]
pub struct Cli {
    /// Log format on standard error: text (coloured only on a terminal,
    /// never with NO_COLOR) or json (one object per line).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "CACHECAST_LOG_FORMAT",
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay the incident that motivated cachecast, and more, on loopback:
    /// a recycled frontend, a loss burst, tail loss, a backend crash, a slow
    /// subscriber. Prints a timeline and the no-silent-loss verdict; exits
    /// non-zero if anything was lost silently.
    Demo(demo::DemoArgs),
    /// Publish one invalidation (or a batch from standard input) and exit.
    Send(send::SendArgs),
    /// Print every delivery as one JSON object per line.
    Listen(listen::ListenArgs),
    /// Print the members of the cluster: who is live, left or dead, and how
    /// far each has delivered each stream.
    Members(members::MembersArgs),
    // (Doctor: its help is its arguments' doc comment.)
    Doctor(doctor::DoctorArgs),
    // (Agent: likewise.)
    Agent(agent::AgentArgs),
    // (Bridge: likewise.)
    Bridge(bridge::BridgeArgs),
    /// Write a new key file (mode 0600), append a key to one (the first
    /// step of a rotation), or list its key ids.
    Keygen(keys::KeygenArgs),
}

/// Where the cluster is: shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct NetArgs {
    /// Multicast group and port, IPv4 or IPv6 (e.g. 239.255.67.67:7467 or
    /// [ff15::6767]:7467).
    #[arg(long, env = "CACHECAST_GROUP", default_value_t = DEFAULT_GROUP)]
    pub group: SocketAddr,
    /// Interface by name (eth0) or address (192.0.2.10); default: the
    /// system's choice (`default`). Use 127.0.0.1 with --ttl 0 to stay on
    /// this host. An empty value is refused.
    #[arg(long, env = "CACHECAST_INTERFACE", default_value = "default", value_parser = parse_interface)]
    pub interface: InterfaceSpec,
    /// Cluster name: traffic of other clusters on the same group is ignored.
    #[arg(long, env = "CACHECAST_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// Multicast TTL / hop limit: 1 stays on the LAN, 0 on this host.
    #[arg(long, env = "CACHECAST_TTL", default_value_t = 1)]
    pub ttl: u32,
    /// This node's name, as others see it (default: <hostname-ish>-<pid>).
    #[arg(long)]
    pub name: Option<String>,
    /// How datagrams travel: multicast (to --group), unicast (one copy to
    /// each --peer: where multicast does not work, e.g. clouds and most
    /// Kubernetes networks; `cachecast doctor` tells) or both.
    #[arg(long, env = "CACHECAST_TRANSPORT", default_value_t = Transport::Multicast, value_parser = parse_transport)]
    pub transport: Transport,
    /// A peer of the unicast transport: IP:PORT, [IPv6]:PORT or NAME:PORT
    /// (a name is resolved again every 15 s: a Kubernetes headless
    /// service). Repeat it, or separate with commas. With unicast, a node
    /// whose (authenticated, with keys) datagrams arrive is answered even
    /// if not listed; nothing passes addresses on, so of every two nodes
    /// one must list the other (one name for all does it for everyone).
    #[arg(long = "peer", env = "CACHECAST_PEERS", value_name = "PEER", value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<PeerSpec>,
    /// Where a unicast node receives (default: every address, on the
    /// group's port). Each node on one host needs its own.
    #[arg(long, env = "CACHECAST_LISTEN", value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
    /// Multicast: a repair that one node asked for goes to it alone, to a
    /// socket of its own (a port of the system's choosing, which its Naks
    /// come from), so that nodes that lost nothing receive no repairs.
    /// Set false where a host firewall lets only the group's port in.
    #[arg(long, env = "CACHECAST_DIRECT_REPAIRS", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub direct_repairs: bool,
    /// The cluster's key file (written by `cachecast keygen`; mode 0600):
    /// every datagram is then authenticated, and only those of nodes
    /// holding one of its keys are accepted. A path, never the key itself:
    /// a key is never given on the command line.
    #[arg(long, env = "CACHECAST_KEY_FILE", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// How keys are used: off (none), accept (send authenticated, also
    /// take unauthenticated datagrams: moving a cluster to keys one node
    /// at a time), require (drop everything not authenticated). Default:
    /// require with a key file, else off.
    #[arg(long, env = "CACHECAST_AUTH", value_name = "MODE", value_parser = parse_auth)]
    pub auth: Option<AuthMode>,
    /// Encrypt the bodies (XAES-256-GCM; cache keys often hold user ids),
    /// not only authenticate them; with AES-NI also the cheaper of the two.
    /// Needs a key file, and every node must hold the key (a node without
    /// it cannot read them).
    #[arg(long, env = "CACHECAST_ENCRYPT")]
    pub encrypt: bool,
}

impl NetArgs {
    /// A node configuration from these flags. The key options are checked
    /// here (and the key file read), so that a bad one is a usage error
    /// (exit status 2) before anything joins.
    pub fn config(&self, role: &str) -> Result<NodeConfig, Failure> {
        check_keys(self.key_file.as_deref(), self.auth, self.encrypt)?;
        self.check_transport()?;
        Ok(NodeConfig {
            group: self.group,
            interface: self.interface.clone(),
            cluster: self.cluster.clone(),
            ttl: self.ttl,
            node_name: self
                .name
                .clone()
                .unwrap_or_else(|| format!("{role}-{}", std::process::id())),
            key_file: self.key_file.clone(),
            auth: self.auth,
            encrypt: self.encrypt,
            transport: self.transport,
            peers: self.peers.clone(),
            listen: self.listen,
            direct_repairs: self.direct_repairs,
            ..NodeConfig::default()
        })
    }
}

impl NetArgs {
    /// `--transport`, `--peer` and `--listen` together (the node checks
    /// them too; here a bad combination is a usage error, exit status 2).
    fn check_transport(&self) -> Result<(), Failure> {
        match (self.transport, self.peers.is_empty()) {
            (Transport::Multicast, false) => {
                return Err(Failure::Usage(
                    "--peer is sent to only with --transport unicast or both".into(),
                ))
            }
            (Transport::Unicast | Transport::Both, true) => {
                return Err(Failure::Usage(format!(
                    "--transport {} needs peers: --peer IP:PORT or NAME:PORT (or CACHECAST_PEERS)",
                    self.transport
                )))
            }
            _ => {}
        }
        if self.listen.is_some() && self.transport != Transport::Unicast {
            return Err(Failure::Usage(
                "--listen is for --transport unicast (the others receive on the group's port)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Parses `--transport`.
pub fn parse_transport(s: &str) -> Result<Transport, String> {
    s.parse()
}

/// Parses a `--peer`.
pub fn parse_peer(s: &str) -> Result<PeerSpec, String> {
    s.parse()
}

/// The bytes of a datagram a node of `config` may fill with events: its
/// `max_datagram` less the authentication trailer when it uses keys (what
/// `Node::publish` checks events against).
pub fn body_limit(config: &NodeConfig) -> usize {
    let keyed = match config.auth {
        Some(mode) => mode != AuthMode::Off,
        None => config.key_file.is_some(),
    };
    let trailer = if keyed {
        cachecast::wire::TRAILER_LEN
    } else {
        0
    };
    config.protocol.max_datagram.saturating_sub(trailer)
}

/// Parses `--auth`.
pub fn parse_auth(s: &str) -> Result<AuthMode, String> {
    s.parse()
}

/// Checks the key options together, and the key file: `accept`, `require`
/// and `--encrypt` need a key file; the file must be usable (its error says
/// what to do, e.g. `chmod 600`). Returns the file's key ids.
pub fn check_keys(
    key_file: Option<&Path>,
    auth: Option<AuthMode>,
    encrypt: bool,
) -> Result<Vec<u32>, Failure> {
    let Some(path) = key_file else {
        if let Some(mode @ (AuthMode::Accept | AuthMode::Require)) = auth {
            return Err(Failure::Usage(format!(
                "--auth {mode} needs a key file (--key-file PATH or CACHECAST_KEY_FILE; \
                 `cachecast keygen PATH` writes one)"
            )));
        }
        if encrypt {
            return Err(Failure::Usage(
                "--encrypt needs a key file (--key-file PATH or CACHECAST_KEY_FILE; \
                 `cachecast keygen PATH` writes one)"
                    .into(),
            ));
        }
        return Ok(Vec::new());
    };
    if encrypt && auth == Some(AuthMode::Off) {
        return Err(Failure::Usage(
            "--encrypt with --auth off: nothing would be encrypted (use --auth require)".into(),
        ));
    }
    match KeyFile::load(path) {
        Ok(file) => Ok(file.ids()),
        Err(e) => Err(Failure::Usage(key_file_problem(path, &e))),
    }
}

/// A key file's error as one line; when the path looks like a key itself
/// (it is not a file, and is long hex), says that a key never goes on the
/// command line.
pub fn key_file_problem(path: &Path, e: &KeyFileError) -> String {
    let text = path.to_string_lossy();
    let looks_like_a_key = matches!(e, KeyFileError::Io { .. })
        && text.len() >= 32
        && text.bytes().all(|b| b.is_ascii_hexdigit());
    if looks_like_a_key {
        // Not echoed, not even in part: it may be the cluster's secret.
        "the --key-file value is not an existing file and looks like a key: give the path \
         of a key file, never a key itself (a command line is visible to every user of the \
         host, e.g. in ps); `cachecast keygen PATH` writes a key file"
            .to_owned()
    } else {
        e.to_string()
    }
}

/// A join's failure: a key file or keys that cannot be used are bad input
/// (exit status 2), anything else a failure (1).
pub fn join_failure(e: JoinError) -> Failure {
    match e {
        JoinError::KeyFile(_) | JoinError::Keys(_) => Failure::Usage(e.to_string()),
        e => Failure::Failed(e.to_string()),
    }
}

/// Parses `--interface`, refusing an empty value (which would quietly mean
/// the system's choice).
pub fn parse_interface(s: &str) -> Result<InterfaceSpec, String> {
    if s.trim().is_empty() {
        return Err(
            "an empty interface: give a name (eth0), an address (192.0.2.10), \
                    or `default` for the system's choice"
                .into(),
        );
    }
    s.parse::<InterfaceSpec>().map_err(|e| e.to_string())
}

/// Options whose value is optional: given alone they take their default
/// (`--confirm` waits 2s), with `=` the value (`--confirm=5s`).
pub const OPTIONAL_VALUE: [&str; 2] = ["--confirm", "--watch"];

/// Lets an option of [`OPTIONAL_VALUE`] take its value after a space too
/// (`--confirm 5s`): such an option followed by a duration becomes
/// `--confirm=5s`; followed by anything else (`--confirm invalidate k`) it
/// stays alone and takes its default. Nothing after `--` is touched. (clap
/// alone cannot do both: an optional value after a space would swallow
/// the subcommand that follows, so these options require `=`.)
pub fn join_optional_values(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    let mut args = args.into_iter().peekable();
    while let Some(a) = args.next() {
        if a == "--" {
            out.push(a);
            out.extend(args);
            break;
        }
        let joins = OPTIONAL_VALUE.iter().any(|o| a == *o)
            && args
                .peek()
                .and_then(|v| v.to_str())
                .is_some_and(|v| humantime::parse_duration(v).is_ok());
        if joins {
            let mut joined = a;
            joined.push("=");
            joined.push(args.next().unwrap_or_default());
            out.push(joined);
        } else {
            out.push(a);
        }
    }
    out
}

/// Parses "250ms", "2s", "1m30s".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 500ms, 2s, 1m)"))
}

/// Parses a wait: a duration above 0 and at most `max`.
pub fn parse_wait(s: &str, max: Duration) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() || d > max {
        return Err(format!("give a wait above 0 and at most {max:?}"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(args: &[&str]) -> Vec<String> {
        join_optional_values(args.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn an_optional_value_after_a_space_is_joined_only_when_it_is_a_duration() {
        assert_eq!(
            joined(&["cachecast", "send", "--confirm", "5s", "invalidate", "k"]),
            ["cachecast", "send", "--confirm=5s", "invalidate", "k"]
        );
        assert_eq!(
            joined(&["cachecast", "send", "--confirm", "invalidate", "k"]),
            ["cachecast", "send", "--confirm", "invalidate", "k"]
        );
        assert_eq!(
            joined(&["cachecast", "members", "--watch", "500ms", "--json"]),
            ["cachecast", "members", "--watch=500ms", "--json"]
        );
        assert_eq!(
            joined(&["cachecast", "members", "--watch"]),
            ["cachecast", "members", "--watch"]
        );
        // Other options, `=` forms and what follows `--` stay as they are.
        assert_eq!(
            joined(&["x", "--linger", "1s", "--confirm=1s", "--", "--watch", "1s"]),
            ["x", "--linger", "1s", "--confirm=1s", "--", "--watch", "1s"]
        );
    }

    #[test]
    fn optional_values_parse_alone_with_equals_and_after_a_space() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(join_optional_values(args.iter().map(OsString::from)))
        };
        let confirm = |args: &[&str]| match parse(args).unwrap().command {
            Command::Send(s) => s.confirm,
            c => panic!("{c:?}"),
        };
        let two = Some(Duration::from_secs(2));
        let five = Some(Duration::from_secs(5));
        assert_eq!(confirm(&["c", "send", "--confirm", "clear"]), two);
        assert_eq!(confirm(&["c", "send", "--confirm=5s", "clear"]), five);
        assert_eq!(confirm(&["c", "send", "--confirm", "5s", "clear"]), five);
        assert_eq!(confirm(&["c", "send", "clear"]), None);
        let e = parse(&["c", "send", "--confirm=0s", "clear"]).unwrap_err();
        assert!(e.to_string().contains("above 0"), "{e}");
        let watch = |args: &[&str]| match parse(args).unwrap().command {
            Command::Members(m) => m.watch,
            c => panic!("{c:?}"),
        };
        assert_eq!(watch(&["c", "members", "--watch"]), two);
        assert_eq!(watch(&["c", "members", "--watch", "5s"]), five);
        assert_eq!(watch(&["c", "members"]), None);
    }
}
