//! A key rotation on two real agents (loopback multicast, HTTP on
//! 127.0.0.1), without either leaving the group: append a key, reload
//! (`POST /v1/keys/reload` on one, SIGHUP on the other), see it held in
//! the other's `/v1/members`, move it first, reload, see it sent with,
//! retire the old key; every event delivered, no Reset. And reload errors:
//! the keys in use stay, the answer says why.

use crate::agent;
use crate::process;

use crate::testprom;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::{client, Agent, Net};
use process::LIMIT;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_cachecast");

/// A directory of the test's, removed at the end.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The key lines (secrets) of a key file, in order.
fn secrets(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Replaces a key file by these key lines, mode 0600.
fn write_keys(path: &Path, lines: &[String]) {
    use std::io::Write;
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    drop(f);
    std::fs::rename(&tmp, path).unwrap();
}

/// `cachecast keygen ARGS`: its standard output, trimmed.
fn keygen(args: &[&str]) -> String {
    let out = process::finish(
        std::process::Command::new(BIN)
            .arg("keygen")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn reload(a: &Agent) -> (u16, Value) {
    let r = client()
        .post(format!("{}/v1/keys/reload", a.url))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn get_json(a: &Agent, path: &str) -> Value {
    let (status, body) = a.get(path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits (bounded) until `b`'s `/v1/members` entry for the member named
/// `name` satisfies `pred`; returns the whole document.
fn await_member(b: &Agent, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + LIMIT;
    loop {
        let v = get_json(b, "/v1/members");
        let hit = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == name && m["state"] == "live" && pred(m));
        if hit {
            return v;
        }
        assert!(Instant::now() < end, "{what} within {LIMIT:?}: {v:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn summary<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["key_summary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap_or_else(|| panic!("{id} in {v:#}"))
}

fn sse_keys(e: &agent::SseEvent) -> Vec<String> {
    e.data["keys"]
        .as_array()
        .map(|a| a.iter().map(|k| k.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn agents_rotate_keys_without_leaving_the_group() {
    let dir = Dir(std::env::temp_dir().join(format!("cc-agent-keys-{}", rand::random::<u64>())));
    std::fs::create_dir(&dir.0).unwrap();
    let (fa, fb) = (dir.0.join("a.key"), dir.0.join("b.key"));
    let old = keygen(&[fa.to_str().unwrap()]);
    std::fs::copy(&fa, &fb).unwrap();
    let net = Net::new();
    let cfg = |f: &Path| format!("[auth]\nkey_file = \"{}\"\n", f.display());
    let a = Agent::start(&net, "a", &cfg(&fa));
    let mut b = Agent::start(&net, "b", &cfg(&fb));
    let sb = b.events(None);
    sb.wait_id();
    assert_eq!(get_json(&a, "/v1/status")["node"]["keys"], json!([old]));
    a.invalidate(&["before"]);
    assert_eq!(sse_keys(&sb.next().unwrap()), ["before"]);

    // 1. A new key appended everywhere, reloaded: held, not sent with.
    let new = keygen(&["--append", fa.to_str().unwrap()]);
    write_keys(&fb, &secrets(&fa));
    let (status, v) = reload(&a);
    assert_eq!(
        (status, &v),
        (200, &json!({"keys": [old, new], "sending": old}))
    );
    b.proc.signal(libc::SIGHUP);
    b.proc.wait_err("b's reload logged", |l| {
        l.contains("keys reloaded") && l.contains("SIGHUP") && l.contains(&new)
    });
    let v = await_member(&b, "a", "a holding the new key", |m| {
        m["keys"] == json!([old, new])
    });
    assert_eq!(summary(&v, &new)["held_by"], 1, "{v:#}");
    assert_eq!(summary(&v, &old)["sent_with_by"], 1, "{v:#}");
    await_member(&a, "b", "b holding the new key", |m| {
        m["keys"] == json!([old, new])
    });

    // 2. The new key moved first everywhere: sent with.
    let lines = secrets(&fa);
    let switched = vec![lines[1].clone(), lines[0].clone()];
    write_keys(&fa, &switched);
    write_keys(&fb, &switched);
    for x in [&a, &b] {
        let (status, v) = reload(x);
        assert_eq!((status, &v["sending"]), (200, &json!(new)), "{v}");
    }
    a.invalidate(&["switched"]);
    assert_eq!(sse_keys(&sb.next().unwrap()), ["switched"]);
    let v = await_member(&b, "a", "a sending with the new key", |m| {
        m["sends_with"] == json!(new) && m["keys"] == json!([new, old])
    });
    assert_eq!(summary(&v, &new)["sent_with_by"], 1, "{v:#}");

    // 3. The old key retired: only the new one held; a batch filling
    // datagrams up to the trailer still goes through.
    write_keys(&fa, &switched[..1]);
    write_keys(&fb, &switched[..1]);
    for x in [&a, &b] {
        assert_eq!(reload(x), (200, json!({"keys": [new], "sending": new})));
    }
    let many: Vec<String> = (0..300).map(|i| format!("bulk-key-{i:08}")).collect();
    let (status, r) = a.post(&json!({ "keys": many }).to_string());
    assert_eq!(status, 202, "{r}");
    let got: Vec<String> = sb
        .take(r["events"].as_u64().unwrap() as usize)
        .iter()
        .flat_map(sse_keys)
        .collect();
    assert_eq!(got, many);
    await_member(&b, "a", "a holding only the new key", |m| {
        m["keys"] == json!([new])
    });

    // A file that became unusable: refused, the keys in use stay.
    std::fs::set_permissions(&fa, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (status, v) = reload(&a);
    assert_eq!(status, 422, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains(&format!("chmod 600 {}", fa.display())),
        "{v}"
    );
    assert_eq!(v["keys"], json!([new]));
    a.invalidate(&["after-refusal"]);
    assert_eq!(sse_keys(&sb.next().unwrap()), ["after-refusal"]);

    // Nothing lost, nothing Reset, everything verified; the reloads and
    // keys in the metrics.
    let st = get_json(&b, "/v1/status");
    assert_eq!(st["counters"]["resets"], json!({}), "{st:#}");
    assert!(st["counters"]["auth_verified"].as_u64().unwrap() > 0);
    let (_, text) = a.get("/metrics");
    let (samples, _) = testprom::parse(&text);
    assert_eq!(
        samples["cachecast_key_reloads_total{outcome=\"ok\"}"], 3.0,
        "{text}"
    );
    assert_eq!(
        samples["cachecast_key_reloads_total{outcome=\"failed\"}"],
        1.0
    );
    assert_eq!(
        samples[&format!("cachecast_key_info{{key=\"{new}\",role=\"sending\"}}")],
        1.0
    );
    assert_eq!(
        samples["cachecast_datagrams_dropped_total{reason=\"auth_bad_tag\"}"],
        0.0
    );
}

/// An agent without a key file: a reload is 409, saying why.
#[test]
fn an_agent_without_keys_answers_a_reload_with_409() {
    let net = Net::new();
    let a = Agent::start(&net, "a", "");
    let (status, v) = reload(&a);
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("without a key file"),
        "{v}"
    );
    assert_eq!(v["keys"], json!([]));
    assert_eq!(get_json(&a, "/v1/status")["node"]["keys"], json!([]));
}
