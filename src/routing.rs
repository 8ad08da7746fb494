//! Region choice per request, from preference and live health.
//!
//! Nothing is sticky: every attempt picks again. Each region has a latency
//! estimate (EWMA of successful attempts) and a circuit breaker: a region that
//! cannot be reached opens its circuit at once, one that keeps failing opens
//! it after a few failures; an open circuit admits one trial request once its
//! open period has passed (half-open), and closes again on success. The
//! preferred region (the local one) goes first when its circuit admits
//! requests; the others follow by measured latency.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::shard::{self, Padded, SHARDS};
use crate::topology::{Region, Topology};

/// The state of a region's circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Circuit {
    /// Requests flow.
    Closed,
    /// Requests are not sent until the open period ends.
    Open,
    /// One trial request is allowed; its outcome closes or reopens the circuit.
    HalfOpen,
}

#[derive(Clone, Copy, Debug)]
enum Breaker {
    Closed,
    Open {
        until: Instant,
    },
    /// One trial is out; if its attempt is dropped before it reports (a
    /// losing hedge, a cancelled request), another is admitted once the
    /// trial has been out for the open period.
    HalfOpen {
        trial_since: Instant,
    },
}

/// What an attempt does; latencies are tracked per kind because a follower
/// read and a quorum write to the same region differ by an order of
/// magnitude.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Served by the region's own replica (and probes).
    FollowerRead = 0,
    /// Through the region's gateway to the leader.
    LeaderRead = 1,
    /// A write through the region's gateway.
    Write = 2,
}

/// Smoothed round-trip time and its mean deviation (Jacobson/Karels, as
/// TCP's retransmission timer).
#[derive(Clone, Copy, Debug, Default)]
struct Rtt {
    srtt: f64,
    rttvar: f64,
    known: bool,
}

/// The most doublings a timeout gets (64 × the estimate; the cap applies
/// anyway).
const MAX_BACKOFF: u8 = 6;

