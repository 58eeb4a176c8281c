//! Kubeconfig handling as kubectl does it: `--kubeconfig`, else every file in
//! `KUBECONFIG` merged (first wins), else `~/.kube/config`; `--context` picks a
//! context, `-n` overrides its namespace; `config` subcommands read and edit
//! the file (kube-rs's model, YAML written with serde-saphyr as kube-rs reads it).

use std::path::PathBuf;

use kube::config::{Context, KubeConfigOptions, Kubeconfig, NamedContext};

use crate::{Error, Result, session::Session};

/// Where the kubeconfig comes from and which context to use.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// `--kubeconfig`.
    pub path: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `-n`/`--namespace`.
    pub namespace: Option<String>,
}

impl Source {
    /// The file `config` subcommands write: `--kubeconfig`, else the first file
    /// of `KUBECONFIG`, else `~/.kube/config`.
    pub fn file(&self) -> Result<PathBuf> {
        if let Some(p) = &self.path {
            return Ok(p.clone());
        }
        if let Some(first) = std::env::var_os("KUBECONFIG")
            .as_ref()
            .and_then(|v| std::env::split_paths(v).find(|p| !p.as_os_str().is_empty()))
        {
            return Ok(first);
        }
        let home = std::env::var_os("HOME")
            .ok_or_else(|| Error::Kubeconfig("neither KUBECONFIG nor HOME is set".into()))?;
        Ok(PathBuf::from(home).join(".kube").join("config"))
    }

    /// The merged kubeconfig.
    pub fn load(&self) -> Result<Kubeconfig> {
        let loaded = match &self.path {
            Some(p) => Kubeconfig::read_from(p),
            None => Kubeconfig::read(),
        };
        loaded.map_err(|e| Error::Kubeconfig(e.to_string()))
    }

    /// A client for the chosen context.
    pub async fn connect(&self) -> Result<Session> {
        let kubeconfig = self.load()?;
        let context = self
            .context
            .clone()
            .or_else(|| kubeconfig.current_context.clone());
        if let Some(name) = &context
            && !kubeconfig.contexts.iter().any(|c| &c.name == name)
        {
            return Err(Error::Kubeconfig(format!(
                "context \"{name}\" does not exist"
            )));
        }
        let options = KubeConfigOptions {
            context,
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        let server = config.cluster_url.to_string();
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config).map_err(|e| Error::Client(e.to_string()))?;
        Ok(Session {
            client,
            namespace,
            server,
        })
    }

    /// Writes `config` to [`Source::file`].
    pub fn save(&self, config: &Kubeconfig) -> Result<()> {
        let path = self.file()?;
        let text = serde_saphyr::to_string(config)
            .map_err(|e| Error::Kubeconfig(format!("encoding the kubeconfig: {e}")))?;
        std::fs::write(&path, text).map_err(|source| Error::Io {
            what: format!("writing {}", path.display()),
            source,
        })
    }
}

/// `config current-context`.
pub fn current_context(source: &Source) -> Result<String> {
    source
        .load()?
        .current_context
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Error::Usage("current-context is not set".into()))
}

/// `config use-context NAME`.
pub fn use_context(source: &Source, name: &str) -> Result<String> {
    let mut config = source.load()?;
    if !config.contexts.iter().any(|c| c.name == name) {
        return Err(Error::Usage(format!(
            "no context exists with the name: \"{name}\""
        )));
    }
    config.current_context = Some(name.to_owned());
    source.save(&config)?;
    Ok(format!("Switched to context \"{name}\"."))
}

/// `config set-context [NAME] [--namespace NS] [--cluster C] [--user U]`: edits
/// the named (default: current) context, creating it when missing.
pub fn set_context(
    source: &Source,
    name: Option<&str>,
    namespace: Option<&str>,
    cluster: Option<&str>,
    user: Option<&str>,
) -> Result<String> {
    let mut config = source.load()?;
    let name = match name {
        Some(n) => n.to_owned(),
        None => config
            .current_context
            .clone()
            .ok_or_else(|| Error::Usage("no context name given and no current context".into()))?,
    };
    let created = !config.contexts.iter().any(|c| c.name == name);
    if created {
        config.contexts.push(NamedContext {
            name: name.clone(),
            context: Some(Context::default()),
            other: Default::default(),
        });
    }
    for c in config.contexts.iter_mut().filter(|c| c.name == name) {
        let ctx = c.context.get_or_insert_with(Context::default);
        if let Some(ns) = namespace {
            ctx.namespace = Some(ns.to_owned());
        }
        if let Some(cl) = cluster {
            ctx.cluster = cl.to_owned();
        }
        if let Some(u) = user {
            ctx.user = Some(u.to_owned());
        }
    }
    source.save(&config)?;
    Ok(if created {
        format!("Context \"{name}\" created.")
    } else {
        format!("Context \"{name}\" modified.")
    })
}

/// `config get-contexts`: kubectl's table, `*` on the current one.
pub fn get_contexts(source: &Source) -> Result<String> {
    let config = source.load()?;
    let current = config.current_context.clone().unwrap_or_default();
    let mut rows = vec![vec![
        "CURRENT".to_owned(),
        "NAME".into(),
        "CLUSTER".into(),
        "AUTHINFO".into(),
        "NAMESPACE".into(),
    ]];
    for c in &config.contexts {
        let ctx = c.context.clone().unwrap_or_default();
        rows.push(vec![
            if c.name == current { "*" } else { "" }.to_owned(),
            c.name.clone(),
            ctx.cluster,
            ctx.user.unwrap_or_default(),
            ctx.namespace.unwrap_or_default(),
        ]);
    }
    Ok(crate::output::columns(&rows))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const CONFIG: &str = r#"
apiVersion: v1
kind: Config
current-context: admin
clusters:
- name: sextant
  cluster: {server: "https://127.0.0.1:6443"}
users:
- name: admin
  user: {token: abc}
contexts:
- name: admin
  context: {cluster: sextant, user: admin}
"#;

    #[test]
    fn contexts_are_listed_switched_and_edited_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, CONFIG).unwrap();
        let source = Source {
            path: Some(path.clone()),
            ..Default::default()
        };
        assert_eq!(current_context(&source).unwrap(), "admin");
        assert_eq!(
            set_context(
                &source,
                Some("dev"),
                Some("team-a"),
                Some("sextant"),
                Some("admin")
            )
            .unwrap(),
            "Context \"dev\" created."
        );
        assert_eq!(
            use_context(&source, "dev").unwrap(),
            "Switched to context \"dev\"."
        );
        assert_eq!(current_context(&source).unwrap(), "dev");
        let table = get_contexts(&source).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("CURRENT   NAME"), "{table}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("*") && l.contains("dev") && l.ends_with("team-a")),
            "{table}"
        );
        assert!(use_context(&source, "nope").is_err());
        // What we wrote, kube-rs reads back, credentials included.
        let back = Kubeconfig::read_from(&path).unwrap();
        assert_eq!(back.auth_infos.len(), 1);
        assert_eq!(back.contexts.len(), 2);
    }
}
