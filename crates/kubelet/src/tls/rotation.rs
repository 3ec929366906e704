//! Certificate rotation as the kubelet does it: a certificate is renewed at a jittered 70-90 %
//! of its lifetime through a new CSR, installed without a restart, and retried while the
//! signer does not answer.

use super::csr::{CertificateRequest, request_certificate};
use super::identity::NodeCertificate;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// How long to wait after a failed renewal before trying again.
const RETRY: Duration = Duration::from_secs(10);

/// When a certificate valid from `not_before` to `not_after` is renewed: at `share` (70-90 %)
/// of its lifetime.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime, share: f64) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + lifetime.mul_f64(share)
}

/// Keeps `certificate` renewed through `client` until `shutdown`; when there is none yet,
/// requests one at once.
pub async fn keep_renewed(
    client: kube::Client,
    request: CertificateRequest,
    certificate: Arc<NodeCertificate>,
    shutdown: CancellationToken,
) {
    loop {
        let wait = certificate
            .validity()
            .map_or(Duration::ZERO, |(not_before, not_after)| {
                let share = rand::random_range(0.7..0.9);
                renewal_time(not_before, not_after, share)
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            });
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let issued = tokio::select! {
            () = shutdown.cancelled() => return,
            issued = request_certificate(client.clone(), &request) => issued,
        };
        let installed = issued.and_then(|issued| certificate.install(&issued));
        match installed {
            Ok(()) => {
                let until = certificate.validity().map(|(_, not_after)| {
                    jiff::Timestamp::try_from(not_after)
                        .map(|t| t.to_string())
                        .unwrap_or_default()
                });
                tracing::info!(signer = request.signer, valid_until = ?until, "certificate renewed");
            }
            Err(e) => {
                tracing::warn!(signer = request.signer, error = %e, "renewing the certificate failed; trying again in {RETRY:?}");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_the_share_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let end = start + Duration::from_secs(100);
        assert_eq!(
            renewal_time(start, end, 0.7),
            start + Duration::from_secs(70)
        );
        assert_eq!(
            renewal_time(start, end, 0.9),
            start + Duration::from_secs(90)
        );
    }
}
