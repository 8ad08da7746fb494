//! A local multi-region set-up: DynamoDB Local as two regions, joined by
//! the local replicator the way a global table joins its replicas, and what
//! a partition between them does to a service in the far region.
//!
//! ```text
//! scripts/dynamodb start            # prints QUORATE_DYNAMODB_ENDPOINT
//! cargo run -p quorate-dynamodb --features testing --example dynamodb_local
//! ```
//!
//! The call order is the one a service uses on AWS: one SDK configuration
//! per region → `DynamoConfig::new` → `DynamoBackend::create_tables` (once,
//! at deployment; on AWS it makes a global table with a replica per region)
//! → `DynamoBackend::connect` (checks the tables and reads their
//! replication mode) → `Client::new`. quorate switches the SDK's own
//! retries off: it retries, and resolves ambiguous writes, itself.

use std::time::Duration;

use quorate_dynamodb::aws_sdk_dynamodb::types::AttributeValue;
use quorate_dynamodb::aws_sdk_dynamodb::{self, config::Credentials};
use quorate_dynamodb::replicator::Replicator;
use quorate_dynamodb::{
    Client, ClientConfig, DynamoBackend, DynamoConfig, Error, Home, Precondition, ReadPolicy,
    Region, RegionClient, WriteOptions,
};

/// One region's SDK configuration: on AWS, `aws_config::defaults(..)`
/// with your profile and no endpoint; here DynamoDB Local, which takes any
/// static credentials and keeps one database per AWS region.
async fn sdk_config(endpoint: &str, aws_region: &'static str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(aws_region))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("local", "local", None, None, "static"))
        .load()
        .await
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let endpoint = std::env::var("QUORATE_DYNAMODB_ENDPOINT").map_err(|_| {
        Error::InvalidInput("set QUORATE_DYNAMODB_ENDPOINT (scripts/dynamodb start)".into())
    })?;
    let mut sdk = Vec::new();
    for (name, aws) in [("eu", "eu-west-1"), ("us", "us-east-1")] {
        sdk.push((Region::new(name)?, sdk_config(&endpoint, aws).await));
    }
    let regions = |sdk: &[(Region, aws_config::SdkConfig)]| {
        sdk.iter()
            .map(|(region, config)| RegionClient {
                region: region.clone(),
                client: aws_sdk_dynamodb::Client::new(config),
            })
            .collect::<Vec<_>>()
    };
    let table = format!("quorate_local_{}", std::process::id());
    // Two services, one per region; every key's home is "eu".
    let config = |local: &str| -> Result<DynamoConfig, Error> {
        let mut c = DynamoConfig::new("local-demo", &table, regions(&sdk), local)?;
        c.home = Home::Region(Region::new("eu")?);
        Ok(c)
    };
    DynamoBackend::new(config("eu")?)?.create_tables().await?;
    let eu = Client::new(
        DynamoBackend::connect(config("eu")?).await?,
        ClientConfig::default(),
    )?;
    let us = Client::new(
        DynamoBackend::connect(config("us")?).await?,
        ClientConfig::default(),
    )?;

    let mut replicator = Replicator::builder();
    for (region, config) in &sdk {
        replicator = replicator.region(region.clone(), config);
    }
    let replicator = replicator
        .tables_of(eu.backend())
        .lag(Duration::from_millis(100))
        .start()
        .await?;

    let in_eu = eu.session();
    let in_us = us.session();
    let key = "account/42";
    let first = eu
        .write(
            &in_eu,
            key,
            "balance=100".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await?;
    replicator.settle().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    replicator.settle().await;
    let read = us.read(&in_us, key, ReadPolicy::Session).await?;
    println!(
        "replicated: us reads {:?} from {} ({:?})",
        read.version(),
        read.freshness.region,
        read.freshness.role
    );

    // A partition: eu keeps taking writes, us's replica falls behind.
    replicator.pause();
    let second = eu
        .write(
            &in_eu,
            key,
            "balance=70".into(),
            Precondition::IfVersion(first.version),
            &WriteOptions::default(),
        )
        .await?;
    // A service in us that saw the new balance (its token came with a
    // request) must not read the old one from its own replica.
    let token = in_eu.token().encode();
    let carried = us.resume_session(&token)?;
    let read = us.read(&carried, key, ReadPolicy::Session).await?;
    assert_eq!(read.version(), Some(second.version));
    // What us's own replica holds, read the plain way.
    let replica = us
        .backend()
        .client(&Region::new("us")?)?
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S(key.into()))
        .send()
        .await
        .map_err(|e| Error::InvalidInput(format!("GetItem: {e}")))?;
    let held = replica.item().and_then(|i| i.get("version")).cloned();
    println!(
        "partitioned: the session reads {:?} from {} ({:?}); a plain GetItem in us sees version {:?}",
        read.version(),
        read.freshness.region,
        read.freshness.role,
        held.as_ref().and_then(|v| v.as_n().ok())
    );

    // The partition heals: the replica catches up, nothing lost.
    replicator.resume();
    replicator.settle().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    replicator.settle().await;
    let read = us.read(&carried, key, ReadPolicy::Session).await?;
    println!(
        "healed: us reads {:?} from {} ({:?})",
        read.version(),
        read.freshness.region,
        read.freshness.role
    );
    Ok(())
}
