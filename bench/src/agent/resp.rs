//! A minimal blocking Redis client (RESP2) for the agent benchmark: the
//! commands it sends (SET, CONFIG, SUBSCRIBE) and the keyspace
//! notifications it reads. Replies are bounded in size and depth.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest bulk string, and most elements of an array, accepted.
const MAX_BULK: usize = 1024 * 1024;
const MAX_ARRAY: usize = 1024;
const MAX_DEPTH: usize = 4;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg.into())
}

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The error text if this is an error reply.
    pub fn err(&self) -> Option<&str> {
        match self {
            Reply::Error(e) => Some(e),
            _ => None,
        }
    }
}

/// One connection.
pub struct Redis {
    stream: TcpStream,
    buf: Vec<u8>,
    at: usize,
    out: Vec<u8>,
}

impl Redis {
    /// Connects to `addr`; reads wait at most `timeout`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Redis> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Redis {
            stream,
            buf: Vec::with_capacity(4096),
            at: 0,
            out: Vec::with_capacity(256),
        })
    }

    /// Changes the longest wait of a read (for a subscriber that polls).
    pub fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(t))
    }

    /// Sends one command (without reading its reply).
    pub fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        self.out.clear();
        write!(self.out, "*{}\r\n", args.len())?;
        for a in args {
            write!(self.out, "${}\r\n", a.len())?;
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&self.out)
    }

    /// Sends one command and reads its reply; an error reply is an error.
    pub fn command(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.send(args)?;
        let r = self.read()?;
        match r.err() {
            Some(e) => Err(io::Error::other(format!(
                "redis {}: {e}",
                String::from_utf8_lossy(args.first().copied().unwrap_or_default())
            ))),
            None => Ok(r),
        }
    }

    /// Reads one reply (waiting at most the read timeout for its first
    /// byte: `WouldBlock` / `TimedOut` then).
    pub fn read(&mut self) -> io::Result<Reply> {
        loop {
            if let Some((r, used)) = parse(&self.buf[self.at..], 0)? {
                self.at += used;
                if self.at == self.buf.len() {
                    self.buf.clear();
                    self.at = 0;
                }
                return Ok(r);
            }
            if self.buf.len() - self.at > 2 * MAX_BULK {
                return Err(bad("a Redis reply over 2 MiB"));
            }
            if self.at > 0 {
                self.buf.drain(..self.at);
                self.at = 0;
            }
            let mut tmp = [0u8; 8192];
            let n = self.stream.read(&mut tmp)?;
            if n == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "redis closed the connection",
                ));
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }
}

/// Parses one reply at the start of `b`: the reply and the bytes it took,
/// or `None` if it is not complete yet.
fn parse(b: &[u8], depth: usize) -> io::Result<Option<(Reply, usize)>> {
    if depth > MAX_DEPTH {
        return Err(bad("Redis reply nested too deep"));
    }
    let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
        if b.len() > 64 * 1024 {
            return Err(bad("Redis reply line over 64 KiB"));
        }
        return Ok(None);
    };
    let Some((&kind, line)) = b[..eol].split_first() else {
        return Err(bad("empty Redis reply line"));
    };
    let text = || String::from_utf8_lossy(line).into_owned();
    let int = || -> io::Result<i64> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad Redis integer {:?}", text())))
    };
    let head = eol + 2;
    Ok(Some(match kind {
        b'+' => (Reply::Status(text()), head),
        b'-' => (Reply::Error(text()), head),
        b':' => (Reply::Int(int()?), head),
        b'$' => {
            let n = int()?;
            if n < 0 {
                (Reply::Bulk(None), head)
            } else {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n > MAX_BULK {
                    return Err(bad(format!("Redis bulk string of {n} bytes")));
                }
                if b.len() < head + n + 2 {
                    return Ok(None);
                }
                (Reply::Bulk(Some(b[head..head + n].to_vec())), head + n + 2)
            }
        }
        b'*' => {
            let n = int()?;
            if n < 0 {
                (Reply::Array(None), head)
            } else {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n > MAX_ARRAY {
                    return Err(bad(format!("Redis array of {n} elements")));
                }
                let mut items = Vec::with_capacity(n);
                let mut at = head;
                for _ in 0..n {
                    match parse(&b[at..], depth + 1)? {
                        Some((r, used)) => {
                            items.push(r);
                            at += used;
                        }
                        None => return Ok(None),
                    }
                }
                (Reply::Array(Some(items)), at)
            }
        }
        other => return Err(bad(format!("unknown Redis reply type {:?}", other as char))),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pubsub_message_parses_only_once_complete() {
        let wire = b"*3\r\n$7\r\nmessage\r\n$18\r\n__keyevent@0__:del\r\n$3\r\nk:1\r\n";
        for cut in 0..wire.len() {
            assert_eq!(parse(&wire[..cut], 0).unwrap(), None, "cut at {cut}");
        }
        let (r, used) = parse(wire, 0).unwrap().unwrap();
        assert_eq!(used, wire.len());
        let Reply::Array(Some(items)) = r else {
            panic!("not an array: {r:?}")
        };
        assert_eq!(items[0], Reply::Bulk(Some(b"message".to_vec())));
        assert_eq!(items[2], Reply::Bulk(Some(b"k:1".to_vec())));
    }

    #[test]
    fn hostile_sizes_are_refused() {
        assert!(parse(b"$99999999999\r\n", 0).is_err());
        assert!(parse(b"*5000\r\n", 0).is_err());
        assert!(parse(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", 0).is_err());
    }
}
