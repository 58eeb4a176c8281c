//! The HTTPS server: TLS with the cluster CA (rustls), client-certificate
//! authentication, HTTP/1.1 and HTTP/2, and the router.
//!
//! # Expected flow
//! [`start`] opens the store, loads or creates the PKI, writes
//! `<data-dir>/admin.kubeconfig`, binds the listener, and serves until the returned
//! [`RunningServer`] is dropped or [`RunningServer::wait`] ends with an error.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use axum::{
    Json, Router,
    extract::{RawQuery, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde_json::json;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::{
    metrics::ApiMetrics,
    pki::{self, Pki},
    status::ApiError,
    storage::{Store, embedded::EmbeddedStore, etcd::EtcdStore},
};

/// Which store backend to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Datastore {
    /// One redb file in the data dir (single server).
    Embedded,
    /// An etcd cluster (`--etcd-endpoints`).
    Etcd,
}

/// The server's configuration, as `sextant server` flags set it.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the store file, the PKI and `admin.kubeconfig` live.
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Store backend.
    pub datastore: Datastore,
    /// etcd client URLs, for [`Datastore::Etcd`].
    pub etcd_endpoints: Vec<String>,
    /// ClusterIP and NodePort ranges.
    pub service_ranges: crate::service_allocation::Ranges,
}

/// Errors while starting the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be opened.
    #[error("opening the {datastore:?} store: {source}")]
    Store {
        /// Which backend.
        datastore: Datastore,
        /// Why.
        #[source]
        source: crate::storage::Error,
    },
    /// `--datastore etcd` without endpoints.
    #[error("--datastore etcd needs --etcd-endpoints")]
    NoEtcdEndpoints,
    /// Certificates or kubeconfig could not be made.
    #[error(transparent)]
    Pki(#[from] pki::Error),
    /// TLS configuration failed.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The listen address could not be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data dir could not be created.
    #[error("creating {path}: {source}")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Who made a request, from its client certificate (CN = user, O = groups).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The user name; empty for an anonymous request.
    pub user: String,
    /// The groups.
    pub groups: Vec<String>,
}

impl Identity {
    fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let user = cert
            .subject()
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_owned();
        let groups = cert
            .subject()
            .iter_organization()
            .filter_map(|o| o.as_str().ok())
            .map(str::to_owned)
            .collect();
        Some(Self { user, groups })
    }

    /// Whether the request carried no valid client certificate.
    pub fn is_anonymous(&self) -> bool {
        self.user.is_empty()
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Where Services get their ClusterIPs and NodePorts.
    pub ranges: crate::service_allocation::Ranges,
    /// The server's metrics.
    pub metrics: ApiMetrics,
    /// The client the API server reaches kubelets with.
    pub kubelet: crate::kubelet_proxy::KubeletClient,
}

/// The kubeconfigs written to `<data-dir>/components/` for the components running
/// inside `sextant server`, and the user each authenticates as (upstream's names).
pub const COMPONENT_IDENTITIES: [(&str, &str); 2] = [
    ("scheduler.kubeconfig", "system:kube-scheduler"),
    ("controllers.kubeconfig", "system:kube-controller-manager"),
];

/// A started server.
#[derive(Debug)]
pub struct RunningServer {
    /// The bound address.
    pub addr: SocketAddr,
    /// Path of the admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Path of the join token agents present (`<data-dir>/node-token`).
    pub node_token: PathBuf,
    task: JoinHandle<()>,
    counting: JoinHandle<()>,
    compacting: JoinHandle<()>,
}

impl RunningServer {
    /// Serves until the accept loop ends (it only ends on a listener error).
    pub async fn wait(self) {
        let _ = (&mut { self }.task).await;
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.task.abort();
        self.counting.abort();
        self.compacting.abort();
    }
}

