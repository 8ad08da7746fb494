//! The SQL each policy and write maps to, per dialect. Statements are built
//! from validated identifiers only; every value travels as a parameter.

use std::fmt;
use std::time::Duration;

use quorate::{Error, Point, Precondition, Region};

/// Which database speaks on the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: a primary and hot standbys; session progress is the
    /// commit WAL LSN.
    Postgres,
    /// CockroachDB: every node is a gateway; session progress is the commit
    /// HLC timestamp; follower reads through `AS OF SYSTEM TIME`.
    Cockroach,
}

/// A validated SQL identifier: `[a-z_][a-z0-9_]{0,62}` — no quoting needed,
/// nothing to inject.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ident(String);

impl Ident {
    /// Validates an identifier.
    pub fn new(name: &str) -> Result<Ident, Error> {
        let mut bytes = name.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
        if !first_ok
            || name.len() > 63
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(Error::InvalidInput(format!(
                "invalid SQL identifier {:?}: use 1-63 characters of a-z, 0-9, '_', not starting with a digit",
                name.chars().take(64).collect::<String>()
            )));
        }
        Ok(Ident(name.to_owned()))
    }

    /// The identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The records table and its idempotency table (`<table>_idempotency`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    /// Records: `key TEXT PRIMARY KEY, version BIGINT, value BYTEA, written_at`.
    pub records: Ident,
    /// Idempotency records, kept until `expires_at`.
    pub idempotency: Ident,
}

impl Tables {
    /// The tables named `table` and `table_idempotency`.
    pub fn new(table: &str) -> Result<Tables, Error> {
        let records = Ident::new(table)?;
        let idempotency = Ident::new(&format!("{table}_idempotency"))?;
        Ok(Tables {
            records,
            idempotency,
        })
    }

