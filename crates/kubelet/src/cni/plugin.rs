//! The CNI spec's exec protocol: a plugin is a binary found in the CNI bin dirs, told what to
//! do by `CNI_*` environment variables and its network configuration on stdin, answering a
//! result (or an error) as JSON on stdout.

use super::CniError;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one plugin call may take before it is killed and the call fails.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The most a plugin's answer (stdout) may hold; more fails the call.
pub const MAX_RESULT_BYTES: u64 = 1024 * 1024;
/// The most of a plugin's stderr kept for an error message.
const MAX_STDERR_BYTES: u64 = 4096;

/// What a plugin is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container to the network.
    Add,
    /// Check the attachment is still as ADD made it.
    Check,
    /// Detach the container (idempotent; resources that are gone are no error).
    Del,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Check => "CHECK",
            Self::Del => "DEL",
        }
    }
}

/// Who a call is about: the same for every plugin of a network and every command.
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    /// The sandbox's id (`CNI_CONTAINERID`).
    pub container_id: &'a str,
    /// The pod's network namespace (`CNI_NETNS`).
    pub netns: &'a Path,
    /// The interface made in it (`CNI_IFNAME`).
    pub ifname: &'a str,
    /// `CNI_ARGS`: the pod's namespace, name and uid, as the kubelet's runtimes pass them.
    pub args: &'a str,
    /// Where plugins are looked for (`CNI_PATH`).
    pub bin_dirs: &'a [PathBuf],
}

/// Runs one plugin with `config` (already carrying `name`, `cniVersion`, and for ADD after the
/// first plugin, DEL and CHECK, `prevResult`). Returns its result (none for DEL and CHECK).
pub async fn call(
    command: Command,
    config: &Map<String, Value>,
    who: &Attachment<'_>,
) -> Result<Option<Value>, CniError> {
    let kind = config
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let failed = |why: String| CniError::Plugin {
        plugin: kind.clone(),
        command: command.as_str(),
        why,
    };
    let binary = who
        .bin_dirs
        .iter()
        .map(|dir| dir.join(&kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            failed(format!(
                "no plugin binary {kind:?} in the CNI bin dirs ({}); install it or set --cni-bin-dir",
                join_paths(who.bin_dirs)
            ))
        })?;
    let stdin = serde_json::to_vec(config).map_err(|e| failed(e.to_string()))?;
    let mut child = tokio::process::Command::new(&binary)
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", who.container_id)
        .env("CNI_NETNS", who.netns)
        .env("CNI_IFNAME", who.ifname)
        .env("CNI_ARGS", who.args)
        .env("CNI_PATH", join_paths(who.bin_dirs))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("starting {} failed: {e}", binary.display())))?;
    let mut input = child.stdin.take().expect("stdin is piped");
    let mut output = child.stdout.take().expect("stdout is piped");
    let mut errors = child.stderr.take().expect("stderr is piped");
    let talk = async {
        // A plugin that does not read its config gets EOF-less silence, not a hang: the
        // timeout covers the whole call.
        let _ = input.write_all(&stdin).await;
        drop(input);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (mut limited_out, mut limited_err) = (
            (&mut output).take(MAX_RESULT_BYTES + 1),
            (&mut errors).take(MAX_STDERR_BYTES),
        );
        let _ = tokio::join!(
            limited_out.read_to_end(&mut out),
            limited_err.read_to_end(&mut err)
        );
        let status = child.wait().await;
        (status, out, err)
    };
    let (status, out, err) = tokio::time::timeout(PLUGIN_TIMEOUT, talk)
        .await
        .map_err(|_| failed(format!("it did not answer within {PLUGIN_TIMEOUT:?}")))?;
    if out.len() as u64 > MAX_RESULT_BYTES {
        return Err(failed(format!(
            "its answer is longer than {MAX_RESULT_BYTES} bytes"
        )));
    }
    let status = status.map_err(|e| failed(format!("waiting for it failed: {e}")))?;
    if !status.success() {
        return Err(failed(error_message(&out, &err, status)));
    }
    if command != Command::Add {
        return Ok(None);
    }
    let result: Value =
        serde_json::from_slice(&out).map_err(|e| failed(format!("its result is not JSON: {e}")))?;
    Ok(Some(result))
}

/// The spec's error object (`msg`, `details`), else whatever the plugin printed.
fn error_message(out: &[u8], err: &[u8], status: std::process::ExitStatus) -> String {
    if let Ok(error) = serde_json::from_slice::<Map<String, Value>>(out) {
        let text = |k: &str| error.get(k).and_then(Value::as_str).unwrap_or_default();
        let code = error.get("code").and_then(Value::as_u64).unwrap_or(0);
        let details = match text("details") {
            "" => String::new(),
            d => format!(" ({d})"),
        };
        return format!("{}{details} [code {code}]", text("msg"));
    }
    let printed = String::from_utf8_lossy(if out.is_empty() { err } else { out });
    format!("{status}: {}", printed.trim())
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// The IP addresses a result gives the interface, in order: `ips[].address` (CNI 0.3.0 and
/// later) or `ip4.ip` / `ip6.ip` (0.1.0, 0.2.0), without their prefix lengths.
pub fn addresses(result: &Value) -> Vec<IpAddr> {
    let cidr = |v: &Value| {
        v.as_str()
            .and_then(|s| s.split('/').next())
            .and_then(|ip| ip.parse::<IpAddr>().ok())
    };
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        return ips.iter().filter_map(|ip| cidr(&ip["address"])).collect();
    }
    ["ip4", "ip6"]
        .iter()
        .filter_map(|family| cidr(&result[*family]["ip"]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn addresses_of_every_result_version() {
        let current = json!({"cniVersion":"1.0.0","ips":[{"address":"10.22.0.5/16","gateway":"10.22.0.1"},{"address":"fd00::5/64"}]});
        assert_eq!(
            addresses(&current),
            vec![
                "10.22.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        let old = json!({"cniVersion":"0.2.0","ip4":{"ip":"10.1.0.9/24"}});
        assert_eq!(addresses(&old), vec!["10.1.0.9".parse::<IpAddr>().unwrap()]);
        assert!(addresses(&json!({"ips":[{"address":"nonsense"}]})).is_empty());
    }

    #[test]
    fn errors_say_what_the_plugin_said() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::ExitStatus::from_raw(1 << 8);
        let message = error_message(
            br#"{"code":11,"msg":"failed to allocate","details":"range full"}"#,
            b"",
            status,
        );
        assert_eq!(message, "failed to allocate (range full) [code 11]");
        assert!(error_message(b"", b"boom\n", status).ends_with("boom"));
    }

    #[tokio::test]
    async fn a_missing_binary_is_named() {
        let config = json!({"type":"nosuch","name":"n","cniVersion":"1.0.0"});
        let who = Attachment {
            container_id: "c",
            netns: Path::new("/nonexistent"),
            ifname: "eth0",
            args: "",
            bin_dirs: &[PathBuf::from("/nonexistent/bin")],
        };
        let error = call(Command::Add, config.as_object().unwrap(), &who)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("nosuch"), "{error}");
    }
}
