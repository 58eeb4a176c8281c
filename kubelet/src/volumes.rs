//! Pod volumes on the node: each volume becomes a host directory under
//! `<data-dir>/volumes/<pod-uid>/<volume>` that containers bind-mount.
//!
//! - `emptyDir`: a directory (a tmpfs with `medium: Memory`), gone with the pod.
//! - `hostPath`: the host's path, created first for `DirectoryOrCreate`.
//! - `configMap`, `secret`, `downwardAPI`, `projected`: files written the way
//!   upstream's AtomicWriter does — into a timestamped directory that a `..data`
//!   symlink is swapped to in one rename, with one symlink per top-level file — so
//!   a container never sees a half-written update. They are rewritten when their
//!   objects change (checked on every refresh).
//! - `persistentVolumeClaim`: the bound PersistentVolume's `hostPath` or `local` path.

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::{PermissionsExt, symlink},
    path::{Component, Path, PathBuf},
};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};
use kube::{Api, Client};

use crate::{Error, container};

/// Files of a configMap/secret/downwardAPI/projected volume: relative path →
/// (content, mode).
type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// Upstream's default mode for projected files.
const DEFAULT_MODE: i32 = 0o644;

/// Where a pod's volumes live on the host.
pub fn pod_dir(data_dir: &Path, uid: &str) -> PathBuf {
    data_dir.join("volumes").join(uid)
}

/// Makes every volume of `pod` ready and returns volume name → host path; `Err`
/// carries the upstream-style message of the first volume that cannot be set up
/// (a missing ConfigMap, say), which the pod shows as waiting containers.
pub async fn prepare(
    client: &Client,
    data_dir: &Path,
    pod: &Pod,
) -> Result<Result<HashMap<String, PathBuf>, String>, Error> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let base = pod_dir(data_dir, &uid);
    let mut paths = HashMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = base.join(&v.name);
        let path = match prepare_one(client, &ns, pod, v, &dir).await? {
            Ok(p) => p,
            Err(message) => {
                return Ok(Err(format!(
                    "MountVolume.SetUp failed for volume \"{}\" : {message}",
                    v.name
                )));
            }
        };
        paths.insert(v.name.clone(), path);
    }
    Ok(Ok(paths))
}

async fn prepare_one(
    client: &Client,
    ns: &str,
    pod: &Pod,
    v: &Volume,
    dir: &Path,
) -> Result<Result<PathBuf, String>, Error> {
    let io = |e: std::io::Error| Error::Internal(format!("volume {}: {e}", v.name));
    if let Some(e) = &v.empty_dir {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            if e.medium.as_deref() == Some("Memory") {
                let size = e
                    .size_limit
                    .as_ref()
                    .and_then(|q| crate::quantity::bytes(&q.0))
                    .map(|b| format!(",size={b}"))
                    .unwrap_or_default();
                nix::mount::mount(
                    Some("tmpfs"),
                    dir,
                    Some("tmpfs"),
                    nix::mount::MsFlags::empty(),
                    Some(format!("mode=0777{size}").as_str()),
                )
                .map_err(|e| Error::Internal(format!("mounting a tmpfs for {}: {e}", v.name)))?;
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).map_err(io)?;
        }
        return Ok(Ok(dir.to_owned()));
    }
    if let Some(h) = &v.host_path {
        let path = PathBuf::from(&h.path);
        match h.type_.as_deref().unwrap_or("") {
            "DirectoryOrCreate" => std::fs::create_dir_all(&path).map_err(io)?,
            "Directory" if !path.is_dir() => {
                return Ok(Err(format!(
                    "hostPath type check failed: {} is not a directory",
                    h.path
                )));
            }
            "File" if !path.is_file() => {
                return Ok(Err(format!(
                    "hostPath type check failed: {} is not a file",
                    h.path
                )));
            }
            _ => {}
        }
        return Ok(Ok(path));
    }
    if let Some(claim) = &v.persistent_volume_claim {
        let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
            .get_opt(&claim.claim_name)
            .await?;
        let Some(volume) = pvc.and_then(|c| c.spec).and_then(|s| s.volume_name) else {
            return Ok(Err(format!(
                "persistentvolumeclaim \"{}\" is not bound",
                claim.claim_name
            )));
        };
        let pv = Api::<PersistentVolume>::all(client.clone())
            .get_opt(&volume)
            .await?;
        let spec = pv.and_then(|p| p.spec);
        let path = spec
            .as_ref()
            .and_then(|s| s.host_path.as_ref().map(|h| h.path.clone()))
            .or_else(|| {
                spec.as_ref()
                    .and_then(|s| s.local.as_ref().map(|l| l.path.clone()))
            });
        return Ok(match path {
            Some(p) => {
                std::fs::create_dir_all(&p).map_err(io)?;
                Ok(PathBuf::from(p))
            }
            None => Err(format!(
                "persistentvolume \"{volume}\" has no hostPath or local path"
            )),
        });
    }
    let files = match files_of(client, ns, pod, v).await? {
        Ok(Some(files)) => files,
        Ok(None) => return Ok(Err("unsupported volume type".into())),
        Err(message) => return Ok(Err(message)),
    };
    write_atomic(dir, &files).map_err(io)?;
    Ok(Ok(dir.to_owned()))
}

