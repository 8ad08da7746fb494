//! Clocks: an injectable wall clock and NTP-style offset estimates.

use std::fmt::Debug;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A wall clock in nanoseconds since the Unix epoch.
///
/// Injectable so that drills run on virtual time and tests can skew it.
pub trait Clock: Send + Sync + Debug + 'static {
    /// Now, in nanoseconds since the Unix epoch.
    fn now_nanos(&self) -> u64;
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_nanos(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// One NTP-style estimate of a server's clock offset against ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetSample {
    /// Server clock minus local clock, in nanoseconds (positive: the server
    /// is ahead), taken at the midpoint of the round trip.
    pub offset_nanos: i64,
    /// The estimate's error bound: half the round trip.
    pub error: Duration,
    /// The round trip.
    pub rtt: Duration,
}

impl OffsetSample {
    /// From the local send time, the server's time, and the local receive
    /// time (all nanoseconds since the epoch).
    pub fn new(sent: u64, server: u64, received: u64) -> OffsetSample {
        let rtt = received.saturating_sub(sent);
        let midpoint = i128::from(sent) + i128::from(rtt / 2);
        let offset = (i128::from(server) - midpoint)
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        OffsetSample {
            offset_nanos: offset,
            error: Duration::from_nanos(rtt / 2),
            rtt: Duration::from_nanos(rtt),
        }
    }

    /// The largest offset consistent with this sample: |offset| + error.
    pub fn max_abs_offset(&self) -> Duration {
        Duration::from_nanos(self.offset_nanos.unsigned_abs()) + self.error
    }
}

/// Per-region clock offsets, estimated from probes and smoothed, and the
/// rule that excludes a region whose clock strays from the others.
///
/// Offsets are measured against this process's clock, which may itself be
/// wrong; a region's *deviation* is therefore its distance from the median
/// offset of the regions, plus the estimate's error. Only fresh evidence
/// counts: a sample older than the guard's time to live, or of a region
/// whose last probe failed, is unknown rather than "last seen".
///
/// The verdict is CockroachDB's own rule for its nodes: a region is
/// excluded when its clock is farther than the limit from more than half
/// of the other regions with fresh samples (each estimate's error counted
/// against it), and trusted otherwise. Two regions that disagree, with the
/// rest unknown, are therefore both excluded: nothing tells which one is
/// right (this process's clock is no independent witness, it usually
/// follows its own region's). A verdict needs fresh samples from a
/// majority of the regions; with fewer, every region keeps its standing —
/// a clock that went wrong is not trusted again because the evidence
/// against it aged, nor because the regions that disagreed with it became
/// unreachable.
#[derive(Debug)]
pub(crate) struct ClockGuard {
    state: std::sync::Mutex<State>,
    /// Which regions are excluded, recomputed on every sample and expiry so
    /// that the per-request check reads a flag instead of taking the lock.
    excluded: Vec<std::sync::atomic::AtomicBool>,
    /// When the flags must be recomputed because a sample goes stale, in
    /// nanoseconds after `epoch` (`u64::MAX`: never).
    valid_until: std::sync::atomic::AtomicU64,
    epoch: Instant,
    limit: Option<Duration>,
    warning: Duration,
    ttl: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    offset: f64,
    error: Duration,
    at: Instant,
}

