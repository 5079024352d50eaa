//! Opening the multicast UDP socket: validation, interface resolution and
//! socket options (socket2), ready to be handed to tokio.
//!
//! This file is the only place in the crate with platform `cfg`s. It turns
//! a [`SocketOptions`] into a bound, joined, non-blocking
//! [`std::net::UdpSocket`] ([`open`]), and for diagnostics (`cachecast
//! doctor`) lists the host's interfaces ([`list_interfaces`]) and reads
//! the receive buffer limit ([`recv_buffer_limit`]) and socket state
//! ([`MulticastSocket::multicast_all`]).
//!
//! What it may not do: no protocol logic, no wire format, no I/O loop and
//! no retries. It never sends or receives a datagram; the driver
//! (`net::driver`) does that. Required socket options that fail are a
//! [`SocketError`] naming the option, the group and the interface; optional
//! ones (raising the receive buffer beyond the system limit) are logged at
//! debug level and skipped.
//!
//! Tests and the loopback harness use interface `127.0.0.1` and multicast
//! TTL 0, so that nothing they send leaves the host.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::str::FromStr;

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};

/// Default multicast TTL / hop limit: 1, so datagrams stay on the LAN.
pub const DEFAULT_TTL: u32 = 1;

/// Default requested receive buffer (`SO_RCVBUF`): 32 MiB. Kernel memory,
/// used only while datagrams wait: it lets a receiver that is not scheduled
/// for a few hundred milliseconds (a busy host) lose nothing, where 4 MiB
/// lost datagrams to every such stall at a million events a second, and
/// each loss cost a repair.
pub const DEFAULT_RECV_BUFFER: usize = 32 << 20;

/// How to pick the interface multicast is sent and received on.
///
/// Parsed from a string: `""` or `"default"` (any case) is [`Default`](Self::Default),
/// anything that parses as an IP address (`"127.0.0.1"`, `"::1"`) is
/// [`Addr`](Self::Addr), and anything else (`"eth0"`) is [`Name`](Self::Name).
/// [`Display`](fmt::Display) writes the same forms back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum InterfaceSpec {
    /// Let the operating system choose (by its routing table).
    #[default]
    Default,
    /// The interface with this name, e.g. `eth0` or `lo`.
    Name(String),
    /// The interface that has this address, e.g. `127.0.0.1`.
    Addr(IpAddr),
}

impl FromStr for InterfaceSpec {
    type Err = SocketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("default") {
            return Ok(Self::Default);
        }
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(Self::Addr(addr));
        }
        let invalid = |reason| SocketError::InvalidInterfaceName {
            name: s.to_owned(),
            reason,
        };
        if s.contains('%') {
            return Err(invalid(
                "an IPv6 scope (`%`) is not supported, give the interface name instead",
            ));
        }
        if s.chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '\0')
        {
            return Err(invalid("it contains whitespace, `/` or NUL"));
        }
        if s.len() > MAX_INTERFACE_NAME_LEN {
            return Err(invalid("it is longer than the system allows"));
        }
        Ok(Self::Name(s.to_owned()))
    }
}

impl fmt::Display for InterfaceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Name(name) => f.write_str(name),
            Self::Addr(addr) => write!(f, "{addr}"),
        }
    }
}

/// Everything [`open`] needs to know.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// Multicast group and port, IPv4 or IPv6. Every node of a cluster uses
    /// the same one.
    pub group: SocketAddr,
    /// The interface to send and receive on.
    pub interface: InterfaceSpec,
    /// Multicast TTL (IPv4) or hop limit (IPv6); 0 keeps datagrams on the
    /// host, 1 on the LAN. At most 255.
    pub ttl: u32,
    /// Whether sockets on this host receive what this one sends
    /// (`IP_MULTICAST_LOOP` / `IPV6_MULTICAST_LOOP`).
    pub loopback: bool,
    /// Requested `SO_RCVBUF` in bytes; 0 keeps the system default. The
    /// request is capped at `i32::MAX / 2`.
    pub recv_buffer: usize,
}

impl SocketOptions {
    /// Options for `group` with the defaults: default interface,
    /// [`DEFAULT_TTL`], loopback on, [`DEFAULT_RECV_BUFFER`].
    pub fn new(group: SocketAddr) -> Self {
        Self {
            group,
            interface: InterfaceSpec::Default,
            ttl: DEFAULT_TTL,
            loopback: true,
            recv_buffer: DEFAULT_RECV_BUFFER,
        }
    }
}

