//! Content digests (`algorithm:hex`), validated before any use: a digest comes from a registry
//! or from a file in the store, and it names paths in the store, so one that is not exactly a
//! known algorithm and hex of that algorithm's length is refused.

use sha2::{Digest as _, Sha256, Sha512};
use std::fmt;
use std::str::FromStr;

/// The digest algorithms of the OCI image spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `sha256`, 64 hex digits.
    Sha256,
    /// `sha512`, 128 hex digits.
    Sha512,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha512 => 128,
        }
    }
}

/// A validated content digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// A string that is not a digest this node accepts.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{text:?} is not a valid content digest (sha256:<64 hex digits> or sha512:<128 hex digits>)"
)]
pub struct InvalidDigest {
    text: String,
}

impl FromStr for Digest {
    type Err = InvalidDigest;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidDigest {
            text: text.chars().take(200).collect(),
        };
        let (algorithm, hex) = text.split_once(':').ok_or_else(invalid)?;
        let algorithm = match algorithm {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(invalid()),
        };
        let lower_hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
        if hex.len() != algorithm.hex_len() || !hex.bytes().all(lower_hex) {
            return Err(invalid());
        }
        Ok(Self {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl Digest {
    /// The sha256 digest of some bytes.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Self {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The algorithm's name and the hex digits: two path components that cannot leave the
    /// directory they are joined to.
    pub fn path_parts(&self) -> (&'static str, &str) {
        (self.algorithm.name(), &self.hex)
    }

    /// A hasher for content that should have this digest.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            expected: self.clone(),
            state: match self.algorithm {
                Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
                Algorithm::Sha512 => Hasher::Sha512(Box::new(Sha512::new())),
            },
        }
    }
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Box<Sha512>),
}

/// Hashes content as it streams by, then says whether it had the expected digest.
pub struct Verifier {
    expected: Digest,
    state: Hasher,
}

impl Verifier {
    /// Adds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything seen, as `Err` when it is not the expected one.
    pub fn finish(self) -> Result<(), Digest> {
        let hex = match self.state {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        };
        if hex == self.expected.hex {
            Ok(())
        } else {
            Err(Digest {
                algorithm: self.expected.algorithm,
                hex,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_digests_parse() {
        let good = format!("sha256:{}", "a1".repeat(32));
        assert_eq!(good.parse::<Digest>().unwrap().to_string(), good);
        let long = format!("sha512:{}", "0f".repeat(64));
        assert!(long.parse::<Digest>().is_ok());
        for bad in [
            "sha256:../../../../dev/zero".to_string(),
            format!("sha256:{}", "A1".repeat(32)),
            format!("sha256:{}", "a1".repeat(31)),
            format!("sha256:{}/", "a1".repeat(32)),
            format!("md5:{}", "a1".repeat(16)),
            format!("sha512:{}", "a1".repeat(32)),
            "sha256".into(),
            String::new(),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn the_verifier_checks_streamed_content() {
        let digest = Digest::sha256_of(b"hello world");
        let mut verifier = digest.verifier();
        verifier.update(b"hello ");
        verifier.update(b"world");
        assert!(verifier.finish().is_ok());
        let mut wrong = digest.verifier();
        wrong.update(b"hello");
        assert_eq!(wrong.finish().unwrap_err(), Digest::sha256_of(b"hello"));
        let sha512 = format!("sha512:{}", hex::encode(Sha512::digest(b"x")));
        let mut verifier = sha512.parse::<Digest>().unwrap().verifier();
        verifier.update(b"x");
        assert!(verifier.finish().is_ok());
    }

    proptest::proptest! {
        #[test]
        fn a_digest_parses_only_when_it_is_exactly_algorithm_and_hex(text in "(sha256|sha512|md5)?:?[0-9a-fA-F./]{0,130}") {
            let valid = text.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
                || text.strip_prefix("sha512:").is_some_and(|h| h.len() == 128 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            match text.parse::<Digest>() {
                Ok(digest) => {
                    proptest::prop_assert!(valid);
                    proptest::prop_assert_eq!(digest.to_string(), text);
                    let (algorithm, hex) = digest.path_parts();
                    proptest::prop_assert!(!algorithm.contains('/') && !hex.contains('/') && !hex.contains('.'));
                }
                Err(_) => proptest::prop_assert!(!valid),
            }
        }
    }
}
