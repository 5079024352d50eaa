//! The raw UDP multicast baseline: what the kernel does with no protocol
//! at all. Each datagram carries as many messages as a cachecast `Data`
//! datagram carries events of the same key size, with no header, no
//! sequence numbers and no repair: loss is simply loss.
//!
//! Two variants: `udp` sends with one `sendto` per datagram and receives
//! with one `recvfrom` per datagram; `udp-gso` sends up to 32 datagrams per
//! `sendmsg` (UDP GSO) and receives with `recvmmsg` and UDP GRO, through
//! quinn-udp.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use super::common::{
    loopback_opts, mono_ns, stamp, thread_cpu, Done, Pacer, Plan, PubReport, Recorder, Step,
    PROGRESS,
};

/// Segments per GSO send.
const GSO_SEGMENTS: usize = 32;

/// A send-only socket on loopback, TTL 0: the minimal sender (it joins no
/// group, so it receives nothing).
fn sender_socket() -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST)?;
    s.set_multicast_ttl_v4(0)?;
    s.set_multicast_loop_v4(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
    Ok(s.into())
}

/// Waits until `fd` is ready for `events` or `timeout` passes.
fn wait_fd(fd: i32, events: i16, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis().max(1) as i32) };
    n > 0
}

/// Publishes `plan` as raw datagrams of `per_datagram` messages.
pub fn publish(
    group: SocketAddr,
    plan: &Plan,
    per_datagram: usize,
    gso: bool,
) -> io::Result<PubReport> {
    let sock = sender_socket()?;
    let state = if gso {
        Some(quinn_udp::UdpSocketState::new((&sock).into())?)
    } else {
        None
    };
    let segments = state
        .as_ref()
        .map_or(1, |s| s.max_gso_segments().clamp(1, GSO_SEGMENTS));
    let msg = plan.key_size * plan.keys_per_event;
    let seg_len = per_datagram * msg;
    let mut buf = vec![0u8; seg_len * segments];
    let cpu0 = thread_cpu();
    let pacer = Pacer::new(plan);
    let start_ns = mono_ns();
    let (mut sent, mut datagrams) = (0u64, 0u64);
    loop {
        // Up to `segments` datagrams of what is due, each full but the last.
        let n = match pacer.step(plan, sent, (per_datagram * segments) as u64) {
            Step::Done => break,
            Step::Wait => {
                pacer.wait_for(sent);
                continue;
            }
            Step::Publish(n) => n as usize,
        };
        let now = mono_ns();
        for m in buf[..n * msg].chunks_mut(plan.key_size) {
            stamp(m, now);
        }
        let bytes = &buf[..n * msg];
        match &state {
            Some(state) => {
                let t = quinn_udp::Transmit {
                    destination: group,
                    ecn: None,
                    contents: bytes,
                    segment_size: Some(seg_len),
                    src_ip: None,
                };
                loop {
                    match state.try_send((&sock).into(), &t) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            wait_fd(sock.as_raw_fd(), libc::POLLOUT, Duration::from_millis(10));
                        }
                        // Other errors (ENOBUFS under overload) lose the
                        // datagrams, as UDP does.
                        _ => break,
                    }
                }
                datagrams += n.div_ceil(per_datagram) as u64;
            }
            None => {
                for d in bytes.chunks(seg_len) {
                    let _ = sock.send_to(d, group);
                    datagrams += 1;
                }
            }
        }
        sent += n as u64;
        PROGRESS.store(sent, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(PubReport {
        published: sent,
        start_ns,
        end_ns: mono_ns(),
        cpu_s: thread_cpu() - cpu0,
        datagrams,
    })
}

/// Receives raw datagrams until `done`; `ready` is called once joined.
pub fn subscribe(
    group: SocketAddr,
    msg_len: usize,
    gso: bool,
    done: &Done,
    ready: impl FnOnce(),
) -> io::Result<Recorder> {
    let ms = cachecast::net::socket::open(&loopback_opts(group))
        .map_err(|e| io::Error::other(e.to_string()))?;
    let sock = ms.socket;
    let fd = sock.as_raw_fd();
    let mut rec = Recorder::new();
    let tick = Duration::from_millis(50);
    if gso {
        // The same batched receive as the driver's: recvmmsg + GRO.
        let state = quinn_udp::UdpSocketState::new((&sock).into())?;
        let mut bufs = cachecast::net::RecvBuffers::new();
        ready();
        rec.start();
        while !done.check(&rec) {
            if !wait_fd(fd, libc::POLLIN, tick) || bufs.fill(&state, &sock).is_err() {
                continue;
            }
            let now = mono_ns();
            for d in bufs.datagrams() {
                rec.datagrams += 1;
                for msg in d.1.chunks_exact(msg_len) {
                    rec.record(msg, now);
                }
            }
        }
    } else {
        sock.set_nonblocking(false)?;
        sock.set_read_timeout(Some(tick))?;
        let mut buf = vec![0u8; 65_536];
        ready();
        rec.start();
        while !done.check(&rec) {
            let Ok(n) = sock.recv(&mut buf) else { continue };
            let now = mono_ns();
            rec.datagrams += 1;
            for msg in buf[..n].chunks_exact(msg_len) {
                rec.record(msg, now);
            }
        }
    }
    Ok(rec)
}
