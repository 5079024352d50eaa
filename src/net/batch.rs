//! Batched datagram I/O for the driver, through quinn-udp: on send, UDP
//! GSO (one `sendmsg` carries up to 64 datagrams of one size); on receive,
//! `recvmmsg` and UDP GRO (one call returns many datagrams, a GRO buffer
//! holding several of one size). Where the kernel or the device lacks GSO,
//! quinn-udp says so (`max_gso_segments() == 1`) and datagrams go one per
//! call.
//!
//! [`SendBatch`] collects the datagrams the core produces into runs that
//! GSO can carry: every datagram of a run has the size of the first,
//! except the last, which may be shorter.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per GSO send at most (the kernel's UDP_MAX_SEGMENTS is 64).
const MAX_SEGMENTS: usize = 64;
/// Bytes per GSO send at most (one IP packet before segmentation).
const MAX_GSO_BYTES: usize = 65_000;
/// Buffers per `recvmmsg`, each large enough for a full GRO batch.
pub const RECV_BUFFERS: usize = 8;
const RECV_BUFFER_SIZE: usize = 65_536;

/// The driver's socket.
pub(crate) struct BatchSocket {
    socket: UdpSocket,
    state: quinn_udp::UdpSocketState,
}

impl BatchSocket {
    /// Wraps a bound, joined socket.
    pub fn new(socket: UdpSocket) -> io::Result<Self> {
        let state = super::socket::keeping_fragmentation(&socket, || {
            quinn_udp::UdpSocketState::new((&socket).into())
        })?;
        Ok(BatchSocket { socket, state })
    }

