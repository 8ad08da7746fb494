//! quorate-spanner against the raw gcloud-spanner client on the Cloud
//! Spanner emulator, in one run. The emulator is not Spanner: read the
//! ratios, not the absolute numbers.
//!
//! `eval "$(scripts/spanner start)" && cargo bench -p quorate-spanner --bench versus_raw`
//!
//! Strong point reads at concurrency 1 and 8: quorate's `Strong` read (a
//! unary `ExecuteSql` on a session it holds) against two raw sides, the
//! same unary `ExecuteSql` on a held session through gcloud-spanner's
//! low-level client (like for like: what quorate adds), and the library's
//! own single-use query on its session pool (a streaming
//! `ExecuteStreamingSql`: what an application would write); and a read followed by a
//! conditional update at concurrency 1 (the emulator runs one read-write
//! transaction at a time). Raw: a single-use strong read, then a read-write
//! transaction that checks the version and writes the row. quorate: a
//! `Strong` read, then an `IfVersion` write, whose transaction also reads
//! and writes the idempotency row; the update is also compared with raw
//! code that does the same. Mirrored order rotated by one each round, at
//! least three rounds of one second (a multiple of the operations
//! compared).

use std::time::Duration;

use gcloud_googleapis::spanner::v1::transaction_options::read_only::TimestampBound;
use gcloud_googleapis::spanner::v1::transaction_options::{self, ReadOnly};
use gcloud_googleapis::spanner::v1::{
    transaction_selector, CreateSessionRequest, ExecuteSqlRequest, TransactionOptions,
    TransactionSelector, Type, TypeCode,
};
use prost_types::{value::Kind, Struct};
use quorate_spanner::gcloud_spanner::apiv1::conn_pool::ConnectionManager;
use quorate_spanner::gcloud_spanner::client::Client as Raw;
use quorate_spanner::gcloud_spanner::client::ClientConfig;
use quorate_spanner::gcloud_spanner::mutation::{insert, insert_or_update};
use quorate_spanner::gcloud_spanner::statement::Statement;
use quorate_spanner::gcloud_spanner::value::CommitTimestamp;
use quorate_spanner::paired::{
    counted, header, interleaved, key, op, read_then_update, row, run_counted, strong_read,
};
use quorate_spanner::{
    Client, IdempotencyKey, Precondition, SpannerBackend, SpannerConfig, WriteOptions,
};

const RUN: Duration = Duration::from_secs(1);
const ROUNDS: usize = 3;

/// The low-level client and one session held for the whole run: the same
/// request quorate's reads make, without quorate.
struct Unary {
    conn: ConnectionManager,
    session: String,
}

impl Unary {
    async fn new(database: &str) -> Unary {
        let config = ClientConfig::default();
        let conn = ConnectionManager::new(
            1,
            &config.environment,
            &config.endpoint,
            &Default::default(),
        )
        .await
        .unwrap();
        let session = conn
            .conn()
            .create_session(
                CreateSessionRequest {
                    database: database.to_owned(),
                    session: None,
                },
                true,
                None,
            )
            .await
            .unwrap()
            .into_inner()
            .name;
        Unary { conn, session }
    }

