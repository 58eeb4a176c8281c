//! Which resource types the server serves, read as kubectl reads them (`/api`,
//! `/apis`, then each group's preferred version), and resolving what a user
//! types — `pods`, `pod`, `po`, `Pod`, `deploy`, `deployments.apps` — to one.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroupList, APIResourceList};

use crate::{Error, Result, session::Session};

/// One resource type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, empty for core.
    pub group: String,
    /// The served version used.
    pub version: String,
    /// Plural name, as in URLs.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Short names (`po`, `deploy`, ...).
    pub short_names: Vec<String>,
}

impl ResourceType {
    /// The collection's path, in `namespace` when namespaced and one is given.
    pub fn path(&self, namespace: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace {
            Some(ns) if self.namespaced => format!("{base}/namespaces/{ns}/{}", self.plural),
            _ => format!("{base}/{}", self.plural),
        }
    }

    /// `pod`, `deployment.apps`: how `-o name` and messages name the type.
    pub fn name_prefix(&self) -> String {
        let kind = self.kind.to_lowercase();
        if self.group.is_empty() {
            kind
        } else {
            format!("{kind}.{}", self.group)
        }
    }

    /// `apps/v1` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Every resource type the server serves (subresources left out), core first,
/// then groups in the server's order, each at its preferred version.
pub async fn discover(session: &Session) -> Result<Vec<ResourceType>> {
    let mut lists: Vec<(String, String, APIResourceList)> = Vec::new();
    lists.push((
        String::new(),
        "v1".into(),
        session.get("/api/v1", None).await?,
    ));
    let groups: APIGroupList = session.get("/apis", None).await?;
    for g in groups.groups {
        let Some(version) = g
            .preferred_version
            .map(|v| v.version)
            .or_else(|| g.versions.first().map(|v| v.version.clone()))
        else {
            continue;
        };
        let list = session
            .get(&format!("/apis/{}/{version}", g.name), None)
            .await?;
        lists.push((g.name, version, list));
    }
    Ok(lists
        .into_iter()
        .flat_map(|(group, version, list)| {
            list.resources
                .into_iter()
                .filter(|r| !r.name.contains('/'))
                .map(move |r| ResourceType {
                    group: group.clone(),
                    version: version.clone(),
                    singular: if r.singular_name.is_empty() {
                        r.kind.to_lowercase()
                    } else {
                        r.singular_name.clone()
                    },
                    plural: r.name,
                    kind: r.kind,
                    namespaced: r.namespaced,
                    short_names: r.short_names.unwrap_or_default(),
                })
        })
        .collect())
}

/// The type `name` means: `<resource>[.<group>]` where resource is the plural,
/// singular, a short name or the kind (any case). Core and earlier groups win a
/// tie, as kubectl's priority order roughly does.
pub fn resolve<'a>(all: &'a [ResourceType], name: &str) -> Result<&'a ResourceType> {
    let lower = name.to_lowercase();
    let matches = |r: &ResourceType, word: &str| {
        r.plural == word
            || r.singular == word
            || r.kind.to_lowercase() == word
            || r.short_names.iter().any(|s| s == word)
    };
    // The whole text first (`pods`), then `<resource>.<group>` splits.
    if let Some(r) = all.iter().find(|r| matches(r, &lower)) {
        return Ok(r);
    }
    if let Some((word, group)) = lower.split_once('.')
        && let Some(r) = all.iter().find(|r| r.group == group && matches(r, word))
    {
        return Ok(r);
    }
    Err(Error::Usage(format!(
        "the server doesn't have a resource type \"{name}\""
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rt(group: &str, plural: &str, kind: &str, short: &[&str]) -> ResourceType {
        ResourceType {
            group: group.into(),
            version: "v1".into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced: true,
            short_names: short.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn names_users_type_resolve() {
        let all = vec![
            rt("", "pods", "Pod", &["po"]),
            rt("apps", "deployments", "Deployment", &["deploy"]),
            rt("discovery.k8s.io", "endpointslices", "EndpointSlice", &[]),
        ];
        for (typed, plural) in [
            ("pods", "pods"),
            ("pod", "pods"),
            ("po", "pods"),
            ("Pod", "pods"),
            ("deploy", "deployments"),
            ("deployments.apps", "deployments"),
            ("deployment.apps", "deployments"),
            ("endpointslices.discovery.k8s.io", "endpointslices"),
        ] {
            assert_eq!(resolve(&all, typed).unwrap().plural, plural, "{typed}");
        }
        let e = resolve(&all, "widgets").unwrap_err().to_string();
        assert_eq!(
            e,
            "error: the server doesn't have a resource type \"widgets\""
        );
        let d = resolve(&all, "deploy").unwrap();
        assert_eq!(
            d.path(Some("web")),
            "/apis/apps/v1/namespaces/web/deployments"
        );
        assert_eq!(d.name_prefix(), "deployment.apps");
        assert_eq!(all[0].path(None), "/api/v1/pods");
    }
}
