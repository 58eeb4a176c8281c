//! The etcd backend: the production store, and the way to run several API servers
//! (HA comes from an etcd cluster). Writes are etcd transactions comparing the mod
//! revision, as upstream's etcd3 storage does.

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::sync::mpsc;

use super::{
    Error, Event, EventStream, KeyValue, ListOptions, ListResult, Result, Revision, Store,
    prefix_end,
};

/// Keys read per etcd range request when listing.
const ETCD_CHUNK: usize = 1000;

/// A store on an etcd cluster (v3 API). Cheap to clone: clones share connections.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

fn map_err(e: etcd_client::Error) -> Error {
    match &e {
        etcd_client::Error::GRpcStatus(status) => {
            let msg = status.message();
            if msg.contains("required revision has been compacted") {
                // etcd does not say which revision it compacted to; 0 = unknown.
                Error::Compacted {
                    requested: 0,
                    compacted: 0,
                }
            } else if msg.contains("required revision is a future revision") {
                Error::FutureRevision {
                    requested: 0,
                    current: 0,
                }
            } else if matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Aborted
                    | tonic::Code::Unknown
            ) {
                Error::Unavailable(e.to_string())
            } else {
                Error::Internal(e.to_string())
            }
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            Error::Unavailable(e.to_string())
        }
        _ => Error::Internal(e.to_string()),
    }
}

