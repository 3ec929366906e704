//! `--config FILE`: the kubelet's configuration file, as kubeadm writes it
//! (`kubelet.config.k8s.io/v1beta1` `KubeletConfiguration`, YAML or JSON), and this node's own
//! settings beside it (`krustlet.dev/v1alpha1` `KrustletConfiguration`: any flag of this node
//! by its camelCase name), in one file of one or more YAML documents.
//!
//! The file becomes command-line arguments placed before the real ones, so that the flags'
//! parsing and validation apply to it unchanged; a flag given on the command line wins over the
//! file (as on the kubelet), and the file over `KRUSTLET_*` variables. A zero or empty value
//! (kubeadm writes `0s` for most durations) means the default. Fields that have no meaning on
//! this node are named in one warning line; a field of the wrong type, an unknown kind or an
//! unknown setting of ours stops the start, naming the field.

use clap::CommandFactory;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The kubelet's configuration file's group and version.
const KUBELET_API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
/// This node's own settings' group and version.
const KRUSTLET_API_VERSION: &str = "krustlet.dev/v1alpha1";
/// The most a configuration file may be.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// What a `KubeletConfiguration` field becomes.
#[derive(Clone, Copy)]
enum Field {
    /// The value of this flag.
    Flag(&'static str),
    /// This flag when true.
    Switch(&'static str),
    /// The list, as this flag's values.
    List(&'static str),
    /// Taints (`{key, value, effect}`) as `--register-with-taints`.
    Taints,
    /// What this node does anyway (or cannot do otherwise) when the value is this.
    Fixed(&'static str),
}

/// The `KubeletConfiguration` fields that mean something here, by their path.
const KUBELET_FIELDS: &[(&str, Field)] = &[
    ("address", Field::Flag("addr")),
    ("port", Field::Flag("port")),
    ("tlsCertFile", Field::Flag("cert-file")),
    ("tlsPrivateKeyFile", Field::Flag("private-key-file")),
    (
        "serverTLSBootstrap",
        Field::Switch("rotate-server-certificates"),
    ),
    ("rotateCertificates", Field::Fixed("true")),
    (
        "authentication.anonymous.enabled",
        Field::Switch("anonymous-auth"),
    ),
    ("authentication.webhook.enabled", Field::Fixed("true")),
    (
        "authentication.x509.clientCAFile",
        Field::Flag("client-ca-file"),
    ),
    ("authorization.mode", Field::Fixed("Webhook")),
    ("clusterDNS", Field::List("cluster-dns")),
    ("clusterDomain", Field::Flag("cluster-domain")),
    ("resolvConf", Field::Flag("resolv-conf")),
    ("maxPods", Field::Flag("max-pods")),
    ("staticPodPath", Field::Flag("pod-manifest-path")),
    ("syncFrequency", Field::Flag("sync-frequency")),
    ("fileCheckFrequency", Field::Flag("file-check-frequency")),
    (
        "imageGCHighThresholdPercent",
        Field::Flag("image-gc-high-threshold"),
    ),
    (
        "imageGCLowThresholdPercent",
        Field::Flag("image-gc-low-threshold"),
    ),
    ("imageMinimumGCAge", Field::Flag("image-minimum-gc-age")),
    ("imageMaximumGCAge", Field::Flag("image-maximum-gc-age")),
    ("containerLogMaxSize", Field::Flag("container-log-max-size")),
    (
        "containerLogMaxFiles",
        Field::Flag("container-log-max-files"),
    ),
    ("eventRecordQPS", Field::Flag("event-qps")),
    ("eventBurst", Field::Flag("event-burst")),
    ("registerWithTaints", Field::Taints),
    (
        "containerRuntimeEndpoint",
        Field::Flag("container-runtime-endpoint"),
    ),
    (
        "nodeStatusUpdateFrequency",
        Field::Flag("node-status-update-frequency"),
    ),
    (
        "nodeStatusReportFrequency",
        Field::Flag("node-status-report-frequency"),
    ),
    (
        "nodeLeaseDurationSeconds",
        Field::Flag("node-lease-duration-seconds"),
    ),
    ("logging.format", Field::Flag("logging-format")),
    ("logging.verbosity", Field::Flag("v")),
    ("healthzBindAddress", Field::Flag("healthz-bind-address")),
    ("healthzPort", Field::Flag("healthz-port")),
];

/// The configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// It could not be read.
    #[error("reading the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// It is larger than any configuration file.
    #[error("the configuration file {path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// It is not YAML or JSON.
    #[error("the configuration file {path} is not YAML or JSON: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: serde_yaml::Error,
    },
    /// A document is of a kind this node does not read.
    #[error(
        "the configuration file {path} holds a document of apiVersion {api_version:?} kind {kind:?}; this node reads {KUBELET_API_VERSION} KubeletConfiguration and {KRUSTLET_API_VERSION} KrustletConfiguration"
    )]
    Kind {
        /// The file.
        path: PathBuf,
        /// The document's apiVersion.
        api_version: String,
        /// The document's kind.
        kind: String,
    },
    /// A field's value cannot be used.
    #[error("the configuration file {path}: field {field}: {reason}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The field's path, e.g. `maxPods`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// One argument a configuration file gives.
#[derive(Debug, PartialEq, Eq)]
pub struct FileArg {
    /// The field it came from, e.g. `maxPods`.
    field: String,
    /// The flag's long name, e.g. `max-pods`.
    flag: String,
    /// Its value; empty for a switch.
    value: String,
}

impl FileArg {
    fn to_arg(&self) -> OsString {
        if self.value.is_empty() {
            format!("--{}", self.flag).into()
        } else {
            format!("--{}={}", self.flag, self.value).into()
        }
    }
}

/// The arguments a configuration file gives, and the fields it sets that do not apply here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileArgs {
    /// `--flag=value` arguments, each with the field it came from.
    args: Vec<FileArg>,
    /// Fields set to something this node does not do, with their values.
    pub not_applied: Vec<String>,
}

