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

/// A table name, optionally qualified by its schema (`shop.orders`), each
/// part an [`Ident`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableName(String);

impl TableName {
    /// Validates a table name: `table` or `schema.table`.
    pub fn new(name: &str) -> Result<TableName, Error> {
        let mut parts = name.splitn(2, '.');
        for part in parts.by_ref() {
            Ident::new(part)?;
        }
        Ok(TableName(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A table of the application's own that holds one collection's records
/// natively: each record a row keyed by the application's key column, its
/// value a `JSONB` document any SQL can query (`body->>'status'`), and
/// quorate's bookkeeping in three columns of its own beside them.
///
/// ```
/// use quorate_cockroach::NativeTable;
///
/// let orders = NativeTable::new("shop.orders", "order_id", "body")?;
/// assert_eq!(orders.version.as_str(), "quorate_version");
/// let renamed = orders.clone().bookkeeping("qr_")?;
/// assert_eq!(renamed.deleted.as_str(), "qr_deleted");
/// // Bookkeeping may not take a column of the application's.
/// assert!(NativeTable::new("orders", "quorate_version", "body").is_err());
/// # Ok::<(), quorate_cockroach::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeTable {
    /// The table.
    pub table: TableName,
    /// The key column (`TEXT`, the primary key): the record's key within
    /// its collection.
    pub key: Ident,
    /// The value column (`JSONB`).
    pub document: Ident,
    /// The record's version (`BIGINT`; rows that were there before quorate
    /// take 1).
    pub version: Ident,
    /// When the record was last written (`TIMESTAMPTZ`).
    pub written_at: Ident,
    /// Whether the row is a delete's tombstone (`BOOLEAN`): it stays, with
    /// the delete's version and a JSON `null` document, so that a record
    /// re-created later goes on from its version. Other readers of the
    /// table skip such rows (`WHERE NOT quorate_deleted`).
    pub deleted: Ident,
}

impl NativeTable {
    /// The table `table` keyed by `key`, its values in `document`, with the
    /// bookkeeping columns `quorate_version`, `quorate_written_at` and
    /// `quorate_deleted`.
    pub fn new(table: &str, key: &str, document: &str) -> Result<NativeTable, Error> {
        NativeTable {
            table: TableName::new(table)?,
            key: Ident::new(key)?,
            document: Ident::new(document)?,
            version: Ident::new("quorate_version")?,
            written_at: Ident::new("quorate_written_at")?,
            deleted: Ident::new("quorate_deleted")?,
        }
        .distinct()
    }

    /// The same table with the bookkeeping columns named `<prefix>version`,
    /// `<prefix>written_at` and `<prefix>deleted`.
    pub fn bookkeeping(self, prefix: &str) -> Result<NativeTable, Error> {
        NativeTable {
            version: Ident::new(&format!("{prefix}version"))?,
            written_at: Ident::new(&format!("{prefix}written_at"))?,
            deleted: Ident::new(&format!("{prefix}deleted"))?,
            ..self
        }
        .distinct()
    }

    fn distinct(self) -> Result<NativeTable, Error> {
        quorate::distinct_columns(
            self.table.as_str(),
            &[
                self.key.as_str(),
                self.document.as_str(),
                self.version.as_str(),
                self.written_at.as_str(),
                self.deleted.as_str(),
            ],
            false,
        )?;
        Ok(self)
    }

    /// Statements that create the table if it does not exist and, if it
    /// does, add the bookkeeping columns it lacks (existing rows become
    /// version 1, live). The key and document columns of an existing
    /// table are the application's and are left as they are.
    pub fn create(&self) -> Vec<String> {
        let NativeTable {
            table: t,
            key,
            document,
            version,
            written_at,
            deleted,
        } = self;
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} ({key} TEXT PRIMARY KEY, {document} JSONB NOT NULL, \
                 {version} BIGINT NOT NULL DEFAULT 1, {written_at} TIMESTAMPTZ NOT NULL DEFAULT now(), \
                 {deleted} BOOLEAN NOT NULL DEFAULT false)"
            ),
            format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {version} BIGINT NOT NULL DEFAULT 1"),
            format!(
                "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {written_at} TIMESTAMPTZ NOT NULL DEFAULT now()"
            ),
            format!(
                "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {deleted} BOOLEAN NOT NULL DEFAULT false"
            ),
        ]
    }

