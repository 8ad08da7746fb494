//! The servers `scripts/pg start` runs: a primary ("eu") and two hot
//! standbys ("us", "ap").

#![allow(dead_code)]

use quorate_cockroach::{Dialect, Endpoint, PgBackend, PgConfig, Region, Role};
use tokio::sync::OnceCell;

/// The connection strings, or `None` outside CI when the servers are not
/// running (a failure in CI: a missing server never passes there).
pub fn servers() -> Option<[String; 3]> {
    quorate_cockroach::conformance::server_env(
        [
            "QUORATE_PG_PRIMARY",
            "QUORATE_PG_STANDBY1",
            "QUORATE_PG_STANDBY2",
        ],
        "PostgreSQL servers",
        "scripts/pg",
    )
}

pub fn endpoints(primary: &str, s: &[String; 3]) -> Vec<Endpoint> {
    vec![
        Endpoint {
            region: Region::new("eu").unwrap(),
            role: Role::Primary,
            connection: primary.to_owned(),
        },
        Endpoint {
            region: Region::new("us").unwrap(),
            role: Role::Standby,
            connection: s[1].clone(),
        },
        Endpoint {
            region: Region::new("ap").unwrap(),
            role: Role::Standby,
            connection: s[2].clone(),
        },
    ]
}

pub fn config(s: &[String; 3], local: &str) -> PgConfig {
    PgConfig::new(
        "pg-test-cluster",
        Dialect::Postgres,
        endpoints(&s[0], s),
        local,
    )
    .unwrap()
}

static SCHEMA: OnceCell<()> = OnceCell::const_new();

/// A backend seen from `local`, with the schema created once per process.
pub async fn backend(s: &[String; 3], local: &str) -> PgBackend {
    let backend = PgBackend::new(config(s, local)).unwrap();
    SCHEMA
        .get_or_init(|| async { backend.create_schema().await.expect("schema") })
        .await;
    backend
}

/// Runs SQL on one server.
pub async fn exec(connection: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(connection, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    let _ = task.await;
}

/// Sets (or resets, with `None`) a standby's apply delay at run time.
pub async fn apply_delay(standby: &str, delay: Option<&str>) {
    let sql = match delay {
        Some(d) => format!("ALTER SYSTEM SET recovery_min_apply_delay = '{d}'"),
        None => "ALTER SYSTEM RESET recovery_min_apply_delay".to_owned(),
    };
    // ALTER SYSTEM cannot share an implicit transaction with anything else.
    exec(standby, &sql).await;
    exec(standby, "SELECT pg_reload_conf()").await;
}

pub fn key(case: &str) -> String {
    format!("{case}-{:x}", run_id())
}

/// The conformance suite's query path: `sql` (a read of one row's version,
/// `$1` the key within its table, which is `key` less `strip`) through
/// `SqlQuery::sql_query`.
pub fn sql_query_hook(
    sql: String,
    strip: &'static str,
) -> quorate_cockroach::conformance::QueryHook<PgBackend> {
    use quorate_cockroach::SqlQuery;
    quorate_cockroach::conformance::QueryHook::new(
        move |client: quorate_cockroach::Client<PgBackend>, session, policy, key: String| {
            let sql = sql.clone();
            async move {
                let row_key = key.strip_prefix(strip).unwrap_or(&key).to_owned();
                let q = client
                    .sql_query(&session, policy, &sql, &[&row_key])
                    .await?;
                Ok(q.rows
                    .first()
                    .map(|r| quorate_cockroach::Version(r.get::<_, i64>(0) as u64)))
            }
        },
    )
}

/// A number of this test process's own, the same throughout it.
fn run_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 40)
    })
}

/// The port a connection string names.
pub fn port_of(connection: &str) -> u16 {
    connection
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .expect("the connection string names a port")
}

/// A plain connection to a loopback port (a fault proxy's, which finds
/// its patterns in the bytes it relays).
pub fn plain_loopback(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable")
}

/// Runs `scripts/pg` with `args`; whether it succeeded.
pub fn pg_script(args: &[&str]) -> bool {
    let script = std::env::var("QUORATE_PG_SCRIPT").unwrap_or_default();
    std::process::Command::new(script)
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}
