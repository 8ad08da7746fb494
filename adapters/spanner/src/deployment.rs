//! The drills' scenarios on the Spanner emulator, behind quorate's fault
//! layer.
//!
//! The emulator is one server. [`SpannerDeployment`] places it in a run's
//! home region (where a Spanner instance's default leader would be) and
//! puts a fault proxy ([`ClientLinks`], on loopback) between every client
//! region and it. The runner ([`quorate::drill::run_deployed`]) steers the
//! proxies from a scenario's fault windows:
//!
//! | Fault | On the emulator |
//! |---|---|
//! | a region isolated, a cut between the home and another region | the proxies hold that region's requests and answers until healed: its clients reach nothing (the home isolated: every other region's clients) |
//! | a one-way cut from the home to a region | requests arrive and commit, their answers are held: lost commit answers |
//! | a one-way cut from a region to the home | requests are held; nothing arrives |
//! | latency between the home and a region | both directions of that region's link are delayed |
//! | clock skew of a region | the clock of the region's clients runs off by the skew ([`SpannerConfig::clock`]: what they measure a follower read's age by) |
//!
//! Spanner's own clocks are TrueTime's, not the application's to skew: a
//! region's skewed clock is its hosts'. A cut or latency between two
//! regions neither of which holds the emulator would touch no traffic;
//! replica lag and stalls, clock drift, crashes, pauses and lease moves
//! need servers of their own, which one emulator process does not have.
//! All of them are refused before a run starts
//! ([`Deployment::unsupported`]), by name.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use quorate::drill::links::{loopback, ClientLinks};
use quorate::drill::{refusals, Deployment, Fault, FaultState, OwnCluster, Window};
use quorate::{Clock, Error, Region, SkewedClock};

use crate::{SpannerBackend, SpannerConfig};

fn failed(what: impl std::fmt::Display) -> Error {
    Error::InvalidInput(what.to_string())
}

/// The Spanner emulator as a drill deployment; see the
/// [module docs](self). Cheap to clone: clones share the fault layer.
#[derive(Clone)]
pub struct SpannerDeployment {
    shared: Arc<Shared>,
    run: Option<Arc<Run>>,
}

struct Shared {
    /// `host:port` of the emulator.
    emulator: String,
    database: String,
    regions: Vec<String>,
    links: ClientLinks,
    /// Each region's hosts' clock, in the order of `regions`.
    clocks: Vec<Arc<SkewedClock>>,
}

/// One run's table and home.
struct Run {
    table: String,
    home: String,
    /// Each region's clients' backend.
    backends: HashMap<String, SpannerBackend>,
}

impl std::fmt::Debug for SpannerDeployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpannerDeployment")
            .field("emulator", &self.shared.emulator)
            .field("regions", &self.shared.regions)
            .field("table", &self.run.as_ref().map(|r| &r.table))
            .finish_non_exhaustive()
    }
}

impl SpannerDeployment {
    /// Starts the fault layer in front of the emulator at `emulator`
    /// (`host:port` on loopback, as `SPANNER_EMULATOR_HOST` names it),
    /// serving `database` (`projects/<p>/instances/<i>/databases/<d>`),
    /// with clients in `regions`. Tables come with
    /// [`SpannerDeployment::with_table`].
    pub async fn start(
        emulator: &str,
        database: &str,
        regions: &[&str],
    ) -> Result<SpannerDeployment, Error> {
        if regions.is_empty() {
            return Err(failed("a deployment needs a region"));
        }
        crate::sql::database_path(database)?;
        let mut names: Vec<String> = Vec::new();
        for r in regions {
            Region::new(r)?;
            if names.iter().any(|n| n == r) {
                return Err(failed(format_args!("region {r} is named twice")));
            }
            names.push((*r).to_owned());
        }
        let (host, port) = emulator
            .rsplit_once(':')
            .ok_or_else(|| failed(format_args!("{emulator:?} names no port")))?;
        let port = port
            .parse()
            .map_err(|_| failed(format_args!("no valid port in {emulator:?}")))?;
        let addr = loopback(host, port)?;
        let links = ClientLinks::start(&names, &vec![addr; names.len()])
            .await
            .map_err(failed)?;
        Ok(SpannerDeployment {
            shared: Arc::new(Shared {
                emulator: emulator.to_owned(),
                database: database.to_owned(),
                clocks: names.iter().map(|_| Arc::default()).collect(),
                regions: names,
                links,
            }),
            run: None,
        })
    }

    fn config(&self, table: &str, local: &str, emulator: String) -> Result<SpannerConfig, Error> {
        let regions: Vec<&str> = self.shared.regions.iter().map(String::as_str).collect();
        let mut config = SpannerConfig::new(&self.shared.database, &regions, local)?;
        config.table = table.to_owned();
        config.serialize_read_write = true;
        config.emulator_host = Some(emulator);
        Ok(config)
    }

