//! Derives the protobuf schema of every built-in kind — message names, field
//! numbers, wire types — from the `k8s-pb` crate (prost code generated from the
//! Kubernetes `.proto` files by the kube-rs project), so the server can transcode
//! `application/vnd.kubernetes.protobuf` request bodies into the JSON objects it
//! handles everywhere else. See docs/decisions/0003-protobuf-request-bodies.md.
//!
//! The output, `$OUT_DIR/protobuf_schema.rs`, is one sorted table of messages
//! named as the OpenAPI definitions are (`io.k8s.api.core.v1.ConfigMap`), so the
//! JSON names of the fields can be taken from the k8s-openapi schemas at run time.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use syn::{GenericArgument, Item, PathArguments, Type};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    let src = match k8s_pb_source() {
        Ok(src) => src,
        Err(e) => fail(&format!("cannot find the k8s-pb sources: {e}")),
    };
    let mut messages = BTreeMap::new();
    if let Err(e) = read_dir(&src, &[], &mut messages) {
        fail(&format!(
            "cannot read the k8s-pb sources in {}: {e}",
            src.display()
        ));
    }
    if messages.is_empty() {
        fail(&format!("no prost messages found in {}", src.display()));
    }
    let out =
        PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR is not set")));
    if let Err(e) = std::fs::write(out.join("protobuf_schema.rs"), render(&messages)) {
        fail(&format!("cannot write the protobuf schema: {e}"));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1)
}

/// The `src` directory of the k8s-pb package in the build graph, as cargo resolved it.
fn k8s_pb_source() -> Result<PathBuf, String> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?;
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(Path::new(&manifest_dir).join("Cargo.toml"))
        // Not `--offline`: metadata also wants the dev-dependencies, which a plain
        // `cargo build` on a fresh machine has not downloaded.
        .other_options(vec![
            "--locked".to_owned(),
            "--filter-platform".to_owned(),
            std::env::var("TARGET").map_err(|e| e.to_string())?,
        ])
        .exec()
        .map_err(|e| e.to_string())?;
    let package = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "k8s-pb")
        .ok_or("k8s-pb is not a dependency")?;
    let manifest = package.manifest_path.as_std_path();
    Ok(manifest
        .parent()
        .ok_or("k8s-pb's manifest has no directory")?
        .join("src"))
}

/// One field of a message: its number, Rust name, value type and label.
struct Field {
    tag: u32,
    name: String,
    ty: String,
    label: String,
}

fn read_dir(
    dir: &Path,
    module: &[String],
    messages: &mut BTreeMap<String, Vec<Field>>,
) -> Result<(), String> {
    let file = dir.join("mod.rs");
    let file = if file.exists() {
        file
    } else {
        dir.join("lib.rs")
    };
    if file.exists() {
        let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
        let parsed = syn::parse_file(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        read_items(&parsed.items, module, messages)?;
    }
    let entries = std::fs::read_dir(dir).map_err(|e| e.to_string())?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or("a directory name is not UTF-8")?;
            let mut sub = module.to_vec();
            sub.push(name.to_owned());
            read_dir(&path, &sub, messages)?;
        }
    }
    Ok(())
}

