//! The conformance suite on the simulator: plain, wrapped in chaos, and in
//! both replication modes.

use quorate::chaos::Chaos;
use quorate::conformance::{
    follower_freshness_claims_hold, run_all, Fixture, HoldFollowers, QueryHook,
};
use quorate::sim::{Replication, Sim, SimConfig};
use quorate::{
    Backend, Bytes, Capabilities, Committed, Error, IdempotencyKey, Point, Probe, Read, ReadPlan,
    Region, ReplicaRole, Scope, Topology, TransactRequest, Transacted, WriteRequest,
};

fn assert_all_pass(report: Vec<(&'static str, Result<(), String>)>) {
    assert_eq!(
        report.len(),
        quorate::conformance::cases::<Sim>().len() + 1,
        "every case, and the query's"
    );
    let failures: Vec<_> = report.iter().filter(|(_, r)| r.is_err()).collect();
    for (name, result) in &report {
        println!("{name}: {}", if result.is_ok() { "ok" } else { "FAILED" });
    }
    assert!(failures.is_empty(), "failed cases: {failures:#?}");
}

fn sim(replication: Replication, seed: u64) -> Sim {
    let mut config = SimConfig::new(["eu-west", "us-east", "ap-south"]).unwrap();
    config.replication = replication;
    config.seed = seed;
    Sim::new(config).unwrap()
}

/// Holds a region's followers by stalling its simulated replica.
fn stall(sim: &Sim) -> HoldFollowers {
    let sim = sim.clone();
    HoldFollowers::new(move |region: Region, hold| {
        let sim = sim.clone();
        async move {
            let r = region.as_str();
            if hold {
                sim.stall_replica(r)
            } else {
                sim.resume_replica(r)
            }
            .map_err(|e| e.to_string())
        }
    })
}

/// The simulator's query path: a read of the key, served as the client
/// plans it (the simulator has no query language; what is checked is the
/// client's handling of a query's freshness and the session).
fn point_query<B: Backend + Clone>() -> QueryHook<B> {
    QueryHook::new(
        |client: quorate::Client<B>, session: quorate::Session, policy, key: String| async move {
            let backend = client.backend().clone();
            let q = client
                .query(&session, policy, Some(&key), |plan| {
                    let (backend, key) = (backend.clone(), key.clone());
                    let (region, role, policy) = (plan.region.clone(), plan.role, plan.policy);
                    let deadline = plan.deadline;
                    async move {
                        let r = backend
                            .read(&ReadPlan {
                                key: &key,
                                region: &region,
                                role,
                                policy,
                                floor: quorate::SessionFloor::default(),
                                deadline,
                            })
                            .await?;
                        Ok((r.version(), r.freshness))
                    }
                })
                .await?;
            Ok(q.rows)
        },
    )
}

fn fixture(backend: Sim) -> Fixture<Sim> {
    let hold = stall(&backend);
    Fixture::new(backend)
        .with_hold_followers(hold)
        .with_query(point_query())
}

#[tokio::test(start_paused = true)]
async fn consensus_mode_from_a_follower_region() {
    let backend = sim(Replication::Consensus, 1).at("us-east").unwrap();
    assert_all_pass(run_all(&fixture(backend)).await);
}

#[tokio::test(start_paused = true)]
async fn consensus_mode_from_the_home_region() {
    let backend = sim(Replication::Consensus, 2).at("eu-west").unwrap();
    assert_all_pass(run_all(&fixture(backend)).await);
}

#[tokio::test(start_paused = true)]
async fn multi_writer_mode() {
    let backend = sim(Replication::MultiWriter, 3).at("ap-south").unwrap();
    assert_all_pass(run_all(&fixture(backend)).await);
}

/// A false freshness claim a backend might make about its follower reads.
#[derive(Clone, Copy, Debug)]
enum Lie {
    /// Claims to be current (a zero staleness bound).
    Current,
    /// Claims a point far ahead of what it applied.
    Point,
    /// Claims to be the leader.
    Leader,
}

/// The simulator, reporting one false claim on every follower read.
#[derive(Clone)]
struct Boasting {
    inner: Sim,
    lie: Lie,
}

impl Backend for Boasting {
    fn scope(&self) -> &Scope {
        self.inner.scope()
    }

    fn topology(&self) -> &Topology {
        self.inner.topology()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn home_region(&self, key: &str) -> Option<&Region> {
        self.inner.home_region(key)
    }

    async fn read(&self, plan: &ReadPlan<'_>) -> Result<Read<Bytes>, Error> {
        let mut read = self.inner.read(plan).await?;
        if read.freshness.role == ReplicaRole::Follower {
            let f = &mut read.freshness;
            match self.lie {
                Lie::Current => f.staleness_bound = Some(std::time::Duration::ZERO),
                Lie::Point => f.point = Some(Point::hlc(u64::MAX / 2, 0)),
                Lie::Leader => f.role = ReplicaRole::Leader,
            }
        }
        Ok(read)
    }

    async fn write(&self, request: &WriteRequest<'_>) -> Result<Committed, Error> {
        self.inner.write(request).await
    }

    async fn lookup(
        &self,
        region: &Region,
        key: &str,
        idempotency_key: &IdempotencyKey,
    ) -> Result<Option<Committed>, Error> {
        self.inner.lookup(region, key, idempotency_key).await
    }

    async fn transact(&self, request: &TransactRequest<'_>) -> Result<Transacted, Error> {
        self.inner.transact(request).await
    }

    async fn lookup_transaction(
        &self,
        region: &Region,
        keys: &[&str],
        idempotency_key: &IdempotencyKey,
    ) -> Result<Option<Transacted>, Error> {
        self.inner
            .lookup_transaction(region, keys, idempotency_key)
            .await
    }

    async fn probe(&self, region: &Region) -> Result<Probe, Error> {
        self.inner.probe(region).await
    }
}

/// The claims case judges the backend's own freshness: each false claim
/// fails it while the followers are held, in both replication modes, and
/// the honest simulator passes the same run.
#[tokio::test(start_paused = true)]
async fn false_freshness_claims_fail_the_suite() {
    for (seed, replication) in [(6, Replication::Consensus), (7, Replication::MultiWriter)] {
        let base = sim(replication, seed).at("us-east").unwrap();
        let honest = fixture(base.clone());
        assert_eq!(follower_freshness_claims_hold(&honest).await, Ok(()));
        for lie in [Lie::Current, Lie::Point, Lie::Leader] {
            let liar = Boasting {
                inner: base.clone(),
                lie,
            };
            let fixture = Fixture::new(liar).with_hold_followers(stall(&base));
            let verdict = follower_freshness_claims_hold(&fixture).await;
            assert!(
                verdict.is_err(),
                "{replication:?}: a backend claiming {lie:?} passed"
            );
            println!("{replication:?} {lie:?}: {}", verdict.unwrap_err());
        }
    }
}

/// Without a way to hold followers, the case still judges every claim but
/// cannot insist on a lagging follower; with one that holds nothing, it
/// fails (the hold must take effect).
#[tokio::test(start_paused = true)]
async fn a_hold_that_holds_nothing_fails_the_case() {
    let base = sim(Replication::Consensus, 8).at("us-east").unwrap();
    assert_eq!(
        follower_freshness_claims_hold(&Fixture::new(base.clone())).await,
        Ok(())
    );
    let idle = HoldFollowers::new(|_, _| async { Ok(()) });
    let verdict =
        follower_freshness_claims_hold(&Fixture::new(base).with_hold_followers(idle)).await;
    assert!(verdict.is_err(), "an idle hold passed");
}

#[tokio::test(start_paused = true)]
async fn consensus_mode_under_chaos() {
    let base = sim(Replication::Consensus, 4).at("us-east").unwrap();
    let (backend, control) = Chaos::new(base);
    let far = quorate::Region::new("ap-south").unwrap();
    control.set_latency(&far, std::time::Duration::from_millis(150));
    control.set_replica_lag(
        &quorate::Region::new("us-east").unwrap(),
        std::time::Duration::from_millis(400),
    );
    assert_all_pass(run_all(&Fixture::new(backend).with_query(point_query())).await);
}

#[tokio::test(start_paused = true)]
async fn multi_writer_mode_under_chaos() {
    let base = sim(Replication::MultiWriter, 5).at("us-east").unwrap();
    let (backend, control) = Chaos::new(base);
    control.set_latency(
        &quorate::Region::new("eu-west").unwrap(),
        std::time::Duration::from_millis(80),
    );
    assert_all_pass(run_all(&Fixture::new(backend).with_query(point_query())).await);
}
