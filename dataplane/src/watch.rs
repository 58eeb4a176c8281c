//! The agent's one way of watching the API: a reflector cache per kind, whose
//! events all poke one coalescing "something changed" channel, so a consumer
//! recomputes once per burst of changes rather than once per event.

use futures::StreamExt;
use kube::{
    Api, Resource,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::{sync::mpsc, task::JoinHandle};

/// A "something changed" channel: capacity 1 and `try_send`, so bursts coalesce.
pub fn changes() -> (mpsc::Sender<()>, mpsc::Receiver<()>) {
    mpsc::channel(1)
}

/// Starts a cache of `api`'s objects; every event pokes `changed`. The task
/// retries with backoff while the API is away and ends when aborted.
pub fn cache<K>(api: Api<K>, changed: mpsc::Sender<()>) -> (reflector::Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store::<K>();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .boxed();
    let driver = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => {
                    let _ = changed.try_send(());
                }
                Err(e) => tracing::warn!(kind, error = %e, "watching"),
            }
        }
    });
    (store, driver)
}

/// Watch tasks that stop when this is dropped.
#[derive(Debug, Default)]
pub struct Drivers(pub Vec<JoinHandle<()>>);

impl Drop for Drivers {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
