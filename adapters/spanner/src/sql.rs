//! Names, statements and checks made before anything is sent.

use quorate::Error;

/// The longest key accepted, in bytes (Spanner's key limit is 8 KiB).
pub const MAX_KEY_BYTES: usize = 8 * 1024;

/// Validates `projects/<project>/instances/<instance>/databases/<database>`.
pub fn database_path(path: &str) -> Result<(), Error> {
    let parts: Vec<&str> = path.split('/').collect();
    let ok = parts.len() == 6
        && parts[0] == "projects"
        && parts[2] == "instances"
        && parts[4] == "databases"
        && [parts[1], parts[3], parts[5]].iter().all(|p| {
            !p.is_empty()
                && p.len() <= 64
                && p.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid Spanner database path {path:?}: expected projects/<project>/instances/<instance>/databases/<database>"
        )))
    }
}

/// The session-token scope of a database: its path when that fits a scope
/// ([`quorate::MAX_SCOPE_LEN`] characters), else its database id with a
/// stable hash of the whole path, so that tokens of two databases never
/// share a scope and any valid path has one.
pub fn scope_name(path: &str) -> String {
    if path.len() <= quorate::MAX_SCOPE_LEN {
        return path.to_owned();
    }
    let hash = path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let database = path.rsplit('/').next().unwrap_or(path);
    let room = quorate::MAX_SCOPE_LEN - 1 - 16;
    let database: String = database.chars().take(room).collect();
    format!("{database}~{hash:016x}")
}

/// Checks a key before a write.
pub fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidInput(format!(
            "keys are 1-{MAX_KEY_BYTES} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

fn ident(name: &str) -> Result<String, Error> {
    let ok = (1..=128).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(name.to_owned())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid Spanner table or column name {:?}: a letter, then letters, digits or '_', at most 128",
            name.chars().take(129).collect::<String>()
        )))
    }
}

/// A table of the application's own that holds one collection's records
/// natively: each record a row keyed by the application's `STRING` key
/// column, its value a `JSON` document any SQL can query
/// (`JSON_VALUE(body, '$.status')`), and quorate's bookkeeping in columns
/// of its own beside them.
///
/// ```
/// use quorate_spanner::sql::NativeTable;
///
/// let orders = NativeTable::new("Orders", "OrderId", "Body")?;
/// assert_eq!(orders.version, "quorate_version");
/// assert!(NativeTable::new("Orders", "quorate_deleted", "Body").is_err());
/// assert!(NativeTable::new("Orders; DROP", "OrderId", "Body").is_err());
/// # Ok::<(), quorate_spanner::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeTable {
    /// The table.
    pub table: String,
    /// The key column (`STRING`, the primary key): the record's key within
    /// its collection.
    pub key: String,
    /// The value column (`JSON`).
    pub document: String,
    /// The record's version (`INT64`; NULL on rows from before quorate,
    /// which are version 1).
    pub version: String,
    /// The commit timestamp of the record's last write (`TIMESTAMP`,
    /// `allow_commit_timestamp`).
    pub written_at: String,
    /// Whether the row is a delete's tombstone (`BOOL`, NULL: not): it
    /// stays, with the delete's version and a JSON `null` document, so that
    /// a record re-created later goes on from its version. Other readers
    /// skip such rows (`WHERE quorate_deleted IS NOT TRUE`).
    pub deleted: String,
}

impl NativeTable {
    /// The table `table` keyed by `key`, its values in `document`, with the
    /// bookkeeping columns `quorate_version`, `quorate_written_at` and
    /// `quorate_deleted`.
    pub fn new(table: &str, key: &str, document: &str) -> Result<NativeTable, Error> {
        NativeTable {
            table: ident(table)?,
            key: ident(key)?,
            document: ident(document)?,
            version: "quorate_version".into(),
            written_at: "quorate_written_at".into(),
            deleted: "quorate_deleted".into(),
        }
        .distinct()
    }

