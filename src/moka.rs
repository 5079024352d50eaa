//! Keeps an in-process [`moka::future::Cache`] coherent with the cluster
//! (feature `moka`): every delivery of a [`Subscription`] is applied to the
//! cache, so that a Rust service caching in moka needs no code of its own
//! to follow invalidations.
//!
//! | delivery | applied as |
//! | --- | --- |
//! | `Invalidate { keys }` | [`Cache::invalidate`] of each key |
//! | `InvalidatePrefix { prefix }` | every entry whose key starts with `prefix` removed |
//! | `ClearAll`, `Reset` | [`Cache::invalidate_all`] |
//! | `Custom` | ignored (the application's own business) |
//!
//! Prefixes use [`Cache::invalidate_entries_if`], which needs the cache
//! built with [`CacheBuilder::support_invalidation_closures`]
//! (`Cache::builder().support_invalidation_closures()`): moka then hides the
//! matching entries at once and removes them in its maintenance. Without
//! it, the adapter walks the cache ([`Cache::iter`]) and invalidates each
//! matching key, which costs a pass over every entry per prefix event.
//!
//! This module only reads deliveries and calls the cache: it holds no
//! state, opens no socket and spawns nothing except in [`spawn`].
//!
//! [`CacheBuilder::support_invalidation_closures`]: ::moka::future::CacheBuilder::support_invalidation_closures

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use ::moka::future::Cache;

use crate::wire::EventRef;
use crate::{Delivery, Subscription};

/// Applies every delivery of `sub` to `cache` (see the [module](self)'s
/// table) until the subscription ends (the node shut down), then returns.
///
/// Take the subscription right after [`Node::join`](crate::Node::join)
/// returns and start caching only then: the promise (every event or a
/// `Reset` after it) holds from there, so the cache never keeps a value an
/// invalidation was published for.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use cachecast::{Node, NodeConfig};
/// use moka::future::Cache;
///
/// let node = Node::join(NodeConfig::default()).await?;
/// let cache: Cache<String, String> = Cache::builder()
///     .max_capacity(10_000)
///     .support_invalidation_closures() // prefixes without a scan
///     .build();
/// tokio::spawn(cachecast::moka::keep_coherent(node.subscribe(), cache.clone()));
/// // ... cache.get(..) / cache.insert(..) as usual; node.invalidate([..]) on writes.
/// # Ok(()) }
/// ```
pub async fn keep_coherent<K, V, S>(mut sub: Subscription, cache: Cache<K, V, S>)
where
    K: Borrow<str> + Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    while let Some(d) = sub.recv().await {
        apply(&cache, &d).await;
    }
}

/// [`keep_coherent`] on a task of its own (the current tokio runtime's).
/// The task ends when the subscription does; abort it to stop earlier.
pub fn spawn<K, V, S>(sub: Subscription, cache: Cache<K, V, S>) -> tokio::task::JoinHandle<()>
where
    K: Borrow<str> + Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    tokio::spawn(keep_coherent(sub, cache))
}

/// Applies one delivery.
async fn apply<K, V, S>(cache: &Cache<K, V, S>, d: &Delivery)
where
    K: Borrow<str> + Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    let event = match d {
        Delivery::Reset { reason } => {
            tracing::debug!(reason = reason.kind(), "moka: Reset, invalidating all");
            cache.invalidate_all();
            return;
        }
        Delivery::Event { event, .. } => event.view(),
    };
    match event {
        EventRef::Invalidate { keys } => {
            for key in keys {
                cache.invalidate(key).await;
            }
        }
        EventRef::InvalidatePrefix { prefix } => {
            let owned = prefix.to_owned();
            let closure =
                cache.invalidate_entries_if(move |k: &K, _| k.borrow().starts_with(&owned));
            if closure.is_err() {
                // Built without support_invalidation_closures: walk the
                // entries present now (the iterator never misses one that
                // was there when it was made).
                let matching: Vec<_> = cache
                    .iter()
                    .filter(|(k, _)| (**k).borrow().starts_with(prefix))
                    .map(|(k, _)| k)
                    .collect();
                for k in matching {
                    cache.invalidate::<str>((*k).borrow()).await;
                }
            }
        }
        EventRef::ClearAll => cache.invalidate_all(),
        EventRef::Custom { .. } => {}
    }
}
