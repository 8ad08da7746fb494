//! Paired throughput measurement for adapter benchmarks (feature
//! `testing`): quorate and the raw driver measured in one run, in mirrored
//! order, so that a noisy machine affects both sides alike; and the
//! operations every adapter measures on the quorate side.
//!
//! Each measurement starts from a quiet process: after one, the next waits
//! [`SETTLE`], longer than a client's deadline sweeper outlives its last
//! request, so that no side runs beside a timer the side before it left.
//!
//! For instruction counts, `QUORATE_BENCH_COUNT=<name>:<n>` asks a
//! benchmark to run only the operation `name`, exactly `n` times, and exit
//! ([`counted`], [`run_counted`]); `scripts/instructions` runs it under
//! callgrind at two lengths and reports the marginal instructions per
//! operation.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{Backend, ReadPlan};
use crate::client::{Client, WriteOptions};
use crate::policy::ReadPolicy;
use crate::record::{Precondition, ReplicaRole};
use crate::topology::Region;

/// The key task `t` works on: `bench-<t>`. Adapters' benchmarks seed these.
pub fn key(task: usize) -> String {
    format!("bench-{task}")
}

/// The concurrency levels to measure: `QUORATE_BENCH_CONCURRENCY=N` picks
/// one, otherwise `default`.
pub fn levels(default: &[usize]) -> Vec<usize> {
    match std::env::var("QUORATE_BENCH_CONCURRENCY") {
        Ok(v) => vec![v
            .parse()
            .expect("QUORATE_BENCH_CONCURRENCY must be a number")],
        Err(_) => default.to_vec(),
    }
}

/// Whether `QUORATE_BENCH_READS_ONLY` asks to skip the writes.
pub fn reads_only() -> bool {
    std::env::var_os("QUORATE_BENCH_READS_ONLY").is_some()
}

/// A `Strong` read of the task's key through `client`, in a new session.
pub fn strong_read<B: Backend + Clone>(client: &Client<B>) -> Op {
    let client = client.clone();
    op(move |t, _| {
        let client = client.clone();
        async move {
            client
                .read(&client.session(), &key(t), ReadPolicy::Strong)
                .await
                .expect("strong read");
        }
    })
}

/// The same read made on the backend directly, at the leader of
/// `region`: what the adapter costs without the client.
pub fn adapter_read<B: Backend + Clone>(backend: &B, region: &Region) -> Op {
    let (backend, region) = (backend.clone(), region.clone());
    op(move |t, _| {
        let (backend, region) = (backend.clone(), region.clone());
        async move {
            let key = key(t);
            let plan = ReadPlan {
                key: &key,
                region: &region,
                role: ReplicaRole::Leader,
                policy: ReadPolicy::Strong,
                floor: Default::default(),
                deadline: tokio::time::Instant::now() + Duration::from_secs(1),
            };
            backend.read(&plan).await.expect("adapter read");
        }
    })
}

/// A `Strong` read of the task's key, then an `IfVersion` write of `{}`
/// on the version read (one writer per key, so it always applies).
pub fn read_then_update<B: Backend + Clone>(client: &Client<B>) -> Op {
    let client = client.clone();
    op(move |t, _| {
        let client = client.clone();
        async move {
            let session = client.session();
            let key = key(t);
            let version = client
                .read(&session, &key, ReadPolicy::Strong)
                .await
                .expect("strong read")
                .version()
                .expect("the key exists");
            client
                .write(
                    &session,
                    &key,
                    "{}".into(),
                    Precondition::IfVersion(version),
                    &WriteOptions::default(),
                )
                .await
                .expect("conditional update");
        }
    })
}

/// One operation: `op(task, iteration)`.
pub type Op = Arc<dyn Fn(usize, u64) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Wraps an async closure as an [`Op`].
pub fn op<F, Fut>(f: F) -> Op
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |t, i| Box::pin(f(t, i)))
}

/// The pause before each measurement: longer than a client's deadline
/// sweeper lives on after its last attempt.
pub const SETTLE: Duration =
    Duration::from_millis(crate::client::deadline::SWEEPER_LINGER.as_millis() as u64 + 200);

const _: () = assert!(SETTLE.as_millis() > crate::client::deadline::SWEEPER_LINGER.as_millis());

/// The operation and count `QUORATE_BENCH_COUNT=<name>:<n>` asks for, if
/// any.
///
/// # Panics
///
/// When the variable is set but not of that form (a benchmark's
/// misconfiguration, reported at once).
pub fn counted() -> Option<(String, u64)> {
    let value = std::env::var("QUORATE_BENCH_COUNT").ok()?;
    let (name, n) = value
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("QUORATE_BENCH_COUNT={value:?}: expected <operation>:<count>"));
    let n = n
        .parse()
        .unwrap_or_else(|_| panic!("QUORATE_BENCH_COUNT={value:?}: the count is not a number"));
    Some((name.to_owned(), n))
}

