//! quorate-dynamodb against DynamoDB Local: the core conformance suite, the
//! double-processing scenario, exactly-once after ambiguous commits,
//! conflicting writes in two regions, and bad input.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::replicator;
use quorate_dynamodb::aws_sdk_dynamodb::types::AttributeValue;
use quorate_dynamodb::conformance::{run_all, Fixture};
use quorate_dynamodb::cut_proxy::{Cut, CutProxy};
use quorate_dynamodb::item::{ItemError, PK, VALUE, VERSION, WRITER, WRITTEN_AT};
use quorate_dynamodb::{
    Backend, Client, ClientConfig, DynamoBackend, Error, IdempotencyKey, Precondition, ReadPlan,
    ReadPolicy, Region, ReplicaRole, TxOp, Verify, VerifyRegions, Version, WriteOptions,
};

fn region(name: &str) -> Region {
    Region::new(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let backend = common::backend(&endpoint, "us").await;
    let fixture = Fixture::new(backend);
    let replicator =
        replicator::start(&endpoint, &fixture.prefix, Duration::from_millis(200)).await;
    let fixture = fixture.with_hold_followers(replicator.hold_followers());
    let report = run_all(&fixture).await;
    for (name, result) in &report {
        println!("{name}: {result:?}");
    }
    assert!(report.iter().all(|(_, r)| r.is_ok()), "{report:#?}");
    assert!(replicator.applied() > 0, "the replicator copied nothing");
}

/// What the order-processing job does with a record: charge, then mark.
async fn charge(ledger: &AtomicU32) {
    ledger.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replication_double_processes_naively_but_not_through_quorate() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let prefix = common::key("double");
    let replicator = replicator::start(&endpoint, &prefix, Duration::ZERO).await;
    let eu = common::client(&endpoint, "eu").await;
    let us = common::client(&endpoint, "us").await;
    let us_table = us.backend().client(&region("us")).unwrap().clone();

    for naive in [true, false] {
        let key = format!("{prefix}/order-{naive}");
        let created = eu
            .write(
                &eu.session(),
                &key,
                "pending".into(),
                Precondition::IfAbsent,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
        // Both regions hold the pending order.
        let replicated = common::eventually(Duration::from_secs(10), || {
            let (us_table, key) = (us_table.clone(), key.clone());
            async move {
                us_table
                    .get_item()
                    .table_name(common::TABLE)
                    .key(PK, AttributeValue::S(key))
                    .send()
                    .await
                    .is_ok_and(|o| o.item().is_some())
            }
        })
        .await;
        assert!(replicated, "the order never reached us");
        replicator.pause();
        let ledger = AtomicU32::new(0);

        // The eu worker processes the order at home.
        let seen = eu
            .read(&eu.session(), &key, ReadPolicy::Strong)
            .await
            .unwrap();
        assert_eq!(&seen.value.as_ref().unwrap().value[..], b"pending");
        charge(&ledger).await;
        let verify_us = WriteOptions {
            verify: Some(Verify {
                regions: VerifyRegions::These(vec![region("us")]),
                policy: ReadPolicy::Session,
                deadline: Duration::from_millis(400),
            }),
            ..WriteOptions::default()
        };
        let marked = eu
            .write(
                &eu.session(),
                &key,
                "charged".into(),
                Precondition::IfVersion(created.version),
                &verify_us,
            )
            .await;
        // The read-after-write check in the region that reads next fails:
        // the transition is committed but us cannot see it yet.
        assert!(
            matches!(marked, Err(Error::NotVisible { version, .. }) if version == created.version.next()),
            "{marked:?}"
        );

        // A second worker, in us, picks the order up.
        if naive {
            // Reads its local replica and writes where it runs.
            let local = us_table
                .get_item()
                .table_name(common::TABLE)
                .key(PK, AttributeValue::S(key.clone()))
                .send()
                .await
                .unwrap();
            let item = local.item().unwrap();
            if item.get(VALUE) == Some(&AttributeValue::B(b"pending".to_vec().into())) {
                charge(&ledger).await;
                us_table
                    .put_item()
                    .table_name(common::TABLE)
                    .set_item(Some(item.clone()))
                    .item(VALUE, AttributeValue::B(b"charged".to_vec().into()))
                    .send()
                    .await
                    .unwrap();
            }
            assert_eq!(
                ledger.load(Ordering::SeqCst),
                2,
                "the naive worker charged the order a second time"
            );
        } else {
            let session = us.session();
            let r = us.read(&session, &key, ReadPolicy::Strong).await.unwrap();
            assert_eq!(r.freshness.region, region("eu"), "strong reads go home");
            if &r.value.as_ref().unwrap().value[..] == b"pending" {
                charge(&ledger).await;
            }
            // Even a worker acting on the stale version cannot apply the
            // transition again: the write is conditional, at home.
            let again = us
                .write(
                    &session,
                    &key,
                    "charged".into(),
                    Precondition::IfVersion(created.version),
                    &WriteOptions::default(),
                )
                .await;
            assert!(
                matches!(again, Err(Error::Conflict { current: Some(v), .. }) if v == created.version.next()),
                "{again:?}"
            );
            assert_eq!(ledger.load(Ordering::SeqCst), 1, "charged exactly once");
        }
        replicator.resume();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_lost_after_commit_is_resolved_to_exactly_once() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    common::backend(&endpoint, "eu").await;
    let upstream: SocketAddr = endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("the endpoint is http://host:port");
    let proxy = CutProxy::start(upstream).await.unwrap();
    let through = format!("http://{}", proxy.addr());
    let mut config = common::config(&endpoint, "eu");
    config.regions[0].client = common::sdk(&through, common::REGIONS[0].1);
    let client = Client::new(
        DynamoBackend::connect(config).await.unwrap(),
        ClientConfig::default(),
    )
    .unwrap();
    let session = client.session();
    let key = common::key("ambiguous");
    let c1 = client
        .write(
            &session,
            &key,
            "1".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let mut expected = c1.version;
    for (cut, value) in [(Cut::Answer, "2"), (Cut::Request, "3")] {
        let idem = IdempotencyKey::new(&common::key("idem")).unwrap();
        proxy.arm(b"TransactWriteItems", cut);
        let fired = proxy.fired();
        let c = client
            .write(
                &session,
                &key,
                value.into(),
                Precondition::IfVersion(expected),
                &WriteOptions {
                    idempotency_key: Some(idem.clone()),
                    ..WriteOptions::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{cut:?}: the outcome is resolved, not {e}"));
        assert_eq!(proxy.fired(), fired + 1, "{cut:?}: the exchange was lost");
        assert_eq!(c.version, expected.next(), "{cut:?}: applied exactly once");
        let r = client
            .read(&session, &key, ReadPolicy::Strong)
            .await
            .unwrap();
        assert_eq!(r.version(), Some(c.version), "{cut:?}");
        assert_eq!(&r.value.unwrap().value[..], value.as_bytes());
        // The same logical write again returns its recorded outcome.
        let again = client
            .write(
                &session,
                &key,
                value.into(),
                Precondition::IfVersion(expected),
                &WriteOptions {
                    idempotency_key: Some(idem),
                    ..WriteOptions::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(again.version, c.version, "{cut:?}: a retry re-applied");
        expected = c.version;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conditional_writes_in_two_regions_conflict_instead_of_merging() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let prefix = common::key("mrec");
    let replicator = replicator::start(&endpoint, &prefix, Duration::ZERO).await;
    let clients: Vec<Arc<Client<DynamoBackend>>> = {
        let mut v = Vec::new();
        for local in ["eu", "us"] {
            v.push(Arc::new(common::client(&endpoint, local).await));
        }
        v
    };
    let tables: Vec<_> = ["eu", "us"]
        .iter()
        .map(|r| clients[0].backend().client(&region(r)).unwrap().clone())
        .collect();

    // Through quorate: both regions' clients write at the key's home.
    let key = format!("{prefix}/q");
    let v1 = clients[0]
        .write(
            &clients[0].session(),
            &key,
            "start".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap()
        .version;
    let writers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (c, key) = (c.clone(), key.clone());
            tokio::spawn(async move {
                c.write(
                    &c.session(),
                    &key,
                    format!("from-{i}").into(),
                    Precondition::IfVersion(v1),
                    &WriteOptions::default(),
                )
                .await
            })
        })
        .collect();
    let mut won = Vec::new();
    let mut conflicts = 0;
    for w in writers {
        match w.await.unwrap() {
            Ok(c) => {
                assert_eq!(c.region, region("eu"), "MREC writes go home");
                won.push(c);
            }
            Err(Error::Conflict { current, .. }) => {
                assert_eq!(current, Some(v1.next()), "the conflict names the winner");
                conflicts += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((won.len(), conflicts), (1, 1), "one wins, one conflicts");

    // Naively: each region checks the condition against its own copy.
    let key = format!("{prefix}/naive");
    clients[0]
        .write(
            &clients[0].session(),
            &key,
            "start".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    replicator.settle().await;
    replicator.pause();
    let mut accepted = 0;
    for (i, table) in tables.iter().enumerate() {
        let put = table
            .put_item()
            .table_name(common::TABLE)
            .item(PK, AttributeValue::S(key.clone()))
            .item(VERSION, AttributeValue::N("2".into()))
            .item(
                VALUE,
                AttributeValue::B(format!("from-{i}").into_bytes().into()),
            )
            .item(WRITTEN_AT, AttributeValue::N(now_nanos().to_string()))
            .item(WRITER, AttributeValue::S(common::REGIONS[i].0.into()))
            .condition_expression("#v = :one")
            .expression_attribute_names("#v", VERSION)
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .send()
            .await;
        if put.is_ok() {
            accepted += 1;
        }
    }
    assert_eq!(
        accepted, 2,
        "both regions accepted a write based on version 1"
    );
    replicator.resume();
    replicator.settle().await;
    let mut values = Vec::new();
    for table in &tables {
        let item = table
            .get_item()
            .table_name(common::TABLE)
            .key(PK, AttributeValue::S(key.clone()))
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        values.push(item.item().unwrap().get(VALUE).cloned());
    }
    assert_eq!(values[0], values[1], "replication converged");
    assert_eq!(
        values[0],
        Some(AttributeValue::B(b"from-1".to_vec().into())),
        "last writer won: the first accepted write was silently lost"
    );
}

/// Writes version 1 of `key` straight into the table in `aws_region`, as
/// written by eu at `written_at`.
async fn put_version_one(
    endpoint: &str,
    aws_region: &str,
    table: &str,
    key: &str,
    written_at: u64,
) {
    common::sdk(endpoint, aws_region)
        .put_item()
        .table_name(table)
        .item(PK, AttributeValue::S(key.to_owned()))
        .item(VERSION, AttributeValue::N("1".into()))
        .item(VALUE, AttributeValue::B(b"0".to_vec().into()))
        .item(WRITTEN_AT, AttributeValue::N(written_at.to_string()))
        .item(WRITER, AttributeValue::S("eu".into()))
        .send()
        .await
        .unwrap();
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_writes_nothing() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let backend = common::backend(&endpoint, "eu").await;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let session = client.session();

    // A missing table.
    let mut config = common::config(&endpoint, "eu");
    config.table = "quorate_no_such_table".into();
    match DynamoBackend::connect(config).await {
        Err(Error::InvalidInput(m)) => assert!(m.contains("quorate_no_such_table"), "{m}"),
        other => panic!("{other:?}"),
    }

    // An oversize item: refused before sending, nothing written.
    let key = common::key("oversize");
    let big = vec![7u8; 400 * 1024];
    let r = client
        .write(
            &session,
            &key,
            big.into(),
            Precondition::Any,
            &WriteOptions::default(),
        )
        .await;
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
    let read = client
        .read(&session, &key, ReadPolicy::Strong)
        .await
        .unwrap();
    assert_eq!(read.value, None, "nothing was written");

    // A stored item whose attributes have other types.
    let key = common::key("mistyped");
    backend
        .client(&region("eu"))
        .unwrap()
        .put_item()
        .table_name(common::TABLE)
        .item(PK, AttributeValue::S(key.clone()))
        .item(VERSION, AttributeValue::S("three".into()))
        .item(VALUE, AttributeValue::S("not binary".into()))
        .item(WRITTEN_AT, AttributeValue::N("1".into()))
        .send()
        .await
        .unwrap();
    match client.read(&session, &key, ReadPolicy::Strong).await {
        Err(Error::Backend { code, source, .. }) => {
            assert_eq!(code.as_deref(), Some("quorate.item"));
            let item = source.downcast_ref::<ItemError>().expect("an ItemError");
            assert!(
                matches!(
                    item,
                    ItemError::WrongType {
                        attribute,
                        expected: "N",
                        ..
                    } if attribute == "version"
                ),
                "{item:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let w = client
        .write(
            &session,
            &key,
            "v".into(),
            Precondition::IfVersion(Version(3)),
            &WriteOptions::default(),
        )
        .await;
    assert!(w.is_err(), "a write over a mistyped item: {w:?}");

    // A home function that names a region outside the table's.
    let mut config = common::config(&endpoint, "eu");
    config.home = quorate_dynamodb::Home::By(Arc::new(|_| region("ap")));
    let homeless = Client::new(
        DynamoBackend::connect(config).await.unwrap(),
        ClientConfig::default(),
    )
    .unwrap();
    let key = common::key("homeless");
    let w = homeless
        .write(
            &homeless.session(),
            &key,
            "v".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await;
    assert!(matches!(w, Err(Error::Topology(_))), "{w:?}");
    let read = client
        .read(&session, &key, ReadPolicy::Strong)
        .await
        .unwrap();
    assert_eq!(read.value, None, "nothing was written");

    // An unknown region in a plan.
    let ap = region("ap");
    let plan = ReadPlan {
        key: "k",
        region: &ap,
        role: ReplicaRole::Leader,
        policy: ReadPolicy::Strong,
        floor: Default::default(),
        deadline: tokio::time::Instant::now() + Duration::from_secs(1),
    };
    assert!(matches!(backend.read(&plan).await, Err(Error::Topology(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_and_session_reads_use_the_nearby_replica_when_it_proves_fresh() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let prefix = common::key("fresh");
    let replicator = replicator::start(&endpoint, &prefix, Duration::ZERO).await;
    let client = common::client(&endpoint, "us").await;
    let session = client.session();
    let key = format!("{prefix}/k");
    let c = client
        .write(
            &session,
            &key,
            "1".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    replicator.settle().await;
    // The session's own write is visible in us: served there.
    let r = client
        .read(&session, &key, ReadPolicy::Session)
        .await
        .unwrap();
    assert_eq!(r.version(), Some(c.version));
    assert_eq!(
        (r.freshness.region.clone(), r.freshness.role),
        (region("us"), ReplicaRole::Follower),
        "{:?}",
        r.freshness
    );
    // A generous bound is met nearby; a bound the item's age cannot prove
    // is escalated home.
    let bounded =
        |ms| ReadPolicy::BoundedStaleness(quorate_dynamodb::Staleness::from_millis(ms).unwrap());
    let r = client
        .read(&client.session(), &key, bounded(60_000))
        .await
        .unwrap();
    assert_eq!(r.freshness.role, ReplicaRole::Follower);
    assert!(r.freshness.staleness_bound.unwrap() <= Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = client
        .read(&client.session(), &key, bounded(100))
        .await
        .unwrap();
    assert_eq!(
        (r.freshness.region, r.freshness.role),
        (region("eu"), ReplicaRole::Leader)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_over_from_an_unreachable_home_and_fail_back() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let prefix = common::key("failover");
    let replicator = replicator::start(&endpoint, &prefix, Duration::ZERO).await;
    let (backend, control) =
        quorate_dynamodb::chaos::Chaos::new(common::backend(&endpoint, "us").await);
    control.set_isolation_timeout(Duration::from_millis(200));
    let client = Client::new(
        backend,
        ClientConfig {
            home_failover: Some(Duration::from_millis(500)),
            region_ejection: Duration::from_millis(300),
            write_deadline: Duration::from_millis(1500),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let s = client.session();
    let key = format!("{prefix}/k");
    let options = WriteOptions::default();
    let write = || client.write(&s, &key, "v".into(), Precondition::Any, &options);
    assert_eq!(write().await.unwrap().region, region("eu"), "home affinity");
    control.isolate(&region("eu"));
    // The first write after the home went away waits out the failover
    // delay (or fails); later ones are served by us.
    let _ = write().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let moved = write().await.unwrap();
    assert_eq!(moved.region, region("us"), "failed over");
    control.heal(&region("eu"));
    replicator.settle().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    client.refresh_health().await;
    let back = write().await.unwrap();
    assert_eq!(back.region, region("eu"), "failback to the home region");
    assert!(back.version > moved.version, "{back:?} after {moved:?}");
}

/// Processes disagree on the time. A fence left by a lookup in a process
/// whose clock runs an hour ahead stops this process's attempts only until
/// it has seen the fence: the retry of the write goes ahead (retryable, then
/// applied once), instead of failing for an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_from_a_clock_ahead_does_not_block_the_retry() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let backend = common::backend(&endpoint, "eu").await;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let key = common::key("fenced-ahead");
    let idem = IdempotencyKey::new(&format!("{key}-create")).unwrap();
    let hour_ahead = now_nanos() + 3_600_000_000_000;
    common::sdk(&endpoint, "eu-west-1")
        .put_item()
        .table_name(backend.idempotency_table())
        .item(PK, AttributeValue::S(idem.as_str().to_owned()))
        .item(
            quorate_dynamodb::item::FENCED_BEFORE,
            AttributeValue::N(hour_ahead.to_string()),
        )
        .item(
            quorate_dynamodb::item::RECORD_KEY,
            AttributeValue::S(key.clone()),
        )
        .item(
            quorate_dynamodb::item::EXPIRES_AT,
            AttributeValue::N((now_nanos() / 1_000_000_000 + 86_400).to_string()),
        )
        .send()
        .await
        .unwrap();
    let options = WriteOptions {
        idempotency_key: Some(idem),
        ..WriteOptions::default()
    };
    let c = client
        .write(
            &client.session(),
            &key,
            "1".into(),
            Precondition::IfAbsent,
            &options,
        )
        .await
        .unwrap_or_else(|e| panic!("{}", e.report()));
    assert_eq!(c.version, Version(1));
    assert!(
        c.point.wall > hour_ahead,
        "the attempt started after the fence"
    );
}

/// An item last written by a process whose clock runs ahead: a write from
/// this process gets a later write time all the same, so an item's write
/// times (the points its reads state) increase with its versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_times_increase_with_versions_across_clocks() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let backend = common::backend(&endpoint, "eu").await;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let key = common::key("clock-ahead");
    let ahead = now_nanos() + 60_000_000_000;
    put_version_one(&endpoint, "eu-west-1", backend.table(), &key, ahead).await;
    let c = client
        .write(
            &client.session(),
            &key,
            "1".into(),
            Precondition::IfVersion(Version(1)),
            &WriteOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{}", e.report()));
    assert_eq!(c.version, Version(2));
    assert!(
        c.point.wall > ahead,
        "version 2 was stamped {} ns before version 1",
        ahead - c.point.wall
    );
    let r = client
        .read(&client.session(), &key, ReadPolicy::Strong)
        .await
        .unwrap();
    assert_eq!(r.freshness.point, Some(c.point));
}

/// A replica's item written ahead of this process's clock (its writer's
/// clock ran ahead): its age proves nothing, so the replica states no
/// staleness bound, and a bounded read goes home instead of taking it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_written_ahead_of_this_clock_proves_no_staleness_bound() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let backend = common::backend(&endpoint, "us").await;
    let key = common::key("written-ahead");
    let ahead = now_nanos() + 30_000_000_000;
    for aws in ["eu-west-1", "us-east-1"] {
        put_version_one(&endpoint, aws, backend.table(), &key, ahead).await;
    }
    let us = region("us");
    let read = backend
        .read(&ReadPlan {
            key: &key,
            region: &us,
            role: ReplicaRole::Follower,
            policy: ReadPolicy::BoundedStaleness(
                quorate_dynamodb::Staleness::from_millis(60_000).unwrap(),
            ),
            floor: Default::default(),
            deadline: tokio::time::Instant::now() + Duration::from_secs(5),
        })
        .await
        .unwrap();
    assert_eq!(read.version(), Some(Version(1)));
    assert_eq!(read.freshness.staleness_bound, None, "{:?}", read.freshness);
    let client = Client::new(backend, ClientConfig::default()).unwrap();
    let r = client
        .read(
            &client.session(),
            &key,
            ReadPolicy::BoundedStaleness(quorate_dynamodb::Staleness::from_millis(60_000).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.freshness.region, r.freshness.role),
        (region("eu"), ReplicaRole::Leader)
    );
}

/// A multi-record write whose exchange is lost on the network (the answer
/// after the commit, or the request before it) is resolved through its
/// idempotency item: both records moved exactly once, or the write is
/// sent again, never half of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_record_write_whose_exchange_is_lost_applies_once_and_whole() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    common::backend(&endpoint, "eu").await;
    let upstream: SocketAddr = endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("the endpoint is http://host:port");
    let proxy = CutProxy::start(upstream).await.unwrap();
    let through = format!("http://{}", proxy.addr());
    let mut config = common::config(&endpoint, "eu");
    config.regions[0].client = common::sdk(&through, common::REGIONS[0].1);
    let client = Client::new(
        DynamoBackend::connect(config).await.unwrap(),
        ClientConfig::default(),
    )
    .unwrap();
    let session = client.session();
    let (a, b) = (common::key("tx-a"), common::key("tx-b"));
    let zero = quorate_dynamodb::Bytes::from("0");
    let mut versions = client
        .transact(
            &session,
            &[
                TxOp::put(&a, &zero, Precondition::IfAbsent),
                TxOp::put(&b, &zero, Precondition::IfAbsent),
            ],
            &WriteOptions::default(),
        )
        .await
        .unwrap()
        .versions;
    for (cut, value) in [(Cut::Answer, "1"), (Cut::Request, "2")] {
        proxy.arm(b"TransactWriteItems", cut);
        let fired = proxy.fired();
        let value = quorate_dynamodb::Bytes::from(value);
        let moved = client
            .transact(
                &session,
                &[
                    TxOp::put(&a, &value, Precondition::IfVersion(versions[0].1)),
                    TxOp::put(&b, &value, Precondition::IfVersion(versions[1].1)),
                ],
                &WriteOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{cut:?}: the outcome is resolved, not {e}"));
        assert_eq!(proxy.fired(), fired + 1, "{cut:?}: the exchange was lost");
        for (n, key) in [&a, &b].into_iter().enumerate() {
            let next = versions[n].1.next();
            assert_eq!(moved.version_of(key), Some(next), "{cut:?}: {key}");
            let r = client
                .read(&session, key, ReadPolicy::Strong)
                .await
                .unwrap();
            assert_eq!(r.version(), Some(next), "{cut:?}: {key} moved exactly once");
            assert_eq!(r.value.unwrap().value, value);
        }
        versions = moved.versions;
    }
}
