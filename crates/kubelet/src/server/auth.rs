//! Authentication and authorization of the kubelet API, as the kubelet does them: client
//! certificates verified against `--client-ca-file`, bearer tokens through a TokenReview,
//! anonymous requests only with `--anonymous-auth`; every request but `/healthz` authorized
//! with a SubjectAccessReview on the `nodes` resource and the path's subresource. Answers are
//! cached briefly, with the kubelet's TTLs.

use crate::ttl_cache::TtlCache;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use std::sync::Mutex;
use std::time::Duration;

/// How long a TokenReview's answer is kept (the kubelet's `authentication.webhook.cacheTTL`).
const AUTHENTICATED_TTL: Duration = Duration::from_secs(120);
/// How long a token the API server refused is kept: a bad token costs one review per period.
const UNAUTHENTICATED_TTL: Duration = Duration::from_secs(30);
/// How long an allowing SubjectAccessReview is kept (`authorization.webhook.cacheAuthorizedTTL`).
const AUTHORIZED_TTL: Duration = Duration::from_secs(300);
/// How long a denying one is kept (`authorization.webhook.cacheUnauthorizedTTL`).
const UNAUTHORIZED_TTL: Duration = Duration::from_secs(30);
/// The most answers of each kind kept; past it the soonest to expire make room.
pub const CACHE_ENTRIES: usize = 4096;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    /// The user name.
    pub name: String,
    /// The groups.
    pub groups: Vec<String>,
}

impl User {
    /// The anonymous user.
    pub fn anonymous() -> Self {
        Self {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
}

/// What a request does, as the authorizer sees it (always on `nodes/<node name>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    /// The verb from the HTTP method.
    pub verb: String,
    /// stats, metrics, log, spec or proxy.
    pub subresource: String,
}

impl Attributes {
    /// The kubelet's mapping of a request to attributes.
    pub fn of(method: &http::Method, path: &str) -> Self {
        let verb = match *method {
            http::Method::POST => "create",
            http::Method::PUT => "update",
            http::Method::PATCH => "patch",
            http::Method::DELETE => "delete",
            _ => "get",
        };
        let first = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        let subresource = match first {
            "stats" => "stats",
            "metrics" => "metrics",
            "logs" => "log",
            "spec" => "spec",
            _ => "proxy",
        };
        Self {
            verb: verb.into(),
            subresource: subresource.into(),
        }
    }
}

/// The authenticator and authorizer.
pub struct Auth {
    client: kube::Client,
    node_name: String,
    anonymous: bool,
    /// Token reviews by the token's sha256 (the token itself is not kept).
    tokens: Mutex<TtlCache<[u8; 32], Option<User>>>,
    decisions: Mutex<TtlCache<(User, Attributes), bool>>,
}

/// The request may not proceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no or bad credentials.
    Unauthorized,
    /// 403, with the kubelet's message.
    Forbidden(String),
    /// 500: the API server could not be asked.
    Error(String),
}

impl Auth {
    /// Checks requests to `node_name`'s API, asking the API server through `client`.
    pub fn new(client: kube::Client, node_name: String, anonymous: bool) -> Self {
        Self {
            client,
            node_name,
            anonymous,
            tokens: Mutex::new(TtlCache::new(CACHE_ENTRIES)),
            decisions: Mutex::new(TtlCache::new(CACHE_ENTRIES)),
        }
    }

    /// Authenticates a request: its verified client certificate, else its bearer token.
    pub async fn authenticate(
        &self,
        certificate: Option<User>,
        bearer: Option<&str>,
    ) -> Result<User, Refusal> {
        if let Some(user) = certificate {
            return Ok(user);
        }
        match bearer {
            Some(token) => self.review_token(token).await?.ok_or(Refusal::Unauthorized),
            None if self.anonymous => Ok(User::anonymous()),
            None => Err(Refusal::Unauthorized),
        }
    }

    async fn review_token(&self, token: &str) -> Result<Option<User>, Refusal> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(user) = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(user);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.into()),
                audiences: None,
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Error(format!("TokenReview failed: {e}")))?;
        let status = answer.status.unwrap_or_default();
        let user = (status.authenticated == Some(true)).then(|| {
            let info = status.user.unwrap_or_default();
            User {
                name: info.username.unwrap_or_default(),
                groups: info.groups.unwrap_or_default(),
            }
        });
        let ttl = if user.is_some() {
            AUTHENTICATED_TTL
        } else {
            UNAUTHENTICATED_TTL
        };
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, user.clone(), ttl);
        Ok(user)
    }

    /// Authorizes `user` to do `attrs` on this node.
    pub async fn authorize(&self, user: &User, attrs: &Attributes) -> Result<(), Refusal> {
        let key = (user.clone(), attrs.clone());
        let cached = self
            .decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key);
        let allowed = match cached {
            Some(allowed) => allowed,
            None => {
                let allowed = self.review_access(user, attrs).await?;
                let ttl = if allowed {
                    AUTHORIZED_TTL
                } else {
                    UNAUTHORIZED_TTL
                };
                self.decisions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, allowed, ttl);
                allowed
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Forbidden(format!(
                "Forbidden (user={}, verb={}, resource=nodes, subresource(s)=[{}])",
                user.name, attrs.verb, attrs.subresource
            )))
        }
    }

    async fn review_access(&self, user: &User, attrs: &Attributes) -> Result<bool, Refusal> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(attrs.verb.clone()),
                    resource: Some("nodes".into()),
                    subresource: Some(attrs.subresource.clone()),
                    name: Some(self.node_name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Error(format!("Authorization error (user={}, verb={}, resource=nodes, subresource(s)=[{}]): {e}", user.name, attrs.verb, attrs.subresource)))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

/// The user a client certificate names: CN is the user, O the groups.
pub fn user_of_certificate(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_the_kubelets_subresources() {
        let get = http::Method::GET;
        assert_eq!(Attributes::of(&get, "/stats/summary").subresource, "stats");
        assert_eq!(
            Attributes::of(&get, "/metrics/cadvisor").subresource,
            "metrics"
        );
        assert_eq!(Attributes::of(&get, "/logs/").subresource, "log");
        assert_eq!(
            Attributes::of(&get, "/containerLogs/ns/p/c").subresource,
            "proxy"
        );
        assert_eq!(Attributes::of(&get, "/pods").subresource, "proxy");
        assert_eq!(
            Attributes::of(&http::Method::POST, "/exec/ns/p/c").verb,
            "create"
        );
    }
}
