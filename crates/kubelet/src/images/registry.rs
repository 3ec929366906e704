//! A bounded client for pulls from the OCI distribution API.
//!
//! A registry is a peer the node does not control: everything it or its token server sends is
//! read with a cap (manifests, configs and tokens: [`MAX_MANIFEST_BYTES`]; error bodies: a few
//! KiB), every wait has a deadline ([`PullLimits::progress_deadline`]), and blobs stream to a
//! file with their declared size and digest checked as they arrive, never held whole in memory.
//! oci-client's pull API reads whole bodies into memory without a cap, so pulls go through this
//! module; oci-client's types parse what arrives (and it still pushes).
//!
//! A [`Session`] is one pull: it answers the registry's `WWW-Authenticate` challenge with the
//! pod's credentials (basic, or a bearer token from the challenge's realm) and keeps the result
//! for its own requests only, so one pod's credentials never serve another pod's pull.

use super::digest::{Digest, InvalidDigest};
use base64::Engine;
use oci_client::Reference;
use oci_client::manifest::{OciDescriptor, OciManifest};
use oci_client::secrets::RegistryAuth;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// The most a manifest, an image index, an image config or a token response may be: the 4 MiB
/// that the OCI distribution spec asks registries to accept and that registries enforce.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// How much of an error response is read, to quote it.
const MAX_ERROR_BODY: u64 = 8 << 10;
/// How much must arrive within each progress deadline for a transfer to count as moving.
pub const MIN_PROGRESS_BYTES: u64 = 64 << 10;
/// How long opening a connection to a registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects followed (blob stores behind a registry answer with one).
const MAX_REDIRECTS: usize = 5;

/// Manifest types asked for, most specific first.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// The node's limits on pulls (`--max-image-size`, `--image-pull-progress-deadline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullLimits {
    /// The most bytes an image may have: the sum of the layers downloaded, and what a
    /// compressed layer may unpack to.
    pub max_image_size: u64,
    /// A transfer that receives less than [`MIN_PROGRESS_BYTES`] in this long (and does not
    /// finish) is cancelled, as the kubelet's `--image-pull-progress-deadline` did.
    pub progress_deadline: Duration,
}

impl Default for PullLimits {
    fn default() -> Self {
        Self {
            max_image_size: 1 << 30,
            progress_deadline: Duration::from_secs(60),
        }
    }
}

/// Why a registry request failed; each says what was refused and why.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The connection or the request failed.
    #[error("{what}: {}", chain(source))]
    Http {
        /// What was being fetched.
        what: String,
        /// The transport's error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry refused the credentials, or wants some.
    #[error("{url} answered {status} (unauthorized): {body}")]
    Unauthorized {
        /// The request's URL.
        url: String,
        /// 401 or 403.
        status: u16,
        /// The start of the registry's answer.
        body: String,
    },
    /// Any other failed answer.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// The request's URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the registry's answer.
        body: String,
    },
    /// Something was larger than the node accepts.
    #[error("{what} is larger than {limit} bytes, the most this node accepts ({flag})")]
    TooLarge {
        /// What was too large.
        what: String,
        /// The limit.
        limit: u64,
        /// The flag or rule that sets it.
        flag: &'static str,
    },
    /// The transfer stopped moving.
    #[error(
        "the registry sent less than {MIN_PROGRESS_BYTES} bytes in {deadline:?} while fetching {what}; the pull was cancelled (--image-pull-progress-deadline)"
    )]
    Stalled {
        /// What was being fetched.
        what: String,
        /// The progress deadline.
        deadline: Duration,
    },
    /// A blob's length was not the one its descriptor declares.
    #[error("the registry sent {actual} bytes for {digest}, whose descriptor declares {declared}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// What the descriptor says.
        declared: u64,
        /// What arrived (at least this many when longer).
        actual: u64,
    },
    /// Content did not have its digest.
    #[error("the registry sent content with digest {actual} for {expected}")]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// The content's digest.
        actual: Digest,
    },
    /// A descriptor or reference names a digest that is not one.
    #[error(transparent)]
    InvalidDigest(#[from] InvalidDigest),
    /// A manifest that cannot be read.
    #[error("the manifest is not a valid OCI or Docker v2 manifest: {0}")]
    Manifest(String),
    /// The token server's answer cannot be used.
    #[error("the token server {realm} gave no usable token: {reason}")]
    Token {
        /// The token endpoint.
        realm: String,
        /// What was wrong.
        reason: String,
    },
    /// Writing the download failed.
    #[error("writing a download into the image store: {0}")]
    Store(#[source] std::io::Error),
}

impl RegistryError {
    /// Whether the registry wants (other) credentials.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Self::Unauthorized { .. })
    }
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// The node's registry client: one connection pool for every pull.
pub struct RegistryClient {
    http: reqwest::Client,
    insecure: Vec<String>,
    limits: PullLimits,
}

impl RegistryClient {
    /// A client that reaches the registries in `insecure` over plain HTTP.
    pub fn new(insecure: Vec<String>, limits: PullLimits) -> Self {
        // reqwest takes the process's rustls provider; the node's is ring (a binary installs it
        // at start, this covers a library user that did not; an installed one is kept).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .user_agent(concat!("krustlet/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a TLS client with the process's crypto provider");
        Self {
            http,
            insecure,
            limits,
        }
    }

    /// The node's limits.
    pub fn limits(&self) -> PullLimits {
        self.limits
    }

    /// A pull of `reference` with `auth`.
    pub fn session(&self, reference: &Reference, auth: RegistryAuth) -> Session<'_> {
        let registry = reference.resolve_registry().to_string();
        let scheme = if self.insecure.contains(&registry) {
            "http"
        } else {
            "https"
        };
        Session {
            client: self,
            base: format!("{scheme}://{registry}/v2/{}", reference.repository()),
            repository: reference.repository().to_string(),
            auth,
            authorization: None,
            progress: Progress::new(self.limits.progress_deadline),
        }
    }
}

