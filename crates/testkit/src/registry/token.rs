//! A token server for the registry's bearer-token auth (the Docker Registry v2 token flow): it
//! answers `GET /token?service=..&scope=..` with a JWT granting the scopes asked for, when the
//! HTTP basic credentials are right. Tokens are ES256-signed and carry their certificate in
//! `x5c`, which Distribution verifies against its `rootcertbundle`.

use anyhow::Context;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::json;
use std::sync::Arc;

/// The `service` the registry names in its challenges and expects as the tokens' audience.
pub const SERVICE: &str = "krustlet-test-registry";
/// The tokens' issuer.
pub const ISSUER: &str = "krustlet-test-token-issuer";
/// How long a token is valid.
const TOKEN_SECONDS: i64 = 300;

/// The signing key and the one account allowed to get tokens.
pub(crate) struct Issuer {
    key: EcdsaKeyPair,
    certificate_der: Vec<u8>,
    certificate_pem: String,
    user: String,
    password: String,
}

impl Issuer {
    /// A fresh key and self-signed certificate for `user`'s tokens.
    pub(crate) fn new(user: &str, password: &str) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("generating a P-256 key"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow::anyhow!("loading the P-256 key"))?;
        let cert_key = rcgen::KeyPair::try_from(pkcs8.as_ref()).context("the key for rcgen")?;
        let certificate = rcgen::CertificateParams::new(vec![ISSUER.to_string()])?
            .self_signed(&cert_key)
            .context("self-signing the token certificate")?;
        Ok(Self {
            key,
            certificate_der: certificate.der().to_vec(),
            certificate_pem: certificate.pem(),
            user: user.to_string(),
            password: password.to_string(),
        })
    }

    /// The certificate the registry trusts (its `rootcertbundle`).
    pub(crate) fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// A JWT for `subject` granting each `type:name:actions` scope.
    fn token(&self, subject: &str, scopes: &[String]) -> anyhow::Result<String> {
        let now = jiff::Timestamp::now().as_second();
        let access: Vec<_> = scopes
            .iter()
            .filter_map(|scope| {
                let (kind, rest) = scope.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect();
        let header =
            json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.certificate_der)]});
        let claims = json!({
            "iss": ISSUER, "sub": subject, "aud": SERVICE,
            "exp": now + TOKEN_SECONDS, "nbf": now - 1, "iat": now,
            "jti": uuid::Uuid::new_v4().to_string(), "access": access,
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signed.as_bytes())
            .map_err(|_| anyhow::anyhow!("signing a token"))?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    fn authenticates(&self, headers: &HeaderMap) -> bool {
        let expected = STANDARD.encode(format!("{}:{}", self.user, self.password));
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .is_some_and(|given| given == expected)
    }
}

/// The token endpoint: 401 without the right basic credentials, else a token for the scopes.
pub(crate) async fn token(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if !issuer.authenticates(&headers) {
        let challenge = format!("Basic realm=\"{ISSUER}\"");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
            axum::Json(json!({"details": "incorrect username or password"})),
        )
            .into_response();
    }
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or_default()).unwrap_or_default();
    let scopes: Vec<String> = pairs
        .into_iter()
        .filter(|(key, _)| key == "scope")
        .flat_map(|(_, value)| value.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    match issuer.token(&issuer.user, &scopes) {
        Ok(token) => axum::Json(json!({
            "token": token, "access_token": token, "expires_in": TOKEN_SECONDS,
            "issued_at": jiff::Timestamp::now().to_string(),
        }))
        .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}")).into_response(),
    }
}

/// The token endpoint served on 127.0.0.1 from a thread of its own (the registry handle is
/// synchronous); stops when dropped.
pub(crate) struct TokenServer {
    realm: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    /// Serves `issuer`'s tokens at `http://127.0.0.1:<port>/token`.
    pub(crate) fn start(issuer: Arc<Issuer>) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let realm = format!("http://{}/token", listener.local_addr()?);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .with_state(issuer);
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(Self {
            realm,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The URL the registry sends clients to.
    pub(crate) fn realm(&self) -> &str {
        &self.realm
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
