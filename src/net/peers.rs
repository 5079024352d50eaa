//! Unicast fan-out: where a node sends when multicast does not carry its
//! datagrams (clouds, most Kubernetes networks), or as well as multicast.
//!
//! A node's peers come from three places:
//! - **addresses** given (`IP:PORT`, `[IPv6]:PORT`), always sent to;
//! - **names** given (`NAME:PORT`), resolved at join and every
//!   `peer_refresh` after (A and AAAA records: a Kubernetes headless
//!   service names every pod). An address that disappears from the answers
//!   is still sent to for the stream timeout (a pod that is only being
//!   rescheduled keeps its events); a name that does not resolve keeps its
//!   last answers;
//! - **learned** (unicast only, not with `both`): the source address of
//!   every datagram the protocol accepted (authenticated, unless the auth
//!   mode is off), so that a node that others list but that does not list
//!   them is still answered by it. A learned address is dropped after the
//!   stream timeout without a datagram from it; at most [`MAX_LEARNED`] are
//!   kept. Nothing passes addresses on: two nodes that never send to each
//!   other never learn each other, so every node must be listed by, or
//!   list, every other (one DNS name for all does both).
//!
//! This node's own addresses are never sent to. Each datagram is encoded
//! once and sent to every peer (a GSO batch per destination); a `Nak` or a
//! repair meant for one node goes to it alone if it is a peer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Learned peers kept at most: beyond, the stalest is forgotten.
pub const MAX_LEARNED: usize = 1024;

/// How a node's datagrams travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// To the multicast group only (a LAN). The default.
    #[default]
    Multicast,
    /// To every peer, one unicast copy each (no multicast at all).
    Unicast,
    /// To the group and to every peer (a cluster moving off multicast, or
    /// spanning a LAN and hosts beyond it).
    Both,
}

impl Transport {
    /// Whether datagrams go to the multicast group.
    pub fn multicast(self) -> bool {
        self != Transport::Unicast
    }

    /// Whether datagrams go to peers.
    pub fn unicast(self) -> bool {
        self != Transport::Multicast
    }
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "multicast" => Ok(Transport::Multicast),
            "unicast" => Ok(Transport::Unicast),
            "both" => Ok(Transport::Both),
            _ => Err(format!(
                "unknown transport {s:?}: use multicast, unicast or both"
            )),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Multicast => "multicast",
            Transport::Unicast => "unicast",
            Transport::Both => "both",
        })
    }
}

/// One configured peer: an address, or a name to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerSpec {
    /// `IP:PORT` or `[IPv6]:PORT`.
    Addr(SocketAddr),
    /// `NAME:PORT`, resolved (A and AAAA) at join and every `peer_refresh`.
    Name {
        /// The DNS name (or an `/etc/hosts` one).
        host: String,
        /// The port every address of the name is sent to.
        port: u16,
    },
}