    /// This deployment with its records in `table` (created if missing),
    /// the emulator standing in region `home` (a scenario's home).
    pub async fn with_table(&self, table: &str, home: &str) -> Result<SpannerDeployment, Error> {
        self.index(home)?;
        let direct = self.config(table, home, self.shared.emulator.clone())?;
        SpannerBackend::connect(direct)
            .await?
            .create_tables()
            .await?;
        // Every region's clock true again: a run begins unskewed.
        for clock in &self.shared.clocks {
            clock.set_offset_ms(0);
        }
        // Each region's clients reach the emulator through their link.
        let mut backends = HashMap::new();
        for region in &self.shared.regions {
            let proxy = self
                .shared
                .links
                .addr(region, home)
                .ok_or_else(|| failed(format_args!("no link from {region} to {home}")))?;
            let mut config = self.config(table, region, proxy.to_string())?;
            config.clock = self.shared.clocks[self.index(region)?].clone();
            backends.insert(region.clone(), SpannerBackend::connect(config).await?);
        }
        Ok(SpannerDeployment {
            shared: self.shared.clone(),
            run: Some(Arc::new(Run {
                table: table.to_owned(),
                home: home.to_owned(),
                backends,
            })),
        })
    }

    fn run(&self) -> Result<&Run, Error> {
        self.run
            .as_deref()
            .ok_or_else(|| failed("no table yet: use SpannerDeployment::with_table"))
    }

    fn index(&self, region: &str) -> Result<usize, Error> {
        self.shared
            .regions
            .iter()
            .position(|r| r == region)
            .ok_or_else(|| match Region::new(region) {
                Ok(r) => Error::Topology(quorate::TopologyError::UnknownRegion(r)),
                Err(e) => Error::Topology(e),
            })
    }
}

impl Deployment for SpannerDeployment {
    type Backend = SpannerBackend;

    fn regions(&self) -> Vec<String> {
        self.shared.regions.clone()
    }

    fn at(&self, region: &str) -> Result<SpannerBackend, Error> {
        self.index(region)?;
        self.run()?
            .backends
            .get(region)
            .cloned()
            .ok_or_else(|| failed(format_args!("no backend for {region}")))
    }

    fn clock(&self, region: &str) -> Result<Arc<dyn Clock>, Error> {
        Ok(self.shared.clocks[self.index(region)?].clone())
    }

    async fn apply(&self, _from: &FaultState, to: &FaultState) -> Vec<Error> {
        self.shared.links.steer(to);
        for (region, clock) in self.shared.regions.iter().zip(&self.shared.clocks) {
            clock.set_offset_ms(to.skew_ms.get(region).copied().unwrap_or(0));
        }
        Vec::new()
    }

    fn unsupported(&self, windows: &[Window]) -> Vec<String> {
        let home = self.run.as_ref().map(|r| r.home.as_str());
        let elsewhere = |a: &str, b: &str| home.is_some_and(|h| a != h && b != h);
        refusals(
            windows,
            |r| self.index(r).is_ok(),
            |fault| match *fault {
                Fault::Cut(a, b) | Fault::OneWay(a, b) | Fault::Latency(a, b, _)
                    if elsewhere(a, b) =>
                {
                    Some("a link between two regions the emulator is not in: no traffic crosses it")
                }
                Fault::Drift(..) => Some("drifting a region's clock"),
                Fault::Lag(..) | Fault::Stall(..) => {
                    Some("delaying a replica: the emulator has none of its own")
                }
                Fault::Crash(_) => Some("crashing a region: the emulator is one process"),
                Fault::Pause(_) => Some("pausing a region: the emulator is one process"),
                Fault::LeaseTo(_) => Some("moving the leader: the emulator has one"),
                _ => None,
            },
        )
    }

    fn home(&self) -> Option<String> {
        self.run.as_ref().map(|r| r.home.clone())
    }

    fn prevents(&self, scenario: &str) -> Option<String> {
        let why = match scenario {
            // The naive client's local reads are directed reads with a
            // staleness bound (`directed::bound`): on a real instance a
            // lagging replica of the region may serve them; the emulator
            // has one replica, always current.
            "isolation-latency" | "partial-partition-skew-250ms" => {
                "the emulator is one process holding the only replica, always current: a local read with a staleness bound is served at its newest timestamp, so it is never stale (on a real instance a lagging replica of the region could serve an older one; this drill cannot make one)"
            }
            "skew-isolate-conflicting-writes" => {
                "the emulator is one process holding the only replica, always current: every region's local read is served at its newest timestamp, so a user moving between regions never reads an older version than one read before (on a real instance a lagging replica could serve one; this drill cannot make one)"
            }
            "partition-global-tables" => {
                "every key has one leader that orders its writes, not a writer per region: a region cut off from it cannot commit, and a conditional write refused there cannot apply a transition twice"
            }
            "clock-skew-600ms" => {
                "commits and strong reads are timestamped by TrueTime, not by a region's clock, and a strong read sees every commit that completed before it began: the consumer's read after the producer's write sees it, whatever the skewed region's hosts' clocks say"
            }
            _ => return None,
        };
        Some(why.to_owned())
    }

