//! Every Linux-specific socket option the crate uses, in one place:
//! `IP_MULTICAST_ALL` (off: no datagrams of groups only other sockets
//! joined), the receive buffer (`SO_RCVBUF`, forced past
//! `net.core.rmem_max` with `SO_RCVBUFFORCE` where allowed, and Linux's
//! doubled report of it), IP fragmentation kept through quinn-udp's set-up
//! (`IP_MTU_DISCOVER`, `IPV6_MTU_DISCOVER`, `IPV6_DONTFRAG`), and the
//! classic BPF socket filter that drops a node's own looped-back datagrams
//! in the kernel ([`drop_prefix`]).
//!
//! What it may not do: open, bind or join (the parent module's job), send
//! or receive. Options that are optional here (the receive buffer, the
//! filter) never fail an `open`: they are logged and skipped, or reported
//! to the caller to log.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::{SockFilter, SockRef, Socket};

use super::ResolvedInterface;

/// Turns `IP_MULTICAST_ALL` (IPv4) or `IPV6_MULTICAST_ALL` off: Linux
/// otherwise delivers to a socket bound to the port the datagrams of every
/// group any socket of the host joined.
pub(super) fn set_multicast_all_off(socket: &Socket, v4: bool) -> io::Result<()> {
    if v4 {
        socket.set_multicast_all_v4(false)
    } else {
        socket.set_multicast_all_v6(false)
    }
}

/// Reads `IP_MULTICAST_ALL` / `IPV6_MULTICAST_ALL`; `None` if unreadable.
pub(super) fn multicast_all(socket: &UdpSocket, v4: bool) -> Option<bool> {
    let socket = SockRef::from(socket);
    if v4 {
        socket.multicast_all_v4().ok()
    } else {
        socket.multicast_all_v6().ok()
    }
}

/// Sets `SO_RCVBUF` to `requested` bytes (0: leave the system default),
/// forcing it past `net.core.rmem_max` with `SO_RCVBUFFORCE` if the system
/// capped it, and returns what `getsockopt(SO_RCVBUF)` reports (0 if
/// unreadable). All of it is optional: a failed option is logged at debug
/// and skipped; a buffer still smaller than requested is logged at warn,
/// since bursts that overflow it cost repairs.
pub(super) fn set_recv_buffer(
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
        if recv_buffer_capped(requested, granted) {
            if let Err(e) = force_recv_buffer(socket, requested) {
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
    if requested > 0 && recv_buffer_capped(requested, granted) {
        tracing::warn!(%group, %interface, requested, granted, usable = usable_recv_buffer(granted),
            "receive buffer (SO_RCVBUF) capped below the request by net.core.rmem_max: \
             bursts may be dropped and repaired; raise the limit \
             (`sysctl -w net.core.rmem_max={requested}`) or run with CAP_NET_ADMIN");
    }
    granted
}

/// Whether the reported buffer is below the request. Linux reports double
/// what was set, so a request was capped iff the report is below twice the
/// request.
pub(super) fn recv_buffer_capped(requested: usize, granted: usize) -> bool {
    granted < requested.saturating_mul(2)
}

/// The usable part of a reported `SO_RCVBUF`: Linux reports double what it
/// grants (the rest is its bookkeeping).
pub(super) fn usable_recv_buffer(granted: usize) -> usize {
    granted / 2
}

/// The system's upper limit for a requested receive buffer, in bytes
/// (`net.core.rmem_max`, read from `/proc`); `None` if unreadable. Root
/// raises it with `sysctl -w net.core.rmem_max=<bytes>`.
pub fn recv_buffer_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/sys/net/core/rmem_max").ok()?;
    text.trim().parse().ok()
}

/// `SO_RCVBUFFORCE`: `SO_RCVBUF` past `net.core.rmem_max`, for a process
/// with `CAP_NET_ADMIN`.
fn force_recv_buffer(socket: &Socket, requested: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(requested).unwrap_or(libc::c_int::MAX);
    set_int(
        socket.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        value,
    )
}

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

/// The socket options that decide whether the kernel fragments: path MTU
/// discovery (IPv4, IPv6) and IPv6 don't-fragment.
const FRAGMENTATION: [(i32, i32); 3] = [
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
    (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
    (libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG),
];

/// Runs `f`, which may change how `socket` fragments (quinn-udp forbids IP
/// fragmentation: it is built for QUIC), and puts the socket's own setting
/// back: a `max_datagram` raised above the path MTU relies on it. An option
/// that could not be read is left as `f` set it.
pub(crate) fn keeping_fragmentation<T>(socket: &impl AsRawFd, f: impl FnOnce() -> T) -> T {
    let fd = socket.as_raw_fd();
    let saved = FRAGMENTATION.map(|(level, name)| get_int(fd, level, name));
    let r = f();
    for ((level, name), v) in FRAGMENTATION.into_iter().zip(saved) {
        if let Some(v) = v {
            let _ = set_int(fd, level, name, v);
        }
    }
    r
}

/// Has the kernel drop, before they reach this socket, the datagrams whose
/// payload starts with `prefix` (a classic BPF socket filter): a node's own
/// datagrams, looped back by multicast, then cost it no wake-up, no receive
/// and no decode.
///
/// Returns false, attaching nothing, for a prefix too long for the
/// filter's jumps (over 508 bytes); the node still ignores its own
/// datagrams after reading their header. An error is the system's refusal
/// of `SO_ATTACH_FILTER`.
pub fn drop_prefix(socket: &Socket, prefix: &[u8]) -> io::Result<bool> {
    use libc::{BPF_ABS, BPF_B, BPF_H, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_LEN};
    use libc::{BPF_RET, BPF_W};
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
