//! How the `cachecast` binary stops, on loopback (interface 127.0.0.1, TTL
//! 0): SIGTERM is a clean stop (Goodbye, linger, stats, exit 0) for
//! `listen` and `send`, and `listen` can end with its standard input or its
//! parent.

use crate::process;
use process::{loopback, Running};

use std::process::{Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cachecast");

/// `cachecast listen` on `net` with `extra` flags and debug logs of the
/// library, once it printed its "ready" line; returns it and its stream id.
fn listener(net: &[String], extra: &[&str]) -> (Running, String) {
    let mut l = Running::spawn(
        Command::new(BIN)
            .arg("listen")
            .args(net)
            .args(extra)
            .env("RUST_LOG", "cachecast=debug"),
    );
    let ready = l.wait_out("the ready line", |v| v["type"] == "ready");
    let stream = ready["stream"].as_str().unwrap().to_owned();
    assert_eq!(stream.len(), 16, "{ready}");
    (l, stream)
}

/// True for a debug log line of the library that says `what` about `stream`.
fn log_of(line: &str, what: &str, stream: &str) -> bool {
    line.contains(what) && line.contains(&format!("stream={stream}"))
}

fn stats_of(l: &Running) -> Value {
    l.out_json()
        .into_iter()
        .find(|v| v["type"] == "stats")
        .unwrap_or_else(|| panic!("no stats line: {:?}", l.out_seen))
}

#[test]
fn sigterm_stops_listen_cleanly_and_the_others_see_it_leave_without_a_reset() {
    let net = loopback(None);
    let (mut other, _) = listener(&net, &["--stats"]);
    let (mut stopped, stream) = listener(&net, &["--stats"]);
    // A listener is receive-only: the other meets it but does not follow
    // its stream (nothing to lose there).
    other.wait_err("the other listener meeting the listener", |l| {
        log_of(l, "receive-only node joined", &stream)
    });

    stopped.signal(libc::SIGTERM);
    let status = stopped.wait_exit();
    assert_eq!(status.code(), Some(0), "{status}: {:?}", stopped.err_seen);
    let stats = stats_of(&stopped);
    assert!(stats["hellos_sent"].as_u64().unwrap() > 0, "{stats}");
    // Its Goodbye reaches the other listener.
    other.wait_err("the other listener seeing it leave", |l| {
        log_of(l, "receive-only node left (Goodbye)", &stream)
    });

    other.signal(libc::SIGTERM);
    assert_eq!(other.wait_exit().code(), Some(0));
    let stats = stats_of(&other);
    assert_eq!(stats["resets"], serde_json::json!({}), "{stats}");
    assert_eq!(stats["streams_timed_out"], 0, "{stats}");
    assert!(
        stats["receive_only_heard"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    assert_eq!(stats["streams"], 0, "{stats}");
    assert!(
        !other.out_json().iter().any(|v| v["type"] == "reset"),
        "{:?}",
        other.out_seen
    );
}

#[test]
fn sigterm_while_send_lingers_finishes_the_linger_and_exits_0() {
    let net = loopback(None);
    let (mut l, _) = listener(&net, &[]);
    let mut send = Running::spawn(Command::new(BIN).arg("send").args(&net).args([
        "--linger",
        "1s",
        "invalidate",
        "k1",
    ]));
    let event = l.wait_out("the sent event", |v| v["keys"] == serde_json::json!(["k1"]));
    let stream = event["stream"].as_str().unwrap().to_owned();

    // Published: `send` is now saying Goodbye and lingering.
    send.signal(libc::SIGTERM);
    let status = send.wait_exit();
    assert_eq!(status.code(), Some(0), "{status}: {:?}", send.err_seen);
    l.wait_err("the listener seeing the stream end", |line| {
        log_of(line, "stream ended (Goodbye)", &stream)
    });
}

#[test]
fn listen_exits_cleanly_when_its_stdin_closes_with_exit_on_stdin_close() {
    let net = loopback(None);
    let (mut l, _) = listener(&net, &["--exit-on-stdin-close", "--stats"]);
    drop(l.stdin.take());
    let status = l.wait_exit();
    assert_eq!(status.code(), Some(0), "{status}: {:?}", l.err_seen);
    stats_of(&l);
}

#[test]
fn listen_exits_with_its_parent_when_asked() {
    let net = loopback(None);
    // A shell as the parent: it starts the listener, says its pid, and
    // waits for it.
    let mut parent = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" listen "$@" & echo "pid $!"; wait"#)
        .arg(BIN)
        .args(&net)
        .args(["--exit-with-parent", "--stats"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = parent.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut first = Vec::new();
    for _ in 0..2 {
        first.push(
            rx.recv_timeout(process::LIMIT)
                .expect("the pid and ready lines"),
        );
    }
    let pid: i32 = first
        .iter()
        .find_map(|l| l.strip_prefix("pid "))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{first:?}"));
    assert!(first.iter().any(|l| l.contains("\"ready\"")), "{first:?}");
    // Should the listener outlive the test, it is killed.
    struct Reap(i32);
    impl Drop for Reap {
        fn drop(&mut self) {
            // SAFETY: kill has no memory-safety preconditions. The pid is
            // the listener's; if it exited it is a zombie until its new
            // parent reaps it, or (once reaped) not reused this quickly.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _reap = Reap(pid);

    parent.kill().unwrap();
    parent.wait().unwrap();
    // The listener stops cleanly (stats line) and its output closes: it
    // ended, although nobody signalled it but the kernel.
    let mut rest = Vec::new();
    let end = std::time::Instant::now() + process::LIMIT;
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => rest.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!(
                    "the listener outlived its parent by {:?}: {rest:?}",
                    process::LIMIT
                )
            }
        }
    }
    assert!(
        rest.iter().any(|l| l.contains("\"type\":\"stats\"")),
        "{rest:?}"
    );
}

#[test]
fn sigterm_stops_the_demo_between_scenes_with_goodbyes() {
    let mut demo = Running::spawn(Command::new(BIN).args(["demo", "--seed", "1"]));
    // The demo prints text, not JSON: wait for its first line by hand.
    let first = demo.wait_text_out("the demo's first line", |l| l.starts_with("cachecast demo"));
    assert!(first.contains("loopback"), "{first}");
    demo.signal(libc::SIGTERM);
    let status = demo.wait_exit();
    assert_eq!(status.code(), Some(1), "{status}: {:?}", demo.out_seen);
    let err = demo.err_seen.join("\n");
    assert!(
        err.contains("stopped by SIGTERM before the verdict"),
        "{err}"
    );
    assert!(!demo.out_seen.iter().any(|l| l.starts_with("verdict")));
}

/// A reader that stops reading (a stalled pipe) must not keep `listen`
/// from stopping: SIGTERM still says Goodbye and exits, within the 2 s it
/// gives the reader plus the linger.
#[test]
fn sigterm_stops_listen_even_when_its_reader_stopped_reading() {
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    let net = loopback(None);
    let mut child = Command::new(BIN)
        .arg("listen")
        .args(&net)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The ready line is read; nothing after it ever is.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    assert!(ready.contains("\"ready\""), "{ready}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let publisher = rt
        .block_on(cachecast::Node::join(cachecast::NodeConfig {
            group: net[1].parse().unwrap(),
            cluster: net[7].clone(),
            ..cachecast::NodeConfig::loopback("")
        }))
        .unwrap();
    // Far more than the pipe (64 KiB) and the listener's queue hold.
    let key = "k".repeat(200);
    let mut batch = cachecast::EventBatch::new();
    for i in 0..4000 {
        batch.invalidate(&[&format!("{key}{i}")]).unwrap();
    }
    rt.block_on(publisher.publish_batch(&mut batch)).unwrap();
    // Wait until the pipe is full: the listener is now blocked on its reader.
    let fd = stdout.get_ref().as_raw_fd();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD on our own pipe's read end, into a c_int.
        unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) };
        if queued >= 60 * 1024 {
            break;
        }
        assert!(
            Instant::now() < end,
            "the pipe never filled ({queued} bytes)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopped = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "listen did not stop while its reader stalled"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0), "{status}");
    drop(stdout);
    rt.block_on(publisher.shutdown());
}
