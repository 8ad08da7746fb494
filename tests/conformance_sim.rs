//! The conformance suite on the simulator: plain, wrapped in chaos, and in
//! both replication modes.

use quorate::chaos::Chaos;
use quorate::conformance::{run_all, Fixture};
use quorate::sim::{Replication, Sim, SimConfig};

fn assert_all_pass(report: Vec<(&'static str, Result<(), String>)>) {
    assert_eq!(report.len(), quorate::conformance::cases::<Sim>().len());
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

#[tokio::test(start_paused = true)]
async fn consensus_mode_from_a_follower_region() {
    let backend = sim(Replication::Consensus, 1).at("us-east").unwrap();
    assert_all_pass(run_all(&Fixture::new(backend)).await);
}

#[tokio::test(start_paused = true)]
async fn consensus_mode_from_the_home_region() {
    let backend = sim(Replication::Consensus, 2).at("eu-west").unwrap();
    assert_all_pass(run_all(&Fixture::new(backend)).await);
}

#[tokio::test(start_paused = true)]
async fn multi_writer_mode() {
    let backend = sim(Replication::MultiWriter, 3).at("ap-south").unwrap();
    assert_all_pass(run_all(&Fixture::new(backend)).await);
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
    assert_all_pass(run_all(&Fixture::new(backend)).await);
}

#[tokio::test(start_paused = true)]
async fn multi_writer_mode_under_chaos() {
    let base = sim(Replication::MultiWriter, 5).at("us-east").unwrap();
    let (backend, control) = Chaos::new(base);
    control.set_latency(
        &quorate::Region::new("eu-west").unwrap(),
        std::time::Duration::from_millis(80),
    );
    assert_all_pass(run_all(&Fixture::new(backend)).await);
}
