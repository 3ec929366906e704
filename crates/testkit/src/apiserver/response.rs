//! Responses in the real server's shapes: objects, and errors as `kind: Status` bodies.

use axum::body::Body;
use http::{Response, StatusCode, header};
use serde_json::{Value, json};

/// A response.
pub type Reply = Response<Body>;

/// An error answer in the real server's shape (`kind: Status`), turned into a response at the edge.
#[derive(Debug)]
pub struct ApiError {
    code: StatusCode,
    body: Box<Value>,
}

impl From<ApiError> for Reply {
    fn from(error: ApiError) -> Self {
        json(error.code, &error.body)
    }
}

/// A JSON response.
pub fn json(code: StatusCode, value: &Value) -> Reply {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            serde_json::to_vec(value).expect("JSON values always encode"),
        ))
        .expect("static response parts are valid")
}

/// An error as the real server reports it.
pub fn status(
    code: StatusCode,
    reason: &str,
    message: impl Into<String>,
    details: Option<Value>,
) -> ApiError {
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code.as_u16(),
    });
    if let Some(details) = details {
        body["details"] = details;
    }
    ApiError {
        code,
        body: Box::new(body),
    }
}

/// Details naming one object of a resource.
pub fn details(name: &str, group: &str, plural: &str) -> Value {
    let mut d = json!({"name": name, "kind": plural});
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

/// 400 BadRequest.
pub fn bad_request(message: impl Into<String>) -> ApiError {
    status(StatusCode::BAD_REQUEST, "BadRequest", message, None)
}

/// 404 NotFound for one object.
pub fn not_found(group: &str, plural: &str, name: &str) -> ApiError {
    let qualified = qualified(group, plural);
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{qualified} \"{name}\" not found"),
        Some(details(name, group, plural)),
    )
}

/// 409 Conflict for a stale resourceVersion or failed precondition.
pub fn conflict(group: &str, plural: &str, name: &str, why: &str) -> ApiError {
    let qualified = qualified(group, plural);
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!("Operation cannot be fulfilled on {qualified} \"{name}\": {why}"),
        Some(details(name, group, plural)),
    )
}

/// 422 Invalid with field causes.
pub fn invalid(kind: &str, group: &str, name: &str, errors: &[(String, String)]) -> ApiError {
    let causes: Vec<Value> = errors
        .iter()
        .map(|(field, msg)| json!({"reason": "FieldValueInvalid", "message": msg, "field": field}))
        .collect();
    let rendered: Vec<String> = errors.iter().map(|(f, m)| format!("{f}: {m}")).collect();
    let list = if rendered.len() == 1 {
        rendered[0].clone()
    } else {
        format!("[{}]", rendered.join(", "))
    };
    let mut d = json!({"name": name, "kind": kind, "causes": causes});
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    status(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!("{kind} \"{name}\" is invalid: {list}"),
        Some(d),
    )
}

/// `plural.group`, or `plural` for the core group.
pub fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}
