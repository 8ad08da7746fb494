//! The main job: every chaos drill, naive and strict, on the embedded
//! simulator.
//!
//! `cargo run --release --example drill -- [--json] [--scenario NAME] [--seed N] [--history FILE] [--report FILE.html]`
//!
//! Exit status: 0 when every strict run is clean and every naive run exposes
//! its scenario's anomaly; 1 otherwise; 2 for bad arguments.

fn main() -> std::process::ExitCode {
    let code = quorate::drill::cli::main(
        std::env::args().skip(1),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::ExitCode::from(code)
}
