//! The generic REST handler: create, get, list, watch, update, patch, delete and
//! deletecollection for every kind in [`crate::resources::RESOURCES`], over the
//! [`Store`](crate::storage::Store).
//!
//! Objects are handled as JSON values and stored as JSON without
//! `metadata.resourceVersion`: the resourceVersion a client sees is always the
//! store's mod revision, so it can never disagree with the store.

use sextant_metrics::traces::{self, KeyValue, TraceExemplar};
use std::{collections::BTreeMap, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    resources::{self, ResourceType},
    selectors::{FieldSelector, LabelSelector},
    server::AppState,
    service_allocation::Ranges,
    status::{ApiError, Cause},
    storage::{self, ListOptions, Revision},
    table, validation,
};

/// Largest accepted request body, as upstream (3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

type ApiResult<T = Response> = Result<T, ApiError>;

/// Query parameters of resource requests (upstream's `ListOptions`,
/// `CreateOptions`, `DeleteOptions`, ... as query).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    watch: Option<String>,
    resource_version: Option<String>,
    resource_version_match: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    timeout_seconds: Option<u64>,
    /// What Table rows carry: `None`, `Metadata` (default) or `Object`.
    include_object: Option<String>,
    /// Delete's `propagationPolicy` as a query parameter.
    propagation_policy: Option<String>,
    allow_watch_bookmarks: Option<bool>,
    dry_run: Option<String>,
    field_validation: Option<String>,
    grace_period_seconds: Option<i64>,
}

impl Params {
    fn is_watch(&self) -> bool {
        matches!(self.watch.as_deref(), Some("true" | "1"))
    }
    fn is_dry_run(&self) -> bool {
        self.dry_run.as_deref() == Some("All")
    }
}

/// The path parts of a resource request, after `/api/v1` or `/apis/<g>/<v>`.
#[derive(Debug)]
struct Target {
    rt: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn target(group: &str, version: &str, rest: &str) -> ApiResult<Target> {
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let (namespace, parts) = match parts.as_slice() {
        ["namespaces", ns, resource, tail @ ..] if !matches!(*resource, "status" | "finalize") => {
            let mut v = vec![*resource];
            v.extend_from_slice(tail);
            (Some((*ns).to_owned()), v)
        }
        other => (None, other.to_vec()),
    };
    let plural = parts.first().ok_or_else(ApiError::no_route)?;
    let rt = resources::find(group, version, plural).ok_or_else(ApiError::no_route)?;
    if parts.len() > 3 || (rt.namespaced != namespace.is_some() && parts.len() > 1) {
        return Err(ApiError::no_route());
    }
    if !rt.namespaced && namespace.is_some() {
        return Err(ApiError::no_route());
    }
    Ok(Target {
        rt,
        namespace,
        name: parts.get(1).map(|s| (*s).to_owned()),
        subresource: parts.get(2).map(|s| (*s).to_owned()),
    })
}

/// Handler for `/api/v1/*rest`.
pub async fn core(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    method: Method,
    Query(params): Query<Params>,
    axum::extract::RawQuery(raw_query): axum::extract::RawQuery,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    // The pod subresources the pod's kubelet serves.
    let path: Vec<&str> = rest.split('/').collect();
    if let [
        "namespaces",
        namespace,
        "pods",
        name,
        sub @ ("log" | "exec" | "attach" | "portforward"),
    ] = path.as_slice()
    {
        let result = if *sub == "log" {
            if method != Method::GET {
                return ApiError::method_not_allowed(format!(
                    "{method} is not supported on pods/log"
                ))
                .into_response();
            }
            crate::kubelet_proxy::pod_log(
                &state.store,
                &state.kubelet,
                namespace,
                name,
                raw_query.as_deref(),
            )
            .await
        } else {
            crate::kubelet_proxy::pod_stream(
                &state.store,
                &state.kubelet,
                namespace,
                name,
                sub,
                raw_query.as_deref(),
                &headers,
                parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
            )
            .await
        };
        return result.unwrap_or_else(IntoResponse::into_response);
    }
    if let ["nodes", name, "proxy", tail @ ..] = path.as_slice() {
        if method != Method::GET {
            return ApiError::method_not_allowed(format!(
                "{method} is not supported on nodes/proxy"
            ))
            .into_response();
        }
        return crate::kubelet_proxy::node_proxy(
            &state.store,
            &state.kubelet,
            name,
            &tail.join("/"),
            raw_query.as_deref(),
        )
        .await
        .unwrap_or_else(IntoResponse::into_response);
    }
    dispatch(state, "", "v1", &rest, method, params, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Handler for `/apis/<group>/<version>/*rest`.
pub async fn grouped(
    State(state): State<AppState>,
    Path((group, version, rest)): Path<(String, String, String)>,
    method: Method,
    Query(params): Query<Params>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    dispatch(
        state, &group, &version, &rest, method, params, headers, body,
    )
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

#[allow(clippy::too_many_arguments)] // The axum extractors, passed on as they come.
async fn dispatch(
    state: AppState,
    group: &str,
    version: &str,
    rest: &str,
    method: Method,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let t = target(group, version, rest)?;
    // Read here rather than with axum's limit so an oversized body gets a Status.
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::too_large(MAX_BODY))?;
    let is_pod = t.rt.group.is_empty() && t.rt.kind == "Pod";
    let is_namespace = t.rt.group.is_empty() && t.rt.kind == "Namespace";
    if let Some(sub) = &t.subresource
        && !(sub == "status" && t.rt.has_status)
        && !(sub == "scale" && t.rt.has_scale())
        && !(is_pod && matches!(sub.as_str(), "binding" | "eviction"))
        && !(is_namespace && sub == "finalize")
    {
        return Err(ApiError::no_route());
    }
    let h = Handler {
        state,
        t,
        params,
        headers,
        warnings: Default::default(),
    };
    match (h.t.subresource.as_deref(), &method) {
        (Some("binding"), &Method::POST) => return h.bind(&body).await,
        (Some("eviction"), &Method::POST) => return h.evict(&body).await,
        (Some("binding" | "eviction"), m) => {
            return Err(ApiError::method_not_allowed(format!(
                "{m} is not supported; use POST"
            )));
        }
        _ => {}
    }
    if h.t.subresource.as_deref() == Some("finalize") {
        return match method {
            Method::PUT => h.finalize(&body).await,
            m => Err(ApiError::method_not_allowed(format!(
                "{m} is not supported on namespaces/finalize"
            ))),
        };
    }
    if h.t.subresource.as_deref() == Some("scale") {
        return match method {
            Method::GET | Method::PUT | Method::PATCH => h.scale(&method, &body).await,
            m => Err(ApiError::method_not_allowed(format!(
                "{m} is not supported on scale"
            ))),
        };
    }
    match (method, h.t.name.is_some()) {
        (Method::GET, false) if h.params.is_watch() => h.watch().await,
        (Method::GET, false) => h.list().await,
        (Method::GET, true) if h.params.is_watch() => h.watch().await,
        (Method::GET, true) => h.get().await,
        (Method::POST, false) => h.create(&body).await,
        (Method::PUT, true) => h.update(&body).await,
        (Method::PATCH, true) => h.patch(&body).await,
        (Method::DELETE, true) => h.delete(&body).await,
        (Method::DELETE, false) => h.delete_collection().await,
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "{m} is not supported on this path"
        ))),
    }
}