/// One pull's requests, with its credentials and its progress deadline.
pub struct Session<'a> {
    client: &'a RegistryClient,
    base: String,
    repository: String,
    auth: RegistryAuth,
    authorization: Option<HeaderValue>,
    progress: Progress,
}

impl Session<'_> {
    /// The manifest or index a tag or digest names, and its digest (checked when `name` is one).
    pub async fn manifest(&mut self, name: &str) -> Result<(OciManifest, Digest), RegistryError> {
        let url = format!("{}/manifests/{name}", self.base);
        let what = format!("the manifest {name}");
        let response = self.get(&url, Some(MANIFEST_TYPES), &what).await?;
        let body = self
            .read_capped(
                response,
                MAX_MANIFEST_BYTES,
                &what,
                "the OCI manifest limit",
            )
            .await?;
        let digest = match name.parse::<Digest>() {
            Ok(expected) => {
                let mut verifier = expected.verifier();
                verifier.update(&body);
                verifier
                    .finish()
                    .map_err(|actual| RegistryError::DigestMismatch {
                        expected: expected.clone(),
                        actual,
                    })?;
                expected
            }
            Err(_) => Digest::sha256_of(&body),
        };
        let manifest = parse_manifest(&body)?;
        Ok((manifest, digest))
    }

    /// A small blob (an image config) in memory, capped at [`MAX_MANIFEST_BYTES`].
    pub async fn small_blob(
        &mut self,
        descriptor: &OciDescriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        let (digest, size) = checked(descriptor)?;
        if size > MAX_MANIFEST_BYTES {
            return Err(RegistryError::TooLarge {
                what: format!("the config {digest} ({size} bytes)"),
                limit: MAX_MANIFEST_BYTES,
                flag: "the OCI manifest limit",
            });
        }
        let mut body = Vec::new();
        self.blob_into(&digest, size, &mut body).await?;
        Ok(body)
    }

    /// Streams a blob into `out`, checking its declared size and digest on the way.
    pub async fn blob_to_file(
        &mut self,
        descriptor: &OciDescriptor,
        out: &mut tokio::fs::File,
    ) -> Result<(), RegistryError> {
        let (digest, size) = checked(descriptor)?;
        let limit = self.client.limits.max_image_size;
        if size > limit {
            return Err(RegistryError::TooLarge {
                what: format!("the layer {digest} ({size} bytes)"),
                limit,
                flag: "--max-image-size",
            });
        }
        let mut file = FileSink(out);
        self.blob_into(&digest, size, &mut file).await?;
        out.flush().await.map_err(RegistryError::Store)
    }

    async fn blob_into(
        &mut self,
        digest: &Digest,
        size: u64,
        out: &mut impl Sink,
    ) -> Result<(), RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base);
        let what = format!("the blob {digest}");
        let mut response = self.get(&url, None, &what).await?;
        if let Some(length) = response.content_length()
            && length > size
        {
            return Err(RegistryError::SizeMismatch {
                digest: digest.clone(),
                declared: size,
                actual: length,
            });
        }
        let mut verifier = digest.verifier();
        let mut received = 0u64;
        while let Some(chunk) = self.next_chunk(&mut response, &what).await? {
            received = received.saturating_add(chunk.len() as u64);
            if received > size {
                return Err(RegistryError::SizeMismatch {
                    digest: digest.clone(),
                    declared: size,
                    actual: received,
                });
            }
            verifier.update(&chunk);
            out.put(&chunk).await?;
        }
        if received != size {
            return Err(RegistryError::SizeMismatch {
                digest: digest.clone(),
                declared: size,
                actual: received,
            });
        }
        verifier
            .finish()
            .map_err(|actual| RegistryError::DigestMismatch {
                expected: digest.clone(),
                actual,
            })?;
        self.progress.completed();
        Ok(())
    }

    /// A GET that answers one authentication challenge, and fails on any unsuccessful status.
    async fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut challenged = false;
        loop {
            let mut request = self.client.http.get(url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(authorization) = &self.authorization {
                request = request.header(AUTHORIZATION, authorization.clone());
            }
            let doing = || format!("fetching {what} from {url}");
            let response = self.progress.http(request.send(), what, doing).await?;
            let status = response.status().as_u16();
            if status == 401 && !challenged {
                challenged = true;
                let challenge = response.headers().get(WWW_AUTHENTICATE).cloned();
                if let Some(authorization) = self.answer(challenge.as_ref()).await? {
                    self.authorization = Some(authorization);
                    continue;
                }
            }
            if response.status().is_success() {
                return Ok(response);
            }
            let body = self.error_body(response, what).await;
            return Err(match status {
                401 | 403 => RegistryError::Unauthorized {
                    url: url.into(),
                    status,
                    body,
                },
                _ => RegistryError::Status {
                    url: url.into(),
                    status,
                    body,
                },
            });
        }
    }

    /// The `Authorization` that answers a challenge with this session's credentials, if any.
    async fn answer(
        &mut self,
        challenge: Option<&HeaderValue>,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let header = |value: String| HeaderValue::from_str(&value).ok();
        let basic = match &self.auth {
            RegistryAuth::Bearer(token) => return Ok(header(format!("Bearer {token}"))),
            RegistryAuth::Basic(user, password) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )),
            RegistryAuth::Anonymous => None,
        };
        let Some(challenge) = challenge
            .and_then(|c| c.to_str().ok())
            .map(Challenge::parse)
        else {
            return Ok(basic.and_then(header));
        };
        if !challenge.scheme.eq_ignore_ascii_case("bearer") {
            return Ok(basic.and_then(header));
        }
        let Some(realm) = challenge.param("realm") else {
            return Ok(basic.and_then(header));
        };
        let scope = format!("repository:{}:pull", self.repository);
        let mut query = vec![("scope", scope.as_str())];
        if let Some(service) = challenge.param("service") {
            query.push(("service", service));
        }
        let mut request = self.client.http.get(realm).query(&query);
        if let Some(basic) = &basic {
            request = request.header(AUTHORIZATION, basic.as_str());
        }
        let what = format!("a token from {realm}");
        let doing = || format!("fetching {what}");
        let response = self.progress.http(request.send(), &what, doing).await?;
        let status = response.status().as_u16();
        if !response.status().is_success() {
            let body = self.error_body(response, &what).await;
            return Err(RegistryError::Unauthorized {
                url: realm.to_string(),
                status,
                body,
            });
        }
        let body = self
            .read_capped(response, MAX_MANIFEST_BYTES, &what, "the token limit")
            .await?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token = serde_json::from_slice::<TokenResponse>(&body)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                t.token
                    .or(t.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| "it has neither token nor access_token".to_string())
            })
            .map_err(|reason| RegistryError::Token {
                realm: realm.to_string(),
                reason,
            })?;
        HeaderValue::from_str(&format!("Bearer {token}"))
            .map(Some)
            .map_err(|_| RegistryError::Token {
                realm: realm.to_string(),
                reason: "the token is not a valid header value".into(),
            })
    }

    async fn next_chunk(
        &mut self,
        response: &mut reqwest::Response,
        what: &str,
    ) -> Result<Option<bytes::Bytes>, RegistryError> {
        let doing = || format!("reading {what}");
        let chunk = self.progress.http(response.chunk(), what, doing).await?;
        if let Some(chunk) = &chunk {
            self.progress.moved(chunk.len() as u64);
        }
        Ok(chunk)
    }

    async fn read_capped(
        &mut self,
        mut response: reqwest::Response,
        limit: u64,
        what: &str,
        flag: &'static str,
    ) -> Result<Vec<u8>, RegistryError> {
        let too_large = || RegistryError::TooLarge {
            what: what.to_string(),
            limit,
            flag,
        };
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = self.next_chunk(&mut response, what).await? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        self.progress.completed();
        Ok(body)
    }

    /// The start of a failed answer's body, for the message; never more than a few KiB.
    async fn error_body(&mut self, mut response: reqwest::Response, what: &str) -> String {
        let mut body = Vec::new();
        while (body.len() as u64) < MAX_ERROR_BODY {
            match self.next_chunk(&mut response, what).await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        body.truncate(MAX_ERROR_BODY as usize);
        String::from_utf8_lossy(&body).trim().to_string()
    }
}

