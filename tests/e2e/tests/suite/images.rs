//! Private registries: image pull secrets in both docker config formats, and a plain message
//! when credentials are missing.

use base64::Engine;
use e2e::{Cluster, has_phase, is_waiting, waiting_message, wasm_pod};
use k8s_openapi::api::core::v1::{LocalObjectReference, Pod, Secret};
use kube::api::{Api, PostParams};
use oci_client::secrets::RegistryAuth;
use serde_json::json;
use testkit::fixtures::{WASM_CONFIG_V1, WASM_LAYER_V1, push_as, wasm_module};
use testkit::registry::Registry;

fn with_pull_secret(mut pod: Pod, secret: &str) -> Pod {
    pod.spec.as_mut().expect("spec").image_pull_secrets = Some(vec![LocalObjectReference {
        name: secret.into(),
    }]);
    pod
}

#[tokio::test]
async fn private_images_are_pulled_with_the_pods_pull_secrets() -> anyhow::Result<()> {
    let cluster = Cluster::new("pullsecrets").await?;
    let private = Registry::start_with_auth("alice", "wonderland")?;
    let agent = cluster
        .start_node_with(&["--insecure-registries", private.host()])
        .await?;
    let image = format!("{}/private/probe:v1", private.host());
    let module = std::fs::read(wasm_module("wasi-probe")?)?;
    let alice = RegistryAuth::Basic("alice".into(), "wonderland".into());
    push_as(
        &image,
        module,
        WASM_LAYER_V1,
        b"{}".to_vec(),
        WASM_CONFIG_V1,
        &alice,
    )
    .await?;

    cluster
        .create_pod(wasm_pod(
            "nosecret",
            &image,
            &agent.name,
            &["print", "x"],
            "Never",
        ))
        .await?;
    let refused = cluster
        .wait_pod("nosecret", "ErrImagePull", e2e::is_failing_to_pull())
        .await?;
    let message = waiting_message(&refused);
    assert!(
        message.contains("imagePullSecrets"),
        "the message says what to do: {message}"
    );

    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:wonderland");
    let config_json = json!({"auths": {private.host(): {"auth": auth}}}).to_string();
    secrets.create(&PostParams::default(), &serde_json::from_value(json!({
        "metadata": {"name": "regcred"}, "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": config_json}
    }))?).await?;
    let legacy =
        json!({private.host(): {"username": "alice", "password": "wonderland"}}).to_string();
    secrets.create(&PostParams::default(), &serde_json::from_value(json!({
        "metadata": {"name": "legacycred"}, "type": "kubernetes.io/dockercfg", "stringData": {".dockercfg": legacy}
    }))?).await?;

    cluster
        .create_pod(with_pull_secret(
            wasm_pod(
                "withsecret",
                &image,
                &agent.name,
                &["print", "pulled privately"],
                "Never",
            ),
            "regcred",
        ))
        .await?;
    cluster
        .create_pod(with_pull_secret(
            wasm_pod(
                "legacy",
                &image,
                &agent.name,
                &["print", "legacy format"],
                "Never",
            ),
            "legacycred",
        ))
        .await?;
    cluster
        .wait_pod("withsecret", "Succeeded", has_phase("Succeeded"))
        .await?;
    cluster
        .wait_pod("legacy", "Succeeded", has_phase("Succeeded"))
        .await?;
    assert_eq!(
        cluster.kubectl(&["logs", "withsecret"])?,
        "pulled privately\n"
    );
    assert_eq!(cluster.kubectl(&["logs", "legacy"])?, "legacy format\n");

    cluster
        .create_pod(with_pull_secret(
            wasm_pod("missing", &image, &agent.name, &["print", "x"], "Never"),
            "no-such-secret",
        ))
        .await?;
    let event = cluster
        .eventually("a FailedToRetrieveImagePullSecret event", async || {
            Ok(cluster
                .pod_events("missing")
                .await?
                .into_iter()
                .find(|e| e.starts_with("FailedToRetrieveImagePullSecret")))
        })
        .await?;
    assert!(event.contains("no-such-secret"), "{event}");
    Ok(())
}