struct Handler {
    state: AppState,
    t: Target,
    params: Params,
    headers: HeaderMap,
    /// Warnings for the response (unknown fields under `fieldValidation=Warn`).
    warnings: std::sync::Mutex<Vec<String>>,
}

/// Now, as Kubernetes writes timestamps (RFC 3339, seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn random_suffix() -> String {
    // Upstream's alphabet for generateName: no vowels, no confusable characters.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

impl Handler {
    fn rt(&self) -> &'static ResourceType {
        self.t.rt
    }

    fn name(&self) -> &str {
        self.t.name.as_deref().unwrap_or_default()
    }

    fn is_service(&self) -> bool {
        self.rt().group.is_empty() && self.rt().kind == "Service"
    }

    fn owner(&self, name: &str) -> String {
        format!("{}/{name}", self.t.namespace.as_deref().unwrap_or_default())
    }

    fn not_found(&self) -> ApiError {
        ApiError::not_found(self.rt().group, self.rt().plural, self.name())
    }

    /// The request's label and field selectors; a malformed one is a 400.
    fn selectors(&self) -> ApiResult<(LabelSelector, FieldSelector)> {
        let labels =
            LabelSelector::parse(self.params.label_selector.as_deref().unwrap_or_default())
                .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(
            self.params.field_selector.as_deref().unwrap_or_default(),
            self.rt(),
        )
        .map_err(ApiError::bad_request)?;
        Ok((labels, fields))
    }

    fn wants_table(&self) -> bool {
        self.headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|a| a.contains("as=Table"))
    }

    /// The Table rows' `includeObject`.
    fn include_object(&self) -> table::Include {
        table::Include::from_param(self.params.include_object.as_deref())
    }

    /// The object with `resourceVersion` set from the store.
    fn object_of(&self, kv: &storage::KeyValue) -> ApiResult<Value> {
        let mut obj: Value = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::internal(format!("stored object {}: {e}", kv.key)))?;
        obj["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
        Ok(crate::conversion::to_served(self.rt(), obj))
    }

    /// What to store for `obj`: its storage version's JSON.
    fn stored_bytes(&self, obj: &Value) -> ApiResult<Vec<u8>> {
        to_bytes(&crate::conversion::to_stored(self.rt(), obj.clone()))
    }

    fn respond(&self, code: StatusCode, obj: Value) -> ApiResult {
        let body = if self.wants_table() {
            table::table_of(
                self.rt(),
                std::slice::from_ref(&obj),
                None,
                None,
                self.include_object(),
            )
        } else {
            obj
        };
        let mut r = json_response(code, &body);
        // RFC 7234 warnings, as upstream sends them: `299 - "<text>"`.
        for w in self
            .warnings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let text = w.replace('\\', "\\\\").replace('"', "\\\"");
            if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{text}\"")) {
                r.headers_mut().append(header::WARNING, v);
            }
        }
        Ok(r)
    }

    async fn get(&self) -> ApiResult {
        let key = self.rt().key(self.t.namespace.as_deref(), self.name());
        let kv = self
            .state
            .store
            .get(&key)
            .await?
            .ok_or_else(|| self.not_found())?;
        let obj = self.object_of(&kv)?;
        self.respond(StatusCode::OK, obj)
    }

    async fn list(&self) -> ApiResult {
        let (labels, fields) = self.selectors()?;
        let prefix = self.rt().prefix(self.t.namespace.as_deref());
        let (start_key, revision) = match &self.params.continue_token {
            Some(token) => {
                let c = Continue::decode(token)?;
                if !c.start.starts_with(&prefix) {
                    return Err(ApiError::bad_request(
                        "continue key is not valid for this list",
                    ));
                }
                (Some(c.start), Some(c.rv))
            }
            None => (None, self.list_revision()?),
        };
        let limit = self.params.limit.filter(|l| *l > 0);
        // resourceVersion=0: any recent state will do, so the watch cache answers.
        let any_revision = self.params.continue_token.is_none()
            && self.params.resource_version.as_deref() == Some("0");
        let page = self
            .state
            .store
            .list(&ListOptions {
                prefix,
                start_key,
                limit,
                revision,
                any_revision,
            })
            .await
            .map_err(|e| match e {
                storage::Error::Compacted { .. } if self.params.continue_token.is_some() => ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ),
                other => other.into(),
            })?;
        let continue_token = match (page.more, page.items.last()) {
            (true, Some(last)) => Some(
                Continue {
                    rv: page.revision,
                    start: format!("{}\0", last.key),
                }
                .encode(),
            ),
            _ => None,
        };
        let mut items = Vec::with_capacity(page.items.len());
        for kv in &page.items {
            let obj = self.object_of(kv)?;
            if labels.matches(&obj) && fields.matches(&obj) {
                items.push(obj);
            }
        }
        let rv = page.revision.to_string();
        if self.wants_table() {
            return Ok(json_response(
                StatusCode::OK,
                &table::table_of(
                    self.rt(),
                    &items,
                    Some(&rv),
                    continue_token.as_deref(),
                    self.include_object(),
                ),
            ));
        }
        let mut metadata = json!({"resourceVersion": rv});
        if let Some(c) = continue_token {
            metadata["continue"] = json!(c);
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({"kind": format!("{}List", self.rt().kind), "apiVersion": self.rt().api_version(), "metadata": metadata, "items": items}),
        ))
    }

    /// The revision a list must be read at, from `resourceVersion` and
    /// `resourceVersionMatch`: unset or "0" is the latest; `Exact` is that revision.
    fn list_revision(&self) -> ApiResult<Option<Revision>> {
        let rv = match self.params.resource_version.as_deref() {
            None | Some("") | Some("0") => return Ok(None),
            Some(v) => v
                .parse::<Revision>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
        };
        match self.params.resource_version_match.as_deref() {
            Some("Exact") => Ok(Some(rv)),
            // NotOlderThan (and the legacy default): the latest is never older.
            _ => Ok(None),
        }
    }

    async fn create(&self, body: &[u8]) -> ApiResult {
        if self.t.subresource.is_some() {
            return Err(ApiError::method_not_allowed(
                "POST is not supported on a subresource",
            ));
        }
        let mut obj = self.decode_body(body)?;
        let meta = obj["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        if meta
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
            && let Some(prefix) = meta.get("generateName").and_then(Value::as_str)
        {
            let name = format!("{prefix}{}", random_suffix());
            meta.insert("name".into(), json!(name));
        }
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if name.is_empty() {
            return Err(ApiError::invalid(
                self.rt().group,
                self.rt().kind,
                "",
                vec![Cause {
                    reason: "FieldValueRequired",
                    message: "Required value: name or generateName is required".into(),
                    field: "metadata.name".into(),
                }],
            ));
        }
        if let Some(ns) = &self.t.namespace {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.remove("resourceVersion");
        meta.remove("deletionTimestamp");
        if self.rt().has_spec {
            meta.insert("generation".into(), json!(1));
        }
        if self.rt().has_status {
            obj.as_object_mut().map(|o| o.remove("status"));
        }
        crate::defaults::apply(self.rt(), &mut obj);
        let store = self.state.store.as_ref();
        // A pod's life is one trace: it starts here, and the pod carries it.
        let mut trace = None;
        if let (("", "Pod"), Some(ns)) = ((self.rt().group, self.rt().kind), &self.t.namespace) {
            crate::admission::limit_ranges(store, ns, &mut obj).await?;
            crate::admission::pod_priority(store, &mut obj).await?;
            if traces::enabled() && !self.params.is_dry_run() {
                let cx = traces::start(
                    "apiserver: create pod",
                    None,
                    vec![
                        KeyValue::new("k8s.namespace.name", ns.clone()),
                        KeyValue::new("k8s.pod.name", name.clone()),
                    ],
                );
                if let (Some(tp), Some(meta)) =
                    (traces::traceparent(&cx), obj["metadata"].as_object_mut())
                {
                    let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
                    if let Some(a) = annotations.as_object_mut() {
                        a.insert(traces::ANNOTATION.into(), json!(tp));
                    }
                }
                trace = Some(cx);
            }
        }
        self.validate(&mut obj, None)?;
        self.check_namespace_exists(&name).await?;
        if let (Some(ns), false) = (&self.t.namespace, self.params.is_dry_run()) {
            crate::admission::resource_quota(store, self.rt().group, self.rt().plural, ns, &obj)
                .await?;
        }
        if self.params.is_dry_run() {
            return self.respond(StatusCode::CREATED, obj);
        }
        let claimed = if self.is_service() {
            self.state
                .ranges
                .on_create(self.state.store.as_ref(), &mut obj, &self.owner(&name))
                .await?
        } else {
            Vec::new()
        };
        let key = self.rt().key(self.t.namespace.as_deref(), &name);
        let kv = match self
            .state
            .store
            .create(&key, self.stored_bytes(&obj)?)
            .await
        {
            Ok(kv) => kv,
            Err(e) => {
                Ranges::release_all(self.state.store.as_ref(), &claimed).await;
                return Err(match e {
                    storage::Error::AlreadyExists { .. } => {
                        ApiError::already_exists(self.rt().group, self.rt().plural, &name)
                    }
                    other => other.into(),
                });
            }
        };
        let exemplar = trace.as_ref().and_then(TraceExemplar::of);
        if let Some(cx) = trace {
            traces::end(&cx);
        }
        let out = self.object_of(&kv)?;
        let mut response = self.respond(StatusCode::CREATED, out)?;
        // The request-latency histogram's exemplar: this create's trace.
        if let Some(e) = exemplar {
            response.extensions_mut().insert(e);
        }
        Ok(response)
    }

    /// Upstream's NamespaceLifecycle admission: no objects in a missing namespace.
    async fn check_namespace_exists(&self, name: &str) -> ApiResult<()> {
        let Some(ns) = &self.t.namespace else {
            return Ok(());
        };
        let nsrt = resources::find("", "v1", "namespaces")
            .ok_or_else(|| ApiError::internal("namespaces not served"))?;
        let Some(kv) = self.state.store.get(&nsrt.key(None, ns)).await? else {
            return Err(ApiError::not_found("", "namespaces", ns));
        };
        let namespace = self.object_of(&kv)?;
        if !namespace["metadata"]["deletionTimestamp"].is_null() {
            return Err(ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                self.rt().plural,
                name
            )));
        }
        Ok(())
    }

    /// Decodes `obj` as its kind (dropping unknown fields unless Strict) and
    /// validates it; warnings are kept for the response's `Warning` headers.
    fn validate(&self, obj: &mut Value, old: Option<&Value>) -> ApiResult<()> {
        let mode = validation::FieldValidation::from_param(self.params.field_validation.as_deref());
        let warnings = validation::decode(self.rt(), obj, mode)?;
        *self
            .warnings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = warnings;
        validation::check(self.rt(), obj, old)
    }

    /// Decodes a request body and checks it names this resource's kind.
    fn decode_body(&self, body: &[u8]) -> ApiResult<Value> {
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        decode_object(self.rt(), self.t.namespace.as_deref(), content_type, body)
    }

    fn check_kind(&self, obj: Value) -> ApiResult<Value> {
        check_kind(self.rt(), self.t.namespace.as_deref(), obj)
    }

    async fn update(&self, body: &[u8]) -> ApiResult {
        let obj = self.decode_body(body)?;
        if obj["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n != self.name())
        {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let precondition = obj["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let expected =
            match precondition {
                Some(rv) => Some(rv.parse::<Revision>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?),
                None => None,
            };
        let out = self
            .guaranteed_update(expected, |_| Ok(obj.clone()))
            .await?;
        self.respond(StatusCode::OK, out)
    }

    /// A patch request's body: its media type checked, parsed, and the
    /// resourceVersion inside it read as a precondition (as upstream).
    fn patch_body(&self, body: &[u8]) -> ApiResult<PatchBody> {
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        if !PATCH_TYPES.contains(&media.as_str()) {
            return Err(ApiError::unsupported_media_type(&content_type));
        }
        let patch = json_body(body)?;
        Ok(PatchBody {
            media,
            content_type,
            expected: precondition(&patch),
            patch,
        })
    }

    async fn patch(&self, body: &[u8]) -> ApiResult {
        let PatchBody {
            media,
            content_type,
            patch,
            expected,
        } = self.patch_body(body)?;
        let out = self
            .guaranteed_update(expected, |current| {
                let mut doc = current.clone();
                apply_patch(&mut doc, &patch, &media, &content_type, self.rt())?;
                Ok(doc)
            })
            .await?;
        self.respond(StatusCode::OK, out)
    }

    /// `POST pods/<name>/binding`: assigns the pod to `target.name` (the scheduler's
    /// write), once; a bound pod answers 409.
    async fn bind(&self, body: &[u8]) -> ApiResult {
        let binding: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request could not be decoded as a Binding: {e}"
            ))
        })?;
        let node = binding["target"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(
                    "",
                    "Binding",
                    self.name(),
                    vec![Cause {
                        reason: "FieldValueRequired",
                        message: "Required value".into(),
                        field: "target.name".into(),
                    }],
                )
            })?;
        let key = self.rt().key(self.t.namespace.as_deref(), self.name());
        loop {
            let kv = self
                .state
                .store
                .get(&key)
                .await?
                .ok_or_else(|| self.not_found())?;
            let mut pod = self.object_of(&kv)?;
            if !pod["metadata"]["deletionTimestamp"].is_null() {
                return Err(ApiError::conflict("", "pods", self.name()));
            }
            if let Some(bound) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                let mut e = ApiError::conflict("", "pods", self.name());
                e.message = format!(
                    "Operation cannot be fulfilled on pods/binding \"{}\": pod {} is already assigned to node \"{bound}\"",
                    self.name(),
                    self.name()
                );
                return Err(e);
            }
            pod["spec"]["nodeName"] = json!(node);
            let mut conditions = pod["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            conditions.retain(|c| c["type"] != "PodScheduled");
            conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()}));
            pod["status"]["conditions"] = json!(conditions);
            pod["metadata"]
                .as_object_mut()
                .map(|m| m.remove("resourceVersion"));
            match self
                .state
                .store
                .update(&key, self.stored_bytes(&pod)?, kv.mod_revision)
                .await
            {
                Ok(_) => return Ok(json_response(StatusCode::CREATED, &success_status(201))),
                Err(storage::Error::Conflict { .. }) => continue,
                Err(storage::Error::NotFound { .. }) => return Err(self.not_found()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// `POST pods/<name>/eviction`: deletes the pod unless a PodDisruptionBudget
    /// selecting it allows no disruption (429, as upstream). A granted eviction
    /// is recorded in the budget's status (`disruptionsAllowed` − 1, the pod in
    /// `disruptedPods`) with a compare-and-swap, so concurrent evictions (a
    /// drain) cannot together overdraw it. Pods that are not running (Pending,
    /// Succeeded, Failed) are evicted without a budget check, as upstream.
    async fn evict(&self, body: &[u8]) -> ApiResult {
        let eviction = optional_json_body(body, "an Eviction")?;
        let key = self.rt().key(self.t.namespace.as_deref(), self.name());
        let pdb_rt = resources::find("policy", "v1", "poddisruptionbudgets")
            .ok_or_else(|| ApiError::internal("PodDisruptionBudgets are not served"))?;
        let mut attempts = 0;
        loop {
            let kv = self
                .state
                .store
                .get(&key)
                .await?
                .ok_or_else(|| self.not_found())?;
            let pod = self.object_of(&kv)?;
            if matches!(
                pod["status"]["phase"].as_str(),
                Some("Pending" | "Succeeded" | "Failed")
            ) {
                break;
            }
            let pdbs = self
                .state
                .store
                .list(&ListOptions {
                    prefix: pdb_rt.prefix(self.t.namespace.as_deref()),
                    ..Default::default()
                })
                .await?;
            let labels = labels_of(&pod);
            let mut selecting = Vec::new();
            for pdb_kv in &pdbs.items {
                let pdb: Value = serde_json::from_slice(&pdb_kv.value)
                    .map_err(|e| ApiError::internal(format!("stored PodDisruptionBudget: {e}")))?;
                // policy/v1: an empty selector selects every pod; a missing one none.
                let selector: Option<
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
                > = serde_json::from_value(pdb["spec"]["selector"].clone()).ok();
                let selects =
                    selector.is_some_and(|s| sextant_apimachinery::labels::matches(&s, &labels));
                if selects {
                    selecting.push((pdb_kv, pdb));
                }
            }
            let Some((pdb_kv, mut pdb)) = selecting.pop() else {
                break;
            };
            if !selecting.is_empty() {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ));
            }
            // Until the disruption controller has computed the budget, none is allowed.
            let allowed = pdb["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
            if allowed < 1 {
                let mut e = ApiError::too_many_requests(
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                );
                e.details = Some(
                    json!({"causes": [{"reason": "DisruptionBudget", "message": format!(
                        "The disruption budget {} needs {} healthy pods and has {} currently",
                        pdb["metadata"]["name"].as_str().unwrap_or_default(),
                        pdb["status"]["desiredHealthy"].as_i64().unwrap_or(0),
                        pdb["status"]["currentHealthy"].as_i64().unwrap_or(0)
                    )}]}),
                );
                return Err(e);
            }
            if self.params.is_dry_run() {
                break;
            }
            pdb["status"]["disruptionsAllowed"] = json!(allowed - 1);
            if !pdb["status"]["disruptedPods"].is_object() {
                pdb["status"]["disruptedPods"] = json!({});
            }
            pdb["status"]["disruptedPods"][self.name()] = json!(now());
            let bytes = serde_json::to_vec(&pdb)
                .map_err(|e| ApiError::internal(format!("encoding the budget: {e}")))?;
            match self
                .state
                .store
                .update(&pdb_kv.key, bytes, pdb_kv.mod_revision)
                .await
            {
                Ok(_) => break,
                Err(storage::Error::Conflict { .. }) if attempts < 5 => attempts += 1,
                Err(storage::Error::Conflict { .. }) => {
                    return Err(ApiError::too_many_requests(
                        "Cannot evict pod as the disruption budget is being changed; please retry.",
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let delete_options = serde_json::to_vec(&eviction["deleteOptions"]).unwrap_or_default();
        let options = if eviction["deleteOptions"].is_null() {
            Vec::new()
        } else {
            delete_options
        };
        let deleted = self.delete(&options).await?;
        if !deleted.status().is_success() {
            return Ok(deleted);
        }
        Ok(json_response(StatusCode::CREATED, &success_status(201)))
    }

    /// `GET`, `PUT` and `PATCH` of the `scale` subresource: an `autoscaling/v1`
    /// `Scale` whose `spec.replicas` is the object's.
    async fn scale(&self, method: &Method, body: &[u8]) -> ApiResult {
        if *method == Method::GET {
            let key = self.rt().key(self.t.namespace.as_deref(), self.name());
            let kv = self
                .state
                .store
                .get(&key)
                .await?
                .ok_or_else(|| self.not_found())?;
            return Ok(json_response(
                StatusCode::OK,
                &scale_of(&self.object_of(&kv)?),
            ));
        }
        let PatchBody {
            media,
            content_type,
            patch: input,
            expected,
        } = if *method == Method::PATCH {
            self.patch_body(body)?
        } else {
            let input = json_body(body)?;
            PatchBody {
                media: String::new(),
                content_type: String::new(),
                expected: precondition(&input),
                patch: input,
            }
        };
        let rt = self.rt();
        let out = self
            .guaranteed_update(expected, |current| {
                let mut scale = scale_of(current);
                if *method == Method::PUT {
                    scale = input.clone();
                } else {
                    apply_patch(&mut scale, &input, &media, &content_type, rt)?;
                }
                let replicas = scale["spec"]["replicas"]
                    .as_i64()
                    .filter(|r| *r >= 0)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "autoscaling",
                            "Scale",
                            self.name(),
                            vec![Cause {
                                reason: "FieldValueInvalid",
                                message: format!(
                                    "Invalid value: {}: must be greater than or equal to 0",
                                    scale["spec"]["replicas"]
                                ),
                                field: "spec.replicas".into(),
                            }],
                        )
                    })?;
                let mut next = current.clone();
                next["spec"]["replicas"] = json!(replicas);
                Ok(next)
            })
            .await?;
        Ok(json_response(StatusCode::OK, &scale_of(&out)))
    }

    /// Read, change, compare-and-swap; retried on conflict when the caller gave no
    /// resourceVersion precondition (upstream's GuaranteedUpdate).
    async fn guaranteed_update(
        &self,
        expected: Option<Revision>,
        change: impl Fn(&Value) -> ApiResult<Value>,
    ) -> ApiResult<Value> {
        let key = self.rt().key(self.t.namespace.as_deref(), self.name());
        for _ in 0..16 {
            let kv = self
                .state
                .store
                .get(&key)
                .await?
                .ok_or_else(|| self.not_found())?;
            if let Some(e) = expected
                && e != kv.mod_revision
            {
                return Err(ApiError::conflict(
                    self.rt().group,
                    self.rt().plural,
                    self.name(),
                ));
            }
            let current = self.object_of(&kv)?;
            let changed = self.check_kind(change(&current)?)?;
            let mut next = self.merge_update(&current, changed)?;
            crate::defaults::apply(self.rt(), &mut next);
            self.validate(&mut next, Some(&current))?;
            let deleting = !current["metadata"]["deletionTimestamp"].is_null();
            let finalizers = |o: &Value| -> Vec<Value> {
                o["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            };
            if deleting
                && finalizers(&next)
                    .iter()
                    .any(|f| !finalizers(&current).contains(f))
            {
                return Err(ApiError::forbidden(format!(
                    "{} \"{}\" is forbidden: no new finalizers can be added if the object is being deleted",
                    self.rt().plural,
                    self.name()
                )));
            }
            // The last finalizer gone from an object being deleted: delete it now.
            let namespace_pending = self.rt().group.is_empty()
                && self.rt().kind == "Namespace"
                && next["spec"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty());
            if deleting
                && finalizers(&next).is_empty()
                && !namespace_pending
                && !self.params.is_dry_run()
            {
                match self.state.store.delete(&key, Some(kv.mod_revision)).await {
                    Ok(_) => {
                        if self.is_service() {
                            Ranges::on_delete(self.state.store.as_ref(), &current).await;
                        }
                        return Ok(next);
                    }
                    Err(storage::Error::Conflict { .. }) => continue,
                    Err(storage::Error::NotFound { .. }) => return Err(self.not_found()),
                    Err(e) => return Err(e.into()),
                }
            }
            let mut stored = next.clone();
            stored["metadata"]
                .as_object_mut()
                .map(|m| m.remove("resourceVersion"));
            if stored == without_rv(&current) {
                // No change: upstream answers with the current object and writes nothing.
                return Ok(current);
            }
            if self.params.is_dry_run() {
                return Ok(next);
            }
            let claimed = if self.is_service() {
                let owner = self.owner(self.name());
                let c = self
                    .state
                    .ranges
                    .on_update(self.state.store.as_ref(), &current, &mut stored, &owner)
                    .await?;
                next = stored.clone();
                c
            } else {
                Vec::new()
            };
            let written = self
                .state
                .store
                .update(&key, self.stored_bytes(&stored)?, kv.mod_revision)
                .await;
            if written.is_err() {
                Ranges::release_all(self.state.store.as_ref(), &claimed).await;
            } else if self.is_service() {
                Ranges::release_all(
                    self.state.store.as_ref(),
                    &Ranges::no_longer_used(&current, &next),
                )
                .await;
            }
            match written {
                Ok(kv) => {
                    let out = self.object_of(&kv)?;
                    return Ok(out);
                }
                Err(storage::Error::Conflict { .. }) if expected.is_none() => continue,
                Err(storage::Error::Conflict { .. }) => {
                    return Err(ApiError::conflict(
                        self.rt().group,
                        self.rt().plural,
                        self.name(),
                    ));
                }
                Err(storage::Error::NotFound { .. }) => return Err(self.not_found()),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(
            self.rt().group,
            self.rt().plural,
            self.name(),
        ))
    }

    /// Carries over what a client may not change (uid, creationTimestamp, ...) and
    /// splits spec from status for kinds with a status subresource.
    fn merge_update(&self, current: &Value, mut next: Value) -> ApiResult<Value> {
        let on_status = self.t.subresource.as_deref() == Some("status");
        if self.rt().has_status {
            if on_status {
                // Only status changes through /status.
                let status = next.get("status").cloned();
                next = current.clone();
                match status {
                    Some(s) => next["status"] = s,
                    None => {
                        next.as_object_mut().map(|o| o.remove("status"));
                    }
                }
            } else {
                match current.get("status") {
                    Some(s) => next["status"] = s.clone(),
                    None => {
                        next.as_object_mut().map(|o| o.remove("status"));
                    }
                }
            }
        }
        let cur_meta = &current["metadata"];
        let meta = next["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        for field in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "generation",
            "deletionTimestamp",
        ] {
            match cur_meta.get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        if self.rt().has_spec && !on_status && next.get("spec") != current.get("spec") {
            let generation = cur_meta["generation"].as_i64().unwrap_or(1) + 1;
            next["metadata"]["generation"] = json!(generation);
        }
        Ok(next)
    }

    /// `PUT namespaces/<name>/finalize`: sets `spec.finalizers` from the body (the
    /// namespace controller removes `kubernetes` once the namespace is empty); a
    /// terminating namespace left with no finalizers is removed.
    async fn finalize(&self, body: &[u8]) -> ApiResult {
        let input: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("decoding the Namespace: {e}")))?;
        let finalizers = match &input["spec"]["finalizers"] {
            Value::Array(list) => Value::Array(list.clone()),
            _ => json!([]),
        };
        let out = self
            .guaranteed_update(None, |current| {
                let mut next = current.clone();
                next["spec"]["finalizers"] = finalizers.clone();
                Ok(next)
            })
            .await?;
        let empty = |v: &Value| v.as_array().is_none_or(Vec::is_empty);
        if !out["metadata"]["deletionTimestamp"].is_null()
            && empty(&out["spec"]["finalizers"])
            && empty(&out["metadata"]["finalizers"])
        {
            let key = self.rt().key(None, self.name());
            match self.state.store.delete(&key, None).await {
                Ok(_) | Err(storage::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(json_response(StatusCode::OK, &out))
    }

    /// Deletes at once, or — when the object has finalizers, is a namespace, or is a
    /// scheduled pod with a grace period — marks it with `deletionTimestamp` and
    /// answers 202; whoever owns the finalizer (or the kubelet) completes it.
    async fn delete(&self, body: &[u8]) -> ApiResult {
        let options = optional_json_body(body, "DeleteOptions")?;
        let (code, obj) = self.delete_named(self.name(), &options).await?;
        Ok(json_response(code, &obj))
    }

    /// [`Handler::delete`] of the object `name`: also what deletecollection does
    /// to each object, so finalizers and graceful pod deletion hold there too.
    async fn delete_named(&self, name: &str, options: &Value) -> ApiResult<(StatusCode, Value)> {
        let not_found = || ApiError::not_found(self.rt().group, self.rt().plural, name);
        let grace = self
            .params
            .grace_period_seconds
            .or_else(|| options["gracePeriodSeconds"].as_i64());
        let key = self.rt().key(self.t.namespace.as_deref(), name);
        for _ in 0..16 {
            let kv = self.state.store.get(&key).await?.ok_or_else(not_found)?;
            let obj = self.object_of(&kv)?;
            check_preconditions(options, &obj, self.rt(), name)?;
            let is_pod = self.rt().group.is_empty() && self.rt().kind == "Pod";
            let is_namespace = self.rt().group.is_empty() && self.rt().kind == "Namespace";
            let has_finalizers = obj["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            if is_namespace && crate::server::SYSTEM_NAMESPACES[..3].contains(&name) {
                return Err(ApiError::forbidden(format!(
                    "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
                )));
            }
            // A namespace waits for its content to go (spec.finalizers), unless
            // nothing is left to wait for.
            let is_namespace = is_namespace
                && obj["spec"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty());
            let pod_grace = if is_pod
                && obj["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
            {
                grace.unwrap_or_else(|| {
                    obj["spec"]["terminationGracePeriodSeconds"]
                        .as_i64()
                        .unwrap_or(30)
                })
            } else {
                0
            };
            // propagationPolicy Orphan or Foreground on an owner kind: the
            // garbage collector releases or deletes the dependents, then removes
            // the `orphan` or `foregroundDeletion` finalizer.
            let policy = self
                .params
                .propagation_policy
                .clone()
                .or_else(|| options["propagationPolicy"].as_str().map(str::to_owned));
            let owner_kind = matches!(
                (self.rt().group, self.rt().kind),
                (
                    "apps",
                    "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet"
                ) | ("batch", "Job" | "CronJob")
            );
            let finalizer = match policy.as_deref() {
                _ if !owner_kind => None,
                Some("Orphan") => Some("orphan"),
                _ if options["orphanDependents"] == true => Some("orphan"),
                Some("Foreground") => Some("foregroundDeletion"),
                _ => None,
            };
            let graceful = has_finalizers || is_namespace || pod_grace > 0 || finalizer.is_some();
            if self.params.is_dry_run() {
                let code = if graceful {
                    StatusCode::ACCEPTED
                } else {
                    StatusCode::OK
                };
                return Ok((code, obj));
            }
            if !graceful {
                return match self.state.store.delete(&key, Some(kv.mod_revision)).await {
                    Ok((prev, _)) => {
                        let prev = self.object_of(&prev)?;
                        if self.is_service() {
                            Ranges::on_delete(self.state.store.as_ref(), &prev).await;
                        }
                        Ok((StatusCode::OK, prev))
                    }
                    Err(storage::Error::Conflict { .. }) => continue,
                    Err(storage::Error::NotFound { .. }) => Err(not_found()),
                    Err(e) => Err(e.into()),
                };
            }
            if !obj["metadata"]["deletionTimestamp"].is_null() {
                // Already being deleted: repeating the request changes nothing.
                return Ok((StatusCode::ACCEPTED, obj));
            }
            let mut next = obj.clone();
            if let (Some(f), Some(meta)) = (finalizer, next["metadata"].as_object_mut()) {
                let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(list) = finalizers.as_array_mut()
                    && !list.iter().any(|x| x == f)
                {
                    list.push(json!(f));
                }
            }
            next["metadata"]["deletionTimestamp"] = json!(now());
            next["metadata"]["deletionGracePeriodSeconds"] = json!(pod_grace);
            if is_namespace {
                next["status"]["phase"] = json!("Terminating");
            }
            next["metadata"]
                .as_object_mut()
                .map(|m| m.remove("resourceVersion"));
            match self
                .state
                .store
                .update(&key, self.stored_bytes(&next)?, kv.mod_revision)
                .await
            {
                Ok(kv) => return Ok((StatusCode::ACCEPTED, self.object_of(&kv)?)),
                Err(storage::Error::Conflict { .. }) => continue,
                Err(storage::Error::NotFound { .. }) => return Err(not_found()),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(
            self.rt().group,
            self.rt().plural,
            self.name(),
        ))
    }

    async fn delete_collection(&self) -> ApiResult {
        let (labels, fields) = self.selectors()?;
        let prefix = self.rt().prefix(self.t.namespace.as_deref());
        let page = self
            .state
            .store
            .list(&ListOptions {
                prefix,
                ..Default::default()
            })
            .await?;
        let mut items = Vec::new();
        for kv in &page.items {
            let obj = self.object_of(kv)?;
            if !(labels.matches(&obj) && fields.matches(&obj)) {
                continue;
            }
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match self.delete_named(&name, &Value::Null).await {
                Ok((_, deleted)) => items.push(deleted),
                // Gone meanwhile, or a system namespace that stays.
                Err(e) if matches!(e.code, 403 | 404) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({"kind": format!("{}List", self.rt().kind), "apiVersion": self.rt().api_version(), "metadata": {"resourceVersion": page.revision.to_string()}, "items": items}),
        ))
    }

    /// A chunked stream of `{"type": ..., "object": ...}` lines. Without a
    /// resourceVersion (or with "0"), the current objects come first as ADDED, as
    /// upstream's watch cache sends them.
    async fn watch(&self) -> ApiResult {
        let (labels, mut fields) = self.selectors()?;
        if let Some(name) = &self.t.name {
            fields.require_name(name);
        }
        let prefix = self.rt().prefix(self.t.namespace.as_deref());
        let table = self.wants_table().then(|| self.include_object());
        let bookmarks = self.params.allow_watch_bookmarks.unwrap_or(false);
        let mut initial = Vec::new();
        let from = match self.params.resource_version.as_deref() {
            None | Some("") | Some("0") => {
                let page = self
                    .state
                    .store
                    .list(&ListOptions {
                        prefix: prefix.clone(),
                        any_revision: true,
                        ..Default::default()
                    })
                    .await?;
                for kv in &page.items {
                    let obj = self.object_of(kv)?;
                    if labels.matches(&obj) && fields.matches(&obj) {
                        initial.push(event_line("ADDED", &obj, self.rt(), table));
                    }
                }
                page.revision
            }
            Some(v) => v
                .parse::<Revision>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
        };
        let timeout = Duration::from_secs(self.params.timeout_seconds.unwrap_or(1800).min(3600));
        let rt = self.rt();
        let events = self.state.store.watch(&prefix, from).await;
        let stream = async_stream(
            initial,
            events,
            move |e| {
                let (kind, obj) = match e {
                    storage::Event::Put { kv, prev } => (
                        if prev.is_some() { "MODIFIED" } else { "ADDED" },
                        stored_object(&kv.value, kv.mod_revision)
                            .map(|o| crate::conversion::to_served(rt, o)),
                    ),
                    storage::Event::Delete { revision, prev, .. } => (
                        "DELETED",
                        prev.and_then(|p| stored_object(&p.value, revision))
                            .map(|o| crate::conversion::to_served(rt, o)),
                    ),
                };
                let obj = obj?;
                (labels.matches(&obj) && fields.matches(&obj))
                    .then(|| event_line(kind, &obj, rt, table))
            },
            timeout,
            bookmarks.then_some(rt),
        );
        // Counted while the client holds the stream open.
        let guard = self.state.metrics.watch_started(self.rt());
        let stream = stream.map(move |chunk| {
            let _counted = &guard;
            chunk
        });
        let mut r = Response::new(Body::from_stream(stream));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(r)
    }
}

/// Applies a patch of the given media type to `doc`.
fn apply_patch(
    doc: &mut Value,
    patch: &Value,
    media: &str,
    content_type: &str,
    rt: &ResourceType,
) -> ApiResult<()> {
    match media {
        "application/json-patch+json" => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(doc, &p).map_err(|e| {
                ApiError::new_unprocessable(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
        }
        "application/merge-patch+json" => json_patch::merge(doc, patch),
        "application/strategic-merge-patch+json" => {
            crate::smp::apply(doc, patch, rt).map_err(ApiError::bad_request)?
        }
        _ => return Err(ApiError::unsupported_media_type(content_type)),
    }
    Ok(())
}

/// The `autoscaling/v1` `Scale` of an object with `spec.replicas`.
fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    let selector = table::label_string(&obj["spec"]["selector"]["matchLabels"]);
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// Decodes a create/update body, JSON or Kubernetes protobuf, into an object of `rt`.
pub fn decode_object(
    rt: &ResourceType,
    namespace: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> ApiResult<Value> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let obj = match media {
        "application/json" | "*/*" => json_body(body)?,
        crate::protobuf::MEDIA_TYPE => crate::protobuf::decode(body)?,
        _ => return Err(ApiError::unsupported_media_type(content_type)),
    };
    check_kind(rt, namespace, obj)
}

/// Checks that `obj` is a JSON object of `rt`'s kind and version (filling them in
/// when absent) and in `namespace`.
pub fn check_kind(rt: &ResourceType, namespace: Option<&str>, mut obj: Value) -> ApiResult<Value> {
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    match o.get("kind").and_then(Value::as_str) {
        Some(k) if k != rt.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind of the object ({k}) does not match the kind of the resource ({})",
                rt.kind
            )));
        }
        _ => {}
    }
    match o.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != rt.api_version() => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({})",
                rt.api_version()
            )));
        }
        _ => {}
    }
    o.insert("kind".into(), json!(rt.kind));
    o.insert("apiVersion".into(), json!(rt.api_version()));
    let meta = o.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    if let (Some(want), Some(got)) = (namespace, meta.get("namespace").and_then(Value::as_str))
        && !got.is_empty()
        && got != want
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(obj)
}

/// `DeleteOptions.preconditions`: the uid and resourceVersion the caller expects.
fn check_preconditions(
    options: &Value,
    obj: &Value,
    rt: &ResourceType,
    name: &str,
) -> ApiResult<()> {
    let pre = &options["preconditions"];
    for field in ["uid", "resourceVersion"] {
        if let Some(want) = pre[field].as_str()
            && obj["metadata"][field].as_str() != Some(want)
        {
            let mut e = ApiError::conflict(rt.group, rt.plural, name);
            e.message = format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {field}: {want}, {field} in object meta: {}",
                rt.plural,
                obj["metadata"][field].as_str().unwrap_or_default()
            );
            return Err(e);
        }
    }
    Ok(())
}

/// The patch media types the server applies.
const PATCH_TYPES: [&str; 3] = [
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];

/// A parsed patch (or, for `PUT` of a subresource, the new object).
struct PatchBody {
    media: String,
    content_type: String,
    patch: Value,
    expected: Option<Revision>,
}

/// A JSON request body.
fn json_body(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request could not be decoded as JSON: {e}"
        ))
    })
}

