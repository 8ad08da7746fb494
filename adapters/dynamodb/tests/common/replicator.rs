//! The public replicator (`quorate_dynamodb::replicator`) set up the way the
//! tests use it: between the two regions of DynamoDB Local, each test
//! copying only its own keys, so concurrent tests do not see each other's
//! replication.

use std::time::Duration;

use quorate_dynamodb::aws_sdk_dynamodbstreams;
use quorate_dynamodb::replicator::{Replicator, ReplicatorBuilder};
use quorate_dynamodb::Region;

use super::{sdk, REGIONS};

/// A builder with both regions at `endpoint` and `lag`.
pub fn builder(endpoint: &str, lag: Duration) -> ReplicatorBuilder {
    let mut b = Replicator::builder().lag(lag);
    for (name, aws) in REGIONS {
        let streams = aws_sdk_dynamodbstreams::Client::from_conf(
            aws_sdk_dynamodbstreams::Config::builder()
                .behavior_version(aws_sdk_dynamodbstreams::config::BehaviorVersion::latest())
                .region(aws_sdk_dynamodbstreams::config::Region::new(aws))
                .endpoint_url(endpoint)
                .credentials_provider(aws_sdk_dynamodbstreams::config::Credentials::new(
                    "quorate", "quorate", None, None, "static",
                ))
                .build(),
        );
        b = b.region_clients(Region::new(name).unwrap(), sdk(endpoint, aws), streams);
    }
    b
}

/// Replicates quorate's tables for keys under `prefix`.
pub async fn start(endpoint: &str, prefix: &str, lag: Duration) -> Replicator {
    builder(endpoint, lag)
        .tables_of(&super::backend(endpoint, "eu").await)
        .only_keys_starting_with(prefix)
        .start()
        .await
        .expect("start the replicator")
}
