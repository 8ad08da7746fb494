//! Failover on the simulator (virtual time): the client's local region
//! becomes unreachable under a mixed workload of critical operations.
//!
//! `cargo bench --bench failover`
//!
//! Eight actors in the local region (us-east): six read critical records
//! (strong and session reads in turn), two read-modify-write them. Measures,
//! per client configuration: the time from the isolation to the first
//! successful operation that started after it (so had to go through another
//! region), the p99 latency of operations completing during the isolation,
//! and the operations that failed (all are critical, with deadlines of 2 s
//! for reads and 5 s for writes).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorate::chaos::Chaos;
use quorate::sim::{Sim, SimConfig};
use quorate::{Client, ClientConfig, Hedge, Precondition, ReadPolicy, Region, WriteOptions};
use tokio::time::{sleep, Instant};

const ISOLATE_AT: Duration = Duration::from_secs(5);
const ISOLATED_FOR: Duration = Duration::from_secs(10);
const RUN: Duration = Duration::from_secs(20);
const ACTORS: u64 = 8;

#[derive(Default)]
struct Outcomes {
    /// (started, finished, ok)
    ops: Vec<(Duration, Duration, bool)>,
}

async fn run(config: ClientConfig) -> Outcomes {
    let sim = Sim::new(SimConfig::new(["eu-west", "us-east", "ap-south"]).unwrap()).unwrap();
    let (backend, control) = Chaos::new(sim.at("us-east").unwrap());
    let client = Client::new(backend, config).unwrap();
    let start = Instant::now();
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for actor in 0..ACTORS {
        let client = client.clone();
        let outcomes = outcomes.clone();
        tasks.spawn(async move {
            let session = client.session();
            let mut n = 0u64;
            while start.elapsed() < RUN {
                n += 1;
                let key = format!("acct:{}", (actor + n) % 16);
                let began = start.elapsed();
                // Six readers (strong and session reads), two writers.
                let op = if actor < 6 { n % 2 } else { 2 };
                let ok = match op {
                    0 => client
                        .read(&session, &key, ReadPolicy::Strong)
                        .await
                        .is_ok(),
                    1 => client
                        .read(&session, &key, ReadPolicy::Session)
                        .await
                        .is_ok(),
                    _ => {
                        let current = client.read(&session, &key, ReadPolicy::Strong).await;
                        match current {
                            Ok(read) => {
                                let precondition = read
                                    .version()
                                    .map_or(Precondition::IfAbsent, Precondition::IfVersion);
                                match client
                                    .write(
                                        &session,
                                        &key,
                                        "v".into(),
                                        precondition,
                                        &WriteOptions::default(),
                                    )
                                    .await
                                {
                                    Ok(_) | Err(quorate::Error::Conflict { .. }) => true,
                                    Err(_) => false,
                                }
                            }
                            Err(_) => false,
                        }
                    }
                };
                outcomes
                    .lock()
                    .unwrap()
                    .ops
                    .push((began, start.elapsed(), ok));
                sleep(Duration::from_millis(20)).await;
            }
        });
    }
    let us = Region::new("us-east").unwrap();
    let isolation = tokio::spawn(async move {
        sleep(ISOLATE_AT).await;
        control.isolate(&us);
        sleep(ISOLATED_FOR).await;
        control.heal(&us);
    });
    while tasks.join_next().await.is_some() {}
    isolation.await.unwrap();
    Arc::try_unwrap(outcomes)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap()
}

fn report(name: &str, o: &Outcomes) {
    let end = ISOLATE_AT + ISOLATED_FOR;
    let reroute = o
        .ops
        .iter()
        .filter(|(began, _, ok)| *ok && *began >= ISOLATE_AT)
        .map(|(_, done, _)| *done - ISOLATE_AT)
        .min();
    let mut during: Vec<Duration> = o
        .ops
        .iter()
        .filter(|(_, done, ok)| *ok && *done >= ISOLATE_AT && *done < end)
        .map(|(began, done, _)| *done - *began)
        .collect();
    during.sort();
    let p99 = during
        .get(((during.len() as f64 - 1.0) * 0.99).round() as usize)
        .copied();
    let failed = o.ops.iter().filter(|(_, _, ok)| !ok).count();
    println!(
        "{name:<34} ops {:>5}  reroute {:>9}  p99 during isolation {:>9}  failed {failed}",
        o.ops.len(),
        reroute.map_or("never".into(), |d| format!(
            "{:.0} ms",
            d.as_secs_f64() * 1e3
        )),
        p99.map_or("-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3)),
    );
}

fn main() {
    let configurations = [
        ("default (no hedging)", ClientConfig::default()),
        (
            "hedged reads",
            ClientConfig {
                hedge: Some(Hedge::default()),
                ..ClientConfig::default()
            },
        ),
        (
            "fixed 1 s attempt timeout",
            ClientConfig {
                adaptive_timeouts: false,
                ..ClientConfig::default()
            },
        ),
    ];
    println!(
        "local region isolated at {:?} for {:?}; {ACTORS} actors; reads 2 s, writes 5 s deadlines",
        ISOLATE_AT, ISOLATED_FOR
    );
    for (name, config) in configurations {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let outcomes = runtime.block_on(run(ClientConfig {
            seed: Some(1),
            ..config
        }));
        report(name, &outcomes);
    }
}
