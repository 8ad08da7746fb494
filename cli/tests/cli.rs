//! The installed command, run as a user runs it.

use std::process::Command;

fn quorate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(args)
        .output()
        .expect("run quorate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn options_and_exit_codes_are_the_examples() {
    let (code, out, _) = quorate(&["drill", "--help"]);
    assert_eq!((code, out.trim()), (0, quorate::drill::cli::USAGE));
    let (code, _, err) = quorate(&["drill", "--scenario", "no-such-scenario"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = quorate(&["drill", "--bogus"]);
    assert!(code == 2 && err.contains("--bogus"), "{code}: {err}");
    let (code, out, _) = quorate(&["check", "--help"]);
    assert_eq!((code, out.trim()), (0, quorate::history::cli::USAGE));
    let (code, _, _) = quorate(&[]);
    assert_eq!(code, 2, "a subcommand is required");
}

#[test]
fn a_drill_writes_histories_the_checker_reads() {
    let dir = std::env::temp_dir().join(format!("quorate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("h.jsonl");
    let (code, out, err) = quorate(&[
        "drill",
        "--scenario",
        "clock-skew-600ms",
        "--history",
        base.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let strict = dir.join("h-clock-skew-600ms-strict.jsonl");
    let naive = dir.join("h-clock-skew-600ms-naive.jsonl");
    let (code, out, _) = quorate(&["check", strict.to_str().unwrap()]);
    assert_eq!(code, 0, "the strict history is clean: {out}");
    let (code, out, _) = quorate(&["check", naive.to_str().unwrap()]);
    assert_eq!(code, 1, "the naive history shows anomalies: {out}");
    assert!(out.contains("stale-read"), "{out}");
    let (code, edn, err) = quorate(&["check", naive.to_str().unwrap(), "--edn"]);
    assert_eq!(code, 0, "{err}");
    assert!(edn.lines().count() > 10);
    assert!(edn
        .lines()
        .all(|l| l.starts_with("{:index ") || l.starts_with(";;")));
    let missing = dir.join("none.jsonl");
    let (code, _, err) = quorate(&["check", missing.to_str().unwrap()]);
    assert!(code == 2 && err.contains("none.jsonl"), "{code}: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
