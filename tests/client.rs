//! The client over the simulator: typed handles, read-modify-write under
//! contention, escalation, routing around failures, and configuration errors.

use std::time::Duration;

use quorate::chaos::Chaos;
use quorate::sim::{Replication, Sim, SimConfig};
use quorate::{
    Backend, Client, ClientConfig, Critical, Error, Peripheral, PolicyBook, Precondition,
    ReadPolicy, ReplicaRole, RetryPolicy, Staleness, StrictRead, WriteOptions,
};

fn sim() -> Sim {
    Sim::new(SimConfig::new(["eu", "us", "ap"]).unwrap()).unwrap()
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
struct Account {
    balance: i64,
}

#[tokio::test(start_paused = true)]
async fn typed_collections_round_trip() {
    let client = Client::new(sim().at("us").unwrap(), ClientConfig::default()).unwrap();
    let session = client.session();
    let accounts = client
        .collection::<Account, Critical>("accounts", &session)
        .unwrap();
    let c = accounts
        .put("a1", &Account { balance: 10 }, Precondition::IfAbsent)
        .await
        .unwrap();
    let r = accounts.get("a1").await.unwrap();
    assert_eq!(r.value.as_ref().unwrap().value, Account { balance: 10 });
    assert_eq!(r.version(), Some(c.version));
    assert_eq!(
        r.freshness.role,
        ReplicaRole::Leader,
        "critical default is strong"
    );
    let s = accounts.get_with("a1", StrictRead::Session).await.unwrap();
    assert_eq!(s.version(), Some(c.version));
    assert!(accounts.get("missing").await.unwrap().value.is_none());

    let feed = client
        .collection::<String, Peripheral>("feed", &session)
        .unwrap();
    feed.put("f1", &"hello".to_string(), Precondition::Any)
        .await
        .unwrap();
    let bounded = ReadPolicy::BoundedStaleness(Staleness::from_millis(5000).unwrap());
    let r = feed.get_with("f1", bounded).await.unwrap();
    assert!(
        r.freshness.role == ReplicaRole::Leader
            || r.freshness.staleness_bound.unwrap() <= Duration::from_secs(5)
    );

    for bad in ["", "a/b", &"x".repeat(65)] {
        assert!(matches!(
            client.collection::<Account, Critical>(bad, &session),
            Err(Error::InvalidInput(_))
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn a_value_of_another_type_is_a_serialization_error() {
    let client = Client::new(sim().at("eu").unwrap(), ClientConfig::default()).unwrap();
    let session = client.session();
    let text = client
        .collection::<String, Peripheral>("mixed", &session)
        .unwrap();
    text.put("k", &"not a number".to_string(), Precondition::Any)
        .await
        .unwrap();
    let numbers = client
        .collection::<u64, Peripheral>("mixed", &session)
        .unwrap();
    assert!(matches!(
        numbers.get("k").await,
        Err(Error::Serialization(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_float_with_no_json_form_is_refused_and_nothing_is_written() {
    let client = Client::new(sim().at("eu").unwrap(), ClientConfig::default()).unwrap();
    let session = client.session();
    let prices = client
        .collection::<Vec<f64>, Peripheral>("prices", &session)
        .unwrap();
    for bad in [f64::NAN, f64::INFINITY] {
        let e = prices
            .put("p", &vec![1.0, bad], Precondition::Any)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        let mut tx = client.transaction(&session);
        assert!(matches!(
            prices.put_in(&mut tx, "p", &vec![bad], Precondition::Any),
            Err(Error::InvalidInput(_))
        ));
    }
    // Written as `null`, the value would come back as something else.
    assert!(prices.get("p").await.unwrap().value.is_none());
    assert!(matches!(
        prices.update("p", |_| vec![f64::NAN]).await,
        Err(Error::InvalidInput(_))
    ));
    assert!(prices.get("p").await.unwrap().value.is_none());
}

#[tokio::test(start_paused = true)]
async fn concurrent_updates_lose_nothing() {
    let sim = sim();
    let mut tasks = Vec::new();
    for (i, region) in ["eu", "us", "ap"].into_iter().enumerate() {
        let client = Client::new(
            sim.at(region).unwrap(),
            ClientConfig {
                seed: Some(i as u64),
                ..ClientConfig::default()
            },
        )
        .unwrap();
        tasks.push(tokio::spawn(async move {
            let session = client.session();
            let counters = client
                .collection::<u64, Critical>("counters", &session)
                .unwrap()
                .with_write_options(WriteOptions::default());
            let mut done = 0;
            for _ in 0..10 {
                match counters.update("c", |old| old.unwrap_or(0) + 1).await {
                    Ok(_) => done += 1,
                    Err(Error::Conflict { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            done
        }));
    }
    let mut applied = 0;
    for t in tasks {
        applied += t.await.unwrap();
    }
    let client = Client::new(sim.at("eu").unwrap(), ClientConfig::default()).unwrap();
    let session = client.session();
    let counters = client
        .collection::<u64, Critical>("counters", &session)
        .unwrap();
    let r = counters.get("c").await.unwrap();
    assert_eq!(
        r.value.unwrap().value,
        applied,
        "every applied increment is counted once"
    );
    assert!(
        applied >= 25,
        "most updates succeed after re-reading: {applied}"
    );
}

#[tokio::test(start_paused = true)]
async fn policy_book_guards_names_known_at_run_time() {
    let book: PolicyBook = serde_json::from_str(
        r#"{"orders":{"class":"critical","default":"session"},
            "recommendations":{"class":"peripheral","default":"bounded:30000"}}"#,
    )
    .unwrap();
    assert_eq!(book.resolve("orders", None).unwrap(), ReadPolicy::Session);
    let relaxed: ReadPolicy = "bounded:1000".parse().unwrap();
    match book.resolve("orders", Some(relaxed)) {
        Err(Error::PolicyViolation { name, policy }) => {
            assert_eq!(name, "orders");
            assert_eq!(policy, relaxed);
        }
        other => panic!("expected a policy violation, got {other:?}"),
    }
    assert_eq!(
        book.resolve("recommendations", Some(relaxed)).unwrap(),
        relaxed
    );
    assert!(matches!(
        book.resolve("never-declared", Some(relaxed)),
        Err(Error::PolicyViolation { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn session_reads_escalate_past_a_lagging_follower() {
    let sim = sim();
    sim.set_replication_lag("us", Duration::from_secs(60))
        .unwrap();
    let client = Client::new(sim.at("us").unwrap(), ClientConfig::default()).unwrap();
    let session = client.session();
    let c = client
        .write(
            &session,
            "k",
            "1".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let r = client
        .read(&session, "k", ReadPolicy::Session)
        .await
        .unwrap();
    assert_eq!(r.version(), Some(c.version));
    assert_eq!(
        r.freshness.role,
        ReplicaRole::Leader,
        "escalated to the leaseholder"
    );
    // Another session, with no progress, is served by the local follower.
    let fresh = client
        .read(&client.session(), "k", ReadPolicy::Session)
        .await
        .unwrap();
    assert_eq!(fresh.freshness.role, ReplicaRole::Follower);
    assert_eq!(fresh.freshness.region.as_str(), "us");
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_attempt_cap() {
    let (backend, control) = Chaos::new(sim().at("eu").unwrap());
    let client = Client::new(
        backend,
        ClientConfig {
            retry: RetryPolicy {
                max_attempts: Some(3),
                ..RetryPolicy::default()
            },
            ..ClientConfig::default()
        },
    )
    .unwrap();
    control.fail_writes_before_send(10);
    let err = client
        .write(
            &client.session(),
            "k",
            "v".into(),
            Precondition::Any,
            &WriteOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::RetriesExhausted { attempts: 3, .. }),
        "{err}"
    );
    assert!(!err.is_ambiguous(), "nothing was sent");
    assert_eq!(control.injected(), 3);
}

#[tokio::test(start_paused = true)]
async fn multi_writer_writes_go_to_the_home_region() {
    let mut config = SimConfig::new(["eu", "us"]).unwrap();
    config.replication = Replication::MultiWriter;
    let sim = Sim::new(config).unwrap();
    let client = Client::new(sim.at("us").unwrap(), ClientConfig::default()).unwrap();
    let c = client
        .write(
            &client.session(),
            "k",
            "v".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(c.region.as_str(), "eu");
}

#[test]
fn invalid_configuration_is_rejected() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let backend = sim();
        for config in [
            ClientConfig {
                read_deadline: Duration::ZERO,
                ..ClientConfig::default()
            },
            ClientConfig {
                retry: RetryPolicy {
                    max_attempts: Some(0),
                    ..RetryPolicy::default()
                },
                ..ClientConfig::default()
            },
            ClientConfig {
                retry_budget_ratio: -1.0,
                ..ClientConfig::default()
            },
        ] {
            assert!(matches!(
                Client::new(backend.clone(), config),
                Err(Error::InvalidInput(_))
            ));
        }
    });
}

/// The client's futures hold the backend's request once: an async fn that
/// receives a future as an argument stores it twice, and a request held
/// across several such layers (plus an inline hedged path holding two)
/// made every read several times the size of the request it wraps.
#[test]
fn client_futures_hold_the_backend_request_once() {
    use quorate::{Backend, ReadPlan, ReplicaRole, WriteRequest};
    let backend = sim().at("us").unwrap();
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let session = client.session();
    let region = quorate::Region::new("us").unwrap();
    let plan = ReadPlan {
        key: "k",
        region: &region,
        role: ReplicaRole::Leader,
        policy: ReadPolicy::Strong,
        floor: Default::default(),
        deadline: tokio::time::Instant::now(),
    };
    let value: bytes::Bytes = "v".into();
    let request = WriteRequest {
        key: "k",
        mutation: quorate::Mutation::Put(&value),
        precondition: Precondition::Any,
        idempotency_key: None,
        region: &region,
        deadline: tokio::time::Instant::now(),
    };
    let backend_read = std::mem::size_of_val(&backend.read(&plan));
    let backend_write = std::mem::size_of_val(&backend.write(&request));
    let read = std::mem::size_of_val(&client.read(&session, "k", ReadPolicy::Strong));
    let write = std::mem::size_of_val(&client.write(
        &session,
        "k",
        value.clone(),
        Precondition::Any,
        &WriteOptions::default(),
    ));
    // The client's own state: a few hundred bytes to a couple of KiB.
    assert!(
        read <= backend_read + 2048,
        "read: {read} B over a {backend_read} B request"
    );
    assert!(
        write <= backend_write + 3072,
        "write: {write} B over a {backend_write} B request"
    );
}

/// The naive client runs over any backend: here the simulator wrapped in
/// chaos, whose lost answers it retries blindly into a second version.
#[tokio::test(start_paused = true)]
async fn the_naive_client_runs_over_any_backend() {
    use quorate::drill::naive::{NaiveClient, NaiveReads};
    let (backend, control) = Chaos::new(sim().at("us").unwrap());
    let naive = NaiveClient::new(backend, NaiveReads::LocalGateway);
    naive
        .write("k", "0".into(), Precondition::IfAbsent)
        .await
        .unwrap();
    control.drop_write_responses(1);
    let c = naive
        .write("k", "1".into(), Precondition::Any)
        .await
        .unwrap();
    assert_eq!(
        c.version.0, 3,
        "the lost answer's write applied, then the retry"
    );
    assert_eq!(naive.read("k").await.unwrap().version(), Some(c.version));
}

/// Wrappers sharing one control share its faults and the writes its lag
/// replays: a write through one service lags for the other. Fault counts
/// add up.
#[tokio::test(start_paused = true)]
async fn chaos_wrappers_sharing_a_control_share_faults_and_writes() {
    let sim = sim();
    let (eu, control) = Chaos::new(sim.at("eu").unwrap());
    let us = Chaos::with_control(sim.at("us").unwrap(), &control);
    let writer = Client::new(eu, ClientConfig::default()).unwrap();
    let reader = Client::new(us, ClientConfig::default()).unwrap();
    let session = writer.session();
    let options = WriteOptions::default();
    writer
        .write(&session, "k", "0".into(), Precondition::IfAbsent, &options)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    control.set_replica_lag(
        &quorate::Region::new("us").unwrap(),
        Duration::from_secs(600),
    );
    let plan_region = quorate::Region::new("us").unwrap();
    let stale = quorate::Backend::read(
        reader.backend(),
        &quorate::ReadPlan {
            key: "k",
            region: &plan_region,
            role: ReplicaRole::Follower,
            policy: ReadPolicy::Session,
            floor: quorate::SessionFloor::default(),
            deadline: tokio::time::Instant::now() + Duration::from_secs(5),
        },
    )
    .await
    .unwrap();
    assert_eq!(stale.version(), None, "the other service's write lags here");
    control.set_replica_lag(&plan_region, Duration::ZERO);
    let before = control.injected();
    control.drop_write_responses(1);
    control.drop_write_responses(1);
    for i in 0..2 {
        writer
            .write(
                &session,
                "k",
                format!("{i}").into(),
                Precondition::Any,
                &options,
            )
            .await
            .unwrap();
    }
    assert_eq!(control.injected() - before, 2, "two lost answers, not one");
}

/// A recorded process may move between sessions; each operation is
/// recorded in the session it ran in.
#[tokio::test(start_paused = true)]
async fn a_recorded_process_moves_between_sessions() {
    use quorate::history::{RecordedClient, Recorder};
    let client = Client::new(sim().at("us").unwrap(), ClientConfig::default()).unwrap();
    let recorder = Recorder::new();
    let mut worker =
        RecordedClient::new(client.clone(), client.session(), "alice", recorder.clone());
    worker
        .write(
            "a",
            "1".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    worker.switch_session(client.session(), "bob");
    worker.read("a", ReadPolicy::Session).await.unwrap();
    let sessions: Vec<Option<String>> = recorder.events().into_iter().map(|e| e.session).collect();
    let named = |n: &str| Some(n.to_owned());
    assert_eq!(
        sessions,
        [named("alice"), named("alice"), named("bob"), named("bob")]
    );
    assert_eq!(
        quorate::history::check_events(&recorder.events())
            .unwrap()
            .total(),
        0
    );
}

/// A multi-writer table may home each key by its hash: the client writes
/// each key in its own home, and a consistent read is current there only.
#[tokio::test(start_paused = true)]
async fn hashed_homes_send_each_key_to_its_own_home() {
    use quorate::Backend;
    let mut c = SimConfig::new(["eu", "us", "ap"]).unwrap();
    c.replication = Replication::MultiWriter;
    c.hashed_homes = true;
    let sim = Sim::new(c).unwrap();
    let backend = sim.at("us").unwrap();
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let session = client.session();
    let mut homes = std::collections::BTreeSet::new();
    for i in 0..12 {
        let key = format!("order-{i}");
        let home = backend.home_region(&key).unwrap().clone();
        homes.insert(home.as_str().to_owned());
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
        assert_eq!(c.region, home, "{key} written in its home");
        let r = client
            .read(&session, &key, ReadPolicy::Strong)
            .await
            .unwrap();
        assert_eq!(r.freshness.region, home);
        assert_eq!(r.freshness.role, ReplicaRole::Leader);
    }
    assert_eq!(homes.len(), 3, "homes spread over every region: {homes:?}");
}

/// A multi-record write of a bad shape is refused, typed, before anything
/// is sent: no record, too many, a record named twice, nothing written,
/// too many bytes, and, where writes go to each key's home, records of two
/// homes. Nothing of any of them applies.
#[tokio::test(start_paused = true)]
async fn multi_record_writes_of_bad_shapes_are_refused_before_sending() {
    let sim = sim();
    let client = Client::new(sim.at("us").unwrap(), ClientConfig::default()).unwrap();
    let session = client.session();
    let v = quorate::Bytes::from_static(b"v");
    let big = quorate::Bytes::from(vec![0u8; quorate::MAX_TRANSACTION_BYTES / 2 + 1]);
    let keys: Vec<String> = (0..=quorate::MAX_TRANSACTION_RECORDS)
        .map(|i| format!("k{i}"))
        .collect();
    let too_many: Vec<quorate::TxOp<'_>> = keys
        .iter()
        .map(|k| quorate::TxOp::put(k, &v, Precondition::Any))
        .collect();
    let cases: Vec<(&str, Vec<quorate::TxOp<'_>>)> = vec![
        ("no record", vec![]),
        ("too many records", too_many),
        (
            "a record twice",
            vec![
                quorate::TxOp::put("a", &v, Precondition::Any),
                quorate::TxOp::delete("a", Precondition::Any),
            ],
        ),
        (
            "only checks",
            vec![quorate::TxOp::check("a", Precondition::IfAbsent)],
        ),
        (
            "too many bytes",
            vec![
                quorate::TxOp::put("a", &big, Precondition::Any),
                quorate::TxOp::put("b", &big, Precondition::Any),
            ],
        ),
        (
            "an empty key",
            vec![quorate::TxOp::put("", &v, Precondition::Any)],
        ),
    ];
    for (what, ops) in cases {
        match client
            .transact(&session, &ops, &WriteOptions::default())
            .await
        {
            Err(Error::InvalidInput(_)) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    for key in ["a", "b", "k0", "k100"] {
        let r = client
            .read(&session, key, ReadPolicy::Strong)
            .await
            .unwrap();
        assert_eq!(r.observed(), None, "{key} was written");
    }

    // Two homes on a table whose writes go to each key's home.
    let mut config = SimConfig::new(["eu", "us", "ap"]).unwrap();
    config.replication = Replication::MultiWriter;
    config.hashed_homes = true;
    let global = Sim::new(config).unwrap();
    let client = Client::new(global.at("us").unwrap(), ClientConfig::default()).unwrap();
    let home = |k: &str| client.backend().home_region(k).unwrap().clone();
    let first = "order:1".to_owned();
    let other = (0..100)
        .map(|i| format!("stock:{i}"))
        .find(|k| home(k) != home(&first))
        .unwrap();
    let ops = [
        quorate::TxOp::put(&first, &v, Precondition::Any),
        quorate::TxOp::put(&other, &v, Precondition::Any),
    ];
    match client
        .transact(&client.session(), &ops, &WriteOptions::default())
        .await
    {
        Err(Error::InvalidInput(why)) => assert!(why.contains("one home"), "{why}"),
        other => panic!("two homes: {other:?}"),
    }
}

/// A batch read reads each key as a single read would, in order, and
/// refuses an oversized batch before reading anything.
#[tokio::test(start_paused = true)]
async fn batch_reads_read_each_key_in_order() {
    let client = Client::new(sim().at("us").unwrap(), ClientConfig::default()).unwrap();
    let session = client.session();
    let accounts = client
        .collection::<Account, Critical>("accounts", &session)
        .unwrap();
    let mut versions = Vec::new();
    for (k, balance) in [("a", 1), ("b", 2)] {
        versions.push(
            accounts
                .put(k, &Account { balance }, Precondition::IfAbsent)
                .await
                .unwrap()
                .version,
        );
    }
    let reads = accounts.get_many(&["b", "missing", "a"]).await.unwrap();
    let seen: Vec<_> = reads
        .iter()
        .map(|r| r.value.as_ref().map(|v| (v.version, v.value.balance)))
        .collect();
    assert_eq!(
        seen,
        vec![Some((versions[1], 2)), None, Some((versions[0], 1))]
    );
    let many: Vec<String> = (0..=quorate::MAX_BATCH).map(|i| i.to_string()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(matches!(
        accounts.get_many(&many).await,
        Err(Error::InvalidInput(_))
    ));
}

/// A query of a collection's records over the simulator, through
/// `Collection::query_with`: the run reads two keys at the plan's replica.
async fn query_two<C: quorate::DataClass>(
    accounts: &quorate::Collection<Account, C, Sim>,
    policy: C::Policy,
) -> Result<quorate::Queried<quorate::Records<Account>>, Error> {
    let backend = accounts.client().backend().clone();
    accounts
        .query_with(policy, Some("a"), |plan| {
            let backend = backend.clone();
            let region = plan.region.clone();
            let (role, policy, deadline) = (plan.role, plan.policy, plan.deadline);
            async move {
                let mut rows = Vec::new();
                let mut oldest: Option<quorate::Freshness> = None;
                for k in ["a", "b"] {
                    let key = format!("accounts/{k}");
                    let r = backend
                        .read(&quorate::ReadPlan {
                            key: &key,
                            region: &region,
                            role,
                            policy,
                            floor: quorate::SessionFloor::default(),
                            deadline,
                        })
                        .await?;
                    if let Some(v) = r.value {
                        rows.push((k.to_owned(), v));
                    }
                    // The result is as fresh as its stalest read.
                    oldest = match oldest {
                        Some(f) if f.point <= r.freshness.point => Some(f),
                        _ => Some(r.freshness),
                    };
                }
                let freshness = oldest.ok_or_else(|| Error::InvalidInput("no keys".into()))?;
                Ok((rows, freshness))
            }
        })
        .await
}

#[tokio::test(start_paused = true)]
async fn a_collection_query_decodes_and_reads_the_session_s_writes() {
    let sim = sim();
    sim.set_replication_lag("us", Duration::from_secs(60))
        .unwrap();
    let client = Client::new(sim.at("us").unwrap(), ClientConfig::default()).unwrap();
    let session = client.session();
    let accounts = client
        .collection::<Account, Critical>("accounts", &session)
        .unwrap();
    for (k, balance) in [("a", 1), ("b", 2)] {
        accounts
            .put(k, &Account { balance }, Precondition::IfAbsent)
            .await
            .unwrap();
    }
    // The local follower lags a minute: a session query escalates and
    // finds the session's own writes, decoded.
    let q = query_two(&accounts, StrictRead::Session).await.unwrap();
    let found: Vec<(&str, i64)> = q
        .rows
        .iter()
        .map(|(k, r)| (k.as_str(), r.value.balance))
        .collect();
    assert_eq!(found, [("a", 1), ("b", 2)]);
    assert_eq!(q.freshness.role, ReplicaRole::Leader, "escalated");
    assert!(session.point() >= q.freshness.point);
    // A session with nothing behind it is served by the follower, which
    // has none of them yet.
    let other = client.session();
    let fresh = client
        .collection::<Account, Critical>("accounts", &other)
        .unwrap();
    let q = query_two(&fresh, StrictRead::Session).await.unwrap();
    assert_eq!(q.freshness.role, ReplicaRole::Follower);
    assert!(q.rows.is_empty());
    // A strong query records every version it saw in its session: the
    // session's later reads are no older.
    let q = query_two(&fresh, StrictRead::Strong).await.unwrap();
    assert_eq!(q.rows.len(), 2);
    let r = fresh.get_with("b", StrictRead::Session).await.unwrap();
    assert_eq!(r.version(), Some(q.rows[1].1.version));
    assert_eq!(
        r.freshness.role,
        ReplicaRole::Leader,
        "not the stale follower"
    );
    // Values that do not decode as the collection's type fail typed.
    let wrong = client
        .collection::<String, Critical>("accounts", &session)
        .unwrap();
    let backend = client.backend().clone();
    let e = wrong
        .query_with(StrictRead::Strong, None, |plan| {
            let backend = backend.clone();
            let region = plan.region.clone();
            let (role, policy, deadline) = (plan.role, plan.policy, plan.deadline);
            async move {
                let r = backend
                    .read(&quorate::ReadPlan {
                        key: "accounts/a",
                        region: &region,
                        role,
                        policy,
                        floor: quorate::SessionFloor::default(),
                        deadline,
                    })
                    .await?;
                let rows = r.value.map(|v| ("a".to_owned(), v)).into_iter().collect();
                Ok((rows, r.freshness))
            }
        })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Serialization(_)), "{e}");
}

#[tokio::test(start_paused = true)]
async fn background_health_checks_run_while_the_client_lives() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let sim = sim();
    let client = Client::new(
        sim.at("us").unwrap(),
        ClientConfig {
            health_checks: Some(Duration::from_millis(500)),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    assert!(client.health().iter().all(|h| h.clock_deviation.is_none()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        client.health().iter().all(|h| h.clock_deviation.is_some()),
        "every region probed: {:?}",
        client.health()
    );
    // One task per region (and the client's deadline sweeper, while
    // probes run).
    assert!(
        metrics.num_alive_tasks() >= before + 3,
        "one task per region"
    );
    // The last handle goes: the tasks end (the deadline sweeper too, once
    // idle).
    drop(client);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(metrics.num_alive_tasks(), before);
    // A period the clock guard cannot use, and no runtime to spawn on.
    for period in [Duration::ZERO, Duration::from_secs(3)] {
        let bad = ClientConfig {
            health_checks: Some(period),
            ..ClientConfig::default()
        };
        assert!(matches!(
            Client::new(sim.at("us").unwrap(), bad),
            Err(Error::InvalidInput(_))
        ));
    }
    let outside = std::thread::spawn(move || {
        Client::new(
            sim.at("us").unwrap(),
            ClientConfig {
                health_checks: Some(Duration::from_millis(500)),
                ..ClientConfig::default()
            },
        )
        .map(|_| ())
    })
    .join()
    .unwrap();
    assert!(matches!(outside, Err(Error::InvalidInput(_))));
}

/// A client that probes takes no replica's word for its staleness before
/// its first probes have sampled every clock: its first bounded reads go
/// to the leader, and once the clocks are known the local replica serves
/// them. (Before, a client just started trusted the claims with no error
/// at all, and on a real standby whose clock ran behind read beyond its
/// bound.)
#[tokio::test(start_paused = true)]
async fn a_probing_client_trusts_no_staleness_claim_before_its_first_samples() {
    let sim = sim();
    let writer = Client::new(sim.at("eu").unwrap(), ClientConfig::default()).unwrap();
    writer
        .write(
            &writer.session(),
            "k",
            "v".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = Client::new(
        sim.at("us").unwrap(),
        ClientConfig {
            clock: std::sync::Arc::new(sim.clock("us").unwrap()),
            health_checks: Some(Duration::from_millis(250)),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let bounded = ReadPolicy::BoundedStaleness(Staleness::from_millis(10_000).unwrap());
    let first = client.read(&client.session(), "k", bounded).await.unwrap();
    assert_eq!(
        first.freshness.role,
        ReplicaRole::Leader,
        "no clock is known yet: {:?}",
        first.freshness
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = client.read(&client.session(), "k", bounded).await.unwrap();
    assert_eq!(
        (later.freshness.role, later.freshness.region.as_str()),
        (ReplicaRole::Follower, "us"),
        "{:?}",
        later.freshness
    );
}
