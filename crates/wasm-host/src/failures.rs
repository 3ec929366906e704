//! Where a serving container's failed requests are reported: in full (a trap's backtrace
//! included) to the container's log on stderr, as `wasmtime serve` prints them, and in one line
//! to its warnings (the pod's events and the agent's log, rate-limited). The client is only
//! told [`FAILED_BODY`]: a guest's insides are not for whoever sends it a request.

use kubelet::logs::LogWriter;
use kubelet::runtime::{Exit, Warnings};

/// The body of a 500 answered for a failed request.
pub const FAILED_BODY: &str = "internal server error\n";

/// The reason of the pod's event about a failed request.
const REQUEST_FAILED: &str = "RequestFailed";

/// Where one container's failed requests are reported.
pub struct FailureReport {
    stderr: LogWriter,
    warnings: Warnings,
}

impl Clone for FailureReport {
    fn clone(&self) -> Self {
        Self {
            stderr: self.stderr.another(),
            warnings: self.warnings.clone(),
        }
    }
}

impl FailureReport {
    /// Reports to the container's `stderr` and its `warnings`.
    pub fn new(stderr: LogWriter, warnings: Warnings) -> Self {
        Self { stderr, warnings }
    }

    /// A request failed outside the guest, or the guest answered it with an error.
    pub fn failed(&self, message: &str) {
        let mut stderr = self.stderr.another();
        stderr.write_lines(format!("{message}\n").as_bytes());
        self.warnings.warn(
            REQUEST_FAILED,
            format!("a request was answered 500: {message}"),
        );
    }

    /// The instance handling a request ended with `exit` (not 0): `error` ended it, when one
    /// did (a trap rather than an exit code).
    pub fn guest_failed(&self, exit: &Exit, error: Option<&wasmtime::Error>) {
        let cause = match (error, &exit.reason) {
            (_, Some(reason)) => {
                format!("{reason}: {}", exit.message.as_deref().unwrap_or_default())
            }
            (Some(error), None) => format!("it trapped: {}", error.root_cause()),
            (None, None) => format!("it exited with code {}", exit.code),
        };
        let mut stderr = self.stderr.another();
        let details = error.map_or_else(|| cause.clone(), |e| format!("{e:?}"));
        stderr.write_lines(format!("a request failed in the guest: {details}\n").as_bytes());
        self.warnings.warn(
            REQUEST_FAILED,
            format!(
                "the guest failed handling a request, which was answered 500 (the container's log has the details): {cause}"
            ),
        );
    }
}
