//! Request dispatch: authentication, routing, authorization and the verbs of the real server.

use super::auth::{self, Attributes, Decision, Identity};
use super::objects::{self, DeleteOptions};
use super::resources::{self, ResourceDef};
use super::response::{self, ApiError, Reply, bad_request, not_found};
use super::selectors::{FieldSelector, LabelSelector};
use super::{Shared, convert, proxy, reviews, semantics, watch};
use axum::body::Body;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// Largest request body the real server accepts (3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// A request for a resource, parsed from its path.
#[derive(Debug, Clone)]
pub struct Target {
    /// The resource.
    pub def: &'static ResourceDef,
    /// Namespace ("" for cluster-scoped or all namespaces).
    pub namespace: String,
    /// Object name ("" for the collection).
    pub name: String,
    /// Subresource, if any.
    pub subresource: Option<String>,
    /// The path after a `proxy` subresource.
    pub proxy_path: String,
}

/// The query parameters of a request.
pub type Query = HashMap<String, String>;

enum Route {
    Health,
    Version,
    Document(Value),
    Resource(Target),
}

/// Counts a request of `who` by kind.
fn count(shared: &Shared, who: &Identity, method: &hyper::Method, path: &str, query: &Query) {
    let mut requests = shared.requests.lock().unwrap_or_else(|p| p.into_inner());
    let counts = requests.entry(who.user.clone()).or_default();
    match *method {
        hyper::Method::GET
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            counts.watches += 1
        }
        hyper::Method::GET | hyper::Method::HEAD => {
            counts.reads += 1;
            if path.contains("/configmaps") || path.contains("/secrets") {
                counts.config_reads += 1;
            }
        }
        _ if path.contains("/events") => counts.event_writes += 1,
        _ => counts.writes += 1,
    }
}

/// Serves one request from an authenticated connection (`peer` is the client certificate's identity).
pub async fn handle(
    shared: Arc<Shared>,
    peer: Option<Identity>,
    req: Request<hyper::body::Incoming>,
) -> Reply {
    let who = match authenticate(&shared, peer, &req) {
        Some(who) => who,
        None => {
            return response::status(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unauthorized",
                None,
            )
            .into();
        }
    };
    let (parts, body) = req.into_parts();
    let query: Query =
        serde_urlencoded::from_str(parts.uri.query().unwrap_or_default()).unwrap_or_default();
    count(&shared, &who, &parts.method, parts.uri.path(), &query);
    let path = parts.uri.path().to_string();
    let route = match route(&shared, &path) {
        Some(route) => route,
        None => {
            return response::status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
                None,
            )
            .into();
        }
    };
    let target = match route {
        Route::Resource(target) => target,
        other => {
            let attrs = Attributes {
                verb: parts.method.as_str().to_lowercase(),
                path: Some(path.clone()),
                ..Default::default()
            };
            if let Decision::Deny(why) = shared.store.read(|s| auth::authorize(s, &who, &attrs)) {
                return forbidden(&who, &attrs, &why);
            }
            return match other {
                Route::Health => Reply::new(Body::from("ok")),
                Route::Version => response::json(StatusCode::OK, &version()),
                Route::Document(doc) => response::json(StatusCode::OK, &doc),
                Route::Resource(_) => unreachable!("handled above"),
            };
        }
    };
    let verb = verb(&parts.method, &target, &query);
    let Some(verb) = verb else {
        return response::status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            None,
        )
        .into();
    };
    let mut attrs = Attributes {
        verb: verb.to_string(),
        group: target.def.group.to_string(),
        resource: target.def.plural.to_string(),
        subresource: target.subresource.clone(),
        namespace: target.namespace.clone(),
        name: target.name.clone(),
        path: None,
        field_selector: FieldSelector::default(),
    };
    if matches!(verb, "list" | "watch")
        && let Some(selector) = query
            .get("fieldSelector")
            .and_then(|f| FieldSelector::parse(f, target.def.kind).ok())
    {
        if let Some(name) = selector.required("metadata.name") {
            attrs.name = name.to_string();
        }
        attrs.field_selector = selector;
    }
    if let Decision::Deny(why) = shared.store.read(|s| auth::authorize(s, &who, &attrs)) {
        return forbidden(&who, &attrs, &why);
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let body = match read_body(body).await {
        Ok(Some(body)) => body,
        Ok(None) => {
            return response::status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("Request entity too large: limit is {MAX_BODY}"),
                None,
            )
            .into();
        }
        Err(e) => return bad_request(format!("reading the request body: {e}")).into(),
    };
    let ctx = Ctx {
        shared,
        who,
        target,
        query,
    };
    match verb {
        "get" if ctx.target.subresource.as_deref() == Some("log") => proxy::pod_log(&ctx).await,
        "get" if ctx.target.subresource.as_deref() == Some("proxy") => {
            proxy::node_proxy(&ctx).await
        }
        "get" => ctx.get(),
        "list" => ctx.list(),
        "watch" => watch::serve(&ctx),
        "create" | "update" if !is_json(&content_type) => response::status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml; got {content_type}"
            ),
            None,
        )
        .into(),
        "create" => ctx.create(&body),
        "update" => ctx.update(&body),
        "patch" => ctx.patch(&body, &content_type),
        "delete" => ctx.delete(&body),
        "deletecollection" => ctx.delete_collection(),
        _ => bad_request("unsupported verb").into(),
    }
}

