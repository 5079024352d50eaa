//! The probe of `cachecast doctor`: a `Hello` of a fresh stream of the
//! cluster and that stream's `Goodbye` (twice), sent from one of two
//! sockets opened as a node opens them; both must hear the `Hello`. Live
//! nodes answer the `Hello` with a `Heartbeat` (so doctor can list them);
//! both datagrams say receive-only, so no node ever follows the probe's
//! stream, and none Resets for it even if its `Goodbye` is lost. Listening is bounded in time (`--wait`, at most 10 s) and in
//! datagrams.
//!
//! With keys ([`ProbeKeys`]) the probe is sealed with the sending key and
//! every authenticated datagram heard is verified before it is read; one
//! that does not verify is counted, never read. Without keys, datagrams
//! with a trailer are counted (with their key ids): their nodes use keys.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::{Peer, Probe, Report, Section, Status};
use crate::listen::stream_hex;
use cachecast::net::socket::{InterfaceInfo, InterfaceSpec, SocketOptions};
use cachecast::wire::{self, Algorithm, Body, DecodeError, Header, Keyring, Trailer};

/// How long to keep listening for other nodes' answers once both sockets
/// heard the probe (nodes answer a `Hello` within a few milliseconds).
const ANSWER_WINDOW: Duration = Duration::from_millis(100);
/// At most this many received datagrams are looked at.
const MAX_DATAGRAMS: usize = 10_000;
/// At most this many other nodes are listed.
const MAX_PEERS: usize = 64;
/// At most this many key ids heard are listed.
const MAX_KEY_IDS: usize = 8;

/// The keys of the probe: it is sealed with the sending one (encrypted
/// with `encrypt`), and what it hears is verified with all of them.
pub(crate) struct ProbeKeys {
    /// The key file's keys, for the probe's cluster.
    pub ring: Keyring,
    /// Encrypt the probe's bodies, as `--encrypt` nodes do.
    pub encrypt: bool,
}

/// The probe's datagrams: a `Hello` of `stream` and its `Goodbye` (sent
/// twice; with keys, the second is sealed again with its own counter, as a
/// node does), all flagged receive-only (the probe never publishes), so
/// that live nodes answer the `Hello` but never follow the probe's stream:
/// even if doctor dies between them, or the `Goodbye`s are lost, nobody
/// Resets for it.
/// A random stream id for a probe (never 0).
pub(super) fn fresh_stream() -> u64 {
    loop {
        let s: u64 = rand::random();
        if s != 0 {
            return s;
        }
    }
}

pub(super) fn probe_datagrams(
    cluster: u32,
    stream: u64,
    node: &str,
    keys: Option<&ProbeKeys>,
) -> [Vec<u8>; 3] {
    let mut node = node.to_owned();
    while node.len() > wire::MAX_NODE_NAME {
        node.pop();
    }
    let mut header = Header::new(cluster, stream);
    header.flags |= wire::FLAG_RECEIVE_ONLY;
    let sending = keys.and_then(|k| k.ring.sending().map(|key| (key, k.encrypt)));
    if sending.is_some() {
        header.flags |= wire::FLAG_AUTH;
    }
    let header_len = header.to_bytes().len();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let bodies = [
        Body::Hello { node },
        Body::Goodbye { next_seq: 1 },
        Body::Goodbye { next_seq: 1 },
    ];
    let mut out: [Vec<u8>; 3] = Default::default();
    for (counter, (body, buf)) in bodies.iter().zip(&mut out).enumerate() {
        wire::encode(&header, body, buf);
        if let Some((key, encrypt)) = sending {
            let algorithm = if encrypt {
                Algorithm::Aes256Gcm
            } else {
                Algorithm::HmacSha256
            };
            key.seal(
                buf,
                header_len,
                stream,
                algorithm,
                now_ms,
                counter as u64 + 1,
            );
        }
    }
    out
}

