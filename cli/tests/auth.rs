//! Keys through the built binary, on loopback (interface 127.0.0.1, TTL 0,
//! a fresh group in 239.255.0.0/16): `cachecast keygen`, key files refused
//! with what to do, `send` → `listen` with the same key (and not with
//! another), and `listen` reloading its key file on SIGHUP.

use crate::process;
use process::{finish, loopback, Running};

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cachecast");

/// A directory of the test's, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(format!("cc-auth-{}", rand::random::<u64>()));
        std::fs::create_dir(&d).unwrap();
        Dir(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cachecast ARGS` to completion (bounded), standard input closed.
fn run(args: &[&str], extra: &[String]) -> Output {
    finish(
        Command::new(BIN)
            .args(args)
            .args(extra)
            .env_remove("CACHECAST_KEY_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `cachecast keygen PATH`: the new key's id.
fn keygen(path: &Path) -> String {
    let out = run(&["keygen", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// The key lines (secrets) of a key file.
fn secrets(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Writes a key file of these lines, mode 0600.
fn write_keys(path: &Path, lines: &[String]) {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// `cachecast send` with `net` and `args`, bounded; panics unless it
/// succeeded.
fn send(net: &[String], args: &[&str]) {
    let out = run(
        &["send"],
        &[net, &args.iter().map(|a| a.to_string()).collect::<Vec<_>>()].concat(),
    );
    assert!(out.status.success(), "send {args:?}: {}", text(&out.stderr));
}

/// Starts `cachecast listen --stats` with `net` and `extra` (RUST_LOG=info:
/// reloads are logged), and waits for its ready line.
fn listen(net: &[String], extra: &[&str]) -> Running {
    let mut l = Running::spawn(
        Command::new(BIN)
            .arg("listen")
            .args(net)
            .args(["--stats", "--timeout", "60s"])
            .args(extra)
            .env_remove("CACHECAST_KEY_FILE")
            .env("RUST_LOG", "info"),
    );
    l.wait_out("the ready line", |v| v["type"] == "ready");
    l
}

/// Stops a listener with SIGTERM; its stats line.
fn stop_listen(l: &mut Running) -> Value {
    l.signal(libc::SIGTERM);
    assert!(l.wait_exit().success(), "{:?}", l.err_seen);
    l.out_json()
        .into_iter()
        .find(|v| v["type"] == "stats")
        .expect("a stats line")
}

/// The events a listener printed, by the publishing node's name.
fn events_of(l: &Running, node: &str) -> Vec<Value> {
    l.out_json()
        .into_iter()
        .filter(|v| v["type"] == "event" && v["node"] == node)
        .collect()
}

#[test]
fn keygen_writes_a_private_file_refuses_to_overwrite_and_appends_for_a_rotation() {
    let dir = Dir::new();
    let path = dir.path("cluster.key");
    let id = keygen(&path);
    assert_eq!(id.len(), 8, "{id:?}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id:?}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&path).unwrap();
    let secret = secrets(&path).remove(0);
    assert_eq!(secret.len(), 64, "32 bytes in hex");

    // Never over an existing file: exit 2, the file as it was.
    let out = run(&["keygen", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);

    // --append: a second key, accepted, the first still sending.
    let out = run(&["keygen", "--append", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let new = text(&out.stdout).trim().to_owned();
    assert_ne!(new, id);
    let advice = text(&out.stderr);
    assert!(
        advice.contains("cachecast members") && advice.contains("first"),
        "{advice}"
    );
    let out = run(&["keygen", "--list", path.to_str().unwrap()], &[]);
    assert_eq!(text(&out.stdout), format!("{id} sending\n{new} accepted\n"));
    let out = run(&["keygen", "--list", "--json", path.to_str().unwrap()], &[]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["keys"][0]["id"], id.as_str());
    assert_eq!(v["keys"][1]["sending"], false);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Nothing printed ever holds a secret.
    for s in secrets(&path) {
        assert!(!advice.contains(&s) && !text(&out.stdout).contains(&s));
    }
    assert!(!text(&before).is_empty() && std::fs::read_to_string(&path).unwrap().contains(&secret));
}

#[test]
fn unusable_key_options_are_refused_with_what_to_do() {
    let dir = Dir::new();
    let net = loopback(None);
    let path = dir.path("k");
    keygen(&path);
    let p = path.to_str().unwrap();
    // Readable by others: refused, with the fix.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let n: Vec<&str> = net.iter().map(String::as_str).collect();
    for cmd in [
        [&["listen", "--key-file", p][..], &n].concat(),
        [&["send", "--key-file", p][..], &n, &["clear"]].concat(),
        [&["members", "--key-file", p][..], &n].concat(),
        vec!["keygen", "--append", p],
    ] {
        let out = run(&cmd, &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(err.contains(&format!("chmod 600 {p}")), "{cmd:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // Missing; too short; no key file for require or encrypt; a key given
    // where the path goes (not echoed).
    let short = dir.path("short");
    write_keys(&short, &["11".repeat(31)]);
    let key_like = "ab".repeat(32);
    for (args, want) in [
        (
            vec!["--key-file", "/nonexistent/cachecast.key"],
            "/nonexistent/cachecast.key",
        ),
        (vec!["--key-file", short.to_str().unwrap()], "at least 32"),
        (vec!["--auth", "require"], "needs a key file"),
        (vec!["--encrypt"], "needs a key file"),
        (vec!["--auth", "sometimes"], "off, accept or require"),
        (vec!["--key-file", &key_like], "never a key itself"),
    ] {
        let out = run(&[&["send"], &args[..], &n, &["clear"]].concat(), &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains(&key_like[..16]), "the key was echoed: {err}");
    }
}

/// A listener with key A delivers what A's senders publish (authenticated
/// and encrypted, and a batch of 300 keys filling datagrams up to the
/// trailer), and nothing of a sender holding only key B: those datagrams
/// are dropped by reason, and cost no Reset.
#[test]
fn listen_delivers_only_what_is_sent_with_a_key_it_holds() {
    let dir = Dir::new();
    let net = loopback(None);
    let (a, b) = (dir.path("a"), dir.path("b"));
    keygen(&a);
    keygen(&b);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let mut l = listen(&net, &["--key-file", a]);
    send(
        &net,
        &["--key-file", b, "--name", "intruder", "invalidate", "evil"],
    );
    send(
        &net,
        &["--key-file", a, "--name", "good", "invalidate", "k1"],
    );
    l.wait_out("good's event", |v| v["node"] == "good");
    send(
        &net,
        &[
            "--key-file",
            a,
            "--encrypt",
            "--name",
            "secret",
            "invalidate",
            "k2",
        ],
    );
    l.wait_out("the encrypted event", |v| v["node"] == "secret");
    let keys: String = (0..300).map(|i| format!("user:{i:06}\n")).collect();
    let mut child = Command::new(BIN)
        .arg("send")
        .args(&net)
        .args(["--key-file", a, "--name", "batch", "invalidate", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(keys.as_bytes())
        .unwrap();
    let out = finish(child);
    assert!(out.status.success(), "{}", text(&out.stderr));
    l.wait_out("the batch's last key", |v| {
        v["node"] == "batch"
            && v["keys"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "user:000299"))
    });
    let stats = stop_listen(&mut l);
    assert!(events_of(&l, "intruder").is_empty(), "{:?}", l.out_seen);
    assert_eq!(events_of(&l, "good").len(), 1);
    assert_eq!(stats["resets"], serde_json::json!({}), "{stats}");
    assert!(stats["auth_verified"].as_u64().unwrap() > 0, "{stats}");
    assert!(
        stats["dropped"]["auth_unknown_key"].as_u64().unwrap_or(0) > 0,
        "the intruder's datagrams are dropped by reason: {stats}"
    );
}

/// SIGHUP makes `listen` read its key file again without leaving the group:
/// a key appended to it is accepted from then on; a file that became
/// unusable is refused and the keys in use stay.
#[test]
fn listen_reloads_its_key_file_on_sighup() {
    let dir = Dir::new();
    let net = loopback(None);
    let (held, other) = (dir.path("held"), dir.path("other"));
    let old = keygen(&held);
    let new = keygen(&other);
    let (h, o) = (held.to_str().unwrap(), other.to_str().unwrap());
    let mut l = listen(&net, &["--key-file", h]);
    send(
        &net,
        &["--key-file", o, "--name", "early", "invalidate", "x"],
    );

    // The other key appended to the listener's file, then SIGHUP.
    write_keys(&held, &[secrets(&held), secrets(&other)].concat());
    l.signal(libc::SIGHUP);
    let line = l.wait_err("the reload logged", |s| {
        s.contains("keys reloaded") && s.contains("SIGHUP")
    });
    assert!(line.contains(&format!("{old},{new}")), "{line}");
    send(
        &net,
        &["--key-file", o, "--name", "late", "invalidate", "y"],
    );
    l.wait_out("the new key's event", |v| v["node"] == "late");

    // An unusable file: refused, logged, the keys in use stay.
    std::fs::set_permissions(&held, std::fs::Permissions::from_mode(0o644)).unwrap();
    l.signal(libc::SIGHUP);
    let line = l.wait_err("the refusal logged", |s| s.contains("keys not reloaded"));
    assert!(line.contains("chmod 600"), "{line}");
    send(
        &net,
        &["--key-file", o, "--name", "still", "invalidate", "z"],
    );
    l.wait_out("an event after the refused reload", |v| {
        v["node"] == "still"
    });

    let stats = stop_listen(&mut l);
    assert!(events_of(&l, "early").is_empty(), "{:?}", l.out_seen);
    assert_eq!(stats["resets"], serde_json::json!({}), "{stats}");
}

/// `doctor` with the cluster's key file is answered by a node that requires
/// keys (its probe is sealed, the answer verified); its report says with
/// which key.
#[test]
fn doctor_with_the_key_file_is_answered_by_keyed_nodes() {
    let dir = Dir::new();
    let net = loopback(None);
    let key = dir.path("k");
    let id = keygen(&key);
    let k = key.to_str().unwrap();
    let mut l = listen(&net, &["--key-file", k, "--name", "keyed-listener"]);
    let n: Vec<&str> = net.iter().map(String::as_str).collect();
    let out = run(
        &[&["doctor", "--json", "--key-file", k][..], &n].concat(),
        &[],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{v:#}");
    assert_eq!(v["probe"]["sealed_with"], id.as_str(), "{v:#}");
    let peers = v["probe"]["peers"].as_array().unwrap();
    assert!(peers.iter().any(|p| p["node"] == "keyed-listener"), "{v:#}");
    assert_eq!(v["probe"]["unverified"], 0);
    let stats = stop_listen(&mut l);
    assert!(stats["auth_verified"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["dropped"].get("auth_bad_tag"), None, "{stats}");
}

/// `--auth accept` (the roll-out step) delivers what unkeyed and keyed
/// senders publish; `--auth require` (the default with a key file) drops
/// the unkeyed sender's datagrams as `auth_missing`.
#[test]
fn accept_takes_unkeyed_senders_and_require_does_not() {
    let dir = Dir::new();
    let key = dir.path("k");
    keygen(&key);
    let k = key.to_str().unwrap();
    for mode in ["accept", "require"] {
        let net = loopback(None);
        let mut l = listen(&net, &["--key-file", k, "--auth", mode]);
        send(&net, &["--name", "plain", "invalidate", "p"]);
        send(
            &net,
            &["--key-file", k, "--name", "keyed", "invalidate", "k"],
        );
        l.wait_out("the keyed event", |v| v["node"] == "keyed");
        if mode == "accept" && events_of(&l, "plain").is_empty() {
            l.wait_out("the unkeyed event", |v| v["node"] == "plain");
        }
        let stats = stop_listen(&mut l);
        assert_eq!(stats["resets"], serde_json::json!({}), "{mode}: {stats}");
        if mode == "require" {
            assert!(events_of(&l, "plain").is_empty(), "{:?}", l.out_seen);
            assert!(
                stats["dropped"]["auth_missing"].as_u64().unwrap_or(0) > 0,
                "{stats}"
            );
        }
    }
}
