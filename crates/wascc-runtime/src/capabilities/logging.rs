//! `wascc:logging`: an actor's `WriteLog` calls become lines of its container's log, with the
//! level first, as `kubectl logs` shows them.

use super::decode;

#[derive(serde::Deserialize)]
struct WriteLog {
    level: u32,
    body: String,
}

/// The log line for `operation` with its MessagePack `payload`.
pub fn line(operation: &str, payload: &[u8]) -> Result<String, String> {
    if operation != "WriteLog" {
        return Err(format!(
            "{} has no operation {operation:?} (it has WriteLog)",
            super::LOGGING
        ));
    }
    let WriteLog { level, body } = decode(payload)?;
    // The levels of Rust's `log` crate, which waSCC actors log with.
    let level = match level {
        1 => "ERROR",
        2 => "WARN",
        3 => "INFO",
        4 => "DEBUG",
        _ => "TRACE",
    };
    Ok(format!("{level} {body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_log_becomes_a_line_with_its_level() {
        let payload =
            rmp_serde::to_vec_named(&serde_json::json!({"level": 3, "body": "hello"})).unwrap();
        assert_eq!(line("WriteLog", &payload).unwrap(), "INFO hello");
        assert!(line("Flush", &payload).is_err());
    }
}