fn read_items(
    items: &[Item],
    module: &[String],
    messages: &mut BTreeMap<String, Vec<Field>>,
) -> Result<(), String> {
    for item in items {
        match item {
            Item::Struct(s) if is_message(&s.attrs) => {
                let mut fields = Vec::new();
                for f in &s.fields {
                    let Some(ident) = &f.ident else { continue };
                    let Some(attr) = f.attrs.iter().find(|a| a.path().is_ident("prost")) else {
                        continue;
                    };
                    let args = attr
                        .meta
                        .require_list()
                        .map_err(|e| e.to_string())?
                        .tokens
                        .to_string();
                    let name = ident.to_string().trim_start_matches("r#").to_owned();
                    let field = field(&args, &f.ty, module)
                        .map_err(|e| format!("{}.{name}: {e}", s.ident))?;
                    fields.push(Field { name, ..field });
                }
                messages.insert(definition_name(module, &s.ident.to_string()), fields);
            }
            Item::Mod(m) => {
                if let Some((_, inner)) = &m.content {
                    let mut sub = module.to_vec();
                    sub.push(m.ident.to_string());
                    read_items(inner, &sub, messages)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn is_message(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("derive")
            && a.meta
                .require_list()
                .map(|l| l.tokens.to_string().contains("Message"))
                .unwrap_or(false)
    })
}

fn definition_name(module: &[String], name: &str) -> String {
    format!("io.k8s.{}.{name}", module.join("."))
}

/// Reads `#[prost(<type>, <label>, tag = "<n>")]` and `#[prost(btree_map = "<k>, <v>", tag = "<n>")]`.
fn field(args: &str, ty: &Type, module: &[String]) -> Result<Field, String> {
    let tag = args
        .split("tag =")
        .nth(1)
        .map(|t| t.trim().trim_matches('"'))
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("no tag in `{args}`"))?;
    let first = args.split(',').next().unwrap_or_default().trim();
    let (value, label) = if first.starts_with("btree_map") {
        let kv = args
            .split('"')
            .nth(1)
            .ok_or_else(|| format!("no map types in `{args}`"))?;
        let mut kv = kv.split(',').map(str::trim);
        let key = kv.next().unwrap_or_default();
        let value = kv.next().unwrap_or_default().to_owned();
        (value, format!("Label::Map({})", scalar(key)?))
    } else {
        let label = if args.contains("repeated") {
            "Label::Repeated"
        } else {
            "Label::Single"
        };
        let value = first
            .split('=')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        (value, label.to_owned())
    };
    let ty = if value == "message" {
        format!("Ty::Message({:?})", message_type(ty, module)?)
    } else {
        scalar(&value)?
    };
    Ok(Field {
        tag,
        name: String::new(),
        ty,
        label,
    })
}

fn scalar(t: &str) -> Result<String, String> {
    Ok(match t {
        "string" => "Ty::String",
        "bytes" => "Ty::Bytes",
        "bool" => "Ty::Bool",
        "int32" => "Ty::Int32",
        "int64" => "Ty::Int64",
        "double" => "Ty::Double",
        other => return Err(format!("unsupported protobuf type {other}")),
    }
    .to_owned())
}

/// The definition name of a message field's type: the innermost path inside
/// `Option<..>`, `Vec<..>` or the value of `BTreeMap<K, ..>`, resolved against `module`.
fn message_type(ty: &Type, module: &[String]) -> Result<String, String> {
    let Type::Path(p) = ty else {
        return Err("a message field is not a path type".into());
    };
    let last = p.path.segments.last().ok_or("empty type path")?;
    let last_name = last.ident.to_string();
    if matches!(last_name.as_str(), "Option" | "Vec" | "BTreeMap" | "Box") {
        let PathArguments::AngleBracketed(args) = &last.arguments else {
            return Err(format!("{last_name} without type arguments"));
        };
        let inner = args
            .args
            .iter()
            .filter_map(|a| match a {
                GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .last()
            .ok_or("no type argument")?;
        return message_type(inner, module);
    }
    let mut path = module.to_vec();
    let segments: Vec<String> = p
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    let (name, prefix) = segments.split_last().ok_or("empty type path")?;
    for s in prefix {
        match s.as_str() {
            "super" => {
                path.pop();
            }
            "self" => {}
            "crate" => path.clear(),
            other => path.push(other.to_owned()),
        }
    }
    Ok(definition_name(&path, name))
}

fn render(messages: &BTreeMap<String, Vec<Field>>) -> String {
    let mut out = String::from(
        "// Generated by apiserver/build.rs from the k8s-pb sources. Do not edit.\n\
         /// Every protobuf message of the built-in API, sorted by definition name.\n\
         pub(crate) static MESSAGES: &[(&str, &[Field])] = &[\n",
    );
    for (name, fields) in messages {
        let _ = writeln!(out, "    ({name:?}, &[");
        for f in fields {
            let _ = writeln!(
                out,
                "        Field {{ tag: {}, name: {:?}, ty: {}, label: {} }},",
                f.tag, f.name, f.ty, f.label
            );
        }
        out.push_str("    ]),\n");
    }
    out.push_str("];\n");
    out
}
