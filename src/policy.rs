//! Read policies: how fresh a read must be.
//!
//! [`ReadPolicy`] is what a read asks for; [`StrictRead`] is the subset a
//! critical handle accepts. Bounded staleness carries a [`Staleness`], which
//! can only be built through a validating constructor.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The longest staleness bound accepted by [`Staleness::new`]: one hour, the
/// default version-retention window of Spanner and the garbage-collection
/// horizon most CockroachDB clusters keep at least.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(3600);

/// How fresh a read must be.
///
/// ```
/// use quorate::{ReadPolicy, Staleness};
/// use std::time::Duration;
///
/// let p: ReadPolicy = "bounded:5000".parse()?;
/// assert_eq!(p, ReadPolicy::BoundedStaleness(Staleness::new(Duration::from_secs(5))?));
/// assert_eq!(p.to_string(), "bounded:5000");
/// # Ok::<(), quorate::PolicyError>(())
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadPolicy {
    /// Linearizable: served by the leaseholder, leader or a quorum.
    Strong,
    /// Read-your-writes and monotonic reads within one [`Session`](crate::Session).
    Session,
    /// At most the given duration behind the newest committed state.
    BoundedStaleness(Staleness),
}

/// A read policy a critical handle accepts: never stale relative to what the
/// caller's session has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum StrictRead {
    /// Linearizable.
    #[default]
    Strong,
    /// Read-your-writes and monotonic reads within one session.
    Session,
}

impl From<StrictRead> for ReadPolicy {
    fn from(p: StrictRead) -> Self {
        match p {
            StrictRead::Strong => ReadPolicy::Strong,
            StrictRead::Session => ReadPolicy::Session,
        }
    }
}

impl ReadPolicy {
    /// Whether this policy may observe state older than the caller's session.
    pub fn is_relaxed(self) -> bool {
        matches!(self, ReadPolicy::BoundedStaleness(_))
    }

    /// The strict form of this policy, if it has one.
    pub fn as_strict(self) -> Option<StrictRead> {
        match self {
            ReadPolicy::Strong => Some(StrictRead::Strong),
            ReadPolicy::Session => Some(StrictRead::Session),
            ReadPolicy::BoundedStaleness(_) => None,
        }
    }

    /// A short static label for metrics and traces (`strong`, `session`, `bounded`).
    pub fn label(self) -> &'static str {
        match self {
            ReadPolicy::Strong => "strong",
            ReadPolicy::Session => "session",
            ReadPolicy::BoundedStaleness(_) => "bounded",
        }
    }
}

/// A validated staleness bound: positive and at most a maximum window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Staleness(Duration);

impl Staleness {
    /// A bound in `(0, DEFAULT_MAX_STALENESS]`.
    pub fn new(bound: Duration) -> Result<Self, PolicyError> {
        Self::with_max(bound, DEFAULT_MAX_STALENESS)
    }

    /// A bound in `(0, max]`, for backends whose history window differs.
    pub fn with_max(bound: Duration, max: Duration) -> Result<Self, PolicyError> {
        if bound.is_zero() {
            return Err(PolicyError::ZeroStaleness);
        }
        if bound > max {
            return Err(PolicyError::StalenessTooLarge { bound, max });
        }
        Ok(Staleness(bound))
    }

    /// Shorthand for [`Staleness::new`] in milliseconds.
    pub fn from_millis(ms: u64) -> Result<Self, PolicyError> {
        Self::new(Duration::from_millis(ms))
    }

    /// The bound.
    pub fn duration(self) -> Duration {
        self.0
    }
}

