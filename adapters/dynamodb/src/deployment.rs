//! The drills' scenarios on DynamoDB Local: each region a database of its
//! own on one DynamoDB Local (it keeps one per AWS region), joined by the
//! [`Replicator`] the way global tables join regions (asynchronously,
//! last writer wins), with faults made by real mechanisms.
//!
//! [`DynamoDeployment`] puts a fault proxy ([`ClientLinks`], on loopback)
//! between every client region and every region's endpoint. The runner
//! ([`quorate::drill::run_deployed`]) steers it and the replicator from a
//! scenario's fault windows:
//!
//! | Fault | On DynamoDB Local |
//! |---|---|
//! | isolation, cut, one-way cut | the proxies hold the cut links' bytes until healed; the replicator holds the copies of each cut direction |
//! | latency | the proxies delay both directions of the client links between the two regions |
//! | replica lag | copies into the region wait that long |
//! | stalled replica | no copy reaches the region until it resumes |
//! | clock skew | the clock of the region's clients runs off by the skew: the clock their writes are stamped with (`written_at`, by which the replicator orders concurrent writes, last writer wins, where a real global table uses its own timestamps) and their staleness arithmetic reads ([`DynamoConfig::clock`]) |
//!
//! DynamoDB keeps its own clocks, and nothing of the application's sets
//! them: a region's skewed clock is its hosts'. Clock drift, crashes,
//! paused nodes and lease moves are refused before a run starts
//! ([`Deployment::unsupported`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials};
use quorate::drill::links::ClientLinks;
use quorate::drill::{refusals, Deployment, Fault, FaultState, OwnCluster, Window};
use quorate::{Clock, Error, Region, SkewedClock};

use crate::replicator::Replicator;
use crate::{DynamoBackend, DynamoConfig, Home, RegionClient};

fn failed(what: impl std::fmt::Display) -> Error {
    Error::InvalidInput(what.to_string())
}

/// An SDK client for `aws_region` at `endpoint`, without SDK retries
/// (quorate retries), with DynamoDB Local's static credentials.
fn sdk(endpoint: &str, aws_region: &str) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new(aws_region.to_owned()))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new("quorate", "quorate", None, None, "static"))
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
            .build(),
    )
}

fn streams(endpoint: &str, aws_region: &str) -> aws_sdk_dynamodbstreams::Client {
    use aws_sdk_dynamodbstreams::config;
    aws_sdk_dynamodbstreams::Client::from_conf(
        config::Builder::new()
            .behavior_version(config::BehaviorVersion::latest())
            .region(config::Region::new(aws_region.to_owned()))
            .endpoint_url(endpoint)
            .credentials_provider(config::Credentials::new(
                "quorate", "quorate", None, None, "static",
            ))
            .build(),
    )
}

/// DynamoDB Local's address, on loopback only.
fn loopback(endpoint: &str) -> Result<SocketAddr, Error> {
    let rest = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| failed(format_args!("{endpoint:?}: DynamoDB Local speaks http://")))?;
    let host_port = rest.split('/').next().unwrap_or(rest);
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or_else(|| failed(format_args!("{endpoint:?} names no port")))?;
    let port = port
        .parse()
        .map_err(|_| failed(format_args!("no valid port in {endpoint:?}")))?;
    quorate::drill::links::loopback(host, port)
}

/// DynamoDB Local as a drill deployment; see the [module docs](self).
/// Cheap to clone: clones share the fault layer and the replicator.
#[derive(Clone)]
pub struct DynamoDeployment {
    shared: Arc<Shared>,
    run: Option<Arc<Run>>,
}

struct Shared {
    endpoint: String,
    /// (quorate region, AWS region), the home region first.
    regions: Vec<(String, String)>,
    clients: ClientLinks,
    /// Each region's hosts' clock, in the order of `regions`.
    clocks: Vec<Arc<SkewedClock>>,
}

/// One run's tables and their replicator.
struct Run {
    table: String,
    /// Where every key lives.
    home: String,
    replicator: Replicator,
    backends: Mutex<HashMap<String, DynamoBackend>>,
}

impl std::fmt::Debug for DynamoDeployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDeployment")
            .field("regions", &self.shared.regions)
            .field("table", &self.run.as_ref().map(|r| &r.table))
            .finish_non_exhaustive()
    }
}

