//! A Spin application as this node runs it: what a `spin.toml` and a locked app both become.
//!
//! The loaders ([`crate::manifest`], [`crate::locked`]) fill it in; [`App::check`] holds
//! everything both image forms must satisfy, so a bad app is refused the same way whichever form
//! it came in.

use crate::variables::{self, Template};
use std::collections::{BTreeMap, BTreeSet};

/// A Spin application: its components and the HTTP routes that reach them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// `[application] name`.
    pub name: String,
    /// `[application] version` (may be empty).
    pub version: String,
    /// Application variables (`[variables]`) by name.
    pub variables: BTreeMap<String, Variable>,
    /// The HTTP triggers, in the order the app lists them.
    pub http_triggers: Vec<HttpTrigger>,
    /// The components, in the order the app lists them.
    pub components: Vec<Component>,
}

/// An application variable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Variable {
    /// Its value when nothing else gives one; a variable without a default is required.
    pub default: Option<String>,
    /// Whether its value is sensitive (never logged).
    pub secret: bool,
}

/// An HTTP trigger: a route and the component that answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTrigger {
    /// The trigger's ID (generated when the app gives none).
    pub id: String,
    /// The ID of the component that handles the route.
    pub component: String,
    /// Where requests come from.
    pub route: Route,
    /// How the component is called.
    pub executor: Executor,
}

/// The requests an HTTP trigger receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A route pattern (`/hello`, `/users/:id`, `/static/...`), the app's base before it.
    Path(String),
    /// `route = { private = true }`: reached only through service chaining.
    Private,
}

/// How an HTTP trigger calls its component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executor {
    /// The component exports an HTTP handler (`wasi:http/incoming-handler` or Spin 1's
    /// `fermyon:spin/inbound-http`); Spin's `executor = { type = "spin" }` and `"http"`.
    Http,
    /// The component is a WAGI (CGI) command; `argv` is Spin's argv template.
    Wagi {
        /// `argv`, with `${SCRIPT_NAME}` and `${ARGS}` to expand.
        argv: String,
    },
}

/// One component of the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// The component's ID (kebab-case).
    pub id: String,
    /// Where its wasm is.
    pub source: Content,
    /// Its environment variables.
    pub environment: BTreeMap<String, String>,
    /// The files it may read, at `/` of its filesystem.
    pub files: Vec<Files>,
    /// Globs of files beneath the app's root that [`Files::Pattern`] and
    /// [`Files::Directory`] leave out (`exclude_files`).
    pub exclude_files: Vec<String>,
    /// Its variables: templates over the application variables (`{{ name }}`).
    pub variables: BTreeMap<String, String>,
    /// Where it may connect (`allowed_outbound_hosts`, Spin 1's `allowed_http_hosts` converted).
    pub allowed_outbound_hosts: Vec<String>,
    /// The key-value stores it may open.
    pub key_value_stores: Vec<String>,
    /// The SQLite databases it may open.
    pub sqlite_databases: Vec<String>,
    /// The AI models it may use.
    pub ai_models: Vec<String>,
}

/// Where a piece of the app is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A file beneath the app's root directory (a `spin.toml` in an image's filesystem); the
    /// path is relative and was checked to stay beneath the root.
    Path(String),
    /// A blob of the app's image, by its `sha256:` digest (a locked app pushed to a registry).
    Digest(String),
    /// The bytes themselves (a locked app inlines files of 128 bytes or less).
    Inline(Vec<u8>),
}

/// Files a component may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Files {
    /// The files beneath the app's root that match a glob (`"assets/**/*.png"`), at the same
    /// relative paths in the component's filesystem.
    Pattern(String),
    /// A directory beneath the app's root (`source`), at `destination` in the component's
    /// filesystem.
    Directory {
        /// The directory, relative to the app's root.
        source: String,
        /// The absolute path the component sees it at.
        destination: String,
    },
    /// One file's content at a path of the component's filesystem.
    File {
        /// The file's bytes or where they are.
        content: Content,
        /// The path the component sees it at, relative to `/`.
        path: String,
    },
}

