//! The Redis applier: deliveries applied to a Redis database with the
//! `redis` crate (one multiplexed connection, dropped and reopened on any
//! error so that every outage is noticed and flushed for).
//!
//! - Keys → `UNLINK <key_prefix><key> ...` (memory freed off Redis' main
//!   thread), `batch` keys per command; consecutive invalidations read
//!   together go out as one pipeline.
//! - Prefix → `SCAN <cursor> MATCH <key_prefix><prefix>* COUNT <batch>` and
//!   `UNLINK` of each page, until the cursor is back at 0: bounded steps
//!   that never block the server (never `KEYS`). Glob characters
//!   (`* ? [ ] \`) in the prefix and the key prefix are escaped, so a
//!   prefix matches literally.
//! - Clear and Reset → `FLUSHDB ASYNC` with `flush = "db"` (the database is
//!   the cache's own), or SCAN + UNLINK of `key_prefix*` with
//!   `flush = "prefix"` (the database is shared; only this application's
//!   keys go).
//! - Custom events are not for caches: skipped (counted).
//!
//! Retries, back-off, flush on start and after an outage: [`super`].
//! Redis Cluster is not supported (one node or a proxy in front).

use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use super::{Applier, Backend, COMMAND_TIMEOUT, CONNECT_TIMEOUT};
use crate::agent::config::{Flush, RedisConfig};
use crate::agent::feed::Feed;
use crate::agent::metrics::Metrics;

/// Starts the applier of one `[[apply.redis]]`.
pub fn spawn(cfg: RedisConfig, feed: Arc<Feed>, metrics: Arc<Metrics>) -> Applier {
    let flush_on_start = cfg.flush_on_start;
    super::start(Redis::new(cfg), flush_on_start, feed, metrics)
}

/// `s` with Redis glob characters escaped, so that `SCAN MATCH` takes it
/// literally.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

struct Redis {
    cfg: RedisConfig,
    client: Result<redis::Client, String>,
    conn: Option<MultiplexedConnection>,
}

impl Redis {
    fn new(cfg: RedisConfig) -> Redis {
        let client = redis::Client::open(cfg.url.as_str()).map_err(|e| e.to_string());
        Redis {
            cfg,
            client,
            conn: None,
        }
    }

    fn conn(&mut self) -> Result<&mut MultiplexedConnection, String> {
        self.conn.as_mut().ok_or_else(|| "not connected".to_owned())
    }

    fn batch(&self) -> usize {
        self.cfg.batch.max(1)
    }

