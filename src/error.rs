//! The one error type, with a public classification.
//!
//! Callers ask [`Error::retryability`]; the tables that map SQLSTATEs, gRPC
//! and AWS codes onto it stay private to each adapter.

use std::time::Duration;

use crate::policy::{PolicyError, ReadPolicy};
use crate::record::{Point, Version};
use crate::session::TokenError;
use crate::topology::{Region, TopologyError};

/// Whether an operation that failed with an error may be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Retryability {
    /// The operation did not take effect and may be retried as it is.
    Retryable,
    /// The operation may or may not have taken effect (a commit was sent but
    /// its answer was lost). Resolve it before retrying.
    Ambiguous,
    /// Retrying will not help.
    Permanent,
}

impl Retryability {
    /// `retryable`, `ambiguous` or `permanent`, for traces and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Retryability::Retryable => "retryable",
            Retryability::Ambiguous => "ambiguous",
            Retryability::Permanent => "permanent",
        }
    }
}

/// A boxed error from a database driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in quorate.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A relaxed read was asked of data classified as critical.
    #[error("policy violation: {name} is critical and cannot be read with {policy}")]
    PolicyViolation {
        /// The collection or record name.
        name: String,
        /// The policy that was refused.
        policy: ReadPolicy,
    },
    /// A conditional write found another version than it expected.
    #[error("precondition failed on {key}: current version is {current:?}")]
    Conflict {
        /// The key written.
        key: String,
        /// The version the key has now (`None`: absent).
        current: Option<Version>,
    },
    /// A committed write did not become visible where it was verified before
    /// the deadline.
    #[error("{key} {version} not visible in {region} after {waited:?}")]
    NotVisible {
        /// The key written.
        key: String,
        /// The committed version.
        version: Version,
        /// The region that did not show it.
        region: Region,
        /// How long the check waited.
        waited: Duration,
    },
    /// A read did not meet its policy even at the strongest replica reachable.
    #[error("read of {key} under {policy} could not be served fresh enough ({reason})")]
    FreshnessUnmet {
        /// The key read.
        key: String,
        /// The policy asked for.
        policy: ReadPolicy,
        /// Why the last attempt was rejected.
        reason: &'static str,
    },
    /// A read met a value inside its clock-uncertainty window; retry at a
    /// later timestamp.
    #[error(
        "uncertain read of {key}: a value at {value} is within the uncertainty window of {read}"
    )]
    Uncertainty {
        /// The key read.
        key: String,
        /// The read timestamp.
        read: Point,
        /// The timestamp of the uncertain value.
        value: Point,
    },
    /// A region could not be reached, or is excluded by health checks.
    #[error("region {region} unavailable: {reason}")]
    RegionUnavailable {
        /// The region.
        region: Region,
        /// What failed.
        reason: &'static str,
    },
    /// An attempt timed out. After a commit was sent this is ambiguous.
    #[error("timed out after {after:?} ({})", if *.sent { "request sent" } else { "before send" })]
    Timeout {
        /// How long the attempt ran.
        after: Duration,
        /// Whether the request (for writes: the commit) had been sent.
        sent: bool,
    },
    /// The operation's deadline passed; `last` is the error of the last attempt.
    #[error("deadline exceeded after {attempts} attempt(s): {last}")]
    DeadlineExceeded {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<Error>,
    },
    /// The attempt cap or the retry budget was exhausted.
    #[error("gave up after {attempts} attempt(s): {last}")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<Error>,
    },
    /// A session token could not be used.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A policy was invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A topology or region name was invalid or unknown.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// Invalid input that has no more specific variant (configuration, keys).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A value could not be encoded or decoded.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// A database error, classified by the adapter.
    #[error("backend error{}: {source}", code.as_deref().map(|c| format!(" [{c}]")).unwrap_or_default())]
    Backend {
        /// The adapter's classification.
        retryability: Retryability,
        /// The database's own code (SQLSTATE, gRPC status, AWS error code).
        code: Option<String>,
        /// The driver's error.
        source: BoxError,
    },
}

impl Error {
    /// Whether retrying could help, and whether the outcome is unknown.
    pub fn retryability(&self) -> Retryability {
        match self {
            Error::Uncertainty { .. } | Error::RegionUnavailable { .. } => Retryability::Retryable,
            Error::FreshnessUnmet { .. } => Retryability::Retryable,
            Error::Timeout { sent: false, .. } => Retryability::Retryable,
            Error::Timeout { sent: true, .. } => Retryability::Ambiguous,
            Error::Backend { retryability, .. } => *retryability,
            Error::DeadlineExceeded { last, .. } | Error::RetriesExhausted { last, .. } => {
                match last.retryability() {
                    Retryability::Ambiguous => Retryability::Ambiguous,
                    _ => Retryability::Permanent,
                }
            }
            _ => Retryability::Permanent,
        }
    }

    /// Whether the operation may have taken effect although it failed.
    pub fn is_ambiguous(&self) -> bool {
        self.retryability() == Retryability::Ambiguous
    }

    /// Whether the operation may be retried as it is.
    pub fn is_retryable(&self) -> bool {
        self.retryability() == Retryability::Retryable
    }

    /// A short static name of the variant, for metrics and traces.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::PolicyViolation { .. } => "policy_violation",
            Error::Conflict { .. } => "conflict",
            Error::NotVisible { .. } => "not_visible",
            Error::FreshnessUnmet { .. } => "freshness_unmet",
            Error::Uncertainty { .. } => "uncertainty",
            Error::RegionUnavailable { .. } => "region_unavailable",
            Error::Timeout { .. } => "timeout",
            Error::DeadlineExceeded { .. } => "deadline_exceeded",
            Error::RetriesExhausted { .. } => "retries_exhausted",
            Error::Token(_) => "token",
            Error::Policy(_) => "policy",
            Error::Topology(_) => "topology",
            Error::InvalidInput(_) => "invalid_input",
            Error::Serialization(_) => "serialization",
            Error::Backend { .. } => "backend",
        }
    }

    /// A classified backend error.
    pub fn backend(
        retryability: Retryability,
        code: Option<String>,
        source: impl Into<BoxError>,
    ) -> Error {
        Error::Backend {
            retryability,
            code,
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let r = Region::new("eu").unwrap();
        assert!(Error::RegionUnavailable {
            region: r,
            reason: "isolated"
        }
        .is_retryable());
        assert!(Error::Timeout {
            after: Duration::from_secs(1),
            sent: true
        }
        .is_ambiguous());
        assert_eq!(
            Error::Conflict {
                key: "k".into(),
                current: None
            }
            .retryability(),
            Retryability::Permanent
        );
        let wrapped = Error::DeadlineExceeded {
            attempts: 3,
            last: Box::new(Error::Timeout {
                after: Duration::from_secs(1),
                sent: true,
            }),
        };
        assert!(wrapped.is_ambiguous());
        let e = Error::backend(Retryability::Retryable, Some("40001".into()), "restart");
        assert!(e.is_retryable());
        assert_eq!(e.to_string(), "backend error [40001]: restart");
    }
}
