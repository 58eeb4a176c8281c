//! The embedded store: an MVCC key-value store in one redb file, with etcd's
//! semantics (see the [module docs](super)), for a single server without etcd.
//!
//! # Layout
//! | table | key → value | holds |
//! |---|---|---|
//! | `history` | (key, revision) → record | every version of every key, tombstones included |
//! | `latest` | key → (create revision, mod revision) | the live keys |
//! | `log` | revision → key | which key each revision wrote, for watch replay |
//! | `meta` | name → i64 | `revision`, `compacted` |
//!
//! A record is `[flags: u8][create revision: i64 LE][value]`, flag bit 0 = tombstone.
//!
//! # Guarantees
//! Every write is one redb transaction committed with immediate durability (fsync)
//! before it is acknowledged, so an acknowledged write survives `kill -9`. Writes are
//! serialized, and each is published to watchers in revision order while the write
//! lock is held, so watchers never see a revision out of order.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc};

use super::{
    Error, Event, EventStream, KeyValue, ListOptions, ListResult, Result, Revision, Store,
    prefix_end,
};

const HISTORY: TableDefinition<(&[u8], i64), &[u8]> = TableDefinition::new("history");
const LATEST: TableDefinition<&[u8], (i64, i64)> = TableDefinition::new("latest");
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
const TOMBSTONE: u8 = 1;
/// Live events buffered per watcher before it must catch up from the log.
const BROADCAST_CAPACITY: usize = 4096;

/// The embedded store. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// Serializes writes so commit order and publish order are the same.
    write_lock: Mutex<()>,
    events: broadcast::Sender<Arc<Event>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

struct Record<'a> {
    tombstone: bool,
    create_revision: Revision,
    value: &'a [u8],
}

fn encode(tombstone: bool, create_revision: Revision, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + value.len());
    out.push(if tombstone { TOMBSTONE } else { 0 });
    out.extend_from_slice(&create_revision.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode(bytes: &[u8]) -> Result<Record<'_>> {
    let (head, value) = bytes
        .split_at_checked(9)
        .ok_or_else(|| internal("history record shorter than its header"))?;
    let mut rev = [0u8; 8];
    rev.copy_from_slice(&head[1..9]);
    Ok(Record {
        tombstone: head[0] & TOMBSTONE != 0,
        create_revision: i64::from_le_bytes(rev),
        value,
    })
}

/// The current and the compacted revision from the `meta` table.
fn revisions(meta: &impl ReadableTable<&'static str, i64>) -> Result<(Revision, Revision)> {
    let read = |name: &str, default: i64| -> Result<i64> {
        Ok(meta
            .get(name)
            .map_err(internal)?
            .map(|g| g.value())
            .unwrap_or(default))
    };
    Ok((read(META_REVISION, 1)?, read(META_COMPACTED, 0)?))
}

fn key_string(key: &[u8]) -> Result<String> {
    String::from_utf8(key.to_vec()).map_err(|_| internal("stored key is not UTF-8"))
}

enum Op {
    Create(Vec<u8>),
    Update(Vec<u8>, Revision),
    Delete(Option<Revision>),
}

impl EmbeddedStore {
    /// Opens the store file at `path`, creating it if needed.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path)
            .map_err(|e| internal(format!("opening {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(internal)?;
        {
            txn.open_table(HISTORY).map_err(internal)?;
            txn.open_table(LATEST).map_err(internal)?;
            txn.open_table(LOG).map_err(internal)?;
            let mut meta = txn.open_table(META).map_err(internal)?;
            if meta.get(META_REVISION).map_err(internal)?.is_none() {
                // Like etcd, an empty store is at revision 1.
                meta.insert(META_REVISION, 1).map_err(internal)?;
                meta.insert(META_COMPACTED, 0).map_err(internal)?;
            }
        }
        txn.commit().map_err(internal)?;
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                write_lock: Mutex::new(()),
                events,
            }),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(internal)?
    }
}

