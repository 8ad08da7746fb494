//! Per-operation overhead of `Client` over calling the simulator backend
//! directly, with tracing compiled in and no subscriber installed.
//!
//! `cargo bench --bench overhead`
//!
//! The simulator runs with zero latency so that only CPU work is measured.
//! Each pair (`direct_*` / `client_*`) does the same backend work; the
//! difference is what quorate adds: planning, the freshness check, session
//! bookkeeping, metrics and the span.

use std::cell::Cell;
use std::time::Duration;

use divan::{AllocProfiler, Bencher};
use quorate::sim::{Sim, SimConfig};
use quorate::{
    Backend, Bytes, Client, ClientConfig, IdempotencyKey, Precondition, ReadPlan, ReadPolicy,
    Region, ReplicaRole, Session, SessionFloor, Version, WriteOptions, WriteRequest,
};
use tokio::runtime::Runtime;
use tokio::time::Instant;

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

fn main() {
    divan::main();
}

struct Setup {
    rt: Runtime,
    sim: Sim,
    client: Client<Sim>,
    session: Session,
    region: Region,
    version: Cell<Version>,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (sim, client, session, version) = rt.block_on(async {
        let mut config = SimConfig::new(["eu", "us", "ap"]).unwrap();
        config.link_latency = Duration::ZERO;
        config.local_latency = Duration::ZERO;
        config.replication_lag = Duration::ZERO;
        config.close_lag = Duration::ZERO;
        config.jitter = 0.0;
        let sim = Sim::new(config).unwrap();
        let client = Client::new(sim.clone(), ClientConfig::default()).unwrap();
        let session = client.session();
        let c = client
            .write(
                &session,
                "bench",
                Bytes::from_static(b"{}"),
                Precondition::Any,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
        (sim, client, session, c.version)
    });
    Setup {
        rt,
        sim,
        client,
        session,
        region: Region::new("eu").unwrap(),
        version: Cell::new(version),
    }
}

fn direct_read(b: Bencher, role: ReplicaRole, policy: ReadPolicy) {
    let s = setup();
    b.bench_local(|| {
        s.rt.block_on(async {
            let plan = ReadPlan {
                key: "bench",
                region: &s.region,
                role,
                policy,
                floor: SessionFloor::default(),
                deadline: Instant::now() + Duration::from_secs(1),
            };
            s.sim.read(&plan).await.unwrap()
        })
    });
}

fn client_read(b: Bencher, policy: ReadPolicy) {
    let s = setup();
    b.bench_local(|| {
        s.rt.block_on(s.client.read(&s.session, "bench", policy))
            .unwrap()
    });
}

#[divan::bench]
fn direct_strong_read(b: Bencher) {
    direct_read(b, ReplicaRole::Leader, ReadPolicy::Strong);
}

#[divan::bench]
fn client_strong_read(b: Bencher) {
    client_read(b, ReadPolicy::Strong);
}

#[divan::bench]
fn direct_session_read(b: Bencher) {
    direct_read(b, ReplicaRole::Follower, ReadPolicy::Session);
}

#[divan::bench]
fn client_session_read(b: Bencher) {
    client_read(b, ReadPolicy::Session);
}

#[divan::bench]
fn direct_conditional_write(b: Bencher) {
    let s = setup();
    let value = Bytes::from_static(b"{}");
    b.bench_local(|| {
        s.rt.block_on(async {
            let idem = IdempotencyKey::generate();
            let request = WriteRequest {
                key: "bench",
                mutation: quorate::Mutation::Put(&value),
                precondition: Precondition::IfVersion(s.version.get()),
                idempotency_key: Some(&idem),
                region: &s.region,
                deadline: Instant::now() + Duration::from_secs(1),
            };
            let c = s.sim.write(&request).await.unwrap();
            s.version.set(c.version);
        })
    });
}

#[divan::bench]
fn client_conditional_write(b: Bencher) {
    let s = setup();
    let value = Bytes::from_static(b"{}");
    let options = WriteOptions::default();
    b.bench_local(|| {
        s.rt.block_on(async {
            let c = s
                .client
                .write(
                    &s.session,
                    "bench",
                    value.clone(),
                    Precondition::IfVersion(s.version.get()),
                    &options,
                )
                .await
                .unwrap();
            s.version.set(c.version);
        })
    });
}
