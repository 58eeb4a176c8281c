//! Printing, as kubectl prints: aligned columns (its tabwriter: cells padded to
//! the widest plus 3, at least 6), server-side Tables (`meta.k8s.io/v1` Table:
//! the server chooses the columns), and `-o json|yaml|name`.

use serde_json::Value;

use crate::{Error, Result, jsonpath::Template};

/// What a command printed, and the failures to report after it: kubectl
/// goes on past a failed object and names every failure at the end.
#[derive(Debug, Default)]
pub struct Printed {
    /// Standard output.
    pub stdout: String,
    /// Standard error (notes such as "No resources found").
    pub stderr: String,
    /// The failures, in the order they happened.
    pub errors: Vec<Error>,
}

/// The output formats of `get`.
#[derive(Clone, Debug)]
pub enum Format {
    /// The server's Table with its extra (priority > 0) columns.
    Wide,
    /// The objects as JSON.
    Json,
    /// The objects as YAML.
    Yaml,
    /// `<type>/<name>` per object.
    Name,
    /// A kubectl JSONPath template over the object (or the List).
    JsonPath(Template),
    /// Columns of `HEADER:.path`, one row per object.
    CustomColumns(Vec<(String, Template)>),
}

impl Format {
    /// Reads `-o`: `wide`, `json`, `yaml`, `name`, `jsonpath=TEMPLATE`,
    /// `custom-columns=HEADER:PATH,...`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fail = |e: Error| e.to_string();
        Ok(match text.split_once('=') {
            Some(("jsonpath", t)) => Self::JsonPath(Template::parse(t).map_err(fail)?),
            Some(("custom-columns", spec)) => {
                let mut cols = Vec::new();
                for col in spec.split(',') {
                    let (header, path) = col.split_once(':').ok_or_else(|| {
                        format!("expected <header>:<json-path-expr> in custom-columns, got {col:?}")
                    })?;
                    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
                    cols.push((header.to_owned(), Template::path(path).map_err(fail)?));
                }
                Self::CustomColumns(cols)
            }
            _ => match text {
                "wide" => Self::Wide,
                "json" => Self::Json,
                "yaml" => Self::Yaml,
                "name" => Self::Name,
                other => {
                    return Err(format!(
                        "unable to match a printer suitable for the output format {other:?}, the allowed formats are: custom-columns,json,jsonpath,name,wide,yaml"
                    ));
                }
            },
        })
    }

    /// Whether the server's Table is what gets printed.
    pub fn is_table(format: Option<&Self>) -> bool {
        matches!(format, None | Some(Self::Wide))
    }
}

/// `custom-columns`: a header row, then per object each column's results
/// joined by commas, `<none>` when there are none.
pub fn custom_columns(
    objects: &[Value],
    cols: &[(String, Template)],
    headers: bool,
) -> Result<String> {
    let mut rows = Vec::new();
    if headers {
        rows.push(cols.iter().map(|(h, _)| h.clone()).collect());
    }
    for o in objects {
        let mut row = Vec::new();
        for (_, t) in cols {
            let values = t.values(o)?;
            row.push(if values.is_empty() {
                "<none>".to_owned()
            } else {
                values.join(",")
            });
        }
        rows.push(row);
    }
    Ok(columns(&rows))
}

/// Tab-separated cells aligned as kubectl's describers and `rollout history`
/// align them (Go's `tabwriter`, padding 2): column by column, in blocks of
/// consecutive lines that have the column.
pub fn aligned(text: &str) -> String {
    use std::io::Write as _;
    let mut tw = tabwriter::TabWriter::new(Vec::new()).padding(2).minwidth(0);
    let _ = tw.write_all(text.as_bytes());
    tw.into_inner()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|_| text.to_owned())
}