/// The value of `--config` (or `--config=`) in `args`, or `KRUSTLET_CONFIG`.
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("KRUSTLET_CONFIG").map(PathBuf::from)
}

/// Reads the configuration file at `path` for command `C`.
pub fn load<C: CommandFactory>(path: &Path) -> Result<FileArgs, ConfigFileError> {
    let read = |source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    use std::io::Read;
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    parse::<C>(path, &text)
}

/// The arguments of configuration text `text` (read from `path`) for command `C`.
fn parse<C: CommandFactory>(path: &Path, text: &str) -> Result<FileArgs, ConfigFileError> {
    let command = C::command();
    let delimiters: HashMap<String, char> = command
        .get_arguments()
        .filter_map(|arg| {
            Some((
                arg.get_long()?.to_string(),
                arg.get_value_delimiter().unwrap_or(','),
            ))
        })
        .collect();
    let field_error = |field: &str, reason: String| ConfigFileError::Field {
        path: path.to_path_buf(),
        field: field.to_string(),
        reason,
    };
    let mut out = FileArgs::default();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value: Value =
            serde::Deserialize::deserialize(document).map_err(|source| ConfigFileError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        if value.is_null() {
            continue;
        }
        let Value::Object(mut fields) = value else {
            return Err(field_error(".", "a document must be a mapping".into()));
        };
        let api_version = take_string(&mut fields, "apiVersion");
        let kind = take_string(&mut fields, "kind");
        let mut leaves = Vec::new();
        match (api_version.as_str(), kind.as_str()) {
            (KUBELET_API_VERSION, "KubeletConfiguration") => {
                flatten("", Value::Object(fields), &mut leaves);
                for (field, value) in leaves {
                    kubelet_field(&field, value, &delimiters, &mut out)
                        .map_err(|reason| field_error(&field, reason))?;
                }
            }
            (KRUSTLET_API_VERSION, "KrustletConfiguration") => {
                for (field, value) in fields {
                    let flag = kebab(&field);
                    let Some(delimiter) = delimiters.get(&flag) else {
                        return Err(field_error(
                            &field,
                            format!("this node has no setting --{flag}; see --help"),
                        ));
                    };
                    flag_args(&flag, &field, value, *delimiter, &mut out)
                        .map_err(|reason| field_error(&field, reason))?;
                }
            }
            _ => {
                return Err(ConfigFileError::Kind {
                    path: path.to_path_buf(),
                    api_version,
                    kind,
                });
            }
        }
    }
    Ok(out)
}

