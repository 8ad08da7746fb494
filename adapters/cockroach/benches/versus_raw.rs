//! quorate-cockroach against raw tokio-postgres on the same PostgreSQL
//! server, same pool size, in one run.
//!
//! `eval "$(scripts/pg start)" && cargo bench -p quorate-cockroach --bench versus_raw`
//!
//! Each pair is measured in the order raw, quorate, quorate, raw and
//! averaged. For each of concurrency 1 and 32: strong point reads (quorate: the
//! primary, with the read's WAL point; raw: a prepared `SELECT`) and
//! conditional updates (quorate: the conditional write with its idempotency
//! record and the commit LSN; raw: a prepared `UPDATE … WHERE version = $3`).
//! The conditional update is also compared with raw tokio-postgres writing
//! the same idempotency row in the same statement, which separates what the
//! client costs from what durable idempotency costs the database. Then the
//! share of session reads a caught-up standby serves.
//! `QUORATE_BENCH_FIXED_TIMEOUTS=1` runs the client without adaptive attempt
//! timeouts.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use quorate_cockroach::{
    Client, ClientConfig, Dialect, Endpoint, PgBackend, PgConfig, Precondition, ReadPolicy, Region,
    ReplicaRole, WriteOptions,
};
use tokio_postgres::NoTls;

const RUN: Duration = Duration::from_secs(2);

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: eval \"$(scripts/pg start)\" first"))
}

fn raw_pool(connection: &str, size: usize) -> Pool {
    let config = tokio_postgres::Config::from_str(connection).unwrap();
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager).max_size(size).build().unwrap()
}

fn quorate_client(size: usize) -> Client<PgBackend> {
    let endpoints = vec![
        Endpoint {
            region: Region::new("eu").unwrap(),
            role: quorate_cockroach::Role::Primary,
            connection: env("QUORATE_PG_PRIMARY"),
        },
        Endpoint {
            region: Region::new("us").unwrap(),
            role: quorate_cockroach::Role::Standby,
            connection: env("QUORATE_PG_STANDBY1"),
        },
    ];
    let mut config = PgConfig::new("bench-cluster", Dialect::Postgres, endpoints, "us").unwrap();
    config.pool_size = size;
    let adaptive = std::env::var("QUORATE_BENCH_FIXED_TIMEOUTS").is_err();
    Client::new(
        PgBackend::new(config).unwrap(),
        ClientConfig {
            adaptive_timeouts: adaptive,
            ..ClientConfig::default()
        },
    )
    .unwrap()
}

type Op = Arc<dyn Fn(usize, u64) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

fn op<F, Fut>(f: F) -> Op
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |t, i| Box::pin(f(t, i)))
}