    fn clock_offset(&self, region: &str) -> Option<i64> {
        let clock = &self.shared.clocks[self.index(region).ok()?];
        Some(clock.offset_ms() * 1_000_000)
    }

    fn max_offset(&self) -> Duration {
        // TrueTime's bound is what commit wait absorbs; the report's clock
        // panel needs a line. A skewed region's clock is its clients',
        // which orders nothing.
        Duration::from_millis(7)
    }
}

/// A Spanner instance of the team's own (staging) as a drill deployment
/// (see [`OwnCluster`]): the scenarios' workloads run against the database
/// the service's settings name, with its own credentials, while the
/// team's own tools inject faults.
pub type SpannerCluster = OwnCluster<SpannerBackend>;

/// The database `settings` describe, with `scenario_regions` (home first)
/// mapped onto its regions in the order the settings list them: the
/// scenario's home onto the first (list the default leader's region
/// first), the others onto the rest. The records go to the settings' table (created
/// if missing); every key and idempotency key the run writes begins with
/// `key_prefix`, so that runs sharing the table never meet.
pub async fn spanner_cluster(
    settings: &crate::settings::SpannerSettings,
    scenario_regions: &[&str],
    key_prefix: &str,
) -> Result<SpannerCluster, Error> {
    // Every field checked, as a service would.
    let config = SpannerConfig::from_settings(settings)?;
    let regions: Vec<String> = config
        .regions
        .iter()
        .map(|r| r.as_str().to_owned())
        .collect();
    // Checked before anything is created.
    OwnCluster::<SpannerBackend>::map_regions(scenario_regions, &regions)?;
    let home = regions.first().cloned().unwrap_or_default();
    SpannerBackend::connect(config)
        .await?
        .create_tables()
        .await?;
    OwnCluster::connect(scenario_regions, &home, &regions, key_prefix, |local| {
        let mut settings = settings.clone();
        settings.local = local;
        async move { SpannerBackend::connect(SpannerConfig::from_settings(&settings)?).await }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A region's skew is its clients' clock, set from the fault state at
    /// each boundary and reported as the region's offset; drift is
    /// refused by name.
    #[tokio::test]
    async fn a_region_skew_is_its_clients_clock() {
        let db = "projects/p/instances/i/databases/d";
        let deployment = SpannerDeployment::start("127.0.0.1:9010", db, &["eu-west", "ap-south"])
            .await
            .unwrap();
        let window = |fault| Window {
            from: Duration::ZERO,
            until: Duration::from_secs(1),
            fault,
        };
        let refused = deployment.unsupported(&[
            window(Fault::Skew("ap-south", 600)),
            window(Fault::Drift("ap-south", 100)),
        ]);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].contains("drifting"), "{refused:?}");
        let healthy = FaultState::default();
        let mut skewed = FaultState::default();
        skewed.skew_ms.insert("ap-south".to_owned(), 600);
        assert!(deployment.apply(&healthy, &skewed).await.is_empty());
        let ahead = |region: &str| {
            let clock = deployment.clock(region).unwrap();
            (clock.now_nanos() as i64 - quorate::SystemClock.now_nanos() as i64) / 1_000_000
        };
        assert!(
            (590..=610).contains(&ahead("ap-south")),
            "{}",
            ahead("ap-south")
        );
        assert!(ahead("eu-west").abs() <= 10);
        assert_eq!(deployment.clock_offset("ap-south"), Some(600_000_000));
        assert_eq!(deployment.clock_offset("eu-west"), Some(0));
        assert!(deployment.apply(&skewed, &healthy).await.is_empty());
        assert!(ahead("ap-south").abs() <= 10);
        assert_eq!(deployment.clock_offset("ap-south"), Some(0));
    }

    #[tokio::test]
    async fn only_loopback_emulators_are_taken() {
        let db = "projects/p/instances/i/databases/d";
        for (emulator, says) in [
            ("203.0.113.7:443", "loopback"),
            ("192.0.2.1:9010", "loopback"),
            ("127.0.0.1", "port"),
            ("127.0.0.1:x", "port"),
        ] {
            let e = SpannerDeployment::start(emulator, db, &["eu-west"])
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{emulator}: {e}");
        }
        let e = SpannerDeployment::start("127.0.0.1:9010", "orders", &["eu-west"])
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        let e = SpannerDeployment::start("127.0.0.1:9010", db, &["eu-west", "eu-west"])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = SpannerDeployment::start("127.0.0.1:9010", db, &[])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("a region"), "{e}");
    }
}
