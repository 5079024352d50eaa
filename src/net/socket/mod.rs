//! Opening the multicast UDP socket: validation, interface resolution and
//! socket options (socket2), ready to be handed to tokio.
//!
//! [`open`] turns a [`SocketOptions`] into a bound, joined, non-blocking
//! [`std::net::UdpSocket`] (a [`MulticastSocket`]) or a [`SocketError`]
//! that names the option, the group and the interface and says what to
//! try. For diagnostics (`cachecast doctor`) the module also lists the
//! host's interfaces ([`list_interfaces`]) and reads the receive buffer
//! limit ([`recv_buffer_limit`]) and socket state
//! ([`MulticastSocket::multicast_all`]).
//!
//! Linux only: the crate relies on `recvmmsg`, UDP GSO and GRO (through
//! quinn-udp), `IP_MULTICAST_ALL`, a BPF socket filter, `SO_RCVBUFFORCE`
//! and `IP_MTU_DISCOVER`. A fallback for other systems could be neither
//! built nor tested here, so there is none: the crate refuses to build
//! elsewhere, with a `compile_error!` saying why. The module is split by
//! concern, as quinn-udp is:
//!
//! - this file: the options, the error, [`open`];
//! - `iface`: naming an interface ([`InterfaceSpec`]), listing and
//!   resolving the host's interfaces;
//! - `linux`: every Linux-specific option (`IP_MULTICAST_ALL`, the receive
//!   buffer and its forcing, fragmentation kept through quinn-udp, the
//!   socket filter [`drop_prefix`]).
//!
//! What it may not do: no protocol logic, no wire format, no I/O loop and
//! no retries. It never sends or receives a datagram; the driver
//! (`net::driver`) does that. Required socket options that fail are a
//! [`SocketError`]; optional ones (raising the receive buffer beyond the
//! system limit) are logged at debug level and skipped, and a receive
//! buffer left below the request is logged at warn.
//!
//! Tests and the loopback harness use interface `127.0.0.1`
//! ([`InterfaceSpec::loopback`]) and multicast TTL 0, so that nothing they
//! send leaves the host.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "cachecast supports Linux only: it relies on recvmmsg, UDP GSO and GRO (through \
     quinn-udp), IP_MULTICAST_ALL, a BPF socket filter that drops a node's own datagrams, \
     SO_RCVBUFFORCE and IP_MTU_DISCOVER, which other systems lack or spell differently \
     (see src/net/socket/linux.rs)"
);

mod iface;
mod linux;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};

pub use iface::{list_interfaces, InterfaceInfo, InterfaceSpec, ResolvedInterface};
pub(crate) use linux::keeping_fragmentation;
pub use linux::{drop_prefix, recv_buffer_limit};

/// Default multicast TTL / hop limit: 1, so datagrams stay on the LAN.
pub const DEFAULT_TTL: u32 = 1;

/// Default requested receive buffer (`SO_RCVBUF`): 32 MiB. Kernel memory,
/// used only while datagrams wait: it lets a receiver that is not scheduled
/// for a few hundred milliseconds (a busy host) lose nothing, where 4 MiB
/// lost datagrams to every such stall at a million events a second, and
/// each loss cost a repair.
pub const DEFAULT_RECV_BUFFER: usize = 32 << 20;

