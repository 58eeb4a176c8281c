//! `cargo xtask images`: the offline OCI images the tests and `cargo xtask up` use,
//! built from this repo and Debian's busybox-static, written as OCI archives to
//! `target/images/` (`ctr images import` and `skopeo` read them; no registry needed).
//!
//! | image | layers | entrypoint |
//! |---|---|---|
//! | `sextant.local/busybox:v1` | busybox + applet links, /etc/passwd | `sh` |
//! | `sextant.local/demo:v1` | busybox, `/demo` | `/demo` |
//! | `sextant.local/pause:v1` | `/pause` | `/pause` |
//!
//! Layers are built with fixed timestamps and owners, so the same inputs give the
//! same digests.

use std::{collections::HashMap, path::Path, process::Command, str::FromStr};

use anyhow::{Context, Result, bail};
use flate2::{Compression, write::GzEncoder};
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, Digest, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder, SCHEMA_VERSION,
};
use sha2::{Digest as _, Sha256};

use crate::step::{cargo, output, step, target_dir};

const HOST_TARGET: &str = "x86_64-unknown-linux-gnu";
const BINARIES: [&str; 2] = ["sextant-demo", "sextant-pause"];
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds the static binaries and the three archives; returns the output directory.
pub(crate) fn build() -> Result<std::path::PathBuf> {
    let out = target_dir().join("images");
    let bin = out.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    step("images: static demo and pause binaries", || {
        build_binaries(&bin)
    })?;
    step("images: OCI archives", || {
        let busybox = busybox_layer()?;
        let demo = single_file_layer(&bin.join("sextant-demo"), "demo")?;
        let pause = single_file_layer(&bin.join("sextant-pause"), "pause")?;
        write_image(
            &out.join("busybox.tar"),
            "sextant.local/busybox",
            "v1",
            &[&busybox],
            &[],
            &["sh"],
        )?;
        write_image(
            &out.join("demo.tar"),
            "sextant.local/demo",
            "v1",
            &[&busybox, &demo],
            &["/demo"],
            &[],
        )?;
        write_image(
            &out.join("pause.tar"),
            "sextant.local/pause",
            "v1",
            &[&pause],
            &["/pause"],
            &[],
        )?;
        for f in ["busybox.tar", "demo.tar", "pause.tar"] {
            println!("    {}", out.join(f).display());
        }
        Ok(())
    })?;
    Ok(out)
}

fn build_binaries(bin: &Path) -> Result<()> {
    // Static glibc (libc6-dev ships libc.a); `--target` keeps the flag off build
    // scripts and proc macros.
    let mut cmd = cargo();
    cmd.args(["build", "--profile", "image", "--target", HOST_TARGET]);
    for b in BINARIES {
        cmd.args(["--package", b]);
    }
    cmd.env("RUSTFLAGS", "-C target-feature=+crt-static");
    crate::step::run(&mut cmd)?;
    for b in BINARIES {
        let from = target_dir().join(HOST_TARGET).join("image").join(b);
        let to = bin.join(b);
        std::fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        let file = output(Command::new("file").arg(&to)).unwrap_or_default();
        if !file.is_empty() && !file.contains("statically linked") && !file.contains("static-pie") {
            bail!("{} is not statically linked: {file}", to.display());
        }
    }
    Ok(())
}

/// One layer: the uncompressed tar's digest (diff id) and the gzipped blob.
struct Layer {
    diff_id: String,
    gz: Vec<u8>,
}

fn new_tar() -> tar::Builder<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    b
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn add_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> Result<()> {
    let mut h = header(tar::EntryType::Directory, mode, 0);
    b.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
    b.append_data(&mut h, path, data)?;
    Ok(())
}

fn finish_layer(b: tar::Builder<Vec<u8>>) -> Result<Layer> {
    let tar = b.into_inner()?;
    let diff_id = format!("sha256:{}", hex(&Sha256::digest(&tar)));
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    std::io::Write::write_all(&mut gz, &tar)?;
    Ok(Layer {
        diff_id,
        gz: gz.finish()?,
    })
}

