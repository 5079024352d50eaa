//! Appliers: the agent applies every delivery to the host's cache servers
//! itself (Redis, memcached), so that an application caching there needs no
//! code at all.
//!
//! Every applier is one task running [`run`] over a [`Backend`] (what is
//! said to the server: [`redis`], [`memcached`]). `run` owns the promise:
//! it reads the feed by cursor, in order, and never moves its cursor past an
//! item unless the server confirmed that item or a flush sent after it.
//!
//! - **Start.** With `flush_on_start` (the default) the server is flushed
//!   once before anything else: the agent was not listening while it was
//!   down, so the cache may hold what was invalidated meanwhile.
//! - **Server down or erroring.** The connection is dropped, `applier_up`
//!   goes to 0, `applier_failed_total` counts every failed try, and it
//!   reconnects with back-off (100 ms doubling to 5 s). Once it is back it
//!   flushes **first**, then goes on.
//! - **Fell out of the feed** ([`Read::Gone`]): flush, then go on.
//! - **Flush point.** Before any such flush the cursor is moved to
//!   `feed.last()`: everything up to there is covered by the flush (it is
//!   sent after those items arrived), and everything pushed during or after
//!   the flush is applied after it. Nothing after the flush point is
//!   skipped.
//! - **Idle.** While the feed is quiet the server is pinged every second,
//!   so that a restart is noticed (and flushed for) without waiting for the
//!   next delivery. No busy loop: the task sleeps on the feed or a timer.
//! - **End.** When the feed is closed and everything in it applied. If the
//!   feed closes while the server is unreachable the task ends too (the
//!   next agent start flushes).

pub mod memcached;
pub mod redis;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::config::ApplySection;
use super::feed::{Action, Feed, Item, Read};
use super::metrics::{ApplierLabels, Metrics};

/// A running applier.
pub struct Applier {
    /// `redis` or `memcached`, and its server, for logs and `/readyz`.
    pub name: String,
    /// True while its server is connected and it has flushed as needed
    /// (`/readyz` waits for every applier).
    pub connected: Arc<AtomicBool>,
    /// Ends once the feed is closed and everything in it applied (or the
    /// task is aborted).
    pub task: JoinHandle<()>,
}

/// Starts one applier per configured server, each reading `feed` from its
/// first item.
pub fn spawn_all(cfg: &ApplySection, feed: &Arc<Feed>, metrics: &Arc<Metrics>) -> Vec<Applier> {
    let mut all = Vec::new();
    for r in &cfg.redis {
        all.push(redis::spawn(r.clone(), feed.clone(), metrics.clone()));
    }
    for m in &cfg.memcached {
        all.push(memcached::spawn(m.clone(), feed.clone(), metrics.clone()));
    }
    all
}

/// First wait after a failure; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two tries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle applier checks that its server is still there.
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// Time limit of a connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time limit of one command or pipeline (a flush, one SCAN step, ...).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most feed items read at once.
const READ_MAX: usize = 256;

/// What an applier says to its server. Every method that returns `Err`
/// leaves the connection to be dropped ([`Backend::disconnect`]) by
/// [`run`], which then reconnects and flushes.
pub trait Backend: Send + 'static {
    /// `redis` or `memcached`.
    const KIND: &'static str;
    /// True when the server has no prefix delete and a prefix is applied
    /// as a flush (memcached).
    const PREFIX_FLUSHES: bool;

    /// The server's address for logs and metrics labels, password left out.
    fn target(&self) -> String;
    /// Most keys sent in one pipeline (consecutive invalidations are
    /// coalesced up to this).
    fn run_keys(&self) -> usize;
    /// Opens a connection (replacing any).
    fn connect(&mut self) -> impl Future<Output = Result<(), String>> + Send;
    /// Forgets the connection.
    fn disconnect(&mut self);
    /// A round trip proving the server is there.
    fn ping(&mut self) -> impl Future<Output = Result<(), String>> + Send;
    /// Removes everything this applier is responsible for.
    fn flush(&mut self) -> impl Future<Output = Result<(), String>> + Send;
    /// Removes these keys (before the key prefix); confirmed by the server
    /// on `Ok`. Returns how many keys were skipped because the server
    /// cannot hold such a key.
    fn delete(&mut self, keys: &[&str]) -> impl Future<Output = Result<u64, String>> + Send;
    /// Removes every key starting with `prefix` (never called when
    /// [`Backend::PREFIX_FLUSHES`]).
    fn delete_prefix(&mut self, prefix: &str) -> impl Future<Output = Result<(), String>> + Send;
}

/// Removes the password from a URL for logs and labels (`user:pass@` and
/// a `pass`/`password` query parameter).
pub fn strip_password(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return "(unparsable url)".into();
    };
    if u.password().is_some() {
        let _ = u.set_password(None);
    }
    if u.query().is_some() {
        let kept: Vec<(String, String)> = u
            .query_pairs()
            .filter(|(k, _)| k != "pass" && k != "password")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            u.set_query(None);
        } else {
            u.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    u.to_string()
}

