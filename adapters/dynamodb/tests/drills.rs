//! A drill on DynamoDB Local: two regions joined by the public replicator
//! (last writer wins), replication paused while a worker in each region
//! processes the same orders. Each run is recorded and judged by the
//! simulator drills' checker; the verdict rule is theirs: the strict run
//! is clean and the naive run shows its anomaly.
//!
//! Naive: each worker reads the order in its own region (an eventually
//! consistent `GetItem`) and, if it is pending, charges it with a
//! `PutItem` conditional on the version it read, in its own region: the
//! way a service on a global table is usually written. Anomaly: one charge
//! applied in both regions (`duplicate-application`).
//! Strict: quorate, with the table's home region: strong reads, writes at
//! home with the transition's idempotency key.

mod common;

use std::time::Duration;

use quorate_dynamodb::aws_sdk_dynamodb::types::AttributeValue;
use quorate_dynamodb::history::{
    check_events, Anomaly, HistoryPolicy, RecordedClient, Recorder, Report,
};
use quorate_dynamodb::item::{PK, VALUE, VERSION, WRITER, WRITTEN_AT};
use quorate_dynamodb::{
    Client, DynamoBackend, Error, IdempotencyKey, Precondition, ReadPolicy, Version, WriteOptions,
};

const ORDERS: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Naive,
    Strict,
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// The naive worker in `region` (its own SDK client): read locally,
/// charge locally, conditional on the version read.
async fn naive_worker(
    sdk: quorate_dynamodb::aws_sdk_dynamodb::Client,
    region: &'static str,
    orders: Vec<String>,
    recorder: std::sync::Arc<Recorder>,
) {
    let process = recorder.process();
    recorder.locate(process, region);
    let session = format!("worker-{region}");
    for key in orders {
        recorder.invoke_read(process, &session, &key, HistoryPolicy::Eventual);
        let got = sdk
            .get_item()
            .table_name(common::TABLE)
            .key(PK, AttributeValue::S(key.clone()))
            .send()
            .await;
        let item = got.ok().and_then(|o| o.item().cloned());
        let version: u64 = match item.as_ref().and_then(|i| i.get(VERSION)) {
            Some(AttributeValue::N(v)) => v.parse().unwrap(),
            _ => 0,
        };
        recorder.complete_read(process, &session, &key, Some((version, Some(region))));
        let pending = matches!(
            item.as_ref().and_then(|i| i.get(VALUE)),
            Some(AttributeValue::B(b)) if b.as_ref() == b"pending"
        );
        if !pending {
            continue;
        }
        let idem = format!("charge-{key}");
        recorder.invoke_write(process, &session, &key, Some(version), Some(&idem));
        let put = sdk
            .put_item()
            .table_name(common::TABLE)
            .item(PK, AttributeValue::S(key.clone()))
            .item(VERSION, AttributeValue::N((version + 1).to_string()))
            .item(VALUE, AttributeValue::B(b"charged".to_vec().into()))
            .item(WRITTEN_AT, AttributeValue::N(now_nanos().to_string()))
            .item(WRITER, AttributeValue::S(region.to_owned()))
            .condition_expression("#v = :v")
            .expression_attribute_names("#v", VERSION)
            .expression_attribute_values(":v", AttributeValue::N(version.to_string()))
            .send()
            .await;
        let result = match put {
            Ok(_) => Ok(quorate_dynamodb::Committed {
                version: Version(version + 1),
                point: quorate_dynamodb::Point {
                    wall: now_nanos(),
                    logical: 0,
                },
                region: quorate_dynamodb::Region::new(region).unwrap(),
            }),
            Err(e) => Err(Error::InvalidInput(e.to_string())),
        };
        recorder.complete_write(process, &session, &key, true, &result);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The strict worker, a quorate client local to `region`.
async fn strict_worker(
    client: Client<DynamoBackend>,
    region: &'static str,
    orders: Vec<String>,
    recorder: std::sync::Arc<Recorder>,
) {
    let worker = RecordedClient::new(
        client.clone(),
        client.session(),
        &format!("worker-{region}"),
        recorder.clone(),
    );
    recorder.locate(worker.process(), region);
    for key in orders {
        let Ok(seen) = worker.read(&key, ReadPolicy::Strong).await else {
            continue;
        };
        let pending = seen
            .value
            .as_ref()
            .is_some_and(|v| &v.value[..] == b"pending");
        let Some(version) = seen.version() else {
            continue;
        };
        if !pending {
            continue;
        }
        let options = WriteOptions {
            idempotency_key: Some(IdempotencyKey::new(&format!("charge-{key}")).unwrap()),
            ..WriteOptions::default()
        };
        let _ = worker
            .write(
                &key,
                "charged".into(),
                Precondition::IfVersion(version),
                &options,
            )
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run(endpoint: &str, config: Config) -> Report {
    let prefix = common::key(&format!("drill-{config:?}"));
    let replicator = common::replicator::start(endpoint, &prefix, Duration::ZERO).await;
    let eu = common::client(endpoint, "eu").await;
    let us = common::client(endpoint, "us").await;
    let recorder = Recorder::new();
    let setup = RecordedClient::new(eu.clone(), eu.session(), "orders", recorder.clone());
    recorder.locate(setup.process(), "eu");
    let orders: Vec<String> = (0..ORDERS).map(|i| format!("{prefix}/order-{i}")).collect();
    for key in &orders {
        setup
            .write(
                key,
                "pending".into(),
                Precondition::IfAbsent,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
    }
    // Every order pending in both regions, then the partition.
    let us_sdk = us
        .backend()
        .client(&quorate_dynamodb::Region::new("us").unwrap())
        .unwrap()
        .clone();
    let last = orders.last().unwrap().clone();
    let replicated = common::eventually(Duration::from_secs(20), || {
        let (sdk, key) = (us_sdk.clone(), last.clone());
        async move {
            sdk.get_item()
                .table_name(common::TABLE)
                .key(PK, AttributeValue::S(key))
                .send()
                .await
                .is_ok_and(|o| o.item().is_some())
        }
    })
    .await;
    assert!(replicated, "the orders never reached us");
    replicator.pause();
    let eu_sdk = eu
        .backend()
        .client(&quorate_dynamodb::Region::new("eu").unwrap())
        .unwrap()
        .clone();
    match config {
        Config::Naive => {
            tokio::join!(
                naive_worker(eu_sdk, "eu", orders.clone(), recorder.clone()),
                naive_worker(us_sdk, "us", orders.clone(), recorder.clone()),
            );
        }
        Config::Strict => {
            tokio::join!(
                strict_worker(eu.clone(), "eu", orders.clone(), recorder.clone()),
                strict_worker(us.clone(), "us", orders.clone(), recorder.clone()),
            );
        }
    }
    replicator.resume();
    check_events(&recorder.events()).expect("a well-formed history")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_partitioned_global_table() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let naive = run(&endpoint, Config::Naive).await;
    let strict = run(&endpoint, Config::Strict).await;
    println!("partitioned global table, naive:\n{}", naive.render());
    println!("partitioned global table, strict:\n{}", strict.render());
    assert!(
        naive.count(Anomaly::DuplicateApplication) > 0,
        "the naive run charges orders in both regions"
    );
    assert_eq!(strict.total(), 0, "the strict run is clean");
    assert!(naive.ops as usize >= 2 * ORDERS && strict.ops as usize >= 2 * ORDERS);
}

/// The simulator's seed scenarios, unchanged, on DynamoDB Local: three
/// regions joined by the replicator, reached through the fault layer of
/// `DynamoDeployment`, which the runner steers from each scenario's
/// windows, a region's clock skew included (its clients' clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenarios_run_on_dynamodb_local() {
    use quorate_dynamodb::deployment::DynamoDeployment;
    use quorate_dynamodb::drill::{run_deployed, scenarios_on, Configuration, Deployment, Variant};
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let base = DynamoDeployment::start(
        &endpoint,
        &[
            ("eu-west", "eu-west-1"),
            ("us-east", "us-east-1"),
            ("ap-south", "ap-south-1"),
        ],
    )
    .await
    .expect("the fault layer starts");
    let mut ran = Vec::new();
    for scenario in scenarios_on::<DynamoDeployment>() {
        let refused = base.unsupported(&scenario.windows);
        assert!(refused.is_empty(), "{}: {refused:?}", scenario.name);
        for config in [Configuration::Naive, Configuration::Strict] {
            let table = common::key(&format!("Drill-{}-{}", scenario.name, config.label()));
            let home = scenario.simulated_system(1).home;
            let deployment = base
                .with_table(&table, home.as_str(), Duration::from_millis(100))
                .await
                .expect("fresh tables");
            let run = run_deployed(&deployment, &scenario, config, 1, &Variant::default())
                .await
                .expect("the run completes");
            println!(
                "{} {}:\n{}",
                scenario.name,
                config.label(),
                run.report.render()
            );
            // The producer of clock-skew-600ms waits on its consumer.
            let least = if scenario.name == "clock-skew-600ms" {
                20
            } else {
                100
            };
            assert!(
                run.report.ops > least,
                "{} {}",
                scenario.name,
                config.label()
            );
            assert!(
                run.passed(),
                "{} {}: {}",
                scenario.name,
                config.label(),
                run.report.render()
            );
            ran.push(scenario.name);
        }
    }
    assert_eq!(ran.len(), 2 * scenarios_on::<DynamoDeployment>().len());
}

/// A region's clock skew is its clients' clock: a write through the skewed
/// region stamps `written_at` (by which the replicator orders concurrent
/// writes) that far ahead of this machine's clock, the region's clock and
/// reported offset say the same, and once healed both run true again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_region_stamps_its_clients_writes_by_its_clock() {
    use quorate_dynamodb::deployment::DynamoDeployment;
    use quorate_dynamodb::drill::{Deployment, FaultState};
    use quorate_dynamodb::{ClientConfig, Clock};
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let base = DynamoDeployment::start(
        &endpoint,
        &[("eu-west", "eu-west-1"), ("ap-south", "ap-south-1")],
    )
    .await
    .expect("the fault layer starts");
    let table = common::key("Drill-skew");
    let deployment = base
        .with_table(&table, "eu-west", Duration::from_millis(10))
        .await
        .expect("fresh tables");
    let healthy = FaultState::default();
    let mut skewed = FaultState::default();
    skewed.skew_ms.insert("ap-south".to_owned(), 600);
    assert!(deployment.apply(&healthy, &skewed).await.is_empty());
    assert_eq!(deployment.clock_offset("ap-south"), Some(600_000_000));
    assert_eq!(deployment.clock_offset("eu-west"), Some(0));
    let ahead_ms = |clock: &dyn Clock| (clock.now_nanos() as i64 - now_nanos() as i64) / 1_000_000;
    let clock = deployment.clock("ap-south").unwrap();
    assert!(
        (590..=610).contains(&ahead_ms(&*clock)),
        "{}",
        ahead_ms(&*clock)
    );

    // Written from ap-south, committed at home in eu-west, read there raw.
    let stamped = |key: &str| {
        let sdk = common::sdk(&endpoint, "eu-west-1");
        let (table, key) = (table.clone(), key.to_owned());
        async move {
            let item = sdk
                .get_item()
                .table_name(table)
                .key(PK, AttributeValue::S(key))
                .consistent_read(true)
                .send()
                .await
                .expect("read at home")
                .item
                .expect("the record");
            match item.get(WRITTEN_AT) {
                Some(AttributeValue::N(w)) => w.parse::<u64>().unwrap(),
                other => panic!("written_at: {other:?}"),
            }
        }
    };
    let write = |key: &'static str| {
        let backend = deployment.at("ap-south").unwrap();
        async move {
            let client = Client::new(backend, ClientConfig::default()).unwrap();
            let session = client.session();
            let before = now_nanos();
            client
                .write(
                    &session,
                    key,
                    "v".into(),
                    Precondition::Any,
                    &WriteOptions::default(),
                )
                .await
                .expect("the write commits");
            before
        }
    };
    let before = write("skewed").await;
    let skewed_at = stamped("skewed").await;
    let ahead = (skewed_at as i64 - before as i64) / 1_000_000;
    assert!((590..1_000).contains(&ahead), "stamped {ahead} ms ahead");

    assert!(deployment.apply(&skewed, &healthy).await.is_empty());
    assert_eq!(deployment.clock_offset("ap-south"), Some(0));
    assert!(ahead_ms(&*clock).abs() <= 10, "{}", ahead_ms(&*clock));
    // Write times never go back in one process: a write right after the
    // heal is stamped after the skewed one; once the true clock has passed
    // it, writes are stamped by the true clock.
    write("right-after").await;
    assert!(stamped("right-after").await > skewed_at);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = write("true").await;
    let ahead = (stamped("true").await as i64 - before as i64) / 1_000_000;
    assert!((0..400).contains(&ahead), "stamped {ahead} ms ahead");
}
