//! `exec`, `attach` and `portForward` on the kubelet API, through the runtime's
//! CRI streaming server — what `kubectl exec -it`, `kubectl cp`, `kubectl attach`
//! and `kubectl port-forward` reach through the API server's upgrade proxy.
//!
//! kubectl 1.33 speaks WebSocket. exec and attach use the channel protocol
//! (`v5.channel.k8s.io`, or `v4.channel.k8s.io` from older clients): every binary
//! message starts with its channel — 0 stdin, 1 stdout, 2 stderr, 3 the exit
//! Status as JSON, 4 terminal resizes, and in v5 255 "this channel is closed".
//! The kubelet asks the runtime for a streaming URL (CRI `Exec`/`Attach`) and
//! opens it as SPDY (`v4.channel.k8s.io`, one stream per channel), because only
//! SPDY lets it half-close stdin: the runtimes' WebSocket protocol predates v5.
//!
//! port-forward is a SPDY/3.1 session tunnelled in the WebSocket
//! (`SPDY/3.1+portforward.k8s.io`, [`crate::spdy`]): each local connection opens
//! an error and a data stream sharing a `requestID`. For each pair the kubelet
//! asks the runtime for a port-forward URL (CRI `PortForward`, which dials the
//! port inside the pod's network namespace) and relays the data stream over the
//! runtime's WebSocket, which gives each port a data and an error channel whose
//! first two bytes name the port.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{
        Path, RawQuery, State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures::{SinkExt, StreamExt};
use k8s_cri::v1 as cri;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use crate::{Error, pods, pods::PodRuntime, spdy};

/// The channel protocol kubectl 1.30+ offers first.
pub const V5_CHANNEL: &str = "v5.channel.k8s.io";
/// The channel protocol of older clients, and what the kubelet speaks to runtimes.
pub const V4_CHANNEL: &str = "v4.channel.k8s.io";
/// SPDY tunnelled in WebSocket, for port-forward.
pub const SPDY_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";
/// v5's "this channel is closed" message starts with this byte.
const CLOSE_CHANNEL: u8 = 255;

type RuntimeSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, message.into()).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// The exec/attach query, as the API server passes kubectl's on.
#[derive(Debug, Default)]
struct StreamQuery {
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl StreamQuery {
    fn parse(raw: Option<&str>) -> Self {
        let mut q = Self::default();
        let truthy = |v: &str| matches!(v, "true" | "1" | "True");
        for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            match k.as_ref() {
                "command" => q.command.push(v.into_owned()),
                "input" | "stdin" => q.stdin = truthy(&v),
                "output" | "stdout" => q.stdout = truthy(&v),
                "error" | "stderr" => q.stderr = truthy(&v),
                "tty" => q.tty = truthy(&v),
                _ => {}
            }
        }
        q
    }
}

/// The id of the running instance of a pod's container, or the message that
/// says why there is none.
async fn running_container(
    rt: &PodRuntime,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<Result<String, String>, Error> {
    let instances = pods::container_instances(rt, namespace, pod, container).await?;
    Ok(match instances.last() {
        Some(c) if c.state == cri::ContainerState::ContainerRunning as i32 => Ok(c.id.clone()),
        Some(_) => Err(format!(
            "container {container} is not running in pod {namespace}/{pod}"
        )),
        None => Err(format!(
            "container {container} not found in pod {namespace}/{pod}"
        )),
    })
}

/// `GET /exec/<namespace>/<pod>/<container>?command=...&stdin=&stdout=&stderr=&tty=`
pub(crate) async fn exec(
    State(rt): State<Arc<PodRuntime>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let q = StreamQuery::parse(query.as_deref());
    if q.command.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "you must specify a command to exec",
        );
    }
    stream_channels(rt, ws, &namespace, &pod, &container, q, true).await
}

/// `GET /attach/<namespace>/<pod>/<container>?stdin=&stdout=&stderr=&tty=`
pub(crate) async fn attach(
    State(rt): State<Arc<PodRuntime>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let q = StreamQuery::parse(query.as_deref());
    stream_channels(rt, ws, &namespace, &pod, &container, q, false).await
}

fn unsupported_protocol() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("no supported streaming protocol offered; supported: {V5_CHANNEL}, {V4_CHANNEL}"),
    )
}

