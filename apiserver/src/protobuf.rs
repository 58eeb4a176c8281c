//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`),
//! transcoded into the JSON objects the rest of the server handles.
//!
//! kubectl's typed commands (`kubectl create namespace|configmap|secret|deployment|
//! service|job ...`) send their objects this way. A body is the magic `k8s\0`
//! followed by a `runtime.Unknown` envelope: the object's apiVersion and kind, and
//! the object's own message. The message schemas (field numbers and wire types)
//! are derived at build time from the `k8s-pb` crate (`build.rs`); the JSON names
//! of the fields come from the k8s-openapi schemas of the same kinds, matched by
//! name without case or underscores (prost turns `hostIPC` into `host_ipc`).
//!
//! Decoding follows the Go server's: unknown field numbers are skipped, as Go's
//! generated unmarshalers do; scalar strings left empty are dropped, since Go
//! always encodes its non-pointer strings and an empty one means "unset"; a zero
//! `Time` is absent. Kubernetes' special types become their JSON forms: `Time`
//! and `MicroTime` RFC 3339 strings, `Quantity` a string, `IntOrString` a number
//! or a string, `RawExtension` and `FieldsV1` their embedded JSON, `Duration` Go's
//! duration string, `bytes` base64.

use std::{collections::HashMap, sync::LazyLock};

use base64::Engine as _;
use prost::{
    bytes::Buf,
    encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field},
};
use serde_json::{Map, Value, json};

use crate::{resources::RESOURCES, status::ApiError};

/// The protobuf media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// What every Kubernetes protobuf body starts with.
const MAGIC: &[u8] = b"k8s\0";

/// Nesting deeper than this is refused (Kubernetes objects nest about 15 deep).
const MAX_DEPTH: u32 = 64;

const TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
const INT_OR_STRING: &str = "io.k8s.apimachinery.pkg.util.intstr.IntOrString";
const RAW_EXTENSION: &str = "io.k8s.apimachinery.pkg.runtime.RawExtension";

/// A field's value type.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ty {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    Double,
    /// A message, by its definition name.
    Message(&'static str),
}

/// How often a field occurs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Label {
    Single,
    Repeated,
    /// A map with keys of this type; the field's `ty` is the value type.
    Map(Ty),
}

/// One field of a message.
#[derive(Debug)]
pub(crate) struct Field {
    tag: u32,
    /// prost's (snake_case) name.
    name: &'static str,
    ty: Ty,
    label: Label,
}

include!(concat!(env!("OUT_DIR"), "/protobuf_schema.rs"));

/// Decodes a protobuf request body into a JSON object with `apiVersion` and `kind`.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    envelope(body, 0)
}

/// A `k8s\0` envelope at `depth` (a `RawExtension` may hold another one).
fn envelope(body: &[u8], depth: u32) -> Result<Value, ApiError> {
    let mut buf = body.strip_prefix(MAGIC).ok_or_else(|| {
        ApiError::bad_request("the protobuf body does not start with the Kubernetes magic k8s\\0")
    })?;
    let (mut api_version, mut kind, mut raw, mut encoding) =
        (String::new(), String::new(), &[][..], String::new());
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).map_err(malformed)?;
        match (tag, wire) {
            (1, WireType::LengthDelimited) => {
                let mut type_meta = length_delimited(&mut buf)?;
                while type_meta.has_remaining() {
                    let (tag, wire) = decode_key(&mut type_meta).map_err(malformed)?;
                    match (tag, wire) {
                        (1, WireType::LengthDelimited) => api_version = string(&mut type_meta)?,
                        (2, WireType::LengthDelimited) => kind = string(&mut type_meta)?,
                        _ => skip(wire, tag, &mut type_meta)?,
                    }
                }
            }
            (2, WireType::LengthDelimited) => raw = length_delimited(&mut buf)?,
            (3, WireType::LengthDelimited) => encoding = string(&mut buf)?,
            _ => skip(wire, tag, &mut buf)?,
        }
    }
    if !encoding.is_empty() {
        return Err(ApiError::bad_request(format!(
            "protobuf bodies with contentEncoding {encoding:?} are not supported"
        )));
    }
    let definition = definition(&api_version, &kind)?;
    let mut obj = message(definition, raw, depth)?;
    if let Value::Object(o) = &mut obj {
        o.insert("apiVersion".into(), json!(api_version));
        o.insert("kind".into(), json!(kind));
    }
    Ok(obj)
}