#[derive(Debug)]
struct State {
    samples: Vec<Option<Sample>>,
    excluded: Vec<bool>,
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ClockGuard {
    /// `limit`: the deviation beyond which a region is excluded (`None`:
    /// never); `ttl`: how long a sample counts.
    pub(crate) fn new(
        regions: usize,
        limit: Option<Duration>,
        warning: Duration,
        ttl: Duration,
    ) -> ClockGuard {
        ClockGuard {
            state: std::sync::Mutex::new(State {
                samples: vec![None; regions],
                excluded: vec![false; regions],
            }),
            excluded: (0..regions)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            valid_until: std::sync::atomic::AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            limit,
            warning,
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn since_epoch(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.epoch))
    }

    /// Folds a sample into the region's estimate (exponential smoothing of
    /// fresh samples; a sample with a tighter error bound weighs more).
    /// Returns the region's deviation afterwards.
    pub(crate) fn record(&self, region: usize, sample: &OffsetSample) -> Duration {
        let now = Instant::now();
        let mut state = self.lock();
        let fresh = |s: &Sample| now.saturating_duration_since(s.at) <= self.ttl;
        let new = sample.offset_nanos as f64;
        state.samples[region] = Some(match state.samples[region].filter(fresh) {
            None => Sample {
                offset: new,
                error: sample.error,
                at: now,
            },
            Some(old) => {
                let weight = if sample.error <= old.error { 0.6 } else { 0.3 };
                Sample {
                    offset: old.offset + weight * (new - old.offset),
                    error: old.error.min(sample.error) + (sample.error / 4),
                    at: now,
                }
            }
        });
        self.recompute(&mut state, now);
        deviation(&state.samples, region).unwrap_or_default()
    }

    /// The region could not be probed: its clock is unknown from now on.
    pub(crate) fn forget(&self, region: usize) {
        let now = Instant::now();
        let mut state = self.lock();
        if state.samples[region].take().is_some() {
            self.recompute(&mut state, now);
        }
    }

    /// Drops stale samples and recomputes every flag (a sample moves the
    /// median, so every region's standing may change).
    fn recompute(&self, state: &mut State, now: Instant) {
        let mut valid_until = u64::MAX;
        for slot in state.samples.iter_mut() {
            if let Some(s) = slot {
                let expires = s.at + self.ttl;
                if expires < now {
                    *slot = None;
                } else {
                    valid_until = valid_until.min(self.since_epoch(expires));
                }
            }
        }
        if let Some(limit) = self.limit {
            let fresh: Vec<(usize, Sample)> = state
                .samples
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.map(|s| (i, s)))
                .collect();
            // Without fresh evidence from a majority, every region keeps its
            // standing.
            if fresh.len() * 2 > state.samples.len() {
                for &(region, own) in &fresh {
                    let others = fresh.iter().filter(|(i, _)| *i != region);
                    let (mut out, mut total) = (0, 0);
                    for (_, other) in others {
                        total += 1;
                        let apart = Duration::from_nanos((own.offset - other.offset).abs() as u64);
                        if apart > limit + own.error + other.error {
                            out += 1;
                        }
                    }
                    state.excluded[region] = out * 2 > total;
                }
            }
            for region in 0..state.samples.len() {
                self.excluded[region]
                    .store(state.excluded[region], std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.valid_until
            .store(valid_until, std::sync::atomic::Ordering::Relaxed);
    }

    /// Recomputes the flags if a sample has gone stale since they were.
    fn refresh(&self) {
        let valid_until = self.valid_until.load(std::sync::atomic::Ordering::Relaxed);
        if valid_until == u64::MAX {
            return;
        }
        let now = Instant::now();
        if self.since_epoch(now) > valid_until {
            let mut state = self.lock();
            self.recompute(&mut state, now);
        }
    }

    /// How far the region's clock strays from the median, with the
    /// estimate's error; `None` without a fresh sample.
    pub(crate) fn deviation(&self, region: usize) -> Option<Duration> {
        self.refresh();
        deviation(&self.lock().samples, region)
    }

    /// What a staleness claim measured in `region` may be off by: the
    /// region's own deviation plus the largest of any region's (a
    /// follower's closed timestamp is in its leader's or writer's clock).
    pub(crate) fn staleness_error(&self, region: usize) -> Duration {
        self.refresh();
        let state = self.lock();
        let own = deviation(&state.samples, region).unwrap_or_default();
        let source = (0..state.samples.len())
            .filter_map(|r| deviation(&state.samples, r))
            .max()
            .unwrap_or_default();
        own + source
    }

    /// Whether the region's clock is too far off to trust for timestamps.
    pub(crate) fn excluded(&self, region: usize) -> bool {
        if self.limit.is_none() {
            return false;
        }
        self.refresh();
        self.excluded
            .get(region)
            .is_some_and(|e| e.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The deviation beyond which a region is excluded, if the guard
    /// excludes at all.
    pub(crate) fn limit(&self) -> Option<Duration> {
        self.limit
    }

    /// A lower bound on true time (nanoseconds since the epoch) when this
    /// process's clock reads `local`: the local clock corrected by the
    /// median offset of the regions, less its error. `None` without fresh
    /// samples from a majority of the regions.
    pub(crate) fn true_time(&self, local: u64) -> Option<u64> {
        self.refresh();
        let state = self.lock();
        if state.samples.iter().flatten().count() * 2 <= state.samples.len() {
            return None;
        }
        let (median, error) = median(&state.samples)?;
        let t = local as f64 + median - error.as_nanos() as f64;
        Some(t.max(0.0) as u64)
    }

    /// The threshold above which a warning is logged.
    pub(crate) fn warning(&self) -> Duration {
        self.warning
    }
}

/// The median offset of the fresh samples, with the larger error of the
/// samples it came from.
fn median(samples: &[Option<Sample>]) -> Option<(f64, Duration)> {
    let mut known: Vec<(f64, Duration)> = samples
        .iter()
        .flatten()
        .map(|s| (s.offset, s.error))
        .collect();
    if known.is_empty() {
        return None;
    }
    known.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = known.len();
    if n % 2 == 1 {
        return Some(known[n / 2]);
    }
    let (a, b) = (known[n / 2 - 1], known[n / 2]);
    Some(((a.0 + b.0) / 2.0, a.1.max(b.1)))
}

fn deviation(samples: &[Option<Sample>], region: usize) -> Option<Duration> {
    let own = samples.get(region).copied().flatten()?;
    let (median, _) = median(samples)?;
    Some(Duration::from_nanos((own.offset - median).abs() as u64) + own.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_odd_clock_out_is_excluded_whoever_measures() {
        let ms = |m: i64| m * 1_000_000;
        // Measured from a process whose own clock is 600 ms ahead: the other
        // regions look 600 ms behind, the skewed one looks right.
        let guard = ClockGuard::new(
            3,
            Some(Duration::from_millis(250)),
            Duration::from_millis(100),
            Duration::from_secs(3),
        );
        for (region, offset) in [(0, ms(-600)), (1, ms(-600)), (2, 0)] {
            guard.record(
                region,
                &OffsetSample::new(
                    1_000_000_000,
                    (1_000_000_000 + offset) as u64,
                    1_000_000_000,
                ),
            );
        }
        assert!(!guard.excluded(0));
        assert!(!guard.excluded(1));
        assert!(guard.excluded(2));
        assert_eq!(guard.deviation(2), Some(Duration::from_millis(600)));
        let unprobed = ClockGuard::new(
            2,
            Some(Duration::from_millis(1)),
            Duration::ZERO,
            Duration::from_secs(3),
        );
        assert!(!unprobed.excluded(0));
    }

    #[test]
    fn offset_from_a_round_trip() {
        // Sent at 1000, server says 1600, received at 1200: midpoint 1100.
        let s = OffsetSample::new(1000, 1600, 1200);
        assert_eq!(s.offset_nanos, 500);
        assert_eq!(s.error, Duration::from_nanos(100));
        assert_eq!(s.max_abs_offset(), Duration::from_nanos(600));
        let behind = OffsetSample::new(1000, 800, 1200);
        assert_eq!(behind.offset_nanos, -300);
        // A receive time before the send time (a stepped clock) cannot panic.
        let odd = OffsetSample::new(2000, 0, 1000);
        assert_eq!(odd.rtt, Duration::ZERO);
    }

    fn at(offset_ms: i64) -> OffsetSample {
        let base: i64 = 1_000_000_000_000;
        OffsetSample::new(
            base as u64,
            (base + offset_ms * 1_000_000) as u64,
            base as u64,
        )
    }

    fn guard(regions: usize) -> ClockGuard {
        ClockGuard::new(
            regions,
            Some(Duration::from_millis(250)),
            Duration::from_millis(100),
            Duration::from_secs(3),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_region_cut_off_is_unknown_not_last_seen() {
        // eu and us are fine; ap was fine until it was cut off. Then us's
        // clock steps 1.5 s back.
        let g = guard(3);
        for r in 0..3 {
            g.record(r, &at(0));
        }
        g.forget(2);
        g.record(1, &at(-1500));
        assert!(g.excluded(1), "the stepped clock is excluded");
        assert!(
            g.excluded(0),
            "two clocks that disagree, the third unknown: nothing says which is right"
        );
        assert_eq!(g.deviation(2), None, "the cut-off region is unknown");
        // ap is back: two against one.
        g.record(2, &at(0));
        assert!(!g.excluded(0));
        assert!(g.excluded(1));
        // Seen from inside us once it is cut off: its own clock agrees with
        // it, but one region is no majority, so it stays excluded.
        g.forget(0);
        g.forget(2);
        g.record(1, &at(0));
        assert!(g.excluded(1), "no verdict without a majority");
    }

    #[tokio::test(start_paused = true)]
    async fn samples_expire_and_exclusion_needs_fresh_evidence_to_lift() {
        let g = guard(3);
        g.record(0, &at(0));
        g.record(1, &at(0));
        g.record(2, &at(900));
        assert!(g.excluded(2));
        tokio::time::advance(Duration::from_secs(2)).await;
        g.record(0, &at(0));
        g.record(1, &at(0));
        tokio::time::advance(Duration::from_millis(1500)).await;
        // ap's sample is stale now: unknown, and still excluded.
        assert_eq!(g.deviation(2), None);
        assert!(g.excluded(2), "excluded until a fresh sample clears it");
        g.record(2, &at(10));
        assert!(!g.excluded(2), "a fresh sample in range readmits it");
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(g.deviation(0), None, "every sample aged out");
        assert_eq!(g.true_time(5), None);
        assert!(!g.excluded(0));
    }

    #[tokio::test(start_paused = true)]
    async fn true_time_follows_the_median() {
        let g = guard(3);
        for r in 0..3 {
            g.record(r, &at(-600));
        }
        // This process runs 600 ms ahead of every region.
        assert_eq!(g.true_time(10_000_000_000), Some(9_400_000_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_staleness_claim_counts_its_own_and_the_source_clock() {
        let g = guard(3);
        g.record(0, &at(0));
        g.record(1, &at(40));
        g.record(2, &at(-120));
        // Median 0: eu 0, us 40 ms, ap 120 ms off. A follower in us states
        // staleness in its own clock against a closed timestamp in the
        // leader's, which may be the farthest off.
        assert_eq!(g.staleness_error(1), Duration::from_millis(160));
        assert_eq!(g.staleness_error(0), Duration::from_millis(120));
    }
}