async fn stream_channels(
    rt: Arc<PodRuntime>,
    ws: WebSocketUpgrade,
    namespace: &str,
    pod: &str,
    container: &str,
    q: StreamQuery,
    exec: bool,
) -> Response {
    let ws = ws.protocols([V5_CHANNEL, V4_CHANNEL]);
    let Some(protocol) = ws.selected_protocol().cloned() else {
        return unsupported_protocol();
    };
    let id = match running_container(&rt, namespace, pod, container).await {
        Ok(Ok(id)) => id,
        Ok(Err(message)) => return error(StatusCode::NOT_FOUND, message),
        Err(e) => return internal(e),
    };
    // A terminal has no separate stderr (upstream's rule).
    let stderr = q.stderr && !q.tty;
    let mut runtime = rt.cri.runtime.clone();
    let url = if exec {
        let request = cri::ExecRequest {
            container_id: id,
            cmd: q.command,
            tty: q.tty,
            stdin: q.stdin,
            stdout: q.stdout,
            stderr,
        };
        runtime.exec(request).await.map(|r| r.into_inner().url)
    } else {
        let request = cri::AttachRequest {
            container_id: id,
            stdin: q.stdin,
            tty: q.tty,
            stdout: q.stdout,
            stderr,
        };
        runtime.attach(request).await.map(|r| r.into_inner().url)
    };
    let url = match url {
        Ok(url) => url,
        Err(e) => return internal(Error::from(e)),
    };
    let v5 = protocol == V5_CHANNEL;
    let streams = Streams {
        stdin: q.stdin,
        stdout: q.stdout,
        stderr,
        tty: q.tty,
    };
    ws.on_upgrade(move |socket| relay_channels(socket, url, v5, streams))
}

/// Opens the runtime's port-forward URL as a `v4.channel.k8s.io` WebSocket.
async fn connect_runtime(url: &str) -> Result<RuntimeSocket, String> {
    // Runtimes hand out http(s) URLs; the WebSocket client wants ws(s).
    let ws_url = if let Some(rest) = url.strip_prefix("http") {
        format!("ws{rest}")
    } else {
        url.to_owned()
    };
    let mut request = ws_url
        .into_client_request()
        .map_err(|e| format!("runtime streaming URL {url}: {e}"))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        tungstenite::http::HeaderValue::from_static(V4_CHANNEL),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| format!("connecting to the runtime's streaming server at {url}: {e}"))?;
    Ok(socket)
}

/// A Status on the error channel, which kubectl prints and exits on.
fn failure_message(message: &str) -> Message {
    let status = serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "code": 500,
    });
    let mut bytes = vec![3u8];
    bytes.extend_from_slice(status.to_string().as_bytes());
    Message::Binary(bytes.into())
}

/// Clients read the error channel to its end: only a normal closure ends it
/// cleanly.
fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: 1000,
        reason: "".into(),
    }))
}

/// Which streams an exec or attach session has.
#[derive(Clone, Copy, Debug)]
struct Streams {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// Opens the runtime's streaming URL as a SPDY/3.1 connection speaking
/// `v4.channel.k8s.io` (an HTTP/1.1 upgrade, as client-go does).
async fn connect_runtime_spdy(url: &str) -> Result<hyper::upgrade::Upgraded, String> {
    let fail = |e: &dyn std::fmt::Display| {
        format!("connecting to the runtime's streaming server at {url}: {e}")
    };
    let uri: hyper::Uri = url.parse().map_err(|e| fail(&e))?;
    let authority = uri
        .authority()
        .ok_or_else(|| fail(&"the URL has no host"))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .map_err(|e| fail(&e))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| fail(&e))?;
    tokio::spawn(connection.with_upgrades());
    let request = hyper::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", V4_CHANNEL)
        .body(http_body_util::Empty::<axum::body::Bytes>::new())
        .map_err(|e| fail(&e))?;
    let response = sender.send_request(request).await.map_err(|e| fail(&e))?;
    if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        return Err(fail(&format!("answered {}", response.status())));
    }
    hyper::upgrade::on(response).await.map_err(|e| fail(&e))
}