/// Reads a request body; `None` when it is over [`MAX_BODY`] (the rest is read and dropped, so
/// the client receives the answer instead of a reset connection).
async fn read_body(mut body: hyper::body::Incoming) -> Result<Option<bytes::Bytes>, hyper::Error> {
    let mut buf = Vec::new();
    let mut too_large = false;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            too_large |= buf.len() + data.len() > MAX_BODY;
            if !too_large {
                buf.extend_from_slice(&data);
            }
        }
    }
    Ok((!too_large).then(|| buf.into()))
}

fn authenticate<B>(shared: &Shared, peer: Option<Identity>, req: &Request<B>) -> Option<Identity> {
    if let Some(peer) = peer {
        return Some(peer);
    }
    let Some(auth) = req.headers().get(header::AUTHORIZATION) else {
        return Some(Identity::anonymous());
    };
    let token = auth.to_str().ok()?.strip_prefix("Bearer ")?.trim();
    shared.identity_for_token(token)
}

fn version() -> Value {
    json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-krustlet-standin", "gitCommit": "", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"})
}

fn route(shared: &Shared, path: &str) -> Option<Route> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["healthz" | "readyz" | "livez", ..] => return Some(Route::Health),
        ["version"] => return Some(Route::Version),
        ["openapi", "v3"] => return Some(Route::Document(resources::openapi_v3_root())),
        ["openapi", "v3", "api", version] => {
            return resources::openapi_v3_group_version("", version).map(Route::Document);
        }
        ["openapi", "v3", "apis", group, version] => {
            return resources::openapi_v3_group_version(group, version).map(Route::Document);
        }
        ["api"] => return Some(Route::Document(resources::api_versions(&shared.address))),
        ["apis"] => return Some(Route::Document(resources::api_group_list())),
        ["apis", group] => return resources::api_group(group).map(Route::Document),
        ["api", version] => return resources::api_resource_list("", version).map(Route::Document),
        ["apis", group, version] => {
            return resources::api_resource_list(group, version).map(Route::Document);
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let find = |plural: &str| resources::find(group, version, plural);
    let target = |def, namespace: &str, tail: &[&str]| {
        let subresource = tail.get(1).map(|s| s.to_string());
        if subresource.as_deref().is_some_and(|s| !def_has_sub(def, s)) {
            return None;
        }
        if subresource.as_deref() != Some("proxy") && tail.len() > 2 {
            return None;
        }
        Some(Route::Resource(Target {
            def,
            namespace: namespace.to_string(),
            name: tail.first().map(|s| s.to_string()).unwrap_or_default(),
            subresource,
            proxy_path: tail.iter().skip(2).copied().collect::<Vec<_>>().join("/"),
        }))
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..] if find(plural).is_some_and(|d| d.namespaced) => {
            target(find(plural)?, ns, tail)
        }
        [plural, tail @ ..] => {
            let def = find(plural)?;
            if def.namespaced && !tail.is_empty() {
                return None;
            }
            target(def, "", tail)
        }
        _ => None,
    }
}

