//! The drills and both command lines, run as a user would.

use quorate::drill::{self, cli, Configuration, DrillOptions, Mechanism, Variant};
use quorate::history::Anomaly;

fn run_cli(args: &[&str]) -> (u8, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = cli::main(args.iter().map(|s| s.to_string()), &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn check_cli(args: &[&str], stdin: &[u8]) -> (u8, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = quorate::history::cli::main(
        args.iter().map(|s| s.to_string()),
        stdin,
        &mut out,
        &mut err,
    );
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn every_drill_passes_with_ten_runs_in_the_documented_shape() {
    let (code, out, err) = run_cli(&["--json", "--seed", "7"]);
    assert_eq!(code, 0, "{out}{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["ok"], true);
    let runs = json["scenarios"].as_array().unwrap();
    assert_eq!(runs.len(), 10);
    for run in runs {
        let keys: Vec<&str> = run
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for k in [
            "name",
            "config",
            "ops",
            "anomalies",
            "availability",
            "p50_ms",
            "p99_ms",
            "without",
            "enforce_max_offset",
        ] {
            assert!(keys.contains(&k), "{k} missing in {run}");
        }
        assert_eq!(
            run["anomalies"].as_object().unwrap().len(),
            quorate::history::ANOMALIES.len()
        );
        assert!(run["ops"].as_u64().unwrap() > 50, "{run}");
        let availability = run["availability"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&availability));
    }
}

#[test]
fn naive_runs_expose_their_anomaly_and_strict_runs_are_clean() {
    let results = drill::run_all(&DrillOptions::default()).unwrap();
    assert!(drill::verdict(&results));
    for r in &results {
        match r.config {
            Configuration::Naive => assert!(
                r.report.anomalies[r.about] > 0,
                "{} naive: {:?}",
                r.scenario,
                r.report.anomalies
            ),
            Configuration::Strict => assert_eq!(
                r.report.total(),
                0,
                "{} strict: {}",
                r.scenario,
                r.report.render()
            ),
        }
    }
    let about: Vec<&str> = drill::scenarios().iter().map(|s| s.about.name()).collect();
    assert!(about.contains(&Anomaly::DuplicateApplication.name()));
    assert!(about.contains(&Anomaly::MonotonicReads.name()));
}

#[test]
fn a_seed_reproduces_a_run_exactly() {
    let options = DrillOptions {
        scenario: Some("partition-global-tables".into()),
        seed: 11,
        ..DrillOptions::default()
    };
    let a = drill::run_all(&options).unwrap();
    let b = drill::run_all(&options).unwrap();
    assert_eq!(a.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.events, y.events);
    }
    let other = drill::run_all(&DrillOptions {
        seed: 12,
        ..options
    })
    .unwrap();
    assert_ne!(a[1].events, other[1].events);
}

#[test]
fn saved_histories_re_check_the_same() {
    let dir = std::env::temp_dir().join(format!("quorate-drill-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("h.jsonl");
    let report = dir.join("report.html");
    let (code, out, err) = run_cli(&[
        "--scenario",
        "clock-skew-600ms",
        "--history",
        base.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("clock-skew-600ms"), "{out}");
    let naive = dir.join("h-clock-skew-600ms-naive.jsonl");
    let strict = dir.join("h-clock-skew-600ms-strict.jsonl");
    let (code, out, _) = check_cli(&[naive.to_str().unwrap(), "--json"], &b""[..]);
    assert_eq!(code, 1, "the naive history has anomalies");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(json["anomalies"]["stale-read"].as_u64().unwrap() > 0);
    let (code, out, _) = check_cli(&[strict.to_str().unwrap()], &b""[..]);
    assert_eq!(code, 0, "{out}");
    // Each of the scenario's fault windows is in the file: a start line
    // and a stop line, at the times the fault was brought in force and
    // lifted, among the operations they affected.
    let scenario = drill::scenarios()
        .into_iter()
        .find(|s| s.name == "clock-skew-600ms")
        .unwrap();
    let text = std::fs::read_to_string(&strict).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let faults: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l.get("nemesis").is_some())
        .collect();
    assert_eq!(faults.len(), 2 * scenario.windows.len(), "{faults:?}");
    for w in &scenario.windows {
        let at = |phase: &str| -> u64 {
            let line = faults
                .iter()
                .find(|f| f["nemesis"] == phase && f["fault"] == w.fault.label().as_str())
                .unwrap_or_else(|| panic!("no {phase} line for {}", w.fault.label()));
            assert!(line.get("error").is_none(), "{line}");
            line["time"].as_u64().unwrap()
        };
        let (from, until) = (at("start"), at("stop"));
        assert_eq!(u128::from(from), w.from.as_nanos(), "virtual time: exact");
        assert_eq!(u128::from(until), w.until.as_nanos());
    }
    let times: Vec<u64> = lines.iter().map(|l| l["time"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|t| t[0] <= t[1]), "in time order");
    let first_fault = lines
        .iter()
        .position(|l| l.get("nemesis").is_some())
        .unwrap();
    assert!(
        first_fault > 0 && first_fault < lines.len() - 1,
        "among the operations"
    );
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.starts_with("<!doctype html>") && html.contains("<svg") && html.contains("stale-read")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    for args in [
        &["--scenario", "no-such-drill"][..],
        &["--seed", "-4"][..],
        &["--seed", "many"][..],
        &["--seed"][..],
        &["--frobnicate"][..],
        &["--nemesis", "2", "--seed", "18446744073709551615"][..],
        &["--without", "verify,"][..],
    ] {
        let (code, out, err) = run_cli(args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(err.starts_with("drill: "), "{err}");
    }
    let (code, out, _) = run_cli(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("usage:"));
}

#[test]
fn check_exit_codes() {
    let clean = br#"{"process":1,"type":"invoke","op":"read","key":"k","policy":"strong","time":1}
{"process":1,"type":"ok","op":"read","key":"k","version":0,"time":2}
"#;
    assert_eq!(check_cli(&["-"], &clean[..]).0, 0);
    let (code, out, _) = check_cli(&["-", "--json"], &clean[..]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["ops"],
        1
    );
    let (code, _, err) = check_cli(&["-"], &b"{\"process\":1}\n"[..]);
    assert_eq!(code, 2);
    assert!(err.contains("line 1"), "{err}");
    assert_eq!(check_cli(&["/nonexistent/history.jsonl"], &b""[..]).0, 2);
    assert_eq!(check_cli(&[], &b""[..]).0, 2);
    assert_eq!(check_cli(&["a", "b"], &b""[..]).0, 2);
    assert_eq!(check_cli(&["--bogus"], &b""[..]).0, 2);
}

#[test]
fn history_file_names() {
    let p = cli::history_path(
        std::path::Path::new("/tmp/h.jsonl"),
        "isolation-latency",
        "naive",
    );
    assert_eq!(
        p,
        std::path::Path::new("/tmp/h-isolation-latency-naive.jsonl")
    );
    let p = cli::history_path(std::path::Path::new("runs/h"), "a", "strict");
    assert_eq!(p, std::path::Path::new("runs/h-a-strict"));
}

#[test]
fn the_readme_shows_what_the_drill_prints() {
    let readme = include_str!("../README.md");
    let begin = readme
        .find("<!-- drill:begin -->\n")
        .expect("README marks the drill section")
        + "<!-- drill:begin -->\n".len();
    let end = readme
        .find("<!-- drill:end -->")
        .expect("README marks the drill section");
    let results = drill::run_all(&DrillOptions::default()).unwrap();
    assert_eq!(
        &readme[begin..end],
        drill::markdown(&results),
        "README.md is out of date: run scripts/readme-drill"
    );
}

/// The randomized schedules: the strict client stays clean, the naive one
/// shows anomalies, each run can be replayed and saved, and bad arguments
/// are refused.
#[test]
fn nemesis_schedules_keep_the_strict_client_clean() {
    let (code, out, err) = run_cli(&["--nemesis", "25", "--seed", "100", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["seeds"], 25);
    assert!(json["failures"].as_array().unwrap().is_empty());
    let naive: u64 = json["naive"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(naive > 0, "the naive runs showed nothing: {out}");
    assert!(json["strict"].as_object().unwrap().values().all(|v| v == 0));

    // One seed, replayed, saved and reported.
    let dir = std::env::temp_dir().join(format!("quorate-nemesis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("h.jsonl");
    let report = dir.join("r.html");
    let (code, out, err) = run_cli(&[
        "--nemesis",
        "1",
        "--seed",
        "22",
        "--history",
        base.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("seeds 22..23"), "{out}");
    for config in ["naive", "strict"] {
        let saved = dir.join(format!("h-nemesis-22-{config}.jsonl"));
        let (code, checked, _) = check_cli(&[saved.to_str().unwrap()], b"");
        assert_eq!(code == 0, config == "strict", "{config}: {checked}");
    }
    assert!(std::fs::read_to_string(&report).unwrap().contains("<html"));
    std::fs::remove_dir_all(&dir).unwrap();

    for bad in [
        vec!["--nemesis", "0"],
        vec!["--nemesis", "many"],
        vec!["--nemesis"],
        vec!["--nemesis", "3", "--scenario", "clock-skew-600ms"],
    ] {
        let (code, _, err) = run_cli(&bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
    }
}

/// Every seed the randomized schedules ever caught a strict anomaly on,
/// replayed as it was drawn then: each stays clean (each one found a
/// mechanism the simulator or the client lacked; see the CHANGELOG). A
/// seed replays exactly, but a change to the client's timing changes what
/// the replay does: each mechanism found also has a test of its own (in
/// `tests/sim_mechanics.rs`, `tests/guarantees.rs` and `src/clock.rs`).
#[test]
fn seeds_the_nemesis_once_caught_stay_clean() {
    for seed in [22, 678, 2645, 5375, 6389, 6419, 6946, 12129, 19759] {
        let scenario = drill::nemesis::first_scenario(seed);
        let run = drill::run(&scenario, Configuration::Strict, seed).unwrap();
        assert_eq!(
            run.report.total(),
            0,
            "{}\n{}",
            drill::nemesis::describe(seed),
            run.report.render()
        );
    }
}

fn scenario(name: &str) -> drill::Scenario {
    drill::scenarios()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

fn strict_without(name: &str, without: &[Mechanism], seed: u64) -> drill::RunResult {
    let variant = Variant {
        without: without.to_vec(),
        ..Variant::default()
    };
    drill::run_variant(&scenario(name), Configuration::Strict, seed, &variant).unwrap()
}

/// What each scenario's text credits is what keeps its strict run clean:
/// with it switched off, the strict run shows the anomaly (on one of the
/// first six seeds at least; on most, every one).
#[test]
fn each_credited_mechanism_is_what_keeps_the_strict_run_clean() {
    use Mechanism::*;
    let cases: &[(&str, &[Mechanism], &str)] = &[
        ("isolation-latency", &[StrongReads], "stale-read"),
        ("clock-skew-600ms", &[ClockGuard, Verify], "stale-read"),
        ("partition-global-tables", &[StrongReads], "stale-read"),
        (
            "partition-global-tables",
            &[StrongReads, HomeWrites],
            "duplicate-application",
        ),
        ("partial-partition-skew-250ms", &[StrongReads], "stale-read"),
        (
            "skew-isolate-conflicting-writes",
            &[SessionTokens],
            "monotonic-reads",
        ),
        (
            "skew-isolate-conflicting-writes",
            &[ClockGuard],
            "stale-read",
        ),
        (
            "skew-isolate-conflicting-writes",
            &[StrongReads],
            "stale-read",
        ),
    ];
    for (name, without, anomaly) in cases {
        let caught = (1..=6).find(|&seed| {
            let run = strict_without(name, without, seed);
            run.report.anomalies.get(anomaly).copied().unwrap_or(0) > 0
        });
        assert!(
            caught.is_some(),
            "{name} without {without:?}: no strict run showed {anomaly}"
        );
    }
}

/// Where a scenario credits two mechanisms that each suffice, either one
/// alone keeps the strict run clean of that anomaly (and both off do not:
/// see above); where it says a mechanism is not needed, the run is clean
/// without it.
#[test]
fn redundant_and_unneeded_mechanisms() {
    use Mechanism::*;
    // (scenario, switched off, the anomaly that must not appear; None: none may)
    let cases: &[(&str, Mechanism, Option<&str>)] = &[
        ("clock-skew-600ms", ClockGuard, None),
        ("clock-skew-600ms", Verify, None),
        ("partition-global-tables", HomeWrites, None),
        (
            "partition-global-tables",
            StrongReads,
            Some("duplicate-application"),
        ),
        ("partial-partition-skew-250ms", ClockGuard, None),
        ("skew-isolate-conflicting-writes", Verify, None),
    ];
    for (name, off, anomaly) in cases {
        for seed in 1..=3 {
            let run = strict_without(name, &[*off], seed);
            let seen = match anomaly {
                Some(a) => run.report.anomalies.get(a).copied().unwrap_or(0),
                None => run.report.total(),
            };
            assert_eq!(
                seen,
                0,
                "{name} without {off} alone, seed {seed}:\n{}",
                run.report.render()
            );
        }
    }
}

/// CockroachDB itself refuses the two scenarios whose clocks stray beyond
/// `max_offset`: the node stops at 0.8 x max_offset. Then the naive
/// producer of `clock-skew-600ms` reads nothing stale (its writes through
/// the stopped node fail instead), the naive users of
/// `skew-isolate-conflicting-writes` lose about half their operations, and
/// the strict client stays clean and more available than the naive one.
#[test]
fn the_skewed_scenarios_on_a_database_that_enforces_max_offset() {
    let variant = Variant {
        enforce_max_offset: true,
        ..Variant::default()
    };
    for (name, naive_availability_below) in [
        ("clock-skew-600ms", 0.9),
        ("skew-isolate-conflicting-writes", 0.6),
    ] {
        let s = scenario(name);
        for seed in 1..=3 {
            let naive = drill::run_variant(&s, Configuration::Naive, seed, &variant).unwrap();
            if name == "clock-skew-600ms" {
                assert_eq!(
                    naive
                        .report
                        .anomalies
                        .get("stale-read")
                        .copied()
                        .unwrap_or(0),
                    0,
                    "{}",
                    naive.report.render()
                );
            }
            assert!(
                naive.failed > 0 && naive.availability() < naive_availability_below,
                "{name}: naive availability {}",
                naive.availability()
            );
            let strict = drill::run_variant(&s, Configuration::Strict, seed, &variant).unwrap();
            assert_eq!(
                strict.report.total(),
                0,
                "{name}: {}",
                strict.report.render()
            );
            assert!(strict.availability() > naive.availability(), "{name}");
        }
    }
}

#[test]
fn the_drill_names_its_variant_and_rejects_unknown_mechanisms() {
    let (code, out, _) = run_cli(&[
        "--scenario",
        "isolation-latency",
        "--without",
        "strong-reads",
    ]);
    assert_eq!(code, 1, "the strict run fails without strong reads:\n{out}");
    assert!(out.contains("strict runs without strong-reads"), "{out}");
    let (code, _, err) = run_cli(&["--without", "clocks"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown mechanism \"clocks\""), "{err}");
}

/// The schedules crash nodes, move leases and let clocks drift: some seeds
/// draw each, a strict run through them stays clean, and the schedule's
/// description names them.
#[test]
fn schedules_crash_nodes_move_leases_drift_clocks_and_stall_replicas() {
    use drill::Fault;
    let has = |seed: u64, f: fn(&Fault) -> bool| {
        drill::nemesis::scenario(seed)
            .windows
            .iter()
            .any(|w| f(&w.fault))
    };
    let crash = |f: &Fault| matches!(f, Fault::Crash(_));
    let lease = |f: &Fault| matches!(f, Fault::LeaseTo(_));
    let crashing = (1..100).filter(|&s| has(s, crash)).count();
    let leasing = (1..100).filter(|&s| has(s, lease)).count();
    let drift = |f: &Fault| matches!(f, Fault::Drift(..));
    let drifting = (1..100).filter(|&s| has(s, drift)).count();
    assert!(
        (10..45).contains(&drifting),
        "{drifting} of 99 seeds drift a clock"
    );
    let stall = |f: &Fault| matches!(f, Fault::Stall(_));
    let stalling = (1..100).filter(|&s| has(s, stall)).count();
    assert!(
        (10..45).contains(&stalling),
        "{stalling} of 99 seeds stall a replica"
    );
    assert!(
        (15..60).contains(&crashing),
        "{crashing} of 99 seeds crash a node"
    );
    assert!(
        (10..50).contains(&leasing),
        "{leasing} of 99 seeds move the lease"
    );
    let seed = (1..2000)
        .find(|&s| has(s, crash) && has(s, lease) && has(s, drift) && has(s, stall))
        .expect("a seed with all four");
    let described = drill::nemesis::describe(seed);
    assert!(described.contains("node down"), "{described}");
    assert!(described.contains("lease to"), "{described}");
    assert!(described.contains("clock drifts"), "{described}");
    assert!(described.contains("replica stalled"), "{described}");
    let run = drill::run(&drill::nemesis::scenario(seed), Configuration::Strict, seed).unwrap();
    assert_eq!(
        run.report.total(),
        0,
        "{described}\n{}",
        run.report.render()
    );
}

/// One seed in four is a clock drill; each seed the clock drills caught a
/// strict anomaly on (or hung on) replays clean, as drawn now.
#[test]
fn clock_drills_and_the_seeds_they_caught() {
    let drills = (1..200)
        .filter(|&s| drill::nemesis::describe(s).contains("clock drill"))
        .count();
    assert!((25..75).contains(&drills), "{drills} of 199 seeds");
    for seed in [3, 47, 432, 649, 895, 1515, 1574, 2500, 3337] {
        let run = drill::run(&drill::nemesis::scenario(seed), Configuration::Strict, seed).unwrap();
        assert_eq!(
            run.report.total(),
            0,
            "{}\n{}",
            drill::nemesis::describe(seed),
            run.report.render()
        );
    }
}

/// A seed replays exactly: the same seed gives the same history, event for
/// event, naive and strict, including a node that pauses and the clients'
/// health checks that stop at the end of the run.
#[test]
fn a_seed_replays_exactly() {
    let seed = (1..100)
        .find(|&s| drill::nemesis::describe(s).contains("node paused"))
        .expect("some seed pauses a node");
    let scenario = drill::nemesis::scenario(seed);
    for config in [Configuration::Naive, Configuration::Strict] {
        let first = drill::run(&scenario, config, seed).unwrap();
        let again = drill::run(&scenario, config, seed).unwrap();
        assert!(first.events.len() > 1000, "{}", first.events.len());
        assert!(
            first.events == again.events,
            "{config:?}: two runs of seed {seed} differ"
        );
    }
}

/// About one seed in nine is a quiet-reader drill, of both kinds, and its
/// strict runs are clean.
#[test]
fn quiet_reader_drills() {
    let described: Vec<(u64, String)> = (1..300)
        .map(|s| (s, drill::nemesis::describe(s)))
        .filter(|(_, d)| d.contains("quiet-reader drill"))
        .collect();
    assert!((15..60).contains(&described.len()), "{}", described.len());
    for kind in ["fast leaseholder", "fast gateway"] {
        let (seed, d) = described
            .iter()
            .find(|(_, d)| d.contains(kind))
            .unwrap_or_else(|| panic!("no {kind} drill"));
        assert!(d.contains("trusting every clock"), "{d}");
        let run = drill::run(
            &drill::nemesis::scenario(*seed),
            Configuration::Strict,
            *seed,
        )
        .unwrap();
        assert_eq!(run.report.total(), 0, "{d}\n{}", run.report.render());
    }
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// `drill --backend NAME ARGS` on the deployments `fresh` makes: the exit
/// code, the output and the errors.
async fn deployed<D, F, Fut>(backend: &str, args: &[&str], fresh: F) -> (u8, String, String)
where
    D: drill::Deployment,
    F: FnMut(cli::RunSpec) -> Fut,
    Fut: std::future::Future<Output = Result<D, quorate::Error>>,
{
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = drill::cli::main_deployed(backend, owned(args), fresh, &mut out, &mut err).await;
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

/// `drill --backend` drives any deployment through the same runner: given
/// fresh simulators, it makes the simulator's own runs.
#[tokio::test(start_paused = true)]
async fn the_deployed_command_runs_the_scenarios_on_the_deployment_it_is_given() {
    let fresh = |run: cli::RunSpec| async move {
        let name = run.name;
        let scenario = drill::scenarios()
            .into_iter()
            .find(|s| name.starts_with(s.name))
            .expect("a run of a known scenario");
        quorate::sim::Sim::new(scenario.simulated_system(1))
    };
    let (code, out, err) =
        deployed("sim", &["--scenario", "isolation-latency", "--json"], fresh).await;
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["backend"], "sim");
    let runs = json["scenarios"].as_array().expect("the runs");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["config"], "naive");
    assert!(runs[0]["anomalies"]["stale-read"].as_u64().unwrap() > 0);
    assert_eq!(runs[1]["config"], "strict");
    let strict: u64 = runs[1]["anomalies"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(strict, 0);
}

/// `drill --backend NAME --nemesis N --json`: the JSON's verdict is the
/// exit code's, which judges only the strict runs of random schedules
/// (naive runs of a schedule need not show any one anomaly).
#[tokio::test(start_paused = true)]
async fn the_deployed_nemesis_json_says_what_the_exit_code_says() {
    let fresh = |run: cli::RunSpec| async move {
        let seed: u64 = run
            .name
            .strip_prefix("nemesis-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|n| n.parse().ok())
            .expect("a nemesis run");
        quorate::sim::Sim::new(drill::nemesis::scenario(seed).simulated_system(seed))
    };
    let (code, out, err) =
        deployed("sim", &["--nemesis", "10", "--seed", "1", "--json"], fresh).await;
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs = json["scenarios"].as_array().expect("the runs");
    assert_eq!(runs.len(), 20);
    // Some naive run shows none of the anomaly a schedule is filed under
    // (stale reads): by the seed scenarios' rule it would fail.
    assert!(
        runs.iter()
            .any(|r| r["config"] == "naive" && r["anomalies"]["stale-read"] == 0),
        "{out}"
    );
    assert_eq!(json["ok"], true, "{out}");
}

/// A deployment that cannot make some faults: the scenarios that need them
/// are named as not run, with the faults, and a command that ran nothing
/// does not pass.
#[derive(Clone)]
struct NoIsolation(quorate::sim::Sim, Claim);

/// What the test deployment claims.
#[derive(Clone, Copy, PartialEq)]
enum Claim {
    /// That it cannot isolate a region.
    CannotIsolate,
    /// That it prevents the isolation scenario's anomaly (it does not).
    PreventsStaleReads,
}

impl drill::Deployment for NoIsolation {
    type Backend = quorate::sim::Sim;
    fn regions(&self) -> Vec<String> {
        self.0.regions()
    }
    fn at(&self, region: &str) -> Result<quorate::sim::Sim, quorate::Error> {
        drill::Deployment::at(&self.0, region)
    }
    fn clock(&self, region: &str) -> Result<std::sync::Arc<dyn quorate::Clock>, quorate::Error> {
        drill::Deployment::clock(&self.0, region)
    }
    async fn apply(&self, from: &drill::FaultState, to: &drill::FaultState) -> Vec<quorate::Error> {
        self.0.apply(from, to).await
    }
    fn prevents(&self, scenario: &str) -> Option<String> {
        (self.1 == Claim::PreventsStaleReads && scenario == "isolation-latency")
            .then(|| "a claim the naive run refutes".to_owned())
    }
    fn unsupported(&self, windows: &[drill::Window]) -> Vec<String> {
        windows
            .iter()
            .filter(|_| self.1 == Claim::CannotIsolate)
            .filter(|w| matches!(w.fault, drill::Fault::Isolate(_)))
            .map(|w| w.fault.label())
            .collect()
    }
    fn clock_offset(&self, region: &str) -> Option<i64> {
        drill::Deployment::clock_offset(&self.0, region)
    }
    fn max_offset(&self) -> std::time::Duration {
        drill::Deployment::max_offset(&self.0)
    }
}

#[tokio::test(start_paused = true)]
async fn scenarios_a_deployment_cannot_fault_are_named_not_run() {
    let fresh = |_: cli::RunSpec| async {
        let system = drill::scenarios()[0].simulated_system(1);
        Ok(NoIsolation(
            quorate::sim::Sim::new(system)?,
            Claim::CannotIsolate,
        ))
    };
    let (code, out, _) =
        deployed("no-isolation", &["--scenario", "isolation-latency"], fresh).await;
    assert_eq!(code, 1, "nothing ran: {out}");
    assert!(
        out.contains(
            "isolation-latency: not run on no-isolation, which cannot make: ap-south isolated"
        ),
        "{out}"
    );
    // And a run refused by the runner itself, for the same reason.
    let deployment = NoIsolation(
        quorate::sim::Sim::new(drill::scenarios()[0].simulated_system(1)).unwrap(),
        Claim::CannotIsolate,
    );
    let scenario = drill::scenarios_on::<NoIsolation>().remove(0);
    let refused = drill::run_deployed(
        &deployment,
        &scenario,
        Configuration::Strict,
        1,
        &drill::Variant::default(),
    )
    .await;
    assert!(
        matches!(&refused, Err(quorate::Error::InvalidInput(m)) if m.contains("cannot produce")),
        "{:?}",
        refused.map(|r| r.report.ops)
    );
}

/// A deployment's claim that its database prevents an anomaly is tested:
/// the naive run that shows it anyway fails the drill.
#[tokio::test(start_paused = true)]
async fn a_claim_that_the_database_prevents_the_anomaly_is_tested() {
    let fresh = |_: cli::RunSpec| async {
        let system = drill::scenarios()[0].simulated_system(1);
        Ok(NoIsolation(
            quorate::sim::Sim::new(system)?,
            Claim::PreventsStaleReads,
        ))
    };
    let (code, out, _) = deployed("claiming", &["--scenario", "isolation-latency"], fresh).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL: shows stale-read, said to be prevented"),
        "{out}"
    );
    assert!(
        out.contains(
            "isolation-latency: claiming prevents stale-read: a claim the naive run refutes"
        ),
        "{out}"
    );
}

/// `--nemesis` on a deployment runs each seed's schedule with the faults
/// the deployment can make, names the ones it cannot, and passes when
/// every strict run is clean.
#[tokio::test(start_paused = true)]
async fn nemesis_schedules_run_on_a_deployment_without_what_it_cannot_make() {
    let fresh = |run: cli::RunSpec| async move {
        let seed: u64 = run
            .name
            .strip_prefix("nemesis-")
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse().ok())
            .expect("a nemesis run");
        let system = drill::nemesis::scenario(seed).simulated_system(seed);
        Ok(NoIsolation(
            quorate::sim::Sim::new(system)?,
            Claim::CannotIsolate,
        ))
    };
    // Seeds 1 to 60 include schedules with an isolation.
    let isolating = (1..=60u64).find(|&s| {
        drill::nemesis::scenario(s)
            .windows
            .iter()
            .any(|w| matches!(w.fault, drill::Fault::Isolate(_)))
    });
    let Some(seed) = isolating else {
        panic!("no schedule of seeds 1 to 60 isolates a region");
    };
    let (code, out, err) = deployed(
        "no-isolation",
        &["--nemesis", "1", "--seed", &seed.to_string()],
        fresh,
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let prefix = format!("nemesis-{seed}: ran without what no-isolation cannot make: ");
    let line = out
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no ran-without line: {out}"));
    assert!(line.contains("isolated"), "{line}");
    assert!(
        out.contains("nemesis on no-isolation: 1 of 1 seeds run") && out.contains("PASS"),
        "{out}"
    );
}

/// A multi-writer database's stand-in, for the nemesis's draws.
#[derive(Clone)]
struct GlobalTable(quorate::sim::Sim);

impl drill::Deployment for GlobalTable {
    type Backend = quorate::sim::Sim;
    const MULTI_WRITER: bool = true;
    fn regions(&self) -> Vec<String> {
        drill::Deployment::regions(&self.0)
    }
    fn at(&self, region: &str) -> Result<quorate::sim::Sim, quorate::Error> {
        drill::Deployment::at(&self.0, region)
    }
    fn clock(&self, region: &str) -> Result<std::sync::Arc<dyn quorate::Clock>, quorate::Error> {
        drill::Deployment::clock(&self.0, region)
    }
    async fn apply(&self, from: &drill::FaultState, to: &drill::FaultState) -> Vec<quorate::Error> {
        self.0.apply(from, to).await
    }
    fn clock_offset(&self, region: &str) -> Option<i64> {
        drill::Deployment::clock_offset(&self.0, region)
    }
    fn max_offset(&self) -> std::time::Duration {
        drill::Deployment::max_offset(&self.0)
    }
}

/// On a multi-writer database the nemesis draws only schedules for
/// multi-writer tables, and leaves the simulator's own draws alone.
#[test]
fn the_nemesis_draws_multi_writer_schedules_for_a_multi_writer_database() {
    use quorate::sim::Replication;
    let mut consensus = 0;
    for seed in 1..=40 {
        let own = drill::nemesis::scenario(seed).simulated_system(seed);
        let global = drill::nemesis::scenario_on::<GlobalTable>(seed).simulated_system(seed);
        assert_eq!(global.replication, Replication::MultiWriter, "seed {seed}");
        if own.replication != Replication::MultiWriter {
            consensus += 1;
        }
    }
    assert!(
        consensus > 20,
        "the simulator's own draws stay mostly consensus"
    );
}

/// A deployment whose writes are coordinated in another region than the
/// scenario's home is refused before anything runs: the scenario's
/// services are placed around its home.
#[tokio::test(start_paused = true)]
async fn a_deployment_with_another_home_is_refused() {
    let scenario = scenario("isolation-latency");
    let mut system = scenario.simulated_system(1);
    system.home = quorate::Region::new("us-east").unwrap();
    let elsewhere = quorate::sim::Sim::new(system).unwrap();
    let refused = drill::run_deployed(
        &elsewhere,
        &scenario,
        Configuration::Strict,
        1,
        &drill::Variant::default(),
    )
    .await;
    assert!(
        matches!(&refused, Err(quorate::Error::InvalidInput(m))
            if m.contains("home region eu-west") && m.contains("home is us-east")),
        "{:?}",
        refused.map(|r| r.report.ops)
    );
}

/// A cluster of the team's own gives each run a key prefix: every key and
/// idempotency key of the history carries it, and the run is judged as
/// any other.
#[tokio::test(start_paused = true)]
async fn runs_on_a_shared_table_write_under_their_own_prefix() {
    let system = scenario("isolation-latency").simulated_system(1);
    let sim = quorate::sim::Sim::new(system.clone()).unwrap();
    let home = system.home.as_str().to_owned();
    let mut regions = vec![home.clone()];
    regions.extend(
        system
            .regions
            .iter()
            .map(|r| r.as_str().to_owned())
            .filter(|r| *r != home),
    );
    let names: Vec<&str> = regions.iter().map(String::as_str).collect();
    let map = drill::OwnCluster::<quorate::sim::Sim>::map_regions(&names, &regions).unwrap();
    let backends = vec![sim; map.len()];
    let own = drill::OwnCluster::new(map, backends, "run-7/").unwrap();
    let mut scenario = drill::scenarios_on::<drill::OwnCluster<quorate::sim::Sim>>().remove(0);
    scenario.windows.clear();
    let run = drill::run_deployed(
        &own,
        &scenario,
        Configuration::Strict,
        1,
        &drill::Variant::default(),
    )
    .await
    .unwrap();
    assert!(run.report.ops > 100 && run.report.total() == 0);
    assert!(run.events.iter().all(|e| e.key.starts_with("run-7/acct:")));
    let idems: Vec<&String> = run.events.iter().filter_map(|e| e.idem.as_ref()).collect();
    assert!(!idems.is_empty() && idems.iter().all(|i| i.starts_with("run-7/")));
}
