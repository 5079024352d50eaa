//! The checks of `cachecast doctor` that need no traffic: the group, the
//! interface and why it is used, the TTL, the socket options and the
//! receive buffer. Each adds findings to the report; none sends anything
//! (the default interface is found with a UDP `connect`, which only looks
//! the route up).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::SockRef;

use super::{Chosen, RecvBuffer, Report, Section, Status};
use cachecast::net::socket::{self, InterfaceInfo, InterfaceSpec, SocketError, SocketOptions};

/// The report section a socket error belongs to.
pub(super) fn section_of(e: &SocketError) -> Section {
    match e {
        SocketError::NotMulticast { .. } | SocketError::ZeroPort { .. } => Section::Group,
        SocketError::InvalidTtl { .. } => Section::Ttl,
        SocketError::FamilyMismatch { .. }
        | SocketError::InvalidInterfaceName { .. }
        | SocketError::NoSuchInterface { .. }
        | SocketError::NoIpv4Address { .. } => Section::Interface,
        _ => Section::Socket,
    }
}

/// Scope of a (multicast) group, and whether it is a good choice.
fn group_scope(ip: IpAddr) -> (Status, String) {
    const USE: &str = "use a group in 239.255.0.0/16 (or ff15::/16 for IPv6)";
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if o[0] == 239 && o[1] == 255 {
                (
                    Status::Ok,
                    "IPv4 multicast, 239.255.0.0/16: site-local scope, as recommended".into(),
                )
            } else if o[0] == 239 {
                (
                    Status::Ok,
                    "IPv4 multicast, 239.0.0.0/8: organization-local scope".into(),
                )
            } else if o[0] == 224 && o[1] == 0 && o[2] == 0 {
                (
                    Status::Warn,
                    format!(
                        "224.0.0.0/24 is reserved for local network control (routing \
                         protocols, mDNS): switches flood it to every port; {USE}"
                    ),
                )
            } else if o[0] == 232 {
                (
                    Status::Warn,
                    format!(
                        "232.0.0.0/8 is for source-specific multicast: routers ignore \
                         the any-source joins nodes make; {USE}"
                    ),
                )
            } else {
                (
                    Status::Warn,
                    format!(
                        "a globally scoped IPv4 group: it may be assigned to others and is \
                         routed beyond your network if the TTL allows; {USE}"
                    ),
                )
            }
        }
        IpAddr::V6(v6) => match v6.segments()[0] & 0xf {
            1 => (
                Status::Warn,
                format!("IPv6 interface-local scope: no other host hears it; {USE}"),
            ),
            2 => (Status::Ok, "IPv6 multicast, link-local scope".into()),
            3 => (Status::Ok, "IPv6 multicast, realm-local scope".into()),
            4 => (Status::Ok, "IPv6 multicast, admin-local scope".into()),
            5 => (Status::Ok, "IPv6 multicast, site-local scope".into()),
            8 => (
                Status::Ok,
                "IPv6 multicast, organization-local scope".into(),
            ),
            0xe => (
                Status::Warn,
                format!(
                    "IPv6 global scope: routed beyond your network if the hop limit allows; {USE}"
                ),
            ),
            s => (
                Status::Warn,
                format!("IPv6 multicast with reserved or unassigned scope {s:x}; {USE}"),
            ),
        },
    }
}

pub(super) fn check_group(r: &mut Report, group: SocketAddr) {
    let (status, what) = group_scope(group.ip());
    r.push(
        Section::Group,
        status,
        format!("{group}: {what}"),
        Vec::new(),
    );
}

