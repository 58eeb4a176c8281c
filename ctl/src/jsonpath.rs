//! kubectl's JSONPath templates (`-o jsonpath=...`, `custom-columns`): text with
//! `{expressions}`, `{range ...}...{end}` and `{"literals"}`. Paths are read
//! the way kubectl reads them (`.metadata.labels.app\.kubernetes\.io/name`,
//! `[*]`, `[0]`, `[?(@.type=="Ready")]`, `..name`) and evaluated by
//! `serde_json_path` (RFC 9535), after each name becomes a bracketed member.

use serde_json::Value;
use serde_json_path::JsonPath;

use crate::{Error, Result};

/// A parsed template.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    Text(String),
    Path(String),
    Range(String, Vec<Node>),
}

/// A compiled template.
#[derive(Clone, Debug)]
pub struct Template {
    nodes: Vec<Node>,
}

fn bad(template: &str, why: &str) -> Error {
    Error::Usage(format!("error parsing jsonpath {template}, {why}"))
}

/// A kubectl path (`.a.b[*].c`, `..name`, `@.x`, `$`) as RFC 9535 JSONPath.
fn to_rfc(path: &str) -> Result<String> {
    let path = path.trim();
    let rest = path
        .strip_prefix('$')
        .or_else(|| path.strip_prefix('@'))
        .unwrap_or(path);
    let mut out = String::from("$");
    let chars: Vec<char> = rest.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                let recursive = chars.get(i + 1) == Some(&'.');
                i += if recursive { 2 } else { 1 };
                let mut name = String::new();
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    name.push(chars[i]);
                    i += 1;
                }
                if recursive {
                    out.push_str("..");
                }
                if name == "*" {
                    out.push_str(if recursive { "*" } else { "[*]" });
                } else if !name.is_empty() {
                    let quoted = name.replace('\\', "\\\\").replace('\'', "\\'");
                    out.push_str(&format!("['{quoted}']"));
                }
            }
            '[' => {
                // Brackets pass through whole (filters may hold brackets and quotes).
                let start = i;
                let mut depth = 0;
                let mut quote: Option<char> = None;
                while i < chars.len() {
                    let c = chars[i];
                    match quote {
                        Some(q) if c == q => quote = None,
                        Some(_) => {}
                        None if c == '\'' || c == '"' => quote = Some(c),
                        None if c == '[' => depth += 1,
                        None if c == ']' => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        None => {}
                    }
                    i += 1;
                }
                out.extend(&chars[start..i]);
            }
            _ => {
                // A bare first name (`metadata.name`).
                let mut name = String::new();
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    name.push(chars[i]);
                    i += 1;
                }
                out.push_str(&format!("['{name}']"));
            }
        }
    }
    Ok(out)
}

/// The `{...}` actions and the text between them.
fn tokens(template: &str) -> Result<Vec<(bool, String)>> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '{' {
            text.push(c);
            continue;
        }
        if !text.is_empty() {
            out.push((false, std::mem::take(&mut text)));
        }
        let mut action = String::new();
        let mut quote: Option<char> = None;
        let mut closed = false;
        for c in chars.by_ref() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c == '}' => {
                    closed = true;
                    break;
                }
                None => {}
            }
            action.push(c);
        }
        if !closed {
            return Err(bad(template, "unclosed action"));
        }
        out.push((true, action));
    }
    if !text.is_empty() {
        out.push((false, text));
    }
    Ok(out)
}

/// A `"..."` or `'...'` literal with Go's escapes.
fn literal(action: &str) -> Option<String> {
    let a = action.trim();
    let inner = a
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| a.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))?;
    Some(
        inner
            .replace("\\n", "\n")
            .replace("\\t", "\t")
            .replace("\\r", "\r")
            .replace("\\\"", "\"")
            .replace("\\\\", "\\"),
    )
}

