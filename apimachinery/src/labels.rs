//! Label selectors, as upstream's `labels` package evaluates them: one
//! requirement rule for pod label selectors and node selector terms alike.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether a label's value (`None` when the label is absent) meets one
/// requirement. `Gt`/`Lt` (node selectors only) compare integers.
pub fn requirement_matches(operator: &str, value: Option<&String>, values: &[String]) -> bool {
    match operator {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether `labels` meet the selector. An empty selector matches everything,
/// as upstream's `LabelSelectorAsSelector` (a missing one is the caller's to judge).
pub fn matches(s: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = s
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && s.match_expressions.iter().flatten().all(|e| {
            let values = e.values.clone().unwrap_or_default();
            requirement_matches(&e.operator, labels.get(&e.key), &values)
        })
}

/// Whether the selector says nothing (no labels, no expressions).
pub fn is_empty(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_and_selectors() {
        let labels: BTreeMap<String, String> = [
            ("app".to_owned(), "web".to_owned()),
            ("cpus".to_owned(), "8".to_owned()),
        ]
        .into();
        let s = |v: serde_json::Value| -> LabelSelector {
            serde_json::from_value(v).unwrap_or_default()
        };
        assert!(matches(
            &s(serde_json::json!({"matchLabels": {"app": "web"}})),
            &labels
        ));
        assert!(!matches(
            &s(serde_json::json!({"matchLabels": {"app": "db"}})),
            &labels
        ));
        assert!(matches(&LabelSelector::default(), &labels));
        assert!(is_empty(&LabelSelector::default()));
        let expr = |op: &str, vals: &[&str]| {
            s(
                serde_json::json!({"matchExpressions": [{"key": "app", "operator": op, "values": vals}]}),
            )
        };
        assert!(matches(&expr("In", &["web", "db"]), &labels));
        assert!(!matches(&expr("NotIn", &["web"]), &labels));
        assert!(matches(&expr("Exists", &[]), &labels));
        assert!(!matches(&expr("DoesNotExist", &[]), &labels));
        assert!(requirement_matches("Gt", labels.get("cpus"), &["4".into()]));
        assert!(!requirement_matches(
            "Lt",
            labels.get("cpus"),
            &["4".into()]
        ));
        assert!(!requirement_matches("Gt", labels.get("app"), &["4".into()]));
    }
}