/// How often history is compacted, as upstream's `--etcd-compaction-interval`.
const COMPACTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// Compacts the store's history every `interval` to the revision seen one interval
/// earlier, so watches and lists may go back about one interval (older ones get
/// 410 and re-list). Several servers on one etcd may all run this: compacting to an
/// already compacted revision is refused and ignored.
async fn compact_history(store: Arc<dyn Store>, interval: std::time::Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: Option<crate::storage::Revision> = None;
    loop {
        tick.tick().await;
        let now = match store.current_revision().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading the revision to compact");
                continue;
            }
        };
        if let Some(rev) = previous.filter(|r| *r > 1) {
            match store.compact(rev).await {
                Ok(()) => tracing::info!(revision = rev, "compacted store history"),
                Err(crate::storage::Error::Compacted { .. }) => {}
                Err(e) => tracing::warn!(error = %e, revision = rev, "compacting store history"),
            }
        }
        previous = Some(now);
    }
}

/// Refreshes `apiserver_storage_objects` from the store every 10 s, as upstream does.
async fn count_objects(store: Arc<dyn Store>, metrics: ApiMetrics) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tick.tick().await;
        for rt in crate::resources::RESOURCES {
            let resource = if rt.group.is_empty() {
                rt.plural.to_owned()
            } else {
                format!("{}.{}", rt.plural, rt.group)
            };
            match store.count(&rt.prefix(None)).await {
                Ok(n) => {
                    metrics
                        .storage_objects
                        .get_or_create(&crate::metrics::ResourceLabels { resource })
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                Err(e) => tracing::debug!(error = %e, "counting stored objects"),
            }
        }
    }
}

/// The kubectl-compatible version this server reports.
pub const KUBERNETES_VERSION: (&str, &str) = ("1", "33");

/// Starts the server; see the module docs. `registry` may already hold the
/// metrics of components running in the same process (the scheduler); the
/// server adds its own and serves them all on `/metrics`.
pub async fn start(
    config: Config,
    mut registry: sextant_metrics::Registry,
) -> Result<RunningServer, Error> {
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|source| Error::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let store: Arc<dyn Store> = match config.datastore {
        Datastore::Embedded => Arc::new(
            EmbeddedStore::open(&data_dir.join("state.redb")).map_err(|source| Error::Store {
                datastore: config.datastore,
                source,
            })?,
        ),
        Datastore::Etcd => {
            if config.etcd_endpoints.is_empty() {
                return Err(Error::NoEtcdEndpoints);
            }
            Arc::new(
                EtcdStore::connect(&config.etcd_endpoints)
                    .await
                    .map_err(|source| Error::Store {
                        datastore: config.datastore,
                        source,
                    })?,
            )
        }
    };

    let bootstrap = async {
        ensure_system_namespaces(store.as_ref()).await?;
        crate::admission::ensure_system_priority_classes(store.as_ref()).await
    };
    bootstrap.await.map_err(|source| Error::Store {
        datastore: config.datastore,
        source,
    })?;
    let pki = Arc::new(Pki::load_or_create(&data_dir.join("pki"))?);
    let token = crate::bootstrap::load_or_create(data_dir, pki.ca_pem())?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;

    // In-cluster clients reach the server as the `kubernetes` Service: its
    // ClusterIP (the first address of the range) and names.
    let kubernetes_ip = Ipv4Addr::from(u32::from(config.service_ranges.cluster_ips.network()) + 1);
    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
        kubernetes_ip.to_string(),
    ];
    if !addr.ip().is_unspecified() {
        hosts.push(addr.ip().to_string());
    }
    let serving = pki.serving_cert(&hosts)?;
    let tls = tls_config(&pki, &serving)?;

    // The admin kubeconfig points at loopback when listening on every address.
    let client_ip = if addr.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        addr.ip()
    };
    let admin = pki.client_cert("sextant-admin", &["system:masters"])?;
    let kubeconfig = data_dir.join("admin.kubeconfig");
    let url = format!("https://{}", SocketAddr::new(client_ip, addr.port()));
    pki::write_private(&kubeconfig, &pki::kubeconfig(&url, pki.ca_pem(), &admin))?;
    // The in-process components each get their own identity, as upstream's do.
    let components = data_dir.join("components");
    std::fs::create_dir_all(&components).map_err(|source| Error::DataDir {
        path: components.clone(),
        source,
    })?;
    for (file, user) in COMPONENT_IDENTITIES {
        let cert = pki.client_cert(user, &[])?;
        pki::write_private(
            &components.join(file),
            &pki::kubeconfig(&url, pki.ca_pem(), &cert),
        )?;
    }

    let metrics = ApiMetrics::register(&mut registry);
    let store: Arc<dyn Store> = Arc::new(crate::storage::metered::MeteredStore::new(
        store,
        &mut registry,
    ));
    // Every watch and resourceVersion=0 list is served from one cache per resource.
    let roots = crate::resources::RESOURCES
        .iter()
        .map(|rt| rt.prefix(None))
        .collect();
    let store: Arc<dyn Store> = Arc::new(Arc::new(crate::storage::watch_cache::WatchCache::new(
        store,
        roots,
        crate::storage::watch_cache::DEFAULT_WINDOW,
        &mut registry,
    )));
    let registry = Arc::new(registry);
    let counting = tokio::spawn(count_objects(store.clone(), metrics.clone()));
    let compacting = tokio::spawn(compact_history(store.clone(), COMPACTION_INTERVAL));
    let state = AppState {
        store,
        ranges: config.service_ranges.clone(),
        metrics: metrics.clone(),
        kubelet: crate::kubelet_proxy::KubeletClient::new(&pki).map_err(Error::Tls)?,
    };
    let joiner = crate::bootstrap::Joiner {
        token,
        pki: pki.clone(),
    };
    let router = router(state, joiner, metrics, registry);
    tracing::info!(%addr, kubeconfig = %kubeconfig.display(), datastore = ?config.datastore, "API server listening");
    let task = tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(Arc::new(tls)),
        router,
    ));
    let node_token = data_dir.join("node-token");
    Ok(RunningServer {
        addr,
        kubeconfig,
        node_token,
        task,
        counting,
        compacting,
    })
}