/// Relays an exec or attach session: the client's WebSocket channels on one
/// side, the runtime's SPDY streams (one per channel) on the other. The session
/// ends when the runtime closes the connection after writing the exit Status.
async fn relay_channels(client: WebSocket, url: String, v5: bool, streams: Streams) {
    let (mut to_client, mut from_client) = client.split();
    let upgraded = match connect_runtime_spdy(&url).await {
        Ok(u) => u,
        Err(message) => {
            tracing::warn!(%message, "exec/attach stream");
            let _ = to_client.send(failure_message(&message)).await;
            let _ = to_client.send(normal_close()).await;
            return;
        }
    };
    let (mut runtime_rx, mut runtime_tx) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
    // One writer, fed by both directions (stdin from the client, ping echoes).
    let (out, mut outgoing) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if runtime_tx.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = runtime_tx.shutdown().await;
    });
    // Open the streams the runtime expects for this session.
    let Ok(mut encoder) = spdy::Encoder::new() else {
        return;
    };
    let kinds = [
        ("error", true),
        ("stdin", streams.stdin),
        ("stdout", streams.stdout),
        ("stderr", streams.stderr),
        ("resize", streams.tty),
    ];
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let mut next_id = 1u32;
    for (kind, wanted) in kinds {
        if !wanted {
            continue;
        }
        let Ok(frame) = encoder.syn_stream(next_id, &[("streamType", kind)]) else {
            return;
        };
        if out.send(frame).await.is_err() {
            return;
        }
        ids.insert(kind, next_id);
        next_id += 2;
    }
    let stream_of = |kind: &str| ids.get(kind).copied();
    let (stdin, resize) = (stream_of("stdin"), stream_of("resize"));
    let (stdout, stderr, error) = (stream_of("stdout"), stream_of("stderr"), stream_of("error"));
    let to_runtime = out.clone();
    let upstream = async move {
        while let Some(Ok(message)) = from_client.next().await {
            let bytes = match message {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = bytes.split_first() else {
                continue;
            };
            let frame = match (channel, stdin, resize) {
                (0, Some(id), _) => spdy::data(id, false, payload),
                (4, _, Some(id)) => spdy::data(id, false, payload),
                // v5: the client closed a channel; only stdin can be closed.
                (CLOSE_CHANNEL, Some(id), _) if v5 && payload.first() == Some(&0) => {
                    spdy::data(id, true, &[])
                }
                _ => continue,
            };
            if to_runtime.send(frame).await.is_err() {
                break;
            }
        }
    };
    let downstream = async {
        let mut decoder = spdy::Decoder::default();
        let mut status = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        'read: loop {
            let n = match runtime_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            decoder.push(&buf[..n]);
            loop {
                let frame = match decoder.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "exec/attach stream");
                        break 'read;
                    }
                };
                match frame {
                    spdy::Frame::Data {
                        stream_id, data, ..
                    } => {
                        let channel = if Some(stream_id) == stdout {
                            1u8
                        } else if Some(stream_id) == stderr {
                            2
                        } else {
                            if Some(stream_id) == error {
                                status.extend_from_slice(&data);
                            }
                            continue;
                        };
                        if data.is_empty() {
                            continue;
                        }
                        let mut message = Vec::with_capacity(data.len() + 1);
                        message.push(channel);
                        message.extend_from_slice(&data);
                        if to_client
                            .send(Message::Binary(message.into()))
                            .await
                            .is_err()
                        {
                            break 'read;
                        }
                    }
                    spdy::Frame::Ping { id } => {
                        let _ = out.send(spdy::ping(id)).await;
                    }
                    spdy::Frame::GoAway { .. } => break 'read,
                    _ => {}
                }
            }
        }
        if !status.is_empty() {
            let mut message = vec![3u8];
            message.extend_from_slice(&status);
            let _ = to_client.send(Message::Binary(message.into())).await;
        }
        let _ = to_client.send(normal_close()).await;
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
    writer.abort();
}

/// `GET /portForward/<namespace>/<pod>[?ports=80,443]`: a SPDY session in a
/// WebSocket (kubectl), or the channel protocol for the `ports` named in the
/// query (`v4.channel.k8s.io`: kube-rs, sextantctl).
pub(crate) async fn port_forward(
    State(rt): State<Arc<PodRuntime>>,
    Path((namespace, pod)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let ws = ws.protocols([SPDY_PORT_FORWARD, V4_CHANNEL]);
    let channels = match ws.selected_protocol() {
        Some(p) if p == SPDY_PORT_FORWARD => None,
        Some(_) => match channel_ports(query.as_deref()) {
            Ok(ports) => Some(ports),
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        },
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "port-forward needs the WebSocket protocol {SPDY_PORT_FORWARD} or {V4_CHANNEL}"
                ),
            );
        }
    };
    let sandbox = match pods::ready_sandbox(&rt, &namespace, &pod).await {
        Ok(Some(s)) => s.id,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("pod {namespace}/{pod} has no running sandbox on this node"),
            );
        }
        Err(e) => return internal(e),
    };
    match channels {
        None => ws.on_upgrade(move |socket| port_forward_session(socket, rt, sandbox)),
        Some(ports) => {
            ws.on_upgrade(move |socket| port_forward_channels(socket, rt, sandbox, ports))
        }
    }
}

