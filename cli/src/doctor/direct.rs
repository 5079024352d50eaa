//! The direct-repair check of `cachecast doctor`: a node with
//! `direct_repairs` (the default, over multicast) opens a *direct* socket
//! beside the group's, sends its `Nak`s to the group from it, and a sender
//! sends a repair that one node alone asked for to the `Nak`'s source: to
//! that node's direct socket. Doctor walks both legs as two nodes of this
//! host would: a `Hello` of a fresh receive-only stream sent to the group
//! from one direct socket must be heard on the group (with that socket's
//! port as its source), and a datagram sent from a second direct socket to
//! that source must arrive. The stream's `Goodbye` (twice) follows, from the
//! same direct socket, so live nodes forget it at once.
//!
//! Nothing is sent anywhere but to the group and, once, to this host's own
//! direct socket; listening is bounded by `--wait` and in datagrams.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::probe::{fresh_stream, probe_datagrams, ProbeKeys};
use super::{Report, Section, Status};
use cachecast::net::socket::{self, ResolvedInterface, SocketOptions};

/// At most this many received datagrams are looked at per leg.
const MAX_DATAGRAMS: usize = 10_000;

/// What the direct check found.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Direct {
    /// The direct socket's address as the group heard it (where a repair
    /// for it would be sent), once heard.
    pub source: Option<String>,
    /// The port the direct socket was bound to.
    pub port: Option<u16>,
    /// A datagram sent to the group from the direct socket was heard on
    /// the group (a node's `Nak`).
    pub nak_heard: bool,
    /// A datagram sent to the heard source arrived at the direct socket
    /// (a repair directed to that node).
    pub repair_heard: bool,
    pub latency_ms: [Option<f64>; 2],
}

/// The check's outcome, before it is judged.
pub(super) enum DirectRun {
    /// `direct_repairs` is off, or the transport is not multicast.
    Off,
    /// Not run: the group's own probe was not heard.
    Skipped,
    /// A direct socket could not be opened (or registered).
    NoSocket(String),
    /// Sending to the group from the direct socket failed.
    NakSendFailed(io::Error),
    /// Sending to the direct socket failed.
    RepairSendFailed(io::Error, Direct),
    Done(Direct),
}

/// Opens two direct sockets as nodes do and walks both legs (see the
/// module); `group_socket` is one of doctor's sockets on the group.
pub(super) async fn run_direct(
    group_socket: &UdpSocket,
    opts: &SocketOptions,
    interface: &ResolvedInterface,
    cluster: u32,
    node: &str,
    wait: Duration,
    keys: Option<&ProbeKeys>,
) -> DirectRun {
    let open = || -> Result<UdpSocket, String> {
        let s = socket::open_direct(opts, interface).map_err(|e| e.to_string())?;
        UdpSocket::from_std(s.socket).map_err(|e| e.to_string())
    };
    let (a, b) = match (open(), open()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return DirectRun::NoSocket(e),
    };
    let port = a.local_addr().ok().map(|l| l.port());
    let b_port = b.local_addr().ok().map(|l| l.port());
    let mut d = Direct {
        source: None,
        port,
        nak_heard: false,
        repair_heard: false,
        latency_ms: [None; 2],
    };
    let [hello, bye, bye_again] = probe_datagrams(cluster, fresh_stream(), node, keys);
    let start = Instant::now();
    let end = start + wait;
    if let Err(e) = a.send_to(&hello, opts.group).await {
        return DirectRun::NakSendFailed(e);
    }
    let mut buf = vec![0u8; cachecast::wire::MAX_DATAGRAM];
    // Leg 1: the group hears it, from this host's direct socket: its port,
    // and the interface's address when it has one (a datagram is only
    // ever sent back to this host).
    let source = heard(group_socket, &mut buf, &hello, end, |from| {
        Some(from.port()) == port
            && (interface.addr.is_none_or(|a| a == from.ip()) || from.ip().is_loopback())
    })
    .await;
    let mut send_error = None;
    if let Some(to) = source {
        d.nak_heard = true;
        d.source = Some(to.to_string());
        d.latency_ms[0] = Some(start.elapsed().as_secs_f64() * 1e3);
        // Leg 2: a datagram sent to that source arrives, from the other
        // direct socket.
        let sent = Instant::now();
        match b.send_to(&hello, to).await {
            Ok(_) => {
                let back = heard(&a, &mut buf, &hello, end, |from| {
                    Some(from.port()) == b_port
                })
                .await;
                if back.is_some() {
                    d.repair_heard = true;
                    d.latency_ms[1] = Some(sent.elapsed().as_secs_f64() * 1e3);
                }
            }
            Err(e) => send_error = Some(e),
        }
    }
    // Live nodes forget the stream (its Hello may have reached them even
    // when doctor did not hear it).
    for goodbye in [&bye, &bye_again] {
        let _ = a.send_to(goodbye, opts.group).await;
    }
    match send_error {
        Some(e) => DirectRun::RepairSendFailed(e, d),
        None => DirectRun::Done(d),
    }
}