    /// Statements creating both tables (idempotent).
    pub fn create(&self, dialect: Dialect) -> Vec<String> {
        let (t, i) = (&self.records, &self.idempotency);
        let bytes = match dialect {
            Dialect::Postgres => "BYTEA",
            Dialect::Cockroach => "BYTES",
        };
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, version BIGINT NOT NULL, value {bytes} NOT NULL, written_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {i} (idem_key TEXT PRIMARY KEY, record_key TEXT NOT NULL, version BIGINT NOT NULL, commit_point TEXT, region TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL)"
            ),
        ]
    }

    /// Deletes idempotency records past their expiry.
    pub fn purge_expired(&self) -> String {
        format!("DELETE FROM {} WHERE expires_at < now()", self.idempotency)
    }

    /// A linearizable read: the record and the point it reflects.
    /// Parameters: `$1` key. Columns: version, value, point.
    /// (CockroachDB; PostgreSQL's primary reads need no point, see
    /// [`Tables::primary_read`].)
    pub fn strong_read(&self, dialect: Dialect) -> String {
        match dialect {
            Dialect::Postgres => self.primary_read(),
            Dialect::Cockroach => format!(
                "SELECT t.version, t.value, cluster_logical_timestamp()::STRING FROM (SELECT 1) AS one \
                 LEFT JOIN {} AS t ON t.key = $1",
                self.records
            ),
        }
    }

    /// A read on the PostgreSQL primary: linearizable by itself, so no point
    /// is fetched (the read costs what a plain `SELECT` costs). Parameters:
    /// `$1` key. Columns: version, value.
    pub fn primary_read(&self) -> String {
        format!("SELECT version, value FROM {} WHERE key = $1", self.records)
    }

    /// A read at a PostgreSQL standby that reports, in the same statement,
    /// how far the standby has replayed and how old its last replayed
    /// transaction is. Parameters: `$1` key. Columns: version, value,
    /// replay LSN, staleness in seconds.
    pub fn standby_read(&self) -> String {
        format!(
            "SELECT t.version, t.value, pg_last_wal_replay_lsn()::text, \
             EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))::float8 \
             FROM (SELECT 1) AS one LEFT JOIN {} AS t ON t.key = $1",
            self.records
        )
    }

    /// A CockroachDB follower read under a policy: `with_min_timestamp` for a
    /// session (parameter `$2`, the session's HLC as a timestamp),
    /// `with_max_staleness` for a bound, `follower_read_timestamp()` with no
    /// bound. Parameters: `$1` key. Columns: version, value, read timestamp.
    pub fn follower_read(&self, read: FollowerRead) -> String {
        let aost = match read {
            FollowerRead::AtLeast => "with_min_timestamp($2::TIMESTAMPTZ)".to_owned(),
            FollowerRead::Bounded(d) => {
                format!("with_max_staleness('{}ms'::INTERVAL)", d.as_millis().max(1))
            }
            FollowerRead::Latest => "follower_read_timestamp()".to_owned(),
        };
        format!(
            "SELECT version, value, crdb_internal.approximate_timestamp(crdb_internal_mvcc_timestamp)::STRING \
             FROM {} AS OF SYSTEM TIME {aost} WHERE key = $1",
            self.records
        )
    }

    /// The conditional write with its idempotency record, in one statement
    /// (one implicit transaction). Parameters: `$1` key, `$2` value, `$3`
    /// idempotency key, `$4` expected version (`IfVersion` only), `$5`
    /// region, `$6` idempotency TTL in seconds. Columns: the version
    /// written (NULL when the precondition failed), the expected version,
    /// and the write's point.
    ///
    /// A second attempt of a write that already applied is caught without
    /// an extra read on the fast path: its precondition fails (nothing is
    /// recorded), or, for an unconditional write, the idempotency key's
    /// primary key rejects the statement as a whole (SQLSTATE 23505) and
    /// nothing is applied; either way the caller then looks the key up.
    ///
    /// The point is taken inside the statement: CockroachDB's commit
    /// timestamp, or PostgreSQL's WAL insert position after the write's own
    /// records. The latter precedes the write's commit record; a session
    /// token stays correct because it also carries the version of the keys
    /// it wrote last (which a replica must show) and every earlier write
    /// committed before this position.
    pub fn write(&self, dialect: Dialect, precondition: Precondition) -> String {
        let (t, i) = (&self.records, &self.idempotency);
        let apply = match precondition {
            Precondition::IfVersion(_) => format!(
                "UPDATE {t} SET value = $2, version = version + 1, written_at = now() \
                 WHERE key = $1 AND version = $4 RETURNING version"
            ),
            Precondition::IfAbsent => format!(
                "INSERT INTO {t} (key, value, version, written_at) VALUES ($1, $2, 1, now()) \
                 ON CONFLICT (key) DO NOTHING RETURNING version"
            ),
            Precondition::Any => format!(
                "INSERT INTO {t} AS t (key, value, version, written_at) VALUES ($1, $2, 1, now()) \
                 ON CONFLICT (key) DO UPDATE \
                 SET value = EXCLUDED.value, version = t.version + 1, written_at = now() RETURNING version"
            ),
        };
        let point = match dialect {
            Dialect::Postgres => "pg_current_wal_insert_lsn()::text",
            Dialect::Cockroach => "cluster_logical_timestamp()::STRING",
        };
        // `$4` is referenced by every form so that one parameter list fits all.
        format!(
            "WITH applied AS ({apply}), \
             recorded AS (INSERT INTO {i} (idem_key, record_key, version, region, expires_at) \
               SELECT $3, $1, version, $5, now() + $6::BIGINT * INTERVAL '1 second' FROM applied) \
             SELECT (SELECT version FROM applied), $4::BIGINT, {point}"
        )
    }

    /// The outcome recorded for an idempotency key. Parameters: `$1`.
    /// Columns: version, region.
    pub fn lookup(&self) -> String {
        format!(
            "SELECT version, region FROM {} WHERE idem_key = $1",
            self.idempotency
        )
    }

    /// The current version of a record. Parameters: `$1` key.
    pub fn current_version(&self) -> String {
        format!("SELECT version FROM {} WHERE key = $1", self.records)
    }
}

/// The kinds of CockroachDB follower reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowerRead {
    /// At least the session's timestamp (`with_min_timestamp`).
    AtLeast,
    /// At most this stale (`with_max_staleness`).
    Bounded(Duration),
    /// The newest timestamp followers can serve (`follower_read_timestamp()`).
    Latest,
}

/// How a CockroachDB passthrough read opens its transaction under a policy:
/// `None` for a strong read (a normal transaction); for a session read, a
/// historical read at the session's own timestamp (it sees everything the
/// session saw, and followers can serve it once closed); for a bounded read
/// of at least `follower_lag`, the follower read timestamp. A bound below the
/// follower lag reads strongly. The timestamp is formatted from a `Point`,
/// never from caller text.
pub fn cockroach_begin(
    policy: quorate::ReadPolicy,
    min_point: Option<Point>,
    follower_lag: Duration,
) -> Option<String> {
    match policy {
        quorate::ReadPolicy::Session => {
            min_point.map(|p| format!("BEGIN AS OF SYSTEM TIME '{}.{:010}'", p.wall, p.logical))
        }
        quorate::ReadPolicy::BoundedStaleness(b) if b.duration() >= follower_lag => {
            Some("BEGIN AS OF SYSTEM TIME follower_read_timestamp()".to_owned())
        }
        _ => None,
    }
}

