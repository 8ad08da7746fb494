//! quorate-cockroach against real PostgreSQL servers: the core conformance
//! suite, serializable conflicts, and reads under policies.

mod common;

use std::time::Duration;

use tokio::time::Instant;

use quorate_cockroach::conformance::{run_all, Fixture};
use quorate_cockroach::{
    Backend, Client, ClientConfig, Dialect, Isolation, PgBackend, PgConfig, Precondition,
    ReadPolicy, Region, ReplicaRole, Staleness, WriteOptions,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let Some(s) = common::servers() else { return };
    let backend = common::backend(&s, "us").await;
    let query = common::sql_query_hook(
        "SELECT version FROM quorate_records WHERE key = $1 AND NOT deleted".into(),
        "",
    );
    let report = run_all(&Fixture::new(backend).with_query(query)).await;
    assert!(report
        .iter()
        .any(|(name, _)| *name == "read_your_writes_through_a_query"));
    for (name, result) in &report {
        println!("{name}: {result:?}");
    }
    assert!(report.iter().all(|(_, r)| r.is_ok()), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_serializable_writes_are_retried_to_success() {
    let Some(s) = common::servers() else { return };
    common::backend(&s, "us").await;
    let mut config = common::config(&s, "eu");
    config.isolation = Isolation::Serializable;
    let backend = PgBackend::new(config).unwrap();
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let key = common::key("serializable");
    let first = client
        .write(
            &client.session(),
            &key,
            "0".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    // Open the pool's connections first so the writers really overlap.
    let warm: Vec<_> = (0..16)
        .map(|_| {
            let (client, key) = (client.clone(), key.clone());
            tokio::spawn(async move {
                client
                    .read(&client.session(), &key, ReadPolicy::Strong)
                    .await
            })
        })
        .collect();
    for w in warm {
        w.await.unwrap().unwrap();
    }
    let mut versions = Vec::new();
    for _round in 0..10 {
        let writers: Vec<_> = (0..16)
            .map(|i| {
                let client = client.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let options = WriteOptions::default();
                    client
                        .write(
                            &client.session(),
                            &key,
                            format!("{i}").into(),
                            Precondition::Any,
                            &options,
                        )
                        .await
                })
            })
            .collect();
        for w in writers {
            versions.push(w.await.unwrap().expect("retried to success").version.0);
        }
        if backend.serialization_failures() > 0 {
            break;
        }
    }
    versions.sort();
    let expected: Vec<u64> =
        (first.version.0 + 1..=first.version.0 + versions.len() as u64).collect();
    assert_eq!(versions, expected, "every write applied exactly once");
    assert!(
        backend.serialization_failures() > 0,
        "the writes really conflicted (SQLSTATE 40001)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_report_where_and_how_fresh() {
    let Some(s) = common::servers() else { return };
    let backend = common::backend(&s, "us").await;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let session = client.session();
    let key = common::key("freshness");
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
    let strong = client
        .read(&session, &key, ReadPolicy::Strong)
        .await
        .unwrap();
    assert_eq!(strong.freshness.region, Region::new("eu").unwrap());
    assert_eq!(strong.freshness.role, ReplicaRole::Leader);
    assert_eq!(strong.version(), Some(c.version));
    assert_eq!(strong.freshness.staleness_bound, Some(Duration::ZERO));
    // Once the standby has replayed the write, session reads stay there.
    let caught_up = Instant::now() + Duration::from_secs(5);
    while Instant::now() < caught_up {
        let r = client
            .read(
                &client.session(),
                &key,
                ReadPolicy::BoundedStaleness(Staleness::from_millis(60_000).unwrap()),
            )
            .await
            .unwrap();
        if r.freshness.role == ReplicaRole::Follower && r.version() == Some(c.version) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut on_standby = 0;
    for _ in 0..50 {
        let r = client
            .read(&session, &key, ReadPolicy::Session)
            .await
            .unwrap();
        assert_eq!(r.version(), Some(c.version));
        if r.freshness.role == ReplicaRole::Follower {
            on_standby += 1;
            assert_eq!(r.freshness.region, Region::new("us").unwrap());
            assert!(r.freshness.point.unwrap() >= c.point);
        }
    }
    assert!(
        on_standby >= 48,
        "session reads served by the caught-up standby: {on_standby}/50"
    );
    // The same through the SQL passthrough.
    let (rows, f) = backend
        .query(
            &Region::new("us").unwrap(),
            ReadPolicy::Session,
            Some(c.point),
            "SELECT count(*) FROM quorate_records WHERE key = $1",
            &[&key],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 1);
    assert!(f.point.unwrap() >= c.point);
    let probe = backend.probe(&Region::new("us").unwrap()).await.unwrap();
    assert!(probe.replica_lag.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors() {
    let Some(s) = common::servers() else { return };
    let mut config = common::config(&s, "us");
    config.endpoints[0].connection = "host=127.0.0.1 port=notaport".into();
    assert!(matches!(
        PgBackend::new(config),
        Err(quorate_cockroach::Error::InvalidInput(_))
    ));
    let mut config = common::config(&s, "us");
    config.table = "Records; DROP TABLE x".into();
    assert!(matches!(
        PgBackend::new(config),
        Err(quorate_cockroach::Error::InvalidInput(_))
    ));
    let no_primary =
        quorate_cockroach::PgConfig::new("c", quorate_cockroach::Dialect::Postgres, vec![], "us")
            .unwrap();
    assert!(matches!(
        PgBackend::new(no_primary),
        Err(quorate_cockroach::Error::InvalidInput(_))
    ));
    let config = quorate_cockroach::PgConfig::new(
        "c",
        quorate_cockroach::Dialect::Postgres,
        common::endpoints(&s[0], &s),
        "mars",
    )
    .unwrap();
    assert!(matches!(
        PgBackend::new(config),
        Err(quorate_cockroach::Error::Topology(_))
    ));
    let backend = common::backend(&s, "us").await;
    let client = Client::new(backend, ClientConfig::default()).unwrap();
    let foreign = quorate_cockroach::SessionToken::new(
        quorate_cockroach::Scope::new("another-cluster").unwrap(),
    )
    .encode();
    assert!(matches!(
        client.resume_session(&foreign),
        Err(quorate_cockroach::Error::Token(_))
    ));
    let bounded = ReadPolicy::BoundedStaleness(Staleness::from_millis(1).unwrap());
    assert!(client
        .read(&client.session(), &common::key("bad"), bounded)
        .await
        .is_ok());
}

/// A session point ahead of every server (a token from a busier moment, or
/// of a primary that failed over) reads at the primary through the
/// passthrough and through point reads: never an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_point_ahead_of_every_server_reads_at_the_primary() {
    let Some(s) = common::servers() else { return };
    let backend = common::backend(&s, "us").await;
    let ahead = quorate_cockroach::Point::lsn(u64::MAX / 2);
    let (rows, f) = backend
        .query(
            &Region::new("us").unwrap(),
            ReadPolicy::Session,
            Some(ahead),
            "SELECT 1::BIGINT",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 1);
    assert_eq!(f.role, ReplicaRole::Leader);
    let client = Client::new(backend, ClientConfig::default()).unwrap();
    let mut token = quorate_cockroach::SessionToken::new(client.scope().clone());
    token.advance_point(ahead);
    let session = client.resume_session(&token.encode()).unwrap();
    let r = client
        .read(&session, &common::key("ahead"), ReadPolicy::Session)
        .await
        .unwrap();
    assert_eq!(r.freshness.role, ReplicaRole::Leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_multi_record_write_leaves_nothing_open_or_applied() {
    let Some(s) = common::servers() else { return };
    common::backend(&s, "us").await;
    // One connection, so the next write gets the very connection the
    // abandoned one held.
    let (free, locked) = (common::key("abandon-free"), common::key("abandon-locked"));
    let name = format!("quorate_{}", locked.replace('-', "_"));
    let mut config = PgConfig::new(
        "pg-test-cluster",
        Dialect::Postgres,
        common::endpoints(&format!("{} application_name={name}", s[0]), &s),
        "us",
    )
    .unwrap();
    config.pool_size = 1;
    let client = Client::new(PgBackend::new(config).unwrap(), ClientConfig::default()).unwrap();
    let session = client.session();
    for key in [&free, &locked] {
        client
            .write(
                &session,
                key,
                "1".into(),
                Precondition::IfAbsent,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
    }
    // Another transaction holds the second record's row, so the write
    // waits on it mid-transaction, having already written the first.
    let (holder, conn) = tokio_postgres::connect(&s[0], tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM quorate_records WHERE key = '{locked}' FOR UPDATE"
        ))
        .await
        .unwrap();
    let mut tx = client.transaction(&session);
    tx.put(free.clone(), "2".into(), Precondition::Any);
    tx.put(locked.clone(), "2".into(), Precondition::Any);
    let abandoned = tokio::time::timeout(Duration::from_millis(500), tx.commit()).await;
    assert!(
        abandoned.is_err(),
        "the write was to wait on the lock: {abandoned:?}"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
    // Nothing of it applied, and no session sits in a transaction.
    for key in [&free, &locked] {
        let r = client
            .read(&session, key, ReadPolicy::Strong)
            .await
            .unwrap();
        assert_eq!(&r.value.unwrap().value[..], b"1", "{key}");
    }
    // (The abandoned connection's server process may take a moment to
    // see it closed.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = holder
            .query(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                 AND state LIKE 'idle in transaction%'",
                &[&name],
            )
            .await
            .unwrap();
        if rows[0].get::<_, i64>(0) == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a connection was left in a transaction"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The pool's connection works for the next write.
    let mut next = client.transaction(&session);
    next.put(free.clone(), "3".into(), Precondition::Any);
    next.put(locked.clone(), "3".into(), Precondition::Any);
    next.commit().await.unwrap();
    drop(holder);
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_standby_of_a_region_serves_and_an_unreachable_one_is_passed_over() {
    use quorate_cockroach::{Endpoint, Role};
    let Some(s) = common::servers() else { return };
    common::backend(&s, "us").await;
    let port = |c: &str| -> i32 {
        c.split_whitespace()
            .find_map(|kv| kv.strip_prefix("port="))
            .unwrap()
            .parse()
            .unwrap()
    };
    let endpoints = |second: String| {
        vec![
            Endpoint {
                region: Region::new("eu").unwrap(),
                role: Role::Primary,
                connection: s[0].clone(),
            },
            Endpoint {
                region: Region::new("us").unwrap(),
                role: Role::Standby,
                connection: s[1].clone(),
            },
            Endpoint {
                region: Region::new("us").unwrap(),
                role: Role::Standby,
                connection: second,
            },
        ]
    };
    let us = Region::new("us").unwrap();
    let bounded = ReadPolicy::BoundedStaleness(Staleness::new(Duration::from_secs(60)).unwrap());
    let served = |backend: PgBackend| {
        let us = us.clone();
        async move {
            let mut ports = Vec::new();
            let mut failures = 0;
            for _ in 0..12 {
                match backend
                    .query(&us, bounded, None, "SELECT inet_server_port()", &[])
                    .await
                {
                    Ok((rows, _)) => ports.push(rows[0].get::<_, i32>(0)),
                    Err(_) => failures += 1,
                }
            }
            (ports, failures)
        }
    };
    // Two standbys in one region: both serve.
    let config = PgConfig::new(
        "pg-test-cluster",
        Dialect::Postgres,
        endpoints(s[2].clone()),
        "us",
    )
    .unwrap();
    let (ports, failures) = served(PgBackend::new(config).unwrap()).await;
    assert_eq!(failures, 0);
    for standby in [&s[1], &s[2]] {
        assert!(
            ports.contains(&port(standby)),
            "standby on port {} never served: {ports:?}",
            port(standby)
        );
    }
    // One of them unreachable (nothing listens on its port): after at most
    // one refused attempt, the other serves every read.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = PgConfig::new(
        "pg-test-cluster",
        Dialect::Postgres,
        endpoints(format!(
            "host=127.0.0.1 port={closed} user=postgres dbname=postgres connect_timeout=2"
        )),
        "us",
    )
    .unwrap();
    let (ports, failures) = served(PgBackend::new(config).unwrap()).await;
    assert!(failures <= 1, "{failures} reads failed");
    assert!(ports.iter().all(|p| *p == port(&s[1])), "{ports:?}");
    assert!(ports.len() >= 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_are_shown_as_postgresql_shows_wal_positions() {
    let Some(s) = common::servers() else { return };
    let client = Client::new(common::backend(&s, "us").await, ClientConfig::default()).unwrap();
    let session = client.session();
    let key = common::key("lsn-text");
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
    let r = client
        .read(&session, &key, ReadPolicy::Strong)
        .await
        .unwrap();
    let (admin, conn) = tokio_postgres::connect(&s[0], tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    for point in [c.point, r.freshness.point.unwrap()] {
        let shown = client.show_point(point).to_string();
        // PostgreSQL reads it as a WAL position and prints it the same way.
        let row = admin
            .query_one("SELECT $1::text::pg_lsn::text", &[&shown])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), shown);
        assert!(shown.contains('/'), "{shown}");
    }
    // A commit is at or below the position the server reports after it.
    let now: String = admin
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let below = admin
        .query_one(
            "SELECT $1::text::pg_lsn <= $2::text::pg_lsn",
            &[&client.show_point(c.point).to_string(), &now],
        )
        .await
        .unwrap();
    assert!(below.get::<_, bool>(0));
    drop(admin);
    let _ = task.await;
}
