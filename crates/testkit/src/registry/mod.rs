//! A real OCI registry for tests: Debian's `docker-registry` (Distribution 2.8) on 127.0.0.1 with
//! an ephemeral port and a temporary storage dir, killed when dropped; without auth, with basic
//! auth, or with bearer tokens from a token server of its own.

pub mod hostile;
mod token;

use anyhow::{Context, bail};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Where Debian installs the registry.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// A running registry.
pub struct Registry {
    child: Child,
    host: String,
    dir: tempfile::TempDir,
    _token_server: Option<token::TokenServer>,
}

/// How clients authenticate to a registry.
enum Auth<'a> {
    None,
    /// HTTP basic auth against an htpasswd file.
    Basic(&'a str, &'a str),
    /// The token flow: basic credentials at the token server, then bearer tokens.
    Token(&'a str, &'a str),
}

impl Registry {
    /// Starts a registry without authentication.
    pub fn start() -> anyhow::Result<Self> {
        Self::launch(Auth::None)
    }

    /// Starts a registry that requires HTTP basic auth with `user` and `password` (a bcrypt
    /// htpasswd entry, the only kind Distribution 2.8 accepts).
    pub fn start_with_auth(user: &str, password: &str) -> anyhow::Result<Self> {
        Self::launch(Auth::Basic(user, password))
    }

    /// Starts a registry that requires bearer tokens (`auth: token`), issued by a token server
    /// of its own to `user` with `password`: a client follows the registry's
    /// `WWW-Authenticate: Bearer realm=...` challenge as with Docker Hub or any hosted registry.
    pub fn start_with_token_auth(user: &str, password: &str) -> anyhow::Result<Self> {
        Self::launch(Auth::Token(user, password))
    }

    fn launch(auth: Auth) -> anyhow::Result<Self> {
        if !std::path::Path::new(REGISTRY_BIN).exists() {
            bail!(
                "{REGISTRY_BIN} is missing: install it with `apt-get install docker-registry` (.ci/run does)"
            );
        }
        let dir = crate::scratch::tempdir("krustlet-registry")?;
        let port = free_port()?;
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        let mut token_server = None;
        match auth {
            Auth::None => {}
            Auth::Basic(user, password) => {
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(
                    &htpasswd,
                    format!("{user}:{}\n", bcrypt::hash(password, 5)?),
                )?;
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: krustlet-test\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            Auth::Token(user, password) => {
                let issuer = std::sync::Arc::new(token::Issuer::new(user, password)?);
                let bundle = dir.path().join("token-issuer.pem");
                std::fs::write(&bundle, issuer.certificate_pem())?;
                let server = token::TokenServer::start(issuer)?;
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    server.realm(),
                    token::SERVICE,
                    token::ISSUER,
                    bundle.display()
                ));
                token_server = Some(server);
            }
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("access.log"))?;
        let mut command = Command::new(REGISTRY_BIN);
        command
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = crate::process::spawn_owned(command)
            .with_context(|| format!("starting {REGISTRY_BIN}"))?;
        let registry = Self {
            child,
            host,
            dir,
            _token_server: token_server,
        };
        registry.wait_ready()?;
        Ok(registry)
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// How many requests the registry has served whose line in its access log contains
    /// `pattern` (e.g. `"GET /v2/repo/blobs/sha256:..."`).
    pub fn requests(&self, pattern: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(pattern))
            .count()
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < READY_DEADLINE {
            if std::net::TcpStream::connect(&self.host).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "the registry did not listen on {} within {READY_DEADLINE:?}",
            self.host
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use crate::ports::free_port;
