//! How records and idempotency outcomes are stored as DynamoDB items, and
//! the checks on names and sizes made before anything is sent.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use quorate::{Error, Version};

/// The partition key attribute of both tables (a string).
pub const PK: &str = "pk";
/// The record's version (a number, 1 for a new record).
pub const VERSION: &str = "version";
/// The record's value (binary); absent from a delete's tombstone.
pub const VALUE: &str = "value";
/// `true` on a delete's tombstone: the item stays, with the delete's
/// version and no value, so that a record re-created later continues the
/// version sequence.
pub const DELETED: &str = "deleted";
/// When the record was written: nanoseconds since the Unix epoch by the
/// writing client's clock (a number). Bounded-staleness reads and the test
/// replicator's last-writer-wins use it.
pub const WRITTEN_AT: &str = "written_at";
/// The region whose table took the write (a string).
pub const WRITER: &str = "writer";
/// Idempotency items: the record key the write was for (a multi-record
/// write's binding, see `quorate::transaction_binding`).
pub const RECORD_KEY: &str = "record_key";
/// Idempotency items of a multi-record write: `index:version` of each
/// written record, by its place in the write, comma-separated (a string).
pub const VERSIONS: &str = "versions";
/// Idempotency items: expiry for DynamoDB's TTL, seconds since the epoch.
pub const EXPIRES_AT: &str = "expires_at";
/// On a table with multi-Region strong consistency (MRSC), which refuses
/// `TransactWriteItems`: the record's most recent writes, a map from
/// idempotency key to `{v: version, w: written_at, r: writer}`, written in
/// the same `PutItem` as the record so that a write and the evidence of it
/// are one.
pub const RECENT: &str = "recent";
/// MRSC writes' claims of an idempotency key: the start of the latest
/// attempt (nanoseconds), recorded before the attempt is sent, so that a
/// lookup's fence lies past it.
pub const STARTED: &str = "started";
/// Idempotency fences: attempts of the logical write started before this
/// point (nanoseconds) can no longer commit.
pub const FENCED_BEFORE: &str = "fenced_before";

/// DynamoDB's item size limit.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// DynamoDB's partition key limit.
pub const MAX_KEY_BYTES: usize = 2048;
/// Room left in an item for the attribute names and the other attributes.
const ITEM_OVERHEAD: usize = 128;

/// A stored item that does not have the shape quorate writes: an attribute
/// missing, of another type, or out of range. Carried as the source of a
/// permanent [`Error::Backend`] with code `quorate.item`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemError {
    /// A required attribute is absent.
    Missing {
        /// The table.
        table: String,
        /// The attribute.
        attribute: String,
    },
    /// An attribute has another type than quorate writes.
    WrongType {
        /// The table.
        table: String,
        /// The attribute.
        attribute: String,
        /// The type quorate writes: `N`, `S`, `B` or `BOOL`.
        expected: &'static str,
    },
    /// A number attribute that does not fit (or a version of 0).
    OutOfRange {
        /// The table.
        table: String,
        /// The attribute.
        attribute: String,
    },
}

impl std::fmt::Display for ItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ItemError::Missing { table, attribute } => {
                write!(f, "an item of {table} has no `{attribute}` attribute")
            }
            ItemError::WrongType {
                table,
                attribute,
                expected,
            } => write!(
                f,
                "an item of {table} has a `{attribute}` attribute that is not of type {expected}"
            ),
            ItemError::OutOfRange { table, attribute } => {
                write!(f, "an item of {table} has an out-of-range `{attribute}`")
            }
        }
    }
}

impl std::error::Error for ItemError {}

impl From<ItemError> for Error {
    fn from(e: ItemError) -> Error {
        Error::backend(
            quorate::Retryability::Permanent,
            Some("quorate.item".into()),
            e,
        )
    }
}

/// Validates a DynamoDB table name: 3–255 of `a-z A-Z 0-9 _ - .`.
pub fn table_name(name: &str) -> Result<(), Error> {
    let ok = (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid DynamoDB table name {name:?}: 3-255 characters of a-z, A-Z, 0-9, '_', '-', '.'"
        )))
    }
}

