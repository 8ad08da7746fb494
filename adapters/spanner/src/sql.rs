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
            "invalid Spanner table name {name:?}: a letter, then letters, digits or '_', at most 128"
        )))
    }
}

/// The records table and its idempotency table (`<table>_idempotency`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    /// Records: `key`, `version`, `value`, `written_at` (commit timestamp).
    pub records: String,
    /// Idempotency rows: outcomes and fences, kept until `expires_at`.
    pub idempotency: String,
}

impl Tables {
    /// The tables named `table` and `table_idempotency`.
    pub fn new(table: &str) -> Result<Tables, Error> {
        Ok(Tables {
            records: ident(table)?,
            idempotency: ident(&format!("{table}_idempotency"))?,
        })
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

    /// A point read. Parameters: `@key`. Columns: version, value, deleted
    /// (a delete's tombstone keeps the row, with an empty value).
    pub fn read(&self) -> String {
        format!(
            "SELECT version, value, deleted FROM {} WHERE key = @key",
            self.records
        )
    }

    /// The newest version, a tombstone's included. Parameters: `@key`.
    /// Columns: version, deleted.
    pub fn current_version(&self) -> String {
        format!(
            "SELECT version, deleted FROM {} WHERE key = @key",
            self.records
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