/// The point a session token records after a write.
pub fn commit_point(dialect: Dialect) -> &'static str {
    match dialect {
        // After the implicit transaction committed: at or after its commit
        // record.
        Dialect::Postgres => "SELECT pg_current_wal_lsn()::text",
        // Inside the transaction: its commit timestamp.
        Dialect::Cockroach => "SELECT cluster_logical_timestamp()::STRING",
    }
}

/// Statements that make a CockroachDB database multi-region: a primary
/// region, the others added, surviving a region failure, and the records
/// table regional by row.
pub fn multi_region_setup(
    database: &Ident,
    tables: &Tables,
    primary: &Region,
    others: &[Region],
) -> Vec<String> {
    let mut out = vec![format!(
        "ALTER DATABASE {database} SET PRIMARY REGION \"{primary}\""
    )];
    for r in others {
        out.push(format!(
            "ALTER DATABASE {database} ADD REGION IF NOT EXISTS \"{r}\""
        ));
    }
    out.push(format!("ALTER DATABASE {database} SURVIVE REGION FAILURE"));
    out.push(format!(
        "ALTER TABLE {} SET LOCALITY REGIONAL BY ROW",
        tables.records
    ));
    out.push(format!(
        "ALTER TABLE {} SET LOCALITY REGIONAL BY ROW",
        tables.idempotency
    ));
    out
}

/// Parses a PostgreSQL LSN (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Result<Point, Error> {
    let bad = || {
        Error::InvalidInput(format!(
            "not an LSN: {:?}",
            text.chars().take(32).collect::<String>()
        ))
    };
    let (hi, lo) = text.split_once('/').ok_or_else(bad)?;
    if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
        return Err(bad());
    }
    let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
    let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
    Ok(Point::lsn((hi << 32) | lo))
}

/// Formats a point as a PostgreSQL LSN.
pub fn format_lsn(point: Point) -> String {
    format!("{:X}/{:X}", point.wall >> 32, point.wall & 0xffff_ffff)
}

