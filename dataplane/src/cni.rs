//! `sextant-cni`: the CNI plugin (spec 1.0: ADD, DEL, CHECK, VERSION) containerd
//! runs for every pod sandbox. It holds no state and does no networking itself:
//! it forwards the request to the node's dataplane agent over the unix socket named
//! in its network configuration, and prints the CNI result or error.
//!
//! The `sextant` binary becomes this plugin when invoked under the name
//! `sextant-cni` (the agent installs that link in the CNI bin dir).

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::api::{
    AddRequest, Attachment, CheckRequest, DelRequest, endpoints_client::EndpointsClient,
};

/// The CNI spec versions this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The plugin's network configuration, as written by the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// CNI spec version of the configuration.
    pub cni_version: String,
    /// Network name.
    pub name: String,
    /// Always `sextant-cni`.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The agent's socket.
    pub socket: PathBuf,
}

/// The network configuration list the agent writes for containerd.
pub fn conflist(socket: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "sextant",
        "plugins": [{"type": "sextant-cni", "socket": socket}],
    })
}

/// A CNI error: well-known codes from the spec, plugin codes from 100.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The spec's error code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation.
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: &str, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.to_owned(),
            details: details.into(),
        }
    }

    fn to_json(&self, version: &str) -> Value {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

/// Incompatible CNI version (spec code 1).
const INCOMPATIBLE_VERSION: u32 = 1;
/// Invalid necessary environment variables (spec code 4).
const INVALID_ENV: u32 = 4;
/// Failed to decode content (spec code 6).
const DECODE: u32 = 6;
/// Try again later (spec code 11).
const TRY_AGAIN_LATER: u32 = 11;
/// The agent could not be reached.
const AGENT_UNREACHABLE: u32 = 100;
/// The agent refused or failed the request.
const AGENT_FAILED: u32 = 101;

/// What one invocation was asked, from its environment and stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// CNI_COMMAND.
    pub command: String,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_NETNS.
    pub netns: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_ARGS, split into pairs.
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// Reads the invocation from environment variables through `var`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command = var("CNI_COMMAND")
            .ok_or_else(|| CniError::new(INVALID_ENV, "CNI_COMMAND is not set", ""))?;
        let get = |name: &str| var(name).unwrap_or_default();
        let args = get("CNI_ARGS")
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let this = Self {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args,
        };
        let required: &[(&str, &str)] = match this.command.as_str() {
            "ADD" | "CHECK" => &[
                ("CNI_CONTAINERID", &this.container_id),
                ("CNI_NETNS", &this.netns),
                ("CNI_IFNAME", &this.ifname),
            ],
            "DEL" => &[
                ("CNI_CONTAINERID", &this.container_id),
                ("CNI_IFNAME", &this.ifname),
            ],
            _ => &[],
        };
        if let Some((name, _)) = required.iter().find(|(_, v)| v.is_empty()) {
            return Err(CniError::new(
                INVALID_ENV,
                &format!("{name} is not set"),
                format!("{} needs it", this.command),
            ));
        }
        Ok(this)
    }

    fn attachment(&self) -> Attachment {
        let arg = |k: &str| self.args.get(k).cloned().unwrap_or_default();
        Attachment {
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            pod_namespace: arg("K8S_POD_NAMESPACE"),
            pod_name: arg("K8S_POD_NAME"),
        }
    }
}

