//! The emulator as `scripts/spanner start` runs it.

#![allow(dead_code)]

use quorate_spanner::{SpannerBackend, SpannerConfig};
use tokio::sync::OnceCell;

/// The emulator's address and the database, or `None` outside CI when the
/// emulator is not running (a failure in CI: a missing server never passes
/// there).
pub fn emulator() -> Option<(String, String)> {
    if let (Ok(host), Ok(db)) = (
        std::env::var("SPANNER_EMULATOR_HOST"),
        std::env::var("QUORATE_SPANNER_DATABASE"),
    ) {
        return Some((host, db));
    }
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
        panic!("the Spanner emulator is required in CI: run the tests through scripts/test (it runs scripts/spanner start)");
    }
    eprintln!(
        "skipping: no Spanner emulator (run scripts/test, or eval \"$(scripts/spanner start)\")"
    );
    None
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