/// Runs the operation named `name` among `ops` exactly `total` times over
/// `concurrency` tasks (for instruction counts, which need a fixed amount
/// of work, not a fixed time).
///
/// # Panics
///
/// When no operation has that name; the message lists the names.
pub async fn run_counted(concurrency: usize, name: &str, total: u64, ops: &[(&str, &Op)]) {
    let Some((_, op)) = ops.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = ops.iter().map(|(n, _)| *n).collect();
        panic!(
            "no operation {name:?} here; operations: {}",
            names.join(", ")
        );
    };
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|t| {
            let (op, next) = ((*op).clone(), next.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    op(t, i).await;
                    i += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        if let Err(e) = t.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Runs `concurrency` tasks, each looping over `op`, for `run`; operations
/// per second.
pub async fn throughput(concurrency: usize, run: Duration, op: &Op) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (op, done) = (op.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while start.elapsed() < run {
                    op(t, i).await;
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        // A panicking operation is a failed benchmark.
        if let Err(e) = t.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Measures the operations in mirrored order, `rounds` times, `run` each,
/// and returns the mean throughput of each.
///
/// Each measurement waits [`SETTLE`] first. Mirroring (a, b, c, c, b, a) cancels a drift that is linear over a
/// round: none profits from going first (warm caches) or last (a fuller
/// table). But the operation in the middle runs twice back to back, and a
/// second run after itself finds caches, pool and statements warm for it.
/// So each round rotates the order by one (b, c, a, a, c, b; then c, a, b,
/// b, a, c): over `N` rounds, every operation takes every position once.
/// `rounds` is rounded up to a multiple of `N` to keep that balance.
pub async fn interleaved<const N: usize>(
    concurrency: usize,
    run: Duration,
    rounds: usize,
    ops: [&Op; N],
) -> [f64; N] {
    interleaved_settling(SETTLE, concurrency, run, rounds, ops).await
}

async fn interleaved_settling<const N: usize>(
    settle: Duration,
    concurrency: usize,
    run: Duration,
    rounds: usize,
    ops: [&Op; N],
) -> [f64; N] {
    let rounds = rounds.max(1).div_ceil(N.max(1)) * N.max(1);
    let mut sums = [0.0; N];
    for round in 0..rounds {
        for i in rotated_mirror(N, round) {
            tokio::time::sleep(settle).await;
            sums[i] += throughput(concurrency, run, ops[i]).await;
        }
    }
    sums.map(|s| s / (2 * rounds) as f64)
}

/// The order of round `round` over `n` operations: the rotation by `round`,
/// then its mirror.
fn rotated_mirror(n: usize, round: usize) -> impl Iterator<Item = usize> {
    let forward = (0..n).map(move |i| (i + round) % n.max(1));
    forward.clone().chain(forward.rev())
}

/// Prints one result line: name, concurrency, raw and quorate throughput,
/// and their ratio.
pub fn row(name: &str, concurrency: usize, raw: f64, quorate: f64) {
    println!(
        "{name:<28} {concurrency:>6} {raw:>12.0} {quorate:>12.0} {:>7.3}",
        quorate / raw
    );
}

/// Prints the header of [`row`]'s table.
pub fn header() {
    println!(
        "{:<28} {:>6} {:>12} {:>12} {:>7}",
        "operation", "conc.", "raw ops/s", "quorate ops/s", "ratio"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_counted_run_makes_exactly_that_many_operations() {
        let calls = Arc::new(AtomicU64::new(0));
        let counting = {
            let calls = calls.clone();
            op(move |_, _| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        };
        let idle = op(|_, _| async {});
        run_counted(
            32,
            "counting",
            1001,
            &[("idle", &idle), ("counting", &counting)],
        )
        .await;
        assert_eq!(calls.load(Ordering::Relaxed), 1001);
    }

    #[tokio::test]
    async fn measures_each_operation_in_mirrored_rounds() {
        let calls: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let ops: Vec<Op> = (0..2)
            .map(|k| {
                let calls = calls.clone();
                op(move |_, _| {
                    let calls = calls.clone();
                    async move {
                        calls[k].fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(1 + 4 * k as u64)).await;
                    }
                })
            })
            .collect();
        let [fast, slow] = interleaved_settling(
            Duration::from_millis(5),
            2,
            Duration::from_millis(60),
            2,
            [&ops[0], &ops[1]],
        )
        .await;
        assert!(fast > slow * 1.5, "{fast} vs {slow}");
        assert!(calls[0].load(Ordering::Relaxed) > calls[1].load(Ordering::Relaxed));
    }
}