    /// The columns the table must have and the types they may have, as
    /// `information_schema.columns` names them.
    pub fn expected_columns(&self) -> [(&Ident, &'static [&'static str]); 5] {
        [
            (&self.key, &["text", "character varying"]),
            (&self.document, &["jsonb"]),
            (&self.version, &["bigint"]),
            (&self.written_at, &["timestamp with time zone"]),
            (&self.deleted, &["boolean"]),
        ]
    }
}

/// The columns of a records table and how its values are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Columns {
    key: Ident,
    value: Ident,
    version: Ident,
    written_at: Ident,
    deleted: Ident,
    /// Values are `JSONB` documents (else raw bytes).
    json: bool,
}

/// The records table and its idempotency table (`<table>_idempotency`),
/// or a [`NativeTable`] with the idempotency table of quorate's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    /// Records: `key TEXT PRIMARY KEY, version BIGINT, value BYTEA,
    /// written_at, deleted BOOLEAN` (a deleted record stays as a tombstone
    /// row, so that its version sequence goes on when it is re-created);
    /// or a native table.
    pub records: TableName,
    /// Idempotency records, kept until `expires_at`.
    pub idempotency: Ident,
    columns: Columns,
}

impl Tables {
    /// The tables named `table` and `table_idempotency`.
    pub fn new(table: &str) -> Result<Tables, Error> {
        let records = Ident::new(table)?;
        let idempotency = Ident::new(&format!("{table}_idempotency"))?;
        Ok(Tables {
            records: TableName(records.0),
            idempotency,
            columns: Columns {
                key: Ident("key".into()),
                value: Ident("value".into()),
                version: Ident("version".into()),
                written_at: Ident("written_at".into()),
                deleted: Ident("deleted".into()),
                json: false,
            },
        })
    }

    /// The statements of a native table, whose writes record their
    /// outcomes in `own`'s idempotency table.
    pub fn native(native: &NativeTable, own: &Tables) -> Tables {
        Tables {
            records: native.table.clone(),
            idempotency: own.idempotency.clone(),
            columns: Columns {
                key: native.key.clone(),
                value: native.document.clone(),
                version: native.version.clone(),
                written_at: native.written_at.clone(),
                deleted: native.deleted.clone(),
                json: true,
            },
        }
    }

    /// Whether values are JSON documents (a native table).
    pub fn json(&self) -> bool {
        self.columns.json
    }

    /// The value as a statement reads it, always as bytes: a document's
    /// text (a row with no document reads as JSON `null`).
    fn value_out(&self, alias: &str) -> String {
        let value = &self.columns.value;
        if self.columns.json {
            format!("convert_to(COALESCE({alias}{value}, 'null'::JSONB)::TEXT, 'UTF8')")
        } else {
            format!("{alias}{value}")
        }
    }

    /// The value parameter `$n` (bytes) as the column takes it.
    fn value_in(&self, n: u8) -> String {
        if self.columns.json {
            format!("convert_from(${n}, 'UTF8')::JSONB")
        } else {
            format!("${n}")
        }
    }