#[tokio::test]
async fn image_indexes_and_digest_references() -> anyhow::Result<()> {
    use testkit::fixtures::{manifest_digest, push_container_image, push_index, push_wasm};
    let cluster = Cluster::new("indexes").await?;
    let agent = cluster.start_node().await?;
    let repo = format!("{}/{}/multi", cluster.registry(), cluster.id);
    let module = std::fs::read(wasm_module("wasi-probe")?)?;
    push_wasm(&format!("{repo}:wasm"), &module).await?;
    push_container_image(&format!("{repo}:linux")).await?;
    let (wasm_digest, wasm_size) = manifest_digest(&format!("{repo}:wasm")).await?;
    let (linux_digest, linux_size) = manifest_digest(&format!("{repo}:linux")).await?;
    push_index(
        &format!("{repo}:v1"),
        &[
            (linux_digest.clone(), linux_size, "linux", "amd64"),
            (wasm_digest.clone(), wasm_size, "wasi", "wasm"),
        ],
    )
    .await?;
    push_index(
        &format!("{repo}:linux-only"),
        &[
            (linux_digest.clone(), linux_size, "linux", "amd64"),
            (linux_digest, linux_size, "linux", "arm64"),
        ],
    )
    .await?;
    for (name, image) in [
        ("indexed", format!("{repo}:v1")),
        ("bydigest", format!("{repo}@{wasm_digest}")),
        ("linuxonly", format!("{repo}:linux-only")),
        ("wrongdigest", format!("{repo}@sha256:{}", "0".repeat(64))),
    ] {
        cluster
            .create_pod(wasm_pod(
                name,
                &image,
                &agent.name,
                &["print", name],
                "Never",
            ))
            .await?;
    }

    cluster
        .wait_pod("indexed", "Succeeded", has_phase("Succeeded"))
        .await?;
    assert_eq!(cluster.kubectl(&["logs", "indexed"])?, "indexed\n");
    let by_digest = cluster
        .wait_pod("bydigest", "Succeeded", has_phase("Succeeded"))
        .await?;
    let image_id = by_digest
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()[0]
        .image_id
        .clone();
    assert!(image_id.ends_with(&wasm_digest), "{image_id}");
    let refused = cluster
        .wait_pod("linuxonly", "failing to pull", e2e::is_failing_to_pull())
        .await?;
    let message = waiting_message(&refused);
    assert!(
        message.contains("multi-platform OCI container image (linux/amd64, linux/arm64)"),
        "{message}"
    );
    cluster
        .wait_pod("wrongdigest", "failing to pull", e2e::is_failing_to_pull())
        .await?;
    Ok(())
}

