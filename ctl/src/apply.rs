//! Writing objects as kubectl does: `apply -f` (client-side apply: the last
//! applied configuration in the `kubectl.kubernetes.io/last-applied-configuration`
//! annotation, a three-way patch from it, the file and the live object:
//! strategic for built-in types, JSON merge for custom resources), `create
//! -f`, `delete`, `label`, `annotate` and `scale`, each
//! answering with kubectl's line (`configmap/one created`, `... configured`,
//! `... unchanged`, `configmap "one" deleted`, `... labeled`, `... scaled`).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use sextant_apimachinery::strategic::{Lists, three_way};

use crate::{
    Error, Result,
    discovery::{self, ResourceType},
    output::Printed,
    session::Session,
};

/// kubectl's annotation holding what was last applied.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `-f` sources: files, directories (`.yaml`, `.yml`, `.json`; `-R` descends)
/// or `-` for standard input.
#[derive(Clone, Debug, clap::Args)]
pub struct Files {
    /// Manifest files or directories, or - for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    /// Descend into directories.
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

fn manifest_files(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(format!("reading {}", dir.display())))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if recursive {
                manifest_files(&p, recursive, out)?;
            }
        } else if p
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            out.push(p);
        }
    }
    Ok(())
}

/// An object from a manifest and where it came from (`STDIN` or the path, as
/// kubectl names it in errors).
#[derive(Clone, Debug)]
pub struct Manifest {
    /// Where it was read.
    pub source: String,
    /// The object.
    pub object: Value,
}

/// Every object the sources hold, in order; `List`s are opened up.
pub fn read_objects(files: &Files, stdin: &mut dyn std::io::Read) -> Result<Vec<Manifest>> {
    let mut texts = Vec::new();
    for f in &files.files {
        if f == "-" {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(io("reading standard input".into()))?;
            texts.push(("STDIN".to_owned(), text));
            continue;
        }
        let path = Path::new(f);
        let mut paths = Vec::new();
        if path.is_dir() {
            manifest_files(path, files.recursive, &mut paths)?;
        } else {
            paths.push(path.to_owned());
        }
        for p in paths {
            let text = std::fs::read_to_string(&p).map_err(io(format!(
                "the path \"{}\" does not exist or cannot be read",
                p.display()
            )))?;
            texts.push((p.display().to_string(), text));
        }
    }
    let mut objects = Vec::new();
    for (from, text) in texts {
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| Error::Usage(format!("error parsing {from}: {e}")))?;
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let items = if doc["kind"] == "List" {
                doc["items"].as_array().cloned().unwrap_or_default()
            } else {
                vec![doc]
            };
            objects.extend(items.into_iter().map(|object| Manifest {
                source: from.clone(),
                object,
            }));
        }
    }
    if objects.is_empty() {
        return Err(Error::Usage("no objects passed to apply".into()));
    }
    Ok(objects)
}

/// The resource type of `obj` (its apiVersion's group and version, its kind)
/// and the path of its collection.
fn type_of(
    types: &[ResourceType],
    obj: &Value,
    namespace: &str,
) -> Result<(ResourceType, String, String)> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if kind.is_empty() || api_version.is_empty() {
        return Err(Error::Usage(
            "error validating data: apiVersion and kind must be set".into(),
        ));
    }
    if name.is_empty() {
        return Err(Error::Usage(format!(
            "error validating data: {kind} has no metadata.name"
        )));
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let rt = types
        .iter()
        .find(|t| t.group == group && t.kind == kind)
        .ok_or_else(|| {
            Error::Usage(format!(
                "resource mapping not found for name: \"{name}\" namespace: \"\" from \"\": no matches for kind \"{kind}\" in version \"{api_version}\""
            ))
        })?;
    let mut rt = rt.clone();
    rt.version = version.to_owned();
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or(namespace);
    let path = rt.path(Some(ns));
    Ok((rt, path, name.to_owned()))
}

/// Groups whose types kubectl knows: their objects get a strategic merge
/// patch (lists merged by key); other groups' (custom resources) a JSON merge patch.
const BUILT_IN_GROUPS: &[&str] = &[
    "",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "apps",
    "autoscaling",
    "batch",
    "certificates.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "networking.k8s.io",
    "node.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
];

/// kubectl's wording for a failed write of an object read from `source`.
fn when(e: Error, doing: &str, source: &str) -> Error {
    match e {
        // An Invalid with details still prints as "The <Kind> ... is invalid".
        Error::Server {
            reason,
            message,
            code,
            details,
        } => Error::Server {
            reason,
            message: format!("error when {doing} \"{source}\": {message}"),
            code,
            details,
        },
        other => other,
    }
}

