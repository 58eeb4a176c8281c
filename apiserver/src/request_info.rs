//! What a request is about, read from its path and method the way upstream's
//! `RequestInfoFactory` does: API prefix, group, version, namespace, resource,
//! name, subresource, and the Kubernetes verb (`get`, `list`, `watch`, `create`,
//! `update`, `patch`, `delete`, `deletecollection`).

/// A parsed resource request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// Whether the path is a resource path (else: discovery, health, metrics, ...).
    pub is_resource_request: bool,
    /// The group; empty for the core group (`/api`).
    pub group: String,
    /// The version, e.g. `v1`.
    pub version: String,
    /// The namespace, when the path names one.
    pub namespace: Option<String>,
    /// The resource (plural), e.g. `deployments`.
    pub resource: String,
    /// The object name, when the path names one.
    pub name: Option<String>,
    /// The subresource, e.g. `status`, `scale`, `log`.
    pub subresource: Option<String>,
    /// The Kubernetes verb.
    pub verb: String,
}

impl RequestInfo {
    /// Parses `path` (without query) and `method`; `watch` is the `watch` query flag.
    pub fn parse(method: &str, path: &str, watch: bool) -> Self {
        let parts: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        let verb_of_method = || match method {
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "get",
        };
        let mut info = RequestInfo {
            verb: verb_of_method().to_lowercase(),
            ..Default::default()
        };
        let rest: &[&str] = match parts.as_slice() {
            ["api", version, rest @ ..] => {
                info.version = (*version).to_owned();
                rest
            }
            ["apis", group, version, rest @ ..] => {
                info.group = (*group).to_owned();
                info.version = (*version).to_owned();
                rest
            }
            _ => return info,
        };
        if rest.is_empty() {
            return info;
        }
        // namespaces/<ns>/<resource>... is namespaced, except `namespaces/<name>` itself
        // and its subresources (`namespaces/<name>/status`, `finalize`).
        let rest = match rest {
            ["namespaces", ns, resource, tail @ ..]
                if !matches!(*resource, "status" | "finalize") =>
            {
                info.namespace = Some((*ns).to_owned());
                let mut v = vec![*resource];
                v.extend_from_slice(tail);
                v
            }
            other => other.to_vec(),
        };
        info.is_resource_request = true;
        info.resource = rest[0].to_owned();
        info.name = rest.get(1).map(|s| (*s).to_owned());
        info.subresource = rest.get(2).map(|s| (*s).to_owned());
        info.verb = match (method, info.name.is_some()) {
            ("GET", _) if watch => "watch",
            ("GET", false) => "list",
            ("DELETE", false) => "deletecollection",
            _ => verb_of_method(),
        }
        .to_owned();
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_paths() {
        let i = RequestInfo::parse(
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
            false,
        );
        assert_eq!(
            (
                i.group.as_str(),
                i.version.as_str(),
                i.namespace.as_deref(),
                i.resource.as_str()
            ),
            ("apps", "v1", Some("default"), "deployments")
        );
        assert_eq!(
            (i.name.as_deref(), i.subresource.as_deref(), i.verb.as_str()),
            (Some("web"), Some("scale"), "get")
        );

        let i = RequestInfo::parse("GET", "/api/v1/namespaces", false);
        assert_eq!(
            (i.resource.as_str(), i.namespace, i.verb.as_str()),
            ("namespaces", None, "list")
        );
        let i = RequestInfo::parse("GET", "/api/v1/namespaces/kube-system", false);
        assert_eq!(
            (i.resource.as_str(), i.name.as_deref()),
            ("namespaces", Some("kube-system"))
        );
        let i = RequestInfo::parse("PUT", "/api/v1/namespaces/x/finalize", false);
        assert_eq!(
            (
                i.resource.as_str(),
                i.name.as_deref(),
                i.subresource.as_deref()
            ),
            ("namespaces", Some("x"), Some("finalize"))
        );
        let i = RequestInfo::parse("GET", "/api/v1/pods", true);
        assert_eq!((i.resource.as_str(), i.verb.as_str()), ("pods", "watch"));
        let i = RequestInfo::parse("DELETE", "/api/v1/namespaces/d/configmaps", false);
        assert_eq!(i.verb, "deletecollection");
        assert!(!RequestInfo::parse("GET", "/version", false).is_resource_request);
        assert!(!RequestInfo::parse("GET", "/apis/apps/v1", false).is_resource_request);
    }
}
