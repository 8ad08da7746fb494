//! Drills on the real PostgreSQL servers: a workload of writers and
//! readers in two regions, run once by the client teams write without
//! quorate (naive) and once by quorate (strict), while a real fault is in
//! force; each history is recorded and judged by the same checker as the
//! simulator's drills. The verdict rule is the drills' own: the strict run
//! is clean and the naive run shows the anomaly the scenario is about.
//!
//! - **standby clock behind**: standby 1 (region `us`) runs 3 s behind
//!   under libfaketime and replays with a 1 s delay by its own clock, so it
//!   is 4 s behind while it claims 1 s. Readers in `us` make 2-second
//!   bounded reads. Naive: reads the local standby whenever it claims to be
//!   within the bound (else the primary). Anomaly: `staleness-bound`.
//! - **replication cut**: standby 1 replicates through a fault proxy,
//!   partitioned for part of the run (commits go on with standby 2's
//!   acknowledgement). Each user writes in `eu` and reads back in `us`.
//!   Naive: reads the local standby (no session carried). Anomaly:
//!   `read-your-writes`.
//!
//! These change the shared servers, so they run one at a time, and put
//! them back however they end.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use quorate_cockroach::cut_proxy::CutProxy;
use quorate_cockroach::history::{check_events, HistoryPolicy, RecordedClient, Recorder, Report};
use quorate_cockroach::{
    Backend, Client, ClientConfig, PgBackend, Precondition, ReadPlan, ReadPolicy, Region,
    ReplicaRole, SessionFloor, Staleness, WriteOptions,
};
use tokio::time::Instant;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Naive,
    Strict,
}

/// Puts standby 1 back as it was (true clock, no apply delay, replicating
/// straight from the primary) however a drill ends.
struct Restore {
    standby: String,
    primary_port: u16,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let (standby, primary_port) = (self.standby.clone(), self.primary_port);
        let restored = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().expect("runtime").block_on(async {
                common::apply_delay(&standby, None).await;
                common::exec(
                    &standby,
                    &format!(
                        "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={primary_port} user=postgres application_name=s1'"
                    ),
                )
                .await;
                common::exec(&standby, "SELECT pg_reload_conf()").await;
            })
        })
        .join()
        .is_ok();
        if !restored || !common::pg_script(&["skew", "1", "off"]) {
            eprintln!("could not restore standby 1; run scripts/pg stop && scripts/pg start");
        }
    }
}

fn faketime_present() -> bool {
    let present =
        std::path::Path::new("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1").exists();
    assert!(
        present || std::env::var("CI").as_deref() != Ok("true"),
        "CI needs libfaketime (Debian package faketime)"
    );
    present
}

