//! The offline OCI images built by `cargo xtask images` into `target/images/`.

use std::path::PathBuf;

use crate::{Error, Result, target_dir};

/// busybox-static with its applet links: `sh`, `cat`, `sleep`, ...
pub const BUSYBOX: &str = "sextant.local/busybox:v1";
/// busybox plus the demo HTTP server (`/demo`) as entrypoint.
pub const DEMO: &str = "sextant.local/demo:v1";
/// The pod sandbox image: `/pause`, which waits for signals.
pub const PAUSE: &str = "sextant.local/pause:v1";

/// Every image, with the archive file name `cargo xtask images` writes.
pub const ALL: [(&str, &str); 3] = [
    (BUSYBOX, "busybox.tar"),
    (DEMO, "demo.tar"),
    (PAUSE, "pause.tar"),
];

/// The directory holding the archives and the static binaries.
pub fn dir() -> PathBuf {
    target_dir().join("images")
}

/// The OCI archive of `image`; an error naming `cargo xtask images` if it is missing.
pub fn archive(image: &str) -> Result<PathBuf> {
    let file = ALL
        .iter()
        .find(|(name, _)| *name == image)
        .map(|(_, file)| *file)
        .ok_or_else(|| Error::Missing(format!("unknown test image {image}")))?;
    existing(dir().join(file))
}

/// A static binary built for the images (`sextant-demo`, `sextant-pause`), runnable
/// on the host too.
pub fn binary(name: &str) -> Result<PathBuf> {
    existing(dir().join("bin").join(name))
}

fn existing(path: PathBuf) -> Result<PathBuf> {
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::Missing(format!(
            "{} does not exist: run `cargo xtask images` (cargo xtask test does it first)",
            path.display()
        )))
    }
}
