//! Webhooks: the agent's deliveries POSTed to local applications, one task
//! per `[[webhook]]`, each reading the [`Feed`] by its own cursor.
//!
//! A POST carries a JSON array of the items' objects (the same objects as
//! the SSE events' `data`), at most `batch` of them, in feed order, with
//! `Content-Type: application/json`. One batch is in flight at a time, so a
//! webhook's receiver sees every delivery in order. An answer 2xx is
//! success; anything else (refused, timed out, another status, a redirect)
//! is retried after a back-off from `backoff`, doubling up to `backoff_max`,
//! up to `retries` tries of that batch. Then the batch is given up: the
//! cursor moves past it and the next successful POST begins with a `reset`
//! object (reason `webhook_gave_up`). A webhook so far behind that its items
//! left the feed's buffer gets a `reset` too (`webhook_behind`), and so does
//! every webhook at agent start (`agent_started`, unless `reset_on_start =
//! false`): the agent was not posting while it was down. At most one `reset`
//! is pending at a time; it carries the reason of the latest loss and is
//! placed right before the first item still to come (its `id` is the cursor
//! of the last item skipped). A pending `reset` is POSTed even when no item
//! follows it, so a receiver learns of a loss without waiting for traffic.
//!
//! Only `http://` URLs: this build has no TLS (webhooks are meant for
//! applications on the same host). Proxies from the environment are not
//! used, redirects are not followed, and at most 64 KiB of an answer's body
//! is read.
//!
//! This module may not block the feed: a slow or dead receiver only costs
//! its own webhook (and, once its cursor leaves the buffer, a `reset`).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::config::WebhookConfig;
use super::feed::{Feed, Item, Read};
use super::metrics::{Metrics, WebhookLabels};

/// Reset reason: a batch ran out of tries and was given up.
pub const REASON_GAVE_UP: &str = "webhook_gave_up";
/// Reset reason: the webhook's cursor left the feed's buffer.
pub const REASON_BEHIND: &str = "webhook_behind";
/// Reset reason: the first POST after the agent started (it was not
/// posting while it was down).
pub const REASON_STARTED: &str = "agent_started";

/// Most bytes of an answer's body read (the rest is dropped with the
/// connection).
const MAX_ANSWER_BODY: usize = 64 << 10;
/// Least time between two warnings of one webhook about batches given up.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Starts one task per webhook, each reading `feed` from its first item.
/// A task ends once the feed is closed and everything has been posted; on
/// shutdown, close the feed and call [`drain`] with the handles.
pub fn spawn_all(
    cfgs: &[WebhookConfig],
    feed: &Arc<Feed>,
    metrics: &Arc<Metrics>,
) -> Vec<JoinHandle<()>> {
    cfgs.iter()
        .map(|c| {
            let w = Webhook::new(c.clone(), feed.clone(), metrics);
            tokio::spawn(w.run())
        })
        .collect()
}

/// Waits at most `deadline` for the webhook tasks to end (close the feed
/// first: a task ends once the feed is closed and all of it is posted),
/// then aborts those still running. Returns how many were aborted: their
/// receivers did not get the tail of the feed.
pub async fn drain(handles: Vec<JoinHandle<()>>, deadline: Duration) -> usize {
    let until = Instant::now() + deadline;
    let mut aborted = 0;
    for mut h in handles {
        if tokio::time::timeout_at(until, &mut h).await.is_err() {
            h.abort();
            let _ = h.await;
            aborted += 1;
        }
    }
    if aborted > 0 {
        tracing::warn!(
            aborted,
            deadline_ms = deadline.as_millis() as u64,
            "webhooks: drain deadline passed; stopped those still posting (their receivers miss the tail)"
        );
    }
    aborted
}

/// The URL without its password, for labels and logs.
fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(None);
            }
            u.to_string()
        }
        Err(_) => url.to_owned(),
    }
}

/// The wait before the next try: none after a success, then `base`,
/// doubling up to `max` while tries keep failing (across batches, so a
/// receiver that stays down is tried once per `max`).
struct Backoff {
    base: Duration,
    max: Duration,
    next: Option<Duration>,
}

impl Backoff {
    fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            next: None,
        }
    }

    /// A try failed: the next one waits longer.
    fn failed(&mut self) {
        self.next = Some(match self.next {
            None => self.base,
            Some(d) => d.saturating_mul(2).min(self.max),
        });
    }

    fn succeeded(&mut self) {
        self.next = None;
    }

    async fn wait(&self) {
        if let Some(d) = self.next {
            tokio::time::sleep(d).await;
        }
    }
}