/// Parses a CockroachDB HLC decimal (`1700000000123456789.0000000002`).
pub fn parse_hlc(text: &str) -> Result<Point, Error> {
    let bad = || {
        Error::InvalidInput(format!(
            "not an HLC timestamp: {:?}",
            text.chars().take(40).collect::<String>()
        ))
    };
    let (wall, logical) = text.split_once('.').unwrap_or((text, "0"));
    let wall: u64 = wall.parse().map_err(|_| bad())?;
    let logical: u32 = if logical.is_empty() {
        0
    } else {
        logical.parse().map_err(|_| bad())?
    };
    Ok(Point::hlc(wall, logical))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> Tables {
        Tables::new("records").unwrap()
    }

    #[test]
    fn identifiers_are_validated() {
        for bad in [
            "",
            "Records",
            "rec ords",
            "rec\"ords",
            "1records",
            "records;drop",
            &"a".repeat(64),
        ] {
            assert!(Ident::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Ident::new("records_2").is_ok());
        assert!(
            Tables::new(&"a".repeat(60)).is_err(),
            "the idempotency table name would be too long"
        );
    }

    #[test]
    fn strong_reads() {
        assert_eq!(
            tables().strong_read(Dialect::Postgres),
            "SELECT version, value FROM records WHERE key = $1"
        );
        assert_eq!(
            tables().strong_read(Dialect::Cockroach),
            "SELECT t.version, t.value, cluster_logical_timestamp()::STRING FROM (SELECT 1) AS one LEFT JOIN records AS t ON t.key = $1"
        );
    }

    #[test]
    fn cockroach_follower_reads() {
        assert_eq!(
            tables().follower_read(FollowerRead::AtLeast),
            "SELECT version, value, crdb_internal.approximate_timestamp(crdb_internal_mvcc_timestamp)::STRING \
             FROM records AS OF SYSTEM TIME with_min_timestamp($2::TIMESTAMPTZ) WHERE key = $1"
        );
        assert!(tables()
            .follower_read(FollowerRead::Bounded(Duration::from_secs(5)))
            .contains("AS OF SYSTEM TIME with_max_staleness('5000ms'::INTERVAL) WHERE key = $1"));
        assert!(tables()
            .follower_read(FollowerRead::Latest)
            .contains("AS OF SYSTEM TIME follower_read_timestamp() WHERE key = $1"));
    }

    #[test]
    fn standby_reads_check_replay_in_the_same_statement() {
        let sql = tables().standby_read();
        assert!(sql.contains("pg_last_wal_replay_lsn()::text"));
        assert!(sql.contains("pg_last_xact_replay_timestamp()"));
        assert!(sql.ends_with("LEFT JOIN records AS t ON t.key = $1"));
    }

    #[test]
    fn writes_are_conditional_and_record_idempotency_in_one_statement() {
        let update = tables().write(
            Dialect::Postgres,
            Precondition::IfVersion(quorate::Version(3)),
        );
        assert!(update.contains("UPDATE records SET value = $2, version = version + 1, written_at = now() WHERE key = $1 AND version = $4 RETURNING version"));
        assert!(update.contains(
            "INSERT INTO records_idempotency (idem_key, record_key, version, region, expires_at)"
        ));
        assert!(update.starts_with("WITH applied AS (UPDATE records"));
        let create = tables().write(Dialect::Postgres, Precondition::IfAbsent);
        assert!(create.contains("ON CONFLICT (key) DO NOTHING RETURNING version"));
        assert!(create.ends_with("$4::BIGINT, pg_current_wal_insert_lsn()::text"));
        assert!(tables()
            .write(Dialect::Cockroach, Precondition::IfAbsent)
            .ends_with("cluster_logical_timestamp()::STRING"));
        let blind = tables().write(Dialect::Postgres, Precondition::Any);
        assert!(blind.contains("DO UPDATE SET value = EXCLUDED.value, version = t.version + 1"));
        for sql in [update, create, blind] {
            let without_unit = sql.replace("INTERVAL '1 second'", "");
            assert!(!without_unit.contains('\''), "no literal values: {sql}");
        }
    }

    #[test]
    fn multi_region_statements() {
        let db = Ident::new("bank").unwrap();
        let stmts = multi_region_setup(
            &db,
            &tables(),
            &Region::new("eu-west1").unwrap(),
            &[
                Region::new("us-east1").unwrap(),
                Region::new("ap-south1").unwrap(),
            ],
        );
        assert_eq!(
            stmts,
            vec![
                "ALTER DATABASE bank SET PRIMARY REGION \"eu-west1\"",
                "ALTER DATABASE bank ADD REGION IF NOT EXISTS \"us-east1\"",
                "ALTER DATABASE bank ADD REGION IF NOT EXISTS \"ap-south1\"",
                "ALTER DATABASE bank SURVIVE REGION FAILURE",
                "ALTER TABLE records SET LOCALITY REGIONAL BY ROW",
                "ALTER TABLE records_idempotency SET LOCALITY REGIONAL BY ROW",
            ]
        );
    }

    #[test]
    fn cockroach_passthrough_transactions() {
        let lag = Duration::from_millis(4800);
        assert_eq!(
            cockroach_begin(quorate::ReadPolicy::Strong, None, lag),
            None
        );
        assert_eq!(
            cockroach_begin(
                quorate::ReadPolicy::Session,
                Some(Point::hlc(1_700_000_000_123_456_789, 2)),
                lag
            )
            .as_deref(),
            Some("BEGIN AS OF SYSTEM TIME '1700000000123456789.0000000002'")
        );
        assert_eq!(
            cockroach_begin(quorate::ReadPolicy::Session, None, lag),
            None
        );
        let bounded = |ms| {
            quorate::ReadPolicy::BoundedStaleness(quorate::Staleness::from_millis(ms).unwrap())
        };
        assert_eq!(
            cockroach_begin(bounded(10_000), None, lag).as_deref(),
            Some("BEGIN AS OF SYSTEM TIME follower_read_timestamp()")
        );
        assert_eq!(
            cockroach_begin(bounded(1_000), None, lag),
            None,
            "too tight for follower reads: strong"
        );
    }

    #[test]
    fn lsns_and_hlcs() {
        let p = parse_lsn("16/B374D848").unwrap();
        assert_eq!(p.wall, (0x16 << 32) | 0xB374D848);
        assert_eq!(format_lsn(p), "16/B374D848");
        assert!(parse_lsn("0/0").unwrap() < parse_lsn("0/1").unwrap());
        for bad in ["", "16", "/1", "1/", "x/1", "123456789/1", "1/2/3"] {
            assert!(parse_lsn(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_hlc("1700000000123456789.0000000002").unwrap(),
            Point::hlc(1_700_000_000_123_456_789, 2)
        );
        assert_eq!(parse_hlc("17").unwrap(), Point::hlc(17, 0));
        assert!(parse_hlc("x.1").is_err());
    }
}
