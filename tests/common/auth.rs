//! Helpers shared by the loopback tests of authenticated datagrams: key
//! files in a directory of their own under /tmp (removed after), a capture
//! of everything sent to a test's group, readers of subscriptions, and
//! waits on counters with a deadline.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cachecast::keys;
use cachecast::testkit::Loopback;
use cachecast::wire::{self, Event};
use cachecast::{AuthMode, Delivery, Node, NodeConfig, Stats, Subscription};
use tokio::time::Instant;

/// How long any wait of these tests may take.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A directory for one test's key files, mode 0700, removed when dropped.
pub struct KeyDir(PathBuf);

impl KeyDir {
    pub fn new() -> KeyDir {
        let dir = PathBuf::from(format!(
            "/tmp/cachecast-authtest-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .expect("create the key directory");
        KeyDir(dir)
    }

    /// Where the key file of `name` goes.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.key"))
    }

    /// A new key file for `name` (`keys::write_new`): its path and key id.
    pub fn new_key(&self, name: &str) -> (PathBuf, u32) {
        let path = self.path(name);
        let id = keys::write_new(&path).expect("write a key file");
        assert_private(&path);
        (path, id)
    }

    /// A copy of the key file `from` for `name` (as an operator copies the
    /// cluster's key file to each server).
    pub fn copy(&self, from: &Path, name: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::copy(from, &path).expect("copy a key file");
        assert_private(&path);
        path
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A key file must be mode 0600.
pub fn assert_private(path: &Path) {
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
}

/// The configuration of node `name` at `place` with `key_file` and `auth`.
pub fn keyed(place: &Loopback, name: &str, key_file: &Path, auth: Option<AuthMode>) -> NodeConfig {
    NodeConfig {
        key_file: Some(key_file.to_owned()),
        auth,
        ..place.config(name)
    }
}

pub async fn join(cfg: NodeConfig) -> Node {
    Node::join(cfg).await.expect("join")
}

/// This host's clock, ms since the Unix epoch (what trailers carry).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Drops counted for `reason`.
pub fn dropped(s: &Stats, reason: &str) -> u64 {
    s.dropped.get(reason).copied().unwrap_or(0)
}

/// Every `auth_*` drop counter of `s` that is not zero.
pub fn auth_drops(s: &Stats) -> Vec<(&'static str, u64)> {
    s.dropped
        .iter()
        .filter(|(k, v)| k.starts_with("auth_") && **v > 0)
        .map(|(k, v)| (*k, *v))
        .collect()
}

/// Waits until `node` has counted exactly `want` drops for `reason`
/// (failing at once if it counts more, or after the deadline).
pub async fn wait_dropped(node: &Node, reason: &str, want: u64) {
    let end = Instant::now() + DEADLINE;
    loop {
        let s = node.stats().await.protocol;
        let got = dropped(&s, reason);
        assert!(
            got <= want,
            "{reason}: {got} counted, {want} expected: {:?}",
            s.dropped
        );
        if got == want {
            return;
        }
        assert!(
            Instant::now() < end,
            "timed out: {reason} at {got} of {want}: {:?}",
            s.dropped
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `cond` holds, failing after the deadline with `what`.
pub async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond().await {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A node's subscription and everything read from it.
pub struct Reader {
    sub: Subscription,
    pub got: Vec<Delivery>,
}

impl Reader {
    /// Reads `node`'s first subscription (everything since its join).
    pub fn new(node: &Node) -> Reader {
        Reader {
            sub: node.subscribe(),
            got: Vec::new(),
        }
    }

    /// Reads until `done` holds of what was read, failing after the
    /// deadline.
    pub async fn until(&mut self, what: &str, done: impl Fn(&Reader) -> bool) {
        let end = Instant::now() + DEADLINE;
        while !done(self) {
            match tokio::time::timeout_at(end, self.sub.recv()).await {
                Ok(Some(d)) => self.got.push(d),
                Ok(None) => panic!("the subscription ended while waiting for {what}"),
                Err(_) => panic!(
                    "timed out waiting for {what}: read {} deliveries, {} resets",
                    self.got.len(),
                    self.resets()
                ),
            }
        }
    }

    /// Reads what is there now.
    pub fn drain(&mut self) {
        while let Some(d) = self.sub.try_recv() {
            self.got.push(d);
        }
    }

    /// The invalidated keys read of `stream`, in order.
    pub fn keys(&self, stream: u64) -> Vec<String> {
        self.got
            .iter()
            .filter_map(|d| match d {
                Delivery::Event {
                    stream: s, event, ..
                } if *s == stream => match event.to_event() {
                    Event::Invalidate { keys } => Some(keys),
                    _ => None,
                },
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Events read of every stream.
    pub fn events(&self) -> usize {
        self.got
            .iter()
            .filter(|d| matches!(d, Delivery::Event { .. }))
            .count()
    }

    /// Resets read.
    pub fn resets(&self) -> usize {
        self.got
            .iter()
            .filter(|d| matches!(d, Delivery::Reset { .. }))
            .count()
    }
}

/// `prefix-0` … `prefix-{n-1}`.
pub fn named(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Publishes `prefix-0` … `prefix-{n-1}` from `node`, one event each.
pub async fn publish(node: &Node, prefix: &str, n: usize) {
    for key in named(prefix, n) {
        node.invalidate([key]).await.expect("publish");
    }
}

/// Everything sent to a test's group, as read by a plain socket joined to
/// it on 127.0.0.1 (the datagrams of every node, its own included, and
/// whatever `Loopback::send_raw` sends).
pub struct Capture {
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Datagrams a capture keeps at most.
const MAX_CAPTURED: usize = 100_000;

impl Capture {
    pub fn start(place: &Loopback) -> Capture {
        use socket2::{Domain, Protocol, Socket, Type};
        let SocketAddr::V4(group) = place.group() else {
            panic!("loopback places are IPv4")
        };
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_reuse_port(true).unwrap();
        // Bound to the group's address: only datagrams sent to it.
        s.bind(&SocketAddr::V4(group).into()).unwrap();
        s.join_multicast_v4(group.ip(), &Ipv4Addr::LOCALHOST)
            .unwrap();
        let _ = s.set_recv_buffer_size(8 << 20);
        let sock: UdpSocket = s.into();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (got, stop) = (got.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::SeqCst) {
                    match sock.recv(&mut buf) {
                        Ok(n) => {
                            let mut g = got.lock().unwrap();
                            assert!(g.len() < MAX_CAPTURED, "capture overflow");
                            g.push(buf[..n].to_vec());
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => panic!("capture: {e}"),
                    }
                }
            })
        };
        Capture {
            got,
            stop,
            thread: Some(thread),
        }
    }

    /// Everything captured so far.
    pub fn all(&self) -> Vec<Vec<u8>> {
        self.got.lock().unwrap().clone()
    }

    /// What was captured so far of `stream` (by its header, in cluster
    /// `cluster`).
    pub fn of(&self, cluster: &str, stream: u64) -> Vec<Vec<u8>> {
        let cluster = wire::cluster_hash(cluster);
        self.all()
            .into_iter()
            .filter(|d| wire::decode_header(d, cluster).is_ok_and(|(h, _)| h.stream == stream))
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