/// A policy string or bound that does not describe a valid policy.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A staleness bound of zero is a strong read; ask for `Strong`.
    #[error("a staleness bound must be positive; use `strong` for a zero bound")]
    ZeroStaleness,
    /// The bound exceeds the history the database keeps.
    #[error("staleness bound {bound:?} exceeds the maximum {max:?}")]
    StalenessTooLarge {
        /// What was asked for.
        bound: Duration,
        /// The largest accepted bound.
        max: Duration,
    },
    /// The text is not `strong`, `session` or `bounded:<ms>`.
    #[error("unknown read policy {0:?}: expected `strong`, `session` or `bounded:<milliseconds>`")]
    Unknown(String),
    /// The milliseconds of `bounded:<ms>` are not a whole number.
    #[error("invalid staleness in {0:?}: expected whole milliseconds, e.g. `bounded:5000`")]
    BadMillis(String),
    /// A strict read was required but the policy is relaxed.
    #[error("policy {0} is not strict: critical data accepts only `strong` or `session`")]
    NotStrict(ReadPolicy),
}

fn truncate_for_error(s: &str) -> String {
    s.chars().take(64).collect()
}

impl FromStr for ReadPolicy {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strong" => Ok(ReadPolicy::Strong),
            "session" => Ok(ReadPolicy::Session),
            _ => {
                let Some(ms) = s.strip_prefix("bounded:") else {
                    return Err(PolicyError::Unknown(truncate_for_error(s)));
                };
                if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(PolicyError::BadMillis(truncate_for_error(s)));
                }
                let ms: u64 = ms
                    .parse()
                    .map_err(|_| PolicyError::BadMillis(truncate_for_error(s)))?;
                Ok(ReadPolicy::BoundedStaleness(Staleness::from_millis(ms)?))
            }
        }
    }
}

impl fmt::Display for ReadPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadPolicy::Strong => f.write_str("strong"),
            ReadPolicy::Session => f.write_str("session"),
            ReadPolicy::BoundedStaleness(s) => write!(f, "bounded:{}", s.0.as_millis()),
        }
    }
}

impl FromStr for StrictRead {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let p: ReadPolicy = s.parse()?;
        p.as_strict().ok_or(PolicyError::NotStrict(p))
    }
}

impl fmt::Display for StrictRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        ReadPolicy::from(*self).fmt(f)
    }
}

impl serde::Serialize for ReadPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ReadPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!("strong".parse::<ReadPolicy>().unwrap(), ReadPolicy::Strong);
        assert_eq!(
            "session".parse::<ReadPolicy>().unwrap(),
            ReadPolicy::Session
        );
        assert_eq!(
            "bounded:250".parse::<ReadPolicy>().unwrap().to_string(),
            "bounded:250"
        );
    }

    #[test]
    fn rejects_bad_policies() {
        assert_eq!(
            "bounded:0".parse::<ReadPolicy>(),
            Err(PolicyError::ZeroStaleness)
        );
        assert!(matches!(
            "bounded:3600001".parse::<ReadPolicy>(),
            Err(PolicyError::StalenessTooLarge { .. })
        ));
        for bad in [
            "",
            "Strong",
            "bounded:",
            "bounded:-5",
            "bounded:+5",
            "bounded:1e3",
            "bounded:99999999999999999999999",
        ] {
            assert!(bad.parse::<ReadPolicy>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            "bounded:10".parse::<StrictRead>(),
            Err(PolicyError::NotStrict(ReadPolicy::BoundedStaleness(
                Staleness::from_millis(10).unwrap()
            )))
        );
    }

    #[test]
    fn serde_uses_the_text_form() {
        let p: ReadPolicy = serde_json::from_str("\"bounded:75\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"bounded:75\"");
        assert!(serde_json::from_str::<ReadPolicy>("\"bounded:0\"").is_err());
    }

    proptest! {
        #[test]
        fn round_trips(ms in 1u64..=3_600_000) {
            let p = ReadPolicy::BoundedStaleness(Staleness::from_millis(ms).unwrap());
            prop_assert_eq!(p.to_string().parse::<ReadPolicy>().unwrap(), p);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".*") {
            let _ = s.parse::<ReadPolicy>();
            let _ = s.parse::<StrictRead>();
        }

        #[test]
        fn arbitrary_bounded_suffix_never_panics(s in "bounded:[0-9+-]{0,30}") {
            if let Ok(ReadPolicy::BoundedStaleness(b)) = s.parse::<ReadPolicy>() {
                prop_assert!(!b.duration().is_zero());
            }
        }
    }
}
