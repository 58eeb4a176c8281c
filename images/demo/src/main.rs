//! The demo HTTP server of the `sextant.local/demo:v1` image, used by tests and by
//! `cargo xtask up`.
//!
//! Routes:
//! - `GET /healthz` (liveness) and `GET /readyz` (readiness): 200, or 503 while
//!   failing (see `POST /fail`) or during the startup delay;
//! - `GET /env`: the process environment as JSON;
//! - `GET /metrics`: OpenMetrics (`demo_requests_total`, `demo_allocated_bytes`, ...);
//! - `POST /burn?seconds=S&threads=T`: burns CPU for S seconds on T threads;
//! - `POST /alloc?mb=N`: allocates and touches N MiB and keeps it;
//! - `POST /fail?probe=liveness|readiness&fail=true|false`: makes a probe fail or pass;
//! - anything else: echoes the request (method, path, query, headers, body, hostname).
//!
//! It also answers UDP on the same address: each datagram comes back prefixed
//! with the hostname (`<hostname> <payload>`). `--send-udp ADDR` makes it a
//! one-shot UDP client instead (busybox has none): it sends `--message`, prints
//! the reply and exits non-zero when none comes within 2 s. `--http-get ADDR
//! --count N [--timeout-ms T]` makes it an HTTP client: N requests, one connection
//! each (T ms at most, 5000 by default), and a JSON
//! tally of the hostnames that answered. `--resolve NAME` prints the addresses a
//! name resolves to through the pod's resolv.conf.
//!
//! Every request is logged as one line on stdout, so `kubectl logs -f` has output.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, Method, StatusCode, Uri},
    response::IntoResponse,
    routing::{get, post},
};
use clap::Parser;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use serde::Deserialize;
use sextant_metrics::Registry;

/// Command line of the demo server.
#[derive(Debug, Parser)]
#[command(version, about = "Sextant's demo HTTP server")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "DEMO_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Start with the liveness probe (`/healthz`) failing.
    #[arg(long, env = "DEMO_FAIL_LIVENESS")]
    fail_liveness: bool,
    /// Start with the readiness probe (`/readyz`) failing.
    #[arg(long, env = "DEMO_FAIL_READINESS")]
    fail_readiness: bool,
    /// Both probes fail for this many seconds after start (a slow start).
    #[arg(long, env = "DEMO_STARTUP_DELAY_SECONDS", default_value_t = 0)]
    startup_delay_seconds: u64,
    /// Be a UDP client: send --message to this address, print the reply, exit.
    #[arg(long)]
    send_udp: Option<SocketAddr>,
    /// The datagram --send-udp sends.
    #[arg(long, default_value = "ping")]
    message: String,
    /// Be an HTTP client: GET http://ADDR/ --count times, one connection each, and
    /// print how many answers came from each hostname, as JSON.
    #[arg(long)]
    http_get: Option<String>,
    /// How many requests --http-get sends.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Pause between --http-get requests, in milliseconds.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// How long one --http-get request may take, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Be a resolver client: print the IPv4 addresses NAME resolves to (through
    /// the pod's resolv.conf, search path included) as a sorted JSON list.
    #[arg(long)]
    resolve: Option<String>,
}

/// `--resolve`: the addresses of `name`, or exit 1 with the error.
async fn resolve(name: &str) -> i32 {
    match tokio::net::lookup_host(format!("{name}:0")).await {
        Ok(addrs) => {
            let mut ips: Vec<String> = addrs
                .filter(|a| a.is_ipv4())
                .map(|a| a.ip().to_string())
                .collect();
            ips.sort();
            ips.dedup();
            println!("{}", serde_json::json!(ips));
            0
        }
        Err(e) => {
            eprintln!("demo: resolving {name}: {e}");
            1
        }
    }
}

