//! Network interfaces: how a user names one ([`InterfaceSpec`]), the one an
//! opened socket ended up with ([`ResolvedInterface`]), and the host's list
//! of them ([`InterfaceInfo`], [`list_interfaces`], read with
//! `getifaddrs`).
//!
//! What it may not do: open or configure a socket (that is the parent
//! module's job); it only reads the host's interface table.

use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use super::SocketError;

/// The longest interface name Linux accepts (`IFNAMSIZ` less its NUL).
const MAX_INTERFACE_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Which network interface a node sends and receives multicast on: the
/// `interface` of [`SocketOptions`](super::SocketOptions) and of
/// `NodeConfig`, and the command line's `--interface`.
///
/// Write it the way `ip addr` shows the interface:
///
/// - a **name**, e.g. `"eth0"` or `"lo"` ([`Name`](Self::Name)): multicast
///   is joined on that interface by index, and sent from its first address
///   of the group's family;
/// - one of its **addresses**, e.g. `"192.0.2.10"` or `"::1"`
///   ([`Addr`](Self::Addr)); it must be of the group's family (IPv4 for an
///   IPv4 group);
/// - **`"default"`** (any case, [`Default`](Self::Default)): the system
///   chooses, by its routing table for the group.
///
/// Tests and single-host trials use [`InterfaceSpec::loopback`]
/// (`127.0.0.1`) with multicast TTL 0, so that nothing leaves the host.
///
/// ```
/// use cachecast::net::socket::InterfaceSpec;
///
/// let by_name: InterfaceSpec = "eth0".parse()?;
/// assert_eq!(by_name, InterfaceSpec::Name("eth0".into()));
/// let by_addr: InterfaceSpec = "127.0.0.1".parse()?;
/// assert_eq!(by_addr, InterfaceSpec::loopback());
/// assert_eq!("default".parse::<InterfaceSpec>()?, InterfaceSpec::Default);
/// // An empty string is a mistake (an unset variable?), not a choice.
/// assert!("".parse::<InterfaceSpec>().is_err());
/// # Ok::<(), cachecast::net::socket::SocketError>(())
/// ```
///
/// Parsing trims surrounding whitespace and refuses what cannot be an
/// interface: an empty string, an IPv6 scope (`fe80::1%eth0`: give the name
/// instead), whitespace, `/` or NUL inside, a name longer than Linux allows.
/// [`Display`](fmt::Display) writes the same forms back. Whether the
/// interface exists is checked when a socket is opened, which lists the
/// host's interfaces if it does not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum InterfaceSpec {
    /// Let the system choose, by its routing table for the group (written
    /// `default`).
    #[default]
    Default,
    /// The interface with this name, e.g. `eth0` or `lo`.
    Name(String),
    /// The interface that has this address, e.g. `127.0.0.1`.
    Addr(IpAddr),
}

impl InterfaceSpec {
    /// The loopback interface by its IPv4 address, `127.0.0.1`: with
    /// multicast TTL 0, nothing a node sends leaves this host. What tests,
    /// the loopback harness and single-host trials use.
    pub const fn loopback() -> Self {
        Self::Addr(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }
}

impl FromStr for InterfaceSpec {
    type Err = SocketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let invalid = |reason| SocketError::InvalidInterfaceName {
            name: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(invalid("it is empty"));
        }
        if s.eq_ignore_ascii_case("default") {
            return Ok(Self::Default);
        }
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(Self::Addr(addr));
        }
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

/// Lists the host's network interfaces, sorted by index; empty if the
/// system would not list them (`getifaddrs` failed: logged at debug).
pub fn list_interfaces() -> Vec<InterfaceInfo> {
    let mut list = interfaces();
    list.sort_by(|a, b| a.index.cmp(&b.index).then_with(|| a.name.cmp(&b.name)));
    list
}

/// Finds the interface `spec` names, for a socket on `group`.
pub(super) fn resolve(
    group: SocketAddr,
    spec: &InterfaceSpec,
) -> Result<ResolvedInterface, SocketError> {
    let not_found = |available| SocketError::NoSuchInterface {
        group,
        interface: spec.clone(),
        available,
    };
    match spec {
        InterfaceSpec::Default => Ok(ResolvedInterface::default_interface()),
        InterfaceSpec::Name(name) => {
            let interfaces = list_interfaces();
            let index = name_to_index(name).ok_or_else(|| not_found(names(&interfaces)))?;
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

fn name_to_index(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The host's interfaces from `getifaddrs`, one entry per name with all
/// its addresses, in the order the system lists them.
fn interfaces() -> Vec<InterfaceInfo> {
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
