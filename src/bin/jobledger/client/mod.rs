//! Client commands for a person at a terminal, for scripts and for container health
//! checks: `jobledger job create|get|list|count|transition|cancel|watch` and
//! `jobledger health`. Aligned tables by default; `--output json` prints the RPC's
//! response as JSON (the proto's field names). Exit codes are grpc-health-probe's
//! (docs/cli.md): 0 done, 1 invalid arguments, 2 connection failed, 3 RPC failed,
//! 4 not serving; `watch` exits 5 when the job ends without succeeding.

pub mod bench;
mod connect;
mod failure;
pub mod health;
pub mod job;
pub mod queue;
mod session;

use std::{ffi::OsString, io::Write};

use clap::ValueEnum;
use serde_json::Value;

pub use connect::ServerArgs;
pub use failure::Failure;

/// Exit codes: grpc-health-probe's, plus `JOB_NOT_SUCCEEDED` for `job watch`.
pub mod exit {
    pub const SERVING: u8 = 0;
    /// Invalid command line: an unknown flag, a bad value, an unreadable file.
    pub const INVALID_ARGUMENTS: u8 = 1;
    pub const CONNECTION_FAILED: u8 = 2;
    pub const RPC_FAILED: u8 = 3;
    pub const NOT_SERVING: u8 = 4;
    /// `job watch`: the job ended CANCELED or DEAD_LETTER.
    pub const JOB_NOT_SUCCEEDED: u8 = 5;
}

/// clap exits 2 on a usage error, but for `health` and `job` 2 means "connection
/// failed": there a usage error exits 1 (grpc-health-probe's "invalid arguments").
/// Other subcommands keep clap's behaviour. Help and version still exit 0.
pub fn exit_on_parse_error(error: clap::Error) -> ! {
    if error.use_stderr() && is_client_command(std::env::args_os()) {
        let _ = error.print();
        std::process::exit(exit::INVALID_ARGUMENTS.into());
    }
    error.exit()
}

/// Whether the first subcommand of a command line is `job`, `queue` or `health`.
fn is_client_command(args: impl IntoIterator<Item = OsString>) -> bool {
    let mut args = args.into_iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--log-format" {
            args.next();
        } else if !arg.starts_with('-') {
            return arg == "job" || arg == "health" || arg == "queue";
        }
    }
    false
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned tables and `key  value` lines, for people.
    Table,
    /// The RPC's response as JSON (the proto's field names; statuses without the
    /// `JOB_STATUS_` prefix); `watch` prints one event per line.
    Json,
}

/// Writes a line to stdout; a closed pipe (`| head`) is not worth a panic.
pub(crate) fn print(text: &str) {
    let _ = writeln!(std::io::stdout(), "{text}");
}

pub(crate) fn print_json(value: &Value) {
    print(&serde_json::to_string_pretty(value).unwrap_or_default());
}

/// Text safe for a terminal: control characters (newlines, escape sequences in a job's
/// data) are shown escaped instead of acting on the screen.
pub(crate) fn clean(text: impl AsRef<str>) -> String {
    let text = text.as_ref();
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
/// Columns padded to their widest cell, two spaces apart; no trailing spaces.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cells: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(rows.iter().map(|r| r.iter().map(clean).collect()))
        .collect();
    let mut widths = vec![0; header.len()];
    for row in &cells {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let lines: Vec<String> = cells
        .iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(widths[i] - cell.chars().count()));
                }
            }
            line.trim_end().to_owned()
        })
        .collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_escape_control_characters() {
        let text = table(
            &["A", "LONGER"],
            &[
                vec!["wide cell".into(), "x".into()],
                vec!["b".into(), "line\nbreak\u{1b}[31m".into()],
            ],
        );
        assert_eq!(
            text,
            "A          LONGER\nwide cell  x\nb          line\\nbreak\\u{1b}[31m"
        );
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn client_commands_are_recognised_past_global_options() {
        assert!(is_client_command(args(&["jobledger", "job", "list"])));
        assert!(is_client_command(args(&["jobledger", "health"])));
        assert!(is_client_command(args(&[
            "jobledger",
            "--log-format",
            "json",
            "job"
        ])));
        assert!(!is_client_command(args(&["jobledger", "serve", "--x"])));
        assert!(!is_client_command(args(&["jobledger", "--pool-size=3"])));
        assert!(!is_client_command(args(&["jobledger"])));
    }
}
