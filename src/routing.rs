//! Region choice per request, from preference and live health.
//!
//! Nothing is sticky: every attempt picks again, so a region that failed is
//! left on the next attempt and is ejected for a while, and one that
//! recovers is used again as soon as its ejection ends.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::topology::{Region, Topology};

/// Routes attempts over a topology's regions.
#[derive(Debug)]
pub(crate) struct Router {
    regions: Vec<Region>,
    local: usize,
    ejection: Duration,
    ejected_until: Mutex<Vec<Option<Instant>>>,
}

/// A set of region indexes already tried by one operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tried(u128);

impl Tried {
    pub(crate) fn add(&mut self, region: usize) {
        if region < 128 {
            self.0 |= 1 << region;
        }
    }

    fn contains(self, region: usize) -> bool {
        region < 128 && self.0 & (1 << region) != 0
    }
}

impl Router {
    pub(crate) fn new(topology: &Topology, ejection: Duration) -> Router {
        let regions: Vec<Region> = topology.regions().cloned().collect();
        let local = topology.index_of(topology.local()).unwrap_or(0);
        let n = regions.len();
        Router {
            regions,
            local,
            ejection,
            ejected_until: Mutex::new(vec![None; n]),
        }
    }

    pub(crate) fn region(&self, index: usize) -> &Region {
        &self.regions[index]
    }

    pub(crate) fn local(&self) -> usize {
        self.local
    }

    pub(crate) fn index_of(&self, region: &Region) -> Option<usize> {
        self.regions.iter().position(|r| r == region)
    }

    /// The region for the next attempt: `preferred` if it is healthy and not
    /// yet tried, else the local region, else the others in topology order;
    /// an ejected region only when nothing else is left.
    pub(crate) fn pick(
        &self,
        preferred: usize,
        tried: Tried,
        avoid: impl Fn(usize) -> bool,
    ) -> usize {
        let now = Instant::now();
        let ejected = self.ejected_until.lock().unwrap_or_else(|e| e.into_inner());
        let healthy = |i: usize| ejected[i].is_none_or(|until| until <= now) && !avoid(i);
        let order = std::iter::once(preferred)
            .chain(std::iter::once(self.local))
            .chain(0..self.regions.len());
        let mut fallback = None;
        for i in order {
            if tried.contains(i) {
                continue;
            }
            if healthy(i) {
                return i;
            }
            fallback.get_or_insert(i);
        }
        fallback.unwrap_or(preferred)
    }

    /// Whether a region is not ejected.
    pub(crate) fn healthy(&self, region: usize) -> bool {
        let ejected = self.ejected_until.lock().unwrap_or_else(|e| e.into_inner());
        ejected[region].is_none_or(|until| until <= Instant::now())
    }

    /// Ejects a region after a failure; returns true when it was healthy.
    pub(crate) fn eject(&self, region: usize) -> bool {
        let now = Instant::now();
        let mut ejected = self.ejected_until.lock().unwrap_or_else(|e| e.into_inner());
        let was_healthy = ejected[region].is_none_or(|until| until <= now);
        ejected[region] = Some(now + self.ejection);
        was_healthy
    }

    /// Clears a region's ejection after a success.
    pub(crate) fn restore(&self, region: usize) {
        let mut ejected = self.ejected_until.lock().unwrap_or_else(|e| e.into_inner());
        if ejected[region].is_some() {
            ejected[region] = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn leaves_a_failed_region_and_comes_back() {
        let t = Topology::from_names(["a", "b", "c"], "b").unwrap();
        let r = Router::new(&t, Duration::from_secs(1));
        assert_eq!(r.pick(0, Tried::default(), |_| false), 0);
        let mut tried = Tried::default();
        tried.add(0);
        assert_eq!(r.pick(0, tried, |_| false), 1, "local next");
        assert!(r.eject(1));
        assert_eq!(
            r.pick(1, Tried::default(), |_| false),
            0,
            "ejected local skipped"
        );
        tried.add(2);
        assert_eq!(
            r.pick(0, tried, |_| false),
            1,
            "ejected region used when nothing else is left"
        );
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(
            r.pick(1, Tried::default(), |_| false),
            1,
            "ejection expires"
        );
        assert_eq!(
            r.pick(1, Tried::default(), |i| i == 1),
            0,
            "avoided regions are skipped"
        );
        r.eject(1);
        r.restore(1);
        assert_eq!(r.pick(1, Tried::default(), |_| false), 1);
    }
}
