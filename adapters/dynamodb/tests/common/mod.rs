//! DynamoDB Local as `scripts/dynamodb start` runs it, two "regions" on one
//! instance (without `-sharedDb` it keeps one database per region), and a
//! replicator standing in for global-table replication.

#![allow(dead_code)]

pub mod replicator;

use std::time::Duration;

use quorate_dynamodb::aws_sdk_dynamodb::{self, config::BehaviorVersion};
use quorate_dynamodb::{
    Client, ClientConfig, DynamoBackend, DynamoConfig, Home, Region, RegionClient,
};
use tokio::sync::OnceCell;

/// The test table; idempotency items go to `quorate_test-idempotency`.
pub const TABLE: &str = "quorate_test";

/// The quorate region names and the AWS regions that stand for them.
pub const REGIONS: [(&str, &str); 2] = [("eu", "eu-west-1"), ("us", "us-east-1")];

/// The endpoint, or `None` outside CI when the server is not running (a
/// failure in CI: a missing server never passes there).
pub fn endpoint() -> Option<String> {
    let [endpoint] = quorate_dynamodb::conformance::server_env(
        ["QUORATE_DYNAMODB_ENDPOINT"],
        "DynamoDB Local",
        "scripts/dynamodb",
    )?;
    Some(endpoint)
}

/// An SDK client for one region at `endpoint`, without SDK-level retries
/// (quorate retries, and the tests count attempts).
pub fn sdk(endpoint: &str, aws_region: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new(aws_region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "quorate", "quorate", None, None, "static",
        ))
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// Every region's client at `endpoint`, in REGIONS order.
pub fn region_clients(endpoint: &str) -> Vec<RegionClient> {
    REGIONS
        .iter()
        .map(|(name, aws)| RegionClient {
            region: Region::new(name).unwrap(),
            client: sdk(endpoint, aws),
        })
        .collect()
}

/// A configuration with keys homed in "eu", seen from `local`.
pub fn config(endpoint: &str, local: &str) -> DynamoConfig {
    let mut c = DynamoConfig::new("dynamodb-test", TABLE, region_clients(endpoint), local).unwrap();
    c.home = Home::Region(Region::new("eu").unwrap());
    c
}

static TABLES: OnceCell<()> = OnceCell::const_new();

/// A backend seen from `local`, the tables created once per test binary.
pub async fn backend(endpoint: &str, local: &str) -> DynamoBackend {
    TABLES
        .get_or_init(|| async {
            DynamoBackend::new(config(endpoint, "eu"))
                .unwrap()
                .create_tables()
                .await
                .expect("create the test tables");
        })
        .await;
    DynamoBackend::connect(config(endpoint, local))
        .await
        .expect("connect")
}

/// A client with the default configuration over `backend(endpoint, local)`.
pub async fn client(endpoint: &str, local: &str) -> Client<DynamoBackend> {
    Client::new(backend(endpoint, local).await, ClientConfig::default()).unwrap()
}

/// A key no other test or run uses.
pub fn key(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let run = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{name}-{run}-{nanos:x}-{}",
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `check` until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
