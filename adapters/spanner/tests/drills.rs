//! A drill on the Spanner emulator behind the fault proxy: the answer to
//! every third commit is lost (the commit applied; the client hears a
//! broken connection). Each run is recorded and judged by the simulator
//! drills' checker.
//!
//! Naive: a read-modify-write loop on the raw gcloud-spanner client that,
//! as most services do, would report an error as a failure and try the
//! operation again from its read; had it seen one, that read would show
//! the version its "failed" write created (`future-read`), and the
//! operation would apply twice. It never sees one: gcloud-spanner retries
//! the `Commit` of the same transaction when its answer is lost, and
//! Spanner commits a transaction once, so this scenario's anomaly cannot
//! be produced on Spanner through its client library. The drill says so:
//! answers were lost, and the naive history is clean.
//! Strict: quorate's strong read and conditional write with the
//! operation's idempotency key; clean as well.

mod common;

use std::net::SocketAddr;

use quorate_spanner::cut_proxy::{Cut, CutProxy};
use quorate_spanner::gcloud_spanner::client::Client as Raw;
use quorate_spanner::gcloud_spanner::mutation::insert_or_update;
use quorate_spanner::gcloud_spanner::statement::Statement;
use quorate_spanner::gcloud_spanner::value::CommitTimestamp;
use quorate_spanner::history::{
    check_events, Anomaly, HistoryPolicy, RecordedClient, Recorder, Report,
};
use quorate_spanner::{
    Client, ClientConfig, Error, IdempotencyKey, Precondition, ReadPolicy, SpannerBackend, Version,
    WriteOptions,
};

const OPERATIONS: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Naive,
    Strict,
}

/// The value written by operation `n` of `key`, unique so that the proxy
/// can find its commit (Spanner carries BYTES as base64).
fn value_of(key: &str, n: usize) -> (Vec<u8>, Vec<u8>) {
    let value = format!("{key}/op-{n}").into_bytes();
    let pattern = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &value);
    (value, pattern.into_bytes())
}

/// The raw client's read of `key`: its version (0 = absent).
async fn raw_version(raw: &Raw, key: &str) -> Result<u64, String> {
    let mut tx = raw.single().await.map_err(|e| e.to_string())?;
    let mut stmt = Statement::new("SELECT version FROM quorate_records WHERE key = @key");
    stmt.add_param("key", &key);
    let mut rows = tx.query(stmt).await.map_err(|e| e.to_string())?;
    match rows.next().await.map_err(|e| e.to_string())? {
        Some(row) => Ok(row.column::<i64>(0).map_err(|e| e.to_string())? as u64),
        None => Ok(0),
    }
}

