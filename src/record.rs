//! Records, versions, write outcomes and the freshness every read reports.

use std::fmt;
use std::time::Duration;

use crate::topology::Region;

/// The version a database assigned to one committed write of a key.
///
/// Versions of one key are positive and increase in commit order; `0` never
/// names a committed record and stands for "absent" in preconditions.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Version(pub u64);

impl Version {
    /// The version of the first write of a key.
    pub const FIRST: Version = Version(1);

    /// The version a successful write on top of this one gets.
    pub fn next(self) -> Version {
        Version(self.0 + 1)
    }

    /// A version as a database column holds it (a signed 64-bit integer):
    /// `None` unless it is positive, as every version quorate writes is.
    pub fn from_stored(stored: i64) -> Option<Version> {
        u64::try_from(stored).ok().filter(|v| *v > 0).map(Version)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// A position in a database's commit order: a hybrid-logical timestamp
/// (CockroachDB, the simulator), a WAL LSN (PostgreSQL), or a commit
/// timestamp (Spanner, DynamoDB `written_at`).
///
/// Points of one scope are totally ordered; points of different scopes are
/// never compared (session tokens carry their scope).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Point {
    /// Wall-clock nanoseconds since the Unix epoch, or an LSN.
    pub wall: u64,
    /// Logical counter breaking ties within one wall-clock value.
    pub logical: u32,
}

impl Point {
    /// A hybrid-logical clock timestamp.
    pub const fn hlc(wall_nanos: u64, logical: u32) -> Point {
        Point {
            wall: wall_nanos,
            logical,
        }
    }

    /// A write-ahead-log position.
    pub const fn lsn(lsn: u64) -> Point {
        Point {
            wall: lsn,
            logical: 0,
        }
    }

    /// A physical timestamp in nanoseconds since the Unix epoch.
    pub const fn timestamp(nanos: u64) -> Point {
        Point {
            wall: nanos,
            logical: 0,
        }
    }

    /// The smallest point strictly after this one.
    pub fn successor(self) -> Point {
        match self.logical.checked_add(1) {
            Some(l) => Point::hlc(self.wall, l),
            None => Point::hlc(self.wall.saturating_add(1), 0),
        }
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:010}", self.wall, self.logical)
    }
}

/// A value with the version the database assigned to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The record's version.
    pub version: Version,
    /// The record.
    pub value: T,
}

/// The condition under which a write applies.
///
/// Writes of critical records should be conditional: a write based on what
/// was read succeeds only if nobody else committed in between.
///
/// A deleted record counts as absent: `IfAbsent` admits it (the new record
/// continues the version of the delete) and no `IfVersion` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precondition {
    /// Apply whatever the current version is (last writer wins).
    Any,
    /// Apply only if the key has no record.
    IfAbsent,
    /// Apply only if the current version is exactly this one.
    IfVersion(Version),
}

impl Precondition {
    /// Whether the condition holds for a record currently at `current`.
    pub fn admits(self, current: Option<Version>) -> bool {
        match self {
            Precondition::Any => true,
            Precondition::IfAbsent => current.is_none(),
            Precondition::IfVersion(v) => current == Some(v),
        }
    }

    /// The version the history format records as `expect` (0 = absent),
    /// or `None` for an unconditional write.
    pub fn expected(self) -> Option<u64> {
        match self {
            Precondition::Any => None,
            Precondition::IfAbsent => Some(0),
            Precondition::IfVersion(v) => Some(v.0),
        }
    }
}

/// What a write does to its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation<'a> {
    /// Stores this value.
    Put(&'a bytes::Bytes),
    /// Deletes the record. The delete is a version of its own (a
    /// tombstone), so that a record re-created later continues the
    /// version sequence instead of restarting at 1, and preconditions and
    /// sessions stay sound; deleting an absent record also leaves one.
    Delete,
}

impl<'a> Mutation<'a> {
    /// Whether this is a delete.
    pub fn is_delete(self) -> bool {
        matches!(self, Mutation::Delete)
    }

    /// The value stored (`None` for a delete).
    pub fn value(self) -> Option<&'a bytes::Bytes> {
        match self {
            Mutation::Put(v) => Some(v),
            Mutation::Delete => None,
        }
    }
}

/// The outcome of a successful write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The version the write created (for a delete, its tombstone's).
    pub version: Version,
    /// Where in the commit order it landed (session tokens advance to it).
    pub point: Point,
    /// The region whose leader or replica committed it.
    pub region: Region,
}

/// Which kind of replica served a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicaRole {
    /// The leaseholder, leader, primary, or a quorum: linearizable.
    Leader,
    /// A follower, standby or eventually consistent replica.
    Follower,
}

impl ReplicaRole {
    /// `leader` or `follower`, for traces and metrics.
    pub fn label(self) -> &'static str {
        match self {
            ReplicaRole::Leader => "leader",
            ReplicaRole::Follower => "follower",
        }
    }
}

/// Where and how fresh a read was served.
///
/// Every read returns it; the client checks it against the read's policy and
/// escalates a read that does not meet it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Freshness {
    /// The region that served the read.
    pub region: Region,
    /// The kind of replica that served it.
    pub role: ReplicaRole,
    /// The point the read reflects: every write at or before it is visible.
    /// `None` when the replica cannot state one.
    pub point: Option<Point>,
    /// An upper bound on how far behind the newest committed state the read
    /// may be, when known. Zero for linearizable reads.
    pub staleness_bound: Option<Duration>,
}

/// The result of a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read<T> {
    /// The record, or `None` if the key has none.
    pub value: Option<Versioned<T>>,
    /// When the key has no record because a delete removed it, the version
    /// of that delete (its tombstone): a record re-created later continues
    /// from it, and a session that saw the delete is not behind a replica
    /// that shows it.
    pub deleted: Option<Version>,
    /// Where and how fresh it was served.
    pub freshness: Freshness,
}

impl<T> Read<T> {
    /// The version of the record read (`None` when absent, deleted or not).
    pub fn version(&self) -> Option<Version> {
        self.value.as_ref().map(|v| v.version)
    }

    /// The version of the key's state the read observed: its record's, or
    /// its tombstone's when a delete removed it (`None` when the key never
    /// had a record).
    pub fn observed(&self) -> Option<Version> {
        self.version().or(self.deleted)
    }

    /// Maps the record's value, keeping version and freshness.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Read<U> {
        Read {
            value: self.value.map(|v| Versioned {
                version: v.version,
                value: f(v.value),
            }),
            deleted: self.deleted,
            freshness: self.freshness,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preconditions_admit() {
        assert!(Precondition::Any.admits(None));
        assert!(Precondition::Any.admits(Some(Version(3))));
        assert!(Precondition::IfAbsent.admits(None));
        assert!(!Precondition::IfAbsent.admits(Some(Version(1))));
        assert!(Precondition::IfVersion(Version(2)).admits(Some(Version(2))));
        assert!(!Precondition::IfVersion(Version(2)).admits(Some(Version(3))));
        assert!(!Precondition::IfVersion(Version(2)).admits(None));
        assert_eq!(Precondition::IfAbsent.expected(), Some(0));
        assert_eq!(Precondition::Any.expected(), None);
    }

    #[test]
    fn points_order_and_succeed() {
        assert!(Point::hlc(5, 0) < Point::hlc(5, 1));
        assert!(Point::hlc(5, u32::MAX) < Point::hlc(6, 0));
        assert_eq!(Point::hlc(5, u32::MAX).successor(), Point::hlc(6, 0));
        assert!(Point::hlc(5, 2).successor() > Point::hlc(5, 2));
    }
}
