//! `cargo xtask setup`: everything the build and the tests need on a fresh Debian 12
//! machine (root). Each part checks first and does nothing when already done, so a
//! second run takes a few seconds.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::step::{output, run, step};

/// Debian packages, with what needs them.
const PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "Debian's Rust with a prebuilt core for the BPF target",
    ),
    ("cargo-web", "cargo for that toolchain"),
    ("libstd-rust-web-dev-bpf", "the BPF target's core/alloc"),
    ("etcd-server", "the production datastore, spawned by tests"),
    ("etcd-client", "etcdctl"),
    ("containerd", "the CRI runtime"),
    ("runc", "the OCI runtime"),
    (
        "containernetworking-plugins",
        "reference CNI plugins (bridge, host-local, loopback)",
    ),
    ("prometheus", "metrics tests (prometheus, promtool)"),
    ("busybox-static", "the offline busybox image"),
    ("skopeo", "inspecting OCI archives"),
    ("umoci", "OCI image tooling"),
    ("protobuf-compiler", "protoc for tonic/prost builds"),
    (
        "libprotobuf-dev",
        "protobuf well-known types (etcd-client's protos import them)",
    ),
    ("iproute2", "ip, network namespaces and links"),
    (
        "iptables",
        "the iptables baseline of the dataplane benchmarks",
    ),
    (
        "nftables",
        "nft: the agent's masquerade rule for pod traffic leaving the cluster",
    ),
    ("bpftool", "inspecting loaded programs and maps"),
    ("iputils-ping", "ping in dataplane tests"),
    (
        "ethtool",
        "GRO on test bridges' veth ports: a veth receives XDP_TX frames only with NAPI on",
    ),
    ("util-linux", "nsenter"),
    (
        "tmux",
        "a real terminal for sextantctl's exec -it and progress tests",
    ),
    ("libc6-dev", "static glibc for the image binaries"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_SO: &str = "/usr/lib/x86_64-linux-gnu/libLLVM.so.22.1";
const TOOLCHAIN: &str = "debian-bpf";

/// Runs every setup part in order.
pub(crate) fn setup() -> Result<()> {
    if !nix_is_root() {
        bail!("cargo xtask setup must run as root (it installs packages and mounts bpffs)");
    }
    step("setup: Debian packages", packages)?;
    step("setup: debian-bpf toolchain link", toolchain_link)?;
    step("setup: bpf-linker", bpf_linker)?;
    step("setup: bpffs", bpffs)?;
    Ok(())
}

fn nix_is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

fn packages() -> Result<()> {
    let names: Vec<&str> = PACKAGES.iter().map(|(n, _)| *n).collect();
    let missing = missing_packages(&names)?;
    if missing.is_empty() {
        println!("    all {} packages present", names.len());
        return Ok(());
    }
    for m in &missing {
        let why = PACKAGES
            .iter()
            .find(|(n, _)| n == m)
            .map(|(_, w)| *w)
            .unwrap_or("");
        println!("    installing {m} ({why})");
    }
    run(Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    let still = missing_packages(&names)?;
    if !still.is_empty() {
        bail!(
            "packages still missing after apt-get install: {}",
            still.join(" ")
        );
    }
    Ok(())
}

fn missing_packages(names: &[&str]) -> Result<Vec<String>> {
    // dpkg-query exits 1 when some package is unknown; its stdout still lists the rest.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Status}\n"])
        .args(names)
        .output()
        .context("running dpkg-query")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, status)| *status == "installed")
        .map(|(name, _)| name)
        .collect();
    Ok(names
        .iter()
        .filter(|n| !installed.contains(n))
        .map(|n| (*n).to_owned())
        .collect())
}

fn toolchain_link() -> Result<()> {
    let list = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if list
        .lines()
        .any(|l| l.split_whitespace().next() == Some(TOOLCHAIN))
    {
        println!("    {TOOLCHAIN} already linked");
        return Ok(());
    }
    if !Path::new("/usr/lib/rustlib/bpfel-unknown-none/lib").is_dir() {
        bail!(
            "/usr/lib/rustlib/bpfel-unknown-none/lib is missing: is libstd-rust-web-dev-bpf installed?"
        );
    }
    run(Command::new("rustup").args(["toolchain", "link", TOOLCHAIN, "/usr"]))
}

fn bpf_linker() -> Result<()> {
    if let Ok(v) = output(Command::new("bpf-linker").arg("--version"))
        && v.contains(BPF_LINKER_VERSION)
    {
        println!("    bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    if !Path::new(LLVM_SO).exists() {
        bail!(
            "{LLVM_SO} is missing: the Debian packages step should have installed LLVM 22 with rustc-web"
        );
    }
    // bpf-linker finds libLLVM through LLVM_PREFIX/lib; Debian ships no llvm-config for 22.
    let prefix = crate::step::target_dir().join("llvm-prefix");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let link = lib.join("libLLVM.so");
    if link.symlink_metadata().is_err() {
        std::os::unix::fs::symlink(LLVM_SO, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    println!("    building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    run(Command::new("cargo")
        .args([
            "install",
            "--locked",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", &prefix))
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        matches!(
            (f.next(), f.next(), f.next()),
            (Some(_), Some("/sys/fs/bpf"), Some("bpf"))
        )
    }) {
        println!("    /sys/fs/bpf is mounted");
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf").context("creating /sys/fs/bpf")?;
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
