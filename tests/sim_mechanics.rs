//! The simulator's anomalies come from its mechanics: these tests drive the
//! backend directly (no client checks) and observe them.

use std::time::Duration;

use quorate::sim::{Replication, Sim, SimConfig};
use quorate::{
    Backend, Bytes, Committed, Error, IdempotencyKey, Precondition, Read, ReadPlan, ReadPolicy,
    Region, ReplicaRole, SessionFloor, WriteRequest,
};
use tokio::time::{sleep, Instant};

fn config(replication: Replication) -> SimConfig {
    let mut c = SimConfig::new(["eu", "us", "ap"]).unwrap();
    c.replication = replication;
    c.jitter = 0.0;
    c
}

async fn write(
    b: &Sim,
    region: &str,
    key: &str,
    value: &str,
    p: Precondition,
) -> Result<Committed, Error> {
    let region = Region::new(region).unwrap();
    let value = Bytes::from(value.to_owned());
    let idem = IdempotencyKey::generate();
    b.write(&WriteRequest {
        key,
        mutation: quorate::Mutation::Put(&value),
        precondition: p,
        idempotency_key: Some(&idem),
        region: &region,
        deadline: Instant::now() + Duration::from_secs(10),
    })
    .await
}

/// A system with "k" at its first version, written through `through`, and
/// a handle whose clients are in `at`.
async fn with_k(replication: Replication, at: &str, through: &str) -> (Sim, Sim) {
    let sim = Sim::new(config(replication)).unwrap();
    let handle = sim.at(at).unwrap();
    write(&handle, through, "k", "0", Precondition::IfAbsent)
        .await
        .unwrap();
    (sim, handle)
}

