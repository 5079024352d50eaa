//! Real-socket tests of `net::socket`.
//!
//! Network rule: everything here uses interface 127.0.0.1, multicast TTL 0
//! and a random group in 239.255.0.0/16, so nothing leaves the host. Each
//! test takes its own free port and group, so tests run in parallel. Every
//! receive has a deadline of at most 2 s; every loop is bounded.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use cachecast::net::socket::{
    drop_prefix, list_interfaces, open, recv_buffer_limit, InterfaceSpec, MulticastSocket,
    SocketError, SocketOptions,
};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Deadline for a datagram that must arrive.
const ARRIVES: Duration = Duration::from_secs(2);
/// How long to wait for a datagram that must not arrive (sent after one
/// that did arrive, so it would have been there by now).
const ABSENT: Duration = Duration::from_millis(200);

/// A port that was free a moment ago.
fn free_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A random group in 239.255.0.0/16 (never .0.x or .255.x).
fn random_group() -> Ipv4Addr {
    let mut rng = SmallRng::from_entropy();
    Ipv4Addr::new(239, 255, rng.gen_range(1..=254), rng.gen_range(1..=254))
}

/// Options for a host-local test socket: interface 127.0.0.1, TTL 0.
fn local_opts(group: Ipv4Addr, port: u16) -> SocketOptions {
    SocketOptions {
        group: SocketAddr::from((group, port)),
        interface: InterfaceSpec::loopback(),
        ttl: 0,
        loopback: true,
        recv_buffer: 256 * 1024,
    }
}

/// A payload no other test sends.
fn payload(what: &str) -> Vec<u8> {
    format!(
        "cachecast-test {what} {:016x}",
        SmallRng::from_entropy().gen::<u64>()
    )
    .into_bytes()
}

fn send(sock: &MulticastSocket, to: SocketAddr, data: &[u8]) {
    assert!(
        to.ip().is_multicast(),
        "tests send to multicast groups only"
    );
    let n = sock.socket.send_to(data, to).expect("send_to");
    assert_eq!(n, data.len());
}

/// Waits at most `within` for `want`; other datagrams are skipped (at most
/// 64). Returns the sender's address if `want` arrived.
fn receive(sock: &MulticastSocket, want: &[u8], within: Duration) -> Option<SocketAddr> {
    let deadline = Instant::now() + within;
    sock.socket.set_nonblocking(false).expect("blocking");
    let mut buf = [0u8; 1500];
    for _ in 0..64 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        sock.socket.set_read_timeout(Some(left)).expect("timeout");
        match sock.socket.recv_from(&mut buf) {
            Ok((n, from)) if &buf[..n] == want => return Some(from),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(e) => panic!("recv_from: {e}"),
        }
    }
    None
}