/// Waits until `socket` receives `expected` from a source `from_ok`
/// accepts, and returns that source; `None` at `end` (or after
/// [`MAX_DATAGRAMS`] others).
async fn heard(
    socket: &UdpSocket,
    buf: &mut [u8],
    expected: &[u8],
    end: Instant,
    from_ok: impl Fn(SocketAddr) -> bool,
) -> Option<SocketAddr> {
    for _ in 0..MAX_DATAGRAMS {
        let r = tokio::select! {
            r = socket.recv_from(buf) => r,
            () = tokio::time::sleep_until(end) => return None,
        };
        if let Ok((n, from)) = r {
            if buf.get(..n) == Some(expected) && from_ok(from) {
                return Some(from);
            }
        }
    }
    None
}

/// Judges the check into findings.
pub(super) fn report_direct(r: &mut Report, run: DirectRun, group: SocketAddr, wait: Duration) {
    let wait = humantime::format_duration(wait);
    let off_hint = "or set direct_repairs = false (--direct-repairs false): every repair then \
                    goes to the group, to every node"
        .to_owned();
    let d = match run {
        DirectRun::Skipped => {
            r.push(
                Section::Direct,
                Status::Info,
                "not checked: the probe was not heard on the group (see above)".into(),
                Vec::new(),
            );
            return;
        }
        DirectRun::Off => {
            r.push(
                Section::Direct,
                Status::Info,
                "direct repairs off: every repair goes to the group".into(),
                Vec::new(),
            );
            return;
        }
        DirectRun::NoSocket(e) => {
            r.push(
                Section::Direct,
                Status::Warn,
                format!(
                    "could not open a direct socket ({e}): a node then sends its Naks from \
                     the group's socket and every repair goes to the group, to every node"
                ),
                Vec::new(),
            );
            return;
        }
        DirectRun::NakSendFailed(e) => {
            r.push(
                Section::Direct,
                Status::Problem,
                format!(
                    "could not send to {group} from a direct socket, as a node sends its Naks: \
                     {e}; a node's Naks would be lost"
                ),
                vec![off_hint],
            );
            return;
        }
        DirectRun::RepairSendFailed(e, d) => {
            r.push(
                Section::Direct,
                Status::Warn,
                format!(
                    "could not send to the direct socket {}, as a repair one node asked for is \
                     sent: {e}; such repairs go to the group after a second ask",
                    d.source.as_deref().unwrap_or("?")
                ),
                vec![off_hint],
            );
            r.direct = Some(d);
            return;
        }
        DirectRun::Done(d) => d,
    };
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"));
    if !d.nak_heard {
        r.push(
            Section::Direct,
            Status::Problem,
            format!(
                "a Hello sent to {group} from a direct socket (port {}), as a node sends its \
                 Naks, was not heard on the group within {wait}: a node's Naks would be lost, \
                 and nothing it misses repaired",
                d.port.map_or_else(|| "?".into(), |p| p.to_string())
            ),
            vec![
                "a firewall that passes the group's datagrams only from its port drops them: \
                 allow UDP to the group from any source port"
                    .into(),
                off_hint,
            ],
        );
    } else if !d.repair_heard {
        r.push(
            Section::Direct,
            Status::Warn,
            format!(
                "a datagram sent to a direct socket ({}) from this host, as a repair one node \
                 asked for is sent, did not arrive within {wait}: such a repair is lost, asked \
                 for again, and then sent to the group (later, and to every node)",
                d.source.as_deref().unwrap_or("?")
            ),
            vec![
                "allow UDP to this host's ephemeral ports (net.ipv4.ip_local_port_range), \
                 from this host and from the LAN"
                    .into(),
                off_hint,
            ],
        );
    } else {
        r.push(
            Section::Direct,
            Status::Ok,
            format!(
                "a Hello sent to the group from a direct socket, as a node sends its Naks, \
                 was heard from {} in {}, and a datagram sent back there from this host \
                 arrived in {}: a repair one node asks for goes to it alone (from other \
                 hosts too, unless a firewall drops UDP to ephemeral ports)",
                d.source.as_deref().unwrap_or("?"),
                ms(d.latency_ms[0]),
                ms(d.latency_ms[1])
            ),
            Vec::new(),
        );
    }
    r.direct = Some(d);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::tests::empty_report;

    fn direct(nak: bool, repair: bool) -> Direct {
        Direct {
            source: nak.then(|| "127.0.0.1:40000".into()),
            port: Some(40000),
            nak_heard: nak,
            repair_heard: repair,
            latency_ms: [nak.then_some(0.2), repair.then_some(0.1)],
        }
    }

    fn judged(run: DirectRun) -> Report {
        let mut r = empty_report();
        report_direct(
            &mut r,
            run,
            "239.255.1.2:7467".parse().unwrap(),
            Duration::from_secs(1),
        );
        r.finish()
    }

    #[test]
    fn each_outcome_is_judged_with_what_to_change() {
        let ok = judged(DirectRun::Done(direct(true, true)));
        assert_eq!((ok.problems, ok.warnings), (0, 0));
        assert!(ok.findings[0].message.contains("goes to it alone"));
        assert_eq!(ok.direct.as_ref().map(|d| d.repair_heard), Some(true));

        // The repair's leg lost: slower repairs, not a failure.
        let no_repair = judged(DirectRun::Done(direct(true, false)));
        assert_eq!((no_repair.problems, no_repair.warnings), (0, 1));
        let f = &no_repair.findings[0];
        assert!(f.message.contains("127.0.0.1:40000"), "{}", f.message);
        assert!(f.hints.iter().any(|h| h.contains("ip_local_port_range")));

        // The Nak's leg lost: nothing would be repaired.
        let no_nak = judged(DirectRun::Done(direct(false, false)));
        assert_eq!(no_nak.problems, 1);
        assert!(no_nak.findings[0].message.contains("port 40000"));
        assert!(no_nak.findings[0]
            .hints
            .iter()
            .any(|h| h.contains("direct_repairs = false")));

        let no_socket = judged(DirectRun::NoSocket("bind failed".into()));
        assert_eq!((no_socket.problems, no_socket.warnings), (0, 1));
        assert!(no_socket.direct.is_none());

        let off = judged(DirectRun::Off);
        assert_eq!((off.problems, off.warnings), (0, 0));
        assert!(off.findings[0].message.contains("off"));

        // The group's probe unheard: said once, above, not blamed here.
        let skipped = judged(DirectRun::Skipped);
        assert_eq!((skipped.problems, skipped.warnings), (0, 0));
        assert!(skipped.findings[0].message.contains("not checked"));

        // Each send failure is one finding.
        let refused = || io::Error::from(io::ErrorKind::PermissionDenied);
        let nak = judged(DirectRun::NakSendFailed(refused()));
        assert_eq!((nak.problems, nak.warnings, nak.findings.len()), (1, 0, 1));
        let back = judged(DirectRun::RepairSendFailed(refused(), direct(true, false)));
        assert_eq!(
            (back.problems, back.warnings, back.findings.len()),
            (0, 1, 1)
        );
        assert!(back.findings[0].message.contains("127.0.0.1:40000"));
    }
}
