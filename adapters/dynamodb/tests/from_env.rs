//! A backend from AWS's standard environment and shared configuration
//! files alone — the region, the endpoint and the credentials of a profile
//! — against DynamoDB Local. One test in its own process: it sets the
//! process's environment before anything else runs.

mod common;

use quorate_dynamodb::settings::{DynamoRegionSettings, DynamoSettings};
use quorate_dynamodb::{
    Client, ClientConfig, DynamoBackend, DynamoConfig, Precondition, ReadPolicy, WriteOptions,
};

#[test]
fn the_standard_environment_and_a_profile_reach_the_table() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("quorate-aws-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("config");
    let credentials_file = dir.join("credentials");
    std::fs::write(
        &config_file,
        format!("[profile quorate-local]\nregion = eu-west-1\nendpoint_url = {endpoint}\n"),
    )
    .unwrap();
    std::fs::write(
        &credentials_file,
        "[quorate-local]\naws_access_key_id = quorate\naws_secret_access_key = quorate\n",
    )
    .unwrap();
    // Before any thread reads the environment.
    std::env::set_var("AWS_CONFIG_FILE", &config_file);
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &credentials_file);
    std::env::set_var("AWS_PROFILE", "quorate-local");
    for var in [
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        std::env::remove_var(var);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        common::backend(&endpoint, "eu").await;
        // AWS_PROFILE names the profile: its region, endpoint and keys.
        let config = DynamoConfig::from_env("dynamodb-test", common::TABLE)
            .await
            .unwrap();
        assert_eq!(
            config.local.as_str(),
            "eu-west-1",
            "named after the AWS region"
        );
        let client = Client::new(
            DynamoBackend::connect(config).await.unwrap(),
            ClientConfig::default(),
        )
        .unwrap();
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
            .read(&session, &key, ReadPolicy::Strong)
            .await
            .unwrap();
        assert_eq!(r.version(), Some(c.version));

        // The same profile named in settings, for one region of two.
        let mut settings = DynamoSettings::new("dynamodb-test", common::TABLE, "eu");
        let mut eu = DynamoRegionSettings::new("eu-west-1");
        eu.profile = Some("quorate-local".into());
        settings.regions.insert("eu".into(), eu);
        let mut us = DynamoRegionSettings::new("us-east-1");
        us.profile = Some("quorate-local".into());
        settings.regions.insert("us".into(), us);
        settings.home = Some("eu".into());
        let config = DynamoConfig::from_settings(&settings).await.unwrap();
        let client = Client::new(
            DynamoBackend::connect(config).await.unwrap(),
            ClientConfig::default(),
        )
        .unwrap();
        let r = client
            .read(&client.session(), &key, ReadPolicy::Strong)
            .await
            .unwrap();
        assert_eq!(
            r.version(),
            Some(c.version),
            "the profile's endpoint and keys"
        );
    });
    std::fs::remove_dir_all(&dir).unwrap();
}
