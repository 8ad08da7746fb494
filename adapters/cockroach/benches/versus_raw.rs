//! quorate-cockroach against raw tokio-postgres on the same PostgreSQL
//! server, same pool size, in one run.
//!
//! `eval "$(scripts/pg start)" && cargo bench -p quorate-cockroach --bench versus_raw`
//!
//! Each comparison is measured in mirrored order (raw, quorate, quorate,
//! raw), rotated by one each round, three rounds of one second per
//! measurement, and averaged (`paired::interleaved`). For each of
//! concurrency 1 and 32: strong point reads (quorate: the
//! primary, with the read's WAL point; raw: a prepared `SELECT`) and
//! conditional updates (quorate: the conditional write with its idempotency
//! record and the commit LSN; raw: a prepared `UPDATE … WHERE version = $3`).
//! The conditional update is also compared with raw tokio-postgres sending
//! quorate's own statements (the same read, and the same write with its
//! idempotency row), which separates what the client and the adapter cost
//! from what durable idempotency costs the database. A multi-record write
//! (two records in one transaction) is compared the same two ways. Then
//! the share of session reads a caught-up standby serves.
//! `QUORATE_BENCH_CONCURRENCY=N` measures only concurrency N;
//! `QUORATE_BENCH_READS_ONLY=1` only the reads.
//! `QUORATE_BENCH_FIXED_TIMEOUTS=1` runs the client without adaptive attempt
//! timeouts. `QUORATE_BENCH_COUNT=<operation>:<n>` runs one operation
//! exactly `n` times and exits (`scripts/instructions` counts its
//! instructions).

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use quorate_cockroach::paired::{
    adapter_read, counted, header, interleaved, key, levels, op, read_then_update, reads_only, row,
    run_counted, strong_read,
};
use quorate_cockroach::sql::commit_point;
use quorate_cockroach::{
    Client, ClientConfig, Dialect, Endpoint, PgBackend, PgConfig, Precondition, ReadPolicy, Region,
    ReplicaRole, Tables, Version, WriteOptions,
};
use tokio_postgres::NoTls;