/// Checks a record before it is sent: a non-empty key within DynamoDB's
/// partition-key limit, and an item within its size limit.
pub fn check_record(key: &str, value: &[u8]) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidInput("the key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidInput(format!(
            "a key of {} bytes exceeds DynamoDB's {MAX_KEY_BYTES}-byte partition key limit",
            key.len()
        )));
    }
    let size = key.len() + value.len() + ITEM_OVERHEAD;
    if size > MAX_ITEM_BYTES {
        return Err(Error::InvalidInput(format!(
            "an item of about {size} bytes exceeds DynamoDB's {MAX_ITEM_BYTES}-byte item limit"
        )));
    }
    Ok(())
}

/// Checks a key before a read.
pub fn check_key(key: &str) -> Result<(), Error> {
    check_record(key, &[])
}

pub(crate) type Item = HashMap<String, AttributeValue>;

pub(crate) fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

/// The names of a record's bookkeeping attributes in its table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Names {
    pub version: String,
    pub written_at: String,
    pub writer: String,
    pub deleted: String,
    /// The map of recent writes (MRSC tables only).
    pub recent: String,
    /// Items may be the application's from before quorate, without
    /// bookkeeping: such an item is version 1 with no write time.
    pub adopt: bool,
}

impl Names {
    /// quorate's own tables.
    pub fn own() -> Names {
        Names {
            version: VERSION.into(),
            written_at: WRITTEN_AT.into(),
            writer: WRITER.into(),
            deleted: DELETED.into(),
            recent: RECENT.into(),
            adopt: false,
        }
    }
}

/// Reads typed attributes of one item, naming the table in errors.
pub(crate) struct Fields<'a> {
    pub table: &'a str,
    pub item: &'a Item,
    pub names: &'a Names,
}

