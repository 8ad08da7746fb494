//! The `check` command line, as a function so it can be tested.

use std::io::{BufRead, BufReader, Write};

use super::{check, HistoryError};

/// The usage line.
pub const USAGE: &str = "usage: check FILE [--json]   (FILE may be - for standard input)\n       check FILE --edn      writes the history in Jepsen's EDN format instead";

/// Runs the command: 0 no anomaly, 1 anomalies found, 2 unreadable or
/// malformed input (the message names the line and what was wrong). With
/// `--edn` it writes the history in Jepsen's EDN format (see
/// [`super::edn`]) instead of checking it: 0 written, 2 unreadable or
/// malformed.
pub fn main(
    args: impl IntoIterator<Item = String>,
    stdin: impl BufRead,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let mut json = false;
    let mut edn = false;
    let mut file = None;
    for arg in args {
        match arg.as_str() {
            "--json" => json = true,
            "--edn" => edn = true,
            "-h" | "--help" => {
                let _ = writeln!(out, "{USAGE}");
                return 0;
            }
            _ if file.is_none() && (arg == "-" || !arg.starts_with('-')) => file = Some(arg),
            _ => {
                let _ = writeln!(err, "check: unexpected argument {arg:?}\n{USAGE}");
                return 2;
            }
        }
    }
    let Some(file) = file else {
        let _ = writeln!(err, "check: no history file given\n{USAGE}");
        return 2;
    };
    if json && edn {
        let _ = writeln!(err, "check: --json and --edn exclude each other\n{USAGE}");
        return 2;
    }
    if edn {
        let exported = if file == "-" {
            super::edn::export(stdin, out)
        } else {
            match std::fs::File::open(&file) {
                Ok(f) => super::edn::export(BufReader::with_capacity(1 << 20, f), out),
                Err(e) => Err(HistoryError::Io(e)),
            }
        };
        return match exported {
            Ok(_) => 0,
            Err(e) => {
                let _ = writeln!(err, "check: {file}: {e}");
                2
            }
        };
    }
    let result = if file == "-" {
        check(stdin)
    } else {
        match std::fs::File::open(&file) {
            Ok(f) => check(BufReader::with_capacity(1 << 20, f)),
            Err(e) => Err(HistoryError::Io(e)),
        }
    };
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "check: {file}: {e}");
            return 2;
        }
    };
    if json {
        match serde_json::to_string(&report) {
            Ok(s) => {
                let _ = writeln!(out, "{s}");
            }
            Err(e) => {
                let _ = writeln!(err, "check: {e}");
                return 2;
            }
        }
    } else {
        let _ = write!(out, "{}", report.render());
    }
    if report.total() > 0 {
        1
    } else {
        0
    }
}
