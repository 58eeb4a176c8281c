//! The test harness against the real components: etcd (1 and 3 members), containerd
//! running a container from the offline busybox image through CRI, and Prometheus
//! scraping the demo server's `/metrics`.

use std::{collections::HashMap, process::Command, time::Duration};

use k8s_cri::v1 as cri;
use sextant_tests::{
    containerd::Containerd, etcd::EtcdCluster, free_port, images, process::ChildProcess,
    prometheus::Prometheus, prometheus::ScrapeJob, unique_name, wait_for,
};

#[tokio::test]
async fn etcd_single_member_puts_and_gets() {
    let etcd = EtcdCluster::start(1).await.expect("etcd");
    let mut client = etcd.client().await.expect("client");
    client
        .put("/sextant/test/key", "value-1", None)
        .await
        .expect("put");
    let got = client.get("/sextant/test/key", None).await.expect("get");
    let kv = got.kvs().first().expect("key present");
    assert_eq!(kv.value_str().unwrap(), "value-1");
    assert!(kv.mod_revision() > 0);
}

#[tokio::test]
async fn etcd_three_members_keep_serving_with_one_killed() {
    let mut etcd = EtcdCluster::start(3).await.expect("etcd");
    let mut client = etcd.client().await.expect("client");
    client.put("k", "before", None).await.expect("put");
    etcd.kill_member(0);
    // Quorum is 2 of 3: writes keep working through the remaining members.
    let endpoints = etcd.endpoints();
    assert_eq!(endpoints.len(), 2);
    let mut survivor = etcd_client::Client::connect(endpoints, None)
        .await
        .expect("connect");
    let put = wait_for(
        "a write after a member died",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let mut c = survivor.clone();
            async move { c.put("k", "after", None).await.ok() }
        },
    )
    .await;
    put.expect("write with one member down");
    let got = survivor.get("k", None).await.expect("get");
    assert_eq!(got.kvs()[0].value_str().unwrap(), "after");
    etcd.restart_member(0).await.expect("restart member 0");
    let _ = &mut client;
}

#[tokio::test]
async fn containerd_runs_a_busybox_container_through_cri_and_its_log_is_read() {
    let ctrd = Containerd::start().await.expect("containerd");
    ctrd.import_test_images().await.expect("import images");
    let mut c = ctrd.cri().await.expect("cri");

    let version = c
        .runtime
        .version(cri::VersionRequest::default())
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(version.runtime_name, "containerd");

    let pod_name = unique_name("harness-");
    let log_dir = ctrd.log_dir().join(&pod_name);
    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: pod_name.clone(),
            uid: unique_name("uid-"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: pod_name.clone(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("/{}/{pod_name}", ctrd.cgroup_parent()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox = c
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctrd.log_tail(30)))
        .into_inner()
        .pod_sandbox_id;

    let status = c
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.clone(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    let pod_ip = status.network.map(|n| n.ip).unwrap_or_default();
    assert!(
        pod_ip.starts_with("10.88.0."),
        "pod IP from the harness CNI config: {pod_ip:?}"
    );

    let container = c
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "hello".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: images::BUSYBOX.into(),
                    ..Default::default()
                }),
                command: vec!["sh".into(), "-c".into()],
                args: vec!["echo hello from $(hostname); echo second line".into()],
                log_path: "hello.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    c.runtime
        .start_container(cri::StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .expect("StartContainer");

    let exit_code = wait_for(
        "the container to exit",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let mut rt = c.runtime.clone();
            let id = container.clone();
            async move {
                let s = rt
                    .container_status(cri::ContainerStatusRequest {
                        container_id: id,
                        verbose: false,
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .status?;
                (s.state == cri::ContainerState::ContainerExited as i32).then_some(s.exit_code)
            }
        },
    )
    .await
    .expect("exit");
    assert_eq!(exit_code, 0);

    // The CRI log format: `<RFC3339Nano> <stream> <P|F> <message>`.
    let log = std::fs::read_to_string(log_dir.join("hello.log")).expect("container log");
    let messages: Vec<&str> = log
        .lines()
        .map(|l| {
            let parts: Vec<&str> = l.splitn(4, ' ').collect();
            assert_eq!(parts.len(), 4, "CRI log line {l:?}");
            assert_eq!(parts[1], "stdout", "{l:?}");
            assert_eq!(parts[2], "F", "{l:?}");
            parts[3]
        })
        .collect();
    assert_eq!(
        messages,
        [format!("hello from {pod_name}").as_str(), "second line"]
    );

    c.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .expect("StopPodSandbox");
    c.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox,
        })
        .await
        .expect("RemovePodSandbox");
    let left = c
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert!(left.is_empty(), "containers left: {left:?}");
}