    /// Datagrams one send may carry now.
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments().clamp(1, MAX_SEGMENTS)
    }

    /// Sends `batch` to `dest`, keeping it (for the next destination).
    pub async fn send_to(&self, dest: SocketAddr, batch: &SendBatch) -> io::Result<()> {
        let result = if batch.count > 1 && self.max_segments() > 1 {
            match self.send_one(dest, &batch.buf, Some(batch.segment)).await {
                // GSO refused (a device without checksum offload, a segment
                // over the MTU): quinn-udp stops offering it; send singly.
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                    tracing::debug!(error = %e, "GSO send failed: one datagram per call");
                    self.send_each(dest, batch).await
                }
                r => r,
            }
        } else {
            self.send_each(dest, batch).await
        };
        result
    }

    /// Sends one datagram to `dest`.
    pub async fn send_single(&self, dest: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        self.send_one(dest, datagram, None).await
    }

    async fn send_each(&self, dest: SocketAddr, batch: &SendBatch) -> io::Result<()> {
        let mut result = Ok(());
        for d in batch.buf.chunks(batch.segment.max(1)) {
            if let Err(e) = self.send_one(dest, d, None).await {
                result = Err(e);
            }
        }
        result
    }

    async fn send_one(
        &self,
        dest: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let t = quinn_udp::Transmit {
            destination: dest,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        self.socket
            .async_io(Interest::WRITABLE, || {
                self.state.try_send((&self.socket).into(), &t)
            })
            .await
    }

    /// Waits for datagrams and reads as many as are ready into `bufs`.
    ///
    /// One read takes many datagrams (`recvmmsg`), so a read that did not
    /// fill every buffer emptied the socket: its readiness is cleared then
    /// and there, so that the next call waits instead of trying a read that
    /// can only say "would block" (a wasted system call per wake-up at low
    /// rates). Clearing is race-free: a datagram that arrives meanwhile
    /// makes the socket ready again.
    pub async fn recv(&self, bufs: &mut RecvBuffers) -> io::Result<()> {
        bufs.filled = 0;
        loop {
            self.socket.readable().await?;
            let r = self.socket.try_io(Interest::READABLE, || {
                bufs.fill(&self.state, &self.socket)?;
                if bufs.filled < bufs.capacity() {
                    // Read, and drained: say "would block" to clear.
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && bufs.filled == 0 => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                r => return r,
            }
        }
    }
}

/// Received datagrams: up to `RECV_BUFFERS` buffers, each holding one
/// datagram or a GRO batch of same-sized ones.
pub struct RecvBuffers {
    storage: Vec<u8>,
    meta: [quinn_udp::RecvMeta; RECV_BUFFERS],
    filled: usize,
}

impl Default for RecvBuffers {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBuffers {
    /// Empty buffers for one `recvmmsg` of `RECV_BUFFERS` datagrams.
    pub fn new() -> Self {
        Self::with_buffers(RECV_BUFFERS)
    }

    /// Empty buffers for one `recvmmsg` of `n` datagrams (at most
    /// `RECV_BUFFERS`; each 64 KiB, a GRO batch).
    pub fn with_buffers(n: usize) -> Self {
        RecvBuffers {
            storage: vec![0; n.clamp(1, RECV_BUFFERS) * RECV_BUFFER_SIZE],
            meta: [quinn_udp::RecvMeta::default(); RECV_BUFFERS],
            filled: 0,
        }
    }

    /// Reads what is ready on `socket` (non-blocking, as quinn-udp sets it)
    /// with one `recvmmsg`; `WouldBlock` when nothing is.
    pub fn fill(
        &mut self,
        state: &quinn_udp::UdpSocketState,
        socket: &impl std::os::fd::AsFd,
    ) -> io::Result<()> {
        self.filled = 0;
        let n = self.capacity();
        let mut chunks = self.storage.chunks_mut(RECV_BUFFER_SIZE);
        let mut iovs: [IoSliceMut; RECV_BUFFERS] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
        self.filled = state.recv(socket.into(), &mut iovs[..n], &mut self.meta[..n])?;
        Ok(())
    }

    /// How many datagrams (or GRO batches) one receive takes.
    pub fn capacity(&self) -> usize {
        self.storage.len() / RECV_BUFFER_SIZE
    }

    /// Every datagram of the last receive, in order, with its source.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.meta[..self.filled]
            .iter()
            .zip(self.storage.chunks(RECV_BUFFER_SIZE))
            .flat_map(|(m, buf)| {
                let len = m.len.min(buf.len());
                let addr = m.addr;
                buf[..len].chunks(m.stride.max(1)).map(move |d| (addr, d))
            })
    }
}

/// Datagrams waiting to go out in one GSO send.
pub(crate) struct SendBatch {
    buf: Vec<u8>,
    segment: usize,
    count: usize,
    /// The last datagram was shorter than `segment`: the run is closed.
    closed: bool,
}

impl SendBatch {
    pub fn new() -> Self {
        SendBatch {
            buf: Vec::with_capacity(MAX_GSO_BYTES),
            segment: 0,
            count: 0,
            closed: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagrams in the batch.
    #[cfg(feature = "test-util")]
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
        self.segment = 0;
        self.closed = false;
    }

    /// Adds `datagram` if it can join the run (at most `max` datagrams);
    /// false if the batch must be sent first.
    pub fn try_push(&mut self, datagram: &[u8], max: usize) -> bool {
        if self.count == 0 {
            self.buf.extend_from_slice(datagram);
            self.segment = datagram.len();
            self.count = 1;
            return true;
        }
        if self.closed
            || self.count >= max
            || datagram.len() > self.segment
            || self.buf.len() + datagram.len() > MAX_GSO_BYTES
        {
            return false;
        }
        self.closed = datagram.len() < self.segment;
        self.buf.extend_from_slice(datagram);
        self.count += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// quinn-udp forbids IP fragmentation; the driver's socket keeps its
    /// own setting (a `max_datagram` above the path MTU relies on it).
    #[tokio::test]
    async fn the_socket_keeps_its_fragmentation_setting() {
        use std::os::fd::AsRawFd;
        let mtu_discover = |s: &UdpSocket| {
            let mut v: libc::c_int = -1;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: an int-sized out-buffer with its length.
            let rc = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    (&mut v as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0);
            v
        };
        let plain = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let before = mtu_discover(&plain);
        let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        quinn_udp::UdpSocketState::new((&probe).into()).unwrap();
        assert_ne!(mtu_discover(&probe), before, "quinn-udp changes it");
        let kept = BatchSocket::new(plain).unwrap();
        assert_eq!(mtu_discover(&kept.socket), before);
    }

    #[test]
    fn runs_are_same_sized_with_a_shorter_last() {
        let mut b = SendBatch::new();
        assert!(b.try_push(&[1; 100], 64));
        assert!(b.try_push(&[2; 100], 64));
        assert!(!b.try_push(&[3; 101], 64), "longer than the segment");
        assert!(b.try_push(&[4; 40], 64), "a shorter last one");
        assert!(!b.try_push(&[5; 40], 64), "nothing after a shorter one");
        assert_eq!((b.count, b.segment, b.buf.len()), (3, 100, 240));
        b.clear();
        assert!(b.is_empty());
        for _ in 0..3 {
            assert!(b.try_push(&[0; 10], 3));
        }
        assert!(!b.try_push(&[0; 10], 3), "at most max datagrams");
    }

    #[test]
    fn a_gso_run_never_exceeds_the_ip_limit() {
        let mut b = SendBatch::new();
        let mut n = 0;
        while b.try_push(&[0; 1400], 64) {
            n += 1;
        }
        assert_eq!(n, MAX_GSO_BYTES / 1400);
    }
}
