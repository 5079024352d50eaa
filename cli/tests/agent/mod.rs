//! Running real agents (`cachecast agent`) on loopback for the tests: a
//! config file of the test's, the network on 127.0.0.1 with TTL 0 and a
//! fresh group, HTTP on a free port; and reading its SSE stream.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::process::{loopback, Running, LIMIT};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where a cluster of agents meets: one group, one cluster name.
#[derive(Clone)]
pub struct Net {
    pub env: Vec<(String, String)>,
}

impl Net {
    pub fn new() -> Net {
        let a = loopback(None);
        // --group G --interface I --ttl T --cluster C
        Net {
            env: vec![
                ("CACHECAST_GROUP".into(), a[1].clone()),
                ("CACHECAST_INTERFACE".into(), a[3].clone()),
                ("CACHECAST_TTL".into(), a[5].clone()),
                ("CACHECAST_CLUSTER".into(), a[7].clone()),
            ],
        }
    }
}

/// A running agent.
pub struct Agent {
    pub proc: Running,
    pub url: String,
    pub port: u16,
    pub config: PathBuf,
    pub net: Net,
    pub name: String,
    /// Its `ready` line.
    pub ready: serde_json::Value,
}

impl Agent {
    /// Starts an agent named `name` with `toml` as its config (the network
    /// and HTTP port come from the environment), waits until it is ready.
    pub fn start(net: &Net, name: &str, toml: &str) -> Agent {
        let config = std::env::temp_dir().join(format!(
            "cachecast-agent-test-{}-{name}.toml",
            rand::random::<u64>()
        ));
        std::fs::write(&config, toml).unwrap();
        Self::start_with(net, name, config, free_port())
    }

    fn start_with(net: &Net, name: &str, config: PathBuf, port: u16) -> Agent {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cachecast"));
        cmd.arg("agent").arg("--config").arg(&config);
        for (k, v) in &net.env {
            cmd.env(k, v);
        }
        cmd.env("CACHECAST_NAME", name)
            .env("CACHECAST_HTTP_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info");
        let mut proc = Running::spawn(&mut cmd);
        let ready = proc.wait_out("the agent's ready line", |v| v["ready"] == true);
        Agent {
            proc,
            url: format!("http://127.0.0.1:{port}"),
            port,
            config,
            net: net.clone(),
            name: name.to_owned(),
            ready,
        }
    }

    /// Kills it with SIGKILL (no Goodbye) and starts it again with the same
    /// config and port.
    pub fn kill_and_restart(mut self) -> Agent {
        self.kill();
        self.restart()
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        self.proc.signal(libc::SIGKILL);
        self.proc.wait_exit();
    }

    /// Starts it again (after [`Agent::kill`]) with the same config and
    /// port.
    pub fn restart(mut self) -> Agent {
        let config = std::mem::take(&mut self.config);
        Self::start_with(&self.net, &self.name, config, self.port)
    }

    /// POSTs `body` (JSON) to /v1/invalidate; the status and JSON answer.
    pub fn post(&self, body: &str) -> (u16, serde_json::Value) {
        let r = client()
            .post(format!("{}/v1/invalidate", self.url))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(serde_json::Value::Null))
    }

    /// Publishes keys; panics unless 202.
    pub fn invalidate(&self, keys: &[&str]) -> serde_json::Value {
        let (status, v) = self.post(&serde_json::json!({ "keys": keys }).to_string());
        assert_eq!(status, 202, "{v}");
        v
    }

    /// GETs a path; status and body text.
    pub fn get(&self, path: &str) -> (u16, String) {
        let r = client().get(format!("{}{path}", self.url)).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    /// Opens the SSE stream, resuming after `last_event_id` if given.
    pub fn events(&self, last_event_id: Option<&str>) -> Sse {
        Sse::open(&format!("{}/v1/events", self.url), last_event_id)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !self.config.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.config);
        }
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(LIMIT)
        .build()
        .unwrap()
}

/// One SSE event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: serde_json::Value,
}