fn def_has_sub(def: &ResourceDef, sub: &str) -> bool {
    def.subresources.contains(&sub)
}

fn verb(method: &Method, target: &Target, query: &Query) -> Option<&'static str> {
    let one = !target.name.is_empty();
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    Some(match *method {
        Method::GET if watch => "watch",
        Method::GET if one => "get",
        Method::GET => "list",
        Method::POST if target.subresource.is_some() || !one => "create",
        Method::PUT if one => "update",
        Method::PATCH if one => "patch",
        Method::DELETE if one => "delete",
        Method::DELETE => "deletecollection",
        _ => return None,
    })
}

fn forbidden(who: &Identity, attrs: &Attributes, why: &str) -> Reply {
    let message = auth::forbidden_message(who, attrs, why);
    let details = (!attrs.resource.is_empty())
        .then(|| response::details(&attrs.name, &attrs.group, &attrs.resource));
    response::status(StatusCode::FORBIDDEN, "Forbidden", message, details).into()
}

/// One resource request being served.
pub struct Ctx {
    /// The server.
    pub shared: Arc<Shared>,
    /// Who asks.
    pub who: Identity,
    /// What it asks for.
    pub target: Target,
    /// The query parameters.
    pub query: Query,
}

impl Ctx {
    fn def(&self) -> &'static ResourceDef {
        self.target.def
    }

    fn not_found(&self) -> ApiError {
        not_found(self.def().group, self.def().plural, &self.target.name)
    }

    /// Renders a stored object as this request's resource serves it.
    pub fn present(&self, object: &Value) -> Value {
        present(self.def(), object)
    }

    fn get(&self) -> Reply {
        let def = self.def();
        match self.shared.store.read(|s| {
            s.get(def.storage, &self.target.namespace, &self.target.name)
                .cloned()
        }) {
            Some(object) => response::json(StatusCode::OK, &self.present(&object)),
            None => self.not_found().into(),
        }
    }

    /// Parses the label and field selectors of the query.
    pub fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let labels = LabelSelector::parse(
            self.query
                .get("labelSelector")
                .map(String::as_str)
                .unwrap_or_default(),
        )
        .map_err(bad_request)?;
        let fields = FieldSelector::parse(
            self.query
                .get("fieldSelector")
                .map(String::as_str)
                .unwrap_or_default(),
            self.def().kind,
        )
        .map_err(bad_request)?;
        Ok((labels, fields))
    }

    fn list(&self) -> Reply {
        let def = self.def();
        let (labels, fields) = match self.selectors() {
            Ok(s) => s,
            Err(reply) => return reply.into(),
        };
        let ns = (!self.target.namespace.is_empty()).then_some(self.target.namespace.as_str());
        let limit: usize = self
            .query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let continued = match self.query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => match parse_continue(token) {
                Some(parsed) => Some(parsed),
                None => return bad_request("continue key is not valid").into(),
            },
            None => None,
        };
        let listed = self.shared.store.read(|s| {
            if let Some((rv, _)) = &continued
                && *rv < s.oldest_rv()
            {
                return Err(response::status(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    None,
                ));
            }
            let after = continued.as_ref().map(|(_, key)| key.as_str());
            let matching: Vec<Value> = s
                .list(def.storage, ns)
                .filter(|o| after.is_none_or(|after| object_key(o).as_str() > after))
                .filter(|o| labels.matches(o) && fields.matches(&present(def, o)))
                .cloned()
                .collect();
            let rv = continued.as_ref().map_or(s.rv(), |(rv, _)| *rv);
            let page: Vec<Value> = matching.iter().take(limit).cloned().collect();
            let more = page.len() < matching.len();
            Ok((page, rv, more))
        });
        let (items, rv, more) = match listed {
            Ok(listed) => listed,
            Err(e) => return e.into(),
        };
        let items: Vec<Value> = items
            .iter()
            .map(|o| {
                let mut v = present(def, o);
                if let Some(m) = v.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                v
            })
            .collect();
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if more && let Some(last) = items.last() {
            metadata["continue"] = json!(continue_token(rv, &object_key(last)));
        }
        response::json(
            StatusCode::OK,
            &json!({
                "kind": format!("{}List", def.kind), "apiVersion": def.api_version(), "metadata": metadata, "items": items,
            }),
        )
    }

    /// Decodes, prunes and checks a request body; returns the object and any warnings.
    pub fn decode(&self, body: &[u8], def: &ResourceDef) -> Result<(Value, Vec<String>), ApiError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            bad_request(format!(
                "the object provided is unrecognized (json parse error: {e})"
            ))
        })?;
        self.check_object(value, def)
    }

    /// Prunes and checks a decoded object; returns it and any warnings.
    pub fn check_object(
        &self,
        value: Value,
        def: &ResourceDef,
    ) -> Result<(Value, Vec<String>), ApiError> {
        if !value.is_object() {
            return Err(bad_request(
                "the object provided is unrecognized (expected a JSON object)",
            ));
        }
        let api_version = value["apiVersion"]
            .as_str()
            .unwrap_or(&def.api_version())
            .to_string();
        let kind = value["kind"].as_str().unwrap_or(def.kind).to_string();
        if kind != def.kind {
            return Err(bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                def.kind
            )));
        }
        if api_version != def.api_version() {
            return Err(bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                def.api_version()
            )));
        }
        let (mut pruned, unknown) = semantics::prune(def, &value)
            .map_err(|e| bad_request(format!("request body could not be decoded: {e}")))?;
        let mut warnings = Vec::new();
        if !unknown.is_empty() {
            let strict = self.query.get("fieldValidation").map(String::as_str) == Some("Strict");
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            if strict {
                return Err(bad_request(format!(
                    "strict decoding error: {}",
                    list.join(", ")
                )));
            }
            if self.query.get("fieldValidation").map(String::as_str) != Some("Ignore") {
                warnings = list;
            }
        }
        pruned["apiVersion"] = json!(def.api_version());
        pruned["kind"] = json!(def.kind);
        if def.group == "events.k8s.io" {
            pruned = convert::to_core(&pruned);
        }
        Ok((pruned, warnings))
    }

    fn create(&self, body: &[u8]) -> Reply {
        let def = self.def();
        match (def.plural, self.target.subresource.as_deref()) {
            ("pods", Some("binding")) | ("bindings", None) => return reviews::bind(self, body),
            ("serviceaccounts", Some("token")) => return reviews::token_request(self, body),
            ("tokenreviews", _) => return reviews::token_review(self, body),
            ("subjectaccessreviews" | "selfsubjectaccessreviews", _) => {
                return reviews::access_review(self, body);
            }
            (_, Some(_)) => {
                return response::status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                    None,
                )
                .into();
            }
            _ => {}
        }
        let (object, warnings) = match self.decode(body, def) {
            Ok(decoded) => decoded,
            Err(reply) => return reply.into(),
        };
        let created = self
            .shared
            .store
            .write(|state| objects::create(state, def, &self.target.namespace, &self.who, object));
        with_warnings(
            created.map(|o| response::json(StatusCode::CREATED, &self.present(&o))),
            &warnings,
        )
    }

    fn update(&self, body: &[u8]) -> Reply {
        let def = self.def();
        let (object, warnings) = match self.decode(body, def) {
            Ok(decoded) => decoded,
            Err(reply) => return reply.into(),
        };
        if object["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n != self.target.name)
        {
            return bad_request("the name of the object does not match the name on the URL").into();
        }
        let updated = self.shared.store.write(|state| {
            objects::update(
                state,
                def,
                &self.target,
                &self.who,
                object,
                objects::Precondition::FromObject,
            )
        });
        with_warnings(
            updated.map(|o| response::json(StatusCode::OK, &self.present(&o))),
            &warnings,
        )
    }

    fn patch(&self, body: &[u8], content_type: &str) -> Reply {
        let def = self.def();
        let Some(patch_type) = super::patch::PatchType::from_content_type(content_type) else {
            return response::status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json; got {content_type}"
                ),
                None,
            ).into();
        };
        let patch: Value = match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => return bad_request(format!("error decoding patch: {e}")).into(),
        };
        let patched = self.shared.store.write(|state| {
            let current = state
                .get(def.storage, &self.target.namespace, &self.target.name)
                .cloned()
                .ok_or_else(|| self.not_found())?;
            let current_rv = current["metadata"]["resourceVersion"].clone();
            let merged =
                super::patch::apply(&present(def, &current), &patch, patch_type).map_err(|e| {
                    response::status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e, None)
                })?;
            let (object, warnings) = self.check_object(merged, def)?;
            let precondition = if object["metadata"]["resourceVersion"] != current_rv {
                objects::Precondition::FromObject
            } else {
                objects::Precondition::None
            };
            objects::update(state, def, &self.target, &self.who, object, precondition)
                .map(|o| (o, warnings))
        });
        match patched {
            Ok((object, warnings)) => with_warnings(
                Ok(response::json(StatusCode::OK, &self.present(&object))),
                &warnings,
            ),
            Err(reply) => reply.into(),
        }
    }

    fn delete_options(&self, body: &[u8]) -> Result<DeleteOptions, ApiError> {
        let mut options = if body.iter().all(u8::is_ascii_whitespace) {
            DeleteOptions::default()
        } else {
            serde_json::from_slice(body)
                .map_err(|e| bad_request(format!("invalid DeleteOptions: {e}")))?
        };
        if let Some(grace) = self.query.get("gracePeriodSeconds") {
            options.grace_period_seconds = Some(
                grace
                    .parse()
                    .map_err(|_| bad_request("gracePeriodSeconds must be an integer"))?,
            );
        }
        Ok(options)
    }

    fn delete(&self, body: &[u8]) -> Reply {
        let def = self.def();
        let options = match self.delete_options(body) {
            Ok(o) => o,
            Err(reply) => return reply.into(),
        };
        let result = self.shared.store.write(|state| {
            objects::delete(
                state,
                def,
                &self.target.namespace,
                &self.target.name,
                &options,
            )
        });
        match result {
            Ok(object) => response::json(StatusCode::OK, &self.present(&object)),
            Err(reply) => reply.into(),
        }
    }

    fn delete_collection(&self) -> Reply {
        let def = self.def();
        let (labels, fields) = match self.selectors() {
            Ok(s) => s,
            Err(reply) => return reply.into(),
        };
        let ns = (!self.target.namespace.is_empty()).then_some(self.target.namespace.as_str());
        let deleted: Vec<Value> = self.shared.store.write(|state| {
            let names: Vec<(String, String)> = state
                .list(def.storage, ns)
                .filter(|o| labels.matches(o) && fields.matches(o))
                .map(super::store::key_of)
                .collect();
            names
                .iter()
                .filter_map(|(ns, name)| {
                    objects::delete(state, def, ns, name, &DeleteOptions::default()).ok()
                })
                .collect()
        });
        let items: Vec<Value> = deleted.iter().map(|o| self.present(o)).collect();
        response::json(
            StatusCode::OK,
            &json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(), "metadata": {}, "items": items}),
        )
    }
}

