//! Faults on real PostgreSQL servers: a standby that applies WAL late, a
//! connection lost after the commit was sent, standbys stopped. These tests
//! change the shared servers, so they run one at a time.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use quorate_cockroach::cut_proxy::{Cut, CutProxy, Direction, Link};
use quorate_cockroach::{
    Backend, Bytes, Client, ClientConfig, IdempotencyKey, PgBackend, Precondition, ReadPlan,
    ReadPolicy, Region, ReplicaRole, SessionFloor, SqlQuery, SqlTransactions, Staleness, TxBody,
    TxOp, WriteOptions,
};
use tokio::time::Instant;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resets the standby's apply delay however the test ends.
struct DelayGuard(String);

impl Drop for DelayGuard {
    fn drop(&mut self) {
        let standby = self.0.clone();
        let reset = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(common::apply_delay(&standby, None));
        })
        .join();
        if reset.is_err() {
            eprintln!(
                "could not reset recovery_min_apply_delay; run scripts/pg stop && scripts/pg start"
            );
        }
    }
}

async fn naive_read(backend: &PgBackend, region: &str, key: &str) -> Option<u64> {
    let region = Region::new(region).unwrap();
    let plan = ReadPlan {
        key,
        region: &region,
        role: ReplicaRole::Follower,
        policy: ReadPolicy::Strong,
        floor: SessionFloor::default(),
        deadline: Instant::now() + Duration::from_secs(5),
    };
    backend.read(&plan).await.unwrap().version().map(|v| v.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_standby_serves_stale_reads_only_to_the_naive() {
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    let backend = common::backend(&s, "us").await;
    let _reset = DelayGuard(s[1].clone());
    common::apply_delay(&s[1], Some("2s")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let session = client.session();
    let key = common::key("stale");
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
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        naive_read(&backend, "us", &key).await,
        Some(c1.version.0),
        "replayed after the delay"
    );
    let c2 = client
        .write(
            &session,
            &key,
            "2".into(),
            Precondition::IfVersion(c1.version),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    // A real stale read: the standby still shows version 1.
    assert_eq!(
        naive_read(&backend, "us", &key).await,
        Some(c1.version.0),
        "the naive read is stale"
    );
    // The writer's session and strong reads never are.
    for policy in [ReadPolicy::Session, ReadPolicy::Strong] {
        let r = client.read(&session, &key, policy).await.unwrap();
        assert_eq!(r.version(), Some(c2.version), "{policy}");
    }
    // Another service continuing the session through its token.
    let other = Client::new(common::backend(&s, "us").await, ClientConfig::default()).unwrap();
    let continued = other
        .resume_session(&client.encode_token(&session))
        .unwrap();
    assert_eq!(
        other
            .read(&continued, &key, ReadPolicy::Session)
            .await
            .unwrap()
            .version(),
        Some(c2.version)
    );
    // Bounded reads never beyond their bound: the standby is ~2 s behind.
    let bound = Staleness::from_millis(1000).unwrap();
    for _ in 0..5 {
        let r = client
            .read(&client.session(), &key, ReadPolicy::BoundedStaleness(bound))
            .await
            .unwrap();
        let f = &r.freshness;
        assert!(
            f.role == ReplicaRole::Leader
                || f.staleness_bound.is_some_and(|b| b <= bound.duration()),
            "{f:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_after_commit_is_resolved_to_exactly_once() {
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    common::backend(&s, "eu").await;
    let upstream = SocketAddr::from(([127, 0, 0, 1], common::port_of(&s[0])));
    let proxy = CutProxy::start(upstream).await.unwrap();
    let through_proxy = common::plain_loopback(proxy.addr().port());
    let mut config = common::config(&s, "eu");
    config.endpoints = common::endpoints(&through_proxy, &s);
    let client = Client::new(PgBackend::new(config).unwrap(), ClientConfig::default()).unwrap();
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
    let idem = IdempotencyKey::new(&format!("transfer-{}", common::key("idem"))).unwrap();
    proxy.arm(idem.as_str().as_bytes(), Cut::Answer);
    let options = WriteOptions {
        idempotency_key: Some(idem),
        ..WriteOptions::default()
    };
    let c2 = client
        .write(
            &session,
            &key,
            "2".into(),
            Precondition::IfVersion(c1.version),
            &options,
        )
        .await
        .expect("the ambiguous commit is resolved, not reported as a conflict");
    assert_eq!(proxy.fired(), 1, "the answer to the commit was dropped");
    assert_eq!(c2.version, c1.version.next());
    let r = client
        .read(&session, &key, ReadPolicy::Strong)
        .await
        .unwrap();
    assert_eq!(r.version(), Some(c2.version), "applied exactly once");
    assert_eq!(&r.value.unwrap().value[..], b"2");
}

async fn pg_script(args: &[&str]) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let ok = tokio::task::spawn_blocking({
        let args = args.clone();
        move || common::pg_script(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert!(ok, "scripts/pg {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_commit_with_standbys_stopped() {
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    let backend = common::backend(&s, "eu").await;
    let client = Client::new(
        backend,
        ClientConfig {
            write_deadline: Duration::from_secs(2),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let session = client.session();
    let key = common::key("quorum");
    pg_script(&["stop-standby", "2"]).await;
    let one_down = client
        .write(
            &session,
            &key,
            "1".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await;
    pg_script(&["stop-standby", "1"]).await;
    let started = Instant::now();
    let none_left = client
        .write(
            &session,
            &key,
            "2".into(),
            Precondition::Any,
            &WriteOptions::default(),
        )
        .await;
    let waited = started.elapsed();
    pg_script(&["start-standby", "1"]).await;
    pg_script(&["start-standby", "2"]).await;
    one_down.expect("one synchronous standby is enough for the quorum");
    let err = none_left.expect_err("no standby: the commit cannot be acknowledged");
    assert!(
        err.is_ambiguous(),
        "its outcome is unknown, not failed: {err}"
    );
    assert!(
        waited < Duration::from_millis(3000),
        "it failed at its deadline instead of hanging: {waited:?}"
    );
}

/// Starts both standbys again however the test ends: with both down every
/// commit on the primary waits.
struct StandbysBack;

impl Drop for StandbysBack {
    fn drop(&mut self) {
        let restarted = std::thread::spawn(|| {
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(async {
                    pg_script(&["start-standby", "1"]).await;
                    pg_script(&["start-standby", "2"]).await;
                });
        })
        .join();
        if restarted.is_err() {
            eprintln!("could not restart the standbys; run scripts/pg stop && scripts/pg start");
        }
    }
}

/// With every synchronous standby stopped, commits wait; the client gives up
/// on them, cancels, and a cancelled commit is visible on the primary. None
/// of these writes may be reported as failed: each is applied, or its
/// outcome is unknown, and once the standbys are back a retry under its
/// idempotency key returns its one commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_stuck_on_stopped_standbys_are_never_reported_failed() {
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    let backend = common::backend(&s, "eu").await;
    let client = Client::new(
        backend.clone(),
        ClientConfig {
            write_deadline: Duration::from_millis(1500),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    // A warm pool: the lookups run on other connections than the writes.
    let warm: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .read(&client.session(), "warm", ReadPolicy::Strong)
                    .await
            })
        })
        .collect();
    for w in warm {
        w.await.unwrap().unwrap();
    }
    let back = StandbysBack;
    pg_script(&["stop-standby", "1"]).await;
    pg_script(&["stop-standby", "2"]).await;
    let writes: Vec<_> = (0..9)
        .map(|i| {
            let client = client.clone();
            let key = common::key(&format!("stuck-{i}"));
            let idem = IdempotencyKey::new(&format!("{key}-create")).unwrap();
            tokio::spawn(async move {
                let options = WriteOptions {
                    idempotency_key: Some(idem.clone()),
                    ..WriteOptions::default()
                };
                let outcome = client
                    .write(
                        &client.session(),
                        &key,
                        "1".into(),
                        Precondition::IfAbsent,
                        &options,
                    )
                    .await;
                (key, idem, outcome)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for w in writes {
        outcomes.push(w.await.unwrap());
    }
    drop(back);
    for (key, idem, outcome) in outcomes {
        if let Err(e) = &outcome {
            assert!(
                e.is_ambiguous(),
                "{key}: a write that may have applied was reported as {:?}: {}",
                e.retryability(),
                e.report()
            );
        }
        // Back with its standbys, the primary acknowledges; the retry under
        // the same key returns the one commit.
        let retry = WriteOptions {
            idempotency_key: Some(idem),
            ..WriteOptions::default()
        };
        let done = client
            .write(
                &client.session(),
                &key,
                "1".into(),
                Precondition::IfAbsent,
                &retry,
            )
            .await
            .unwrap_or_else(|e| panic!("{key}: {}", e.report()));
        assert_eq!(done.version.0, 1, "{key}: applied once");
        if let Ok(first) = outcome {
            assert_eq!(first.version, done.version, "{key}");
        }
    }
}

/// A session's write stays visible to it after it has touched 100 other
/// keys, with a standby that replays each commit 2 s late: the session's
/// point is the write's commit (not a WAL position before it), and reads of
/// other keys move the point on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_after_touching_100_keys_with_a_delayed_standby() {
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    let backend = common::backend(&s, "us").await;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let setup = client.session();
    let touched: Vec<String> = (0..100)
        .map(|i| common::key(&format!("touch-{i}")))
        .collect();
    for key in &touched {
        client
            .write(
                &setup,
                key,
                "t".into(),
                Precondition::Any,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
    }
    let _reset = DelayGuard(s[1].clone());
    common::apply_delay(&s[1], Some("2s")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for round in 0..12 {
        let session = client.session();
        let order = common::key(&format!("order-{round}"));
        let created = client
            .write(
                &session,
                &order,
                "placed".into(),
                Precondition::IfAbsent,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
        // Half the rounds touch the keys strongly, half under the session.
        let policy = if round % 2 == 0 {
            ReadPolicy::Strong
        } else {
            ReadPolicy::Session
        };
        for key in &touched {
            client.read(&session, key, policy).await.unwrap();
        }
        assert_eq!(session.token().version_of(&order), None, "evicted");
        let read = client
            .read(&session, &order, ReadPolicy::Session)
            .await
            .unwrap();
        assert_eq!(
            read.version(),
            Some(created.version),
            "round {round} ({policy}): the session read its own write as {:?} from {:?}",
            read.version(),
            read.freshness
        );
    }
}

/// A lookup that finds no outcome fences the idempotency key: an attempt
/// still in flight (here, waiting for a row lock) cannot commit afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_fences_an_attempt_still_in_flight() {
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    let backend = common::backend(&s, "eu").await;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let key = common::key("fenced");
    let c1 = client
        .write(
            &client.session(),
            &key,
            "1".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    // Another transaction holds the record's row.
    let (locker, conn) = tokio_postgres::connect(&s[0], tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    locker.batch_execute("BEGIN").await.unwrap();
    locker
        .execute(
            "SELECT 1 FROM quorate_records WHERE key = $1 FOR UPDATE",
            &[&key],
        )
        .await
        .unwrap();
    let idem = IdempotencyKey::new(&format!("{key}-update")).unwrap();
    let attempt = {
        let (backend, key, idem) = (backend.clone(), key.clone(), idem.clone());
        tokio::spawn(async move {
            let eu = Region::new("eu").unwrap();
            let value = quorate_cockroach::Bytes::from_static(b"2");
            backend
                .write(&quorate_cockroach::WriteRequest {
                    key: &key,
                    mutation: quorate::Mutation::Put(&value),
                    precondition: Precondition::IfVersion(c1.version),
                    idempotency_key: Some(&idem),
                    region: &eu,
                    deadline: Instant::now() + Duration::from_secs(30),
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!attempt.is_finished(), "the attempt waits for the lock");
    let eu = Region::new("eu").unwrap();
    assert_eq!(
        backend.lookup(&eu, &key, &idem).await.unwrap(),
        None,
        "nothing applied yet"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    drop(locker);
    let _ = conn.await;
    let late = attempt.await.unwrap();
    assert!(late.is_err(), "the fenced attempt did not commit: {late:?}");
    let now = client
        .read(&client.session(), &key, ReadPolicy::Strong)
        .await
        .unwrap();
    assert_eq!(now.version(), Some(c1.version), "the record is unchanged");
    assert_eq!(backend.lookup(&eu, &key, &idem).await.unwrap(), None);
    // A new attempt of the same write goes ahead, once.
    let options = WriteOptions {
        idempotency_key: Some(idem),
        ..WriteOptions::default()
    };
    let c2 = client
        .write(
            &client.session(),
            &key,
            "2".into(),
            Precondition::IfVersion(c1.version),
            &options,
        )
        .await
        .unwrap();
    assert_eq!(c2.version, c1.version.next());
    let again = client
        .write(
            &client.session(),
            &key,
            "2".into(),
            Precondition::IfVersion(c1.version),
            &options,
        )
        .await
        .unwrap();
    assert_eq!(
        again.version, c2.version,
        "the same commit, not a second one"
    );
}

/// An idempotency key names one write of one record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_reused_for_another_record_is_refused() {
    let Some(s) = common::servers() else { return };
    let backend = common::backend(&s, "eu").await;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let idem = IdempotencyKey::new(&format!("{}-once", common::key("reuse"))).unwrap();
    let options = WriteOptions {
        idempotency_key: Some(idem.clone()),
        ..WriteOptions::default()
    };
    let (a, b) = (common::key("reuse-a"), common::key("reuse-b"));
    client
        .write(
            &client.session(),
            &a,
            "1".into(),
            Precondition::IfAbsent,
            &options,
        )
        .await
        .unwrap();
    for p in [Precondition::IfAbsent, Precondition::Any] {
        let err = client
            .write(&client.session(), &b, "1".into(), p, &options)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, quorate_cockroach::Error::IdempotencyKeyReused { key, .. } if key == &b),
            "{}",
            err.report()
        );
    }
    let eu = Region::new("eu").unwrap();
    assert!(matches!(
        backend.lookup(&eu, &b, &idem).await,
        Err(quorate_cockroach::Error::IdempotencyKeyReused { .. })
    ));
    let r = client
        .read(&client.session(), &b, ReadPolicy::Strong)
        .await
        .unwrap();
    assert_eq!(r.version(), None, "nothing written to the other record");
}

/// Resumes replay on the standbys however the test ends.
struct ReplayGuard(Vec<String>);

impl Drop for ReplayGuard {
    fn drop(&mut self) {
        let standbys = self.0.clone();
        let resumed = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(async {
                    for s in &standbys {
                        common::exec(s, "SELECT pg_wal_replay_resume()").await;
                    }
                })
        })
        .join();
        if resumed.is_err() {
            eprintln!("could not resume replay; run scripts/pg stop && scripts/pg start");
        }
    }
}

/// The adapter's own freshness claims (a standby's replay LSN and its
/// replay-lag bound) are true while the standbys' replay is paused and the
/// record moves on at the primary: the conformance case judges every read
/// against the writes acknowledged before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_claims_hold_with_replay_paused() {
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    let backend = common::backend(&s, "us").await;
    let _resume = ReplayGuard(vec![s[1].clone(), s[2].clone()]);
    let standbys = std::sync::Arc::new([
        ("us".to_owned(), s[1].clone()),
        ("ap".to_owned(), s[2].clone()),
    ]);
    let hold = quorate_cockroach::conformance::HoldFollowers::new(move |region: Region, hold| {
        let standby = standbys
            .iter()
            .find(|(r, _)| r == region.as_str())
            .map(|(_, c)| c.clone());
        async move {
            if let Some(standby) = standby {
                let sql = if hold {
                    "SELECT pg_wal_replay_pause()"
                } else {
                    "SELECT pg_wal_replay_resume()"
                };
                common::exec(&standby, sql).await;
            }
            Ok(())
        }
    });
    let fixture = quorate_cockroach::conformance::Fixture::new(backend).with_hold_followers(hold);
    let verdict = quorate_cockroach::conformance::follower_freshness_claims_hold(&fixture).await;
    assert_eq!(verdict, Ok(()));
}

/// A multi-record write whose COMMIT's answer is lost on the network is
/// resolved through its idempotency record: both records moved, once, and
/// the caller gets the write's versions, not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_record_write_whose_commit_answer_is_lost_applies_once_and_whole() {
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    common::backend(&s, "eu").await;
    let upstream = SocketAddr::from(([127, 0, 0, 1], common::port_of(&s[0])));
    let proxy = CutProxy::start(upstream).await.unwrap();
    let through_proxy = common::plain_loopback(proxy.addr().port());
    let mut config = common::config(&s, "eu");
    config.endpoints = common::endpoints(&through_proxy, &s);
    let client = Client::new(PgBackend::new(config).unwrap(), ClientConfig::default()).unwrap();
    let session = client.session();
    let (a, b) = (common::key("tx-a"), common::key("tx-b"));
    let (hundred, zero) = (Bytes::from("100"), Bytes::from("0"));
    let opened = client
        .transact(
            &session,
            &[
                TxOp::put(&a, &hundred, Precondition::IfAbsent),
                TxOp::put(&b, &zero, Precondition::IfAbsent),
            ],
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    proxy.arm(b"COMMIT", Cut::Answer);
    let (seventy, thirty) = (Bytes::from("70"), Bytes::from("30"));
    let moved = client
        .transact(
            &session,
            &[
                TxOp::put(&a, &seventy, Precondition::IfVersion(opened.versions[0].1)),
                TxOp::put(&b, &thirty, Precondition::IfVersion(opened.versions[1].1)),
            ],
            &WriteOptions::default(),
        )
        .await
        .expect("the ambiguous commit is resolved");
    assert_eq!(proxy.fired(), 1, "the answer to the COMMIT was dropped");
    for (key, value, before) in [
        (&a, "70", opened.versions[0].1),
        (&b, "30", opened.versions[1].1),
    ] {
        assert_eq!(moved.version_of(key), Some(before.next()));
        let r = client
            .read(&session, key, ReadPolicy::Strong)
            .await
            .unwrap();
        assert_eq!(
            r.version(),
            Some(before.next()),
            "{key}: applied exactly once"
        );
        assert_eq!(&r.value.unwrap().value[..], value.as_bytes());
    }
}

/// An SQL read in a session sees the session's writes, on PostgreSQL with
/// a standby that replays two seconds late: the client plans it at the
/// standby, finds the standby behind the session's point, and reads at
/// the primary; a bounded read accepts the standby when it is within its
/// bound, and the session advances to what its reads reflected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_sql_query_reads_its_writes_with_a_delayed_standby() {
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    let backend = common::backend(&s, "us").await;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let _reset = DelayGuard(s[1].clone());
    common::apply_delay(&s[1], Some("2s")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let table = backend.tables().records.as_str().to_owned();
    let count = format!("SELECT count(*) FROM {table} WHERE key = $1 AND NOT deleted");
    for round in 0..5 {
        let session = client.session();
        let order = common::key(&format!("sql-order-{round}"));
        client
            .write(
                &session,
                &order,
                "placed".into(),
                Precondition::IfAbsent,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
        let q = client
            .sql_query(&session, ReadPolicy::Session, &count, &[&order])
            .await
            .unwrap();
        assert_eq!(
            q.rows[0].get::<_, i64>(0),
            1,
            "round {round}: the session's write, from {:?}",
            q.freshness
        );
        assert_eq!(
            q.freshness.role,
            ReplicaRole::Leader,
            "the standby is behind"
        );
        assert!(session.token().point() >= q.freshness.point);
    }
    let bound = ReadPolicy::BoundedStaleness(Staleness::from_millis(10_000).unwrap());
    let q = client
        .sql_query(&client.session(), bound, "SELECT 1::BIGINT", &[])
        .await
        .unwrap();
    assert_eq!(q.rows[0].get::<_, i64>(0), 1);
    assert_eq!(q.freshness.role, ReplicaRole::Follower, "within the bound");
}

/// A table of balances of its own for the closure transactions, with one
/// account at 100.
async fn accounts(s: &[String; 3]) -> String {
    let table = format!("accounts_{}", common::key("t").replace('-', "_"));
    common::exec(
        &s[0],
        &format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL); INSERT INTO {table} VALUES (7, 100)"),
    )
    .await;
    table
}

/// A closure transaction that withdraws 10 from account 7.
fn withdraw(
    table: &str,
) -> impl for<'t> FnMut(&'t tokio_postgres::Transaction<'t>) -> TxBody<'t, i64> + Send {
    let (select, update) = (
        format!("SELECT balance FROM {table} WHERE id = 7"),
        format!("UPDATE {table} SET balance = $1 WHERE id = 7"),
    );
    move |tx| {
        let (select, update) = (select.clone(), update.clone());
        Box::pin(async move {
            let balance: i64 = tx.query_one(&select, &[]).await?.get(0);
            tx.execute(&update, &[&(balance - 10)]).await?;
            Ok(balance - 10)
        })
    }
}

async fn balance(s: &[String; 3], table: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(&s[0], tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query_one(&format!("SELECT balance FROM {table} WHERE id = 7"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Closure transactions commit exactly once: under serializable isolation
/// four concurrent withdrawals meet serialization failures (40001) and run
/// again until each applies once; one whose COMMIT answer is lost on the
/// network is resolved through its idempotency row, not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closure_transactions_commit_exactly_once() {
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    common::backend(&s, "eu").await;
    let table = accounts(&s).await;
    let mut config = common::config(&s, "eu");
    config.isolation = quorate_cockroach::Isolation::Serializable;
    let client = Client::new(PgBackend::new(config).unwrap(), ClientConfig::default()).unwrap();
    let session = client.session();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let (client, session, table) = (client.clone(), session.clone(), table.clone());
            tokio::spawn(async move {
                client
                    .execute_tx(&session, &WriteOptions::default(), withdraw(&table))
                    .await
            })
        })
        .collect();
    let mut retried = false;
    for run in runs {
        let done = run.await.unwrap().unwrap();
        assert!(done.value.is_some());
        retried |= done.attempts > 1;
    }
    assert_eq!(
        balance(&s, &table).await,
        60,
        "each withdrawal applied once"
    );
    assert!(
        retried,
        "some withdrawal met a serialization failure and ran again"
    );
    assert!(session.token().point().is_some(), "the session advanced");

    // The answer to a COMMIT lost on the network.
    let upstream = SocketAddr::from(([127, 0, 0, 1], common::port_of(&s[0])));
    let proxy = CutProxy::start(upstream).await.unwrap();
    let through_proxy = common::plain_loopback(proxy.addr().port());
    let mut config = common::config(&s, "eu");
    config.endpoints = common::endpoints(&through_proxy, &s);
    let client = Client::new(PgBackend::new(config).unwrap(), ClientConfig::default()).unwrap();
    proxy.arm(b"COMMIT", Cut::Answer);
    let done = client
        .execute_tx(
            &client.session(),
            &WriteOptions::default(),
            withdraw(&table),
        )
        .await
        .expect("the ambiguous commit is resolved");
    assert_eq!(proxy.fired(), 1, "the answer to the COMMIT was dropped");
    assert_eq!(done.value, None, "found committed, not run again");
    assert_eq!(balance(&s, &table).await, 50, "applied exactly once");
}

/// A lookup fences a multi-record write still in flight (waiting for a row
/// lock): it cannot commit afterwards. A later attempt of the same write
/// meets the fence, lifts it in its own transaction and applies once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_multi_record_write_never_commits_and_a_later_attempt_applies_once() {
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    let backend = common::backend(&s, "eu").await;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let session = client.session();
    let (a, b) = (common::key("txfence-a"), common::key("txfence-b"));
    let one = Bytes::from("1");
    let opened = client
        .transact(
            &session,
            &[
                TxOp::put(&a, &one, Precondition::IfAbsent),
                TxOp::put(&b, &one, Precondition::IfAbsent),
            ],
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let (va, vb) = (opened.versions[0].1, opened.versions[1].1);
    // Another transaction holds the second record's row.
    let (locker, conn) = tokio_postgres::connect(&s[0], tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    locker.batch_execute("BEGIN").await.unwrap();
    locker
        .execute(
            "SELECT 1 FROM quorate_records WHERE key = $1 FOR UPDATE",
            &[&b],
        )
        .await
        .unwrap();
    let idem = IdempotencyKey::new(&format!("{a}-move")).unwrap();
    let two = Bytes::from("2");
    let attempt = {
        let (backend, a, b, idem, two) = (
            backend.clone(),
            a.clone(),
            b.clone(),
            idem.clone(),
            two.clone(),
        );
        tokio::spawn(async move {
            let eu = Region::new("eu").unwrap();
            let ops = [
                TxOp::put(&a, &two, Precondition::IfVersion(va)),
                TxOp::put(&b, &two, Precondition::IfVersion(vb)),
            ];
            backend
                .transact(&quorate_cockroach::TransactRequest {
                    ops: &ops,
                    idempotency_key: Some(&idem),
                    region: &eu,
                    deadline: Instant::now() + Duration::from_secs(30),
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!attempt.is_finished(), "the attempt waits for the lock");
    let eu = Region::new("eu").unwrap();
    let keys = [a.as_str(), b.as_str()];
    assert_eq!(
        backend.lookup_transaction(&eu, &keys, &idem).await.unwrap(),
        None,
        "nothing applied yet: the key is fenced"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    drop(locker);
    let _ = conn.await;
    let late = attempt.await.unwrap();
    assert!(late.is_err(), "the fenced attempt did not commit: {late:?}");
    for (key, v) in [(&a, va), (&b, vb)] {
        let r = client
            .read(&session, key, ReadPolicy::Strong)
            .await
            .unwrap();
        assert_eq!(r.version(), Some(v), "{key} is unchanged");
    }
    // A new attempt of the same write lifts the fence and goes ahead, once.
    let options = WriteOptions {
        idempotency_key: Some(idem.clone()),
        ..WriteOptions::default()
    };
    let ops = [
        TxOp::put(&a, &two, Precondition::IfVersion(va)),
        TxOp::put(&b, &two, Precondition::IfVersion(vb)),
    ];
    let moved = client.transact(&session, &ops, &options).await.unwrap();
    assert_eq!(moved.version_of(&a), Some(va.next()));
    assert_eq!(moved.version_of(&b), Some(vb.next()));
    // And again: the outcome, not a second application.
    let again = client.transact(&session, &ops, &options).await.unwrap();
    assert_eq!(again.versions, moved.versions);
    for (key, v) in [(&a, va), (&b, vb)] {
        let r = client
            .read(&session, key, ReadPolicy::Strong)
            .await
            .unwrap();
        assert_eq!(r.version(), Some(v.next()), "{key} applied exactly once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_then_partitioned_region_is_routed_around_and_returned_to() {
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    common::backend(&s, "eu").await;
    // The us standby is reached through the fault proxy.
    let upstream = SocketAddr::from(([127, 0, 0, 1], common::port_of(&s[1])));
    let proxy = CutProxy::start(upstream).await.unwrap();
    let mut config = common::config(&s, "us");
    config.endpoints[1].connection = common::plain_loopback(proxy.addr().port());
    let client = Client::new(
        PgBackend::new(config).unwrap(),
        ClientConfig {
            // Fixed: the slow region's answers (200 ms) arrive in time,
            // the partitioned region's never do.
            adaptive_timeouts: false,
            attempt_timeout: Duration::from_millis(600),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let session = client.session();
    let key = common::key("routed");
    client
        .write(
            &session,
            &key,
            "1".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let bounded = ReadPolicy::BoundedStaleness(Staleness::from_millis(30_000).unwrap());
    let served_by = |r: &quorate_cockroach::Read<Bytes>| r.freshness.region.as_str().to_owned();
    let r = client.read(&session, &key, bounded).await.unwrap();
    assert_eq!(
        served_by(&r),
        "us",
        "the local standby serves bounded reads"
    );

    // Slow: every answer from us is 200 ms late, and the reads show it.
    proxy.set_link(
        Direction::ToClient,
        Link {
            latency: Duration::from_millis(200),
            ..Link::default()
        },
    );
    let started = std::time::Instant::now();
    let r = client.read(&session, &key, bounded).await.unwrap();
    assert_eq!(served_by(&r), "us");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );

    // Partitioned: reads go elsewhere, within their deadline.
    proxy.partition();
    for _ in 0..5 {
        let r = client.read(&session, &key, bounded).await.unwrap();
        assert_ne!(
            served_by(&r),
            "us",
            "nothing is served across the partition"
        );
    }

    // Healed: the region serves again once its circuit lets a trial through
    // (no stickiness to the region that stood in).
    proxy.heal();
    proxy.set_link(Direction::ToClient, Link::default());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = client.read(&session, &key, bounded).await.unwrap();
        if served_by(&r) == "us" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "us never served again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Puts standby 1 back on the true clock however the test ends.
struct ClockGuard;

impl Drop for ClockGuard {
    fn drop(&mut self) {
        if !common::pg_script(&["skew", "1", "off"]) {
            eprintln!("could not put standby 1 back on the true clock; run scripts/pg skew 1 off");
        }
    }
}

/// A standby whose clock runs 3 s behind claims a lag 3 s smaller than it
/// has: PostgreSQL measures it as the standby's `now()` less the replayed
/// commit's timestamp (and delays replay by its own clock too). A client that trusts the claim reads beyond its
/// bound; quorate's clock samples see the standby's offset and count it
/// against the bound, so its bounded reads stay within it, and the
/// standby still serves the bounds its real lag meets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_clock_behind_understates_its_lag_and_quorate_counts_it() {
    let Some(s) = common::servers() else { return };
    if !std::path::Path::new("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1").exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs libfaketime (Debian package faketime)"
        );
        eprintln!("skipping: libfaketime is not installed (Debian package faketime)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let backend = common::backend(&s, "us").await;
    let _clock = ClockGuard;
    pg_script(&["skew", "1", "-3"]).await;
    let _reset = DelayGuard(s[1].clone());
    // The standby applies each commit when its own clock reads 1 s past
    // the commit's timestamp: 4 s of true time, while it claims 1 s.
    common::apply_delay(&s[1], Some("1s")).await;

    // A writer through the primary, every 100 ms: (version, when acknowledged).
    let writer = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let key = common::key("skewed");
    let acked = std::sync::Arc::new(std::sync::Mutex::new(
        Vec::<(u64, std::time::Instant)>::new(),
    ));
    let writing = {
        let (writer, key, acked) = (writer.clone(), key.clone(), acked.clone());
        tokio::spawn(async move {
            let session = writer.session();
            for n in 0..120u32 {
                let c = writer
                    .write(
                        &session,
                        &key,
                        n.to_string().into(),
                        Precondition::Any,
                        &WriteOptions::default(),
                    )
                    .await
                    .unwrap();
                acked
                    .lock()
                    .unwrap()
                    .push((c.version.0, std::time::Instant::now()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // The newest version acknowledged at least `bound` before `at`.
    let required = |at: std::time::Instant, bound: Duration| -> u64 {
        acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| *t + bound <= at)
            .map(|(v, _)| *v)
            .max()
            .unwrap_or(0)
    };
    let strict = Client::new(
        backend.clone(),
        ClientConfig {
            health_checks: Some(Duration::from_millis(250)),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    // Past the replay delay, with the clocks sampled.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let bound = Staleness::from_millis(2000).unwrap();
    let plan_region = Region::new("us").unwrap();
    let (mut naive_beyond, mut strict_beyond, mut strict_on_standby) = (0, 0, 0);
    for _ in 0..10 {
        // Naive: the standby's claim, taken at its word.
        let at = std::time::Instant::now();
        let plan = ReadPlan {
            key: &key,
            region: &plan_region,
            role: ReplicaRole::Follower,
            policy: ReadPolicy::BoundedStaleness(bound),
            floor: SessionFloor::default(),
            deadline: Instant::now() + Duration::from_secs(5),
        };
        let read = backend.read(&plan).await.unwrap();
        let claimed = read
            .freshness
            .staleness_bound
            .expect("a standby states its lag");
        if claimed <= bound.duration()
            && read.version().map_or(0, |v| v.0) < required(at, bound.duration())
        {
            naive_beyond += 1;
        }
        // quorate: the same read through the client.
        let at = std::time::Instant::now();
        let r = strict
            .read(&strict.session(), &key, ReadPolicy::BoundedStaleness(bound))
            .await
            .unwrap();
        if r.version().map_or(0, |v| v.0) < required(at, bound.duration()) {
            strict_beyond += 1;
        }
        // A bound the real lag (about 4 s) meets, with the offset counted.
        let loose = Staleness::from_millis(15_000).unwrap();
        let at = std::time::Instant::now();
        let r = strict
            .read(&strict.session(), &key, ReadPolicy::BoundedStaleness(loose))
            .await
            .unwrap();
        assert!(r.version().map_or(0, |v| v.0) >= required(at, loose.duration()));
        if r.freshness.region.as_str() == "us" {
            strict_on_standby += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    writing.abort();
    assert!(
        naive_beyond >= 5,
        "the skewed claim misleads the naive client: {naive_beyond} of 10"
    );
    assert_eq!(
        strict_beyond, 0,
        "quorate's bounded reads stay within the bound"
    );
    assert!(
        strict_on_standby >= 5,
        "the standby still serves what it can: {strict_on_standby} of 10"
    );
}
