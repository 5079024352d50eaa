//! The agent's examples (examples/agent/) run against a real agent on
//! loopback (HTTP on 127.0.0.1, interface 127.0.0.1, TTL 0): the Python and
//! the Node consumers keep their in-process caches coherent over SSE,
//! resume with Last-Event-ID, and clear on the `reset` an agent restart
//! causes; their publish modes publish through the agent.
//!
//! python3, node (20 or later) and the Node example's npm package
//! (`npm ci` in examples/agent/node) are required: without them this test
//! fails, saying what is missing; it never skips.

use crate::agent;
use crate::process;
use agent::{free_port, Net};
use process::{finish, Running};

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_cachecast");

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/agent")
}

/// Fails (never skips) when a tool the examples need is missing.
fn require_tools() {
    let version = |cmd: &str| {
        Command::new(cmd)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    version("python3").unwrap_or_else(|| {
        panic!("python3 is missing: the Python example (examples/agent/python) needs it; install python3")
    });
    let node = version("node").unwrap_or_else(|| {
        panic!("node is missing: the Node example (examples/agent/node) needs Node 20 or later; install nodejs")
    });
    let major: u32 = node
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "node {node}: the Node example needs Node 20 or later"
    );
    let pkg = examples().join("node/node_modules/eventsource/package.json");
    assert!(
        pkg.exists(),
        "{} is missing: run `npm ci` in examples/agent/node first (it installs the \
         `eventsource` package the Node example uses)",
        pkg.display()
    );
}

/// A running agent and what its ready line said.
struct Agent {
    run: Running,
    epoch: String,
    stream: String,
}

/// Starts `cachecast agent` with HTTP on 127.0.0.1:`port` and waits for
/// its ready line.
fn agent(port: u16, net: &Net) -> Agent {
    let mut cmd = Command::new(BIN);
    cmd.arg("agent")
        .env_remove("CACHECAST_AGENT_CONFIG")
        .envs(net.env.iter().map(|(k, v)| (k, v)))
        .env("CACHECAST_HTTP_LISTEN", format!("127.0.0.1:{port}"))
        // Reconnect quickly: the test waits for the consumers to do so.
        .env("CACHECAST_SSE_RETRY", "100ms")
        .env("RUST_LOG", "cachecast=info");
    let mut run = Running::spawn(&mut cmd);
    let ready = run.wait_out("the agent's ready line", |v| v["ready"] == true);
    let field = |f: &str| ready[f].as_str().unwrap_or_default().to_owned();
    let (epoch, stream) = (field("epoch"), field("stream"));
    assert_eq!(epoch.len(), 16, "{ready}");
    Agent { run, epoch, stream }
}

/// How to run one example.
#[derive(Clone, Copy, Debug)]
enum Lang {
    Python,
    Node,
}

impl Lang {
    fn command(self) -> Command {
        let (prog, script) = match self {
            Lang::Python => ("python3", "python/consumer.py"),
            Lang::Node => ("node", "node/consumer.js"),
        };
        let mut cmd = Command::new(prog);
        cmd.arg(examples().join(script))
            .env_remove("CACHECAST_AGENT")
            .env_remove("CACHECAST_HTTP_TOKEN");
        cmd
    }
}

/// A consumer with `--print`, once it is connected (the agent has fixed
/// where its stream starts).
fn consumer(lang: Lang, url: &str, extra: &[&str]) -> Running {
    let mut c = Running::spawn(lang.command().args(["--agent", url, "--print"]).args(extra));
    c.wait_out(&format!("the {lang:?} consumer connecting"), |v| {
        v["connected"] == true
    });
    c
}

/// Publishes through an example's publish mode; returns its receipt,
/// checked against the agent's stream and the number of events.
fn publish(lang: Lang, url: &str, args: &[&str], agent: &Agent, events: u64) -> Value {
    let mut cmd = lang.command();
    cmd.args(["--agent", url])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = finish(cmd.spawn().unwrap());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{lang:?} publish {args:?}: {}\nstdout: {text}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{lang:?} publish receipt {text:?}: {e}"));
    assert_eq!(r["stream"], agent.stream.as_str(), "{r}");
    assert_eq!(r["events"], events, "{r}");
    let (first, last) = (r["first_seq"].as_u64(), r["last_seq"].as_u64());
    assert_eq!(last.zip(first).map(|(l, f)| l + 1 - f), Some(events), "{r}");
    r
}

/// A consumer's "applied" lines so far (those naming an `event`).
fn applied(c: &Running) -> Vec<Value> {
    c.out_json()
        .into_iter()
        .filter(|v| v.get("event").is_some())
        .collect()
}

/// Waits for the consumer to print the line `want` (all its fields equal).
fn wait_for(c: &mut Running, what: &str, want: &Value) {
    let want = want.as_object().unwrap().clone();
    c.wait_out(what, |v| want.iter().all(|(k, x)| &v[k] == x));
}