/// Renders a stored object as `def` serves it.
pub fn present(def: &ResourceDef, object: &Value) -> Value {
    let mut v = if def.group == "events.k8s.io" {
        convert::to_events_v1(object)
    } else {
        object.clone()
    };
    v["apiVersion"] = json!(def.api_version());
    v["kind"] = json!(def.kind);
    v
}

/// `namespace/name` of an object, the order lists are served in.
fn object_key(object: &Value) -> String {
    let (ns, name) = super::store::key_of(object);
    format!("{ns}/{name}")
}

/// A continue token in the real server's format: base64url JSON with the list's
/// resourceVersion and the key the next page starts after.
fn continue_token(rv: u64, after: &str) -> String {
    use base64::Engine;
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{after}\u{0}")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn parse_continue(token: &str) -> Option<(u64, String)> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    let start = value["start"]
        .as_str()?
        .trim_end_matches('\u{0}')
        .to_string();
    Some((value["rv"].as_u64()?, start))
}

fn with_warnings(reply: Result<Reply, ApiError>, warnings: &[String]) -> Reply {
    let mut reply = reply.unwrap_or_else(Reply::from);
    for w in warnings {
        if let Ok(value) = format!("299 - \"{}\"", w.replace('"', "\\\"")).parse() {
            reply.headers_mut().append(header::WARNING, value);
        }
    }
    reply
}

/// Whether a create or update body is JSON (the only encoding the stand-in speaks; the real
/// server also takes protobuf and CBOR, and answers 415 for what it does not know).
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json") || essence.is_empty()
}
