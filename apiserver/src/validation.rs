//! Defaulting and validation per kind, matching upstream for the fields users touch:
//! object names (RFC 1123), labels, typed field shapes (through `k8s-openapi`'s
//! types), unknown fields under `fieldValidation=Strict`, and the kind-specific rules
//! (a Deployment's selector must match its template's labels, and is immutable).

use k8s_openapi::{
    schemars::JsonSchema,
    serde::{Serialize, de::DeserializeOwned},
};
use serde_json::{Value, json};

use crate::{
    resources::ResourceType,
    status::{ApiError, Cause},
};

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// Whether `s` is an RFC 1123 label (at most 63 characters).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `s` is an RFC 1123 subdomain (dot-separated labels, at most 253 characters).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn invalid(field: &str, value: &Value, message: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {value}: {message}"),
        field: field.into(),
    }
}

fn required(field: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        message: "Required value".into(),
        field: field.into(),
    }
}

/// How unknown fields are handled (`fieldValidation`), as upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Refuse the request: 400 "strict decoding error" (kubectl's default).
    Strict,
    /// Drop them and answer a `Warning` header for each (the server's default).
    #[default]
    Warn,
    /// Drop them silently.
    Ignore,
}

impl FieldValidation {
    /// From the `fieldValidation` query parameter; unknown values are Warn.
    pub fn from_param(p: Option<&str>) -> Self {
        match p {
            Some("Strict") => Self::Strict,
            Some("Ignore") => Self::Ignore,
            _ => Self::Warn,
        }
    }
}

/// Decodes `obj` as its kind's type: wrongly typed fields are a 400; unknown
/// fields a 400 under Strict, otherwise dropped from `obj` (with a warning each
/// under Warn), as upstream's decoder does. Returns the warnings.
pub fn decode(
    rt: &ResourceType,
    obj: &mut Value,
    mode: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let unknown = crate::kinds::visit(rt, UnknownFields(obj)).unwrap_or_else(|| Ok(Vec::new()));
    let unknown = unknown.map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {e}",
            kind = rt.kind,
            v = rt.version
        ))
    })?;
    let messages: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    if mode == FieldValidation::Strict && !unknown.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: strict decoding error: {}",
            messages.join(", "),
            kind = rt.kind,
            v = rt.version
        )));
    }
    for path in &unknown {
        path.remove_from(obj);
    }
    Ok(if mode == FieldValidation::Warn {
        messages
    } else {
        Vec::new()
    })
}

/// Validates `obj` (with `old` on update): a 422 with a cause per invalid field.
pub fn check(rt: &ResourceType, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    // Upstream's name rules: namespaces are RFC 1123 labels, services RFC 1035
    // labels (a letter first), everything else RFC 1123 subdomains.
    match (rt.group, rt.kind) {
        ("", "Namespace") if !is_dns1123_label(name) => {
            causes.push(invalid("metadata.name", &json!(name), DNS1123_LABEL_MSG));
        }
        ("", "Service")
            if !(is_dns1123_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase())) =>
        {
            causes.push(invalid("metadata.name", &json!(name), DNS1035_LABEL_MSG));
        }
        ("", "Namespace" | "Service") => {}
        _ if !is_dns1123_subdomain(name) => {
            causes.push(invalid(
                "metadata.name",
                &json!(name),
                DNS1123_SUBDOMAIN_MSG,
            ));
        }
        _ => {}
    }
    labels(&obj["metadata"]["labels"], "metadata.labels", &mut causes);
    match (rt.group, rt.kind) {
        ("apps", "Deployment") => deployment(obj, old, &mut causes),
        ("", "Service") => service(obj, &mut causes),
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(rt.group, rt.kind, name, causes))
    }
}

/// One step of a path into a JSON document.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A field path, printed as upstream prints it: `spec.template.spec.containers[0].x`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldPath(Vec<Step>);

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(k) if n == 0 => write!(f, "{k}")?,
                Step::Key(k) => write!(f, ".{k}")?,
                Step::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

