//! Writes on tables with multi-Region strong consistency (MRSC), which
//! refuse `TransactWriteItems`: the idempotency record kept in the item.
//!
//! DynamoDB Local has no MRSC, but what MRSC promises — one linearizable
//! table, conditional writes and consistent reads through any region — is
//! what one DynamoDB Local database gives to two quorate regions whose
//! clients both name the same AWS region. The backend is told the mode
//! (`Mode::Strong`), as a table that reports none is.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use quorate_dynamodb::aws_sdk_dynamodb::types::AttributeValue;
use quorate_dynamodb::conformance::{cases, Fixture};
use quorate_dynamodb::cut_proxy::{Cut, CutProxy};
use quorate_dynamodb::item::{PK, RECENT, VERSION, WRITTEN_AT};

const MAX_RECENT: usize = 32;
use quorate_dynamodb::{
    Backend, Client, ClientConfig, DynamoBackend, DynamoConfig, Error, IdempotencyKey, Mode,
    Precondition, ReadPolicy, Region, RegionClient, TxOp, Version, WriteOptions,
};

/// Both quorate regions on DynamoDB Local's eu-west-1 database, through
/// `endpoints` (one per region).
async fn mrsc(endpoints: [&str; 2], local: &str) -> DynamoBackend {
    let Some(endpoint) = common::endpoint() else {
        unreachable!("checked by the caller")
    };
    common::backend(&endpoint, "eu").await;
    let regions = ["eu", "us"]
        .into_iter()
        .zip(endpoints)
        .map(|(name, at)| RegionClient {
            region: Region::new(name).unwrap(),
            client: common::sdk(at, "eu-west-1"),
        })
        .collect();
    let mut config = DynamoConfig::new("mrsc-test", common::TABLE, regions, local).unwrap();
    config.mode = Mode::Strong;
    let backend = DynamoBackend::connect(config).await.unwrap();
    assert_eq!(backend.mode(), Mode::Strong);
    backend
}