/// Rows as aligned columns: each cell but the last padded to its column's
/// widest cell plus 3 spaces, at least 6 wide.
pub fn columns(rows: &[Vec<String>]) -> String {
    let count = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..count)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let width = (widths[i] + 3).max(6);
                line.push_str(&format!("{cell:<width$}"));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A cell of a Table row as kubectl shows it.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "<none>".into(),
        Value::String(s) if s.is_empty() => "<none>".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// A server-side Table as kubectl prints it: priority-0 columns (all with
/// `wide`), names upper-cased, a NAMESPACE column first with `namespace_column`.
pub fn table(table: &Value, wide: bool, namespace_column: bool, headers: bool) -> String {
    let definitions = table["columnDefinitions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let shown: Vec<usize> = definitions
        .iter()
        .enumerate()
        .filter(|(_, d)| wide || d["priority"].as_i64().unwrap_or(0) == 0)
        .map(|(i, _)| i)
        .collect();
    let mut rows = Vec::new();
    if headers {
        let mut h: Vec<String> = shown
            .iter()
            .map(|&i| definitions[i]["name"].as_str().unwrap_or("").to_uppercase())
            .collect();
        if namespace_column {
            h.insert(0, "NAMESPACE".into());
        }
        rows.push(h);
    }
    for row in table["rows"].as_array().into_iter().flatten() {
        let cells = row["cells"].as_array().cloned().unwrap_or_default();
        let mut r: Vec<String> = shown
            .iter()
            .map(|&i| cells.get(i).map_or_else(String::new, cell))
            .collect();
        if namespace_column {
            let ns = row["object"]["metadata"]["namespace"]
                .as_str()
                .unwrap_or("");
            r.insert(0, ns.to_owned());
        }
        rows.push(r);
    }
    columns(&rows)
}

/// Objects as `-o json`: one object alone, several as a `List`.
pub fn json(objects: &[Value], single: bool) -> Result<String> {
    let v = list_or_single(objects, single);
    serde_json::to_string_pretty(&v)
        .map(|s| s + "\n")
        .map_err(|e| Error::Client(e.to_string()))
}

/// Objects as `-o yaml`.
pub fn yaml(objects: &[Value], single: bool) -> Result<String> {
    let v = list_or_single(objects, single);
    serde_saphyr::to_string(&v).map_err(|e| Error::Client(e.to_string()))
}

fn list_or_single(objects: &[Value], single: bool) -> Value {
    match objects {
        [one] if single => one.clone(),
        many => serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": ""},
            "items": many,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn tables_print_like_kubectl() {
        let t = json!({
            "kind": "Table",
            "columnDefinitions": [
                {"name": "Name", "priority": 0},
                {"name": "Ready", "priority": 0},
                {"name": "IP", "priority": 1},
            ],
            "rows": [
                {"cells": ["web-1", "1/1", "10.42.0.7"], "object": {"metadata": {"namespace": "default"}}},
                {"cells": ["a", "0/1", null], "object": {"metadata": {"namespace": "kube-system"}}},
            ],
        });
        assert_eq!(
            table(&t, false, false, true),
            "NAME    READY\nweb-1   1/1\na       0/1\n"
        );
        assert_eq!(
            table(&t, true, true, true),
            "NAMESPACE     NAME    READY   IP\n\
             default       web-1   1/1     10.42.0.7\n\
             kube-system   a       0/1     <none>\n"
        );
        assert_eq!(table(&t, false, false, false), "web-1   1/1\na       0/1\n");
    }

    #[test]
    fn one_object_alone_several_as_a_list() {
        let a = json!({"kind": "Pod", "metadata": {"name": "a"}});
        let one: Value =
            serde_json::from_str(&json(std::slice::from_ref(&a), true).unwrap()).unwrap();
        assert_eq!(one, a);
        let many: Value =
            serde_json::from_str(&json(&[a.clone(), a.clone()], false).unwrap()).unwrap();
        assert_eq!(many["kind"], "List");
        assert_eq!(many["items"].as_array().unwrap().len(), 2);
        let y = yaml(std::slice::from_ref(&a), true).unwrap();
        let back: Value = serde_saphyr::from_str(&y).unwrap();
        assert_eq!(back, a);
    }
}
