//! The API server's answers to bad input (each a `Status` with upstream's code and
//! reason, and nothing written), its durability across `kill -9`, and watch
//! resumption across a restart — on both datastores.
// Scenario helpers are not #[test] fns; a panic in them is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{path::Path, time::Duration};

use base64::Engine as _;

use serde_json::{Value, json};
use sextant_tests::{
    etcd::EtcdCluster,
    sextant::{Datastore, SextantServer},
};

const BINARY: &str = env!("CARGO_BIN_EXE_sextant");

async fn send(client: &reqwest::Client, req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = client
        .execute(req.build().expect("request"))
        .await
        .expect("send");
    let code = resp.status().as_u16();
    let body = resp.text().await.expect("body");
    (
        code,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn assert_status(code: u16, body: &Value, want_code: u16, want_reason: &str) {
    assert_eq!(code, want_code, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["status"], "Failure", "{body}");
    assert_eq!(body["code"], want_code, "{body}");
    assert_eq!(body["reason"], want_reason, "{body}");
}

async fn bad_input(server: &SextantServer) {
    let c = server.http_client().expect("client");
    let base = server.url();
    let cms = format!("{base}/api/v1/namespaces/default/configmaps");
    // "default" exists from the start, as upstream.

    // Malformed JSON → 400.
    let (code, body) = send(
        &c,
        c.post(&cms)
            .header("content-type", "application/json")
            .body("{\"metadata\": "),
    )
    .await;
    assert_status(code, &body, 400, "BadRequest");
    // Kind not matching the URL → 400.
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}});
    let (code, body) = send(&c, c.post(&cms).json(&secret)).await;
    assert_status(code, &body, 400, "BadRequest");
    assert!(
        body["message"].as_str().unwrap().contains("does not match"),
        "{body}"
    );
    // apiVersion not matching → 400.
    let wrong_version =
        json!({"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "v"}});
    let (code, body) = send(&c, c.post(&cms).json(&wrong_version)).await;
    assert_status(code, &body, 400, "BadRequest");
    // Over 3 MiB → 413.
    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"x": "a".repeat(3 * 1024 * 1024 + 1)}});
    let (code, body) = send(&c, c.post(&cms).json(&big)).await;
    assert_status(code, &body, 413, "RequestEntityTooLarge");
    // Unsupported content type → 415.
    let (code, body) = send(
        &c,
        c.post(&cms)
            .header("content-type", "text/plain")
            .body("name: x"),
    )
    .await;
    assert_status(code, &body, 415, "UnsupportedMediaType");
    // Invalid fields → 422 with causes.
    let invalid = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "UPPER", "labels": {"ok": "-bad-"}}});
    let (code, body) = send(&c, c.post(&cms).json(&invalid)).await;
    assert_status(code, &body, 422, "Invalid");
    let fields: Vec<&str> = body["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert_eq!(fields, ["metadata.name", "metadata.labels"], "{body}");
    // A bad JSON patch → 422, a patch of an unknown type → 415.
    let (code, _) = send(
        &c,
        c.post(&cms)
            .json(&json!({"metadata": {"name": "p"}, "data": {"a": "1"}})),
    )
    .await;
    assert_eq!(code, 201);
    let p = format!("{cms}/p");
    let (code, body) = send(
        &c,
        c.patch(&p)
            .header("content-type", "application/json-patch+json")
            .body(r#"[{"op":"remove","path":"/data/missing"}]"#),
    )
    .await;
    assert_status(code, &body, 422, "Invalid");
    let (code, body) = send(
        &c,
        c.patch(&p)
            .header("content-type", "application/yaml")
            .body("data: {}"),
    )
    .await;
    assert_status(code, &body, 415, "UnsupportedMediaType");
    // A stale resourceVersion → 409 Conflict.
    let (code, body) = send(
        &c,
        c.put(&p)
            .json(&json!({"metadata": {"name": "p", "resourceVersion": "1"}, "data": {}})),
    )
    .await;
    assert_status(code, &body, 409, "Conflict");
    // Unauthenticated → 401.
    let anonymous = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let (code, body) = send(&anonymous, anonymous.get(&cms)).await;
    assert_status(code, &body, 401, "Unauthorized");

    // None of the refused requests wrote anything: only "p" exists, unchanged.
    let (code, list) = send(&c, c.get(&cms)).await;
    assert_eq!(code, 200);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["p"]);
    assert_eq!(list["items"][0]["data"], json!({"a": "1"}));
}