async fn read(b: &Sim, region: &str, key: &str, role: ReplicaRole) -> Result<Read<Bytes>, Error> {
    let region = Region::new(region).unwrap();
    b.read(&ReadPlan {
        key,
        region: &region,
        role,
        policy: ReadPolicy::Strong,
        floor: SessionFloor::default(),
        deadline: Instant::now() + Duration::from_secs(10),
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn followers_lag_and_say_so() {
    let sim = Sim::new(config(Replication::Consensus)).unwrap();
    let us = sim.at("us").unwrap();
    let c = write(&us, "us", "k", "1", Precondition::IfAbsent)
        .await
        .unwrap();
    let early = read(&us, "us", "k", ReplicaRole::Follower).await.unwrap();
    assert_eq!(
        early.version(),
        None,
        "the follower has not applied the write yet"
    );
    assert!(
        early.freshness.point.unwrap() < c.point,
        "its closed point says so"
    );
    sleep(Duration::from_millis(500)).await;
    let late = read(&us, "us", "k", ReplicaRole::Follower).await.unwrap();
    assert_eq!(late.version(), Some(c.version));
    assert!(late.freshness.point.unwrap() >= c.point);
    let strong = read(&us, "us", "k", ReplicaRole::Leader).await.unwrap();
    assert_eq!(
        strong.freshness.region.as_str(),
        "eu",
        "served by the leaseholder"
    );
}

#[tokio::test(start_paused = true)]
async fn clock_skew_within_max_offset_is_uncertain_not_stale() {
    let sim = Sim::new(config(Replication::Consensus)).unwrap();
    sim.set_skew("ap", 300_000_000).unwrap();
    let ap = sim.at("ap").unwrap();
    let us = sim.at("us").unwrap();
    write(&ap, "ap", "k", "1", Precondition::IfAbsent)
        .await
        .unwrap();
    // The read's timestamp comes from the gateway in "us", whose clock is
    // correct and which has not heard from "ap" yet.
    match read(&us, "us", "k", ReplicaRole::Leader).await {
        Err(e @ Error::Uncertainty { .. }) => assert!(e.is_retryable()),
        other => panic!("expected an uncertainty error, got {other:?}"),
    }
    // The leaseholder's answer carried its clock: the next read is above the write.
    assert!(read(&us, "us", "k", ReplicaRole::Leader)
        .await
        .unwrap()
        .version()
        .is_some());
}

#[tokio::test(start_paused = true)]
async fn clock_skew_beyond_max_offset_gives_stale_strong_reads() {
    // In a database that trusts every clock (CockroachDB would stop the
    // skewed node: see a_node_whose_clock_strays_beyond_max_offset_stops).
    let mut c = config(Replication::Consensus);
    c.enforce_max_offset = false;
    let sim = Sim::new(c).unwrap();
    sim.set_skew("ap", 600_000_000).unwrap();
    let ap = sim.at("ap").unwrap();
    let us = sim.at("us").unwrap();
    write(&ap, "ap", "k", "1", Precondition::IfAbsent)
        .await
        .unwrap();
    // The write completed; a strong read through a correct clock misses it.
    let r = read(&us, "us", "k", ReplicaRole::Leader).await.unwrap();
    assert_eq!(r.freshness.role, ReplicaRole::Leader);
    assert_eq!(
        r.version(),
        None,
        "stale strong read: the value's timestamp is beyond the uncertainty window"
    );
}

#[tokio::test(start_paused = true)]
async fn quorum_loss_stalls_writes_and_the_lease_moves() {
    let sim = Sim::new(config(Replication::Consensus)).unwrap();
    let eu = sim.at("eu").unwrap();
    write(&eu, "eu", "k", "1", Precondition::IfAbsent)
        .await
        .unwrap();
    sim.isolate("eu").unwrap();
    let err = write(&eu, "eu", "k", "2", Precondition::Any)
        .await
        .unwrap_err();
    assert!(
        err.is_ambiguous(),
        "a proposal without quorum is never answered: {err}"
    );
    sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sim.leaseholder().as_str(),
        "us",
        "the lease moved to a region with a quorum"
    );
    let us = sim.at("us").unwrap();
    let c = write(&us, "us", "k", "3", Precondition::Any).await.unwrap();
    assert_eq!(c.version.0, 2, "the stalled proposal never committed");
    sim.heal();
    sleep(Duration::from_millis(10)).await;
    assert_eq!(
        sim.leaseholder().as_str(),
        "eu",
        "the home region takes the lease back"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deposed_leaseholder_with_a_slow_clock_serves_stale_reads() {
    // In a database that trusts every clock (CockroachDB would stop the
    // skewed node: see a_node_whose_clock_strays_beyond_max_offset_stops).
    let mut c = config(Replication::Consensus);
    c.enforce_max_offset = false;
    let sim = Sim::new(c).unwrap();
    let eu = sim.at("eu").unwrap();
    write(&eu, "eu", "k", "1", Precondition::IfAbsent)
        .await
        .unwrap();
    // The successor's clock runs 1.5 s ahead: it takes over while the old
    // holder still believes in its lease.
    sim.set_skew("us", 1_500_000_000).unwrap();
    sim.cut("eu", "us").unwrap();
    sim.cut("eu", "ap").unwrap();
    sleep(Duration::from_millis(1200)).await;
    let us = sim.at("us").unwrap();
    assert_eq!(sim.leaseholder().as_str(), "us");
    let c = write(&us, "us", "k", "2", Precondition::Any).await.unwrap();
    assert_eq!(c.version.0, 2);
    let stale = read(&eu, "eu", "k", ReplicaRole::Leader).await.unwrap();
    assert_eq!(stale.freshness.region.as_str(), "eu");
    assert_eq!(
        stale.version().map(|v| v.0),
        Some(1),
        "split brain: the old holder serves version 1"
    );
}

#[tokio::test(start_paused = true)]
async fn multi_writer_partition_accepts_conflicting_writes_and_last_writer_wins() {
    let sim = Sim::new(config(Replication::MultiWriter)).unwrap();
    let eu = sim.at("eu").unwrap();
    let us = sim.at("us").unwrap();
    let v1 = write(&eu, "eu", "order", "pending", Precondition::IfAbsent)
        .await
        .unwrap();
    sleep(Duration::from_secs(1)).await;
    sim.cut("eu", "us").unwrap();
    let a = write(
        &eu,
        "eu",
        "order",
        "shipped-by-eu",
        Precondition::IfVersion(v1.version),
    )
    .await
    .unwrap();
    let b = write(
        &us,
        "us",
        "order",
        "shipped-by-us",
        Precondition::IfVersion(v1.version),
    )
    .await
    .unwrap();
    assert_eq!(
        a.version, b.version,
        "both regions accepted the same transition"
    );
    sim.heal();
    sleep(Duration::from_secs(1)).await;
    let in_eu = read(&eu, "eu", "order", ReplicaRole::Leader).await.unwrap();
    let in_us = read(&us, "us", "order", ReplicaRole::Leader).await.unwrap();
    assert_eq!(
        in_eu.value.as_ref().unwrap().value,
        in_us.value.as_ref().unwrap().value,
        "converged"
    );
    assert_eq!(
        &in_eu.value.unwrap().value[..],
        b"shipped-by-us",
        "the later timestamp won"
    );
}

/// A delete replicates as a tombstone and takes part in last-writer-wins
/// like a write: a delete in one region and a later write in the other
/// settle on the write, an earlier write and a later delete on the delete.
#[tokio::test(start_paused = true)]
async fn multi_writer_deletes_are_tombstones_that_last_writer_wins() {
    for delete_last in [false, true] {
        let sim = Sim::new(config(Replication::MultiWriter)).unwrap();
        let eu = sim.at("eu").unwrap();
        let us = sim.at("us").unwrap();
        let v1 = write(&eu, "eu", "order", "pending", Precondition::IfAbsent)
            .await
            .unwrap();
        sleep(Duration::from_secs(1)).await;
        sim.cut("eu", "us").unwrap();
        let region = Region::new(if delete_last { "eu" } else { "us" }).unwrap();
        let delete = || async {
            let idem = IdempotencyKey::generate();
            let b = if delete_last { &eu } else { &us };
            b.write(&WriteRequest {
                key: "order",
                mutation: quorate::Mutation::Delete,
                precondition: Precondition::IfVersion(v1.version),
                idempotency_key: Some(&idem),
                region: &region,
                deadline: Instant::now() + Duration::from_secs(10),
            })
            .await
            .unwrap()
        };
        let writer = if delete_last {
            ("us", &us)
        } else {
            ("eu", &eu)
        };
        let (first, second) = if delete_last {
            let w = write(
                writer.1,
                writer.0,
                "order",
                "shipped",
                Precondition::IfVersion(v1.version),
            )
            .await
            .unwrap();
            sleep(Duration::from_millis(10)).await;
            (w, delete().await)
        } else {
            let d = delete().await;
            sleep(Duration::from_millis(10)).await;
            let w = write(
                writer.1,
                writer.0,
                "order",
                "shipped",
                Precondition::IfVersion(v1.version),
            )
            .await
            .unwrap();
            (d, w)
        };
        assert_eq!(first.version, second.version, "both accepted on version 1");
        sim.heal();
        sleep(Duration::from_secs(1)).await;
        for (name, b) in [("eu", &eu), ("us", &us)] {
            let r = read(b, name, "order", ReplicaRole::Leader).await.unwrap();
            if delete_last {
                assert_eq!(
                    (r.version(), r.deleted),
                    (None, Some(second.version)),
                    "{name}"
                );
            } else {
                assert_eq!(
                    r.value.map(|v| v.value),
                    Some(Bytes::from_static(b"shipped")),
                    "{name}: the later write won over the delete"
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn idempotent_writes_return_their_first_outcome() {
    let sim = Sim::new(config(Replication::Consensus)).unwrap();
    let b = sim.at("us").unwrap();
    let region = Region::new("us").unwrap();
    let idem = IdempotencyKey::new("transfer-1").unwrap();
    let value = Bytes::from_static(b"x");
    let req = WriteRequest {
        key: "k",
        mutation: quorate::Mutation::Put(&value),
        precondition: Precondition::IfAbsent,
        idempotency_key: Some(&idem),
        region: &region,
        deadline: Instant::now() + Duration::from_secs(5),
    };
    let first = b.write(&req).await.unwrap();
    let again = b.write(&req).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(b.lookup(&region, "k", &idem).await.unwrap(), Some(first));
    let unknown = IdempotencyKey::new("transfer-2").unwrap();
    assert_eq!(b.lookup(&region, "k", &unknown).await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn runs_are_deterministic_by_seed() {
    async fn trace(seed: u64) -> Vec<(u64, u64)> {
        let mut c = config(Replication::Consensus);
        c.seed = seed;
        c.jitter = 0.5;
        let sim = Sim::new(c).unwrap();
        let us = sim.at("us").unwrap();
        let start = Instant::now();
        let mut out = Vec::new();
        for i in 0..20 {
            let c = write(&us, "us", "k", &i.to_string(), Precondition::Any)
                .await
                .unwrap();
            out.push((c.point.wall, (Instant::now() - start).as_nanos() as u64));
        }
        out
    }
    assert_eq!(trace(7).await, trace(7).await);
    assert_ne!(trace(7).await, trace(8).await);
}

#[tokio::test(start_paused = true)]
async fn probes_report_skew_and_lag() {
    let sim = Sim::new(config(Replication::Consensus)).unwrap();
    sim.set_skew("ap", 250_000_000).unwrap();
    let eu = sim.at("eu").unwrap();
    let local = eu.probe(&Region::new("eu").unwrap()).await.unwrap();
    let far = eu.probe(&Region::new("ap").unwrap()).await.unwrap();
    let diff = far.server_time_nanos as i128 - local.server_time_nanos as i128;
    assert!(
        (240_000_000..=300_000_000).contains(&diff),
        "skew visible in probes: {diff}"
    );
    assert!(far.replica_lag.unwrap() > Duration::ZERO);
}

#[test]
fn bad_configuration_is_rejected() {
    assert!(SimConfig::new(["eu", "eu"]).map(Sim::new).unwrap().is_err());
    assert!(SimConfig::new(Vec::<&str>::new()).is_err());
    assert!(SimConfig::new(["EU"]).is_err());
    let mut c = SimConfig::new(["eu"]).unwrap();
    c.jitter = f64::NAN;
    assert!(Sim::new(c).is_err());
}

/// When the home region takes its lease back after an isolation, the new
/// lease starts above what the old holder served, as a floor for writes,
/// not by moving the home's clock to the old lease's expiry: commits right
/// after stay at the present.
#[tokio::test(start_paused = true)]
async fn a_lease_returned_after_isolation_does_not_push_commits_into_the_future() {
    let (sim, eu) = with_k(Replication::Consensus, "eu", "eu").await;
    sim.isolate("eu").unwrap();
    sleep(Duration::from_secs(4)).await;
    assert_ne!(sim.leaseholder().as_str(), "eu", "the lease moved away");
    sim.heal();
    sleep(Duration::from_millis(100)).await;
    assert_eq!(sim.leaseholder().as_str(), "eu", "and came back");
    let c = write(&eu, "eu", "k", "1", Precondition::Any).await.unwrap();
    let now = quorate::Clock::now_nanos(&sim.clock("eu").unwrap());
    assert!(
        c.point.wall <= now + 100_000_000,
        "committed {} ms in the future",
        (c.point.wall - now) / 1_000_000
    );
}

/// A one-way cut: a request arrives and applies, its answer is lost.
#[tokio::test(start_paused = true)]
async fn a_one_way_cut_loses_answers_not_requests() {
    let sim = Sim::new(config(Replication::Consensus)).unwrap();
    let us = sim.at("us").unwrap();
    sim.cut_one_way("eu", "us").unwrap();
    assert!(sim.link_cut("eu", "us").unwrap());
    assert!(!sim.link_cut("us", "eu").unwrap());
    let lost = write(&us, "us", "k", "1", Precondition::IfAbsent).await;
    assert!(lost.as_ref().is_err_and(Error::is_ambiguous), "{lost:?}");
    sim.heal_one_way("eu", "us").unwrap();
    let r = read(&us, "eu", "k", ReplicaRole::Leader).await.unwrap();
    assert_eq!(r.version(), Some(quorate::Version(1)), "the write applied");
}

/// One log: an old leaseholder's entry held behind a cut reaches a replica
/// after the new leaseholder's later entries, and takes its place in
/// version order instead of becoming the replica's latest.
#[tokio::test(start_paused = true)]
async fn a_late_entry_of_an_old_leaseholder_is_applied_in_log_order() {
    let sim = Sim::new(config(Replication::Consensus)).unwrap();
    let eu = sim.at("eu").unwrap();
    write(&eu, "eu", "k", "1", Precondition::IfAbsent)
        .await
        .unwrap();
    sleep(Duration::from_millis(500)).await;
    // Replication from eu to us stops; eu commits v2 with ap's help.
    sim.cut_one_way("eu", "us").unwrap();
    write(&eu, "eu", "k", "2", Precondition::Any).await.unwrap();
    // eu is isolated; the lease moves and v3 commits under the new holder.
    sim.isolate("eu").unwrap();
    sleep(Duration::from_secs(4)).await;
    let holder = sim.leaseholder();
    assert_ne!(holder.as_str(), "eu");
    let at_holder = sim.at(holder.as_str()).unwrap();
    let v3 = write(&at_holder, holder.as_str(), "k", "3", Precondition::Any)
        .await
        .unwrap();
    assert_eq!(v3.version.0, 3);
    // Everything heals; eu's v2 reaches us after v3 did.
    sim.heal();
    sleep(Duration::from_secs(2)).await;
    let us = sim.at("us").unwrap();
    let r = read(&us, "us", "k", ReplicaRole::Follower).await.unwrap();
    assert_eq!(r.version(), Some(v3.version), "the replica's latest is v3");
}

/// A replica's closed point never covers an entry it has not applied, even
/// when the entry comes from a leaseholder that has since lost its lease.
#[tokio::test(start_paused = true)]
async fn a_closed_point_stops_below_entries_still_on_their_way() {
    let sim = Sim::new(config(Replication::Consensus)).unwrap();
    let eu = sim.at("eu").unwrap();
    sim.cut_one_way("eu", "us").unwrap();
    let stuck = write(&eu, "eu", "k", "1", Precondition::IfAbsent)
        .await
        .unwrap();
    sim.isolate("eu").unwrap();
    sleep(Duration::from_secs(6)).await;
    assert_ne!(sim.leaseholder().as_str(), "eu", "the lease moved");
    let us = sim.at("us").unwrap();
    let r = read(&us, "us", "k", ReplicaRole::Follower).await.unwrap();
    assert_eq!(r.version(), None, "v1 is still on its way to us");
    let closed = r.freshness.point.unwrap();
    assert!(
        closed < stuck.point,
        "us claims completeness through {closed} past the undelivered {}",
        stuck.point
    );
}

/// CockroachDB's clock check: a node whose clock is more than 0.8 ×
/// `max_offset` from the nodes it talks to stops — it serves nothing, its
/// own region's clients included — and stays stopped while cut off; back
/// within bounds, it serves again. Off, the database trusts every clock.
#[tokio::test(start_paused = true)]
async fn a_node_whose_clock_strays_beyond_max_offset_stops() {
    for enforce in [true, false] {
        let mut c = config(Replication::Consensus);
        c.enforce_max_offset = enforce;
        let sim = Sim::new(c).unwrap();
        let ap = sim.at("ap").unwrap();
        write(&ap, "ap", "k", "0", Precondition::IfAbsent)
            .await
            .unwrap();
        sim.set_skew("ap", 600_000_000).unwrap();
        let refused = read(&ap, "ap", "k", ReplicaRole::Leader).await;
        if enforce {
            assert!(
                matches!(refused, Err(Error::RegionUnavailable { .. })),
                "{refused:?}"
            );
            // Cut off, it measures nothing and stays stopped.
            sim.isolate("ap").unwrap();
            assert!(read(&ap, "ap", "k", ReplicaRole::Follower).await.is_err());
            sim.heal();
            sim.set_skew("ap", 100_000_000).unwrap();
            assert!(
                read(&ap, "ap", "k", ReplicaRole::Leader).await.is_ok(),
                "back"
            );
        } else {
            assert!(refused.is_ok(), "{refused:?}");
        }
    }
}

/// A node stopped over its clock joins the cluster again before it serves:
/// the leaseholders answering its first requests carry their clocks, so its
/// timestamps start above what its peers wrote while it was out — even
/// when they were the ones whose clocks ran ahead.
#[tokio::test(start_paused = true)]
async fn a_restarted_node_reads_above_what_was_written_while_it_was_stopped() {
    let mut c = config(Replication::Consensus);
    c.home = Region::new("ap").unwrap();
    let sim = Sim::new(c).unwrap();
    let (eu, us) = (sim.at("eu").unwrap(), sim.at("us").unwrap());
    write(&eu, "eu", "k", "0", Precondition::IfAbsent)
        .await
        .unwrap();
    // Two clocks of three jump ahead together: the one right clock is the
    // odd one out and stops.
    sim.set_skew("us", 1_500_000_000).unwrap();
    sim.set_skew("ap", 1_500_000_000).unwrap();
    assert!(read(&eu, "eu", "k", ReplicaRole::Leader).await.is_err());
    let second = write(&us, "us", "k", "1", Precondition::Any).await.unwrap();
    // ap steps back: eu and ap agree again, eu restarts and serves.
    sim.set_skew("ap", 0).unwrap();
    let after = read(&eu, "eu", "k", ReplicaRole::Leader)
        .await
        .expect("eu serves again");
    let seen = after.value.as_ref().map(|v| v.version);
    assert_eq!(
        seen,
        Some(second.version),
        "eu read at {:?} below the write at {}",
        after.freshness.point,
        second.point
    );
}

/// A crashed node refuses its own region's clients at once; the region's
/// clients still reach the other regions' gateways.
#[tokio::test(start_paused = true)]
async fn a_crashed_node_serves_nothing_but_its_clients_reach_other_regions() {
    let (sim, us) = with_k(Replication::Consensus, "us", "eu").await;
    sim.crash("us").unwrap();
    assert!(sim.crashed("us").unwrap());
    let started = Instant::now();
    match read(&us, "us", "k", ReplicaRole::Follower).await {
        Err(Error::RegionUnavailable { reason, .. }) => assert_eq!(reason, "node down"),
        other => panic!("a crashed gateway answered: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "refused, not timed out"
    );
    let r = read(&us, "ap", "k", ReplicaRole::Leader).await.unwrap();
    assert_eq!(r.version(), Some(quorate::Version::FIRST));
    write(&us, "ap", "k", "1", Precondition::Any).await.unwrap();
}

/// A crashed leaseholder's lease runs out: writes stall until another node
/// may take the lease (expiry plus `max_offset` on its clock), then commit
/// there; after the restart the lease goes back to its preferred region.
#[tokio::test(start_paused = true)]
async fn a_crashed_leaseholder_loses_its_lease_and_takes_it_back_after_restart() {
    let (sim, us) = with_k(Replication::Consensus, "us", "us").await;
    assert_eq!(sim.leaseholder().as_str(), "eu");
    sim.crash("eu").unwrap();
    sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sim.leaseholder().as_str(),
        "eu",
        "the lease is still valid on the crashed holder's clock"
    );
    sleep(Duration::from_millis(1500)).await;
    assert_ne!(sim.leaseholder().as_str(), "eu", "another node took it");
    let c = write(&us, "us", "k", "1", Precondition::Any).await.unwrap();
    assert_ne!(c.region.as_str(), "eu");
    sim.restart("eu").unwrap();
    sleep(Duration::from_millis(100)).await;
    assert_eq!(
        sim.leaseholder().as_str(),
        "eu",
        "back to the preferred region"
    );
    let r = read(&us, "eu", "k", ReplicaRole::Leader).await.unwrap();
    assert_eq!(
        r.version(),
        Some(c.version),
        "the restarted leaseholder caught up"
    );
}

/// What a crashed leaseholder proposed without reaching a quorum is lost
/// with it: the write never commits, even after the restart.
#[tokio::test(start_paused = true)]
async fn a_proposal_pending_at_a_crashed_leaseholder_is_lost() {
    let (sim, pending) = a_write_waiting_at_a_cut_off_leaseholder().await;
    sim.crash("eu").unwrap();
    sim.heal();
    let outcome = pending.await.unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
    sleep(Duration::from_secs(4)).await;
    sim.restart("eu").unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_only_the_first_version(&sim, "the lost proposal never committed").await;
}

/// A consensus system whose leaseholder eu holds "k" at its first version,
/// cut off from both peers with a second write of "k" waiting at it for a
/// quorum.
async fn a_write_waiting_at_a_cut_off_leaseholder(
) -> (Sim, tokio::task::JoinHandle<Result<Committed, Error>>) {
    let (sim, eu) = with_k(Replication::Consensus, "eu", "eu").await;
    sim.cut("eu", "us").unwrap();
    sim.cut("eu", "ap").unwrap();
    let pending =
        tokio::spawn(async move { write(&eu, "eu", "k", "waiting", Precondition::Any).await });
    sleep(Duration::from_millis(50)).await;
    (sim, pending)
}

/// "k" read strongly through us is still at its first version.
async fn assert_only_the_first_version(sim: &Sim, why: &str) {
    let us = sim.at("us").unwrap();
    let r = read(&us, "us", "k", ReplicaRole::Leader).await.unwrap();
    assert_eq!(r.version(), Some(quorate::Version::FIRST), "{why}");
}

/// us crashes; eu, its clock 300 ms ahead, writes "k"; us restarts.
async fn restarted_after_a_fast_peer_wrote(replication: Replication) -> (Sim, Committed) {
    let sim = Sim::new(config(replication)).unwrap();
    let eu = sim.at("eu").unwrap();
    sim.crash("us").unwrap();
    sim.set_skew("eu", 300_000_000).unwrap();
    let before = write(&eu, "eu", "k", "0", Precondition::IfAbsent)
        .await
        .unwrap();
    sim.restart("us").unwrap();
    (sim, before)
}

/// A restarted CockroachDB node joins its peers' clocks before it serves:
/// a strong read through it is timestamped above what a fast-clocked peer
/// wrote while it was down (no uncertainty restart), and it catches up.
/// A global table's region has no such clock: restarted, it stamps by its
/// own clock, below the fast peer's writes.
#[tokio::test(start_paused = true)]
async fn a_restarted_node_starts_above_its_peers_clocks() {
    let (sim, before) = restarted_after_a_fast_peer_wrote(Replication::Consensus).await;
    let us = sim.at("us").unwrap();
    let r = read(&us, "us", "k", ReplicaRole::Leader)
        .await
        .expect("timestamped above the write: not uncertain");
    assert_eq!(r.version(), Some(before.version));
    sleep(Duration::from_millis(500)).await;
    let r = read(&us, "us", "k", ReplicaRole::Follower).await.unwrap();
    assert_eq!(r.version(), Some(before.version), "and it caught up");

    let (sim, before) = restarted_after_a_fast_peer_wrote(Replication::MultiWriter).await;
    let us = sim.at("us").unwrap();
    let other = write(&us, "us", "j", "0", Precondition::IfAbsent)
        .await
        .unwrap();
    assert!(
        other.point < before.point,
        "a global table's region took {} from its peer's {}",
        other.point,
        before.point
    );
}

/// Leases are disjoint in time under commit wait too: a lease moved to a
/// node whose clock runs 200 ms slow (within the fence, far beyond ε)
/// serves strong reads above everything the old holder acknowledged.
#[tokio::test(start_paused = true)]
async fn commit_wait_reads_at_a_new_leaseholder_start_above_the_old_lease() {
    let mut c = config(Replication::Consensus);
    c.commit_wait = Some(Duration::from_millis(10));
    let sim = Sim::new(c).unwrap();
    let us = sim.at("us").unwrap();
    sim.set_skew("us", -200_000_000).unwrap();
    let w = write(&us, "eu", "k", "0", Precondition::IfAbsent)
        .await
        .unwrap();
    sim.prefer_lease("us").unwrap();
    assert_eq!(sim.leaseholder().as_str(), "us");
    let r = read(&us, "us", "k", ReplicaRole::Leader).await.unwrap();
    assert_eq!(r.version(), Some(w.version), "{:?}", r.freshness);
}

/// A lease moves only between nodes that accept each other's connections;
/// once their clocks agree again, it moves.
#[tokio::test(start_paused = true)]
async fn a_lease_does_not_move_between_nodes_beyond_max_offset_of_each_other() {
    let (sim, _eu) = with_k(Replication::Consensus, "eu", "eu").await;
    sim.prefer_lease("ap").unwrap();
    assert_eq!(sim.leaseholder().as_str(), "ap");
    sim.set_skew("us", 390_000_000).unwrap();
    sim.set_skew("ap", -390_000_000).unwrap();
    sim.prefer_lease("us").unwrap();
    assert_eq!(sim.leaseholder().as_str(), "ap", "refused: 780 ms apart");
    sim.set_skew("ap", 0).unwrap();
    sim.prefer_lease("us").unwrap();
    assert_eq!(sim.leaseholder().as_str(), "us");
}

/// Leases spread over the regions; preferences moved to one region go back
/// to each range's own when the operator undoes the move.
#[tokio::test(start_paused = true)]
async fn lease_preferences_go_back_to_each_range_s_own() {
    let mut c = config(Replication::Consensus);
    c.ranges = 3;
    let sim = Sim::new(c).unwrap();
    let keys = keys_by_leaseholder(&sim);
    sim.prefer_lease("ap").unwrap();
    for key in &keys {
        assert_eq!(sim.leaseholder_of(key).as_str(), "ap");
    }
    sim.default_lease_preferences();
    let holders: Vec<String> = keys
        .iter()
        .map(|k| sim.leaseholder_of(k).as_str().to_owned())
        .collect();
    assert_eq!(holders, ["eu", "us", "ap"]);
}

/// A lease preference moves the lease cooperatively at once; the new
/// lease starts above what the old holder served, so a write right after
/// commits above a read the old holder answered.
#[tokio::test(start_paused = true)]
async fn a_lease_preference_moves_the_lease_above_what_the_old_holder_served() {
    let (sim, us) = with_k(Replication::Consensus, "us", "eu").await;
    sim.set_skew("eu", 200_000_000).unwrap();
    let served = read(&us, "eu", "k", ReplicaRole::Leader).await.unwrap();
    sim.prefer_lease("us").unwrap();
    assert_eq!(sim.leaseholder().as_str(), "us");
    let c = write(&us, "us", "k", "1", Precondition::Any).await.unwrap();
    assert_eq!(c.region.as_str(), "us");
    let point = served.freshness.point.unwrap();
    assert!(
        c.point > point,
        "{} not above the old holder's read at {point}",
        c.point
    );
    sim.prefer_lease("eu").unwrap();
    assert_eq!(sim.leaseholder().as_str(), "eu");
}

/// A stalled replica receives but does not apply: it serves its old
/// version with a point below the new write, and catches up once resumed.
#[tokio::test(start_paused = true)]
async fn a_stalled_replica_keeps_its_point_below_what_waits() {
    for replication in [Replication::Consensus, Replication::MultiWriter] {
        let sim = Sim::new(config(replication)).unwrap();
        let eu = sim.at("eu").unwrap();
        let v1 = write(&eu, "eu", "k", "0", Precondition::IfAbsent)
            .await
            .unwrap();
        sleep(Duration::from_millis(500)).await;
        sim.stall_replica("us").unwrap();
        let v2 = write(&eu, "eu", "k", "1", Precondition::Any).await.unwrap();
        sleep(Duration::from_secs(2)).await;
        let r = read(&eu, "us", "k", ReplicaRole::Follower).await.unwrap();
        assert_eq!(r.version(), Some(v1.version), "{replication:?}");
        assert!(
            r.freshness.point.is_some_and(|p| p < v2.point),
            "{replication:?}: a stalled replica claims {:?}, past the write at {}",
            r.freshness,
            v2.point
        );
        sim.resume_replica("us").unwrap();
        let r = read(&eu, "us", "k", ReplicaRole::Follower).await.unwrap();
        assert_eq!(r.version(), Some(v2.version), "{replication:?}");
    }
}

/// Observing the lease does not change the run: the same seed gives the
/// same outcomes whether or not a test looks at the leaseholder meanwhile.
#[tokio::test(start_paused = true)]
async fn observing_the_lease_does_not_change_the_run() {
    async fn run(observe: bool) -> Vec<String> {
        let mut c = config(Replication::Consensus);
        c.jitter = 0.3;
        c.seed = 11;
        let sim = Sim::new(c).unwrap();
        let us = sim.at("us").unwrap();
        let mut out = Vec::new();
        for i in 0..12 {
            if i == 3 {
                sim.isolate("eu").unwrap();
            }
            if i == 8 {
                sim.heal();
            }
            if observe {
                sim.leaseholder();
                sim.inspect();
            }
            let w = write(&us, "us", "k", &i.to_string(), Precondition::Any).await;
            out.push(format!("{:?}", w.map(|c| (c.version, c.point, c.region))));
            sleep(Duration::from_millis(400)).await;
        }
        out
    }
    assert_eq!(run(false).await, run(true).await);
}

/// A node stopped over its clock serves nothing, but the clients of its
/// region are not nodes: answers from other regions' gateways reach them.
#[tokio::test(start_paused = true)]
async fn clients_of_a_stopped_node_are_answered_by_other_regions() {
    let (sim, us) = with_k(Replication::Consensus, "us", "eu").await;
    sim.set_skew("us", 2_000_000_000).unwrap();
    assert!(
        read(&us, "us", "k", ReplicaRole::Leader).await.is_err(),
        "the stopped node served"
    );
    let r = read(&us, "eu", "k", ReplicaRole::Leader).await.unwrap();
    assert_eq!(r.version(), Some(quorate::Version::FIRST));
}

/// A leaseholder that stops over its clock while proposals wait at it for
/// a quorum commits none of them: it serves nothing, and the lease moves.
#[tokio::test(start_paused = true)]
async fn a_leaseholder_stopped_over_its_clock_commits_nothing_waiting_at_it() {
    let (sim, pending) = a_write_waiting_at_a_cut_off_leaseholder().await;
    // Cut off, it measures nothing; once healed it finds itself 2 s away
    // from both peers and stops.
    sim.set_skew("eu", 2_000_000_000).unwrap();
    sim.heal();
    let outcome = pending.await.unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
    sleep(Duration::from_secs(5)).await;
    assert_only_the_first_version(&sim, "a stopped node committed").await;
}

/// Global tables replicate item by item: an item written later may reach
/// another region first, a replica states no lag of its own, and a read
/// states the age of the item it returns (by the client's clock), nothing
/// for an absent one.
#[tokio::test(start_paused = true)]
async fn global_table_items_replicate_independently_without_a_watermark() {
    let mut overtaken = 0;
    for seed in 0..20 {
        let mut c = config(Replication::MultiWriter);
        c.seed = seed;
        c.replication_lag = Duration::from_millis(400);
        let sim = Sim::new(c).unwrap();
        let eu = sim.at("eu").unwrap();
        write(&eu, "eu", "first", "1", Precondition::IfAbsent)
            .await
            .unwrap();
        write(&eu, "eu", "second", "1", Precondition::IfAbsent)
            .await
            .unwrap();
        let mut first_seen = None;
        let mut second_seen = None;
        for step in 0..100u32 {
            let a = read(&eu, "us", "first", ReplicaRole::Follower)
                .await
                .unwrap();
            // The item's age when the read began: the claim, made later,
            // may not be below it.
            let began = quorate::Clock::now_nanos(&sim.clock("eu").unwrap());
            let b = read(&eu, "us", "second", ReplicaRole::Follower)
                .await
                .unwrap();
            if a.version().is_some() {
                first_seen.get_or_insert(step);
            } else {
                assert_eq!(a.freshness.staleness_bound, None, "an absent item");
                assert_eq!(a.freshness.point, None);
            }
            if let Some(bound) = b.freshness.staleness_bound {
                assert!(b.version().is_some());
                let written = b.freshness.point.unwrap().wall;
                assert!(
                    bound.as_nanos() as u64 >= began.saturating_sub(written),
                    "a bound of {bound:?} for an item written {} ns before the read",
                    began.saturating_sub(written)
                );
                second_seen.get_or_insert(step);
            }
            if first_seen.is_some() && second_seen.is_some() {
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
        let (Some(f), Some(s)) = (first_seen, second_seen) else {
            panic!("seed {seed}: never replicated");
        };
        if s < f {
            overtaken += 1;
        }
        let probe = eu.probe(&Region::new("us").unwrap()).await.unwrap();
        assert_eq!(probe.replica_lag, None, "no watermark, no lag figure");
    }
    assert!(
        overtaken > 0,
        "in twenty runs the later item never arrived first"
    );
}

/// Spanner's commit wait: the leaseholder timestamps a write at its
/// clock's latest possible time and answers only once its earliest
/// possible time has passed it (about 2ε later), so a strong read through
/// any gateway right after sees it — with the writing gateway's clock
/// 300 ms ahead, where CockroachDB's scheme reports an uncertain value
/// (`clock_skew_within_max_offset_is_uncertain_not_stale`).
#[tokio::test(start_paused = true)]
async fn commit_wait_acknowledges_after_the_uncertainty_and_reads_are_never_uncertain() {
    let mut c = config(Replication::Consensus);
    c.commit_wait = Some(Duration::from_millis(100));
    let sim = Sim::new(c).unwrap();
    sim.set_skew("ap", 300_000_000).unwrap();
    let ap = sim.at("ap").unwrap();
    let us = sim.at("us").unwrap();
    let started = Instant::now();
    let c = write(&ap, "ap", "k", "1", Precondition::IfAbsent)
        .await
        .unwrap();
    let took = started.elapsed();
    // ap → eu and back (20 ms each way, 1 ms locally), the quorum round
    // inside the 200 ms commit wait.
    assert!(
        took >= Duration::from_millis(240),
        "acknowledged after {took:?}"
    );
    let r = read(&us, "us", "k", ReplicaRole::Leader).await.unwrap();
    assert_eq!(r.version(), Some(c.version));
    assert!(r.freshness.point.unwrap() >= c.point);
    // The commit was timestamped at the leaseholder, not the skewed gateway.
    let eu_now = quorate::Clock::now_nanos(&sim.clock("eu").unwrap());
    assert!(c.point.wall <= eu_now, "{} after {eu_now}", c.point);
}

/// A clock can drift as well as step: it gains steadily, and the node
/// stops once it has drifted past 0.8 × `max_offset` from its peers; a step
/// back (NTP correcting it) brings it back into service.
#[tokio::test(start_paused = true)]
async fn a_drifting_clock_stops_its_node_once_it_has_drifted_too_far() {
    let (sim, us) = with_k(Replication::Consensus, "us", "eu").await;
    let true_now = || quorate::Clock::now_nanos(&sim.clock("eu").unwrap());
    let us_now = || quorate::Clock::now_nanos(&sim.clock("us").unwrap());
    sim.set_drift("us", 200_000).unwrap();
    sleep(Duration::from_secs(1)).await;
    let gained = us_now() as i64 - true_now() as i64;
    assert!((199_000_000..=201_000_000).contains(&gained), "{gained}");
    read(&us, "us", "k", ReplicaRole::Leader)
        .await
        .expect("200 ms off: still serving");
    sleep(Duration::from_millis(1500)).await;
    match read(&us, "us", "k", ReplicaRole::Leader).await {
        Err(Error::RegionUnavailable { reason, .. }) => {
            assert!(reason.contains("clock"), "{reason}")
        }
        other => panic!("a node 500 ms off served: {other:?}"),
    }
    sim.set_drift("us", 0).unwrap();
    sim.set_skew("us", 0).unwrap();
    read(&us, "us", "k", ReplicaRole::Leader)
        .await
        .expect("stepped back, serving again");
}

/// Two nodes whose clocks are further apart than `max_offset`, each still
/// close enough to the third to keep serving, refuse each other's
/// connections: a request from one to the other fails at once with a
/// typed, retryable error (never an unknown outcome), and the same write
/// through the third region's gateway commits.
#[tokio::test(start_paused = true)]
async fn nodes_beyond_max_offset_of_each_other_refuse_each_others_requests() {
    let (sim, ap) = with_k(Replication::Consensus, "ap", "ap").await;
    sim.prefer_lease("us").unwrap();
    sim.set_skew("us", 390_000_000).unwrap();
    sim.set_skew("ap", -390_000_000).unwrap();
    let started = Instant::now();
    match write(&ap, "ap", "k", "1", Precondition::Any).await {
        Err(e @ Error::RegionUnavailable { reason, .. }) => {
            assert!(reason.contains("max_offset"), "{reason}");
            assert!(e.is_retryable(), "{e:?}");
        }
        other => panic!("expected a refused connection, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(100));
    let c = write(&ap, "eu", "k", "1", Precondition::Any).await.unwrap();
    assert_eq!(c.region.as_str(), "us", "committed at the leaseholder");
    // With offsets back within bounds the connection is accepted again.
    sim.set_skew("ap", 0).unwrap();
    write(&ap, "ap", "k", "2", Precondition::Any).await.unwrap();
}

/// Faults compose through the API: added latencies and steps stack, and
/// taking one back leaves the other.
#[tokio::test(start_paused = true)]
async fn added_latencies_and_steps_stack() {
    let (sim, us) = with_k(Replication::Consensus, "us", "eu").await;
    let round_trip = || async {
        let started = Instant::now();
        read(&us, "eu", "k", ReplicaRole::Follower).await.unwrap();
        started.elapsed()
    };
    let base = round_trip().await;
    sim.add_link_latency("us", "eu", Duration::from_millis(100))
        .unwrap();
    sim.add_link_latency("eu", "us", Duration::from_millis(50))
        .unwrap();
    assert_eq!(round_trip().await, base + Duration::from_millis(300));
    sim.remove_link_latency("us", "eu", Duration::from_millis(100))
        .unwrap();
    assert_eq!(round_trip().await, base + Duration::from_millis(100));
    let now = |r: &str| quorate::Clock::now_nanos(&sim.clock(r).unwrap()) as i64;
    sim.add_skew("ap", 200_000_000).unwrap();
    sim.add_skew("ap", -50_000_000).unwrap();
    assert_eq!(now("ap") - now("eu"), 150_000_000);
    sim.add_drift("us", 100_000).unwrap();
    sim.add_drift("us", 100_000).unwrap();
    sim.add_drift("us", -50_000).unwrap();
    let before = now("us") - now("eu");
    sleep(Duration::from_secs(1)).await;
    assert_eq!(now("us") - now("eu") - before, 150_000_000, "rates add up");
}

/// A key of each of three ranges, whose leases start in eu, us and ap.
fn keys_by_leaseholder(sim: &Sim) -> [String; 3] {
    let mut found: [Option<String>; 3] = [None, None, None];
    for i in 0..200 {
        let key = format!("key-{i}");
        let slot = match sim.leaseholder_of(&key).as_str() {
            "eu" => 0,
            "us" => 1,
            _ => 2,
        };
        found[slot].get_or_insert(key);
    }
    found.map(|k| k.expect("a key in every range"))
}

/// Each range has its own lease: isolating one leaseholder moves only the
/// ranges it held (after expiry and `max_offset`), and writes to the other
/// ranges go on without waiting for it.
#[tokio::test(start_paused = true)]
async fn ranges_have_their_own_leases_and_fail_over_on_their_own() {
    let mut c = config(Replication::Consensus);
    c.ranges = 3;
    let sim = Sim::new(c).unwrap();
    let [at_eu, at_us, at_ap] = keys_by_leaseholder(&sim);
    let eu = sim.at("eu").unwrap();
    for key in [&at_eu, &at_us, &at_ap] {
        write(&eu, "eu", key, "0", Precondition::IfAbsent)
            .await
            .unwrap();
    }
    sim.isolate("us").unwrap();
    let started = Instant::now();
    write(&eu, "eu", &at_ap, "1", Precondition::Any)
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "ap's range did not wait"
    );
    sleep(Duration::from_secs(3)).await;
    assert_eq!(sim.leaseholder_of(&at_eu).as_str(), "eu");
    assert_eq!(sim.leaseholder_of(&at_ap).as_str(), "ap");
    assert_ne!(
        sim.leaseholder_of(&at_us).as_str(),
        "us",
        "us's range moved"
    );
    let c = write(&eu, "eu", &at_us, "1", Precondition::Any)
        .await
        .unwrap();
    assert_ne!(c.region.as_str(), "us");
    sim.heal();
    sleep(Duration::from_millis(100)).await;
    assert_eq!(sim.leaseholder_of(&at_us).as_str(), "us", "and came back");
}

/// Each range has its own log and closed timestamps: an entry of one range
/// held behind a cut holds back that range's closed point at a follower,
/// not another range's.
#[tokio::test(start_paused = true)]
async fn a_range_held_back_does_not_hold_back_another() {
    let mut c = config(Replication::Consensus);
    c.ranges = 3;
    let sim = Sim::new(c).unwrap();
    let [at_eu, at_us, _] = keys_by_leaseholder(&sim);
    let ap = sim.at("ap").unwrap();
    sim.cut_one_way("eu", "ap").unwrap();
    let held = write(&ap, "us", &at_eu, "0", Precondition::IfAbsent)
        .await
        .unwrap();
    let flowing = write(&ap, "us", &at_us, "0", Precondition::IfAbsent)
        .await
        .unwrap();
    sleep(Duration::from_secs(1)).await;
    let r = read(&ap, "ap", &at_us, ReplicaRole::Follower)
        .await
        .unwrap();
    assert_eq!(r.version(), Some(flowing.version));
    assert!(
        r.freshness.point.unwrap() >= flowing.point,
        "{:?}",
        r.freshness
    );
    let r = read(&ap, "ap", &at_eu, ReplicaRole::Follower)
        .await
        .unwrap();
    assert_eq!(r.version(), None, "eu's entry is held behind the cut");
    assert!(r.freshness.point.unwrap() < held.point, "{:?}", r.freshness);
}

/// The system's state can be read without touching it: leases, clocks,
/// fences, crashes, stalls and closed points.
#[tokio::test(start_paused = true)]
async fn the_system_can_be_inspected() {
    let mut c = config(Replication::Consensus);
    c.ranges = 2;
    let sim = Sim::new(c).unwrap();
    let eu = sim.at("eu").unwrap();
    let w = write(&eu, "eu", "k", "0", Precondition::IfAbsent)
        .await
        .unwrap();
    sleep(Duration::from_secs(1)).await;
    sim.crash("ap").unwrap();
    sim.stall_replica("us").unwrap();
    sim.set_skew("eu", 100_000_000).unwrap();
    let view = sim.inspect();
    assert_eq!(view.ranges.len(), 2);
    assert_eq!(view.ranges[0].leaseholder.as_str(), "eu");
    assert_eq!(view.ranges[1].leaseholder.as_str(), "us");
    let node = |r: &str| view.nodes.iter().find(|n| n.region.as_str() == r).unwrap();
    assert_eq!(node("eu").clock_offset_nanos, 100_000_000);
    assert!(node("ap").crashed && !node("eu").crashed);
    assert!(node("us").stalled);
    assert!(node("eu").hlc >= w.point);
    assert_eq!(node("us").closed.len(), 2);
    assert!(node("us").closed.iter().all(|p| p.wall > 0));
    assert_eq!(sim.inspect(), view, "looking twice sees the same");
}

/// A client's clock may differ from its region's node: on a global table
/// an item's age is measured by the client's own clock, as the DynamoDB
/// adapter measures it by the application host's.
#[tokio::test(start_paused = true)]
async fn a_client_clock_independent_of_its_region() {
    let (sim, eu) = with_k(Replication::MultiWriter, "eu", "eu").await;
    sleep(Duration::from_secs(1)).await;
    let node = sim.at("us").unwrap();
    let ahead = node.with_client_clock(2_000_000_000);
    let node_now = quorate::Clock::now_nanos(&node.client_clock());
    let client_now = quorate::Clock::now_nanos(&ahead.client_clock());
    assert_eq!(client_now - node_now, 2_000_000_000);
    assert_eq!(
        node_now,
        quorate::Clock::now_nanos(&sim.clock("us").unwrap())
    );
    let by_node = read(&node, "us", "k", ReplicaRole::Follower).await.unwrap();
    let by_client = read(&ahead, "us", "k", ReplicaRole::Follower)
        .await
        .unwrap();
    let age = |r: &Read<Bytes>| r.freshness.staleness_bound.unwrap();
    assert!(
        age(&by_node) < Duration::from_millis(1100),
        "{:?}",
        age(&by_node)
    );
    assert!(
        age(&by_client) >= Duration::from_secs(3),
        "{:?}",
        age(&by_client)
    );
    // Lag stacks like latency.
    sim.add_replication_lag("us", Duration::from_secs(5))
        .unwrap();
    sim.add_replication_lag("us", Duration::from_secs(5))
        .unwrap();
    sim.remove_replication_lag("us", Duration::from_secs(5))
        .unwrap();
    write(&eu, "eu", "k", "1", Precondition::Any).await.unwrap();
    sleep(Duration::from_secs(4)).await;
    let r = read(&node, "us", "k", ReplicaRole::Follower).await.unwrap();
    assert_eq!(
        r.version(),
        Some(quorate::Version::FIRST),
        "5 s of lag remain"
    );
    // An item waits the lag and up to as much again (item by item).
    sleep(Duration::from_secs(7)).await;
    let r = read(&node, "us", "k", ReplicaRole::Follower).await.unwrap();
    assert_eq!(r.version().map(|v| v.0), Some(2));
}

/// A point ahead of the clock that measures a follower's staleness (its
/// stamping clock ran ahead) proves no bound: the follower states none
/// until its clock has passed the point.
#[tokio::test(start_paused = true)]
async fn a_point_ahead_of_the_measuring_clock_states_no_staleness_bound() {
    // An item stamped by a writer 2 s ahead, read where the clock is right.
    let mut c = config(Replication::MultiWriter);
    c.enforce_max_offset = false;
    let sim = Sim::new(c).unwrap();
    sim.set_skew("eu", 2_000_000_000).unwrap();
    let eu = sim.at("eu").unwrap();
    write(&eu, "eu", "k", "0", Precondition::IfAbsent)
        .await
        .unwrap();
    sleep(Duration::from_millis(500)).await;
    let us = sim.at("us").unwrap();
    let r = read(&us, "us", "k", ReplicaRole::Follower).await.unwrap();
    assert!(r.version().is_some());
    assert_eq!(r.freshness.staleness_bound, None, "{:?}", r.freshness);
    sleep(Duration::from_secs(2)).await;
    let r = read(&us, "us", "k", ReplicaRole::Follower).await.unwrap();
    assert!(r.freshness.staleness_bound.is_some(), "{:?}", r.freshness);

    // A consensus follower whose clock runs behind its leader's closed
    // timestamps.
    let mut c = config(Replication::Consensus);
    c.enforce_max_offset = false;
    let sim = Sim::new(c).unwrap();
    let eu = sim.at("eu").unwrap();
    write(&eu, "eu", "k", "0", Precondition::IfAbsent)
        .await
        .unwrap();
    sleep(Duration::from_secs(1)).await;
    sim.set_skew("us", -1_500_000_000).unwrap();
    let us = sim.at("us").unwrap();
    let r = read(&us, "us", "k", ReplicaRole::Follower).await.unwrap();
    assert_eq!(r.freshness.staleness_bound, None, "{:?}", r.freshness);
    sim.set_skew("us", 0).unwrap();
    let r = read(&us, "us", "k", ReplicaRole::Follower).await.unwrap();
    assert!(r.freshness.staleness_bound.is_some(), "{:?}", r.freshness);
}

/// A write through us, sent while us is paused, with idempotency key
/// "held": the client gives up on it after 300 ms, and the request stays
/// held at the gateway. Returns the system, the request and the key.
async fn a_write_held_at_a_paused_gateway() -> (Sim, Sim, IdempotencyKey) {
    let (sim, us) = with_k(Replication::Consensus, "us", "eu").await;
    sim.pause("us").unwrap();
    assert!(sim.paused("us").unwrap() && !sim.crashed("us").unwrap());
    let idem = IdempotencyKey::new("held").unwrap();
    let region = Region::new("us").unwrap();
    let value = Bytes::from_static(b"late");
    let request = WriteRequest {
        key: "k",
        mutation: quorate::Mutation::Put(&value),
        precondition: Precondition::IfVersion(quorate::Version::FIRST),
        idempotency_key: Some(&idem),
        region: &region,
        deadline: Instant::now() + Duration::from_secs(10),
    };
    let gave_up = tokio::time::timeout(Duration::from_millis(300), us.write(&request)).await;
    assert!(gave_up.is_err(), "a paused gateway answered: {gave_up:?}");
    (sim, us, idem)
}

/// A paused node refuses nothing and loses nothing: a write sent through it
/// waits, unanswered, while its client gives up; when the node resumes the
/// write goes on and commits (a late commit), and reads through it are
/// answered again.
#[tokio::test(start_paused = true)]
async fn a_paused_gateway_commits_what_it_held_once_it_resumes() {
    let (sim, us, _) = a_write_held_at_a_paused_gateway().await;
    assert!(sim.inspect().nodes.iter().any(|n| n.paused));
    sleep(Duration::from_secs(2)).await;
    let r = read(&us, "eu", "k", ReplicaRole::Leader).await.unwrap();
    assert_eq!(
        r.version(),
        Some(quorate::Version::FIRST),
        "held while paused"
    );
    sim.resume("us").unwrap();
    assert!(!sim.paused("us").unwrap());
    sleep(Duration::from_millis(500)).await;
    let r = read(&us, "us", "k", ReplicaRole::Leader).await.unwrap();
    assert_eq!(
        r.version(),
        Some(quorate::Version::FIRST.next()),
        "the held write committed after its client gave up"
    );
}

/// A lookup through another gateway fences the idempotency key: the write
/// a paused gateway still holds cannot commit when it resumes. (Without
/// the fence the lookup's "not applied" would be overtaken by the late
/// commit, and a caller told the write failed would see it land.)
#[tokio::test(start_paused = true)]
async fn a_lookup_elsewhere_fences_what_a_paused_gateway_holds() {
    let (sim, us, idem) = a_write_held_at_a_paused_gateway().await;
    let ap = Region::new("ap").unwrap();
    assert_eq!(us.lookup(&ap, "k", &idem).await.unwrap(), None);
    sim.resume("us").unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_only_the_first_version(&sim, "the fenced attempt never committed").await;
}

/// A paused leaseholder renews nothing: its lease runs out as a crashed
/// one's does and another node takes it. What was sent to it waits,
/// neither refused nor lost: when it resumes it takes its preferred lease
/// back and the write it held commits then, after the write made
/// meanwhile.
#[tokio::test(start_paused = true)]
async fn a_paused_leaseholder_loses_its_lease_and_serves_what_it_held_when_it_resumes() {
    let (sim, us) = with_k(Replication::Consensus, "us", "us").await;
    sim.pause("eu").unwrap();
    let held = {
        let us = us.clone();
        tokio::spawn(async move { write(&us, "us", "k", "held", Precondition::Any).await })
    };
    sleep(Duration::from_secs(3)).await;
    assert_ne!(sim.leaseholder().as_str(), "eu", "another node took it");
    assert!(!held.is_finished(), "held, neither refused nor lost");
    let c = write(&us, "us", "k", "1", Precondition::Any).await.unwrap();
    assert_ne!(c.region.as_str(), "eu");
    sim.resume("eu").unwrap();
    let late = held.await.unwrap().unwrap();
    assert_eq!(late.region.as_str(), "eu", "the lease went back");
    assert_eq!(late.version, c.version.next(), "committed after the other");
}

/// A multi-record write through `gateway` of the records in `keys`, each
/// put unconditionally, with idempotency key `idem`.
async fn transact(
    b: &Sim,
    gateway: &str,
    keys: &[&str],
    idem: &IdempotencyKey,
) -> Result<quorate::Transacted, Error> {
    let region = Region::new(gateway).unwrap();
    let value = Bytes::from_static(b"tx");
    let ops: Vec<quorate::TxOp<'_>> = keys
        .iter()
        .map(|k| quorate::TxOp::put(k, &value, Precondition::Any))
        .collect();
    b.transact(&quorate::TransactRequest {
        ops: &ops,
        idempotency_key: Some(idem),
        region: &region,
        deadline: Instant::now() + Duration::from_secs(30),
    })
    .await
}

/// Strong versions of `keys` read through ap.
async fn strong_versions(sim: &Sim, keys: &[&str]) -> Vec<Option<quorate::Version>> {
    let ap = sim.at("ap").unwrap();
    let mut out = Vec::new();
    for k in keys {
        out.push(
            read(&ap, "ap", k, ReplicaRole::Leader)
                .await
                .unwrap()
                .observed(),
        );
    }
    out
}

/// A write over two ranges commits in both or in neither, as a two-phase
/// commit does: while the coordinator (the first range's leaseholder)
/// cannot reach the second range's, it waits, and neither record shows it;
/// once the link heals it commits both, at one timestamp. When the second
/// range's lease moves meanwhile, the write is dropped from both.
#[tokio::test(start_paused = true)]
async fn a_write_over_two_ranges_commits_in_both_or_neither() {
    for lease_moves in [false, true] {
        let mut c = config(Replication::Consensus);
        c.ranges = 3;
        let sim = Sim::new(c).unwrap();
        let [at_eu, at_us, _] = keys_by_leaseholder(&sim);
        let keys = [at_eu.as_str(), at_us.as_str()];
        let eu = sim.at("eu").unwrap();
        let first = transact(&eu, "eu", &keys, &IdempotencyKey::generate())
            .await
            .unwrap();
        assert_eq!(first.versions.len(), 2);
        assert_eq!(
            strong_versions(&sim, &keys).await,
            vec![Some(quorate::Version::FIRST); 2]
        );
        sim.cut("eu", "us").unwrap();
        let pending = {
            let eu = eu.clone();
            let keys = [at_eu.clone(), at_us.clone()];
            tokio::spawn(async move {
                let keys = [keys[0].as_str(), keys[1].as_str()];
                transact(&eu, "eu", &keys, &IdempotencyKey::generate()).await
            })
        };
        sleep(Duration::from_millis(500)).await;
        assert!(!pending.is_finished(), "waits for the other range");
        assert_eq!(
            strong_versions(&sim, &keys).await,
            vec![Some(quorate::Version::FIRST); 2],
            "nothing of it shows while it waits"
        );
        if lease_moves {
            sim.prefer_lease_of(&at_us, "ap").unwrap();
            sleep(Duration::from_millis(100)).await;
            assert_eq!(sim.leaseholder_of(&at_us).as_str(), "ap");
        }
        sim.heal();
        let outcome = pending.await.unwrap();
        sleep(Duration::from_millis(500)).await;
        let now = strong_versions(&sim, &keys).await;
        if lease_moves {
            assert!(outcome.is_err(), "{outcome:?}");
            assert_eq!(
                now,
                vec![Some(quorate::Version::FIRST); 2],
                "dropped from both"
            );
        } else {
            let done = outcome.unwrap();
            assert_eq!(now, vec![Some(quorate::Version(2)); 2], "committed in both");
            assert!(done.point > first.point);
        }
    }
}

/// A multi-record write held at a paused gateway, and fenced meanwhile by a
/// lookup through another, applies nothing when it goes on: no record of
/// it, in either range.
#[tokio::test(start_paused = true)]
async fn a_fenced_multi_record_write_applies_nothing_when_it_arrives_late() {
    let mut c = config(Replication::Consensus);
    c.ranges = 3;
    let sim = Sim::new(c).unwrap();
    let [at_eu, at_us, _] = keys_by_leaseholder(&sim);
    let keys = [at_eu.as_str(), at_us.as_str()];
    let ap = sim.at("ap").unwrap();
    sim.pause("ap").unwrap();
    let idem = IdempotencyKey::new("held-tx").unwrap();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        transact(&ap, "ap", &keys, &idem),
    )
    .await;
    assert!(gave_up.is_err(), "a paused gateway answered");
    let eu = sim.at("eu").unwrap();
    let found = eu
        .lookup_transaction(&Region::new("eu").unwrap(), &keys, &idem)
        .await
        .unwrap();
    assert_eq!(found, None);
    sim.resume("ap").unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(strong_versions(&sim, &keys).await, vec![None, None]);
}
