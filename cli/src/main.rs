//! `quorate`: the chaos drills on the embedded simulator and on real
//! servers (`quorate drill`)
//! and the history checker (`quorate check`), with the options and exit
//! codes of the `drill` and `check` examples (the same parser reads them).

use std::process::ExitCode;

use clap::{Arg, Command};

// Read for every backend; run only by the ones built in.
#[cfg_attr(
    not(any(feature = "postgres", feature = "dynamodb", feature = "spanner")),
    allow(dead_code)
)]
mod cluster;

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
        .about("Chaos drills on the embedded simulator and on real servers, and the history checker")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(passthrough(
            "drill",
            "Every chaos drill, naive and strict (exit 0: strict clean, naive exposes its anomaly; 1: not; 2: bad arguments). `quorate drill --help` lists the options. With the `postgres`, `dynamodb` or `spanner` feature, `--backend NAME` runs the scenarios on the servers of scripts/pg, scripts/dynamodb or scripts/spanner, and `--backend NAME --cluster FILE --not-production [--duration D] [--strict-only]` runs their workloads on a cluster of your own while your tools inject faults (docs/runbook-cluster-drill.md).",
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
        eprintln!("drill: --backend needs a value: postgres, dynamodb or spanner");
        return 2;
    }
    let name = args.remove(at);
    let own = match cluster::Own::take(&mut args) {
        Ok(own) => own,
        Err(e) => {
            eprintln!("drill: {e}");
            return 2;
        }
    };
    match name.as_str() {
        "postgres" => postgres(args, own),
        "dynamodb" => dynamodb(args, own),
        "spanner" => spanner(args, own),
        other => {
            eprintln!("drill: unknown backend {other:?}; backends: postgres, dynamodb, spanner");
            2
        }
    }
}

/// Runs `drill` on a runtime of its own.
#[cfg(any(feature = "postgres", feature = "dynamodb", feature = "spanner"))]
fn on_runtime(drill: impl std::future::Future<Output = u8>) -> u8 {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(drill),
        Err(e) => {
            eprintln!("drill: cannot start a runtime: {e}");
            1
        }
    }
}

/// A fresh table's name per run, short enough for its idempotency
/// table's.
#[cfg(any(feature = "postgres", feature = "dynamodb", feature = "spanner"))]
fn table_names(prefix: &'static str) -> impl FnMut() -> String {
    // Two drills started in the same second differ by process.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let pid = std::process::id();
    let mut runs = 0u32;
    move || {
        runs += 1;
        format!("{prefix}{stamp}_{pid}_{runs}")
    }
}

/// SIGINT and SIGTERM, caught from when it is made.
#[cfg(feature = "postgres")]
struct Stop {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

#[cfg(feature = "postgres")]
impl Stop {
    fn listen() -> std::io::Result<Stop> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Stop {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// The next of them, by name.
    async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupted",
            _ = self.term.recv() => "terminated",
        }
    }
}

#[cfg(not(feature = "dynamodb"))]
fn dynamodb(_: Vec<String>, _: Option<cluster::Own>) -> u8 {
    eprintln!(
        "drill: this quorate was built without DynamoDB; install it with `cargo install quorate-cli --features dynamodb`"
    );
    2
}

/// The scenarios on the DynamoDB Local of `scripts/dynamodb start` (named
/// by `QUORATE_DYNAMODB_ENDPOINT`): three regions joined by the
/// replicator, fresh tables per run.
#[cfg(feature = "dynamodb")]
fn dynamodb(args: Vec<String>, own: Option<cluster::Own>) -> u8 {
    use quorate_dynamodb::deployment::DynamoDeployment;
    if let Some(own) = own {
        return dynamodb_cluster(own, args);
    }
    let Ok(endpoint) = std::env::var("QUORATE_DYNAMODB_ENDPOINT") else {
        eprintln!(
            "drill: --backend dynamodb needs QUORATE_DYNAMODB_ENDPOINT (scripts/dynamodb start prints it)"
        );
        return 2;
    };
    on_runtime(async move {
        let regions = [
            ("eu-west", "eu-west-1"),
            ("us-east", "us-east-1"),
            ("ap-south", "ap-south-1"),
        ];
        let base = DynamoDeployment::start(&endpoint, &regions).await;
        deployed(
            "dynamodb",
            args,
            base,
            "quorate-drill-",
            |base, table, run| async move {
                let lag = std::time::Duration::from_millis(100);
                base.with_table(&table, &run.home, lag).await
            },
        )
        .await
    })
}

#[cfg(not(feature = "spanner"))]
fn spanner(_: Vec<String>, _: Option<cluster::Own>) -> u8 {
    eprintln!(
        "drill: this quorate was built without Spanner; install it with `cargo install quorate-cli --features spanner`"
    );
    2
}