    /// The same table with the bookkeeping columns named `<prefix>version`,
    /// `<prefix>written_at` and `<prefix>deleted`.
    pub fn bookkeeping(self, prefix: &str) -> Result<NativeTable, Error> {
        NativeTable {
            version: ident(&format!("{prefix}version"))?,
            written_at: ident(&format!("{prefix}written_at"))?,
            deleted: ident(&format!("{prefix}deleted"))?,
            ..self
        }
        .distinct()
    }

    fn distinct(self) -> Result<NativeTable, Error> {
        // Spanner's names ignore case.
        quorate::distinct_columns(
            &self.table,
            &[
                &self.key,
                &self.document,
                &self.version,
                &self.written_at,
                &self.deleted,
            ],
            true,
        )?;
        Ok(self)
    }

    /// DDL that creates the table if it does not exist and, if it does,
    /// adds the bookkeeping columns it lacks (nullable: rows already there
    /// read as version 1, live). The key and document columns of an
    /// existing table are the application's and are left as they are.
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
                "CREATE TABLE IF NOT EXISTS {t} ({key} STRING(MAX) NOT NULL, {document} JSON, \
                 {version} INT64, {written_at} TIMESTAMP OPTIONS (allow_commit_timestamp=true), \
                 {deleted} BOOL) PRIMARY KEY ({key})"
            ),
            format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {version} INT64"),
            format!(
                "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {written_at} TIMESTAMP OPTIONS (allow_commit_timestamp=true)"
            ),
            format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {deleted} BOOL"),
        ]
    }

    /// The columns the table must have and the types they may have, as
    /// `INFORMATION_SCHEMA.COLUMNS.SPANNER_TYPE` names them (a `STRING`
    /// key of any length).
    pub fn expected_columns(&self) -> [(&str, &'static [&'static str]); 5] {
        [
            (&self.key, &["STRING"]),
            (&self.document, &["JSON"]),
            (&self.version, &["INT64"]),
            (&self.written_at, &["TIMESTAMP"]),
            (&self.deleted, &["BOOL"]),
        ]
    }
}

/// The columns of a records table and how its values are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Columns {
    key: String,
    value: String,
    version: String,
    written_at: String,
    deleted: String,
    /// Values are `JSON` documents (else bytes).
    json: bool,
}

/// The parameter naming a collection's prefix in a query of quorate's own
/// table ([`Tables::select`]).
pub const PREFIX_PARAM: &str = "quorate_prefix";

/// The records table and its idempotency table (`<table>_idempotency`),
/// or a [`NativeTable`] with the idempotency table of quorate's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    /// Records: `key`, `version`, `value`, `written_at` (commit timestamp),
    /// `deleted`; or a native table.
    pub records: String,
    /// Idempotency rows: outcomes and fences, kept until `expires_at`.
    pub idempotency: String,
    columns: Columns,
}