/// An SSE stream read by a thread of its own, event by event.
pub struct Sse {
    rx: mpsc::Receiver<SseEvent>,
    /// The last `id:` seen, with or without an event (the agent's first,
    /// data-less event carries the starting cursor).
    last_id: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Sse {
    pub fn open(url: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = reqwest::blocking::Client::builder()
            .build()
            .unwrap()
            .get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status().as_u16(), 200, "GET {url}");
        let (tx, rx) = mpsc::channel();
        let last_id = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = last_id.clone();
        std::thread::spawn(move || {
            let mut ev = SseEvent::default();
            let mut data = String::new();
            for line in BufReader::new(resp).lines() {
                let Ok(line) = line else { break };
                if line.is_empty() {
                    if !data.is_empty() || !ev.event.is_empty() {
                        ev.data = serde_json::from_str(&data).unwrap_or(serde_json::Value::Null);
                        if tx.send(std::mem::take(&mut ev)).is_err() {
                            break;
                        }
                        data.clear();
                    }
                    continue;
                }
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((&line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => ev.event = value.to_owned(),
                    "id" => {
                        ev.id = Some(value.to_owned());
                        *seen.lock().unwrap() = Some(value.to_owned());
                    }
                    "data" => {
                        if !data.is_empty() {
                            data.push('\n');
                        }
                        data.push_str(value)
                    }
                    _ => {}
                }
            }
        });
        Sse { rx, last_id }
    }

    /// Waits for the first `id:` line (the agent's hello) and returns the
    /// last one seen.
    pub fn wait_id(&self) -> String {
        let end = Instant::now() + LIMIT;
        loop {
            if let Some(id) = self.last_id.lock().unwrap().clone() {
                return id;
            }
            assert!(Instant::now() < end, "no id: line within {LIMIT:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The next event, within the limit; None if the stream ended.
    pub fn next(&self) -> Option<SseEvent> {
        match self.rx.recv_timeout(LIMIT) {
            Ok(e) => Some(e),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no SSE event within {LIMIT:?}"),
        }
    }

    /// The next `n` events (panics if the stream ends first).
    pub fn take(&self, n: usize) -> Vec<SseEvent> {
        (0..n)
            .map(|i| {
                self.next()
                    .unwrap_or_else(|| panic!("the stream ended after {i} of {n} events"))
            })
            .collect()
    }
}

/// A webhook receiver: a real HTTP/1.1 server on 127.0.0.1 (a thread per
/// connection) that records every POSTed JSON array, answering 500 to the
/// first `fail` requests and 200 after.
pub struct Hook {
    pub url: String,
    pub posts: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    pub fail: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Hook {
    pub fn start(fail: usize) -> Hook {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/cache", listener.local_addr().unwrap());
        let posts = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(AtomicUsize::new(fail));
        let failed = Arc::new(AtomicUsize::new(0));
        let (p, f, fd) = (posts.clone(), fail.clone(), failed.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let (p, f, fd) = (p.clone(), f.clone(), fd.clone());
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 65536];
                    loop {
                        // One request: headers, then Content-Length bytes.
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match conn.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            assert!(buf.len() < 64 << 20);
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            match conn.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
                        let failing = f
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        let status = if failing {
                            fd.fetch_add(1, Ordering::SeqCst);
                            "500 Internal Server Error"
                        } else {
                            let v: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                            p.lock().unwrap().push(v);
                            "200 OK"
                        };
                        let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                        if conn.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Hook {
            url,
            posts,
            fail,
            failed,
        }
    }

    /// Every item posted so far, in order.
    pub fn items(&self) -> Vec<serde_json::Value> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .flat_map(|a| a.as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits until `pred` holds for the items posted.
    pub fn wait(
        &self,
        what: &str,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let end = Instant::now() + LIMIT;
        loop {
            let items = self.items();
            if pred(&items) {
                return items;
            }
            assert!(
                Instant::now() < end,
                "webhook: no {what} within {LIMIT:?}: {items:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