/// An app this node cannot run, and why.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// `spin.toml` is not valid TOML or not a Spin manifest.
    #[error("spin.toml is not a valid Spin manifest: {0}")]
    Manifest(#[source] toml::de::Error),
    /// The locked app is not valid JSON or not a locked app.
    #[error("the Spin locked app is not valid: {0}")]
    LockedApp(#[source] serde_json::Error),
    /// A manifest or lock version this node does not read.
    #[error(
        "{what} {found} is not supported: this node reads spin.toml versions 1 and 2 and locked apps of versions 0 and 1; rebuild the app with a Spin release that writes one of them"
    )]
    Version {
        /// What has the version (`spin_manifest_version`, `spin_lock_version`).
        what: &'static str,
        /// The version found.
        found: String,
    },
    /// A locked app lists something in `must_understand` that this node does not understand.
    #[error(
        "the locked app requires the host to understand {0}, which this node does not: run it on a Spin release that supports it"
    )]
    MustUnderstand(String),
    /// A host feature the app requires and this node lacks.
    #[error("the app requires the host feature {0}, which this node does not provide yet")]
    HostRequirement(String),
    /// Triggers other than HTTP.
    #[error(
        "the app has {0} triggers: this node runs Spin's HTTP trigger only; move those components to an app of their own on a node that runs that trigger"
    )]
    Trigger(String),
    /// No HTTP trigger at all.
    #[error("the app has no HTTP trigger, so there is nothing to serve: add a [[trigger.http]]")]
    NoTrigger,
    /// Something of the app is malformed; the message says what.
    #[error("{0}")]
    Invalid(String),
}

impl App {
    /// Checks what both image forms must satisfy: IDs, references, variables, templates and
    /// routes.
    pub fn check(&self) -> Result<(), AppError> {
        if self.http_triggers.is_empty() {
            return Err(AppError::NoTrigger);
        }
        let mut ids = BTreeSet::new();
        for component in &self.components {
            check_kebab_id(&component.id)?;
            if !ids.insert(component.id.as_str()) {
                return Err(AppError::Invalid(format!(
                    "the app has two components with the ID {:?}: give each its own",
                    component.id
                )));
            }
        }
        for trigger in &self.http_triggers {
            if !ids.contains(trigger.component.as_str()) {
                return Err(AppError::Invalid(format!(
                    "HTTP trigger {:?} names component {:?}, which the app does not have",
                    trigger.id, trigger.component
                )));
            }
        }
        for name in self.variables.keys() {
            variables::check_name(name).map_err(|reason| {
                AppError::Invalid(format!("application variable {name:?}: {reason}"))
            })?;
        }
        for component in &self.components {
            for (name, template) in &component.variables {
                variables::check_name(name).map_err(|reason| {
                    AppError::Invalid(format!(
                        "variable {name:?} of component {:?}: {reason}",
                        component.id
                    ))
                })?;
                let template = Template::parse(template).map_err(|reason| {
                    AppError::Invalid(format!(
                        "variable {name:?} of component {:?}: {reason}",
                        component.id
                    ))
                })?;
                if let Some(unknown) = template
                    .references()
                    .find(|r| !self.variables.contains_key(*r))
                {
                    return Err(AppError::Invalid(format!(
                        "variable {name:?} of component {:?} refers to {unknown:?}, which is not an application variable: declare it under [variables]",
                        component.id
                    )));
                }
            }
        }
        crate::routes::Router::new(self)?;
        Ok(())
    }

    /// The component with this ID.
    pub fn component(&self, id: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.id == id)
    }
}

/// Spin's component IDs: words of ASCII letters and digits joined by single dashes, each
/// starting with a letter and all lower-case or all upper-case.
pub(crate) fn check_kebab_id(id: &str) -> Result<(), AppError> {
    let valid_word = |word: &str| {
        let mut bytes = word.bytes();
        bytes.next().is_some_and(|first| {
            first.is_ascii_alphabetic()
                && bytes.all(|b| {
                    b.is_ascii_digit()
                        || (b.is_ascii_alphabetic()
                            && b.is_ascii_uppercase() == first.is_ascii_uppercase())
                })
        })
    };
    if id.split('-').all(valid_word) {
        Ok(())
    } else {
        Err(AppError::Invalid(format!(
            "component ID {id:?} is not valid: IDs are words of letters and digits joined by single dashes, each starting with a letter and all lower-case or all upper-case (\"my-component\")"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kebab_ids() {
        for good in ["hello", "hello-world", "a1-b2", "API-v2"] {
            check_kebab_id(good).unwrap();
        }
        for bad in [
            "",
            "Hello",
            "hello_world",
            "-a",
            "a-",
            "a--b",
            "1a",
            "a-1b",
            "a.b",
        ] {
            assert!(check_kebab_id(bad).is_err(), "{bad:?}");
        }
    }
}