    /// A query of a collection's records: those `filter` (a condition on
    /// the table's columns, parameters `$1` to `$params`) admits, tombstones
    /// left out, in key order. Quorate's own table holds every collection,
    /// so its records are also limited to the keys from `$params+1` up to
    /// `$params+2` (the collection's prefix and the next one). Columns:
    /// key (in the collection on a native table, whole in quorate's own),
    /// version, value.
    pub fn select(&self, filter: &str, params: usize) -> String {
        let c = &self.columns;
        let filter = if filter.trim().is_empty() {
            "TRUE"
        } else {
            filter
        };
        let range = if c.json {
            String::new()
        } else {
            format!(
                "{key} >= ${lo} AND {key} < ${hi} AND ",
                key = c.key,
                lo = params + 1,
                hi = params + 2
            )
        };
        format!(
            "SELECT {key}::TEXT, {version}, {value} FROM {table} \
             WHERE {range}{deleted} IS NOT TRUE AND ({filter}) ORDER BY {key}",
            key = c.key,
            version = c.version,
            value = self.value_out(""),
            table = self.records,
            deleted = c.deleted,
        )
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
                "CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, version BIGINT NOT NULL, value {bytes} NOT NULL, written_at TIMESTAMPTZ NOT NULL DEFAULT now(), deleted BOOLEAN NOT NULL DEFAULT false)"
            ),
            // Tables made by earlier releases lack the tombstone's column.
            format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS deleted BOOLEAN NOT NULL DEFAULT false"),
            format!(
                "CREATE TABLE IF NOT EXISTS {i} (idem_key TEXT PRIMARY KEY, record_key TEXT NOT NULL, version BIGINT NOT NULL, commit_point TEXT, region TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL, fenced_before BIGINT, versions TEXT)"
            ),
            // Tables made by earlier releases lack the fence's column, and
            // the versions of a multi-record write.
            format!("ALTER TABLE {i} ADD COLUMN IF NOT EXISTS fenced_before BIGINT"),
            format!("ALTER TABLE {i} ADD COLUMN IF NOT EXISTS versions TEXT"),
        ]
    }

    /// Deletes idempotency records past their expiry.
    pub fn purge_expired(&self) -> String {
        format!("DELETE FROM {} WHERE expires_at < now()", self.idempotency)
    }

    /// A linearizable read: the record and the point it reflects.
    /// Parameters: `$1` key. Columns: version, value, point, deleted.
    pub fn strong_read(&self, dialect: Dialect) -> String {
        match dialect {
            Dialect::Postgres => self.primary_read(),
            Dialect::Cockroach => {
                let c = &self.columns;
                format!(
                    "SELECT t.{}, {}, cluster_logical_timestamp()::STRING, t.{} FROM (SELECT 1) AS one \
                     LEFT JOIN {} AS t ON t.{} = $1",
                    c.version,
                    self.value_out("t."),
                    c.deleted,
                    self.records,
                    c.key
                )
            }
        }
    }

    /// A read on the PostgreSQL primary, with the WAL insert position taken
    /// after the statement's snapshot: every transaction the read can see
    /// committed below it, so a session that advances to it stays covered
    /// once the key leaves its token. Parameters: `$1` key. Columns:
    /// version, value, point, deleted.
    pub fn primary_read(&self) -> String {
        let c = &self.columns;
        format!(
            "SELECT t.{}, {}, pg_current_wal_insert_lsn()::text, t.{} \
             FROM (SELECT 1) AS one LEFT JOIN {} AS t ON t.{} = $1",
            c.version,
            self.value_out("t."),
            c.deleted,
            self.records,
            c.key
        )
    }

    /// A read at a PostgreSQL standby. It is sent right after
    /// [`Tables::replay_status`] on the same connection, so the standby's freshness
    /// is measured before this statement takes its snapshot: the snapshot
    /// shows at least what the reported replay position covers. (Measured in
    /// the same statement, the position would be taken after the snapshot
    /// and could claim more than it shows.) Parameters: `$1` key. Columns:
    /// version, value, deleted.
    pub fn standby_read(&self) -> String {
        let c = &self.columns;
        format!(
            "SELECT {}, {}, {} FROM {} WHERE {} = $1",
            c.version,
            self.value_out(""),
            c.deleted,
            self.records,
            c.key
        )
    }

    /// A CockroachDB follower read under a policy: `with_min_timestamp` for a
    /// session (parameter `$2`, the session's HLC as a timestamp, see
    /// [`cockroach_follower`]), `with_max_staleness` for a bound,
    /// `follower_read_timestamp()` with no bound. A single-row read in an
    /// implicit transaction, as bounded-staleness reads must be; no row when
    /// the key is absent. Parameters: `$1` key. Columns: version, value,
    /// the timestamp CockroachDB read at (`cluster_logical_timestamp()`
    /// of a historical read is its negotiated read timestamp), deleted.
    pub fn follower_read(&self, read: FollowerRead) -> String {
        let aost = match read {
            FollowerRead::AtLeast => "with_min_timestamp($2::TIMESTAMPTZ)".to_owned(),
            FollowerRead::Bounded(d) => {
                format!("with_max_staleness('{}ms'::INTERVAL)", d.as_millis().max(1))
            }
            FollowerRead::Latest => "follower_read_timestamp()".to_owned(),
        };
        let c = &self.columns;
        format!(
            "SELECT {}, {}, cluster_logical_timestamp()::STRING, {} \
             FROM {} AS OF SYSTEM TIME {aost} WHERE {} = $1",
            c.version,
            self.value_out(""),
            c.deleted,
            self.records,
            c.key
        )
    }

    /// The `INSERT … ON CONFLICT` and `SET` of a record's next version,
    /// with the value parameter `$value`.
    fn upsert(&self, delete: bool, value: u8) -> (String, String) {
        let Columns {
            key,
            value: v,
            version,
            written_at,
            deleted,
            ..
        } = &self.columns;
        let t = &self.records;
        let val = self.value_in(value);
        let set = format!(
            "{v} = {val}, {version} = t.{version} + 1, {written_at} = now(), {deleted} = {delete}"
        );
        let insert = format!(
            "INSERT INTO {t} AS t ({key}, {v}, {version}, {written_at}, {deleted}) \
             VALUES ($1, {val}, 1, now(), {delete}) ON CONFLICT ({key}) DO UPDATE SET {set}"
        );
        (insert, set)
    }

    /// The conditional write with its idempotency record, in one statement
    /// (one implicit transaction); with `delete`, the record becomes a
    /// tombstone (its next version, `deleted`, an empty value — a JSON
    /// `null` in a native table), which `IfAbsent` admits and `IfVersion`
    /// never does. Parameters: `$1` key (within the table), `$2` value
    /// (bytes: empty for a delete, a document's text in a native table),
    /// `$3` idempotency key, `$4` expected version (`IfVersion` only), `$5`
    /// region, `$6` idempotency TTL in seconds, `$7` the record's key as
    /// the client names it (its collection's too), which the idempotency
    /// record is bound to. Columns: the version written (NULL when the
    /// precondition failed), the expected version, and the write's point.
    ///
    /// A second attempt of a write that already applied is caught without
    /// an extra read on the fast path: its precondition fails (nothing is
    /// recorded), or, for an unconditional write, the idempotency key's
    /// primary key rejects the statement as a whole (SQLSTATE 23505) and
    /// nothing is applied; either way the caller then looks the key up.
    ///
    /// CockroachDB's point is taken inside the statement: its commit
    /// timestamp. PostgreSQL's is not (the WAL position inside the statement
    /// precedes the commit record, and a standby that replayed the data but
    /// not the commit would pass for fresh): the backend sends
    /// [`commit_point`] right after the statement, on the same connection,
    /// and the column is NULL.
    pub fn write(&self, dialect: Dialect, precondition: Precondition, delete: bool) -> String {
        let (t, i) = (&self.records, &self.idempotency);
        let Columns {
            key,
            version,
            deleted,
            ..
        } = &self.columns;
        let (insert, set) = self.upsert(delete, 2);
        let apply = match precondition {
            Precondition::IfVersion(_) => format!(
                "UPDATE {t} AS t SET {set} \
                 WHERE t.{key} = $1 AND t.{version} = $4 AND NOT t.{deleted} RETURNING t.{version}"
            ),
            Precondition::IfAbsent => format!("{insert} WHERE t.{deleted} RETURNING t.{version}"),
            Precondition::Any => format!("{insert} RETURNING t.{version}"),
        };
        let point = match dialect {
            Dialect::Postgres => "NULL::text",
            Dialect::Cockroach => "cluster_logical_timestamp()::STRING",
        };
        // `$4` is referenced by every form so that one parameter list fits all.
        format!(
            "WITH applied AS ({apply}), \
             recorded AS (INSERT INTO {i} (idem_key, record_key, version, region, expires_at) \
               SELECT $3, $7, {version}, $5, now() + $6::BIGINT * INTERVAL '1 second' FROM applied) \
             SELECT (SELECT {version} FROM applied), $4::BIGINT, {point}"
        )
    }

    /// What an idempotency key holds: an outcome (version > 0) or a fence
    /// (version 0). Parameters: `$1`. Columns: version, region, record key
    /// (a multi-record write's binding), fenced before, versions (a
    /// multi-record write's: `index:version` of each written record, by
    /// its place in the write, comma-separated; NULL otherwise).
    pub fn lookup(&self) -> String {
        format!(
            "SELECT version, region, record_key, fenced_before, versions FROM {} WHERE idem_key = $1",
            self.idempotency
        )
    }

    /// One record's write inside a multi-record write's transaction, by
    /// the same rules as [`Tables::write`]. Parameters: `$1` key, `$2` value
    /// (as for [`Tables::write`]), `$3` expected version (`IfVersion`
    /// only). Returns the version written, or no row when the precondition
    /// fails.
    pub fn apply(&self, precondition: Precondition, delete: bool) -> String {
        let t = &self.records;
        let Columns {
            key,
            version,
            deleted,
            ..
        } = &self.columns;
        let (insert, set) = self.upsert(delete, 2);
        match precondition {
            Precondition::IfVersion(_) => format!(
                "UPDATE {t} AS t SET {set} \
                 WHERE t.{key} = $1 AND t.{version} = $3::BIGINT AND NOT t.{deleted} RETURNING t.{version}"
            ),
            // `$3` is referenced by every form so that one parameter list
            // fits all.
            Precondition::IfAbsent => {
                format!("{insert} WHERE t.{deleted} RETURNING t.{version}, $3::BIGINT")
            }
            Precondition::Any => format!("{insert} RETURNING t.{version}, $3::BIGINT"),
        }
    }

    /// A record a multi-record write only checks, locked until it commits.
    /// Parameters: `$1` key. Columns: version, deleted.
    pub fn check(&self) -> String {
        let c = &self.columns;
        format!(
            "SELECT {}, {} FROM {} WHERE {} = $1 FOR UPDATE",
            c.version, c.deleted, self.records, c.key
        )
    }

    /// A multi-record write's outcome, in its own transaction: refused
    /// (SQLSTATE 23505) when the idempotency key already holds an outcome
    /// or a fence. Parameters: `$1` idempotency key, `$2` binding, `$3` the
    /// first written version, `$4` region, `$5` TTL in seconds, `$6`
    /// versions (see [`Tables::lookup`]).
    pub fn record_transaction(&self) -> String {
        format!(
            "INSERT INTO {} (idem_key, record_key, version, region, expires_at, versions) \
             VALUES ($1, $2, $3, $4, now() + $5::BIGINT * INTERVAL '1 second', $6)",
            self.idempotency
        )
    }

    /// Fences an idempotency key that has no outcome: its row's primary key
    /// makes every attempt stamped before `$5` fail (their insert of the
    /// same key is refused), so "not applied" stays true; a fence already
    /// there is moved on, an outcome left alone. Run before
    /// [`Tables::lookup`] on the same connection: if an attempt holds the
    /// key uncommitted, this waits for it. Parameters: `$1` idempotency
    /// key, `$2` record key, `$3` region, `$4` TTL in seconds, `$5` stamp.
    pub fn fence(&self) -> String {
        let i = &self.idempotency;
        format!(
            "INSERT INTO {i} AS f (idem_key, record_key, version, region, expires_at, fenced_before) \
             VALUES ($1, $2, 0, $3, now() + $4::BIGINT * INTERVAL '1 second', $5) \
             ON CONFLICT (idem_key) DO UPDATE SET fenced_before = GREATEST(f.fenced_before, EXCLUDED.fenced_before) \
             WHERE f.version = 0"
        )
    }

    /// Lifts a fence for an attempt stamped after it (in the attempt's own
    /// transaction, before its write). Parameters: `$1` idempotency key,
    /// `$2` the attempt's stamp. Affects one row, or none when the fence is
    /// newer than the attempt.
    pub fn unfence(&self) -> String {
        format!(
            "DELETE FROM {} WHERE idem_key = $1 AND version = 0 AND fenced_before < $2",
            self.idempotency
        )
    }

    /// How far a PostgreSQL standby has replayed, and how old its last
    /// replayed transaction is. Columns: replay LSN, staleness in seconds.
    pub fn replay_status(&self) -> &'static str {
        "SELECT pg_last_wal_replay_lsn()::text, \
         EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))::float8"
    }

    /// The current version of a record (none when it was deleted).
    /// Parameters: `$1` key.
    pub fn current_version(&self) -> String {
        let c = &self.columns;
        format!(
            "SELECT {} FROM {} WHERE {} = $1 AND NOT {}",
            c.version, self.records, c.key, c.deleted
        )
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

/// The follower read a CockroachDB point read under `policy` becomes, with
/// the minimum timestamp for `with_min_timestamp`; `None` reads at the
/// leaseholder. A session read needs at least the session's point, rounded
/// up to the microsecond (CockroachDB's `TIMESTAMPTZ` precision) so that it
/// never reads below it; a session point ahead of this process's clock
/// (`now`, nanoseconds since the epoch) would be refused as a timestamp in
/// the future by a gateway with a similar clock, so it reads at the
/// leaseholder instead, which covers any point. A session with no point
/// takes the follower read timestamp.
pub fn cockroach_follower(
    policy: quorate::ReadPolicy,
    point: Option<Point>,
    now: u64,
) -> Option<(FollowerRead, Option<std::time::SystemTime>)> {
    match policy {
        quorate::ReadPolicy::Session => match point {
            None => Some((FollowerRead::Latest, None)),
            Some(p) if p.wall >= now => None,
            Some(p) => {
                let micros = p.wall / 1_000 + u64::from(p.wall % 1_000 != 0 || p.logical > 0);
                let at = std::time::UNIX_EPOCH + Duration::from_micros(micros);
                Some((FollowerRead::AtLeast, Some(at)))
            }
        },
        quorate::ReadPolicy::BoundedStaleness(b) => {
            Some((FollowerRead::Bounded(b.duration()), None))
        }
        _ => None,
    }
}

/// How a CockroachDB passthrough read opens its transaction under a policy:
/// `None` for a strong read (a normal transaction); for a session read, a
/// historical read at the session's own timestamp (it sees everything the
/// session saw, and followers can serve it once closed) unless that point
/// is ahead of this process's clock (`now`, nanoseconds since the epoch;
/// such a point reads strongly); for a bounded read of at least
/// `follower_lag`, the follower read timestamp. A bound below the follower
/// lag reads strongly. The timestamp is formatted from a `Point`, never
/// from caller text.
pub fn cockroach_begin(
    policy: quorate::ReadPolicy,
    min_point: Option<Point>,
    follower_lag: Duration,
    now: u64,
) -> Option<String> {
    match policy {
        quorate::ReadPolicy::Session => min_point
            .filter(|p| p.wall < now)
            .map(|p| format!("BEGIN AS OF SYSTEM TIME '{}.{:010}'", p.wall, p.logical)),
        quorate::ReadPolicy::BoundedStaleness(b) if b.duration() >= follower_lag => {
            Some("BEGIN AS OF SYSTEM TIME follower_read_timestamp()".to_owned())
        }
        _ => None,
    }
}

/// The point a session token records after a write: on PostgreSQL, sent
/// after the write's implicit transaction committed, the WAL insert
/// position at or after its commit record.
pub fn commit_point(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => "SELECT pg_current_wal_insert_lsn()::text",
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
            "SELECT t.version, t.value, pg_current_wal_insert_lsn()::text, t.deleted FROM (SELECT 1) AS one LEFT JOIN records AS t ON t.key = $1"
        );
        assert_eq!(
            tables().strong_read(Dialect::Cockroach),
            "SELECT t.version, t.value, cluster_logical_timestamp()::STRING, t.deleted FROM (SELECT 1) AS one LEFT JOIN records AS t ON t.key = $1"
        );
    }

    #[test]
    fn cockroach_follower_reads() {
        assert_eq!(
            tables().follower_read(FollowerRead::AtLeast),
            "SELECT version, value, cluster_logical_timestamp()::STRING, deleted \
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
    fn standby_freshness_is_a_statement_of_its_own() {
        let t = tables();
        assert!(t.replay_status().contains("pg_last_wal_replay_lsn()::text"));
        assert!(t
            .replay_status()
            .contains("pg_last_xact_replay_timestamp()"));
        assert_eq!(
            t.standby_read(),
            "SELECT version, value, deleted FROM records WHERE key = $1",
            "no replay position taken after the read's snapshot"
        );
    }

    #[test]
    fn fences_hold_the_idempotency_key_and_lift_only_for_later_attempts() {
        let t = tables();
        let fence = t.fence();
        assert!(fence.starts_with("INSERT INTO records_idempotency AS f"));
        assert!(fence.contains("VALUES ($1, $2, 0, $3"));
        assert!(
            fence.ends_with("WHERE f.version = 0"),
            "an outcome is never overwritten"
        );
        assert_eq!(
            t.unfence(),
            "DELETE FROM records_idempotency WHERE idem_key = $1 AND version = 0 AND fenced_before < $2"
        );
        assert!(t.lookup().contains("record_key, fenced_before"));
        let create = t.create(Dialect::Postgres);
        assert!(create[0].contains("deleted BOOLEAN NOT NULL DEFAULT false"));
        assert!(create[1].contains("ADD COLUMN IF NOT EXISTS deleted"));
        assert!(create[3].contains("ADD COLUMN IF NOT EXISTS fenced_before"));
        assert!(create[4].contains("ADD COLUMN IF NOT EXISTS versions TEXT"));
        assert!(t.lookup().contains("fenced_before, versions FROM"));
        assert!(t
            .apply(Precondition::IfVersion(quorate::Version(2)), true)
            .contains(
                "deleted = true WHERE t.key = $1 AND t.version = $3::BIGINT AND NOT t.deleted"
            ));
        assert!(t.check().ends_with("WHERE key = $1 FOR UPDATE"));
        assert!(t
            .record_transaction()
            .contains("VALUES ($1, $2, $3, $4, now()"));
    }

    #[test]
    fn writes_are_conditional_and_record_idempotency_in_one_statement() {
        let update = tables().write(
            Dialect::Postgres,
            Precondition::IfVersion(quorate::Version(3)),
            false,
        );
        assert!(update.contains("UPDATE records AS t SET value = $2, version = t.version + 1, written_at = now(), deleted = false WHERE t.key = $1 AND t.version = $4 AND NOT t.deleted RETURNING t.version"));
        assert!(update.contains(
            "INSERT INTO records_idempotency (idem_key, record_key, version, region, expires_at)"
        ));
        assert!(update.starts_with("WITH applied AS (UPDATE records"));
        let create = tables().write(Dialect::Postgres, Precondition::IfAbsent, false);
        assert!(
            create.contains("ON CONFLICT (key) DO UPDATE SET value = $2, version = t.version + 1, written_at = now(), deleted = false WHERE t.deleted RETURNING t.version"),
            "an absent record may be a tombstone, and its version goes on: {create}"
        );
        assert!(
            create.ends_with("$4::BIGINT, NULL::text"),
            "PostgreSQL's point is taken after the commit, not inside the statement"
        );
        assert!(tables()
            .write(Dialect::Cockroach, Precondition::IfAbsent, false)
            .ends_with("cluster_logical_timestamp()::STRING"));
        let blind = tables().write(Dialect::Postgres, Precondition::Any, false);
        assert!(blind.contains("DO UPDATE SET value = $2, version = t.version + 1"));
        let delete = tables().write(
            Dialect::Postgres,
            Precondition::IfVersion(quorate::Version(3)),
            true,
        );
        assert!(
            delete.contains("deleted = true WHERE t.key = $1 AND t.version = $4 AND NOT t.deleted")
        );
        let tombstone = tables().write(Dialect::Postgres, Precondition::Any, true);
        assert!(tombstone.contains("VALUES ($1, $2, 1, now(), true)"));
        for sql in [update, create, blind, delete, tombstone] {
            let without_unit = sql.replace("INTERVAL '1 second'", "");
            assert!(!without_unit.contains('\''), "no literal values: {sql}");
        }
    }

    #[test]
    fn native_tables_use_the_application_s_columns_and_documents() {
        let native = NativeTable::new("shop.orders", "order_id", "body").unwrap();
        let t = Tables::native(&native, &tables());
        assert!(t.json());
        assert_eq!(t.idempotency.as_str(), "records_idempotency");
        assert_eq!(
            t.standby_read(),
            "SELECT quorate_version, convert_to(COALESCE(body, 'null'::JSONB)::TEXT, 'UTF8'), quorate_deleted \
             FROM shop.orders WHERE order_id = $1"
        );
        let write = t.write(
            Dialect::Postgres,
            Precondition::IfVersion(quorate::Version(3)),
            false,
        );
        assert!(write.contains(
            "UPDATE shop.orders AS t SET body = convert_from($2, 'UTF8')::JSONB, \
             quorate_version = t.quorate_version + 1, quorate_written_at = now(), quorate_deleted = false \
             WHERE t.order_id = $1 AND t.quorate_version = $4 AND NOT t.quorate_deleted"
        ));
        assert!(
            write.contains("SELECT $3, $7, quorate_version, $5"),
            "the outcome is bound to the client's key: {write}"
        );
        let create = t.write(Dialect::Postgres, Precondition::IfAbsent, false);
        assert!(create.contains("ON CONFLICT (order_id) DO UPDATE SET"));
        assert!(t
            .apply(Precondition::Any, true)
            .contains("quorate_deleted = true"));
        assert!(t
            .check()
            .ends_with("FROM shop.orders WHERE order_id = $1 FOR UPDATE"));
        assert_eq!(
            t.current_version(),
            "SELECT quorate_version FROM shop.orders WHERE order_id = $1 AND NOT quorate_deleted"
        );
        assert!(t
            .follower_read(FollowerRead::Latest)
            .contains("FROM shop.orders AS OF SYSTEM TIME"));
        for sql in [write, create] {
            let without = sql
                .replace("INTERVAL '1 second'", "")
                .replace("'UTF8'", "")
                .replace("'null'", "");
            assert!(!without.contains('\''), "no literal values: {sql}");
        }
        let create = native.create();
        assert!(create[0].starts_with("CREATE TABLE IF NOT EXISTS shop.orders (order_id TEXT PRIMARY KEY, body JSONB NOT NULL"));
        assert!(create[1..]
            .iter()
            .all(|s| s.starts_with("ALTER TABLE shop.orders ADD COLUMN IF NOT EXISTS quorate_")));
        assert!(
            create[1].ends_with("BIGINT NOT NULL DEFAULT 1"),
            "rows from before quorate are version 1"
        );
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
    fn cockroach_point_reads_map_policies_onto_follower_reads() {
        use quorate::ReadPolicy;
        let now = 1_700_000_001_000_000_000;
        assert_eq!(cockroach_follower(ReadPolicy::Strong, None, now), None);
        // A session reads at least its own point, rounded up to the
        // microsecond.
        let (kind, at) = cockroach_follower(
            ReadPolicy::Session,
            Some(Point::hlc(1_700_000_000_123_456_789, 0)),
            now,
        )
        .unwrap();
        assert_eq!(kind, FollowerRead::AtLeast);
        assert_eq!(
            at.unwrap(),
            std::time::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_457)
        );
        let (_, exact) = cockroach_follower(
            ReadPolicy::Session,
            Some(Point::hlc(1_700_000_000_123_457_000, 0)),
            now,
        )
        .unwrap();
        assert_eq!(
            exact.unwrap(),
            std::time::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_457),
            "already on a microsecond"
        );
        let (_, logical) = cockroach_follower(
            ReadPolicy::Session,
            Some(Point::hlc(1_700_000_000_123_457_000, 3)),
            now,
        )
        .unwrap();
        assert_eq!(
            logical.unwrap(),
            std::time::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_458),
            "a logical tick is above its wall time"
        );
        // A point ahead of the clocks reads at the leaseholder.
        assert_eq!(
            cockroach_follower(ReadPolicy::Session, Some(Point::hlc(now + 1, 0)), now),
            None
        );
        assert_eq!(
            cockroach_follower(ReadPolicy::Session, None, now),
            Some((FollowerRead::Latest, None))
        );
        let bound = quorate::Staleness::from_millis(250).unwrap();
        assert_eq!(
            cockroach_follower(ReadPolicy::BoundedStaleness(bound), None, now),
            Some((FollowerRead::Bounded(Duration::from_millis(250)), None))
        );
    }

    #[test]
    fn cockroach_passthrough_transactions() {
        let lag = Duration::from_millis(4800);
        let now = 1_700_000_001_000_000_000;
        assert_eq!(
            cockroach_begin(quorate::ReadPolicy::Strong, None, lag, now),
            None
        );
        assert_eq!(
            cockroach_begin(
                quorate::ReadPolicy::Session,
                Some(Point::hlc(1_700_000_000_123_456_789, 2)),
                lag,
                now
            )
            .as_deref(),
            Some("BEGIN AS OF SYSTEM TIME '1700000000123456789.0000000002'")
        );
        assert_eq!(
            cockroach_begin(
                quorate::ReadPolicy::Session,
                Some(Point::hlc(now + 5, 0)),
                lag,
                now
            ),
            None,
            "a session point ahead of the clock reads strongly"
        );
        assert_eq!(
            cockroach_begin(quorate::ReadPolicy::Session, None, lag, now),
            None
        );
        let bounded = |ms| {
            quorate::ReadPolicy::BoundedStaleness(quorate::Staleness::from_millis(ms).unwrap())
        };
        assert_eq!(
            cockroach_begin(bounded(10_000), None, lag, now).as_deref(),
            Some("BEGIN AS OF SYSTEM TIME follower_read_timestamp()")
        );
        assert_eq!(
            cockroach_begin(bounded(1_000), None, lag, now),
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