fn convert(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: kv
            .key_str()
            .map_err(|_| Error::Internal("etcd key is not UTF-8".into()))?
            .to_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

/// The kvs of the first Range response of a failed transaction's else branch.
fn else_kv(responses: Vec<TxnOpResponse>) -> Result<Option<KeyValue>> {
    for r in responses {
        if let TxnOpResponse::Get(get) = r {
            return get.kvs().first().map(convert).transpose();
        }
    }
    Ok(None)
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`http://host:port`).
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let client = Client::connect(endpoints, None).await.map_err(map_err)?;
        Ok(Self { client })
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut kv = self.client.kv_client();
        let resp = kv.get(key, None).await.map_err(map_err)?;
        resp.kvs().first().map(convert).transpose()
    }

    async fn list(&self, options: &ListOptions) -> Result<ListResult> {
        let mut kv = self.client.kv_client();
        let mut start = match &options.start_key {
            Some(s) if s.as_str() > options.prefix.as_str() => s.clone().into_bytes(),
            _ => options.prefix.clone().into_bytes(),
        };
        let end = prefix_end(&options.prefix);
        let wanted = options.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut revision = options.revision.filter(|r| *r > 0);
        let mut items = Vec::new();
        let mut chunk_size = ETCD_CHUNK;
        // Read in chunks at one revision: a single large range would exceed the
        // gRPC message size (4 MiB), and chunks keep etcd's per-request work bounded.
        // A chunk of large objects that still exceeds it is retried at half the size.
        loop {
            let chunk = (wanted - items.len()).min(chunk_size);
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(i64::try_from(chunk).unwrap_or(i64::MAX));
            if let Some(rev) = revision {
                opts = opts.with_revision(rev);
            }
            let resp = match kv.get(start.clone(), Some(opts)).await {
                Ok(r) => r,
                Err(etcd_client::Error::GRpcStatus(status))
                    if status.code() == tonic::Code::OutOfRange
                        && status.message().contains("message length too large")
                        && chunk > 1 =>
                {
                    chunk_size = chunk / 2;
                    continue;
                }
                Err(e) => return Err(map_err(e)),
            };
            let rev =
                *revision.get_or_insert(resp.header().map(|h| h.revision()).unwrap_or_default());
            for k in resp.kvs() {
                items.push(convert(k)?);
            }
            let more = resp.more();
            if !more || items.len() >= wanted {
                return Ok(ListResult {
                    items,
                    revision: rev,
                    more,
                });
            }
            // Continue just after the last key read.
            match resp.kvs().last() {
                Some(last) => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                None => {
                    return Ok(ListResult {
                        items,
                        revision: rev,
                        more: false,
                    });
                }
            }
        }
    }

    async fn count(&self, prefix: &str) -> Result<usize> {
        let mut kv = self.client.kv_client();
        let opts = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_count_only();
        let resp = kv.get(prefix, Some(opts)).await.map_err(map_err)?;
        Ok(usize::try_from(resp.count()).unwrap_or(0))
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let mut kv = self.client.kv_client();
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = kv.txn(txn).await.map_err(map_err)?;
        if !resp.succeeded() {
            return Err(Error::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue> {
        let mut kv = self.client.kv_client();
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(
                key,
                value.clone(),
                Some(etcd_client::PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = kv.txn(txn).await.map_err(map_err)?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        if !resp.succeeded() {
            return match else_kv(resp.op_responses())? {
                Some(actual) => Err(Error::Conflict {
                    key: key.to_owned(),
                    expected,
                    actual: actual.mod_revision,
                }),
                None => Err(Error::NotFound {
                    key: key.to_owned(),
                }),
            };
        }
        let mut create_revision = revision;
        for r in resp.op_responses() {
            if let TxnOpResponse::Put(put) = r
                && let Some(prev) = put.prev_key()
            {
                create_revision = prev.create_revision();
            }
        }
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: revision,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)> {
        let mut kv = self.client.kv_client();
        let compare = match expected {
            Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
            // Any existing key has a mod revision above 0.
            None => Compare::mod_revision(key, CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = kv.txn(txn).await.map_err(map_err)?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        if !resp.succeeded() {
            return match (else_kv(resp.op_responses())?, expected) {
                (Some(actual), Some(expected)) => Err(Error::Conflict {
                    key: key.to_owned(),
                    expected,
                    actual: actual.mod_revision,
                }),
                _ => Err(Error::NotFound {
                    key: key.to_owned(),
                }),
            };
        }
        for r in resp.op_responses() {
            if let TxnOpResponse::Delete(del) = r
                && let Some(prev) = del.prev_kvs().first()
            {
                return Ok((convert(prev)?, revision));
            }
        }
        Err(Error::NotFound {
            key: key.to_owned(),
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<EventStream> {
        let mut watch = self.client.watch_client();
        let opts = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(after + 1)
            .with_prev_key()
            .with_progress_notify();
        let mut stream = watch.watch(prefix, Some(opts)).await.map_err(map_err)?;
        let (tx, rx) = mpsc::channel::<Result<Event>>(256);
        tokio::spawn(async move {
            // `stream` owns the request side too: dropping it would cancel the watch.
            loop {
                let msg = match stream.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(map_err(e))).await;
                        return;
                    }
                };
                if msg.compact_revision() > 0 {
                    let err = Error::Compacted {
                        requested: after + 1,
                        compacted: msg.compact_revision(),
                    };
                    let _ = tx.send(Err(err)).await;
                    return;
                }
                if msg.canceled() {
                    let reason = format!("etcd canceled the watch: {}", msg.cancel_reason());
                    let _ = tx.send(Err(Error::Unavailable(reason))).await;
                    return;
                }
                for ev in msg.events() {
                    let converted = (|| -> Result<Event> {
                        let kv = ev
                            .kv()
                            .ok_or_else(|| Error::Internal("watch event without kv".into()))?;
                        let prev = ev.prev_kv().map(convert).transpose()?;
                        Ok(match ev.event_type() {
                            EventType::Put => Event::Put {
                                kv: convert(kv)?,
                                prev,
                            },
                            EventType::Delete => Event::Delete {
                                key: convert(kv)?.key,
                                revision: kv.mod_revision(),
                                prev,
                            },
                        })
                    })();
                    if tx.send(converted).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn current_revision(&self) -> Result<Revision> {
        let mut kv = self.client.kv_client();
        // Any key will do: the header carries the store's revision.
        let resp = kv
            .get("/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(map_err)?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut kv = self.client.kv_client();
        kv.compact(revision, None).await.map_err(map_err)?;
        Ok(())
    }
}
