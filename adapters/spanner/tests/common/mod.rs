//! The emulator as `scripts/spanner start` runs it.

#![allow(dead_code)]

use quorate_spanner::{
    Client, ClientConfig, Precondition, SpannerBackend, SpannerConfig, Version, WriteOptions,
};
use tokio::sync::OnceCell;

/// The emulator's address and the database, or `None` outside CI when the
/// emulator is not running (a failure in CI: a missing server never passes
/// there).
pub fn emulator() -> Option<(String, String)> {
    let [host, database] = quorate_spanner::conformance::server_env(
        ["SPANNER_EMULATOR_HOST", "QUORATE_SPANNER_DATABASE"],
        "the Spanner emulator",
        "scripts/spanner",
    )?;
    Some((host, database))
}

pub fn config(database: &str, local: &str) -> SpannerConfig {
    let mut c = SpannerConfig::new(
        database,
        &["us-central1", "us-east1", "europe-west1"],
        local,
    )
    .unwrap();
    c.serialize_read_write = true;
    c
}

static TABLES: OnceCell<()> = OnceCell::const_new();

pub async fn backend(database: &str, local: &str) -> SpannerBackend {
    let backend = SpannerBackend::connect(config(database, local))
        .await
        .expect("connect to the emulator");
    TABLES
        .get_or_init(|| async {
            backend.create_tables().await.expect("create the tables");
        })
        .await;
    backend
}

/// A client with the default configuration over `backend(database, local)`.
pub async fn client(database: &str, local: &str) -> Client<SpannerBackend> {
    Client::new(backend(database, local).await, ClientConfig::default()).unwrap()
}

/// A key no other test or run uses.
pub fn key(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{name}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates `key` with the value `0`; its version.
pub async fn create(client: &Client<SpannerBackend>, key: &str) -> Version {
    client
        .write(
            &client.session(),
            key,
            "0".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .expect("create the key")
        .version
}

/// The conformance suite's query path: `sql` (a read of one row's version,
/// `@k` the key within its table, which is `key` less `strip`) through
/// `SpannerQuery::spanner_query`.
pub fn sql_query_hook(
    sql: String,
    strip: &'static str,
) -> quorate_spanner::conformance::QueryHook<SpannerBackend> {
    use quorate_spanner::{SpannerQuery, SqlRead};
    quorate_spanner::conformance::QueryHook::new(
        move |client: Client<SpannerBackend>, session, policy, key: String| {
            let sql = sql.clone();
            async move {
                let row_key = key.strip_prefix(strip).unwrap_or(&key).to_owned();
                let read = SqlRead::new(sql).param("k", &row_key);
                let q = client.spanner_query(&session, policy, &read).await?;
                match q.rows.first() {
                    None => Ok(None),
                    Some(r) => r
                        .column::<i64>(0)
                        .map(|v| Some(Version(v as u64)))
                        .map_err(|e| quorate_spanner::Error::InvalidInput(e.to_string())),
                }
            }
        },
    )
}