/// The files a configMap, secret, downwardAPI or projected volume holds now.
async fn files_of(
    client: &Client,
    ns: &str,
    pod: &Pod,
    v: &Volume,
) -> Result<Result<Option<Files>, String>, Error> {
    let mut files = Files::new();
    if let Some(c) = &v.config_map {
        let mode = c.default_mode.unwrap_or(DEFAULT_MODE);
        let r = config_map_files(
            client,
            ns,
            &c.name,
            c.items.as_deref(),
            mode,
            c.optional,
            &mut files,
        )
        .await?;
        return Ok(r.map(|()| Some(files)));
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let mode = s.default_mode.unwrap_or(DEFAULT_MODE);
        let r = secret_files(
            client,
            ns,
            &name,
            s.items.as_deref(),
            mode,
            s.optional,
            &mut files,
        )
        .await?;
        return Ok(r.map(|()| Some(files)));
    }
    if let Some(d) = &v.downward_api {
        let mode = d.default_mode.unwrap_or(DEFAULT_MODE);
        return Ok(downward_files(
            pod,
            d.items.as_deref().unwrap_or_default(),
            mode,
            &mut files,
        )
        .map(|()| Some(files)));
    }
    if let Some(p) = &v.projected {
        let mode = p.default_mode.unwrap_or(DEFAULT_MODE);
        for source in p.sources.iter().flatten() {
            let r = if let Some(c) = &source.config_map {
                config_map_files(
                    client,
                    ns,
                    &c.name,
                    c.items.as_deref(),
                    mode,
                    c.optional,
                    &mut files,
                )
                .await?
            } else if let Some(s) = &source.secret {
                secret_files(
                    client,
                    ns,
                    &s.name,
                    s.items.as_deref(),
                    mode,
                    s.optional,
                    &mut files,
                )
                .await?
            } else if let Some(d) = &source.downward_api {
                downward_files(
                    pod,
                    d.items.as_deref().unwrap_or_default(),
                    mode,
                    &mut files,
                )
            } else {
                Err("projected sources other than configMap, secret and downwardAPI are not supported yet".into())
            };
            if let Err(m) = r {
                return Ok(Err(m));
            }
        }
        return Ok(Ok(Some(files)));
    }
    Ok(Ok(None))
}

/// Adds a key → file mapping set: every key, or only `items` (with their paths and modes).
fn add_keys(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: i32,
    what: &str,
    files: &mut Files,
) -> Result<(), String> {
    let mode = u32::try_from(mode).unwrap_or(0o644);
    match items {
        None => files.extend(data.into_iter().map(|(k, v)| (k, (v, mode)))),
        Some(items) => {
            for i in items {
                let Some(v) = data.get(&i.key) else {
                    return Err(format!(
                        "configmap references non-existent config key: {} in {what}",
                        i.key
                    ));
                };
                let m = i.mode.and_then(|m| u32::try_from(m).ok()).unwrap_or(mode);
                files.insert(i.path.clone(), (v.clone(), m));
            }
        }
    }
    Ok(())
}

async fn config_map_files(
    client: &Client,
    ns: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    mode: i32,
    optional: Option<bool>,
    files: &mut Files,
) -> Result<Result<(), String>, Error> {
    let Some(cm) = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
    else {
        return Ok(if optional == Some(true) {
            Ok(())
        } else {
            Err(format!("configmap \"{name}\" not found"))
        });
    };
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    data.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    Ok(add_keys(data, items, mode, name, files))
}

async fn secret_files(
    client: &Client,
    ns: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    mode: i32,
    optional: Option<bool>,
    files: &mut Files,
) -> Result<Result<(), String>, Error> {
    let Some(s) = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
    else {
        return Ok(if optional == Some(true) {
            Ok(())
        } else {
            Err(format!("secret \"{name}\" not found"))
        });
    };
    let data = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    Ok(add_keys(data, items, mode, name, files))
}