/// N acknowledged creates, `kill -9`, restart: all N are there.
async fn durable_across_kill(server: &mut SextantServer) {
    const N: usize = 50;
    let c = server.http_client().expect("client");
    let base = server.url();
    send(
        &c,
        c.post(format!("{base}/api/v1/namespaces"))
            .json(&json!({"metadata": {"name": "durable"}})),
    )
    .await;
    let cms = format!("{base}/api/v1/namespaces/durable/configmaps");
    for i in 0..N {
        let (code, body) = send(
            &c,
            c.post(&cms).json(
                &json!({"metadata": {"name": format!("cm-{i}")}, "data": {"i": i.to_string()}}),
            ),
        )
        .await;
        assert_eq!(code, 201, "{body}");
    }
    server.kill();
    server.restart().await.expect("restart");
    let c = server.http_client().expect("client");
    let (code, list) = send(&c, c.get(&cms)).await;
    assert_eq!(code, 200);
    let mut got: Vec<usize> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["data"]["i"].as_str().unwrap().parse().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "acknowledged writes lost across kill -9"
    );
}

/// A watch resumed from its last resourceVersion after the server was killed sees
/// every later event exactly once.
async fn watch_resumes_after_restart(server: &mut SextantServer) {
    let c = server.http_client().expect("client");
    let base = server.url();
    send(
        &c,
        c.post(format!("{base}/api/v1/namespaces"))
            .json(&json!({"metadata": {"name": "watched"}})),
    )
    .await;
    let cms = format!("{base}/api/v1/namespaces/watched/configmaps");
    let (_, first) = send(&c, c.post(&cms).json(&json!({"metadata": {"name": "w0"}}))).await;
    let last_seen = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    server.kill();
    server.restart().await.expect("restart");
    let c = server.http_client().expect("client");
    for i in 1..=3 {
        let (code, _) = send(
            &c,
            c.post(&cms)
                .json(&json!({"metadata": {"name": format!("w{i}")}})),
        )
        .await;
        assert_eq!(code, 201);
    }
    let resp = c
        .get(format!(
            "{cms}?watch=true&resourceVersion={last_seen}&timeoutSeconds=2"
        ))
        .send()
        .await
        .expect("watch");
    assert_eq!(resp.status().as_u16(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), resp.text())
        .await
        .expect("watch ends at its timeout")
        .unwrap();
    let events: Vec<(String, String)> = body
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["object"]["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("ADDED".to_owned(), "w1".to_owned()),
            ("ADDED".to_owned(), "w2".to_owned()),
            ("ADDED".to_owned(), "w3".to_owned())
        ]
    );
}

#[tokio::test]
async fn embedded_store() {
    let mut server = SextantServer::start(Path::new(BINARY), Datastore::Embedded)
        .await
        .expect("server");
    bad_input(&server).await;
    finalizers_and_graceful_deletion(&server).await;
    binding_and_eviction(&server).await;
    nodes_join_with_the_token(&server).await;
    metrics_are_exported(&server).await;
    durable_across_kill(&mut server).await;
    watch_resumes_after_restart(&mut server).await;
}

#[tokio::test]
async fn etcd() {
    let etcd = EtcdCluster::start(1).await.expect("etcd");
    let mut server = SextantServer::start(Path::new(BINARY), Datastore::Etcd(&etcd))
        .await
        .expect("server");
    bad_input(&server).await;
    finalizers_and_graceful_deletion(&server).await;
    binding_and_eviction(&server).await;
    nodes_join_with_the_token(&server).await;
    metrics_are_exported(&server).await;
    durable_across_kill(&mut server).await;
    watch_resumes_after_restart(&mut server).await;
}

