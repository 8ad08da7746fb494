//! A service configured from settings and the environment, against the
//! Spanner emulator `scripts/spanner` starts: the database and the
//! emulator's address from variables, the regions from the file.

mod common;

use quorate_spanner::settings::{ClientSettings, Loader, SpannerSettings};
use quorate_spanner::{
    Client, Precondition, ReadPolicy, SpannerBackend, SpannerConfig, WriteOptions,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_runs_from_its_settings() {
    let Some((host, database)) = common::emulator() else {
        return;
    };
    common::backend(&database, "us-central1").await;
    let loader = Loader::new()
        .toml(
            r#"
            [client]
            read_deadline = "3s"

            [spanner]
            database = "set by the deployment"
            regions = ["us-central1", "us-east1", "europe-west1"]
            local = "us-central1"
            serialize_read_write = true
            "#,
            "quorate.toml",
        )
        .vars([
            ("QUORATE__SPANNER__DATABASE", database.as_str()),
            ("QUORATE__SPANNER__EMULATOR_HOST", host.as_str()),
            ("QUORATE__SPANNER__LOCAL", "europe-west1"),
        ]);
    let settings = SpannerSettings::load(&loader).unwrap();
    let config = SpannerConfig::from_settings(&settings).unwrap();
    assert_eq!(config.local.as_str(), "europe-west1");
    let client = Client::new(
        SpannerBackend::connect(config).await.unwrap(),
        ClientSettings::load(&loader).unwrap().to_config().unwrap(),
    )
    .unwrap();
    let session = client.session();
    let key = common::key("settings");
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
}