impl Rtt {
    fn sample(&mut self, nanos: f64) {
        if self.known {
            self.rttvar += 0.25 * ((self.srtt - nanos).abs() - self.rttvar);
            self.srtt += 0.125 * (nanos - self.srtt);
        } else {
            *self = Rtt {
                srtt: nanos,
                rttvar: nanos / 2.0,
                known: true,
            };
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Health {
    breaker: Breaker,
    consecutive_failures: u32,
    /// When the circuit last opened after being closed; cleared on success.
    down_since: Option<Instant>,
    replica_lag: Option<Duration>,
}

impl Health {
    /// Nothing for a success to reset.
    fn clean(&self) -> bool {
        matches!(self.breaker, Breaker::Closed)
            && self.consecutive_failures == 0
            && self.down_since.is_none()
    }
}

/// Per region, the latency estimates of each kind; padded, because a
/// shard's vector lives on the heap next to the other shards' vectors.
type Rtts = Vec<Padded<[Rtt; 3]>>;

/// Circuit-breaker settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BreakerConfig {
    /// How long an opened circuit stays open before a trial.
    pub(crate) open_for: Duration,
    /// Consecutive soft failures that open the circuit.
    pub(crate) failure_threshold: u32,
}

/// Routes attempts over a topology's regions.
#[derive(Debug)]
pub(crate) struct Router {
    regions: Vec<Region>,
    local: usize,
    config: BreakerConfig,
    health: Mutex<Vec<Health>>,
    /// Per region: its health is [`Health::clean`], so a success has only
    /// a latency to record. Written under the `health` lock.
    clean: Vec<AtomicBool>,
    /// Latency estimates, one set per thread shard: every successful
    /// attempt records one, and a single shared set would move between
    /// cores on every request. Each shard estimates the same latencies from
    /// the attempts its threads made.
    rtt: [Padded<Mutex<Rtts>>; SHARDS],
    /// Per region and kind, attempts timed out since one completed: each
    /// doubles the next timeout (Karn's backoff, RFC 6298 §5.5), so that
    /// latency that grew past the timeout is measured again instead of
    /// timing out for ever. Shared by every thread (a success anywhere
    /// resets it); written only when it changes.
    backoff: Vec<[AtomicU8; 3]>,
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

    pub(crate) fn with(mut self, region: usize) -> Tried {
        self.add(region);
        self
    }

    pub(crate) fn contains(self, region: usize) -> bool {
        region < 128 && self.0 & (1 << region) != 0
    }
}

impl Router {
    pub(crate) fn new(topology: &Topology, config: BreakerConfig) -> Router {
        let regions: Vec<Region> = topology.regions().cloned().collect();
        let local = topology.index_of(topology.local()).unwrap_or(0);
        let n = regions.len();
        Router {
            regions,
            local,
            config,
            health: Mutex::new(vec![
                Health {
                    breaker: Breaker::Closed,
                    consecutive_failures: 0,
                    down_since: None,
                    replica_lag: None,
                };
                n
            ]),
            clean: (0..n).map(|_| AtomicBool::new(true)).collect(),
            rtt: std::array::from_fn(|_| {
                Padded::new(Mutex::new(
                    (0..n).map(|_| Padded::new([Rtt::default(); 3])).collect(),
                ))
            }),
            backoff: (0..n)
                .map(|_| std::array::from_fn(|_| AtomicU8::new(0)))
                .collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Health>> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rtts(&self, shard: usize) -> std::sync::MutexGuard<'_, Rtts> {
        self.rtt[shard].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The estimate of `kind` in `region`: this thread's shard's if it has
    /// one, else the mean of the shards that do.
    fn rtt_of(&self, region: usize, kind: Kind) -> Rtt {
        let own = self.rtts(shard::current())[region][kind as usize];
        if own.known {
            return own;
        }
        let (mut sum, mut n) = (Rtt::default(), 0.0);
        for s in 0..SHARDS {
            let r = self.rtts(s)[region][kind as usize];
            if r.known {
                sum.srtt += r.srtt;
                sum.rttvar += r.rttvar;
                n += 1.0;
            }
        }
        if n > 0.0 {
            sum.srtt /= n;
            sum.rttvar /= n;
            sum.known = true;
        }
        sum
    }

    /// The smoothed latency for `kind`, or for any kind measured.
    fn latency(&self, region: usize, kind: Kind) -> Option<f64> {
        std::iter::once(kind)
            .chain([Kind::FollowerRead, Kind::LeaderRead, Kind::Write])
            .map(|k| self.rtt_of(region, k))
            .find(|r| r.known)
            .map(|r| r.srtt)
    }

    pub(crate) fn region(&self, index: usize) -> &Region {
        &self.regions[index]
    }

    pub(crate) fn local(&self) -> usize {
        self.local
    }

    pub(crate) fn len(&self) -> usize {
        self.regions.len()
    }

    pub(crate) fn index_of(&self, region: &Region) -> Option<usize> {
        self.regions.iter().position(|r| r == region)
    }

    /// The region for the next attempt (`avoid` runs under the router's lock
    /// and must not call back into it): `preferred` if its circuit admits a
    /// request and it is neither tried nor avoided, else the other admitted
    /// regions by measured latency (unmeasured last, then topology order);
    /// a region whose circuit is open only when nothing else is left.
    pub(crate) fn pick(
        &self,
        preferred: usize,
        kind: Kind,
        tried: Tried,
        avoid: impl Fn(usize) -> bool,
    ) -> usize {
        let now = Instant::now();
        let mut health = self.lock();
        let admits = |h: &Health| match h.breaker {
            Breaker::Closed => true,
            Breaker::Open { until } => until <= now,
            Breaker::HalfOpen { trial_since } => trial_since + self.config.open_for <= now,
        };
        let usable =
            |i: usize, health: &[Health]| !tried.contains(i) && !avoid(i) && admits(&health[i]);
        let choice = if preferred < health.len() && usable(preferred, &health) {
            Some(preferred)
        } else {
            (0..health.len())
                .filter(|&i| usable(i, &health))
                .min_by(|&a, &b| {
                    let la = self.latency(a, kind).unwrap_or(f64::INFINITY);
                    let lb = self.latency(b, kind).unwrap_or(f64::INFINITY);
                    la.total_cmp(&lb)
                        .then((a != self.local).cmp(&(b != self.local)))
                        .then(a.cmp(&b))
                })
        };
        match choice {
            Some(i) => {
                // An open circuit whose period has passed admits one trial.
                if matches!(
                    health[i].breaker,
                    Breaker::Open { .. } | Breaker::HalfOpen { .. }
                ) {
                    health[i].breaker = Breaker::HalfOpen { trial_since: now };
                }
                i
            }
            None => (0..health.len())
                .find(|&i| !tried.contains(i))
                .unwrap_or(preferred.min(health.len().saturating_sub(1))),
        }
    }

    /// Records a successful attempt and its latency; closes the circuit.
    pub(crate) fn success(&self, region: usize, kind: Kind, latency: Duration) {
        self.rtts(shard::current())[region][kind as usize].sample(latency.as_secs_f64() * 1e9);
        let backoff = &self.backoff[region][kind as usize];
        if backoff.load(Ordering::Relaxed) != 0 {
            backoff.store(0, Ordering::Relaxed);
        }
        // A failure racing with this success may be ordered either way.
        if !self.clean[region].load(Ordering::Acquire) {
            let mut health = self.lock();
            let h = &mut health[region];
            h.consecutive_failures = 0;
            h.down_since = None;
            h.breaker = Breaker::Closed;
            self.clean[region].store(true, Ordering::Release);
        }
    }

    /// Records a failed attempt. A `hard` failure (unreachable, timed out)
    /// opens the circuit at once; soft ones after the threshold. Returns
    /// true when the circuit opened from closed.
    pub(crate) fn failure(&self, region: usize, hard: bool) -> bool {
        let now = Instant::now();
        let mut health = self.lock();
        let h = &mut health[region];
        h.consecutive_failures = h.consecutive_failures.saturating_add(1);
        let was_closed = matches!(h.breaker, Breaker::Closed);
        let trial_failed = matches!(h.breaker, Breaker::HalfOpen { .. });
        if hard || trial_failed || h.consecutive_failures >= self.config.failure_threshold {
            h.breaker = Breaker::Open {
                until: now + self.config.open_for,
            };
            if was_closed {
                h.down_since.get_or_insert(now);
            }
        }
        self.clean[region].store(h.clean(), Ordering::Release);
        was_closed && matches!(h.breaker, Breaker::Open { .. })
    }

    /// Whether a region's circuit admits requests now.
    pub(crate) fn healthy(&self, region: usize) -> bool {
        let now = Instant::now();
        match self.lock()[region].breaker {
            Breaker::Closed | Breaker::HalfOpen { .. } => true,
            Breaker::Open { until } => until <= now,
        }
    }

    /// How long the region has been down (circuit opened and not closed
    /// since), if it is.
    pub(crate) fn down_for(&self, region: usize) -> Option<Duration> {
        self.lock()[region].down_since.map(|t| Instant::now() - t)
    }

    /// An attempt of `kind` in `region` timed out: the next one waits twice
    /// as long (until an attempt completes and is measured).
    pub(crate) fn timed_out(&self, region: usize, kind: Kind) {
        let _ = self.backoff[region][kind as usize].fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |b| (b < MAX_BACKOFF).then_some(b + 1),
        );
    }

    /// How long to wait for an attempt of `kind` in `region` before giving
    /// up on it: the smoothed latency plus four mean deviations, doubled
    /// for each attempt that timed out since the last measurement, within
    /// `[floor, cap]`; `cap` until the region has been measured.
    pub(crate) fn attempt_timeout(
        &self,
        region: usize,
        kind: Kind,
        floor: Duration,
        cap: Duration,
    ) -> Duration {
        let rtt = self.rtt_of(region, kind);
        if !rtt.known {
            return cap;
        }
        // At least three smoothed round trips: a steady but loaded region
        // has little variation and must not time out on its next hiccup.
        let backoff = self.backoff[region][kind as usize]
            .load(Ordering::Relaxed)
            .min(MAX_BACKOFF);
        let nanos =
            (rtt.srtt + 4.0 * rtt.rttvar).max(3.0 * rtt.srtt).max(0.0) * f64::from(1u32 << backoff);
        Duration::from_nanos(nanos.min(u64::MAX as f64) as u64).clamp(floor, cap.max(floor))
    }

    pub(crate) fn set_replica_lag(&self, region: usize, lag: Duration) {
        self.lock()[region].replica_lag = Some(lag);
    }

    /// The regions whose last reported replica lag exceeds `bound`.
    pub(crate) fn lagging_beyond(&self, bound: Duration) -> Tried {
        let mut out = Tried::default();
        for (i, h) in self.lock().iter().enumerate() {
            if h.replica_lag.is_some_and(|lag| lag > bound) {
                out.add(i);
            }
        }
        out
    }

    /// The circuit state, latency estimate and replica lag of a region.
    pub(crate) fn status(&self, region: usize) -> (Circuit, Option<Duration>, Option<Duration>) {
        let now = Instant::now();
        let h = self.lock()[region];
        let latency = self
            .latency(region, Kind::LeaderRead)
            .map(|n| Duration::from_nanos(n as u64));
        let circuit = match h.breaker {
            Breaker::Closed => Circuit::Closed,
            Breaker::Open { until } if until <= now => Circuit::HalfOpen,
            Breaker::Open { .. } => Circuit::Open,
            Breaker::HalfOpen { .. } => Circuit::HalfOpen,
        };
        (circuit, latency, h.replica_lag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let t = Topology::from_names(["a", "b", "c"], "b").unwrap();
        Router::new(
            &t,
            BreakerConfig {
                open_for: Duration::from_secs(1),
                failure_threshold: 3,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn leaves_a_failed_region_and_comes_back() {
        let r = router();
        assert_eq!(
            r.pick(1, Kind::LeaderRead, Tried::default(), |_| false),
            1,
            "local first"
        );
        assert!(r.failure(1, true), "a hard failure opens the circuit");
        assert_eq!(r.status(1).0, Circuit::Open);
        assert_ne!(
            r.pick(1, Kind::LeaderRead, Tried::default(), |_| false),
            1,
            "open circuit skipped"
        );
        let everything_else = Tried::default().with(0).with(2);
        assert_eq!(
            r.pick(1, Kind::LeaderRead, everything_else, |_| false),
            1,
            "used when nothing else is left"
        );
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(
            r.pick(1, Kind::LeaderRead, Tried::default(), |_| false),
            1,
            "half-open: one trial"
        );
        assert_eq!(r.status(1).0, Circuit::HalfOpen);
        assert_ne!(
            r.pick(1, Kind::LeaderRead, Tried::default(), |_| false),
            1,
            "only one trial at a time"
        );
        r.success(1, Kind::LeaderRead, Duration::from_millis(5));
        assert_eq!(r.status(1).0, Circuit::Closed);
        assert_eq!(r.pick(1, Kind::LeaderRead, Tried::default(), |_| false), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trial_that_never_reports_does_not_block_the_region() {
        let r = router();
        assert!(r.failure(1, true));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(
            r.pick(1, Kind::LeaderRead, Tried::default(), |_| false),
            1,
            "the trial"
        );
        // Its attempt is dropped (a losing hedge): no success, no failure.
        assert_ne!(r.pick(1, Kind::LeaderRead, Tried::default(), |_| false), 1);
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(
            r.pick(1, Kind::LeaderRead, Tried::default(), |_| false),
            1,
            "another trial once the first has been out for the open period"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_reopens_and_soft_failures_need_a_streak() {
        let r = router();
        assert!(!r.failure(0, false));
        assert!(!r.failure(0, false));
        assert!(r.healthy(0));
        assert!(r.failure(0, false), "third soft failure opens");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(r.pick(0, Kind::LeaderRead, Tried::default(), |_| false), 0);
        assert!(
            !r.failure(0, false),
            "a failed trial reopens (already counted as down)"
        );
        assert_eq!(r.status(0).0, Circuit::Open);
        assert!(r.down_for(0).unwrap() >= Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn others_are_ordered_by_latency() {
        let r = router();
        r.success(0, Kind::LeaderRead, Duration::from_millis(90));
        r.success(2, Kind::LeaderRead, Duration::from_millis(10));
        let not_local = Tried::default().with(1);
        assert_eq!(
            r.pick(1, Kind::LeaderRead, not_local, |_| false),
            2,
            "faster region first"
        );
        assert_eq!(
            r.pick(1, Kind::LeaderRead, not_local, |i| i == 2),
            0,
            "avoided regions skipped"
        );
        for _ in 0..30 {
            r.success(2, Kind::LeaderRead, Duration::from_millis(200));
        }
        assert_eq!(
            r.pick(1, Kind::LeaderRead, not_local, |_| false),
            0,
            "the estimate follows the region"
        );
        assert_eq!(
            r.pick(1, Kind::Write, not_local, |_| false),
            0,
            "unmeasured kinds use any measurement"
        );
    }

    #[test]
    fn a_timeout_backs_off_for_every_thread_until_one_completes() {
        let r = router();
        let (floor, cap) = (Duration::from_millis(10), Duration::from_secs(10));
        for _ in 0..50 {
            r.success(0, Kind::Write, Duration::from_millis(80));
        }
        let base = r.attempt_timeout(0, Kind::Write, floor, cap);
        r.timed_out(0, Kind::Write);
        r.timed_out(0, Kind::Write);
        assert_eq!(r.attempt_timeout(0, Kind::Write, floor, cap), base * 4);
        // Another thread (another shard of estimates) sees the backoff.
        let elsewhere = std::thread::scope(|s| {
            s.spawn(|| r.attempt_timeout(0, Kind::Write, floor, cap))
                .join()
                .unwrap()
        });
        assert!(elsewhere >= base * 4, "{elsewhere:?} < {:?}", base * 4);
        // An attempt that completes on another thread ends it for all.
        std::thread::scope(|s| {
            s.spawn(|| r.success(0, Kind::Write, Duration::from_millis(80)));
        });
        assert_eq!(r.attempt_timeout(0, Kind::Write, floor, cap), base);
        // Doubling stops at 64 times the estimate (and the cap applies).
        for _ in 0..20 {
            r.timed_out(0, Kind::Write);
        }
        assert_eq!(
            r.attempt_timeout(0, Kind::Write, floor, cap),
            cap.min(base * 64)
        );
    }

    #[test]
    fn attempt_timeouts_follow_latency_and_its_variation() {
        let r = router();
        let (floor, cap) = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(
            r.attempt_timeout(0, Kind::Write, floor, cap),
            cap,
            "unmeasured: the cap"
        );
        for _ in 0..50 {
            r.success(0, Kind::Write, Duration::from_millis(80));
        }
        let steady = r.attempt_timeout(0, Kind::Write, floor, cap);
        assert!(
            steady >= Duration::from_millis(239) && steady < Duration::from_millis(300),
            "three steady round trips: {steady:?}"
        );
        for ms in [20, 300, 40, 250, 60, 400] {
            r.success(0, Kind::Write, Duration::from_millis(ms));
        }
        let noisy = r.attempt_timeout(0, Kind::Write, floor, cap);
        assert!(
            noisy > Duration::from_millis(400),
            "variation widens the timeout: {noisy:?}"
        );
        for _ in 0..50 {
            r.success(1, Kind::FollowerRead, Duration::from_millis(2));
        }
        assert_eq!(
            r.attempt_timeout(1, Kind::FollowerRead, floor, cap),
            floor,
            "never below the floor"
        );
        assert_eq!(r.attempt_timeout(0, Kind::FollowerRead, floor, cap), cap);
    }

    #[test]
    fn latency_measured_on_other_threads_counts_until_this_one_measures() {
        let r = std::sync::Arc::new(router());
        let (floor, cap) = (Duration::from_millis(1), Duration::from_secs(5));
        assert_eq!(r.attempt_timeout(0, Kind::Write, floor, cap), cap);
        let other = std::sync::Arc::clone(&r);
        std::thread::spawn(move || {
            for _ in 0..20 {
                other.success(0, Kind::Write, Duration::from_millis(10));
            }
        })
        .join()
        .unwrap();
        // Measured elsewhere only: the other shards' estimate.
        let elsewhere = r.attempt_timeout(0, Kind::Write, floor, cap);
        assert!(
            elsewhere >= Duration::from_millis(30) && elsewhere < cap,
            "{elsewhere:?}"
        );
        // Measured here: this thread's own estimate.
        for _ in 0..50 {
            r.success(0, Kind::Write, Duration::from_millis(100));
        }
        let here = r.attempt_timeout(0, Kind::Write, floor, cap);
        assert!(here >= Duration::from_millis(250), "{here:?}");
    }

    #[test]
    fn a_success_closes_a_circuit_a_failure_opened() {
        let r = router();
        assert!(r.failure(1, true));
        assert!(!r.healthy(1));
        r.success(1, Kind::LeaderRead, Duration::from_millis(1));
        assert!(r.healthy(1));
        assert_eq!(r.status(1).0, Circuit::Closed);
        assert!(r.down_for(1).is_none());
        // And a later hard failure opens it again.
        assert!(r.failure(1, true));
        assert!(!r.healthy(1));
    }
}
