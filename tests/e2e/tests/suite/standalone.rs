//! The embedded default: `krustlet-wasi --standalone` runs pod manifests with no API server,
//! prints their output, and exits with the pods' outcome.

fn run_standalone(manifest: &str, dir: &std::path::Path) -> anyhow::Result<std::process::Output> {
    let path = dir.join("pods.yaml");
    std::fs::write(&path, manifest)?;
    let data = dir.join("data");
    e2e::run_binary(
        e2e::Provider::Wasi,
        &[
            "--standalone".as_ref(),
            "--node-name".as_ref(),
            "standalone".as_ref(),
            "--pod-manifest-path".as_ref(),
            path.as_os_str(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ],
    )
}

fn pod(name: &str, image: &str, args: &[&str]) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: file://{image}\n    args: {args:?}\n  tolerations:\n  - {{key: krustlet/arch, operator: Equal, value: wasm32-wasi, effect: NoExecute}}\n"
    )
}

#[test]
fn standalone_runs_manifests_without_an_api_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let probe = testkit::fixtures::wasm_module("wasi-probe")?;
    let probe = probe.display().to_string();
    let manifest = format!(
        "{}---\n{}",
        pod("first", &probe, &["print", "one"]),
        pod("second", &probe, &["print", "two", "eprint", "to stderr"])
    );
    let output = run_standalone(&manifest, dir.path())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("first/main: one\n"), "{stdout}");
    assert!(
        stdout.contains("second/main: two\n") && stdout.contains("second/main: to stderr\n"),
        "{stdout}"
    );
    // Each line is written once: on stdout, not also to a log file read back.
    for line in ["first/main: one\n", "second/main: two\n"] {
        assert_eq!(stdout.matches(line).count(), 1, "{stdout}");
    }
    let logs = log_files(&dir.path().join("data"));
    assert!(logs.is_empty(), "no log files in standalone mode: {logs:?}");
    Ok(())
}

/// The `.log` files under `dir`, at any depth.
fn log_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(log_files(&path));
        } else if path.extension().is_some_and(|e| e == "log") {
            found.push(path);
        }
    }
    found
}

#[test]
fn standalone_runs_static_pods_without_the_taint_toleration() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let probe = testkit::fixtures::wasm_module("wasi-probe")?
        .display()
        .to_string();
    // A static pod never passes a scheduler, so the kubelet admits it whatever the node's
    // taints: a manifest needs no toleration.
    let manifest = pod("plain", &probe, &["print", "untolerated"])
        .replace(
            "  tolerations:\n  - {key: krustlet/arch, operator: Equal, value: wasm32-wasi, effect: NoExecute}\n",
            "",
        );
    assert!(!manifest.contains("tolerations"), "{manifest}");
    let output = run_standalone(&manifest, dir.path())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("plain/main: untolerated\n"), "{stdout}");
    Ok(())
}

#[test]
fn standalone_exits_non_zero_when_a_pod_fails() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let probe = testkit::fixtures::wasm_module("wasi-probe")?
        .display()
        .to_string();
    let output = run_standalone(&pod("failing", &probe, &["exit", "3"]), dir.path())?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("exit code 3") && stderr.contains("pods failed: failing"),
        "{stderr}"
    );
    // Written to a pipe, not a terminal: no colour codes.
    assert!(
        !stderr.contains('\u{1b}'),
        "escape codes in the log: {stderr:?}"
    );
    Ok(())
}

#[test]
fn standalone_refuses_a_manifest_that_is_not_a_pod() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let output = run_standalone(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n",
        dir.path(),
    )?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("expected kind Pod, found \"Deployment\""),
        "{stderr}"
    );
    Ok(())
}
