//! The promises quorate makes, each against the failure that breaks it, on
//! the simulator: a write whose outcome is unknown is never reported as a
//! failure and applies at most once; a session never reads behind itself;
//! verification obeys the clock guard; the client's errors say what
//! happened.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use quorate::chaos::Chaos;
use quorate::sim::{Sim, SimConfig};
use quorate::{
    Backend, Bytes, Client, ClientConfig, Clock, Critical, Error, IdempotencyKey, Precondition,
    ReadPlan, ReadPolicy, Region, ReplicaRole, Retryability, SessionFloor, SessionToken, Verify,
    VerifyRegions, Version, WriteOptions, WriteRequest,
};
use tokio::time::{sleep, Instant};

fn config() -> SimConfig {
    let mut c = SimConfig::new(["eu", "us", "ap"]).unwrap();
    c.jitter = 0.0;
    c
}

fn region(name: &str) -> Region {
    Region::new(name).unwrap()
}

/// A client in `region`, by its node's clock, probing every region every
/// 250 ms until the returned task is aborted.
fn probing(
    sim: &Sim,
    region: &str,
    seed: u64,
) -> (Client<Sim>, tokio::task::JoinHandle<Result<(), Error>>) {
    let client = Client::new(
        sim.at(region).unwrap(),
        ClientConfig {
            clock: Arc::new(sim.clock(region).unwrap()),
            seed: Some(seed),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let checks = tokio::spawn({
        let client = client.clone();
        async move { client.health_checks(Duration::from_millis(250)).await }
    });
    (client, checks)
}

async fn strong_version(sim: &Sim, from: &str, key: &str) -> Option<Version> {
    let r = region(from);
    sim.at(from)
        .unwrap()
        .read(&ReadPlan {
            key,
            region: &r,
            role: ReplicaRole::Leader,
            policy: ReadPolicy::Strong,
            floor: SessionFloor::default(),
            deadline: Instant::now() + Duration::from_secs(5),
        })
        .await
        .unwrap()
        .version()
}

async fn send(
    sim: &Sim,
    gateway: &str,
    key: &str,
    idem: &IdempotencyKey,
) -> Result<quorate::Committed, Error> {
    let r = region(gateway);
    let value = Bytes::from_static(b"v");
    sim.write(&WriteRequest {
        key,
        mutation: quorate::Mutation::Put(&value),
        precondition: Precondition::IfAbsent,
        idempotency_key: Some(idem),
        region: &r,
        deadline: Instant::now() + Duration::from_secs(10),
    })
    .await
}

/// A client whose request times out keeps travelling: it arrives and commits
/// later. A lookup that found nothing fences it, so that "not applied"
/// stays true; a later attempt of the same logical write goes ahead.
#[tokio::test(start_paused = true)]
async fn abandoned_attempts_commit_late_unless_a_lookup_fenced_them() {
    let sim = Sim::new(config()).unwrap();
    let eu = sim.at("eu").unwrap();
    // The us gateway is half a second away from the leaseholder in eu.
    sim.set_link_latency("eu", "us", Duration::from_millis(500))
        .unwrap();

    let late = IdempotencyKey::new("late-1").unwrap();
    let gave_up =
        tokio::time::timeout(Duration::from_millis(50), send(&eu, "us", "late", &late)).await;
    assert!(gave_up.is_err(), "the client stopped waiting");
    sleep(Duration::from_secs(3)).await;
    assert_eq!(
        strong_version(&sim, "eu", "late").await,
        Some(Version(1)),
        "the abandoned request still committed"
    );

    let fenced = IdempotencyKey::new("fenced-1").unwrap();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        send(&eu, "us", "fenced", &fenced),
    )
    .await;
    assert!(gave_up.is_err());
    assert_eq!(
        eu.lookup(&region("eu"), "fenced", &fenced).await.unwrap(),
        None,
        "not applied yet"
    );
    sleep(Duration::from_secs(3)).await;
    assert_eq!(
        strong_version(&sim, "eu", "fenced").await,
        None,
        "the fence stopped the attempt that arrived after it"
    );
    assert_eq!(
        eu.lookup(&region("eu"), "fenced", &fenced).await.unwrap(),
        None
    );
    let retried = send(&eu, "eu", "fenced", &fenced).await.unwrap();
    assert_eq!(retried.version, Version(1), "a later attempt goes ahead");
    assert_eq!(
        send(&eu, "eu", "fenced", &fenced).await.unwrap(),
        retried,
        "and is applied once"
    );
}

/// The leaseholder loses its quorum with a write in flight: the write's
/// outcome is unknown, and the client says so (naming the key to retry
/// with) instead of reporting a failure. Once the quorum is back the write
/// commits; retrying under its key returns that commit, never a second one.
#[tokio::test(start_paused = true)]
async fn a_write_whose_outcome_is_unknown_says_so_and_applies_at_most_once() {
    let sim = Sim::new(config()).unwrap();
    let client = Client::new(
        sim.at("eu").unwrap(),
        ClientConfig {
            write_deadline: Duration::from_millis(800),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let session = client.session();
    sim.cut("eu", "us").unwrap();
    sim.cut("eu", "ap").unwrap();
    let err = client
        .write(
            &session,
            "order:1",
            "paid".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(err.is_ambiguous(), "{}", err.report());
    let Error::OutcomeUnknown {
        idempotency_key, ..
    } = &err
    else {
        panic!("expected OutcomeUnknown, got {}", err.report());
    };
    sim.heal();
    sleep(Duration::from_millis(200)).await;
    assert_eq!(
        strong_version(&sim, "eu", "order:1").await,
        Some(Version(1)),
        "the proposal committed once the quorum was back"
    );
    let again = client
        .write(
            &session,
            "order:1",
            "paid".into(),
            Precondition::IfAbsent,
            &WriteOptions {
                idempotency_key: Some(idempotency_key.clone()),
                ..WriteOptions::default()
            },
        )
        .await
        .expect("the retry returns the first commit");
    assert_eq!(again.version, Version(1));
    assert_eq!(
        strong_version(&sim, "eu", "order:1").await,
        Some(Version(1))
    );
}

/// When retries stop, the error keeps the class of what caused them: a
/// write that never reached the database may be retried.
#[tokio::test(start_paused = true)]
async fn giving_up_keeps_the_class_of_the_cause() {
    let sim = Sim::new(config()).unwrap();
    let (backend, control) = Chaos::new(sim.at("eu").unwrap());
    let client = Client::new(
        backend,
        ClientConfig {
            retry_budget_reserve: 0,
            retry_budget_ratio: 0.0,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    control.fail_writes_before_send(1);
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
        matches!(err, Error::RetriesExhausted { budget: true, .. }),
        "{}",
        err.report()
    );
    assert_eq!(
        err.retryability(),
        Retryability::Retryable,
        "{}",
        err.report()
    );
}

/// A write that keeps failing retryably is ended by its deadline, not by a
/// fixed number of attempts.
#[tokio::test(start_paused = true)]
async fn the_deadline_ends_a_write_that_keeps_failing() {
    let sim = Sim::new(config()).unwrap();
    let (backend, control) = Chaos::new(sim.at("eu").unwrap());
    let client = Client::new(backend, ClientConfig::default()).unwrap();
    control.fail_writes_before_send(1000);
    let started = Instant::now();
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
        matches!(err, Error::DeadlineExceeded { .. }),
        "{}",
        err.report()
    );
    assert!(err.is_retryable());
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "the 5 s deadline, not 8 attempts, ended it: {:?}",
        started.elapsed()
    );
    assert!(control.injected() > 8, "{} attempts", control.injected());
}

/// A read changes nothing: a read that times out is retryable, never
/// ambiguous.
#[tokio::test(start_paused = true)]
async fn a_read_that_times_out_is_not_ambiguous() {
    let sim = Sim::new(SimConfig::new(["eu"]).unwrap()).unwrap();
    let (backend, control) = Chaos::new(sim.at("eu").unwrap());
    control.set_isolation_timeout(Duration::from_secs(60));
    control.isolate(&region("eu"));
    let client = Client::new(backend, ClientConfig::default()).unwrap();
    let err = client
        .read(&client.session(), "k", ReadPolicy::Strong)
        .await
        .unwrap_err();
    assert!(!err.is_ambiguous(), "{}", err.report());
    assert!(err.is_retryable(), "{}", err.report());
}

/// A session never reads behind itself, however many keys it touched since:
/// here a strong read saw a newer version than the lagging followers have,
/// and 16 other keys pushed that key out of the session's token.
#[tokio::test(start_paused = true)]
async fn a_strong_read_keeps_protecting_its_key_after_the_token_forgets_it() {
    let mut c = config();
    c.replication_lag = Duration::from_secs(5);
    let sim = Sim::new(c).unwrap();
    let writer = Client::new(sim.at("eu").unwrap(), ClientConfig::default()).unwrap();
    let reader = Client::new(sim.at("us").unwrap(), ClientConfig::default()).unwrap();
    let w = writer.session();
    for value in ["1", "2"] {
        writer
            .write(
                &w,
                "k",
                value.into(),
                Precondition::Any,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
        sleep(Duration::from_secs(6)).await;
    }
    writer
        .write(
            &w,
            "k",
            "3".into(),
            Precondition::Any,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    for i in 0..16 {
        writer
            .write(
                &w,
                &format!("other-{i}"),
                "x".into(),
                Precondition::Any,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
    }
    let session = reader.session();
    let seen = reader
        .read(&session, "k", ReadPolicy::Strong)
        .await
        .unwrap()
        .version();
    assert_eq!(seen, Some(Version(3)));
    for i in 0..16 {
        reader
            .read(&session, &format!("other-{i}"), ReadPolicy::Strong)
            .await
            .unwrap();
    }
    assert_eq!(
        session.token().version_of("k"),
        None,
        "evicted from the token"
    );
    let again = reader
        .read(&session, "k", ReadPolicy::Session)
        .await
        .unwrap()
        .version();
    assert!(again >= seen, "read {again:?} after {seen:?}");
}

/// Read-your-writes and monotonic reads over thousands of keys in random
/// orders, with another writer moving the keys on and followers lagging: a
/// few dozen hot keys come back often (and leave the session's token in
/// between), among thousands of cold ones. Each session reads (and, every
/// other session, writes) for a while, then reads under its session policy
/// for a while, so that what it saw early has long left its token.
async fn session_never_reads_behind(
    replication: quorate::sim::Replication,
    ops: Vec<(u8, bool, u16)>,
) -> Result<(), TestCaseError> {
    let mut c = config();
    c.replication = replication;
    c.replication_lag = Duration::from_secs(3);
    c.seed = u64::from(ops.len() as u32);
    let sim = Sim::new(c).unwrap();
    let other = Client::new(sim.at("eu").unwrap(), ClientConfig::default()).unwrap();
    let client = Client::new(sim.at("us").unwrap(), ClientConfig::default()).unwrap();
    let other_session = other.session();
    for k in 0..40 {
        other
            .write(
                &other_session,
                &format!("hot-{k}"),
                "o".into(),
                Precondition::Any,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
    }
    sleep(Duration::from_secs(4)).await;
    let mut session = client.session();
    // The newest version the current session has seen of each key.
    let mut seen: HashMap<String, Version> = HashMap::new();
    for (i, (op, hot, k)) in ops.into_iter().enumerate() {
        if i % 150 == 0 {
            session = client.session();
            seen.clear();
        }
        let key = if hot {
            format!("hot-{}", k % 40)
        } else {
            format!("key-{k}")
        };
        let floor = seen.get(&key).copied();
        let writes = (i / 150) % 2 == 1;
        let checking = i % 150 >= 110;
        let op = if checking { 19 } else { op % 17 };
        let observed = match op {
            0 if writes => Some(
                client
                    .write(
                        &session,
                        &key,
                        "s".into(),
                        Precondition::Any,
                        &WriteOptions::default(),
                    )
                    .await
                    .unwrap()
                    .version,
            ),
            0..=4 => {
                other
                    .write(
                        &other_session,
                        &key,
                        "o".into(),
                        Precondition::Any,
                        &WriteOptions::default(),
                    )
                    .await
                    .unwrap();
                None
            }
            5..=16 => client
                .read(&session, &key, ReadPolicy::Strong)
                .await
                .unwrap()
                .version(),
            _ => {
                let v = client
                    .read(&session, &key, ReadPolicy::Session)
                    .await
                    .unwrap()
                    .version();
                prop_assert!(
                    v >= floor,
                    "session read of {key} saw {v:?} after the session saw {floor:?}"
                );
                v
            }
        };
        if let Some(v) = observed {
            let e = seen.entry(key).or_insert(v);
            *e = (*e).max(v);
        }
        sleep(Duration::from_millis(u64::from(k % 7))).await;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    #[test]
    fn a_session_never_reads_behind_itself(
        ops in proptest::collection::vec((any::<u8>(), any::<bool>(), 0u16..3000), 200..600)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(session_never_reads_behind(quorate::sim::Replication::Consensus, ops))?;
    }

    /// The same on a multi-writer table (global tables: no cross-key
    /// watermark, points per item).
    #[test]
    fn a_session_never_reads_behind_itself_on_a_multi_writer_table(
        ops in proptest::collection::vec((any::<u8>(), any::<bool>(), 0u16..3000), 200..600)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(session_never_reads_behind(quorate::sim::Replication::MultiWriter, ops))?;
    }
}

/// The read-after-write check reads where the router reads: never through a
/// gateway whose clock the guard excludes. One such read would carry the
/// fast clock's timestamp into the leaseholder, and later commits would
/// land in the future, invisible to strong reads elsewhere.
#[tokio::test(start_paused = true)]
async fn verification_never_reads_through_an_excluded_clock() {
    // A database that trusts every clock, so that the client's own guard
    // is what is tested (CockroachDB would stop ap's node).
    let mut c = config();
    c.enforce_max_offset = false;
    let sim = Sim::new(c).unwrap();
    sim.set_skew("ap", 2_000_000_000).unwrap();
    let eu_clock = sim.clock("eu").unwrap();
    let client = Client::new(
        sim.at("eu").unwrap(),
        ClientConfig {
            clock: Arc::new(eu_clock.clone()),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    client.refresh_health().await;
    assert!(client.clock_excluded(&region("ap")));
    let session = client.session();
    let everywhere = WriteOptions {
        verify: Some(Verify {
            regions: VerifyRegions::All,
            policy: ReadPolicy::Strong,
            deadline: Duration::from_secs(2),
        }),
        ..WriteOptions::default()
    };
    client
        .write(
            &session,
            "a",
            "1".into(),
            Precondition::IfAbsent,
            &everywhere,
        )
        .await
        .unwrap();
    // Nothing read through ap: the leaseholder's clock is where eu's is.
    // (Once it is pushed, the client's commit wait still keeps the next
    // commit from being acknowledged in the future, at the cost of the
    // push itself in waiting.)
    let max_offset = sim.config().max_offset.as_nanos() as u64;
    let leaseholder = sim.leaseholder();
    let view = sim.inspect();
    let holder = view.nodes.iter().find(|n| n.region == leaseholder).unwrap();
    assert!(
        holder.hlc.wall <= eu_clock.now_nanos() + max_offset,
        "the leaseholder's clock was pushed {} ms ahead",
        (holder.hlc.wall - eu_clock.now_nanos()) / 1_000_000
    );
    let before_next = tokio::time::Instant::now();
    let next = client
        .write(
            &session,
            "b",
            "1".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    assert!(
        before_next.elapsed() < Duration::from_millis(500),
        "the next write waited {:?}",
        before_next.elapsed()
    );
    assert!(
        next.point.wall <= eu_clock.now_nanos() + max_offset,
        "the next commit is {} ms in the future",
        (next.point.wall - eu_clock.now_nanos()) / 1_000_000
    );
    let elsewhere = Client::new(sim.at("us").unwrap(), ClientConfig::default()).unwrap();
    let r = elsewhere
        .read(&elsewhere.session(), "b", ReadPolicy::Strong)
        .await
        .unwrap();
    assert_eq!(
        r.version(),
        Some(next.version),
        "a strong read elsewhere sees it"
    );
}

/// Options are checked before anything is sent: a write must not commit and
/// then fail on its own verification settings.
#[tokio::test(start_paused = true)]
async fn a_verification_naming_an_unknown_region_fails_before_the_write() {
    let sim = Sim::new(config()).unwrap();
    let client = Client::new(sim.at("eu").unwrap(), ClientConfig::default()).unwrap();
    let options = WriteOptions {
        verify: Some(Verify {
            regions: VerifyRegions::These(vec![region("nowhere")]),
            ..Verify::default()
        }),
        ..WriteOptions::default()
    };
    let err = client
        .write(
            &client.session(),
            "k",
            "v".into(),
            Precondition::IfAbsent,
            &options,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Topology(_)), "{}", err.report());
    assert_eq!(
        strong_version(&sim, "eu", "k").await,
        None,
        "nothing was written"
    );
}

/// An idempotency key names one logical write: reused for another record it
/// is a typed error, never the other record's outcome.
#[tokio::test(start_paused = true)]
async fn an_idempotency_key_reused_for_another_record_is_refused() {
    let sim = Sim::new(config()).unwrap();
    let client = Client::new(sim.at("us").unwrap(), ClientConfig::default()).unwrap();
    let session = client.session();
    let options = WriteOptions {
        idempotency_key: Some(IdempotencyKey::new("transfer-7").unwrap()),
        ..WriteOptions::default()
    };
    client
        .write(&session, "a", "1".into(), Precondition::IfAbsent, &options)
        .await
        .unwrap();
    let err = client
        .write(&session, "b", "1".into(), Precondition::IfAbsent, &options)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::IdempotencyKeyReused { key, .. } if key == "b"),
        "{}",
        err.report()
    );
    assert_eq!(session.token().version_of("b"), None);
    assert_eq!(strong_version(&sim, "eu", "b").await, None);
    let idem = IdempotencyKey::new("transfer-7").unwrap();
    let lookup = sim
        .at("us")
        .unwrap()
        .lookup(&region("eu"), "b", &idem)
        .await;
    assert!(matches!(lookup, Err(Error::IdempotencyKeyReused { .. })));
}

/// A token claiming a version the database never had (forged, or from
/// another database) fails fast, once, without draining the retry budget
/// that other requests need.
#[tokio::test(start_paused = true)]
async fn an_impossible_session_floor_fails_fast() {
    let sim = Sim::new(config()).unwrap();
    let (backend, control) = Chaos::new(sim.at("eu").unwrap());
    let client = Client::new(
        backend,
        ClientConfig {
            retry_budget_reserve: 1,
            retry_budget_ratio: 0.0,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let mut forged = SessionToken::new(client.scope().clone());
    forged.advance_key("k", Version(99));
    let session = client.resume_session(&forged.encode()).unwrap();
    let err = client
        .read(&session, "k", ReadPolicy::Strong)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SessionAhead {
                required: Version(99),
                found: None,
                ..
            }
        ),
        "{}",
        err.report()
    );
    assert_eq!(err.retryability(), Retryability::Permanent);
    // The one retry the budget holds is still there.
    control.fail_writes_before_send(1);
    client
        .write(
            &client.session(),
            "other",
            "v".into(),
            Precondition::Any,
            &WriteOptions::default(),
        )
        .await
        .expect("the budget was not drained");
}

/// Read-modify-write that loses every round says so with its own error,
/// after as many rounds as asked.
#[tokio::test(start_paused = true)]
async fn an_update_that_never_wins_gives_up_with_a_distinct_error() {
    // Clocks tight enough that the rival's writes rarely make the
    // updater's reads uncertain.
    let mut c = config();
    c.max_offset = Duration::from_millis(1);
    let sim = Sim::new(c).unwrap();
    // The updater is far from the leaseholder; a rival next to it writes
    // while each round's read and write are on their way.
    sim.set_link_latency("ap", "eu", Duration::from_millis(200))
        .unwrap();
    let client = Client::new(sim.at("ap").unwrap(), ClientConfig::default()).unwrap();
    let rival = Client::new(sim.at("eu").unwrap(), ClientConfig::default()).unwrap();
    let session = client.session();
    let counters = client
        .collection::<u64, Critical>("counters", &session)
        .unwrap()
        .with_update_attempts(3)
        .unwrap();
    counters.put("c", &0, Precondition::IfAbsent).await.unwrap();
    let hammer = tokio::spawn(async move {
        let s = rival.session();
        loop {
            let _ = rival
                .write(
                    &s,
                    "counters/c",
                    "7".into(),
                    Precondition::Any,
                    &WriteOptions::default(),
                )
                .await;
        }
    });
    let err = counters
        .update("c", |n| n.unwrap_or(0) + 1)
        .await
        .unwrap_err();
    hammer.abort();
    assert!(
        matches!(err, Error::UpdateContended { attempts: 3, .. }),
        "{}",
        err.report()
    );
    assert!(err.is_retryable());
    assert!(matches!(
        client
            .collection::<u64, Critical>("counters", &session)
            .unwrap()
            .with_update_attempts(0),
        Err(Error::InvalidInput(_))
    ));
}

/// A client outlives the runtime that first used it: its attempts still
/// time out on the next one.
#[test]
fn deadlines_fire_on_every_runtime_a_client_is_used_from() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    };
    let first = runtime();
    let (client, control) = first.block_on(async {
        let sim = Sim::new(SimConfig::new(["eu"]).unwrap()).unwrap();
        let (backend, control) = Chaos::new(sim.at("eu").unwrap());
        let client = Client::new(
            backend,
            ClientConfig {
                read_deadline: Duration::from_millis(300),
                attempt_timeout: Duration::from_millis(100),
                ..ClientConfig::default()
            },
        )
        .unwrap();
        control.set_isolation_timeout(Duration::from_secs(3600));
        control.isolate(&region("eu"));
        let err = client
            .read(&client.session(), "k", ReadPolicy::Strong)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::DeadlineExceeded { .. }),
            "{}",
            err.report()
        );
        (client, control)
    });
    drop(first);
    let second = runtime();
    second.block_on(async {
        let bounded = tokio::time::timeout(
            Duration::from_secs(30),
            client.read(&client.session(), "k", ReadPolicy::Strong),
        )
        .await;
        let err = bounded
            .expect("the read ended at its deadline")
            .unwrap_err();
        assert!(
            matches!(err, Error::DeadlineExceeded { .. }),
            "{}",
            err.report()
        );
    });
    drop(control);
}

/// The leaseholder's clock steps 2 s ahead while a third region is cut off.
/// Two clocks that disagree with the third unknown: neither is trusted, and
/// strict operations fail typed instead of trusting either. Once the third
/// region is back the stepped leaseholder alone is excluded: a strict write
/// it stamps in the future is acknowledged only when readers' uncertainty
/// covers it (a naive one is read stale at once), and reads it serves are
/// refused rather than returned.
#[tokio::test(start_paused = true)]
async fn a_clock_that_steps_while_a_region_is_cut_off_is_never_trusted() {
    // A database that trusts every clock, so that the client's own guard
    // is what is tested (CockroachDB would stop eu's node).
    let mut c = config();
    c.enforce_max_offset = false;
    let sim = Sim::new(c).unwrap();
    let client = Client::new(
        sim.at("us").unwrap(),
        ClientConfig {
            clock: Arc::new(sim.clock("us").unwrap()),
            write_deadline: Duration::from_secs(2),
            seed: Some(3),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let checks = tokio::spawn({
        let client = client.clone();
        async move { client.health_checks(Duration::from_millis(250)).await }
    });
    let session = client.session();
    client
        .write(
            &session,
            "s",
            "0".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    sim.isolate("ap").unwrap();
    sleep(Duration::from_secs(2)).await;
    sim.set_skew("eu", 2_000_000_000).unwrap();
    sleep(Duration::from_secs(1)).await;
    assert!(client.clock_excluded(&region("eu")), "the stepped clock");
    assert!(
        client.clock_excluded(&region("us")),
        "and the one it disagrees with: no majority says which is right"
    );
    // No trusted gateway but the cut-off one: the write may be sent there
    // and lost, the read fails; neither is refused for good.
    let err = client
        .write(
            &session,
            "s",
            "1".into(),
            Precondition::Any,
            &WriteOptions::default(),
        )
        .await
        .unwrap_err();
    assert_ne!(
        err.retryability(),
        Retryability::Permanent,
        "{}",
        err.report()
    );
    let err = client
        .read(&session, "s", ReadPolicy::Strong)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{}", err.report());

    sim.heal();
    sleep(Duration::from_secs(1)).await;
    assert!(client.clock_excluded(&region("eu")));
    assert!(!client.clock_excluded(&region("us")));
    assert!(!client.clock_excluded(&region("ap")));

    // Naively, the leaseholder stamps a write 2 s ahead and a strong read
    // through another gateway right after it does not see it.
    let naive = sim.at("us").unwrap();
    let idem = IdempotencyKey::new("naive-1").unwrap();
    let written = send(&naive, "us", "n", &idem).await.unwrap();
    let ap = region("ap");
    let stale = naive
        .read(&ReadPlan {
            key: "n",
            region: &ap,
            role: ReplicaRole::Leader,
            policy: ReadPolicy::Strong,
            floor: SessionFloor::default(),
            deadline: Instant::now() + Duration::from_secs(5),
        })
        .await
        .unwrap();
    assert!(
        stale.version() < Some(written.version),
        "the hazard is real"
    );

    // Through quorate, the acknowledgement waits until that read would see
    // the write or find it uncertain.
    let started = Instant::now();
    let c = client
        .write(
            &session,
            "q",
            "1".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let after = naive
        .read(&ReadPlan {
            key: "q",
            region: &ap,
            role: ReplicaRole::Leader,
            policy: ReadPolicy::Strong,
            floor: SessionFloor::default(),
            deadline: Instant::now() + Duration::from_secs(5),
        })
        .await;
    match after {
        Ok(r) => assert_eq!(r.version(), Some(c.version), "never stale"),
        Err(e) => assert!(matches!(e, Error::Uncertainty { .. }), "{}", e.report()),
    }
    // A strict read of the naive write is refused, typed, rather than
    // served stale by the distrusted leaseholder.
    let reader = Client::new(
        sim.at("ap").unwrap(),
        ClientConfig {
            clock: Arc::new(sim.clock("ap").unwrap()),
            seed: Some(7),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    reader.refresh_health().await;
    assert!(reader.clock_excluded(&region("eu")));
    let refused = reader
        .read(&reader.session(), "n", ReadPolicy::Strong)
        .await
        .expect_err("a read the distrusted leaseholder served is not returned");
    assert!(refused.is_retryable(), "{}", refused.report());
    checks.abort();
}

/// A lookup that fails permanently (a denied permission, a primary turned
/// read-only) says nothing about the attempt it would resolve: the write
/// stays unknown, never a definite failure.
#[tokio::test(start_paused = true)]
async fn a_permanent_lookup_error_leaves_the_outcome_unknown() {
    let sim = Sim::new(config()).unwrap();
    let (backend, control) = Chaos::new(sim.at("eu").unwrap());
    // A deadline (60 ms) that leaves no room for a second attempt (a quorum
    // write takes 42 ms) to come back with the write's recorded outcome.
    let client = Client::new(
        backend,
        ClientConfig {
            write_deadline: Duration::from_millis(60),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    control.drop_write_responses(1);
    control.refuse_lookups(1000);
    let session = client.session();
    let err = client
        .write(
            &session,
            "k",
            "v".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap_err();
    let Error::OutcomeUnknown {
        idempotency_key, ..
    } = &err
    else {
        panic!("expected OutcomeUnknown, got {}", err.report());
    };
    assert_eq!(
        strong_version(&sim, "eu", "k").await,
        Some(Version(1)),
        "the write had applied"
    );
    control.clear();
    let again = client
        .write(
            &session,
            "k",
            "v".into(),
            Precondition::IfAbsent,
            &WriteOptions {
                idempotency_key: Some(idempotency_key.clone()),
                deadline: Some(Duration::from_secs(5)),
                ..WriteOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(again.version, Version(1), "applied once");
}

/// On a multi-writer table each region keeps its own idempotency records.
/// An attempt to the home region whose outcome is unknown is resolved
/// there, and while it is unknown the write does not fail over: a retry in
/// another region would apply it a second time when the first arrives.
#[tokio::test(start_paused = true)]
async fn an_unknown_attempt_on_a_multi_writer_table_is_not_retried_elsewhere() {
    let mut c = SimConfig::new(["eu", "us"]).unwrap();
    c.replication = quorate::sim::Replication::MultiWriter;
    c.jitter = 0.0;
    let sim = Sim::new(c).unwrap();
    // The home region answers, but 1.5 s late each way.
    sim.set_link_latency("us", "eu", Duration::from_millis(1500))
        .unwrap();
    let client = Client::new(
        sim.at("us").unwrap(),
        ClientConfig {
            home_failover: Some(Duration::ZERO),
            write_deadline: Duration::from_secs(2),
            seed: Some(5),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let result = client
        .write(
            &client.session(),
            "order",
            "processed".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await;
    assert!(
        matches!(&result, Err(Error::OutcomeUnknown { .. })),
        "{result:?}"
    );
    // The attempt arrives and applies in eu; nothing applied it in us.
    sleep(Duration::from_secs(5)).await;
    let idem = match result {
        Err(Error::OutcomeUnknown {
            idempotency_key, ..
        }) => idempotency_key,
        _ => unreachable!(),
    };
    let us = sim.at("us").unwrap();
    let in_eu = us.lookup(&region("eu"), "order", &idem).await.unwrap();
    let in_us = us.lookup(&region("us"), "order", &idem).await.unwrap();
    assert_eq!(
        in_eu.as_ref().map(|c| c.region.clone()),
        Some(region("eu")),
        "applied in the home region"
    );
    assert_eq!(
        in_us.map(|c| c.region),
        Some(region("eu")),
        "and only there: us holds eu's record, replicated"
    );
}

/// Each region is probed on its own schedule: a region that does not
/// answer (its probes hang until they time out) does not leave the others'
/// clock samples to age out.
#[tokio::test(start_paused = true)]
async fn probes_do_not_wait_on_an_unreachable_region() {
    let sim = Sim::new(config()).unwrap();
    let client = Client::new(
        sim.at("eu").unwrap(),
        ClientConfig {
            clock: Arc::new(sim.clock("eu").unwrap()),
            clock_sample_ttl: Duration::from_millis(600),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    sim.isolate("ap").unwrap();
    let checks = tokio::spawn({
        let client = client.clone();
        async move { client.health_checks(Duration::from_millis(250)).await }
    });
    sleep(Duration::from_millis(500)).await;
    for _ in 0..30 {
        let health = client.health();
        for h in health.iter().filter(|h| h.region.as_str() != "ap") {
            assert!(
                h.clock_deviation.is_some(),
                "{}'s clock sample aged out while ap's probe hung",
                h.region
            );
        }
        sleep(Duration::from_millis(100)).await;
    }
    checks.abort();
}

/// A region cut off with this client whose clock steps back (2.5 s): from inside,
/// the replica's clock and the client's agree, and the replica's staleness
/// claim is off by the step. Having lost the evidence that verified the
/// clocks, the client does not accept the claim: a bounded read is not
/// served there (it fails here, with no other region reachable) rather than
/// served beyond its bound.
#[tokio::test(start_paused = true)]
async fn a_bounded_read_does_not_trust_clocks_it_can_no_longer_verify() {
    let sim = Sim::new(config()).unwrap();
    let (client, checks) = probing(&sim, "ap", 9);
    let writer = Client::new(sim.at("eu").unwrap(), ClientConfig::default()).unwrap();
    writer
        .write(
            &writer.session(),
            "k",
            "1".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    sleep(Duration::from_secs(1)).await;
    sim.isolate("ap").unwrap();
    sleep(Duration::from_millis(1500)).await;
    // Stepped back far enough that the lagging replica's claim looks fresh.
    sim.set_skew("ap", -2_500_000_000).unwrap();
    let v2 = writer
        .write(
            &writer.session(),
            "k",
            "2".into(),
            Precondition::Any,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    sleep(Duration::from_millis(1500)).await;
    let bound = ReadPolicy::BoundedStaleness(quorate::Staleness::from_millis(1000).unwrap());
    match client.read(&client.session(), "k", bound).await {
        Ok(r) => assert_eq!(r.version(), Some(v2.version), "{:?}", r.freshness),
        Err(e) => assert!(e.is_retryable(), "{}", e.report()),
    }
    checks.abort();
}

/// This process's clock steps 1.5 s back while its probes of the far
/// regions are out (each takes a third of a second). Their answers are measured
/// in the frame they arrive in: the other regions' clocks are 1.5 s ahead
/// of this process's now, so its own region — whose node shares its clock
/// — is the odd one out, and a bounded read measured by that clock is not
/// trusted. (A probe timed by wall clock put its send time and its answer
/// in two frames: a sample 1.5 s off, with no error to show for it.)
#[tokio::test(start_paused = true)]
async fn a_probe_out_while_this_clock_steps_is_measured_in_the_frame_it_ends_in() {
    let mut c = config();
    c.enforce_max_offset = false;
    let sim = Sim::new(c).unwrap();
    sim.set_link_latency("us", "eu", Duration::from_millis(150))
        .unwrap();
    sim.set_link_latency("us", "ap", Duration::from_millis(150))
        .unwrap();
    let client = Client::new(
        sim.at("us").unwrap(),
        ClientConfig {
            clock: Arc::new(sim.clock("us").unwrap()),
            attempt_timeout: Duration::from_secs(3),
            seed: Some(5),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let checks = tokio::spawn({
        let client = client.clone();
        async move { client.health_checks(Duration::from_millis(100)).await }
    });
    sleep(Duration::from_millis(2600)).await;
    assert!(!client.clock_excluded(&region("us")));
    sim.set_skew("us", -1_500_000_000).unwrap();
    // This region's own probe comes back at once; answers from eu and ap
    // in the next third of a second left before the step.
    sleep(Duration::from_millis(150)).await;
    for _ in 0..20 {
        sleep(Duration::from_millis(50)).await;
        assert!(
            client.clock_excluded(&region("us")),
            "a probe straddling the step hid it"
        );
    }
    checks.abort();
}

/// The leader's clock steps ahead while this process cannot reach it, yet
/// its closed timestamps still reach the follower here (the link is cut
/// one way: probes to the leader are lost, replication from it arrives).
/// The follower's staleness is then measured against timestamps from a
/// clock no sample has seen: a bounded read must not be served by it on
/// the strength of the other regions' clocks alone.
#[tokio::test(start_paused = true)]
async fn a_bounded_read_does_not_trust_a_leader_clock_it_cannot_probe() {
    bounded_reads_while_the_leader_steps_unseen(2_000_000_000, Duration::from_secs(4), 1500, 1000)
        .await;
}

/// The same, with the cut healed and the leader's clock back after a
/// second and a half: the probes find nothing wrong any more, but what it
/// stamped meanwhile is still on its way to the follower (1.5 s behind),
/// and a claim resting on it is short by the step.
#[tokio::test(start_paused = true)]
async fn a_bounded_read_does_not_trust_what_a_clock_stamped_unseen() {
    bounded_reads_while_the_leader_steps_unseen(
        900_000_000,
        Duration::from_millis(1500),
        1500,
        1000,
    )
    .await;
}

/// Bounded reads here from the moment the leader's clock steps while
/// requests to it are lost, through `heal_after` (when the cut heals and
/// the clock is back) and beyond: none is served behind its bound, and
/// once the clocks can be checked again some are served.
async fn bounded_reads_while_the_leader_steps_unseen(
    step: i64,
    heal_after: Duration,
    lag_ms: u64,
    bound_ms: u64,
) {
    let mut c = config();
    c.enforce_max_offset = false;
    let sim = Sim::new(c).unwrap();
    let (client, checks) = probing(&sim, "us", 11);
    // A writer next to the leader, recording when each version was acked.
    let acked: Arc<std::sync::Mutex<Vec<(Instant, Version)>>> = Arc::default();
    let writer = tokio::spawn({
        let sim = sim.clone();
        let acked = acked.clone();
        async move {
            let eu = region("eu");
            let value = Bytes::from_static(b"v");
            for _ in 0..400 {
                if let Ok(c) = sim
                    .write(&WriteRequest {
                        key: "k",
                        mutation: quorate::Mutation::Put(&value),
                        precondition: Precondition::Any,
                        idempotency_key: None,
                        region: &eu,
                        deadline: Instant::now() + Duration::from_secs(1),
                    })
                    .await
                {
                    acked.lock().unwrap().push((Instant::now(), c.version));
                }
                sleep(Duration::from_millis(40)).await;
            }
        }
    });
    // The follower here runs behind: beyond the bound, and it says so.
    sim.set_replication_lag("us", Duration::from_millis(lag_ms))
        .unwrap();
    sleep(Duration::from_secs(3)).await;
    sim.cut_one_way("us", "eu").unwrap();
    sim.set_skew("eu", step).unwrap();
    let heal = tokio::spawn({
        let sim = sim.clone();
        async move {
            sleep(heal_after).await;
            sim.heal_one_way("us", "eu").unwrap();
            sim.set_skew("eu", 0).unwrap();
        }
    });
    let bound = Duration::from_millis(bound_ms);
    let policy = ReadPolicy::BoundedStaleness(quorate::Staleness::new(bound).unwrap());
    let mut served = 0;
    let until = Instant::now() + heal_after + Duration::from_secs(6);
    while Instant::now() < until {
        let started = Instant::now();
        let read = client.read(&client.session(), "k", policy).await;
        if let Err(e) = &read {
            assert!(e.is_retryable(), "{}", e.report());
        }
        if let Ok(r) = read {
            served += 1;
            let due = acked
                .lock()
                .unwrap()
                .iter()
                .filter(|(at, _)| *at + bound < started)
                .map(|(_, v)| *v)
                .max();
            assert!(
                r.version() >= due,
                "read {:?} ({:?}) behind {due:?}, acked over {bound:?} before it began",
                r.version(),
                r.freshness
            );
        }
        sleep(Duration::from_millis(50)).await;
    }
    assert!(served > 0, "no bounded read was served");
    heal.await.unwrap();
    writer.abort();
    checks.abort();
}

/// A strong read served by a leaseholder whose clock the guard excludes is
/// refused, whoever wrote through it. On a database that trusts every
/// clock, a leaseholder 2 s ahead stamps a commit (here another service's,
/// without quorate's commit wait) 2 s in the future; a gateway whose
/// hybrid-logical clock has not heard from it since reads at true time and
/// would miss the commit by more than its uncertainty. The read fails,
/// typed, instead of returning the version before it.
#[tokio::test(start_paused = true)]
async fn a_strong_read_served_by_an_excluded_leaseholder_is_refused() {
    let mut c = config();
    c.enforce_max_offset = false;
    let sim = Sim::new(c).unwrap();
    let first = IdempotencyKey::new("first").unwrap();
    send(&sim, "eu", "k", &first).await.unwrap();
    sim.set_skew("eu", 2_000_000_000).unwrap();
    let us = Client::new(
        sim.at("us").unwrap(),
        ClientConfig {
            clock: Arc::new(sim.clock("us").unwrap()),
            seed: Some(5),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    us.refresh_health().await;
    assert!(us.clock_excluded(&region("eu")));
    // Another service writes through ap's gateway: committed at eu's clock.
    let value = Bytes::from_static(b"2");
    let later = sim
        .at("ap")
        .unwrap()
        .write(&WriteRequest {
            key: "k",
            mutation: quorate::Mutation::Put(&value),
            precondition: Precondition::Any,
            idempotency_key: None,
            region: &region("ap"),
            deadline: Instant::now() + Duration::from_secs(10),
        })
        .await
        .unwrap();
    assert!(later.point.wall > sim.clock("us").unwrap().now_nanos() + 1_000_000_000);
    match us.read(&us.session(), "k", ReadPolicy::Strong).await {
        Ok(read) => assert_eq!(
            read.version(),
            Some(later.version),
            "a strong read returned the version before a completed write"
        ),
        Err(e) => assert!(e.is_retryable(), "{e}"),
    }
}

/// A session that deleted a record reads it deleted: never the record from
/// a replica that has not applied the delete, neither while the key is in
/// its token nor once it has left it (the session's point covers the
/// delete), and without taking the tombstone for a missing version.
#[tokio::test(start_paused = true)]
async fn a_session_never_reads_back_what_it_deleted() {
    let sim = Sim::new(config()).unwrap();
    let client = Client::new(
        sim.at("us").unwrap(),
        ClientConfig {
            clock: Arc::new(sim.clock("us").unwrap()),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let session = client.session();
    let plain = WriteOptions::default();
    let created = client
        .write(&session, "k", "1".into(), Precondition::IfAbsent, &plain)
        .await
        .unwrap();
    sleep(Duration::from_secs(1)).await;
    sim.stall_replica("us").unwrap();
    let deleted = client
        .delete(
            &session,
            "k",
            Precondition::IfVersion(created.version),
            &plain,
        )
        .await
        .unwrap();
    let follower = |key: &'static str| {
        let sim = sim.at("us").unwrap();
        async move {
            let us = region("us");
            sim.read(&ReadPlan {
                key,
                region: &us,
                role: ReplicaRole::Follower,
                policy: ReadPolicy::Session,
                floor: SessionFloor::default(),
                deadline: Instant::now() + Duration::from_secs(1),
            })
            .await
            .unwrap()
        }
    };
    assert_eq!(
        follower("k").await.version(),
        Some(created.version),
        "the local replica has not applied the delete"
    );
    let r = client
        .read(&session, "k", ReadPolicy::Session)
        .await
        .unwrap();
    assert_eq!((r.version(), r.deleted), (None, Some(deleted.version)));
    for i in 0..20 {
        client
            .write(
                &session,
                &format!("other-{i}"),
                "x".into(),
                Precondition::Any,
                &plain,
            )
            .await
            .unwrap();
    }
    assert_eq!(session.token().version_of("k"), None, "k left the token");
    assert_eq!(follower("k").await.version(), Some(created.version));
    let r = client
        .read(&session, "k", ReadPolicy::Session)
        .await
        .unwrap();
    assert_eq!((r.version(), r.deleted), (None, Some(deleted.version)));
}

/// A query (any read a backend serves beyond point reads) is planned,
/// checked and escalated like a point read: a session query at a replica
/// behind the session's point goes to the leader and sees what the session
/// wrote; the plan carries the session's point; and the session advances
/// to the point a query reflects.
#[tokio::test(start_paused = true)]
async fn a_session_query_reads_what_the_session_wrote() {
    let sim = Sim::new(config()).unwrap();
    let client = Client::new(
        sim.at("us").unwrap(),
        ClientConfig {
            clock: Arc::new(sim.clock("us").unwrap()),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let session = client.session();
    sim.stall_replica("us").unwrap();
    let written = client
        .write(
            &session,
            "k",
            "1".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let backend = sim.at("us").unwrap();
    let mut plans = Vec::new();
    let q = client
        .query(&session, ReadPolicy::Session, None, |plan| {
            plans.push((plan.region.clone(), plan.role, plan.min_point));
            let backend = backend.clone();
            let region = plan.region.clone();
            let role = plan.role;
            async move {
                let r = backend
                    .read(&ReadPlan {
                        key: "k",
                        region: &region,
                        role,
                        policy: ReadPolicy::Session,
                        floor: SessionFloor::default(),
                        deadline: Instant::now() + Duration::from_secs(1),
                    })
                    .await?;
                Ok((r.version(), r.freshness))
            }
        })
        .await
        .unwrap();
    assert_eq!(q.rows, Some(written.version), "the session's write");
    assert_eq!(q.freshness.role, ReplicaRole::Leader);
    assert_eq!(
        plans.len(),
        2,
        "the stalled replica, then the leader: {plans:?}"
    );
    assert_eq!(plans[0].1, ReplicaRole::Follower);
    assert!(
        plans[0].2 >= Some(written.point),
        "the plan names the session point"
    );
    assert_eq!(plans[1].1, ReplicaRole::Leader);
    assert!(session.point() >= q.freshness.point);
    // A bounded query may be served by a follower that states its bound.
    sim.resume_replica("us").unwrap();
    sleep(Duration::from_secs(1)).await;
    let bounded = ReadPolicy::BoundedStaleness(quorate::Staleness::from_millis(5_000).unwrap());
    client.refresh_health().await;
    let q = client
        .query(&client.session(), bounded, None, |plan| {
            let backend = backend.clone();
            let region = plan.region.clone();
            let role = plan.role;
            async move {
                let r = backend
                    .read(&ReadPlan {
                        key: "k",
                        region: &region,
                        role,
                        policy: bounded,
                        floor: SessionFloor::default(),
                        deadline: Instant::now() + Duration::from_secs(1),
                    })
                    .await?;
                Ok((r.version(), r.freshness))
            }
        })
        .await
        .unwrap();
    assert_eq!(q.freshness.role, ReplicaRole::Follower);
}

/// A client cut off from most regions cannot vouch for any leader's clock:
/// on a database that trusts every clock, its region's deposed
/// leaseholder, whose clock then steps back, believes in its old lease and
/// serves the version before a write made elsewhere meanwhile. The client
/// sees its own region's clock step with its own (it measures nothing),
/// so the read is refused, not returned: a strong read needs a leader the
/// clock guard can still judge against a majority of regions.
#[tokio::test(start_paused = true)]
async fn a_strong_read_cut_off_from_most_clocks_is_refused() {
    let mut c = config();
    c.enforce_max_offset = false;
    c.home = region("us");
    let sim = Sim::new(c).unwrap();
    let (us, checks) = probing(&sim, "us", 3);
    let session = us.session();
    us.write(
        &session,
        "k",
        "1".into(),
        Precondition::IfAbsent,
        &WriteOptions::default(),
    )
    .await
    .unwrap();
    sleep(Duration::from_secs(1)).await;
    sim.isolate("us").unwrap();
    sleep(Duration::from_secs(4)).await;
    assert_ne!(sim.leaseholder().as_str(), "us", "the lease moved");
    let eu = Client::new(
        sim.at("eu").unwrap(),
        ClientConfig {
            clock: Arc::new(sim.clock("eu").unwrap()),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let moved = eu
        .write(
            &eu.session(),
            "k",
            "2".into(),
            Precondition::Any,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    // The deposed holder's clock steps back: its old lease looks valid.
    sim.set_skew("us", -3_000_000_000).unwrap();
    match us.read(&us.session(), "k", ReadPolicy::Strong).await {
        Ok(r) => assert_eq!(
            r.version(),
            Some(moved.version),
            "a strong read returned the version before a completed write, from {:?}",
            r.freshness
        ),
        Err(e) => assert!(e.is_retryable(), "{e}"),
    }
    checks.abort();
}