/// The interface actually used by an opened socket.
///
/// For [`InterfaceSpec::Default`] it is name `"default"`, index 0 and no
/// address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedInterface {
    /// Interface name, or `"default"`.
    pub name: String,
    /// Interface index, or 0 for the default interface.
    pub index: u32,
    /// For IPv4, the address used as `IP_MULTICAST_IF`; for IPv6, the
    /// interface's first IPv6 address (informational). `None` for the
    /// default interface.
    pub addr: Option<IpAddr>,
}

impl ResolvedInterface {
    fn default_interface() -> Self {
        Self {
            name: "default".to_owned(),
            index: 0,
            addr: None,
        }
    }
}

impl fmt::Display for ResolvedInterface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.index, self.addr) {
            (0, _) => f.write_str(&self.name),
            (index, Some(addr)) => write!(f, "{} (index {index}, {addr})", self.name),
            (index, None) => write!(f, "{} (index {index})", self.name),
        }
    }
}

/// One network interface of this host, as [`list_interfaces`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// Interface name, e.g. `lo`.
    pub name: String,
    /// Interface index (0 if the system did not tell).
    pub index: u32,
    /// Its IPv4 and IPv6 addresses, in the order the system lists them.
    pub addrs: Vec<IpAddr>,
    /// `IFF_UP`: administratively up.
    pub up: bool,
    /// `IFF_MULTICAST`: the interface advertises multicast support.
    /// Linux's `lo` does not, yet multicast on it works for local sockets.
    pub multicast: bool,
    /// `IFF_LOOPBACK`: a loopback interface.
    pub loopback: bool,
}

/// A bound, joined, non-blocking multicast socket, and what it ended up with.
#[derive(Debug)]
pub struct MulticastSocket {
    /// Non-blocking, bound to the group port, joined; ready for
    /// `tokio::net::UdpSocket::from_std`.
    pub socket: UdpSocket,
    /// Where to send: the group and port.
    pub group: SocketAddr,
    /// The interface used.
    pub interface: ResolvedInterface,
    /// The `SO_RCVBUF` that was asked for (after capping; 0 = system default).
    pub recv_buffer_requested: usize,
    /// What `getsockopt(SO_RCVBUF)` reports after setting (Linux reports
    /// double the usable size); 0 if it could not be read.
    pub recv_buffer_granted: usize,
}

impl MulticastSocket {
    /// The receive buffer the socket can actually use: the granted size,
    /// halved on Linux, which reports double what it grants.
    pub fn recv_buffer_usable(&self) -> usize {
        sys::usable_recv_buffer(self.recv_buffer_granted)
    }

    /// True when the system granted less receive buffer than was requested
    /// (usually capped by `net.core.rmem_max` on Linux).
    pub fn recv_buffer_capped(&self) -> bool {
        self.recv_buffer_requested > 0
            && sys::recv_buffer_capped(self.recv_buffer_requested, self.recv_buffer_granted)
    }

    /// Whether the socket also receives datagrams of groups that only other
    /// sockets joined (`IP_MULTICAST_ALL` / `IPV6_MULTICAST_ALL`):
    /// `Some(false)` after [`open`] on Linux; `None` where the option does
    /// not exist (other systems never do that) or cannot be read.
    pub fn multicast_all(&self) -> Option<bool> {
        sys::multicast_all(&self.socket, self.group.is_ipv4())
    }
}

/// The system's upper limit for a requested receive buffer, in bytes
/// (`net.core.rmem_max` on Linux, read from `/proc`); `None` where unknown.
/// Root raises it with `sysctl -w net.core.rmem_max=<bytes>`.
pub fn recv_buffer_limit() -> Option<usize> {
    sys::recv_buffer_limit()
}

