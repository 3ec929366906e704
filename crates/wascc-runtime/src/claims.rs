//! wascap claims: the signed JWT an actor carries in a custom section, naming its issuer (an
//! account key), its own module key, the SHA-256 of the module without that section, and the
//! capabilities it may use. Verified here with our own code: the signature (Ed25519 over
//! `header.claims`, by the issuer's nkey), the module hash, `exp` and `nbf`; and signed the
//! way `wash claims sign` does, for tools and test fixtures.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The custom section of waSCC-era actors (wascap 0.5).
pub const JWT_SECTION: &str = "jwt";
/// The custom section of newer wasmCloud actors, whose tokens list no capabilities.
pub const WASMCLOUD_JWT_SECTION: &str = "wasmcloud_jwt";

/// An actor's verified claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The actor's name (`wascap.name`), or its module key when it has none.
    pub name: String,
    /// The account that signed the actor (`iss`).
    pub issuer: String,
    /// The actor's module key (`sub`).
    pub subject: String,
    /// Capability ids the actor may use (`wascap.caps`); `None` for tokens that carry none
    /// (newer wasmCloud actors), whose capabilities come from the pod.
    pub capabilities: Option<Vec<String>>,
}

/// Why an actor's claims were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimsError {
    /// The module carries no claims section.
    #[error(
        "the actor is not signed: it has no `jwt` (or `wasmcloud_jwt`) custom section with wascap claims; sign it with its account key (e.g. `wash claims sign`) before running it"
    )]
    Unsigned,
    /// The module is not a WebAssembly module.
    #[error("the actor is not a valid WebAssembly module: {0}")]
    Malformed(String),
    /// The token could not be read.
    #[error("the actor's claims token is malformed: {0}")]
    Token(String),
    /// The signature does not verify with the issuer's key.
    #[error(
        "the actor's claims signature does not verify with its issuer's key {0}: the token was altered or signed by another account"
    )]
    Signature(String),
    /// The module was changed after signing.
    #[error(
        "the actor was modified after it was signed: its claims name module hash {claimed} but the module hashes to {actual}"
    )]
    Tampered {
        /// The hash in the claims.
        claimed: String,
        /// The module's hash.
        actual: String,
    },
    /// `exp` is past.
    #[error("the actor's claims expired at {0} (unix time); sign it again")]
    Expired(u64),
    /// `nbf` is in the future.
    #[error("the actor's claims are not valid before {0} (unix time)")]
    NotYetValid(u64),
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Token {
    iss: String,
    sub: String,
    exp: Option<u64>,
    nbf: Option<u64>,
    wascap: Wascap,
}

#[derive(Deserialize)]
struct Wascap {
    name: Option<String>,
    hash: String,
    caps: Option<Vec<String>>,
}

/// Verifies the claims `module` carries, at unix time `now`.
pub fn verify(module: &[u8], now: u64) -> Result<Claims, ClaimsError> {
    let (jwt, stripped) = split_claims(module)?;
    let jwt = jwt.ok_or(ClaimsError::Unsigned)?;
    let jwt = std::str::from_utf8(&jwt).map_err(|_| ClaimsError::Token("not UTF-8".into()))?;
    let mut parts = jwt.trim().split('.');
    let (Some(header), Some(body), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ClaimsError::Token(
            "a JWT has three dot-separated parts".into(),
        ));
    };
    let header: Header = decode_json(header, "header")?;
    if header.alg != "Ed25519" {
        return Err(ClaimsError::Token(format!(
            "algorithm {:?} is not Ed25519",
            header.alg
        )));
    }
    let token: Token = decode_json(body, "claims")?;
    if !token.iss.starts_with('A') || !token.sub.starts_with('M') {
        return Err(ClaimsError::Token(
            "the issuer must be an account key (A...) and the subject a module key (M...)".into(),
        ));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|e| ClaimsError::Token(format!("signature: {e}")))?;
    let issuer = nkeys::KeyPair::from_public_key(&token.iss)
        .map_err(|e| ClaimsError::Token(format!("issuer key {}: {e}", token.iss)))?;
    let signed = &jwt.trim()[..header_and_body_len(jwt.trim())];
    issuer
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| ClaimsError::Signature(token.iss.clone()))?;
    let actual = hex::encode_upper(Sha256::digest(&stripped));
    if !token.wascap.hash.eq_ignore_ascii_case(&actual) {
        return Err(ClaimsError::Tampered {
            claimed: token.wascap.hash,
            actual,
        });
    }
    if let Some(exp) = token.exp.filter(|exp| *exp <= now) {
        return Err(ClaimsError::Expired(exp));
    }
    if let Some(nbf) = token.nbf.filter(|nbf| *nbf > now) {
        return Err(ClaimsError::NotYetValid(nbf));
    }
    Ok(Claims {
        name: token.wascap.name.unwrap_or_else(|| token.sub.clone()),
        issuer: token.iss,
        subject: token.sub,
        capabilities: token.wascap.caps,
    })
}

