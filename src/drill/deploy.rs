//! What a drill runs on: the embedded simulator, or real servers behind a
//! fault layer. The runner composes the scenario's fault windows into the
//! state that should hold at each boundary ([`FaultState`]) and hands it to
//! the deployment, which brings its own mechanism there: the simulator sets
//! its model's links and clocks, a real deployment steers its fault proxies,
//! clock offsets and replay delays.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::scenarios::{Fault, Window};
use crate::backend::Backend;
use crate::clock::Clock;
use crate::error::Error;
use crate::sim::Sim;

/// Where a drill's clients and servers live, and how faults reach them.
///
/// The runner calls [`Deployment::at`] once per client and region, and
/// [`Deployment::apply`] at every boundary of the scenario's fault windows
/// with the state before and after it. Faults a deployment cannot produce
/// are left out of the scenarios it runs (see
/// [`Deployment::unsupported`]), never silently ignored.
pub trait Deployment: Clone + Send + Sync + 'static {
    /// The backend a client uses.
    type Backend: Backend + Clone + Send + Sync + 'static;

    /// Whether the database takes each key's writes in every region and
    /// reconciles them later (a global table), rather than ordering them
    /// in one place. The nemesis then draws only schedules for such
    /// tables.
    const MULTI_WRITER: bool = false;

    /// The regions, in order.
    fn regions(&self) -> Vec<String>;

    /// The backend as a client in `region` sees it: `region` is its local
    /// region, and it reaches every server through that region's links.
    fn at(&self, region: &str) -> Result<Self::Backend, Error>;

    /// The wall clock of a client in `region`.
    fn clock(&self, region: &str) -> Result<Arc<dyn Clock>, Error>;

    /// Brings the faults in force from `from` to `to`. Errors are returned
    /// (the runner logs them and goes on: the history shows what happened).
    fn apply(&self, from: &FaultState, to: &FaultState) -> impl Future<Output = Vec<Error>> + Send;

    /// The fault kinds of `windows` this deployment cannot produce, named
    /// (an empty list: it produces all of them).
    fn unsupported(&self, windows: &[Window]) -> Vec<String> {
        let _ = windows;
        Vec::new()
    }

    /// The region where the deployment coordinates every key's writes
    /// (the primary's, a global table's home), if it has one: the runner
    /// refuses a scenario whose home differs, since the scenario's
    /// services are placed by it.
    fn home(&self) -> Option<String> {
        None
    }

    /// Why the database itself prevents the anomaly scenario `scenario` is
    /// about, if it does (`None`: the naive run must expose it). A naive
    /// run that shows the anomaly anyway fails: the claim is tested, not
    /// taken.
    fn prevents(&self, scenario: &str) -> Option<String> {
        let _ = scenario;
        None
    }

    /// What every key and idempotency key a run writes begins with: a
    /// deployment whose runs share a table (a cluster of the team's own)
    /// gives each run a prefix of its own, so that no run reads another's
    /// records or resolves a retry through another's idempotency record.
    /// The history records the keys with it.
    fn key_prefix(&self) -> String {
        String::new()
    }

    /// A region's clock offset from true time in nanoseconds, if known.
    fn clock_offset(&self, region: &str) -> Option<i64>;

    /// The clock offset the database tolerates.
    fn max_offset(&self) -> Duration;
}

/// What a deployment of the regions `known` accepts cannot make of
/// `windows`, for [`Deployment::unsupported`]: each window `why` gives a
/// reason for, then each naming a region the deployment does not have, as
/// `"<fault> (<why>)"`.
///
/// ```
/// use std::time::Duration;
/// use quorate::drill::{refusals, Fault, Window};
///
/// let window = |fault| Window { from: Duration::ZERO, until: Duration::from_secs(1), fault };
/// let refused = refusals(
///     &[window(Fault::Drift("eu-west", 2000)), window(Fault::Isolate("ap-south")), window(Fault::Isolate("eu-west"))],
///     |r| r == "eu-west",
///     |fault| matches!(fault, Fault::Drift(..)).then_some("clock drift"),
/// );
/// assert_eq!(refused, ["eu-west clock drifts +2 ms/s (clock drift)", "ap-south isolated (no region ap-south)"]);
/// ```
pub fn refusals<'a>(
    windows: &[Window],
    known: impl Fn(&str) -> bool,
    why: impl Fn(&Fault) -> Option<&'a str>,
) -> Vec<String> {
    windows
        .iter()
        .filter_map(|w| {
            let why = why(&w.fault).map(str::to_owned).or_else(|| {
                let unknown = w.fault.regions().into_iter().find(|r| !known(r))?;
                Some(format!("no region {unknown}"))
            })?;
            Some(format!("{} ({why})", w.fault.label()))
        })
        .collect()
}