/// Why [`open`] (or parsing an [`InterfaceSpec`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The group address is not a multicast address.
    #[error(
        "{group} is not a multicast group address: use an IPv4 group in 239.255.0.0/16 \
         (e.g. 239.255.42.1:4242) or an IPv6 group like ff15::/16 (e.g. [ff15::4242]:4242)"
    )]
    NotMulticast {
        /// The address given.
        group: SocketAddr,
    },
    /// The group port is 0.
    #[error(
        "multicast group {group} has port 0: all nodes must share one fixed port, \
         give one explicitly (e.g. {ip}:4242)",
        ip = group.ip()
    )]
    ZeroPort {
        /// The address given.
        group: SocketAddr,
    },
    /// The multicast TTL / hop limit is above 255.
    #[error("multicast TTL {ttl} for group {group} is above 255: use 0 (this host only) to 255, usually 1 (this LAN)")]
    InvalidTtl {
        /// The group.
        group: SocketAddr,
        /// The TTL given.
        ttl: u32,
    },
    /// The interface address is of the other IP family than the group.
    #[error(
        "interface address {interface} is {} but group {group} is {}: give an interface \
         address of the group's family, or the interface name",
        family(interface), family(&group.ip())
    )]
    FamilyMismatch {
        /// The group.
        group: SocketAddr,
        /// The interface address given.
        interface: IpAddr,
    },
    /// An interface string that cannot be an interface name.
    #[error(
        "invalid interface {name:?}: {reason}; give an interface name (e.g. eth0), \
         one of its addresses (e.g. 192.0.2.1) or \"default\""
    )]
    InvalidInterfaceName {
        /// The string given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No interface has this name or address.
    #[error("no interface {interface} on this host for group {group}; {available}")]
    NoSuchInterface {
        /// The group.
        group: SocketAddr,
        /// The interface asked for.
        interface: InterfaceSpec,
        /// Human-readable list of what is available instead.
        available: String,
    },
    /// A named interface has no IPv4 address to send an IPv4 group from.
    #[error(
        "interface {interface} has no IPv4 address, so it cannot send to IPv4 group {group}: \
         assign it one, or choose another interface; {available}"
    )]
    NoIpv4Address {
        /// The group.
        group: SocketAddr,
        /// The interface name.
        interface: String,
        /// Human-readable list of interfaces with addresses.
        available: String,
    },
    /// The socket could not be created.
    #[error("cannot create a UDP socket for group {group}: {source}; check the open file limit and that the process may use the network")]
    Create {
        /// The group.
        group: SocketAddr,
        /// The system error.
        source: io::Error,
    },
    /// A required socket option could not be set.
    #[error("cannot set required socket option {option} for group {group} on interface {interface}: {source}; {hint}")]
    SetOption {
        /// The option, e.g. `IP_MULTICAST_IF`.
        option: &'static str,
        /// The group.
        group: SocketAddr,
        /// The interface.
        interface: ResolvedInterface,
        /// What to try.
        hint: &'static str,
        /// The system error.
        source: io::Error,
    },
    /// Binding the group port failed.
    #[error("cannot bind {addr} for group {group} on interface {interface}: {source}; another program may hold the port without SO_REUSEADDR/SO_REUSEPORT: stop it or choose another port")]
    Bind {
        /// The group.
        group: SocketAddr,
        /// The address bound to.
        addr: SocketAddr,
        /// The interface.
        interface: ResolvedInterface,
        /// The system error.
        source: io::Error,
    },
    /// Joining the group failed.
    #[error("cannot join group {group} on interface {interface}: {source}; check that the interface is up and multicast-capable (`ip link`), that a route exists for the group when using the default interface, and the membership limit (net.ipv4.igmp_max_memberships)")]
    Join {
        /// The group.
        group: SocketAddr,
        /// The interface.
        interface: ResolvedInterface,
        /// The system error.
        source: io::Error,
    },
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Lists the host's network interfaces, sorted by index; empty where the
/// platform offers no way to list them.
pub fn list_interfaces() -> Vec<InterfaceInfo> {
    let mut list = sys::interfaces();
    list.sort_by(|a, b| a.index.cmp(&b.index).then_with(|| a.name.cmp(&b.name)));
    list
}

