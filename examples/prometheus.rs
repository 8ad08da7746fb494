//! quorate's metrics served to Prometheus, from a drill-like workload on the
//! simulator (real time).
//!
//! `cargo run --example prometheus -- [--port 9184] [--seconds 60]`, then
//! `curl http://127.0.0.1:9184/metrics`. Alert rules: `examples/alerts.yml`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use quorate::chaos::Chaos;
use quorate::metric_names;
use quorate::sim::{Sim, SimConfig};
use quorate::{
    BoxError, Client, ClientConfig, Hedge, Precondition, ReadPolicy, Region, Staleness,
    WriteOptions,
};

/// Installs the exporter on `addr` (loopback) and returns a client whose
/// metrics it serves, with the chaos controls and the simulator.
pub async fn instrumented(
    addr: SocketAddr,
) -> Result<(Client<Chaos<Sim>>, quorate::chaos::ChaosControl, Sim), BoxError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        // A histogram, with the buckets OpenTelemetry advises (without
        // buckets the exporter would render a summary).
        .set_buckets_for_metric(
            Matcher::Full(metric_names::OPERATION_DURATION.to_owned()),
            &metric_names::OPERATION_DURATION_BUCKETS,
        )?
        .install()?;
    let sim = Sim::new(SimConfig::new(["eu-west", "us-east", "ap-south"])?)?;
    let (backend, control) = Chaos::new(sim.at("us-east")?);
    let client = Client::new(
        backend,
        ClientConfig {
            clock: Arc::new(sim.clock("us-east")?),
            hedge: Some(Hedge::default()),
            ..ClientConfig::default()
        },
    )?;
    Ok((client, control, sim))
}

/// A mixed workload: strong, session and bounded reads, conditional writes
/// (some conflicting), a lagging replica, a slow region, a skewed clock,
/// failed sends and ambiguous commits.
pub async fn workload(
    client: &Client<Chaos<Sim>>,
    control: &quorate::chaos::ChaosControl,
    sim: &Sim,
    rounds: u32,
) -> Result<(), BoxError> {
    let session = client.session();
    let bounded = ReadPolicy::BoundedStaleness(Staleness::from_millis(2_000)?);
    control.set_replica_lag(&Region::new("us-east")?, Duration::from_secs(5));
    control.set_latency(&Region::new("ap-south")?, Duration::from_millis(40));
    sim.set_skew("ap-south", 300_000_000)?;
    for i in 0..rounds {
        let key = format!("acct:{}", i % 5);
        let current = client
            .read(&session, &key, ReadPolicy::Strong)
            .await?
            .version();
        let precondition = current.map_or(Precondition::IfAbsent, Precondition::IfVersion);
        if i % 7 == 3 {
            control.drop_write_responses(1);
        }
        if i % 4 == 1 {
            control.fail_writes_before_send(1);
        }
        client
            .write(
                &session,
                &key,
                format!("{i}").into(),
                precondition,
                &WriteOptions::verified(),
            )
            .await?;
        // A stale precondition: a conflict.
        let _ = client
            .write(
                &session,
                &key,
                "late".into(),
                precondition,
                &WriteOptions::default(),
            )
            .await;
        client.read(&session, &key, ReadPolicy::Session).await?;
        client.read(&client.session(), &key, bounded).await?;
        if i % 5 == 0 {
            client.refresh_health().await;
        }
    }
    Ok(())
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[allow(dead_code)] // also compiled into the scrape test, which has its own main
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let port = u16::try_from(arg("--port", 9184))?;
    let seconds = arg("--seconds", 60);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (client, control, sim) = instrumented(addr).await?;
    println!("serving metrics on http://{addr}/metrics for {seconds} s");
    let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while tokio::time::Instant::now() < until {
        workload(&client, &control, &sim, 20).await?;
    }
    Ok(())
}