/// The item of `key` in quorate's table, read the plain way.
async fn raw(
    endpoint: &str,
    key: &str,
) -> Option<std::collections::HashMap<String, AttributeValue>> {
    common::sdk(endpoint, "eu-west-1")
        .get_item()
        .table_name(common::TABLE)
        .key(PK, AttributeValue::S(key.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item()
        .cloned()
}

fn number(item: &std::collections::HashMap<String, AttributeValue>, name: &str) -> u64 {
    item[name].as_n().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_holds_on_mrsc_without_transactions() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let backend = mrsc([&endpoint, &endpoint], "us").await;
    let fixture = Fixture::new(backend.clone());
    let mut ran = 0;
    for (name, case) in cases::<DynamoBackend>() {
        if name.starts_with("multi_record") {
            continue;
        }
        let result = case(&fixture).await;
        println!("{name}: {result:?}");
        assert!(result.is_ok(), "{name}: {result:?}");
        ran += 1;
    }
    assert!(ran >= 14, "{ran} cases ran");
    // Multi-record writes are refused with what to do instead.
    let client = Client::new(backend, ClientConfig::default()).unwrap();
    let zero = quorate_dynamodb::Bytes::from("0");
    let err = client
        .transact(
            &client.session(),
            &[
                TxOp::put("mrsc-a", &zero, Precondition::Any),
                TxOp::put("mrsc-b", &zero, Precondition::Any),
            ],
            &WriteOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported(m) if m.contains("one by one")),
        "{err:?}"
    );
}

/// A write whose answer is lost after the commit, or whose request is lost
/// before it, resolves to exactly once through the item itself, in either
/// region, and the item carries the evidence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_put_resolves_to_exactly_once_through_the_item() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let upstream: SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    let proxy = CutProxy::start(upstream).await.unwrap();
    let through = format!("http://{}", proxy.addr());
    let client = Client::new(
        mrsc([&through, &endpoint], "eu").await,
        ClientConfig::default(),
    )
    .unwrap();
    let session = client.session();
    let key = common::key("mrsc-lost");
    // MRSC tables refuse transactions: a write must not send one (the
    // proxy would lose it).
    proxy.arm(b"TransactWriteItems", Cut::Request);
    let mut expected = client
        .write(
            &session,
            &key,
            "0".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap()
        .version;
    assert_eq!(proxy.fired(), 0, "a write sent TransactWriteItems");
    for (cut, value) in [(Cut::Answer, "1"), (Cut::Request, "2")] {
        let idem = IdempotencyKey::new(&common::key("idem")).unwrap();
        let options = WriteOptions {
            idempotency_key: Some(idem.clone()),
            ..WriteOptions::default()
        };
        proxy.arm(b"PutItem", cut);
        let fired = proxy.fired();
        let c = client
            .write(
                &session,
                &key,
                value.into(),
                Precondition::IfVersion(expected),
                &options,
            )
            .await
            .unwrap_or_else(|e| panic!("{cut:?}: resolved, not {e}"));
        assert_eq!(proxy.fired(), fired + 1, "{cut:?}: the exchange was lost");
        assert_eq!(c.version, expected.next(), "{cut:?}: applied exactly once");
        let item = raw(&endpoint, &key).await.unwrap();
        assert_eq!(number(&item, VERSION), c.version.0);
        let recent = item[RECENT].as_m().unwrap();
        assert!(
            recent.contains_key(idem.as_str()),
            "{cut:?}: the item records the write"
        );
        // The same logical write again: its outcome, not a second one.
        let again = client
            .write(
                &session,
                &key,
                value.into(),
                Precondition::IfVersion(expected),
                &options,
            )
            .await
            .unwrap();
        assert_eq!(again.version, c.version, "{cut:?}: a retry re-applied");
        expected = c.version;
    }
    let r = client
        .read(&session, &key, ReadPolicy::Strong)
        .await
        .unwrap();
    assert_eq!(r.version(), Some(expected));
}

/// A lookup that finds nothing fences the record: an existing item's write
/// time moves past every attempt started before (its version and value
/// unchanged); a record that never existed gets a placeholder every reader
/// takes as absent, and is then created at version 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_that_finds_nothing_fences_the_record() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let backend = mrsc([&endpoint, &endpoint], "eu").await;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let session = client.session();
    let eu = Region::new("eu").unwrap();
    let us = Region::new("us").unwrap();

    let key = common::key("mrsc-fence");
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
    let idem = IdempotencyKey::new(&common::key("never-sent")).unwrap();
    assert_eq!(backend.lookup(&us, &key, &idem).await.unwrap(), None);
    let item = raw(&endpoint, &key).await.unwrap();
    assert_eq!(
        number(&item, VERSION),
        c.version.0,
        "the fence writes no version"
    );
    assert!(
        number(&item, WRITTEN_AT) > c.point.wall,
        "the fence moved the write time"
    );
    let r = client
        .read(&session, &key, ReadPolicy::Strong)
        .await
        .unwrap();
    assert_eq!(&r.value.unwrap().value[..], b"v");
    // The write's own lookup finds it, in the other region.
    let mine = IdempotencyKey::new(&common::key("sent")).unwrap();
    let options = WriteOptions {
        idempotency_key: Some(mine.clone()),
        ..WriteOptions::default()
    };
    let w = client
        .write(
            &session,
            &key,
            "w".into(),
            Precondition::IfVersion(c.version),
            &options,
        )
        .await
        .unwrap();
    assert_eq!(
        backend.lookup(&us, &key, &mine).await.unwrap(),
        Some(w.clone())
    );

    let absent = common::key("mrsc-never");
    assert_eq!(backend.lookup(&eu, &absent, &idem).await.unwrap(), None);
    let placeholder = raw(&endpoint, &absent).await.expect("a placeholder");
    assert_eq!(number(&placeholder, VERSION), 0);
    let r = client
        .read(&session, &absent, ReadPolicy::Strong)
        .await
        .unwrap();
    assert_eq!((r.version(), r.deleted), (None, None), "absent to readers");
    let created = client
        .write(
            &session,
            &absent,
            "new".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(created.version, Version::FIRST);
}

/// More writes than the item keeps: the oldest outcomes are carried into
/// the idempotency table before the item drops them, so a retry of the
/// first write still finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_dropped_from_the_item_are_carried_first() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let backend = mrsc([&endpoint, &endpoint], "eu").await;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let session = client.session();
    let key = common::key("mrsc-many");
    let first = IdempotencyKey::new(&common::key("first")).unwrap();
    let options = |k: &IdempotencyKey| WriteOptions {
        idempotency_key: Some(k.clone()),
        ..WriteOptions::default()
    };
    let c1 = client
        .write(
            &session,
            &key,
            "1".into(),
            Precondition::IfAbsent,
            &options(&first),
        )
        .await
        .unwrap();
    for i in 2..=45u64 {
        let k = IdempotencyKey::new(&common::key("later")).unwrap();
        let c = client
            .write(
                &session,
                &key,
                i.to_string().into(),
                Precondition::Any,
                &options(&k),
            )
            .await
            .unwrap();
        assert_eq!(c.version, Version(i));
    }
    let item = raw(&endpoint, &key).await.unwrap();
    let kept = item[RECENT].as_m().unwrap();
    assert!(kept.len() <= 32, "the map is bounded: {}", kept.len());
    assert!(
        !kept.contains_key(first.as_str()),
        "the first write was dropped"
    );
    let us = Region::new("us").unwrap();
    assert_eq!(
        backend.lookup(&us, &key, &first).await.unwrap(),
        Some(c1.clone())
    );
    let again = client
        .write(
            &session,
            &key,
            "1".into(),
            Precondition::IfAbsent,
            &options(&first),
        )
        .await
        .unwrap();
    assert_eq!(again, c1, "the first write's retry returns its outcome");
    let r = client
        .read(&session, &key, ReadPolicy::Strong)
        .await
        .unwrap();
    assert_eq!(r.version(), Some(Version(45)));
    // A retry whose precondition still holds (`Any`) after its entry left
    // the map: its outcome, not a second application.
    let second = IdempotencyKey::new(&common::key("second")).unwrap();
    let c2 = client
        .write(
            &session,
            &key,
            "46".into(),
            Precondition::Any,
            &options(&second),
        )
        .await
        .unwrap();
    for _ in 0..MAX_RECENT {
        let k = IdempotencyKey::new(&common::key("pushing")).unwrap();
        client
            .write(&session, &key, "x".into(), Precondition::Any, &options(&k))
            .await
            .unwrap();
    }
    let item = raw(&endpoint, &key).await.unwrap();
    assert!(!item[RECENT].as_m().unwrap().contains_key(second.as_str()));
    let before = number(&item, VERSION);
    let retried = client
        .write(
            &session,
            &key,
            "46".into(),
            Precondition::Any,
            &options(&second),
        )
        .await
        .unwrap();
    assert_eq!(retried, c2, "the Any retry returns its outcome");
    let after = number(&raw(&endpoint, &key).await.unwrap(), VERSION);
    assert_eq!(after, before, "and applies nothing");
}

