//! The memcached applier: deliveries applied to a memcached server.
//!
//! - Keys → `delete <key_prefix><key> noreply`, pipelined (consecutive
//!   invalidations read together go out in one write), then one `version`
//!   round trip: memcached answers in order on a connection, so its answer
//!   confirms every delete before it.
//! - Prefix, Clear and Reset → `flush_all`. memcached has no prefix delete
//!   (nor any way to list keys cheaply), so a prefix invalidation clears the
//!   whole server: correct, but everything is fetched again. Applications
//!   that invalidate prefixes often and share memcached should prefer Redis,
//!   or the classic namespace-version key (the version is part of every key
//!   name; bumping it invalidates the namespace).
//! - A key memcached cannot hold (more than 250 bytes with the key prefix,
//!   empty, or with a space or control character) cannot be cached under
//!   that name anyway: it is skipped with a debug log and counted in
//!   `applier_skipped_total`, never sent as a malformed command.
//! - Custom events are not for caches: skipped (counted).
//!
//! Client: the `async-memcached` crate (Shopify): tokio-native (no blocking
//! I/O in the runtime, unlike `memcache`, whose async client wraps its
//! blocking one), maintained, validates keys, and pipelines deletes
//! (`delete_multi_no_reply`); `memcache-async` sends one command per round
//! trip. It connects over IPv4 (or a Unix socket): give an IPv4 address or
//! a host name.
//!
//! Retries, back-off, flush on start and after an outage: [`super`].

use std::sync::Arc;

use async_memcached::{AsciiProtocol, Client};

use super::{Applier, Backend};
use crate::agent::config::{memcached_addr, MemcachedConfig};
use crate::agent::feed::Feed;
use crate::agent::metrics::Metrics;

/// Longest key memcached accepts, in bytes.
pub const MAX_KEY: usize = 250;

/// Most deletes in one pipeline.
const RUN_KEYS: usize = 1000;

/// Starts the applier of one `[[apply.memcached]]`.
pub fn spawn(cfg: MemcachedConfig, feed: Arc<Feed>, metrics: Arc<Metrics>) -> Applier {
    let flush_on_start = cfg.flush_on_start;
    super::start(Memcached::new(cfg), flush_on_start, feed, metrics)
}

/// True when memcached's text protocol can carry `key` (1..=250 bytes, no
/// space, no control character, no DEL).
pub fn valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY && key.iter().all(|&b| b > 0x20 && b != 0x7f)
}

struct Memcached {
    cfg: MemcachedConfig,
    /// `HOST:PORT`, or `None` for a URL the config check should have refused.
    addr: Option<String>,
    client: Option<Client>,
}

impl Memcached {
    fn new(cfg: MemcachedConfig) -> Memcached {
        let addr = memcached_addr(&cfg.url);
        Memcached {
            cfg,
            addr,
            client: None,
        }
    }

    fn client(&mut self) -> Result<&mut Client, String> {
        self.client
            .as_mut()
            .ok_or_else(|| "not connected".to_owned())
    }
}

impl Backend for Memcached {
    const KIND: &'static str = "memcached";
    const PREFIX_FLUSHES: bool = true;

    fn target(&self) -> String {
        self.addr.clone().unwrap_or_else(|| "(bad url)".into())
    }

    fn run_keys(&self) -> usize {
        RUN_KEYS
    }

    async fn connect(&mut self) -> Result<(), String> {
        self.client = None;
        let addr = self.addr.as_ref().ok_or("not memcache://HOST:PORT")?;
        let client = Client::new(format!("tcp://{addr}"))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        self.client = Some(client);
        Ok(())
    }

    fn disconnect(&mut self) {
        self.client = None;
    }

    async fn ping(&mut self) -> Result<(), String> {
        self.client()?
            .version()
            .await
            .map_err(|e| format!("version: {e}"))?;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), String> {
        self.client()?
            .flush_all()
            .await
            .map_err(|e| format!("flush_all: {e}"))
    }

