//! Locked apps: the JSON form of a Spin app that `spin registry push` puts in an image (a layer
//! of type [`LOCKED_APP_MEDIA_TYPE`], or the manifest's config in Spin 1), lock versions 0 and 1.
//! Components and files are blobs of the image named by digest, or inlined when small.

use crate::app::{
    App, AppError, Component, Content, Executor, Files, HttpTrigger, Route, Variable,
};
use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The media type of the locked app's layer (and of the manifest config in Spin 1).
pub const LOCKED_APP_MEDIA_TYPE: &str = "application/vnd.fermyon.spin.application.v1+config";

/// The `must_understand` entries this node understands.
const UNDERSTOOD: &[&str] = &["host_requirements", "component_host_requirements"];

/// Host requirements this node meets (none yet: service chaining is Spin host interfaces'
/// work).
const MET_HOST_REQUIREMENTS: &[&str] = &[];

#[derive(Deserialize)]
struct LockedApp {
    #[serde(default)]
    must_understand: Vec<String>,
    #[serde(default)]
    metadata: AppMetadata,
    #[serde(default)]
    host_requirements: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    variables: BTreeMap<String, LockedVariable>,
    triggers: Vec<LockedTrigger>,
    components: Vec<LockedComponent>,
}

#[derive(Deserialize, Default)]
struct AppMetadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: String,
    /// Spin 1: `{"type": "http", "base": "/"}`.
    #[serde(default)]
    trigger: Option<TriggerMetadata>,
    /// Spin 2 and later: per trigger type, its application-level settings.
    #[serde(default)]
    triggers: BTreeMap<String, TriggerMetadata>,
}

#[derive(Deserialize, Default)]
struct TriggerMetadata {
    #[serde(default)]
    base: Option<String>,
}

#[derive(Deserialize)]
struct LockedVariable {
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    secret: bool,
}

#[derive(Deserialize)]
struct LockedTrigger {
    #[serde(default)]
    id: String,
    trigger_type: String,
    trigger_config: HttpTriggerConfig,
}

/// The HTTP trigger's configuration, in a locked app and in `spin.toml` alike.
#[derive(Deserialize, Default)]
pub(crate) struct HttpTriggerConfig {
    #[serde(default)]
    pub(crate) component: Option<String>,
    #[serde(default)]
    pub(crate) route: Option<RouteConfig>,
    #[serde(default)]
    pub(crate) executor: Option<ExecutorConfig>,
}

/// `route = "/path"` or `route = { private = true }`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum RouteConfig {
    Path(String),
    Private { private: bool },
}

/// `executor = { type = "spin" | "http" | "wagi", argv = "..." }`.
#[derive(Deserialize)]
pub(crate) struct ExecutorConfig {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    argv: Option<String>,
}

#[derive(Deserialize)]
struct LockedComponent {
    id: String,
    #[serde(default)]
    metadata: ComponentMetadata,
    source: ContentRef,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    files: Vec<ContentPath>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    dependencies: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    host_requirements: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct ComponentMetadata {
    #[serde(default)]
    allowed_outbound_hosts: Option<Vec<String>>,
    /// Spin 1 locked apps.
    #[serde(default)]
    allowed_http_hosts: Vec<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    databases: Vec<String>,
    #[serde(default)]
    ai_models: Vec<String>,
}

#[derive(Deserialize)]
struct ContentRef {
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    inline: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Deserialize)]
struct ContentPath {
    #[serde(flatten)]
    content: ContentRef,
    path: String,
}