#[test]
fn python_and_node_consumers_stay_coherent_resume_and_clear_on_reset() {
    require_tools();
    let net = Net::new();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let seeds = [
        "--seed", "user:1", "--seed", "user:2", "--seed", "page:1", "--seed", "page:2",
    ];

    let mut a = agent(port, &net);
    let e1 = a.epoch.clone();
    let mut consumers = [
        (Lang::Python, consumer(Lang::Python, &url, &seeds)),
        (Lang::Node, consumer(Lang::Node, &url, &seeds)),
    ];

    // Keys, a prefix and a custom event, published by both examples.
    publish(Lang::Python, &url, &["--publish", "user:1"], &a, 1);
    publish(Lang::Node, &url, &["--publish-prefix", "page:"], &a, 1);
    publish(
        Lang::Python,
        &url,
        &["--publish-topic", "deploy", "--payload", "v2"],
        &a,
        1,
    );
    let mut want = vec![
        json!({"event": "invalidate", "keys": ["user:1"], "removed": 1, "size": 3, "id": format!("{e1}:1")}),
        json!({"event": "prefix", "prefix": "page:", "removed": 2, "size": 1, "id": format!("{e1}:2")}),
        json!({"event": "custom", "topic": "deploy", "payload": "v2", "size": 1, "id": format!("{e1}:3")}),
    ];
    for (lang, c) in &mut consumers {
        wait_for(c, &format!("{lang:?}: the custom event"), &want[2]);
        assert_eq!(applied(c), want, "{lang:?}");
    }

    // Resume: a consumer that last applied event 1 gets exactly 2 and 3
    // (Python sends Last-Event-ID, Node's first request ?last_event_id=).
    for lang in [Lang::Python, Lang::Node] {
        let cursor = format!("{e1}:1");
        let mut c = consumer(
            lang,
            &url,
            &["--last-event-id", &cursor, "--exit-after", "2"],
        );
        let status = c.wait_exit();
        assert!(status.success(), "{lang:?} resuming: {status}");
        let got: Vec<Value> = applied(&c).iter().map(|v| v["id"].clone()).collect();
        assert_eq!(
            got,
            [json!(format!("{e1}:2")), json!(format!("{e1}:3"))],
            "{lang:?}"
        );
    }

    // A clean stop: each consumer hears `shutdown`; the agent restarted
    // (same port and group, new epoch) answers their old cursor with a
    // `reset` first, and they clear what was left.
    a.run.signal(libc::SIGTERM);
    let status = a.run.wait_exit();
    assert!(status.success(), "agent stop: {status}");
    for (lang, c) in &mut consumers {
        c.wait_out(&format!("{lang:?}: the shutdown event"), |v| {
            v["shutdown"]["resume_from"] == format!("{e1}:3").as_str()
        });
    }
    let mut a = agent(port, &net);
    let e2 = a.epoch.clone();
    assert_ne!(e1, e2, "a restarted agent has a new epoch");
    want.push(json!({"event": "reset", "reason": "agent_restarted", "removed": 1, "size": 0, "id": format!("{e2}:0")}));
    for (lang, c) in &mut consumers {
        wait_for(c, &format!("{lang:?}: the reset"), want.last().unwrap());
    }
    // A batch after the reset: both events, in order.
    publish(
        Lang::Node,
        &url,
        &["--publish", "user:9", "--publish-all"],
        &a,
        2,
    );
    want.push(json!({"event": "invalidate", "keys": ["user:9"], "removed": 0, "size": 0, "id": format!("{e2}:1")}));
    want.push(json!({"event": "clear", "removed": 0, "size": 0, "id": format!("{e2}:2")}));
    for (lang, c) in &mut consumers {
        wait_for(c, &format!("{lang:?}: the clear"), want.last().unwrap());
    }

    // A crash (no shutdown event): they reconnect to the next agent with
    // their cursor and get a `reset` first again.
    a.run.signal(libc::SIGKILL);
    a.run.wait_exit();
    let mut a = agent(port, &net);
    let e3 = a.epoch.clone();
    want.push(json!({"event": "reset", "reason": "agent_restarted", "removed": 0, "size": 0, "id": format!("{e3}:0")}));
    for (lang, c) in &mut consumers {
        wait_for(
            c,
            &format!("{lang:?}: the reset after a crash"),
            want.last().unwrap(),
        );
        // Exactly these, in this order, nothing else applied.
        assert_eq!(applied(c), want, "{lang:?}");
        // Every (re)connect resumed from the last event applied before it.
        let (mut last, mut connects) = (json!(null), 0);
        for v in c.out_json() {
            if v["connected"] == true {
                assert_eq!(v["last_event_id"], last, "{lang:?}: {:?}", c.out_seen);
                connects += 1;
            } else if v.get("event").is_some() {
                last = v["id"].clone();
            }
        }
        assert!(connects >= 3, "{lang:?}: {:?}", c.out_seen);
    }

    // SIGINT: each exits cleanly.
    for (lang, c) in &mut consumers {
        c.signal(libc::SIGINT);
        let status = c.wait_exit();
        assert!(status.success(), "{lang:?} on SIGINT: {status}");
    }
    a.run.signal(libc::SIGTERM);
    assert!(a.run.wait_exit().success());
}

/// The Python example's own unit tests (its SSE parser on line ends and
/// splits the agent does not produce, its cache rules).
#[test]
fn python_consumer_unit_tests_pass() {
    require_tools();
    let child = Command::new("python3")
        .args(["-m", "unittest", "-v", "test_consumer"])
        .current_dir(examples().join("python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish(child);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {err}", out.status);
    assert!(err.contains("Ran 3 tests"), "{err}");
}