    /// SCAN MATCH `pattern` and UNLINK every page; returns the keys removed.
    async fn scan_unlink(&mut self, pattern: &str) -> Result<u64, String> {
        let batch = self.batch();
        let conn = self.conn()?;
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(batch)
                .query_async(conn)
                .await
                .map_err(|e| format!("SCAN: {e}"))?;
            for chunk in keys.chunks(batch) {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(chunk)
                    .query_async(conn)
                    .await
                    .map_err(|e| format!("UNLINK: {e}"))?;
                removed += n;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

impl Backend for Redis {
    const KIND: &'static str = "redis";
    const PREFIX_FLUSHES: bool = false;

    fn target(&self) -> String {
        super::strip_password(&self.cfg.url)
    }

    fn run_keys(&self) -> usize {
        self.batch().saturating_mul(16)
    }

    async fn connect(&mut self) -> Result<(), String> {
        self.conn = None;
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(COMMAND_TIMEOUT);
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        self.conn = Some(conn);
        Ok(())
    }

    fn disconnect(&mut self) {
        self.conn = None;
    }

    async fn ping(&mut self) -> Result<(), String> {
        let conn = self.conn()?;
        let _: String = redis::cmd("PING")
            .query_async(conn)
            .await
            .map_err(|e| format!("PING: {e}"))?;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), String> {
        match self.cfg.flush {
            Flush::Db => {
                let conn = self.conn()?;
                let _: () = redis::cmd("FLUSHDB")
                    .arg("ASYNC")
                    .query_async(conn)
                    .await
                    .map_err(|e| format!("FLUSHDB ASYNC: {e}"))?;
            }
            Flush::Prefix => {
                let pattern = format!("{}*", glob_escape(&self.cfg.key_prefix));
                self.scan_unlink(&pattern).await?;
            }
        }
        Ok(())
    }

    async fn delete(&mut self, keys: &[&str]) -> Result<u64, String> {
        if keys.is_empty() {
            return Ok(0);
        }
        let batch = self.batch();
        let prefix = self.cfg.key_prefix.clone();
        let mut pipe = redis::pipe();
        for chunk in keys.chunks(batch) {
            let cmd = pipe.cmd("UNLINK");
            for k in chunk {
                if prefix.is_empty() {
                    cmd.arg(*k);
                } else {
                    let mut full = String::with_capacity(prefix.len() + k.len());
                    full.push_str(&prefix);
                    full.push_str(k);
                    cmd.arg(full);
                }
            }
            cmd.ignore();
        }
        let conn = self.conn()?;
        let _: () = pipe
            .query_async(conn)
            .await
            .map_err(|e| format!("UNLINK: {e}"))?;
        Ok(0)
    }

    async fn delete_prefix(&mut self, prefix: &str) -> Result<(), String> {
        let pattern = format!(
            "{}*",
            glob_escape(&format!("{}{prefix}", self.cfg.key_prefix))
        );
        self.scan_unlink(&pattern).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use redis::AsyncCommands;

    use super::super::testkit::{counts, until, Counts};
    use super::*;
    use crate::agent::feed::Action;
    use crate::agent::testservers::TestServer;

    fn cfg(url: &str, key_prefix: &str, flush: Flush, flush_on_start: bool) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            key_prefix: key_prefix.into(),
            flush,
            flush_on_start,
            // Small, so that a few keys already take several commands.
            batch: 2,
        }
    }

    async fn conn(url: &str) -> MultiplexedConnection {
        let client = redis::Client::open(url).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }

    async fn set(c: &mut MultiplexedConnection, keys: &[&str]) {
        for k in keys {
            let _: () = c.set(*k, "v").await.unwrap();
        }
    }

    /// The keys among `keys` that exist.
    async fn existing(c: &mut MultiplexedConnection, keys: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for k in keys {
            let n: u64 = c.exists(*k).await.unwrap();
            if n == 1 {
                out.push(k.to_string());
            }
        }
        out
    }

    /// How many FLUSHDB this server instance has run (INFO commandstats).
    async fn flushdb_calls(c: &mut MultiplexedConnection) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(c)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_flushdb:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    fn metrics_of(m: &Arc<Metrics>, url: &str) -> Counts {
        counts(m, "redis", &super::super::strip_password(url))
    }

    async fn ready(a: &Applier) {
        until("applier connected", || async {
            a.connected.load(Ordering::Relaxed)
        })
        .await;
    }

    async fn applied(m: &Arc<Metrics>, url: &str, n: u64) {
        until(&format!("{n} applied"), || async {
            metrics_of(m, url).applied >= n
        })
        .await;
        assert_eq!(metrics_of(m, url).applied, n);
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?c[d]e\\f"), "a\\*b\\?c\\[d\\]e\\\\f");
        assert_eq!(glob_escape("plain:"), "plain:");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_prefix_clear_and_reset_reach_redis() {
        let server = TestServer::redis();
        let url = server.url();
        let mut c = conn(&url).await;
        let (feed, metrics) = (Feed::new(1, 1024), Arc::new(Metrics::new()));
        let a = spawn(
            cfg(&url, "app:", Flush::Db, true),
            feed.clone(),
            metrics.clone(),
        );
        ready(&a).await;

        // Keys: with the key prefix, coalesced into one pipeline of
        // UNLINKs of 2 keys each; a key outside the prefix stays.
        set(&mut c, &["app:a", "app:b", "app:c", "app:keep", "a"]).await;
        feed.push(Action::Invalidate(vec!["a".into(), "b".into()]), None);
        feed.push(Action::Invalidate(vec!["c".into()]), None);
        applied(&metrics, &url, 2).await;
        assert_eq!(
            existing(&mut c, &["app:a", "app:b", "app:c", "app:keep", "a"]).await,
            ["app:keep", "a"]
        );

        // Prefix: glob characters in it match literally; 50 keys take many
        // SCAN pages of 2.
        let mut many: Vec<String> = (0..50).map(|i| format!("app:u[1]*:{i}")).collect();
        many.push("app:u1x:1".into()); // what an unescaped u[1]* would match
        many.push("app:u[1]-other".into());
        let many_ref: Vec<&str> = many.iter().map(String::as_str).collect();
        set(&mut c, &many_ref).await;
        feed.push(Action::Prefix("u[1]*:".into()), None);
        applied(&metrics, &url, 3).await;
        assert_eq!(
            existing(&mut c, &many_ref).await,
            ["app:u1x:1", "app:u[1]-other"]
        );

        // Custom: skipped, not applied.
        feed.push(
            Action::Custom {
                topic: "t".into(),
                payload: vec![1],
            },
            None,
        );
        until("custom skipped", || async {
            metrics_of(&metrics, &url).skipped == 1
        })
        .await;

        // Clear: FLUSHDB ASYNC (flush = "db": everything in the database).
        set(&mut c, &["app:x", "other"]).await;
        feed.push(Action::Clear, None);
        applied(&metrics, &url, 4).await;
        let n: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
        assert_eq!(n, 0);

        // Reset: the same.
        set(&mut c, &["app:y", "other"]).await;
        feed.push(
            Action::Reset {
                reason: "gap_unavailable".into(),
            },
            None,
        );
        applied(&metrics, &url, 5).await;
        let n: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
        assert_eq!(n, 0);

        let m = metrics_of(&metrics, &url);
        assert_eq!(
            (m.flushes, m.failed, m.skipped, m.up),
            (3, 0, 1, 1),
            "{m:?}"
        );
        assert_eq!(flushdb_calls(&mut c).await, 3, "start, clear, reset");

        // The feed closes: the task ends once everything is applied.
        set(&mut c, &["app:last"]).await;
        feed.push(Action::Invalidate(vec!["last".into()]), None);
        feed.close();
        tokio::time::timeout(Duration::from_secs(10), a.task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(existing(&mut c, &["app:last"]).await, Vec::<String>::new());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_prefix_leaves_keys_outside_the_prefix() {
        let server = TestServer::redis();
        let url = server.url();
        let mut c = conn(&url).await;
        // A glob character in the key prefix too: "a*:" must not match "abc:".
        let all = ["a*:1", "a*:2", "abc:1", "other"];
        set(&mut c, &all).await;
        let (feed, metrics) = (Feed::new(1, 1024), Arc::new(Metrics::new()));
        let a = spawn(
            cfg(&url, "a*:", Flush::Prefix, true),
            feed.clone(),
            metrics.clone(),
        );
        ready(&a).await;
        assert_eq!(metrics_of(&metrics, &url).flushes, 1);
        assert_eq!(existing(&mut c, &all).await, ["abc:1", "other"]);

        set(&mut c, &["a*:3", "a*:4", "a*:5"]).await;
        feed.push(
            Action::Reset {
                reason: "test".into(),
            },
            None,
        );
        applied(&metrics, &url, 1).await;
        assert_eq!(
            existing(&mut c, &["a*:3", "a*:4", "a*:5", "abc:1", "other"]).await,
            ["abc:1", "other"]
        );
        feed.push(Action::Clear, None);
        applied(&metrics, &url, 2).await;
        assert_eq!(existing(&mut c, &all).await, ["abc:1", "other"]);
        assert_eq!(
            flushdb_calls(&mut c).await,
            0,
            "flush = \"prefix\" never runs FLUSHDB"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_on_start_flushes_once_and_only_when_asked() {
        let server = TestServer::redis();
        let url = server.url();
        let mut c = conn(&url).await;
        set(&mut c, &["stale"]).await;
        let (feed, metrics) = (Feed::new(1, 1024), Arc::new(Metrics::new()));
        let a = spawn(
            cfg(&url, "", Flush::Db, true),
            feed.clone(),
            metrics.clone(),
        );
        ready(&a).await;
        assert_eq!(existing(&mut c, &["stale"]).await, Vec::<String>::new());
        set(&mut c, &["fresh", "x"]).await;
        feed.push(Action::Invalidate(vec!["x".into()]), None);
        applied(&metrics, &url, 1).await;
        assert_eq!(existing(&mut c, &["fresh", "x"]).await, ["fresh"]);
        assert_eq!(flushdb_calls(&mut c).await, 1);
        assert_eq!(metrics_of(&metrics, &url).flushes, 1);

        // flush_on_start = false (database 1 of the same server): no flush.
        let url1 = url.replace("/0", "/1");
        let mut c1 = conn(&url1).await;
        set(&mut c1, &["kept", "y"]).await;
        let (feed, metrics) = (Feed::new(1, 1024), Arc::new(Metrics::new()));
        let a = spawn(
            cfg(&url1, "", Flush::Db, false),
            feed.clone(),
            metrics.clone(),
        );
        ready(&a).await;
        feed.push(Action::Invalidate(vec!["y".into()]), None);
        applied(&metrics, &url1, 1).await;
        assert_eq!(existing(&mut c1, &["kept", "y"]).await, ["kept"]);
        assert_eq!(metrics_of(&metrics, &url1).flushes, 0);
        assert_eq!(flushdb_calls(&mut c).await, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_down_for_2s_then_flush_first_then_apply() {
        let mut server = TestServer::redis();
        let url = server.url();
        let (feed, metrics) = (Feed::new(1, 1024), Arc::new(Metrics::new()));
        let a = spawn(
            cfg(&url, "", Flush::Db, false),
            feed.clone(),
            metrics.clone(),
        );
        ready(&a).await;
        let mut c = conn(&url).await;
        set(&mut c, &["k1", "stale"]).await;
        feed.push(Action::Invalidate(vec!["k1".into()]), None);
        applied(&metrics, &url, 1).await;
        // Persist "stale": the server comes back with it, as a persistent
        // Redis restarted after the invalidation would.
        server.save();
        drop(c);

        server.stop();
        let down = Instant::now();
        // Noticed while idle (the applier pings), without any delivery.
        until("applier down", || async {
            !a.connected.load(Ordering::Relaxed) && metrics_of(&metrics, &url).up == 0
        })
        .await;
        // Pushed while the server is down: never applied on its own, the
        // flush after the restart covers it.
        feed.push(Action::Invalidate(vec!["stale".into()]), None);
        until("retries with back-off", || async {
            metrics_of(&metrics, &url).failed >= 3
        })
        .await;
        // The outage lasts 2 s (the scenario, not a wait for a condition).
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(down.elapsed())).await;
        assert!(!a.connected.load(Ordering::Relaxed));

        server.restart();
        let mut c = conn(&url).await;
        until("applier back", || async {
            a.connected.load(Ordering::Relaxed)
        })
        .await;
        assert_eq!(
            existing(&mut c, &["stale"]).await,
            Vec::<String>::new(),
            "flushed"
        );
        assert_eq!(flushdb_calls(&mut c).await, 1);
        let m = metrics_of(&metrics, &url);
        assert_eq!((m.applied, m.flushes, m.up), (1, 1, 1), "{m:?}");
        // Retried with back-off, not in a loop: 100 ms doubling over ~2 s
        // is about 5 tries.
        assert!((3..=10).contains(&m.failed), "{m:?}");

        // Then applies normally.
        set(&mut c, &["k3", "k4"]).await;
        feed.push(Action::Invalidate(vec!["k3".into()]), None);
        applied(&metrics, &url, 2).await;
        assert_eq!(existing(&mut c, &["k3", "k4"]).await, ["k4"]);
        assert_eq!(flushdb_calls(&mut c).await, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ends_when_the_feed_closes_even_with_the_server_down() {
        let mut server = TestServer::redis();
        let url = server.url();
        server.stop();
        let (feed, metrics) = (Feed::new(1, 1024), Arc::new(Metrics::new()));
        let a = spawn(
            cfg(&url, "", Flush::Db, true),
            feed.clone(),
            metrics.clone(),
        );
        // Back-off has grown to 3.2 s (after 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s).
        until("retries", || async {
            metrics_of(&metrics, &url).failed >= 6
        })
        .await;
        assert!(!a.connected.load(Ordering::Relaxed));
        feed.push(Action::Invalidate(vec!["k".into()]), None);
        let closed = Instant::now();
        feed.close();
        // A stop does not wait out the back-off: one last try, then the
        // task ends (the next start flushes).
        tokio::time::timeout(Duration::from_secs(4), a.task)
            .await
            .unwrap()
            .unwrap();
        assert!(
            closed.elapsed() < Duration::from_millis(1500),
            "{:?}",
            closed.elapsed()
        );
        assert_eq!(metrics_of(&metrics, &url).applied, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cursor_that_fell_out_of_the_feed_flushes() {
        let server = TestServer::redis();
        let url = server.url();
        let mut c = conn(&url).await;
        set(&mut c, &["before", "g9"]).await;
        // Capacity 4: items 1..=6 are gone before the applier reads.
        let (feed, metrics) = (Feed::new(1, 4), Arc::new(Metrics::new()));
        for i in 0..10 {
            feed.push(Action::Invalidate(vec![format!("g{i}")]), None);
        }
        let a = spawn(
            cfg(&url, "", Flush::Db, false),
            feed.clone(),
            metrics.clone(),
        );
        until("gap flushed", || async {
            metrics_of(&metrics, &url).flushes == 1
        })
        .await;
        ready(&a).await;
        assert_eq!(
            existing(&mut c, &["before", "g9"]).await,
            Vec::<String>::new()
        );
        // Items 7..=10 were before the flush point: covered, not re-applied.
        set(&mut c, &["after", "kept"]).await;
        feed.push(Action::Invalidate(vec!["after".into()]), None);
        applied(&metrics, &url, 1).await;
        assert_eq!(existing(&mut c, &["after", "kept"]).await, ["kept"]);
        assert_eq!(flushdb_calls(&mut c).await, 1);
        assert_eq!(metrics_of(&metrics, &url).flushes, 1);
    }
}
