//! The agent under systemd: the unit file passes `systemd-analyze verify`
//! (and scores well in `systemd-analyze security`), and the notify
//! functions send what systemd expects to a socket the test binds.
//!
//! A test binary of its own: the notify functions read `NOTIFY_SOCKET` and
//! `WATCHDOG_*` from the process environment, which this binary alone sets
//! (in one test, so nothing else runs while it changes them).

#[path = "../src/agent/systemd.rs"]
#[allow(dead_code)]
mod systemd;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;

const UNIT: &str = include_str!("../../contrib/systemd/cachecast-agent.service");
const DEADLINE: Duration = Duration::from_secs(10);

/// A fresh directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("cachecast-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The next notification, as text.
async fn next(sock: &UnixDatagram, what: &str) -> String {
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(DEADLINE, sock.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_the_notify_socket() {
    let dir = TempDir::new("notify");
    let path = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();

    // Not under systemd: nothing is sent, no watchdog.
    std::env::remove_var("NOTIFY_SOCKET");
    std::env::remove_var("WATCHDOG_USEC");
    std::env::remove_var("WATCHDOG_PID");
    systemd::ready();
    systemd::status("not sent");
    assert!(systemd::spawn_watchdog().is_none());

    // Under systemd: the first datagram is the first one sent with the
    // variable set (so the READY above went nowhere).
    std::env::set_var("NOTIFY_SOCKET", &path);
    systemd::ready();
    assert_eq!(next(&sock, "READY").await, "READY=1\n");
    systemd::status("joined\ncluster \"shop\"");
    assert_eq!(
        next(&sock, "STATUS").await,
        "STATUS=joined cluster \"shop\"\n"
    );
    systemd::status(&"é".repeat(150));
    let long = next(&sock, "a long STATUS").await;
    assert_eq!(long, format!("STATUS={}\n", "é".repeat(100)));

    // A watchdog for another process (WATCHDOG_PID) is not ours.
    std::env::set_var("WATCHDOG_USEC", "200000");
    std::env::set_var("WATCHDOG_PID", (std::process::id() + 1).to_string());
    assert!(systemd::spawn_watchdog().is_none());
    std::env::set_var("WATCHDOG_USEC", "0");
    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
    assert!(systemd::spawn_watchdog().is_none(), "0 µs is no watchdog");

    // Ours: pings at half of 200 ms, never faster.
    std::env::set_var("WATCHDOG_USEC", "200000");
    assert_eq!(
        systemd::watchdog_interval(),
        Some(Duration::from_millis(100))
    );
    let task = systemd::spawn_watchdog().expect("the watchdog is set");
    let first = {
        assert_eq!(next(&sock, "the first ping").await, "WATCHDOG=1\n");
        Instant::now()
    };
    for i in 0..2 {
        assert_eq!(
            next(&sock, &format!("ping {}", i + 2)).await,
            "WATCHDOG=1\n"
        );
    }
    let span = first.elapsed();
    assert!(
        span >= Duration::from_millis(190),
        "3 pings in {span:?}: faster than every 100 ms"
    );
    task.abort();
    let _ = task.await;

    systemd::stopping();
    // Pings sent just before the abort may still be queued: skip them.
    let end = Instant::now() + DEADLINE;
    loop {
        let msg = next(&sock, "STOPPING").await;
        if msg == "STOPPING=1\n" {
            break;
        }
        assert_eq!(msg, "WATCHDOG=1\n");
        assert!(Instant::now() < end, "no STOPPING");
    }
    std::env::remove_var("NOTIFY_SOCKET");
    std::env::remove_var("WATCHDOG_USEC");
    std::env::remove_var("WATCHDOG_PID");
}

/// Runs `systemd-analyze` (fails, never skips, when it is missing: install
/// systemd).
fn analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze is needed to check the unit (apt-get install systemd)")
}

#[test]
fn the_unit_passes_systemd_analyze_verify_and_security() {
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "Restart=on-failure",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK AF_UNIX\n",
        "ExecStart=/usr/local/bin/cachecast agent --config /etc/cachecast/agent.toml\n",
    ] {
        assert!(UNIT.contains(line), "the unit lacks {line:?}");
    }
    // verify checks that ExecStart's binary exists: point it at the one
    // cargo built.
    let dir = TempDir::new("unit");
    let unit = dir.0.join("cachecast-agent.service");
    let bin = env!("CARGO_BIN_EXE_cachecast");
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/cachecast", bin)).unwrap();
    let unit = unit.to_str().unwrap();

    let out = analyze(&["verify", unit]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown keys and bad values are warnings with exit code 0: any
    // output at all fails.
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );

    let out = analyze(&["security", "--offline=yes", unit]);
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let exposure: f64 = said
        .split("Overall exposure level for ")
        .nth(1)
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{said}"));
    // 0 is perfect, 10 unprotected; systemd calls below 2 "OK".
    assert!(exposure < 2.0, "exposure {exposure}:\n{said}");
}
