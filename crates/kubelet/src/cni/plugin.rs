//! The CNI spec's exec protocol: a plugin is a binary found in the CNI bin dirs, told what to
//! do by `CNI_*` environment variables and its network configuration on stdin, answering a
//! result (or an error) as JSON on stdout.

use super::CniError;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

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
    /// How long each plugin has to answer (`--cni-plugin-timeout`).
    pub timeout: Duration,
}

/// Runs one plugin with `config` (already carrying `name`, `cniVersion`, and for ADD after the
/// first plugin, DEL and CHECK, `prevResult`). Returns its result (none for DEL and CHECK).
/// The plugin runs in a process group of its own, killed whole when the call fails (no answer
/// within `who.timeout`, an answer past [`MAX_RESULT_BYTES`]) or is dropped, so that nothing it
/// started outlives it.
pub async fn call(
    command: Command,
    config: &Map<String, Value>,
    who: &Attachment<'_>,
) -> Result<Option<Value>, CniError> {
    let timeout = who.timeout;
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
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("starting {} failed: {e}", binary.display())))?;
    let group = ProcessGroup(child.id());
    let mut input = child.stdin.take().expect("stdin is piped");
    let output = child.stdout.take().expect("stdout is piped");
    let errors = child.stderr.take().expect("stderr is piped");
    let talk = async {
        // A plugin that does not read its config gets EOF-less silence, not a hang: the
        // timeout covers the whole call.
        let _ = input.write_all(&stdin).await;
        drop(input);
        let (out, err) = tokio::try_join!(read_at_most(output, MAX_RESULT_BYTES), async {
            Ok(read_head(errors, MAX_STDERR_BYTES).await)
        },)?;
        let status = child.wait().await;
        Ok::<_, TooLong>((status, out, err))
    };
    let (status, out, err) = match tokio::time::timeout(timeout, talk).await {
        Ok(Ok(answered)) => answered,
        Ok(Err(TooLong)) => {
            return Err(failed(format!(
                "its answer is longer than {MAX_RESULT_BYTES} bytes"
            )));
        }
        Err(_) => return Err(failed(format!("it did not answer within {timeout:?}"))),
    };
    group.ended();
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

/// A plugin's process group, killed whole (SIGKILL) when dropped before [`ProcessGroup::ended`]:
/// a plugin that hangs or misbehaves takes whatever it started with it.
struct ProcessGroup(Option<u32>);

impl ProcessGroup {
    /// The plugin answered and exited: what it left running is its own business, as with any
    /// runtime's plugins (a daemon it started on purpose, say).
    fn ended(mut self) {
        self.0 = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let group = self
            .0
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(rustix::process::Pid::from_raw);
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

/// An answer past its size limit.
#[derive(Debug)]
struct TooLong;

/// Everything `from` gives until its end, failing as soon as it passes `limit` bytes.
async fn read_at_most(from: impl AsyncRead + Unpin, limit: u64) -> Result<Vec<u8>, TooLong> {
    let mut read = Vec::new();
    let _ = from.take(limit + 1).read_to_end(&mut read).await;
    if read.len() as u64 > limit {
        return Err(TooLong);
    }
    Ok(read)
}

/// The first `limit` bytes `from` gives; the rest is read to its end and dropped, so that a
/// chatty writer is never blocked on a full pipe.
async fn read_head(mut from: impl AsyncRead + Unpin, limit: u64) -> Vec<u8> {
    let mut head = Vec::new();
    let _ = (&mut from).take(limit).read_to_end(&mut head).await;
    let _ = tokio::io::copy(&mut from, &mut tokio::io::sink()).await;
    head
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

    /// A plugin named `name` in `dir` that runs `script` (sh).
    fn plugin(dir: &Path, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn attachment(bin_dirs: &[PathBuf], timeout: Duration) -> Attachment<'_> {
        Attachment {
            container_id: "c",
            netns: Path::new("/nonexistent"),
            ifname: "eth0",
            args: "",
            bin_dirs,
            timeout,
        }
    }

    fn config(kind: &str) -> Map<String, Value> {
        json!({"type": kind, "name": "n", "cniVersion": "1.0.0"})
            .as_object()
            .unwrap()
            .clone()
    }

    /// Whether process `pid` has ended (gone, or a zombie nobody has reaped yet).
    fn ended(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z'))
        })
    }

    #[tokio::test]
    async fn a_hanging_plugin_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        plugin(
            dir.path(),
            "hang",
            &format!("sleep 1000 &\necho $! > {}\nsleep 1000", pid_file.display()),
        );
        let bin_dirs = [dir.path().to_path_buf()];
        let error = call(
            Command::Add,
            &config("hang"),
            &attachment(&bin_dirs, Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
        assert!(
            error.to_string().contains("did not answer within"),
            "{error}"
        );
        let child = std::fs::read_to_string(&pid_file).unwrap();
        let child = child.trim();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !ended(child) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ended(child), "the plugin's child {child} outlived it");
    }

    #[tokio::test]
    async fn an_answer_past_its_limit_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        plugin(dir.path(), "talker", "exec yes 0123456789abcdef");
        let bin_dirs = [dir.path().to_path_buf()];
        let started = std::time::Instant::now();
        let error = call(
            Command::Add,
            &config("talker"),
            &attachment(&bin_dirs, Duration::from_secs(30)),
        )
        .await
        .unwrap_err();
        assert!(error.to_string().contains("longer than"), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_plugin_chatty_on_stderr_is_not_blocked() {
        let dir = tempfile::tempdir().unwrap();
        // 8 MiB of stderr (far past the pipe's buffer and the head kept), then a clean exit.
        plugin(
            dir.path(),
            "chatty",
            "head -c 8388608 /dev/zero >&2\necho '{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"10.1.2.3/24\"}]}'",
        );
        let bin_dirs = [dir.path().to_path_buf()];
        let result = call(
            Command::Add,
            &config("chatty"),
            &attachment(&bin_dirs, Duration::from_secs(30)),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            addresses(&result),
            vec!["10.1.2.3".parse::<IpAddr>().unwrap()]
        );
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
            timeout: Duration::from_secs(60),
        };
        let error = call(Command::Add, config.as_object().unwrap(), &who)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("nosuch"), "{error}");
    }
}
