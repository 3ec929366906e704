//! `spin.toml`, versions 1 and 2, as found at the root of a Spin app's filesystem image: the
//! app model with each component's source and files as paths beneath that root.

use crate::app::{App, AppError, Component, Content, Files, Variable};
use crate::locked::{HttpTriggerConfig, http_trigger};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The manifest's file name at the app's root.
pub const MANIFEST_FILE: &str = "spin.toml";

/// Reads a `spin.toml` (version 1 or 2) and checks the app ([`App::check`]).
pub fn parse(text: &str) -> Result<App, AppError> {
    #[derive(Deserialize)]
    struct Version {
        #[serde(default)]
        spin_manifest_version: Option<toml::Value>,
        #[serde(default)]
        spin_version: Option<toml::Value>,
    }
    let version: Version = toml::from_str(text).map_err(AppError::Manifest)?;
    let app = match version.spin_manifest_version.or(version.spin_version) {
        Some(toml::Value::Integer(2)) => v2(toml::from_str(text).map_err(AppError::Manifest)?)?,
        Some(toml::Value::String(v)) if v == "1" => {
            v1(toml::from_str(text).map_err(AppError::Manifest)?)?
        }
        found => {
            return Err(AppError::Version {
                what: "spin_manifest_version",
                found: found.map_or_else(|| "(missing)".to_owned(), |v| v.to_string()),
            });
        }
    };
    app.check()?;
    Ok(app)
}

/// Spin 1's `allowed_http_hosts` as the `allowed_outbound_hosts` rules Spin converts them to
/// (`insecure:allow-all` allows every HTTP and HTTPS host).
pub(crate) fn outbound_hosts_of_http_hosts(hosts: &[String]) -> Vec<String> {
    if hosts.iter().any(|h| h == "insecure:allow-all") {
        return vec![
            "http://*:*".into(),
            "https://*:*".into(),
            "http://self".into(),
        ];
    }
    hosts
        .iter()
        .flat_map(|host| {
            let host = host
                .strip_prefix("http://")
                .or_else(|| host.strip_prefix("https://"))
                .unwrap_or(host)
                .trim_end_matches('/');
            if host == "self" {
                vec!["http://self".to_owned()]
            } else {
                vec![format!("http://{host}"), format!("https://{host}")]
            }
        })
        .collect()
}

// ---- version 2 ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestV2 {
    #[serde(rename = "spin_manifest_version")]
    _spin_manifest_version: serde::de::IgnoredAny,
    application: ApplicationV2,
    #[serde(default)]
    variables: BTreeMap<String, VariableToml>,
    #[serde(default, rename = "trigger")]
    triggers: BTreeMap<String, Vec<TriggerV2>>,
    #[serde(default, rename = "component")]
    components: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplicationV2 {
    name: String,
    #[serde(default)]
    version: String,
    #[serde(rename = "description", default)]
    _description: serde::de::IgnoredAny,
    #[serde(rename = "authors", default)]
    _authors: serde::de::IgnoredAny,
    #[serde(rename = "targets", default)]
    _targets: serde::de::IgnoredAny,
    #[serde(default, rename = "trigger")]
    trigger_settings: BTreeMap<String, TriggerSettings>,
    #[serde(rename = "tool", default)]
    _tool: serde::de::IgnoredAny,
}

#[derive(Deserialize, Default)]
struct TriggerSettings {
    #[serde(default)]
    base: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VariableToml {
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    secret: bool,
    #[serde(rename = "description", default)]
    _description: serde::de::IgnoredAny,
}

#[derive(Deserialize)]
struct TriggerV2 {
    #[serde(default)]
    id: String,
    #[serde(default)]
    component: Option<toml::Value>,
    #[serde(flatten)]
    config: toml::Table,
}

/// A component's table (`[component.<id>]`, or inline in a trigger).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentToml {
    source: toml::Value,
    #[serde(rename = "description", default)]
    _description: serde::de::IgnoredAny,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    files: Vec<FilesToml>,
    #[serde(default)]
    exclude_files: Vec<String>,
    #[serde(default)]
    allowed_http_hosts: Vec<String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    sqlite_databases: Vec<String>,
    #[serde(default)]
    ai_models: Vec<String>,
    #[serde(rename = "targets", default)]
    _targets: serde::de::IgnoredAny,
    #[serde(rename = "build", default)]
    _build: serde::de::IgnoredAny,
    #[serde(rename = "tool", default)]
    _tool: serde::de::IgnoredAny,
    #[serde(rename = "profile", default)]
    _profile: serde::de::IgnoredAny,
    #[serde(rename = "dependencies_inherit_configuration", default)]
    _dependencies_inherit_configuration: serde::de::IgnoredAny,
    #[serde(default)]
    dependencies: toml::Table,
}

