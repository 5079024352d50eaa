//! `cachecast doctor`: checks this host's multicast set-up for one group and
//! interface, and says what to change.
//!
//! It lists the interfaces and which one is used and why, opens two sockets
//! exactly as a node does, sends one small probe and checks that both
//! sockets hear it, and reports the TTL, the socket options and the granted
//! receive buffer against the system limit. Every finding is `ok`, `info`,
//! `warn` or a problem; problems make the exit status 1.
//!
//! The probe is a `Hello` of a fresh stream of the cluster followed by that
//! stream's `Goodbye` (twice): live nodes answer the `Hello` with a
//! `Heartbeat`, which tells who else is on the group. Both say receive-only,
//! so no node follows the probe's stream or ever Resets for it. With a key
//! file (`--key-file`, as every command) the probe is authenticated with
//! its sending key, and what is heard is verified with its keys; without
//! one, doctor says when the cluster's nodes use keys (nodes that require
//! them ignore an unauthenticated probe).
//!
//! Files: this one holds the arguments, the report and its text form;
//! `checks` the checks that need no traffic (group, interface, TTL, socket
//! options, receive buffer); `probe` the probe; `direct` the direct-repair
//! check (the path of a node's `Nak`s and of a repair sent to it alone).
//!
//! What it may not do: send anything but the probes, anywhere but the group
//! (and, for the direct-repair check, this host's own direct socket), on the
//! chosen interface with the chosen TTL; wait without a bound; change a
//! system setting (it only says what to change).

mod checks;
mod direct;
mod probe;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::args::{key_file_problem, NetArgs};
use crate::failure::Failure;
use cachecast::keys::KeyFile;
use cachecast::net::socket::{self, InterfaceInfo};
use cachecast::{wire, AuthMode, NodeConfig, Transport};

use checks::{
    check_group, check_interface, check_recv_buffer, check_socket, check_ttl, section_of,
};
use direct::{report_direct, run_direct, Direct, DirectRun};
use probe::{report_clocks, report_probe, run_probe, ProbeKeys};

/// The longest `--wait` accepted.
const MAX_WAIT: Duration = Duration::from_secs(10);

const AFTER_HELP: &str = "\
What it does: lists this host's interfaces and which one the group uses (by \
name, by address, or for the default the interface the kernel routes the \
group to), opens two sockets on the group exactly as a node does, sends one \
probe and checks that both sockets hear it within --wait, lists the other \
nodes of the cluster that answer, checks the path of direct repairs (unless \
--direct-repairs false): a datagram sent to the group from a direct socket, \
as a node sends its Naks, must be heard on the group, and one sent back to \
its source, as a repair one node asked for is, must arrive; and compares the \
granted receive buffer with the system limit (net.core.rmem_max). Each \
finding is ok, info, warn or FAIL, with what to change.

What it sends: three datagrams of under 100 bytes, only to the group, on the \
chosen interface, with the chosen TTL: a Hello of a fresh stream, then that \
stream's Goodbye twice; the same again from a direct socket for the \
direct-repair check, plus one datagram from a second direct socket of this \
host to the first (it never leaves the host); it waits up to --wait more. \
Nodes of the cluster answer \
the Hello with a Heartbeat (doctor lists them) and forget the stream on its \
Goodbye. With a key \
file (--key-file or CACHECAST_KEY_FILE), the probe is authenticated with its \
sending key (encrypted with --encrypt) and answers are verified with its keys: \
nodes that require keys ignore a probe without one. The clock of each node \
heard with a timestamp (keyed nodes) is compared with this host's: more than \
5 s off is a warning, past the 60 s a keyed node allows a problem. With the \
defaults (the system's interface, TTL 1) the probe goes out on your LAN; to \
keep it on this host, use --interface 127.0.0.1 --ttl 0.

Exit status: 0 when no problem was found (warnings do not count), 1 otherwise.

SIGINT or SIGTERM end it at once (status 130 or 143): it runs no node, and \
its probe's Goodbye leaves right after the Hello, so nothing is left for \
the other nodes to time out.";

/// Check this host's multicast set-up for a group: interfaces, a probe
/// that must come back to this host, TTL, socket options and receive
/// buffer.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the probe to come back (at most 10s).
    #[arg(long, default_value = "1s", value_parser = parse_wait)]
    pub wait: Duration,
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    crate::args::parse_wait(s, MAX_WAIT)
}