/// The faults in force at one moment, composed from every window that
/// covers it: a link stays cut while any window cuts it, skews and
/// latencies add up, a replica lags by the largest lag that covers it, a
/// replica stays stalled and a node down or paused while any window stalls,
/// crashes or pauses it, drift rates add up, and the lease preference is
/// the newest lease window's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultState {
    /// Regions whose node is down.
    pub crashed: BTreeSet<String>,
    /// Regions whose replica applies nothing.
    pub stalled: BTreeSet<String>,
    /// Regions whose node is paused.
    pub paused: BTreeSet<String>,
    /// Where the lease preference points (`None`: each range's own).
    pub lease_to: Option<String>,
    /// Links cut, each one way: (from, to).
    pub cut: BTreeSet<(String, String)>,
    /// Clock skew per region, in milliseconds (positive: ahead).
    pub skew_ms: BTreeMap<String, i64>,
    /// Clock drift per region, in parts per million.
    pub drift_ppm: BTreeMap<String, i64>,
    /// Extra replication lag per region, in milliseconds.
    pub lag_ms: BTreeMap<String, u64>,
    /// Extra one-way latency per pair of regions (ordered by name), in
    /// milliseconds.
    pub latency_ms: BTreeMap<(String, String), u64>,
}

impl FaultState {
    /// The state `windows` put in force at `at` (from the start of the
    /// run), among `regions`; `home` is the lease preference outside lease
    /// windows.
    pub fn at(windows: &[Window], at: Duration, regions: &[String], home: &str) -> FaultState {
        let mut in_force: Vec<&Window> = windows
            .iter()
            .filter(|w| w.from <= at && at < w.until)
            .collect();
        in_force.sort_by_key(|w| w.from);
        let mut state = FaultState::default();
        for w in in_force {
            match w.fault {
                Fault::Isolate(r) => {
                    for o in regions.iter().filter(|o| o.as_str() != r) {
                        state.cut.insert((r.to_owned(), o.clone()));
                        state.cut.insert((o.clone(), r.to_owned()));
                    }
                }
                Fault::Cut(a, b) => {
                    state.cut.insert((a.to_owned(), b.to_owned()));
                    state.cut.insert((b.to_owned(), a.to_owned()));
                }
                Fault::OneWay(a, b) => {
                    state.cut.insert((a.to_owned(), b.to_owned()));
                }
                Fault::Skew(r, ms) => *state.skew_ms.entry(r.to_owned()).or_default() += ms,
                Fault::Latency(a, b, ms) => {
                    let pair = if a <= b { (a, b) } else { (b, a) };
                    *state
                        .latency_ms
                        .entry((pair.0.to_owned(), pair.1.to_owned()))
                        .or_default() += ms;
                }
                Fault::Lag(r, ms) => {
                    let l = state.lag_ms.entry(r.to_owned()).or_default();
                    *l = (*l).max(ms);
                }
                Fault::Crash(r) => {
                    state.crashed.insert(r.to_owned());
                }
                Fault::Stall(r) => {
                    state.stalled.insert(r.to_owned());
                }
                Fault::Pause(r) => {
                    state.paused.insert(r.to_owned());
                }
                Fault::Drift(r, ppm) => *state.drift_ppm.entry(r.to_owned()).or_default() += ppm,
                Fault::LeaseTo(r) => state.lease_to = Some(r.to_owned()),
            }
        }
        if state.lease_to.as_deref() == Some(home) {
            state.lease_to = None;
        }
        state
    }

    /// Whether no fault is in force.
    pub fn is_clear(&self) -> bool {
        *self == FaultState::default()
    }

    /// The extra one-way latency between `a` and `b`.
    pub fn latency(&self, a: &str, b: &str) -> Duration {
        let pair = if a <= b { (a, b) } else { (b, a) };
        let ms = self
            .latency_ms
            .get(&(pair.0.to_owned(), pair.1.to_owned()))
            .copied()
            .unwrap_or(0);
        Duration::from_millis(ms)
    }

    /// Whether the link from `from` to `to` is cut.
    pub fn is_cut(&self, from: &str, to: &str) -> bool {
        self.cut.contains(&(from.to_owned(), to.to_owned()))
    }

    /// Whether `region`'s node is down or paused: nothing it is sent is
    /// answered until it is back.
    pub fn is_down(&self, region: &str) -> bool {
        self.crashed.contains(region) || self.paused.contains(region)
    }
}

impl Deployment for Sim {
    type Backend = Sim;

    fn regions(&self) -> Vec<String> {
        self.config()
            .regions
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect()
    }

    fn at(&self, region: &str) -> Result<Sim, Error> {
        Sim::at(self, region)
    }

