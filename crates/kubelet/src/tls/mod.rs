//! Certificates of the node: TLS bootstrap from a bootstrap token to a client certificate.

mod bootstrap;

pub use bootstrap::{BootstrapError, bootstrap};