impl DynamoDeployment {
    /// Starts the fault layer in front of DynamoDB Local at `endpoint`
    /// (`http://127.0.0.1:PORT`), one region per `(quorate region, AWS
    /// region)` pair. Tables come with [`DynamoDeployment::with_table`].
    pub async fn start(
        endpoint: &str,
        regions: &[(&str, &str)],
    ) -> Result<DynamoDeployment, Error> {
        if regions.is_empty() {
            return Err(failed("a deployment needs a region"));
        }
        for (r, _) in regions {
            Region::new(r)?;
        }
        let addr = loopback(endpoint)?;
        let names: Vec<String> = regions.iter().map(|(r, _)| (*r).to_owned()).collect();
        let clients = ClientLinks::start(&names, &vec![addr; names.len()])
            .await
            .map_err(failed)?;
        Ok(DynamoDeployment {
            shared: Arc::new(Shared {
                endpoint: endpoint.to_owned(),
                regions: regions
                    .iter()
                    .map(|(r, a)| ((*r).to_owned(), (*a).to_owned()))
                    .collect(),
                clients,
                clocks: regions.iter().map(|_| Arc::default()).collect(),
            }),
            run: None,
        })
    }

    fn config(
        &self,
        table: &str,
        home: &str,
        local: &str,
        endpoint_of: impl Fn(&str) -> String,
    ) -> Result<DynamoConfig, Error> {
        let regions = self
            .shared
            .regions
            .iter()
            .map(|(r, aws)| {
                Ok(RegionClient {
                    region: Region::new(r)?,
                    client: sdk(&endpoint_of(r), aws),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let mut config = DynamoConfig::new("quorate-drill", table, regions, local)?;
        config.home = Home::Region(Region::new(home)?);
        Ok(config)
    }

    /// This deployment with its records in `table` (created in every
    /// region if missing), every key homed in region `home` (a
    /// scenario's home, where its writes are coordinated), replicated
    /// with `lag` by a replicator of its own, which stops when the last
    /// clone of the result is dropped.
    pub async fn with_table(
        &self,
        table: &str,
        home: &str,
        lag: Duration,
    ) -> Result<DynamoDeployment, Error> {
        self.index(home)?;
        let direct = self.config(table, home, home, |_| self.shared.endpoint.clone())?;
        let backend = DynamoBackend::new(direct)?;
        backend.create_tables().await?;
        let mut builder = Replicator::builder().lag(lag);
        for (r, aws) in &self.shared.regions {
            builder = builder.region_clients(
                Region::new(r)?,
                sdk(&self.shared.endpoint, aws),
                streams(&self.shared.endpoint, aws),
            );
        }
        let replicator = builder.tables_of(&backend).start().await?;
        // Every region's clock true again: a run begins unskewed.
        for clock in &self.shared.clocks {
            clock.set_offset_ms(0);
        }
        Ok(DynamoDeployment {
            shared: self.shared.clone(),
            run: Some(Arc::new(Run {
                table: table.to_owned(),
                home: home.to_owned(),
                replicator,
                backends: Mutex::new(HashMap::new()),
            })),
        })
    }

    fn run(&self) -> Result<&Run, Error> {
        self.run
            .as_deref()
            .ok_or_else(|| failed("no table yet: use DynamoDeployment::with_table"))
    }

    fn index(&self, region: &str) -> Result<usize, Error> {
        self.shared
            .regions
            .iter()
            .position(|(r, _)| r == region)
            .ok_or_else(|| match Region::new(region) {
                Ok(r) => Error::Topology(quorate::TopologyError::UnknownRegion(r)),
                Err(e) => Error::Topology(e),
            })
    }

    /// The replicator of this deployment's table.
    pub fn replicator(&self) -> Result<&Replicator, Error> {
        Ok(&self.run()?.replicator)
    }
}

impl Deployment for DynamoDeployment {
    type Backend = DynamoBackend;

    const MULTI_WRITER: bool = true;

    fn regions(&self) -> Vec<String> {
        self.shared.regions.iter().map(|(r, _)| r.clone()).collect()
    }

    fn at(&self, region: &str) -> Result<DynamoBackend, Error> {
        let i = self.index(region)?;
        let run = self.run()?;
        let mut backends = run.backends.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = backends.get(region) {
            return Ok(b.clone());
        }
        let clients = &self.shared.clients;
        let mut config = self.config(&run.table, &run.home, region, |to| {
            clients
                .addr(region, to)
                .map_or_else(String::new, |a| format!("http://{a}"))
        })?;
        config.clock = self.shared.clocks[i].clone();
        let backend = DynamoBackend::new(config)?;
        backends.insert(region.to_owned(), backend.clone());
        Ok(backend)
    }

    fn clock(&self, region: &str) -> Result<Arc<dyn Clock>, Error> {
        Ok(self.shared.clocks[self.index(region)?].clone())
    }

    async fn apply(&self, _from: &FaultState, to: &FaultState) -> Vec<Error> {
        self.shared.clients.steer(to);
        for ((r, _), clock) in self.shared.regions.iter().zip(&self.shared.clocks) {
            let skew = to.skew_ms.get(r).copied().unwrap_or(0);
            clock.set_offset_ms(skew);
        }
        let Ok(run) = self.run() else {
            return vec![failed("no table yet")];
        };
        let mut errors = Vec::new();
        let regions = self.regions();
        for a in &regions {
            let ra = match Region::new(a) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(e.into());
                    continue;
                }
            };
            for b in regions.iter().filter(|b| *b != a) {
                let Ok(rb) = Region::new(b) else { continue };
                // A stalled region receives nothing, as a cut link would.
                let held = to.is_cut(a, b) || to.stalled.contains(b);
                let r = if held {
                    run.replicator.pause_link(&ra, &rb)
                } else {
                    run.replicator.resume_link(&ra, &rb)
                };
                if let Err(e) = r {
                    errors.push(e);
                }
            }
            let lag = Duration::from_millis(to.lag_ms.get(a).copied().unwrap_or(0));
            if let Err(e) = run.replicator.set_lag_into(&ra, lag) {
                errors.push(e);
            }
        }
        errors
    }

    fn unsupported(&self, windows: &[Window]) -> Vec<String> {
        let known = |r: &str| self.index(r).is_ok();
        refusals(windows, known, |fault| match fault {
            Fault::Drift(..) => Some("drifting a region's clock"),
            Fault::Crash(_) => Some("crashing a region"),
            Fault::Pause(_) => Some("pausing a region"),
            Fault::LeaseTo(_) => Some("moving a lease (global tables have none)"),
            _ => None,
        })
    }

    fn home(&self) -> Option<String> {
        self.run.as_ref().map(|r| r.home.clone())
    }

    fn clock_offset(&self, region: &str) -> Option<i64> {
        let clock = &self.shared.clocks[self.index(region).ok()?];
        Some(clock.offset_ms() * 1_000_000)
    }

    fn max_offset(&self) -> Duration {
        Duration::from_millis(500)
    }
}

/// A global table of the team's own (staging) as a drill deployment (see
/// [`OwnCluster`]): the scenarios' workloads run against the table and
/// regions the service's settings name, with the service's own AWS
/// credentials (AWS's chain, each region's profile), while the team's own
/// tools inject faults (AWS FIS pausing replication, a network policy).
pub type DynamoCluster = OwnCluster<DynamoBackend>;

/// The global table `settings` describe, with `scenario_regions` (home
/// first) mapped onto its regions: the scenario's home onto the table's
/// `home` region (the first region when none is set), the others onto the
/// rest in name order. The table must exist (quorate creates no global
/// table); every key and idempotency key the run writes begins with
/// `key_prefix`, so that runs sharing the table never meet. Homes hashed
/// over the regions are refused: the scenarios place their services
/// around one home.
pub async fn dynamo_cluster(
    settings: &crate::settings::DynamoSettings,
    scenario_regions: &[&str],
    key_prefix: &str,
) -> Result<DynamoCluster, Error> {
    // Every field checked, as a service would.
    DynamoConfig::from_settings(settings).await?;
    let home = match settings.home.as_deref() {
        Some("hashed") => {
            return Err(failed(
                "the drill's scenarios place their services around one home region; set [dynamodb] home to a region for the drill (or QUORATE__DYNAMODB__HOME)",
            ))
        }
        Some(r) => r.to_owned(),
        None => settings
            .regions
            .keys()
            .next()
            .cloned()
            .ok_or_else(|| failed("the table's settings name no region"))?,
    };
    let regions: Vec<String> = settings.regions.keys().cloned().collect();
    OwnCluster::connect(scenario_regions, &home, &regions, key_prefix, |local| {
        let mut settings = settings.clone();
        settings.local = local;
        settings.home = Some(home.clone());
        async move { DynamoBackend::new(DynamoConfig::from_settings(&settings).await?) }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What DynamoDB Local cannot be made to do is refused by name; a
    /// region's clock skew is not among it.
    #[tokio::test]
    async fn faults_without_a_mechanism_are_refused_by_name() {
        let deployment = DynamoDeployment::start(
            "http://127.0.0.1:9",
            &[("eu-west", "eu-west-1"), ("us-east", "us-east-1")],
        )
        .await
        .unwrap();
        let window = |fault| Window {
            from: Duration::ZERO,
            until: Duration::from_secs(1),
            fault,
        };
        let refused = deployment.unsupported(&[
            window(Fault::Skew("us-east", 600)),
            window(Fault::Drift("us-east", 100)),
            window(Fault::Crash("eu-west")),
            window(Fault::Cut("eu-west", "ap-south")),
        ]);
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(
            refused[0].contains("drifting a region's clock"),
            "{refused:?}"
        );
        assert!(refused[1].contains("crashing a region"), "{refused:?}");
        assert!(refused[2].contains("no region ap-south"), "{refused:?}");
    }

    #[test]
    fn only_loopback_endpoints_are_taken() {
        assert_eq!(loopback("http://127.0.0.1:8000").unwrap().port(), 8000);
        assert!(loopback("https://dynamodb.eu-west-1.amazonaws.com").is_err());
        assert!(matches!(
            loopback("http://192.0.2.1:8000"),
            Err(Error::InvalidInput(m)) if m.contains("loopback")
        ));
    }
}
