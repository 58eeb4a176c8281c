//! Strategic merge patch knowledge both sides need: which lists merge item by
//! item and by what key (upstream's `patchMergeKey` tags, keyed by list name),
//! and the three-way patch a client sends for `apply` (kubectl's
//! `CreateThreeWayMergePatch`). The server applies such patches in
//! `apiserver/src/smp.rs`.

use serde_json::{Map, Value, json};

/// The merge key of a list field, if it merges rather than replaces. `ports`
/// merges by `containerPort` in containers and by `port` in Services, told
/// apart by the items themselves.
pub fn merge_key(field: &str, items: &[&Value]) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "hostAliases" => "ip",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        "ports" => {
            if items.iter().any(|i| i.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Primitive lists that merge as sets instead of being replaced.
pub fn merges_as_set(field: &str) -> bool {
    field == "finalizers"
}

/// How a three-way patch treats lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lists {
    /// Strategic merge patch: lists with a merge key are patched item by item
    /// (changed items, `$patch: delete` for removed ones, `$setElementOrder`).
    Strategic,
    /// JSON merge patch (custom resources): a changed list is sent whole.
    Replace,
}

/// The patch taking `current` to `modified`, deleting what `original` (the
/// last applied configuration) had and `modified` no longer has: kubectl's
/// three-way patch. Empty when the live object already is what was applied.
pub fn three_way(
    original: &Value,
    modified: &Value,
    current: &Value,
    lists: Lists,
) -> Map<String, Value> {
    let mut patch = Map::new();
    let (Some(m), cur) = (modified.as_object(), current.as_object()) else {
        return patch;
    };
    for (k, want) in m {
        let have = cur.and_then(|c| c.get(k));
        match (want, have) {
            (Value::Object(_), Some(h @ Value::Object(_))) => {
                let inner = three_way(&original[k], want, h, lists);
                if !inner.is_empty() {
                    patch.insert(k.clone(), Value::Object(inner));
                }
            }
            (Value::Array(w), Some(Value::Array(h))) => {
                let items: Vec<&Value> = w.iter().chain(h).collect();
                let key = merge_key(k, &items)
                    .filter(|_| lists == Lists::Strategic)
                    .filter(|_| items.iter().all(|i| i.is_object()));
                match key {
                    Some(key) => {
                        let orig = original[k].as_array().map_or(&[][..], Vec::as_slice);
                        let items = list_patch(orig, w, h, key, lists);
                        if !items.is_empty() {
                            let order: Vec<Value> =
                                w.iter().map(|i| json!({ key: i[key] })).collect();
                            patch.insert(format!("$setElementOrder/{k}"), Value::Array(order));
                            patch.insert(k.clone(), Value::Array(items));
                        }
                    }
                    None if equivalent(w, h, lists) => {}
                    None => {
                        patch.insert(k.clone(), want.clone());
                    }
                }
            }
            _ if have == Some(want) => {}
            _ => {
                patch.insert(k.clone(), want.clone());
            }
        }
    }
    if let Some(o) = original.as_object() {
        for k in o.keys() {
            if !m.contains_key(k) && cur.is_some_and(|c| c.contains_key(k)) {
                patch.insert(k.clone(), Value::Null);
            }
        }
    }
    patch
}

/// The items of a merged list's patch: new items whole, changed ones as their
/// key plus the change, removed ones (applied before, gone from the file, still
/// live) as `$patch: delete`.
fn list_patch(
    original: &[Value],
    want: &[Value],
    have: &[Value],
    key: &str,
    lists: Lists,
) -> Vec<Value> {
    let find = |list: &[Value], id: &Value| list.iter().find(|i| &i[key] == id).cloned();
    let mut out = Vec::new();
    for w in want {
        let id = &w[key];
        match find(have, id) {
            None => out.push(w.clone()),
            Some(h) => {
                let o = find(original, id).unwrap_or(Value::Null);
                let mut inner = three_way(&o, w, &h, lists);
                if !inner.is_empty() {
                    inner.insert(key.to_owned(), id.clone());
                    out.push(Value::Object(inner));
                }
            }
        }
    }
    for o in original {
        let id = &o[key];
        if find(want, id).is_none() && find(have, id).is_some() {
            out.push(json!({"$patch": "delete", key: id}));
        }
    }
    out
}

/// Whether the live list `have` already is `want`: item by item, objects
/// holding at least `want`'s fields (the server defaults the rest, as in a
/// pod template's tolerations).
fn equivalent(want: &[Value], have: &[Value], lists: Lists) -> bool {
    want.len() == have.len()
        && want.iter().zip(have).all(|(w, h)| match (w, h) {
            (Value::Object(_), Value::Object(_)) => three_way(&Value::Null, w, h, lists).is_empty(),
            _ => w == h,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_add_change_and_delete() {
        let original = json!({"data": {"a": "1", "gone": "x"}, "metadata": {"name": "c"}});
        let modified = json!({"data": {"a": "2", "new": "y"}, "metadata": {"name": "c"}});
        let current = json!({
            "data": {"a": "1", "gone": "x", "theirs": "z"},
            "metadata": {"name": "c", "uid": "u", "resourceVersion": "7"},
        });
        let patch = three_way(&original, &modified, &current, Lists::Strategic);
        assert_eq!(
            Value::Object(patch),
            json!({"data": {"a": "2", "new": "y", "gone": null}})
        );
        // Applying the same again changes nothing: "unchanged".
        let now = json!({"data": {"a": "2", "new": "y", "theirs": "z"}, "metadata": {"name": "c"}});
        assert!(three_way(&modified, &modified, &now, Lists::Strategic).is_empty());
    }

    #[test]
    fn containers_are_patched_by_name_and_others_kept() {
        let original = json!({"spec": {"containers": [
            {"name": "main", "image": "v1"}, {"name": "old", "image": "o"}]}});
        let modified = json!({"spec": {"containers": [{"name": "main", "image": "v2"}]}});
        // The server defaulted fields, another client added a sidecar.
        let current = json!({"spec": {"containers": [
            {"name": "main", "image": "v1", "imagePullPolicy": "IfNotPresent"},
            {"name": "old", "image": "o"},
            {"name": "sidecar", "image": "s"}]}});
        let patch = three_way(&original, &modified, &current, Lists::Strategic);
        assert_eq!(
            Value::Object(patch),
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "main"}],
                "containers": [
                    {"name": "main", "image": "v2"},
                    {"$patch": "delete", "name": "old"}]}})
        );
        // As a JSON merge patch the list goes whole.
        let patch = three_way(&original, &modified, &current, Lists::Replace);
        assert_eq!(
            Value::Object(patch),
            json!({"spec": {"containers": [{"name": "main", "image": "v2"}]}})
        );
        // Defaults alone are no change.
        let applied = json!({"spec": {"containers": [{"name": "main", "image": "v1"}]}});
        let live = json!({"spec": {"containers": [{"name": "main", "image": "v1", "imagePullPolicy": "IfNotPresent"}]}});
        assert!(three_way(&applied, &applied, &live, Lists::Strategic).is_empty());
    }
}