/// The message of a built-in kind: `apps/v1` `Deployment` → `io.k8s.api.apps.v1.Deployment`.
fn definition(api_version: &str, kind: &str) -> Result<&'static str, ApiError> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    // The proto packages are named for the group's first label (`k8s.io.api.discovery.v1`).
    let package = match group {
        "" => "core",
        g => g.split('.').next().unwrap_or(g),
    };
    let name = format!("io.k8s.api.{package}.{version}.{kind}");
    lookup(&name).map(|(n, _)| n).ok_or_else(|| {
        ApiError::bad_request(format!(
            "no protobuf message for {kind} in {api_version:?}; send the object as JSON"
        ))
    })
}

fn lookup(definition: &str) -> Option<(&'static str, &'static [Field])> {
    MESSAGES
        .binary_search_by(|(n, _)| (*n).cmp(definition))
        .ok()
        .map(|i| MESSAGES[i])
}

/// `host_ipc` and `hostIPC` both become `hostipc`.
fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// For every definition in the served kinds' schemas, by folded definition name
/// (prost also renames messages: `IngressTLS` is `IngressTls`), folded field name →
/// JSON name.
static JSON_NAMES: LazyLock<HashMap<String, HashMap<String, String>>> = LazyLock::new(|| {
    let all: Vec<_> = RESOURCES.iter().collect();
    crate::openapi::schemas(&all)
        .into_iter()
        .map(|(definition, schema)| {
            let names = schema["properties"]
                .as_object()
                .map(|p| p.keys().map(|k| (fold(k), k.clone())).collect())
                .unwrap_or_default();
            (fold(&definition), names)
        })
        .collect()
});

/// How a message field appears in JSON.
enum Resolution<'a> {
    /// Under this name.
    Named(&'a String),
    /// Flattened into its parent: Go's `json:",inline"` structs (a Probe's handler,
    /// a Volume's source) are fields in protobuf.
    Inline(&'static str),
    /// Not at all: a field newer than this API version, skipped as Go's
    /// unmarshalers skip unknown fields.
    Unknown,
}

/// Resolves `field` among the JSON names of `json_definition` (the message's own
/// definition, or the one it is inlined into).
fn resolve(json_definition: &str, field: &Field) -> Resolution<'static> {
    let Some(names) = JSON_NAMES.get(&fold(json_definition)) else {
        return Resolution::Unknown;
    };
    if let Some(name) = names.get(&fold(field.name)) {
        return Resolution::Named(name);
    }
    match (field.ty, field.label) {
        (Ty::Message(inner), Label::Single)
            if lookup(inner)
                .is_some_and(|(_, fs)| fs.iter().any(|f| names.contains_key(&fold(f.name)))) =>
        {
            Resolution::Inline(inner)
        }
        _ => Resolution::Unknown,
    }
}

fn message(definition: &str, buf: &[u8], depth: u32) -> Result<Value, ApiError> {
    message_named_as(definition, definition, buf, depth)
}