/// Why a POST failed.
#[derive(Debug)]
enum PostError {
    /// Refused, timed out, reset, or the URL cannot be posted to.
    Transport(String),
    /// The receiver answered, but not 2xx.
    Status(u16),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::Transport(e) => f.write_str(e),
            PostError::Status(s) => write!(f, "answered HTTP {s}"),
        }
    }
}

/// One webhook's task state.
struct Webhook {
    cfg: WebhookConfig,
    /// `cfg.url` without its password.
    url: String,
    feed: Arc<Feed>,
    client: reqwest::Client,
    backlog: prometheus_client::metrics::gauge::Gauge,
    posts_ok: prometheus_client::metrics::counter::Counter,
    posts_failed: prometheus_client::metrics::counter::Counter,
    resets: prometheus_client::metrics::counter::Counter,
    /// The id of the last item posted or given up.
    after: u64,
    /// The reason of the `reset` the next POST must begin with.
    pending: Option<&'static str>,
    backoff: Backoff,
    /// Since the last success: batches and items given up, failed tries,
    /// and when the trouble began.
    lost_batches: u64,
    lost_items: u64,
    failed_tries: u64,
    failing_since: Option<Instant>,
    last_warn: Option<Instant>,
}

impl Webhook {
    fn new(cfg: WebhookConfig, feed: Arc<Feed>, metrics: &Metrics) -> Webhook {
        let url = display_url(&cfg.url);
        let labels = WebhookLabels { url: url.clone() };
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap_or_else(|e| {
                // Only a TLS backend or resolver can fail to build; neither
                // is used here. Fall back to the plain client.
                tracing::warn!(url = %url, error = %e, "webhook: client builder failed; using defaults");
                reqwest::Client::new()
            });
        Webhook {
            pending: cfg.reset_on_start.then_some(REASON_STARTED),
            backoff: Backoff::new(cfg.backoff, cfg.backoff_max),
            backlog: metrics.webhook_backlog.get_or_create(&labels).clone(),
            posts_ok: metrics.webhook_posts_ok.get_or_create(&labels).clone(),
            posts_failed: metrics.webhook_posts_failed.get_or_create(&labels).clone(),
            resets: metrics.webhook_resets.get_or_create(&labels).clone(),
            cfg,
            url,
            feed,
            client,
            after: 0,
            lost_batches: 0,
            lost_items: 0,
            failed_tries: 0,
            failing_since: None,
            last_warn: None,
        }
    }