#[tokio::test]
async fn wasi_platform_images_run_their_wasm_entrypoint() -> anyhow::Result<()> {
    use testkit::fixtures::{
        manifest_digest, push_container_image, push_index, push_wasi_platform_image,
    };
    let cluster = Cluster::new("wasiplatform").await?;
    let agent = cluster.start_node().await?;
    let repo = format!("{}/{}/platform", cluster.registry(), cluster.id);
    let module = std::fs::read(wasm_module("wasi-probe")?)?;
    // As `docker buildx build --platform wasi/wasm` makes them for runwasi: a filesystem layer
    // with the module, and the entrypoint naming it.
    push_wasi_platform_image(
        &format!("{repo}:wasi"),
        &module,
        "/app/probe.wasm",
        &["/app/probe.wasm"],
    )
    .await?;
    push_container_image(&format!("{repo}:linux")).await?;
    let (wasi_digest, wasi_size) = manifest_digest(&format!("{repo}:wasi")).await?;
    let (linux_digest, linux_size) = manifest_digest(&format!("{repo}:linux")).await?;
    push_index(
        &format!("{repo}:v1"),
        &[
            (linux_digest, linux_size, "linux", "amd64"),
            (wasi_digest, wasi_size, "wasi", "wasm"),
        ],
    )
    .await?;
    push_wasi_platform_image(
        &format!("{repo}:lost"),
        &module,
        "/app/probe.wasm",
        &["/elsewhere.wasm"],
    )
    .await?;
    for (name, image) in [
        ("direct", format!("{repo}:wasi")),
        ("indexed", format!("{repo}:v1")),
        ("lost", format!("{repo}:lost")),
    ] {
        cluster
            .create_pod(wasm_pod(
                name,
                &image,
                &agent.name,
                &["print", name],
                "Never",
            ))
            .await?;
    }
    for name in ["direct", "indexed"] {
        cluster
            .wait_pod(name, "Succeeded", has_phase("Succeeded"))
            .await?;
        assert_eq!(cluster.kubectl(&["logs", name])?, format!("{name}\n"));
    }
    let lost = cluster
        .wait_pod("lost", "failing to pull", e2e::is_failing_to_pull())
        .await?;
    let message = waiting_message(&lost);
    assert!(
        message.contains("/elsewhere.wasm") && message.contains("not in the image's layers"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn the_push_subcommand_round_trips_with_the_pull_path() -> anyhow::Result<()> {
    let cluster = Cluster::new("push").await?;
    let private = Registry::start_with_auth("bob", "builder")?;
    let dir = tempfile::tempdir()?;
    let docker_config = dir.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("bob:builder");
    std::fs::write(
        &docker_config,
        json!({"auths": {private.host(): {"auth": auth}}}).to_string(),
    )?;
    let wrong_config = dir.path().join("wrong.json");
    let wrong = base64::engine::general_purpose::STANDARD.encode("bob:nope");
    std::fs::write(
        &wrong_config,
        json!({"auths": {private.host(): {"auth": wrong}}}).to_string(),
    )?;
    let module = wasm_module("wasi-probe")?;
    let image = format!("{}/tools/probe:v1", private.host());
    let push = |file: &std::path::Path, credentials: &std::path::Path| {
        e2e::run_binary(
            e2e::Provider::Wasi,
            &[
                "push".as_ref(),
                file.as_os_str(),
                image.as_ref(),
                "--insecure-registries".as_ref(),
                private.host().as_ref(),
                "--image-credentials".as_ref(),
                credentials.as_os_str(),
            ],
        )
    };
    let pushed = push(&module, &docker_config)?;
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    assert!(String::from_utf8_lossy(&pushed.stdout).contains("pushed"));
    // Wrong credentials and a file that is not wasm fail with messages that say so.
    let refused = push(&module, &wrong_config)?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("credentials"), "{stderr}");
    let text = dir.path().join("not.wasm");
    std::fs::write(&text, "hello")?;
    let not_wasm = push(&text, &docker_config)?;
    assert!(!not_wasm.status.success());
    let stderr = String::from_utf8_lossy(&not_wasm.stderr);
    assert!(stderr.contains("not WebAssembly"), "{stderr}");

    // A node with the same credentials runs what was pushed.
    let config_arg = docker_config.display().to_string();
    let agent = cluster
        .start_node_with(&[
            "--insecure-registries",
            private.host(),
            "--image-credentials",
            &config_arg,
        ])
        .await?;
    cluster
        .create_pod(wasm_pod(
            "pushed",
            &image,
            &agent.name,
            &["print", "round trip"],
            "Never",
        ))
        .await?;
    cluster
        .wait_pod("pushed", "Succeeded", has_phase("Succeeded"))
        .await?;
    assert_eq!(cluster.kubectl(&["logs", "pushed"])?, "round trip\n");
    Ok(())
}

#[tokio::test]
async fn one_download_per_layer_and_a_corrupt_store_file_is_fetched_again() -> anyhow::Result<()> {
    let cluster = Cluster::new("coalesce").await?;
    let registry = Registry::start()?;
    let mut agent = cluster
        .start_node_with(&["--insecure-registries", registry.host()])
        .await?;
    let module = std::fs::read(wasm_module("wasi-probe")?)?;
    let image = format!("{}/shared/probe:v1", registry.host());
    testkit::fixtures::push_wasm(&image, &module).await?;
    let digest = kubelet::images::digest_of(&module);
    let blob_gets = || registry.requests(&format!("GET /v2/shared/probe/blobs/{digest}"));
    assert_eq!(blob_gets(), 0);

    // Five pods ask for the image at once: one download.
    for i in 0..5 {
        cluster
            .create_pod(wasm_pod(
                &format!("p{i}"),
                &image,
                &agent.name,
                &["print", "ok"],
                "Never",
            ))
            .await?;
    }
    for i in 0..5 {
        cluster
            .wait_pod(&format!("p{i}"), "Succeeded", has_phase("Succeeded"))
            .await?;
    }
    assert_eq!(
        blob_gets(),
        1,
        "concurrent pulls of one image share one download"
    );

    // A store file damaged while the agent was down is detected and fetched again, never run.
    agent.terminate()?;
    let stored = agent
        .data_dir
        .path()
        .join("images/blobs")
        .join(digest.replace(':', "/"));
    std::fs::write(&stored, b"\0asm damaged")?;
    agent.start_again().await?;
    cluster
        .create_pod(wasm_pod(
            "after",
            &image,
            &agent.name,
            &["print", "intact"],
            "Never",
        ))
        .await?;
    cluster
        .wait_pod("after", "Succeeded", has_phase("Succeeded"))
        .await?;
    assert_eq!(cluster.kubectl(&["logs", "after"])?, "intact\n");
    assert_eq!(blob_gets(), 2, "the damaged file was fetched again");
    assert_eq!(std::fs::read(&stored)?, module);
    Ok(())
}

#[tokio::test]
async fn images_no_pod_uses_are_garbage_collected() -> anyhow::Result<()> {
    let cluster = Cluster::new("imagegc").await?;
    let registry = Registry::start()?;
    let agent = cluster
        .start_node_with(&[
            "--insecure-registries",
            registry.host(),
            "--image-gc-period",
            "1s",
            "--image-minimum-gc-age",
            "0s",
            "--image-maximum-gc-age",
            "2s",
        ])
        .await?;
    let kept_module = std::fs::read(wasm_module("wasi-probe")?)?;
    let dropped_module = std::fs::read(wasm_module("hello-wasm")?)?;
    let kept = format!("{}/gc/kept:v1", registry.host());
    let dropped = format!("{}/gc/dropped:v1", registry.host());
    testkit::fixtures::push_wasm(&kept, &kept_module).await?;
    testkit::fixtures::push_wasm(&dropped, &dropped_module).await?;
    let blob = |module: &[u8]| {
        agent
            .data_dir
            .path()
            .join("images/blobs")
            .join(kubelet::images::digest_of(module).replace(':', "/"))
    };
    let compiled = |module: &[u8]| {
        let prefix = kubelet::images::digest_of(module).replace(':', "-");
        std::fs::read_dir(agent.data_dir.path().join("compiled"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .count()
    };

    cluster
        .create_pod(wasm_pod(
            "keeper",
            &kept,
            &agent.name,
            &["forever"],
            "Always",
        ))
        .await?;
    cluster
        .create_pod(wasm_pod("once", &dropped, &agent.name, &[], "Never"))
        .await?;
    cluster
        .wait_pod("keeper", "Running", has_phase("Running"))
        .await?;
    cluster
        .wait_pod("once", "Succeeded", has_phase("Succeeded"))
        .await?;
    assert!(blob(&dropped_module).exists() && compiled(&dropped_module) == 1);
    cluster.kubectl(&["delete", "pod", "once", "--wait=true"])?;

    // Unused for longer than the maximum age, the image goes, compiled code and all; the
    // image of the running pod stays.
    // The blob goes first and the compiled code right after it: wait for both.
    cluster
        .eventually(
            "the unused image and its compiled code to be removed",
            async || {
                Ok(
                    (!blob(&dropped_module).exists() && compiled(&dropped_module) == 0)
                        .then_some(()),
                )
            },
        )
        .await?;
    assert!(blob(&kept_module).exists());
    // Needed again, it is pulled again.
    let gets = || {
        registry.requests(&format!(
            "GET /v2/gc/dropped/blobs/{}",
            kubelet::images::digest_of(&dropped_module)
        ))
    };
    assert_eq!(gets(), 1);
    cluster
        .create_pod(wasm_pod("again", &dropped, &agent.name, &[], "Never"))
        .await?;
    cluster
        .wait_pod("again", "Succeeded", has_phase("Succeeded"))
        .await?;
    assert_eq!(gets(), 2);
    Ok(())
}

#[tokio::test]
async fn pull_policies_and_pull_failures_as_on_any_node() -> anyhow::Result<()> {
    let cluster = Cluster::new("pullpolicy").await?;
    let agent = cluster.start_node().await?;
    let repo = format!("{}/{}/policy", cluster.registry(), cluster.id);
    let first = std::fs::read(wasm_module("wasi-probe")?)?;
    testkit::fixtures::push_wasm(&format!("{repo}:v1"), &first).await?;
    let with_policy = |name: &str, image: &str, policy: &str| {
        let mut pod = wasm_pod(name, image, &agent.name, &["print", name], "Never");
        pod.spec.as_mut().expect("spec").containers[0].image_pull_policy = Some(policy.into());
        pod
    };
    let events_of =
        async |pod: &str| -> anyhow::Result<Vec<String>> { cluster.pod_events(pod).await };

    // Never, with the image absent: ErrImageNeverPull and the kubelet's message.
    cluster
        .create_pod(with_policy("never", &format!("{repo}:v1"), "Never"))
        .await?;
    let never = cluster
        .wait_pod(
            "never",
            "ErrImageNeverPull",
            is_waiting("ErrImageNeverPull"),
        )
        .await?;
    assert!(
        waiting_message(&never).contains("is not present with pull policy of Never"),
        "{}",
        waiting_message(&never)
    );
    // IfNotPresent pulls once; the next pod finds it on the machine.
    for name in ["first", "second"] {
        cluster
            .create_pod(with_policy(name, &format!("{repo}:v1"), "IfNotPresent"))
            .await?;
        cluster
            .wait_pod(name, "Succeeded", has_phase("Succeeded"))
            .await?;
    }
    let pulled = cluster
        .eventually("the second pod's Pulled event", async || {
            Ok(events_of("second")
                .await?
                .into_iter()
                .find(|e| e.starts_with("Pulled")))
        })
        .await?;
    assert!(pulled.contains("already present on machine"), "{pulled}");
    // Always resolves the tag again: a new push under the same tag is what runs.
    let second = std::fs::read(wasm_module("hello-wasm")?)?;
    testkit::fixtures::push_wasm(&format!("{repo}:v1"), &second).await?;
    cluster
        .create_pod(with_policy("always", &format!("{repo}:v1"), "Always"))
        .await?;
    cluster
        .wait_pod("always", "Succeeded", has_phase("Succeeded"))
        .await?;
    assert!(
        cluster
            .kubectl(&["logs", "always"])?
            .contains("Hello, world!"),
        "the tag's new image ran"
    );
    // A repository that does not exist: ErrImagePull, then ImagePullBackOff, with the cause.
    cluster
        .create_pod(with_policy(
            "missing",
            &format!("{repo}-nothing:v1"),
            "IfNotPresent",
        ))
        .await?;
    let missing = cluster
        .wait_pod(
            "missing",
            "ImagePullBackOff",
            is_waiting("ImagePullBackOff"),
        )
        .await?;
    let message = waiting_message(&missing);
    assert!(message.contains(&format!("{repo}-nothing:v1")), "{message}");
    cluster
        .wait_events("missing", &["BackOff: Back-off pulling image"])
        .await?;
    Ok(())
}

#[tokio::test]
async fn bearer_token_registries_are_pushed_to_and_pulled_from_with_credentials()
-> anyhow::Result<()> {
    let cluster = Cluster::new("tokens").await?;
    // Every request to this registry needs a bearer token from its token server, which hands
    // them out for carol's password only: the flow of Docker Hub, GHCR, ECR and Harbor.
    let registry = Registry::start_with_token_auth("carol", "tokens")?;
    let dir = tempfile::tempdir()?;
    let docker_config = dir.path().join("config.json");
    std::fs::write(
        &docker_config,
        json!({"auths": {registry.host(): {"username": "carol", "password": "tokens"}}})
            .to_string(),
    )?;
    let image = format!("{}/team/probe:v1", registry.host());
    let module = wasm_module("wasi-probe")?;
    let pushed = e2e::run_binary(
        e2e::Provider::Wasi,
        &[
            "push".as_ref(),
            module.as_os_str(),
            image.as_ref(),
            "--insecure-registries".as_ref(),
            registry.host().as_ref(),
            "--image-credentials".as_ref(),
            docker_config.as_os_str(),
        ],
    )?;
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );

    let agent = cluster
        .start_node_with(&["--insecure-registries", registry.host()])
        .await?;
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    for (name, password) in [("carol", "tokens"), ("mallory", "guess")] {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("carol:{password}"));
        let config_json = json!({"auths": {registry.host(): {"auth": auth}}}).to_string();
        secrets.create(&PostParams::default(), &serde_json::from_value(json!({
            "metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": config_json}
        }))?).await?;
    }
    let pod = |name: &str, secret: Option<&str>, policy: &str| {
        let mut pod = wasm_pod(name, &image, &agent.name, &["print", "token pull"], "Never");
        pod.spec.as_mut().expect("spec").containers[0].image_pull_policy = Some(policy.into());
        match secret {
            Some(secret) => with_pull_secret(pod, secret),
            None => pod,
        }
    };
    let assert_refused = async |name: &str| -> anyhow::Result<()> {
        // ErrImagePull, or already ImagePullBackOff (which keeps the cause): a watch may see
        // only the second when the two follow each other closely.
        let pod = cluster
            .wait_pod(name, "ErrImagePull", e2e::is_failing_to_pull())
            .await?;
        let message = waiting_message(&pod);
        assert!(
            message.contains(&image) && message.contains("imagePullSecrets"),
            "{name}: the message names the image and says what to do: {message}"
        );
        Ok(())
    };
    cluster
        .create_pod(pod("anonymous", None, "IfNotPresent"))
        .await?;
    cluster
        .create_pod(pod("wrong", Some("mallory"), "IfNotPresent"))
        .await?;
    assert_refused("anonymous").await?;
    assert_refused("wrong").await?;

    cluster
        .create_pod(pod("right", Some("carol"), "IfNotPresent"))
        .await?;
    cluster
        .wait_pod("right", "Succeeded", has_phase("Succeeded"))
        .await?;
    assert_eq!(cluster.kubectl(&["logs", "right"])?, "token pull\n");
    // With imagePullPolicy Always the registry is asked every time, with the pod's own
    // credentials, even though the image is now on the node.
    cluster
        .create_pod(pod("always-wrong", Some("mallory"), "Always"))
        .await?;
    assert_refused("always-wrong").await?;
    Ok(())
}
