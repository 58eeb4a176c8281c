//! API errors in the Kubernetes `Status` form (`kind: Status`, `status: Failure`,
//! `code`, `reason`, `message`, `details`), which kubectl prints as
//! `Error from server (<reason>): <message>`.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// One cause of an `Invalid` error: kubectl prints `<field>: <message>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// Upstream's cause type, e.g. `FieldValueInvalid`, `FieldValueRequired`.
    pub reason: &'static str,
    /// The message for this field.
    pub message: String,
    /// The field path, e.g. `metadata.name`.
    pub field: String,
}

/// An API error answered as a `Status`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Upstream's `StatusReason` (`NotFound`, `AlreadyExists`, `Conflict`, ...).
    pub reason: &'static str,
    /// The message kubectl shows.
    pub message: String,
    /// `details` (name, group, kind, causes), when there is one.
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 404 NotFound for an object: `<resource>[.<group>] "<name>" not found`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        let qualified = qualified(group, resource);
        Self::new(404, "NotFound", format!("{qualified} \"{name}\" not found"))
            .with_details(json!({"name": name, "group": group, "kind": resource}))
    }

    /// 404 NotFound for a path that serves nothing.
    pub fn no_route() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
            .with_details(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]}))
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 409 AlreadyExists.
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        let qualified = qualified(group, resource);
        Self::new(
            409,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
        )
        .with_details(json!({"name": name, "group": group, "kind": resource}))
    }

    /// 409 Conflict for an update against a changed object.
    pub fn conflict(group: &str, resource: &str, name: &str) -> Self {
        let qualified = qualified(group, resource);
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {qualified} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .with_details(json!({"name": name, "group": group, "kind": resource}))
    }

    /// 410 Expired: the resourceVersion is compacted away.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format: {content_type}"),
        )
    }

    /// 422 Invalid: `<Kind> "<name>" is invalid: <field>: <message>, ...`.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let summary: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let message = match summary.len() {
            1 => format!("{kind} \"{name}\" is invalid: {}", summary[0]),
            _ => format!("{kind} \"{name}\" is invalid: [{}]", summary.join(", ")),
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        Self::new(422, "Invalid", message)
            .with_details(json!({"name": name, "group": group, "kind": kind, "causes": causes}))
    }

    /// 422 Invalid without field causes (e.g. a JSON patch that does not apply).
    pub fn new_unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// 429 TooManyRequests (an eviction a disruption budget refuses).
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(429, "TooManyRequests", message)
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// 503 ServiceUnavailable (a retryable store failure).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = self.to_status().to_string();
        let mut r = (code, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}

impl From<crate::storage::Error> for ApiError {
    fn from(e: crate::storage::Error) -> Self {
        use crate::storage::Error as S;
        match e {
            S::Compacted { .. } => {
                ApiError::expired("The resourceVersion for the provided list is too old.")
            }
            S::FutureRevision { .. } => ApiError::new(504, "Timeout", "Too large resource version"),
            S::Unavailable(m) => ApiError::unavailable(m),
            // NotFound/AlreadyExists/Conflict carry object names only callers know;
            // handlers map those themselves. Reaching here is a bug.
            other => ApiError::internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_every_cause_with_its_field() {
        let e = ApiError::invalid(
            "apps",
            "Deployment",
            "web",
            vec![
                Cause {
                    reason: "FieldValueInvalid",
                    message: "bad".into(),
                    field: "metadata.name".into(),
                },
                Cause {
                    reason: "FieldValueRequired",
                    message: "Required value".into(),
                    field: "spec.selector".into(),
                },
            ],
        );
        assert_eq!(
            e.message,
            "Deployment \"web\" is invalid: [metadata.name: bad, spec.selector: Required value]"
        );
        let s = e.to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["reason"], "Invalid");
        assert_eq!(s["details"]["causes"][1]["field"], "spec.selector");
    }

    #[test]
    fn not_found_names_the_group_qualified_resource() {
        assert_eq!(
            ApiError::not_found("apps", "deployments", "x").message,
            "deployments.apps \"x\" not found"
        );
        assert_eq!(
            ApiError::not_found("", "configmaps", "y").message,
            "configmaps \"y\" not found"
        );
    }
}
