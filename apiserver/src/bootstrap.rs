//! Joining nodes, as k3s does: the server writes a join token to
//! `<data-dir>/node-token`; an agent presents it once to `POST /sextant/v1/join`
//! and receives its own client certificate (CN `system:node:<name>`, O
//! `system:nodes`) with the cluster CA, and keeps them in its data dir.
//!
//! The token is `SX1::<sha256 of the CA certificate, hex>::<secret, hex>`: the agent
//! checks the CA it is sent against the hash before trusting it (nothing else
//! authenticates the server on first contact), and the server checks the secret.

use std::path::Path;

use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{pki, status::ApiError};

const PREFIX: &str = "SX1";

/// A parsed join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate (PEM), hex.
    pub ca_hash: String,
    /// The shared secret, hex.
    pub secret: String,
}

impl JoinToken {
    /// Parses `SX1::<ca hash>::<secret>`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split("::");
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(PREFIX), Some(ca), Some(secret), None)
                if ca.len() == 64 && !secret.is_empty() =>
            {
                Some(Self {
                    ca_hash: ca.to_owned(),
                    secret: secret.to_owned(),
                })
            }
            _ => None,
        }
    }

    /// Whether `ca_pem` is the CA this token names.
    pub fn trusts(&self, ca_pem: &str) -> bool {
        hash(ca_pem)
            .as_bytes()
            .ct_eq(self.ca_hash.as_bytes())
            .into()
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}::{}::{}", self.ca_hash, self.secret)
    }
}

