//! A service configured from a settings file and the environment, against
//! DynamoDB Local: each region's SDK client built from AWS's chain with the
//! region's endpoint and keys, the local region from a variable.

mod common;

use std::time::Duration;

use quorate_dynamodb::settings::{ClientSettings, DynamoSettings, Loader};
use quorate_dynamodb::{
    Client, DynamoBackend, DynamoConfig, Precondition, ReadPolicy, WriteOptions,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_runs_from_its_settings_file() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    common::backend(&endpoint, "eu").await;
    let file = std::env::temp_dir().join(format!("quorate-dynamodb-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        format!(
            r#"
[client]
write_deadline = "4s"

[dynamodb]
scope = "dynamodb-test"
table = "{table}"
local = "eu"
home = "eu"

[dynamodb.regions.eu]
aws_region = "eu-west-1"
endpoint = "{endpoint}"
access_key_id = "quorate"
secret_access_key = "quorate"

[dynamodb.regions.us]
aws_region = "us-east-1"
endpoint = "{endpoint}"
access_key_id = "quorate"
secret_access_key = "quorate"
"#,
            table = common::TABLE
        ),
    )
    .unwrap();
    let loader = Loader::new()
        .file(&file)
        .vars([("QUORATE__DYNAMODB__LOCAL", "us")]);
    let client_settings = ClientSettings::load(&loader).unwrap();
    assert_eq!(client_settings.write_deadline, Duration::from_secs(4));
    let settings = DynamoSettings::load(&loader).unwrap();
    std::fs::remove_file(&file).unwrap();
    let config = DynamoConfig::from_settings(&settings).await.unwrap();
    let client = Client::new(
        DynamoBackend::connect(config).await.unwrap(),
        client_settings.to_config().unwrap(),
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
    assert_eq!(c.region.as_str(), "eu", "written in the home region");
    let r = client
        .read(&session, &key, ReadPolicy::Strong)
        .await
        .unwrap();
    assert_eq!(r.version(), Some(c.version));
    assert_eq!(r.freshness.region.as_str(), "eu");
}