fn take_string(fields: &mut serde_json::Map<String, Value>, name: &str) -> String {
    match fields.remove(name) {
        Some(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Every leaf of `value` with its dotted path; lists, and the fields this node reads, are
/// leaves.
fn flatten(prefix: &str, value: Value, leaves: &mut Vec<(String, Value)>) {
    let known = KUBELET_FIELDS.iter().any(|(name, _)| *name == prefix);
    match value {
        Value::Object(fields) if !fields.is_empty() && !known => {
            for (name, value) in fields {
                let path = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}.{name}")
                };
                flatten(&path, value, leaves);
            }
        }
        other => leaves.push((prefix.to_string(), other)),
    }
}

/// Whether `value` means "the default": absent, zero, empty or false.
fn is_default(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => {
            s.is_empty() || s == "0" || s.parse::<jiff::SignedDuration>().is_ok_and(|d| d.is_zero())
        }
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
    }
}

/// The arguments `KubeletConfiguration` field `field` gives.
fn kubelet_field(
    field: &str,
    value: Value,
    delimiters: &HashMap<String, char>,
    out: &mut FileArgs,
) -> Result<(), String> {
    let known = KUBELET_FIELDS.iter().find(|(name, _)| *name == field);
    if is_default(&value) {
        return Ok(());
    }
    let Some((_, mapping)) = known else {
        out.not_applied.push(format!("{field}={}", brief(&value)));
        return Ok(());
    };
    match *mapping {
        Field::Flag(flag) | Field::Switch(flag) | Field::List(flag) => {
            let Some(delimiter) = delimiters.get(flag).copied() else {
                // This binary has no such setting.
                out.not_applied.push(format!("{field}={}", brief(&value)));
                return Ok(());
            };
            flag_args(flag, field, value, delimiter, out)
        }
        Field::Taints => {
            let Value::Array(taints) = value else {
                return Err(format!(
                    "expected a list of taints, found {}",
                    brief(&value)
                ));
            };
            let taints: Vec<String> = taints
                .into_iter()
                .map(|taint| {
                    let text = |name| taint.get(name).and_then(Value::as_str).unwrap_or_default();
                    let (key, value, effect) = (text("key"), text("value"), text("effect"));
                    if key.is_empty() || effect.is_empty() {
                        return Err(format!("a taint needs a key and an effect: {taint}"));
                    }
                    Ok(if value.is_empty() {
                        format!("{key}:{effect}")
                    } else {
                        format!("{key}={value}:{effect}")
                    })
                })
                .collect::<Result<_, _>>()?;
            out.args.push(FileArg {
                field: field.to_string(),
                flag: "register-with-taints".into(),
                value: taints.join(","),
            });
            Ok(())
        }
        Field::Fixed(ours) => {
            if !equal_setting(&value, ours) {
                out.not_applied
                    .push(format!("{field}={} (this node: {ours})", brief(&value)));
            }
            Ok(())
        }
    }
}

/// Whether `value` says what `ours` says (a duration written either way, a number or text).
fn equal_setting(value: &Value, ours: &str) -> bool {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text == ours {
        return true;
    }
    matches!(
        (text.parse::<jiff::SignedDuration>(), ours.parse::<jiff::SignedDuration>()),
        (Ok(a), Ok(b)) if a == b
    )
}

/// `--flag=value` for `value` (from `field`): a scalar as it is, a list joined with the flag's
/// `delimiter`, a boolean as the switch (or nothing when false).
fn flag_args(
    flag: &str,
    field: &str,
    value: Value,
    delimiter: char,
    out: &mut FileArgs,
) -> Result<(), String> {
    let scalar = |value: &Value| match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!(
            "expected a string or number, found {}",
            brief(other)
        )),
    };
    let text = match &value {
        Value::Null => return Ok(()),
        Value::Bool(false) => return Ok(()),
        Value::Bool(true) => String::new(),
        Value::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Result<Vec<_>, _>>()?
            .join(&delimiter.to_string()),
        Value::Object(_) => return Err(format!("expected a value, found {}", brief(&value))),
        other => scalar(other)?,
    };
    out.args.push(FileArg {
        field: field.to_string(),
        flag: flag.to_string(),
        value: text,
    });
    Ok(())
}