fn parse(
    template: &str,
    tokens: &mut std::vec::IntoIter<(bool, String)>,
    nested: bool,
) -> Result<Vec<Node>> {
    let mut nodes = Vec::new();
    while let Some((action, text)) = tokens.next() {
        if !action {
            nodes.push(Node::Text(text));
            continue;
        }
        let t = text.trim();
        if t == "end" {
            return if nested {
                Ok(nodes)
            } else {
                Err(bad(template, "not in range, nothing to end"))
            };
        }
        if let Some(path) = t
            .strip_prefix("range")
            .filter(|p| p.starts_with([' ', '.', '@', '$']))
        {
            let body = parse(template, tokens, true)?;
            nodes.push(Node::Range(to_rfc(path)?, body));
        } else if let Some(l) = literal(t) {
            nodes.push(Node::Text(l));
        } else {
            nodes.push(Node::Path(to_rfc(t)?));
        }
    }
    if nested {
        return Err(bad(template, "range without end"));
    }
    Ok(nodes)
}

/// A value as kubectl prints one result: strings bare, the rest as JSON.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn query<'a>(path: &str, v: &'a Value) -> Result<Vec<&'a Value>> {
    let p =
        JsonPath::parse(path).map_err(|e| Error::Usage(format!("invalid JSONPath {path}: {e}")))?;
    Ok(p.query(v).all())
}

impl Template {
    /// Parses kubectl's template text (with or without the outer braces).
    pub fn parse(template: &str) -> Result<Self> {
        let mut tokens = tokens(template)?.into_iter();
        Ok(Self {
            nodes: parse(template, &mut tokens, false)?,
        })
    }

    /// A template of one path (`custom-columns` columns).
    pub fn path(path: &str) -> Result<Self> {
        Ok(Self {
            nodes: vec![Node::Path(to_rfc(path)?)],
        })
    }

    /// Every result of the template's paths on `v`, as kubectl prints them:
    /// results of one path separated by a space; a missing field prints
    /// nothing (kubectl's `--allow-missing-template-keys`).
    pub fn render(&self, v: &Value) -> Result<String> {
        render(&self.nodes, v)
    }

    /// Each path's results (for `custom-columns`): empty when nothing matched.
    pub fn values(&self, v: &Value) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for n in &self.nodes {
            if let Node::Path(p) = n {
                out.extend(query(p, v)?.into_iter().map(text_of));
            }
        }
        Ok(out)
    }
}

fn render(nodes: &[Node], v: &Value) -> Result<String> {
    let mut out = String::new();
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Path(p) => {
                let found = query(p, v)?;
                out.push_str(&found.into_iter().map(text_of).collect::<Vec<_>>().join(" "));
            }
            Node::Range(p, body) => {
                for item in query(p, v)? {
                    // A range over one array walks its elements.
                    match item {
                        Value::Array(items) => {
                            for i in items {
                                out.push_str(&render(body, i)?);
                            }
                        }
                        other => out.push_str(&render(body, other)?),
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn list() -> Value {
        json!({"kind": "List", "items": [
            {"metadata": {"name": "a", "labels": {"app.kubernetes.io/name": "web", "pod-template-hash": "x"}},
             "status": {"conditions": [{"type": "Ready", "status": "True"}], "podIP": "10.0.0.1"}},
            {"metadata": {"name": "b", "labels": {}}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
        ]})
    }

    #[test]
    fn templates_read_like_kubectls() {
        let v = list();
        let r = |t: &str| Template::parse(t).unwrap().render(&v).unwrap();
        assert_eq!(r("{.items[*].metadata.name}"), "a b");
        assert_eq!(r("{.items[0].metadata.name}"), "a");
        assert_eq!(
            r(
                r#"{range .items[*]}{.metadata.name}{"\t"}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#
            ),
            "a\tTrue\nb\tFalse\n"
        );
        assert_eq!(
            r(r"{.items[0].metadata.labels.app\.kubernetes\.io/name}"),
            "web"
        );
        assert_eq!(r("{.items[0].metadata.labels.pod-template-hash}"), "x");
        assert_eq!(r("names: {..name}"), "names: a b");
        assert_eq!(r("{.kind}"), "List");
        assert_eq!(r("{.items[1].metadata.labels}"), "{}");
        assert!(Template::parse("{.items[*]").is_err());
        assert!(Template::parse("{range .items[*]}{.x}").is_err());
        assert_eq!(r("{.missing}"), "");
        assert_eq!(r(r#"{range.items[*]}{.metadata.name};{end}"#), "a;b;");
    }
}
