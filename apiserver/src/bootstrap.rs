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
    match joiner
        .pki
        .client_cert(&format!("system:node:{}", req.node_name), &["system:nodes"])
    {
        Ok(pair) => {
            tracing::info!(node = req.node_name, "issued a node client certificate");
            Json(JoinResponse {
                ca: joiner.pki.ca_pem().to_owned(),
                certificate: pair.cert_pem,
                key: pair.key_pem,
            })
            .into_response()
        }
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
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
