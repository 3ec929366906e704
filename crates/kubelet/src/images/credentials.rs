//! Registry credentials as the kubelet's keyring finds them: docker config files
//! (`.dockerconfigjson` with `auths`, or the legacy `.dockercfg` map) with `username`/`password`
//! or a base64 `auth`, matched to an image's registry by host (docker.io aliases, ports, and
//! `*.` wildcards).

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde_json::Value;

/// Credentials for registries, most specific first.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    entries: Vec<(String, String, String)>,
}

/// A docker config that cannot be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CredentialsError(pub String);

fn normalize(key: &str) -> String {
    let key = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = key.split('/').next().unwrap_or_default().to_lowercase();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "index.docker.io".into(),
        _ => host,
    }
}

impl Keyring {
    /// Adds the entries of a docker config (either format).
    pub fn add_docker_config(&mut self, json: &[u8]) -> Result<(), CredentialsError> {
        let config: Value = serde_json::from_slice(json)
            .map_err(|e| CredentialsError(format!("not a docker config: {e}")))?;
        let auths = match config.get("auths") {
            Some(auths) => auths,
            None => &config,
        };
        let map = auths
            .as_object()
            .ok_or_else(|| CredentialsError("a docker config holds a map of registries".into()))?;
        for (registry, entry) in map {
            let (mut user, mut pass) = (
                entry["username"].as_str().unwrap_or_default().to_string(),
                entry["password"].as_str().unwrap_or_default().to_string(),
            );
            if let Some(auth) = entry["auth"].as_str().filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth)
                    .map_err(|e| {
                        CredentialsError(format!("the auth of {registry} is not base64: {e}"))
                    })?;
                let decoded = String::from_utf8_lossy(&decoded).into_owned();
                let (u, p) = decoded.split_once(':').ok_or_else(|| {
                    CredentialsError(format!("the auth of {registry} is not user:password"))
                })?;
                (user, pass) = (u.to_string(), p.to_string());
            }
            if !user.is_empty() {
                self.entries.push((normalize(registry), user, pass));
            }
        }
        Ok(())
    }

    /// The credentials for `registry` (an image's `host[:port]`), anonymous if none match.
    pub fn auth_for(&self, registry: &str) -> RegistryAuth {
        let target = normalize(registry);
        let (target_host, target_port) = target
            .split_once(':')
            .map_or((target.as_str(), None), |(h, p)| (h, Some(p)));
        let matches = |pattern: &str| {
            let (host, port) = pattern
                .split_once(':')
                .map_or((pattern, None), |(h, p)| (h, Some(p)));
            let host_ok = match host.strip_prefix("*.") {
                Some(suffix) => target_host.strip_suffix(suffix).is_some_and(|rest| {
                    rest.ends_with('.') && !rest[..rest.len() - 1].contains('.')
                }),
                None => host == target_host,
            };
            host_ok && (port.is_none() || port == target_port)
        };
        self.entries
            .iter()
            .find(|(p, _, _)| *p == target)
            .or_else(|| self.entries.iter().find(|(p, _, _)| matches(p)))
            .map(|(_, user, pass)| RegistryAuth::Basic(user.clone(), pass.clone()))
            .unwrap_or(RegistryAuth::Anonymous)
    }

    /// Adds the entries of another keyring after this one's.
    pub fn extend(&mut self, other: &Keyring) {
        self.entries.extend(other.entries.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(auth: RegistryAuth) -> Option<(String, String)> {
        match auth {
            RegistryAuth::Basic(u, p) => Some((u, p)),
            _ => None,
        }
    }

    #[test]
    fn both_formats_and_both_ways_of_writing_the_password() {
        let mut keyring = Keyring::default();
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:hunter2");
        keyring.add_docker_config(format!(r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{auth}"}}, "reg.example:5000": {{"username": "u", "password": "p"}}}}}}"#).as_bytes()).unwrap();
        keyring
            .add_docker_config(br#"{"*.corp.example": {"username": "w", "password": "c"}}"#)
            .unwrap();
        assert_eq!(
            basic(keyring.auth_for("index.docker.io")),
            Some(("bob".into(), "hunter2".into()))
        );
        assert_eq!(
            basic(keyring.auth_for("docker.io")),
            Some(("bob".into(), "hunter2".into()))
        );
        assert_eq!(
            basic(keyring.auth_for("reg.example:5000")),
            Some(("u".into(), "p".into()))
        );
        assert_eq!(basic(keyring.auth_for("reg.example:5001")), None);
        assert_eq!(
            basic(keyring.auth_for("images.corp.example")),
            Some(("w".into(), "c".into()))
        );
        assert_eq!(basic(keyring.auth_for("a.b.corp.example")), None);
        assert!(keyring.add_docker_config(b"not json").is_err());
    }
}