    fn clock(&self, region: &str) -> Result<Arc<dyn Clock>, Error> {
        Ok(Arc::new(Sim::clock(self, region)?))
    }

    fn apply(&self, from: &FaultState, to: &FaultState) -> impl Future<Output = Vec<Error>> + Send {
        let results = self.apply_now(from, to);
        async move { results.into_iter().filter_map(Result::err).collect() }
    }

    fn home(&self) -> Option<String> {
        Some(self.config().home.as_str().to_owned())
    }

    fn clock_offset(&self, region: &str) -> Option<i64> {
        Sim::clock_offset(self, region).ok()
    }

    fn max_offset(&self) -> Duration {
        self.config().max_offset
    }
}

impl Sim {
    fn apply_now(&self, from: &FaultState, to: &FaultState) -> Vec<Result<(), Error>> {
        let mut results = Vec::new();
        for r in to.crashed.difference(&from.crashed) {
            results.push(self.crash(r));
        }
        for r in from.crashed.difference(&to.crashed) {
            results.push(self.restart(r));
        }
        for r in to.stalled.difference(&from.stalled) {
            results.push(self.stall_replica(r));
        }
        for r in from.stalled.difference(&to.stalled) {
            results.push(self.resume_replica(r));
        }
        for r in to.paused.difference(&from.paused) {
            results.push(self.pause(r));
        }
        for r in from.paused.difference(&to.paused) {
            results.push(self.resume(r));
        }
        if to.lease_to != from.lease_to {
            match &to.lease_to {
                // The window ended: each range's own preference again.
                None => self.default_lease_preferences(),
                Some(r) => results.push(self.prefer_lease(r)),
            }
        }
        for (a, b) in to.cut.difference(&from.cut) {
            results.push(self.cut_one_way(a, b));
        }
        for (a, b) in from.cut.difference(&to.cut) {
            results.push(self.heal_one_way(a, b));
        }
        let regions = Deployment::regions(self);
        let default_lag = self.config().replication_lag;
        for r in &regions {
            let ms = to.skew_ms.get(r).copied().unwrap_or(0);
            let ppm = to.drift_ppm.get(r).copied().unwrap_or(0);
            let was_ms = from.skew_ms.get(r).copied().unwrap_or(0);
            let was_ppm = from.drift_ppm.get(r).copied().unwrap_or(0);
            // A step when the skews change, or when a drift ends (NTP
            // steps the clock back): either corrects what it drifted.
            if ms != was_ms || (was_ppm != 0 && ppm == 0) {
                results.push(self.set_skew(r, ms * 1_000_000));
            }
            if ppm != was_ppm {
                results.push(self.set_drift(r, ppm));
            }
            let stall = to.lag_ms.get(r).map(|&ms| Duration::from_millis(ms));
            results
                .push(self.set_replication_lag(r, stall.unwrap_or(default_lag).max(default_lag)));
        }
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                results.push(self.set_link_latency(a, b, to.latency(a, b)));
            }
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(from: u64, until: u64, fault: Fault) -> Window {
        Window {
            from: Duration::from_secs(from),
            until: Duration::from_secs(until),
            fault,
        }
    }

    #[test]
    fn overlapping_windows_compose() {
        let regions: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let windows = [
            w(0, 10, Fault::Latency("b", "a", 50)),
            w(2, 6, Fault::Latency("a", "b", 20)),
            w(1, 5, Fault::Isolate("c")),
            w(3, 4, Fault::Cut("a", "c")),
            w(0, 9, Fault::Skew("a", 300)),
            w(2, 9, Fault::Skew("a", -100)),
            w(0, 9, Fault::Lag("b", 100)),
            w(1, 9, Fault::Lag("b", 40)),
            w(2, 3, Fault::LeaseTo("b")),
            w(2, 8, Fault::LeaseTo("a")),
        ];
        let at = |s: u64| FaultState::at(&windows, Duration::from_secs(s), &regions, "a");
        let s = at(3);
        assert_eq!(s.latency("a", "b"), Duration::from_millis(70));
        assert_eq!(s.latency("a", "c"), Duration::ZERO);
        assert!(s.is_cut("c", "a") && s.is_cut("a", "c") && s.is_cut("b", "c"));
        assert!(!s.is_cut("a", "b"));
        assert_eq!(s.skew_ms["a"], 200);
        assert_eq!(s.lag_ms["b"], 100);
        // The newest lease window wins; one pointing home is no preference.
        assert_eq!(s.lease_to, None);
        // The cut of a <-> c outlives the isolation's end only while its
        // own window lasts; nothing is left once every window ended.
        assert!(!at(5).is_cut("c", "b"));
        assert!(at(10).is_clear());
        assert!(at(10 + 1).is_clear());
    }
}