/// Everything [`open`] needs to know.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// Multicast group and port, IPv4 or IPv6. Every node of a cluster uses
    /// the same one.
    pub group: SocketAddr,
    /// The interface to send and receive on: a name, an address or the
    /// system's choice (see [`InterfaceSpec`]).
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
    /// halved, since Linux reports double what it grants.
    pub fn recv_buffer_usable(&self) -> usize {
        linux::usable_recv_buffer(self.recv_buffer_granted)
    }

    /// True when the system granted less receive buffer than was requested
    /// (capped by `net.core.rmem_max`, without `CAP_NET_ADMIN` to force it).
    pub fn recv_buffer_capped(&self) -> bool {
        self.recv_buffer_requested > 0
            && linux::recv_buffer_capped(self.recv_buffer_requested, self.recv_buffer_granted)
    }

    /// Whether the socket also receives datagrams of groups that only other
    /// sockets joined (`IP_MULTICAST_ALL` / `IPV6_MULTICAST_ALL`):
    /// `Some(false)` after [`open`]; `None` if the option cannot be read.
    pub fn multicast_all(&self) -> Option<bool> {
        linux::multicast_all(&self.socket, self.group.is_ipv4())
    }
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
         one of its addresses (e.g. 192.0.2.10) or \"default\" (the system's choice)"
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
    /// Binding a unicast address failed.
    #[error("cannot bind {addr} for unicast: {source}; another node or program may hold it (each node on a host needs its own port: --listen), or the address is not this host's")]
    BindUnicast {
        /// The address bound to.
        addr: SocketAddr,
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

/// Opens the multicast socket described by `opts`.
///
/// Validates the options, resolves the interface, creates the socket with
/// `SO_REUSEADDR` and `SO_REUSEPORT` so that many nodes on one host share
/// the port, binds the unspecified address of the group's family on the
/// group port, turns `IP_MULTICAST_ALL` off (no datagrams
/// of groups joined only by other sockets), joins the group, sets the
/// outgoing interface, TTL and loopback, raises the receive buffer and makes
/// the socket non-blocking.
pub fn open(opts: &SocketOptions) -> Result<MulticastSocket, SocketError> {
    let group = opts.group;
    validate(opts)?;
    let interface = iface::resolve(group, &opts.interface)?;

    let socket = udp_socket(group)?;
    let required = |option, hint| set_option_error(group, &interface, option, hint);
    const SHARE: &str = "it lets several nodes on this host share the port";

    socket
        .set_reuse_address(true)
        .map_err(required("SO_REUSEADDR", SHARE))?;
    socket
        .set_reuse_port(true)
        .map_err(required("SO_REUSEPORT", SHARE))?;
    if group.is_ipv6() {
        socket.set_only_v6(true).map_err(required(
            "IPV6_V6ONLY",
            "the IPv6 socket must not also receive IPv4",
        ))?;
    }
    linux::set_multicast_all_off(&socket, group.is_ipv4()).map_err(required(
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
            socket.join_multicast_v4_n(&g, &join_on).map_err(join_err)?;
        }
        IpAddr::V6(g) => {
            socket
                .join_multicast_v6(&g, interface.index)
                .map_err(join_err)?;
        }
    }
    set_sending(&socket, opts, &interface)?;

    let requested = opts.recv_buffer.min(i32::MAX as usize / 2);
    let granted = linux::set_recv_buffer(&socket, requested, group, &interface);

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

/// The error of a required socket option that failed (`hint`: what to
/// try).
fn set_option_error(
    group: SocketAddr,
    interface: &ResolvedInterface,
    option: &'static str,
    hint: &'static str,
) -> impl FnOnce(io::Error) -> SocketError {
    let interface = interface.clone();
    move |source| SocketError::SetOption {
        option,
        group,
        interface,
        hint,
        source,
    }
}

/// A UDP socket of the group's family.
fn udp_socket(group: SocketAddr) -> Result<Socket, SocketError> {
    let domain = if group.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|source| SocketError::Create { group, source })
}

/// How a socket sends to the group (both of a node's sockets send there):
/// the outgoing interface (by address for IPv4, by index for IPv6), the
/// TTL or hop limit, and whether this host's sockets hear it.
fn set_sending(
    socket: &Socket,
    opts: &SocketOptions,
    interface: &ResolvedInterface,
) -> Result<(), SocketError> {
    const MCAST: &str = "check that the interface is up and supports multicast (`ip link`)";
    let group = opts.group;
    let required = |option, hint| set_option_error(group, interface, option, hint);
    if group.is_ipv4() {
        if let Some(IpAddr::V4(a)) = interface.addr {
            socket
                .set_multicast_if_v4(&a)
                .map_err(required("IP_MULTICAST_IF", MCAST))?;
        }
        socket
            .set_multicast_ttl_v4(opts.ttl)
            .map_err(required("IP_MULTICAST_TTL", "use a TTL from 0 to 255"))?;
        socket
            .set_multicast_loop_v4(opts.loopback)
            .map_err(required("IP_MULTICAST_LOOP", MCAST))
    } else {
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
            .map_err(required("IPV6_MULTICAST_LOOP", MCAST))
    }
}

/// Opens a node's *direct* socket, beside its group socket from [`open`]
/// (whose port every node of the host shares, so that a datagram sent to
/// it reaches one of them, not a chosen one): bound to the interface's
/// address (or the unspecified one) on a port of the system's choosing,
/// with the group socket's outgoing interface, TTL and loopback, joined to
/// nothing. The node sends its `Nak`s to the group from it, so that their
/// source names this node alone, and a repair meant for it alone comes
/// back to it. Its receive buffer is the smaller of the request and 4 MiB
/// (only repairs arrive on it). The result's `group` is its own address.
pub fn open_direct(
    opts: &SocketOptions,
    interface: &ResolvedInterface,
) -> Result<MulticastSocket, SocketError> {
    let group = opts.group;
    let socket = udp_socket(group)?;
    let required = |option, hint| set_option_error(group, interface, option, hint);
    let bind_addr = match (group, interface.addr) {
        (SocketAddr::V4(_), Some(IpAddr::V4(a))) => SocketAddr::from((a, 0)),
        (SocketAddr::V4(_), _) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        (SocketAddr::V6(_), _) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    if group.is_ipv6() {
        socket.set_only_v6(true).map_err(required(
            "IPV6_V6ONLY",
            "the IPv6 socket must not also receive IPv4",
        ))?;
    }
    set_sending(&socket, opts, interface)?;
    // Directed repairs leave as far as the group's datagrams do (0 is not
    // a unicast TTL: 1, the LAN; loopback stays on the host anyway).
    let hops = opts.ttl.max(1);
    if group.is_ipv4() {
        socket
            .set_ttl_v4(hops)
            .map_err(required("IP_TTL", "use a TTL from 0 to 255"))?;
    } else {
        socket.set_unicast_hops_v6(hops).map_err(required(
            "IPV6_UNICAST_HOPS",
            "use a hop limit from 0 to 255",
        ))?;
    }
    socket
        .bind(&SockAddr::from(bind_addr))
        .map_err(|source| SocketError::BindUnicast {
            addr: bind_addr,
            source,
        })?;
    let requested = opts.recv_buffer.min(4 << 20);
    let granted = linux::set_recv_buffer(&socket, requested, group, interface);
    socket.set_nonblocking(true).map_err(required(
        "O_NONBLOCK",
        "the socket must be non-blocking for tokio",
    ))?;
    let socket: UdpSocket = socket.into();
    let local = socket.local_addr().unwrap_or(bind_addr);
    tracing::debug!(%local, %group, "direct socket open");
    Ok(MulticastSocket {
        socket,
        group: local,
        interface: interface.clone(),
        recv_buffer_requested: requested,
        recv_buffer_granted: granted,
    })
}

/// Opens the socket of a node that sends to peers (unicast) rather than to
/// a group: bound to `listen` (the unspecified address: every address of
/// this host), no group joined, the receive buffer raised as [`open`] does,
/// non-blocking. Without `SO_REUSEPORT`: two nodes bound to one address
/// would each get part of the other's datagrams, so the second one's bind
/// fails instead. The result's `group` is `listen`.
pub fn open_unicast(
    listen: SocketAddr,
    recv_buffer: usize,
) -> Result<MulticastSocket, SocketError> {
    let interface = ResolvedInterface {
        name: "unicast".to_owned(),
        index: 0,
        addr: (!listen.ip().is_unspecified()).then(|| listen.ip()),
    };
    if listen.ip().is_multicast() {
        return Err(SocketError::BindUnicast {
            addr: listen,
            source: io::Error::new(io::ErrorKind::InvalidInput, "a multicast address"),
        });
    }
    let domain = if listen.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(|source| {
        SocketError::Create {
            group: listen,
            source,
        }
    })?;
    if listen.is_ipv6() {
        socket
            .set_only_v6(true)
            .map_err(|source| SocketError::SetOption {
                option: "IPV6_V6ONLY",
                group: listen,
                interface: interface.clone(),
                hint: "the IPv6 socket must not also receive IPv4",
                source,
            })?;
    }
    socket
        .bind(&SockAddr::from(listen))
        .map_err(|source| SocketError::BindUnicast {
            addr: listen,
            source,
        })?;
    let requested = recv_buffer.min(i32::MAX as usize / 2);
    let granted = linux::set_recv_buffer(&socket, requested, listen, &interface);
    socket
        .set_nonblocking(true)
        .map_err(|source| SocketError::SetOption {
            option: "O_NONBLOCK",
            group: listen,
            interface: interface.clone(),
            hint: "the socket must be non-blocking for tokio",
            source,
        })?;
    tracing::debug!(%listen, recv_buffer_requested = requested, recv_buffer_granted = granted,
        "unicast socket open");
    Ok(MulticastSocket {
        socket: socket.into(),
        group: listen,
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