fn downward_files(
    pod: &Pod,
    items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
    mode: i32,
    files: &mut Files,
) -> Result<(), String> {
    for i in items {
        let value = if let Some(f) = &i.field_ref {
            match f.field_path.as_str() {
                // Whole maps, one `key="value"` per line, as upstream writes them.
                "metadata.labels" | "metadata.annotations" => {
                    let map = if f.field_path == "metadata.labels" {
                        &pod.metadata.labels
                    } else {
                        &pod.metadata.annotations
                    };
                    map.iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}={v:?}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                }
                path => container::field(pod, path)
                    .ok_or_else(|| format!("unsupported fieldPath {path}"))?,
            }
        } else {
            String::new()
        };
        let m = i
            .mode
            .or(Some(mode))
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(0o644);
        files.insert(i.path.clone(), (value.into_bytes(), m));
    }
    Ok(())
}

/// Writes `files` into `dir` atomically (upstream's AtomicWriter layout); does
/// nothing when the content is unchanged.
pub fn write_atomic(dir: &Path, files: &Files) -> std::io::Result<()> {
    for path in files.keys() {
        let p = Path::new(path);
        if p.is_absolute()
            || p.components().any(|c| matches!(c, Component::ParentDir))
            || path.starts_with("..")
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid file path {path:?}"),
            ));
        }
    }
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    let current = std::fs::read_link(&data_link).ok().map(|t| dir.join(t));
    if let Some(cur) = &current
        && files
            .iter()
            .all(|(p, (content, _))| std::fs::read(cur.join(p)).is_ok_and(|c| &c == content))
        && count_files(cur) == files.len()
    {
        return Ok(());
    }
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let new = dir.join(&stamp);
    std::fs::create_dir(&new)?;
    for (path, (content, mode)) in files {
        let target = new.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, content)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &data_link)?;
    // One symlink per top-level entry, through ..data; stale ones removed.
    let tops: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_owned))
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(top), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = current {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count_files(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The CRI mounts of container `c`, from its `volumeMounts`.
pub fn mounts(
    c: &Container,
    volumes: &HashMap<String, PathBuf>,
) -> Result<Vec<cri::Mount>, String> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(host) = volumes.get(&m.name) else {
            return Err(format!("volume \"{}\" not found", m.name));
        };
        let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                if Path::new(sub)
                    .components()
                    .any(|c| !matches!(c, Component::Normal(_)))
                {
                    return Err(format!("invalid subPath {sub:?}"));
                }
                let p = host.join(sub);
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(|e| e.to_string())?;
                }
                p
            }
            None => host.clone(),
        };
        out.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: m.read_only.unwrap_or(false),
            ..Default::default()
        });
    }
    Ok(out)
}

/// Removes a pod's volume directories (unmounting memory-backed ones first).
pub fn remove(data_dir: &Path, uid: &str) {
    let base = pod_dir(data_dir, uid);
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            // Not a mount point (EINVAL) is the common case.
            let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&base)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %base.display(), error = %e, "removing pod volumes failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> Files {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), (v.as_bytes().to_vec(), 0o644)))
            .collect()
    }

    #[test]
    fn atomic_writes_swap_the_whole_set() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("cm");
        write_atomic(&d, &files(&[("color", "blue"), ("sub/x", "1")])).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("color")).unwrap(), "blue");
        assert_eq!(std::fs::read_to_string(d.join("sub/x")).unwrap(), "1");
        let first = std::fs::read_link(d.join("..data")).unwrap();
        // Unchanged content: nothing rewritten.
        write_atomic(&d, &files(&[("color", "blue"), ("sub/x", "1")])).unwrap();
        assert_eq!(std::fs::read_link(d.join("..data")).unwrap(), first);
        // A change swaps ..data; a removed key disappears; the old dir is gone.
        write_atomic(&d, &files(&[("color", "green")])).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("color")).unwrap(), "green");
        assert!(!d.join("sub").exists());
        assert!(!d.join(&first).exists());
        assert!(write_atomic(&d, &files(&[("../escape", "x")])).is_err());
    }

    #[test]
    fn mounts_resolve_volumes_and_sub_paths() {
        let dir = tempfile::tempdir().unwrap();
        let volumes: HashMap<String, PathBuf> = [("data".to_owned(), dir.path().to_owned())].into();
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "volumeMounts": [{"name": "data", "mountPath": "/data", "subPath": "a", "readOnly": true}],
        }))
        .unwrap();
        let m = mounts(&c, &volumes).unwrap();
        assert_eq!(m[0].container_path, "/data");
        assert!(m[0].readonly && m[0].host_path.ends_with("/a"));
        let bad: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "volumeMounts": [{"name": "data", "mountPath": "/d", "subPath": "../x"}],
        }))
        .unwrap();
        assert!(mounts(&bad, &volumes).is_err());
    }
}