/// Opens the multicast socket described by `opts`.
///
/// Validates the options, resolves the interface, creates the socket with
/// `SO_REUSEADDR` (and `SO_REUSEPORT` on Unix) so that many nodes on one
/// host share the port, binds the unspecified address of the group's family
/// on the group port, turns `IP_MULTICAST_ALL` off on Linux (no datagrams
/// of groups joined only by other sockets), joins the group, sets the
/// outgoing interface, TTL and loopback, raises the receive buffer and makes
/// the socket non-blocking.
pub fn open(opts: &SocketOptions) -> Result<MulticastSocket, SocketError> {
    let group = opts.group;
    validate(opts)?;
    let interface = resolve(group, &opts.interface)?;

    let domain = if group.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|source| SocketError::Create { group, source })?;
    let required = |option: &'static str, hint: &'static str| {
        let interface = interface.clone();
        move |source| SocketError::SetOption {
            option,
            group,
            interface,
            hint,
            source,
        }
    };
    const SHARE: &str = "it lets several nodes on this host share the port";
    const MCAST: &str = "check that the interface is up and supports multicast (`ip link`)";

    socket
        .set_reuse_address(true)
        .map_err(required("SO_REUSEADDR", SHARE))?;
    sys::set_reuse_port(&socket).map_err(required("SO_REUSEPORT", SHARE))?;
    if group.is_ipv6() {
        socket.set_only_v6(true).map_err(required(
            "IPV6_V6ONLY",
            "the IPv6 socket must not also receive IPv4",
        ))?;
    }
    sys::set_multicast_all_off(&socket, group.is_ipv4()).map_err(required(
        if group.is_ipv4() {
            "IP_MULTICAST_ALL"
        } else {
            "IPV6_MULTICAST_ALL"
        },
        "without it the socket receives other groups on the same port; a kernel older than 2.6.31 (IPv4) or 4.20 (IPv6) lacks it",
    ))?;

    let bind_addr = match group {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, group.port())),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, group.port())),
    };
    socket
        .bind(&SockAddr::from(bind_addr))
        .map_err(|source| SocketError::Bind {
            group,
            addr: bind_addr,
            interface: interface.clone(),
            source,
        })?;

    let join_err = |source| SocketError::Join {
        group,
        interface: interface.clone(),
        source,
    };
    match group.ip() {
        IpAddr::V4(g) => {
            let send_from = match interface.addr {
                Some(IpAddr::V4(a)) => Some(a),
                _ => None,
            };
            let join_on = match (&opts.interface, send_from) {
                (InterfaceSpec::Name(_), _) => InterfaceIndexOrAddress::Index(interface.index),
                (_, Some(a)) => InterfaceIndexOrAddress::Address(a),
                (_, None) => InterfaceIndexOrAddress::Address(Ipv4Addr::UNSPECIFIED),
            };
            sys::join_v4(&socket, &g, &join_on).map_err(join_err)?;
            if let Some(a) = send_from {
                socket
                    .set_multicast_if_v4(&a)
                    .map_err(required("IP_MULTICAST_IF", MCAST))?;
            }
            socket
                .set_multicast_ttl_v4(opts.ttl)
                .map_err(required("IP_MULTICAST_TTL", "use a TTL from 0 to 255"))?;
            socket
                .set_multicast_loop_v4(opts.loopback)
                .map_err(required("IP_MULTICAST_LOOP", MCAST))?;
        }
        IpAddr::V6(g) => {
            socket
                .join_multicast_v6(&g, interface.index)
                .map_err(join_err)?;
            if interface.index != 0 {
                socket
                    .set_multicast_if_v6(interface.index)
                    .map_err(required("IPV6_MULTICAST_IF", MCAST))?;
            }
            socket.set_multicast_hops_v6(opts.ttl).map_err(required(
                "IPV6_MULTICAST_HOPS",
                "use a hop limit from 0 to 255",
            ))?;
            socket
                .set_multicast_loop_v6(opts.loopback)
                .map_err(required("IPV6_MULTICAST_LOOP", MCAST))?;
        }
    }

    let requested = opts.recv_buffer.min(i32::MAX as usize / 2);
    let granted = set_recv_buffer(&socket, requested, group, &interface);

    socket.set_nonblocking(true).map_err(required(
        "O_NONBLOCK",
        "the socket must be non-blocking for tokio",
    ))?;
    tracing::debug!(%group, %interface, ttl = opts.ttl, loopback = opts.loopback,
        recv_buffer_requested = requested, recv_buffer_granted = granted, "multicast socket open");
    Ok(MulticastSocket {
        socket: socket.into(),
        group,
        interface,
        recv_buffer_requested: requested,
        recv_buffer_granted: granted,
    })
}