/// Starts `backend`'s task; see the module doc for what it does.
pub fn start<B: Backend>(
    backend: B,
    flush_on_start: bool,
    feed: Arc<Feed>,
    metrics: Arc<Metrics>,
) -> Applier {
    let target = backend.target();
    let connected = Arc::new(AtomicBool::new(false));
    let labels = ApplierLabels {
        kind: B::KIND.into(),
        target: target.clone(),
    };
    let state = Run {
        b: backend,
        feed,
        metrics,
        labels,
        connected: connected.clone(),
        cursor: 0,
        need_flush: flush_on_start,
        backoff: BACKOFF_MIN,
    };
    Applier {
        name: format!("{} {}", B::KIND, target),
        connected,
        task: tokio::spawn(state.run()),
    }
}

struct Run<B> {
    b: B,
    feed: Arc<Feed>,
    metrics: Arc<Metrics>,
    labels: ApplierLabels,
    connected: Arc<AtomicBool>,
    /// Id of the last item applied or covered by a flush.
    cursor: u64,
    /// A flush is owed before anything else is applied.
    need_flush: bool,
    backoff: Duration,
}

impl<B: Backend> Run<B> {
    async fn run(mut self) {
        let (kind, target) = (B::KIND, self.labels.target.clone());
        self.metrics.applier_up.get_or_create(&self.labels).set(0);
        let mut online = false;
        loop {
            if !online {
                match self.come_online().await {
                    Ok(()) => online = true,
                    Err(e) => {
                        self.fail(&e);
                        if feed_closed(&self.feed) {
                            tracing::warn!(kind, %target, error = %e,
                                "applier: feed closed while the server is unreachable; giving up (the next start flushes)");
                            return;
                        }
                        // Waits the back-off, or until the feed closes (a
                        // stop): then one last try at once.
                        tokio::select! {
                            _ = tokio::time::sleep(self.backoff) => {}
                            _ = self.feed.wait(u64::MAX) => {}
                        }
                        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            let items = match self.feed.read(self.cursor, READ_MAX) {
                Read::Gone { after } => {
                    tracing::info!(kind, %target, cursor = self.cursor, after,
                        "applier: fell out of the feed; flushing");
                    self.need_flush = true;
                    online = false;
                    continue;
                }
                Read::Items(items) => items,
            };
            if items.is_empty() {
                match tokio::time::timeout(PING_EVERY, self.feed.wait(self.cursor)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::debug!(kind, %target, cursor = self.cursor, "applier: feed closed, all applied");
                        return;
                    }
                    Err(_idle) => {
                        if let Err(e) = timed(self.b.ping()).await {
                            self.fail(&e);
                            online = false;
                        }
                    }
                }
                continue;
            }
            match self.apply(&items).await {
                Ok(()) => self.backoff = BACKOFF_MIN,
                Err(e) => {
                    self.fail(&e);
                    online = false;
                }
            }
        }
    }

    /// Connects when needed and makes the flush owed, moving the cursor to
    /// the flush point first.
    async fn come_online(&mut self) -> Result<(), String> {
        let (kind, target) = (B::KIND, &self.labels.target);
        // After a failure `connected` is false: reconnect (and `fail` has
        // set `need_flush`). After a gap only the flush is owed.
        if !self.connected.load(Ordering::Relaxed) {
            match tokio::time::timeout(CONNECT_TIMEOUT, self.b.connect()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(format!("connect timed out after {CONNECT_TIMEOUT:?}")),
            }
            self.metrics.applier_up.get_or_create(&self.labels).set(1);
        }
        if self.need_flush {
            // Everything pushed so far is covered by this flush; what comes
            // after is applied after it.
            self.cursor = self.cursor.max(self.feed.last());
            timed_long(self.b.flush()).await?;
            self.need_flush = false;
            self.metrics.apply_flushes.get_or_create(&self.labels).inc();
            tracing::info!(kind, %target, cursor = self.cursor, "applier: flushed");
        }
        if !self.connected.swap(true, Ordering::Relaxed) {
            tracing::info!(kind, %target, "applier: connected");
        }
        self.backoff = BACKOFF_MIN;
        Ok(())
    }

    /// The server failed: drop the connection, count, and owe a flush.
    fn fail(&mut self, e: &str) {
        let (kind, target) = (B::KIND, &self.labels.target);
        self.b.disconnect();
        self.need_flush = true;
        self.metrics.applier_up.get_or_create(&self.labels).set(0);
        self.metrics.apply_failed.get_or_create(&self.labels).inc();
        if self.connected.swap(false, Ordering::Relaxed) {
            tracing::warn!(kind, %target, error = %e,
                "applier: server failed; retrying with back-off, will flush once it is back");
        } else {
            tracing::debug!(kind, %target, error = %e, retry_in = ?self.backoff, "applier: still failing");
        }
    }

    /// Applies `items` (consecutive, starting right after the cursor) in
    /// order, advancing the cursor past each one the server confirmed.
    async fn apply(&mut self, items: &[Arc<Item>]) -> Result<(), String> {
        let mut i = 0;
        while i < items.len() {
            match &items[i].action {
                Action::Invalidate(_) => {
                    // Coalesce consecutive invalidations into one pipeline.
                    let cap = self.b.run_keys().max(1);
                    let mut keys: Vec<&str> = Vec::new();
                    let mut j = i;
                    while j < items.len() {
                        let Action::Invalidate(k) = &items[j].action else {
                            break;
                        };
                        if j > i && keys.len() + k.len() > cap {
                            break;
                        }
                        keys.extend(k.iter().map(String::as_str));
                        j += 1;
                    }
                    let skipped = timed(self.b.delete(&keys)).await?;
                    if skipped > 0 {
                        self.metrics
                            .apply_skipped
                            .get_or_create(&self.labels)
                            .inc_by(skipped);
                    }
                    self.done(&items[i..j]);
                    i = j;
                }
                Action::Prefix(p) => {
                    if B::PREFIX_FLUSHES {
                        timed_long(self.b.flush()).await?;
                        self.metrics.apply_flushes.get_or_create(&self.labels).inc();
                    } else {
                        timed_long(self.b.delete_prefix(p)).await?;
                    }
                    self.done(&items[i..i + 1]);
                    i += 1;
                }
                Action::Clear | Action::Reset { .. } => {
                    timed_long(self.b.flush()).await?;
                    self.metrics.apply_flushes.get_or_create(&self.labels).inc();
                    self.done(&items[i..i + 1]);
                    i += 1;
                }
                Action::Custom { .. } => {
                    self.metrics.apply_skipped.get_or_create(&self.labels).inc();
                    self.cursor = items[i].id;
                    i += 1;
                }
            }
        }
        Ok(())
    }

    /// `items` are confirmed by the server.
    fn done(&mut self, items: &[Arc<Item>]) {
        let applied = self.metrics.applied.get_or_create(&self.labels);
        let latency = self.metrics.apply_latency.get_or_create(&self.labels);
        for it in items {
            latency.observe(it.at.elapsed().as_secs_f64());
        }
        applied.inc_by(items.len() as u64);
        if let Some(last) = items.last() {
            self.cursor = last.id;
        }
    }
}

/// True once `feed` is closed (no item will ever follow `u64::MAX`, so
/// the wait ends only on close).
fn feed_closed(feed: &Feed) -> bool {
    use futures_util::FutureExt;
    feed.wait(u64::MAX).now_or_never().is_some()
}

/// `f` within [`COMMAND_TIMEOUT`].
/// Flushes and prefix deletes walk the whole key space (SCAN) on a shared
/// server: each round trip is bounded by the connection's own timeout, the
/// whole walk by this.
const SCAN_TIMEOUT: Duration = Duration::from_secs(600);

async fn timed_long<T>(f: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    match tokio::time::timeout(SCAN_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(format!("not done within {SCAN_TIMEOUT:?}")),
    }
}

async fn timed<T>(f: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {COMMAND_TIMEOUT:?}")),
    }
}

/// What the applier tests share: waiting for a condition, reading metrics.
#[cfg(test)]
pub(crate) mod testkit {
    use std::future::Future;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::agent::metrics::{ApplierLabels, Metrics};

