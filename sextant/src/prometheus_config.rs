//! `sextant prometheus-config`: writes a ready Prometheus configuration for a
//! cluster from a kubeconfig: the shipped `grafana/prometheus/prometheus.yml`
//! with the API server's address filled in, the CA and client certificate files
//! it names, and the shipped alert rules.

use std::path::{Path, PathBuf};

use base64::Engine;
use kube::config::{AuthInfo, Cluster, Kubeconfig};

/// The shipped configuration; `https://SEXTANT_API_SERVER` is replaced.
const PROMETHEUS_YML: &str = include_str!("../../grafana/prometheus/prometheus.yml");
/// The shipped alert rules, written under `rules/`.
const RULES: [(&str, &str); 1] = [(
    "sextant.rules.yml",
    include_str!("../../grafana/rules/sextant.rules.yml"),
)];
const PLACEHOLDER: &str = "https://SEXTANT_API_SERVER";

/// Command line of `sextant prometheus-config`.
#[derive(Debug, clap::Args)]
pub(crate) struct PrometheusConfigArgs {
    /// The kubeconfig to take the API server, its CA and the client certificate
    /// from (its current context).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// The directory to write prometheus.yml, ca.crt, client.crt, client.key and
    /// rules/ into (created if missing).
    #[arg(long)]
    out: PathBuf,
}

/// Errors of `sextant prometheus-config`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The kubeconfig is unreadable or lacks something Prometheus needs.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Writing the output failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Writes the configuration and prints where it went.
pub(crate) fn run(args: &PrometheusConfigArgs) -> Result<(), Error> {
    let bad = |message: String| Error::Kubeconfig {
        path: args.kubeconfig.clone(),
        message,
    };
    let config = Kubeconfig::read_from(&args.kubeconfig).map_err(|e| bad(e.to_string()))?;
    let (cluster, user) = current(&config).map_err(bad)?;
    let base = args.kubeconfig.parent().unwrap_or(Path::new("."));
    let server = cluster
        .server
        .clone()
        .ok_or_else(|| bad("the cluster has no server".into()))?;
    let ca = pem(
        cluster.certificate_authority_data.as_deref(),
        cluster.certificate_authority.as_deref(),
        base,
        "certificate-authority",
    )
    .map_err(bad)?;
    let cert = pem(
        user.client_certificate_data.as_deref(),
        user.client_certificate.as_deref(),
        base,
        "client-certificate",
    )
    .map_err(bad)?;
    let key = pem(
        user.client_key_data
            .as_ref()
            .map(secrecy::ExposeSecret::expose_secret),
        user.client_key.as_deref(),
        base,
        "client-key",
    )
    .map_err(bad)?;
    let out = &args.out;
    let write = |name: &str, body: &[u8], mode: u32| -> Result<(), Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = out.join(name);
        let failed = |source| Error::Write {
            path: path.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(failed)?;
        std::io::Write::write_all(&mut f, body).map_err(failed)
    };
    std::fs::create_dir_all(out.join("rules")).map_err(|source| Error::Write {
        path: out.join("rules"),
        source,
    })?;
    write("ca.crt", &ca, 0o644)?;
    write("client.crt", &cert, 0o644)?;
    write("client.key", &key, 0o600)?;
    for (name, body) in RULES {
        write(&format!("rules/{name}"), body.as_bytes(), 0o644)?;
    }
    write("prometheus.yml", render(&server).as_bytes(), 0o644)?;
    println!(
        "wrote {}; run: prometheus --config.file={}",
        out.join("prometheus.yml").display(),
        out.join("prometheus.yml").display()
    );
    Ok(())
}

/// The shipped configuration pointed at `server` (`https://host:port`).
pub(crate) fn render(server: &str) -> String {
    PROMETHEUS_YML.replace(PLACEHOLDER, server.trim_end_matches('/'))
}

/// The current context's cluster and user.
fn current(config: &Kubeconfig) -> Result<(&Cluster, &AuthInfo), String> {
    let name = config
        .current_context
        .as_deref()
        .ok_or("no current-context")?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| format!("context {name:?} not found"))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| format!("cluster {:?} not found", context.cluster))?;
    let user_name = context.user.as_deref().unwrap_or_default();
    let user = config
        .auth_infos
        .iter()
        .find(|u| u.name == user_name)
        .and_then(|u| u.auth_info.as_ref())
        .ok_or_else(|| format!("user {user_name:?} not found"))?;
    Ok((cluster, user))
}

/// PEM bytes from a `*-data` field (base64) or a file path (relative to the
/// kubeconfig's directory).
fn pem(data: Option<&str>, file: Option<&str>, base: &Path, what: &str) -> Result<Vec<u8>, String> {
    match (data, file) {
        (Some(d), _) => base64::engine::general_purpose::STANDARD
            .decode(d.trim())
            .map_err(|e| format!("{what}-data is not base64: {e}")),
        (None, Some(f)) => {
            std::fs::read(base.join(f)).map_err(|e| format!("reading {what} {f}: {e}"))
        }
        (None, None) => Err(format!(
            "the current context has no {what}: Prometheus needs a client certificate"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_without_a_client_certificate_is_refused_clearly() {
        let dir = std::env::temp_dir().join(format!("sx-promcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster: {server: 'https://10.0.0.1:6443', certificate-authority-data: Y2E=}\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nusers:\n- name: u\n  user: {token: t}\n",
        )
        .unwrap();
        let args = PrometheusConfigArgs {
            kubeconfig: kubeconfig.clone(),
            out: dir.join("out"),
        };
        let err = run(&args).unwrap_err().to_string();
        assert!(err.contains("client-certificate"), "{err}");
        assert!(
            !dir.join("out/prometheus.yml").exists(),
            "nothing half-written"
        );
        std::fs::write(&kubeconfig, "current-context: missing\n").unwrap();
        let err = run(&args).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_discovery_url_points_at_the_server() {
        let yml = render("https://10.0.0.1:6443/");
        assert!(!yml.contains("SEXTANT_API_SERVER"));
        for role in ["node", "pod", "endpoints"] {
            assert!(
                yml.contains(&format!(
                    "https://10.0.0.1:6443/sextant/v1/prometheus/sd/{role}"
                )),
                "{role}"
            );
        }
    }
}