    fn set_backlog(&self) {
        let n = self.feed.last().saturating_sub(self.after);
        self.backlog.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A loss: the next POST begins with a `reset` (one, however many
    /// losses; it names the latest).
    fn lose(&mut self, reason: &'static str) {
        self.resets.inc();
        self.pending = Some(reason);
    }

    async fn run(mut self) {
        if !self.cfg.url.starts_with("http://") {
            tracing::error!(
                url = %self.url,
                "webhook: only http:// URLs can be posted to (this build has no TLS; \
                 webhooks are meant for applications on this host): every POST will fail"
            );
        }
        let batch = self.cfg.batch.max(1);
        loop {
            self.set_backlog();
            let room = if self.pending.is_some() {
                batch - 1
            } else {
                batch
            };
            let items = if room == 0 {
                Vec::new()
            } else {
                match self.feed.read(self.after, room) {
                    Read::Items(v) => v,
                    Read::Gone { after } => {
                        let skipped = after.saturating_sub(self.after);
                        tracing::warn!(
                            url = %self.url,
                            skipped,
                            "webhook: fell behind the agent's buffer; its next POST begins with a reset"
                        );
                        self.lose(REASON_BEHIND);
                        self.after = after;
                        continue;
                    }
                }
            };
            if items.is_empty() && self.pending.is_none() {
                if !self.feed.wait(self.after).await {
                    return;
                }
                continue;
            }
            self.post_batch(items).await;
        }
    }

    /// Posts the pending `reset` (if any) and `items`, trying up to
    /// `retries` times; moves the cursor past them either way.
    async fn post_batch(&mut self, items: Vec<Arc<Item>>) {
        let reset = self
            .pending
            .map(|reason| Item::agent_reset(self.feed.epoch(), self.after, reason));
        let objects = reset.iter().chain(items.iter().map(|i| &**i));
        let mut body =
            String::with_capacity(2 + objects.clone().map(|i| i.json.len() + 1).sum::<usize>());
        body.push('[');
        for (n, item) in objects.enumerate() {
            if n > 0 {
                body.push(',');
            }
            body.push_str(&item.json);
        }
        body.push(']');

        let tries = self.cfg.retries.max(1);
        let mut last_error = None;
        for _ in 0..tries {
            self.backoff.wait().await;
            match self.post(&body).await {
                Ok(()) => {
                    last_error = None;
                    break;
                }
                Err(e) => {
                    tracing::debug!(url = %self.url, error = %e, "webhook: POST failed; will retry");
                    self.posts_failed.inc();
                    self.failed_tries += 1;
                    self.failing_since.get_or_insert_with(Instant::now);
                    self.backoff.failed();
                    last_error = Some(e);
                }
            }
        }
        if let Some(last) = items.last() {
            self.after = last.id;
        }
        match last_error {
            None => self.delivered(reset.is_some()),
            Some(e) => self.gave_up(items.len(), e),
        }
    }

    fn delivered(&mut self, had_reset: bool) {
        self.posts_ok.inc();
        self.backoff.succeeded();
        if had_reset {
            self.pending = None;
        }
        if self.lost_batches > 0 {
            let down_ms = self
                .failing_since
                .map_or(0, |t| t.elapsed().as_millis() as u64);
            tracing::info!(
                url = %self.url,
                batches_given_up = self.lost_batches,
                items_given_up = self.lost_items,
                failed_posts = self.failed_tries,
                down_ms,
                "webhook: receiver is back; this POST began with a reset"
            );
        } else if self.failed_tries > 0 {
            tracing::debug!(url = %self.url, failed_posts = self.failed_tries, "webhook: POST succeeded after retries");
        }
        self.lost_batches = 0;
        self.lost_items = 0;
        self.failed_tries = 0;
        self.failing_since = None;
        self.last_warn = None;
    }

    fn gave_up(&mut self, n_items: usize, e: PostError) {
        if n_items == 0 {
            // Only the pending reset: nothing lost, it stays pending.
            return;
        }
        self.lose(REASON_GAVE_UP);
        self.lost_batches += 1;
        self.lost_items += n_items as u64;
        let now = Instant::now();
        if self
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
        {
            self.last_warn = Some(now);
            tracing::warn!(
                url = %self.url,
                error = %e,
                tries = self.cfg.retries.max(1),
                batches_given_up = self.lost_batches,
                items_given_up = self.lost_items,
                "webhook: batch given up; the next successful POST begins with a reset"
            );
        }
    }

    /// One POST of `body`; success is a 2xx answer.
    async fn post(&self, body: &str) -> Result<(), PostError> {
        if !self.cfg.url.starts_with("http://") {
            return Err(PostError::Transport(
                "not an http:// URL (this build has no TLS)".into(),
            ));
        }
        let mut answer = self
            .client
            .post(&self.cfg.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| PostError::Transport(error_chain(&e)))?;
        let status = answer.status();
        // Read a little of the answer so that the connection can be kept
        // alive; a long one is cut off (the connection is then dropped).
        let mut read = 0;
        while read <= MAX_ANSWER_BODY {
            match answer.chunk().await {
                Ok(Some(c)) => read += c.len(),
                Ok(None) | Err(_) => break,
            }
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(PostError::Status(status.as_u16()))
        }
    }
}

/// An error with its causes ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use serde_json::Value;
    use tokio::sync::watch;

    use super::*;
    use crate::agent::feed::{cursor, Action};

    const EPOCH: u64 = 0x5eed;
    const WAIT: Duration = Duration::from_secs(10);

    /// A real HTTP receiver: records every POST, answers 500 to the first
    /// `fail` of them and 200 after.
    struct Receiver {
        fail: AtomicUsize,
        /// Every POST: (status answered, content type, body).
        posts: Mutex<Vec<(u16, String, String)>>,
        count: watch::Sender<usize>,
    }

    async fn record(
        State(r): State<Arc<Receiver>>,
        headers: HeaderMap,
        body: String,
    ) -> StatusCode {
        let failing = r
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let status = if failing {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let n = {
            let mut p = r.posts.lock().unwrap();
            p.push((status.as_u16(), ct, body));
            p.len()
        };
        r.count.send_replace(n);
        status
    }

    impl Receiver {
        /// Serves on `addr` (port 0: any free one); returns it and the
        /// server task (aborted to stop listening).
        async fn start(
            addr: SocketAddr,
            fail: usize,
        ) -> (Arc<Receiver>, SocketAddr, JoinHandle<()>) {
            let r = Arc::new(Receiver {
                fail: AtomicUsize::new(fail),
                posts: Mutex::new(Vec::new()),
                count: watch::Sender::new(0),
            });
            let app = axum::Router::new()
                .route("/hook", axum::routing::post(record))
                .with_state(r.clone());
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            (r, addr, server)
        }

        /// The objects of every successful POST, one array per POST.
        fn delivered(&self) -> Vec<Vec<Value>> {
            self.posts
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.0 == 200)
                .map(|p| serde_json::from_str::<Vec<Value>>(&p.2).unwrap())
                .collect()
        }

        fn attempts(&self) -> usize {
            self.posts.lock().unwrap().len()
        }

        /// Waits until `cond` holds of the delivered arrays.
        async fn wait_for(
            &self,
            what: &str,
            cond: impl Fn(&[Vec<Value>]) -> bool,
        ) -> Vec<Vec<Value>> {
            let mut rx = self.count.subscribe();
            let r = tokio::time::timeout(WAIT, async {
                loop {
                    let d = self.delivered();
                    if cond(&d) {
                        return d;
                    }
                    rx.changed().await.unwrap();
                }
            })
            .await;
            r.unwrap_or_else(|_| {
                panic!(
                    "timed out waiting for {what}; delivered {:?}",
                    self.delivered()
                )
            })
        }
    }

    fn config(addr: SocketAddr) -> WebhookConfig {
        WebhookConfig {
            url: format!("http://{addr}/hook"),
            batch: 100,
            timeout: Duration::from_secs(2),
            retries: 3,
            backoff: Duration::from_millis(1),
            backoff_max: Duration::from_millis(8),
            reset_on_start: false,
        }
    }

    fn push(feed: &Feed, n: usize) {
        for _ in 0..n {
            let id = feed.last() + 1;
            feed.push(Action::Invalidate(vec![format!("k{id}")]), None);
        }
    }

    /// The feed ids of the non-reset objects, in arrival order.
    fn ids(d: &[Vec<Value>]) -> Vec<u64> {
        d.iter()
            .flatten()
            .filter(|o| o["type"] != "reset")
            .map(|o| {
                let id = o["id"].as_str().unwrap();
                id.split_once(':').unwrap().1.parse().unwrap()
            })
            .collect()
    }

    fn resets(d: &[Vec<Value>]) -> Vec<&Value> {
        d.iter()
            .flatten()
            .filter(|o| o["type"] == "reset")
            .collect()
    }

    /// Polls a metric until `cond` holds (metrics have no change signal).
    async fn wait_metric(what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < WAIT, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn labels(c: &WebhookConfig) -> WebhookLabels {
        WebhookLabels { url: c.url.clone() }
    }

    /// A free loopback port with nothing listening on it.
    async fn dead_addr() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    /// The feed position in an object's cursor (`<epoch>:<n>`).
    fn position(v: &Value) -> u64 {
        let id = v["id"].as_str().expect("an id");
        id.split_once(':')
            .expect("a cursor")
            .1
            .parse()
            .expect("a number")
    }

    #[tokio::test]
    async fn deliveries_arrive_in_order_as_json_arrays_in_batches() {
        let (rx, addr, _server) = Receiver::start("127.0.0.1:0".parse().unwrap(), 0).await;
        let feed = Feed::new(EPOCH, 1000);
        let metrics = Arc::new(Metrics::new());
        let cfg = WebhookConfig {
            batch: 3,
            reset_on_start: true,
            ..config(addr)
        };
        push(&feed, 10);
        let handles = spawn_all(std::slice::from_ref(&cfg), &feed, &metrics);
        rx.wait_for("10 items", |d| ids(d).len() == 10).await;
        push(&feed, 5);
        let d = rx.wait_for("15 items", |d| ids(d).len() == 15).await;

        assert_eq!(ids(&d), (1..=15).collect::<Vec<u64>>());
        // The first POST begins with the start reset, placed before item 1.
        assert_eq!(d[0][0]["type"], "reset");
        assert_eq!(d[0][0]["reason"], REASON_STARTED);
        assert_eq!(d[0][0]["id"], cursor(EPOCH, 0));
        assert_eq!(resets(&d).len(), 1);
        // Batched: never over 3, and the 10 waiting items went 3 at a time.
        assert!(d.iter().all(|b| b.len() <= 3), "{d:?}");
        assert_eq!(d[0].len(), 3);
        assert_eq!(d[1].len(), 3);
        // The objects are the feed's own, byte for byte.
        let Read::Items(items) = feed.read(0, 1) else {
            panic!()
        };
        let posts = rx.posts.lock().unwrap().clone();
        assert!(posts[0].2.contains(&*items[0].json), "{}", posts[0].2);
        assert!(posts.iter().all(|p| p.1 == "application/json"), "{posts:?}");

        let l = labels(&cfg);
        wait_metric("backlog 0", || {
            metrics.webhook_backlog.get_or_create(&l).get() == 0
        })
        .await;
        assert_eq!(
            metrics.webhook_posts_ok.get_or_create(&l).get(),
            posts.len() as u64
        );
        assert_eq!(metrics.webhook_posts_failed.get_or_create(&l).get(), 0);
        assert_eq!(metrics.webhook_resets.get_or_create(&l).get(), 0);
        feed.close();
        assert_eq!(drain(handles, WAIT).await, 0);
    }

    /// The receiver fails 10 times in a row, then recovers.
    async fn fails_ten_times(retries: u32) -> (Vec<Vec<Value>>, Arc<Metrics>, WebhookConfig, u64) {
        let (rx, addr, _server) = Receiver::start("127.0.0.1:0".parse().unwrap(), 10).await;
        let feed = Feed::new(EPOCH, 1000);
        let metrics = Arc::new(Metrics::new());
        let cfg = WebhookConfig {
            batch: 4,
            retries,
            ..config(addr)
        };
        let handles = spawn_all(std::slice::from_ref(&cfg), &feed, &metrics);
        push(&feed, 2);
        // Items keep coming while it fails.
        for _ in 0..12 {
            let n = rx.attempts();
            tokio::time::timeout(WAIT, rx.count.subscribe().wait_for(|c| *c > n))
                .await
                .unwrap()
                .unwrap();
            push(&feed, 2);
        }
        let last = feed.last();
        let d = rx
            .wait_for("the last item", |d| ids(d).last() == Some(&last))
            .await;
        assert_eq!(
            rx.posts
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.0 == 500)
                .count(),
            10
        );
        feed.close();
        assert_eq!(drain(handles, WAIT).await, 0);
        (d, metrics, cfg, last)
    }

    #[tokio::test]
    async fn batches_given_up_become_one_reset_at_the_head_of_the_next_post() {
        let (d, metrics, cfg, last) = fails_ten_times(3).await;
        // 10 failures with 3 tries a batch: 3 batches given up, then the
        // 4th batch's first try fails and its second gets through.
        let first = &d[0];
        assert_eq!(first[0]["type"], "reset", "{d:?}");
        assert_eq!(first[0]["reason"], REASON_GAVE_UP);
        assert_eq!(
            resets(&d).len(),
            1,
            "one reset for all the batches given up: {d:?}"
        );
        // After the reset: every item from the one after its cursor on, in order.
        let after: u64 = position(&first[0]);
        assert!(after >= 3, "3 batches were given up: {d:?}");
        assert_eq!(ids(&d), (after + 1..=last).collect::<Vec<u64>>());
        let l = labels(&cfg);
        assert_eq!(metrics.webhook_posts_failed.get_or_create(&l).get(), 10);
        assert_eq!(metrics.webhook_resets.get_or_create(&l).get(), 3);
        assert_eq!(
            metrics.webhook_posts_ok.get_or_create(&l).get(),
            d.len() as u64
        );
    }

    #[tokio::test]
    async fn with_enough_retries_nothing_is_given_up() {
        let (d, metrics, cfg, last) = fails_ten_times(11).await;
        assert!(resets(&d).is_empty(), "{d:?}");
        assert_eq!(ids(&d), (1..=last).collect::<Vec<u64>>());
        assert!(d.iter().all(|b| b.len() <= 4), "{d:?}");
        let l = labels(&cfg);
        assert_eq!(metrics.webhook_posts_failed.get_or_create(&l).get(), 10);
        assert_eq!(metrics.webhook_resets.get_or_create(&l).get(), 0);
    }

    #[tokio::test]
    async fn a_receiver_not_listening_gets_a_reset_when_it_comes_up() {
        let addr = dead_addr().await;
        let feed = Feed::new(EPOCH, 1000);
        let metrics = Arc::new(Metrics::new());
        let cfg = WebhookConfig {
            retries: 2,
            // Pending too: the reset names the latest loss.
            reset_on_start: true,
            ..config(addr)
        };
        let l = labels(&cfg);
        let handles = spawn_all(std::slice::from_ref(&cfg), &feed, &metrics);
        push(&feed, 3);
        wait_metric("a batch given up", || {
            metrics.webhook_resets.get_or_create(&l).get() >= 1
        })
        .await;
        assert!(metrics.webhook_posts_failed.get_or_create(&l).get() >= 2);
        assert_eq!(metrics.webhook_posts_ok.get_or_create(&l).get(), 0);
        push(&feed, 2);
        let (rx, _, _server) = Receiver::start(addr, 0).await;
        let last = feed.last();
        let d = rx
            .wait_for("the last item", |d| ids(d).last() == Some(&last))
            .await;
        assert_eq!(d[0][0]["type"], "reset", "{d:?}");
        assert_eq!(d[0][0]["reason"], REASON_GAVE_UP);
        assert_eq!(resets(&d).len(), 1);
        let after: u64 = position(&d[0][0]);
        assert!(after >= 3, "{d:?}");
        assert_eq!(ids(&d), (after + 1..=last).collect::<Vec<u64>>());
        feed.close();
        assert_eq!(drain(handles, WAIT).await, 0);
    }

    #[tokio::test]
    async fn a_cursor_that_left_the_buffer_gets_a_reset_first() {
        let (rx, addr, _server) = Receiver::start("127.0.0.1:0".parse().unwrap(), 0).await;
        let feed = Feed::new(EPOCH, 4);
        let metrics = Arc::new(Metrics::new());
        // Holds 7..=10 only.
        push(&feed, 10);
        let cfg = config(addr);
        let handles = spawn_all(std::slice::from_ref(&cfg), &feed, &metrics);
        let d = rx.wait_for("item 10", |d| ids(d).last() == Some(&10)).await;
        assert_eq!(d[0][0]["type"], "reset");
        assert_eq!(d[0][0]["reason"], REASON_BEHIND);
        assert_eq!(d[0][0]["id"], cursor(EPOCH, 6));
        assert_eq!(resets(&d).len(), 1);
        assert_eq!(ids(&d), [7, 8, 9, 10]);
        assert_eq!(metrics.webhook_resets.get_or_create(&labels(&cfg)).get(), 1);
        feed.close();
        assert_eq!(drain(handles, WAIT).await, 0);
    }

    #[tokio::test]
    async fn a_closed_feed_is_posted_to_the_end_then_the_task_ends() {
        let (rx, addr, _server) = Receiver::start("127.0.0.1:0".parse().unwrap(), 0).await;
        let feed = Feed::new(EPOCH, 1000);
        let metrics = Arc::new(Metrics::new());
        let cfg = WebhookConfig {
            batch: 5,
            ..config(addr)
        };
        let handles = spawn_all(std::slice::from_ref(&cfg), &feed, &metrics);
        push(&feed, 50);
        feed.close();
        assert_eq!(drain(handles, WAIT).await, 0);
        // Everything was posted before the task ended.
        assert_eq!(ids(&rx.delivered()), (1..=50).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn a_dead_receiver_is_given_up_at_the_drain_deadline() {
        let addr = dead_addr().await;
        let feed = Feed::new(EPOCH, 1000);
        let metrics = Arc::new(Metrics::new());
        let cfg = WebhookConfig {
            retries: 1_000_000,
            backoff: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
            ..config(addr)
        };
        let l = labels(&cfg);
        let handles = spawn_all(std::slice::from_ref(&cfg), &feed, &metrics);
        push(&feed, 3);
        feed.close();
        wait_metric("failed posts", || {
            metrics.webhook_posts_failed.get_or_create(&l).get() >= 2
        })
        .await;
        let watch: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
        let t = Instant::now();
        let deadline = Duration::from_millis(300);
        assert_eq!(drain(handles, deadline).await, 1);
        let took = t.elapsed();
        assert!(
            took >= deadline && took < deadline + Duration::from_secs(2),
            "{took:?}"
        );
        assert!(watch.iter().all(|h| h.is_finished()));
        assert_eq!(metrics.webhook_backlog.get_or_create(&l).get(), 3);
    }
}
