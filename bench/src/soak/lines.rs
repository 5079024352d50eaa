//! Line-oriented talk between the soak and its child processes: bounded
//! line reading, and a child process asked for samples by numbered
//! requests, every wait with a deadline.
//!
//! The protocol: the parent writes `GO`, `SAMPLE <n>` lines to the child's
//! standard input; the child answers `READY` once, and `SAMPLE <n> <json>`
//! to each request. End of input (the parent closed it, or died) tells the
//! child to finish.

use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest line accepted from a child (a sample carries a histogram).
pub const MAX_LINE: usize = 4 * 1024 * 1024;

/// One line of at most `max` bytes (without its newline), lossily as
/// text; `Ok(None)` at the end of input. A longer line is consumed whole
/// and returned as an error, so the next read starts on the next line.
pub fn read_line(r: &mut impl BufRead, max: usize) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            if line.is_empty() && !too_long {
                return Ok(None);
            }
            break;
        }
        let (chunk, ends) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long && line.len() + chunk.len() <= max {
            line.extend_from_slice(chunk);
        } else {
            too_long = true;
            line.clear();
        }
        let used = ends.unwrap_or(buf.len());
        r.consume(used);
        if ends.is_some() {
            break;
        }
    }
    if too_long {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a line over {max} bytes"),
        ));
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// A child process of the soak (this binary's hidden `soak-pub` or
/// `soak-sub`), killed when dropped.
pub struct ChildProc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    next_id: u64,
}

impl ChildProc {
    /// Starts this binary with `args`; its standard error is inherited.
    pub fn spawn(name: &str, args: &[String]) -> Result<ChildProc, String> {
        let exe = std::env::current_exe().map_err(|e| format!("this binary: {e}"))?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        // A few lines queue at most: the child only answers requests.
        let (tx, lines) = mpsc::sync_channel(16);
        if let Some(out) = stdout {
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(out);
                loop {
                    let line = match read_line(&mut r, MAX_LINE) {
                        Ok(Some(l)) => l,
                        Ok(None) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                            format!("ERROR {e}")
                        }
                        Err(_) => break,
                    };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(ChildProc {
            name: name.to_owned(),
            child,
            stdin,
            lines,
            next_id: 0,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while it runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Writes one line to its standard input.
    pub fn send(&mut self, line: &str) -> Result<(), String> {
        let stdin = (self.stdin.as_mut()).ok_or_else(|| format!("{}: input closed", self.name))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("{}: cannot write to it: {e}", self.name))
    }

    /// Waits (until `deadline`) for a line starting with `prefix`; the
    /// rest of it. Other lines are skipped (late answers to earlier
    /// requests).
    pub fn expect(&mut self, prefix: &str, deadline: Instant) -> Result<String, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return Ok(rest.trim_start().to_owned());
                    }
                    if let Some(e) = l.strip_prefix("ERROR ") {
                        return Err(format!("{}: {e}", self.name));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("{}: no {prefix:?} within the deadline", self.name))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("{}: exited", self.name))
                }
            }
        }
    }

    /// Asks for a sample; its JSON text (answered within `within`).
    pub fn sample(&mut self, within: Duration) -> Result<String, String> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&format!("SAMPLE {id}"))?;
        self.expect(&format!("SAMPLE {id} "), Instant::now() + within)
    }

    /// Closes its standard input (it finishes), waits up to `within` for
    /// it to exit, then kills it.
    pub fn finish(&mut self, within: Duration) {
        self.stdin = None;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_the_next_one_survives() {
        let input = b"READY\r\nSAMPLE 1 {}\nxxxxxxxxxxxxxxxxxxxxxxxx\nlast";
        // A tiny buffer: lines cross fill_buf boundaries.
        let mut r = std::io::BufReader::with_capacity(4, &input[..]);
        assert_eq!(read_line(&mut r, 16).unwrap().as_deref(), Some("READY"));
        assert_eq!(
            read_line(&mut r, 16).unwrap().as_deref(),
            Some("SAMPLE 1 {}")
        );
        let e = read_line(&mut r, 16).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(read_line(&mut r, 16).unwrap().as_deref(), Some("last"));
        assert_eq!(read_line(&mut r, 16).unwrap(), None);
        // Not UTF-8: replaced, not refused.
        let mut r = &b"a\xffb\n"[..];
        assert_eq!(
            read_line(&mut r, 16).unwrap().as_deref(),
            Some("a\u{fffd}b")
        );
        // A line of exactly the limit passes.
        let mut r = &b"0123456789abcdef\n"[..];
        assert_eq!(read_line(&mut r, 16).unwrap().unwrap().len(), 16);
    }
}