/// A descriptor's digest and size, validated.
fn checked(descriptor: &OciDescriptor) -> Result<(Digest, u64), RegistryError> {
    let digest: Digest = descriptor.digest.parse()?;
    let size = u64::try_from(descriptor.size).map_err(|_| {
        RegistryError::Manifest(format!(
            "the descriptor of {digest} declares a negative size"
        ))
    })?;
    Ok((digest, size))
}

/// Parses a manifest or index and validates every descriptor in it.
pub(crate) fn parse_manifest(body: &[u8]) -> Result<OciManifest, RegistryError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Versioned {
        schema_version: u8,
    }
    let versioned: Versioned =
        serde_json::from_slice(body).map_err(|e| RegistryError::Manifest(e.to_string()))?;
    if versioned.schema_version != 2 {
        return Err(RegistryError::Manifest(format!(
            "schema version {} (only 2 is supported)",
            versioned.schema_version
        )));
    }
    let manifest: OciManifest =
        serde_json::from_slice(body).map_err(|e| RegistryError::Manifest(e.to_string()))?;
    match &manifest {
        OciManifest::Image(image) => {
            for descriptor in std::iter::once(&image.config).chain(&image.layers) {
                checked(descriptor)?;
            }
        }
        OciManifest::ImageIndex(index) => {
            for entry in &index.manifests {
                entry.digest.parse::<Digest>()?;
                if entry.size < 0 {
                    return Err(RegistryError::Manifest(format!(
                        "the index entry {} declares a negative size",
                        entry.digest
                    )));
                }
            }
        }
    }
    Ok(manifest)
}