/// `obj` in the namespace it will be written to, as kubectl sends it.
fn placed(rt: &ResourceType, obj: &Value, namespace: &str) -> Value {
    let mut obj = obj.clone();
    if rt.namespaced && obj["metadata"]["namespace"].is_null() {
        obj["metadata"]["namespace"] = Value::String(namespace.to_owned());
    }
    obj
}

/// `apply -f`: one line per object; a failed object does not stop the rest.
pub async fn apply(session: &Session, objects: &[Manifest]) -> Result<Printed> {
    let types = discovery::discover(session).await?;
    let mut printed = Printed::default();
    for manifest in objects {
        match apply_one(session, &types, manifest).await {
            Ok(line) => printed.stdout.push_str(&line),
            Err(e) => printed.errors.push(e),
        }
    }
    Ok(printed)
}

/// Applies one object: `<type>/<name> created|configured|unchanged`.
async fn apply_one(
    session: &Session,
    types: &[ResourceType],
    Manifest { source, object }: &Manifest,
) -> Result<String> {
    let (rt, collection, name) = type_of(types, object, &session.namespace)?;
    let mut applied = placed(&rt, object, &session.namespace);
    // kubectl records the object with its annotations minus its own (an
    // empty map when there are none).
    if let Some(meta) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = annotations.as_object_mut() {
            a.remove(LAST_APPLIED);
        }
    }
    let last = applied.to_string();
    let path = format!("{collection}/{name}");
    let verb = match session.get_opt(&path).await? {
        None => {
            let mut body = applied.clone();
            body["metadata"]["annotations"][LAST_APPLIED] = Value::String(last);
            session
                .write("POST", &collection, "application/json", &body)
                .await
                .map_err(|e| when(e, "creating", source))?;
            "created"
        }
        Some(live) => {
            let original = live["metadata"]["annotations"][LAST_APPLIED]
                .as_str()
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or(Value::Null);
            let (lists, content_type) = if BUILT_IN_GROUPS.contains(&rt.group.as_str()) {
                (Lists::Strategic, "application/strategic-merge-patch+json")
            } else {
                (Lists::Replace, "application/merge-patch+json")
            };
            let mut patch = three_way(&original, &applied, &live, lists);
            if patch.is_empty() {
                "unchanged"
            } else {
                let meta = patch.entry("metadata").or_insert_with(|| json!({}));
                meta["annotations"][LAST_APPLIED] = Value::String(last);
                let body = Value::Object(patch);
                session
                    .write("PATCH", &path, content_type, &body)
                    .await
                    .map_err(|e| when(e, "applying patch to", source))?;
                "configured"
            }
        }
    };
    Ok(format!("{}/{name} {verb}\n", rt.name_prefix()))
}

/// `create -f`: one line per object; an existing one is the server's 409, and
/// the others are still created.
pub async fn create(session: &Session, objects: &[Manifest]) -> Result<Printed> {
    let types = discovery::discover(session).await?;
    let mut printed = Printed::default();
    for Manifest { source, object } in objects {
        let created = async {
            let (rt, collection, name) = type_of(&types, object, &session.namespace)?;
            let body = placed(&rt, object, &session.namespace);
            session
                .write("POST", &collection, "application/json", &body)
                .await
                .map_err(|e| when(e, "creating", source))?;
            Ok::<_, Error>(format!("{}/{name} created\n", rt.name_prefix()))
        };
        match created.await {
            Ok(line) => printed.stdout.push_str(&line),
            Err(e) => printed.errors.push(e),
        }
    }
    Ok(printed)
}

/// `TYPE NAME...` or `TYPE/NAME...`: the objects a command acts on.
pub fn targets(args: &[String]) -> Result<Vec<(String, String)>> {
    let Some(first) = args.first() else {
        return Err(Error::Usage(
            "You must provide one or more resources by argument".into(),
        ));
    };
    if first.contains('/') {
        args.iter()
            .map(|a| {
                a.split_once('/')
                    .map(|(t, n)| (t.to_owned(), n.to_owned()))
                    .ok_or_else(|| {
                        Error::Usage(format!(
                            "there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'sextantctl get resource/<resource_name>' instead of 'sextantctl get resource resource/<resource_name>'): {a}"
                        ))
                    })
            })
            .collect()
    } else if args.len() < 2 {
        Err(Error::Usage(format!(
            "resource(s) were provided, but no name was specified for {first}"
        )))
    } else {
        Ok(args[1..]
            .iter()
            .map(|n| (first.clone(), n.clone()))
            .collect())
    }
}