impl Tables {
    /// The tables named `table` and `table_idempotency`.
    pub fn new(table: &str) -> Result<Tables, Error> {
        Ok(Tables {
            records: ident(table)?,
            idempotency: ident(&format!("{table}_idempotency"))?,
            columns: Columns {
                key: "key".into(),
                value: "value".into(),
                version: "version".into(),
                written_at: "written_at".into(),
                deleted: "deleted".into(),
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

    /// The record's columns in the order a write's mutation gives them:
    /// key, version, value, written_at, deleted.
    pub fn record_columns(&self) -> [&str; 5] {
        let c = &self.columns;
        [&c.key, &c.version, &c.value, &c.written_at, &c.deleted]
    }

    /// The version as statements read it (a native row from before quorate
    /// has none: version 1).
    fn version_out(&self) -> String {
        let v = &self.columns.version;
        if self.columns.json {
            format!("COALESCE({v}, 1)")
        } else {
            v.clone()
        }
    }

    /// DDL creating both tables if they do not exist; idempotency rows are
    /// deleted by a row deletion policy once expired.
    pub fn create(&self) -> Vec<String> {
        let (t, i) = (&self.records, &self.idempotency);
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (key STRING(MAX) NOT NULL, version INT64 NOT NULL, \
                 value BYTES(MAX) NOT NULL, written_at TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp=true), \
                 deleted BOOL) PRIMARY KEY (key)"
            ),
            // Tables made by earlier releases lack the tombstone's column
            // (NULL: not deleted).
            format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS deleted BOOL"),
            format!(
                "CREATE TABLE IF NOT EXISTS {i} (idem_key STRING(MAX) NOT NULL, record_key STRING(MAX), \
                 version INT64, region STRING(MAX), committed_at TIMESTAMP OPTIONS (allow_commit_timestamp=true), \
                 fenced BOOL, expires_at TIMESTAMP NOT NULL, versions STRING(MAX)) PRIMARY KEY (idem_key), \
                 ROW DELETION POLICY (OLDER_THAN(expires_at, INTERVAL 0 DAY))"
            ),
            // Tables made by earlier releases lack a multi-record write's
            // versions.
            format!("ALTER TABLE {i} ADD COLUMN IF NOT EXISTS versions STRING(MAX)"),
        ]
    }

    /// A point read. Parameters: `@key`. Columns: version, value (bytes:
    /// a native table's document as its JSON text), deleted (a delete's
    /// tombstone keeps the row, with an empty value or a JSON `null`).
    pub fn read(&self) -> String {
        let c = &self.columns;
        format!(
            "SELECT {}, {}, {} FROM {} WHERE {} = @key",
            self.version_out(),
            self.value_out(),
            c.deleted,
            self.records,
            c.key
        )
    }

    /// The value as bytes: a native table's document as its JSON text.
    fn value_out(&self) -> String {
        let c = &self.columns;
        if c.json {
            format!(
                "CAST(COALESCE(TO_JSON_STRING({}), 'null') AS BYTES)",
                c.value
            )
        } else {
            c.value.clone()
        }
    }

    /// A query of a collection's records: those `filter` (a condition on
    /// the table's columns; an empty one admits all) admits, tombstones
    /// left out, in key order. Quorate's own table holds every collection,
    /// so its records are also limited to those whose key starts with the
    /// parameter `@quorate_prefix`. Columns: key (in the collection on a
    /// native table, whole in quorate's own), version, value (bytes).
    pub fn select(&self, filter: &str) -> String {
        let c = &self.columns;
        let filter = if filter.trim().is_empty() {
            "TRUE"
        } else {
            filter
        };
        let prefix = if c.json {
            String::new()
        } else {
            format!("STARTS_WITH({}, @{PREFIX_PARAM}) AND ", c.key)
        };
        format!(
            "SELECT {key}, {version}, {value} FROM {table} \
             WHERE {prefix}{deleted} IS NOT TRUE AND ({filter}) ORDER BY {key}",
            key = c.key,
            version = self.version_out(),
            value = self.value_out(),
            table = self.records,
            deleted = c.deleted,
        )
    }

    /// The newest version, a tombstone's included. Parameters: `@key`.
    /// Columns: version, deleted.
    pub fn current_version(&self) -> String {
        let c = &self.columns;
        format!(
            "SELECT {}, {} FROM {} WHERE {} = @key",
            self.version_out(),
            c.deleted,
            self.records,
            c.key
        )
    }

    /// An idempotency row. Parameters: `@idem`. Columns: version, region,
    /// committed_at, fenced, record_key (a multi-record write's binding),
    /// versions (a multi-record write's: `index:version` of each written
    /// record, by its place in the write, comma-separated; NULL otherwise).
    pub fn lookup(&self) -> String {
        format!(
            "SELECT version, region, committed_at, fenced, record_key, versions FROM {} WHERE idem_key = @idem",
            self.idempotency
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_tables_read_their_own_columns() {
        let own = Tables::new("quorate_records").unwrap();
        assert_eq!(
            own.read(),
            "SELECT version, value, deleted FROM quorate_records WHERE key = @key"
        );
        let native = NativeTable::new("Orders", "OrderId", "Body").unwrap();
        let t = Tables::native(&native, &own);
        assert_eq!(t.idempotency, "quorate_records_idempotency");
        assert_eq!(
            t.read(),
            "SELECT COALESCE(quorate_version, 1), CAST(COALESCE(TO_JSON_STRING(Body), 'null') AS BYTES), \
             quorate_deleted FROM Orders WHERE OrderId = @key"
        );
        assert_eq!(
            t.current_version(),
            "SELECT COALESCE(quorate_version, 1), quorate_deleted FROM Orders WHERE OrderId = @key"
        );
        assert_eq!(
            t.record_columns(),
            [
                "OrderId",
                "quorate_version",
                "Body",
                "quorate_written_at",
                "quorate_deleted"
            ]
        );
        let ddl = native.create();
        assert!(ddl[0].ends_with("PRIMARY KEY (OrderId)"));
        assert!(ddl[2].contains("allow_commit_timestamp=true"));
        for bad in [
            NativeTable::new("Orders", "Body", "body"),
            NativeTable::new("Orders", "OrderId", "Body").and_then(|t| t.bookkeeping("_")),
            NativeTable::new("1Orders", "OrderId", "Body"),
        ] {
            assert!(matches!(bad, Err(Error::InvalidInput(_))), "{bad:?}");
        }
    }

    #[test]
    fn database_paths_are_validated() {
        assert!(database_path("projects/p/instances/i/databases/d").is_ok());
        assert!(database_path("projects/my-proj/instances/test-1/databases/orders_db").is_ok());
        for bad in [
            "",
            "projects/p/instances/i",
            "projects/p/instances/i/databases/",
            "projects/P/instances/i/databases/d",
            "projects/p/instances/i/databases/d/extra",
            "project/p/instances/i/databases/d",
            "projects/p/instances/i/databases/d'; DROP",
        ] {
            assert!(
                matches!(database_path(bad), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn every_valid_path_has_a_scope_and_long_ones_stay_distinct() {
        let short = "projects/p/instances/i/databases/d";
        assert_eq!(scope_name(short), short);
        let long = |db: &str| {
            format!(
                "projects/{}/instances/{}/databases/{db}",
                "p".repeat(30),
                "instance-".repeat(7)
            )
        };
        let (a, b) = (long("orders"), long("billing"));
        assert!(database_path(&a).is_ok() && a.len() > quorate::MAX_SCOPE_LEN);
        for path in [&a, &b] {
            let scope = scope_name(path);
            assert!(quorate::Scope::new(&scope).is_ok(), "{scope}");
            assert!(
                scope.starts_with(path.rsplit('/').next().unwrap()),
                "{scope}"
            );
        }
        assert_ne!(scope_name(&a), scope_name(&b));
        assert_eq!(scope_name(&a), scope_name(&a.clone()), "stable");
        let longest = format!(
            "projects/{}/instances/{}/databases/{}",
            "p".repeat(64),
            "i".repeat(64),
            "d".repeat(64)
        );
        assert!(database_path(&longest).is_ok());
        assert!(quorate::Scope::new(&scope_name(&longest)).is_ok());
    }

    #[test]
    fn names_are_validated_and_statements_use_parameters() {
        assert!(Tables::new("quorate_records").is_ok());
        for bad in ["", "1abc", "has space", "quote\"", "semi;colon"] {
            assert!(
                matches!(Tables::new(bad), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
        let t = Tables::new("records").unwrap();
        assert_eq!(
            t.read(),
            "SELECT version, value, deleted FROM records WHERE key = @key"
        );
        assert_eq!(
            t.lookup(),
            "SELECT version, region, committed_at, fenced, record_key, versions FROM records_idempotency WHERE idem_key = @idem"
        );
        let ddl = t.create();
        assert!(ddl[0].starts_with("CREATE TABLE IF NOT EXISTS records ("));
        assert!(ddl[0].contains("deleted BOOL)"));
        assert_eq!(
            ddl[1],
            "ALTER TABLE records ADD COLUMN IF NOT EXISTS deleted BOOL"
        );
        assert!(ddl[2].contains("ROW DELETION POLICY (OLDER_THAN(expires_at, INTERVAL 0 DAY))"));
        assert_eq!(
            ddl[3],
            "ALTER TABLE records_idempotency ADD COLUMN IF NOT EXISTS versions STRING(MAX)"
        );
        assert!(check_key("").is_err() && check_key(&"k".repeat(8193)).is_err());
        assert!(check_key("k").is_ok());
    }
}