/// Where a blob's bytes go.
trait Sink {
    async fn put(&mut self, bytes: &[u8]) -> Result<(), RegistryError>;
}

impl Sink for Vec<u8> {
    async fn put(&mut self, bytes: &[u8]) -> Result<(), RegistryError> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

struct FileSink<'a>(&'a mut tokio::fs::File);

impl Sink for FileSink<'_> {
    async fn put(&mut self, bytes: &[u8]) -> Result<(), RegistryError> {
        self.0.write_all(bytes).await.map_err(RegistryError::Store)
    }
}

/// The progress rule: within every `deadline`, [`MIN_PROGRESS_BYTES`] arrive or a transfer
/// finishes; time spent waiting for answers counts too.
struct Progress {
    deadline: Duration,
    window_start: Instant,
    received: u64,
}

impl Progress {
    fn new(deadline: Duration) -> Self {
        Self {
            deadline,
            window_start: Instant::now(),
            received: 0,
        }
    }

    async fn wait<F: Future>(&self, future: F, what: &str) -> Result<F::Output, RegistryError> {
        let until = self
            .window_start
            .checked_add(self.deadline)
            .unwrap_or_else(|| self.window_start + Duration::from_secs(86_400 * 365));
        tokio::time::timeout_at(until, future)
            .await
            .map_err(|_| RegistryError::Stalled {
                what: what.to_string(),
                deadline: self.deadline,
            })
    }