#[test]
fn two_sockets_on_one_group_both_receive() {
    let (group, port) = (random_group(), free_port());
    let a = open(&local_opts(group, port)).expect("open a");
    let b = open(&local_opts(group, port)).expect("open b");
    assert_eq!(a.group, SocketAddr::from((group, port)));
    assert_eq!(a.interface.addr, Some(LOCALHOST));
    assert_ne!(a.interface.index, 0, "{:?}", a.interface);
    assert_eq!(a.socket.local_addr().unwrap().port(), port);

    let data = payload("both");
    send(&a, a.group, &data);
    let from_b = receive(&b, &data, ARRIVES).expect("b receives a's datagram");
    let from_a = receive(&a, &data, ARRIVES).expect("a receives its own datagram");
    assert_eq!(from_b, SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    assert_eq!(from_a, from_b);
}

#[test]
fn socket_receives_no_datagrams_of_other_groups_on_its_port() {
    let port = free_port();
    let g1 = random_group();
    let g2 = loop {
        let g = random_group();
        if g != g1 {
            break g;
        }
    };
    let a = open(&local_opts(g1, port)).expect("open a on g1");
    let b = open(&local_opts(g2, port)).expect("open b on g2");

    let first = payload("g2-first");
    send(&b, b.group, &first);
    assert!(receive(&b, &first, ARRIVES).is_some(), "b receives on g2");
    assert_eq!(
        receive(&a, &first, ABSENT),
        None,
        "a (joined g1 only) received a datagram of g2: IP_MULTICAST_ALL is on"
    );

    // Control: the check above can fail. With IP_MULTICAST_ALL back on,
    // `a` does get g2's datagrams, because `b` joined g2 on this host.
    let a_ref = socket2::SockRef::from(&a.socket);
    assert_eq!(a.multicast_all(), Some(false));
    a_ref.set_multicast_all_v4(true).unwrap();
    assert_eq!(a.multicast_all(), Some(true));
    let second = payload("g2-second");
    send(&b, b.group, &second);
    assert!(receive(&b, &second, ARRIVES).is_some());
    assert!(
        receive(&a, &second, ARRIVES).is_some(),
        "control failed: with IP_MULTICAST_ALL on, a should receive g2"
    );
}

/// The options are read back as set. IP_MULTICAST_LOOP is checked this way
/// only: on Linux a datagram sent through `lo` is delivered back to the
/// host by the loopback device itself (the route's output is not
/// `ip_mc_output`), so `loopback: false` does not stop local sockets from
/// receiving it there, whatever the option says.
#[test]
fn options_are_applied() {
    let (group, port) = (random_group(), free_port());
    for loopback in [false, true] {
        let s = open(&SocketOptions {
            loopback,
            ..local_opts(group, port)
        })
        .expect("open");
        let r = socket2::SockRef::from(&s.socket);
        assert_eq!(r.multicast_loop_v4().unwrap(), loopback);
        assert_eq!(r.multicast_ttl_v4().unwrap(), 0);
        assert_eq!(r.multicast_if_v4().unwrap(), Ipv4Addr::LOCALHOST);
        assert!(r.reuse_address().unwrap());
        assert!(r.reuse_port().unwrap());
        assert!(!r.multicast_all_v4().unwrap());
        assert!(r.nonblocking().unwrap());
        assert_eq!(
            s.socket.local_addr().unwrap(),
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
        );
    }
}

#[test]
fn interface_by_name_joins_by_index() {
    let (group, port) = (random_group(), free_port());
    let opts = SocketOptions {
        interface: "lo".parse().unwrap(),
        ..local_opts(group, port)
    };
    let a = open(&opts).expect("open on lo");
    assert_eq!(a.interface.name, "lo");
    assert_ne!(a.interface.index, 0);
    assert_eq!(a.interface.addr, Some(LOCALHOST));
    let b = open(&local_opts(group, port)).expect("open by address");
    assert_eq!(a.interface, b.interface);

    let data = payload("by-name");
    send(&b, b.group, &data);
    assert!(receive(&a, &data, ARRIVES).is_some());
}

#[tokio::test]
async fn socket_works_with_tokio() {
    let (group, port) = (random_group(), free_port());
    let opened = open(&local_opts(group, port)).expect("open");
    let to = opened.group;
    let sock = tokio::net::UdpSocket::from_std(opened.socket).expect("from_std");
    let data = payload("tokio");
    sock.send_to(&data, to).await.expect("send");
    let mut buf = [0u8; 1500];
    let got = tokio::time::timeout(ARRIVES, async {
        for _ in 0..64 {
            let (n, _) = sock.recv_from(&mut buf).await.expect("recv");
            if buf[..n] == data[..] {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true));
}

#[test]
fn receive_buffer_is_set_and_reported() {
    let (group, port) = (random_group(), free_port());
    let requested = 1 << 20;
    let s = open(&SocketOptions {
        recv_buffer: requested,
        ..local_opts(group, port)
    })
    .expect("open");
    assert_eq!(s.recv_buffer_requested, requested);
    assert!(s.recv_buffer_granted > 0);
    let now = socket2::SockRef::from(&s.socket)
        .recv_buffer_size()
        .unwrap();
    assert_eq!(s.recv_buffer_granted, now);
    eprintln!(
        "SO_RCVBUF requested {requested}, granted {}",
        s.recv_buffer_granted
    );

    let default = open(&SocketOptions {
        recv_buffer: 0,
        ..local_opts(group, port)
    })
    .expect("open with system default buffer");
    assert_eq!(default.recv_buffer_requested, 0);
    assert!(default.recv_buffer_granted > 0);
}

fn open_err(opts: &SocketOptions) -> (SocketError, String) {
    let err = open(opts).expect_err("open must fail");
    let msg = err.to_string();
    (err, msg)
}

#[test]
fn unicast_group_is_rejected() {
    let port = free_port();
    let mut opts = local_opts(random_group(), port);
    opts.group = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (err, msg) = open_err(&opts);
    assert!(matches!(err, SocketError::NotMulticast { .. }), "{err:?}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(msg.contains("239.255.0.0/16"), "{msg}");

    opts.group = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    opts.interface = InterfaceSpec::Default;
    let (err, msg) = open_err(&opts);
    assert!(matches!(err, SocketError::NotMulticast { .. }), "{err:?}");
    assert!(msg.contains("ff15::"), "{msg}");
}

#[test]
fn port_zero_is_rejected() {
    let group = random_group();
    let (err, msg) = open_err(&local_opts(group, 0));
    assert!(matches!(err, SocketError::ZeroPort { .. }), "{err:?}");
    assert!(msg.contains(&format!("{group}:0")), "{msg}");
}

#[test]
fn ttl_above_255_is_rejected() {
    let opts = SocketOptions {
        ttl: 256,
        ..local_opts(random_group(), free_port())
    };
    let (err, msg) = open_err(&opts);
    assert!(matches!(err, SocketError::InvalidTtl { .. }), "{err:?}");
    assert!(msg.contains("256"), "{msg}");
}

#[test]
fn unknown_interface_name_is_rejected_with_the_list() {
    let opts = SocketOptions {
        interface: "nonexistent0".parse().unwrap(),
        ..local_opts(random_group(), free_port())
    };
    let (err, msg) = open_err(&opts);
    assert!(
        matches!(err, SocketError::NoSuchInterface { .. }),
        "{err:?}"
    );
    assert!(msg.contains("nonexistent0"), "{msg}");
    assert!(msg.contains(&opts.group.to_string()), "{msg}");
    assert!(msg.contains("lo"), "lists the interfaces: {msg}");
}

#[test]
fn address_of_no_interface_is_rejected_with_the_list() {
    // 203.0.113.0/24 is TEST-NET-3: no interface has it. Nothing is sent.
    let missing: IpAddr = "203.0.113.77".parse().unwrap();
    let opts = SocketOptions {
        interface: InterfaceSpec::Addr(missing),
        ..local_opts(random_group(), free_port())
    };
    let (err, msg) = open_err(&opts);
    assert!(
        matches!(err, SocketError::NoSuchInterface { .. }),
        "{err:?}"
    );
    assert!(msg.contains("203.0.113.77"), "{msg}");
    assert!(msg.contains("127.0.0.1"), "lists addresses: {msg}");
}

#[test]
fn interface_address_of_the_other_family_is_rejected() {
    let opts = SocketOptions {
        interface: InterfaceSpec::Addr(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ..local_opts(random_group(), free_port())
    };
    let (err, msg) = open_err(&opts);
    assert!(matches!(err, SocketError::FamilyMismatch { .. }), "{err:?}");
    assert!(msg.contains("::1"), "{msg}");
    assert!(msg.contains(&opts.group.to_string()), "{msg}");

    // And the other way round (validated before any socket exists).
    let opts = SocketOptions {
        group: "[ff15::4242]:4242".parse().unwrap(),
        interface: InterfaceSpec::Addr(LOCALHOST),
        ..local_opts(random_group(), 4242)
    };
    let (err, msg) = open_err(&opts);
    assert!(matches!(err, SocketError::FamilyMismatch { .. }), "{err:?}");
    assert!(
        msg.contains("127.0.0.1") && msg.contains("ff15::4242"),
        "{msg}"
    );
}

#[test]
fn interface_spec_parses_and_displays() {
    let cases = [
        ("default", InterfaceSpec::Default),
        ("DEFAULT", InterfaceSpec::Default),
        ("127.0.0.1", InterfaceSpec::Addr(LOCALHOST)),
        (" 127.0.0.1 ", InterfaceSpec::loopback()),
        ("::1", InterfaceSpec::Addr(IpAddr::V6(Ipv6Addr::LOCALHOST))),
        ("eth0", InterfaceSpec::Name("eth0".into())),
        (" lo ", InterfaceSpec::Name("lo".into())),
    ];
    for (text, want) in cases {
        let got: InterfaceSpec = text.parse().unwrap();
        assert_eq!(got, want, "{text:?}");
        assert_eq!(got.to_string().parse::<InterfaceSpec>().unwrap(), got);
    }
    assert_eq!(InterfaceSpec::Default.to_string(), "default");
    for bad in [
        "fe80::1%eth0",
        "eth 0",
        "a/b",
        "averyveryverylonginterfacename",
    ] {
        let err = bad.parse::<InterfaceSpec>().unwrap_err();
        assert!(
            matches!(err, SocketError::InvalidInterfaceName { .. }),
            "{bad:?}: {err:?}"
        );
        assert!(err.to_string().contains(bad), "{err}");
    }
}

/// An empty interface (`--interface ''`, an unset variable) is a mistake,
/// not the system's choice: a one-line error that says so and what to give.
#[test]
fn an_empty_interface_is_refused() {
    for empty in ["", "  ", "\t"] {
        let err = empty.parse::<InterfaceSpec>().unwrap_err();
        assert!(
            matches!(err, SocketError::InvalidInterfaceName { .. }),
            "{empty:?}: {err:?}"
        );
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "one line: {msg}");
        for part in ["empty", "eth0", "192.0.2.10", "\"default\""] {
            assert!(msg.contains(part), "{empty:?}: {part} missing from {msg}");
        }
    }
}

#[test]
fn the_loopback_interface_is_127_0_0_1() {
    assert_eq!(InterfaceSpec::loopback(), InterfaceSpec::Addr(LOCALHOST));
    assert_eq!(InterfaceSpec::loopback().to_string(), "127.0.0.1");
    let s = open(&local_opts(random_group(), free_port())).expect("open on loopback");
    assert_eq!(s.interface.addr, Some(LOCALHOST));
    let lo = list_interfaces()
        .into_iter()
        .find(|i| i.index == s.interface.index)
        .expect("the resolved interface is listed");
    assert!(lo.loopback, "{lo:?}");
}

#[test]
fn list_interfaces_has_loopback() {
    let list = list_interfaces();
    let lo = list
        .iter()
        .find(|i| i.addrs.contains(&LOCALHOST))
        .unwrap_or_else(|| panic!("no interface with 127.0.0.1 in {list:?}"));
    assert!(lo.loopback && lo.up, "{lo:?}");
    assert_ne!(lo.index, 0);
}

/// Datagrams `sock` receives before `want`, which must arrive within
/// `within` (at most 64 datagrams in all).
fn received_before(sock: &MulticastSocket, want: &[u8], within: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + within;
    sock.socket.set_nonblocking(false).expect("blocking");
    let mut buf = [0u8; 1500];
    let mut seen = Vec::new();
    for _ in 0..64 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{want:?} did not arrive; before it: {seen:?}"
        );
        sock.socket.set_read_timeout(Some(left)).expect("timeout");
        match sock.socket.recv_from(&mut buf) {
            Ok((n, _)) if &buf[..n] == want => return seen,
            Ok((n, _)) => seen.push(buf[..n].to_vec()),
            Err(e) => panic!("{want:?} did not arrive ({e}); before it: {seen:?}"),
        }
    }
    panic!("{want:?} not among 64 datagrams: {seen:?}");
}

/// The kernel drops what starts with the prefix, exactly that: a datagram
/// one byte short of it, or differing in its last byte, still arrives.
#[test]
fn drop_prefix_filters_exactly_the_prefix() {
    let (group, port) = (random_group(), free_port());
    let sender = open(&local_opts(group, port)).expect("open sender");
    let filtered = open(&local_opts(group, port)).expect("open filtered");
    let plain = open(&local_opts(group, port)).expect("open plain");
    // 39 bytes: the filter loads words, a half-word and a byte.
    let mut prefix = payload("own");
    prefix.resize(39, b'!');
    let attached = drop_prefix(&socket2::SockRef::from(&filtered.socket), &prefix).unwrap();
    assert!(attached);

    let own = [&prefix[..], b" and more"].concat();
    let exact = prefix.clone();
    let short = prefix[..prefix.len() - 1].to_vec();
    let mut near = own.clone();
    near[prefix.len() - 1] ^= 1;
    let last = payload("last");
    for d in [&own, &exact, &short, &near, &last] {
        send(&sender, sender.group, d);
    }
    // One sender, one path: what was sent before `last` is queued before it.
    assert_eq!(
        received_before(&filtered, &last, ARRIVES),
        [short.clone(), near.clone()]
    );
    // Control: without the filter, all of them arrive.
    assert_eq!(
        received_before(&plain, &last, ARRIVES),
        [own, exact, short, near]
    );
}

/// A prefix too long for the filter's jumps attaches nothing and says so.
#[test]
fn drop_prefix_refuses_a_prefix_too_long_for_the_filter() {
    let s = open(&local_opts(random_group(), free_port())).expect("open");
    let r = socket2::SockRef::from(&s.socket);
    assert!(drop_prefix(&r, &[7; 508]).unwrap(), "the longest that fits");
    let s = open(&local_opts(random_group(), free_port())).expect("open");
    let r = socket2::SockRef::from(&s.socket);
    assert!(!drop_prefix(&r, &[7; 509]).unwrap());
}

/// Drops `CAP_NET_ADMIN` from the calling thread's effective capabilities
/// (capabilities are per thread): `SO_RCVBUFFORCE` is then refused.
fn drop_cap_net_admin_in_this_thread() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: a version-3 header and the two data structs version 3 uses.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_NET_ADMIN);
    // SAFETY: as above; pid 0 is this thread only.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

/// A tracing subscriber that records every event: its level and fields.
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<(tracing::Level, String)>>>);

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0 += &format!("{}={v:?} ", f.name());
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let level = *event.metadata().level();
        self.0.lock().unwrap().push((level, fields.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Opens `opts` in a thread without `CAP_NET_ADMIN`, recording the events
/// logged meanwhile.
fn open_capped(opts: SocketOptions) -> (MulticastSocket, Vec<(tracing::Level, String)>) {
    std::thread::spawn(move || {
        drop_cap_net_admin_in_this_thread();
        let events = std::sync::Arc::default();
        let capture = Capture(std::sync::Arc::clone(&events));
        let s = tracing::subscriber::with_default(capture, || open(&opts).expect("open"));
        let events = events.lock().unwrap().clone();
        (s, events)
    })
    .join()
    .unwrap()
}

/// A receive buffer that the system capped below the request is what an
/// operator must see: logged at warn, with the group, the interface and
/// the fix. A buffer within the limit logs no warning.
#[test]
fn a_capped_receive_buffer_is_a_warning() {
    let limit = recv_buffer_limit().expect("net.core.rmem_max is readable");
    let requested = limit + (1 << 20);
    assert!(
        requested <= i32::MAX as usize / 2,
        "rmem_max {limit} too high to test"
    );
    let opts = SocketOptions {
        recv_buffer: requested,
        ..local_opts(random_group(), free_port())
    };
    let group = opts.group;
    let (s, events) = open_capped(opts.clone());
    assert!(s.recv_buffer_capped(), "{s:?}");
    assert_eq!(s.recv_buffer_usable(), limit, "capped at net.core.rmem_max");
    let warnings: Vec<&String> = events
        .iter()
        .filter(|(level, _)| *level == tracing::Level::WARN)
        .map(|(_, fields)| fields)
        .collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    for part in [
        format!("group={group}"),
        "interface=lo".to_owned(),
        format!("requested={requested}"),
        "SO_RCVBUF".to_owned(),
        "net.core.rmem_max".to_owned(),
    ] {
        assert!(
            warnings[0].contains(&part),
            "{part} missing: {}",
            warnings[0]
        );
    }

    let (s, events) = open_capped(SocketOptions {
        recv_buffer: limit / 2,
        ..opts
    });
    assert!(!s.recv_buffer_capped(), "{s:?}");
    assert!(
        events
            .iter()
            .all(|(level, _)| *level != tracing::Level::WARN && *level != tracing::Level::ERROR),
        "{events:?}"
    );
}
