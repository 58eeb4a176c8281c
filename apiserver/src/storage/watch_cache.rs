//! The watch cache: a [`Store`] decorator that keeps, per resource, the current
//! objects and a window of recent events, fed by one store watch, and serves every
//! client watch (and `resourceVersion=0` lists) of that resource from memory — so a
//! thousand informers cost the store one watch, as upstream's cacher does.
//!
//! - A resource's cache starts on its first watch or cached list: one paged list at
//!   one revision, then one store watch from that revision.
//! - A watch from a revision inside the window replays the window, then follows
//!   live events. A revision older than the window (or than a compaction made
//!   through this store) goes to the store itself, which replays its history or
//!   answers [`Error::Compacted`] (→ 410): clients resuming after a long pause or a
//!   server restart never miss an event.
//! - A watcher too slow to keep up with the live broadcast has its stream ended,
//!   as upstream closes slow watchers; it re-watches from its last revision.
//! - When the store watch fails, the cache ends its watchers' streams and is
//!   rebuilt on next use.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use async_trait::async_trait;
use futures::{StreamExt, stream};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use sextant_metrics::Registry;
use tokio::sync::{OnceCell, broadcast};
use tokio_stream::wrappers::BroadcastStream;

use super::{
    Event, EventStream, KeyValue, ListOptions, ListResult, Result, Revision, Store, resource_of,
};

/// Events kept per resource for watches resuming from a past revision.
pub const DEFAULT_WINDOW: usize = 10_000;

/// Live events buffered per watcher before it counts as too slow.
const WATCHER_BUFFER: usize = 1_000;

/// Labels of the watch cache metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

/// The decorated store.
pub struct WatchCache {
    inner: Arc<dyn Store>,
    /// Key prefixes of the cached resources (`/registry/configmaps/`).
    roots: Vec<String>,
    window: usize,
    caches: Mutex<HashMap<String, Arc<OnceCell<Arc<Resource>>>>>,
    /// Revision of the last compaction made through this store.
    compacted: Mutex<Revision>,
    events_received: Family<ResourceLabel, Counter>,
    initializations: Family<ResourceLabel, Counter>,
}

/// One resource's cache.
struct Resource {
    state: Mutex<State>,
}

struct State {
    /// The current objects, by key.
    items: BTreeMap<String, KeyValue>,
    /// The revision the cache has seen up to.
    revision: Revision,
    /// Watches from a revision at or after this one can be served from `recent`.
    window_start: Revision,
    recent: VecDeque<Arc<Event>>,
    /// `None` once the store watch has failed: the cache is being dropped.
    live: Option<broadcast::Sender<Arc<Event>>>,
}

impl WatchCache {
    /// Caches the resources under `roots` (their key prefixes), keeping `window`
    /// recent events each, and registers the cache's metrics on `registry`.
    pub fn new(
        inner: Arc<dyn Store>,
        roots: Vec<String>,
        window: usize,
        registry: &mut Registry,
    ) -> Self {
        let events_received = Family::<ResourceLabel, Counter>::default();
        let initializations = Family::<ResourceLabel, Counter>::default();
        registry.register(
            "apiserver_watch_cache_events_received",
            "Events the watch cache received from the store, per resource",
            events_received.clone(),
        );
        registry.register(
            "apiserver_watch_cache_initializations",
            "Times the watch cache of a resource was (re)built from the store",
            initializations.clone(),
        );
        Self {
            inner,
            roots,
            window: window.max(1),
            caches: Mutex::new(HashMap::new()),
            compacted: Mutex::new(0),
            events_received,
            initializations,
        }
    }

    /// The cached resource whose keys `prefix` falls under, if any.
    fn root_of(&self, prefix: &str) -> Option<&str> {
        self.roots
            .iter()
            .filter(|r| prefix.starts_with(r.as_str()))
            .max_by_key(|r| r.len())
            .map(String::as_str)
    }

    /// The resource's cache, built on first use. `None` if it cannot be built now
    /// (the caller then goes to the store).
    async fn resource(self: &Arc<Self>, root: &str) -> Option<Arc<Resource>> {
        let cell = lock(&self.caches)
            .entry(root.to_owned())
            .or_default()
            .clone();
        let built = cell
            .get_or_try_init(|| self.clone().build(root.to_owned(), cell.clone()))
            .await;
        match built {
            Ok(r) => Some(r.clone()),
            Err(e) => {
                tracing::warn!(resource = %resource_of(root), error = %e, "watch cache not available; using the store");
                None
            }
        }
    }

