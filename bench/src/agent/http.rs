//! A minimal blocking HTTP/1.1 client over `TcpStream` for the agent
//! benchmark: keep-alive requests (`POST /v1/invalidate`, `GET /readyz`)
//! and one Server-Sent Events stream (`GET /v1/events`).
//!
//! Raw rather than reqwest so that the client costs the shared CPUs as
//! little as possible while it measures the agent. Everything it reads is
//! bounded: header block, body, chunk-size line and event size.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest header block accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body (or one Server-Sent Event) accepted.
const MAX_BODY: usize = 1024 * 1024;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg.into())
}

/// Bytes read from a socket and not consumed yet.
struct Buffered {
    stream: TcpStream,
    buf: Vec<u8>,
    tmp: Box<[u8; 16 * 1024]>,
}

impl Buffered {
    fn new(stream: TcpStream) -> Self {
        Buffered {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            tmp: Box::new([0; 16 * 1024]),
        }
    }

    /// Reads what is there (at least one byte); EOF is an error.
    fn fill(&mut self) -> io::Result<()> {
        let n = self.stream.read(&mut self.tmp[..])?;
        if n == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "the agent closed the connection",
            ));
        }
        self.buf.extend_from_slice(&self.tmp[..n]);
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
    }

    /// Reads a response's status line and headers; the status, the
    /// Content-Length if any and whether the body is chunked.
    fn read_head(&mut self) -> io::Result<Head> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(bad("response header block over 16 KiB"));
            }
            self.fill()?;
        };
        let head = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| bad("response headers are not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|s| s.get(2..5))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let mut h = Head {
            status,
            length: None,
            chunked: false,
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let n: usize = value
                    .parse()
                    .map_err(|_| bad(format!("bad Content-Length {value:?}")))?;
                if n > MAX_BODY {
                    return Err(bad(format!("response body of {n} bytes, over 1 MiB")));
                }
                h.length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                h.chunked = value.to_ascii_lowercase().contains("chunked");
            }
        }
        self.consume(end + 4);
        Ok(h)
    }
}

struct Head {
    status: u16,
    length: Option<usize>,
    chunked: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// One keep-alive connection: requests one after the other.
pub struct Conn {
    io: Buffered,
    req: Vec<u8>,
    body: Vec<u8>,
}

impl Conn {
    /// Connects to `addr`; every read and write waits at most `timeout`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        Ok(Conn {
            io: Buffered::new(connect(addr, timeout)?),
            req: Vec::with_capacity(4096),
            body: Vec::new(),
        })
    }

    /// `POST path` with a JSON body; the response's status (its body is
    /// in [`Conn::body`]).
    pub fn post_json(&mut self, path: &str, body: &[u8]) -> io::Result<u16> {
        self.req.clear();
        write!(
            self.req,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        self.req.extend_from_slice(body);
        self.exchange()
    }

    /// `GET path`; the response's status (its body is in [`Conn::body`]).
    pub fn get(&mut self, path: &str) -> io::Result<u16> {
        self.req.clear();
        write!(self.req, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
        self.exchange()
    }

    /// The body of the last response.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    fn exchange(&mut self) -> io::Result<u16> {
        self.io.stream.write_all(&self.req)?;
        let head = self.io.read_head()?;
        self.body.clear();
        if head.chunked {
            let mut chunks = Chunked::default();
            loop {
                match chunks.decode(&mut self.io.buf, &mut self.body)? {
                    true => break,
                    false if self.body.len() > MAX_BODY => {
                        return Err(bad("response body over 1 MiB"))
                    }
                    false => self.io.fill()?,
                }
            }
        } else {
            let n = head.length.unwrap_or(0);
            while self.io.buf.len() < n {
                self.io.fill()?;
            }
            self.body.extend_from_slice(&self.io.buf[..n]);
            self.io.consume(n);
        }
        Ok(head.status)
    }
}

/// A chunked-body decoder (RFC 9112 §7.1), fed what the socket gave.
#[derive(Default)]
struct Chunked {
    /// Bytes of the current chunk still to come; `None` while a size line
    /// is expected.
    left: Option<usize>,
    /// The CRLF after a chunk's data is expected.
    crlf: bool,
    /// The last chunk was read: trailer lines until an empty one.
    trailers: bool,
}

