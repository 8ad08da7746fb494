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
        "drill" if args.iter().any(|a| a == "--backend") => backend(args),
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

/// `quorate drill --backend NAME ...`: the drills on real servers.
fn backend(mut args: Vec<String>) -> u8 {
    let at = args.iter().position(|a| a == "--backend").unwrap_or(0);
    args.remove(at);
    if at >= args.len() {
        eprintln!("drill: --backend needs a value: postgres");
        return 2;
    }
    let name = args.remove(at);
    match name.as_str() {
        "postgres" => postgres(args),
        "dynamodb" | "spanner" => {
            eprintln!(
                "drill: --backend {name} is not available yet; its real-server drills run as `cargo test -p quorate-{name} --test drills`"
            );
            2
        }
        other => {
            eprintln!("drill: unknown backend {other:?}; backends: postgres");
            2
        }
    }
}

#[cfg(not(feature = "postgres"))]
fn postgres(_: Vec<String>) -> u8 {
    eprintln!(
        "drill: this quorate was built without PostgreSQL; install it with `cargo install quorate-cli --features postgres`"
    );
    2
}

/// The scenarios on the servers `scripts/pg start` runs (named by its
/// environment), a fresh table per run.
#[cfg(feature = "postgres")]
fn postgres(args: Vec<String>) -> u8 {
    use quorate_cockroach::deployment::{PgDeployment, PgServers};
    let Some(servers) = PgServers::from_env() else {
        eprintln!(
            "drill: --backend postgres needs QUORATE_PG_PRIMARY, QUORATE_PG_STANDBY1 and QUORATE_PG_STANDBY2 (scripts/pg start prints them), and QUORATE_PG_SCRIPT for clock skew"
        );
        return 2;
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("drill: cannot start a runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        let base = match PgDeployment::start(&servers, &["eu-west", "us-east", "ap-south"]).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("drill: the fault layer could not start: {e}");
                return 1;
            }
        };
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // A table per run, short enough for its idempotency table's name.
        let mut runs = 0u32;
        let fresh = |_run: String| {
            runs += 1;
            let base = base.clone();
            let table = format!("quorate_drill_{stamp}_{runs}");
            async move { base.with_table(&table).await }
        };
        let code = quorate::drill::cli::main_deployed(
            "postgres",
            args,
            fresh,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        )
        .await;
        if let Err(e) = base.restore().await {
            eprintln!("drill: the servers could not be put back: {e}; run scripts/pg stop && scripts/pg start");
            return 1;
        }
        code
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_is_well_formed() {
        super::command().debug_assert();
    }
}