/// Reads a locked app and checks it ([`App::check`]).
pub fn parse(json: &[u8]) -> Result<App, AppError> {
    #[derive(Deserialize)]
    struct Version {
        spin_lock_version: serde_json::Value,
    }
    let version: Version = serde_json::from_slice(json).map_err(AppError::LockedApp)?;
    if !matches!(version.spin_lock_version.as_u64(), Some(0 | 1)) {
        return Err(AppError::Version {
            what: "spin_lock_version",
            found: version.spin_lock_version.to_string(),
        });
    }
    let locked: LockedApp = serde_json::from_slice(json).map_err(AppError::LockedApp)?;
    if let Some(unknown) = locked
        .must_understand
        .iter()
        .find(|m| !UNDERSTOOD.contains(&m.as_str()))
    {
        return Err(AppError::MustUnderstand(format!("{unknown:?}")));
    }
    let requirements = locked
        .components
        .iter()
        .flat_map(|c| &c.host_requirements)
        .chain(&locked.host_requirements);
    check_host_requirements(requirements)?;
    let base = http_base(&locked.metadata)?;
    let triggers = http_triggers(
        locked.triggers,
        |trigger| {
            trigger
                .component
                .clone()
                .ok_or_else(|| AppError::Invalid("an HTTP trigger names no component".to_owned()))
        },
        &base,
    )?;
    let components = locked
        .components
        .into_iter()
        .map(component)
        .collect::<Result<_, _>>()?;
    let app = App {
        name: locked.metadata.name,
        version: locked.metadata.version,
        variables: locked
            .variables
            .into_iter()
            .map(|(name, v)| {
                (
                    name,
                    Variable {
                        default: v.default,
                        secret: v.secret,
                    },
                )
            })
            .collect(),
        http_triggers: triggers,
        components,
    };
    app.check()?;
    Ok(app)
}

/// Refuses requirements this node does not meet (`"optional"` ones are not requirements).
fn check_host_requirements<'a>(
    requirements: impl Iterator<Item = (&'a String, &'a serde_json::Value)>,
) -> Result<(), AppError> {
    for (name, value) in requirements {
        if value.as_str() != Some("optional") && !MET_HOST_REQUIREMENTS.contains(&name.as_str()) {
            return Err(AppError::HostRequirement(name.clone()));
        }
    }
    Ok(())
}

/// The HTTP trigger's base, from Spin 1's `trigger` or Spin 2's `triggers.http` metadata.
fn http_base(metadata: &AppMetadata) -> Result<String, AppError> {
    let base = metadata
        .triggers
        .get("http")
        .and_then(|t| t.base.clone())
        .or_else(|| metadata.trigger.as_ref().and_then(|t| t.base.clone()));
    Ok(base.unwrap_or_else(|| "/".to_owned()))
}

/// The HTTP triggers, with the base before each route; other trigger types are refused.
fn http_triggers(
    triggers: Vec<LockedTrigger>,
    component_of: impl Fn(&HttpTriggerConfig) -> Result<String, AppError>,
    base: &str,
) -> Result<Vec<HttpTrigger>, AppError> {
    let others: Vec<&str> = triggers
        .iter()
        .map(|t| t.trigger_type.as_str())
        .filter(|t| *t != "http")
        .collect();
    if !others.is_empty() {
        return Err(AppError::Trigger(others.join(", ")));
    }
    triggers
        .into_iter()
        .enumerate()
        .map(|(index, trigger)| {
            let component = component_of(&trigger.trigger_config)?;
            let id = if trigger.id.is_empty() {
                format!("trigger-{index}")
            } else {
                trigger.id
            };
            http_trigger(id, component, trigger.trigger_config, base)
        })
        .collect()
}

/// One HTTP trigger from its configuration.
pub(crate) fn http_trigger(
    id: String,
    component: String,
    config: HttpTriggerConfig,
    base: &str,
) -> Result<HttpTrigger, AppError> {
    let route = match config.route {
        Some(RouteConfig::Path(route)) => Route::Path(with_base(base, &route)),
        Some(RouteConfig::Private { private: true }) => Route::Private,
        Some(RouteConfig::Private { private: false }) => {
            return Err(AppError::Invalid(format!(
                "HTTP trigger {id:?} has route {{ private = false }}: a route is a path pattern or {{ private = true }}"
            )));
        }
        None => {
            return Err(AppError::Invalid(format!(
                "HTTP trigger {id:?} has no route: give it `route = \"/...\"`"
            )));
        }
    };
    let executor = match config.executor {
        None => Executor::Http,
        Some(ExecutorConfig { kind, argv }) => match kind.as_str() {
            "spin" | "http" => Executor::Http,
            "wagi" => Executor::Wagi {
                argv: argv.unwrap_or_else(|| "${SCRIPT_NAME} ${ARGS}".to_owned()),
            },
            other => {
                return Err(AppError::Invalid(format!(
                    "HTTP trigger {id:?} has executor type {other:?}: Spin's executors are \"spin\", \"http\" and \"wagi\""
                )));
            }
        },
    };
    Ok(HttpTrigger {
        id,
        component,
        route,
        executor,
    })
}