/// Verifies an authenticated datagram (`header_len` bytes of header) with
/// `ring` and returns it unauthenticated (header flag cleared, clear body,
/// no trailer) for [`wire::decode`]; `None` if it does not verify. Returns
/// the key id of the trailer, when there is one to read.
fn verified(
    ring: &Keyring,
    dgram: &[u8],
    header: &Header,
    header_len: usize,
    scratch: &mut Vec<u8>,
) -> (Option<u32>, Option<Vec<u8>>) {
    let Ok((trailer, tag)) = Trailer::read(dgram, header_len) else {
        return (None, None);
    };
    let id = Some(trailer.key_id);
    let Some(key) = ring.get(trailer.key_id) else {
        return (id, None);
    };
    match key.open(dgram, header_len, header.stream, &trailer, &tag, scratch) {
        Ok(body) => {
            let mut plain = Vec::with_capacity(header_len + body.len());
            plain.extend_from_slice(&dgram[..header_len]);
            plain[5] &= !wire::FLAG_AUTH;
            plain.extend_from_slice(body);
            (id, Some(plain))
        }
        Err(_) => (id, None),
    }
}

/// What the probe found, before it is judged.
pub(super) struct ProbeRun {
    probe: Probe,
    send_error: Option<io::Error>,
    recv_error: Option<io::Error>,
}

impl ProbeRun {
    /// Both sockets heard the probe.
    pub(super) fn heard(&self) -> bool {
        self.probe.heard
    }
}

