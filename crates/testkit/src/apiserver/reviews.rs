//! The create-only endpoints: pod bindings, TokenRequests, TokenReviews and access reviews.

use super::auth::{self, Attributes, Decision, Identity};
use super::handlers::Ctx;
use super::objects::now;
use super::resources;
use super::response::{self, ApiError, Reply, bad_request, not_found};
use http::StatusCode;
use serde_json::{Value, json};

fn decode(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        bad_request(format!(
            "the object provided is unrecognized (json parse error: {e})"
        ))
    })
}

/// `POST pods/{name}/binding` (or `bindings`): assigns a pod to a node, as the scheduler does.
pub fn bind(ctx: &Ctx, body: &[u8]) -> Reply {
    let binding = match decode(body) {
        Ok(b) => b,
        Err(reply) => return reply.into(),
    };
    let pod_name = if ctx.target.name.is_empty() {
        binding["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    } else {
        ctx.target.name.clone()
    };
    let node = binding["target"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if node.is_empty() {
        return response::invalid(
            "Binding",
            "",
            &pod_name,
            &[("target.name".into(), "Required value".into())],
        )
        .into();
    }
    let ns = ctx.target.namespace.clone();
    let result = ctx.shared.store.write(|state| {
        let mut pod = state.get("pods", &ns, &pod_name).cloned().ok_or_else(|| not_found("", "pods", &pod_name))?;
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            return Err(response::conflict("", "pods", &pod_name, "the pod is being deleted"));
        }
        if let Some(current) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(response::conflict("", "pods", &pod_name, &format!("pod {pod_name} is already assigned to node \"{current}\"")));
        }
        pod["spec"]["nodeName"] = json!(node);
        let conditions = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let mut conditions: Vec<Value> = conditions.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()}));
        pod["status"]["conditions"] = Value::Array(conditions);
        super::semantics::strip_nulls(&mut pod);
        Ok(state.put("pods", pod))
    });
    match result {
        Ok(_) => response::json(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ),
        Err(reply) => reply.into(),
    }
}

/// `POST serviceaccounts/{name}/token`: issues a token that authenticates as the service account.
pub fn token_request(ctx: &Ctx, body: &[u8]) -> Reply {
    let mut request = match decode(body) {
        Ok(b) => b,
        Err(reply) => return reply.into(),
    };
    let (ns, name) = (&ctx.target.namespace, &ctx.target.name);
    if ctx
        .shared
        .store
        .read(|s| s.get("serviceaccounts", ns, name).is_none())
    {
        return not_found("", "serviceaccounts", name).into();
    }
    let seconds = request["spec"]["expirationSeconds"]
        .as_i64()
        .unwrap_or(3600)
        .max(600);
    let expires = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .unwrap_or(jiff::Timestamp::MAX)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let identity = Identity::user(
        format!("system:serviceaccount:{ns}:{name}"),
        &[
            "system:serviceaccounts",
            &format!("system:serviceaccounts:{ns}"),
        ],
    );
    let token = ctx.shared.issue_token(identity);
    request["spec"]["expirationSeconds"] = json!(seconds);
    request["status"] = json!({"token": token, "expirationTimestamp": expires});
    request["metadata"]["creationTimestamp"] = json!(now());
    request["apiVersion"] = json!("authentication.k8s.io/v1");
    request["kind"] = json!("TokenRequest");
    response::json(StatusCode::CREATED, &request)
}

/// `POST tokenreviews`.
pub fn token_review(ctx: &Ctx, body: &[u8]) -> Reply {
    let mut review = match decode(body) {
        Ok(b) => b,
        Err(reply) => return reply.into(),
    };
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    review["status"] = match ctx.shared.identity_for_token(token) {
        Some(who) => {
            json!({"authenticated": true, "user": {"username": who.user, "groups": who.groups}})
        }
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    review["apiVersion"] = json!("authentication.k8s.io/v1");
    review["kind"] = json!("TokenReview");
    response::json(StatusCode::CREATED, &review)
}

/// `POST subjectaccessreviews` and `selfsubjectaccessreviews`.
pub fn access_review(ctx: &Ctx, body: &[u8]) -> Reply {
    let mut review = match decode(body) {
        Ok(b) => b,
        Err(reply) => return reply.into(),
    };
    let spec = &review["spec"];
    let subject = if ctx.target.def.plural == "selfsubjectaccessreviews" {
        ctx.who.clone()
    } else {
        let groups: Vec<String> = spec["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(String::from))
            .collect();
        Identity {
            user: spec["user"].as_str().unwrap_or_default().to_string(),
            groups,
        }
    };
    let attrs = if let Some(r) = spec["resourceAttributes"].as_object() {
        let field = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Attributes {
            verb: field("verb"),
            group: field("group"),
            resource: field("resource"),
            subresource: Some(field("subresource")).filter(|s| !s.is_empty()),
            namespace: field("namespace"),
            name: field("name"),
            ..Default::default()
        }
    } else if let Some(n) = spec["nonResourceAttributes"].as_object() {
        Attributes {
            verb: n
                .get("verb")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            path: Some(
                n.get("path")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            ),
            ..Default::default()
        }
    } else {
        return response::invalid(ctx.target.def.kind, ctx.target.def.group, "", &[("spec".into(), "Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified".into())]).into();
    };
    if attrs.path.is_none()
        && resources::RESOURCES
            .iter()
            .all(|r| r.plural != attrs.resource)
    {
        review["status"] = json!({"allowed": false, "reason": "no such resource"});
    } else {
        review["status"] = match ctx
            .shared
            .store
            .read(|s| auth::authorize(s, &subject, &attrs))
        {
            Decision::Allow => json!({"allowed": true}),
            Decision::Deny(why) => json!({"allowed": false, "reason": why}),
        };
    }
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["kind"] = json!(ctx.target.def.kind);
    response::json(StatusCode::CREATED, &review)
}
