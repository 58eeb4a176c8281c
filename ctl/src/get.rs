//! `sextantctl get TYPE [NAME...]`: the server prints (a `meta.k8s.io/v1` Table,
//! as kubectl asks for one), or the objects themselves with `-o json|yaml|name`.

use serde_json::Value;

use crate::{
    Error, Result, discovery,
    output::{self, Format, Printed},
    session::Session,
};

/// What kubectl sends to get a Table, falling back to the object.
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// The arguments of `get`.
#[derive(Clone, Debug, clap::Args)]
pub struct GetArgs {
    /// The resource type (`pods`, `po`, `deploy`, `deployments.apps`, ...).
    pub resource: String,
    /// Names of objects; all of them when none.
    pub names: Vec<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Only objects whose labels match (`app=web,tier!=db`).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Output format; the server's table when not given.
    #[arg(short = 'o', long, value_parser = Format::parse)]
    pub output: Option<Format>,
    /// Leave out the header row.
    #[arg(long)]
    pub no_headers: bool,
}

async fn list(
    session: &Session,
    path: &str,
    accept: &str,
    selector: Option<&str>,
) -> Result<Value> {
    let mut params = kube::api::ListParams::default();
    if let Some(s) = selector {
        params = params.labels(s);
    }
    let mut req = kube::core::Request::new(path)
        .list(&params)
        .map_err(|e| Error::Client(e.to_string()))?;
    req.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_str(accept).map_err(|e| Error::Client(e.to_string()))?,
    );
    session.send(req).await
}

/// Runs `get`.
pub async fn run(session: &Session, args: &GetArgs) -> Result<Printed> {
    let types = discovery::discover(session).await?;
    let rt = discovery::resolve(&types, &args.resource)?;
    let namespace = (!args.all_namespaces).then_some(session.namespace.as_str());
    let path = rt.path(namespace);
    let mut printed = Printed::default();
    let table_output = Format::is_table(args.output.as_ref());
    let accept = if table_output {
        TABLE
    } else {
        "application/json"
    };

    // The tables (or objects) of the named objects, or the whole list.
    let mut found: Vec<Value> = Vec::new();
    if args.names.is_empty() {
        found.push(list(session, &path, accept, args.selector.as_deref()).await?);
    } else {
        for name in &args.names {
            match session.get(&format!("{path}/{name}"), Some(accept)).await {
                Ok(v) => found.push(v),
                Err(e) => printed.errors.push(e),
            }
        }
    }

    if table_output {
        let mut merged = found.first().cloned().unwrap_or(Value::Null);
        let rows: Vec<Value> = found
            .iter()
            .flat_map(|t| t["rows"].as_array().cloned().unwrap_or_default())
            .collect();
        if rows.is_empty() {
            if printed.errors.is_empty() {
                printed.stderr = match namespace {
                    Some(ns) if rt.namespaced => format!("No resources found in {ns} namespace.\n"),
                    _ => "No resources found\n".into(),
                };
            }
            return Ok(printed);
        }
        merged["rows"] = Value::Array(rows);
        printed.stdout = output::table(
            &merged,
            matches!(args.output, Some(Format::Wide)),
            args.all_namespaces && rt.namespaced,
            !args.no_headers,
        );
        return Ok(printed);
    }

    // Objects: a list's items get the kind and apiVersion items omit.
    let single = args.names.len() == 1;
    let mut objects = Vec::new();
    for v in found {
        if let Some(items) = v["items"].as_array() {
            for item in items {
                let mut item = item.clone();
                item["apiVersion"] = Value::String(rt.api_version());
                item["kind"] = Value::String(rt.kind.clone());
                objects.push(item);
            }
        } else {
            objects.push(v);
        }
    }
    printed.stdout = match &args.output {
        Some(Format::Json) => output::json(&objects, single)?,
        Some(Format::Yaml) => output::yaml(&objects, single)?,
        // kubectl's template sees the object, or a List of them.
        Some(Format::JsonPath(t)) => {
            let list;
            let target = if single {
                objects.first().unwrap_or(&Value::Null)
            } else {
                list = serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": objects});
                &list
            };
            t.render(target)?
        }
        Some(Format::CustomColumns(cols)) => {
            output::custom_columns(&objects, cols, !args.no_headers)?
        }
        _ => objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}\n",
                    rt.name_prefix(),
                    o["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect(),
    };
    Ok(printed)
}