impl FieldPath {
    /// Removes the field at this path from `doc`, if it is there.
    fn remove_from(&self, doc: &mut Value) {
        let Some((last, parents)) = self.0.split_last() else {
            return;
        };
        let mut cur = doc;
        for step in parents {
            let next = match step {
                Step::Key(k) => cur.get_mut(k.as_str()),
                Step::Index(i) => cur.get_mut(*i),
            };
            match next {
                Some(n) => cur = n,
                None => return,
            }
        }
        if let (Step::Key(k), Some(o)) = (last, cur.as_object_mut()) {
            o.remove(k);
        }
    }
}

/// Decodes an object as its kind's type and lists the fields the type does not know.
struct UnknownFields<'a>(&'a Value);

impl crate::kinds::Visitor for UnknownFields<'_> {
    type Output = Result<Vec<FieldPath>, String>;
    fn visit<T: DeserializeOwned + Serialize + JsonSchema>(self) -> Self::Output {
        typed::<T>(self.0)
    }
}

/// Decodes `obj` as `T` and returns the paths of fields `T` does not know.
fn typed<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<Vec<FieldPath>, String> {
    let t: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&t).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    missing_paths(obj, &back, &mut Vec::new(), &mut unknown);
    Ok(unknown)
}

/// Paths present (and not null) in `input` but absent from `known`.
fn missing_paths(input: &Value, known: &Value, path: &mut Vec<Step>, out: &mut Vec<FieldPath>) {
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => {
            for (key, v) in i {
                path.push(Step::Key(key.clone()));
                match k.get(key) {
                    Some(kv) => missing_paths(v, kv, path, out),
                    None if !v.is_null() => out.push(FieldPath(path.clone())),
                    None => {}
                }
                path.pop();
            }
        }
        (Value::Array(i), Value::Array(k)) => {
            for (n, (iv, kv)) in i.iter().zip(k).enumerate() {
                path.push(Step::Index(n));
                missing_paths(iv, kv, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn labels(labels: &Value, field: &str, causes: &mut Vec<Cause>) {
    let Some(m) = labels.as_object() else { return };
    for (k, v) in m {
        let name = k.rsplit('/').next().unwrap_or(k);
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !name_ok {
            causes.push(invalid(field, &json!(k), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
        let value = v.as_str().unwrap_or_default();
        let value_ok = value.is_empty()
            || (value.len() <= 63
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && value.starts_with(|c: char| c.is_ascii_alphanumeric())
                && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
        if !value_ok {
            causes.push(invalid(
                field,
                &json!(value),
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
    }
}

fn service(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let kind = spec["type"].as_str().unwrap_or("ClusterIP");
    if !matches!(
        kind,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
                json!(kind)
            ),
            field: "spec.type".into(),
        });
        return;
    }
    if kind == "ExternalName" {
        if spec["externalName"].as_str().is_none_or(str::is_empty) {
            causes.push(required("spec.externalName"));
        }
        return;
    }
    let headless = spec["clusterIP"].as_str() == Some("None");
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() && !headless {
        causes.push(required("spec.ports"));
    }
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        match p["port"].as_i64() {
            Some(n) if (1..=65535).contains(&n) => {}
            Some(n) => causes.push(invalid(
                &format!("{field}.port"),
                &json!(n),
                "must be between 1 and 65535, inclusive",
            )),
            None => causes.push(required(&format!("{field}.port"))),
        }
        let protocol = p["protocol"].as_str().unwrap_or("TCP");
        if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
            causes.push(Cause {
                reason: "FieldValueNotSupported",
                message: format!(
                    "Unsupported value: {}: supported values: \"SCTP\", \"TCP\", \"UDP\"",
                    json!(protocol)
                ),
                field: format!("{field}.protocol"),
            });
        }
        let name = p["name"].as_str().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            causes.push(required(&format!("{field}.name")));
        } else if !name.is_empty() && names.contains(&name) {
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                message: format!("Duplicate value: {}", json!(name)),
                field: format!("{field}.name"),
            });
        }
        names.push(name);
    }
}

fn deployment(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let selector = &spec["selector"];
    if selector.is_null() {
        causes.push(required("spec.selector"));
    } else {
        let match_labels = selector["matchLabels"].as_object();
        let has_expressions = selector["matchExpressions"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        if match_labels.is_none_or(|m| m.is_empty()) && !has_expressions {
            causes.push(invalid(
                "spec.selector",
                selector,
                "empty selector is invalid for deployment",
            ));
        }
        let template_labels = spec["template"]["metadata"]["labels"].as_object();
        if let Some(m) = match_labels {
            let matches = m
                .iter()
                .all(|(k, v)| template_labels.and_then(|t| t.get(k)) == Some(v));
            if !matches {
                causes.push(invalid(
                    "spec.template.metadata.labels",
                    &spec["template"]["metadata"]["labels"],
                    "`selector` does not match template `labels`",
                ));
            }
        }
        if let Some(old) = old
            && !old["spec"]["selector"].is_null()
            && old["spec"]["selector"] != *selector
        {
            causes.push(invalid("spec.selector", selector, "field is immutable"));
        }
    }
    match spec["template"]["spec"]["containers"].as_array() {
        None => causes.push(required("spec.template.spec.containers")),
        Some(cs) if cs.is_empty() => causes.push(required("spec.template.spec.containers")),
        Some(cs) => {
            for (i, c) in cs.iter().enumerate() {
                let name = c["name"].as_str().unwrap_or_default();
                if name.is_empty() {
                    causes.push(required(&format!(
                        "spec.template.spec.containers[{i}].name"
                    )));
                } else if !is_dns1123_label(name) {
                    causes.push(invalid(
                        &format!("spec.template.spec.containers[{i}].name"),
                        &json!(name),
                        DNS1123_LABEL_MSG,
                    ));
                }
                if c["image"].as_str().is_none_or(str::is_empty) {
                    causes.push(required(&format!(
                        "spec.template.spec.containers[{i}].image"
                    )));
                }
            }
        }
    }
    if spec["replicas"].as_i64().is_some_and(|r| r < 0) {
        causes.push(invalid(
            "spec.replicas",
            &spec["replicas"],
            "must be greater than or equal to 0",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn names_follow_rfc_1123() {
        assert!(is_dns1123_label("web-1"));
        assert!(!is_dns1123_label("Web"));
        assert!(!is_dns1123_label("-a"));
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(!is_dns1123_subdomain("a..b"));
    }

    #[test]
    fn unknown_fields_are_refused_pruned_or_warned_as_asked() {
        let rt = find("", "v1", "configmaps").unwrap();
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "bogus": 1, "labels": {"app.kubernetes.io/name": "n"}}, "data": {"a": "b"}, "extra.dotted": true});
        let err = decode(rt, &mut cm.clone(), FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("strict decoding error: unknown field \"extra.dotted\", unknown field \"metadata.bogus\""),
            "{}",
            err.message
        );
        let mut warned = cm.clone();
        let warnings = decode(rt, &mut warned, FieldValidation::Warn).unwrap();
        assert_eq!(
            warnings,
            [
                "unknown field \"extra.dotted\"",
                "unknown field \"metadata.bogus\""
            ]
        );
        let mut ignored = cm.clone();
        assert!(
            decode(rt, &mut ignored, FieldValidation::Ignore)
                .unwrap()
                .is_empty()
        );
        // Both drop the unknown fields and keep everything known (dotted label keys too).
        for o in [warned, ignored] {
            assert_eq!(
                o,
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"app.kubernetes.io/name": "n"}}, "data": {"a": "b"}})
            );
        }
    }

    #[test]
    fn a_selector_not_matching_the_template_is_invalid() {
        let rt = find("apps", "v1", "deployments").unwrap();
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "other"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let err = check(rt, &d, None).unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            err.message,
            "Deployment \"web\" is invalid: spec.template.metadata.labels: Invalid value: {\"app\":\"other\"}: `selector` does not match template `labels`"
        );
    }

    #[test]
    fn bad_names_are_refused_with_the_field_path() {
        let rt = find("", "v1", "configmaps").unwrap();
        let cm = json!({"metadata": {"name": "Bad_Name"}});
        let err = check(rt, &cm, None).unwrap_err();
        assert_eq!(err.details.unwrap()["causes"][0]["field"], "metadata.name");
    }
}
