//! `cargo xtask up`: sets up the machine, builds everything, and runs a one-node
//! cluster in the foreground — `sextant server --with-agent` on the embedded store,
//! its agent running pods through its own containerd with the offline images —
//! deploys the demo app, and prints how to reach it. Ctrl-C stops the server and
//! the agent (containerd and the pods stay, and are adopted by the next `up`).

use std::{
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::step::{cargo, run, step, target_dir};

/// The kubectl the machine image carries (MACHINE.md), else the one on PATH.
const KUBECTL_1_33: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";

const DEMO: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: demo, namespace: default, labels: {app: demo}}
spec:
  replicas: 2
  selector:
    matchLabels: {app: demo}
  template:
    metadata:
      labels: {app: demo}
    spec:
      containers:
      - name: demo
        image: sextant.local/demo:v1
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /readyz, port: http}
          periodSeconds: 2
        livenessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 5
---
apiVersion: v1
kind: Service
metadata: {name: demo, namespace: default}
spec:
  selector: {app: demo}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

fn kubectl(kubeconfig: &Path) -> Command {
    let binary = if Path::new(KUBECTL_1_33).exists() {
        KUBECTL_1_33
    } else {
        "kubectl"
    };
    let mut c = Command::new(binary);
    c.env("KUBECONFIG", kubeconfig);
    c
}

/// Kills the server (and with it the agent) if `up` fails half way.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sets up, builds, runs the one-node cluster with the demo app until interrupted.
pub(crate) fn run_up() -> Result<()> {
    crate::setup::setup()?;
    step("build the workspace (with the eBPF programs)", || {
        run(cargo().arg("build"))
    })?;
    let images = crate::images::build()?;
    let data_dir = target_dir().join("sextant-up");
    let image_dir = data_dir.join("node").join("agent").join("images");
    step("stage the offline images for the agent", || {
        std::fs::create_dir_all(&image_dir)?;
        for entry in std::fs::read_dir(&images)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tar") {
                let name = path
                    .file_name()
                    .context("an image archive without a name")?;
                std::fs::copy(&path, image_dir.join(name))?;
            }
        }
        Ok(())
    })?;
    let kubeconfig = data_dir.join("admin.kubeconfig");
    let binary = target_dir().join("debug").join("sextant");
    let mut server = Server(
        Command::new(&binary)
            .args(["server", "--with-agent", "--data-dir"])
            .arg(&data_dir)
            .args(["--listen", "0.0.0.0:6443"])
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?,
    );
    step("wait for the node to be Ready", || {
        wait(Duration::from_secs(120), || {
            let out = kubectl(&kubeconfig)
                .args([
                    "get",
                    "nodes",
                    "-o",
                    r#"jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}"#,
                ])
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout).contains("True"))
        })
    })?;
    step("deploy the demo app", || {
        let mut apply = kubectl(&kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        if let Some(stdin) = apply.stdin.as_mut() {
            std::io::Write::write_all(stdin, DEMO.as_bytes())?;
        }
        drop(apply.stdin.take());
        if !apply.wait()?.success() {
            bail!("kubectl apply of the demo failed");
        }
        let status = kubectl(&kubeconfig)
            .args(["rollout", "status", "deployment/demo", "--timeout=120s"])
            .status()?;
        if !status.success() {
            bail!("the demo Deployment did not roll out");
        }
        Ok(())
    })?;
    let ips = kubectl(&kubeconfig)
        .args([
            "get",
            "pods",
            "-l",
            "app=demo",
            "-o",
            "jsonpath={.items[*].status.podIP}",
        ])
        .output()?;
    let ips = String::from_utf8_lossy(&ips.stdout).into_owned();
    let first = ips.split_whitespace().next().unwrap_or("<pod IP>");
    println!();
    println!(
        "A one-node Sextant cluster is running (data in {}).",
        data_dir.display()
    );
    println!("Reach it with kubectl:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get nodes,deployments,pods -o wide");
    println!("  kubectl logs deployment/demo");
    let vip = kubectl(&kubeconfig)
        .args(["get", "svc", "demo", "-o", "jsonpath={.spec.clusterIP}"])
        .output()?;
    let vip = String::from_utf8_lossy(&vip.stdout).into_owned();
    println!("The demo app answers on its pods' IPs ({ips}):");
    println!("  curl http://{first}:8080/env");
    println!("and, from pods, on the Service demo's ClusterIP (balanced by the eBPF dataplane):");
    println!("  kubectl exec deploy/demo -- /demo --http-get {vip}:80 --count 10");
    println!("Ctrl-C stops the server and the agent; containerd and the pods keep running");
    println!("and are adopted by the next `cargo xtask up`.");
    let status = server.0.wait()?;
    if !status.success() {
        bail!("sextant server exited with {status}");
    }
    Ok(())
}

/// Polls `check` until it says yes, or fails after `timeout`.
fn wait(timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().unwrap_or(false) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("not done within {timeout:?}")
}
