//! Helpers for tests that run the `cachecast` binary: waiting for it with a
//! deadline, and the loopback network options (a fresh group in
//! 239.255.0.0/16 on a free port, interface 127.0.0.1, TTL 0).
#![allow(dead_code)]

use std::io::Read;
use std::net::UdpSocket;
use std::process::{Child, Output};
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