/// The `ports` of a channel-protocol port-forward (`ports=80,443` or repeated).
fn channel_ports(query: Option<&str>) -> Result<Vec<i32>, String> {
    let mut ports = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if k == "ports" {
            for p in v.split(',') {
                let port: u16 = p
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid port {p:?} in the ports parameter"))?;
                ports.push(i32::from(port));
            }
        }
    }
    if ports.is_empty() {
        return Err("port-forward needs at least one port in the ports parameter".into());
    }
    Ok(ports)
}

/// The channel protocol is the runtime's own (port `i` on channels `2i` data
/// and `2i+1` error, each opened by the port in two bytes): the kubelet asks
/// for the same ports and relays messages both ways unchanged.
async fn port_forward_channels(
    socket: WebSocket,
    rt: Arc<PodRuntime>,
    sandbox: String,
    ports: Vec<i32>,
) {
    let request = cri::PortForwardRequest {
        pod_sandbox_id: sandbox.clone(),
        port: ports,
    };
    let (mut to_client, mut from_client) = socket.split();
    let url = match rt.cri.runtime.clone().port_forward(request).await {
        Ok(r) => r.into_inner().url,
        Err(e) => {
            tracing::debug!(error = %e.message(), %sandbox, "port-forward");
            let _ = to_client.send(normal_close()).await;
            return;
        }
    };
    let (mut to_runtime, mut from_runtime) = match connect_runtime(&url).await {
        Ok(s) => s.split(),
        Err(e) => {
            tracing::debug!(error = %e, %sandbox, "port-forward");
            let _ = to_client.send(normal_close()).await;
            return;
        }
    };
    let upstream = async {
        while let Some(Ok(message)) = from_client.next().await {
            let message = match message {
                Message::Binary(b) => tungstenite::Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if to_runtime.send(message).await.is_err() {
                break;
            }
        }
        let _ = to_runtime.close().await;
    };
    let downstream = async {
        while let Some(Ok(message)) = from_runtime.next().await {
            let message = match message {
                tungstenite::Message::Binary(b) => Message::Binary(b),
                tungstenite::Message::Close(_) => break,
                _ => continue,
            };
            if to_client.send(message).await.is_err() {
                break;
            }
        }
        let _ = to_client.send(normal_close()).await;
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

/// A stream pair being opened: kubectl opens the error stream, waits for the
/// reply, then opens the data stream.
#[derive(Default)]
struct PendingPair {
    port: i32,
    error: Option<u32>,
    data: Option<u32>,
}

/// Reads the session's frames and starts one forwarder per stream pair.
async fn port_forward_session(socket: WebSocket, rt: Arc<PodRuntime>, sandbox: String) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (out, mut outgoing) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if ws_tx.send(Message::Binary(frame.into())).await.is_err() {
                break;
            }
        }
        let _ = ws_tx.close().await;
    });
    let mut decoder = spdy::Decoder::default();
    let mut encoder = match spdy::Encoder::new() {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "port-forward session");
            return;
        }
    };
    let mut pending: HashMap<String, PendingPair> = HashMap::new();
    // Client bytes of each data stream go to its forwarder.
    let mut data_streams: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    'session: while let Some(Ok(message)) = ws_rx.next().await {
        let bytes = match message {
            Message::Binary(b) => b,
            Message::Close(_) => break,
            _ => continue,
        };
        decoder.push(&bytes);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "port-forward session");
                    break 'session;
                }
            };
            match frame {
                spdy::Frame::SynStream {
                    stream_id, headers, ..
                } => {
                    let header = |name: &str| {
                        headers
                            .iter()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.as_str())
                    };
                    let (Some(kind), Some(port), Some(request)) =
                        (header("streamtype"), header("port"), header("requestid"))
                    else {
                        let _ = out
                            .send(spdy::rst_stream(stream_id, spdy::RST_CANCEL))
                            .await;
                        continue;
                    };
                    let Ok(port) = port.parse::<u16>() else {
                        let _ = out
                            .send(spdy::rst_stream(stream_id, spdy::RST_CANCEL))
                            .await;
                        continue;
                    };
                    match encoder.syn_reply(stream_id, &[]) {
                        Ok(reply) => {
                            let _ = out.send(reply).await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "port-forward session");
                            break 'session;
                        }
                    }
                    let pair = pending.entry(request.to_owned()).or_default();
                    pair.port = i32::from(port);
                    match kind {
                        "error" => pair.error = Some(stream_id),
                        "data" => pair.data = Some(stream_id),
                        _ => {
                            let _ = out
                                .send(spdy::rst_stream(stream_id, spdy::RST_CANCEL))
                                .await;
                            continue;
                        }
                    }
                    if let (Some(error), Some(data)) = (pair.error, pair.data) {
                        let port = pair.port;
                        pending.remove(request);
                        let (tx, rx) = mpsc::channel(64);
                        data_streams.insert(data, tx);
                        let forwarder = Forwarder {
                            rt: rt.clone(),
                            sandbox: sandbox.clone(),
                            port,
                            data,
                            error,
                            out: out.clone(),
                        };
                        tokio::spawn(forwarder.run(rx));
                    }
                }
                spdy::Frame::Data {
                    stream_id,
                    fin,
                    data,
                } => {
                    if let Some(tx) = data_streams.get(&stream_id)
                        && !data.is_empty()
                    {
                        let _ = tx.send(data).await;
                    }
                    if fin {
                        // The client's half-close; the forwarder sees the end.
                        data_streams.remove(&stream_id);
                    }
                }
                spdy::Frame::RstStream { stream_id, .. } => {
                    data_streams.remove(&stream_id);
                }
                spdy::Frame::Ping { id } => {
                    let _ = out.send(spdy::ping(id)).await;
                }
                spdy::Frame::GoAway { .. } => break 'session,
                spdy::Frame::SynReply { .. }
                | spdy::Frame::Headers { .. }
                | spdy::Frame::Ignored { .. } => {}
            }
        }
    }
    // Ending the client streams ends the forwarders, whose senders keep the
    // writer alive until their last frames are out.
    drop(data_streams);
    drop(out);
    let _ = writer.await;
}