/// Runs `concurrency` loops of `op(task, iteration)` for RUN; ops per second.
async fn throughput(concurrency: usize, op: &Op) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (op, done) = (op.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while start.elapsed() < RUN {
                    op(t, i).await;
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Measures `a` and `b` in the order a, b, b, a so that neither profits
/// from going first (warm caches) or last (a bloated table); the mean of
/// each.
async fn paired(concurrency: usize, a: &Op, b: &Op) -> (f64, f64) {
    let a1 = throughput(concurrency, a).await;
    let b1 = throughput(concurrency, b).await;
    let b2 = throughput(concurrency, b).await;
    let a2 = throughput(concurrency, a).await;
    ((a1 + a2) / 2.0, (b1 + b2) / 2.0)
}

fn row(name: &str, concurrency: usize, raw: f64, quorate: f64) {
    println!(
        "{name:<28} {concurrency:>6} {raw:>12.0} {quorate:>12.0} {:>7.3}",
        quorate / raw
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let primary = env("QUORATE_PG_PRIMARY");
    let setup = quorate_client(4);
    setup.backend().create_schema().await.unwrap();
    let session = setup.session();
    for t in 0..32 {
        let _ = setup
            .write(
                &session,
                &format!("bench-{t}"),
                "{}".into(),
                Precondition::Any,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
    }
    println!(
        "{:<28} {:>6} {:>12} {:>12} {:>7}",
        "operation", "conc.", "raw ops/s", "quorate ops/s", "ratio"
    );
    for concurrency in [1usize, 32] {
        let raw = raw_pool(&primary, concurrency);
        let client = quorate_client(concurrency);

        let pool = raw.clone();
        let raw_read = op(move |t, _| {
            let pool = pool.clone();
            async move {
                let c = pool.get().await.unwrap();
                let st = c
                    .prepare_cached("SELECT version, value FROM quorate_records WHERE key = $1")
                    .await
                    .unwrap();
                c.query_opt(&st, &[&format!("bench-{t}")]).await.unwrap();
            }
        });
        let q = client.clone();
        let quorate_read = op(move |t, _| {
            let q = q.clone();
            async move {
                q.read(&q.session(), &format!("bench-{t}"), ReadPolicy::Strong)
                    .await
                    .unwrap();
            }
        });
        let (r, q_r) = paired(concurrency, &raw_read, &quorate_read).await;
        row("strong point read", concurrency, r, q_r);

        // Conditional updates, each task on its own key.
        let pool = raw.clone();
        let raw_update = op(move |t, _| {
            let pool = pool.clone();
            async move {
                let c = pool.get().await.unwrap();
                let key = format!("bench-{t}");
                let read = c
                    .prepare_cached("SELECT version FROM quorate_records WHERE key = $1")
                    .await
                    .unwrap();
                let version: i64 = c.query_one(&read, &[&key]).await.unwrap().get(0);
                let st = c
                    .prepare_cached(
                        "UPDATE quorate_records SET value = $2, version = version + 1 WHERE key = $1 AND version = $3 RETURNING version",
                    )
                    .await
                    .unwrap();
                let value: &[u8] = b"{}";
                c.query_one(&st, &[&key, &value, &version]).await.unwrap();
            }
        });
        // The same with an idempotency row in the same statement, by hand:
        // what the database itself costs.
        let pool = raw.clone();
        let raw_idempotent = op(move |t, _| {
            let pool = pool.clone();
            async move {
                let c = pool.get().await.unwrap();
                let key = format!("bench-{t}");
                let read = c
                    .prepare_cached("SELECT version FROM quorate_records WHERE key = $1")
                    .await
                    .unwrap();
                let version: i64 = c.query_one(&read, &[&key]).await.unwrap().get(0);
                let st = c
                    .prepare_cached(
                        "WITH up AS (UPDATE quorate_records SET value = $2, version = version + 1 \
                         WHERE key = $1 AND version = $3 RETURNING version) \
                         INSERT INTO quorate_records_idempotency (idem_key, record_key, version, region, expires_at) \
                         SELECT $4, $1, version, 'eu', now() + INTERVAL '1 day' FROM up RETURNING version",
                    )
                    .await
                    .unwrap();
                let value: &[u8] = b"{}";
                let idem = quorate_cockroach::IdempotencyKey::generate();
                c.query_one(&st, &[&key, &value, &version, &idem.as_str()])
                    .await
                    .unwrap();
            }
        });
        let q = client.clone();
        let quorate_update = op(move |t, _| {
            let q = q.clone();
            async move {
                let s = q.session();
                let key = format!("bench-{t}");
                let v = q
                    .read(&s, &key, ReadPolicy::Strong)
                    .await
                    .unwrap()
                    .version()
                    .unwrap();
                q.write(
                    &s,
                    &key,
                    "{}".into(),
                    Precondition::IfVersion(v),
                    &WriteOptions::default(),
                )
                .await
                .unwrap();
            }
        });
        let (r, q_u) = paired(concurrency, &raw_update, &quorate_update).await;
        row("read + conditional update", concurrency, r, q_u);
        let (r, q_u) = paired(concurrency, &raw_idempotent, &quorate_update).await;
        row("  vs raw + idempotency row", concurrency, r, q_u);
    }

    // Session reads once the standby has caught up.
    let client = quorate_client(8);
    let session = client.session();
    let c = client
        .write(
            &session,
            "bench-session",
            "{}".into(),
            Precondition::Any,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut on_standby = 0;
    let total = 2000;
    for _ in 0..total {
        let r = client
            .read(&session, "bench-session", ReadPolicy::Session)
            .await
            .unwrap();
        assert!(r.version() >= Some(c.version));
        if r.freshness.role == ReplicaRole::Follower {
            on_standby += 1;
        }
    }
    println!(
        "session reads served by the standby once caught up: {on_standby}/{total} ({:.1}%), one statement each",
        100.0 * on_standby as f64 / total as f64
    );
}