/// `value`, briefly, for messages.
fn brief(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.len() > 60 {
        format!("{}...", &text[..text.floor_char_boundary(60)])
    } else {
        text
    }
}

/// `camelCase` as `kebab-case`.
fn kebab(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Checks each of the file's values as its flag would be checked, so that a bad one is named
/// by its field rather than its flag.
pub fn check<C: clap::Parser>(path: &Path, file: &FileArgs) -> Result<(), ConfigFileError> {
    use clap::error::ErrorKind;
    for arg in &file.args {
        let argv: [OsString; 2] = ["node".into(), arg.to_arg()];
        let Err(error) = C::try_parse_from(argv) else {
            continue;
        };
        if matches!(
            error.kind(),
            ErrorKind::InvalidValue | ErrorKind::ValueValidation | ErrorKind::InvalidUtf8
        ) {
            let rendered = error.to_string();
            let reason = rendered
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            return Err(ConfigFileError::Field {
                path: path.to_path_buf(),
                field: arg.field.clone(),
                reason: reason.to_string(),
            });
        }
    }
    Ok(())
}

/// The command line `args` with the configuration file's arguments placed before the real
/// ones (after the program's name), less those the command line sets itself; and the fields
/// that were not applied.
pub fn with_file_args<C: CommandFactory>(
    args: Vec<OsString>,
    file: FileArgs,
) -> (Vec<OsString>, Vec<String>) {
    let command = C::command();
    // Every long name and alias of each argument, to its id.
    let mut ids: HashMap<String, String> = HashMap::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().to_string();
        for name in arg
            .get_long()
            .into_iter()
            .chain(arg.get_all_aliases().unwrap_or_default())
        {
            ids.insert(name.to_string(), id.clone());
        }
    }
    let given: BTreeSet<&String> = args
        .iter()
        .skip(1)
        .filter_map(|arg| {
            let arg = arg.to_str()?.strip_prefix("--")?;
            ids.get(arg.split('=').next()?)
        })
        .collect();
    let mut out: Vec<OsString> = args.iter().take(1).cloned().collect();
    for arg in file.args {
        if ids.get(&arg.flag).is_some_and(|id| given.contains(id)) {
            continue;
        }
        out.push(arg.to_arg());
    }
    out.extend(args.into_iter().skip(1));
    (out, file.not_applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command with a few of the node's flags.
    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 110)]
        max_pods: u32,
        #[arg(long, value_delimiter = ',')]
        cluster_dns: Vec<std::net::IpAddr>,
        #[arg(long, default_value = "")]
        cluster_domain: String,
        #[arg(long)]
        pod_manifest_path: Option<PathBuf>,
        #[arg(long)]
        client_ca_file: Option<PathBuf>,
        #[arg(long)]
        anonymous_auth: bool,
        #[arg(long, value_delimiter = ',')]
        register_with_taints: Vec<String>,
        #[arg(long, default_value = "1m")]
        sync_frequency: String,
        #[arg(long, alias = "root-dir")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        runtime_workers: Option<usize>,
        #[arg(long, value_delimiter = ':')]
        cni_bin_dir: Vec<PathBuf>,
        #[arg(long, default_value_t = 10248)]
        healthz_port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        healthz_bind_address: std::net::IpAddr,
    }

    /// What kubeadm 1.32 writes to /var/lib/kubelet/config.yaml.
    const KUBEADM: &str = include_str!("../../../deploy/kubeadm/kubelet-config-1.32.yaml");

    fn parsed(text: &str, argv: &[&str]) -> Result<(Cli, Vec<String>), ConfigFileError> {
        let file = parse::<Cli>(Path::new("config.yaml"), text)?;
        check::<Cli>(Path::new("config.yaml"), &file)?;
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        let (args, not_applied) = with_file_args::<Cli>(argv, file);
        Ok((clap::Parser::parse_from(args), not_applied))
    }

    #[test]
    fn kubeadms_file_applies_what_means_something_here_and_names_nothing_else() {
        let (cli, not_applied) = parsed(KUBEADM, &["krustlet-wasi"]).unwrap();
        assert_eq!(
            cli.cluster_dns,
            ["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(cli.cluster_domain, "cluster.local");
        assert_eq!(
            cli.pod_manifest_path.as_deref(),
            Some(Path::new("/etc/kubernetes/manifests"))
        );
        assert_eq!(
            cli.client_ca_file.as_deref(),
            Some(Path::new("/etc/kubernetes/pki/ca.crt"))
        );
        assert_eq!(cli.max_pods, 110, "zero or absent: the default");
        assert_eq!(cli.sync_frequency, "1m");
        assert_eq!(not_applied, ["cgroupDriver=systemd"]);
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let text = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: 250\nclusterDNS: [10.0.0.10, 10.0.0.11]\nregisterWithTaints:\n- {key: dedicated, value: wasm, effect: NoSchedule}\n- {key: spare, effect: NoExecute}\n";
        let (cli, _) = parsed(text, &["krustlet-wasi"]).unwrap();
        assert_eq!(cli.max_pods, 250);
        assert_eq!(cli.cluster_dns.len(), 2);
        assert_eq!(
            cli.register_with_taints,
            ["dedicated=wasm:NoSchedule", "spare:NoExecute"]
        );
        let (cli, _) = parsed(
            text,
            &["krustlet-wasi", "--max-pods", "7", "--cluster-dns=10.9.9.9"],
        )
        .unwrap();
        assert_eq!(cli.max_pods, 7);
        assert_eq!(
            cli.cluster_dns,
            ["10.9.9.9".parse::<std::net::IpAddr>().unwrap()]
        );
    }

    #[test]
    fn our_own_settings_sit_beside_the_kubelets_in_one_file() {
        let text = format!(
            "{KUBEADM}---\napiVersion: krustlet.dev/v1alpha1\nkind: KrustletConfiguration\nruntimeWorkers: 2\ncniBinDir: [/usr/lib/cni, /opt/cni/bin]\n"
        );
        let (cli, _) = parsed(&text, &["krustlet-wasi", "--root-dir", "/var/lib/wasm"]).unwrap();
        assert_eq!(cli.runtime_workers, Some(2));
        assert_eq!(cli.cni_bin_dir.len(), 2);
        assert_eq!(cli.data_dir.as_deref(), Some(Path::new("/var/lib/wasm")));
        // An alias on the command line wins over the canonical name in the file.
        let text =
            "apiVersion: krustlet.dev/v1alpha1\nkind: KrustletConfiguration\ndataDir: /from/file\n";
        let (cli, _) = parsed(text, &["krustlet-wasi", "--root-dir", "/cli"]).unwrap();
        assert_eq!(cli.data_dir.as_deref(), Some(Path::new("/cli")));
    }

    #[test]
    fn a_bad_file_names_the_field_and_the_reason() {
        let error = parsed(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nclusterDNS: {a: b}\n",
            &["x"],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("field clusterDNS"), "{error}");
        let error = parsed(
            "apiVersion: krustlet.dev/v1alpha1\nkind: KrustletConfiguration\nmaxPodz: 3\n",
            &["x"],
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("field maxPodz") && error.contains("--max-podz"),
            "{error}"
        );
        let error = parsed(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: many\n",
            &["x"],
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("field maxPods") && error.contains("invalid value 'many'"),
            "{error}"
        );
        let error = parsed("apiVersion: v1\nkind: Pod\n", &["x"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("kind \"Pod\""), "{error}");
        let error = parsed("maxPods: [", &["x"]).unwrap_err().to_string();
        assert!(error.contains("not YAML or JSON"), "{error}");
    }

    #[test]
    fn json_is_read_as_well() {
        let text = r#"{"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration", "maxPods": 42, "authentication": {"anonymous": {"enabled": true}}}"#;
        let (cli, _) = parsed(text, &["x"]).unwrap();
        assert_eq!(cli.max_pods, 42);
        assert!(cli.anonymous_auth);
    }

    #[test]
    fn the_config_flag_is_found_in_either_form() {
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&argv(&["x", "--max-pods", "3", "--config", "/a"])),
            Some(PathBuf::from("/a"))
        );
        assert_eq!(
            config_path(&argv(&["x", "--config=/b"])),
            Some(PathBuf::from("/b"))
        );
    }
}
