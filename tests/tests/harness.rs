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