/// One forwarded connection: a data and an error stream to one port.
struct Forwarder {
    rt: Arc<PodRuntime>,
    sandbox: String,
    port: i32,
    data: u32,
    error: u32,
    out: mpsc::Sender<Vec<u8>>,
}

impl Forwarder {
    async fn run(self, from_client: mpsc::Receiver<Vec<u8>>) {
        if let Err(message) = self.relay(from_client).await {
            let text = format!(
                "error forwarding port {} to pod sandbox {}: {message}",
                self.port, self.sandbox
            );
            tracing::debug!(%text, "port-forward");
            let _ = self
                .out
                .send(spdy::data(self.error, false, text.as_bytes()))
                .await;
        }
        let _ = self.out.send(spdy::data(self.data, true, &[])).await;
        let _ = self.out.send(spdy::data(self.error, true, &[])).await;
    }

    async fn relay(&self, mut from_client: mpsc::Receiver<Vec<u8>>) -> Result<(), String> {
        let request = cri::PortForwardRequest {
            pod_sandbox_id: self.sandbox.clone(),
            port: vec![self.port],
        };
        let url = self
            .rt
            .cri
            .runtime
            .clone()
            .port_forward(request)
            .await
            .map_err(|e| e.message().to_owned())?
            .into_inner()
            .url;
        let (mut to_runtime, mut from_runtime) = connect_runtime(&url).await?.split();
        // The runtime starts each channel with the port, two bytes little-endian.
        let mut prefix = [2usize, 2usize];
        let mut failure = Vec::new();
        let mut client_open = true;
        loop {
            tokio::select! {
                chunk = from_client.recv(), if client_open => match chunk {
                    Some(bytes) => {
                        let mut message = Vec::with_capacity(bytes.len() + 1);
                        message.push(0);
                        message.extend_from_slice(&bytes);
                        if to_runtime.send(tungstenite::Message::Binary(message.into())).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        // The WebSocket cannot half-close: closing it ends the
                        // pod-side connection, after which the runtime closes.
                        client_open = false;
                        let _ = to_runtime.close().await;
                    }
                },
                message = from_runtime.next() => match message {
                    Some(Ok(tungstenite::Message::Binary(b))) => {
                        let Some((&channel, mut payload)) = b.split_first() else { continue };
                        let Some(skip) = prefix.get_mut(usize::from(channel)) else { continue };
                        let n = (*skip).min(payload.len());
                        *skip -= n;
                        payload = &payload[n..];
                        if payload.is_empty() {
                            continue;
                        }
                        if channel == 0 {
                            for piece in payload.chunks(32 * 1024) {
                                if self.out.send(spdy::data(self.data, false, piece)).await.is_err() {
                                    return Ok(());
                                }
                            }
                        } else {
                            failure.extend_from_slice(payload);
                        }
                    }
                    Some(Ok(tungstenite::Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        if failure.is_empty() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&failure).into_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_port_forward_reads_its_ports() {
        assert_eq!(channel_ports(Some("ports=80%2C8080")), Ok(vec![80, 8080]));
        assert_eq!(channel_ports(Some("ports=80&ports=443")), Ok(vec![80, 443]));
        for bad in [None, Some(""), Some("ports=http"), Some("ports=70000")] {
            assert!(channel_ports(bad).is_err(), "{bad:?}");
        }
    }
}