fn busybox_layer() -> Result<Layer> {
    let busybox = Path::new("/bin/busybox");
    let data =
        std::fs::read(busybox).context("reading /bin/busybox (Debian package busybox-static)")?;
    let list = output(Command::new(busybox).arg("--list-full"))?;
    let mut b = new_tar();
    for dir in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "home", "var", "proc", "sys",
        "dev",
    ] {
        add_dir(&mut b, dir, 0o755)?;
    }
    add_dir(&mut b, "tmp", 0o1777)?;
    add_file(&mut b, "bin/busybox", 0o755, &data)?;
    add_file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    add_file(&mut b, "etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    for applet in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "bin/busybox")
    {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, applet, "/bin/busybox")?;
    }
    finish_layer(b)
}

fn single_file_layer(file: &Path, name: &str) -> Result<Layer> {
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let mut b = new_tar();
    add_file(&mut b, name, 0o755, &data)?;
    finish_layer(b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_digest(bytes: &[u8]) -> Result<Digest> {
    Ok(Digest::from_str(&format!(
        "sha256:{}",
        hex(&Sha256::digest(bytes))
    ))?)
}

/// Writes an OCI image layout as a tar archive at `path`.
fn write_image(
    path: &Path,
    repository: &str,
    tag: &str,
    layers: &[&Layer],
    entrypoint: &[&str],
    cmd: &[&str],
) -> Result<()> {
    let mut blobs: Vec<(Digest, Vec<u8>)> = Vec::new();
    let mut layer_descriptors = Vec::new();
    for l in layers {
        let digest = sha256_digest(&l.gz)?;
        layer_descriptors.push(Descriptor::new(
            MediaType::ImageLayerGzip,
            l.gz.len() as u64,
            digest.clone(),
        ));
        blobs.push((digest, l.gz.clone()));
    }

    let mut config = ConfigBuilder::default()
        .env(vec![PATH_ENV.to_owned()])
        .working_dir("/".to_owned());
    if !entrypoint.is_empty() {
        config = config.entrypoint(
            entrypoint
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
        );
    }
    if !cmd.is_empty() {
        config = config.cmd(cmd.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
    }
    let image_config = ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(config.build()?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>())
                .build()?,
        )
        .build()?;
    let config_json = image_config.to_string()?.into_bytes();
    let config_digest = sha256_digest(&config_json)?;
    let config_descriptor = Descriptor::new(
        MediaType::ImageConfig,
        config_json.len() as u64,
        config_digest.clone(),
    );
    blobs.push((config_digest, config_json));

    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(config_descriptor)
        .layers(layer_descriptors)
        .build()?;
    let manifest_json = manifest.to_string()?.into_bytes();
    let manifest_digest = sha256_digest(&manifest_json)?;
    let mut manifest_descriptor = Descriptor::new(
        MediaType::ImageManifest,
        manifest_json.len() as u64,
        manifest_digest.clone(),
    );
    // containerd names the imported image from io.containerd.image.name; skopeo and
    // other OCI tools use ref.name (the tag).
    manifest_descriptor.set_annotations(Some(HashMap::from([
        (
            "io.containerd.image.name".to_owned(),
            format!("{repository}:{tag}"),
        ),
        (
            "org.opencontainers.image.ref.name".to_owned(),
            tag.to_owned(),
        ),
    ])));
    manifest_descriptor.set_platform(Some(
        PlatformBuilder::default()
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .build()?,
    ));
    blobs.push((manifest_digest, manifest_json));

    let index = ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_descriptor])
        .build()?;

    let mut archive = new_tar();
    add_file(
        &mut archive,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    add_file(
        &mut archive,
        "index.json",
        0o644,
        index.to_string()?.as_bytes(),
    )?;
    add_dir(&mut archive, "blobs", 0o755)?;
    add_dir(&mut archive, "blobs/sha256", 0o755)?;
    for (digest, data) in &blobs {
        add_file(
            &mut archive,
            &format!("blobs/sha256/{}", digest.digest()),
            0o644,
            data,
        )?;
    }
    let bytes = archive.into_inner()?;
    let tmp = path.with_extension("tar.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