#[tokio::test]
async fn prometheus_scrapes_the_demo_servers_metrics() {
    let port = free_port().expect("port");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(images::binary("sextant-demo").expect("demo binary"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
    let _demo = ChildProcess::spawn("demo", cmd, &dir.path().join("demo.log")).expect("demo");

    let prom = Prometheus::start(&[ScrapeJob {
        name: "demo".into(),
        targets: vec![format!("127.0.0.1:{port}")],
    }])
    .await
    .expect("prometheus");
    prom.wait_for_job_up("demo", Duration::from_secs(30))
        .await
        .expect("demo target up");

    // Prometheus's own scrapes of /metrics are counted by the demo server.
    let series = wait_for(
        "demo_requests_total in Prometheus",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || async {
            let r = prom
                .query("demo_requests_total{job=\"demo\",path=\"/metrics\"}")
                .await
                .ok()?;
            (!r.is_empty()).then_some(r)
        },
    )
    .await
    .expect("series");
    let labels: HashMap<String, String> =
        serde_json::from_value(series[0]["metric"].clone()).expect("labels");
    assert_eq!(
        labels.get("instance").map(String::as_str),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    let value: f64 = series[0]["value"][1]
        .as_str()
        .expect("value")
        .parse()
        .expect("number");
    assert!(value >= 1.0, "scrapes counted: {value}");
}

#[test]
fn network_namespace_nodes_reach_each_other_over_the_bridge() {
    let net = sextant_tests::netns::Network::new(3, [10, 202, 0]).expect("network");
    for (i, from) in net.nodes.iter().enumerate() {
        let to = &net.nodes[(i + 1) % net.nodes.len()];
        let out = sextant_tests::run(from.netns.command("ping").args([
            "-c",
            "1",
            "-W",
            "2",
            &to.addr.to_string(),
        ]))
        .unwrap_or_else(|e| panic!("node {i} cannot reach {}: {e}", to.addr));
        assert!(out.contains("1 received"), "{out}");
    }
    // Each node has its own address on its uplink.
    let addrs = net.nodes[1]
        .netns
        .ip(&["-4", "-o", "addr", "show", "dev", "eth0"])
        .expect("ip addr");
    assert!(addrs.contains("10.202.0.2/24"), "{addrs}");
}

#[tokio::test]
async fn the_demo_server_answers_probes_env_echo_and_load_requests() {
    let port = free_port().expect("port");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(images::binary("sextant-demo").expect("demo binary"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .env("DEMO_GREETING", "hello");
    let _demo = ChildProcess::spawn("demo", cmd, &dir.path().join("demo.log")).expect("demo");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for(
        "the demo server",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let r = http.get(format!("{base}/healthz")).send();
            async move { r.await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        },
    )
    .await
    .expect("demo up");

    let status = |path: &'static str| {
        let r = http.get(format!("{base}{path}")).send();
        async move { r.await.expect("request").status().as_u16() }
    };
    assert_eq!(
        (status("/healthz").await, status("/readyz").await),
        (200, 200)
    );
    // Told to fail liveness: /healthz fails, /readyz does not; and back.
    http.post(format!("{base}/fail?probe=liveness&fail=true"))
        .send()
        .await
        .expect("fail");
    assert_eq!(
        (status("/healthz").await, status("/readyz").await),
        (503, 200)
    );
    http.post(format!("{base}/fail?probe=liveness&fail=false"))
        .send()
        .await
        .expect("pass");
    http.post(format!("{base}/fail?probe=readiness"))
        .send()
        .await
        .expect("fail readiness");
    assert_eq!(
        (status("/healthz").await, status("/readyz").await),
        (200, 503)
    );
    let bad = http
        .post(format!("{base}/fail?probe=startup"))
        .send()
        .await
        .expect("bad probe");
    assert_eq!(bad.status().as_u16(), 400);

    let env: serde_json::Value = http
        .get(format!("{base}/env"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(env["DEMO_GREETING"], "hello");
    let echo: serde_json::Value = http
        .put(format!("{base}/some/path?x=1"))
        .body("payload")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            echo["method"].as_str(),
            echo["path"].as_str(),
            echo["query"].as_str()
        ),
        (Some("PUT"), Some("/some/path"), Some("x=1"))
    );
    assert_eq!(echo["body"], "payload");

    // Memory is allocated and held; CPU burn is accepted; both show in /metrics.
    let r = http
        .post(format!("{base}/alloc?mb=8"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http
        .post(format!("{base}/burn?seconds=1&threads=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let held: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("demo_allocated_bytes "))
        .expect("demo_allocated_bytes")
        .parse()
        .unwrap();
    assert!(held >= 8.0 * 1024.0 * 1024.0, "{metrics}");
    assert!(metrics.contains("demo_burn_seconds_total 1"), "{metrics}");
}
