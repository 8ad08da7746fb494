//! quorate-spanner against the Cloud Spanner emulator.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quorate_spanner::conformance::{run_all, Fixture};
use quorate_spanner::cut_proxy::{Cut, CutProxy};
use quorate_spanner::gcloud_spanner::statement::Statement;
use quorate_spanner::gcloud_spanner::value::TimestampBound;
use quorate_spanner::{
    Backend, Client, ClientConfig, Error, Precondition, ReadPolicy, SpannerBackend, SpannerConfig,
    TxOp, WriteOptions,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let Some((_, db)) = common::emulator() else {
        return;
    };
    let backend = common::backend(&db, "us-east1").await;
    let query = common::sql_query_hook(
        "SELECT version FROM quorate_records WHERE key = @k AND deleted IS NOT TRUE".into(),
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

/// The version of `key` that a read at exactly `staleness` sees.
async fn version_at(backend: &SpannerBackend, key: &str, staleness: Duration) -> Option<i64> {
    let mut tx = backend
        .spanner()
        .single_with_timestamp_bound(TimestampBound::exact_staleness(staleness))
        .await
        .unwrap();
    let mut stmt = Statement::new(backend.tables().current_version());
    stmt.add_param("key", &key);
    let mut rows = tx.query(stmt).await.unwrap();
    rows.next()
        .await
        .unwrap()
        .map(|r| r.column::<i64>(0).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_read_is_visible_naively_but_never_through_session_or_strong() {
    let Some((_, db)) = common::emulator() else {
        return;
    };
    let backend = common::backend(&db, "us-east1").await;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let session = client.session();
    let key = common::key("stale");
    let opts = WriteOptions::default();
    let c1 = client
        .write(&session, &key, "1".into(), Precondition::IfAbsent, &opts)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c2 = client
        .write(
            &session,
            &key,
            "2".into(),
            Precondition::IfVersion(c1.version),
            &opts,
        )
        .await
        .unwrap();
    // A read one second in the past (what a replica that far behind
    // serves) returns the old version.
    let naive = version_at(&backend, &key, Duration::from_secs(1)).await;
    assert_eq!(naive, Some(c1.version.0 as i64), "the naive read is stale");
    for policy in [ReadPolicy::Session, ReadPolicy::Strong] {
        for _ in 0..5 {
            let r = client.read(&session, &key, policy).await.unwrap();
            assert_eq!(r.version(), Some(c2.version), "{policy:?}");
            assert!(
                r.freshness.point.unwrap() >= c2.point,
                "{policy:?}: {:?}",
                r.freshness
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conditional_writes_conflict() {
    let Some((_, db)) = common::emulator() else {
        return;
    };
    let client = Arc::new(common::client(&db, "us-east1").await);
    let key = common::key("conflict");
    let v1 = common::create(&client, &key).await;
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let (client, key) = (client.clone(), key.clone());
            tokio::spawn(async move {
                client
                    .write(
                        &client.session(),
                        &key,
                        format!("{i}").into(),
                        Precondition::IfVersion(v1),
                        &WriteOptions::default(),
                    )
                    .await
            })
        })
        .collect();
    let (mut ok, mut conflicts) = (0, 0);
    for w in writers {
        match w.await.unwrap() {
            Ok(c) => {
                assert_eq!(c.version, v1.next());
                ok += 1;
            }
            Err(Error::Conflict { current, .. }) => {
                assert_eq!(current, Some(v1.next()));
                conflicts += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok, conflicts), (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_applies_exactly_once() {
    let Some((host, db)) = common::emulator() else {
        return;
    };
    common::backend(&db, "us-east1").await;
    let upstream: SocketAddr = host.parse().expect("SPANNER_EMULATOR_HOST is host:port");
    let proxy = CutProxy::start(upstream).await.unwrap();
    let mut config = common::config(&db, "us-east1");
    config.emulator_host = Some(proxy.addr().to_string());
    let client = Client::new(
        SpannerBackend::connect(config).await.unwrap(),
        ClientConfig::default(),
    )
    .unwrap();
    let session = client.session();
    let key = common::key("ambiguous");
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
    for cut in [Cut::Answer, Cut::Request] {
        // The value travels only in the commit's mutations, where Spanner
        // carries BYTES as base64.
        let value = common::key("value-in-the-commit");
        let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &value);
        proxy.arm(encoded.as_bytes(), cut);
        let fired = proxy.fired();
        let c = client
            .write(
                &session,
                &key,
                value.clone().into(),
                Precondition::IfVersion(expected),
                &WriteOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{cut:?}: resolved, not {e}"));
        assert_eq!(proxy.fired(), fired + 1, "{cut:?}: the exchange was lost");
        assert_eq!(c.version, expected.next(), "{cut:?}: applied exactly once");
        let r = client
            .read(&session, &key, ReadPolicy::Strong)
            .await
            .unwrap();
        assert_eq!(r.version(), Some(c.version));
        assert_eq!(&r.value.unwrap().value[..], value.as_bytes());
        expected = c.version;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors() {
    let Some((_, db)) = common::emulator() else {
        return;
    };
    assert!(matches!(
        SpannerConfig::new("projects/p/databases/d", &["us"], "us"),
        Err(Error::InvalidInput(_))
    ));
    let mut config = common::config(&db, "us-east1");
    config.table = "bad name".into();
    assert!(matches!(
        SpannerBackend::connect(config).await,
        Err(Error::InvalidInput(_))
    ));
    // Beyond the one-hour version retention window: refused before any
    // read is made.
    assert!(matches!(
        quorate_spanner::Staleness::with_max(
            Duration::from_secs(2 * 3600),
            quorate_spanner::VERSION_RETENTION
        ),
        Err(quorate_spanner::PolicyError::StalenessTooLarge { .. })
    ));
    assert!(matches!(
        "bounded:7200000".parse::<ReadPolicy>(),
        Err(quorate_spanner::PolicyError::StalenessTooLarge { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_sessions_are_reused_and_deleted_on_close() {
    let Some((_, db)) = common::emulator() else {
        return;
    };
    let client = Arc::new(common::client(&db, "us-east1").await);
    let key = common::key("sessions");
    common::create(&client, &key).await;
    client.backend().close_read_sessions().await;
    // Sequential reads share one session.
    for _ in 0..5 {
        let r = client
            .read(&client.session(), &key, ReadPolicy::Strong)
            .await
            .unwrap();
        assert!(r.value.is_some());
    }
    assert_eq!(client.backend().close_read_sessions().await, 1);
    // Concurrent reads take one session each, at most one per read.
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (client, key) = (client.clone(), key.clone());
            tokio::spawn(async move {
                client
                    .read(&client.session(), &key, ReadPolicy::Strong)
                    .await
                    .map(|r| r.value.is_some())
            })
        })
        .collect();
    for r in readers {
        assert!(r.await.unwrap().unwrap());
    }
    let deleted = client.backend().close_read_sessions().await;
    assert!((1..=8).contains(&deleted), "{deleted} sessions");
    assert_eq!(client.backend().close_read_sessions().await, 0, "none left");
    // Reads go on after a close, on a new session.
    let r = client
        .read(&client.session(), &key, ReadPolicy::Strong)
        .await
        .unwrap();
    assert!(r.value.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_report_each_regions_server_time() {
    use quorate_spanner::Backend;
    let Some((_, db)) = common::emulator() else {
        return;
    };
    let backend = common::backend(&db, "us-east1").await;
    for name in ["us-central1", "us-east1", "europe-west1"] {
        let region = quorate_spanner::Region::new(name).unwrap();
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        let probe = backend.probe(&region).await.unwrap();
        assert_eq!(probe.region, region);
        // The emulator runs on this machine's clock.
        let offset = i128::from(probe.server_time_nanos) - before;
        assert!(offset.abs() < 5_000_000_000, "offset {offset} ns");
    }
    // Probing leaves its session for reuse like any read.
    assert_eq!(backend.close_read_sessions().await, 1);
}

/// A database that does not exist is a permanent error, not a retryable one
/// that a start-up loop would retry forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_is_a_permanent_error() {
    let Some((_, db)) = common::emulator() else {
        return;
    };
    let instance = db.rsplit_once("/databases/").unwrap().0;
    let missing = format!("{instance}/databases/missing-{}", std::process::id());
    let outcome = async {
        let backend = SpannerBackend::connect(common::config(&missing, "us-east1")).await?;
        let client = Client::new(backend, ClientConfig::default())?;
        client
            .write(
                &client.session(),
                "k",
                "v".into(),
                Precondition::IfAbsent,
                &WriteOptions::default(),
            )
            .await
    };
    let started = tokio::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(30), outcome)
        .await
        .expect("it fails rather than retrying")
        .unwrap_err();
    assert_eq!(
        err.retryability(),
        quorate_spanner::Retryability::Permanent,
        "{}",
        err.report()
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "no retries until the deadline: {:?}",
        started.elapsed()
    );
}

/// The schema helper talks to the configured emulator, not to whatever
/// `SPANNER_EMULATOR_HOST` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_tables_uses_the_configured_host() {
    let Some((host, db)) = common::emulator() else {
        return;
    };
    let upstream: SocketAddr = host.parse().expect("SPANNER_EMULATOR_HOST is host:port");
    let proxy = CutProxy::start(upstream).await.unwrap();
    let mut config = common::config(&db, "us-east1");
    config.emulator_host = Some(proxy.addr().to_string());
    let table = format!("ddl_{}", common::key("t").replace('-', "_"));
    config.table = table.clone();
    let backend = SpannerBackend::connect(config).await.unwrap();
    // The first DDL request through the proxy is lost: it went there.
    proxy.arm(table.as_bytes(), Cut::Request);
    let _ = tokio::time::timeout(Duration::from_secs(5), backend.create_tables()).await;
    assert_eq!(proxy.fired(), 1, "the DDL went through the configured host");
    backend.create_tables().await.unwrap();
    let client = Client::new(backend, ClientConfig::default()).unwrap();
    client
        .write(
            &client.session(),
            "k",
            "v".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .expect("the table exists");
}

/// A database path longer than a scope name (Spanner's own limits allow
/// paths of more than 64 characters) makes a working backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_database_paths_are_accepted() {
    use gcloud_googleapis::spanner::admin::database::v1::CreateDatabaseRequest;
    use gcloud_googleapis::spanner::admin::instance::v1::{CreateInstanceRequest, Instance};
    use quorate_spanner::gcloud_spanner::admin::{client::Client as Admin, AdminClientConfig};
    let Some(_) = common::emulator() else {
        return;
    };
    let project = format!("projects/{}", "p".repeat(30));
    let instance = format!("{project}/instances/{}", "i".repeat(40));
    let long = format!("{instance}/databases/orders");
    // SPANNER_EMULATOR_HOST names the emulator.
    let admin = Admin::new(AdminClientConfig::default()).await.unwrap();
    // Existing ones (from an earlier run) are kept.
    let _ = admin
        .instance()
        .create_instance(
            CreateInstanceRequest {
                parent: project.clone(),
                instance_id: "i".repeat(40),
                instance: Some(Instance {
                    name: instance.clone(),
                    config: "emulator-config".into(),
                    display_name: "long".into(),
                    node_count: 1,
                    ..Instance::default()
                }),
            },
            None,
        )
        .await;
    if let Ok(mut op) = admin
        .database()
        .create_database(
            CreateDatabaseRequest {
                parent: instance.clone(),
                create_statement: "CREATE DATABASE orders".into(),
                ..CreateDatabaseRequest::default()
            },
            None,
        )
        .await
    {
        let _ = op.wait(None).await;
    }
    assert!(long.len() > quorate_spanner::MAX_SCOPE_LEN);
    let backend = SpannerBackend::connect(common::config(&long, "us-east1"))
        .await
        .unwrap();
    assert!(backend.scope().as_str().starts_with("orders~"));
    backend.create_tables().await.unwrap();
    let client = Client::new(backend, ClientConfig::default()).unwrap();
    let session = client.session();
    let c = client
        .write(
            &session,
            &common::key("long"),
            "v".into(),
            Precondition::Any,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let token = client.encode_token(&session);
    assert_eq!(
        client.resume_session(&token).unwrap().token().point(),
        Some(c.point)
    );
}

/// A multi-record write whose commit exchange is lost on the network (the
/// answer, or the request) is resolved through its idempotency row: both
/// records moved exactly once, never half of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_record_commit_whose_exchange_is_lost_applies_once_and_whole() {
    let Some((host, db)) = common::emulator() else {
        return;
    };
    common::backend(&db, "us-east1").await;
    let upstream: SocketAddr = host.parse().expect("SPANNER_EMULATOR_HOST is host:port");
    let proxy = CutProxy::start(upstream).await.unwrap();
    let mut config = common::config(&db, "us-east1");
    config.emulator_host = Some(proxy.addr().to_string());
    let client = Client::new(
        SpannerBackend::connect(config).await.unwrap(),
        ClientConfig::default(),
    )
    .unwrap();
    let session = client.session();
    let (a, b) = (common::key("tx-a"), common::key("tx-b"));
    let zero = quorate_spanner::Bytes::from("0");
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
    for cut in [Cut::Answer, Cut::Request] {
        // The value travels only in the commit's mutations, where Spanner
        // carries BYTES as base64.
        let value = common::key("value-in-the-commit");
        let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &value);
        proxy.arm(encoded.as_bytes(), cut);
        let fired = proxy.fired();
        let bytes = quorate_spanner::Bytes::from(value.clone());
        let moved = client
            .transact(
                &session,
                &[
                    TxOp::put(&a, &bytes, Precondition::IfVersion(versions[0].1)),
                    TxOp::put(&b, &bytes, Precondition::IfVersion(versions[1].1)),
                ],
                &WriteOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{cut:?}: resolved, not {e}"));
        assert_eq!(proxy.fired(), fired + 1, "{cut:?}: the exchange was lost");
        for (n, key) in [&a, &b].into_iter().enumerate() {
            let next = versions[n].1.next();
            assert_eq!(moved.version_of(key), Some(next), "{cut:?}: {key}");
            let r = client
                .read(&session, key, ReadPolicy::Strong)
                .await
                .unwrap();
            assert_eq!(r.version(), Some(next), "{cut:?}: {key} moved exactly once");
            assert_eq!(&r.value.unwrap().value[..], value.as_bytes());
        }
        versions = moved.versions;
    }
}

/// Each attempt's span names the database, the table and the server it
/// goes to, in OpenTelemetry's database conventions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_name_their_database_table_and_server() {
    use quorate_spanner::{Backend, DbOperation};
    let Some((host, db)) = common::emulator() else {
        return;
    };
    let backend = common::backend(&db, "us-east1").await;
    let region = quorate_spanner::Region::new("us-east1").unwrap();
    assert_eq!(backend.db_system(), "gcp.spanner");
    assert_eq!(backend.db_operation_name(DbOperation::Write), "Commit");
    let t = backend.db_target(DbOperation::Read, &region, Some("k"));
    assert_eq!(t.namespace.as_deref(), Some(db.as_str()));
    assert_eq!(t.collection.as_deref(), Some("quorate_records"));
    let (h, p) = host.rsplit_once(':').unwrap();
    assert_eq!(
        (t.server_address.as_deref(), t.server_port),
        (Some(h), p.parse().ok())
    );
    let t = backend.db_target(DbOperation::Lookup, &region, Some("k"));
    assert_eq!(t.collection.as_deref(), Some("quorate_records_idempotency"));
}