    async fn read(&self, key: &str) -> i64 {
        let request = ExecuteSqlRequest {
            session: self.session.clone(),
            transaction: Some(TransactionSelector {
                selector: Some(transaction_selector::Selector::SingleUse(
                    TransactionOptions {
                        mode: Some(transaction_options::Mode::ReadOnly(ReadOnly {
                            return_read_timestamp: true,
                            timestamp_bound: Some(TimestampBound::Strong(true)),
                        })),
                        ..Default::default()
                    },
                )),
            }),
            sql: "SELECT version, value FROM quorate_records WHERE key = @key".to_owned(),
            params: Some(Struct {
                fields: [(
                    "key".to_owned(),
                    prost_types::Value {
                        kind: Some(Kind::StringValue(key.to_owned())),
                    },
                )]
                .into(),
            }),
            param_types: [(
                "key".to_owned(),
                Type {
                    code: TypeCode::String as i32,
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        let result = self
            .conn
            .conn()
            .execute_sql(request, true, None)
            .await
            .unwrap()
            .into_inner();
        let row = &result.rows[0].values;
        match &row[0].kind {
            Some(Kind::StringValue(v)) => v.parse().unwrap(),
            other => panic!("version is {other:?}"),
        }
    }
}

async fn raw_version(raw: &Raw, key: &str) -> i64 {
    let mut tx = raw.single().await.unwrap();
    let mut stmt = Statement::new("SELECT version, value FROM quorate_records WHERE key = @key");
    stmt.add_param("key", &key);
    let mut rows = tx.query(stmt).await.unwrap();
    let row = rows.next().await.unwrap().unwrap();
    let _value: Vec<u8> = row.column(1).unwrap();
    row.column::<i64>(0).unwrap()
}

/// A raw conditional update, serialized as the emulator requires.
async fn raw_update(raw: &Raw, lock: &tokio::sync::Mutex<()>, key: &str, idempotent: bool) {
    let expected = raw_version(raw, key).await;
    let _serial = lock.lock().await;
    let mut tx = raw.begin_read_write_transaction().await.unwrap();
    if idempotent {
        let idem = IdempotencyKey::generate();
        let mut stmt = Statement::new(
            "SELECT version FROM quorate_records_idempotency WHERE idem_key = @idem",
        );
        stmt.add_param("idem", &idem.as_str());
        let mut rows = tx.query(stmt).await.unwrap();
        assert!(rows.next().await.unwrap().is_none());
        drop(rows);
        let expires = time_in_a_day();
        tx.buffer_write(vec![insert(
            "quorate_records_idempotency",
            &[
                "idem_key",
                "version",
                "region",
                "committed_at",
                "record_key",
                "expires_at",
                "fenced",
            ],
            &[
                &idem.as_str(),
                &(expected + 1),
                &"us-east1",
                &CommitTimestamp::new(),
                &key,
                &expires,
                &false,
            ],
        )]);
    }
    let mut stmt = Statement::new("SELECT version FROM quorate_records WHERE key = @key");
    stmt.add_param("key", &key);
    let mut rows = tx.query(stmt).await.unwrap();
    let current: i64 = rows.next().await.unwrap().unwrap().column(0).unwrap();
    drop(rows);
    assert_eq!(current, expected, "one writer per key");
    let value: Vec<u8> = b"{}".to_vec();
    tx.buffer_write(vec![insert_or_update(
        "quorate_records",
        &["key", "version", "value", "written_at"],
        &[&key, &(expected + 1), &value, &CommitTimestamp::new()],
    )]);
    tx.end::<(), quorate_spanner::gcloud_spanner::client::Error>(Ok(()), None)
        .await
        .unwrap();
}

fn time_in_a_day() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(1)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let database = std::env::var("QUORATE_SPANNER_DATABASE")
        .expect("QUORATE_SPANNER_DATABASE is not set: eval \"$(scripts/spanner start)\" first");
    let mut config = SpannerConfig::new(&database, &["us-east1"], "us-east1").unwrap();
    config.serialize_read_write = true;
    let backend = SpannerBackend::connect(config).await.unwrap();
    backend.create_tables().await.unwrap();
    let raw = backend.spanner().clone();
    let client = Client::new(backend, quorate_spanner::ClientConfig::default()).unwrap();
    let unary = std::sync::Arc::new(Unary::new(&database).await);
    for t in 0..8 {
        client
            .write(
                &client.session(),
                &key(t),
                "{}".into(),
                Precondition::Any,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
    }
    header();
    for concurrency in [1usize, 8] {
        let r = raw.clone();
        let raw_read = op(move |t, _| {
            let r = r.clone();
            async move {
                raw_version(&r, &key(t)).await;
            }
        });
        let u = unary.clone();
        let unary_read = op(move |t, _| {
            let u = u.clone();
            async move {
                std::hint::black_box(u.read(&key(t)).await);
            }
        });
        let quorate_read = strong_read(&client);
        if let Some((name, n)) = counted() {
            if concurrency == 8 {
                let ops = [
                    ("raw_read", &raw_read),
                    ("raw_unary_read", &unary_read),
                    ("quorate_read", &quorate_read),
                ];
                run_counted(concurrency, &name, n, &ops).await;
                return;
            }
            continue;
        }
        let [r, u_r, q_r] = interleaved(
            concurrency,
            RUN,
            ROUNDS,
            [&raw_read, &unary_read, &quorate_read],
        )
        .await;
        row("strong point read", concurrency, u_r, q_r);
        row("  vs raw pooled query", concurrency, r, q_r);
    }
    let lock = std::sync::Arc::new(tokio::sync::Mutex::new(()));
    let ops = [false, true].map(|idempotent| {
        let (r, lock) = (raw.clone(), lock.clone());
        op(move |t, _| {
            let (r, lock) = (r.clone(), lock.clone());
            async move { raw_update(&r, &lock, &key(t), idempotent).await }
        })
    });
    let quorate_update = read_then_update(&client);
    let [r, r_i, q_u] = interleaved(1, RUN, ROUNDS, [&ops[0], &ops[1], &quorate_update]).await;
    row("read + conditional update", 1, r, q_u);
    row("  vs raw + idempotency row", 1, r_i, q_u);
}
