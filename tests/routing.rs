//! Routing, hedging, the clock guard and home-region failover on the
//! simulator: isolation, skew, heal and failback.

use std::time::Duration;

use quorate::chaos::Chaos;
use quorate::sim::{Replication, Sim, SimConfig};
use quorate::{
    Circuit, Client, ClientConfig, Clock, Error, Hedge, Precondition, ReadPolicy, Region,
    ReplicaRole, Staleness, WriteOptions,
};
use tokio::time::{sleep, Instant};

fn region(name: &str) -> Region {
    Region::new(name).unwrap()
}

/// A database that trusts every clock: what these tests exercise is the
/// client's own routing and clock guard (CockroachDB would stop a node
/// beyond 0.8 × `max_offset` itself).
fn sim(replication: Replication) -> Sim {
    let mut c = SimConfig::new(["eu", "us", "ap"]).unwrap();
    c.replication = replication;
    c.jitter = 0.0;
    c.enforce_max_offset = false;
    Sim::new(c).unwrap()
}

async fn seed_key(sim: &Sim, key: &str) {
    let c = Client::new(sim.at("eu").unwrap(), ClientConfig::default()).unwrap();
    c.write(
        &c.session(),
        key,
        "v".into(),
        Precondition::Any,
        &WriteOptions::default(),
    )
    .await
    .unwrap();
    sleep(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn isolation_reroutes_and_heal_fails_back() {
    let sim = sim(Replication::Consensus);
    seed_key(&sim, "k").await;
    let (backend, control) = Chaos::new(sim.at("us").unwrap());
    control.set_isolation_timeout(Duration::from_millis(300));
    let client = Client::new(
        backend,
        ClientConfig {
            region_ejection: Duration::from_millis(500),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let session = client.session();
    let bounded = ReadPolicy::BoundedStaleness(Staleness::from_millis(10_000).unwrap());
    assert_eq!(
        client
            .read(&session, "k", bounded)
            .await
            .unwrap()
            .freshness
            .region,
        region("us")
    );

    control.isolate(&region("us"));
    let r = client.read(&session, "k", bounded).await.unwrap();
    assert_ne!(r.freshness.region, region("us"));
    let us = &client.health()[1];
    assert_eq!(us.region, region("us"));
    assert_eq!(us.circuit, Circuit::Open);
    let started = Instant::now();
    client.read(&session, "k", bounded).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "no time lost on the open circuit"
    );

    // While still isolated, the trial after the open period fails and reopens.
    sleep(Duration::from_millis(600)).await;
    client.read(&session, "k", bounded).await.unwrap();
    assert_eq!(client.health()[1].circuit, Circuit::Open);

    control.heal(&region("us"));
    sleep(Duration::from_millis(600)).await;
    let back = client.read(&session, "k", bounded).await.unwrap();
    assert_eq!(
        back.freshness.region,
        region("us"),
        "failback once the trial succeeds"
    );
    assert_eq!(client.health()[1].circuit, Circuit::Closed);
}

#[tokio::test(start_paused = true)]
async fn probes_close_a_circuit_without_risking_a_request() {
    let sim = sim(Replication::Consensus);
    let (backend, control) = Chaos::new(sim.at("us").unwrap());
    control.set_isolation_timeout(Duration::from_millis(100));
    let client = Client::new(backend, ClientConfig::default()).unwrap();
    control.isolate(&region("ap"));
    client.refresh_health().await;
    assert_eq!(
        client.health()[2].circuit,
        Circuit::Open,
        "a failed probe opens the circuit"
    );
    control.heal(&region("ap"));
    client.refresh_health().await;
    let ap = &client.health()[2];
    assert_eq!(ap.circuit, Circuit::Closed);
    assert!(ap.latency.is_some() && ap.replica_lag.is_some());
}

#[tokio::test(start_paused = true)]
async fn hedged_reads_beat_a_slow_region() {
    let sim = sim(Replication::Consensus);
    seed_key(&sim, "k").await;
    let slow = region("us");
    let bounded = ReadPolicy::BoundedStaleness(Staleness::from_millis(10_000).unwrap());
    let mut elapsed = Vec::new();
    for hedge in [None, Some(Hedge::default())] {
        let (backend, control) = Chaos::new(sim.at("us").unwrap());
        let client = Client::new(
            backend,
            ClientConfig {
                hedge: hedge.clone(),
                // Isolate the hedge's effect from adaptive attempt timeouts.
                adaptive_timeouts: false,
                ..ClientConfig::default()
            },
        )
        .unwrap();
        let session = client.session();
        // Learn the usual latency first.
        for _ in 0..20 {
            client.read(&session, "k", bounded).await.unwrap();
        }
        control.set_latency(&slow, Duration::from_millis(400));
        let started = Instant::now();
        let r = client.read(&session, "k", bounded).await.unwrap();
        elapsed.push(started.elapsed());
        if hedge.is_some() {
            assert_ne!(r.freshness.region, slow, "the hedge answered first");
        } else {
            assert_eq!(r.freshness.region, slow);
        }
    }
    assert!(elapsed[0] >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed[1] < Duration::from_millis(100), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_hedge_never_returns_a_read_that_misses_its_policy() {
    let sim = sim(Replication::Consensus);
    sim.set_replication_lag("ap", Duration::from_secs(60))
        .unwrap();
    let (backend, control) = Chaos::new(sim.at("us").unwrap());
    let client = Client::new(
        backend,
        ClientConfig {
            hedge: Some(Hedge {
                min_delay: Duration::from_millis(1),
                ..Hedge::default()
            }),
            ..ClientConfig::default()
        },
    )
    .unwrap();
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
    control.set_latency(&region("us"), Duration::from_millis(300));
    for _ in 0..5 {
        let r = client
            .read(&session, "k", ReadPolicy::Session)
            .await
            .unwrap();
        assert_eq!(r.version(), Some(c.version), "served by {:?}", r.freshness);
    }
}

#[tokio::test(start_paused = true)]
async fn the_clock_guard_excludes_a_skewed_region_and_readmits_it() {
    let sim = sim(Replication::Consensus);
    let client = Client::new(
        sim.at("ap").unwrap(),
        ClientConfig {
            clock: std::sync::Arc::new(sim.clock("ap").unwrap()),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    client.refresh_health().await;
    assert!(client.health().iter().all(|h| !h.clock_excluded));

    sim.set_skew("ap", 600_000_000).unwrap();
    client.refresh_health().await;
    let ap = client
        .health()
        .into_iter()
        .find(|h| h.region == region("ap"))
        .unwrap();
    assert!(ap.clock_excluded, "{ap:?}");
    // Smoothed: one probe after the step already moves the estimate past the limit.
    assert!(ap.clock_deviation.unwrap() > Duration::from_millis(250));
    assert!(client.clock_excluded(&region("ap")));

    // A write from ap-south takes its timestamp from another gateway's clock.
    let eu_clock = sim.clock("eu").unwrap();
    let c = client
        .write(
            &client.session(),
            "k",
            "v".into(),
            Precondition::Any,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    assert!(
        c.point.wall <= eu_clock.now_nanos(),
        "the commit timestamp came from the skewed clock"
    );
    // Strong reads do not use it either; session reads from its replica are fine.
    let r = client
        .read(&client.session(), "k", ReadPolicy::Strong)
        .await
        .unwrap();
    assert_eq!(r.freshness.role, ReplicaRole::Leader);

    sim.set_skew("ap", 0).unwrap();
    for _ in 0..8 {
        client.refresh_health().await;
        sleep(Duration::from_millis(250)).await;
    }
    assert!(
        !client.clock_excluded(&region("ap")),
        "readmitted once its clock agrees again"
    );
}

#[tokio::test(start_paused = true)]
async fn the_guard_refuses_rather_than_falls_back_to_a_skewed_gateway() {
    let sim = sim(Replication::Consensus);
    let (backend, control) = Chaos::new(sim.at("ap").unwrap());
    control.set_isolation_timeout(Duration::from_millis(100));
    let client = Client::new(
        backend,
        ClientConfig {
            clock: std::sync::Arc::new(sim.clock("ap").unwrap()),
            read_deadline: Duration::from_millis(800),
            write_deadline: Duration::from_millis(800),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    sim.set_skew("ap", -1_500_000_000).unwrap();
    client.refresh_health().await;
    assert!(client.clock_excluded(&region("ap")));
    control.isolate(&region("eu"));
    control.isolate(&region("us"));
    let err = client
        .read(&client.session(), "k", ReadPolicy::Strong)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::DeadlineExceeded { .. } | Error::RetriesExhausted { .. }
        ),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn home_region_writes_fail_over_only_when_allowed_and_fail_back() {
    let sim = sim(Replication::MultiWriter);
    for failover in [None, Some(Duration::from_millis(500))] {
        let (backend, control) = Chaos::new(sim.at("us").unwrap());
        control.set_isolation_timeout(Duration::from_millis(200));
        let client = Client::new(
            backend,
            ClientConfig {
                home_failover: failover,
                region_ejection: Duration::from_millis(300),
                write_deadline: Duration::from_millis(1500),
                ..ClientConfig::default()
            },
        )
        .unwrap();
        let s = client.session();
        let options = WriteOptions::default();
        let write = || client.write(&s, "k", "v".into(), Precondition::Any, &options);
        assert_eq!(write().await.unwrap().region, region("eu"), "home affinity");
        control.isolate(&region("eu"));
        let during = write().await;
        match failover {
            None => assert!(during.is_err(), "no failover by default: {during:?}"),
            Some(_) => {
                sleep(Duration::from_millis(600)).await;
                let moved = write().await.unwrap();
                assert_ne!(moved.region, region("eu"), "failed over");
            }
        }
        control.heal(&region("eu"));
        sleep(Duration::from_millis(400)).await;
        client.refresh_health().await;
        assert_eq!(
            write().await.unwrap().region,
            region("eu"),
            "failback to the home region"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn bounded_reads_skip_replicas_measured_beyond_their_bound() {
    let sim = sim(Replication::Consensus);
    seed_key(&sim, "k").await;
    sim.set_replication_lag("us", Duration::from_secs(20))
        .unwrap();
    // The client's clock is its region's: the simulator's time is virtual,
    // and a bounded read counts this process's clock error.
    let client = Client::new(
        sim.at("us").unwrap(),
        ClientConfig {
            clock: std::sync::Arc::new(sim.clock("us").unwrap()),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    // Let the lag show in the replica's closed timestamp, then probe it.
    sleep(Duration::from_secs(2)).await;
    client.refresh_health().await;
    let us = client
        .health()
        .into_iter()
        .find(|h| h.region == region("us"))
        .unwrap();
    assert!(us.replica_lag.unwrap() > Duration::from_secs(1), "{us:?}");
    let bounded = ReadPolicy::BoundedStaleness(Staleness::from_millis(1_000).unwrap());
    let r = client.read(&client.session(), "k", bounded).await.unwrap();
    assert_ne!(
        r.freshness.region,
        region("us"),
        "went straight to a replica within the bound"
    );
    assert_eq!(
        r.freshness.role,
        ReplicaRole::Follower,
        "no escalation needed"
    );
}

#[tokio::test(start_paused = true)]
async fn the_chaos_wrapper_skews_what_probes_report() {
    let sim = sim(Replication::Consensus);
    let (backend, control) = Chaos::new(sim.at("eu").unwrap());
    let client = Client::new(backend, ClientConfig::default()).unwrap();
    control.set_clock_skew(&region("us"), 900_000_000);
    client.refresh_health().await;
    assert!(client.clock_excluded(&region("us")));
    assert!(!client.clock_excluded(&region("eu")));
    control.set_clock_skew(&region("us"), 0);
    for _ in 0..8 {
        client.refresh_health().await;
        sleep(Duration::from_millis(250)).await;
    }
    assert!(
        !client.clock_excluded(&region("us")),
        "readmitted after the skew is gone"
    );
}

/// Latency that grows past the adaptive timeout on the commit path (the
/// only quorum left is across a slow link) makes writes slower, not
/// ambiguous: a timed-out write attempt doubles the next timeout (Karn's
/// backoff) and is resolved in the same region, and the leaseholder, which
/// still answers everything, is not ejected for it.
#[tokio::test(start_paused = true)]
async fn a_slower_commit_path_slows_writes_without_ejecting_the_leader() {
    let sim = sim(Replication::Consensus);
    let client = Client::new(sim.at("eu").unwrap(), ClientConfig::default()).unwrap();
    let session = client.session();
    let write = |i: usize| {
        let (client, session) = (&client, &session);
        async move {
            let started = Instant::now();
            let r = client
                .write(
                    session,
                    "k",
                    format!("{i}").into(),
                    Precondition::Any,
                    &WriteOptions::default(),
                )
                .await;
            (r, started.elapsed())
        }
    };
    for i in 0..5 {
        write(i).await.0.unwrap();
    }
    sim.set_link_latency("eu", "us", Duration::from_millis(150))
        .unwrap();
    sim.isolate("ap").unwrap();
    let mut took = Vec::new();
    for i in 5..12 {
        let (r, elapsed) = write(i).await;
        r.unwrap_or_else(|e| panic!("write {i}: {}", e.report()));
        took.push(elapsed);
        assert_eq!(
            client.health()[0].circuit,
            Circuit::Closed,
            "the leaseholder answers: its circuit stays closed"
        );
    }
    // Once the timeout has backed off, a write takes one slow commit.
    for t in &took[2..] {
        assert!(*t < Duration::from_millis(600), "{took:?}");
    }
}