/// The raw client's conditional write: version `expected + 1` if the
/// record is still at `expected`.
async fn raw_write(raw: &Raw, key: &str, expected: u64, value: Vec<u8>) -> Result<(), String> {
    let mut tx = raw
        .begin_read_write_transaction()
        .await
        .map_err(|e| e.to_string())?;
    let mut stmt = Statement::new("SELECT version FROM quorate_records WHERE key = @key");
    stmt.add_param("key", &key);
    let current = {
        let mut rows = tx.query(stmt).await.map_err(|e| e.to_string())?;
        match rows.next().await.map_err(|e| e.to_string())? {
            Some(row) => row.column::<i64>(0).map_err(|e| e.to_string())? as u64,
            None => 0,
        }
    };
    if current != expected {
        let _ = tx
            .end::<(), quorate_spanner::gcloud_spanner::client::Error>(Ok(()), None)
            .await;
        return Err(format!("conflict: at {current}"));
    }
    tx.buffer_write(vec![insert_or_update(
        "quorate_records",
        &["key", "version", "value", "written_at"],
        &[
            &key,
            &((expected + 1) as i64),
            &value,
            &CommitTimestamp::new(),
        ],
    )]);
    tx.end::<(), quorate_spanner::gcloud_spanner::client::Error>(Ok(()), None)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn run(
    raw: &Raw,
    client: &Client<SpannerBackend>,
    proxy: &CutProxy,
    config: Config,
) -> Report {
    let recorder = Recorder::new();
    let key = common::key(&format!("drill-{config:?}"));
    let worker = RecordedClient::new(client.clone(), client.session(), "worker", recorder.clone());
    let process = worker.process();
    let session = "worker";
    for n in 0..OPERATIONS {
        let (value, pattern) = value_of(&key, n);
        if n % 3 == 1 {
            proxy.arm(&pattern, Cut::Answer);
        }
        let idem = format!("{key}/op-{n}");
        match config {
            Config::Naive => {
                // Until it believes the operation succeeded, at most 3 tries.
                for _ in 0..3 {
                    recorder.invoke_read(process, session, &key, HistoryPolicy::Strong);
                    let read = raw_version(raw, &key).await;
                    recorder.complete_read(
                        process,
                        session,
                        &key,
                        read.as_ref().ok().map(|v| (*v, Some("us-east1"))),
                    );
                    let Ok(version) = read else { continue };
                    recorder.invoke_write(process, session, &key, Some(version), Some(&idem));
                    let written = raw_write(raw, &key, version, value.clone()).await;
                    // Reported as it was understood: an error is a failure.
                    let result = match &written {
                        Ok(()) => Ok(quorate_spanner::Committed {
                            version: Version(version + 1),
                            point: quorate_spanner::Point {
                                wall: 1,
                                logical: 0,
                            },
                            region: quorate_spanner::Region::new("us-east1").unwrap(),
                        }),
                        Err(e) => Err(Error::InvalidInput(e.clone())),
                    };
                    recorder.complete_write(process, session, &key, true, &result);
                    if written.is_ok() {
                        break;
                    }
                }
            }
            Config::Strict => {
                let Ok(seen) = worker.read(&key, ReadPolicy::Strong).await else {
                    continue;
                };
                let precondition = match seen.version() {
                    Some(v) => Precondition::IfVersion(v),
                    None => Precondition::IfAbsent,
                };
                let options = WriteOptions {
                    idempotency_key: Some(IdempotencyKey::new(&idem).unwrap()),
                    ..WriteOptions::default()
                };
                let _ = worker
                    .write(&key, value.into(), precondition, &options)
                    .await;
            }
        }
    }
    check_events(&recorder.events()).expect("a well-formed history")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_lost_commit_answers() {
    let Some((host, db)) = common::emulator() else {
        return;
    };
    common::backend(&db, "us-east1").await;
    let upstream: SocketAddr = host.parse().expect("SPANNER_EMULATOR_HOST is host:port");
    let proxy = CutProxy::start(upstream).await.unwrap();
    let mut config = common::config(&db, "us-east1");
    config.emulator_host = Some(proxy.addr().to_string());
    let backend = SpannerBackend::connect(config).await.unwrap();
    let raw = backend.spanner().clone();
    let client = Client::new(backend, ClientConfig::default()).unwrap();
    let naive = run(&raw, &client, &proxy, Config::Naive).await;
    let lost_naive = proxy.fired();
    let strict = run(&raw, &client, &proxy, Config::Strict).await;
    println!("lost commit answers, naive:\n{}", naive.render());
    println!("lost commit answers, strict:\n{}", strict.render());
    assert!(lost_naive >= 3, "answers were lost: {lost_naive}");
    assert!(
        proxy.fired() >= lost_naive + 3,
        "answers were lost in the strict run too"
    );
    // Spanner prevents this one: the library's commit retry is applied
    // once. Were it not, the naive run would read its "failed" writes.
    assert_eq!(
        naive.count(Anomaly::FutureRead) + naive.count(Anomaly::DuplicateApplication),
        0,
        "gcloud-spanner no longer retries a commit whose answer was lost:\n{}",
        naive.render()
    );
    assert_eq!(
        naive.ops as usize,
        2 * OPERATIONS,
        "no operation was retried"
    );
    assert_eq!(strict.total(), 0, "the strict run is clean");
}

/// A region's clock skew is its clients' clock: a follower read through
/// the skewed region's backend states its age by that clock (now minus
/// the read timestamp Spanner chose), so 3 s ahead reads 3 s older; the
/// unskewed region's read of the same key does not.
#[cfg(feature = "drill")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_regions_follower_reads_age_by_its_clock() {
    use quorate_spanner::deployment::SpannerDeployment;
    use quorate_spanner::drill::{Deployment, FaultState};
    use quorate_spanner::{Backend, ReadPlan, ReadPolicy, ReplicaRole, SessionFloor};
    use std::time::Duration;
    let Some((host, database)) = common::emulator() else {
        return;
    };
    let base = SpannerDeployment::start(&host, &database, &["eu-west", "ap-south"])
        .await
        .expect("the fault layer starts");
    let table = common::key("drill_skew").replace('-', "_");
    let deployment = base
        .with_table(&table, "eu-west")
        .await
        .expect("a fresh table");
    let mut skewed = FaultState::default();
    skewed.skew_ms.insert("ap-south".to_owned(), 3_000);
    assert!(deployment
        .apply(&FaultState::default(), &skewed)
        .await
        .is_empty());
    let age = |region: &'static str| {
        let backend = deployment.at(region).unwrap();
        async move {
            let region = quorate_spanner::Region::new(region).unwrap();
            let plan = ReadPlan {
                key: "k",
                region: &region,
                role: ReplicaRole::Follower,
                policy: ReadPolicy::Strong,
                floor: SessionFloor::default(),
                deadline: tokio::time::Instant::now() + Duration::from_secs(10),
            };
            let read = backend.read(&plan).await.expect("a follower read");
            read.freshness.staleness_bound.expect("an age")
        }
    };
    let (skewed_age, true_age) = (age("ap-south").await, age("eu-west").await);
    assert!(
        skewed_age >= Duration::from_millis(2_900),
        "ap-south's read is aged by its clock: {skewed_age:?}"
    );
    assert!(true_age < Duration::from_secs(2), "{true_age:?}");
}
