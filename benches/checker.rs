//! Checks a generated 1,000,000-operation history: 64 processes, 10,000
//! keys, mixed policies, some indeterminate writes.
//!
//! `cargo bench --bench checker` (`-- --ops N` to change the size)
//!
//! Prints the generation and check times (wall and CPU) and the peak
//! resident memory of the check (the generator streams to disk and holds almost nothing).

use std::io::{BufReader, BufWriter, Write};
use std::time::Instant;

use quorate::history::check;

const PROCESSES: u64 = 64;
const KEYS: u64 = 10_000;

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU time of this (single-threaded) process's main thread so far.
fn cpu_time() -> std::time::Duration {
    let stat = std::fs::read_to_string("/proc/self/schedstat").unwrap_or_default();
    let nanos = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    std::time::Duration::from_nanos(nanos)
}

/// SplitMix64: a deterministic stream for the generated history.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % bound
    }
}

/// Rounds of 64 concurrent operations: reads see the state from before the
/// round, writes apply in process order. The history is valid (no anomaly).
fn generate(path: &std::path::Path, ops: u64) -> std::io::Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut rng = SplitMix64::new(42);
    let mut version = vec![0u64; KEYS as usize];
    let policies = ["strong", "session", "bounded:100", "eventual"];
    let mut written = 0;
    let mut round = 0u64;
    let mut round_ops: Vec<(u64, u64, u8, u64, u64)> = Vec::with_capacity(PROCESSES as usize);
    while written < ops {
        let start = round * 10_000;
        round_ops.clear();
        let before = version.clone();
        for p in 0..PROCESSES.min(ops - written) {
            let key = rng.below(KEYS);
            let kind = rng.below(10);
            let t = start + p * 10;
            match kind {
                0..=4 => {
                    let policy = policies[rng.below(4) as usize];
                    writeln!(
                        out,
                        r#"{{"process":{p},"type":"invoke","op":"read","key":"k{key}","session":"s{p}","policy":"{policy}","time":{t}}}"#
                    )?;
                    round_ops.push((p, key, 0, before[key as usize], 0));
                }
                5..=7 => {
                    let expect = version[key as usize];
                    writeln!(
                        out,
                        r#"{{"process":{p},"type":"invoke","op":"cas","key":"k{key}","session":"s{p}","expect":{expect},"idem":"w{round}-{p}","time":{t}}}"#
                    )?;
                    version[key as usize] += 1;
                    round_ops.push((p, key, 1, version[key as usize], 0));
                }
                _ => {
                    writeln!(
                        out,
                        r#"{{"process":{p},"type":"invoke","op":"write","key":"k{key}","session":"s{p}","idem":"w{round}-{p}","time":{t}}}"#
                    )?;
                    let info = rng.below(100) == 0;
                    let applied = !info || rng.below(2) == 0;
                    if applied {
                        version[key as usize] += 1;
                    }
                    round_ops.push((p, key, if info { 3 } else { 2 }, version[key as usize], 0));
                }
            }
        }
        for &(p, key, kind, v, _) in &round_ops {
            let t = start + 5_000 + p * 10;
            match kind {
                0 => writeln!(
                    out,
                    r#"{{"process":{p},"type":"ok","op":"read","key":"k{key}","session":"s{p}","version":{v},"region":"r{}","time":{t}}}"#,
                    p % 3
                )?,
                1 => writeln!(
                    out,
                    r#"{{"process":{p},"type":"ok","op":"cas","key":"k{key}","session":"s{p}","version":{v},"time":{t}}}"#
                )?,
                2 => writeln!(
                    out,
                    r#"{{"process":{p},"type":"ok","op":"write","key":"k{key}","session":"s{p}","version":{v},"time":{t}}}"#
                )?,
                _ => writeln!(
                    out,
                    r#"{{"process":{p},"type":"info","op":"write","key":"k{key}","session":"s{p}","time":{t}}}"#
                )?,
            }
        }
        written += round_ops.len() as u64;
        round += 1;
    }
    out.flush()?;
    Ok(written)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut ops = 1_000_000;
    while let Some(a) = args.next() {
        if a == "--ops" {
            ops = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--ops takes a number");
        }
    }
    let dir = std::env::temp_dir().join(format!("quorate-checker-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("history.jsonl");
    let t = Instant::now();
    let n = generate(&path, ops).expect("generate");
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "generated {n} operations ({:.0} MB) in {:.2?}",
        size as f64 / 1e6,
        t.elapsed()
    );
    let rss_before = peak_rss_mb();
    let cpu = cpu_time();
    let t = Instant::now();
    let report = check(BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(&path).expect("open"),
    ))
    .expect("valid history");
    let elapsed = t.elapsed();
    let cpu = cpu_time() - cpu;
    println!(
        "checked {} operations in {:.2?} ({:.2?} CPU, {:.2} M ops/s); peak RSS {:.0} MB (before the check: {:.0} MB); anomalies: {}",
        report.ops,
        elapsed,
        cpu,
        report.ops as f64 / elapsed.as_secs_f64() / 1e6,
        peak_rss_mb(),
        rss_before,
        report.total()
    );
    assert_eq!(report.ops, n);
    assert_eq!(
        report.total(),
        0,
        "the generated history is valid:\n{}",
        report.render()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