/// How a finding counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Info,
    Warn,
    Problem,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Info => "info",
            Status::Warn => "warn",
            Status::Problem => "FAIL",
        }
    }
}

/// The parts of the report, in the order they are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Section {
    Group,
    Interface,
    Ttl,
    Socket,
    Probe,
    Direct,
    RecvBuffer,
}

impl Section {
    fn title(self) -> &'static str {
        match self {
            Section::Group => "group",
            Section::Interface => "interface",
            Section::Ttl => "ttl",
            Section::Socket => "socket",
            Section::Probe => "probe",
            Section::Direct => "direct repairs",
            Section::RecvBuffer => "receive buffer",
        }
    }
}

/// One line of the report, with what to do about it.
#[derive(Debug, Clone, Serialize)]
struct Finding {
    section: Section,
    status: Status,
    message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hints: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Iface {
    name: String,
    index: u32,
    addrs: Vec<String>,
    up: bool,
    multicast: bool,
    loopback: bool,
    used: bool,
}

/// The interface in use, and why.
#[derive(Debug, Clone, Serialize)]
struct Chosen {
    /// `name`, `address` or `default`.
    chosen_by: &'static str,
    /// For the default: the interface the kernel routes the group to.
    name: Option<String>,
    index: Option<u32>,
    /// The address multicast is sent from.
    addr: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Peer {
    stream: String,
    node: Option<String>,
    from: String,
    /// Its clock less this host's, in ms, from the timestamp of an
    /// authenticated datagram of it (verified when doctor holds keys);
    /// `None` when it sent none.
    #[serde(skip_serializing_if = "Option::is_none")]
    clock_offset_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
struct Probe {
    stream: String,
    bytes: usize,
    sent: bool,
    /// Both sockets heard the `Hello`.
    heard: bool,
    heard_by: [bool; 2],
    latency_ms: [Option<f64>; 2],
    /// Other nodes of the cluster heard on the group.
    peers: Vec<Peer>,
    /// Datagrams of other clusters, as heard by the first socket.
    foreign_cluster: u64,
    /// Datagrams that are not cachecast, as heard by the first socket.
    not_cachecast: u64,
    /// The key id the probe was sealed with (hex), if any.
    sealed_with: Option<String>,
    /// Datagrams of other streams of the cluster carrying a trailer, as
    /// heard by the first socket (verified, when doctor holds keys).
    authenticated: u64,
    /// Authenticated datagrams that did not verify with doctor's keys.
    unverified: u64,
    /// Key ids seen in those trailers (hex, at most 8).
    key_ids: Vec<String>,
    /// How long doctor listened, in milliseconds.
    listened_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
struct RecvBuffer {
    requested: usize,
    /// As `getsockopt(SO_RCVBUF)` reports it (double on Linux).
    granted: usize,
    usable: usize,
    capped: bool,
    rmem_max: Option<usize>,
}

/// Everything doctor found; printed as text or JSON.
#[derive(Debug, Clone, Serialize)]
struct Report {
    group: String,
    cluster: String,
    interface_spec: String,
    ttl: u32,
    interfaces: Vec<Iface>,
    interface: Option<Chosen>,
    multicast_all: Option<bool>,
    multicast_loop: Option<bool>,
    probe: Option<Probe>,
    /// The direct-repair check, when it ran.
    direct: Option<Direct>,
    recv_buffer: Option<RecvBuffer>,
    findings: Vec<Finding>,
    problems: usize,
    warnings: usize,
    ok: bool,
}

impl Report {
    fn push(&mut self, section: Section, status: Status, message: String, hints: Vec<String>) {
        self.findings.push(Finding {
            section,
            status,
            message,
            hints,
        });
    }

    fn finish(mut self) -> Self {
        self.findings.sort_by_key(|f| f.section);
        let count = |s| self.findings.iter().filter(|f| f.status == s).count();
        self.problems = count(Status::Problem);
        self.warnings = count(Status::Warn);
        self.ok = self.problems == 0;
        self
    }
}

/// Runs `cachecast doctor`. It runs no node and never arms the stop
/// handler: a signal ends it at once.
pub async fn run(args: DoctorArgs) -> Result<(), Failure> {
    let config = args.net.config("doctor")?;
    let keys = probe_keys(&config)?;
    let report = diagnose(&args, &config, keys.as_ref()).await;
    let out = if args.json {
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
    } else {
        render(&report)
    };
    println!("{out}");
    match report.findings.iter().find(|f| f.status == Status::Problem) {
        None => Ok(()),
        Some(first) => Err(Failure::Failed(format!(
            "doctor found {} problem(s); the first: {}",
            report.problems, first.message
        ))),
    }
}

/// The keys the probe is sealed and answers verified with: those of the
/// key file, unless `--auth off`.
fn probe_keys(config: &NodeConfig) -> Result<Option<ProbeKeys>, Failure> {
    let Some(path) = &config.key_file else {
        return Ok(None);
    };
    if config.auth == Some(AuthMode::Off) {
        return Ok(None);
    }
    let file = KeyFile::load(path).map_err(|e| Failure::Usage(key_file_problem(path, &e)))?;
    let ring = file
        .keyring(wire::cluster_hash(&config.cluster))
        .map_err(|e| Failure::Usage(format!("key file {}: {e}", path.display())))?;
    Ok(Some(ProbeKeys {
        ring,
        encrypt: config.encrypt,
    }))
}

async fn diagnose(args: &DoctorArgs, config: &NodeConfig, keys: Option<&ProbeKeys>) -> Report {
    let opts = config.socket_options();
    let group = opts.group;
    let interfaces = socket::list_interfaces();
    let mut r = Report {
        group: group.to_string(),
        cluster: config.cluster.clone(),
        interface_spec: opts.interface.to_string(),
        ttl: opts.ttl,
        interfaces: Vec::new(),
        interface: None,
        multicast_all: None,
        multicast_loop: None,
        probe: None,
        direct: None,
        recv_buffer: None,
        findings: Vec::new(),
        problems: 0,
        warnings: 0,
        ok: false,
    };

    let mut used: Option<InterfaceInfo> = None;
    if group.ip().is_multicast() && group.port() != 0 {
        check_group(&mut r, group);
        used = check_interface(&mut r, &opts, &interfaces);
        check_ttl(&mut r, opts.ttl, used.as_ref());
    }
    r.interfaces = interfaces
        .iter()
        .map(|i| Iface {
            name: i.name.clone(),
            index: i.index,
            addrs: i.addrs.iter().map(IpAddr::to_string).collect(),
            up: i.up,
            multicast: i.multicast,
            loopback: i.loopback,
            used: used.as_ref().is_some_and(|u| u.name == i.name),
        })
        .collect();

    let skipped = |r: &mut Report| {
        r.push(
            Section::Probe,
            Status::Info,
            "socket checks and probe skipped: fix the problem above first".into(),
            Vec::new(),
        );
    };
    let a = match socket::open(&opts) {
        Ok(s) => s,
        Err(e) => {
            r.push(section_of(&e), Status::Problem, e.to_string(), Vec::new());
            skipped(&mut r);
            return r.finish();
        }
    };
    if let (Some(chosen), Some(addr)) = (r.interface.as_mut(), a.interface.addr) {
        chosen.addr = Some(addr.to_string());
    }
    let b = match socket::open(&opts) {
        Ok(s) => s,
        Err(e) => {
            r.push(
                Section::Socket,
                Status::Problem,
                format!("a second socket on the same group and port failed: {e}"),
                Vec::new(),
            );
            skipped(&mut r);
            return r.finish();
        }
    };
    check_socket(&mut r, &a);
    check_recv_buffer(&mut r, &a);

    let (sa, sb) = match (
        tokio::net::UdpSocket::from_std(a.socket),
        tokio::net::UdpSocket::from_std(b.socket),
    ) {
        (Ok(sa), Ok(sb)) => (sa, sb),
        (Err(e), _) | (_, Err(e)) => {
            r.push(
                Section::Probe,
                Status::Problem,
                format!("cannot register the sockets with the runtime: {e}"),
                Vec::new(),
            );
            return r.finish();
        }
    };
    let cluster = wire::cluster_hash(&config.cluster);
    let probe = run_probe(&sa, &sb, group, cluster, &config.node_name, args.wait, keys).await;
    let heard = probe.heard();
    report_probe(&mut r, probe, &opts, used.as_ref(), args.wait);
    let direct = if config.transport != Transport::Multicast || !config.direct_repairs {
        DirectRun::Off
    } else if !heard {
        DirectRun::Skipped
    } else {
        let interface = &a.interface;
        run_direct(
            &sb,
            &opts,
            interface,
            cluster,
            &config.node_name,
            args.wait,
            keys,
        )
        .await
    };
    report_direct(&mut r, direct, group, args.wait);
    report_clocks(&mut r, config.protocol.auth.max_age);
    r.finish()
}

/// The report as text: the interfaces, then the findings by section, then
/// the verdict.
fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cachecast doctor: group {}, interface {}, TTL {}, cluster {:?}",
        r.group, r.interface_spec, r.ttl, r.cluster
    );
    let _ = writeln!(out, "\ninterfaces");
    if r.interfaces.is_empty() {
        let _ = writeln!(out, "  (none could be listed on this system)");
    }
    let rows: Vec<[String; 4]> = r
        .interfaces
        .iter()
        .map(|i| {
            let mut flags = vec![if i.up { "up" } else { "down" }];
            if i.multicast {
                flags.push("multicast");
            }
            if i.loopback {
                flags.push("loopback");
            }
            let addrs = if i.addrs.is_empty() {
                "-".to_owned()
            } else {
                i.addrs.join(", ")
            };
            [i.index.to_string(), i.name.clone(), flags.join(","), addrs]
        })
        .collect();
    let width = |c: usize| rows.iter().map(|row| row[c].len()).max().unwrap_or(0);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    for (i, row) in r.interfaces.iter().zip(&rows) {
        let mark = if i.used { "*" } else { " " };
        let _ = writeln!(
            out,
            "  {mark} {:>w0$}  {:<w1$}  {:<w2$}  {}",
            row[0], row[1], row[2], row[3]
        );
    }
    if r.interfaces.iter().any(|i| i.used) {
        let _ = writeln!(out, "  (* = used)");
    }
    let mut section = None;
    for f in &r.findings {
        if section != Some(f.section) {
            section = Some(f.section);
            let _ = writeln!(out, "\n{}", f.section.title());
        }
        let _ = writeln!(out, "  {:<5} {}", f.status.label(), f.message);
        for h in &f.hints {
            let _ = writeln!(out, "        - {h}");
        }
    }
    let _ = writeln!(out);
    if r.problems == 0 {
        let _ = write!(out, "doctor: OK");
    } else {
        let _ = write!(out, "doctor: {} problem(s)", r.problems);
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(super) fn empty_report() -> Report {
        Report {
            group: "239.255.1.2:4242".into(),
            cluster: "c".into(),
            interface_spec: "127.0.0.1".into(),
            ttl: 0,
            interfaces: vec![Iface {
                name: "lo".into(),
                index: 1,
                addrs: vec!["127.0.0.1".into()],
                up: true,
                multicast: false,
                loopback: true,
                used: true,
            }],
            interface: None,
            multicast_all: None,
            multicast_loop: None,
            probe: None,
            direct: None,
            recv_buffer: None,
            findings: Vec::new(),
            problems: 0,
            warnings: 0,
            ok: false,
        }
    }

    #[test]
    fn render_groups_findings_by_section_and_ends_with_the_verdict() {
        let mut r = empty_report();
        r.push(
            Section::Probe,
            Status::Problem,
            "NOT HEARD".into(),
            vec!["a firewall".into()],
        );
        r.push(Section::Group, Status::Ok, "fine group".into(), Vec::new());
        r.push(
            Section::RecvBuffer,
            Status::Warn,
            "small".into(),
            Vec::new(),
        );
        let r = r.finish();
        assert_eq!((r.problems, r.warnings, r.ok), (1, 1, false));
        let text = render(&r);
        let group = text.find("\ngroup\n").unwrap();
        let probe = text.find("\nprobe\n").unwrap();
        assert!(group < probe, "{text}");
        assert!(
            text.contains("  FAIL  NOT HEARD\n        - a firewall\n"),
            "{text}"
        );
        assert!(text.contains("* 1  lo"), "{text}");
        assert!(text.ends_with("\ndoctor: 1 problem(s)"), "{text}");
        let mut ok = empty_report();
        ok.push(Section::Ttl, Status::Warn, "w".into(), Vec::new());
        assert!(render(&ok.finish()).ends_with("\ndoctor: OK"));
    }

    #[test]
    fn wait_is_bounded() {
        assert_eq!(parse_wait("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_wait("0s").is_err());
        assert!(parse_wait("11s").is_err());
    }
}
