//! `quorate`: the chaos drills on the embedded simulator (`quorate drill`)
//! and the history checker (`quorate check`), with the options and exit
//! codes of the `drill` and `check` examples (the same parser reads them).

use std::process::ExitCode;

use clap::{Arg, Command};

fn passthrough(name: &'static str, about: &'static str) -> Command {
    Command::new(name)
        .about(about)
        // Its own parser reads the options (and answers --help).
        .disable_help_flag(true)
        .arg(
            Arg::new("args")
                .num_args(0..)
                .allow_hyphen_values(true)
                .trailing_var_arg(true),
        )
}

fn command() -> Command {
    Command::new("quorate")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Chaos drills on the embedded simulator, and the history checker")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(passthrough(
            "drill",
            "Every chaos drill, naive and strict (exit 0: strict clean, naive exposes its anomaly; 1: not; 2: bad arguments). `quorate drill --help` lists the options.",
        ))
        .subcommand(passthrough(
            "check",
            "Checks a history (JSON Lines) against every anomaly rule, or exports it to Jepsen's EDN (exit 0: clean; 1: anomalies; 2: unreadable). `quorate check --help` lists the options.",
        ))
}

fn main() -> ExitCode {
    let matches = command().get_matches();
    let Some((name, sub)) = matches.subcommand() else {
        return ExitCode::from(2);
    };
    let args: Vec<String> = sub
        .get_many::<String>("args")
        .map(|v| v.cloned().collect())
        .unwrap_or_default();
    let code = match name {
        "drill" => quorate::drill::cli::main(
            args,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
        "check" => quorate::history::cli::main(
            args,
            std::io::stdin().lock(),
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
        _ => 2,
    };
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_is_well_formed() {
        super::command().debug_assert();
    }
}
