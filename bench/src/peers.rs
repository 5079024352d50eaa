//! The brokers users already know, as benchmark peers: Redis pub/sub and
//! NATS core, spoken to over plain TCP on 127.0.0.1.
//!
//! The clients are written here by hand, on purpose, over blocking
//! `std::net::TcpStream`s with `TCP_NODELAY`: the bench is to measure the
//! broker, not a client library, and both protocols are a few lines of
//! text. No allocation per message: commands are stamped in place in a
//! reusable buffer, and frames are parsed from a reusable receive buffer
//! whose growth is bounded (a malformed or oversized frame is an error).
//!
//! - Redis (RESP2): the publisher checks the connection with `PING`, then
//!   pipelines `PUBLISH` commands, writing when ~64 KiB are buffered or
//!   nothing more is due; a second thread reads and counts the integer
//!   replies so the socket never stalls, and the publisher returns once
//!   every reply arrived. A subscriber sends `SUBSCRIBE` and is ready once
//!   the broker's subscribe reply arrived.
//! - NATS core (text protocol): `INFO` from the server, then `CONNECT
//!   {"verbose":false,"pedantic":false}` and `PING`/`PONG`. The publisher
//!   sends `PUB`s, writing every 128 messages or when nothing more is due,
//!   and ends with `PING`/`PONG` so everything reached the server. A
//!   subscriber sends `SUB` then `PING`, and is ready at the `PONG`; it
//!   answers the server's `PING`s.
//!
//! One message is one event: `key_size × keys_per_event` bytes, each key
//! stamped as everywhere else in the bench ([`stamp`]).
//!
//! Flat out, a subscriber that falls behind is disconnected by Redis
//! (`client-output-buffer-limit pubsub`) or by NATS (a slow consumer past
//! `max_pending`); the subscriber reports that as an error. scripts/bench.sh
//! --peers starts both servers with those limits lifted, so that the bench
//! measures throughput rather than disconnects.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::common::{
    mono_ns, stamp, thread_cpu, Done, Pacer, Plan, PubReport, Recorder, Step, PROGRESS,
};

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Redis,
    Nats,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Redis => "redis",
            Broker::Nats => "nats",
        }
    }

    /// Why a broker drops a subscriber, for the error that says it did.
    fn disconnect_hint(self) -> &'static str {
        match self {
            Broker::Redis => {
                "Redis drops a subscriber that falls behind its \
                 client-output-buffer-limit pubsub, which scripts/bench.sh --peers lifts"
            }
            Broker::Nats => {
                "NATS drops a slow consumer past its max_pending or \
                 write_deadline, which scripts/bench.sh --peers raises"
            }
        }
    }
}

/// The channel / subject the benchmark uses.
pub const SUBJECT: &str = "cachecast-bench";

/// A subscriber's read timeout: how often it checks whether it is done.
const TICK: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// For the broker's answer to a handshake (INFO, PONG, subscribe reply).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A write blocked this long fails.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After its last write, a publisher waits at most this long for the
/// broker to confirm everything (Redis replies, NATS PONG).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Redis: pipelined PUBLISH commands are written in batches of this size.
const REDIS_FLUSH_BYTES: usize = 64 * 1024;
/// NATS: PUBs per write.
const NATS_FLUSH_MSGS: usize = 128;
/// Longest protocol line (a NATS INFO, a Redis error) accepted.
const MAX_LINE: usize = 32 * 1024;
/// Largest payload accepted by a parser (at least the message length).
const MIN_PAYLOAD_LIMIT: usize = 1 << 20;
/// Initial receive buffer.
const READ_BUF: usize = 256 * 1024;
/// Elements of a RESP array a parser accepts (a pub/sub message has 3).
const MAX_ARRAY: usize = 4;

// ------------------------------------------------------------------ errors

fn bad(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// `e`, naming the broker, its address and what we were doing.
fn wrap(broker: Broker, addr: SocketAddr, doing: &str, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("{} at {addr}: {doing}: {e}", broker.name()),
    )
}

fn other(broker: Broker, addr: SocketAddr, msg: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{} at {addr}: {msg}", broker.name()))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()
}

// -------------------------------------------------------------- connection

fn connect(broker: Broker, addr: SocketAddr) -> io::Result<TcpStream> {
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} at {addr}: the bench stays on this host; give a loopback address (127.0.0.1)",
                broker.name()
            ),
        ));
    }
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot connect to {} at {addr}: {e} (is it running? scripts/bench.sh --peers starts one)",
                broker.name()
            ),
        )
    })?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(TICK))?;
    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
    Ok(s)
}

/// What the broker sent, not yet parsed: a reusable buffer that grows (up
/// to `max`) only for a frame larger than it.
struct RxBuf {
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    max: usize,
}

impl RxBuf {
    fn new(max: usize) -> Self {
        RxBuf {
            buf: vec![0; READ_BUF.min(max)],
            pos: 0,
            end: 0,
            max,
        }
    }

    /// For a parser that accepts payloads up to `max_payload` bytes.
    fn for_payload(max_payload: usize) -> Self {
        Self::new(max_payload + MAX_LINE + 64)
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        debug_assert!(self.pos <= self.end);
        if self.pos >= self.end {
            self.pos = 0;
            self.end = 0;
        }
    }

