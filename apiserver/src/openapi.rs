//! OpenAPI documents for kubectl: `/openapi/v3` (the index) and one document per
//! group-version whose PATCH operations carry `x-kubernetes-group-version-kind` and
//! an inline `fieldValidation` query parameter — which is how kubectl decides to
//! leave field validation to the server. `/openapi/v2` answers an empty document so
//! kubectl's client-side fallback never fails.
//!
//! `components.schemas` carries every kind's schema from `k8s-openapi` (upstream's
//! names and descriptions), each kind marked with `x-kubernetes-group-version-kind`
//! so `kubectl explain` finds it.

use axum::{
    extract::Path,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use k8s_openapi::{
    schemars::{JsonSchema, SchemaGenerator, generate::SchemaSettings},
    serde::{Serialize, de::DeserializeOwned},
};
use serde_json::{Map, Value, json};

use crate::{
    resources::{RESOURCES, ResourceType, groups},
    status::ApiError,
};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `GET /openapi/v3`: one entry per group-version.
pub async fn index() -> Response {
    let mut paths = Map::new();
    for (g, versions) in groups() {
        for v in versions {
            let p = gv_path(g, v);
            // The hash lets clients cache; the documents change only with the binary.
            let url = format!(
                "/openapi/v3/{p}?hash={}",
                env!("CARGO_PKG_VERSION").replace('.', "")
            );
            paths.insert(p, json!({"serverRelativeURL": url}));
        }
    }
    json(json!({"paths": paths}))
}

/// `GET /openapi/v3/api/v1`.
pub async fn core(Path(version): Path<String>) -> Response {
    document("", &version)
}

/// `GET /openapi/v3/apis/<group>/<version>`.
pub async fn grouped(Path((group, version)): Path<(String, String)>) -> Response {
    document(&group, &version)
}

/// `GET /openapi/v2`: an empty body, which kubectl treats as "nothing to validate against".
pub async fn v2() -> Response {
    let mut r = Vec::<u8>::new().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

fn json(v: Value) -> Response {
    let mut r = v.to_string().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn operation(rt: &ResourceType, verb: &str) -> Value {
    let mut parameters = vec![
        json!({"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}}),
    ];
    if matches!(verb, "patch" | "put" | "post") {
        parameters.push(json!({
            "name": "fieldValidation",
            "in": "query",
            "description": "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields.",
            "schema": {"type": "string", "uniqueItems": true}
        }));
    }
    json!({
        "operationId": format!("{verb}{}", rt.kind),
        "x-kubernetes-action": verb,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "parameters": parameters,
        "responses": {"200": {"description": "OK"}},
    })
}

/// Adds a kind's schema (and everything it refers to) to the generator.
struct AddSchema<'a>(&'a mut SchemaGenerator);

impl crate::kinds::Visitor for AddSchema<'_> {
    type Output = String;
    fn visit<T: DeserializeOwned + Serialize + JsonSchema>(self) -> String {
        self.0.subschema_for::<T>();
        T::schema_name().into_owned()
    }
}

/// The schema definitions of `kinds` and everything they refer to, by definition name.
pub(crate) fn schemas(kinds: &[&ResourceType]) -> Map<String, Value> {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut named = Vec::new();
    for rt in kinds {
        if let Some(name) = crate::kinds::visit(rt, AddSchema(&mut generator)) {
            named.push((name, *rt));
        }
    }
    let mut defs = generator.take_definitions(true);
    for (name, rt) in named {
        if let Some(Value::Object(schema)) = defs.get_mut(&name) {
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": rt.group, "version": rt.version, "kind": rt.kind}]),
            );
        }
    }
    defs.into_iter().collect()
}

fn document(group: &str, version: &str) -> Response {
    let of_gv: Vec<&ResourceType> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if of_gv.is_empty() {
        return ApiError::no_route().into_response();
    }
    let schemas = schemas(&of_gv);
    let mut paths = Map::new();
    for rt in of_gv {
        let base = format!("/{}", gv_path(group, version));
        let (collection, item) = if rt.namespaced {
            (
                format!("{base}/namespaces/{{namespace}}/{}", rt.plural),
                format!("{base}/namespaces/{{namespace}}/{}/{{name}}", rt.plural),
            )
        } else {
            (
                format!("{base}/{}", rt.plural),
                format!("{base}/{}/{{name}}", rt.plural),
            )
        };
        paths.insert(
            collection,
            json!({"get": operation(rt, "list"), "post": operation(rt, "post")}),
        );
        paths.insert(
            item,
            json!({"get": operation(rt, "get"), "put": operation(rt, "put"), "patch": operation(rt, "patch"), "delete": operation(rt, "delete")}),
        );
    }
    json(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", crate::server::KUBERNETES_VERSION.0, crate::server::KUBERNETES_VERSION.1)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