/// A writer whose clock runs ahead sends a put that is held; a lookup from
/// a process whose clock is behind it fences past the put's start all the
/// same (the start was claimed before the put was sent), so the late put is
/// refused. Fencing by the looking-up process's clock alone lets it commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_fences_past_a_clock_ahead() {
    use quorate_dynamodb::{Mutation, WriteRequest};
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let upstream: SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    let proxy = CutProxy::start(upstream).await.unwrap();
    let through = format!("http://{}", proxy.addr());
    let ahead = mrsc([&through, &endpoint], "eu").await;
    // The writer's clock: pushed two minutes ahead by an item written by a
    // process further ahead still.
    let elsewhere = common::key("mrsc-ahead-other");
    let future = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        + 120_000_000_000;
    common::sdk(&endpoint, "eu-west-1")
        .put_item()
        .table_name(common::TABLE)
        .item(PK, AttributeValue::S(elsewhere.clone()))
        .item(VERSION, AttributeValue::N("1".into()))
        .item(WRITTEN_AT, AttributeValue::N(future.to_string()))
        .item("writer", AttributeValue::S("eu".into()))
        .item("value", AttributeValue::B(vec![1].into()))
        .send()
        .await
        .unwrap();
    let writer = Client::new(ahead.clone(), ClientConfig::default()).unwrap();
    writer
        .write(
            &writer.session(),
            &elsewhere,
            "2".into(),
            Precondition::IfVersion(Version(1)),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    // The record, written now by a process on time.
    let key = common::key("mrsc-ahead");
    let plain = Client::new(
        mrsc([&endpoint, &endpoint], "eu").await,
        ClientConfig::default(),
    )
    .unwrap();
    let c = plain
        .write(
            &plain.session(),
            &key,
            "before".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    // The writer's put, held.
    let idem = IdempotencyKey::new(&common::key("ahead")).unwrap();
    let value = quorate_dynamodb::Bytes::from("late");
    let eu = Region::new("eu").unwrap();
    proxy.arm(b"PutItem", Cut::Late);
    let request = WriteRequest {
        key: &key,
        mutation: Mutation::Put(&value),
        precondition: Precondition::IfVersion(c.version),
        idempotency_key: Some(&idem),
        region: &eu,
        deadline: tokio::time::Instant::now() + Duration::from_secs(5),
    };
    let gave_up = tokio::time::timeout(Duration::from_millis(500), ahead.write(&request)).await;
    assert!(gave_up.is_err(), "the put was held");
    // Another process, its clock two minutes behind the writer's.
    let behind = mrsc([&endpoint, &endpoint], "us").await;
    let us = Region::new("us").unwrap();
    assert_eq!(behind.lookup(&us, &key, &idem).await.unwrap(), None);
    proxy.release();
    let delivered =
        common::eventually(Duration::from_secs(10), || async { proxy.delivered() >= 1 }).await;
    assert!(delivered, "the late put reached the table");
    let item = raw(&endpoint, &key).await.unwrap();
    assert_eq!(number(&item, VERSION), c.version.0, "the late put applied");
}

/// A put that reaches the table after its writer gave up and a lookup found
/// nothing (a late commit) is refused: the lookup's fence moved the item's
/// write time past the attempt's start. Without the fence the late put
/// would apply a write the caller was told never happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_put_after_a_lookup_is_refused_by_the_fence() {
    use quorate_dynamodb::{Mutation, WriteRequest};
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let upstream: SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    let proxy = CutProxy::start(upstream).await.unwrap();
    let through = format!("http://{}", proxy.addr());
    let backend = mrsc([&through, &endpoint], "eu").await;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let key = common::key("mrsc-late");
    let c = client
        .write(
            &client.session(),
            &key,
            "before".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    for absent in [false, true] {
        let key = if absent {
            common::key("mrsc-late-new")
        } else {
            key.clone()
        };
        let idem = IdempotencyKey::new(&common::key("late")).unwrap();
        let value = quorate_dynamodb::Bytes::from("late");
        let eu = Region::new("eu").unwrap();
        proxy.arm(b"PutItem", Cut::Late);
        let request = WriteRequest {
            key: &key,
            mutation: Mutation::Put(&value),
            precondition: if absent {
                Precondition::IfAbsent
            } else {
                Precondition::IfVersion(c.version)
            },
            idempotency_key: Some(&idem),
            region: &eu,
            deadline: tokio::time::Instant::now() + Duration::from_secs(5),
        };
        // The writer gives up on the held put.
        let gave_up =
            tokio::time::timeout(Duration::from_millis(500), backend.write(&request)).await;
        assert!(gave_up.is_err(), "the put was held");
        let us = Region::new("us").unwrap();
        assert_eq!(backend.lookup(&us, &key, &idem).await.unwrap(), None);
        proxy.release();
        let delivered = common::eventually(Duration::from_secs(10), || async {
            proxy.delivered() > u32::from(absent)
        })
        .await;
        assert!(delivered, "the late put reached the table");
        let r = client
            .read(&client.session(), &key, ReadPolicy::Strong)
            .await
            .unwrap();
        if absent {
            assert_eq!(r.version(), None, "the late put created the record");
        } else {
            assert_eq!(r.version(), Some(c.version), "the late put applied");
            assert_eq!(&r.value.unwrap().value[..], b"before");
        }
        // Looked up again: still nothing; sent again, applied once.
        assert_eq!(backend.lookup(&us, &key, &idem).await.unwrap(), None);
        let again = backend
            .write(&WriteRequest {
                deadline: tokio::time::Instant::now() + Duration::from_secs(5),
                ..request
            })
            .await
            .unwrap();
        let expected = if absent {
            Version::FIRST
        } else {
            c.version.next()
        };
        assert_eq!(again.version, expected);
    }
}
