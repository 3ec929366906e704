//! How the node logs, as the kubelet's flags say it: `--logging-format text|json` and `-v`/`--v`
//! verbosity, to stderr (the journal, under systemd). Text has colours only at a terminal; JSON
//! is one object a line with the time (`ts`), `level`, `target`, the message (`msg`), the
//! event's fields and those of the spans it is in (a pod's `namespace`, `pod` and `uid`, a
//! container's `container`) as fields of their own. `RUST_LOG`, when set, overrides `-v`.

use std::fmt::Write as _;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The crates of this project, whose lines `-v` makes more detailed.
const OUR_CRATES: &[&str] = &[
    "kubelet",
    "node_cli",
    "wasm_host",
    "wasi_runtime",
    "wascc_runtime",
    "krustlet_wasi",
    "krustlet_wascc",
];

/// The log format (`--logging-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// The logging flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LoggingArgs {
    /// The log format, as the kubelet's flag: `text` or `json` (one object a line, with the
    /// pod and container of each line as fields).
    #[arg(
        long,
        env = "KRUSTLET_LOGGING_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    logging_format: Format,
    /// Log verbosity, as the kubelet's `-v`/`--v`: 0-2 informational lines, 3-4 also this
    /// node's debug lines, 5 and up its trace lines. `RUST_LOG`, when set, wins.
    #[arg(
        short = 'v',
        long = "v",
        env = "KRUSTLET_V",
        default_value_t = 0,
        global = true
    )]
    verbosity: u8,
}

impl LoggingArgs {
    /// The filter `-v` gives.
    fn filter(&self) -> String {
        let ours = match self.verbosity {
            0..=2 => return "info".to_string(),
            3..=4 => "debug",
            _ => "trace",
        };
        std::iter::once("info".to_string())
            .chain(OUR_CRATES.iter().map(|krate| format!("{krate}={ours}")))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Logs to stderr as `args` say, from now on.
pub fn init(args: &LoggingArgs) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| args.filter().into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.logging_format {
        // Colours for a person at a terminal; none in a file or the journal.
        Format::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        Format::Json => builder
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .init(),
    }
}

/// A JSON line with the spans' fields beside the event's (the innermost span's win).
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let metadata = event.metadata();
        let mut line = serde_json::Map::new();
        line.insert("ts".into(), jiff::Timestamp::now().to_string().into());
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(serde_json::Value::Object(fields)) =
                    serde_json::from_str::<serde_json::Value>(fields.fields.as_str())
                {
                    line.extend(fields);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        let mut text = serde_json::Value::Object(line).to_string();
        text.push('\n');
        writer.write_str(&text)
    }
}

/// Puts an event's fields into a JSON object (the message as `msg`).
struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl JsonVisitor<'_> {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        let name = match field.name() {
            "message" => "msg",
            name => name,
        };
        self.0.insert(name.to_string(), value);
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.put(field, text.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_pod_and_container_as_fields() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let pod = tracing::info_span!("pod", namespace = "default", pod = "web", uid = "u-1");
            let _pod = pod.enter();
            let container = tracing::info_span!("container", container = "main");
            let _container = container.enter();
            tracing::warn!(attempt = 3, "a request failed");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["msg"], "a request failed");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["namespace"], "default");
        assert_eq!(line["pod"], "web");
        assert_eq!(line["uid"], "u-1");
        assert_eq!(line["container"], "main");
        assert_eq!(line["attempt"], 3);
        assert!(line["ts"].as_str().unwrap().ends_with('Z'), "{line}");
    }

    #[test]
    fn verbosity_maps_to_levels_of_this_nodes_crates() {
        let at = |verbosity| {
            LoggingArgs {
                logging_format: Format::Text,
                verbosity,
            }
            .filter()
        };
        assert_eq!(at(0), "info");
        assert_eq!(at(2), "info");
        assert!(at(3).contains("kubelet=debug") && at(3).starts_with("info,"));
        assert!(at(6).contains("wasi_runtime=trace"));
    }
}
