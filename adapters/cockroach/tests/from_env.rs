//! A backend from `DATABASE_URL`, as sqlx and most tools read it, against
//! the test PostgreSQL primary. One test in its own process: it sets the
//! process's environment before anything else runs.

mod common;

use quorate_cockroach::{
    Client, ClientConfig, Dialect, PgBackend, PgConfig, Precondition, ReadPolicy, WriteOptions,
};

#[test]
fn database_url_makes_a_one_server_backend() {
    let Some(s) = common::servers() else { return };
    std::env::set_var("DATABASE_URL", &s[0]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        common::backend(&s, "eu").await;
        let config = PgConfig::from_env("pg-test-cluster", Dialect::Postgres, "eu").unwrap();
        assert_eq!(config.endpoints.len(), 1);
        let client = Client::new(PgBackend::new(config).unwrap(), ClientConfig::default()).unwrap();
        let session = client.session();
        let key = common::key("from-env");
        let c = client
            .write(
                &session,
                &key,
                "v".into(),
                Precondition::IfAbsent,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
        let r = client
            .read(&session, &key, ReadPolicy::Session)
            .await
            .unwrap();
        assert_eq!(r.version(), Some(c.version));
    });
    std::env::remove_var("DATABASE_URL");
    assert!(PgConfig::from_env("pg-test-cluster", Dialect::Postgres, "eu").is_err());
}