/// Which interface is used and why; its flags. Returns it when known.
/// An interface that does not exist is left to [`socket::open`]'s error.
pub(super) fn check_interface(
    r: &mut Report,
    opts: &SocketOptions,
    interfaces: &[InterfaceInfo],
) -> Option<InterfaceInfo> {
    let group = opts.group;
    let (info, chosen_by, why) = match &opts.interface {
        InterfaceSpec::Name(name) => {
            let info = interfaces.iter().find(|i| i.name == *name)?;
            (
                info,
                "name",
                format!("chosen by name ({name}, --interface)"),
            )
        }
        InterfaceSpec::Addr(addr) => {
            if addr.is_ipv4() != group.is_ipv4() {
                return None; // socket::open's error says it.
            }
            let info = interfaces.iter().find(|i| i.addrs.contains(addr))?;
            (
                info,
                "address",
                format!("chosen by address ({addr}, --interface)"),
            )
        }
        InterfaceSpec::Default => match route_source(group) {
            Ok(src) => match interfaces.iter().find(|i| i.addrs.contains(&src)) {
                Some(info) => (
                    info,
                    "default",
                    format!(
                        "the system default (no --interface): the kernel routes {} via {} \
                         from {src}, so nodes join and send there",
                        group.ip(),
                        info.name
                    ),
                ),
                None => {
                    r.interface = Some(Chosen {
                        chosen_by: "default",
                        name: None,
                        index: None,
                        addr: Some(src.to_string()),
                    });
                    r.push(
                        Section::Interface,
                        Status::Info,
                        format!(
                            "the system default (no --interface): the kernel sends to {} from \
                             {src}, which no listed interface has",
                            group.ip()
                        ),
                        vec!["pass --interface <name or address> to choose one".into()],
                    );
                    return None;
                }
            },
            Err(e) => {
                r.interface = Some(Chosen {
                    chosen_by: "default",
                    name: None,
                    index: None,
                    addr: None,
                });
                r.push(
                    Section::Interface,
                    Status::Problem,
                    format!(
                        "the system default (no --interface): the kernel has no route for {}: {e}",
                        group.ip()
                    ),
                    vec![
                        "add a multicast route, e.g. `ip route add 224.0.0.0/4 dev eth0` \
                         (IPv6: `ip -6 route add ff00::/8 dev eth0`)"
                            .into(),
                        "or pass --interface <name or address>".into(),
                    ],
                );
                return None;
            }
        },
    };
    let first_addr = info
        .addrs
        .iter()
        .find(|a| a.is_ipv4() == group.is_ipv4())
        .map(IpAddr::to_string);
    r.interface = Some(Chosen {
        chosen_by,
        name: Some(info.name.clone()),
        index: Some(info.index),
        addr: first_addr,
    });
    r.push(
        Section::Interface,
        Status::Ok,
        format!("{} (index {}), {why}", info.name, info.index),
        Vec::new(),
    );
    let name = &info.name;
    if !info.up {
        r.push(
            Section::Interface,
            Status::Problem,
            format!("{name} is down"),
            vec![format!("`ip link set {name} up`")],
        );
    }
    if !info.multicast && !info.loopback {
        r.push(
            Section::Interface,
            Status::Problem,
            format!("{name} has multicast off (no IFF_MULTICAST)"),
            vec![format!("`ip link set {name} multicast on`")],
        );
    }
    if info.loopback {
        let flag = if info.multicast {
            ""
        } else {
            " and does not advertise multicast (IFF_MULTICAST), yet Linux loops multicast \
             back to the sockets of this host"
        };
        r.push(
            Section::Interface,
            Status::Info,
            format!("{name} is a loopback interface{flag}: nodes on this host hear each other, no other host does"),
            Vec::new(),
        );
        if group.is_ipv6() {
            r.push(
                Section::Interface,
                Status::Warn,
                format!("IPv6 multicast does not work on {name} on Linux"),
                vec!["use a real interface, or network namespaces joined by a bridge".into()],
            );
        }
    }
    Some(info.clone())
}

/// The local address the routing table gives for sending to `group` with
/// no interface set: a UDP `connect` only looks the route up and sends
/// nothing.
fn route_source(group: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = if group.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = std::net::UdpSocket::bind(any)?;
    probe.connect(group)?;
    Ok(probe.local_addr()?.ip())
}

pub(super) fn check_ttl(r: &mut Report, ttl: u32, used: Option<&InterfaceInfo>) {
    let local = used.is_some_and(|i| i.loopback);
    let (status, message, hints) = match ttl {
        256.. => return, // socket::open's error says it.
        0 if used.is_some() && !local => (
            Status::Warn,
            format!(
                "TTL 0 keeps datagrams on this host, but {} is a network interface: nodes on \
                 other hosts will not hear this one",
                used.map_or("", |i| i.name.as_str())
            ),
            vec!["--ttl 1 to reach the LAN".to_owned()],
        ),
        0 => (
            Status::Ok,
            "TTL 0: datagrams stay on this host".to_owned(),
            Vec::new(),
        ),
        1 => (
            Status::Ok,
            "TTL 1: datagrams reach this LAN and no further (routers do not forward them)"
                .to_owned(),
            Vec::new(),
        ),
        n => (
            Status::Warn,
            format!(
                "TTL {n}: datagrams cross up to {} routers that forward multicast",
                n - 1
            ),
            vec!["use --ttl 1 unless nodes are on other subnets behind multicast routers".into()],
        ),
    };
    r.push(Section::Ttl, status, message, hints);
}

