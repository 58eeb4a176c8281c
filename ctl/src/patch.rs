//! `sextantctl patch` (strategic, merge or JSON patch, sent as given) and `edit`
//! (the object as YAML in `$KUBE_EDITOR`/`$EDITOR`, written back with the
//! resourceVersion it was read at, so a change made meanwhile is a conflict
//! rather than lost).

use std::io::Write as _;

use serde_json::Value;

use crate::{Error, Result, apply, discovery, session::Session};

/// `--type` of `patch`.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum PatchType {
    /// Strategic merge patch: lists merged by their keys (built-in types).
    #[default]
    Strategic,
    /// JSON merge patch (RFC 7386).
    Merge,
    /// JSON patch (RFC 6902), a list of operations.
    Json,
}

impl PatchType {
    fn content_type(self) -> &'static str {
        match self {
            Self::Strategic => "application/strategic-merge-patch+json",
            Self::Merge => "application/merge-patch+json",
            Self::Json => "application/json-patch+json",
        }
    }
}

/// The arguments of `patch`.
#[derive(Clone, Debug, clap::Args)]
pub struct PatchArgs {
    /// TYPE NAME or TYPE/NAME.
    #[arg(required = true)]
    pub args: Vec<String>,
    /// The patch, JSON or YAML.
    #[arg(short = 'p', long, required_unless_present = "patch_file")]
    pub patch: Option<String>,
    /// A file holding the patch.
    #[arg(long)]
    pub patch_file: Option<std::path::PathBuf>,
    /// How the patch is read.
    #[arg(long = "type", value_enum, default_value_t)]
    pub patch_type: PatchType,
}

/// An object as compared for "(no change)": without what every write touches.
fn content(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    v
}

/// The object's path and its type's name prefix (`deployment.apps`).
async fn located(session: &Session, args: &[String]) -> Result<Vec<(String, String, String)>> {
    let types = discovery::discover(session).await?;
    apply::targets(args)?
        .into_iter()
        .map(|(t, name)| {
            let rt = discovery::resolve(&types, &t)?;
            Ok((
                format!("{}/{name}", rt.path(Some(&session.namespace))),
                rt.name_prefix(),
                name,
            ))
        })
        .collect()
}

/// Runs `patch`: `<type>/<name> patched`, or `patched (no change)`.
pub async fn patch(session: &Session, args: &PatchArgs) -> Result<String> {
    let text = match (&args.patch, &args.patch_file) {
        (Some(p), _) => p.clone(),
        (None, Some(file)) => std::fs::read_to_string(file).map_err(|source| Error::Io {
            what: format!("reading {}", file.display()),
            source,
        })?,
        (None, None) => {
            return Err(Error::Usage(
                "must specify --patch or --patch-file containing the contents of the patch".into(),
            ));
        }
    };
    let body: Value = serde_saphyr::from_str(&text)
        .map_err(|e| Error::Usage(format!("unable to parse {text:?}: {e}")))?;
    let mut out = String::new();
    for (path, prefix, name) in located(session, &args.args).await? {
        let before: Value = session.get(&path, None).await?;
        let after = session
            .write("PATCH", &path, args.patch_type.content_type(), &body)
            .await?;
        let note = if content(before) == content(after) {
            " (no change)"
        } else {
            ""
        };
        out.push_str(&format!("{prefix}/{name} patched{note}\n"));
    }
    Ok(out)
}

/// kubectl's header on the file being edited.
const EDIT_HEADER: &str = "# Please edit the object below. Lines beginning with a '#' will be ignored,\n# and an empty file will abort the edit. If an error occurs while saving this file will be\n# reopened with the relevant failures.\n#\n";

/// The editor command: `KUBE_EDITOR`, then `EDITOR`, then `vi`.
fn editor() -> String {
    std::env::var("KUBE_EDITOR")
        .or_else(|_| std::env::var("EDITOR"))
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".into())
}

/// Runs `edit TYPE NAME`: `<type>/<name> edited`, or kubectl's "Edit
/// cancelled" when nothing changed.
pub async fn edit(
    session: &Session,
    args: &[String],
    err: &mut (dyn std::io::Write + Send),
) -> Result<String> {
    let mut out = String::new();
    for (path, prefix, name) in located(session, args).await? {
        let mut live: Value = session.get(&path, None).await?;
        if let Some(meta) = live.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
        let yaml = serde_saphyr::to_string(&live)
            .map_err(|e| Error::Client(format!("writing YAML: {e}")))?;
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| Error::Io { what, source }
        };
        let mut file = tempfile::Builder::new()
            .prefix("sextantctl-edit-")
            .suffix(".yaml")
            .tempfile()
            .map_err(io("creating the file to edit"))?;
        file.write_all(format!("{EDIT_HEADER}{yaml}").as_bytes())
            .and_then(|()| file.flush())
            .map_err(io("writing the file to edit"))?;
        // The editor owns the terminal until it exits.
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{} \"$1\"", editor()))
            .arg("sh")
            .arg(file.path())
            .status()
            .await
            .map_err(io("starting the editor"))?;
        if !status.success() {
            return Err(Error::Usage(format!(
                "there was a problem with the editor {:?}",
                editor()
            )));
        }
        let edited = std::fs::read_to_string(file.path()).map_err(io("reading the edited file"))?;
        let kept: String = edited
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        if kept.trim().is_empty() {
            return Err(Error::Usage("Edit cancelled, saved file was empty.".into()));
        }
        let object: Value = match serde_saphyr::from_str(&kept) {
            Ok(v) => v,
            Err(e) => {
                let (_, kept_at) = file
                    .keep()
                    .map_err(|e| io("keeping the edited file")(e.error))?;
                return Err(Error::Usage(format!(
                    "the edited file is not valid YAML: {e}\nA copy of your changes has been stored to \"{}\"",
                    kept_at.display()
                )));
            }
        };
        if object == live {
            // kubectl says so on stderr.
            let _ = writeln!(err, "Edit cancelled, no changes made.");
            continue;
        }
        match session
            .write("PUT", &path, "application/json", &object)
            .await
        {
            Ok(_) => out.push_str(&format!("{prefix}/{name} edited\n")),
            Err(e) => {
                let (_, kept_at) = file
                    .keep()
                    .map_err(|e| io("keeping the edited file")(e.error))?;
                return Err(Error::Usage(format!(
                    "{e}\nA copy of your changes has been stored to \"{}\"",
                    kept_at.display()
                )));
            }
        }
    }
    Ok(out)
}
