//! A connected client and the few ways commands talk to the API server through
//! it: JSON in and out, the server's Status turned into [`Error::Server`].

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Error, Result};

/// A connected client and what a command needs to know about it.
#[derive(Clone)]
pub struct Session {
    /// The API client.
    pub client: kube::Client,
    /// The namespace commands default to.
    pub namespace: String,
    /// The server URL (for error messages).
    pub server: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("namespace", &self.namespace)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// A query string of the pairs whose value is not empty, percent-encoded.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        q.append_pair(k, v);
    }
    q.finish()
}

impl Session {
    /// Sends `req` and decodes the JSON answer.
    pub async fn send<T: DeserializeOwned>(&self, req: http::Request<Vec<u8>>) -> Result<T> {
        self.client
            .request::<T>(req)
            .await
            .map_err(|e| Error::from_kube(e, &self.server))
    }

    /// `GET path`, asking for `accept` (`application/json` when `None`).
    pub async fn get<T: DeserializeOwned>(&self, path: &str, accept: Option<&str>) -> Result<T> {
        let mut req = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| Error::Client(e.to_string()))?;
        if let Some(a) = accept {
            req.headers_mut().insert(
                http::header::ACCEPT,
                http::HeaderValue::from_str(a).map_err(|e| Error::Client(e.to_string()))?,
            );
        }
        self.send(req).await
    }

    /// The items of the list at `path`, asked with `pairs` as its query
    /// (`labelSelector`, `fieldSelector`; empty values left out).
    pub async fn items(&self, path: &str, pairs: &[(&str, &str)]) -> Result<Vec<Value>> {
        let q = query(pairs);
        let url = if q.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{q}")
        };
        let list: Value = self.get(&url, None).await?;
        Ok(match list.get("items") {
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        })
    }

    /// `GET path`, `None` when the server answers 404.
    pub async fn get_opt(&self, path: &str) -> Result<Option<Value>> {
        match self.get(path, None).await {
            Ok(v) => Ok(Some(v)),
            Err(Error::Server { code: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `method path` with `body` as `content_type` (JSON, merge patch).
    pub async fn write(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &Value,
    ) -> Result<Value> {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(body.to_string().into_bytes())
            .map_err(|e| Error::Client(e.to_string()))?;
        self.send(req).await
    }
}
