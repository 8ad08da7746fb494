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

#[cfg(test)]
mod tests {
    use super::*;

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