/// Decodes a `definition` message whose fields take their JSON names from
/// `json_definition` (itself, or the parent it is inlined into).
fn message_named_as(
    definition: &str,
    json_definition: &str,
    mut buf: &[u8],
    depth: u32,
) -> Result<Value, ApiError> {
    if depth > MAX_DEPTH {
        return Err(ApiError::bad_request("the protobuf body nests too deeply"));
    }
    if let Some(v) = special(definition, buf, depth)? {
        return Ok(v);
    }
    let (_, fields) =
        lookup(definition).ok_or_else(|| malformed(format!("unknown message {definition}")))?;
    let mut obj = Map::new();
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).map_err(malformed)?;
        let Some(field) = fields.iter().find(|f| f.tag == tag) else {
            skip(wire, tag, &mut buf)?;
            continue;
        };
        let name = match resolve(json_definition, field) {
            Resolution::Named(name) => name,
            Resolution::Inline(inner) => {
                let raw = length_delimited(&mut buf)?;
                let inner = message_named_as(inner, json_definition, raw, depth + 1)?;
                if let Value::Object(inner) = inner {
                    obj.extend(inner);
                }
                continue;
            }
            Resolution::Unknown => {
                skip(wire, tag, &mut buf)?;
                continue;
            }
        };
        match field.label {
            Label::Single => match value(field.ty, wire, &mut buf, depth)? {
                Some(v) => {
                    obj.insert(name.clone(), v);
                }
                None => {
                    obj.remove(name);
                }
            },
            Label::Repeated => {
                let list = obj.entry(name.clone()).or_insert_with(|| json!([]));
                let Value::Array(list) = list else {
                    return Err(malformed("a repeated field is also a single one"));
                };
                let packable = !matches!(field.ty, Ty::String | Ty::Bytes | Ty::Message(_));
                if packable && wire == WireType::LengthDelimited {
                    let mut packed = length_delimited(&mut buf)?;
                    while packed.has_remaining() {
                        list.push(scalar(field.ty, wire_of(field.ty), &mut packed)?);
                    }
                } else {
                    let v = match field.ty {
                        Ty::Message(d) => message(d, length_delimited(&mut buf)?, depth + 1)?,
                        ty => scalar(ty, wire, &mut buf)?,
                    };
                    list.push(v);
                }
            }
            Label::Map(key_ty) => {
                let (k, v) = map_entry(key_ty, field.ty, length_delimited(&mut buf)?, depth)?;
                let map = obj.entry(name.clone()).or_insert_with(|| json!({}));
                if let Value::Object(map) = map {
                    map.insert(k, v);
                }
            }
        }
    }
    Ok(Value::Object(obj))
}

/// One `{key = 1, value = 2}` entry of a map field; absent parts take their zero value.
fn map_entry(
    key_ty: Ty,
    value_ty: Ty,
    mut buf: &[u8],
    depth: u32,
) -> Result<(String, Value), ApiError> {
    let (mut key, mut value) = (None, None);
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).map_err(malformed)?;
        match tag {
            1 => key = Some(scalar(key_ty, wire, &mut buf)?),
            2 => {
                value = Some(match value_ty {
                    Ty::Message(d) => message(d, length_delimited(&mut buf)?, depth + 1)?,
                    ty => scalar(ty, wire, &mut buf)?,
                })
            }
            _ => skip(wire, tag, &mut buf)?,
        }
    }
    let key = match key {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let value = match (value, value_ty) {
        (Some(v), _) => v,
        (None, Ty::Message(d)) => message(d, &[], depth + 1)?,
        (None, Ty::String | Ty::Bytes) => json!(""),
        (None, Ty::Bool) => json!(false),
        (None, _) => json!(0),
    };
    Ok((key, value))
}

/// A single field's value; `None` for what Go would leave unset (an empty string,
/// a zero time).
fn value(ty: Ty, wire: WireType, buf: &mut &[u8], depth: u32) -> Result<Option<Value>, ApiError> {
    match ty {
        Ty::Message(d) => {
            let v = message(d, length_delimited(buf)?, depth + 1)?;
            Ok((!v.is_null()).then_some(v))
        }
        Ty::String => {
            let s = string(buf)?;
            Ok((!s.is_empty()).then_some(Value::String(s)))
        }
        ty => scalar(ty, wire, buf).map(Some),
    }
}

fn wire_of(ty: Ty) -> WireType {
    match ty {
        Ty::Double => WireType::SixtyFourBit,
        Ty::Bool | Ty::Int32 | Ty::Int64 => WireType::Varint,
        Ty::String | Ty::Bytes | Ty::Message(_) => WireType::LengthDelimited,
    }
}

fn scalar(ty: Ty, wire: WireType, buf: &mut &[u8]) -> Result<Value, ApiError> {
    if wire != wire_of(ty) {
        return Err(malformed(format!("wire type {wire:?} for a {ty:?} field")));
    }
    Ok(match ty {
        Ty::String => Value::String(string(buf)?),
        Ty::Bytes => {
            json!(base64::engine::general_purpose::STANDARD.encode(length_delimited(buf)?))
        }
        Ty::Bool => json!(varint(buf)? != 0),
        // Negative int32s travel as ten-byte varints of their sign extension.
        Ty::Int32 => json!(varint(buf)? as i64 as i32),
        Ty::Int64 => json!(varint(buf)? as i64),
        Ty::Double => {
            if buf.remaining() < 8 {
                return Err(malformed("a double field is cut short"));
            }
            json!(buf.get_f64_le())
        }
        Ty::Message(_) => return Err(malformed("a message where a scalar was expected")),
    })
}