impl Fields<'_> {
    fn get(&self, attribute: &str) -> Result<&AttributeValue, ItemError> {
        self.item.get(attribute).ok_or_else(|| ItemError::Missing {
            table: self.table.to_owned(),
            attribute: attribute.to_owned(),
        })
    }

    fn wrong(&self, attribute: &str, expected: &'static str) -> ItemError {
        ItemError::WrongType {
            table: self.table.to_owned(),
            attribute: attribute.to_owned(),
            expected,
        }
    }

    pub fn has(&self, attribute: &str) -> bool {
        self.item.contains_key(attribute)
    }

    pub fn number(&self, attribute: &str) -> Result<u64, ItemError> {
        match self.get(attribute)? {
            AttributeValue::N(text) => text.parse().map_err(|_| ItemError::OutOfRange {
                table: self.table.to_owned(),
                attribute: attribute.to_owned(),
            }),
            _ => Err(self.wrong(attribute, "N")),
        }
    }

    pub fn string(&self, attribute: &str) -> Result<&str, ItemError> {
        match self.get(attribute)? {
            AttributeValue::S(text) => Ok(text),
            _ => Err(self.wrong(attribute, "S")),
        }
    }

    pub fn binary(&self, attribute: &str) -> Result<Bytes, ItemError> {
        match self.get(attribute)? {
            AttributeValue::B(blob) => Ok(Bytes::copy_from_slice(blob.as_ref())),
            _ => Err(self.wrong(attribute, "B")),
        }
    }

    /// Whether the item is a delete's tombstone (`deleted` is `true`; absent
    /// or `false` on a live record).
    pub fn deleted(&self) -> Result<bool, ItemError> {
        let deleted = &self.names.deleted;
        match self.item.get(deleted) {
            None => Ok(false),
            Some(AttributeValue::Bool(b)) => Ok(*b),
            Some(_) => Err(self.wrong(deleted, "BOOL")),
        }
    }

    /// The record's version (1 for an adopted item without one).
    pub fn version(&self) -> Result<Version, ItemError> {
        let version = &self.names.version;
        if self.names.adopt && !self.has(version) {
            return Ok(Version::FIRST);
        }
        match self.number(version)? {
            // A placeholder tombstone: a lookup's fence on a record that
            // never existed (MRSC tables); absent to every reader.
            0 if self.deleted()? => Ok(Version(0)),
            0 => Err(ItemError::OutOfRange {
                table: self.table.to_owned(),
                attribute: version.clone(),
            }),
            v => Ok(Version(v)),
        }
    }

    /// When the record was written (none for an adopted item without a
    /// write time).
    pub fn written_at(&self) -> Result<Option<u64>, ItemError> {
        let written_at = &self.names.written_at;
        if self.names.adopt && !self.has(written_at) {
            return Ok(None);
        }
        self.number(written_at).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields<'a>(item: &'a Item) -> Fields<'a> {
        static OWN: std::sync::OnceLock<Names> = std::sync::OnceLock::new();
        Fields {
            table: "records",
            item,
            names: OWN.get_or_init(Names::own),
        }
    }

    #[test]
    fn table_names_are_validated() {
        assert!(table_name("quorate_records").is_ok());
        assert!(table_name("a.b-c_9").is_ok());
        for bad in [
            "",
            "ab",
            "has space",
            "quote'",
            "x".repeat(256).as_str(),
            "naïve",
        ] {
            assert!(
                matches!(table_name(bad), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn records_are_checked_against_dynamodb_limits() {
        assert!(check_record("k", b"v").is_ok());
        assert!(matches!(
            check_record("", b"v"),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            check_record(&"k".repeat(2049), b""),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            check_record("k", &vec![0; MAX_ITEM_BYTES]),
            Err(Error::InvalidInput(_))
        ));
        assert!(check_record("k", &vec![0; 300 * 1024]).is_ok());
    }

    #[test]
    fn attribute_type_mismatches_are_typed() {
        let mut item = Item::new();
        item.insert(VERSION.into(), s("3"));
        item.insert(WRITTEN_AT.into(), n(5));
        let f = fields(&item);
        assert_eq!(
            f.version(),
            Err(ItemError::WrongType {
                table: "records".into(),
                attribute: VERSION.into(),
                expected: "N"
            })
        );
        assert_eq!(f.number(WRITTEN_AT), Ok(5));
        assert!(matches!(f.binary(VALUE), Err(ItemError::Missing { .. })));
        item.insert(VERSION.into(), AttributeValue::N("0".into()));
        assert!(matches!(
            fields(&item).version(),
            Err(ItemError::OutOfRange { .. })
        ));
        item.insert(VERSION.into(), AttributeValue::N("1e3".into()));
        assert!(matches!(
            fields(&item).version(),
            Err(ItemError::OutOfRange { .. })
        ));
        let e: Error = ItemError::Missing {
            table: "t".into(),
            attribute: VALUE.into(),
        }
        .into();
        assert_eq!(e.retryability(), quorate::Retryability::Permanent);
    }

    proptest! {
        #[test]
        fn decoding_any_attribute_never_panics(text in ".{0,40}", bytes in proptest::collection::vec(any::<u8>(), 0..40), pick in 0u8..4) {
            let value = match pick {
                0 => AttributeValue::N(text.clone()),
                1 => AttributeValue::S(text.clone()),
                2 => AttributeValue::B(bytes.into()),
                _ => AttributeValue::Bool(true),
            };
            let mut item = Item::new();
            for a in [VERSION, VALUE, WRITTEN_AT, WRITER] {
                item.insert(a.into(), value.clone());
            }
            item.insert(DELETED.into(), value.clone());
            let f = fields(&item);
            let _ = (f.version(), f.binary(VALUE), f.number(WRITTEN_AT), f.string(WRITER), f.deleted());
            prop_assert_eq!(f.deleted().is_ok(), pick == 3);
            if let Ok(v) = f.version() {
                prop_assert!(v.0 >= 1);
            }
        }
    }
}