/// Checks what can be checked without the system.
fn validate(opts: &SocketOptions) -> Result<(), SocketError> {
    let group = opts.group;
    if !group.ip().is_multicast() {
        return Err(SocketError::NotMulticast { group });
    }
    if group.port() == 0 {
        return Err(SocketError::ZeroPort { group });
    }
    if opts.ttl > 255 {
        return Err(SocketError::InvalidTtl {
            group,
            ttl: opts.ttl,
        });
    }
    if let InterfaceSpec::Addr(a) = opts.interface {
        if a.is_ipv4() != group.is_ipv4() {
            return Err(SocketError::FamilyMismatch {
                group,
                interface: a,
            });
        }
    }
    Ok(())
}

/// Finds the interface `spec` names, for a socket on `group`.
fn resolve(group: SocketAddr, spec: &InterfaceSpec) -> Result<ResolvedInterface, SocketError> {
    let not_found = |available| SocketError::NoSuchInterface {
        group,
        interface: spec.clone(),
        available,
    };
    match spec {
        InterfaceSpec::Default => Ok(ResolvedInterface::default_interface()),
        InterfaceSpec::Name(name) => {
            let interfaces = list_interfaces();
            let index = sys::name_to_index(name).ok_or_else(|| not_found(names(&interfaces)))?;
            let info = interfaces.iter().find(|i| i.name == *name);
            let addr = info.and_then(|i| {
                i.addrs
                    .iter()
                    .find(|a| a.is_ipv4() == group.is_ipv4())
                    .copied()
            });
            if group.is_ipv4() && addr.is_none() {
                return Err(SocketError::NoIpv4Address {
                    group,
                    interface: name.clone(),
                    available: with_addrs(&interfaces),
                });
            }
            Ok(ResolvedInterface {
                name: name.clone(),
                index,
                addr,
            })
        }
        InterfaceSpec::Addr(addr) => {
            let interfaces = list_interfaces();
            interfaces
                .iter()
                .find(|i| i.addrs.contains(addr))
                .map(|i| ResolvedInterface {
                    name: i.name.clone(),
                    index: i.index,
                    addr: Some(*addr),
                })
                .ok_or_else(|| not_found(with_addrs(&interfaces)))
        }
    }
}

fn names(interfaces: &[InterfaceInfo]) -> String {
    if interfaces.is_empty() {
        return "could not list the interfaces (`ip link` shows them)".to_owned();
    }
    let names: Vec<&str> = interfaces.iter().map(|i| i.name.as_str()).collect();
    format!("available interfaces: {}", names.join(", "))
}

fn with_addrs(interfaces: &[InterfaceInfo]) -> String {
    let list: Vec<String> = interfaces
        .iter()
        .filter(|i| !i.addrs.is_empty())
        .map(|i| {
            let addrs: Vec<String> = i.addrs.iter().map(|a| a.to_string()).collect();
            format!("{} ({})", i.name, addrs.join(", "))
        })
        .collect();
    if list.is_empty() {
        return "could not list interface addresses (`ip addr` shows them)".to_owned();
    }
    format!("interfaces with addresses: {}", list.join("; "))
}

/// Sets `SO_RCVBUF` (forcing it past the system limit where possible) and
/// returns what the system reports; all of it is optional.
fn set_recv_buffer(
    socket: &Socket,
    requested: usize,
    group: SocketAddr,
    interface: &ResolvedInterface,
) -> usize {
    if requested > 0 {
        if let Err(e) = socket.set_recv_buffer_size(requested) {
            tracing::debug!(%group, %interface, requested, error = %e, "SO_RCVBUF not set, skipped");
        }
        let granted = socket.recv_buffer_size().unwrap_or(0);
        if sys::recv_buffer_capped(requested, granted) {
            if let Err(e) = sys::force_recv_buffer(socket, requested) {
                tracing::debug!(%group, %interface, requested, granted, error = %e,
                    "SO_RCVBUFFORCE not set (needs CAP_NET_ADMIN), skipped");
            }
        }
    }
    let granted = match socket.recv_buffer_size() {
        Ok(size) => size,
        Err(e) => {
            tracing::debug!(%group, %interface, error = %e, "SO_RCVBUF not readable");
            0
        }
    };
    if requested > 0 && sys::recv_buffer_capped(requested, granted) {
        tracing::info!(%group, %interface, requested, granted,
            "receive buffer smaller than requested: bursts may be dropped and repaired; \
             raise the system limit, e.g. `sysctl -w net.core.rmem_max={requested}` on Linux");
    }
    granted
}

