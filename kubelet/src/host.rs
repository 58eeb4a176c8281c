//! Facts about the host a node reports: capacity, kernel, OS image, architecture.

use std::path::Path;

/// What the Node's status says about its machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// Logical CPUs.
    pub cpus: u64,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Size of the filesystem holding the agent's data dir, in bytes.
    pub ephemeral_storage_bytes: u64,
    /// `uname -r`.
    pub kernel_version: String,
    /// `PRETTY_NAME` from /etc/os-release.
    pub os_image: String,
    /// Go's name for the architecture (`amd64`, `arm64`), as Kubernetes reports it.
    pub architecture: String,
    /// /proc/sys/kernel/random/boot_id.
    pub boot_id: String,
    /// /etc/machine-id, when there is one.
    pub machine_id: String,
}

impl HostFacts {
    /// Reads the facts of this host; `data_dir` is where ephemeral storage lives.
    pub fn read(data_dir: &Path) -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            memory_bytes: mem_total(&read("/proc/meminfo")).unwrap_or(0),
            ephemeral_storage_bytes: nix::sys::statvfs::statvfs(data_dir)
                .map(|s| s.blocks().saturating_mul(s.fragment_size()))
                .unwrap_or(0),
            kernel_version: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            os_image: pretty_name(&read("/etc/os-release")).unwrap_or_else(|| "Linux".into()),
            architecture: go_arch(std::env::consts::ARCH).to_owned(),
            boot_id: read("/proc/sys/kernel/random/boot_id").trim().to_owned(),
            machine_id: read("/etc/machine-id").trim().to_owned(),
        }
    }
}

/// `MemTotal:  16314368 kB` → bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"` → the quoted value.
fn pretty_name(os_release: &str) -> Option<String> {
    let line = os_release.lines().find(|l| l.starts_with("PRETTY_NAME="))?;
    Some(line["PRETTY_NAME=".len()..].trim_matches('"').to_owned())
}

fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_and_os_release() {
        assert_eq!(
            mem_total("MemFree: 1 kB\nMemTotal:       2048 kB\n"),
            Some(2 * 1024 * 1024)
        );
        assert_eq!(mem_total("nothing"), None);
        assert_eq!(
            pretty_name("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n")
                .as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(go_arch("x86_64"), "amd64");
    }

    #[test]
    fn this_host_has_facts() {
        let f = HostFacts::read(Path::new("/"));
        assert!(
            f.cpus >= 1 && f.memory_bytes > 0 && f.ephemeral_storage_bytes > 0,
            "{f:?}"
        );
        assert!(!f.kernel_version.is_empty());
    }
}