pub(super) async fn run_probe(
    a: &tokio::net::UdpSocket,
    b: &tokio::net::UdpSocket,
    group: SocketAddr,
    cluster: u32,
    node: &str,
    wait: Duration,
    keys: Option<&ProbeKeys>,
) -> ProbeRun {
    let stream = fresh_stream();
    let datagrams = probe_datagrams(cluster, stream, node, keys);
    let mut probe = Probe {
        stream: stream_hex(stream),
        bytes: datagrams[0].len(),
        sealed_with: keys
            .and_then(|k| k.ring.sending())
            .map(|k| crate::keys::key_hex(k.id())),
        sent: false,
        heard: false,
        heard_by: [false; 2],
        latency_ms: [None; 2],
        peers: Vec::new(),
        foreign_cluster: 0,
        not_cachecast: 0,
        authenticated: 0,
        unverified: 0,
        key_ids: Vec::new(),
        listened_ms: 0.0,
    };
    let start = Instant::now();
    let mut send_error = None;
    for d in &datagrams {
        if let Err(e) = a.send_to(d, group).await {
            send_error = Some(e);
            break;
        }
        probe.sent = true;
    }
    if send_error.is_some() && !probe.sent {
        return ProbeRun {
            probe,
            send_error,
            recv_error: None,
        };
    }

    let mut end = start + wait;
    let mut shortened = false;
    let mut recv_error = None;
    let mut peers: BTreeMap<u64, Peer> = BTreeMap::new();
    let (mut buf_a, mut buf_b) = (vec![0u8; wire::MAX_DATAGRAM], vec![0u8; wire::MAX_DATAGRAM]);
    let mut scratch = Vec::new();
    for _ in 0..MAX_DATAGRAMS {
        let (i, res) = tokio::select! {
            r = a.recv_from(&mut buf_a) => (0, r),
            r = b.recv_from(&mut buf_b) => (1, r),
            () = tokio::time::sleep_until(end) => break,
        };
        let (n, from) = match res {
            Ok(v) => v,
            Err(e) => {
                recv_error.get_or_insert(e);
                continue;
            }
        };
        let mut bytes = if i == 0 { &buf_a[..n] } else { &buf_b[..n] };
        let plain;
        let mut encrypted = false;
        // The sender's clock less ours (verified with keys).
        let mut offset = None;
        if let Ok((header, header_len)) = wire::decode_header(bytes, cluster) {
            if header.authenticated() {
                let others = header.stream != stream && i == 0;
                let id = match keys {
                    Some(k) => {
                        let (id, clear) =
                            verified(&k.ring, bytes, &header, header_len, &mut scratch);
                        match clear {
                            Some(c) => {
                                offset = clock_offset(bytes, header_len);
                                plain = c;
                                bytes = &plain;
                            }
                            None => {
                                // Not read: a key this file lacks, or forged.
                                if others {
                                    probe.unverified += 1;
                                    note_key(&mut probe.key_ids, id);
                                }
                                continue;
                            }
                        }
                        id
                    }
                    None => {
                        offset = clock_offset(bytes, header_len);
                        encrypted = matches!(
                            Trailer::read(bytes, header_len),
                            Ok((t, _)) if t.algorithm != Algorithm::HmacSha256
                        );
                        Trailer::read(bytes, header_len).ok().map(|(t, _)| t.key_id)
                    }
                };
                if others {
                    probe.authenticated += 1;
                    note_key(&mut probe.key_ids, id);
                }
            }
        }
        match wire::decode(bytes, cluster) {
            Ok(d) if d.header.stream == stream => {
                if matches!(d.body, Body::Hello { .. }) && !probe.heard_by[i] {
                    probe.heard_by[i] = true;
                    probe.latency_ms[i] = Some(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            Ok(d) => {
                let name = match d.body {
                    Body::Heartbeat { node, .. } | Body::Hello { node } => Some(node),
                    _ => None,
                };
                if peers.len() < MAX_PEERS || peers.contains_key(&d.header.stream) {
                    let peer = peers.entry(d.header.stream).or_insert_with(|| Peer {
                        stream: stream_hex(d.header.stream),
                        node: None,
                        from: from.to_string(),
                        clock_offset_ms: None,
                    });
                    if name.is_some() {
                        peer.node = name;
                    }
                    if offset.is_some() {
                        peer.clock_offset_ms = offset;
                    }
                }
            }
            Err(DecodeError::WrongCluster(_)) if i == 0 => probe.foreign_cluster += 1,
            // An encrypted body cannot be read without the key (counted
            // as authenticated above).
            Err(_) if i == 0 && !encrypted => probe.not_cachecast += 1,
            Err(_) => {}
        }
        if probe.heard_by == [true, true] && !shortened {
            shortened = true;
            end = end.min(Instant::now() + ANSWER_WINDOW);
        }
    }
    probe.heard = probe.heard_by == [true, true];
    probe.peers = peers.into_values().collect();
    probe.listened_ms = start.elapsed().as_secs_f64() * 1e3;
    ProbeRun {
        probe,
        send_error,
        recv_error,
    }
}

/// The clock of an authenticated datagram's sender less this host's, in ms
/// (its trailer's timestamp against the wall clock; the time the datagram
/// took on the LAN is far below what matters).
fn clock_offset(dgram: &[u8], header_len: usize) -> Option<i64> {
    let (trailer, _) = Trailer::read(dgram, header_len).ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis();
    Some(i64::try_from(i128::from(trailer.timestamp_ms) - now as i128).unwrap_or(i64::MAX))
}

/// Adds a key id heard to `ids` (as hex, at most [`MAX_KEY_IDS`]).
fn note_key(ids: &mut Vec<String>, id: Option<u32>) {
    if let Some(id) = id.map(crate::keys::key_hex) {
        if ids.len() < MAX_KEY_IDS && !ids.contains(&id) {
            ids.push(id);
        }
    }
}

/// A peer's clock this far from this host's is worth a warning (NTP keeps
/// clocks within milliseconds).
const CLOCK_WARN_MS: u64 = 5_000;

/// Judges the clocks of the nodes heard with authenticated datagrams: a
/// keyed node takes a stream it has not heard before only if its sender's
/// clock is within `max_age` of its own, so a node whose clock is further
/// off is not heard by nodes that start (counted there as `auth_stale`).
pub(super) fn report_clocks(r: &mut Report, max_age: Duration) {
    let Some(p) = &r.probe else { return };
    let name = |q: &Peer| format!("{} (stream {})", q.node.as_deref().unwrap_or("?"), q.stream);
    let timed: Vec<(String, i64)> = (p.peers.iter())
        .filter_map(|q| q.clock_offset_ms.map(|o| (name(q), o)))
        .collect();
    if timed.is_empty() {
        return;
    }
    let max_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
    let off = |o: i64| {
        let side = if o >= 0 { "ahead of" } else { "behind" };
        format!("{:.1} s {side}", o.unsigned_abs() as f64 / 1e3)
    };
    let mut worst = 0;
    for (q, o) in &timed {
        let abs = o.unsigned_abs();
        worst = worst.max(abs);
        if abs > max_ms {
            r.push(
                Section::Probe,
                Status::Problem,
                format!(
                    "the clock of {} is {} this host's, past the {} a keyed node allows: \
                     nodes that have not heard it yet (this one, once started, or any that \
                     restarts) drop its datagrams as auth_stale",
                    q,
                    off(*o),
                    humantime::format_duration(max_age)
                ),
                vec!["keep every host's clock in sync with NTP (`timedatectl status`)".into()],
            );
        } else if abs > CLOCK_WARN_MS {
            r.push(
                Section::Probe,
                Status::Warn,
                format!(
                    "the clock of {} is {} this host's (keyed nodes allow {})",
                    q,
                    off(*o),
                    humantime::format_duration(max_age)
                ),
                vec!["keep every host's clock in sync with NTP (`timedatectl status`)".into()],
            );
        }
    }
    if worst <= CLOCK_WARN_MS {
        r.push(
            Section::Probe,
            Status::Ok,
            format!(
                "clocks: the {} node(s) heard with a timestamp agree with this host's within \
                 {:.1} s",
                timed.len(),
                worst as f64 / 1e3
            ),
            Vec::new(),
        );
    }
}

/// Likely reasons a probe was not heard, with what to check.
fn not_heard_hints(
    opts: &SocketOptions,
    used: Option<&InterfaceInfo>,
    looped: Option<bool>,
) -> Vec<String> {
    let group = opts.group;
    let mut hints = vec![format!(
        "a firewall drops it: look for rules on UDP port {} (input) or destination {} \
         (output) in `nft list ruleset` or `iptables -S`",
        group.port(),
        group.ip()
    )];
    match used {
        Some(i) if !i.up => hints.push(format!("{} is down: `ip link set {} up`", i.name, i.name)),
        Some(i) if !i.multicast && !i.loopback => hints.push(format!(
            "multicast is off on {}: `ip link set {} multicast on`",
            i.name, i.name
        )),
        Some(i) if i.loopback && group.is_ipv6() => hints.push(format!(
            "IPv6 multicast does not loop back on {} (Linux): use a real interface",
            i.name
        )),
        _ => {}
    }
    if opts.interface == InterfaceSpec::Default {
        hints.push(format!(
            "no multicast route: `ip route get {}` should name the interface; add one with \
             `ip route add 224.0.0.0/4 dev <interface>`, or pass --interface",
            group.ip()
        ));
    }
    hints.push(match looped {
        Some(false) => "IP_MULTICAST_LOOP is off, so this host does not hear itself".into(),
        _ => "IP_MULTICAST_LOOP is on (checked above), so not that".into(),
    });
    hints.push(unicast_advice(group, used));
    hints
}

/// The configuration to use where multicast does not work: the unicast
/// transport, with this host's address as the others' peer.
fn unicast_advice(group: SocketAddr, used: Option<&InterfaceInfo>) -> String {
    let port = group.port();
    let here = used
        .and_then(|i| i.addrs.iter().find(|a| a.is_ipv4() == group.is_ipv4()))
        .map_or_else(
            || format!("<this host's address>:{port}"),
            |a| SocketAddr::new(*a, port).to_string(),
        );
    format!(
        "if this network carries no multicast (most clouds, Kubernetes), run without it: \
         on every node `--transport unicast --peer <another node's IP>:{port}` (repeat \
         --peer; a Kubernetes headless service is one name for all: \
         `--peer cachecast.<namespace>.svc.cluster.local:{port}`), or in the agent's file \
         `[node] transport = \"unicast\"` and `peers = [\"...\"]`; the others reach this \
         host at {here}"
    )
}

pub(super) fn report_probe(
    r: &mut Report,
    run: ProbeRun,
    opts: &SocketOptions,
    used: Option<&InterfaceInfo>,
    wait: Duration,
) {
    let p = &run.probe;
    let group = opts.group;
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"));
    match &run.send_error {
        Some(e) if p.sent => r.push(
            Section::Probe,
            Status::Problem,
            format!(
                "sent the probe's Hello to {group} but not its Goodbye: {e}; live nodes of \
                 the cluster will time the probe's stream out with a Reset"
            ),
            Vec::new(),
        ),
        Some(e) => r.push(
            Section::Probe,
            Status::Problem,
            format!("could not send the probe to {group}: {e}"),
            not_heard_hints(opts, used, r.multicast_loop),
        ),
        None => {}
    }
    if p.sent {
        match p.heard_by {
            [true, true] => r.push(
                Section::Probe,
                Status::Ok,
                format!(
                    "heard: the probe (a {}-byte Hello, stream {}) came back to both sockets, \
                     in {} and {}",
                    p.bytes,
                    p.stream,
                    ms(p.latency_ms[0]),
                    ms(p.latency_ms[1])
                ),
                Vec::new(),
            ),
            [false, false] => r.push(
                Section::Probe,
                Status::Problem,
                format!(
                    "NOT HEARD: neither socket received the probe within {}",
                    humantime::format_duration(wait)
                ),
                not_heard_hints(opts, used, r.multicast_loop),
            ),
            [a, _] => {
                let mut hints = vec![format!(
                    "another program on port {} without SO_REUSEPORT may take the datagrams: \
                     `ss -ulpn 'sport = :{}'`",
                    group.port(),
                    group.port()
                )];
                hints.extend(not_heard_hints(opts, used, r.multicast_loop));
                r.push(
                    Section::Probe,
                    Status::Problem,
                    format!(
                        "heard by only one of the two sockets (the {} one) within {}",
                        if a { "sending" } else { "other" },
                        humantime::format_duration(wait)
                    ),
                    hints,
                );
            }
        }
    }
    if let Some(e) = &run.recv_error {
        r.push(
            Section::Probe,
            Status::Warn,
            format!("receiving on the group failed: {e}"),
            Vec::new(),
        );
    }
    let listened = Duration::from_millis(p.listened_ms as u64);
    if p.peers.is_empty() {
        r.push(
            Section::Probe,
            Status::Info,
            format!(
                "no other node of cluster {:?} answered within {}: none runs on this group, \
                 or they cannot be heard here",
                r.cluster,
                humantime::format_duration(listened)
            ),
            Vec::new(),
        );
    } else {
        let list: Vec<String> = p
            .peers
            .iter()
            .map(|q| {
                format!(
                    "{} (stream {}, from {})",
                    q.node.as_deref().unwrap_or("?"),
                    q.stream,
                    q.from
                )
            })
            .collect();
        r.push(
            Section::Probe,
            Status::Info,
            format!(
                "{} other node(s) of cluster {:?} heard: {}",
                p.peers.len(),
                r.cluster,
                list.join(", ")
            ),
            Vec::new(),
        );
    }
    if let Some(id) = &p.sealed_with {
        r.push(
            Section::Probe,
            Status::Info,
            format!("the probe was authenticated with key {id}, the key file's sending key"),
            Vec::new(),
        );
    }
    let ids = p.key_ids.join(", ");
    if p.sealed_with.is_none() && p.authenticated > 0 {
        r.push(
            Section::Probe,
            Status::Warn,
            format!(
                "{} datagram(s) of cluster {:?} heard were authenticated (key ids {ids}): its \
                 nodes use keys, and those that require them ignore this unauthenticated probe",
                p.authenticated, r.cluster
            ),
            vec!["run doctor with the cluster's key file: --key-file PATH".into()],
        );
    }
    if p.unverified > 0 {
        r.push(
            Section::Probe,
            Status::Warn,
            format!(
                "{} datagram(s) of cluster {:?} did not verify with this key file (key ids \
                 {ids}): their nodes hold other keys, or they are forged",
                p.unverified, r.cluster
            ),
            vec![
                "compare the key ids: `cachecast keygen --list PATH` on each node, and \
                 `cachecast members` with a key that works"
                    .into(),
            ],
        );
    }
    if p.foreign_cluster > 0 {
        r.push(
            Section::Probe,
            Status::Warn,
            format!(
                "{} datagram(s) of another cachecast cluster on this group and port: nodes \
                 drop them, but both clusters pay for each other's traffic",
                p.foreign_cluster
            ),
            vec!["give each cluster its own group or port".into()],
        );
    }
    if p.not_cachecast > 0 {
        r.push(
            Section::Probe,
            Status::Warn,
            format!(
                "{} datagram(s) that are not cachecast on this group and port: another \
                 application uses it",
                p.not_cachecast
            ),
            vec!["choose another group or port".into()],
        );
    }
    r.probe = Some(run.probe);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::tests::empty_report;
    use cachecast::proto::NodeCore;
    use cachecast::{CoreConfig, Delivery};

    fn unheard(heard_by: [bool; 2]) -> ProbeRun {
        ProbeRun {
            probe: Probe {
                stream: stream_hex(5),
                bytes: 30,
                sent: true,
                heard: false,
                heard_by,
                latency_ms: [None; 2],
                peers: Vec::new(),
                foreign_cluster: 2,
                not_cachecast: 0,
                sealed_with: None,
                authenticated: 0,
                unverified: 0,
                key_ids: Vec::new(),
                listened_ms: 1000.0,
            },
            send_error: None,
            recv_error: None,
        }
    }

    #[test]
    fn an_unheard_probe_is_a_problem_with_its_likely_causes() {
        let opts = SocketOptions::new("239.255.1.2:4242".parse().unwrap());
        let eth = InterfaceInfo {
            name: "eth7".into(),
            index: 7,
            addrs: vec!["192.0.2.7".parse().unwrap()],
            up: true,
            multicast: false,
            loopback: false,
        };
        let mut r = empty_report();
        r.multicast_loop = Some(true);
        report_probe(
            &mut r,
            unheard([false, false]),
            &opts,
            Some(&eth),
            Duration::from_secs(1),
        );
        let r = r.finish();
        let f = &r.findings[0];
        assert_eq!(f.status, Status::Problem);
        assert!(f.message.starts_with("NOT HEARD"), "{}", f.message);
        let hints = f.hints.join("\n");
        for needle in [
            "firewall",
            "port 4242",
            "ip link set eth7 multicast on",
            "ip route get 239.255.1.2",
            "IP_MULTICAST_LOOP is on",
            "--transport unicast --peer <another node's IP>:4242",
            "transport = \"unicast\"",
            "reach this host at 192.0.2.7:4242",
        ] {
            assert!(hints.contains(needle), "{needle:?} in {hints}");
        }
        assert!(r
            .findings
            .iter()
            .any(|f| f.status == Status::Warn && f.message.contains("another cachecast cluster")));

        let mut r = empty_report();
        report_probe(
            &mut r,
            unheard([true, false]),
            &opts,
            None,
            Duration::from_secs(1),
        );
        let f = &r.finish().findings[0];
        assert!(
            f.message.contains("only one of the two sockets"),
            "{}",
            f.message
        );
        assert!(f.hints[0].contains("SO_REUSEPORT"), "{:?}", f.hints);
    }

    #[test]
    fn probe_datagrams_are_valid_and_truncate_long_names() {
        let [hello, goodbye, _] = probe_datagrams(7, 9, &"n".repeat(100), None);
        let d = wire::decode(&hello, 7).unwrap();
        assert_eq!(d.header.stream, 9);
        assert!(matches!(d.body, Body::Hello { node } if node.len() == wire::MAX_NODE_NAME));
        let d = wire::decode(&goodbye, 7).unwrap();
        assert_eq!(d.body, Body::Goodbye { next_seq: 1 });
    }

    /// Feeds the probe to a node, then runs it well past the stream timeout;
    /// returns the Resets it delivered.
    fn resets_after(datagrams: &[&[u8]]) -> Vec<Delivery> {
        let start = std::time::Instant::now();
        let cfg = CoreConfig {
            cluster: 7,
            stream: 1,
            node_name: "live".into(),
            ..CoreConfig::default()
        };
        let timeout = cfg.stream_timeout;
        let mut core = NodeCore::new(cfg, start).unwrap();
        let mut buf = Vec::new();
        // Past the node's sync window, as a running node is.
        let mut now = start + Duration::from_secs(1);
        core.handle_timeout(now);
        for d in datagrams {
            core.handle_datagram(now, d);
        }
        let end = now + timeout * 3;
        let mut out = Vec::new();
        for _ in 0..100_000 {
            while core.poll_transmit(now, &mut buf) {}
            while let Some(d) = core.poll_delivery() {
                out.push(d);
            }
            match core.poll_timeout() {
                Some(t) if t <= end => {
                    now = now.max(t);
                    core.handle_timeout(now);
                }
                _ => break,
            }
        }
        out.retain(|d| matches!(d, Delivery::Reset { .. }));
        out
    }

    #[test]
    fn the_probe_makes_live_nodes_reset_nothing() {
        let [hello, goodbye, _] = probe_datagrams(7, 99, "doctor-1", None);
        assert!(resets_after(&[&hello, &goodbye, &goodbye]).is_empty());
        // Even with the Hello lost, or the Goodbye first.
        assert!(resets_after(&[&goodbye]).is_empty());
        assert!(resets_after(&[&goodbye, &hello]).is_empty());
        // Even with no Goodbye at all (doctor killed, the Goodbye lost): the
        // probe says it never publishes, so its stream is not followed...
        assert!(resets_after(&[&hello]).is_empty());
        // ...where an unflagged Hello would cost a Reset at its timeout.
        let mut unflagged = hello.clone();
        unflagged[5] = 0;
        assert_eq!(resets_after(&[&unflagged]).len(), 1);
    }

    /// A node that requires keys verifies a probe sealed with its key (in
    /// clear or encrypted) and counts it, drops an unsealed one as
    /// `auth_missing`, and doctor reads back what the node sealed.
    #[test]
    fn a_sealed_probe_is_verified_by_a_node_that_requires_keys() {
        use cachecast::wire::Key;
        use cachecast::AuthMode;
        let cluster = 7;
        let ring = || Keyring::single(Key::derive(&[9; 32], cluster).unwrap());
        for encrypt in [false, true] {
            let start = std::time::Instant::now();
            let mut cfg = CoreConfig {
                cluster,
                stream: 1,
                node_name: "live".into(),
                ..CoreConfig::default()
            };
            cfg.auth.mode = AuthMode::Require;
            cfg.auth.keyring = ring();
            cfg.auth.wall_clock_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            let mut core = NodeCore::new(cfg, start).unwrap();
            let now = start + Duration::from_secs(1);
            core.handle_timeout(now);
            let keys = ProbeKeys {
                ring: ring(),
                encrypt,
            };
            let unsealed = probe_datagrams(cluster, 99, "doctor-1", None);
            core.handle_datagram(now, &unsealed[0]);
            assert_eq!(core.stats().dropped.get("auth_missing"), Some(&1));
            let sealed = probe_datagrams(cluster, 99, "doctor-1", Some(&keys));
            for d in &sealed {
                core.handle_datagram(now, d);
            }
            assert_eq!(core.stats().auth_verified, 3, "encrypt {encrypt}");
            // What the node sends (its answer to the Hello among them)
            // verifies with doctor's keys and decodes.
            let mut buf = Vec::new();
            let mut read = 0;
            while core.poll_transmit(now, &mut buf) {
                let (header, len) = wire::decode_header(&buf, cluster).unwrap();
                let mut scratch = Vec::new();
                let (id, plain) = verified(&keys.ring, &buf, &header, len, &mut scratch);
                assert_eq!(id, Some(keys.ring.ids()[0]));
                wire::decode(&plain.expect("verifies"), cluster).unwrap();
                read += 1;
            }
            assert!(read >= 1);
            // A flipped byte does not verify.
            let mut bad = sealed[0].clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            let (header, len) = wire::decode_header(&bad, cluster).unwrap();
            assert!(verified(&keys.ring, &bad, &header, len, &mut Vec::new())
                .1
                .is_none());
        }
    }

    /// The clock offset is read from a sealed datagram's timestamp, and a
    /// peer whose clock is past `max_age` is a problem (keyed nodes that
    /// start drop it as `auth_stale`), one a few seconds off a warning, and
    /// clocks in agreement are said to be.
    #[test]
    fn clocks_of_keyed_peers_are_judged_against_max_age() {
        use cachecast::wire::Key;
        let key = Key::derive(&[9; 32], 7).unwrap();
        let mut header = Header::new(7, 42);
        header.flags |= wire::FLAG_AUTH;
        let header_len = header.to_bytes().len();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let sealed_at = |ts: u64| {
            let mut buf = Vec::new();
            wire::encode(&header, &Body::Goodbye { next_seq: 1 }, &mut buf);
            key.seal(&mut buf, header_len, 42, Algorithm::HmacSha256, ts, 1);
            clock_offset(&buf, header_len).unwrap()
        };
        let ahead = sealed_at(now_ms + 90_000);
        assert!((89_000..=90_000).contains(&ahead), "{ahead}");
        let behind = sealed_at(now_ms - 10_000);
        assert!((-11_000..=-9_000).contains(&behind), "{behind}");
        assert!(sealed_at(now_ms).abs() < 1_000);
        assert_eq!(clock_offset(&[0; 10], 4), None, "no trailer");

        let peer = |node: &str, offset: Option<i64>| Peer {
            stream: stream_hex(3),
            node: Some(node.into()),
            from: "127.0.0.1:4242".into(),
            clock_offset_ms: offset,
        };
        let judged = |peers: Vec<Peer>| {
            let mut run = unheard([true, true]);
            run.probe.peers = peers;
            let mut r = empty_report();
            r.probe = Some(run.probe);
            report_clocks(&mut r, Duration::from_secs(60));
            r.findings
        };
        let f = judged(vec![
            peer("web-1", Some(ahead)),
            peer("web-2", Some(behind)),
            peer("web-3", Some(20)),
            peer("old", None),
        ]);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].status, Status::Problem);
        assert!(f[0].message.contains("web-1"), "{}", f[0].message);
        assert!(f[0].message.contains("ahead of"), "{}", f[0].message);
        assert!(f[0].message.contains("auth_stale"), "{}", f[0].message);
        assert_eq!(f[1].status, Status::Warn);
        assert!(f[1].message.contains("web-2"), "{}", f[1].message);
        assert!(f[1].message.contains("behind"), "{}", f[1].message);
        let f = judged(vec![peer("web-3", Some(-20)), peer("old", None)]);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].status, Status::Ok);
        assert!(f[0].message.contains("1 node(s)"), "{}", f[0].message);
        assert!(judged(vec![peer("old", None)]).is_empty(), "no keyed peer");
    }
}