/// A writer in `eu` that writes `key` every 100 ms until `end`.
async fn write_until(writer: RecordedClient<PgBackend>, key: String, end: Instant) {
    let mut n = 0u64;
    while Instant::now() < end {
        let _ = writer
            .write(
                &key,
                n.to_string().into(),
                Precondition::Any,
                &WriteOptions::default(),
            )
            .await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A naive read of `key` at `us`'s standby, recorded under `policy`: what a
/// service reading its local replica does. With a bound, it believes the
/// standby's stated lag and goes to the primary only when that exceeds it.
async fn naive_read(
    backend: &PgBackend,
    recorder: &Recorder,
    process: u64,
    session: &str,
    key: &str,
    policy: ReadPolicy,
) {
    recorder.invoke_read(process, session, key, HistoryPolicy::from(policy));
    let us = Region::new("us").unwrap();
    let plan = |role| ReadPlan {
        key,
        region: &us,
        role,
        policy,
        floor: SessionFloor::default(),
        deadline: Instant::now() + Duration::from_secs(2),
    };
    let mut result = backend.read(&plan(ReplicaRole::Follower)).await;
    if let (ReadPolicy::BoundedStaleness(b), Ok(r)) = (policy, &result) {
        if r.freshness.staleness_bound.is_none_or(|s| s > b.duration()) {
            let eu = Region::new("eu").unwrap();
            result = backend
                .read(&ReadPlan {
                    region: &eu,
                    role: ReplicaRole::Leader,
                    ..plan(ReplicaRole::Leader)
                })
                .await;
        }
    }
    let outcome = result.as_ref().ok().map(|r| {
        (
            r.observed().map_or(0, |v| v.0),
            Some(r.freshness.region.as_str()),
        )
    });
    recorder.complete_read(process, session, key, outcome);
}

async fn client(s: &[String; 3], local: &str, config: ClientConfig) -> Client<PgBackend> {
    Client::new(common::backend(s, local).await, config).unwrap()
}

/// The standby-clock-behind scenario, under `config`.
async fn standby_clock_behind(s: &[String; 3], config: Config) -> Report {
    let recorder = Recorder::new();
    let key = common::key(&format!("drill-skew-{config:?}"));
    let writer_client = client(s, "eu", ClientConfig::default()).await;
    let writer = RecordedClient::new(
        writer_client.clone(),
        writer_client.session(),
        "writer",
        recorder.clone(),
    );
    recorder.locate(writer.process(), "eu");
    // Give the standby's replay something to trail, then run.
    let end = Instant::now() + Duration::from_secs(9);
    let writing = tokio::spawn(write_until(writer, key.clone(), end));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let bound = ReadPolicy::BoundedStaleness(Staleness::from_millis(2000).unwrap());
    let strict = client(
        s,
        "us",
        ClientConfig {
            health_checks: Some(Duration::from_millis(250)),
            ..ClientConfig::default()
        },
    )
    .await;
    let naive_backend = common::backend(s, "us").await;
    let mut readers = Vec::new();
    for r in 0..3 {
        let (recorder, key, strict, naive_backend) = (
            recorder.clone(),
            key.clone(),
            strict.clone(),
            naive_backend.clone(),
        );
        readers.push(tokio::spawn(async move {
            let name = format!("reader-{r}");
            let reader =
                RecordedClient::new(strict.clone(), strict.session(), &name, recorder.clone());
            recorder.locate(reader.process(), "us");
            let process = recorder.process();
            recorder.locate(process, "us");
            while Instant::now() < end {
                match config {
                    Config::Strict => {
                        let _ = reader.read(&key, bound).await;
                    }
                    Config::Naive => {
                        naive_read(&naive_backend, &recorder, process, &name, &key, bound).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    for r in readers {
        r.await.unwrap();
    }
    writing.await.unwrap();
    check_events(&recorder.events()).expect("a well-formed history")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_standby_clock_behind() {
    let Some(s) = common::servers() else { return };
    if !faketime_present() {
        eprintln!("skipping: libfaketime is not installed (Debian package faketime)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let _restore = Restore {
        standby: s[1].clone(),
        primary_port: common::port_of(&s[0]),
    };
    assert!(
        common::pg_script(&["skew", "1", "-3"]),
        "scripts/pg skew 1 -3"
    );
    common::apply_delay(&s[1], Some("1s")).await;
    let naive = standby_clock_behind(&s, Config::Naive).await;
    let strict = standby_clock_behind(&s, Config::Strict).await;
    println!("standby clock behind, naive:\n{}", naive.render());
    println!("standby clock behind, strict:\n{}", strict.render());
    assert!(
        naive.count(quorate_cockroach::history::Anomaly::StalenessBound) > 0,
        "the naive run reads beyond its bound"
    );
    assert_eq!(strict.total(), 0, "the strict run is clean");
    assert!(strict.ops > 50 && naive.ops > 50);
}

/// The replication-cut scenario, under `config`: users write in `eu` and
/// read back in `us` while `proxy` cuts standby 1 from the primary for
/// seconds 2 to 6.
async fn replication_cut(s: &[String; 3], config: Config, proxy: &CutProxy) -> Report {
    let recorder = Recorder::new();
    let start = Instant::now();
    let end = start + Duration::from_secs(8);
    let eu = client(s, "eu", ClientConfig::default()).await;
    let us = client(s, "us", ClientConfig::default()).await;
    let naive_backend = common::backend(s, "us").await;
    let mut users = Vec::new();
    for u in 0..3 {
        let (recorder, eu, us, naive_backend) = (
            recorder.clone(),
            eu.clone(),
            us.clone(),
            naive_backend.clone(),
        );
        let key = common::key(&format!("drill-cut-{config:?}-{u}"));
        users.push(tokio::spawn(async move {
            let name = format!("user-{u}");
            // One process, in one session, moving between the regions'
            // services: its writes in eu, its reads in us.
            let session = eu.session();
            let writer = RecordedClient::new(eu.clone(), session.clone(), &name, recorder.clone());
            recorder.locate(writer.process(), "eu");
            let process = recorder.process();
            while Instant::now() < end {
                let _ = writer
                    .write(
                        &key,
                        "x".into(),
                        Precondition::Any,
                        &WriteOptions::default(),
                    )
                    .await;
                recorder.locate(process, "us");
                match config {
                    Config::Strict => {
                        let token = eu.encode_token(writer.session());
                        let resumed = us.resume_session(&token).unwrap();
                        let reader =
                            RecordedClient::new(us.clone(), resumed, &name, recorder.clone());
                        recorder.locate(reader.process(), "us");
                        let _ = reader.read(&key, ReadPolicy::Session).await;
                        writer.session().merge(&reader.session().token()).unwrap();
                    }
                    Config::Naive => {
                        naive_read(
                            &naive_backend,
                            &recorder,
                            process,
                            &name,
                            &key,
                            ReadPolicy::Session,
                        )
                        .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    let faults = async {
        tokio::time::sleep_until(start + Duration::from_secs(2)).await;
        proxy.partition();
        tokio::time::sleep_until(start + Duration::from_secs(6)).await;
        proxy.heal();
    };
    let ((), ()) = tokio::join!(faults, async {
        for u in users {
            u.await.unwrap();
        }
    });
    check_events(&recorder.events()).expect("a well-formed history")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_replication_cut() {
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    let primary_port = common::port_of(&s[0]);
    let _restore = Restore {
        standby: s[1].clone(),
        primary_port,
    };
    // Standby 1 replicates through the fault proxy.
    let proxy = CutProxy::start(SocketAddr::from(([127, 0, 0, 1], primary_port)))
        .await
        .unwrap();
    common::exec(
        &s[1],
        &format!(
            "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=s1'",
            proxy.addr().port()
        ),
    )
    .await;
    common::exec(&s[1], "SELECT pg_reload_conf()").await;
    // Until its WAL receiver streams through the proxy.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (c, conn) = tokio_postgres::connect(&s[1], tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        let port: Option<i32> = c
            .query_opt(
                "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                &[],
            )
            .await
            .unwrap()
            .and_then(|r| r.get(0));
        drop(c);
        let _ = task.await;
        if port == Some(i32::from(proxy.addr().port())) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "standby 1 never streamed through the proxy"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let naive = replication_cut(&s, Config::Naive, &proxy).await;
    let strict = replication_cut(&s, Config::Strict, &proxy).await;
    println!("replication cut, naive:\n{}", naive.render());
    println!("replication cut, strict:\n{}", strict.render());
    assert!(
        naive.count(quorate_cockroach::history::Anomaly::ReadYourWrites) > 0,
        "the naive run misses its own writes"
    );
    assert_eq!(strict.total(), 0, "the strict run is clean");
    assert!(strict.ops > 50 && naive.ops > 50);
}

/// One of the simulator's seed scenarios, unchanged, on the real servers:
/// its workload's clients reach the servers through the fault layer of
/// `PgDeployment`, which the runner steers from the scenario's windows
/// (ap-south isolated, eu-west <-> us-east slowed). Naive: reads critical
/// records from the local standby, which the isolation cut off from the
/// primary. Anomaly: `stale-read`. The mechanism the drill credits,
/// strong reads, is switched off in a third run, which then reads stale
/// records too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_isolation_scenario_runs_on_the_real_servers() {
    use quorate_cockroach::deployment::{PgDeployment, PgServers};
    use quorate_cockroach::drill::{run_deployed, scenarios_on, Configuration, Mechanism, Variant};
    let Some(_) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    let servers = PgServers::from_env().expect("the servers' environment");
    let base = PgDeployment::start(&servers, &["eu-west", "us-east", "ap-south"])
        .await
        .expect("the fault layer starts");
    let scenario = scenarios_on::<PgDeployment>()
        .into_iter()
        .find(|s| s.name == "isolation-latency")
        .expect("the scenario exists");
    let without = Variant {
        without: vec![Mechanism::StrongReads],
        ..Variant::default()
    };
    let mut results = Vec::new();
    for (n, (config, variant)) in [
        (Configuration::Naive, Variant::default()),
        (Configuration::Strict, Variant::default()),
        (Configuration::Strict, without),
    ]
    .into_iter()
    .enumerate()
    {
        let table = common::key(&format!("drill_isolation_{n}")).replace('-', "_");
        let deployment = base.with_table(&table).await.expect("a fresh table");
        let run = run_deployed(&deployment, &scenario, config, 1, &variant)
            .await
            .expect("the run completes");
        println!(
            "{} {} {}:\n{}",
            scenario.name,
            config.label(),
            variant.describe(),
            run.report.render()
        );
        results.push(run);
    }
    base.restore().await.expect("the servers are put back");
    let (naive, strict, weakened) = (&results[0], &results[1], &results[2]);
    assert!(
        weakened
            .report
            .count(quorate_cockroach::history::Anomaly::StaleRead)
            > 0,
        "without strong reads the strict run reads stale records too"
    );
    assert!(
        naive
            .report
            .count(quorate_cockroach::history::Anomaly::StaleRead)
            > 0,
        "the naive run reads stale records from the cut-off standby"
    );
    assert_eq!(strict.report.total(), 0, "the strict run is clean");
    assert!(strict.report.ops > 100 && naive.report.ops > 100);
    // The isolated region's strong reads failed rather than went stale.
    assert!(
        strict.failed > 0,
        "ap-south's strict reads could not reach the primary"
    );
}

/// A standby's crash and pause, steered through the deployment as the
/// runner does: down (nothing answers), frozen (connections hang), and
/// back in both cases when the window ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_crashes_and_pauses_and_comes_back() {
    use quorate_cockroach::deployment::{PgDeployment, PgServers};
    use quorate_cockroach::drill::{Deployment, FaultState};
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    let servers = PgServers::from_env().expect("the servers' environment");
    let deployment = PgDeployment::start(&servers, &["eu-west", "us-east", "ap-south"])
        .await
        .expect("the fault layer starts");
    let answers = |connection: String| async move {
        let attempt = async {
            let (c, conn) = tokio_postgres::connect(&connection, tokio_postgres::NoTls).await?;
            let task = tokio::spawn(conn);
            let r = c.simple_query("SELECT 1").await.map(drop);
            drop(c);
            let _ = task.await;
            r
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), attempt).await,
            Ok(Ok(()))
        )
    };
    assert!(answers(s[1].clone()).await);
    let clear = FaultState::default();
    let mut crashed = FaultState::default();
    crashed.crashed.insert("us-east".to_owned());
    assert!(deployment.apply(&clear, &crashed).await.is_empty());
    assert!(!answers(s[1].clone()).await, "standby 1 is down");
    assert!(answers(s[2].clone()).await, "standby 2 is not");
    assert!(deployment.apply(&crashed, &clear).await.is_empty());
    assert!(answers(s[1].clone()).await, "standby 1 is back");
    let mut paused = FaultState::default();
    paused.paused.insert("ap-south".to_owned());
    assert!(deployment.apply(&clear, &paused).await.is_empty());
    assert!(!answers(s[2].clone()).await, "standby 2 is frozen");
    // A replay delay scheduled while it is frozen waits until it is back,
    // rather than stalling the schedule on a server that cannot answer.
    let mut lagging = paused.clone();
    lagging.lag_ms.insert("ap-south".to_owned(), 1500);
    let started = std::time::Instant::now();
    assert!(deployment.apply(&paused, &lagging).await.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let mut back = FaultState::default();
    back.lag_ms.insert("ap-south".to_owned(), 1500);
    assert!(deployment.apply(&lagging, &back).await.is_empty());
    let (c, conn) = tokio_postgres::connect(&s[2], tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let delay: String = c
        .query_one("SHOW recovery_min_apply_delay", &[])
        .await
        .unwrap()
        .get(0);
    drop(c);
    let _ = task.await;
    assert_eq!(delay, "1500ms", "set once standby 2 answered again");
    assert!(deployment.apply(&back, &paused).await.is_empty());
    // Left frozen: restoring the deployment thaws it.
    deployment.restore().await.expect("restored");
    assert!(answers(s[2].clone()).await, "standby 2 runs again");
}

/// The primary's own crash and pause, steered through the deployment as
/// the runner does: every link to it holds its bytes (its own region's
/// clients' too), a crash also ends every session to it, and writes go
/// through again once the window ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_goes_down_and_pauses_through_its_links() {
    use quorate_cockroach::deployment::{PgDeployment, PgServers};
    use quorate_cockroach::drill::{Deployment, Fault, FaultState, Window};
    let Some(_) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    let servers = PgServers::from_env().expect("the servers' environment");
    // Made from the links alone: scripts/pg is not needed for them.
    let windows: Vec<Window> = [Fault::Crash("eu-west"), Fault::Pause("eu-west")]
        .into_iter()
        .map(|fault| Window {
            from: Duration::ZERO,
            until: Duration::from_secs(1),
            fault,
        })
        .collect();
    let mut unscripted = servers.clone();
    unscripted.script = None;
    let bare = PgDeployment::start(&unscripted, &["eu-west", "us-east", "ap-south"])
        .await
        .expect("a fault layer without the script");
    assert!(bare.unsupported(&windows).is_empty());
    bare.restore().await.expect("put back");
    drop(bare);
    let base = PgDeployment::start(&servers, &["eu-west", "us-east", "ap-south"])
        .await
        .expect("the fault layer starts");
    assert!(base.unsupported(&windows).is_empty());
    let table = common::key("drill_primary").replace('-', "_");
    let deployment = base.with_table(&table).await.expect("a fresh table");
    let client = |region: &str| {
        let config = ClientConfig {
            write_deadline: Duration::from_millis(1500),
            ..ClientConfig::default()
        };
        Client::new(deployment.at(region).unwrap(), config).unwrap()
    };
    // The standbys stream from the primary, straight or through the
    // fault layer: how many senders the primary has.
    let streams = || async {
        let (c, conn) = tokio_postgres::connect(&servers.primary, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        let n: i64 = c
            .query_one("SELECT count(*) FROM pg_stat_replication", &[])
            .await
            .unwrap()
            .get(0);
        drop(c);
        let _ = task.await;
        n
    };
    let (eu, us) = (client("eu-west"), client("us-east"));
    let writes = |c: &Client<PgBackend>, n: u32| {
        let c = c.clone();
        async move {
            let s = c.session();
            c.write(
                &s,
                &format!("k{n}"),
                "v".into(),
                Precondition::Any,
                &WriteOptions::default(),
            )
            .await
            .is_ok()
        }
    };
    assert!(writes(&eu, 1).await && writes(&us, 2).await, "up");
    let clear = FaultState::default();
    for (n, fault) in ["crashed", "paused"].into_iter().enumerate() {
        let mut down = FaultState::default();
        match fault {
            "crashed" => down.crashed.insert("eu-west".to_owned()),
            _ => down.paused.insert("eu-west".to_owned()),
        };
        let before = streams().await;
        assert_eq!(before, 2, "both standbys stream");
        assert!(deployment.apply(&clear, &down).await.is_empty());
        // A crash ends every session to the primary, replication's too;
        // a pause only holds them.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let during = streams().await;
        match fault {
            "crashed" => assert_eq!(during, 0, "the crash ended the replication streams"),
            _ => assert_eq!(during, 2, "a pause holds the streams"),
        }
        let n = 10 * (n as u32 + 1);
        assert!(
            !writes(&us, n).await,
            "{fault}: nothing reaches the primary"
        );
        assert!(
            !writes(&eu, n + 1).await,
            "{fault}: not even from its own region"
        );
        assert!(deployment.apply(&down, &clear).await.is_empty());
        let back = async {
            for attempt in 0..20 {
                if writes(&eu, n + 2 + attempt).await && writes(&us, n + 3 + attempt).await {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            false
        };
        assert!(back.await, "{fault}: writes go through once it is back");
        // The standbys stream again before the next fault.
        let mut streaming = 0;
        for _ in 0..100 {
            streaming = streams().await;
            if streaming == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(streaming, 2, "{fault}: the standbys stream again");
    }
    base.restore().await.expect("the servers are put back");
}

/// The primary's clock is skewed while it runs, as a standby's is: every
/// server runs under libfaketime from the deployment's start, so a skew
/// window changes the primary's wall clock (`clock_timestamp()`) without a
/// restart, the deployment reports the offset, and the restore puts the
/// primary back on the true clock with both standbys streaming from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primarys_clock_is_skewed_while_it_runs_and_put_back() {
    use quorate_cockroach::deployment::{PgDeployment, PgServers};
    use quorate_cockroach::drill::{Deployment, Fault, FaultState, Window};
    let Some(_) = common::servers() else { return };
    if !faketime_present() {
        eprintln!("skipping: libfaketime is not installed (Debian package faketime)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let servers = PgServers::from_env().expect("the servers' environment");
    let primary = servers.primary.clone();
    // The primary's wall clock minus this machine's, in milliseconds, and
    // how many standbys stream from it.
    let ask = || async {
        let (c, conn) = tokio_postgres::connect(&primary, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        let row = c
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8, \
                 (SELECT count(*) FROM pg_stat_replication), \
                 pg_postmaster_start_time()::text",
                &[],
            )
            .await
            .unwrap();
        let local = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            * 1000.0;
        drop(c);
        let _ = task.await;
        let (server, streams, started): (f64, i64, String) = (row.get(0), row.get(1), row.get(2));
        ((server - local).round() as i64, streams, started)
    };
    let deployment = PgDeployment::start(&servers, &["eu-west", "us-east", "ap-south"])
        .await
        .expect("the fault layer starts");
    let skew = Window {
        from: Duration::ZERO,
        until: Duration::from_secs(1),
        fault: Fault::Skew("eu-west", -1500),
    };
    assert!(deployment.unsupported(&[skew]).is_empty());
    let healthy = FaultState::default();
    let mut behind = FaultState::default();
    behind.skew_ms.insert("eu-west".to_owned(), -1500);
    let (offset, _, started) = ask().await;
    assert!(
        offset.abs() < 100,
        "the primary starts on true time: {offset} ms"
    );
    assert!(deployment.apply(&healthy, &behind).await.is_empty());
    let (offset, streams, still) = ask().await;
    assert!((-1600..=-1400).contains(&offset), "{offset} ms");
    assert_eq!((streams, still), (2, started), "a skew restarts nothing");
    assert_eq!(deployment.clock_offset("eu-west"), Some(-1_500_000_000));
    assert!(deployment.apply(&behind, &healthy).await.is_empty());
    let (offset, _, _) = ask().await;
    assert!(offset.abs() < 100, "{offset} ms");
    deployment.restore().await.expect("put back");
    let dir = std::env::var("QUORATE_PG_DIR").unwrap_or_else(|_| "/tmp/quorate-pg".to_owned());
    assert!(
        !std::path::Path::new(&dir).join("clock0").exists(),
        "the primary runs on the true clock again"
    );
    // The restore waits until the standbys stream again.
    let (offset, streams, _) = ask().await;
    assert!(offset.abs() < 100, "{offset} ms");
    assert_eq!(streams, 2, "both standbys stream from the primary again");
}