    /// Lists the resource at one revision and starts the store watch feeding it.
    async fn build(
        self: Arc<Self>,
        root: String,
        cell: Arc<OnceCell<Arc<Resource>>>,
    ) -> Result<Arc<Resource>> {
        let mut items = BTreeMap::new();
        let mut options = ListOptions {
            prefix: root.clone(),
            ..Default::default()
        };
        let revision = loop {
            let page = self.inner.list(&options).await?;
            let last = page.items.last().map(|kv| format!("{}\0", kv.key));
            items.extend(page.items.into_iter().map(|kv| (kv.key.clone(), kv)));
            match (page.more, last) {
                (true, Some(next)) => {
                    options.start_key = Some(next);
                    options.revision = Some(page.revision);
                }
                _ => break page.revision,
            }
        };
        let events = self.inner.watch(&root, revision).await?;
        let (live, _) = broadcast::channel(WATCHER_BUFFER);
        let resource = Arc::new(Resource {
            state: Mutex::new(State {
                items,
                revision,
                window_start: revision,
                recent: VecDeque::new(),
                live: Some(live),
            }),
        });
        let label = ResourceLabel {
            resource: resource_of(&root),
        };
        self.initializations.get_or_create(&label).inc();
        tracing::debug!(resource = %label.resource, revision, "watch cache built");
        tokio::spawn(self.feed(root, cell, resource.clone(), events, label));
        Ok(resource)
    }

    /// Applies the store's events to the cache until the store watch ends.
    async fn feed(
        self: Arc<Self>,
        root: String,
        cell: Arc<OnceCell<Arc<Resource>>>,
        resource: Arc<Resource>,
        mut events: EventStream,
        label: ResourceLabel,
    ) {
        let window = self.window;
        let end = loop {
            match events.next().await {
                Some(Ok(event)) => {
                    self.events_received.get_or_create(&label).inc();
                    lock(&resource.state).apply(event, window);
                }
                Some(Err(e)) => break e.to_string(),
                None => break "the store watch ended".to_owned(),
            }
        };
        tracing::warn!(resource = %label.resource, reason = %end, "watch cache stopped; it is rebuilt on next use");
        // Forget this cache (unless it was already replaced), then end its watchers.
        {
            let mut caches = lock(&self.caches);
            if caches.get(&root).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                caches.remove(&root);
            }
        }
        lock(&resource.state).live = None;
    }
}

