//! Real cache servers for tests: `redis-server` and `memcached` started on
//! a free loopback port, waited for until they answer (with a deadline),
//! stopped by PID on drop, and restartable on the same port (a server
//! "down for 2 s").
//!
//! Standard library only, so that `cli/tests/` can include this same file
//! with `#[path = "../src/agent/testservers.rs"] mod testservers;`.
//! A missing binary is a test failure that says what to install, never a
//! skip.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer after its start.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Memcached,
}

/// A running (or stopped) server of the test; killed by PID on drop.
pub struct TestServer {
    kind: Kind,
    port: u16,
    child: Option<Child>,
    /// Redis' working directory (its `dump.rdb`), this server's own: a
    /// restart loads what [`TestServer::save`] wrote, and nothing else's.
    dir: std::path::PathBuf,
}

impl TestServer {
    /// `redis-server --port <free> --save '' --appendonly no` on 127.0.0.1.
    pub fn redis() -> TestServer {
        TestServer::start_new(Kind::Redis)
    }

    /// `memcached -l 127.0.0.1 -p <free> -U 0`.
    pub fn memcached() -> TestServer {
        TestServer::start_new(Kind::Memcached)
    }

    fn start_new(kind: Kind) -> TestServer {
        // A free port can be taken by someone else between our probe and
        // the server's bind: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!(
                "cachecast-test-{kind:?}-{}-{port}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            if let Err(e) = std::fs::create_dir_all(&dir) {
                panic!("cannot create {}: {e}", dir.display());
            }
            let mut s = TestServer {
                kind,
                port,
                child: None,
                dir,
            };
            match s.try_start() {
                Ok(()) => return s,
                Err(e) => last = e,
            }
        }
        panic!("cannot start {kind:?}: {last}");
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its PID while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `redis://127.0.0.1:<port>/0` or `memcache://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}/0", self.port),
            Kind::Memcached => format!("memcache://127.0.0.1:{}", self.port),
        }
    }

    /// Kills it (SIGKILL, by PID) and reaps it; the port stays ours to
    /// [`TestServer::restart`] on.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Redis: `SAVE` now, so that a [`TestServer::restart`] comes back
    /// with this data (a persistent Redis restarted with stale keys).
    pub fn save(&self) {
        assert_eq!(self.kind, Kind::Redis, "only Redis persists");
        let answer = self.request(b"SAVE\r\n", b"\r\n").expect("SAVE");
        assert!(
            answer.starts_with(b"+OK"),
            "SAVE: {}",
            String::from_utf8_lossy(&answer)
        );
    }

    /// Starts it again on the same port and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        // The port was just released; a few tries cover a slow release.
        let mut last = String::new();
        for _ in 0..5 {
            match self.try_start() {
                Ok(()) => return,
                Err(e) => last = e,
            }
        }
        panic!(
            "cannot restart {:?} on port {}: {last}",
            self.kind, self.port
        );
    }

    /// One request and its answer, read until `until` appears in it (or
    /// an error after a few seconds).
    pub fn request(&self, req: &[u8], until: &[u8]) -> std::io::Result<Vec<u8>> {
        request(self.port, req, until, Duration::from_secs(5))
    }

    fn try_start(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            Kind::Redis => {
                let mut c = Command::new("redis-server");
                c.args([
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]);
                c.arg("--dir").arg(&self.dir);
                c
            }
            Kind::Memcached => {
                let mut c = Command::new("memcached");
                c.args(["-l", "127.0.0.1", "-p", &port, "-U", "0"]);
                if running_as_root() {
                    // memcached refuses to run as root without -u.
                    c.args(["-u", "root"]);
                }
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let name = match self.kind {
            Kind::Redis => "redis-server (apt-get install redis-server)",
            Kind::Memcached => "memcached (apt-get install memcached)",
        };
        let child = cmd.spawn().map_err(|e| format!("{name}: {e}"))?;
        self.child = Some(child);
        let (req, want): (&[u8], &[u8]) = match self.kind {
            Kind::Redis => (b"PING\r\n", b"+PONG"),
            Kind::Memcached => (b"version\r\n", b"VERSION"),
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(format!("{name} exited at start ({status}) on port {port}"));
                }
            }
            if let Ok(answer) = request(self.port, req, want, Duration::from_millis(500)) {
                if answer.windows(want.len()).any(|w| w == want) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "{name} did not answer on port {port} within {START_DEADLINE:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Sends `req` to 127.0.0.1:`port` and reads until `until` is in the
/// answer (bounded: 64 KiB, `timeout` per read).
pub fn request(port: u16, req: &[u8], until: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(req)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < 64 << 10 {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(until.len().max(1)).any(|w| w == until) {
            break;
        }
    }
    Ok(out)
}

/// True when this process runs as root (the owner of /proc/self).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}
