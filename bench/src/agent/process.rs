//! An agent under test: the real `cachecast agent` binary started on
//! loopback (HTTP on 127.0.0.1, multicast on interface 127.0.0.1 with TTL
//! 0), and what `/proc` says about it (CPU, resident memory).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long an agent may take to print that it is ready.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// Where the agent binary is: `--cachecast`, else `cachecast` next to this
/// binary (both are built into target/release).
pub fn find_binary(given: Option<&Path>) -> Result<PathBuf, String> {
    let path = match given {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this binary's directory: {e}"))?
            .with_file_name("cachecast"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no agent binary at {} (build it with `cargo build --release -p cachecast-cli`, \
             or name it with --cachecast / CACHECAST_BIN)",
            path.display()
        ))
    }
}

/// A free TCP port on 127.0.0.1 (the kernel's pick; free when checked).
pub fn free_tcp_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

/// Where to run the agents: one multicast group and port for all of them,
/// and a cluster name of this run's own.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub group: SocketAddr,
    pub name: String,
}

/// A running agent, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Agent {
    pub label: &'static str,
    pub http: SocketAddr,
    pub pid: u32,
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// Starts `bin agent` and waits until it prints `{"ready":true,...}`.
    /// `config` is a TOML file for what has no environment variable (the
    /// appliers); its log (standard error) goes to `log`.
    pub fn start(
        bin: &Path,
        label: &'static str,
        cluster: &Cluster,
        config: Option<&Path>,
        log: PathBuf,
    ) -> Result<Agent, String> {
        let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
        let err = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("agent");
        // SIGTERM when the thread that started it ends, this process
        // killed outright included: no agent outlives the bench. (Both
        // benches start and stop their agents on one thread.)
        // SAFETY: the closure runs in the child between fork and exec and
        // only calls prctl(2), which is async-signal-safe and touches no
        // memory of the parent.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        // Only what the bench sets: no token or other setting of the
        // caller's environment changes what is measured.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CACHECAST_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("CACHECAST_HTTP_LISTEN", http.to_string())
            .env("CACHECAST_INTERFACE", "127.0.0.1")
            .env("CACHECAST_TTL", "0")
            .env("CACHECAST_GROUP", cluster.group.to_string())
            .env("CACHECAST_CLUSTER", &cluster.name)
            .env("CACHECAST_NAME", format!("bench-{label}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Reads to the end, so the agent never blocks on its stdout.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("\"ready\":true") {
                    let _ = tx.send(());
                }
            }
        });
        let mut agent = Agent {
            label,
            http,
            pid,
            child,
            log,
        };
        match rx.recv_timeout(READY_WITHIN) {
            Ok(()) => Ok(agent),
            Err(e) => {
                let why = match agent.child.try_wait() {
                    Ok(Some(status)) => format!("exited ({status})"),
                    _ if e == mpsc::RecvTimeoutError::Timeout => {
                        format!("not ready within {READY_WITHIN:?}")
                    }
                    _ => "closed its standard output before it was ready".into(),
                };
                Err(format!(
                    "agent {label} {why}; the end of its log ({}):\n{}",
                    agent.log.display(),
                    agent.log_tail(10)
                ))
            }
        }
    }

    /// The last `n` lines of its log, indented.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| format!("    {l}\n"))
            .collect()
    }

    /// True while it runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// CPU seconds (user + system) it used so far.
    pub fn cpu_s(&self) -> f64 {
        proc_cpu_s(self.pid).unwrap_or(0.0)
    }

    /// Resident memory now (`VmRSS`), KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid, "VmRSS:").unwrap_or(0)
    }

    /// Peak resident memory (`VmHWM`), KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid, "VmHWM:").unwrap_or(0)
    }

    /// SIGTERM, then SIGKILL if it has not exited within `within`; its exit
    /// status (`None` if it had to be killed).
    pub fn stop(mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.stop_inner(within)
    }

    fn stop_inner(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        let pid = libc::pid_t::try_from(self.pid).unwrap_or(0);
        if pid > 0 {
            // SAFETY: plain kill(2) on our own child, which is not reaped
            // yet (try_wait above), so the pid is still its.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop_inner(Duration::from_secs(5));
    }
}

/// utime + stime of a process, seconds (`/proc/<pid>/stat`).
fn proc_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| (utime + stime) as f64 / hz as f64)
}

/// A `kB` line of `/proc/<pid>/status`.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        let t0 = proc_cpu_s(pid).expect("/proc/self/stat parses");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut x = 0u64;
        while proc_cpu_s(pid).unwrap_or(0.0) <= t0 && Instant::now() < deadline {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
        }
        assert!(proc_cpu_s(pid).unwrap() > t0, "CPU time never advanced");
        assert!(proc_status_kib(pid, "VmRSS:").unwrap() > 100);
        let rss = proc_status_kib(pid, "VmRSS:").unwrap();
        assert!(proc_status_kib(pid, "VmHWM:").unwrap() >= rss);
    }
}