impl Inner {
    fn write(&self, key: &str, op: Op) -> Result<Event> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let k = key.as_bytes();
        let txn = self.db.begin_write().map_err(internal)?;
        let event = {
            let mut meta = txn.open_table(META).map_err(internal)?;
            let mut latest = txn.open_table(LATEST).map_err(internal)?;
            let mut history = txn.open_table(HISTORY).map_err(internal)?;
            let mut log = txn.open_table(LOG).map_err(internal)?;
            let revision = meta
                .get(META_REVISION)
                .map_err(internal)?
                .map(|g| g.value())
                .unwrap_or(1)
                + 1;
            let current = latest.get(k).map_err(internal)?.map(|g| g.value());
            let prev = match current {
                Some((create, modr)) => {
                    let rec = history
                        .get((k, modr))
                        .map_err(internal)?
                        .ok_or_else(|| internal("latest without history"))?;
                    let r = decode(rec.value())?;
                    Some(KeyValue {
                        key: key.to_owned(),
                        value: r.value.to_vec(),
                        create_revision: create,
                        mod_revision: modr,
                    })
                }
                None => None,
            };
            let event = match op {
                Op::Create(value) => {
                    if prev.is_some() {
                        return Err(Error::AlreadyExists {
                            key: key.to_owned(),
                        });
                    }
                    history
                        .insert((k, revision), encode(false, revision, &value).as_slice())
                        .map_err(internal)?;
                    latest.insert(k, (revision, revision)).map_err(internal)?;
                    let kv = KeyValue {
                        key: key.to_owned(),
                        value,
                        create_revision: revision,
                        mod_revision: revision,
                    };
                    Event::Put { kv, prev: None }
                }
                Op::Update(value, expected) => {
                    let p = prev.ok_or_else(|| Error::NotFound {
                        key: key.to_owned(),
                    })?;
                    if p.mod_revision != expected {
                        return Err(Error::Conflict {
                            key: key.to_owned(),
                            expected,
                            actual: p.mod_revision,
                        });
                    }
                    history
                        .insert(
                            (k, revision),
                            encode(false, p.create_revision, &value).as_slice(),
                        )
                        .map_err(internal)?;
                    latest
                        .insert(k, (p.create_revision, revision))
                        .map_err(internal)?;
                    let kv = KeyValue {
                        key: key.to_owned(),
                        value,
                        create_revision: p.create_revision,
                        mod_revision: revision,
                    };
                    Event::Put { kv, prev: Some(p) }
                }
                Op::Delete(expected) => {
                    let p = prev.ok_or_else(|| Error::NotFound {
                        key: key.to_owned(),
                    })?;
                    if let Some(expected) = expected
                        && p.mod_revision != expected
                    {
                        return Err(Error::Conflict {
                            key: key.to_owned(),
                            expected,
                            actual: p.mod_revision,
                        });
                    }
                    history
                        .insert(
                            (k, revision),
                            encode(true, p.create_revision, &[]).as_slice(),
                        )
                        .map_err(internal)?;
                    latest.remove(k).map_err(internal)?;
                    Event::Delete {
                        key: key.to_owned(),
                        revision,
                        prev: Some(p),
                    }
                }
            };
            log.insert(revision, k).map_err(internal)?;
            meta.insert(META_REVISION, revision).map_err(internal)?;
            event
        };
        txn.commit().map_err(internal)?;
        // Published under the write lock: watchers see revisions in order. No
        // receivers is fine (send only fails then).
        let _ = self.events.send(Arc::new(event.clone()));
        Ok(event)
    }

    fn meta(&self, txn: &redb::ReadTransaction) -> Result<(Revision, Revision)> {
        revisions(&txn.open_table(META).map_err(internal)?)
    }

    fn list(&self, opts: &ListOptions) -> Result<ListResult> {
        let txn = self.db.begin_read().map_err(internal)?;
        let (current, compacted) = self.meta(&txn)?;
        let at = opts.revision.filter(|r| *r > 0).unwrap_or(current);
        if at > current {
            return Err(Error::FutureRevision {
                requested: at,
                current,
            });
        }
        if at < compacted {
            return Err(Error::Compacted {
                requested: at,
                compacted,
            });
        }
        let start: Vec<u8> = match &opts.start_key {
            Some(s) if s.as_str() > opts.prefix.as_str() => s.as_bytes().to_vec(),
            _ => opts.prefix.as_bytes().to_vec(),
        };
        let end = prefix_end(&opts.prefix);
        let end_bound: &[u8] = if opts.prefix.is_empty() {
            &[0xff; 1]
        } else {
            &end
        };
        let limit = opts.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let history = txn.open_table(HISTORY).map_err(internal)?;
        let mut items = Vec::new();
        let mut more = false;
        // Walk every version in key order; for each key keep the newest version at
        // or before `at`.
        let mut pending: Option<(Vec<u8>, Revision, Vec<u8>)> = None; // (key, mod rev, record)
        let flush = |p: Option<(Vec<u8>, Revision, Vec<u8>)>,
                     items: &mut Vec<KeyValue>,
                     more: &mut bool|
         -> Result<bool> {
            if let Some((k, modr, rec)) = p {
                let r = decode(&rec)?;
                if !r.tombstone {
                    if items.len() == limit {
                        *more = true;
                        return Ok(false);
                    }
                    items.push(KeyValue {
                        key: key_string(&k)?,
                        value: r.value.to_vec(),
                        create_revision: r.create_revision,
                        mod_revision: modr,
                    });
                }
            }
            Ok(true)
        };
        let range = history
            .range((start.as_slice(), i64::MIN)..(end_bound, i64::MIN))
            .map_err(internal)?;
        for entry in range {
            let (k, v) = entry.map_err(internal)?;
            let (key, rev) = k.value();
            if rev > at {
                continue;
            }
            match &pending {
                Some((pk, _, _)) if pk.as_slice() == key => {}
                _ => {
                    if !flush(pending.take(), &mut items, &mut more)? {
                        return Ok(ListResult {
                            items,
                            revision: at,
                            more,
                        });
                    }
                }
            }
            pending = Some((key.to_vec(), rev, v.value().to_vec()));
        }
        flush(pending.take(), &mut items, &mut more)?;
        Ok(ListResult {
            items,
            revision: at,
            more,
        })
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let txn = self.db.begin_read().map_err(internal)?;
        let latest = txn.open_table(LATEST).map_err(internal)?;
        let Some((create, modr)) = latest
            .get(key.as_bytes())
            .map_err(internal)?
            .map(|g| g.value())
        else {
            return Ok(None);
        };
        let history = txn.open_table(HISTORY).map_err(internal)?;
        let rec = history
            .get((key.as_bytes(), modr))
            .map_err(internal)?
            .ok_or_else(|| internal("latest without history"))?;
        let r = decode(rec.value())?;
        Ok(Some(KeyValue {
            key: key.to_owned(),
            value: r.value.to_vec(),
            create_revision: create,
            mod_revision: modr,
        }))
    }

    /// Events under `prefix` with revisions in `(after, until]`, read from the log.
    fn replay(&self, prefix: &str, after: Revision) -> Result<(Vec<Event>, Revision)> {
        let txn = self.db.begin_read().map_err(internal)?;
        let (current, compacted) = self.meta(&txn)?;
        if after + 1 < compacted {
            return Err(Error::Compacted {
                requested: after + 1,
                compacted,
            });
        }
        let log = txn.open_table(LOG).map_err(internal)?;
        let history = txn.open_table(HISTORY).map_err(internal)?;
        let mut out = Vec::new();
        for entry in log.range((after + 1)..=current).map_err(internal)? {
            let (rev, key) = entry.map_err(internal)?;
            let (rev, key) = (rev.value(), key.value());
            if !key.starts_with(prefix.as_bytes()) {
                continue;
            }
            let key_s = key_string(key)?;
            let rec = history
                .get((key, rev))
                .map_err(internal)?
                .ok_or_else(|| internal("log entry without history"))?;
            let r = decode(rec.value())?;
            // The previous version: the newest history entry of this key before `rev`.
            let prev = match history
                .range((key, i64::MIN)..(key, rev))
                .map_err(internal)?
                .next_back()
            {
                Some(p) => {
                    let (pk, pv) = p.map_err(internal)?;
                    let pr = decode(pv.value())?;
                    (!pr.tombstone).then(|| KeyValue {
                        key: key_s.clone(),
                        value: pr.value.to_vec(),
                        create_revision: pr.create_revision,
                        mod_revision: pk.value().1,
                    })
                }
                None => None,
            };
            out.push(if r.tombstone {
                Event::Delete {
                    key: key_s,
                    revision: rev,
                    prev,
                }
            } else {
                Event::Put {
                    kv: KeyValue {
                        key: key_s,
                        value: r.value.to_vec(),
                        create_revision: r.create_revision,
                        mod_revision: rev,
                    },
                    prev,
                }
            });
        }
        Ok((out, current))
    }

    fn compact(&self, revision: Revision) -> Result<()> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let txn = self.db.begin_write().map_err(internal)?;
        {
            let mut meta = txn.open_table(META).map_err(internal)?;
            let (current, compacted) = revisions(&meta)?;
            if revision > current {
                return Err(Error::FutureRevision {
                    requested: revision,
                    current,
                });
            }
            if revision <= compacted {
                return Err(Error::Compacted {
                    requested: revision,
                    compacted,
                });
            }
            let mut log = txn.open_table(LOG).map_err(internal)?;
            let mut history = txn.open_table(HISTORY).map_err(internal)?;
            let mut keys: Vec<Vec<u8>> = Vec::new();
            for entry in log.range(..revision).map_err(internal)? {
                let (_, k) = entry.map_err(internal)?;
                keys.push(k.value().to_vec());
            }
            keys.sort();
            keys.dedup();
            for k in &keys {
                // Versions before `revision`: the newest stays (reads at `revision` and
                // later need it) unless it is a tombstone; older ones go.
                let versions: Vec<(Revision, bool)> = history
                    .range((k.as_slice(), i64::MIN)..(k.as_slice(), revision))
                    .map_err(internal)?
                    .map(|e| {
                        let (hk, hv) = e.map_err(internal)?;
                        Ok((hk.value().1, decode(hv.value())?.tombstone))
                    })
                    .collect::<Result<_>>()?;
                for (i, (rev, tombstone)) in versions.iter().enumerate() {
                    let newest = i + 1 == versions.len();
                    if !newest || *tombstone {
                        history.remove((k.as_slice(), *rev)).map_err(internal)?;
                    }
                }
            }
            log.retain_in(..revision, |_, _| false).map_err(internal)?;
            meta.insert(META_COMPACTED, revision).map_err(internal)?;
        }
        txn.commit().map_err(internal)
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.blocking(move |i| i.get(&key)).await
    }

    async fn list(&self, options: &ListOptions) -> Result<ListResult> {
        let options = options.clone();
        self.blocking(move |i| i.list(&options)).await
    }

    async fn count(&self, prefix: &str) -> Result<usize> {
        let prefix = prefix.to_owned();
        self.blocking(move |i| {
            let txn = i.db.begin_read().map_err(internal)?;
            let latest = txn.open_table(LATEST).map_err(internal)?;
            let end = prefix_end(&prefix);
            let n = latest
                .range(prefix.as_bytes()..end.as_slice())
                .map_err(internal)?
                .count();
            Ok(n)
        })
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let key = key.to_owned();
        match self
            .blocking(move |i| i.write(&key, Op::Create(value)))
            .await?
        {
            Event::Put { kv, .. } => Ok(kv),
            Event::Delete { .. } => Err(internal("create produced a delete")),
        }
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue> {
        let key = key.to_owned();
        match self
            .blocking(move |i| i.write(&key, Op::Update(value, expected)))
            .await?
        {
            Event::Put { kv, .. } => Ok(kv),
            Event::Delete { .. } => Err(internal("update produced a delete")),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)> {
        let key = key.to_owned();
        match self
            .blocking(move |i| i.write(&key, Op::Delete(expected)))
            .await?
        {
            Event::Delete {
                prev: Some(prev),
                revision,
                ..
            } => Ok((prev, revision)),
            _ => Err(internal("delete produced no previous value")),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<EventStream> {
        // Subscribe before replaying so nothing committed in between is missed;
        // live events already replayed are skipped by revision.
        let mut live = self.inner.events.subscribe();
        let p = prefix.to_owned();
        let (history, replayed_to) = self.blocking(move |i| i.replay(&p, after)).await?;
        let (tx, rx) = mpsc::channel::<Result<Event>>(256);
        let store = self.clone();
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            let mut last = after;
            for e in history {
                last = e.revision();
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            last = last.max(replayed_to);
            loop {
                match live.recv().await {
                    Ok(e) => {
                        if e.revision() <= last || !e.key().starts_with(&prefix) {
                            continue;
                        }
                        last = e.revision();
                        if tx.send(Ok((*e).clone())).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow for the live buffer: catch up from the log.
                        let p = prefix.clone();
                        let from = last;
                        match store.blocking(move |i| i.replay(&p, from)).await {
                            Ok((events, to)) => {
                                for e in events {
                                    last = e.revision();
                                    if tx.send(Ok(e)).await.is_err() {
                                        return;
                                    }
                                }
                                last = last.max(to);
                            }
                            Err(err) => {
                                let _ = tx.send(Err(err)).await;
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.blocking(|i| {
            let txn = i.db.begin_read().map_err(internal)?;
            Ok(i.meta(&txn)?.0)
        })
        .await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.blocking(move |i| i.compact(revision)).await
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn reopening_keeps_data_revision_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (first, second) = {
            let s = EmbeddedStore::open(&path).unwrap();
            let a = s.create("/k/a", b"1".to_vec()).await.unwrap();
            let b = s
                .update("/k/a", b"2".to_vec(), a.mod_revision)
                .await
                .unwrap();
            (a, b)
        };
        let s = EmbeddedStore::open(&path).unwrap();
        assert_eq!(s.current_revision().await.unwrap(), second.mod_revision);
        assert_eq!(s.get("/k/a").await.unwrap(), Some(second.clone()));
        // The revision log survived too: a watch from before both writes replays them.
        let mut w = s.watch("/k/", first.mod_revision - 1).await.unwrap();
        let e1 = w.next().await.unwrap().unwrap();
        let e2 = w.next().await.unwrap().unwrap();
        assert_eq!(
            (e1.revision(), e2.revision()),
            (first.mod_revision, second.mod_revision)
        );
        // And the next write continues the revision sequence.
        let c = s.create("/k/c", b"x".to_vec()).await.unwrap();
        assert_eq!(c.mod_revision, second.mod_revision + 1);
    }

    #[test]
    fn a_truncated_record_is_an_error_not_a_panic() {
        assert!(decode(&[0, 1, 2]).is_err());
        let bytes = encode(true, 7, b"v");
        let r = decode(&bytes).unwrap();
        assert!(r.tombstone);
        assert_eq!((r.create_revision, r.value), (7, &b"v"[..]));
    }
}