/// Length of one measurement.
const RUN: Duration = Duration::from_secs(1);
/// Rounds of the mirrored order per comparison.
const ROUNDS: usize = 3;

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
            // Plain, as the raw side connects (NoTls).
            connection: format!("{} sslmode=disable", env("QUORATE_PG_PRIMARY")),
        },
        Endpoint {
            region: Region::new("us").unwrap(),
            role: quorate_cockroach::Role::Standby,
            // Plain, as the raw side connects (NoTls).
            connection: format!("{} sslmode=disable", env("QUORATE_PG_STANDBY1")),
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
                &key(t),
                "{}".into(),
                Precondition::Any,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
    }
    header();
    let levels = levels(&[1, 32]);
    for concurrency in levels {
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
                // Decoded as an application would use it.
                let row = c.query_opt(&st, &[&key(t)]).await.unwrap();
                let record = row.map(|r| (r.get::<_, i64>(0), r.get::<_, Vec<u8>>(1)));
                std::hint::black_box(record);
            }
        });
        let quorate_read = strong_read(&client);
        // The adapter alone, without the client: what the client costs.
        let adapter_read = adapter_read(client.backend(), &Region::new("eu").unwrap());

        // Conditional updates, each task on its own key.
        let pool = raw.clone();
        let raw_update = op(move |t, _| {
            let pool = pool.clone();
            async move {
                let c = pool.get().await.unwrap();
                let key = key(t);
                // The same read as quorate's: version and value.
                let read = c
                    .prepare_cached("SELECT version, value FROM quorate_records WHERE key = $1")
                    .await
                    .unwrap();
                let row = c.query_one(&read, &[&key]).await.unwrap();
                let (version, value): (i64, Vec<u8>) = (row.get(0), row.get(1));
                std::hint::black_box(value);
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
        // quorate's own statements sent by raw tokio-postgres: the same read
        // and the same write with its idempotency row, and the commit point
        // read after it in the same round trip. What the database itself
        // costs, without the client and the adapter.
        let pool = raw.clone();
        let write_sql = Tables::new("quorate_records").unwrap().write(
            Dialect::Postgres,
            Precondition::IfVersion(Version(1)),
            false,
        );
        let raw_idempotent = op(move |t, _| {
            let (pool, write_sql) = (pool.clone(), write_sql.clone());
            async move {
                let c = pool.get().await.unwrap();
                let key = key(t);
                let read = c
                    .prepare_cached("SELECT version, value FROM quorate_records WHERE key = $1")
                    .await
                    .unwrap();
                let row = c.query_one(&read, &[&key]).await.unwrap();
                let (version, _value): (i64, Vec<u8>) = (row.get(0), row.get(1));
                let st = c.prepare_cached(&write_sql).await.unwrap();
                let value: &[u8] = b"{}";
                let idem = quorate_cockroach::IdempotencyKey::generate();
                let ttl: i64 = 86_400;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
                    [&key, &value, &idem.as_str(), &version, &"eu", &ttl, &key];
                let point_st = c
                    .prepare_cached(commit_point(Dialect::Postgres))
                    .await
                    .unwrap();
                let (row, point) =
                    tokio::join!(c.query_one(&st, &params), c.query_one(&point_st, &[]),);
                assert!(
                    row.unwrap().get::<_, Option<i64>>(0).is_some(),
                    "the write applied"
                );
                std::hint::black_box(point.unwrap().get::<_, String>(0));
            }
        });
        let quorate_update = read_then_update(&client);

        // A multi-record write: each task writes its two records in one
        // transaction. Raw: BEGIN, two upserts, COMMIT. quorate: the same
        // transaction with the versions and the idempotency row, then the
        // commit point; also against raw tokio-postgres sending those same
        // statements one after another.
        let pool = raw.clone();
        let raw_tx = op(move |t, _| {
            let pool = pool.clone();
            async move {
                let mut c = pool.get().await.unwrap();
                let st = c
                    .prepare_cached(
                        "INSERT INTO quorate_records AS t (key, value, version) VALUES ($1, $2, 1) \
                         ON CONFLICT (key) DO UPDATE SET value = $2, version = t.version + 1 RETURNING t.version",
                    )
                    .await
                    .unwrap();
                let value: &[u8] = b"{}";
                let tx = c.transaction().await.unwrap();
                for k in [key(t), format!("{}/pair", key(t))] {
                    tx.query_one(&st, &[&k, &value]).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
        });
        let pool = raw.clone();
        let tables = Tables::new("quorate_records").unwrap();
        let statements = (
            tables.apply(Precondition::Any, false),
            tables.record_transaction(),
        );
        let raw_tx_idempotent = op(move |t, _| {
            let (pool, (apply, record)) = (pool.clone(), statements.clone());
            async move {
                let mut c = pool.get().await.unwrap();
                let (apply, record) = (
                    c.prepare_cached(&apply).await.unwrap(),
                    c.prepare_cached(&record).await.unwrap(),
                );
                let point = c
                    .prepare_cached(commit_point(Dialect::Postgres))
                    .await
                    .unwrap();
                let keys = [key(t), format!("{}/pair", key(t))];
                let binding =
                    quorate_cockroach::transaction_binding(keys.iter().map(|k| k.as_str()));
                let idem = quorate_cockroach::IdempotencyKey::generate();
                let (value, zero, ttl): (&[u8], i64, i64) = (b"{}", 0, 86_400);
                let tx = c.transaction().await.unwrap();
                let mut versions = String::new();
                for (i, k) in keys.iter().enumerate() {
                    let v: i64 = tx
                        .query_one(&apply, &[k, &value, &zero])
                        .await
                        .unwrap()
                        .get(0);
                    if i > 0 {
                        versions.push(',');
                    }
                    versions.push_str(&format!("{i}:{v}"));
                }
                tx.execute(
                    &record,
                    &[&idem.as_str(), &binding, &1i64, &"eu", &ttl, &versions],
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
                std::hint::black_box(c.query_one(&point, &[]).await.unwrap().get::<_, String>(0));
            }
        });
        let tx_client = client.clone();
        let quorate_tx = op(move |t, _| {
            let client = tx_client.clone();
            async move {
                let session = client.session();
                let mut tx = client.transaction(&session);
                tx.put(key(t), "{}".into(), Precondition::Any);
                tx.put(format!("{}/pair", key(t)), "{}".into(), Precondition::Any);
                tx.commit().await.unwrap();
            }
        });

        if let Some((name, n)) = counted() {
            let ops = [
                ("raw_read", &raw_read),
                ("quorate_read", &quorate_read),
                ("adapter_read", &adapter_read),
                ("raw_update", &raw_update),
                ("raw_idempotent_update", &raw_idempotent),
                ("quorate_update", &quorate_update),
                ("raw_two_record", &raw_tx),
                ("raw_idempotent_two_record", &raw_tx_idempotent),
                ("quorate_two_record", &quorate_tx),
            ];
            run_counted(concurrency, &name, n, &ops).await;
            return;
        }
        let [r, q_r, a_r] = interleaved(
            concurrency,
            RUN,
            ROUNDS,
            [&raw_read, &quorate_read, &adapter_read],
        )
        .await;
        row("strong point read", concurrency, r, q_r);
        row("  adapter alone (no client)", concurrency, r, a_r);
        if reads_only() {
            continue;
        }
        let [r, r_i, q_u] = interleaved(
            concurrency,
            RUN,
            ROUNDS,
            [&raw_update, &raw_idempotent, &quorate_update],
        )
        .await;
        row("read + conditional update", concurrency, r, q_u);
        row("  vs raw + idempotency row", concurrency, r_i, q_u);
        let [r_t, r_ti, q_t] = interleaved(
            concurrency,
            RUN,
            ROUNDS,
            [&raw_tx, &raw_tx_idempotent, &quorate_tx],
        )
        .await;
        row("two-record write", concurrency, r_t, q_t);
        row("  vs raw + idempotency row", concurrency, r_ti, q_t);
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