/// Runs the plugin on this process's environment and stdin; returns the exit code.
pub fn main() -> i32 {
    let mut stdin = String::new();
    let read = std::io::stdin().read_to_string(&mut stdin);
    let (version, outcome) = match read {
        Ok(_) => run(|k| std::env::var(k).ok(), &stdin),
        Err(e) => (
            "1.0.0".to_owned(),
            Err(CniError::new(DECODE, "reading stdin", e.to_string())),
        ),
    };
    match outcome {
        Ok(Some(result)) => {
            println!("{result}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            println!("{}", e.to_json(&version));
            1
        }
    }
}

/// Handles one invocation: the configuration's CNI version and the result to print
/// (`None` for commands that print nothing).
pub fn run(
    var: impl Fn(&str) -> Option<String>,
    stdin: &str,
) -> (String, Result<Option<Value>, CniError>) {
    let conf_version = serde_json::from_str::<Value>(stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "1.0.0".to_owned());
    let outcome = (|| {
        let inv = Invocation::from_env(&var)?;
        if inv.command == "VERSION" {
            return Ok(Some(json!({
                "cniVersion": "1.0.0",
                "supportedVersions": SUPPORTED_VERSIONS,
            })));
        }
        let conf: NetConf = serde_json::from_str(stdin).map_err(|e| {
            CniError::new(DECODE, "decoding the network configuration", e.to_string())
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!(
                    "{} is not one of {}",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                CniError::new(AGENT_FAILED, "starting the plugin's runtime", e.to_string())
            })?;
        rt.block_on(call_agent(&inv, &conf))
    })();
    (conf_version, outcome)
}

async fn connect(socket: &Path) -> Result<EndpointsClient<Channel>, CniError> {
    let channel = crate::agent::connect(socket, Duration::from_secs(120))
        .await
        .map_err(|e| {
            CniError::new(
                AGENT_UNREACHABLE,
                "the node's dataplane agent is not answering",
                format!("{}: {e}", socket.display()),
            )
        })?;
    Ok(EndpointsClient::new(channel))
}

fn from_status(s: tonic::Status) -> CniError {
    let code = match s.code() {
        tonic::Code::Unavailable => TRY_AGAIN_LATER,
        _ => AGENT_FAILED,
    };
    CniError::new(
        code,
        "the dataplane agent refused the request",
        s.message().to_owned(),
    )
}

async fn call_agent(inv: &Invocation, conf: &NetConf) -> Result<Option<Value>, CniError> {
    let mut client = match connect(&conf.socket).await {
        Ok(c) => c,
        // The spec asks DEL to succeed when there is nothing left to do; with the
        // agent down it cannot act, and the restarted agent frees the address of
        // every endpoint whose link went with its namespace (see `restore`).
        Err(e) if inv.command == "DEL" && e.code == AGENT_UNREACHABLE => {
            eprintln!("sextant-cni: DEL with the agent down: {}", e.details);
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let attachment = Some(inv.attachment());
    match inv.command.as_str() {
        "ADD" => {
            let reply = client
                .add(AddRequest { attachment })
                .await
                .map_err(from_status)?
                .into_inner();
            let mut ip = json!({
                "address": reply.address,
                "gateway": reply.gateway,
                "interface": 0,
            });
            if conf.cni_version.starts_with("0.") {
                ip["version"] = json!("4");
            }
            Ok(Some(json!({
                "cniVersion": conf.cni_version,
                "interfaces": [{"name": inv.ifname, "mac": reply.mac, "sandbox": inv.netns}],
                "ips": [ip],
                "routes": [{"dst": "0.0.0.0/0", "gw": reply.gateway}],
                "dns": {},
            })))
        }
        "DEL" => {
            client
                .del(DelRequest { attachment })
                .await
                .map_err(from_status)?;
            Ok(None)
        }
        "CHECK" => {
            client
                .check(CheckRequest { attachment })
                .await
                .map_err(from_status)?;
            Ok(None)
        }
        other => Err(CniError::new(
            INVALID_ENV,
            "unknown CNI_COMMAND",
            format!("{other:?}; this plugin handles ADD, DEL, CHECK and VERSION"),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn version_lists_supported_versions() {
        let (_, out) = run(env(&[("CNI_COMMAND", "VERSION")]), "");
        let out = out.unwrap().unwrap();
        assert_eq!(out["cniVersion"], "1.0.0");
        assert!(
            out["supportedVersions"]
                .as_array()
                .unwrap()
                .contains(&json!("1.0.0"))
        );
    }

    #[test]
    fn missing_env_is_code_4_naming_the_variable() {
        let (_, out) = run(
            env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc")]),
            r#"{"cniVersion":"1.0.0","name":"sextant","type":"sextant-cni","socket":"/x"}"#,
        );
        let err = out.unwrap_err();
        assert_eq!(err.code, 4);
        assert_eq!(err.msg, "CNI_NETNS is not set");
    }

    #[test]
    fn bad_config_and_version_are_reported() {
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        let (_, out) = run(env(&vars), "{not json");
        assert_eq!(out.unwrap_err().code, 6);
        let (version, out) = run(
            env(&vars),
            r#"{"cniVersion":"9.9.9","name":"sextant","type":"sextant-cni","socket":"/x"}"#,
        );
        assert_eq!(version, "9.9.9");
        assert_eq!(out.unwrap_err().code, 1);
    }

    #[test]
    fn unreachable_agent_is_a_clear_error_except_for_del() {
        let dir = tempfile::tempdir().unwrap();
        let conf = json!({"cniVersion":"1.0.0","name":"sextant","type":"sextant-cni","socket": dir.path().join("none.sock")});
        let (_, del) = run(
            env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "eth0"),
            ]),
            &conf.to_string(),
        );
        assert_eq!(del, Ok(None));
        let (_, out) = run(
            env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_NETNS", "/run/netns/x"),
                ("CNI_IFNAME", "eth0"),
            ]),
            &conf.to_string(),
        );
        let err = out.unwrap_err();
        assert_eq!(err.code, AGENT_UNREACHABLE);
        assert!(err.details.contains("none.sock"), "{err:?}");
    }

    #[test]
    fn cni_args_carry_the_pod() {
        let inv = Invocation::from_env(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            ),
        ]))
        .unwrap();
        let a = inv.attachment();
        assert_eq!(
            (a.pod_namespace.as_str(), a.pod_name.as_str()),
            ("default", "web-0")
        );
    }
}