/// An optional JSON body (`DeleteOptions`, `Eviction`): empty is `{}`.
fn optional_json_body(body: &[u8], what: &str) -> ApiResult<Value> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request could not be decoded as {what}: {e}"
        ))
    })
}

/// `metadata.resourceVersion` of a request body, as a precondition.
fn precondition(v: &Value) -> Option<Revision> {
    v.get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

/// A `Status` of success, as binding and eviction answer.
fn success_status(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code})
}

fn stored_object(bytes: &[u8], rv: Revision) -> Option<Value> {
    let mut obj: Value = serde_json::from_slice(bytes).ok()?;
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    Some(obj)
}

/// One watch event line; `table` carries the rows' `includeObject` when the
/// client asked for Tables.
fn event_line(kind: &str, obj: &Value, rt: &ResourceType, table: Option<table::Include>) -> Bytes {
    let object = match table {
        Some(include) => table::table_of(rt, std::slice::from_ref(obj), None, None, include),
        None => obj.clone(),
    };
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// The watch body: the initial lines, then converted store events, ending at the
/// timeout. A store error (a compacted revision) ends it with an ERROR event
/// carrying a 410 Status, which makes informers re-list.
fn async_stream(
    initial: Vec<Bytes>,
    events: storage::Result<storage::EventStream>,
    convert: impl Fn(storage::Event) -> Option<Bytes> + Send + 'static,
    timeout: Duration,
    bookmark_kind: Option<&'static ResourceType>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let error_line = |e: storage::Error| {
        let status = ApiError::from(match e {
            storage::Error::Compacted { .. } => storage::Error::Compacted {
                requested: 0,
                compacted: 0,
            },
            other => other,
        })
        .to_status();
        let mut s = json!({"type": "ERROR", "object": status}).to_string();
        s.push('\n');
        Bytes::from(s)
    };
    let head = futures::stream::iter(initial.into_iter().map(Ok));
    let tail: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> = match events {
        Ok(events) => {
            let mut last_rv: Revision = 0;
            let bookmark = move |rv: Revision| {
                let rt = bookmark_kind?;
                let obj = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string()}});
                let mut s = json!({"type": "BOOKMARK", "object": obj}).to_string();
                s.push('\n');
                Some(Bytes::from(s))
            };
            let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(
                Duration::from_secs(30),
            ));
            let merged = futures::stream::select(events.map(Some), ticks.map(|_| None));
            merged
                .filter_map(move |item| {
                    let out = match item {
                        Some(Ok(e)) => {
                            last_rv = e.revision();
                            convert(e)
                        }
                        Some(Err(e)) => Some(error_line(e)),
                        None if last_rv > 0 => bookmark(last_rv),
                        None => None,
                    };
                    futures::future::ready(out.map(Ok))
                })
                .take_until(tokio::time::sleep(timeout))
                .boxed()
        }
        Err(e) => futures::stream::iter([Ok(error_line(e))]).boxed(),
    };
    head.chain(tail)
}

