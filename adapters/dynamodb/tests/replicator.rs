//! The public replicator on DynamoDB Local: it switches on the stream of a
//! table made by hand, copies with its lag, holds everything while paused
//! and loses nothing, resolves writes made in both regions during a pause
//! last-writer-wins (the same winner in both), and copies deletes.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use quorate_dynamodb::aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use quorate_dynamodb::replicator::ReplicatedTable;

/// A table with partition key `id`, made in both regions without a stream.
async fn hand_made(endpoint: &str, table: &str) {
    for (_, aws) in common::REGIONS {
        common::sdk(endpoint, aws)
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("id")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("id")
                    .key_type(KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("create the table");
    }
}

/// Writes `id` in region `r` (0 or 1) with a write time and writer.
async fn put(endpoint: &str, r: usize, table: &str, id: &str, value: &str, written_at: u64) {
    common::sdk(endpoint, common::REGIONS[r].1)
        .put_item()
        .table_name(table)
        .item("id", AttributeValue::S(id.into()))
        .item("value", AttributeValue::S(value.into()))
        .item(
            "quorate_written_at",
            AttributeValue::N(written_at.to_string()),
        )
        .item(
            "quorate_writer",
            AttributeValue::S(common::REGIONS[r].0.into()),
        )
        .send()
        .await
        .expect("put");
}

/// `id`'s value in region `r`.
async fn get(endpoint: &str, r: usize, table: &str, id: &str) -> Option<String> {
    let out = common::sdk(endpoint, common::REGIONS[r].1)
        .get_item()
        .table_name(table)
        .key("id", AttributeValue::S(id.into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get");
    let item: HashMap<String, AttributeValue> = out.item()?.clone();
    match item.get("value") {
        Some(AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicator_lags_pauses_and_resolves_last_writer_wins() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let table = common::key("Replicated");
    hand_made(&endpoint, &table).await;
    let replicator = common::replicator::builder(&endpoint, Duration::from_millis(600))
        .table(ReplicatedTable::new(&table).unwrap())
        .start()
        .await
        .expect("start: the stream is switched on");

    // Lag: a write in eu reaches us only after the lag.
    put(&endpoint, 0, &table, "a", "a1", 10).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        get(&endpoint, 1, &table, "a").await,
        None,
        "copied before the lag"
    );
    let copied = common::eventually(Duration::from_secs(10), || async {
        get(&endpoint, 1, &table, "a").await.as_deref() == Some("a1")
    })
    .await;
    assert!(copied, "never copied after the lag");
    replicator.set_lag(Duration::ZERO);

    // Pause: both regions take writes of the same item and of others.
    replicator.pause();
    put(&endpoint, 0, &table, "b", "from eu, later", 30).await;
    put(&endpoint, 1, &table, "b", "from us, earlier", 20).await;
    put(&endpoint, 1, &table, "c", "us only", 40).await;
    put(&endpoint, 0, &table, "d", "tie, eu", 50).await;
    put(&endpoint, 1, &table, "d", "tie, us", 50).await;
    replicator.settle().await;
    assert_eq!(
        get(&endpoint, 0, &table, "c").await,
        None,
        "copied while paused"
    );
    assert!(replicator.pending() > 0, "the paused changes are kept");
    assert_eq!(
        get(&endpoint, 1, &table, "b").await.as_deref(),
        Some("from us, earlier")
    );

    // Resume: nothing lost, and both regions agree on each winner.
    replicator.resume();
    let converged = common::eventually(Duration::from_secs(10), || async {
        get(&endpoint, 0, &table, "c").await.is_some() && replicator.pending() == 0
    })
    .await;
    assert!(converged, "{:?}", replicator.last_error());
    replicator.settle().await;
    for r in [0, 1] {
        assert_eq!(
            get(&endpoint, r, &table, "b").await.as_deref(),
            Some("from eu, later"),
            "the later write wins in region {r}"
        );
        assert_eq!(
            get(&endpoint, r, &table, "c").await.as_deref(),
            Some("us only")
        );
        // Equal write times: the greater writer ("us" > "eu") wins.
        assert_eq!(
            get(&endpoint, r, &table, "d").await.as_deref(),
            Some("tie, us")
        );
    }

    // A late copy of an older write does not roll a newer one back.
    replicator.pause();
    put(&endpoint, 1, &table, "b", "stale, from us", 25).await;
    replicator.resume();
    replicator.settle().await;
    replicator.settle().await;
    assert_eq!(
        get(&endpoint, 0, &table, "b").await.as_deref(),
        Some("from eu, later")
    );

    // Deletes are copied.
    common::sdk(&endpoint, common::REGIONS[1].1)
        .delete_item()
        .table_name(&table)
        .key("id", AttributeValue::S("c".into()))
        .send()
        .await
        .unwrap();
    let deleted = common::eventually(Duration::from_secs(10), || async {
        get(&endpoint, 0, &table, "c").await.is_none()
    })
    .await;
    assert!(deleted, "the delete never reached eu");
    assert!(replicator.applied() >= 5);
    assert_eq!(replicator.last_error(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_named() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let err = common::replicator::builder(&endpoint, Duration::ZERO)
        .table(ReplicatedTable::new("quorate_no_such_table").unwrap())
        .start()
        .await
        .expect_err("no such table");
    assert!(err.to_string().contains("quorate_no_such_table"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_tables_on_dynamodb_local_makes_a_table_per_region_that_replicates() {
    use quorate_dynamodb::{Client, ClientConfig, DynamoBackend, DynamoConfig, Precondition};
    use quorate_dynamodb::{ReadPolicy, Region, ReplicaRole, WriteOptions};
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let table = common::key("Fresh");
    let config = |local: &str| {
        DynamoConfig::new("fresh", &table, common::region_clients(&endpoint), local).unwrap()
    };
    let eu = DynamoBackend::new(config("eu")).unwrap();
    eu.create_tables()
        .await
        .expect("DynamoDB Local has no global tables");
    for (_, aws) in common::REGIONS {
        for t in [table.clone(), format!("{table}-idempotency")] {
            let d = common::sdk(&endpoint, aws)
                .describe_table()
                .table_name(&t)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{t} in {aws}: {e:?}"));
            let spec = d.table().unwrap().stream_specification().unwrap();
            assert!(spec.stream_enabled(), "{t} in {aws} streams");
        }
    }
    eu.create_tables().await.expect("again: nothing to do");
    let replicator = common::replicator::builder(&endpoint, Duration::ZERO)
        .tables_of(&eu)
        .start()
        .await
        .unwrap();
    // The test is about where the replica serves from, not about timeouts:
    // a first request that outlasts the default one-second attempt on a
    // loaded machine would be retried in the other region.
    let patient = || ClientConfig {
        attempt_timeout: Duration::from_secs(20),
        read_deadline: Duration::from_secs(30),
        write_deadline: Duration::from_secs(30),
        ..ClientConfig::default()
    };
    let eu = Client::new(eu, patient()).unwrap();
    let us = Client::new(
        DynamoBackend::connect(config("us")).await.unwrap(),
        patient(),
    )
    .unwrap();
    let written = eu
        .write(
            &eu.session(),
            "k",
            "v".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    replicator.settle().await;
    let read = us
        .read(
            &us.session(),
            "k",
            ReadPolicy::BoundedStaleness(
                quorate_dynamodb::Staleness::new(Duration::from_secs(60)).unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(read.version(), Some(written.version));
    assert_eq!(
        (read.freshness.region.clone(), read.freshness.role),
        (Region::new("us").unwrap(), ReplicaRole::Follower),
        "served by the replica in us: {:?}",
        read.freshness
    );
}

/// DynamoDB Local answers `ExpiredIteratorException` when writes to other
/// tables moved its sequence numbers past an iterator; the replicator then
/// re-positions and reads that shard on a later pass. `settle` must wait
/// for that pass rather than count the one that only re-positioned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_waits_for_shards_whose_iterators_were_re_positioned() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let quiet = common::key("Quiet");
    let busy = common::key("Busy");
    hand_made(&endpoint, &quiet).await;
    hand_made(&endpoint, &busy).await;
    let replicator = common::replicator::builder(&endpoint, Duration::ZERO)
        .table(ReplicatedTable::new(&quiet).unwrap())
        .table(ReplicatedTable::new(&busy).unwrap())
        .start()
        .await
        .unwrap();
    for round in 0..6u64 {
        for i in 0..20 {
            put(&endpoint, 0, &busy, &format!("{round}-{i}"), "x", round + 1).await;
        }
        let id = format!("k{round}");
        put(&endpoint, 0, &quiet, &id, "v", round + 1).await;
        assert!(replicator.settle().await, "settled");
        assert_eq!(
            get(&endpoint, 1, &quiet, &id).await.as_deref(),
            Some("v"),
            "round {round}: settled without copying ({:?})",
            replicator.last_error()
        );
    }
}

/// One direction of one link held back, and a lag into one region only:
/// the other direction goes on, and nothing held is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_link_can_be_cut_or_slowed_without_the_others() {
    use quorate_dynamodb::Region;
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let table = common::key("Links");
    hand_made(&endpoint, &table).await;
    let replicator = common::replicator::builder(&endpoint, Duration::ZERO)
        .table(ReplicatedTable::new(&table).unwrap())
        .start()
        .await
        .unwrap();
    let (eu, us) = (Region::new("eu").unwrap(), Region::new("us").unwrap());
    assert!(replicator
        .pause_link(&eu, &Region::new("ap").unwrap())
        .is_err());
    replicator.pause_link(&eu, &us).unwrap();
    put(&endpoint, 0, &table, "from-eu", "x", 1).await;
    put(&endpoint, 1, &table, "from-us", "y", 1).await;
    replicator.settle().await;
    replicator.settle().await;
    assert_eq!(
        get(&endpoint, 1, &table, "from-eu").await,
        None,
        "eu -> us is cut"
    );
    assert_eq!(
        get(&endpoint, 0, &table, "from-us").await.as_deref(),
        Some("y"),
        "us -> eu goes on"
    );
    replicator.resume_link(&eu, &us).unwrap();
    replicator.settle().await;
    assert_eq!(
        get(&endpoint, 1, &table, "from-eu").await.as_deref(),
        Some("x"),
        "the held change arrives once the link heals"
    );

    replicator
        .set_lag_into(&us, Duration::from_millis(800))
        .unwrap();
    put(&endpoint, 0, &table, "late", "z", 2).await;
    put(&endpoint, 1, &table, "prompt", "w", 2).await;
    replicator.settle().await;
    assert_eq!(get(&endpoint, 1, &table, "late").await, None, "us lags");
    assert_eq!(
        get(&endpoint, 0, &table, "prompt").await.as_deref(),
        Some("w")
    );
    let arrived = common::eventually(Duration::from_secs(10), || async {
        get(&endpoint, 1, &table, "late").await.as_deref() == Some("z")
    })
    .await;
    assert!(
        arrived,
        "the lagging copy arrives: {:?}",
        replicator.last_error()
    );
    replicator.set_lag_into(&us, Duration::ZERO).unwrap();
}