    /// A request or a read under the deadline; its failure says what was being `doing`.
    async fn http<T>(
        &self,
        transfer: impl Future<Output = reqwest::Result<T>>,
        what: &str,
        doing: impl FnOnce() -> String,
    ) -> Result<T, RegistryError> {
        self.wait(transfer, what)
            .await?
            .map_err(|source| RegistryError::Http {
                what: doing(),
                source,
            })
    }

    fn moved(&mut self, bytes: u64) {
        self.received = self.received.saturating_add(bytes);
        if self.received >= MIN_PROGRESS_BYTES {
            self.completed();
        }
    }

    fn completed(&mut self) {
        self.window_start = Instant::now();
        self.received = 0;
    }
}

/// A `WWW-Authenticate` challenge: a scheme and its `key="value"` parameters.
pub(crate) struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    pub(crate) fn parse(text: &str) -> Self {
        let text = text.trim();
        let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
        let mut params = Vec::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                value = chars.by_ref().take_while(|c| *c != ',').collect();
            }
            params.push((key.trim().to_ascii_lowercase(), value));
        }
        Self {
            scheme: scheme.to_string(),
            params,
        }
    }

    pub(crate) fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quoted_commas() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.param("realm"), Some("https://auth.example/token"));
        assert_eq!(c.param("service"), Some("registry.example"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
        let basic = Challenge::parse(r#"Basic realm="Registry Realm""#);
        assert_eq!(basic.scheme, "Basic");
        assert_eq!(basic.param("realm"), Some("Registry Realm"));
        assert!(Challenge::parse("").params.is_empty());
    }

    #[test]
    fn manifests_with_bad_descriptors_are_refused() {
        let manifest = |digest: &str, size: i64| {
            serde_json::json!({
                "schemaVersion": 2,
                "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": format!("sha256:{}", "0".repeat(64)), "size": 2},
                "layers": [{"mediaType": "application/wasm", "digest": digest, "size": size}],
            })
            .to_string()
        };
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(parse_manifest(manifest(&good, 10).as_bytes()).is_ok());
        assert!(matches!(
            parse_manifest(manifest("sha256:../../../../dev/zero", 10).as_bytes()),
            Err(RegistryError::InvalidDigest(_))
        ));
        assert!(matches!(
            parse_manifest(manifest(&good, -1).as_bytes()),
            Err(RegistryError::Manifest(_))
        ));
        assert!(parse_manifest(br#"{"schemaVersion": 1}"#).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn progress_needs_bytes_within_each_deadline() {
        let mut progress = Progress::new(Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(59)).await;
        progress.moved(MIN_PROGRESS_BYTES - 1);
        let stalled = progress
            .wait(tokio::time::sleep(Duration::from_secs(2)), "x")
            .await;
        assert!(matches!(stalled, Err(RegistryError::Stalled { .. })));
        progress.moved(1);
        let moving = progress
            .wait(tokio::time::sleep(Duration::from_secs(59)), "x")
            .await;
        assert!(moving.is_ok(), "a full window of bytes resets the deadline");
    }

    proptest::proptest! {
        #[test]
        fn no_challenge_or_manifest_makes_the_parsers_panic(
            text in ".{0,200}",
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
        ) {
            let _ = Challenge::parse(&text);
            let _ = parse_manifest(&bytes);
            let _ = parse_manifest(text.as_bytes());
        }

        #[test]
        fn quoted_parameters_come_back_as_written(
            realm in "[ -!#-\\[\\]-~]{0,40}",
            service in "[a-z.:,=]{0,20}",
        ) {
            let quote = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
            let header = format!(r#"Bearer realm="{}",service="{}""#, quote(&realm), quote(&service));
            let challenge = Challenge::parse(&header);
            proptest::prop_assert_eq!(challenge.param("realm"), Some(realm.as_str()));
            proptest::prop_assert_eq!(challenge.param("service"), Some(service.as_str()));
        }
    }
}
