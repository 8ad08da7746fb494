//! Clocks: an injectable wall clock and NTP-style offset estimates.

use std::fmt::Debug;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
/// offset of all regions, plus the estimate's error.
#[derive(Debug)]
pub(crate) struct ClockGuard {
    offsets: std::sync::Mutex<Vec<Option<(f64, Duration)>>>,
    /// Which regions are excluded, recomputed on every sample so that the
    /// per-request check reads a flag instead of taking the lock.
    excluded: Vec<std::sync::atomic::AtomicBool>,
    limit: Option<Duration>,
    warning: Duration,
}

impl ClockGuard {
    /// `limit`: the deviation beyond which a region is excluded (`None`: never).
    pub(crate) fn new(regions: usize, limit: Option<Duration>, warning: Duration) -> ClockGuard {
        ClockGuard {
            offsets: std::sync::Mutex::new(vec![None; regions]),
            excluded: (0..regions)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            limit,
            warning,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<(f64, Duration)>>> {
        self.offsets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Folds a sample into the region's estimate (exponential smoothing; a
    /// sample with a tighter error bound weighs more). Returns the region's
    /// deviation afterwards.
    pub(crate) fn record(&self, region: usize, sample: &OffsetSample) -> Duration {
        let mut offsets = self.lock();
        let new = sample.offset_nanos as f64;
        offsets[region] = Some(match offsets[region] {
            None => (new, sample.error),
            Some((old, old_error)) => {
                let weight = if sample.error <= old_error { 0.6 } else { 0.3 };
                (
                    old + weight * (new - old),
                    old_error.min(sample.error) + (sample.error / 4),
                )
            }
        });
        // A sample moves the median, so every region's standing may change.
        if let Some(limit) = self.limit {
            for (i, flag) in self.excluded.iter().enumerate() {
                let out = deviation(&offsets, i).is_some_and(|d| d > limit);
                flag.store(out, std::sync::atomic::Ordering::Relaxed);
            }
        }
        deviation(&offsets, region).unwrap_or_default()
    }

    /// How far the region's clock strays from the median of all regions, with
    /// the estimate's error; `None` before any probe.
    pub(crate) fn deviation(&self, region: usize) -> Option<Duration> {
        deviation(&self.lock(), region)
    }

    /// Whether the region's clock is too far off to trust for timestamps.
    pub(crate) fn excluded(&self, region: usize) -> bool {
        self.excluded
            .get(region)
            .is_some_and(|e| e.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The threshold above which a warning is logged.
    pub(crate) fn warning(&self) -> Duration {
        self.warning
    }
}

fn deviation(offsets: &[Option<(f64, Duration)>], region: usize) -> Option<Duration> {
    let (own, error) = offsets.get(region).copied().flatten()?;
    let mut known: Vec<f64> = offsets.iter().flatten().map(|(o, _)| *o).collect();
    known.sort_by(f64::total_cmp);
    let median = if known.len() % 2 == 1 {
        known[known.len() / 2]
    } else {
        (known[known.len() / 2 - 1] + known[known.len() / 2]) / 2.0
    };
    Some(Duration::from_nanos((own - median).abs() as u64) + error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_odd_clock_out_is_excluded_whoever_measures() {
        let ms = |m: i64| m * 1_000_000;
        // Measured from a process whose own clock is 600 ms ahead: the other
        // regions look 600 ms behind, the skewed one looks right.
        let guard = ClockGuard::new(
            3,
            Some(Duration::from_millis(250)),
            Duration::from_millis(100),
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
        let unprobed = ClockGuard::new(2, Some(Duration::from_millis(1)), Duration::ZERO);
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
}
