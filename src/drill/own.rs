//! A cluster of the team's own (staging) as a drill deployment: the
//! scenarios' workloads run against the endpoints its settings name, and
//! faults come from the team's own tools (Chaos Mesh, AWS FIS, `tc`,
//! stopping a node, pausing replication) while the drill runs; nothing here
//! injects any, and every scheduled fault window is refused rather than
//! silently not happening.
//!
//! The scenario's regions are mapped onto the cluster's
//! ([`OwnCluster::map_regions`]): its home region onto the cluster's home
//! (the primary's region, a global table's or instance's home), the others
//! onto the remaining regions in order. Each adapter builds the backends
//! from the service's own settings file (its credentials, its endpoints)
//! and gives them here.

use std::sync::Arc;
use std::time::Duration;

use super::deploy::{Deployment, FaultState};
use super::scenarios::Window;
use crate::backend::Backend;
use crate::clock::{Clock, SystemClock};
use crate::error::Error;

/// A cluster of the team's own; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct OwnCluster<B> {
    /// (scenario region, cluster region), the home first.
    map: Vec<(String, String)>,
    /// The backend of a client in each mapped region, in `map`'s order.
    backends: Vec<B>,
    prefix: String,
}

impl<B> OwnCluster<B> {
    /// Which cluster region plays each scenario region: `scenario` (the
    /// scenario's regions, its home first) onto `cluster` (the cluster's,
    /// its home first), in order. A cluster with fewer regions than the
    /// scenario needs is refused, naming both.
    pub fn map_regions(
        scenario: &[&str],
        cluster: &[String],
    ) -> Result<Vec<(String, String)>, Error> {
        if scenario.len() > cluster.len() {
            return Err(Error::InvalidInput(format!(
                "the scenario needs {} regions ({}); the cluster has {} ({})",
                scenario.len(),
                scenario.join(", "),
                cluster.len(),
                cluster.join(", ")
            )));
        }
        Ok(scenario
            .iter()
            .zip(cluster)
            .map(|(s, c)| ((*s).to_owned(), c.clone()))
            .collect())
    }

    /// The deployment for a scenario with `scenario` regions (its home
    /// first) on a cluster with `regions`, whose home is `home`: the
    /// scenario's home plays the cluster's, the others the rest in
    /// order ([`OwnCluster::map_regions`]), and `backend` makes a client's
    /// backend in each cluster region that plays one.
    pub async fn connect<F, Fut>(
        scenario: &[&str],
        home: &str,
        regions: &[String],
        key_prefix: &str,
        mut backend: F,
    ) -> Result<OwnCluster<B>, Error>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<B, Error>>,
    {
        let mut cluster = vec![home.to_owned()];
        cluster.extend(regions.iter().filter(|r| *r != home).cloned());
        let map = Self::map_regions(scenario, &cluster)?;
        let mut backends = Vec::with_capacity(map.len());
        for (_, region) in &map {
            backends.push(backend(region.clone()).await?);
        }
        OwnCluster::new(map, backends, key_prefix)
    }

    /// The deployment: `backends[i]` is a client's backend in the cluster
    /// region `map[i]` plays; every key and idempotency key of its run
    /// begins with `key_prefix` (so that runs sharing a table never meet).
    pub fn new(
        map: Vec<(String, String)>,
        backends: Vec<B>,
        key_prefix: &str,
    ) -> Result<OwnCluster<B>, Error> {
        if map.is_empty() || map.len() != backends.len() {
            return Err(Error::InvalidInput(format!(
                "{} mapped regions for {} backends",
                map.len(),
                backends.len()
            )));
        }
        Ok(OwnCluster {
            map,
            backends,
            prefix: key_prefix.to_owned(),
        })
    }

    /// Which cluster region plays each scenario region.
    pub fn mapping(&self) -> &[(String, String)] {
        &self.map
    }

    fn index(&self, region: &str) -> Result<usize, Error> {
        self.map
            .iter()
            .position(|(s, _)| s == region)
            .ok_or_else(|| {
                Error::InvalidInput(format!("the scenario region {region} is not mapped"))
            })
    }
}

impl<B: Backend + Clone + Send + Sync + 'static> Deployment for OwnCluster<B> {
    type Backend = B;

    fn regions(&self) -> Vec<String> {
        self.map.iter().map(|(s, _)| s.clone()).collect()
    }

    fn at(&self, region: &str) -> Result<B, Error> {
        Ok(self.backends[self.index(region)?].clone())
    }

    fn clock(&self, region: &str) -> Result<Arc<dyn Clock>, Error> {
        self.index(region)?;
        Ok(Arc::new(SystemClock))
    }

    async fn apply(&self, _from: &FaultState, _to: &FaultState) -> Vec<Error> {
        // The team's own tools inject the faults.
        Vec::new()
    }

    fn unsupported(&self, windows: &[Window]) -> Vec<String> {
        // Scheduled faults would silently not happen here.
        windows
            .iter()
            .map(|w| format!("{} (faults come from your own tools)", w.fault.label()))
            .collect()
    }

    fn home(&self) -> Option<String> {
        self.map.first().map(|(s, _)| s.clone())
    }

    fn key_prefix(&self) -> String {
        self.prefix.clone()
    }

    fn clock_offset(&self, region: &str) -> Option<i64> {
        self.index(region).ok()?;
        None
    }

    fn max_offset(&self) -> Duration {
        Duration::from_millis(500)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::{Fault, Window};

    #[test]
    fn regions_map_home_first_and_a_small_cluster_is_refused() {
        let cluster = vec!["us-east-1".to_owned(), "eu-west-1".to_owned()];
        let map = OwnCluster::<()>::map_regions(&["eu-west", "us-east"], &cluster).unwrap();
        assert_eq!(
            map,
            [
                ("eu-west".to_owned(), "us-east-1".to_owned()),
                ("us-east".to_owned(), "eu-west-1".to_owned())
            ]
        );
        let e = OwnCluster::<()>::map_regions(&["eu-west", "us-east", "ap-south"], &cluster)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("needs 3 regions") && e.contains("us-east-1, eu-west-1"),
            "{e}"
        );
        assert!(OwnCluster::new(map.clone(), vec![()], "p/").is_err());
        assert!(OwnCluster::<()>::new(Vec::new(), Vec::new(), "p/").is_err());
    }

    #[test]
    fn every_scheduled_fault_is_refused_and_keys_carry_the_prefix() {
        let sim = crate::sim::Sim::new(crate::sim::SimConfig::new(["eu-west"]).unwrap()).unwrap();
        let map = vec![("eu-west".to_owned(), "eu-west-1".to_owned())];
        let own = OwnCluster::new(map, vec![sim], "run-7/").unwrap();
        let windows = [Window {
            from: Duration::ZERO,
            until: Duration::from_secs(1),
            fault: Fault::Isolate("eu-west"),
        }];
        assert_eq!(
            own.unsupported(&windows),
            ["eu-west isolated (faults come from your own tools)"]
        );
        assert_eq!(own.key_prefix(), "run-7/");
        assert_eq!(own.home().as_deref(), Some("eu-west"));
        assert!(own.at("us-east").is_err());
        assert!(own.at("eu-west").is_ok());
    }
}