/// One `GET /` on a new connection; the answering demo's hostname.
async fn get_hostname(addr: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    conn.write_all(
        format!("GET / HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&reply);
    let body = text.split("\r\n\r\n").nth(1).ok_or("no body")?;
    let json: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("body: {e}"))?;
    json["hostname"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "no hostname in the answer".to_owned())
}

/// `--http-get`: `{"answers": {hostname: n}, "failed": n, "errors": [first few]}`.
async fn http_get(addr: &str, count: u32, interval: Duration, timeout: Duration) -> i32 {
    let mut answers: BTreeMap<String, u32> = BTreeMap::new();
    let mut errors = Vec::new();
    for i in 0..count {
        if i > 0 && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        match tokio::time::timeout(timeout, get_hostname(addr)).await {
            Ok(Ok(h)) => *answers.entry(h).or_default() += 1,
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push(format!("timed out after {timeout:?}")),
        }
    }
    let failed = errors.len();
    errors.truncate(5);
    println!(
        "{}",
        serde_json::json!({"answers": answers, "failed": failed, "errors": errors})
    );
    i32::from(failed > 0)
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}

/// `--send-udp`: one datagram out, one reply printed.
async fn send_udp(to: SocketAddr, message: &str) -> i32 {
    let sent = async {
        let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
        socket.send_to(message.as_bytes(), to).await?;
        let mut buf = vec![0u8; 2048];
        let (n, from) = socket.recv_from(&mut buf).await?;
        Ok::<_, std::io::Error>((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    };
    match tokio::time::timeout(Duration::from_secs(2), sent).await {
        Ok(Ok((reply, from))) => {
            println!("{reply} (from {from})");
            0
        }
        Ok(Err(e)) => {
            eprintln!("demo: udp to {to}: {e}");
            1
        }
        Err(_) => {
            eprintln!("demo: no udp reply from {to} within 2s");
            1
        }
    }
}

/// Answers every datagram with `<hostname> <payload>`.
async fn serve_udp(socket: tokio::net::UdpSocket) {
    let name = hostname();
    let mut buf = vec![0u8; 2048];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let reply = format!("{name} {}", String::from_utf8_lossy(&buf[..n]));
                println!("demo: udp from {from}");
                if let Err(e) = socket.send_to(reply.as_bytes(), from).await {
                    eprintln!("demo: udp reply to {from}: {e}");
                }
            }
            Err(e) => {
                eprintln!("demo: udp: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: String,
}

struct Demo {
    started: Instant,
    startup_delay: Duration,
    fail_liveness: AtomicBool,
    fail_readiness: AtomicBool,
    held: Mutex<Vec<Vec<u8>>>,
    requests: Family<PathLabel, Counter>,
    allocated: Gauge,
    burn_seconds: Counter,
    registry: Registry,
}

impl Demo {
    fn started_up(&self) -> bool {
        self.started.elapsed() >= self.startup_delay
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(to) = args.send_udp {
        std::process::exit(send_udp(to, &args.message).await);
    }
    if let Some(name) = &args.resolve {
        std::process::exit(resolve(name).await);
    }
    if let Some(addr) = &args.http_get {
        let interval = Duration::from_millis(args.interval_ms);
        std::process::exit(
            http_get(
                addr,
                args.count,
                interval,
                Duration::from_millis(args.timeout_ms),
            )
            .await,
        );
    }
    let mut registry = Registry::default();
    let requests = Family::<PathLabel, Counter>::default();
    let allocated = Gauge::default();
    let burn_seconds = Counter::default();
    registry.register(
        "demo_requests",
        "HTTP requests served, by path",
        requests.clone(),
    );
    registry.register(
        "demo_allocated_bytes",
        "Memory held by POST /alloc",
        allocated.clone(),
    );
    registry.register(
        "demo_burn_seconds",
        "CPU-seconds asked for by POST /burn",
        burn_seconds.clone(),
    );
    let demo = Arc::new(Demo {
        started: Instant::now(),
        startup_delay: Duration::from_secs(args.startup_delay_seconds),
        fail_liveness: AtomicBool::new(args.fail_liveness),
        fail_readiness: AtomicBool::new(args.fail_readiness),
        held: Mutex::new(Vec::new()),
        requests,
        allocated,
        burn_seconds,
        registry,
    });

    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/env", get(env))
        .route("/metrics", get(metrics))
        .route("/burn", post(burn))
        .route("/alloc", post(alloc))
        .route("/fail", post(fail))
        .fallback(echo)
        .with_state(demo);

    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    match tokio::net::UdpSocket::bind(args.listen).await {
        Ok(udp) => {
            tokio::spawn(serve_udp(udp));
        }
        Err(e) => eprintln!("demo: no udp on {}: {e}", args.listen),
    }
    println!("demo: listening on {}", args.listen);
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        println!("demo: shutting down");
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("demo: server error: {e}");
        std::process::exit(1);
    }
}

fn count(demo: &Demo, method: &Method, path: &str, status: StatusCode) {
    demo.requests
        .get_or_create(&PathLabel {
            path: path.to_owned(),
        })
        .inc();
    println!("demo: {method} {path} {}", status.as_u16());
}

async fn healthz(State(demo): State<Arc<Demo>>) -> impl IntoResponse {
    let ok = demo.started_up() && !demo.fail_liveness.load(Ordering::Relaxed);
    probe_answer(&demo, "/healthz", ok)
}

async fn readyz(State(demo): State<Arc<Demo>>) -> impl IntoResponse {
    let ok = demo.started_up() && !demo.fail_readiness.load(Ordering::Relaxed);
    probe_answer(&demo, "/readyz", ok)
}

fn probe_answer(demo: &Demo, path: &str, ok: bool) -> (StatusCode, &'static str) {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    count(demo, &Method::GET, path, status);
    (status, if ok { "ok\n" } else { "failing\n" })
}

async fn env(State(demo): State<Arc<Demo>>) -> Json<BTreeMap<String, String>> {
    count(&demo, &Method::GET, "/env", StatusCode::OK);
    Json(std::env::vars().collect())
}

async fn metrics(State(demo): State<Arc<Demo>>) -> impl IntoResponse {
    count(&demo, &Method::GET, "/metrics", StatusCode::OK);
    match sextant_metrics::encode(&demo.registry) {
        Ok(body) => (
            StatusCode::OK,
            [("content-type", sextant_metrics::OPENMETRICS_CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct BurnQuery {
    seconds: Option<u64>,
    threads: Option<u32>,
}

async fn burn(State(demo): State<Arc<Demo>>, Query(q): Query<BurnQuery>) -> impl IntoResponse {
    let seconds = q.seconds.unwrap_or(10).min(3600);
    let threads = q.threads.unwrap_or(1).clamp(1, 64);
    demo.burn_seconds.inc_by(seconds * u64::from(threads));
    for _ in 0..threads {
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(seconds);
            let mut x: u64 = 1;
            while Instant::now() < until {
                for _ in 0..10_000 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
        });
    }
    count(&demo, &Method::POST, "/burn", StatusCode::ACCEPTED);
    (
        StatusCode::ACCEPTED,
        format!("burning {threads} thread(s) for {seconds}s\n"),
    )
}

#[derive(Debug, Deserialize)]
struct AllocQuery {
    mb: Option<usize>,
}

async fn alloc(State(demo): State<Arc<Demo>>, Query(q): Query<AllocQuery>) -> impl IntoResponse {
    let mb = q.mb.unwrap_or(10).min(16 * 1024);
    // Touch every page so the memory is resident and counts against the cgroup.
    let block = vec![0xa5u8; mb * 1024 * 1024];
    let total = {
        let mut held = demo
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.push(block);
        held.iter().map(Vec::len).sum::<usize>()
    };
    demo.allocated.set(i64::try_from(total).unwrap_or(i64::MAX));
    count(&demo, &Method::POST, "/alloc", StatusCode::OK);
    (StatusCode::OK, format!("holding {total} bytes\n"))
}

#[derive(Debug, Deserialize)]
struct FailQuery {
    probe: String,
    fail: Option<bool>,
}

async fn fail(State(demo): State<Arc<Demo>>, Query(q): Query<FailQuery>) -> impl IntoResponse {
    let flag = match q.probe.as_str() {
        "liveness" => &demo.fail_liveness,
        "readiness" => &demo.fail_readiness,
        other => {
            count(&demo, &Method::POST, "/fail", StatusCode::BAD_REQUEST);
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown probe {other:?}: use liveness or readiness\n"),
            );
        }
    };
    let fail = q.fail.unwrap_or(true);
    flag.store(fail, Ordering::Relaxed);
    count(&demo, &Method::POST, "/fail", StatusCode::OK);
    (
        StatusCode::OK,
        format!(
            "{} probe {}\n",
            q.probe,
            if fail { "failing" } else { "passing" }
        ),
    )
}

async fn echo(
    State(demo): State<Arc<Demo>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let hostname = hostname();
    count(&demo, &method, uri.path(), StatusCode::OK);
    Json(serde_json::json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "hostname": hostname,
    }))
}