impl std::str::FromStr for PeerSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad =
            |why: &str| format!("peer {s:?}: {why} (expected IP:PORT, [IPv6]:PORT or NAME:PORT)");
        if let Ok(a) = s.parse::<SocketAddr>() {
            if a.port() == 0 {
                return Err(bad("port 0"));
            }
            if a.ip().is_unspecified() || a.ip().is_multicast() {
                return Err(bad("not a host's address"));
            }
            return Ok(PeerSpec::Addr(a));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port must be 1 to 65535"))?;
        if host.parse::<IpAddr>().is_ok() || host.contains(':') || host.starts_with('[') {
            return Err(bad("an IPv6 address needs brackets"));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let name = host.strip_suffix('.').unwrap_or(host);
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(bad("not a DNS name"));
        }
        Ok(PeerSpec::Name {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for PeerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerSpec::Addr(a) => write!(f, "{a}"),
            PeerSpec::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// The peers a node sends to, kept by its driver.
#[derive(Debug)]
pub(crate) struct PeerSet {
    /// Addresses given.
    fixed: Vec<SocketAddr>,
    /// The names' latest answers.
    resolved: Vec<SocketAddr>,
    /// Addresses gone from the answers, and since when.
    departed: HashMap<SocketAddr, Instant>,
    /// Addresses heard from, and when last.
    learned: HashMap<SocketAddr, Instant>,
    /// This node's own address (its port on an unspecified address: any
    /// local address with that port).
    own: SocketAddr,
    /// Addresses of this host (to skip `own`'s port on them).
    local_ips: Vec<IpAddr>,
    /// How long an address unheard (learned) or gone from DNS is kept.
    timeout: Duration,
    /// Every destination, deduplicated, without our own.
    current: Vec<SocketAddr>,
}

impl PeerSet {
    pub fn new(
        fixed: Vec<SocketAddr>,
        own: SocketAddr,
        local_ips: Vec<IpAddr>,
        timeout: Duration,
    ) -> Self {
        let mut p = PeerSet {
            fixed,
            resolved: Vec::new(),
            departed: HashMap::new(),
            learned: HashMap::new(),
            own,
            local_ips,
            timeout,
            current: Vec::new(),
        };
        p.rebuild();
        p
    }

    /// Where every datagram goes.
    pub fn destinations(&self) -> &[SocketAddr] {
        &self.current
    }

    /// Whether `a` is one of them.
    pub fn is_peer(&self, a: SocketAddr) -> bool {
        self.current.binary_search(&a).is_ok()
    }

    fn is_own(&self, a: SocketAddr) -> bool {
        if a.port() != self.own.port() {
            return false;
        }
        // Bound to the unspecified address: every address of this host is
        // ours.
        a.ip() == self.own.ip()
            || self.own.ip().is_unspecified()
                && (a.ip().is_loopback() || self.local_ips.contains(&a.ip()))
    }

    /// A datagram from `a` was accepted: `a` is a peer (if it was not).
    pub fn heard(&mut self, a: SocketAddr, now: Instant) {
        if let Some(at) = self.learned.get_mut(&a) {
            *at = now;
            return;
        }
        if self.is_own(a) {
            return;
        }
        if self.learned.len() >= MAX_LEARNED {
            if let Some((&stalest, _)) = self.learned.iter().min_by_key(|(_, t)| **t) {
                self.learned.remove(&stalest);
            }
        }
        self.learned.insert(a, now);
        tracing::debug!(peer = %a, "learned a peer");
        self.rebuild();
    }

    /// The names resolved again: their addresses now.
    /// Only addresses of this node's family are kept (an AAAA answer for an
    /// IPv4 socket cannot be sent to).
    pub fn set_resolved(&mut self, mut addrs: Vec<SocketAddr>, now: Instant) {
        addrs.retain(|a| a.is_ipv4() == self.own.is_ipv4());
        addrs.sort();
        addrs.dedup();
        if addrs == self.resolved {
            return;
        }
        for gone in self.resolved.iter().filter(|a| !addrs.contains(a)) {
            self.departed.entry(*gone).or_insert(now);
        }
        for back in &addrs {
            self.departed.remove(back);
        }
        self.resolved = addrs;
        self.rebuild();
    }

    /// Forgets learned peers unheard, and addresses gone from DNS, for the
    /// stream timeout.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.timeout;
        let before = self.learned.len() + self.departed.len();
        self.learned
            .retain(|_, t| now.saturating_duration_since(*t) < timeout);
        let learned = &self.learned;
        self.departed
            .retain(|a, t| now.saturating_duration_since(*t) < timeout || learned.contains_key(a));
        if self.learned.len() + self.departed.len() != before {
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        let mut all: Vec<SocketAddr> = (self.fixed.iter())
            .chain(&self.resolved)
            .chain(self.departed.keys())
            .chain(self.learned.keys())
            .copied()
            .collect();
        all.sort();
        all.dedup();
        all.retain(|a| !self.is_own(*a));
        self.current = all;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn peer_specs_parse_addresses_and_names_and_refuse_the_rest() {
        assert_eq!(
            "10.0.0.2:7467".parse(),
            Ok(PeerSpec::Addr(a("10.0.0.2:7467")))
        );
        assert_eq!(
            "[fd00::2]:7467".parse(),
            Ok(PeerSpec::Addr(a("[fd00::2]:7467")))
        );
        assert_eq!(
            "cachecast.shop.svc.cluster.local:7467".parse(),
            Ok(PeerSpec::Name {
                host: "cachecast.shop.svc.cluster.local".into(),
                port: 7467
            })
        );
        for bad in [
            "10.0.0.2",
            "10.0.0.2:0",
            "0.0.0.0:7467",
            "239.255.0.1:7467",
            "fd00::2:7467",
            "name:",
            "name:70000",
            ":7467",
            "a..b:7467",
            "bad name:7467",
            "",
        ] {
            let err = bad.parse::<PeerSpec>().unwrap_err();
            assert!(err.contains("expected IP:PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn own_addresses_are_skipped_and_peers_deduplicated() {
        let own = a("0.0.0.0:7000");
        let p = PeerSet::new(
            vec![
                a("127.0.0.1:7000"),
                a("10.0.0.1:7000"),
                a("10.0.0.2:7000"),
                a("10.0.0.2:7000"),
                a("127.0.0.1:7001"),
            ],
            own,
            vec!["10.0.0.1".parse().unwrap()],
            Duration::from_secs(3),
        );
        assert_eq!(p.destinations(), &[a("10.0.0.2:7000"), a("127.0.0.1:7001")]);
        let p = PeerSet::new(
            vec![a("127.0.0.1:7000"), a("127.0.0.1:7001")],
            a("127.0.0.1:7001"),
            vec![],
            Duration::from_secs(3),
        );
        assert_eq!(p.destinations(), &[a("127.0.0.1:7000")]);
    }

    #[test]
    fn learned_and_departed_peers_last_the_stream_timeout_unheard() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut p = PeerSet::new(vec![], a("127.0.0.1:7000"), vec![], s(3));
        p.set_resolved(vec![a("127.0.0.1:7001"), a("127.0.0.1:7002")], t);
        p.heard(a("127.0.0.1:7003"), t);
        p.heard(a("127.0.0.1:7000"), t); // our own: never a peer
        assert_eq!(p.destinations().len(), 3);
        // 7002 leaves DNS; 7003 keeps talking, 7002 does not.
        p.set_resolved(vec![a("127.0.0.1:7001")], t + s(1));
        p.heard(a("127.0.0.1:7003"), t + s(3));
        p.expire(t + s(3));
        assert_eq!(p.destinations().len(), 3, "gone from DNS 2 s ago: kept");
        p.expire(t + s(4));
        assert_eq!(
            p.destinations(),
            &[a("127.0.0.1:7001"), a("127.0.0.1:7003")]
        );
        p.expire(t + s(6));
        assert_eq!(p.destinations(), &[a("127.0.0.1:7001")], "unheard for 3 s");
        // Gone from DNS but still talking: kept.
        p.heard(a("127.0.0.1:7001"), t + s(6));
        p.set_resolved(vec![], t + s(6));
        p.heard(a("127.0.0.1:7001"), t + s(8));
        p.expire(t + s(10));
        assert_eq!(p.destinations(), &[a("127.0.0.1:7001")]);
        p.expire(t + s(12));
        assert!(p.destinations().is_empty());
    }

    #[test]
    fn learned_peers_are_bounded() {
        let t = Instant::now();
        let mut p = PeerSet::new(vec![], a("127.0.0.1:1"), vec![], Duration::from_secs(3));
        for i in 0..(MAX_LEARNED as u32 + 10) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            p.heard(
                SocketAddr::from((ip, 7000)),
                t + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(p.destinations().len(), MAX_LEARNED);
        assert!(
            !p.destinations().contains(&a("10.0.0.0:7000")),
            "the stalest went"
        );
    }
}
