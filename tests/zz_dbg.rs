use quorate::sim::{Sim, SimConfig};
use quorate::{Client, ClientConfig, Precondition, ReadPolicy, Staleness, WriteOptions};
use std::time::Duration;
#[tokio::test(start_paused = true)]
async fn dbg() {
    let mut c = SimConfig::new(["eu", "us", "ap"]).unwrap();
    c.jitter = 0.0;
    let sim = Sim::new(c).unwrap();
    let w = Client::new(sim.at("eu").unwrap(), ClientConfig::default()).unwrap();
    w.write(
        &w.session(),
        "k",
        "v".into(),
        Precondition::Any,
        &WriteOptions::default(),
    )
    .await
    .unwrap();
    eprintln!("seeded");
    sim.set_replication_lag("us", Duration::from_secs(20))
        .unwrap();
    let client = Client::new(sim.at("us").unwrap(), ClientConfig::default()).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("slept");
    client.refresh_health().await;
    eprintln!("refreshed {:?}", client.health());
    let bounded = ReadPolicy::BoundedStaleness(Staleness::from_millis(1_000).unwrap());
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client.read(&client.session(), "k", bounded),
    )
    .await;
    eprintln!("read {r:?}");
}
