//! Strategic merge patch (`application/strategic-merge-patch+json`), as kubectl
//! apply, edit, label and rollout send it: maps merge, `null` deletes, lists with a
//! merge key merge item by item, and the directives `$patch: delete|replace`,
//! `$retainKeys`, `$deleteFromPrimitiveList/<list>` and `$setElementOrder/<list>`.
//!
//! Merge keys come from upstream's `patchMergeKey` tags, keyed by list name
//! (`sextant_apimachinery::strategic`, shared with the CLI's apply).

use serde_json::{Map, Value};
use sextant_apimachinery::strategic::{merge_key, merges_as_set};

use crate::resources::ResourceType;

/// Applies `patch` to `doc`.
pub fn apply(doc: &mut Value, patch: &Value, _rt: &ResourceType) -> Result<(), String> {
    let p = patch
        .as_object()
        .ok_or("a strategic merge patch must be a JSON object")?;
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    merge_map(doc, p)
}

fn merge_map(doc: &mut Value, patch: &Map<String, Value>) -> Result<(), String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *doc = Value::Object(strip_directives(patch));
            return Ok(());
        }
        Some("delete") => {
            *doc = Value::Null;
            return Ok(());
        }
        Some(other) => return Err(format!("unknown patch type {other:?}")),
        None => {}
    }
    let d = match doc.as_object_mut() {
        Some(d) => d,
        None => {
            *doc = Value::Object(Map::new());
            doc.as_object_mut().ok_or("not an object")?
        }
    };
    for (k, pv) in patch {
        if k == "$retainKeys" || k.starts_with("$setElementOrder/") || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = pv.as_array().cloned().unwrap_or_default();
            if let Some(list) = d.get_mut(field).and_then(Value::as_array_mut) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if pv.is_null() {
            d.remove(k);
            continue;
        }
        match (d.get_mut(k), pv) {
            (Some(dv @ Value::Object(_)), Value::Object(pm)) => {
                merge_map(dv, pm)?;
                if dv.is_null() {
                    d.remove(k);
                }
            }
            (Some(Value::Array(dl)), Value::Array(pl)) => {
                let items: Vec<&Value> = dl.iter().chain(pl.iter()).collect();
                if let Some(key) = merge_key(k, &items) {
                    merge_list(dl, pl, key)?;
                } else if merges_as_set(k) {
                    for v in pl {
                        if !dl.contains(v) {
                            dl.push(v.clone());
                        }
                    }
                } else {
                    *dl = pl.iter().map(clean).collect();
                }
            }
            _ => {
                d.insert(k.clone(), clean(pv));
            }
        }
    }
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        d.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn merge_list(doc: &mut Vec<Value>, patch: &[Value], key: &str) -> Result<(), String> {
    for item in patch {
        let Some(pm) = item.as_object() else {
            return Err(format!("list items merged by {key:?} must be objects"));
        };
        let id = pm.get(key);
        let pos = id.and_then(|id| doc.iter().position(|d| d.get(key) == Some(id)));
        match (pm.get("$patch").and_then(Value::as_str), pos) {
            (Some("delete"), Some(i)) => {
                doc.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => merge_map(&mut doc[i], pm)?,
            (_, None) => doc.push(Value::Object(strip_directives(pm))),
        }
    }
    Ok(())
}

/// A patch value without directive keys, recursively.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_directives(m)),
        Value::Array(a) => Value::Array(a.iter().map(clean).collect()),
        other => other.clone(),
    }
}

fn strip_directives(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), clean(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rt() -> &'static ResourceType {
        crate::resources::find("apps", "v1", "deployments").unwrap()
    }

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let mut doc = json!({"spec": {"containers": [
            {"name": "a", "image": "x:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "b", "image": "y:1"}]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "x:2", "env": [{"name": "B", "$patch": "delete"}, {"name": "C", "value": "3"}]}]}});
        apply(&mut doc, &patch, rt()).unwrap();
        assert_eq!(
            doc,
            json!({"spec": {"containers": [
                {"name": "a", "image": "x:2", "env": [{"name": "A", "value": "1"}, {"name": "C", "value": "3"}]},
                {"name": "b", "image": "y:1"}]}})
        );
    }

    #[test]
    fn null_deletes_and_replace_replaces() {
        let mut doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"metadata": {"labels": {"a": null}}, "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}});
        apply(&mut doc, &patch, rt()).unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"b": "2"}}, "spec": {"strategy": {"type": "Recreate"}}})
        );
        let patch = json!({"metadata": {"labels": {"$patch": "replace", "z": "9"}}});
        apply(&mut doc, &patch, rt()).unwrap();
        assert_eq!(doc["metadata"]["labels"], json!({"z": "9"}));
    }

    #[test]
    fn primitive_lists_replace_except_finalizers() {
        let mut doc = json!({"metadata": {"finalizers": ["a"]}, "spec": {"args": ["x", "y"]}});
        let patch = json!({"metadata": {"finalizers": ["b"]}, "spec": {"args": ["z"]}});
        apply(&mut doc, &patch, rt()).unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"args": ["z"]}})
        );
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        apply(&mut doc, &patch, rt()).unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!(["b"]));
    }
}