impl Chunked {
    /// Moves decoded bytes from `raw` to `out`; true once the body ended
    /// (last chunk and trailers consumed: `raw` then holds what follows).
    fn decode(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) -> io::Result<bool> {
        let mut at = 0;
        let done = loop {
            if self.crlf {
                if raw.len() - at < 2 {
                    break false;
                }
                if &raw[at..at + 2] != b"\r\n" {
                    return Err(bad("chunk not followed by CRLF"));
                }
                at += 2;
                self.crlf = false;
            }
            if self.trailers {
                let Some(i) = find(&raw[at..], b"\r\n") else {
                    if raw.len() - at > MAX_HEAD {
                        return Err(bad("trailers over 16 KiB"));
                    }
                    break false;
                };
                at += i + 2;
                if i == 0 {
                    break true;
                }
                continue;
            }
            match self.left {
                None => {
                    let Some(i) = find(&raw[at..], b"\r\n") else {
                        if raw.len() - at > 64 {
                            return Err(bad("chunk-size line over 64 bytes"));
                        }
                        break false;
                    };
                    let line = std::str::from_utf8(&raw[at..at + i])
                        .map_err(|_| bad("chunk-size line not UTF-8"))?;
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let n = usize::from_str_radix(hex, 16)
                        .map_err(|_| bad(format!("bad chunk size {hex:?}")))?;
                    if n > MAX_BODY {
                        return Err(bad(format!("chunk of {n} bytes, over 1 MiB")));
                    }
                    at += i + 2;
                    if n == 0 {
                        self.trailers = true;
                        continue;
                    }
                    self.left = Some(n);
                }
                Some(n) => {
                    let take = n.min(raw.len() - at);
                    if take == 0 {
                        break false;
                    }
                    out.extend_from_slice(&raw[at..at + take]);
                    at += take;
                    if take == n {
                        self.left = None;
                        self.crlf = true;
                    } else {
                        self.left = Some(n - take);
                    }
                }
            }
        };
        raw.drain(..at);
        Ok(done)
    }
}

/// One Server-Sent Event: its `event:` type and its `data:` lines joined.
#[derive(Debug, Default)]
pub struct SseEvent {
    pub kind: String,
    pub data: String,
}

/// A `GET /v1/events` stream.
pub struct Sse {
    io: Buffered,
    chunked: Option<Chunked>,
    /// Decoded body bytes not yet split into lines.
    text: Vec<u8>,
    event: SseEvent,
}

impl Sse {
    /// Opens the stream; reads with `poll` as the longest wait, so that
    /// [`Sse::next_event`] returns `None` when nothing came meanwhile.
    pub fn open(addr: SocketAddr, path: &str, poll: Duration) -> io::Result<Sse> {
        let stream = connect(addr, Duration::from_secs(5))?;
        let mut io = Buffered::new(stream);
        write!(
            io.stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
        )?;
        let head = io.read_head()?;
        if head.status != 200 {
            return Err(bad(format!("GET {path}: status {}", head.status)));
        }
        io.stream.set_read_timeout(Some(poll))?;
        Ok(Sse {
            io,
            chunked: head.chunked.then(Chunked::default),
            text: Vec::new(),
            event: SseEvent::default(),
        })
    }

    /// The next complete event, or `None` if none came within the poll
    /// interval; an error when the stream ended or broke.
    pub fn next_event(&mut self) -> io::Result<Option<SseEvent>> {
        loop {
            while let Some(i) = self.text.iter().position(|&b| b == b'\n') {
                let mut line = &self.text[..i];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                let ev = handle_line(&mut self.event, line)?;
                self.text.drain(..=i);
                if ev.is_some() {
                    return Ok(ev);
                }
            }
            if self.text.len() > MAX_BODY || self.event.data.len() > MAX_BODY {
                return Err(bad("a Server-Sent Event over 1 MiB"));
            }
            match self.io.fill() {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
            match &mut self.chunked {
                Some(c) => {
                    if c.decode(&mut self.io.buf, &mut self.text)? {
                        return Err(io::Error::new(
                            ErrorKind::UnexpectedEof,
                            "the event stream ended",
                        ));
                    }
                }
                None => self.text.append(&mut self.io.buf),
            }
        }
    }
}

/// Handles one line of an event stream; the event when the line ends one.
fn handle_line(event: &mut SseEvent, line: &[u8]) -> io::Result<Option<SseEvent>> {
    if line.is_empty() {
        if event.kind.is_empty() && event.data.is_empty() {
            return Ok(None); // after a comment
        }
        return Ok(Some(std::mem::take(event)));
    }
    let line = std::str::from_utf8(line).map_err(|_| bad("event line not UTF-8"))?;
    let (field, value) = line.split_once(':').unwrap_or((line, ""));
    let value = value.strip_prefix(' ').unwrap_or(value);
    match field {
        "event" => value.clone_into(&mut event.kind),
        "data" => {
            if !event.data.is_empty() {
                event.data.push('\n');
            }
            event.data.push_str(value);
        }
        _ => {} // id, retry, comments
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        // Then the next response on the same connection: left in `raw`.
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-T: 1\r\n\r\nHTTP/1.1";
        let body_end = wire.len() - b"HTTP/1.1".len();
        for split in 0..wire.len() {
            let mut c = Chunked::default();
            let (mut raw, mut out) = (wire[..split].to_vec(), Vec::new());
            let first = c.decode(&mut raw, &mut out).unwrap();
            assert_eq!(first, split >= body_end, "split {split}");
            raw.extend_from_slice(&wire[split..]);
            assert!(
                first || c.decode(&mut raw, &mut out).unwrap(),
                "split {split}"
            );
            assert_eq!(out, b"hello, world", "split {split}");
            assert_eq!(raw, b"HTTP/1.1", "split {split}");
        }
    }

    #[test]
    fn a_chunk_without_its_crlf_is_refused() {
        let mut c = Chunked::default();
        let (mut raw, mut out) = (b"2\r\nabXY0\r\n\r\n".to_vec(), Vec::new());
        assert!(c.decode(&mut raw, &mut out).is_err());
    }
}