/// A route under the app's base (Spin 1 and 2's `base`, `/` unless set).
fn with_base(base: &str, route: &str) -> String {
    let base = base.trim_end_matches('/');
    let route = route.strip_prefix('/').unwrap_or(route);
    format!("{base}/{route}")
}

fn component(locked: LockedComponent) -> Result<Component, AppError> {
    let id = locked.id;
    if !locked.dependencies.is_empty() {
        return Err(AppError::Invalid(format!(
            "component {id:?} has component dependencies, which this node does not compose yet: compose them into the component before pushing (`spin build` with `wac`)"
        )));
    }
    let source = content(locked.source)
        .map_err(|reason| AppError::Invalid(format!("the source of component {id:?} {reason}")))?;
    let files = locked
        .files
        .into_iter()
        .map(|file| {
            let path = file.path;
            let content = content(file.content).map_err(|reason| {
                AppError::Invalid(format!("file {path:?} of component {id:?} {reason}"))
            })?;
            Ok(Files::File { content, path })
        })
        .collect::<Result<_, AppError>>()?;
    let metadata = locked.metadata;
    let allowed_outbound_hosts = match metadata.allowed_outbound_hosts {
        Some(hosts) => hosts,
        None => crate::manifest::outbound_hosts_of_http_hosts(&metadata.allowed_http_hosts),
    };
    Ok(Component {
        id,
        source,
        environment: locked.env,
        files,
        exclude_files: Vec::new(),
        variables: locked.config,
        allowed_outbound_hosts,
        key_value_stores: metadata.key_value_stores,
        sqlite_databases: metadata.databases,
        ai_models: metadata.ai_models,
    })
}

/// Where a piece of a locked app is: inline bytes first, else its digest (a `source` URL
/// alone points off the image, which a pod may not reach).
fn content(content: ContentRef) -> Result<Content, String> {
    if let Some(inline) = content.inline {
        return base64::engine::general_purpose::STANDARD
            .decode(inline)
            .map(Content::Inline)
            .map_err(|e| format!("has inline content that is not base64: {e}"));
    }
    match content.digest {
        Some(digest) if is_sha256_digest(&digest) => Ok(Content::Digest(digest)),
        Some(digest) => Err(format!(
            "has digest {digest:?}, which is not sha256:<64 hex digits>"
        )),
        None => Err(format!(
            "is not in the image (no digest or inline content{}): push the app with `spin registry push` or `krustlet-wasi push`",
            content
                .source
                .map(|s| format!(", only the source {s:?}"))
                .unwrap_or_default()
        )),
    }
}

fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn locked(version: u64) -> serde_json::Value {
        json!({
            "spin_lock_version": version,
            "metadata": {"name": "shop", "version": "1.0.0", "triggers": {"http": {}}},
            "variables": {"greeting": {"default": "hi"}, "token": {"secret": true}},
            "triggers": [
                {"id": "t-cart", "trigger_type": "http",
                 "trigger_config": {"component": "cart", "route": "/cart/...", "executor": {"type": "spin"}}},
                {"id": "t-cgi", "trigger_type": "http",
                 "trigger_config": {"component": "cgi", "route": "/cgi", "executor": {"type": "wagi"}}},
                {"id": "t-private", "trigger_type": "http",
                 "trigger_config": {"component": "cart", "route": {"private": true}}}
            ],
            "components": [
                {"id": "cart",
                 "metadata": {"allowed_outbound_hosts": ["https://api.example.com"], "key_value_stores": ["default"], "databases": ["default"]},
                 "source": {"content_type": "application/wasm", "digest": DIGEST},
                 "env": {"MODE": "prod"},
                 "files": [{"digest": DIGEST, "path": "static/site.css"}, {"inline": "aGk=", "path": "hi.txt"}],
                 "config": {"message": "{{ greeting }}!"}},
                {"id": "cgi",
                 "metadata": {"allowed_http_hosts": ["example.com:8080", "insecure:allow-all"]},
                 "source": {"content_type": "application/wasm", "digest": DIGEST}}
            ]
        })
    }

    fn parse_json(value: &serde_json::Value) -> Result<App, AppError> {
        parse(&serde_json::to_vec(value).unwrap())
    }

    #[test]
    fn reads_what_spin_registry_push_writes() {
        let app = parse_json(&locked(0)).unwrap();
        assert_eq!(app.name, "shop");
        assert_eq!(
            app.variables["token"],
            Variable {
                default: None,
                secret: true
            }
        );
        assert_eq!(app.http_triggers.len(), 3);
        assert_eq!(app.http_triggers[0].route, Route::Path("/cart/...".into()));
        assert_eq!(
            app.http_triggers[1].executor,
            Executor::Wagi {
                argv: "${SCRIPT_NAME} ${ARGS}".into()
            }
        );
        assert_eq!(app.http_triggers[2].route, Route::Private);
        let cart = app.component("cart").unwrap();
        assert_eq!(cart.source, Content::Digest(DIGEST.into()));
        assert_eq!(
            cart.files,
            vec![
                Files::File {
                    content: Content::Digest(DIGEST.into()),
                    path: "static/site.css".into()
                },
                Files::File {
                    content: Content::Inline(b"hi".to_vec()),
                    path: "hi.txt".into()
                },
            ]
        );
        assert_eq!(cart.sqlite_databases, ["default"]);
        let cgi = app.component("cgi").unwrap();
        assert!(
            cgi.allowed_outbound_hosts
                .contains(&"https://*:*".to_owned()),
            "{:?}",
            cgi.allowed_outbound_hosts
        );
        parse_json(&locked(1)).unwrap();
    }

    #[test]
    fn spin_1_base_goes_before_every_route() {
        let mut app = locked(0);
        app["metadata"] = json!({"name": "old", "trigger": {"type": "http", "base": "/api/"}});
        let app = parse_json(&app).unwrap();
        assert_eq!(
            app.http_triggers[0].route,
            Route::Path("/api/cart/...".into())
        );
    }

    #[test]
    fn refuses_what_it_cannot_run_saying_why() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                json!({"spin_lock_version": 2}),
                "spin_lock_version 2 is not supported",
            ),
            (
                {
                    let mut a = locked(1);
                    a["must_understand"] = json!(["time_travel"]);
                    a
                },
                "\"time_travel\"",
            ),
            (
                {
                    let mut a = locked(1);
                    a["must_understand"] = json!(["host_requirements"]);
                    a["host_requirements"] = json!({"local_service_chaining": "required"});
                    a
                },
                "local_service_chaining",
            ),
            (
                {
                    let mut a = locked(0);
                    a["triggers"][0]["trigger_type"] = json!("redis");
                    a
                },
                "redis triggers",
            ),
            (
                {
                    let mut a = locked(0);
                    a["triggers"] = json!([]);
                    a
                },
                "no HTTP trigger",
            ),
            (
                {
                    let mut a = locked(0);
                    a["triggers"][0]["trigger_config"]["component"] = json!("nope");
                    a
                },
                "\"nope\"",
            ),
            (
                {
                    let mut a = locked(0);
                    a["triggers"][1]["trigger_config"]["route"] = json!("/cart/...");
                    a
                },
                "both component",
            ),
            (
                {
                    let mut a = locked(0);
                    a["components"][0]["source"] =
                        json!({"content_type": "application/wasm", "source": "file:///x.wasm"});
                    a
                },
                "not in the image",
            ),
            (
                {
                    let mut a = locked(0);
                    a["components"][0]["source"]["digest"] = json!("sha256:../../etc");
                    a
                },
                "not sha256",
            ),
            (
                {
                    let mut a = locked(0);
                    a["components"][0]["config"] = json!({"message": "{{ nope }}"});
                    a
                },
                "not an application variable",
            ),
            (
                {
                    let mut a = locked(0);
                    a["components"][0]["dependencies"] = json!({"a:b/c": {}});
                    a
                },
                "component dependencies",
            ),
            (
                json!({"spin_lock_version": 0, "triggers": "x"}),
                "not valid",
            ),
        ];
        for (input, expected) in cases {
            let message = parse_json(&input).unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "{expected:?} not in {message:?}"
            );
        }
        // An optional requirement is no requirement.
        let mut optional = locked(1);
        optional["host_requirements"] = json!({"local_service_chaining": "optional"});
        parse_json(&optional).unwrap();
    }
}
