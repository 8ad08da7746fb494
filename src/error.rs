//! The one error type, with a public classification.
//!
//! Callers ask [`Error::retryability`]; the tables that map SQLSTATEs, gRPC
//! and AWS codes onto it stay private to each adapter.

use std::time::Duration;

use crate::backend::IdempotencyKey;
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
///
/// Each variant's `Display` says what happened at its own layer; the cause,
/// when there is one, is its [`source`](std::error::Error::source) (a
/// driver's error, the last attempt's error). [`Error::report`] prints the
/// whole chain on one line.
///
/// What to do with one follows from [`Error::retryability`]: a
/// [`Conflict`](Error::Conflict) is an answer, not a failure; an
/// ambiguous [`OutcomeUnknown`](Error::OutcomeUnknown) is resolved by
/// writing again with its idempotency key, which applies the write at most
/// once.
///
/// ```
/// use quorate::sim::{Sim, SimConfig};
/// use quorate::{Client, ClientConfig, Error, Precondition, Retryability, WriteOptions};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Error> {
/// let client = Client::new(Sim::new(SimConfig::new(["eu"])?)?, ClientConfig::default())?;
/// let session = client.session();
/// let opts = WriteOptions::default();
/// client.write(&session, "order:1", "new".into(), Precondition::IfAbsent, &opts).await?;
/// match client
///     .write(&session, "order:1", "new".into(), Precondition::IfAbsent, &opts)
///     .await
/// {
///     Err(Error::Conflict { current, .. }) => assert!(current.is_some()),
///     Err(e @ Error::OutcomeUnknown { .. }) => {
///         // Retry with the same key: it returns the first outcome if the
///         // write applied, and applies it otherwise.
///         let Error::OutcomeUnknown { idempotency_key, .. } = &e else { unreachable!() };
///         let again = WriteOptions { idempotency_key: Some(idempotency_key.clone()), ..opts };
///         client.write(&session, "order:1", "new".into(), Precondition::IfAbsent, &again).await?;
///     }
///     Err(e) if e.retryability() == Retryability::Retryable => { /* back off, try later */ }
///     Err(e) => return Err(e),
///     Ok(_) => unreachable!("the record exists"),
/// }
/// # Ok(()) }
/// ```
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
    #[error("precondition failed on {key}: current version is {}", display_version(*.current))]
    Conflict {
        /// The key written.
        key: String,
        /// The version the key has now (`None`: absent).
        current: Option<Version>,
    },
    /// A read-modify-write ([`Collection::update`](crate::Collection::update))
    /// met a conflicting write on every one of its attempts.
    #[error("update of {key} gave up after {attempts} conflicting write(s)")]
    UpdateContended {
        /// The key updated.
        key: String,
        /// Read-modify-write rounds made.
        attempts: u32,
        /// The last conflict.
        #[source]
        last: Box<Error>,
    },
    /// A committed write did not become visible where it was verified before
    /// the deadline. The write applied (once): sending it again is safe only
    /// with the same idempotency key.
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
    /// The session requires a version of a key that the database's leader
    /// does not have: the session token is ahead of the database (forged, or
    /// from a database that was restored or replaced).
    #[error("the session requires {required} of {key} but the leader has {}", display_version(*.found))]
    SessionAhead {
        /// The key read.
        key: String,
        /// The version the session requires.
        required: Version,
        /// The version the leader has (`None`: absent).
        found: Option<Version>,
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
    /// An attempt timed out. After a write's commit was sent this is
    /// ambiguous; a read that times out never is.
    #[error("timed out after {after:?}{}", if *.sent { " with the commit sent (outcome unknown)" } else { "" })]
    Timeout {
        /// How long the attempt ran.
        after: Duration,
        /// Whether a write's commit had been sent (always false for reads).
        sent: bool,
    },
    /// The operation's deadline passed before it succeeded; every attempt
    /// failed without effect (or was proven not to have applied), so it is
    /// retryable. `last` (its source) may be an ambiguous attempt's error
    /// that a lookup then resolved as not applied.
    #[error("deadline exceeded after {attempts} attempt(s)")]
    DeadlineExceeded {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        last: Box<Error>,
    },
    /// The attempt cap or the retry budget was exhausted; every attempt
    /// failed without effect (or was proven not to have applied).
    #[error("gave up after {attempts} attempt(s): {}", if *.budget { "the retry budget is exhausted" } else { "the attempt cap was reached" })]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// Whether the client-wide retry budget (rather than the attempt
        /// cap) ran dry.
        budget: bool,
        /// The last attempt's error.
        #[source]
        last: Box<Error>,
    },
    /// A write's outcome is unknown: an attempt was sent and its answer lost,
    /// and the write could not be resolved before its deadline. It has
    /// applied at most once. Writing again with the same idempotency key
    /// returns its outcome if it applied, and applies it otherwise.
    #[error("outcome of the write to {key} is unknown after {attempts} attempt(s); retry with idempotency key {idempotency_key} to resolve it")]
    OutcomeUnknown {
        /// The key written.
        key: String,
        /// The logical write's key: pass it in
        /// [`WriteOptions::idempotency_key`](crate::WriteOptions) to retry.
        idempotency_key: IdempotencyKey,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        last: Box<Error>,
    },
    /// An idempotency key already names a write of another record. A key
    /// names one logical write; reusing it for another record would return
    /// that record's outcome.
    #[error("idempotency key {idempotency_key} was already used for a write of another record than {key}")]
    IdempotencyKeyReused {
        /// The key this write was for.
        key: String,
        /// The reused idempotency key.
        idempotency_key: IdempotencyKey,
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
    /// A setting from a file, the environment or a builder is not right;
    /// the error names the field and where its value came from.
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    /// Invalid input that has no more specific variant (configuration, keys).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The backend cannot do what was asked (a multi-record write on a
    /// table that refuses transactions, say); the text names it and why.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A value could not be encoded or decoded.
    #[error("a value could not be serialized or deserialized")]
    Serialization(#[from] serde_json::Error),
    /// A database error, classified by the adapter.
    #[error("{} database error{}", retryability.label(), code.as_deref().map(|c| format!(" [{c}]")).unwrap_or_default())]
    Backend {
        /// The adapter's classification.
        retryability: Retryability,
        /// The database's own code (SQLSTATE, gRPC status, AWS error code).
        code: Option<String>,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
}

fn display_version(v: Option<Version>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "absent".to_owned(),
    }
}

impl Error {
    /// Whether retrying could help, and whether the outcome is unknown.
    ///
    /// ```
    /// use quorate::{Error, Retryability};
    ///
    /// fn what_to_do(e: &Error) -> &'static str {
    ///     match e.retryability() {
    ///         // Nothing applied: the same call may be made again.
    ///         Retryability::Retryable => "retry",
    ///         // It may have applied: retry with the same idempotency key
    ///         // (the client resolves it; never a fresh write).
    ///         Retryability::Ambiguous => "resolve",
    ///         // Retrying cannot help: the input or the state is wrong.
    ///         Retryability::Permanent => "give up",
    ///     }
    /// }
    /// assert_eq!(what_to_do(&Error::InvalidInput("bad key".into())), "give up");
    /// ```
    pub fn retryability(&self) -> Retryability {
        match self {
            Error::Uncertainty { .. } | Error::RegionUnavailable { .. } => Retryability::Retryable,
            Error::FreshnessUnmet { .. } => Retryability::Retryable,
            Error::Timeout { sent: false, .. } => Retryability::Retryable,
            Error::Timeout { sent: true, .. } => Retryability::Ambiguous,
            Error::Backend { retryability, .. } => *retryability,
            Error::OutcomeUnknown { .. } => Retryability::Ambiguous,
            // The client ends an operation with these only when every
            // attempt failed without effect or was proven not applied (a
            // write with an attempt still unknown ends as OutcomeUnknown),
            // so they are retryable whatever the last attempt's error was.
            Error::DeadlineExceeded { .. } | Error::RetriesExhausted { .. } => {
                Retryability::Retryable
            }
            Error::UpdateContended { .. } => Retryability::Retryable,
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
            Error::UpdateContended { .. } => "update_contended",
            Error::NotVisible { .. } => "not_visible",
            Error::FreshnessUnmet { .. } => "freshness_unmet",
            Error::SessionAhead { .. } => "session_ahead",
            Error::Uncertainty { .. } => "uncertainty",
            Error::RegionUnavailable { .. } => "region_unavailable",
            Error::Timeout { .. } => "timeout",
            Error::DeadlineExceeded { .. } => "deadline_exceeded",
            Error::RetriesExhausted { .. } => "retries_exhausted",
            Error::OutcomeUnknown { .. } => "outcome_unknown",
            Error::IdempotencyKeyReused { .. } => "idempotency_key_reused",
            Error::Token(_) => "token",
            Error::Policy(_) => "policy",
            Error::Topology(_) => "topology",
            Error::Settings(_) => "settings",
            Error::InvalidInput(_) => "invalid_input",
            Error::Unsupported(_) => "unsupported",
            Error::Serialization(_) => "serialization",
            Error::Backend { .. } => "backend",
        }
    }

    /// The database's own error code (SQLSTATE, gRPC status, AWS error
    /// code) of this error or of the attempt error it wraps.
    pub fn code(&self) -> Option<&str> {
        let mut cur: Option<&Error> = Some(self);
        while let Some(e) = cur {
            match e {
                Error::Backend { code, .. } => return code.as_deref(),
                Error::DeadlineExceeded { last, .. }
                | Error::RetriesExhausted { last, .. }
                | Error::OutcomeUnknown { last, .. }
                | Error::UpdateContended { last, .. } => cur = Some(last),
                _ => cur = None,
            }
        }
        None
    }

    /// The error and its causes on one line, outermost first, separated by
    /// `": "`, for logs that print only `Display`.
    ///
    /// ```
    /// use quorate::{Error, Retryability};
    ///
    /// let e = Error::RetriesExhausted {
    ///     attempts: 3,
    ///     budget: true,
    ///     last: Box::new(Error::backend(Retryability::Retryable, Some("40001".into()), "restart transaction")),
    /// };
    /// assert_eq!(
    ///     e.report().to_string(),
    ///     "gave up after 3 attempt(s): the retry budget is exhausted: \
    ///      retryable database error [40001]: restart transaction"
    /// );
    /// assert_eq!(e.code(), Some("40001"));
    /// ```
    pub fn report(&self) -> Report<'_> {
        Report(self)
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

    /// The same error as the outcome of a read: a read changes nothing, so
    /// what would be ambiguous for a write is retryable.
    pub(crate) fn for_read(self) -> Error {
        match self {
            Error::Timeout { after, sent: true } => Error::Timeout { after, sent: false },
            Error::Backend {
                retryability: Retryability::Ambiguous,
                code,
                source,
            } => Error::Backend {
                retryability: Retryability::Retryable,
                code,
                source,
            },
            other => other,
        }
    }
}

/// An error with its chain of causes; see [`Error::report`].
#[derive(Debug, Clone, Copy)]
pub struct Report<'a>(&'a Error);

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = std::error::Error::source(self.0);
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
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
        let e = Error::backend(Retryability::Retryable, Some("40001".into()), "restart");
        assert!(e.is_retryable());
        assert_eq!(e.to_string(), "retryable database error [40001]");
        assert_eq!(
            e.report().to_string(),
            "retryable database error [40001]: restart"
        );
    }

    #[test]
    fn giving_up_keeps_the_class_of_what_caused_it() {
        let retryable = || Error::backend(Retryability::Retryable, Some("40001".into()), "x");
        for e in [
            Error::RetriesExhausted {
                attempts: 3,
                budget: true,
                last: Box::new(retryable()),
            },
            Error::DeadlineExceeded {
                attempts: 3,
                last: Box::new(retryable()),
            },
        ] {
            assert_eq!(e.retryability(), Retryability::Retryable, "{e}");
            assert_eq!(e.code(), Some("40001"), "the code is kept");
        }
        // The client ends a write this way only after a lookup proved its
        // ambiguous attempt not applied: retryable, whatever `last` was.
        let resolved = Error::DeadlineExceeded {
            attempts: 1,
            last: Box::new(Error::Timeout {
                after: Duration::from_secs(1),
                sent: true,
            }),
        };
        assert_eq!(resolved.retryability(), Retryability::Retryable);
        let unknown = Error::OutcomeUnknown {
            key: "k".into(),
            idempotency_key: IdempotencyKey::new("w-1").unwrap(),
            attempts: 2,
            last: Box::new(retryable()),
        };
        assert!(unknown.is_ambiguous());
        assert!(unknown.to_string().contains("w-1"), "{unknown}");
    }

    #[test]
    fn one_layer_per_cause() {
        let inner = Error::backend(
            Retryability::Ambiguous,
            Some("08006".into()),
            "connection lost",
        );
        let outer = Error::DeadlineExceeded {
            attempts: 2,
            last: Box::new(inner),
        };
        let text = outer.to_string();
        assert_eq!(text, "deadline exceeded after 2 attempt(s)");
        assert_eq!(
            outer.report().to_string(),
            "deadline exceeded after 2 attempt(s): ambiguous database error [08006]: connection lost"
        );
        let report = outer.report().to_string();
        assert_eq!(report.matches("database error").count(), 1, "{report}");
    }

    #[test]
    fn reads_are_never_ambiguous() {
        let timeout = Error::Timeout {
            after: Duration::from_secs(1),
            sent: true,
        };
        assert!(!timeout.for_read().is_ambiguous());
        let lost = Error::backend(Retryability::Ambiguous, Some("08006".into()), "lost");
        let read = lost.for_read();
        assert!(read.is_retryable());
        assert_eq!(read.code(), Some("08006"));
    }
}
