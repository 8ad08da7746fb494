//! `drill --backend NAME --cluster FILE --not-production`: the scenarios'
//! workloads against a cluster of the team's own, named by the service's
//! own settings file (variables `QUORATE__<SECTION>__…` override it), with
//! faults from the team's own tools. The flags and the refusal are the same
//! for every backend; each backend reads its section and connects.

use std::future::Future;
use std::time::Duration;

use quorate::drill::cli::{Deployed, RunSpec};
use quorate::drill::{Deployment, OwnCluster};

/// Takes `--name VALUE` out of `args`.
fn take_value(args: &mut Vec<String>, name: &str) -> Result<Option<String>, String> {
    let Some(at) = args.iter().position(|a| a == name) else {
        return Ok(None);
    };
    args.remove(at);
    if at >= args.len() {
        return Err(format!("{name} needs a value"));
    }
    Ok(Some(args.remove(at)))
}

/// Takes the flag `name` out of `args`; whether it was there.
fn take_flag(args: &mut Vec<String>, name: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != name);
    args.len() != before
}

/// The cluster flags of a command line.
pub(crate) struct Own {
    /// The settings file.
    pub(crate) file: String,
    duration: Duration,
    not_production: bool,
    strict_only: bool,
}

impl Own {
    /// Takes the cluster flags out of `args`: `None` without `--cluster`
    /// (whose companions are then refused).
    pub(crate) fn take(args: &mut Vec<String>) -> Result<Option<Own>, String> {
        let Some(file) = take_value(args, "--cluster")? else {
            if let Some(flag) = args
                .iter()
                .find(|a| ["--not-production", "--duration", "--strict-only"].contains(&a.as_str()))
            {
                return Err(format!("{flag} goes with --cluster FILE"));
            }
            return Ok(None);
        };
        let duration = match take_value(args, "--duration")? {
            None => Duration::from_secs(120),
            Some(d) => {
                quorate::settings::parse_duration(&d).map_err(|e| format!("--duration: {e}"))?
            }
        };
        if duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        Ok(Some(Own {
            file,
            duration,
            not_production: take_flag(args, "--not-production"),
            strict_only: take_flag(args, "--strict-only"),
        }))
    }

    /// Prints what the drill will touch, and refuses (exit code 2) unless
    /// `--not-production` says it is not production.
    pub(crate) fn admit(&self, endpoints: &[String]) -> Result<(), u8> {
        eprintln!("drill: the cluster:\n  {}", endpoints.join("\n  "));
        if self.not_production {
            return Ok(());
        }
        eprintln!(
            "drill: refusing to run against\n  {}\nwithout --not-production. The drill writes records of its own there, runs a client without quorate's guarantees against them, and loads the cluster while your tools inject faults: pass --not-production to state that this cluster is not production.",
            endpoints.join("\n  ")
        );
        Err(2)
    }

    /// Runs the scenarios' workloads, each run on the cluster `connect`
    /// makes for it (it is told the run and a name of its own, for a
    /// table or a key prefix; it answers with the cluster and what the
    /// run writes, in words).
    pub(crate) async fn run<B, F, Fut>(
        &self,
        backend: &str,
        args: Vec<String>,
        mut names: impl FnMut() -> String,
        connect: F,
    ) -> u8
    where
        B: quorate::backend::Backend + Clone + Send + Sync + 'static,
        OwnCluster<B>: Deployment,
        F: Fn(RunSpec, String) -> Fut,
        Fut: Future<Output = Result<(OwnCluster<B>, String), quorate::Error>>,
    {
        let fresh = |run: RunSpec| {
            let label = run.name.clone();
            let made = connect(run, names());
            async move {
                let (cluster, writes) = made.await?;
                let mapping: Vec<String> = cluster
                    .mapping()
                    .iter()
                    .map(|(s, c)| format!("{s} = {c}"))
                    .collect();
                eprintln!(
                    "drill: {label} writes {writes}; regions {}",
                    mapping.join(", ")
                );
                Ok(cluster)
            }
        };
        let mut how = Deployed::own_faults(self.duration);
        if self.strict_only {
            how = how.strict_only();
        }
        quorate::drill::cli::main_deployed_with(
            backend,
            &how,
            args,
            fresh,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        )
        .await
    }
}