fn without_rv(v: &Value) -> Value {
    let mut v = v.clone();
    v["metadata"]
        .as_object_mut()
        .map(|m| m.remove("resourceVersion"));
    v
}

fn to_bytes(v: &Value) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| ApiError::internal(e.to_string()))
}

/// A JSON response.
pub fn json_response(code: StatusCode, body: &Value) -> Response {
    let mut r = (code, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The `continue` token: the revision the first page was read at and the next key.
#[derive(Debug, serde::Serialize, Deserialize)]
struct Continue {
    rv: Revision,
    start: String,
}

impl Continue {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(token: &str) -> ApiResult<Self> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| ApiError::bad_request("invalid continue token"))?;
        serde_json::from_slice(&bytes).map_err(|_| ApiError::bad_request("invalid continue token"))
    }
}

/// Labels of an object, for selectors.
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m: &Map<String, Value>| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::resources::RESOURCES;

    /// Any JSON value, a few levels deep.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            "[ -~]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z$/.-]{1,10}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A valid Deployment, so mutations reach deep into validation.
    fn deployment() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "c", "image": "i:1", "ports": [{"containerPort": 80}]}]}}}})
    }

    /// Sets `value` at the path picked by `choices` (walking into objects and arrays).
    fn set_somewhere(doc: &mut Value, choices: &[usize], value: Value) {
        let Some((c, rest)) = choices.split_first() else {
            *doc = value;
            return;
        };
        match doc {
            Value::Object(m) if !m.is_empty() => {
                let key = m.keys().nth(c % m.len()).cloned().unwrap_or_default();
                if let Some(n) = m.get_mut(&key) {
                    set_somewhere(n, rest, value);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                let n = a.len();
                set_somewhere(&mut a[c % n], rest, value);
            }
            _ => *doc = value,
        }
    }

    fn expected_refusal(e: &ApiError) -> bool {
        matches!(e.code, 400 | 415 | 422)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Arbitrary bytes never panic the decoder; a refusal is a 400 or 415.
        #[test]
        fn arbitrary_bodies_are_refused_cleanly(body in prop::collection::vec(any::<u8>(), 0..256), rt in 0..RESOURCES.len()) {
            if let Err(e) = decode_object(&RESOURCES[rt], Some("default"), "application/json", &body) {
                prop_assert!(expected_refusal(&e), "{e:?}");
            }
        }

        /// Any JSON object of any kind decodes and validates without panicking, and
        /// is either accepted or refused with 400/422.
        #[test]
        fn arbitrary_objects_validate_cleanly(obj in json_value(), rt in 0..RESOURCES.len()) {
            let rt = &RESOURCES[rt];
            let body = serde_json::to_vec(&obj).unwrap();
            match decode_object(rt, Some("default"), "application/json", &body) {
                Ok(mut o) => {
                    crate::defaults::apply(rt, &mut o);
                    let checked = crate::validation::decode(rt, &mut o, crate::validation::FieldValidation::Strict)
                        .and_then(|_| crate::validation::check(rt, &o, None));
                    if let Err(e) = checked {
                        prop_assert!(expected_refusal(&e), "{e:?}");
                    }
                }
                Err(e) => prop_assert!(expected_refusal(&e), "{e:?}"),
            }
        }

        /// A valid Deployment with one field replaced by anything validates without
        /// panicking (against itself as the old object too, the update path).
        #[test]
        fn mutated_deployments_validate_cleanly(choices in prop::collection::vec(any::<usize>(), 0..8), value in json_value()) {
            let rt = crate::resources::find("apps", "v1", "deployments").unwrap();
            let mut d = deployment();
            set_somewhere(&mut d, &choices, value);
            let body = serde_json::to_vec(&d).unwrap();
            if let Ok(mut o) = decode_object(rt, Some("default"), "application/json", &body) {
                crate::defaults::apply(rt, &mut o);
                for (old, mode) in [(None, crate::validation::FieldValidation::Strict), (Some(&deployment()), crate::validation::FieldValidation::Warn)] {
                    let mut o = o.clone();
                    let checked = crate::validation::decode(rt, &mut o, mode).and_then(|_| crate::validation::check(rt, &o, old));
                    if let Err(e) = checked {
                        prop_assert!(expected_refusal(&e), "{e:?}");
                    }
                }
                let _ = crate::smp::apply(&mut deployment(), &o, rt);
            }
        }
    }
}