/// The namespaces upstream's API server keeps in existence.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Creates the system namespaces that do not exist yet (idempotent; several
/// servers starting at once on one etcd are fine: the loser of a create race
/// sees `AlreadyExists`).
async fn ensure_system_namespaces(store: &dyn Store) -> Result<(), crate::storage::Error> {
    let rt = crate::resources::find("", "v1", "namespaces")
        .ok_or_else(|| crate::storage::Error::Internal("namespaces are not served".into()))?;
    for name in SYSTEM_NAMESPACES {
        let key = rt.key(None, name);
        if store.get(&key).await?.is_some() {
            continue;
        }
        let ns = json!({
            "kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": name, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": crate::rest::now(),
                         "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        match store.create(&key, ns.to_string().into_bytes()).await {
            Ok(_) | Err(crate::storage::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn tls_config(pki: &Pki, serving: &pki::CertPair) -> Result<ServerConfig, Error> {
    let tls = |e: &dyn std::fmt::Display| Error::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).map_err(|e| tls(&e))?;
    roots.add(ca).map_err(|e| tls(&e))?;
    // Requests without a certificate still reach the router: health and version
    // are public, everything else answers 401.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(&e))?;
    let chain =
        vec![CertificateDer::from_pem_slice(serving.cert_pem.as_bytes()).map_err(|e| tls(&e))?];
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).map_err(|e| tls(&e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, router: Router) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|c| Identity::from_certificate(c))
                .unwrap_or_default();
            let service = tower::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(identity.clone());
                router.clone().oneshot(req.map(axum::body::Body::new))
            });
            let result = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(
                    TokioIo::new(tls),
                    TowerToHyperService::new(service),
                )
                .await;
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Paths anyone may read, as upstream's `system:public-info-viewer` allows.
/// The join endpoint is public too: its token is the credential.
const PUBLIC_PATHS: [&str; 6] = [
    "/healthz",
    "/livez",
    "/readyz",
    "/version",
    "/cacerts",
    "/sextant/v1/join",
];

async fn authenticate(req: Request, next: Next) -> Response {
    let anonymous = req
        .extensions()
        .get::<Identity>()
        .is_none_or(Identity::is_anonymous);
    if anonymous && !PUBLIC_PATHS.contains(&req.uri().path()) {
        return ApiError::unauthorized().into_response();
    }
    next.run(req).await
}

fn router(
    state: AppState,
    joiner: crate::bootstrap::Joiner,
    metrics: ApiMetrics,
    registry: Arc<sextant_metrics::Registry>,
) -> Router {
    let join = Router::new()
        .route(
            "/sextant/v1/join",
            axum::routing::post(crate::bootstrap::join),
        )
        .route("/cacerts", get(crate::bootstrap::cacerts))
        .with_state(joiner);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/api", get(crate::discovery::core))
        .route("/apis", get(crate::discovery::groups_list))
        .route("/api/v1", get(crate::discovery::core_resources))
        .route(
            "/apis/{group}/{version}",
            get(crate::discovery::group_resources),
        )
        .route("/openapi/v2", get(crate::openapi::v2))
        .route("/openapi/v3", get(crate::openapi::index))
        .route("/openapi/v3/api/{version}", get(crate::openapi::core))
        .route(
            "/openapi/v3/apis/{group}/{version}",
            get(crate::openapi::grouped),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1",
            get(crate::resource_metrics::resource_list),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/{*rest}",
            get(crate::resource_metrics::handle),
        )
        .route(
            "/sextant/v1/prometheus/sd/{role}",
            get(crate::prometheus_sd::targets),
        )
        .route("/api/v1/{*rest}", any(crate::rest::core))
        .route("/apis/{group}/{version}/{*rest}", any(crate::rest::grouped))
        // The REST handler answers 413 itself; axum's own limit would answer first.
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::rest::MAX_BODY + 1,
        ))
        .with_state(state)
        .merge(sextant_metrics::router(registry))
        .merge(join)
        .fallback(|| async { ApiError::no_route() })
        .layer(middleware::from_fn(authenticate))
        .layer(middleware::from_fn_with_state(
            metrics,
            crate::metrics::track,
        ))
}