#[derive(Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum FilesToml {
    Pattern(String),
    Placement { source: String, destination: String },
}

fn v2(manifest: ManifestV2) -> Result<App, AppError> {
    let base = manifest
        .application
        .trigger_settings
        .get("http")
        .and_then(|s| s.base.clone())
        .unwrap_or_else(|| "/".to_owned());
    let mut components = Vec::new();
    for (id, table) in manifest.components {
        let parsed = ComponentToml::deserialize(table).map_err(AppError::Manifest)?;
        components.push(component(id, parsed)?);
    }
    let others: Vec<&str> = manifest
        .triggers
        .keys()
        .map(String::as_str)
        .filter(|t| *t != "http")
        .collect();
    if !others.is_empty() {
        return Err(AppError::Trigger(others.join(", ")));
    }
    let mut triggers = Vec::new();
    for (index, trigger) in manifest.triggers.into_values().flatten().enumerate() {
        let component_id = match trigger.component {
            Some(toml::Value::String(id)) => id,
            Some(inline @ toml::Value::Table(_)) => {
                let id = inline_component_id(&trigger.id, &components);
                let parsed = ComponentToml::deserialize(inline).map_err(AppError::Manifest)?;
                components.push(component(id.clone(), parsed)?);
                id
            }
            _ => {
                return Err(AppError::Invalid(format!(
                    "HTTP trigger {} names no component: give it `component = \"<id>\"`",
                    index + 1
                )));
            }
        };
        let id = if trigger.id.is_empty() {
            format!("{component_id}-http-trigger")
        } else {
            trigger.id
        };
        let config = HttpTriggerConfig::deserialize(trigger.config).map_err(AppError::Manifest)?;
        triggers.push(http_trigger(id, component_id, config, &base)?);
    }
    Ok(App {
        name: manifest.application.name,
        version: manifest.application.version,
        variables: variables(manifest.variables)?,
        http_triggers: triggers,
        components,
    })
}

/// Spin's ID for a component written inline in a trigger: `<trigger>-component`, or
/// `inline-component<N>` when that is taken or not an ID.
fn inline_component_id(trigger: &str, components: &[Component]) -> String {
    let taken = |id: &str| components.iter().any(|c| c.id == id);
    let natural = format!("{trigger}-component");
    if !trigger.is_empty() && crate::app::check_kebab_id(&natural).is_ok() && !taken(&natural) {
        return natural;
    }
    (1..)
        .map(|n| format!("inline-component{n}"))
        .find(|id| !taken(id))
        .unwrap_or_default()
}

fn variables(
    declared: BTreeMap<String, VariableToml>,
) -> Result<BTreeMap<String, Variable>, AppError> {
    declared
        .into_iter()
        .map(|(name, v)| match (v.required, v.default) {
            (true, Some(_)) => Err(AppError::Invalid(format!(
                "variable {name:?} is both required and has a default: drop one of them"
            ))),
            (false, None) => Err(AppError::Invalid(format!(
                "variable {name:?} has no default and is not required: give it `default = \"...\"` or `required = true`"
            ))),
            (_, default) => Ok((name, Variable { default, secret: v.secret })),
        })
        .collect()
}

fn component(id: String, parsed: ComponentToml) -> Result<Component, AppError> {
    if !parsed.dependencies.is_empty() {
        return Err(AppError::Invalid(format!(
            "component {id:?} has component dependencies, which this node does not compose yet: compose them into the component before building the image"
        )));
    }
    let source = match parsed.source {
        toml::Value::String(path) => Content::Path(beneath_root(&path).map_err(|reason| {
            AppError::Invalid(format!(
                "the source of component {id:?}, {path:?}, {reason}"
            ))
        })?),
        other => {
            return Err(AppError::Invalid(format!(
                "the source of component {id:?} is {other}: in an image a component's source is a file of the image; build it into the image (or push the app with `spin registry push`)"
            )));
        }
    };
    let files = parsed
        .files
        .into_iter()
        .map(|files| {
            let checked = |path: &str| {
                beneath_root(path).map_err(|reason| {
                    AppError::Invalid(format!("files entry {path:?} of component {id:?} {reason}"))
                })
            };
            Ok(match files {
                FilesToml::Pattern(pattern) => Files::Pattern(checked(&pattern)?),
                FilesToml::Placement { source, destination } => {
                    if !destination.starts_with('/') {
                        return Err(AppError::Invalid(format!(
                            "files destination {destination:?} of component {id:?} is not absolute: write it from / (\"/assets\")"
                        )));
                    }
                    Files::Directory {
                        source: checked(&source)?,
                        destination,
                    }
                }
            })
        })
        .collect::<Result<Vec<_>, AppError>>()?;
    let mut allowed_outbound_hosts = parsed.allowed_outbound_hosts;
    allowed_outbound_hosts.extend(outbound_hosts_of_http_hosts(&parsed.allowed_http_hosts));
    Ok(Component {
        id,
        source,
        environment: parsed.environment,
        files,
        variables: parsed.variables,
        exclude_files: parsed.exclude_files,
        allowed_outbound_hosts,
        key_value_stores: parsed.key_value_stores,
        sqlite_databases: parsed.sqlite_databases,
        ai_models: parsed.ai_models,
    })
}