pub(super) fn check_socket(r: &mut Report, a: &socket::MulticastSocket) {
    let v4 = a.group.is_ipv4();
    let bound = a
        .socket
        .local_addr()
        .map_or_else(|_| "the group port".to_owned(), |l| l.to_string());
    r.push(
        Section::Socket,
        Status::Ok,
        format!(
            "two sockets bound to {bound} (SO_REUSEADDR, SO_REUSEPORT) and joined to {} on {}, \
             as nodes open them",
            a.group.ip(),
            a.interface
        ),
        Vec::new(),
    );
    let all_name = if v4 {
        "IP_MULTICAST_ALL"
    } else {
        "IPV6_MULTICAST_ALL"
    };
    r.multicast_all = a.multicast_all();
    match r.multicast_all {
        Some(false) => r.push(
            Section::Socket,
            Status::Ok,
            format!("{all_name} off: datagrams of other groups on this port are not delivered"),
            Vec::new(),
        ),
        Some(true) => r.push(
            Section::Socket,
            Status::Problem,
            format!(
                "{all_name} is on: the socket also receives other groups' datagrams on this port"
            ),
            vec!["this build failed to turn it off; report it".into()],
        ),
        None => r.push(
            Section::Socket,
            Status::Info,
            format!("{all_name}: not applicable on this system"),
            Vec::new(),
        ),
    }
    let sock = SockRef::from(&a.socket);
    let looped = if v4 {
        sock.multicast_loop_v4()
    } else {
        sock.multicast_loop_v6()
    };
    r.multicast_loop = looped.ok();
    let loop_name = if v4 {
        "IP_MULTICAST_LOOP"
    } else {
        "IPV6_MULTICAST_LOOP"
    };
    match r.multicast_loop {
        Some(true) => r.push(
            Section::Socket,
            Status::Ok,
            format!("{loop_name} on: nodes on this host hear each other"),
            Vec::new(),
        ),
        Some(false) => r.push(
            Section::Socket,
            Status::Problem,
            format!("{loop_name} is off: nodes on this host will not hear each other"),
            vec!["nodes turn it on; something on this system refuses it".into()],
        ),
        None => r.push(
            Section::Socket,
            Status::Info,
            format!("{loop_name}: could not be read"),
            Vec::new(),
        ),
    }
}

fn bytes(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 10) {
        format!("{n} bytes ({:.1} MiB)", n as f64 / f64::from(1 << 20))
    } else {
        format!("{n} bytes")
    }
}

pub(super) fn check_recv_buffer(r: &mut Report, a: &socket::MulticastSocket) {
    let rb = RecvBuffer {
        requested: a.recv_buffer_requested,
        granted: a.recv_buffer_granted,
        usable: a.recv_buffer_usable(),
        capped: a.recv_buffer_capped(),
        rmem_max: socket::recv_buffer_limit(),
    };
    let limit = rb.rmem_max.map_or_else(
        || "the system limit is unknown here".to_owned(),
        |m| format!("net.core.rmem_max = {m}"),
    );
    let reported = if rb.usable == rb.granted {
        String::new()
    } else {
        format!(
            " (the system reports {}, double what it grants)",
            rb.granted
        )
    };
    if rb.granted == 0 {
        r.push(
            Section::RecvBuffer,
            Status::Warn,
            format!("the granted receive buffer could not be read; {limit}"),
            Vec::new(),
        );
    } else if rb.capped {
        let mut hints = Vec::new();
        if rb.rmem_max.is_some() {
            hints.push(format!(
                "`sysctl -w net.core.rmem_max={}` as root (and put net.core.rmem_max={} in \
                 /etc/sysctl.d/ to keep it), or run with CAP_NET_ADMIN",
                rb.requested, rb.requested
            ));
        } else {
            hints.push("raise the system's socket receive buffer limit".into());
        }
        r.push(
            Section::RecvBuffer,
            Status::Warn,
            format!(
                "{} usable of {} requested{reported}: {limit} caps it, so bursts beyond it \
                 are dropped, then repaired or reset",
                bytes(rb.usable),
                bytes(rb.requested)
            ),
            hints,
        );
    } else {
        let forced = match rb.rmem_max {
            Some(m) if rb.usable > m => ", above it (forced with CAP_NET_ADMIN)",
            _ => "",
        };
        r.push(
            Section::RecvBuffer,
            Status::Ok,
            format!(
                "{} usable, as requested{reported}; {limit}{forced}",
                bytes(rb.usable)
            ),
            Vec::new(),
        );
    }
    r.recv_buffer = Some(rb);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_scopes() {
        let status = |s: &str| group_scope(s.parse().unwrap()).0;
        assert_eq!(status("239.255.1.2"), Status::Ok);
        assert_eq!(status("239.1.2.3"), Status::Ok);
        assert_eq!(status("224.0.0.251"), Status::Warn);
        assert_eq!(status("232.1.1.1"), Status::Warn);
        assert_eq!(status("225.1.1.1"), Status::Warn);
        assert_eq!(status("ff15::1"), Status::Ok);
        assert_eq!(status("ff02::1"), Status::Ok);
        assert_eq!(status("ff01::1"), Status::Warn);
        assert_eq!(status("ff0e::1"), Status::Warn);
    }
}