/// `/readyz`: ready when the datastore answers. `?verbose` lists the checks
/// as upstream does (`[+]name ok` lines, then `readyz check passed`).
async fn readyz(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let verbose = query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "verbose" || p.starts_with("verbose="))
    });
    let store = state.store.current_revision().await;
    if !verbose {
        return match store {
            Ok(_) => "ok".into_response(),
            Err(e) => ApiError::unavailable(format!("store: {e}")).into_response(),
        };
    }
    let (mark, result) = match &store {
        Ok(_) => ('+', "ok".to_owned()),
        Err(e) => ('-', format!("failed: {e}")),
    };
    let text = format!(
        "[+]ping ok\n[{mark}]datastore {result}\nreadyz check {}\n",
        if store.is_ok() { "passed" } else { "failed" }
    );
    let code = if store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (code, text).into_response()
}

async fn version() -> Json<serde_json::Value> {
    let (major, minor) = KUBERNETES_VERSION;
    Json(json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0-sextant.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{ListOptions, embedded::EmbeddedStore};

    #[tokio::test(start_paused = true)]
    async fn history_is_compacted_one_interval_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
        let first = store.create("/k/a", b"1".to_vec()).await.unwrap();
        let task = tokio::spawn(compact_history(
            store.clone(),
            std::time::Duration::from_secs(300),
        ));
        // First tick (t=0) only records the revision; the second compacts to it.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let second = store
            .update("/k/a", b"2".to_vec(), first.mod_revision)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(300)).await;
        // Compaction runs on a blocking thread: give it real time to finish.
        for _ in 0..100 {
            tokio::task::yield_now().await;
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let old = ListOptions {
            prefix: "/k/".into(),
            revision: Some(first.mod_revision - 1),
            ..Default::default()
        };
        assert!(matches!(
            store.list(&old).await,
            Err(crate::storage::Error::Compacted { .. })
        ));
        // Reads at the compaction revision and later still work.
        let at = ListOptions {
            prefix: "/k/".into(),
            revision: Some(first.mod_revision),
            ..Default::default()
        };
        assert_eq!(store.list(&at).await.unwrap().items[0].value, b"1");
        assert_eq!(store.get("/k/a").await.unwrap().unwrap(), second);
        task.abort();
    }
}
