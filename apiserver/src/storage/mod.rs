//! The revisioned key-value store under the API server, with etcd's semantics, and
//! its two backends: [`etcd`] (production, HA through an etcd cluster) and
//! [`embedded`] (one file, the default for a single server).
//!
//! # Semantics (both backends)
//! - One global revision, incremented by every write; `resourceVersion` is a revision.
//! - Each key has a create revision and a mod revision; an update or delete can be
//!   conditional on the mod revision (compare-and-swap), which is how optimistic
//!   concurrency (409 Conflict) is implemented.
//! - Range by prefix with a limit, a start key (for `continue`), and optionally at a
//!   past revision, so every page of a chunked list reads one consistent snapshot.
//! - Watch a prefix from a revision: every event after it, in revision order, each
//!   carrying the previous value; a revision older than the last compaction fails
//!   with [`Error::Compacted`] (→ `410 Gone` at the API).
//!
//! [`conformance`] is one test suite that every backend passes.

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
pub mod etcd;
pub mod metered;
pub mod watch_cache;

/// A store revision (etcd's `int64` revision; Kubernetes' `resourceVersion`).
pub type Revision = i64;

/// One key with its value and revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key, e.g. `/registry/configmaps/default/x`.
    pub key: String,
    /// The stored bytes (JSON for Kubernetes objects).
    pub value: Vec<u8>,
    /// Revision of the write that created the key.
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The key was created or updated; `prev` is its value before, if any.
    Put {
        /// The new value.
        kv: KeyValue,
        /// The value before this write.
        prev: Option<KeyValue>,
    },
    /// The key was deleted at `revision`; `prev` is its last value.
    Delete {
        /// The deleted key.
        key: String,
        /// Revision of the delete.
        revision: Revision,
        /// The value the key had before the delete.
        prev: Option<KeyValue>,
    },
}

impl Event {
    /// The revision of the write that produced this event.
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }
}

/// What to list.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Only keys starting with this prefix.
    pub prefix: String,
    /// First key to return (inclusive); keys before it are skipped. Used by `continue`.
    pub start_key: Option<String>,
    /// At most this many items; `None` or 0 means all.
    pub limit: Option<usize>,
    /// Read at this past revision instead of the current one.
    pub revision: Option<Revision>,
    /// Any recent revision will do (`resourceVersion=0`): a cache may answer, whole
    /// (ignoring `limit`, as upstream's watch cache does). Backends read the latest.
    pub any_revision: bool,
}

/// One page of a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListResult {
    /// The items, in key order.
    pub items: Vec<KeyValue>,
    /// The revision the list was read at.
    pub revision: Revision,
    /// Whether more items follow the last one returned.
    pub more: bool,
}

/// A stream of watch events; it ends only when the store shuts down or fails.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send>>;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key does not exist.
    #[error("key {key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A create found the key already there.
    #[error("key {key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// A conditional write found another mod revision than expected.
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        /// The key.
        key: String,
        /// The mod revision the caller expected.
        expected: Revision,
        /// The key's actual mod revision.
        actual: Revision,
    },
    /// The revision asked for was compacted away.
    #[error("revision {requested} is compacted (oldest available is {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The compaction revision.
        compacted: Revision,
    },
    /// The revision asked for is in the future.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The store's current revision.
        current: Revision,
    },
    /// The backend cannot be reached or failed transiently; the call may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend failed in a way a retry will not fix (corruption, bad data).
    #[error("store failure: {0}")]
    Internal(String),
}

impl Error {
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// Result with the store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The one store interface the API server is written against.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current value of `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Keys under a prefix, in key order, one page at a time.
    async fn list(&self, options: &ListOptions) -> Result<ListResult>;

    /// How many keys start with `prefix` now.
    async fn count(&self, prefix: &str) -> Result<usize>;

    /// Creates `key`; [`Error::AlreadyExists`] if it exists.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue>;

    /// Replaces `key`'s value if its mod revision is still `expected`
    /// ([`Error::Conflict`] otherwise, [`Error::NotFound`] if absent).
    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue>;

    /// Deletes `key`, if its mod revision is `expected` when given; returns the
    /// deleted value and the revision of the delete.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)>;

    /// Every event under `prefix` with a revision greater than `after`.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<EventStream>;

    /// The current revision.
    async fn current_revision(&self) -> Result<Revision>;

    /// Discards history before `revision`; older reads and watches then fail with
    /// [`Error::Compacted`].
    async fn compact(&self, revision: Revision) -> Result<()>;
}

/// The resource a key belongs to, as upstream's `resource` metric label:
/// `configmaps`, `deployments.apps`, `ranges`.
pub fn resource_of(key: &str) -> String {
    let mut parts = key.trim_start_matches("/registry/").split('/');
    match (parts.next(), parts.next()) {
        (Some(first), Some(second))
            if first.contains('.')
                || matches!(first, "apps" | "batch" | "autoscaling" | "policy") =>
        {
            format!("{second}.{first}")
        }
        (Some(first), _) => first.to_owned(),
        _ => String::new(),
    }
}

/// Every stored JSON object under `prefix` (values that do not parse are skipped).
pub async fn list_json(store: &dyn Store, prefix: String) -> Result<Vec<serde_json::Value>> {
    let all = store
        .list(&ListOptions {
            prefix,
            ..Default::default()
        })
        .await?;
    Ok(all
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// The key just past every key with `prefix` (etcd's range end for a prefix).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): the range extends to the end of the keyspace.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end("a"), b"b".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