/// `path` relative to the app's root, without `.` or `..` components; a path that would
/// leave the root is an error. A leading `/` means the root.
fn beneath_root(path: &str) -> Result<String, String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts
                    .pop()
                    .ok_or_else(|| "leads out of the app's directory".to_owned())?;
            }
            part if part.contains('\0') || part.contains('\\') => {
                return Err("holds a NUL or backslash".to_owned());
            }
            part => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

// ---- version 1 ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestV1 {
    #[serde(rename = "spin_manifest_version", alias = "spin_version")]
    _spin_manifest_version: serde::de::IgnoredAny,
    name: String,
    #[serde(default)]
    version: String,
    #[serde(rename = "description", default)]
    _description: serde::de::IgnoredAny,
    #[serde(rename = "authors", default)]
    _authors: serde::de::IgnoredAny,
    trigger: TriggerV1,
    #[serde(default)]
    variables: BTreeMap<String, VariableToml>,
    #[serde(default, rename = "component")]
    components: Vec<toml::Table>,
}

#[derive(Deserialize)]
struct TriggerV1 {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    base: Option<String>,
}

fn v1(manifest: ManifestV1) -> Result<App, AppError> {
    if manifest.trigger.kind != "http" {
        return Err(AppError::Trigger(manifest.trigger.kind));
    }
    let base = manifest.trigger.base.unwrap_or_else(|| "/".to_owned());
    let mut components = Vec::new();
    let mut triggers = Vec::new();
    for mut table in manifest.components {
        let id = match table.remove("id") {
            Some(toml::Value::String(id)) => id,
            _ => return Err(AppError::Invalid("a [[component]] has no `id`".to_owned())),
        };
        // Spin converts Spin 1's under_scored and mixedCase IDs.
        let id = if crate::app::check_kebab_id(&id).is_ok() {
            id
        } else {
            id.replace('_', "-").to_lowercase()
        };
        let trigger = match table.remove("trigger") {
            Some(toml::Value::Table(trigger)) => trigger,
            _ => {
                return Err(AppError::Invalid(format!(
                    "component {id:?} has no [component.trigger] table"
                )));
            }
        };
        // Spin 1 calls component variables `config`.
        if let Some(config) = table.remove("config") {
            table.insert("variables".into(), config);
        }
        let parsed = ComponentToml::deserialize(table).map_err(AppError::Manifest)?;
        let config = HttpTriggerConfig::deserialize(trigger).map_err(AppError::Manifest)?;
        triggers.push(http_trigger(
            format!("trigger-{id}"),
            id.clone(),
            config,
            &base,
        )?);
        components.push(component(id, parsed)?);
    }
    Ok(App {
        name: manifest.name,
        version: manifest.version,
        variables: variables(manifest.variables)?,
        http_triggers: triggers,
        components,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{Executor, Route};

    const V2: &str = r#"
spin_manifest_version = 2

[application]
name = "hello-app"
version = "0.1.0"
authors = ["someone <a@example.com>"]

[variables]
greeting = { default = "hello" }
api_token = { required = true, secret = true }

[[trigger.http]]
route = "/hello"
component = "hello"

[[trigger.http]]
route = "/static/..."
component = "files"

[[trigger.http]]
id = "inline"
route = "/inline"
component = { source = "inline.wasm" }

[component.hello]
source = "target/wasm32-wasip1/release/hello.wasm"
allowed_outbound_hosts = ["https://example.com"]
key_value_stores = ["default"]
environment = { MODE = "prod" }
[component.hello.variables]
message = "{{ greeting }}, world"
[component.hello.build]
command = "cargo build --target wasm32-wasip1 --release"
watch = ["src/**/*.rs"]

[component.files]
source = "./files/../files/spin_static_fs.wasm"
files = [{ source = "assets", destination = "/" }, "extra/*.txt"]
exclude_files = ["**/*.bak"]
"#;

    #[test]
    fn reads_spin_new_http_rust_apps() {
        let app = parse(V2).unwrap();
        assert_eq!(app.name, "hello-app");
        assert_eq!(app.variables["api_token"].default, None);
        let routes: Vec<(&str, &Route)> = app
            .http_triggers
            .iter()
            .map(|t| (t.component.as_str(), &t.route))
            .collect();
        assert_eq!(
            routes,
            [
                ("hello", &Route::Path("/hello".into())),
                ("files", &Route::Path("/static/...".into())),
                ("inline-component", &Route::Path("/inline".into())),
            ]
        );
        assert_eq!(app.http_triggers[0].id, "hello-http-trigger");
        let hello = app.component("hello").unwrap();
        assert_eq!(
            hello.source,
            Content::Path("target/wasm32-wasip1/release/hello.wasm".into())
        );
        assert_eq!(hello.variables["message"], "{{ greeting }}, world");
        let files = app.component("files").unwrap();
        assert_eq!(
            files.source,
            Content::Path("files/spin_static_fs.wasm".into())
        );
        assert_eq!(
            files.files,
            [
                Files::Directory {
                    source: "assets".into(),
                    destination: "/".into()
                },
                Files::Pattern("extra/*.txt".into()),
            ]
        );
        assert_eq!(files.exclude_files, ["**/*.bak"]);
        assert_eq!(
            app.component("inline-component").unwrap().source,
            Content::Path("inline.wasm".into())
        );
    }

    #[test]
    fn reads_spin_1_manifests() {
        let app = parse(
            r#"
spin_manifest_version = "1"
name = "old-app"
trigger = { type = "http", base = "/api" }

[variables]
who = { default = "world" }

[[component]]
id = "say_hello"
source = "hello.wasm"
allowed_http_hosts = ["example.com:8080"]
[component.trigger]
route = "/hello"
executor = { type = "wagi" }
[component.config]
who = "{{ who }}"
"#,
        )
        .unwrap();
        let trigger = &app.http_triggers[0];
        assert_eq!(trigger.component, "say-hello");
        assert_eq!(trigger.route, Route::Path("/api/hello".into()));
        assert!(matches!(trigger.executor, Executor::Wagi { .. }));
        let component = app.component("say-hello").unwrap();
        assert_eq!(component.variables["who"], "{{ who }}");
        assert_eq!(
            component.allowed_outbound_hosts,
            ["http://example.com:8080", "https://example.com:8080"]
        );
    }

    #[test]
    fn refuses_malformed_manifests_saying_why() {
        let cases = [
            (
                "spin_manifest_version = 3",
                "spin_manifest_version 3 is not supported",
            ),
            ("name = \"x\"", "spin_manifest_version (missing)"),
            (
                "spin_manifest_version = 2\n[application]\nname = \"a\"\nnonsense = 1",
                "nonsense",
            ),
            (
                "spin_manifest_version = 2\n[application]\nname = \"a\"\n[[trigger.redis]]\nchannel = \"c\"\ncomponent = \"c\"\n[component.c]\nsource = \"c.wasm\"",
                "redis triggers",
            ),
            (
                "spin_manifest_version = 2\n[application]\nname = \"a\"\n[[trigger.http]]\nroute = \"/\"\ncomponent = \"c\"\n[component.c]\nsource = \"../../etc/c.wasm\"",
                "leads out of the app's directory",
            ),
            (
                "spin_manifest_version = 2\n[application]\nname = \"a\"\n[[trigger.http]]\nroute = \"/\"\ncomponent = \"c\"\n[component.c]\nsource = { url = \"https://example.com/c.wasm\", digest = \"sha256:00\" }",
                "build it into the image",
            ),
            (
                "spin_manifest_version = 2\n[application]\nname = \"a\"\n[[trigger.http]]\nroute = \"/\"\ncomponent = \"c\"\n[component.c]\nsource = \"c.wasm\"\nfiles = [{ source = \"a\", destination = \"rel\" }]",
                "not absolute",
            ),
            (
                "spin_manifest_version = 2\n[application]\nname = \"a\"\n[variables]\nv = {}\n[[trigger.http]]\nroute = \"/\"\ncomponent = \"c\"\n[component.c]\nsource = \"c.wasm\"",
                "no default and is not required",
            ),
            (
                "spin_manifest_version = 2\n[application]\nname = \"a\"\n[[trigger.http]]\nroute = \"/\"\ncomponent = \"c\"\n[[trigger.http]]\nroute = \"/\"\ncomponent = \"c\"\n[component.c]\nsource = \"c.wasm\"",
                "given to both",
            ),
            (
                "spin_manifest_version = 2\n[application\n",
                "not a valid Spin manifest",
            ),
        ];
        for (input, expected) in cases {
            let message = parse(input).unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "{expected:?} not in {message:?}"
            );
        }
    }

    #[test]
    fn paths_stay_beneath_the_root() {
        assert_eq!(beneath_root("/a/./b/../c.wasm").unwrap(), "a/c.wasm");
        assert_eq!(beneath_root("a/b/../../c").unwrap(), "c");
        assert!(beneath_root("a/../../c").is_err());
        assert!(beneath_root("..").is_err());
    }
}