    async fn delete(&mut self, keys: &[&str]) -> Result<u64, String> {
        let prefix = self.cfg.key_prefix.as_bytes();
        let mut valid: Vec<Vec<u8>> = Vec::with_capacity(keys.len());
        let mut skipped = 0;
        for k in keys {
            let mut full = Vec::with_capacity(prefix.len() + k.len());
            full.extend_from_slice(prefix);
            full.extend_from_slice(k.as_bytes());
            if valid_key(&full) {
                valid.push(full);
            } else {
                skipped += 1;
                tracing::debug!(key = %k.escape_debug(), len = full.len(),
                    "memcached applier: key memcached cannot hold; skipped");
            }
        }
        if valid.is_empty() {
            return Ok(skipped);
        }
        let client = self.client()?;
        client
            .delete_multi_no_reply(&valid)
            .await
            .map_err(|e| format!("delete: {e}"))?;
        // The answer comes after every delete above has been done.
        client
            .version()
            .await
            .map_err(|e| format!("version: {e}"))?;
        Ok(skipped)
    }

    async fn delete_prefix(&mut self, _prefix: &str) -> Result<(), String> {
        // PREFIX_FLUSHES: run() flushes instead.
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::super::testkit::{counts, until, Counts};
    use super::*;
    use crate::agent::feed::Action;
    use crate::agent::testservers::TestServer;

    fn cfg(url: &str, key_prefix: &str) -> MemcachedConfig {
        MemcachedConfig {
            url: url.into(),
            key_prefix: key_prefix.into(),
            flush_on_start: true,
        }
    }

    async fn client(server: &TestServer) -> Client {
        Client::new(format!("tcp://127.0.0.1:{}", server.port()))
            .await
            .unwrap()
    }

    async fn set(c: &mut Client, keys: &[&str]) {
        for k in keys {
            c.set(*k, "v", None, None).await.unwrap();
        }
    }

    async fn existing(c: &mut Client, keys: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for k in keys {
            if c.get(*k).await.unwrap().is_some() {
                out.push(k.to_string());
            }
        }
        out
    }

    /// `flush_all`s this server instance has run (stats cmd_flush).
    async fn cmd_flush(c: &mut Client) -> u64 {
        c.stats().await.unwrap()["cmd_flush"].parse().unwrap()
    }

    fn metrics_of(m: &Arc<Metrics>, server: &TestServer) -> Counts {
        counts(m, "memcached", &format!("127.0.0.1:{}", server.port()))
    }

    async fn applied(m: &Arc<Metrics>, server: &TestServer, n: u64) {
        until(&format!("{n} applied"), || async {
            metrics_of(m, server).applied >= n
        })
        .await;
        assert_eq!(metrics_of(m, server).applied, n);
    }

    #[test]
    fn keys_memcached_cannot_hold() {
        assert!(valid_key(b"app:user:1"));
        assert!(valid_key(&[b'k'; 250]));
        assert!(!valid_key(&[b'k'; 251]));
        assert!(!valid_key(b""));
        assert!(!valid_key(b"a b"));
        assert!(!valid_key(b"a\r\nflush_all"));
        assert!(!valid_key(b"a\x7f"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deletes_keys_and_flushes_for_prefix_clear_and_reset() {
        let server = TestServer::memcached();
        let mut c = client(&server).await;
        set(&mut c, &["app:stale"]).await;
        let (feed, metrics) = (Feed::new(1, 1024), Arc::new(Metrics::new()));
        let a = spawn(cfg(&server.url(), "app:"), feed.clone(), metrics.clone());
        until("connected", || async {
            a.connected.load(Ordering::Relaxed)
        })
        .await;
        assert_eq!(
            existing(&mut c, &["app:stale"]).await,
            Vec::<String>::new(),
            "flushed on start"
        );

        // Keys, with the key prefix; keys memcached cannot hold are skipped
        // and counted (and the pipeline they were in still applies).
        set(&mut c, &["app:a", "app:b", "app:keep", "a"]).await;
        let long = "k".repeat(250 - 4); // 250 bytes with "app:"
        set(&mut c, &[&format!("app:{long}")]).await;
        feed.push(
            Action::Invalidate(vec![
                "a".into(),
                "bad key".into(),
                "x\r\nflush_all".into(),
                "k".repeat(251 - 4),
                long.clone(),
            ]),
            None,
        );
        feed.push(Action::Invalidate(vec!["b".into()]), None);
        applied(&metrics, &server, 2).await;
        assert_eq!(
            existing(
                &mut c,
                &["app:a", "app:b", "app:keep", "a", &format!("app:{long}")]
            )
            .await,
            ["app:keep", "a"]
        );
        assert_eq!(metrics_of(&metrics, &server).skipped, 3);
        assert_eq!(
            cmd_flush(&mut c).await,
            1,
            "no flush_all slipped in through a key"
        );

        // Prefix → flush_all (no prefix delete in memcached).
        feed.push(Action::Prefix("app:".into()), None);
        applied(&metrics, &server, 3).await;
        assert_eq!(
            existing(&mut c, &["app:keep", "a"]).await,
            Vec::<String>::new()
        );

        // Custom: skipped.
        feed.push(
            Action::Custom {
                topic: "t".into(),
                payload: vec![],
            },
            None,
        );
        until("custom skipped", || async {
            metrics_of(&metrics, &server).skipped == 4
        })
        .await;

        // Clear and Reset → flush_all.
        set(&mut c, &["x"]).await;
        feed.push(Action::Clear, None);
        applied(&metrics, &server, 4).await;
        assert_eq!(existing(&mut c, &["x"]).await, Vec::<String>::new());
        set(&mut c, &["y"]).await;
        feed.push(
            Action::Reset {
                reason: "test".into(),
            },
            None,
        );
        applied(&metrics, &server, 5).await;
        assert_eq!(existing(&mut c, &["y"]).await, Vec::<String>::new());

        let m = metrics_of(&metrics, &server);
        assert_eq!((m.flushes, m.failed, m.up), (4, 0, 1), "{m:?}");
        assert_eq!(cmd_flush(&mut c).await, 4, "start, prefix, clear, reset");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memcached_down_then_back_flushes_first() {
        let mut server = TestServer::memcached();
        let (feed, metrics) = (Feed::new(1, 1024), Arc::new(Metrics::new()));
        let a = spawn(
            MemcachedConfig {
                flush_on_start: false,
                ..cfg(&server.url(), "")
            },
            feed.clone(),
            metrics.clone(),
        );
        until("connected", || async {
            a.connected.load(Ordering::Relaxed)
        })
        .await;

        server.stop();
        let down = Instant::now();
        until("applier down", || async {
            !a.connected.load(Ordering::Relaxed) && metrics_of(&metrics, &server).up == 0
        })
        .await;
        feed.push(Action::Invalidate(vec!["missed".into()]), None);
        until("retries", || async {
            metrics_of(&metrics, &server).failed >= 3
        })
        .await;
        // Down for 2 s: the scenario.
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(down.elapsed())).await;

        server.restart();
        let mut c = client(&server).await;
        until("applier back", || async {
            a.connected.load(Ordering::Relaxed)
        })
        .await;
        assert_eq!(cmd_flush(&mut c).await, 1, "flushed once it was back");
        let m = metrics_of(&metrics, &server);
        assert_eq!((m.applied, m.flushes, m.up), (0, 1, 1), "{m:?}");

        set(&mut c, &["k", "other"]).await;
        feed.push(Action::Invalidate(vec!["k".into()]), None);
        applied(&metrics, &server, 1).await;
        assert_eq!(existing(&mut c, &["k", "other"]).await, ["other"]);
        assert_eq!(cmd_flush(&mut c).await, 1);
    }
}
