//! A Kubernetes client that presents the node's current client certificate at every TLS
//! handshake: kube's own stack (base URI, auth, headers) over a rustls connector whose client
//! certificate comes from a [`NodeCertificate`], so that rotation needs no new client.

use super::CertificateError;
use super::identity::NodeCertificate;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use std::sync::Arc;
use tower::ServiceBuilder;

/// A client for `config` authenticating with `certificate` (its own client certificate, if
/// any, is replaced).
pub fn rotating_client(
    config: kube::Config,
    certificate: Arc<NodeCertificate>,
) -> Result<kube::Client, CertificateError> {
    let kube_err = |e: kube::Error| CertificateError::Api(format!("setting up the client: {e}"));
    let mut tls = config.rustls_client_config().map_err(kube_err)?;
    tls.client_auth_cert_resolver = certificate;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let http_client =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(kube_err)?)
        .layer(config.extra_headers_layer().map_err(kube_err)?)
        .map_result(crate::metrics::count_api_response)
        .map_err(
            |e: hyper_util::client::legacy::Error| -> Box<dyn std::error::Error + Send + Sync> {
                Box::new(e)
            },
        )
        .service(http_client);
    Ok(kube::Client::new(service, config.default_namespace))
}