fn hash(ca_pem: &str) -> String {
    Sha256::digest(ca_pem.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Loads `<data-dir>/node-token`, or makes one for `ca_pem` (mode 0600).
pub fn load_or_create(data_dir: &Path, ca_pem: &str) -> Result<JoinToken, pki::Error> {
    let path = data_dir.join("node-token");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Some(token) = JoinToken::parse(&text)
        && token.trusts(ca_pem)
    {
        return Ok(token);
    }
    let secret: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let token = JoinToken {
        ca_hash: hash(ca_pem),
        secret,
    };
    pki::write_private(&path, &format!("{token}\n"))?;
    Ok(token)
}

/// What an agent sends to join.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    /// The join token.
    pub token: String,
    /// The node's name (its certificate's CN becomes `system:node:<name>`).
    pub node_name: String,
    /// The node's addresses, for its kubelet's serving certificate.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// What a joining agent receives.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    /// The cluster CA, PEM: check it against the token's hash before trusting it.
    pub ca: String,
    /// The node's client certificate, PEM.
    pub certificate: String,
    /// Its private key, PEM.
    pub key: String,
    /// The kubelet's serving certificate for the node's name and addresses, PEM.
    #[serde(default)]
    pub serving_certificate: String,
    /// Its private key, PEM.
    #[serde(default)]
    pub serving_key: String,
}

/// State of the join endpoint.
#[derive(Clone)]
pub struct Joiner {
    /// The server's token.
    pub token: JoinToken,
    /// The PKI that issues node certificates.
    pub pki: std::sync::Arc<pki::Pki>,
}

/// `POST /sextant/v1/join`: open to anonymous clients; the token is the credential.
pub async fn join(State(joiner): State<Joiner>, Json(req): Json<JoinRequest>) -> Response {
    let valid = JoinToken::parse(&req.token).is_some_and(|t| {
        bool::from(t.secret.as_bytes().ct_eq(joiner.token.secret.as_bytes()))
            && t.ca_hash == joiner.token.ca_hash
    });
    if !valid {
        return ApiError::unauthorized().into_response();
    }
    if !crate::validation::is_dns1123_subdomain(&req.node_name) {
        return ApiError::bad_request(format!(
            "invalid node name {:?}: must be an RFC 1123 subdomain",
            req.node_name
        ))
        .into_response();
    }
    let mut hosts = vec![req.node_name.clone()];
    hosts.extend(req.addresses.iter().filter(|a| !a.is_empty()).cloned());
    let issued = joiner
        .pki
        .client_cert(&format!("system:node:{}", req.node_name), &["system:nodes"])
        .and_then(|client| {
            let name = format!("system:node:{}", req.node_name);
            Ok((client, joiner.pki.serving_cert_named(&name, &hosts)?))
        });
    match issued {
        Ok((pair, serving)) => {
            tracing::info!(node = req.node_name, "issued a node client certificate");
            Json(JoinResponse {
                ca: joiner.pki.ca_pem().to_owned(),
                certificate: pair.cert_pem,
                key: pair.key_pem,
                serving_certificate: serving.cert_pem,
                serving_key: serving.key_pem,
            })
            .into_response()
        }
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// `GET /cacerts`: the cluster CA, open to anonymous clients (as k3s serves it), so a
/// joining agent can check it against its token before sending the token anywhere.
pub async fn cacerts(State(joiner): State<Joiner>) -> Response {
    joiner.pki.ca_pem().to_owned().into_response()
}

/// Why an agent could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The token is not of the form `SX1::<ca-hash>::<secret>`.
    #[error("the join token is malformed (expected SX1::<ca-hash>::<secret>)")]
    BadToken,
    /// The server's CA does not have the hash the token carries.
    #[error("the server at {0} presented a CA that does not match the join token")]
    UntrustedServer(String),
    /// The request failed or was refused.
    #[error("joining through {url}: {message}")]
    Request {
        /// The URL called.
        url: String,
        /// What went wrong.
        message: String,
    },
}

/// The agent's side of joining: fetch the CA, check it against the token, then
/// exchange the token (over TLS verified with that CA) for the node's certificate.
pub async fn join_cluster(
    server: &str,
    token: &str,
    node_name: &str,
    addresses: &[String],
) -> Result<JoinResponse, JoinError> {
    let token = JoinToken::parse(token.trim()).ok_or(JoinError::BadToken)?;
    let server = server.trim_end_matches('/');
    let request = |url: &str, e: reqwest::Error| JoinError::Request {
        url: url.to_owned(),
        message: e.to_string(),
    };
    // Unverified on purpose: what comes back is checked against the token's hash.
    let url = format!("{server}/cacerts");
    let insecure = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .map_err(|e| request(&url, e))?;
    let ca = insecure
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| request(&url, e))?
        .text()
        .await
        .map_err(|e| request(&url, e))?;
    if !token.trusts(&ca) {
        return Err(JoinError::UntrustedServer(server.to_owned()));
    }
    let url = format!("{server}/sextant/v1/join");
    let root = reqwest::Certificate::from_pem(ca.as_bytes()).map_err(|e| request(&url, e))?;
    let verified = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .build()
        .map_err(|e| request(&url, e))?;
    let body = serde_json::json!({"token": token.to_string(), "nodeName": node_name, "addresses": addresses});
    let response = verified
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| request(&url, e))?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        return Err(JoinError::Request {
            url,
            message: format!("{status}: {text}"),
        });
    }
    let joined: JoinResponse = response.json().await.map_err(|e| request(&url, e))?;
    if !token.trusts(&joined.ca) {
        return Err(JoinError::UntrustedServer(server.to_owned()));
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_name_their_ca() {
        let dir = tempfile::tempdir().unwrap();
        let token = load_or_create(dir.path(), "CA PEM").unwrap();
        assert_eq!(JoinToken::parse(&token.to_string()), Some(token.clone()));
        assert!(token.trusts("CA PEM"));
        assert!(!token.trusts("another CA"));
        // Stable across restarts.
        assert_eq!(load_or_create(dir.path(), "CA PEM").unwrap(), token);
        assert_eq!(JoinToken::parse("SX1::short::x"), None);
        assert_eq!(JoinToken::parse("K10abc::server:x"), None);
    }
}
