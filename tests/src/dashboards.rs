//! The shipped Grafana dashboards (`grafana/dashboards/*.json`): loading, the
//! structural checks Grafana's import relies on, and every panel's and template
//! variable's query in a form Prometheus evaluates directly.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The directory of the shipped dashboards.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana/dashboards")
}

/// Every dashboard file with its parsed JSON, in name order.
pub fn load_all() -> crate::Result<Vec<(PathBuf, Value)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .map_err(crate::io_err("reading grafana/dashboards"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p)
                .map_err(crate::io_err(format!("reading {}", p.display())))?;
            let v = serde_json::from_str(&text)
                .map_err(|e| crate::Error::Failed(format!("{}: {e}", p.display())))?;
            Ok((p, v))
        })
        .collect()
}

/// What is wrong with a dashboard, for Grafana: empty when it is sound.
pub fn problems(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if d["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        out.push("schemaVersion missing or older than 36".into());
    }
    for field in ["uid", "title"] {
        if d[field].as_str().is_none_or(str::is_empty) {
            out.push(format!("no {field}"));
        }
    }
    let variables = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !variables.iter().any(|v| {
        v["type"] == "datasource" && v["name"] == "datasource" && v["query"] == "prometheus"
    }) {
        out.push("no `datasource` variable of type datasource (prometheus)".into());
    }
    let mut ids = std::collections::BTreeSet::new();
    let panels = d["panels"].as_array().cloned().unwrap_or_default();
    if panels.is_empty() {
        out.push("no panels".into());
    }
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?");
        match p["id"].as_u64() {
            Some(id) if !ids.insert(id) => out.push(format!("panel id {id} repeated ({title})")),
            Some(_) => {}
            None => out.push(format!("panel {title} has no id")),
        }
        if p["datasource"]["uid"] != "${datasource}" {
            out.push(format!(
                "panel {title} does not use the datasource variable"
            ));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty()
            || targets
                .iter()
                .any(|t| t["expr"].as_str().is_none_or(str::is_empty))
        {
            out.push(format!("panel {title} has a target without a query"));
        }
    }
    out
}

/// Every panel query as Prometheus evaluates it: `(panel title, expr)`, with
/// the template variables at "All" (`.*`) and `$__rate_interval` at 1m.
pub fn panel_queries(d: &Value) -> Vec<(String, String)> {
    d["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| {
                    let expr = t["expr"].as_str()?;
                    Some((title.clone(), expand(expr)))
                })
        })
        .collect()
}

/// The template variables' `label_values(metric, label)` queries as
/// `(label, metric)`.
pub fn variable_queries(d: &Value) -> Vec<(String, String)> {
    d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .filter_map(|v| {
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())?;
            let inner = q.strip_prefix("label_values(")?.strip_suffix(')')?;
            let (metric, label) = inner.split_once(',')?;
            Some((label.trim().to_owned(), metric.trim().to_owned()))
        })
        .collect()
}

fn expand(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$namespace", ".*")
        .replace("$node", ".*")
}
