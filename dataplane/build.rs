//! Builds `ebpf/programs` for the BPF target with the `debian-bpf` toolchain and
//! leaves the object in `OUT_DIR` for `include_bytes_aligned!`; generates the
//! agent's gRPC API from `proto/`.

use std::process::Command;

/// The rustup toolchain that carries a prebuilt `core` for bpfel-unknown-none
/// (Debian's Rust, linked by `cargo xtask setup`). Overridable for tests of this check.
const DEFAULT_TOOLCHAIN: &str = "debian-bpf";

fn main() {
    if let Err(err) =
        tonic_prost_build::configure().compile_protos(&["proto/endpoints.proto"], &["proto"])
    {
        eprintln!(
            "error: generating the dataplane gRPC API (needs protoc: `cargo xtask setup`): {err}"
        );
        std::process::exit(1);
    }
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=SEXTANT_BPF_TOOLCHAIN");
    // aya-build watches ebpf/programs; the shared map types live beside it. (No
    // build-dependency on the eBPF crate: that made cargo compile kernel code for the
    // host now and then.)
    println!("cargo:rerun-if-changed=../ebpf/common");
    let toolchain =
        std::env::var("SEXTANT_BPF_TOOLCHAIN").unwrap_or_else(|_| DEFAULT_TOOLCHAIN.to_owned());
    if let Err(missing) = check_toolchain(&toolchain) {
        eprintln!(
            "error: cannot build the eBPF programs: {missing}.\n\
             Run `cargo xtask setup` to install the eBPF toolchain (Debian's Rust with the BPF core, \
             bpf-linker, and the `{toolchain}` rustup toolchain link)."
        );
        std::process::exit(1);
    }

    // RUSTC_BOOTSTRAP=aya_ebpf comes from .cargo/config.toml: it lets aya-ebpf use
    // unstable features on Debian's stable rustc; `=1` would make aya-build add
    // `-Z build-std`, which fails without rust-src.
    let package = aya_build::Package {
        name: "sextant-ebpf",
        root_dir: "../ebpf/programs",
        ..Default::default()
    };
    if let Err(err) = aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain)) {
        eprintln!("error: building the eBPF programs failed: {err:#}");
        std::process::exit(1);
    }
}

/// Reports what is missing: the rustup toolchain link or bpf-linker.
fn check_toolchain(toolchain: &str) -> Result<(), String> {
    let out = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map_err(|e| format!("rustup is not runnable ({e})"))?;
    let list = String::from_utf8_lossy(&out.stdout);
    if !list
        .lines()
        .any(|l| l.split_whitespace().next() == Some(toolchain))
    {
        return Err(format!(
            "the rustup toolchain `{toolchain}` is not installed"
        ));
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    match linker {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("`bpf-linker` is not on PATH".to_owned()),
    }
}