/// Runs `f`, which may change how `socket` fragments (quinn-udp forbids IP
/// fragmentation: it is built for QUIC), and puts the socket's own setting
/// back: a `max_datagram` raised above the path MTU relies on it.
#[cfg(unix)]
pub(crate) fn keeping_fragmentation<T>(
    socket: &impl std::os::fd::AsRawFd,
    f: impl FnOnce() -> T,
) -> T {
    let saved = sys::fragmentation(socket.as_raw_fd());
    let r = f();
    sys::set_fragmentation(socket.as_raw_fd(), saved);
    r
}

#[cfg(not(unix))]
pub(crate) fn keeping_fragmentation<S, T>(_: &S, f: impl FnOnce() -> T) -> T {
    f()
}

/// True where quinn-udp reads many datagrams per call (`recvmmsg`), so that
/// a read that fills fewer buffers than it has means the socket is empty.
/// (Elsewhere it reads one per call, whatever is waiting.)
pub(crate) const SHORT_READ_DRAINS: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Has the kernel drop, before they reach this socket, the datagrams whose
/// payload starts with `prefix`: a node's own datagrams, looped back by
/// multicast, then cost it no wake-up, no receive and no decode (a socket
/// filter, on Linux). Returns false where there is no such filter; the node
/// still ignores its own datagrams after reading their header.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn drop_prefix(socket: &Socket, prefix: &[u8]) -> io::Result<bool> {
    use libc::{BPF_ABS, BPF_B, BPF_H, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_LEN};
    use libc::{BPF_RET, BPF_W};
    use socket2::SockFilter;
    // A UDP socket's filter sees the datagram from its UDP header on.
    const UDP_HEADER: usize = 8;
    let code = |c: u32| c as u16;
    // The prefix in loads of 4, 2 and 1 bytes: (offset, size, value).
    let mut loads = Vec::new();
    let mut at = 0;
    while at < prefix.len() {
        let rest = &prefix[at..];
        let (size, width, value) = match rest.len() {
            4.. => (
                BPF_W,
                4,
                u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
            ),
            2..=3 => (BPF_H, 2, u32::from(u16::from_be_bytes([rest[0], rest[1]]))),
            _ => (BPF_B, 1, u32::from(rest[0])),
        };
        loads.push(((UDP_HEADER + at) as u32, size, value));
        at += width;
    }
    // Layout: length, its test, a load and a test per part, drop, keep.
    // Every failed test jumps forward to "keep", the last instruction.
    let keep = 2 + 2 * loads.len() + 1;
    let Ok(to_keep) = u8::try_from(keep - 2) else {
        return Ok(false);
    };
    let mut prog = vec![
        SockFilter::new(code(BPF_LD | BPF_W | BPF_LEN), 0, 0, 0),
        // Shorter than a header with this prefix: keep.
        SockFilter::new(
            code(BPF_JMP | BPF_JGE | BPF_K),
            0,
            to_keep,
            (UDP_HEADER + prefix.len()) as u32,
        ),
    ];
    for (i, (offset, size, value)) in loads.into_iter().enumerate() {
        let test_at = 3 + 2 * i;
        prog.push(SockFilter::new(code(BPF_LD | size | BPF_ABS), 0, 0, offset));
        let jf = (keep - test_at - 1) as u8;
        prog.push(SockFilter::new(
            code(BPF_JMP | BPF_JEQ | BPF_K),
            0,
            jf,
            value,
        ));
    }
    prog.push(SockFilter::new(code(BPF_RET | BPF_K), 0, 0, 0));
    prog.push(SockFilter::new(code(BPF_RET | BPF_K), 0, 0, u32::MAX));
    debug_assert_eq!(prog.len(), keep + 1);
    socket.attach_filter(&prog)?;
    Ok(true)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn drop_prefix(_: &Socket, _: &[u8]) -> io::Result<bool> {
    Ok(false)
}

#[cfg(target_os = "linux")]
const MAX_INTERFACE_NAME_LEN: usize = libc::IFNAMSIZ - 1;
#[cfg(not(target_os = "linux"))]
const MAX_INTERFACE_NAME_LEN: usize = 255;