/// The scenarios on the emulator of `scripts/spanner start` (named by
/// `SPANNER_EMULATOR_HOST` and `QUORATE_SPANNER_DATABASE`), standing in
/// each run's home region, a fresh table per run.
#[cfg(feature = "spanner")]
fn spanner(args: Vec<String>, own: Option<cluster::Own>) -> u8 {
    use quorate_spanner::deployment::SpannerDeployment;
    if let Some(own) = own {
        return spanner_cluster(own, args);
    }
    let (Ok(emulator), Ok(database)) = (
        std::env::var("SPANNER_EMULATOR_HOST"),
        std::env::var("QUORATE_SPANNER_DATABASE"),
    ) else {
        eprintln!(
            "drill: --backend spanner needs SPANNER_EMULATOR_HOST and QUORATE_SPANNER_DATABASE (scripts/spanner start prints them)"
        );
        return 2;
    };
    on_runtime(async move {
        let regions = ["eu-west", "us-east", "ap-south"];
        let base = SpannerDeployment::start(&emulator, &database, &regions).await;
        deployed(
            "spanner",
            args,
            base,
            "quorate_drill_",
            |base, table, run| async move { base.with_table(&table, &run.home).await },
        )
        .await
    })
}

/// `main_deployed` on `base` (the fault layer, or why it did not start),
/// each run on what `fresh` makes of it with a table of its own.
#[cfg(any(feature = "dynamodb", feature = "spanner"))]
async fn deployed<D, F, Fut>(
    backend: &str,
    args: Vec<String>,
    base: Result<D, quorate::Error>,
    prefix: &'static str,
    fresh: F,
) -> u8
where
    D: quorate::drill::Deployment,
    F: Fn(D, String, quorate::drill::cli::RunSpec) -> Fut,
    Fut: std::future::Future<Output = Result<D, quorate::Error>>,
{
    let base = match base {
        Ok(d) => d,
        Err(e) => {
            eprintln!("drill: the fault layer could not start: {e}");
            return 1;
        }
    };
    let mut name = table_names(prefix);
    quorate::drill::cli::main_deployed(
        backend,
        args,
        |run| fresh(base.clone(), name(), run),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
    .await
}

#[cfg(not(feature = "postgres"))]
fn postgres(_: Vec<String>, _: Option<cluster::Own>) -> u8 {
    eprintln!(
        "drill: this quorate was built without PostgreSQL; install it with `cargo install quorate-cli --features postgres`"
    );
    2
}

/// The scenarios on the servers `scripts/pg start` runs (named by its
/// environment), a fresh table per run.
#[cfg(feature = "postgres")]
fn postgres(args: Vec<String>, own: Option<cluster::Own>) -> u8 {
    use quorate_cockroach::deployment::{PgDeployment, PgServers};
    if let Some(own) = own {
        return postgres_cluster(own, args);
    }
    let Some(servers) = PgServers::from_env() else {
        eprintln!(
            "drill: --backend postgres needs QUORATE_PG_PRIMARY, QUORATE_PG_STANDBY1 and QUORATE_PG_STANDBY2 (scripts/pg start prints them), and QUORATE_PG_SCRIPT for a server's clock skew and a standby's crash and pause"
        );
        return 2;
    };
    on_runtime(async move {
        // Listening before anything on the servers changes: interrupted
        // at any point, what was changed is put back (a fault layer that
        // was starting puts itself back when dropped).
        let mut stop = match Stop::listen() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("drill: cannot listen for signals: {e}");
                return 1;
            }
        };
        let started = tokio::select! {
            started = PgDeployment::start(&servers, &["eu-west", "us-east", "ap-south"]) => started,
            signal = stop.wait() => {
                eprintln!("drill: {signal}: putting the servers back");
                return 130;
            }
        };
        let base = match started {
            Ok(d) => d,
            Err(e) => {
                eprintln!("drill: the fault layer could not start: {e}");
                return 1;
            }
        };
        let mut name = table_names("quorate_drill_");
        let fresh = |run: quorate::drill::cli::RunSpec| {
            let (base, table) = (base.clone(), name());
            async move { base.with_table_at(&table, &run.home).await }
        };
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
        let drill = quorate::drill::cli::main_deployed("postgres", args, fresh, &mut out, &mut err);
        // Interrupted, the servers are put back all the same.
        let code = tokio::select! {
            code = drill => code,
            signal = stop.wait() => {
                eprintln!("drill: {signal}: putting the servers back");
                130
            }
        };
        if let Err(e) = base.restore().await {
            eprintln!("drill: the servers could not be put back: {e}; run scripts/pg stop && scripts/pg start");
            return 1;
        }
        code
    })
}

