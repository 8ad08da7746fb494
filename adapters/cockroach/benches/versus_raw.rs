//! quorate-cockroach against raw tokio-postgres on the same PostgreSQL
//! server, same pool size, in one run.
//!
//! `eval "$(scripts/pg start)" && cargo bench -p quorate-cockroach --bench versus_raw`
//!
//! For each of concurrency 1 and 32: strong point reads (quorate: the
//! primary, with the read's WAL point; raw: a prepared `SELECT`) and
//! conditional updates (quorate: the conditional write with its idempotency
//! record and the commit LSN; raw: a prepared `UPDATE … WHERE version = $3`).
//! The conditional update is also compared with raw tokio-postgres writing
//! the same idempotency row in the same statement, which separates what the
//! client costs from what durable idempotency costs the database. Then the
//! share of session reads a caught-up standby serves.
//! `QUORATE_BENCH_FIXED_TIMEOUTS=1` runs the client without adaptive attempt
//! timeouts.

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

const RUN: Duration = Duration::from_secs(3);

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

/// Runs `concurrency` loops of `op(task, iteration)` for RUN; ops per second.
async fn throughput<F, Fut>(concurrency: usize, op: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
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
        // Strong point reads.
        let raw = raw_pool(&primary, concurrency);
        let raw_reads = throughput(concurrency, move |t, _| {
            let raw = raw.clone();
            async move {
                let c = raw.get().await.unwrap();
                let st = c
                    .prepare_cached("SELECT version, value FROM quorate_records WHERE key = $1")
                    .await
                    .unwrap();
                c.query_opt(&st, &[&format!("bench-{t}")]).await.unwrap();
            }
        })
        .await;
        let client = quorate_client(concurrency);
        let q = client.clone();
        let quorate_reads = throughput(concurrency, move |t, _| {
            let q = q.clone();
            async move {
                q.read(&q.session(), &format!("bench-{t}"), ReadPolicy::Strong)
                    .await
                    .unwrap();
            }
        })
        .await;
        println!(
            "{:<28} {:>6} {:>12.0} {:>12.0} {:>7.3}",
            "strong point read",
            concurrency,
            raw_reads,
            quorate_reads,
            quorate_reads / raw_reads
        );

        // Conditional updates, each task on its own key.
        let raw = raw_pool(&primary, concurrency);
        let raw_updates = throughput(concurrency, move |t, _| {
            let raw = raw.clone();
            async move {
                let c = raw.get().await.unwrap();
                let key = format!("bench-{t}");
                let read = c.prepare_cached("SELECT version FROM quorate_records WHERE key = $1").await.unwrap();
                let version: i64 = c.query_one(&read, &[&key]).await.unwrap().get(0);
                let st = c
                    .prepare_cached("UPDATE quorate_records SET value = $2, version = version + 1 WHERE key = $1 AND version = $3 RETURNING version")
                    .await
                    .unwrap();
                let value: &[u8] = b"{}";
                c.query_one(&st, &[&key, &value, &version]).await.unwrap();
            }
        })
        .await;
        // The same conditional update with an idempotency row in the same
        // statement, written by hand: what the database itself costs.
        let raw = raw_pool(&primary, concurrency);
        let raw_idempotent = throughput(concurrency, move |t, i| {
            let raw = raw.clone();
            async move {
                let c = raw.get().await.unwrap();
                let key = format!("bench-{t}");
                let read = c.prepare_cached("SELECT version FROM quorate_records WHERE key = $1").await.unwrap();
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
                let idem = format!("raw-{}-{concurrency}-{t}-{i}", std::process::id());
                c.query_one(&st, &[&key, &value, &version, &idem]).await.unwrap();
            }
        })
        .await;
        let q = client.clone();
        let quorate_updates = throughput(concurrency, move |t, _| {
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
        })
        .await;
        println!(
            "{:<28} {:>6} {:>12.0} {:>12.0} {:>7.3}",
            "read + conditional update",
            concurrency,
            raw_updates,
            quorate_updates,
            quorate_updates / raw_updates
        );
        println!(
            "{:<28} {:>6} {:>12.0} {:>12.0} {:>7.3}",
            "  vs raw + idempotency row",
            concurrency,
            raw_idempotent,
            quorate_updates,
            quorate_updates / raw_idempotent
        );
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