/// Everything that differs between platforms.
#[cfg(unix)]
mod sys {
    use super::InterfaceInfo;
    use socket2::{InterfaceIndexOrAddress, Socket};
    use std::ffi::{CStr, CString};
    use std::io;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    pub(super) fn set_reuse_port(socket: &Socket) -> io::Result<()> {
        socket.set_reuse_port(true)
    }

    #[cfg(target_os = "linux")]
    pub(super) fn set_multicast_all_off(socket: &Socket, v4: bool) -> io::Result<()> {
        if v4 {
            socket.set_multicast_all_v4(false)
        } else {
            socket.set_multicast_all_v6(false)
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn set_multicast_all_off(_: &Socket, _: bool) -> io::Result<()> {
        // Only Linux delivers other sockets' groups by default.
        Ok(())
    }

    #[cfg(not(any(
        target_os = "aix",
        target_os = "haiku",
        target_os = "illumos",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "solaris",
    )))]
    pub(super) fn join_v4(
        socket: &Socket,
        group: &Ipv4Addr,
        on: &InterfaceIndexOrAddress,
    ) -> io::Result<()> {
        socket.join_multicast_v4_n(group, on)
    }

    #[cfg(any(
        target_os = "aix",
        target_os = "haiku",
        target_os = "illumos",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "solaris",
    ))]
    pub(super) fn join_v4(
        socket: &Socket,
        group: &Ipv4Addr,
        on: &InterfaceIndexOrAddress,
    ) -> io::Result<()> {
        // No ip_mreqn here: resolve() always provides an address.
        match on {
            InterfaceIndexOrAddress::Address(a) => socket.join_multicast_v4(group, a),
            InterfaceIndexOrAddress::Index(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// Whether the reported buffer is below the request. Linux reports
    /// double what was set, so there a request was capped iff the report
    /// is below twice the request.
    pub(super) fn recv_buffer_capped(requested: usize, granted: usize) -> bool {
        if cfg!(target_os = "linux") {
            granted < requested.saturating_mul(2)
        } else {
            granted < requested
        }
    }

    pub(super) fn usable_recv_buffer(granted: usize) -> usize {
        if cfg!(target_os = "linux") {
            granted / 2
        } else {
            granted
        }
    }

    #[cfg(target_os = "linux")]
    pub(super) fn recv_buffer_limit() -> Option<usize> {
        let text = std::fs::read_to_string("/proc/sys/net/core/rmem_max").ok()?;
        text.trim().parse().ok()
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn recv_buffer_limit() -> Option<usize> {
        None
    }

    #[cfg(target_os = "linux")]
    pub(super) fn multicast_all(socket: &std::net::UdpSocket, v4: bool) -> Option<bool> {
        let socket = socket2::SockRef::from(socket);
        if v4 {
            socket.multicast_all_v4().ok()
        } else {
            socket.multicast_all_v6().ok()
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn multicast_all(_: &std::net::UdpSocket, _: bool) -> Option<bool> {
        None
    }

    #[cfg(target_os = "linux")]
    pub(super) fn force_recv_buffer(socket: &Socket, requested: usize) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let value = libc::c_int::try_from(requested).unwrap_or(libc::c_int::MAX);
        set_int(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            value,
        )
    }

    #[cfg(target_os = "linux")]
    fn set_int(fd: i32, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
        // SAFETY: a c_int option value of the size given; a bad fd is an error.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    #[cfg(target_os = "linux")]
    fn get_int(fd: i32, level: i32, name: i32) -> Option<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an int-sized out-buffer with its length; a bad fd is an error.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(v)
    }

    /// The socket's IP fragmentation options (path MTU discovery, IPv4 and
    /// IPv6, and IPv6 don't-fragment), to be put back by [`set_fragmentation`].
    #[cfg(target_os = "linux")]
    pub(super) type Fragmentation = [Option<libc::c_int>; 3];
    #[cfg(not(target_os = "linux"))]
    pub(super) type Fragmentation = ();

    #[cfg(target_os = "linux")]
    const FRAGMENTATION: [(i32, i32); 3] = [
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
        (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
        (libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG),
    ];

    #[cfg(target_os = "linux")]
    pub(super) fn fragmentation(fd: i32) -> Fragmentation {
        FRAGMENTATION.map(|(level, name)| get_int(fd, level, name))
    }

    #[cfg(target_os = "linux")]
    pub(super) fn set_fragmentation(fd: i32, saved: Fragmentation) {
        for ((level, name), v) in FRAGMENTATION.into_iter().zip(saved) {
            if let Some(v) = v {
                let _ = set_int(fd, level, name, v);
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn fragmentation(_: i32) -> Fragmentation {}

    #[cfg(not(target_os = "linux"))]
    pub(super) fn set_fragmentation(_: i32, _: Fragmentation) {}

    #[cfg(not(target_os = "linux"))]
    pub(super) fn force_recv_buffer(_: &Socket, _: usize) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(super) fn name_to_index(name: &str) -> Option<u32> {
        let name = CString::new(name).ok()?;
        // SAFETY: a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        (index != 0).then_some(index)
    }

    pub(super) fn interfaces() -> Vec<InterfaceInfo> {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `head` with a list we free below.
        if unsafe { libc::getifaddrs(&mut head) } != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "getifaddrs failed");
            return Vec::new();
        }
        let mut out: Vec<InterfaceInfo> = Vec::new();
        let mut cur = head;
        while !cur.is_null() {
            // SAFETY: a node of the list getifaddrs returned, not yet freed.
            let ifa = unsafe { &*cur };
            cur = ifa.ifa_next;
            if ifa.ifa_name.is_null() {
                continue;
            }
            // SAFETY: ifa_name is a NUL-terminated string of the list.
            let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: ifa_addr is null or a sockaddr of the list.
            let addr = unsafe { ip_of(ifa.ifa_addr) };
            let flags = u64::from(ifa.ifa_flags);
            let pos = match out.iter().position(|i| i.name == name) {
                Some(pos) => pos,
                None => {
                    out.push(InterfaceInfo {
                        index: name_to_index(&name).unwrap_or(0),
                        name,
                        addrs: Vec::new(),
                        up: flags & libc::IFF_UP as u64 != 0,
                        multicast: flags & libc::IFF_MULTICAST as u64 != 0,
                        loopback: flags & libc::IFF_LOOPBACK as u64 != 0,
                    });
                    out.len() - 1
                }
            };
            if let Some(addr) = addr {
                if !out[pos].addrs.contains(&addr) {
                    out[pos].addrs.push(addr);
                }
            }
        }
        // SAFETY: the list from getifaddrs, freed once.
        unsafe { libc::freeifaddrs(head) };
        out
    }

    /// # Safety
    /// `sa` is null or points to a valid sockaddr of its family.
    unsafe fn ip_of(sa: *const libc::sockaddr) -> Option<IpAddr> {
        if sa.is_null() {
            return None;
        }
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let sin = std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in>());
                Some(IpAddr::V4(Ipv4Addr::from(
                    sin.sin_addr.s_addr.to_ne_bytes(),
                )))
            }
            libc::AF_INET6 => {
                let sin6 = std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in6>());
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

/// Everything that differs between platforms: the non-Unix fallbacks.
#[cfg(not(unix))]
mod sys {
    use super::InterfaceInfo;
    use socket2::{InterfaceIndexOrAddress, Socket};
    use std::io;
    use std::net::Ipv4Addr;

    pub(super) fn set_reuse_port(_: &Socket) -> io::Result<()> {
        Ok(())
    }

    pub(super) fn set_multicast_all_off(_: &Socket, _: bool) -> io::Result<()> {
        Ok(())
    }

    pub(super) fn join_v4(
        socket: &Socket,
        group: &Ipv4Addr,
        on: &InterfaceIndexOrAddress,
    ) -> io::Result<()> {
        socket.join_multicast_v4_n(group, on)
    }

    pub(super) fn recv_buffer_capped(requested: usize, granted: usize) -> bool {
        granted < requested
    }

    pub(super) fn force_recv_buffer(_: &Socket, _: usize) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(super) fn usable_recv_buffer(granted: usize) -> usize {
        granted
    }

    pub(super) fn recv_buffer_limit() -> Option<usize> {
        None
    }

    pub(super) fn multicast_all(_: &std::net::UdpSocket, _: bool) -> Option<bool> {
        None
    }

    pub(super) fn name_to_index(_: &str) -> Option<u32> {
        None
    }

    pub(super) fn interfaces() -> Vec<InterfaceInfo> {
        Vec::new()
    }
}
