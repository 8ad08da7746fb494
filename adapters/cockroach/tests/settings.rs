//! A service configured from a settings file and the environment, against
//! the real servers `scripts/pg` starts: TLS with certificate verification
//! from the connection strings in the file, the local region from a
//! variable, the client's deadlines in human form.

mod common;

use std::time::Duration;

use quorate_cockroach::settings::{Loader, PgSettings};
use quorate_cockroach::{
    Client, ClientSettings, Error, PgBackend, PgConfig, Precondition, ReadPolicy, SqlQuery,
    WriteOptions,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_runs_from_its_settings_file_over_tls() {
    let Some(s) = common::servers() else { return };
    let Some([ca]) = quorate_cockroach::conformance::server_env(
        ["QUORATE_PG_CA"],
        "the PostgreSQL servers' certificate authority",
        "scripts/pg",
    ) else {
        return;
    };
    common::backend(&s, "us").await;
    let tls = format!("sslmode=verify-full sslrootcert={ca}");
    let file = std::env::temp_dir().join(format!("quorate-settings-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        format!(
            r#"
[client]
read_deadline = "1500ms"
retry.max_attempts = 5

[postgres]
scope = "pg-test-cluster"
local = "eu"
pool_size = 4
idempotency_ttl = "1d"

[postgres.regions.eu]
primary = "{} {tls}"

[postgres.regions.us]
standbys = ["{} {tls}"]

[postgres.regions.ap]
standbys = ["{} {tls}"]
"#,
            s[0], s[1], s[2]
        ),
    )
    .unwrap();
    // The deployment says where this instance runs.
    let loader = Loader::new()
        .file(&file)
        .vars([("QUORATE__POSTGRES__LOCAL", "us")]);
    let client_settings = ClientSettings::load(&loader).unwrap();
    assert_eq!(client_settings.read_deadline, Duration::from_millis(1500));
    let pg = PgSettings::load(&loader).unwrap();
    std::fs::remove_file(&file).unwrap();
    let config = PgConfig::from_settings(&pg).unwrap();
    assert_eq!(config.local.as_str(), "us");
    let client = Client::new(
        PgBackend::new(config).unwrap(),
        client_settings.to_config().unwrap(),
    )
    .unwrap();

    let session = client.session();
    let key = format!("settings-{}", std::process::id());
    let c = client
        .write(
            &session,
            &key,
            "v".into(),
            Precondition::Any,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let r = client
        .read(&session, &key, ReadPolicy::Session)
        .await
        .unwrap();
    assert_eq!(r.version(), Some(c.version));
    for policy in [
        ReadPolicy::Strong,
        ReadPolicy::BoundedStaleness(
            quorate_cockroach::Staleness::new(Duration::from_secs(60)).unwrap(),
        ),
    ] {
        let q = client
            .sql_query(
                &session,
                policy,
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert!(q.rows[0].get::<_, bool>(0), "{policy:?}: over TLS");
    }
}

#[tokio::test]
async fn a_settings_file_with_a_mistake_names_it() {
    let file = std::env::temp_dir().join(format!("quorate-bad-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        "[postgres]\nscope = \"s\"\nlocal = \"eu\"\n[postgres.regions.eu]\nprimary = \"host=h sslmode=maybe password=s3cret\"\n",
    )
    .unwrap();
    let loader = Loader::new()
        .file(&file)
        .vars::<[(&str, &str); 0], _, _>([]);
    let pg = PgSettings::load(&loader).unwrap();
    std::fs::remove_file(&file).unwrap();
    let e = PgConfig::from_settings(&pg).unwrap_err();
    match &e {
        Error::Settings(s) => assert_eq!(s.field, "postgres.regions.eu.primary"),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("sslmode"), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    assert!(!format!("{pg:?}").contains("s3cret"), "{pg:?}");
}
