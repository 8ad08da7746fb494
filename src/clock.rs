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

/// This machine's clock off by an offset that can change while it runs:
/// a host whose clock is wrong, for drills and tests.
///
/// ```
/// use quorate::{Clock, SkewedClock, SystemClock};
///
/// let clock = SkewedClock::new(600);
/// let ahead = clock.now_nanos() as i64 - SystemClock.now_nanos() as i64;
/// assert!(ahead > 500_000_000);
/// clock.set_offset_ms(0);
/// assert_eq!(clock.offset_ms(), 0);
/// ```
#[derive(Debug, Default)]
pub struct SkewedClock {
    offset_ms: std::sync::atomic::AtomicI64,
}

impl SkewedClock {
    /// A clock `offset_ms` milliseconds ahead of this machine's (behind
    /// when negative).
    pub fn new(offset_ms: i64) -> SkewedClock {
        SkewedClock {
            offset_ms: std::sync::atomic::AtomicI64::new(offset_ms),
        }
    }

    /// How far ahead of this machine's clock it runs, in milliseconds.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets how far ahead it runs from now on.
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms
            .store(offset_ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clock for SkewedClock {
    fn now_nanos(&self) -> u64 {
        let now = i128::from(SystemClock.now_nanos()) + i128::from(self.offset_ms()) * 1_000_000;
        u64::try_from(now.max(0)).unwrap_or(u64::MAX)
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

    /// A sample from the server's clock reading and this process's clock
    /// when the answer came, with the round trip timed on the monotonic
    /// clock: the request is taken to have reached the server half the
    /// round trip before the answer, in the clock's frame as it reads at
    /// the answer. Unlike [`OffsetSample::new`], a step of this process's
    /// clock while the probe was out does not put the sample in a frame it
    /// was not measured in.
    pub fn timed(server: u64, received: u64, rtt: Duration) -> OffsetSample {
        let rtt_nanos = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX);
        let midpoint = i128::from(received) - i128::from(rtt_nanos / 2);
        let offset = (i128::from(server) - midpoint)
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        OffsetSample {
            offset_nanos: offset,
            error: rtt / 2,
            rtt,
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
    longest_bound: Duration,
    /// Whether fresh samples from a majority were ever at hand (the client
    /// probes).
    ever_quorum: std::sync::atomic::AtomicBool,
    /// Whether the client probes (or is about to): from then on a region
    /// not sampled yet is unknown, not "no evidence against it".
    probing: std::sync::atomic::AtomicBool,
    /// Whether fresh samples from a majority are at hand now.
    quorum: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// The region's clock minus this process's, as measured.
    offset: f64,
    /// This process's clock minus the monotonic timeline when it was
    /// measured: offsets taken at different times compare only once
    /// brought to one frame (see [`aligned`]), so that a step of this
    /// process's clock moves no other region's estimate.
    frame: i128,
    error: Duration,
    at: Instant,
}

#[derive(Debug)]
struct State {
    samples: Vec<Option<Sample>>,
    excluded: Vec<bool>,
    /// Per region, the leads over the median it was seen with lately, each
    /// with when timestamps it stamped then stop carrying it (no entry
    /// both smaller and shorter-lived than another is kept).
    ahead: Vec<Vec<(Duration, Instant)>>,
    /// Per region, whether it lost its sample (a failed probe, or one that
    /// aged out) and has not been sampled since.
    blind: Vec<bool>,
    /// Per region, when it was sampled again after it was blind: what it
    /// stamped meanwhile, by a clock nothing measured, may still be on its
    /// way to a replica or carried forward by later timestamps.
    rejoined: Vec<Option<Instant>>,
}

/// How many leads a region keeps before they merge into one.
const MAX_LEADS: usize = 16;

/// `at` plus `d`, or `None` beyond what an `Instant` holds (never, in
/// effect).
fn after(at: Instant, d: Duration) -> Option<Instant> {
    at.checked_add(d)
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ClockGuard {
    /// `limit`: the deviation beyond which a region is excluded (`None`:
    /// never); `ttl`: how long a sample counts; `longest_bound`: the
    /// largest staleness bound a claim is judged against.
    pub(crate) fn new(
        regions: usize,
        limit: Option<Duration>,
        warning: Duration,
        ttl: Duration,
        longest_bound: Duration,
    ) -> ClockGuard {
        ClockGuard {
            state: std::sync::Mutex::new(State {
                samples: vec![None; regions],
                excluded: vec![false; regions],
                ahead: vec![Vec::new(); regions],
                blind: vec![false; regions],
                rejoined: vec![None; regions],
            }),
            excluded: (0..regions)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            valid_until: std::sync::atomic::AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            limit,
            warning,
            ttl,
            longest_bound,
            ever_quorum: std::sync::atomic::AtomicBool::new(false),
            probing: std::sync::atomic::AtomicBool::new(false),
            quorum: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn since_epoch(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.epoch))
    }

    /// This process's clock minus the monotonic timeline, when the clock
    /// reads `local` now.
    fn frame(&self, local: u64, now: Instant) -> i128 {
        i128::from(local) - i128::from(self.since_epoch(now))
    }

    /// Folds a sample, received when this process's clock read `received`,
    /// into the region's estimate (exponential smoothing of fresh samples; a
    /// sample with a tighter error bound weighs more). Returns the region's
    /// deviation afterwards.
    pub(crate) fn record(&self, region: usize, sample: &OffsetSample, received: u64) -> Duration {
        let now = Instant::now();
        let frame = self.frame(received, now);
        let mut state = self.lock();
        let fresh = |s: &Sample| now.saturating_duration_since(s.at) <= self.ttl;
        // Blind since its sample went (a failed probe, or a sample that
        // aged out, whether or not a recomputation noticed yet).
        let aged_out = state.samples[region].is_some_and(|s| !fresh(&s));
        if std::mem::take(&mut state.blind[region]) || aged_out {
            state.rejoined[region] = Some(now);
        }
        let new = sample.offset_nanos as f64;
        let previous = state.samples[region].filter(fresh).map(|old| Sample {
            offset: old.offset + (old.frame - frame) as f64,
            frame,
            ..old
        });
        state.samples[region] = Some(match previous {
            None => Sample {
                offset: new,
                frame,
                error: sample.error,
                at: now,
            },
            // A clock that stepped: farther from the estimate than both
            // errors and the limit allow. Taken as it is, not smoothed in
            // over several probes.
            Some(old)
                if (new - old.offset).abs()
                    > (old.error + sample.error + self.limit.unwrap_or_default()).as_nanos()
                        as f64 =>
            {
                Sample {
                    offset: new,
                    frame,
                    error: sample.error,
                    at: now,
                }
            }
            Some(old) => {
                let weight = if sample.error <= old.error { 0.6 } else { 0.3 };
                Sample {
                    offset: old.offset + weight * (new - old.offset),
                    frame,
                    error: old.error.min(sample.error) + (sample.error / 4),
                    at: now,
                }
            }
        });
        self.recompute(&mut state, now);
        let d = deviation(&aligned(&state.samples), region).unwrap_or_default();
        // Timestamps taken while a clock ran ahead stay ahead after it is
        // back (a hybrid-logical clock, or an item's write time, does not go
        // back) until real time catches up with them: remember the offset
        // that long after it was last seen, and the samples' lifetime
        // besides.
        let samples = aligned(&state.samples);
        if let Some((median, _)) = median(&samples) {
            // With an even count of clocks the median splits the
            // difference between the middle two, and half a lead would go
            // unseen: measure it from the lower of them.
            let known: Vec<f64> = samples.iter().flatten().map(|s| s.offset).collect();
            let reference = if known.len().is_multiple_of(2) {
                let mut sorted = known;
                sorted.sort_by(f64::total_cmp);
                sorted[sorted.len() / 2 - 1]
            } else {
                median
            };
            let lead = Duration::from_nanos((new - reference).max(0.0) as u64);
            let until = now + lead + self.ttl;
            let leads = &mut state.ahead[region];
            leads.retain(|&(_, u)| after(u, self.longest_bound).is_none_or(|t| t > now));
            if !lead.is_zero() && !leads.iter().any(|&(l, u)| l >= lead && u >= until) {
                leads.retain(|&(l, u)| !(l <= lead && u <= until));
                leads.push((lead, until));
            }
            // A lead that shrinks more slowly than time passes leaves one
            // entry per sample: past a few, they merge into one that covers
            // them all (larger and longer-lived than any, never less).
            if leads.len() > MAX_LEADS {
                let merged = leads
                    .iter()
                    .fold((Duration::ZERO, now), |(l, u), &(l2, u2)| {
                        (l.max(l2), u.max(u2))
                    });
                *leads = vec![merged];
            }
        }
        d
    }

    /// The region could not be probed: its clock is unknown from now on.
    pub(crate) fn forget(&self, region: usize) {
        let now = Instant::now();
        let mut state = self.lock();
        if state.samples[region].take().is_some() {
            state.blind[region] = true;
            self.recompute(&mut state, now);
        }
    }

    /// Drops stale samples and recomputes every flag (a sample moves the
    /// median, so every region's standing may change).
    fn recompute(&self, state: &mut State, now: Instant) {
        let mut valid_until = u64::MAX;
        for (slot, blind) in state.samples.iter_mut().zip(state.blind.iter_mut()) {
            if let Some(s) = slot {
                let expires = s.at + self.ttl;
                if expires < now {
                    *slot = None;
                    *blind = true;
                } else {
                    valid_until = valid_until.min(self.since_epoch(expires));
                }
            }
        }
        let quorum = state.samples.iter().flatten().count() * 2 > state.samples.len();
        if quorum {
            self.ever_quorum
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.quorum
            .store(quorum, std::sync::atomic::Ordering::Relaxed);
        if let Some(limit) = self.limit {
            let fresh: Vec<(usize, Sample)> = aligned(&state.samples)
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

    /// Notes that the client probes the regions' clocks: claims count only
    /// once every region has been sampled.
    pub(crate) fn probing(&self) {
        self.probing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// How far the region's clock strays from the median, with the
    /// estimate's error; `None` without a fresh sample.
    pub(crate) fn deviation(&self, region: usize) -> Option<Duration> {
        self.refresh();
        deviation(&aligned(&self.lock().samples), region)
    }

    /// What a staleness claim measured in `region` may be off by: the
    /// region's own deviation plus the largest of any region's (a
    /// follower's closed timestamp is in its leader's or writer's clock),
    /// or the largest lead a region's clock had over the others lately, as
    /// long as timestamps it stamped then may still be ahead (until real
    /// time catches up with them, the samples' lifetime and `bound` after
    /// the lead was last seen); plus this
    /// process's own clock error — its distance from the regions' median,
    /// and how far it stepped since the newest sample, reading `local` now —
    /// since a claim may be measured by it (an item's age on a table
    /// without a watermark: the adapter subtracts the item's write time
    /// from this process's clock) and no sample has seen a step yet.
    /// `None` when the clocks cannot be verified: the client has probed
    /// (it had fresh samples from a majority of regions) but lacks a fresh
    /// sample of some region now — a clock that stepped meanwhile, in a
    /// region cut off with this process, looks right from inside it, and a
    /// leader this process cannot reach may still replicate here — or a
    /// region was sampled again after it lost its sample less than the
    /// samples' lifetime plus `bound` ago (a lead it had unseen that lasted
    /// longer than the samples' lifetime is beyond what this detects).
    pub(crate) fn staleness_error(
        &self,
        region: usize,
        local: u64,
        bound: Duration,
    ) -> Option<Duration> {
        // Leads are kept as long as the largest bound a claim may be judged
        // against; a larger one cannot be judged.
        if bound > self.longest_bound {
            return None;
        }
        self.refresh();
        let state = self.lock();
        // Any region may have stamped the timestamps a claim is measured
        // against (the leaseholder behind a follower's closed timestamp,
        // the writer of an item): one whose clock is unknown now may have
        // stepped unseen, and replication from it can still arrive where
        // its probes do not. A client that probes knows nothing of a clock
        // before its first sample either (a client that never probes
        // relies on `clock_uncertainty` alone).
        let probes = self.ever_quorum.load(std::sync::atomic::Ordering::Relaxed)
            || self.probing.load(std::sync::atomic::Ordering::Relaxed);
        if probes && state.samples.iter().any(Option::is_none) {
            return None;
        }
        // A region sampled again after it was blind: what it stamped while
        // unseen may still reach a replica, or live on in timestamps
        // stamped after it (a hybrid-logical clock, an item's write time),
        // and a claim under `bound` may rest on it. Trusted again once the
        // samples' lifetime and the bound have passed.
        let now = Instant::now();
        if state
            .rejoined
            .iter()
            .flatten()
            .any(|&at| after(at, self.ttl.saturating_add(bound)).is_none_or(|t| now < t))
        {
            return None;
        }
        let samples = aligned(&state.samples);
        let own = deviation(&samples, region).unwrap_or_default();
        let stepped = samples
            .iter()
            .flatten()
            .max_by_key(|s| s.at)
            .map_or(0, |s| s.frame.abs_diff(self.frame(local, now)));
        let stepped = Duration::from_nanos(u64::try_from(stepped).unwrap_or(u64::MAX));
        let process = median(&samples).map_or(Duration::ZERO, |(m, e)| {
            Duration::from_nanos(m.abs().min(u64::MAX as f64) as u64) + e
        });
        let source = (0..samples.len())
            .filter_map(|r| deviation(&samples, r))
            .chain(
                state
                    .ahead
                    .iter()
                    .flatten()
                    .filter(|(_, until)| after(*until, bound).is_none_or(|t| now < t))
                    .map(|(lead, _)| *lead),
            )
            .max()
            .unwrap_or_default();
        Some(own + source + process + stepped)
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

    /// Whether the guard has lost sight of a majority of the regions'
    /// clocks after having had it (the client probes, and most probes now
    /// fail or have aged out: this process is cut off from most regions).
    /// Then no clock can be judged — not even this region's, which steps
    /// with this process's own — and a leader's claim to a lease, which
    /// rests on its clock, cannot be vouched for. Always `false` for a
    /// backend without a clock bound.
    pub(crate) fn out_of_sight(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.limit.is_none() || !self.ever_quorum.load(Relaxed) {
            return false;
        }
        self.refresh();
        !self.quorum.load(Relaxed)
    }

    /// The deviation beyond which a region is excluded, if the guard
    /// excludes at all.
    pub(crate) fn limit(&self) -> Option<Duration> {
        self.limit
    }

    /// A lower bound on true time (nanoseconds since the epoch) when this
    /// process's clock reads `local`, which must have been read just now:
    /// the local clock corrected by the median offset of the regions, less
    /// its error. `None` without fresh samples from a majority of the
    /// regions.
    pub(crate) fn true_time(&self, local: u64) -> Option<u64> {
        self.refresh();
        let state = self.lock();
        if state.samples.iter().flatten().count() * 2 <= state.samples.len() {
            return None;
        }
        let samples = aligned(&state.samples);
        let (median, error) = median(&samples)?;
        // The median is in the newest sample's frame; `local` may be in
        // another (this process's clock stepped since).
        let reference = samples.iter().flatten().next().map_or(0, |s| s.frame);
        let shift = (reference - self.frame(local, Instant::now())) as f64;
        let t = local as f64 + median + shift - error.as_nanos() as f64;
        Some(t.max(0.0) as u64)
    }

    /// The threshold above which a warning is logged.
    pub(crate) fn warning(&self) -> Duration {
        self.warning
    }
}

/// The samples with their offsets brought to the newest sample's frame:
/// each offset as it would have been measured by this process's clock as it
/// reads now, had it not stepped since.
fn aligned(samples: &[Option<Sample>]) -> Vec<Option<Sample>> {
    let Some(reference) = samples
        .iter()
        .flatten()
        .max_by_key(|s| s.at)
        .map(|s| s.frame)
    else {
        return samples.to_vec();
    };
    samples
        .iter()
        .map(|s| {
            s.map(|s| Sample {
                offset: s.offset + (s.frame - reference) as f64,
                frame: reference,
                ..s
            })
        })
        .collect()
}

/// The median offset of the fresh samples (in one frame), with the larger
/// error of the samples it came from.
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
            crate::DEFAULT_MAX_STALENESS,
        );
        for (region, offset) in [(0, ms(-600)), (1, ms(-600)), (2, 0)] {
            guard.record(
                region,
                &OffsetSample::new(
                    1_000_000_000,
                    (1_000_000_000 + offset) as u64,
                    1_000_000_000,
                ),
                1_000_000_000,
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
            crate::DEFAULT_MAX_STALENESS,
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

    /// This process's clock in the tests: it follows the monotonic clock
    /// from a fixed start.
    fn local(g: &ClockGuard) -> u64 {
        1_000_000_000_000 + g.since_epoch(Instant::now())
    }

    /// Records a round trip of zero length to a server `offset_ms` ahead.
    fn record(g: &ClockGuard, region: usize, offset_ms: i64) {
        record_stepped(g, region, offset_ms, 0);
    }

    /// The same, measured by this process's clock `step_ms` off the
    /// timeline it followed.
    fn record_stepped(g: &ClockGuard, region: usize, offset_ms: i64, step_ms: i64) {
        let now = (local(g) as i64 + step_ms * 1_000_000) as u64;
        let server = (now as i64 + offset_ms * 1_000_000) as u64;
        g.record(region, &OffsetSample::new(now, server, now), now);
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_of_this_process_clock_moves_no_other_region() {
        // eu, us and ap agree. Then eu's clock steps 1.5 s back and this
        // process's clock, which follows eu's, with it: measured from here
        // eu looks right, and us and ap would look 1.5 s ahead if probed.
        let g = guard(3);
        for r in 0..3 {
            record(&g, r, 0);
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        record_stepped(&g, 0, 0, -1500);
        // Before us and ap are probed again, their samples still count, and
        // still say what they measured: eu is the clock that moved.
        assert!(g.excluded(0), "the stepped clock is the odd one out");
        assert!(!g.excluded(1) && !g.excluded(2));
        assert_eq!(g.deviation(0), Some(Duration::from_millis(1500)));
        assert!(
            g.staleness_error(0, local(&g), Duration::ZERO) >= Some(Duration::from_millis(3000)),
            "a staleness claim measured in eu's clock: {:?}",
            g.staleness_error(0, local(&g), Duration::ZERO)
        );
        // Probed again from the stepped clock, they agree with their
        // earlier samples (no step of their own).
        record_stepped(&g, 1, 1500, -1500);
        record_stepped(&g, 2, 1500, -1500);
        assert!(g.excluded(0));
        assert!(!g.excluded(1) && !g.excluded(2));
        assert_eq!(g.deviation(1), Some(Duration::ZERO));
    }

    fn guard(regions: usize) -> ClockGuard {
        ClockGuard::new(
            regions,
            Some(Duration::from_millis(250)),
            Duration::from_millis(100),
            Duration::from_secs(3),
            crate::DEFAULT_MAX_STALENESS,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_region_cut_off_is_unknown_not_last_seen() {
        // eu and us are fine; ap was fine until it was cut off. Then us's
        // clock steps 1.5 s back.
        let g = guard(3);
        for r in 0..3 {
            record(&g, r, 0);
        }
        g.forget(2);
        record(&g, 1, -1500);
        assert!(g.excluded(1), "the stepped clock is excluded");
        assert!(
            g.excluded(0),
            "two clocks that disagree, the third unknown: nothing says which is right"
        );
        assert_eq!(g.deviation(2), None, "the cut-off region is unknown");
        // ap is back: two against one.
        record(&g, 2, 0);
        assert!(!g.excluded(0));
        assert!(g.excluded(1));
        // Seen from inside us once it is cut off: its own clock agrees with
        // it, but one region is no majority, so it stays excluded.
        g.forget(0);
        g.forget(2);
        record(&g, 1, 0);
        assert!(g.excluded(1), "no verdict without a majority");
    }

    #[tokio::test(start_paused = true)]
    async fn samples_expire_and_exclusion_needs_fresh_evidence_to_lift() {
        let g = guard(3);
        record(&g, 0, 0);
        record(&g, 1, 0);
        record(&g, 2, 900);
        assert!(g.excluded(2));
        tokio::time::advance(Duration::from_secs(2)).await;
        record(&g, 0, 0);
        record(&g, 1, 0);
        tokio::time::advance(Duration::from_millis(1500)).await;
        // ap's sample is stale now: unknown, and still excluded.
        assert_eq!(g.deviation(2), None);
        assert!(g.excluded(2), "excluded until a fresh sample clears it");
        record(&g, 2, 10);
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
            record(&g, r, -600);
        }
        // This process runs 600 ms ahead of every region.
        let now = local(&g);
        assert_eq!(g.true_time(now), Some(now - 600_000_000));
        // Its clock steps 600 ms back: the samples taken before say the
        // regions are 600 ms behind the clock as it read then, so true time
        // is what the clock reads now.
        let stepped = now - 600_000_000;
        assert_eq!(g.true_time(stepped), Some(stepped));
    }

    #[tokio::test(start_paused = true)]
    async fn a_staleness_claim_counts_its_own_and_the_source_clock() {
        let g = guard(3);
        record(&g, 0, 0);
        record(&g, 1, 40);
        record(&g, 2, -120);
        // Median 0: eu 0, us 40 ms, ap 120 ms off. A follower in us states
        // staleness in its own clock against a closed timestamp in the
        // leader's, which may be the farthest off.
        assert_eq!(
            g.staleness_error(1, local(&g), Duration::ZERO),
            Some(Duration::from_millis(160))
        );
        assert_eq!(
            g.staleness_error(0, local(&g), Duration::ZERO),
            Some(Duration::from_millis(120))
        );
        // Cut off from the others, the clocks cannot be verified any more.
        g.forget(0);
        g.forget(2);
        assert_eq!(g.staleness_error(1, local(&g), Duration::ZERO), None);
        // A client that never probed relies on clock_uncertainty alone.
        assert_eq!(
            {
                let g = guard(3);
                g.staleness_error(1, local(&g), Duration::ZERO)
            },
            Some(Duration::ZERO)
        );
    }

    /// A client that probes knows nothing of a clock before its first
    /// sample: until every region has one, no claim counts (the first reads
    /// of a client just started would otherwise take a skewed replica's
    /// word).
    #[tokio::test(start_paused = true)]
    async fn a_probing_client_counts_no_claim_before_its_first_samples() {
        let g = guard(3);
        g.probing();
        assert_eq!(g.staleness_error(1, local(&g), Duration::ZERO), None);
        record(&g, 0, 0);
        record(&g, 1, 0);
        assert_eq!(
            g.staleness_error(1, local(&g), Duration::ZERO),
            None,
            "ap unknown"
        );
        record(&g, 2, 0);
        assert_eq!(
            g.staleness_error(1, local(&g), Duration::ZERO),
            Some(Duration::ZERO)
        );
    }

    /// A region that lost its sample and is sampled again may have stamped
    /// timestamps ahead while unseen: claims wait out the samples' lifetime
    /// and the bound before they count again.
    #[tokio::test(start_paused = true)]
    async fn a_region_seen_again_is_trusted_for_claims_only_after_a_while() {
        let g = guard(3);
        for r in 0..3 {
            record(&g, r, 0);
        }
        let bound = Duration::from_secs(1);
        assert_eq!(g.staleness_error(1, local(&g), bound), Some(Duration::ZERO));
        g.forget(0);
        assert_eq!(g.staleness_error(1, local(&g), bound), None, "eu unknown");
        tokio::time::advance(Duration::from_millis(500)).await;
        record(&g, 0, 0);
        record(&g, 1, 0);
        record(&g, 2, 0);
        assert_eq!(g.staleness_error(1, local(&g), bound), None, "eu just back");
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(1300)).await;
            for r in 0..3 {
                record(&g, r, 0);
            }
        }
        assert_eq!(g.staleness_error(1, local(&g), bound), None);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(g.staleness_error(1, local(&g), bound), Some(Duration::ZERO));
        // A sample that ages out makes its region blind as well.
        tokio::time::advance(Duration::from_millis(3100)).await;
        for r in 1..3 {
            record(&g, r, 0);
        }
        assert_eq!(g.staleness_error(1, local(&g), bound), None, "eu aged out");
        record(&g, 0, 0);
        assert_eq!(g.staleness_error(1, local(&g), bound), None, "eu just back");
    }

    /// A claim measured by this process's clock (or a node sharing it) is
    /// off by any step of that clock since the newest sample: no sample
    /// has seen it, yet it counts.
    #[tokio::test(start_paused = true)]
    async fn a_step_of_this_process_clock_since_the_last_sample_widens_claims() {
        let g = guard(3);
        for r in 0..3 {
            record(&g, r, 0);
        }
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(
            g.staleness_error(0, local(&g), Duration::ZERO),
            Some(Duration::ZERO)
        );
        let back = local(&g) - 1_500_000_000;
        assert_eq!(
            g.staleness_error(0, back, Duration::ZERO),
            Some(Duration::from_millis(1500))
        );
        let ahead = local(&g) + 200_000_000;
        assert_eq!(
            g.staleness_error(2, ahead, Duration::ZERO),
            Some(Duration::from_millis(200))
        );
    }

    /// A lead counts from when it was last seen, not first: a clock that
    /// stays ahead for longer than the samples' lifetime keeps stamping
    /// ahead all along.
    #[tokio::test(start_paused = true)]
    async fn a_lead_counts_from_when_it_was_last_seen() {
        let g = guard(3);
        for _ in 0..9 {
            record(&g, 0, 1500);
            record(&g, 1, 0);
            record(&g, 2, 0);
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        // Back in line at 4.5 s; last seen ahead at 4 s.
        for _ in 0..9 {
            for r in 0..3 {
                record(&g, r, 0);
            }
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        // 9 s: within 4 s + 1.5 s lead + 3 s lifetime + 1 s bound.
        assert_eq!(
            g.staleness_error(1, local(&g), Duration::from_secs(1)),
            Some(Duration::from_millis(1500))
        );
        tokio::time::advance(Duration::from_millis(600)).await;
        for r in 0..3 {
            record(&g, r, 0);
        }
        assert_eq!(
            g.staleness_error(1, local(&g), Duration::from_secs(1)),
            Some(Duration::ZERO)
        );
    }

    /// A sample that aged out counts as lost even when its region's next
    /// sample comes before anything noticed; a bound beyond the largest
    /// the guard keeps leads for cannot be judged, and none panics; leads
    /// that keep shrinking merge instead of piling up.
    #[tokio::test(start_paused = true)]
    async fn aged_out_samples_huge_bounds_and_many_leads() {
        let g = guard(3);
        for r in 0..3 {
            record(&g, r, 0);
        }
        tokio::time::advance(Duration::from_secs(4)).await;
        for r in 0..3 {
            record(&g, r, 0);
        }
        let bound = Duration::from_secs(1);
        assert_eq!(
            g.staleness_error(1, local(&g), bound),
            None,
            "every region just back"
        );
        assert_eq!(g.staleness_error(1, local(&g), Duration::MAX), None);
        assert_eq!(
            g.staleness_error(1, local(&g), crate::DEFAULT_MAX_STALENESS + bound),
            None
        );
        for i in 0..100 {
            record(&g, 0, 1000 - i);
            record(&g, 1, 0);
            record(&g, 2, 0);
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        let leads = g.lock().ahead[0].len();
        assert!(leads <= MAX_LEADS, "{leads} leads kept");
        assert!(g.lock().ahead[0]
            .iter()
            .any(|&(l, _)| l >= Duration::from_millis(999)));
    }

    /// Two clocks a lead apart, the third unknown: either may be right, so
    /// the lead is measured from the slower, not from their midpoint.
    #[tokio::test(start_paused = true)]
    async fn a_lead_between_two_clocks_is_measured_from_the_slower() {
        let g = guard(3);
        for r in 0..3 {
            record(&g, r, 0);
        }
        g.forget(2);
        record(&g, 1, 0);
        record(&g, 0, 900);
        // Back in line, and the third seen again.
        for _ in 0..5 {
            for r in 0..3 {
                record(&g, r, 0);
            }
            tokio::time::advance(Duration::from_millis(850)).await;
        }
        // 4.25 s on: past the wait after the third was seen again, within
        // 0.9 s lead + 3 s lifetime + 1 s bound of the lead.
        assert_eq!(
            g.staleness_error(1, local(&g), Duration::from_secs(1)),
            Some(Duration::from_millis(900))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_is_taken_at_once_and_a_lead_is_remembered() {
        let g = guard(3);
        for r in 0..3 {
            record(&g, r, 0);
        }
        record(&g, 0, 1500);
        assert!(g.excluded(0), "one sample of a step is enough");
        assert_eq!(g.deviation(0), Some(Duration::from_millis(1500)));
        // The clock is back; timestamps it stamped while ahead are not yet.
        tokio::time::advance(Duration::from_millis(500)).await;
        for r in 0..3 {
            record(&g, r, 0);
        }
        assert!(!g.excluded(0));
        assert_eq!(
            g.staleness_error(1, local(&g), Duration::ZERO),
            Some(Duration::from_millis(1500)),
            "the lead still counts"
        );
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(1)).await;
            for r in 0..3 {
                record(&g, r, 0);
            }
        }
        assert_eq!(
            g.staleness_error(1, local(&g), Duration::ZERO),
            Some(Duration::ZERO),
            "and then no more"
        );
    }
}
