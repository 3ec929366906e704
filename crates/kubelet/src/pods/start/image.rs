//! Step 1 of a start: the container's image, by its pull policy, with the pod's image pull
//! secrets and the node's credentials; and what a failed pull shows, as the kubelet's.

use crate::images::credentials::Keyring;
use crate::images::{PullError, PullPolicy, PulledImage, Source};
use crate::metrics::metrics;
use crate::pods::PodContext;
use crate::pods::host::{PodEvent, PodHost};
use crate::pods::lifecycle::WaitReason;
use crate::runtime::Runtime;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;
use tokio::time::Instant;

/// Gets the container's image as its pull policy says, recording the `Pulling` and `Pulled`
/// events and the pull metrics.
pub async fn pull<R: Runtime, H: PodHost>(
    ctx: &PodContext<R, H>,
    pod: &Pod,
    spec: &Container,
) -> Result<PulledImage, PullError> {
    let name = &spec.name;
    let image = spec.image.clone().unwrap_or_default();
    let policy = PullPolicy::for_container(spec.image_pull_policy.as_deref(), &image);
    let host = &*ctx.host;
    if policy == PullPolicy::Always || !ctx.images.is_present(&image) && policy != PullPolicy::Never
    {
        let message = format!("Pulling image \"{image}\"");
        host.record(pod, PodEvent::normal(name, "Pulling", message))
            .await;
    }
    let began = Instant::now();
    let keyring = keyring(ctx, pod).await;
    let (pulled, source) = match ctx.images.get(&image, policy, &keyring).await {
        Ok(got) => got,
        Err(e) => {
            metrics().image_pull_failed();
            return Err(e);
        }
    };
    let message = match source {
        Source::Pulled => {
            metrics().image_pulled(began.elapsed());
            format!(
                "Successfully pulled image \"{image}\" in {:.3}s. Image size: {} bytes.",
                began.elapsed().as_secs_f64(),
                pulled.module.bytes.len()
            )
        }
        Source::Present => {
            metrics().image_present();
            format!("Container image \"{image}\" already present on machine")
        }
    };
    host.record(pod, PodEvent::normal(name, "Pulled", message))
        .await;
    Ok(pulled)
}

/// The pod's image pull secrets, then the node's credentials; read at every pull, as the
/// kubelet does, so a secret created later is used. Secrets that cannot be used are named in a
/// `FailedToRetrieveImagePullSecret` event.
async fn keyring<R: Runtime, H: PodHost>(ctx: &PodContext<R, H>, pod: &Pod) -> Keyring {
    let mut keyring = Keyring::default();
    let ns = pod.namespace().unwrap_or_default();
    let mut missing = Vec::new();
    for reference in pod
        .spec
        .iter()
        .flat_map(|s| s.image_pull_secrets.iter().flatten())
    {
        let name = reference.name.clone();
        let found = match ctx.host.secret(&ns, &name).await {
            Ok(Some(secret)) => secret,
            _ => {
                missing.push(name);
                continue;
            }
        };
        let data = found.data.as_ref();
        let config = data.and_then(|d| d.get(".dockerconfigjson").or_else(|| d.get(".dockercfg")));
        match config.map(|c| keyring.add_docker_config(&c.0)) {
            Some(Ok(())) => {}
            Some(Err(e)) => missing.push(format!("{name}: {e}")),
            None => missing.push(format!("{name}: no .dockerconfigjson or .dockercfg key")),
        }
    }
    if !missing.is_empty() {
        let message = format!(
            "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
            missing.join(", ")
        );
        let event = PodEvent::warning("", "FailedToRetrieveImagePullSecret", message);
        ctx.host.record(pod, event).await;
    }
    keyring.extend(&ctx.node_credentials);
    keyring
}

/// What a failed pull shows: the container's waiting reason and message, and its events.
pub struct PullFailure {
    /// The waiting reason.
    pub reason: WaitReason,
    /// The waiting message.
    pub message: String,
    /// The events to record, in order.
    pub events: Vec<PodEvent>,
}

impl PullFailure {
    /// What pulling `image` for `container` failing with `error` shows; `again` when an
    /// earlier pull failed too (the kubelet then reports the back-off).
    pub fn of(container: &str, image: &str, error: &PullError, again: bool) -> Self {
        let message = error.to_string();
        let failed =
            |reason: &str| PodEvent::warning(container, "Failed", format!("Error: {reason}"));
        match error {
            PullError::NeverPull(_) => Self {
                reason: WaitReason::ErrImageNeverPull,
                events: vec![PodEvent::warning(
                    container,
                    "ErrImageNeverPull",
                    message.clone(),
                )],
                message,
            },
            PullError::InvalidReference(..) => Self {
                reason: WaitReason::InvalidImageName,
                events: vec![
                    PodEvent::warning(container, "InspectFailed", message.clone()),
                    failed("InvalidImageName"),
                ],
                message,
            },
            _ if again => Self {
                reason: WaitReason::ImagePullBackOff,
                message: format!("Back-off pulling image \"{image}\": {message}"),
                events: vec![
                    PodEvent::normal(
                        container,
                        "BackOff",
                        format!("Back-off pulling image \"{image}\""),
                    ),
                    failed("ImagePullBackOff"),
                ],
            },
            _ => Self {
                reason: WaitReason::ErrImagePull,
                events: vec![
                    PodEvent::warning(
                        container,
                        "Failed",
                        format!("Failed to pull image \"{image}\": {message}"),
                    ),
                    failed("ErrImagePull"),
                ],
                message,
            },
        }
    }
}