/// Finalizers hold an object in deletion (202, `deletionTimestamp`) until the
/// last one is removed; a namespace being deleted takes no new content.
async fn finalizers_and_graceful_deletion(server: &SextantServer) {
    let c = server.http_client().unwrap();
    let base = server.url();
    let cms = format!("{base}/api/v1/namespaces/default/configmaps");
    let held = json!({"metadata": {"name": "held", "finalizers": ["example.com/keep"]}});
    assert_eq!(send(&c, c.post(&cms).json(&held)).await.0, 201);
    let (code, body) = send(&c, c.delete(format!("{cms}/held"))).await;
    assert_eq!(code, 202, "{body}");
    assert!(body["metadata"]["deletionTimestamp"].is_string(), "{body}");
    // Still readable while being deleted; no new finalizers.
    let (code, _) = send(&c, c.get(format!("{cms}/held"))).await;
    assert_eq!(code, 200);
    let (code, body) = send(
        &c,
        c.patch(format!("{cms}/held"))
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"metadata":{"finalizers":["example.com/keep","example.com/more"]}}"#),
    )
    .await;
    assert_status(code, &body, 403, "Forbidden");
    // Removing the last finalizer completes the deletion.
    let (code, _) = send(
        &c,
        c.patch(format!("{cms}/held"))
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"metadata":{"finalizers":null}}"#),
    )
    .await;
    assert_eq!(code, 200);
    let (code, body) = send(&c, c.get(format!("{cms}/held"))).await;
    assert_status(code, &body, 404, "NotFound");

    // A namespace is deleted gracefully (the namespace controller finishes it) and
    // refuses new content meanwhile.
    let ns = format!("{base}/api/v1/namespaces");
    assert_eq!(
        send(
            &c,
            c.post(&ns).json(&json!({"metadata": {"name": "leaving"}}))
        )
        .await
        .0,
        201
    );
    let (code, body) = send(
        &c,
        c.delete(format!("{ns}/leaving"))
            .json(&json!({"propagationPolicy": "Background"})),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["status"]["phase"], "Terminating");
    let (code, body) = send(
        &c,
        c.post(format!("{ns}/leaving/configmaps"))
            .json(&json!({"metadata": {"name": "late"}})),
    )
    .await;
    assert_status(code, &body, 403, "Forbidden");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("because it is being terminated"),
        "{body}"
    );
    // A wrong uid precondition is a 409.
    let (code, body) = send(
        &c,
        c.delete(format!("{cms}/p"))
            .json(&json!({"preconditions": {"uid": "not-the-uid"}})),
    )
    .await;
    assert_status(code, &body, 409, "Conflict");
}

/// `/metrics` carries upstream's API server and store metrics in OpenMetrics.
async fn metrics_are_exported(server: &SextantServer) {
    let c = server.http_client().unwrap();
    let base = server.url();
    let metrics = |c: reqwest::Client| {
        let url = format!("{base}/metrics");
        async move {
            let r = c.get(url).send().await.unwrap();
            assert!(
                r.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/openmetrics-text")
            );
            r.text().await.unwrap()
        }
    };
    // A watch is counted while it is open.
    let watch = c
        .get(format!(
            "{}/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=30",
            server.url()
        ))
        .send()
        .await
        .unwrap();
    let text = metrics(c.clone()).await;
    assert!(
        text.contains(r#"apiserver_registered_watchers{group="",version="v1",kind="ConfigMap"} 1"#),
        "{text}"
    );
    drop(watch);
    // Watches are served by the watch cache, built once per resource.
    assert!(
        text.contains(r#"apiserver_watch_cache_initializations_total{resource="configmaps"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"apiserver_request_total{verb="POST",group="",version="v1",resource="configmaps",subresource="",code="201"}"#), "{text}");
    assert!(
        text.contains(r#"apiserver_request_duration_seconds_bucket{le="0.005",verb="GET""#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"etcd_request_duration_seconds_count{operation="create",type="configmaps"}"#
        ),
        "{text}"
    );
    // Counted at start: the four system namespaces (at least).
    let line = text
        .lines()
        .find(|l| l.starts_with(r#"apiserver_storage_objects{resource="namespaces"}"#))
        .unwrap();
    let n: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 4, "{line}");
    assert!(text.trim_end().ends_with("# EOF"));
    // The watch gauge goes back down once the stream is gone.
    for _ in 0..50 {
        let text = metrics(c.clone()).await;
        if text
            .contains(r#"apiserver_registered_watchers{group="",version="v1",kind="ConfigMap"} 0"#)
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the watcher gauge did not go back to 0");
}

/// `pods/binding` assigns a pod once; `pods/eviction` honours disruption budgets.
async fn binding_and_eviction(server: &SextantServer) {
    let c = server.http_client().unwrap();
    let pods = format!("{}/api/v1/namespaces/default/pods", server.url());
    let pod = |name: &str, app: &str| json!({"metadata": {"name": name, "labels": {"app": app}}, "spec": {"containers": [{"name": "c", "image": "sextant.local/demo:v1"}]}});
    assert_eq!(
        send(&c, c.post(&pods).json(&pod("guarded", "web"))).await.0,
        201
    );
    assert_eq!(
        send(&c, c.post(&pods).json(&pod("free", "batch"))).await.0,
        201
    );

    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "guarded"}, "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}});
    let (code, body) = send(&c, c.post(format!("{pods}/guarded/binding")).json(&binding)).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"], "Success");
    let (_, bound) = send(&c, c.get(format!("{pods}/guarded"))).await;
    assert_eq!(bound["spec"]["nodeName"], "node-1");
    assert_eq!(bound["status"]["conditions"][0]["type"], "PodScheduled");
    let (code, body) = send(&c, c.post(format!("{pods}/guarded/binding")).json(&binding)).await;
    assert_status(code, &body, 409, "Conflict");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("is already assigned to node \"node-1\""),
        "{body}"
    );

    // Running and Ready (pending pods are evicted without a budget check).
    let running = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
    let (code, body) = send(
        &c,
        c.patch(format!("{pods}/guarded/status"))
            .header("Content-Type", "application/merge-patch+json")
            .json(&running),
    )
    .await;
    assert_eq!(code, 200, "{body}");

    // A budget selecting app=web that allows no disruption: its one pod must stay.
    let pdbs = format!(
        "{}/apis/policy/v1/namespaces/default/poddisruptionbudgets",
        server.url()
    );
    let pdb = json!({"metadata": {"name": "web-pdb"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}});
    assert_eq!(send(&c, c.post(&pdbs).json(&pdb)).await.0, 201);
    let eviction =
        json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "guarded"}});
    let (code, body) = send(
        &c,
        c.post(format!("{pods}/guarded/eviction")).json(&eviction),
    )
    .await;
    assert_status(code, &body, 429, "TooManyRequests");
    assert_eq!(
        send(&c, c.get(format!("{pods}/guarded"))).await.0,
        200,
        "a refused eviction deleted the pod"
    );
    // A pod no budget selects is evicted (unscheduled: deleted at once).
    let eviction =
        json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "free"}});
    let (code, body) = send(&c, c.post(format!("{pods}/free/eviction")).json(&eviction)).await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = send(&c, c.get(format!("{pods}/free"))).await;
    assert_status(code, &body, 404, "NotFound");
    // A scheduled pod is deleted gracefully: it gets a deletionTimestamp first.
    let (code, body) = send(&c, c.delete(format!("{pods}/guarded"))).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["metadata"]["deletionGracePeriodSeconds"], 30);
    let (code, _) = send(
        &c,
        c.delete(format!("{pods}/guarded"))
            .json(&json!({"gracePeriodSeconds": 0})),
    )
    .await;
    assert!(code == 200 || code == 202, "{code}");
}