/// Kubernetes' types with their own JSON forms; `None` for ordinary messages.
/// `Some(Value::Null)` means absent (a zero time).
fn special(definition: &str, buf: &[u8], depth: u32) -> Result<Option<Value>, ApiError> {
    let fields = || fields_of(buf);
    Ok(Some(match definition {
        TIME | MICRO_TIME => {
            let f = fields()?;
            let (seconds, nanos) = (f.int(1), f.int(2));
            if seconds == 0 && nanos == 0 {
                return Ok(Some(Value::Null));
            }
            let t = jiff::Timestamp::new(seconds, 0)
                .map_err(|e| malformed(format!("a time out of range: {e}")))?;
            let base = t.strftime("%Y-%m-%dT%H:%M:%S").to_string();
            if definition == MICRO_TIME {
                json!(format!("{base}.{:06}Z", nanos / 1000))
            } else {
                json!(format!("{base}Z"))
            }
        }
        DURATION => json!(go_duration(fields()?.int(1))),
        QUANTITY => json!(fields()?.string(1)?),
        INT_OR_STRING => {
            let f = fields()?;
            if f.int(1) == 1 {
                json!(f.string(3)?)
            } else {
                json!(f.int(2) as i32)
            }
        }
        RAW_EXTENSION | FIELDS_V1 => {
            let raw = fields()?.bytes(1);
            if raw.is_empty() {
                return Ok(Some(Value::Null));
            }
            if raw.starts_with(MAGIC) {
                envelope(raw, depth + 1)?
            } else {
                serde_json::from_slice(raw)
                    .map_err(|e| malformed(format!("embedded object is not JSON: {e}")))?
            }
        }
        _ => return Ok(None),
    }))
}

/// The raw fields of a small message, by number (last one wins, as in protobuf).
struct RawFields<'a>(HashMap<u32, RawValue<'a>>);

enum RawValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn fields_of(mut buf: &[u8]) -> Result<RawFields<'_>, ApiError> {
    let mut fields = HashMap::new();
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).map_err(malformed)?;
        match wire {
            WireType::Varint => {
                fields.insert(tag, RawValue::Varint(varint(&mut buf)?));
            }
            WireType::LengthDelimited => {
                fields.insert(tag, RawValue::Bytes(length_delimited(&mut buf)?));
            }
            _ => skip(wire, tag, &mut buf)?,
        }
    }
    Ok(RawFields(fields))
}

impl<'a> RawFields<'a> {
    fn int(&self, tag: u32) -> i64 {
        match self.0.get(&tag) {
            Some(RawValue::Varint(v)) => *v as i64,
            _ => 0,
        }
    }

    fn bytes(&self, tag: u32) -> &'a [u8] {
        match self.0.get(&tag) {
            Some(RawValue::Bytes(b)) => b,
            _ => &[],
        }
    }

    fn string(&self, tag: u32) -> Result<String, ApiError> {
        String::from_utf8(self.bytes(tag).to_vec()).map_err(|_| malformed("a string is not UTF-8"))
    }
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `1.5ms`, `0s`.
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let trim = |whole: u64, frac: u64, digits: usize| {
        let frac = format!("{frac:0digits$}");
        let frac = frac.trim_end_matches('0');
        if frac.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{frac}")
        }
    };
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}µs", trim(n / 1_000, n % 1_000, 3));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}ms", trim(n / 1_000_000, n % 1_000_000, 6));
    }
    let (h, rest) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
    let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let s = trim(rest / 1_000_000_000, rest % 1_000_000_000, 9);
    match (h, m) {
        (0, 0) => format!("{sign}{s}s"),
        (0, m) => format!("{sign}{m}m{s}s"),
        (h, m) => format!("{sign}{h}h{m}m{s}s"),
    }
}