/// `delete TYPE NAME...` / `delete -f`: `<type> "<name>" deleted` each; a
/// missing object is reported after the others are deleted.
pub async fn delete(session: &Session, targets: &[(String, String)]) -> Result<Printed> {
    let types = discovery::discover(session).await?;
    let mut printed = Printed::default();
    for (t, name) in targets {
        let rt = discovery::resolve(&types, t)?;
        let path = format!("{}/{name}", rt.path(Some(&session.namespace)));
        let req = http::Request::delete(&path)
            .body(Vec::new())
            .map_err(|e| Error::Client(e.to_string()))?;
        match session.send::<Value>(req).await {
            Ok(_) => printed
                .stdout
                .push_str(&format!("{} \"{name}\" deleted\n", rt.name_prefix())),
            Err(e) => printed.errors.push(e),
        }
    }
    Ok(printed)
}

/// Which metadata map `label`/`annotate` edit.
#[derive(Clone, Copy, Debug)]
pub enum MetaMap {
    /// `metadata.labels`.
    Labels,
    /// `metadata.annotations`.
    Annotations,
}

/// `label` / `annotate TYPE NAME k=v k2- [--overwrite]`.
pub async fn set_meta(
    session: &Session,
    which: MetaMap,
    args: &[String],
    overwrite: bool,
) -> Result<String> {
    let (field, verb) = match which {
        MetaMap::Labels => ("labels", "labeled"),
        MetaMap::Annotations => ("annotations", "annotated"),
    };
    let (objs, changes): (Vec<String>, Vec<String>) = args
        .iter()
        .cloned()
        .partition(|a| !a.contains('=') && !a.ends_with('-'));
    if changes.is_empty() {
        return Err(Error::Usage(format!(
            "at least one {field} update is required"
        )));
    }
    let types = discovery::discover(session).await?;
    let mut out = String::new();
    for (t, name) in targets(&objs)? {
        let rt = discovery::resolve(&types, &t)?;
        let path = format!("{}/{name}", rt.path(Some(&session.namespace)));
        let live = session.get_opt(&path).await?.ok_or_else(|| Error::Server {
            reason: "NotFound".into(),
            message: format!("{} \"{name}\" not found", rt.plural),
            code: 404,
            details: None,
        })?;
        let mut map = Map::new();
        for c in &changes {
            if let Some((k, v)) = c.split_once('=') {
                let have = live["metadata"][field][k].as_str();
                if !overwrite && have.is_some_and(|h| h != v) {
                    return Err(Error::Usage(format!(
                        "'{k}' already has a value ({}), and --overwrite is false",
                        have.unwrap_or_default()
                    )));
                }
                map.insert(k.to_owned(), Value::String(v.to_owned()));
            } else if let Some(k) = c.strip_suffix('-') {
                map.insert(k.to_owned(), Value::Null);
            }
        }
        // kubectl says "unlabeled" when labels were only removed.
        let verb = match which {
            MetaMap::Labels if map.values().all(Value::is_null) => "unlabeled",
            _ => verb,
        };
        let body = json!({"metadata": {field: map}});
        session
            .write("PATCH", &path, "application/merge-patch+json", &body)
            .await?;
        out.push_str(&format!("{}/{name} {verb}\n", rt.name_prefix()));
    }
    Ok(out)
}

/// `scale TYPE NAME --replicas=N`: the `scale` subresource.
pub async fn scale(session: &Session, args: &[String], replicas: i32) -> Result<String> {
    let types = discovery::discover(session).await?;
    let mut out = String::new();
    for (t, name) in targets(args)? {
        let rt = discovery::resolve(&types, &t)?;
        let path = format!("{}/{name}/scale", rt.path(Some(&session.namespace)));
        let body = json!({"spec": {"replicas": replicas}});
        session
            .write("PATCH", &path, "application/merge-patch+json", &body)
            .await?;
        out.push_str(&format!("{}/{name} scaled\n", rt.name_prefix()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn manifests_from_files_directories_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("sub/c.json"),
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        let names = |recursive: bool| {
            let files = Files {
                files: vec![dir.path().display().to_string()],
                recursive,
            };
            read_objects(&files, &mut std::io::empty())
                .unwrap()
                .iter()
                .map(|m| m.object["metadata"]["name"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(false), ["a", "b"]);
        assert_eq!(names(true), ["a", "b", "c"]);
        let stdin = Files {
            files: vec!["-".into()],
            recursive: false,
        };
        let mut input = "kind: ConfigMap\napiVersion: v1\nmetadata: {name: s}\n".as_bytes();
        assert_eq!(read_objects(&stdin, &mut input).unwrap().len(), 1);
        assert!(read_objects(&stdin, &mut "".as_bytes()).is_err());
    }

    #[test]
    fn targets_in_both_forms() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            targets(&s(&["cm", "a", "b"])).unwrap(),
            [("cm".into(), "a".into()), ("cm".into(), "b".into())]
        );
        assert_eq!(
            targets(&s(&["deploy/web"])).unwrap(),
            [("deploy".to_owned(), "web".to_owned())]
        );
        assert!(targets(&s(&["cm"])).is_err());
    }
}