/// The length of `header.claims`, the part of a JWT its signature covers.
fn header_and_body_len(jwt: &str) -> usize {
    jwt.rfind('.').unwrap_or(jwt.len())
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, ClaimsError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| ClaimsError::Token(format!("{what}: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| ClaimsError::Token(format!("{what}: {e}")))
}

/// The claims section's contents (the last one, if several) and the module without any claims
/// section, section by section as it was: what the claims' hash covers.
pub fn split_claims(module: &[u8]) -> Result<(Option<Vec<u8>>, Vec<u8>), ClaimsError> {
    use wasmparser::{Parser, Payload};
    let mut jwt = None;
    let mut stripped = Vec::with_capacity(module.len());
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(|e| ClaimsError::Malformed(e.to_string()))?;
        match &payload {
            Payload::Version { encoding, .. } => {
                if *encoding != wasmparser::Encoding::Module {
                    return Err(ClaimsError::Malformed(
                        "it is a component; waSCC actors are core modules".into(),
                    ));
                }
                stripped.extend_from_slice(&wasm_encoder::Module::HEADER);
                continue;
            }
            Payload::CustomSection(section)
                if matches!(section.name(), JWT_SECTION | WASMCLOUD_JWT_SECTION) =>
            {
                jwt = Some(section.data().to_vec());
                continue;
            }
            _ => {}
        }
        if let Some((id, range)) = payload.as_section() {
            // The parser announces a code section before reading it: a size past the end of
            // the module is refused here, not trusted.
            let data = module.get(range).ok_or_else(|| {
                ClaimsError::Malformed("a section runs past the end of the module".into())
            })?;
            wasm_encoder::Section::append_to(&wasm_encoder::RawSection { id, data }, &mut stripped);
        }
    }
    Ok((jwt, stripped))
}

/// What [`sign`] puts into an actor's claims.
#[derive(Debug, Clone, Default)]
pub struct ActorClaims {
    /// The actor's name.
    pub name: String,
    /// Capability ids it may use, e.g. `wascc:http_server`.
    pub capabilities: Vec<String>,
    /// Unix time after which the claims are invalid.
    pub expires: Option<u64>,
    /// Unix time before which the claims are invalid.
    pub not_before: Option<u64>,
}

/// Signs `module` as a waSCC-era actor issued by `account` (an account key pair), with a new
/// module key as its subject: the claims go into a `jwt` custom section replacing any there.
pub fn sign(
    module: &[u8],
    account: &nkeys::KeyPair,
    claims: &ActorClaims,
) -> Result<Vec<u8>, ClaimsError> {
    sign_into(module, account, claims, JWT_SECTION)
}

/// [`sign`] into the custom section `section`; the `wasmcloud_jwt` format lists no
/// capabilities.
fn sign_into(
    module: &[u8],
    account: &nkeys::KeyPair,
    claims: &ActorClaims,
    section: &str,
) -> Result<Vec<u8>, ClaimsError> {
    let (_, mut signed) = split_claims(module)?;
    let capabilities = (section == JWT_SECTION).then_some(&claims.capabilities);
    let subject = nkeys::KeyPair::new_module();
    let token = serde_json::json!({
        "jti": hex::encode(&Sha256::digest(&signed)[..8]),
        "iat": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "iss": account.public_key(),
        "sub": subject.public_key(),
        "exp": claims.expires,
        "nbf": claims.not_before,
        "wascap": {
            "name": claims.name,
            "hash": hex::encode_upper(Sha256::digest(&signed)),
            "tags": [],
            "caps": capabilities,
            "rev": 0,
            "ver": "0.1.0",
            "prov": false,
        },
    });
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"jwt","alg":"Ed25519"}"#);
    let body = URL_SAFE_NO_PAD.encode(token.to_string());
    let signature = account
        .sign(format!("{header}.{body}").as_bytes())
        .map_err(|e| ClaimsError::Token(format!("signing: {e}")))?;
    let jwt = format!("{header}.{body}.{}", URL_SAFE_NO_PAD.encode(signature));
    wasm_encoder::Section::append_to(
        &wasm_encoder::CustomSection {
            name: section.into(),
            data: jwt.as_bytes().into(),
        },
        &mut signed,
    );
    Ok(signed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{CustomSection, Module, Section};

    fn module() -> Vec<u8> {
        let mut module = Module::new();
        module.section(&CustomSection {
            name: "producers".into(),
            data: b"test".into(),
        });
        module.finish()
    }

    fn claims(capabilities: &[&str]) -> ActorClaims {
        ActorClaims {
            name: "echo".into(),
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }
    }

    fn signed(claims: &ActorClaims) -> Vec<u8> {
        sign(&module(), &nkeys::KeyPair::new_account(), claims).unwrap()
    }

    #[test]
    fn a_signed_actor_verifies_with_its_capabilities() {
        let signed = signed(&claims(&["wascc:http_server"]));
        let claims = verify(&signed, 1000).unwrap();
        assert_eq!(claims.name, "echo");
        assert_eq!(
            claims.capabilities,
            Some(vec!["wascc:http_server".to_string()])
        );
        assert!(claims.issuer.starts_with('A'));
    }

    #[test]
    fn a_wasmcloud_token_verifies_without_capabilities() {
        let account = nkeys::KeyPair::new_account();
        let signed = sign_into(&module(), &account, &claims(&[]), WASMCLOUD_JWT_SECTION).unwrap();
        let verified = verify(&signed, 1000).unwrap();
        assert_eq!(verified.capabilities, None);
        assert_eq!(verified.issuer, account.public_key());
    }

    #[test]
    fn a_section_running_past_the_end_is_refused_not_a_panic() {
        // Found by the `wascap_claims` fuzz target: a code section declaring 68 bytes in a
        // module of 34.
        let module = [
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x03, 0x07, 0x05, 0x07, 0x6c, 0x73,
            0x61, 0x00, 0x2f, 0x0a, 0x31, 0x05, 0x07, 0x6c, 0x73, 0xff, 0xff, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x80, 0xff,
        ];
        assert!(matches!(
            split_claims(&module),
            Err(ClaimsError::Malformed(_))
        ));
        assert!(verify(&module, 1000).is_err());
    }

    #[test]
    fn an_unsigned_actor_is_refused() {
        assert_eq!(verify(&module(), 1000), Err(ClaimsError::Unsigned));
    }

    #[test]
    fn a_module_changed_after_signing_is_refused() {
        let mut signed = signed(&claims(&[]));
        CustomSection {
            name: "extra".into(),
            data: b"payload".into(),
        }
        .append_to(&mut signed);
        assert!(matches!(
            verify(&signed, 1000),
            Err(ClaimsError::Tampered { .. })
        ));
    }

    #[test]
    fn an_altered_token_fails_its_signature() {
        let signed = signed(&claims(&[]));
        let (jwt, stripped) = split_claims(&signed).unwrap();
        let jwt = String::from_utf8(jwt.unwrap()).unwrap();
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let mut body: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        body["wascap"]["caps"] = serde_json::json!(["wascc:keyvalue"]);
        let forged = URL_SAFE_NO_PAD.encode(body.to_string());
        parts[1] = &forged;
        let mut altered = stripped;
        CustomSection {
            name: JWT_SECTION.into(),
            data: parts.join(".").as_bytes().into(),
        }
        .append_to(&mut altered);
        assert!(matches!(
            verify(&altered, 1000),
            Err(ClaimsError::Signature(_))
        ));
    }

    #[test]
    fn expiry_and_not_before_are_checked() {
        let signed = signed(&ActorClaims {
            expires: Some(2000),
            not_before: Some(500),
            ..claims(&[])
        });
        assert!(verify(&signed, 1000).is_ok());
        assert_eq!(verify(&signed, 2000), Err(ClaimsError::Expired(2000)));
        assert_eq!(verify(&signed, 100), Err(ClaimsError::NotYetValid(500)));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any bytes at all are verified or refused without a panic.
        #[test]
        fn any_bytes_are_refused_without_a_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            crate::fuzzing::claims(&bytes);
            let _ = split_claims(&bytes);
        }

        /// A signed actor changed anywhere is refused, or (where a change cannot alter what
        /// was signed, such as unused bits of the signature's base64) verifies to the same
        /// claims; never a panic.
        #[test]
        fn a_signed_actor_changed_anywhere_is_refused_or_unchanged(at in 0usize..4096, bit in 0u8..8) {
            let original = signed(&claims(&["wascc:keyvalue"]));
            let expected = verify(&original, 1000).unwrap();
            let mut changed = original.clone();
            let at = at % changed.len();
            changed[at] ^= 1 << bit;
            if let Ok(claims) = verify(&changed, 1000) {
                proptest::prop_assert_eq!(claims, expected);
            }
        }
    }
}