fn varint(buf: &mut &[u8]) -> Result<u64, ApiError> {
    decode_varint(buf).map_err(malformed)
}

fn length_delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], ApiError> {
    let len = usize::try_from(varint(buf)?).map_err(malformed)?;
    if buf.len() < len {
        return Err(malformed("a length-delimited field runs past the end"));
    }
    let (head, tail) = buf.split_at(len);
    *buf = tail;
    Ok(head)
}

fn string(buf: &mut &[u8]) -> Result<String, ApiError> {
    String::from_utf8(length_delimited(buf)?.to_vec())
        .map_err(|_| malformed("a string is not UTF-8"))
}

fn skip(wire: WireType, tag: u32, buf: &mut &[u8]) -> Result<(), ApiError> {
    skip_field(wire, tag, buf, DecodeContext::default()).map_err(malformed)
}

fn malformed(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("the protobuf body is malformed: {e}"))
}

#[cfg(test)]
mod tests {
    use k8s_pb::{
        api::{apps::v1 as apps, core::v1 as core},
        apimachinery::pkg::{
            api::resource::Quantity,
            apis::meta::v1::{LabelSelector, ObjectMeta, Time},
            runtime::{TypeMeta, Unknown},
            util::intstr::IntOrString,
        },
    };
    use proptest::prelude::*;
    use prost::Message;

    use super::*;

