//! Requests the real server proxies to a node's kubelet: `pods/log` and `nodes/proxy`. Like a
//! kube-apiserver without `--kubelet-certificate-authority`, it does not verify the kubelet's
//! serving certificate, and it authenticates with its own kubelet-client certificate.

use super::handlers::Ctx;
use super::response::{self, Reply, bad_request, not_found};
use axum::body::Body;
use http::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use std::sync::Arc;

const LOG_PARAMS: &[&str] = &[
    "follow",
    "previous",
    "timestamps",
    "tailLines",
    "sinceSeconds",
    "sinceTime",
    "limitBytes",
];

/// `GET pods/{name}/log`.
pub async fn pod_log(ctx: &Ctx) -> Reply {
    let (ns, name) = (&ctx.target.namespace, &ctx.target.name);
    let Some(pod) = ctx.shared.store.read(|s| s.get("pods", ns, name).cloned()) else {
        return not_found("", "pods", name).into();
    };
    let containers: Vec<String> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| pod["spec"][*l].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let app_containers = pod["spec"]["containers"]
        .as_array()
        .map(Vec::len)
        .unwrap_or_default();
    let container = match ctx.query.get("container") {
        Some(c) if containers.contains(c) => c.clone(),
        Some(c) => return bad_request(format!("container {c} is not valid for pod {name}")).into(),
        None if app_containers == 1 => pod["spec"]["containers"][0]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        None => {
            return bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            ))
            .into();
        }
    };
    let Some(node_name) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return bad_request(format!("pod {name} does not have a host assigned")).into();
    };
    let query: Vec<(&str, &str)> = LOG_PARAMS
        .iter()
        .filter_map(|p| ctx.query.get(*p).map(|v| (*p, v.as_str())))
        .collect();
    let query = serde_urlencoded::to_string(query).unwrap_or_default();
    let path = format!("/containerLogs/{ns}/{name}/{container}?{query}");
    forward(ctx, node_name, &path).await
}

/// `GET nodes/{name}/proxy/{path}`.
pub async fn node_proxy(ctx: &Ctx) -> Reply {
    let mut path = format!("/{}", ctx.target.proxy_path);
    if !ctx.query.is_empty() {
        path = format!(
            "{path}?{}",
            serde_urlencoded::to_string(&ctx.query).unwrap_or_default()
        );
    }
    forward(ctx, &ctx.target.name.clone(), &path).await
}

async fn forward(ctx: &Ctx, node_name: &str, path: &str) -> Reply {
    let Some(node) = ctx
        .shared
        .store
        .read(|s| s.get("nodes", "", node_name).cloned())
    else {
        return not_found("", "nodes", node_name).into();
    };
    let Some((host, port)) = kubelet_endpoint(&node) else {
        return response::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("node {node_name} has no address and kubelet port in its status"),
            None,
        )
        .into();
    };
    match send(ctx.shared.kubelet_client.clone(), &host, port, path).await {
        Ok(reply) => reply,
        Err(e) => response::status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("Get \"https://{host}:{port}{path}\": {e}"),
            None,
        )
        .into(),
    }
}

fn kubelet_endpoint(node: &Value) -> Option<(String, u16)> {
    let addresses = node["status"]["addresses"].as_array()?;
    let host = ["InternalIP", "Hostname", "ExternalIP"]
        .iter()
        .find_map(|t| addresses.iter().find(|a| a["type"] == *t))?["address"]
        .as_str()?
        .to_string();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64()?;
    Some((host, u16::try_from(port).ok()?))
}

async fn send(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    port: u16,
    path: &str,
) -> Result<Reply, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    let server_name = ServerName::try_from(host.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(header::HOST, format!("{host}:{port}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    if !parts.status.is_success() {
        // As the real server's response checker: the kubelet's error text becomes a Status.
        let text = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, 64 * 1024))
            .await?
            .to_bytes();
        let reason = match parts.status {
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "NotFound",
            _ => "InternalError",
        };
        return Ok(response::status(
            parts.status,
            reason,
            String::from_utf8_lossy(&text).trim().to_string(),
            None,
        )
        .into());
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// The kubelet-client TLS configuration: the stand-in's client certificate, any server certificate.
pub fn kubelet_client_config(
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| rustls::Error::General("no private key in PEM".into()))?;
    rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_auth_cert(certs, key)
}

/// A client TLS configuration without a client certificate that accepts any server certificate:
/// for tests that talk to a kubelet API as an unauthenticated (or hostile) client.
pub fn anonymous_client_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth()
}

#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
