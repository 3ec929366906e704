//! Certificates of the node: TLS bootstrap from a bootstrap token to a client certificate,
//! certificates from the cluster's signers ([`csr`]), and their rotation while in use
//! ([`identity`], [`rotation`], [`client`]).

pub mod client;
pub mod csr;
pub mod identity;
pub mod rotation;

mod bootstrap;

pub use bootstrap::{CLIENT_CERT_FILE, Joined, bootstrap};

/// The file in the cert dir holding the serving certificate and key, as the kubelet names it.
pub const SERVING_CERT_FILE: &str = "kubelet-server-current.pem";
use std::path::PathBuf;

/// Getting or keeping a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The bootstrap kubeconfig cannot be used.
    #[error("bootstrap kubeconfig {path}: {message}")]
    BootstrapFile {
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The API server refused or failed.
    #[error("certificate request: {0}")]
    Api(String),
    /// The CSR was denied or failed.
    #[error("the certificate signing request {name} was {outcome}: {message}")]
    Refused {
        /// The CSR.
        name: String,
        /// `denied` or `failed`.
        outcome: String,
        /// The condition's reason and message.
        message: String,
    },
    /// Writing the credentials failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Making or reading a key or certificate failed.
    #[error("node key and certificate: {0}")]
    Key(String),
    /// The kubeconfig path holds a file the TLS bootstrap did not write, and it is not usable
    /// as it is: the bootstrap never writes over it.
    #[error(
        "{path} exists, was not written by this node's TLS bootstrap, and holds no valid client certificate ({why}); it is left as it is: remove it if it is stale, or give the node a kubeconfig path of its own with --kubeconfig (default <data-dir>/kubeconfig)"
    )]
    NotOurs {
        /// The kubeconfig.
        path: PathBuf,
        /// Why it cannot be used as it is.
        why: String,
    },
}