    /// What client-go sends: the magic, then a `runtime.Unknown` holding the object.
    fn envelope_of(api_version: &str, kind: &str, object: &impl Message) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(object.encode_to_vec()),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        body
    }

    /// Go encodes its non-pointer strings even when empty, and a zero Time as an
    /// empty message: these must come out absent.
    fn go_meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            generate_name: Some(String::new()),
            namespace: Some(String::new()),
            resource_version: Some(String::new()),
            creation_timestamp: Some(Time::default()),
            ..Default::default()
        }
    }

    #[test]
    fn a_configmap_decodes_to_its_json() {
        let cm = core::ConfigMap {
            metadata: Some(go_meta("settings")),
            data: [
                ("mode".to_owned(), "fast".to_owned()),
                ("empty".to_owned(), String::new()),
            ]
            .into(),
            binary_data: [("blob".to_owned(), vec![0, 1, 2, 255])].into(),
            immutable: None,
        };
        let obj = decode(&envelope_of("v1", "ConfigMap", &cm)).unwrap();
        assert_eq!(
            obj,
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "settings"},
                "data": {"mode": "fast", "empty": ""},
                "binaryData": {"blob": "AAEC/w=="},
            })
        );
    }

    #[test]
    fn a_deployment_keeps_numbers_quantities_and_int_or_strings() {
        let labels: std::collections::BTreeMap<String, String> =
            [("app".to_owned(), "web".to_owned())].into();
        let container = core::Container {
            name: Some("web".into()),
            image: Some("nginx".into()),
            image_pull_policy: Some(String::new()),
            ports: vec![core::ContainerPort {
                container_port: Some(8080),
                host_port: Some(0),
                protocol: Some("TCP".into()),
                ..Default::default()
            }],
            resources: Some(core::ResourceRequirements {
                limits: [(
                    "memory".to_owned(),
                    Quantity {
                        string: Some("64Mi".into()),
                    },
                )]
                .into(),
                ..Default::default()
            }),
            readiness_probe: Some(core::Probe {
                handler: Some(core::ProbeHandler {
                    http_get: Some(core::HttpGetAction {
                        path: Some("/readyz".into()),
                        port: Some(IntOrString {
                            r#type: Some(1),
                            int_val: Some(0),
                            str_val: Some("http".into()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let d = apps::Deployment {
            metadata: Some(go_meta("web")),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(0),
                selector: Some(LabelSelector {
                    match_labels: labels.clone(),
                    ..Default::default()
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels,
                        ..Default::default()
                    }),
                    spec: Some(core::PodSpec {
                        containers: vec![container],
                        host_ipc: Some(false),
                        ..Default::default()
                    }),
                }),
                strategy: Some(apps::DeploymentStrategy {
                    rolling_update: Some(apps::RollingUpdateDeployment {
                        max_surge: Some(IntOrString {
                            r#type: Some(0),
                            int_val: Some(2),
                            str_val: Some(String::new()),
                        }),
                        max_unavailable: Some(IntOrString {
                            r#type: Some(1),
                            int_val: Some(0),
                            str_val: Some("25%".into()),
                        }),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(apps::DeploymentStatus::default()),
        };
        let obj = decode(&envelope_of("apps/v1", "Deployment", &d)).unwrap();
        let spec = &obj["spec"];
        assert_eq!(spec["replicas"], json!(0), "an explicit zero stays");
        assert_eq!(
            spec["strategy"]["rollingUpdate"],
            json!({"maxSurge": 2, "maxUnavailable": "25%"})
        );
        let c = &spec["template"]["spec"]["containers"][0];
        assert_eq!(c["resources"]["limits"]["memory"], json!("64Mi"));
        assert_eq!(
            c["ports"][0],
            json!({"containerPort": 8080, "hostPort": 0, "protocol": "TCP"})
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"],
            json!({"path": "/readyz", "port": "http"})
        );
        assert!(
            c.get("imagePullPolicy").is_none(),
            "empty strings are unset: {c}"
        );
        assert_eq!(
            spec["template"]["spec"]["hostIPC"],
            json!(false),
            "acronyms keep their JSON names"
        );
        assert_eq!(obj["status"], json!({}));
        // The result is a valid typed object.
        let typed: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(obj).unwrap();
        assert_eq!(typed.metadata.name.as_deref(), Some("web"));
    }

    #[test]
    fn times_are_rfc3339() {
        let ev_time = k8s_pb::apimachinery::pkg::apis::meta::v1::MicroTime {
            seconds: Some(1_700_000_000),
            nanos: Some(123_456_789),
        };
        let lease = k8s_pb::api::coordination::v1::Lease {
            metadata: Some(ObjectMeta {
                name: Some("n1".into()),
                creation_timestamp: Some(Time {
                    seconds: Some(1_700_000_000),
                    nanos: Some(5),
                }),
                ..Default::default()
            }),
            spec: Some(k8s_pb::api::coordination::v1::LeaseSpec {
                renew_time: Some(ev_time),
                lease_duration_seconds: Some(40),
                ..Default::default()
            }),
        };
        let obj = decode(&envelope_of("coordination.k8s.io/v1", "Lease", &lease)).unwrap();
        assert_eq!(
            obj["metadata"]["creationTimestamp"],
            json!("2023-11-14T22:13:20Z")
        );
        assert_eq!(
            obj["spec"]["renewTime"],
            json!("2023-11-14T22:13:20.123456Z")
        );
        assert_eq!(obj["spec"]["leaseDurationSeconds"], json!(40));
    }

    #[test]
    fn secrets_carry_bytes_as_base64_and_services_ports() {
        let secret = core::Secret {
            metadata: Some(go_meta("pw")),
            data: [("password".to_owned(), b"s3cr\xff".to_vec())].into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let obj = decode(&envelope_of("v1", "Secret", &secret)).unwrap();
        assert_eq!(obj["data"], json!({"password": "czNjcv8="}));
        assert_eq!(obj["type"], json!("Opaque"));

        let svc = core::Service {
            metadata: Some(go_meta("web")),
            spec: Some(core::ServiceSpec {
                ports: vec![core::ServicePort {
                    name: Some("5678-8080".into()),
                    protocol: Some("TCP".into()),
                    port: Some(5678),
                    target_port: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(8080),
                        str_val: Some(String::new()),
                    }),
                    node_port: Some(0),
                    ..Default::default()
                }],
                selector: [("app".to_owned(), "web".to_owned())].into(),
                r#type: Some("ClusterIP".into()),
                cluster_ip: Some(String::new()),
                ..Default::default()
            }),
            status: Some(core::ServiceStatus::default()),
        };
        let obj = decode(&envelope_of("v1", "Service", &svc)).unwrap();
        assert_eq!(
            obj["spec"],
            json!({"ports": [{"name": "5678-8080", "protocol": "TCP", "port": 5678, "targetPort": 8080, "nodePort": 0}],
                   "selector": {"app": "web"}, "type": "ClusterIP"})
        );
    }

    #[test]
    fn unknown_fields_are_skipped_and_bad_bodies_refused() {
        let mut raw = core::Namespace {
            metadata: Some(go_meta("ns1")),
            ..Default::default()
        }
        .encode_to_vec();
        // Field 99, a varint: a newer client's field this server does not know.
        raw.extend([0x98, 0x06, 0x01]);
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".into()),
                kind: Some("Namespace".into()),
            }),
            raw: Some(raw),
            ..Default::default()
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        assert_eq!(decode(&body).unwrap()["metadata"], json!({"name": "ns1"}));

        for bad in [&b"{}"[..], b"k8s\0\x0a\x05ab", b"k8s\0\x12\x7f"] {
            assert_eq!(decode(bad).unwrap_err().code, 400, "{bad:?}");
        }
        let widget = envelope_of("v1", "Widget", &core::Namespace::default());
        assert!(
            decode(&widget)
                .unwrap_err()
                .message
                .contains("no protobuf message for Widget")
        );
    }

    #[test]
    fn go_durations() {
        for (n, s) in [
            (0, "0s"),
            (1_500_000, "1.5ms"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (-2_000_000_000, "-2s"),
        ] {
            assert_eq!(go_duration(n), s);
        }
    }

    /// Every JSON property of every definition a served kind reaches has a protobuf
    /// field that decodes to it, so nothing a client sends is silently lost. (The
    /// other way round does not hold: k8s-pb may know fields newer than the API
    /// served, which are skipped as Go skips unknown fields.)
    #[test]
    fn every_json_property_has_a_protobuf_field() {
        let mut todo: Vec<(String, String)> = RESOURCES
            .iter()
            .map(|rt| {
                let d = definition(&rt.api_version(), rt.kind)
                    .expect("every served kind has a protobuf message");
                (d.to_owned(), d.to_owned())
            })
            .collect();
        let mut decoded: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        while let Some((d, json_d)) = todo.pop() {
            if !seen.insert((d.clone(), json_d.clone()))
                || [
                    TIME,
                    MICRO_TIME,
                    DURATION,
                    FIELDS_V1,
                    QUANTITY,
                    INT_OR_STRING,
                    RAW_EXTENSION,
                ]
                .contains(&d.as_str())
            {
                continue;
            }
            let entry = decoded.entry(fold(&json_d)).or_default();
            let (_, fields) = lookup(&d).unwrap();
            for f in fields {
                match resolve(&json_d, f) {
                    Resolution::Named(name) => {
                        entry.insert(name.clone());
                        if let Ty::Message(m) = f.ty {
                            todo.push((m.to_owned(), m.to_owned()));
                        }
                    }
                    Resolution::Inline(m) => todo.push((m.to_owned(), json_d.clone())),
                    Resolution::Unknown => {}
                }
            }
        }
        let mut missing = Vec::new();
        for (d, names) in &decoded {
            for json in JSON_NAMES[d].values() {
                if !names.contains(json) && !["apiVersion", "kind"].contains(&json.as_str()) {
                    missing.push(format!("{d}.{json}"));
                }
            }
        }
        missing.sort();
        assert!(decoded.len() > 100, "{} definitions reached", decoded.len());
        assert!(
            missing.is_empty(),
            "JSON properties no protobuf field decodes to: {missing:#?}"
        );
    }

    proptest! {
        /// Arbitrary bytes after the magic never panic the decoder.
        #[test]
        fn arbitrary_protobuf_is_refused_cleanly(tail in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut body = MAGIC.to_vec();
            body.extend(tail);
            if let Err(e) = decode(&body) {
                prop_assert_eq!(e.code, 400);
            }
        }

        /// A real Deployment with one byte changed decodes or is refused, never panics.
        #[test]
        fn corrupted_deployments_are_refused_cleanly(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let d = apps::Deployment { metadata: Some(go_meta("web")), ..Default::default() };
            let mut body = envelope_of("apps/v1", "Deployment", &d);
            let i = at.index(body.len());
            body[i] = byte;
            if let Err(e) = decode(&body) {
                prop_assert_eq!(e.code, 400);
            }
        }
    }
}
