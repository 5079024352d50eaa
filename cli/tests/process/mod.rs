//! Helpers for tests that run the `cachecast` binary: waiting for it with a
//! deadline, and the loopback network options (a fresh group in
//! 239.255.0.0/16 on a free port, interface 127.0.0.1, TTL 0).
#![allow(dead_code)]

use std::io::Read;
use std::net::UdpSocket;
use std::process::{Child, Output};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

/// How long a command may run.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Waits for `child` with a deadline (killing and reaping it, and failing,
/// past it), and collects what it printed.
pub fn finish(mut child: Child) -> Output {
    let pipe = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut v);
            }
            v
        })
    };
    let out = pipe(child.stdout.take().map(|p| Box::new(p) as _));
    let err = pipe(child.stderr.take().map(|p| Box::new(p) as _));
    let end = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cachecast did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `--group` (`group_ip`, or a random one in 239.255.0.0/16, on a free
/// port), `--interface 127.0.0.1`, `--ttl 0` and a fresh `--cluster`.
pub fn loopback(group_ip: Option<&str>) -> Vec<String> {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ip = group_ip.map_or_else(
        || {
            let (a, b) = (rand::random::<u8>(), rand::random::<u8>());
            format!("239.255.{}.{}", a.clamp(1, 254), b.clamp(1, 254))
        },
        str::to_owned,
    );
    vec![
        "--group".into(),
        format!("{ip}:{port}"),
        "--interface".into(),
        "127.0.0.1".into(),
        "--ttl".into(),
        "0".into(),
        "--cluster".into(),
        format!("test-{}", rand::random::<u32>()),
    ]
}

/// A running `cachecast` whose output is read line by line, each wait
/// bounded by [`LIMIT`].
pub struct Running {
    /// The process.
    pub child: Child,
    /// Its standard input (piped), until dropped.
    pub stdin: Option<std::process::ChildStdin>,
    out: std::sync::mpsc::Receiver<String>,
    err: std::sync::mpsc::Receiver<String>,
    /// Every standard output line read so far.
    pub out_seen: Vec<String>,
    /// Every standard error line read so far.
    pub err_seen: Vec<String>,
}

fn lines(pipe: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads lines from `rx`, keeping each in `seen`, until `pred` accepts
/// one; `Timeout` past `end`, `Disconnected` when the stream closed first.
fn next_line(
    rx: &std::sync::mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    end: Instant,
    mut pred: impl FnMut(&str) -> bool,
) -> Result<String, RecvTimeoutError> {
    loop {
        let left = end
            .checked_duration_since(Instant::now())
            .ok_or(RecvTimeoutError::Timeout)?;
        let line = rx.recv_timeout(left)?;
        seen.push(line.clone());
        if pred(&line) {
            return Ok(line);
        }
    }
}

impl Running {
    /// Spawns `cmd` with its three standard streams piped.
    pub fn spawn(cmd: &mut std::process::Command) -> Running {
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = lines(child.stdout.take().unwrap());
        let err = lines(child.stderr.take().unwrap());
        Running {
            stdin: child.stdin.take(),
            child,
            out,
            err,
            out_seen: Vec::new(),
            err_seen: Vec::new(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn context(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.out_seen.join("\n"),
            self.err_seen.join("\n")
        )
    }

    /// Waits for a standard output line that `pred` accepts, parsed as JSON.
    pub fn wait_out(
        &mut self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.wait_out_until(what, Instant::now() + LIMIT, pred)
            .unwrap_or_else(|| panic!("no {what} within {LIMIT:?}; {}", self.context()))
    }

    /// Like [`Running::wait_out`], with a deadline: `None` past it.
    pub fn wait_out_until(
        &mut self,
        what: &str,
        end: Instant,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let mut parsed = None;
        let found = next_line(&self.out, &mut self.out_seen, end, |line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{what}: stdout line {line:?} is not JSON: {e}"));
            let hit = pred(&v);
            parsed = Some(v);
            hit
        });
        match found {
            Ok(_) => parsed,
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                panic!("stdout closed before {what}; {}", self.context())
            }
        }
    }

    /// Waits for a standard output line (any text) that `pred` accepts.
    pub fn wait_text_out(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let found = next_line(&self.out, &mut self.out_seen, Instant::now() + LIMIT, pred);
        found.unwrap_or_else(|e| panic!("no {what} on stdout ({e}); {}", self.context()))
    }

    /// Waits for a standard error line that `pred` accepts.
    pub fn wait_err(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let found = next_line(&self.err, &mut self.err_seen, Instant::now() + LIMIT, pred);
        found.unwrap_or_else(|e| panic!("no {what} on stderr ({e}); {}", self.context()))
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // own child's, not yet reaped (we hold its `Child`).
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "kill");
    }

    /// Stops the process with SIGSTOP and waits (bounded) until every one
    /// of its threads is stopped. `kill` wakes one thread to take the
    /// signal; the others run on until that one starts the group stop,
    /// which on a loaded machine has taken long enough for another thread
    /// to receive and answer a datagram sent after `kill` returned.
    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
        let tasks = format!("/proc/{}/task", self.pid());
        let end = Instant::now() + LIMIT;
        loop {
            // The state follows the command name's closing parenthesis.
            let states: Vec<char> = std::fs::read_dir(&tasks)
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
                .filter_map(|stat| stat.rsplit_once(") ")?.1.chars().next())
                .collect();
            if !states.is_empty() && states.iter().all(|&c| c == 'T') {
                return;
            }
            assert!(
                Instant::now() < end,
                "not every thread stopped within {LIMIT:?}: {states:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits (bounded) for the process to end and for its output to close;
    /// returns its status. Every line is then in `out_seen` / `err_seen`.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let end = Instant::now() + LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "cachecast did not exit within {LIMIT:?}; {}",
                    self.context()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for (rx, seen) in [
            (&self.out, &mut self.out_seen),
            (&self.err, &mut self.err_seen),
        ] {
            loop {
                let left = end.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) => seen.push(line),
                    Err(_) => break,
                }
            }
        }
        status
    }

    /// The standard output lines parsed as JSON.
    pub fn out_json(&self) -> Vec<serde_json::Value> {
        self.out_seen
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed test must not leave the process running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Spawns `cmd` (a `cachecast listen`; its stdout is piped here), waits
/// for its "ready" line, and returns the child and a channel of its later
/// stdout lines, each parsed as JSON.
pub fn start_listen(
    cmd: &mut std::process::Command,
) -> (Child, std::sync::mpsc::Receiver<serde_json::Value>) {
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = lines(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out {
            let v: serde_json::Value =
                serde_json::from_str(&line).expect("listen prints JSON lines");
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let ready = rx.recv_timeout(LIMIT / 2).expect("listen ready");
    assert_eq!(ready["type"], "ready", "{ready}");
    (child, rx)
}

/// Runs `cachecast send NET WHAT...` with `stdin` on its standard input,
/// to its end (bounded by [`LIMIT`]).
pub fn send(net: &[String], what: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_cachecast"))
        .arg("send")
        .args(net)
        .args(what)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    finish(child)
}
