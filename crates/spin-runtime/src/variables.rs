//! Spin's variables: application variables with defaults, given values by the container's
//! environment (`SPIN_VARIABLE_<NAME>`, as spin-operator sets them), and component variables
//! that are templates over them (`"https://{{ host }}/api"`).

use crate::app::{App, Component};
use std::collections::BTreeMap;

/// The prefix of the environment variables that give application variables their values
/// (Spin's environment provider).
pub const ENV_PREFIX: &str = "SPIN_VARIABLE_";

/// Checks a variable name as Spin does: lower-case ASCII letters, digits and single
/// underscores, starting with a letter and ending with a letter or digit (so that it maps to
/// an environment variable and back).
pub fn check_name(name: &str) -> Result<(), String> {
    let Some(first) = name.bytes().next() else {
        return Err("names must not be empty".into());
    };
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "{bad:?} is not allowed: names hold only lower-case letters, digits and underscores"
        ));
    }
    if !first.is_ascii_lowercase() {
        return Err("names start with a lower-case letter".into());
    }
    if name.ends_with('_') {
        return Err("names end with a letter or digit".into());
    }
    if name.contains("__") {
        return Err("names do not hold two underscores in a row".into());
    }
    Ok(())
}

/// A component variable's template: literal text and `{{ name }}` references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Reference(String),
}

impl Template {
    /// Parses `text`; an unclosed `{{` is an error.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find("{{") {
                Some(0) => {
                    let (reference, after) = rest[2..]
                        .split_once("}}")
                        .ok_or_else(|| format!("{text:?} has a '{{{{' that is never closed"))?;
                    parts.push(Part::Reference(reference.trim().to_owned()));
                    rest = after;
                }
                Some(start) => {
                    parts.push(Part::Literal(rest[..start].to_owned()));
                    rest = &rest[start..];
                }
                None => {
                    parts.push(Part::Literal(rest.to_owned()));
                    rest = "";
                }
            }
        }
        Ok(Self(parts))
    }

    /// The variable names the template refers to.
    pub fn references(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|part| match part {
            Part::Reference(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The template with each reference replaced by its value.
    fn expand(&self, values: &BTreeMap<String, String>) -> Result<String, VariableError> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Reference(name) => out.push_str(
                    values
                        .get(name)
                        .ok_or_else(|| VariableError::Undefined(name.clone()))?,
                ),
            }
        }
        Ok(out)
    }
}

/// A variable that has no value, or a name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VariableError {
    /// A required application variable that nothing gives a value.
    #[error(
        "the app's variable {name:?} is required and has no value: set the container's environment variable {env} (a SpinApp's `variables`), or give it a default in spin.toml"
    )]
    Required {
        /// The variable.
        name: String,
        /// The environment variable that would give it a value.
        env: String,
    },
    /// A name that is not a valid variable name (Spin's `invalid-name`).
    #[error("{0}")]
    InvalidName(String),
    /// A variable the component does not declare (Spin's `undefined`).
    #[error("no variable named {0:?}")]
    Undefined(String),
}

/// The values of an application's variables for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Values(BTreeMap<String, String>);

impl Values {
    /// Gives every application variable of `app` its value: the container's environment
    /// variable `SPIN_VARIABLE_<NAME>` when `env` has it, else its default. A required
    /// variable without a value is an error naming it.
    pub fn resolve<'a>(
        app: &App,
        env: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Self, VariableError> {
        let mut values = BTreeMap::new();
        for (name, variable) in &app.variables {
            let env_name = format!("{ENV_PREFIX}{}", name.to_ascii_uppercase());
            let value = match (env(&env_name), &variable.default) {
                (Some(value), _) => value.to_owned(),
                (None, Some(default)) => default.clone(),
                (None, None) => {
                    return Err(VariableError::Required {
                        name: name.clone(),
                        env: env_name,
                    });
                }
            };
            values.insert(name.clone(), value);
        }
        Ok(Self(values))
    }

    /// The value of `component`'s variable `name`: its template expanded.
    pub fn get(&self, component: &Component, name: &str) -> Result<String, VariableError> {
        check_name(name)
            .map_err(|reason| VariableError::InvalidName(format!("{name:?}: {reason}")))?;
        let template = component
            .variables
            .get(name)
            .ok_or_else(|| VariableError::Undefined(name.to_owned()))?;
        Template::parse(template)
            .map_err(VariableError::InvalidName)?
            .expand(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{Content, Variable};

    #[test]
    fn names_as_spin_checks_them() {
        for good in ["a", "api_key", "v2", "a_b_c1"] {
            check_name(good).unwrap();
        }
        for bad in ["", "Api", "1a", "_a", "a_", "a__b", "a-b", "a.b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn templates_split_literals_and_references() {
        let t = Template::parse("https://{{ host }}:{{port}}/x").unwrap();
        assert_eq!(t.references().collect::<Vec<_>>(), ["host", "port"]);
        assert_eq!(Template::parse("").unwrap(), Template(vec![]));
        assert!(Template::parse("a {{ b }} {{ c").is_err());
        let values = BTreeMap::from([("host".into(), "h".into()), ("port".into(), "1".into())]);
        assert_eq!(t.expand(&values).unwrap(), "https://h:1/x");
    }

    fn app() -> App {
        App {
            name: "app".into(),
            version: String::new(),
            variables: BTreeMap::from([
                (
                    "greeting".into(),
                    Variable {
                        default: Some("hello".into()),
                        secret: false,
                    },
                ),
                (
                    "api_key".into(),
                    Variable {
                        default: None,
                        secret: true,
                    },
                ),
            ]),
            http_triggers: vec![],
            components: vec![Component {
                id: "c".into(),
                source: Content::Path("c.wasm".into()),
                environment: BTreeMap::new(),
                files: vec![],
                exclude_files: vec![],
                variables: BTreeMap::from([
                    ("message".into(), "{{ greeting }}, key {{ api_key }}".into()),
                    ("plain".into(), "text".into()),
                ]),
                allowed_outbound_hosts: vec![],
                key_value_stores: vec![],
                sqlite_databases: vec![],
                ai_models: vec![],
            }],
        }
    }

    #[test]
    fn env_wins_over_defaults_and_required_ones_are_named() {
        let app = app();
        let missing = Values::resolve(&app, |_| None).unwrap_err();
        assert_eq!(
            missing,
            VariableError::Required {
                name: "api_key".into(),
                env: "SPIN_VARIABLE_API_KEY".into()
            }
        );
        assert!(missing.to_string().contains("SPIN_VARIABLE_API_KEY"));
        let env = BTreeMap::from([
            ("SPIN_VARIABLE_API_KEY", "k1"),
            ("SPIN_VARIABLE_GREETING", "hi"),
        ]);
        let values = Values::resolve(&app, |name| env.get(name).copied()).unwrap();
        let component = &app.components[0];
        assert_eq!(values.get(component, "message").unwrap(), "hi, key k1");
        assert_eq!(values.get(component, "plain").unwrap(), "text");
        assert_eq!(
            values.get(component, "nope"),
            Err(VariableError::Undefined("nope".into()))
        );
        assert!(matches!(
            values.get(component, "Bad-Name"),
            Err(VariableError::InvalidName(_))
        ));
    }
}