    /// How long a test waits for an effect.
    pub const DEADLINE: Duration = Duration::from_secs(20);

    /// Waits until `f` is true; panics naming `what` after [`DEADLINE`].
    pub async fn until<F, Fut>(what: &str, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            if f().await {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "not within {DEADLINE:?}: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// One applier's counters and gauge, as read from the metrics.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Counts {
        pub applied: u64,
        pub failed: u64,
        pub flushes: u64,
        pub skipped: u64,
        pub up: i64,
    }

    pub fn counts(m: &Arc<Metrics>, kind: &str, target: &str) -> Counts {
        let l = ApplierLabels {
            kind: kind.into(),
            target: target.into(),
        };
        Counts {
            applied: m.applied.get_or_create(&l).get(),
            failed: m.apply_failed.get_or_create(&l).get(),
            flushes: m.apply_flushes.get_or_create(&l).get(),
            skipped: m.apply_skipped.get_or_create(&l).get(),
            up: m.applier_up.get_or_create(&l).get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_left_out_of_targets() {
        assert_eq!(
            strip_password("redis://user:secret@127.0.0.1:6379/2"),
            "redis://user@127.0.0.1:6379/2"
        );
        assert_eq!(strip_password("redis://:secret@h:1/0"), "redis://h:1/0");
        assert_eq!(
            strip_password("redis+unix:///run/redis.sock?db=1&pass=secret"),
            "redis+unix:///run/redis.sock?db=1"
        );
        assert_eq!(
            strip_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(strip_password("::"), "(unparsable url)");
    }
}