impl State {
    fn apply(&mut self, event: Event, window: usize) {
        match &event {
            Event::Put { kv, .. } => {
                self.items.insert(kv.key.clone(), kv.clone());
            }
            Event::Delete { key, .. } => {
                self.items.remove(key);
            }
        }
        self.revision = self.revision.max(event.revision());
        let event = Arc::new(event);
        if self.recent.len() == window
            && let Some(evicted) = self.recent.pop_front()
        {
            self.window_start = self.window_start.max(evicted.revision());
        }
        self.recent.push_back(event.clone());
        if let Some(live) = &self.live {
            // No receivers is fine: nobody is watching right now.
            let _ = live.send(event);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `Store` methods are on `Arc<WatchCache>`: building a cache spawns a task
/// that holds the decorator.
#[async_trait]
impl Store for Arc<WatchCache> {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner.get(key).await
    }

    /// Lists with [`ListOptions::any_revision`] (`resourceVersion=0`) are served
    /// from the cache, whole; all others read the store.
    async fn list(&self, options: &ListOptions) -> Result<ListResult> {
        let cached = options.any_revision && options.revision.is_none();
        if let Some(root) = self.root_of(&options.prefix).filter(|_| cached)
            && let Some(resource) = self.resource(root).await
        {
            let state = lock(&resource.state);
            let from = options.start_key.as_deref().unwrap_or(&options.prefix);
            let items = state
                .items
                .range(from.to_owned()..)
                .take_while(|(k, _)| k.starts_with(&options.prefix))
                .map(|(_, kv)| kv.clone())
                .collect();
            return Ok(ListResult {
                items,
                revision: state.revision,
                more: false,
            });
        }
        self.inner.list(options).await
    }

    async fn count(&self, prefix: &str) -> Result<usize> {
        self.inner.count(prefix).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        self.inner.create(key, value).await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue> {
        self.inner.update(key, value, expected).await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)> {
        self.inner.delete(key, expected).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<EventStream> {
        let Some(root) = self.root_of(prefix) else {
            return self.inner.watch(prefix, after).await;
        };
        let Some(resource) = self.resource(root).await else {
            return self.inner.watch(prefix, after).await;
        };
        let compacted = *lock(&self.compacted);
        let served = {
            let state = lock(&resource.state);
            match &state.live {
                Some(live) if after >= state.window_start && after + 1 >= compacted => {
                    let replay: Vec<Arc<Event>> = state
                        .recent
                        .iter()
                        .filter(|e| e.revision() > after && e.key().starts_with(prefix))
                        .cloned()
                        .collect();
                    // Subscribed under the lock: live events are exactly those after `recent`.
                    Some((replay, live.subscribe()))
                }
                _ => None,
            }
        };
        let Some((replay, live)) = served else {
            return self.inner.watch(prefix, after).await;
        };
        let prefix = prefix.to_owned();
        let live = BroadcastStream::new(live)
            // A lagging watcher is cut off (it re-watches from its last revision).
            .take_while(|e| std::future::ready(e.is_ok()))
            .filter_map(move |e| {
                let keep = e
                    .ok()
                    .filter(|e| e.revision() > after && e.key().starts_with(&prefix));
                std::future::ready(keep)
            });
        Ok(stream::iter(replay)
            .chain(live)
            .map(|e| Ok(Event::clone(&e)))
            .boxed())
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await?;
        let mut compacted = lock(&self.compacted);
        *compacted = (*compacted).max(revision);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use tokio::sync::Notify;

    use super::*;
    use crate::storage::embedded::EmbeddedStore;

    /// The embedded store, counting the watches opened on it; `cut` ends one
    /// (a store watch failing).
    struct Counting {
        inner: EmbeddedStore,
        watches: AtomicUsize,
        cut: Arc<Notify>,
    }

    #[async_trait]
    impl Store for Counting {
        async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
            self.inner.get(key).await
        }
        async fn list(&self, options: &ListOptions) -> Result<ListResult> {
            self.inner.list(options).await
        }
        async fn count(&self, prefix: &str) -> Result<usize> {
            self.inner.count(prefix).await
        }
        async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
            self.inner.create(key, value).await
        }
        async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue> {
            self.inner.update(key, value, expected).await
        }
        async fn delete(
            &self,
            key: &str,
            expected: Option<Revision>,
        ) -> Result<(KeyValue, Revision)> {
            self.inner.delete(key, expected).await
        }
        async fn watch(&self, prefix: &str, after: Revision) -> Result<EventStream> {
            self.watches.fetch_add(1, Ordering::SeqCst);
            let cut = self.cut.clone();
            let events = self.inner.watch(prefix, after).await?;
            Ok(events
                .take_until(async move { cut.notified().await })
                .boxed())
        }
        async fn current_revision(&self) -> Result<Revision> {
            self.inner.current_revision().await
        }
        async fn compact(&self, revision: Revision) -> Result<()> {
            self.inner.compact(revision).await
        }
    }

    fn cache(window: usize) -> (Arc<WatchCache>, Arc<Counting>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let counting = Arc::new(Counting {
            inner: EmbeddedStore::open(&dir.path().join("s.redb")).unwrap(),
            watches: AtomicUsize::new(0),
            cut: Arc::new(Notify::new()),
        });
        let cache = WatchCache::new(
            counting.clone(),
            vec!["/r/a/".into(), "/r/b/".into()],
            window,
            &mut Registry::default(),
        );
        (Arc::new(cache), counting, dir)
    }

    async fn next(w: &mut EventStream) -> Event {
        tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .expect("no error")
    }

    #[tokio::test]
    async fn many_watchers_share_one_store_watch() {
        let (cache, counting, _dir) = cache(DEFAULT_WINDOW);
        let now = cache.current_revision().await.unwrap();
        let mut watchers = Vec::new();
        for i in 0..50 {
            let prefix = if i % 2 == 0 { "/r/a/" } else { "/r/a/ns1/" };
            watchers.push(cache.watch(prefix, now).await.unwrap());
        }
        assert_eq!(counting.watches.load(Ordering::SeqCst), 1);
        cache.create("/r/a/ns2/x", b"1".to_vec()).await.unwrap();
        let kv = cache.create("/r/a/ns1/y", b"2".to_vec()).await.unwrap();
        for (i, w) in watchers.iter_mut().enumerate() {
            let e = next(w).await;
            if i % 2 == 0 {
                assert_eq!(e.key(), "/r/a/ns2/x");
                assert_eq!(next(w).await.key(), "/r/a/ns1/y");
            } else {
                // Only its namespace's events.
                assert_eq!(
                    e,
                    Event::Put {
                        kv: kv.clone(),
                        prev: None
                    }
                );
            }
        }
        // Another resource gets its own store watch; a key outside every root goes
        // straight to the store.
        let now = cache.current_revision().await.unwrap();
        let _b = cache.watch("/r/b/", now).await.unwrap();
        let _c = cache.watch("/other/", now).await.unwrap();
        assert_eq!(counting.watches.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn watches_resume_from_the_window_or_else_the_store() {
        let (cache, counting, _dir) = cache(3);
        let _first = cache.watch("/r/a/", 0).await.unwrap(); // builds the cache
        let start = cache.current_revision().await.unwrap();
        for i in 0..10 {
            cache
                .create(&format!("/r/a/{i}"), b"v".to_vec())
                .await
                .unwrap();
        }
        let end = cache.current_revision().await.unwrap();
        // Wait for the cache to have seen every write.
        let mut probe = cache.watch("/r/a/", end - 1).await.unwrap();
        assert_eq!(next(&mut probe).await.revision(), end);
        let store_watches = counting.watches.load(Ordering::SeqCst);
        // Within the window (the last 3 events): from memory.
        let mut w = cache.watch("/r/a/", end - 2).await.unwrap();
        assert_eq!(next(&mut w).await.revision(), end - 1);
        assert_eq!(next(&mut w).await.revision(), end);
        assert_eq!(counting.watches.load(Ordering::SeqCst), store_watches);
        // Older: from the store's history, nothing missed.
        let mut w = cache.watch("/r/a/", start).await.unwrap();
        for i in 0..10 {
            assert_eq!(next(&mut w).await.revision(), start + 1 + i);
        }
        assert_eq!(counting.watches.load(Ordering::SeqCst), store_watches + 1);
        // After a compaction, older revisions are gone here as in the store.
        cache.compact(end).await.unwrap();
        match cache.watch("/r/a/", end - 2).await {
            Err(crate::storage::Error::Compacted { .. }) => {}
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a watch from a compacted revision was served"),
        }
    }

    #[tokio::test]
    async fn lists_at_any_revision_come_from_the_cache() {
        let (cache, _counting, _dir) = cache(DEFAULT_WINDOW);
        for k in ["/r/a/ns1/x", "/r/a/ns1/y", "/r/a/ns2/z", "/r/b/q"] {
            cache.create(k, b"v".to_vec()).await.unwrap();
        }
        let options = |prefix: &str| ListOptions {
            prefix: prefix.into(),
            any_revision: true,
            limit: Some(1),
            ..Default::default()
        };
        let all = cache.list(&options("/r/a/")).await.unwrap();
        let keys: Vec<_> = all.items.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            ["/r/a/ns1/x", "/r/a/ns1/y", "/r/a/ns2/z"],
            "whole, limit ignored"
        );
        assert!(!all.more);
        let ns1 = cache.list(&options("/r/a/ns1/")).await.unwrap();
        assert_eq!(ns1.items.len(), 2);
        // A later write shows up once the cache has seen it.
        let kv = cache.create("/r/a/ns1/w", b"v".to_vec()).await.unwrap();
        let mut w = cache.watch("/r/a/", kv.mod_revision - 1).await.unwrap();
        next(&mut w).await;
        let ns1 = cache.list(&options("/r/a/ns1/")).await.unwrap();
        assert_eq!(ns1.items.len(), 3);
        assert!(ns1.revision >= kv.mod_revision);
    }

    #[tokio::test]
    async fn a_failed_store_watch_ends_watchers_and_the_cache_is_rebuilt() {
        let (cache, counting, _dir) = cache(DEFAULT_WINDOW);
        let now = cache.current_revision().await.unwrap();
        let mut w = cache.watch("/r/a/", now).await.unwrap();
        // A permit, in case the feeding task has not polled its stream yet.
        counting.cut.notify_one();
        let ended = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("ends in time");
        assert!(ended.is_none(), "the watcher's stream ends");
        // The next watch builds a new cache (a new store watch) and misses nothing:
        // its revision predates the new cache, so the store replays it.
        let kv = cache.create("/r/a/x", b"v".to_vec()).await.unwrap();
        let mut w = cache.watch("/r/a/", now).await.unwrap();
        assert_eq!(
            next(&mut w).await,
            Event::Put {
                kv: kv.clone(),
                prev: None
            }
        );
        assert_eq!(counting.watches.load(Ordering::SeqCst), 3);
        // Later watches are served by the new cache.
        let mut w = cache.watch("/r/a/", kv.mod_revision).await.unwrap();
        let kv = cache.create("/r/a/y", b"v".to_vec()).await.unwrap();
        assert_eq!(next(&mut w).await, Event::Put { kv, prev: None });
        assert_eq!(counting.watches.load(Ordering::SeqCst), 3);
    }
}