    /// One read: `Ok(None)` if it timed out, `Ok(Some(0))` if the peer
    /// closed the connection.
    fn read_from(&mut self, r: &mut impl Read) -> io::Result<Option<usize>> {
        if self.pos > 0 && self.buf.len() - self.end < self.buf.len() / 4 {
            // Only the start of one frame is left: move it to the front.
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.end == self.buf.len() {
            // One frame fills the buffer.
            if self.buf.len() >= self.max {
                return Err(bad(format!("a frame larger than {} bytes", self.max)));
            }
            let len = (self.buf.len() * 2).min(self.max);
            self.buf.resize(len, 0);
        }
        match r.read(&mut self.buf[self.end..]) {
            Ok(n) => {
                self.end += n;
                Ok(Some(n))
            }
            Err(e) if is_timeout(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `write` until all of `bytes` went, counting the calls.
fn write_counted(s: &mut impl Write, mut bytes: &[u8], writes: &mut u64) -> io::Result<()> {
    while !bytes.is_empty() {
        match s.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                *writes += 1;
                bytes = &bytes[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One more read while waiting for `what`, failing past `deadline` or if
/// the broker closed the connection.
fn read_more(
    s: &mut TcpStream,
    rx: &mut RxBuf,
    broker: Broker,
    addr: SocketAddr,
    what: &str,
    deadline: Instant,
) -> io::Result<()> {
    if Instant::now() >= deadline {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{} at {addr}: no {what} in time", broker.name()),
        ));
    }
    match rx.read_from(s) {
        Ok(Some(0)) => Err(other(
            broker,
            addr,
            format!("closed the connection while we waited for {what}"),
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(wrap(broker, addr, &format!("waiting for {what}"), e)),
    }
}

// ----------------------------------------------------------------- parsing

/// One line ending at `\r\n` from `data[at..]`: the line without its end,
/// and where the next thing starts. `Ok(None)` if it is not all there.
fn line(data: &[u8], at: usize) -> io::Result<Option<(&[u8], usize)>> {
    let rest = &data[at..];
    match rest[..rest.len().min(MAX_LINE)]
        .iter()
        .position(|&b| b == b'\n')
    {
        Some(i) if i > 0 && rest[i - 1] == b'\r' => Ok(Some((&rest[..i - 1], at + i + 1))),
        Some(_) => Err(bad("a line not ended by CRLF")),
        None if rest.len() >= MAX_LINE => Err(bad(format!("a line longer than {MAX_LINE} bytes"))),
        None => Ok(None),
    }
}

/// A decimal integer, optionally negative, of at most 18 digits.
fn parse_int(s: &[u8]) -> io::Result<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', d)) => (true, d),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad(format!("not a number: {:?}", lossy(s))));
    }
    let v = digits
        .iter()
        .fold(0i64, |v, &d| v * 10 + i64::from(d - b'0'));
    Ok(if neg { -v } else { v })
}

/// A length of at most `max` bytes.
fn parse_len(s: &[u8], max: usize) -> io::Result<usize> {
    let n = parse_int(s)?;
    match usize::try_from(n) {
        Ok(n) if n <= max => Ok(n),
        Ok(n) => Err(bad(format!("a payload of {n} bytes (at most {max})"))),
        Err(_) => Err(bad(format!("a negative length {n}"))),
    }
}

/// `n` bytes of payload at `data[at..]` followed by `\r\n`; `Ok(None)` if
/// it is not all there.
fn payload(data: &[u8], at: usize, n: usize) -> io::Result<Option<(&[u8], usize)>> {
    let end = at + n + 2;
    if data.len() < end {
        return Ok(None);
    }
    if &data[at + n..end] != b"\r\n" {
        return Err(bad("a payload not followed by CRLF"));
    }
    Ok(Some((&data[at..at + n], end)))
}

/// A RESP2 value other than an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Int(i64),
    Bulk(&'a [u8]),
    Nil,
}

/// A RESP2 frame: a value, or an array of up to [`MAX_ARRAY`] values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resp<'a> {
    Item(Item<'a>),
    Array {
        len: usize,
        items: [Item<'a>; MAX_ARRAY],
    },
}

impl<'a> Resp<'a> {
    fn items(&self) -> &[Item<'a>] {
        match self {
            Resp::Item(_) => &[],
            Resp::Array { len, items } => &items[..*len],
        }
    }

    /// A pub/sub push: `[kind, channel, third]`.
    fn push(&self) -> Option<(&'a [u8], Item<'a>)> {
        match self.items() {
            [Item::Bulk(kind), Item::Bulk(_channel), third] => Some((kind, *third)),
            _ => None,
        }
    }
}

fn parse_item(data: &[u8], at: usize, max_payload: usize) -> io::Result<Option<(Item<'_>, usize)>> {
    let Some((l, next)) = line(data, at)? else {
        return Ok(None);
    };
    let Some((&t, rest)) = l.split_first() else {
        return Err(bad("an empty RESP line"));
    };
    let item = match t {
        b'+' => Item::Simple(rest),
        b'-' => Item::Error(rest),
        b':' => Item::Int(parse_int(rest)?),
        b'$' if rest == b"-1" => Item::Nil,
        b'$' => {
            let n = parse_len(rest, max_payload)?;
            return Ok(payload(data, next, n)?.map(|(p, end)| (Item::Bulk(p), end)));
        }
        b'*' => return Err(bad("a nested RESP array")),
        _ => return Err(bad(format!("an unknown RESP type {:?}", t as char))),
    };
    Ok(Some((item, next)))
}

/// One RESP2 frame from the start of `data`, and its length; `Ok(None)`
/// if it is not all there yet.
fn parse_resp(data: &[u8], max_payload: usize) -> io::Result<Option<(Resp<'_>, usize)>> {
    if data.first() != Some(&b'*') {
        return Ok(parse_item(data, 0, max_payload)?.map(|(i, n)| (Resp::Item(i), n)));
    }
    let Some((l, mut at)) = line(data, 0)? else {
        return Ok(None);
    };
    if &l[1..] == b"-1" {
        return Ok(Some((Resp::Item(Item::Nil), at)));
    }
    let len = parse_len(&l[1..], MAX_ARRAY)
        .map_err(|_| bad(format!("a RESP array header {:?}", lossy(l))))?;
    let mut items = [Item::Nil; MAX_ARRAY];
    for item in &mut items[..len] {
        let Some((i, next)) = parse_item(data, at, max_payload)? else {
            return Ok(None);
        };
        *item = i;
        at = next;
    }
    Ok(Some((Resp::Array { len, items }, at)))
}

/// A NATS server operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nats<'a> {
    Msg {
        subject: &'a [u8],
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    Err(&'a [u8]),
    Info,
}

/// One NATS operation from the start of `data`, and its length; `Ok(None)`
/// if it is not all there yet.
fn parse_nats(data: &[u8], max_payload: usize) -> io::Result<Option<(Nats<'_>, usize)>> {
    let Some((l, next)) = line(data, 0)? else {
        return Ok(None);
    };
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let op_end = l.iter().position(is_space).unwrap_or(l.len());
    let (op, args) = l.split_at(op_end);
    let op_is = |name: &[u8]| op.eq_ignore_ascii_case(name);
    let frame = if op_is(b"MSG") {
        // MSG <subject> <sid> [reply-to] <#bytes>
        let mut f: [&[u8]; 4] = [&[]; 4];
        let mut n = 0;
        for t in args.split(is_space).filter(|t| !t.is_empty()) {
            if n == f.len() {
                return Err(bad(format!(
                    "a MSG line with too many fields: {:?}",
                    lossy(l)
                )));
            }
            f[n] = t;
            n += 1;
        }
        if n < 3 {
            return Err(bad(format!(
                "a MSG line with too few fields: {:?}",
                lossy(l)
            )));
        }
        let size = parse_len(f[n - 1], max_payload)?;
        return Ok(payload(data, next, size)?.map(|(p, end)| {
            (
                Nats::Msg {
                    subject: f[0],
                    payload: p,
                },
                end,
            )
        }));
    } else if op_is(b"PING") {
        Nats::Ping
    } else if op_is(b"PONG") {
        Nats::Pong
    } else if op_is(b"+OK") {
        Nats::Ok
    } else if op_is(b"-ERR") {
        Nats::Err(args.trim_ascii())
    } else if op_is(b"INFO") {
        Nats::Info
    } else {
        return Err(bad(format!("an unknown NATS operation {:?}", lossy(op))));
    };
    Ok(Some((frame, next)))
}

// ---------------------------------------------------------------- handshakes

/// Reads Redis frames until `want` accepts one; an error reply fails.
fn await_resp(
    s: &mut TcpStream,
    rx: &mut RxBuf,
    addr: SocketAddr,
    what: &str,
    max_payload: usize,
    want: impl Fn(&Resp) -> bool,
) -> io::Result<()> {
    let broker = Broker::Redis;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        while let Some((f, n)) =
            parse_resp(rx.data(), max_payload).map_err(|e| wrap(broker, addr, "bad reply", e))?
        {
            if let Resp::Item(Item::Error(e)) = f {
                return Err(other(broker, addr, format!("{what}: {}", lossy(e))));
            }
            let found = want(&f);
            rx.consume(n);
            if found {
                return Ok(());
            }
        }
        read_more(s, rx, broker, addr, what, deadline)?;
    }
}

/// Reads NATS operations until `want` accepts one, answering PINGs; an
/// `-ERR` fails.
fn await_nats(
    s: &mut TcpStream,
    rx: &mut RxBuf,
    addr: SocketAddr,
    what: &str,
    max_payload: usize,
    deadline: Instant,
    want: impl Fn(&Nats) -> bool,
) -> io::Result<()> {
    let broker = Broker::Nats;
    loop {
        while let Some((f, n)) =
            parse_nats(rx.data(), max_payload).map_err(|e| wrap(broker, addr, "bad frame", e))?
        {
            match f {
                Nats::Err(e) => {
                    return Err(other(broker, addr, format!("{what}: -ERR {}", lossy(e))))
                }
                Nats::Ping => s
                    .write_all(b"PONG\r\n")
                    .map_err(|e| wrap(broker, addr, "answering PING", e))?,
                _ => {}
            }
            let found = want(&f);
            rx.consume(n);
            if found {
                return Ok(());
            }
        }
        read_more(s, rx, broker, addr, what, deadline)?;
    }
}

/// INFO, CONNECT, PING → PONG: the server accepted us.
fn nats_hello(s: &mut TcpStream, rx: &mut RxBuf, addr: SocketAddr, max: usize) -> io::Result<()> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    await_nats(s, rx, addr, "INFO", max, deadline, |f| *f == Nats::Info)?;
    s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
        .map_err(|e| wrap(Broker::Nats, addr, "sending CONNECT", e))?;
    await_nats(s, rx, addr, "PONG to CONNECT", max, deadline, |f| {
        *f == Nats::Pong
    })
}

// ---------------------------------------------------------------- publisher

/// `per_write` copies of one command whose payload is stamped in place.
struct Batch {
    buf: Vec<u8>,
    cmd_len: usize,
    payload_at: usize,
    msg_len: usize,
    key_size: usize,
    per_write: usize,
}

impl Batch {
    /// `head` + payload + `\r\n`, `per_write` times.
    fn new(head: &str, plan: &Plan, per_write: usize) -> Self {
        let msg_len = plan.key_size * plan.keys_per_event;
        let mut cmd = head.as_bytes().to_vec();
        let payload_at = cmd.len();
        cmd.resize(payload_at + msg_len, b'k');
        cmd.extend_from_slice(b"\r\n");
        Batch {
            buf: cmd.repeat(per_write),
            cmd_len: cmd.len(),
            payload_at,
            msg_len,
            key_size: plan.key_size.max(1),
            per_write,
        }
    }

    /// The first `n` commands, stamped `now`.
    fn stamped(&mut self, n: usize, now: u64) -> &[u8] {
        for i in 0..n {
            let at = i * self.cmd_len + self.payload_at;
            for key in self.buf[at..at + self.msg_len].chunks_mut(self.key_size) {
                stamp(key, now);
            }
        }
        &self.buf[..n * self.cmd_len]
    }
}

/// What [`run_plan`] did.
struct Published {
    sent: u64,
    writes: u64,
    start_ns: u64,
}

/// Publishes what is due, up to `per_write` messages a write.
fn run_plan(
    s: &mut TcpStream,
    plan: &Plan,
    batch: &mut Batch,
    broker: Broker,
    addr: SocketAddr,
) -> io::Result<Published> {
    let pacer = Pacer::new(plan);
    let start_ns = mono_ns();
    let (mut sent, mut writes) = (0u64, 0u64);
    loop {
        let n = match pacer.step(plan, sent, batch.per_write as u64) {
            Step::Done => break,
            Step::Wait => {
                pacer.wait_for(sent);
                continue;
            }
            Step::Publish(n) => n as usize,
        };
        let bytes = batch.stamped(n, mono_ns());
        write_counted(s, bytes, &mut writes).map_err(|e| {
            wrap(
                broker,
                addr,
                &format!("publishing (after {sent} messages)"),
                e,
            )
        })?;
        sent += n as u64;
        PROGRESS.store(sent, Ordering::Relaxed);
    }
    Ok(Published {
        sent,
        writes,
        start_ns,
    })
}

/// Publishes `plan` to the broker at `addr`.
pub fn publish(broker: Broker, addr: SocketAddr, plan: &Plan) -> io::Result<PubReport> {
    match broker {
        Broker::Redis => publish_redis(addr, plan),
        Broker::Nats => publish_nats(addr, plan),
    }
}

fn payload_limit(msg_len: usize) -> usize {
    msg_len.max(MIN_PAYLOAD_LIMIT)
}

fn publish_redis(addr: SocketAddr, plan: &Plan) -> io::Result<PubReport> {
    let broker = Broker::Redis;
    let mut s = connect(broker, addr)?;
    let max = payload_limit(0);
    let mut rx = RxBuf::for_payload(max);
    s.write_all(b"*1\r\n$4\r\nPING\r\n")
        .map_err(|e| wrap(broker, addr, "sending PING", e))?;
    await_resp(&mut s, &mut rx, addr, "PONG", max, |f| {
        *f == Resp::Item(Item::Simple(b"PONG"))
    })?;
    let msg_len = plan.key_size * plan.keys_per_event;
    let head = format!(
        "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{SUBJECT}\r\n${msg_len}\r\n",
        SUBJECT.len()
    );
    let cmd_len = head.len() + msg_len + 2;
    let mut batch = Batch::new(&head, plan, (REDIS_FLUSH_BYTES / cmd_len).max(1));

    // The replies (one integer per PUBLISH), read as they come.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let mut r = s.try_clone()?;
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || count_replies(&mut r, rx, addr, &acked, &stop))
    };

    let cpu0 = thread_cpu();
    let result = run_plan(&mut s, plan, &mut batch, broker, addr);
    if let Ok(p) = &result {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while acked.load(Ordering::Relaxed) < p.sent
            && !reader.is_finished()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let end_ns = mono_ns();
    let cpu = thread_cpu() - cpu0;
    stop.store(true, Ordering::Relaxed);
    let reader = reader
        .join()
        .map_err(|_| other(broker, addr, "the reply reader panicked"))?;
    let p = result?;
    let reader_cpu = reader?;
    let acked = acked.load(Ordering::Relaxed);
    if acked < p.sent {
        return Err(other(
            broker,
            addr,
            format!(
                "only {acked} of {} PUBLISH commands were answered within {DRAIN_TIMEOUT:?}",
                p.sent
            ),
        ));
    }
    Ok(PubReport {
        published: p.sent,
        start_ns: p.start_ns,
        end_ns,
        // The reply reader is part of this client's cost.
        cpu_s: cpu + reader_cpu,
        datagrams: p.writes,
    })
}

/// Counts the integer replies to PUBLISH until `stop`; returns its CPU
/// seconds.
fn count_replies(
    s: &mut TcpStream,
    mut rx: RxBuf,
    addr: SocketAddr,
    acked: &AtomicU64,
    stop: &AtomicBool,
) -> io::Result<f64> {
    let broker = Broker::Redis;
    let cpu0 = thread_cpu();
    let max = rx.max;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        while let Some((f, used)) =
            parse_resp(rx.data(), max).map_err(|e| wrap(broker, addr, "bad reply", e))?
        {
            match f {
                Resp::Item(Item::Int(_)) => n += 1,
                Resp::Item(Item::Error(e)) => {
                    return Err(other(broker, addr, format!("PUBLISH failed: {}", lossy(e))))
                }
                f => return Err(other(broker, addr, format!("unexpected reply {f:?}"))),
            }
            rx.consume(used);
        }
        acked.store(n, Ordering::Relaxed);
        match rx.read_from(s) {
            Ok(Some(0)) => {
                return Err(other(
                    broker,
                    addr,
                    format!("closed the connection after {n} replies"),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(wrap(broker, addr, "reading replies", e)),
        }
    }
    Ok(thread_cpu() - cpu0)
}

fn publish_nats(addr: SocketAddr, plan: &Plan) -> io::Result<PubReport> {
    let broker = Broker::Nats;
    let mut s = connect(broker, addr)?;
    let max = payload_limit(0);
    let mut rx = RxBuf::for_payload(max);
    nats_hello(&mut s, &mut rx, addr, max)?;
    let msg_len = plan.key_size * plan.keys_per_event;
    let mut batch = Batch::new(
        &format!("PUB {SUBJECT} {msg_len}\r\n"),
        plan,
        NATS_FLUSH_MSGS,
    );
    let cpu0 = thread_cpu();
    let p = run_plan(&mut s, plan, &mut batch, broker, addr)?;
    // Everything reached the server once it answers a PING sent after it.
    s.write_all(b"PING\r\n")
        .map_err(|e| wrap(broker, addr, "sending the final PING", e))?;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    await_nats(
        &mut s,
        &mut rx,
        addr,
        "PONG after publishing",
        max,
        deadline,
        |f| *f == Nats::Pong,
    )?;
    Ok(PubReport {
        published: p.sent,
        start_ns: p.start_ns,
        end_ns: mono_ns(),
        cpu_s: thread_cpu() - cpu0,
        datagrams: p.writes,
    })
}

// --------------------------------------------------------------- subscriber

/// Subscribes at `addr` until `done`; `ready` once the subscription is
/// confirmed by the broker.
pub fn subscribe(
    broker: Broker,
    addr: SocketAddr,
    msg_len: usize,
    done: &Done,
    ready: impl FnOnce(),
) -> io::Result<Recorder> {
    let mut s = connect(broker, addr)?;
    let max = payload_limit(msg_len);
    let mut rx = RxBuf::for_payload(max);
    match broker {
        Broker::Redis => {
            let cmd = format!(
                "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{SUBJECT}\r\n",
                SUBJECT.len()
            );
            s.write_all(cmd.as_bytes())
                .map_err(|e| wrap(broker, addr, "sending SUBSCRIBE", e))?;
            await_resp(&mut s, &mut rx, addr, "the subscribe reply", max, |f| {
                matches!(f.push(), Some((b"subscribe", Item::Int(_))))
            })?;
        }
        Broker::Nats => {
            nats_hello(&mut s, &mut rx, addr, max)?;
            s.write_all(format!("SUB {SUBJECT} 1\r\nPING\r\n").as_bytes())
                .map_err(|e| wrap(broker, addr, "sending SUB", e))?;
            let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
            await_nats(&mut s, &mut rx, addr, "PONG to SUB", max, deadline, |f| {
                *f == Nats::Pong
            })?;
        }
    }
    let mut rec = Recorder::new();
    ready();
    rec.start();
    let mut now = mono_ns();
    loop {
        // Every complete frame of what was read.
        match broker {
            Broker::Redis => {
                while let Some((f, n)) =
                    parse_resp(rx.data(), max).map_err(|e| wrap(broker, addr, "bad frame", e))?
                {
                    match f.push() {
                        Some((b"message", Item::Bulk(p))) => rec.record(p, now),
                        _ => {
                            if let Resp::Item(Item::Error(e)) = f {
                                return Err(other(broker, addr, format!("error: {}", lossy(e))));
                            }
                        }
                    }
                    rx.consume(n);
                }
            }
            Broker::Nats => {
                while let Some((f, n)) =
                    parse_nats(rx.data(), max).map_err(|e| wrap(broker, addr, "bad frame", e))?
                {
                    match f {
                        Nats::Msg { payload, .. } => rec.record(payload, now),
                        Nats::Ping => s
                            .write_all(b"PONG\r\n")
                            .map_err(|e| wrap(broker, addr, "answering PING", e))?,
                        Nats::Err(e) => {
                            return Err(other(broker, addr, format!("-ERR {}", lossy(e))))
                        }
                        Nats::Pong | Nats::Ok | Nats::Info => {}
                    }
                    rx.consume(n);
                }
            }
        }
        if done.check(&rec) {
            return Ok(rec);
        }
        match rx.read_from(&mut s) {
            Ok(None) => {}
            Ok(Some(0)) => {
                return Err(other(
                    broker,
                    addr,
                    format!(
                        "closed the connection after {} messages ({})",
                        rec.received,
                        broker.disconnect_hint()
                    ),
                ))
            }
            Ok(Some(_)) => now = mono_ns(),
            Err(e) => {
                return Err(wrap(
                    broker,
                    addr,
                    &format!(
                        "receiving (after {} messages; {})",
                        rec.received,
                        broker.disconnect_hint()
                    ),
                    e,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const MAX: usize = 1 << 20;

    fn resp_all(mut data: &[u8]) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        while let Some((f, n)) = parse_resp(data, MAX)? {
            out.push(format!("{f:?}"));
            data = &data[n..];
        }
        assert!(data.is_empty(), "left over: {data:?}");
        Ok(out)
    }

    const REDIS_MSG: &[u8] = b"*3\r\n$7\r\nmessage\r\n$15\r\ncachecast-bench\r\n$5\r\nhello\r\n";

    #[test]
    fn resp_message_and_replies() {
        let (f, n) = parse_resp(REDIS_MSG, MAX).unwrap().unwrap();
        assert_eq!(n, REDIS_MSG.len());
        assert_eq!(f.push(), Some((&b"message"[..], Item::Bulk(b"hello"))));
        let sub = b"*3\r\n$9\r\nsubscribe\r\n$15\r\ncachecast-bench\r\n:1\r\n";
        let (f, _) = parse_resp(sub, MAX).unwrap().unwrap();
        assert_eq!(f.push(), Some((&b"subscribe"[..], Item::Int(1))));
        for (input, want) in [
            (&b":3\r\n"[..], Resp::Item(Item::Int(3))),
            (b":-12\r\n", Resp::Item(Item::Int(-12))),
            (b"+PONG\r\n", Resp::Item(Item::Simple(b"PONG"))),
            (b"-ERR no\r\n", Resp::Item(Item::Error(b"ERR no"))),
            (b"$-1\r\n", Resp::Item(Item::Nil)),
            (b"*-1\r\n", Resp::Item(Item::Nil)),
            (b"$0\r\n\r\n", Resp::Item(Item::Bulk(b""))),
        ] {
            assert_eq!(
                parse_resp(input, MAX).unwrap(),
                Some((want, input.len())),
                "{input:?}"
            );
        }
    }

    #[test]
    fn resp_split_frames() {
        // Every split point: nothing until the whole frame is there.
        for cut in 0..REDIS_MSG.len() {
            assert_eq!(
                parse_resp(&REDIS_MSG[..cut], MAX).unwrap(),
                None,
                "cut {cut}"
            );
        }
        // Payload bytes that look like protocol do not confuse it.
        let tricky = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$6\r\n\r\n:1\r\n\r\n";
        let (f, n) = parse_resp(tricky, MAX).unwrap().unwrap();
        assert_eq!(n, tricky.len());
        assert_eq!(f.push(), Some((&b"message"[..], Item::Bulk(b"\r\n:1\r\n"))));
    }

    #[test]
    fn resp_several_frames_per_read() {
        let mut data = Vec::new();
        for _ in 0..3 {
            data.extend_from_slice(REDIS_MSG);
        }
        data.extend_from_slice(b":7\r\n+OK\r\n");
        let all = resp_all(&data).unwrap();
        assert_eq!(all.len(), 5);
        // Through the receive buffer, in reads of every size.
        for chunk in 1..20 {
            let got = drain_resp(&data, chunk);
            assert_eq!(got, 3, "chunk {chunk}");
        }
    }

    /// Feeds `data` `chunk` bytes a read through an [`RxBuf`] with a small
    /// buffer (so it compacts), counting pub/sub messages.
    fn drain_resp(data: &[u8], chunk: usize) -> usize {
        struct Chunks<'a>(&'a [u8], usize);
        impl Read for Chunks<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(self.1).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut r = Chunks(data, chunk);
        let mut rx = RxBuf::new(4096);
        rx.buf.truncate(64);
        let mut msgs = 0;
        for _ in 0..10_000 {
            while let Some((f, n)) = parse_resp(rx.data(), MAX).unwrap() {
                if let Some((b"message", Item::Bulk(p))) = f.push() {
                    assert_eq!(p, b"hello");
                    msgs += 1;
                }
                rx.consume(n);
            }
            if rx.read_from(&mut r).unwrap() == Some(0) {
                break;
            }
        }
        assert!(rx.data().is_empty());
        msgs
    }

    #[test]
    fn resp_bad_input_is_an_error() {
        for input in [
            &b"$abc\r\n"[..],
            b"$-5\r\n",
            b"*9\r\n",
            b"*-2\r\n",
            b"*1\r\n*1\r\n:1\r\n",
            b"$5\r\nhello!!",
            b"?x\r\n",
            b":1\n",
            b"\r\n",
            b":99999999999999999999\r\n",
            b":-\r\n",
            b"$2000000\r\n",
            b"%1\r\n",
        ] {
            assert!(parse_resp(input, MAX).is_err(), "{input:?}");
        }
        // A line that never ends is an error once it is too long.
        let long = vec![b'+'; MAX_LINE + 1];
        assert!(parse_resp(&long[..MAX_LINE - 1], MAX).unwrap().is_none());
        assert!(parse_resp(&long, MAX).is_err());
        // A bulk string is bounded by the limit given.
        assert!(parse_resp(b"$100\r\n", 99).is_err());
        assert!(parse_resp(b"$100\r\n", 100).unwrap().is_none());
    }

    #[test]
    fn nats_operations() {
        let cases: [(&[u8], Nats); 8] = [
            (
                b"MSG cachecast-bench 1 5\r\nhello\r\n",
                Nats::Msg {
                    subject: b"cachecast-bench",
                    payload: b"hello",
                },
            ),
            (
                b"MSG a\t1  reply.to 3\r\nabc\r\n",
                Nats::Msg {
                    subject: b"a",
                    payload: b"abc",
                },
            ),
            (
                b"msg a 1 0\r\n\r\n",
                Nats::Msg {
                    subject: b"a",
                    payload: b"",
                },
            ),
            (b"PING\r\n", Nats::Ping),
            (b"PONG\r\n", Nats::Pong),
            (b"+OK\r\n", Nats::Ok),
            (b"-ERR 'Slow Consumer'\r\n", Nats::Err(b"'Slow Consumer'")),
            (
                b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n",
                Nats::Info,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_nats(input, MAX).unwrap(),
                Some((want, input.len())),
                "{input:?}"
            );
            for cut in 0..input.len() {
                assert_eq!(
                    parse_nats(&input[..cut], MAX).unwrap(),
                    None,
                    "{input:?} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn nats_several_per_read() {
        let data = b"MSG s 1 2\r\nab\r\nPING\r\nMSG s 1 4\r\nPING\r\nMSG s 1 1\r\nz\r\n";
        let mut rest = &data[..];
        let mut got = Vec::new();
        while let Some((f, n)) = parse_nats(rest, MAX).unwrap() {
            got.push(f);
            rest = &rest[n..];
        }
        assert!(rest.is_empty());
        assert_eq!(
            got,
            [
                Nats::Msg {
                    subject: b"s",
                    payload: b"ab"
                },
                Nats::Ping,
                Nats::Msg {
                    subject: b"s",
                    payload: b"PING"
                },
                Nats::Msg {
                    subject: b"s",
                    payload: b"z"
                },
            ]
        );
    }

    #[test]
    fn nats_bad_input_is_an_error() {
        for input in [
            &b"MSG a 1\r\n"[..],
            b"MSG a 1 r x 5\r\n",
            b"MSG a 1 x\r\n",
            b"MSG a 1 -1\r\n",
            b"MSG a 1 2\r\nabc\r\n",
            b"MSG a 1 2000000\r\n",
            b"HMSG a 1 2 4\r\n",
            b"FOO\r\n",
            b"\r\n",
            b"PING\n",
        ] {
            assert!(parse_nats(input, MAX).is_err(), "{input:?}");
        }
        let long = vec![b'I'; MAX_LINE + 10];
        assert!(parse_nats(&long, MAX).is_err());
    }

    #[test]
    fn rxbuf_growth_is_bounded() {
        let mut rx = RxBuf::new(1000);
        rx.buf.truncate(100);
        let data = vec![b'x'; 5000];
        let mut r = &data[..];
        let mut err = None;
        for _ in 0..100 {
            match rx.read_from(&mut r) {
                Ok(_) => {}
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert_eq!(rx.buf.len(), 1000);
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidData));
    }

    fn done(expect: u64) -> Done {
        Done {
            expect,
            idle: Duration::from_secs(5),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A fake broker on 127.0.0.1: `serve` gets the accepted connection.
    fn fake(serve: impl FnOnce(TcpStream) + Send + 'static) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            serve(s);
        });
        addr
    }

    /// Reads until `needle` was seen (bounded).
    fn read_until(s: &mut TcpStream, needle: &[u8]) {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.windows(needle.len()).any(|w| w == needle) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0 && seen.len() < 1 << 16, "no {needle:?} in {seen:?}");
            seen.extend_from_slice(&buf[..n]);
        }
    }

    /// Keeps the connection open until the client closes it (bounded by
    /// the read timeout): closing first could reset what it has not read.
    fn until_hangup(s: &mut TcpStream) {
        let mut buf = [0u8; 1024];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    }

    fn stamped_msg() -> Vec<u8> {
        let mut m = vec![0u8; 32];
        stamp(&mut m, mono_ns());
        m
    }

    #[test]
    fn nats_subscriber_against_a_fake_server() {
        let addr = fake(|mut s| {
            s.write_all(b"INFO {}\r\n").unwrap();
            read_until(&mut s, b"PING\r\n");
            s.write_all(b"PONG\r\n").unwrap();
            read_until(&mut s, b"SUB cachecast-bench 1\r\nPING\r\n");
            s.write_all(b"PONG\r\n").unwrap();
            let m = stamped_msg();
            // A PING first: it is answered before the messages.
            let mut all = b"PING\r\n".to_vec();
            for _ in 0..3 {
                all.extend_from_slice(b"MSG cachecast-bench 1 32\r\n");
                all.extend_from_slice(&m);
                all.extend_from_slice(b"\r\n");
            }
            // Split across writes at awkward places.
            for part in all.chunks(7) {
                s.write_all(part).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            read_until(&mut s, b"PONG\r\n");
            until_hangup(&mut s);
        });
        let mut readied = false;
        let rec = subscribe(Broker::Nats, addr, 32, &done(3), || readied = true).unwrap();
        assert!(readied);
        assert_eq!(rec.received, 3);
        assert_eq!(rec.datagrams, 0);
        assert!(rec.report().p50_ns > 0);
    }

    #[test]
    fn a_disconnected_redis_subscriber_fails() {
        let addr = fake(|mut s| {
            read_until(&mut s, b"SUBSCRIBE\r\n$15\r\ncachecast-bench\r\n");
            s.write_all(b"*3\r\n$9\r\nsubscribe\r\n$15\r\ncachecast-bench\r\n:1\r\n")
                .unwrap();
            let m = stamped_msg();
            let mut f = b"*3\r\n$7\r\nmessage\r\n$15\r\ncachecast-bench\r\n$32\r\n".to_vec();
            f.extend_from_slice(&m);
            f.extend_from_slice(b"\r\n");
            s.write_all(&f).unwrap();
            // Then the server drops us (as client-output-buffer-limit does).
        });
        let e = subscribe(Broker::Redis, addr, 32, &done(10), || {})
            .err()
            .unwrap();
        let msg = e.to_string();
        assert!(msg.contains("redis at 127.0.0.1"), "{msg}");
        assert!(msg.contains("after 1 messages"), "{msg}");
    }

    #[test]
    fn a_bad_frame_is_an_error_not_a_panic() {
        let addr = fake(|mut s| {
            read_until(&mut s, b"cachecast-bench\r\n");
            s.write_all(b"*3\r\n$9\r\nsubscribe\r\n$15\r\ncachecast-bench\r\n:1\r\n")
                .unwrap();
            s.write_all(b"*3\r\n$7\r\nmessage\r\n$15\r\ncachecast-bench\r\n$999999999\r\n")
                .unwrap();
            until_hangup(&mut s);
        });
        let e = subscribe(Broker::Redis, addr, 32, &done(10), || {})
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[test]
    fn connection_errors_name_the_broker() {
        // A port nothing listens on: bind, note it, close.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = publish(Broker::Nats, addr, &plan()).unwrap_err();
        assert!(e.to_string().contains(&format!("nats at {addr}")), "{e}");
        let e = subscribe(Broker::Redis, addr, 32, &done(1), || {})
            .err()
            .unwrap();
        assert!(e.to_string().contains(&format!("redis at {addr}")), "{e}");
        let far: SocketAddr = "192.0.2.1:6379".parse().unwrap();
        let e = publish(Broker::Redis, far, &plan()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    fn plan() -> Plan {
        Plan {
            events: 10,
            rate: None,
            key_size: 32,
            keys_per_event: 2,
            max_time: Duration::from_secs(5),
        }
    }

    #[test]
    fn batches_are_stamped_in_place() {
        let p = plan();
        let mut b = Batch::new("PUB s 64\r\n", &p, 3);
        let out = b.stamped(2, 0xabc).to_vec();
        assert_eq!(out.len(), 2 * (10 + 64 + 2));
        let (f, n) = parse_nats_pub(&out);
        assert_eq!(n, 76);
        assert_eq!(stamp_of_key(&f[..32]), Some(0xabc));
        assert_eq!(stamp_of_key(&f[32..]), Some(0xabc));
    }

    fn parse_nats_pub(b: &[u8]) -> (&[u8], usize) {
        // A PUB has the layout of a MSG without the sid.
        let l = b.iter().position(|&c| c == b'\n').unwrap() + 1;
        assert_eq!(&b[..l], b"PUB s 64\r\n");
        (&b[l..l + 64], l + 64 + 2)
    }

    fn stamp_of_key(k: &[u8]) -> Option<u64> {
        super::super::common::stamp_of(k)
    }
}
