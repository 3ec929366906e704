//! The node's CNI network configuration, found as libcni finds it: the first file of
//! `--cni-conf-dir`, in lexical order, ending in `.conflist`, `.conf` or `.json` that holds a
//! valid network configuration list (a single plugin's `.conf` is made a list of one).

use super::CniError;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The largest configuration file read; larger ones are skipped.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// A network configuration list: the network's name and the plugins that set it up, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// The network's name (`name`).
    pub name: String,
    /// The CNI version the plugins are spoken to in (`cniVersion`).
    pub cni_version: String,
    /// Each plugin's configuration, as written (with `type` naming its binary).
    pub plugins: Vec<Map<String, Value>>,
    /// Whether CHECK is turned off for this network (`disableCheck`).
    pub disable_check: bool,
    /// The file it was read from.
    pub source: PathBuf,
}

impl NetworkConfig {
    /// Parses a configuration list (`conflist: true`) or a single plugin's configuration.
    pub fn parse(text: &[u8], conflist: bool, source: &Path) -> Result<Self, CniError> {
        let invalid = |why: String| CniError::Config {
            path: source.to_path_buf(),
            why,
        };
        let value: Map<String, Value> =
            serde_json::from_slice(text).map_err(|e| invalid(format!("not a JSON object: {e}")))?;
        let string = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
        let name = string("name").ok_or_else(|| invalid("it has no \"name\"".into()))?;
        let cni_version = string("cniVersion").unwrap_or_else(|| "0.2.0".into());
        let plugins = if conflist {
            let plugins = value
                .get("plugins")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid("it has no \"plugins\" list".into()))?;
            plugins
                .iter()
                .map(|p| {
                    p.as_object()
                        .cloned()
                        .ok_or_else(|| invalid("a plugin is not a JSON object".into()))
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![value.clone()]
        };
        if plugins.is_empty() {
            return Err(invalid("its \"plugins\" list is empty".into()));
        }
        for plugin in &plugins {
            let kind = plugin.get("type").and_then(Value::as_str).unwrap_or("");
            if kind.is_empty() || kind.contains('/') || kind.starts_with('.') {
                return Err(invalid(format!(
                    "a plugin's \"type\" must name a binary in the CNI bin dirs, not {kind:?}"
                )));
            }
        }
        Ok(Self {
            name,
            cni_version,
            plugins,
            disable_check: value
                .get("disableCheck")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            source: source.to_path_buf(),
        })
    }

    /// The list as one JSON value (what a pod's network record keeps for its DEL).
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "plugins": self.plugins,
        })
    }
}

/// The network configuration in `dir`, or `None` when it holds none (or does not exist).
/// Files that cannot be read or parsed are skipped with a warning, as libcni skips them.
pub fn load(dir: &Path) -> Option<NetworkConfig> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    files.into_iter().find_map(|path| match read(&path) {
        Ok(config) => Some(config),
        Err(e) => {
            tracing::warn!(error = %e, "skipping a CNI configuration file");
            None
        }
    })
}

fn read(path: &Path) -> Result<NetworkConfig, CniError> {
    let io = |source| CniError::ReadConfig {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_CONFIG_BYTES {
        return Err(CniError::Config {
            path: path.to_path_buf(),
            why: format!("it is {size} bytes, more than the {MAX_CONFIG_BYTES} read"),
        });
    }
    let text = std::fs::read(path).map_err(io)?;
    let conflist = path.extension().and_then(|e| e.to_str()) == Some("conflist");
    NetworkConfig::parse(&text, conflist, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_valid_file_in_lexical_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("05-broken.conflist"), "{").unwrap();
        std::fs::write(dir.path().join("07-notes.txt"), "{}").unwrap();
        std::fs::write(
            dir.path().join("10-pods.conflist"),
            r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("20-other.conf"),
            r#"{"cniVersion":"0.4.0","name":"other","type":"ptp"}"#,
        )
        .unwrap();
        let config = load(dir.path()).unwrap();
        assert_eq!(config.name, "pods");
        assert_eq!(config.plugins.len(), 2);
        assert_eq!(config.plugins[1]["type"], "portmap");
        std::fs::remove_file(dir.path().join("10-pods.conflist")).unwrap();
        let single = load(dir.path()).unwrap();
        assert_eq!((single.name.as_str(), single.plugins.len()), ("other", 1));
    }

    #[test]
    fn plugin_types_cannot_leave_the_bin_dirs() {
        let parsed = NetworkConfig::parse(
            br#"{"name":"n","plugins":[{"type":"../../bin/sh"}]}"#,
            true,
            Path::new("x"),
        );
        assert!(parsed.is_err());
        assert!(load(Path::new("/nonexistent/cni")).is_none());
    }
}
