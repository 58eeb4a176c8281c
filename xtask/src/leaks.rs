//! What the tests may leave on the machine: network namespaces, links in the host
//! namespace, mounts, cgroups, bpffs pins and processes. `cargo xtask test` takes a
//! snapshot before the tests and fails if anything new is there after them.

use std::{collections::BTreeSet, process::Command};

use anyhow::{Result, bail};

/// One snapshot: a set of `kind: name` lines.
#[derive(Debug, Default)]
pub(crate) struct Snapshot(BTreeSet<String>);

impl Snapshot {
    /// Reads the machine's current state.
    pub(crate) fn take() -> Self {
        let mut s = BTreeSet::new();
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = l.split_whitespace().next() {
                    s.insert(format!("netns: {name}"));
                }
            }
        }
        if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = l.split(": ").nth(1) {
                    s.insert(format!("link: {}", name.split('@').next().unwrap_or(name)));
                }
            }
        }
        if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
            for p in info.lines().filter_map(|l| l.split(' ').nth(4)) {
                s.insert(format!("mount: {p}"));
            }
        }
        for root in read_dirs("/sys/fs/cgroup") {
            for d in read_dirs(&root) {
                if d.contains("sextant") {
                    s.insert(format!("cgroup: {d}"));
                }
            }
        }
        walk_pins("/sys/fs/bpf", &mut s);
        for pid_dir in read_dirs("/proc") {
            let Ok(cmdline) = std::fs::read(format!("{pid_dir}/cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let ours = [
                "sextant-etcd-",
                "sextant-containerd-",
                "sextant-prometheus-",
                "sextant-demo",
            ]
            .iter()
            .any(|m| cmd.contains(m));
            if ours && !cmd.contains("xtask") {
                s.insert(format!("process: {pid_dir} {}", cmd.trim()));
            }
        }
        Self(s)
    }

    /// Fails with a list of what is in `after` and was not in `self`.
    pub(crate) fn check_nothing_new(&self, after: &Snapshot) -> Result<()> {
        let new: Vec<&String> = after.0.difference(&self.0).collect();
        if new.is_empty() {
            println!("    nothing left behind ({} items checked)", after.0.len());
            return Ok(());
        }
        let list: Vec<String> = new.iter().map(|n| format!("  {n}")).collect();
        bail!("the tests left these behind:\n{}", list.join("\n"))
    }
}

fn read_dirs(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn walk_pins(dir: &str, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path().to_string_lossy().into_owned();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk_pins(&p, out);
        } else {
            out.insert(format!("bpffs pin: {p}"));
        }
    }
}