/// An agent joins with the node token: it gets the CA (matching the token's hash)
/// and a client certificate of its own that the server accepts; a wrong token is
/// refused.
async fn nodes_join_with_the_token(server: &SextantServer) {
    let text = std::fs::read_to_string(server.data_dir().join("node-token")).unwrap();
    let token = sextant_apiserver::bootstrap::JoinToken::parse(&text).expect("a well-formed token");
    let anonymous = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let join = format!("{}/sextant/v1/join", server.url());

    let wrong = format!("SX1::{}::{}", token.ca_hash, "0".repeat(64));
    let (code, body) = send(
        &anonymous,
        anonymous
            .post(&join)
            .json(&json!({"token": wrong, "nodeName": "n1"})),
    )
    .await;
    assert_status(code, &body, 401, "Unauthorized");

    let (code, body) = send(
        &anonymous,
        anonymous
            .post(&join)
            .json(&json!({"token": text.trim(), "nodeName": "n1"})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let ca = body["ca"].as_str().unwrap();
    assert!(token.trusts(ca), "the CA sent does not match the token");
    // The node's own certificate authenticates it.
    let identity = format!(
        "{}{}",
        body["certificate"].as_str().unwrap(),
        body["key"].as_str().unwrap()
    );
    let node = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap())
        .build()
        .unwrap();
    let (code, _) = send(
        &node,
        node.get(format!("{}/api/v1/namespaces/default", server.url())),
    )
    .await;
    assert_eq!(code, 200);
    components_have_their_own_identities(server);
}

/// The in-process components' kubeconfigs work, each with its own user.
fn components_have_their_own_identities(server: &SextantServer) {
    let openssl = sextant_tests::require_command("openssl").unwrap();
    for (file, user) in sextant_apiserver::server::COMPONENT_IDENTITIES {
        let path = server.data_dir().join("components").join(file);
        let k = sextant_tests::sextant::Kubectl::new(&path).unwrap();
        assert_eq!(
            k.ok(&["get", "ns", "default", "-o", "name"])
                .unwrap()
                .trim(),
            "namespace/default"
        );
        let cert = k
            .ok(&[
                "config",
                "view",
                "--raw",
                "-o",
                "jsonpath={.users[0].user.client-certificate-data}",
            ])
            .unwrap();
        let pem = base64::engine::general_purpose::STANDARD
            .decode(cert.trim())
            .unwrap();
        let mut child = std::process::Command::new(&openssl)
            .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), &pem).unwrap();
        let out = child.wait_with_output().unwrap();
        let subject = String::from_utf8_lossy(&out.stdout);
        assert_eq!(subject.trim(), format!("subject=CN={user}"), "{file}");
    }
}