/// `drill --backend postgres --cluster FILE --not-production`: section
/// `[postgres]` of the settings file, a table of its own per run.
#[cfg(feature = "postgres")]
fn postgres_cluster(own: cluster::Own, args: Vec<String>) -> u8 {
    use quorate_cockroach::deployment::pg_cluster;
    use quorate_cockroach::settings::{redact, Loader, PgSettings};
    let settings = match PgSettings::load(&Loader::new().file(&own.file).env_prefix("QUORATE")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("drill: {}: {e}", own.file);
            return 2;
        }
    };
    let endpoints: Vec<String> = settings
        .regions
        .iter()
        .flat_map(|(region, s)| {
            s.primary
                .iter()
                .chain(&s.standbys)
                .chain(&s.gateways)
                .map(move |c| format!("{region}: {}", redact(c)))
        })
        .collect();
    if let Err(code) = own.admit(&endpoints) {
        return code;
    }
    on_runtime(async move {
        let connect = |run: quorate::drill::cli::RunSpec, table: String| {
            let settings = settings.clone();
            async move {
                let regions: Vec<&str> = run.regions.iter().map(String::as_str).collect();
                let cluster = pg_cluster(&settings, &regions, &table).await?;
                Ok((cluster, format!("table {table}")))
            }
        };
        own.run("postgres", args, table_names("quorate_drill_"), connect)
            .await
    })
}

/// `drill --backend dynamodb --cluster FILE --not-production`: section
/// `[dynamodb]` of the settings file (its global table, which must
/// exist), a key prefix of its own per run.
#[cfg(feature = "dynamodb")]
fn dynamodb_cluster(own: cluster::Own, args: Vec<String>) -> u8 {
    use quorate_dynamodb::deployment::dynamo_cluster;
    use quorate_dynamodb::settings::{DynamoSettings, Loader};
    let settings = match DynamoSettings::load(&Loader::new().file(&own.file).env_prefix("QUORATE"))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("drill: {}: {e}", own.file);
            return 2;
        }
    };
    let endpoints: Vec<String> = settings
        .regions
        .iter()
        .map(|(region, r)| {
            let mut line = format!("{region}: table {} in {}", settings.table, r.aws_region);
            if let Some(e) = &r.endpoint {
                line.push_str(&format!(" at {e}"));
            }
            if let Some(p) = &r.profile {
                line.push_str(&format!(" (profile {p})"));
            }
            line
        })
        .collect();
    if let Err(code) = own.admit(&endpoints) {
        return code;
    }
    on_runtime(async move {
        let connect = |run: quorate::drill::cli::RunSpec, prefix: String| {
            let settings = settings.clone();
            async move {
                let regions: Vec<&str> = run.regions.iter().map(String::as_str).collect();
                let cluster = dynamo_cluster(&settings, &regions, &prefix).await?;
                Ok((
                    cluster,
                    format!("keys {prefix}* of table {}", settings.table),
                ))
            }
        };
        own.run("dynamodb", args, key_prefixes(), connect).await
    })
}

/// `drill --backend spanner --cluster FILE --not-production`: section
/// `[spanner]` of the settings file, a key prefix of its own per run.
#[cfg(feature = "spanner")]
fn spanner_cluster(own: cluster::Own, args: Vec<String>) -> u8 {
    use quorate_spanner::deployment::spanner_cluster;
    use quorate_spanner::settings::{Loader, SpannerSettings};
    let settings = match SpannerSettings::load(&Loader::new().file(&own.file).env_prefix("QUORATE"))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("drill: {}: {e}", own.file);
            return 2;
        }
    };
    let mut endpoint = settings.database.clone();
    if let Some(e) = settings
        .emulator_host
        .as_ref()
        .or(settings.endpoint.as_ref())
    {
        endpoint.push_str(&format!(" at {e}"));
    }
    let endpoints = vec![format!(
        "{}: table {} of {endpoint}",
        settings.regions.join(", "),
        settings.table
    )];
    if let Err(code) = own.admit(&endpoints) {
        return code;
    }
    on_runtime(async move {
        let connect = |run: quorate::drill::cli::RunSpec, prefix: String| {
            let settings = settings.clone();
            async move {
                let regions: Vec<&str> = run.regions.iter().map(String::as_str).collect();
                let cluster = spanner_cluster(&settings, &regions, &prefix).await?;
                Ok((
                    cluster,
                    format!("keys {prefix}* of table {}", settings.table),
                ))
            }
        };
        own.run("spanner", args, key_prefixes(), connect).await
    })
}

/// A key prefix per run on a table runs share.
#[cfg(any(feature = "dynamodb", feature = "spanner"))]
fn key_prefixes() -> impl FnMut() -> String {
    let mut names = table_names("quorate-drill-");
    move || format!("{}/", names())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_is_well_formed() {
        super::command().debug_assert();
    }
}
