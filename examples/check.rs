//! Checks a history file against every anomaly rule.
//!
//! `cargo run --release --example check -- FILE [--json]`
//!
//! Exit status: 0 no anomaly, 1 anomalies found, 2 unreadable or malformed
//! input (the message names the line and what was wrong).

fn main() -> std::process::ExitCode {
    let code = quorate::history::cli::main(
        std::env::args().skip(1),
        std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::ExitCode::from(code)
}
