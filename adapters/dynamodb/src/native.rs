//! Collections in DynamoDB tables of the application's own: the
//! application's partition (and sort) key, the value's fields as the item's
//! own attributes — what a plain `GetItem` or the console shows — and
//! quorate's bookkeeping in attributes of its own beside them.

use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use quorate::Error;

use crate::item::{self, Fields, Item, Names, MAX_ITEM_BYTES, MAX_KEY_BYTES};

/// DynamoDB's limit on a sort key value.
const MAX_SORT_KEY_BYTES: usize = 1024;
/// DynamoDB's limit on an attribute name.
const MAX_NAME_BYTES: usize = 255;

/// The type of a key attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// A string (`S`): the key as it is.
    String,
    /// A number (`N`): an integer written in decimal without leading
    /// zeros (`0`, `42`, `-7`), at most 38 digits, so that one item has
    /// one key text.
    Number,
}

/// A key attribute of a native table: its name and type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyAttribute {
    /// The attribute's name.
    pub name: String,
    /// Its type.
    pub kind: KeyKind,
}

impl KeyAttribute {
    /// A string key attribute.
    pub fn string(name: &str) -> Result<KeyAttribute, Error> {
        Ok(KeyAttribute {
            name: attribute_name(name)?,
            kind: KeyKind::String,
        })
    }

    /// A number key attribute (integers).
    pub fn number(name: &str) -> Result<KeyAttribute, Error> {
        Ok(KeyAttribute {
            name: attribute_name(name)?,
            kind: KeyKind::Number,
        })
    }
}

fn attribute_name(name: &str) -> Result<String, Error> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(Error::InvalidInput(format!(
            "invalid DynamoDB attribute name {:?}: 1-{MAX_NAME_BYTES} bytes",
            name.chars().take(64).collect::<String>()
        )));
    }
    Ok(name.to_owned())
}

/// A table of the application's own that holds one collection natively.
///
/// A record's key within its collection is the partition key's value, or,
/// with a sort key, `<partition>/<sort>` (split at the first `/`: a
/// partition value holds none; [`NativeTable::key`] makes such keys). The
/// value must be a JSON object: its fields become the item's attributes
/// (through `serde_dynamo`, as the AWS community maps serde values),
/// beside the key and the bookkeeping attributes `quorate_version`,
/// `quorate_written_at`, `quorate_writer` and `quorate_deleted` (and, on a
/// table with multi-Region strong consistency, `quorate_recent`). A delete
/// leaves the item as a tombstone (its key and bookkeeping, no fields,
/// `quorate_deleted` true) so that a record re-created later goes on from
/// its version; other readers skip such items. Items written before
/// quorate (no bookkeeping) read as version 1.
///
/// ```
/// use quorate_dynamodb::{KeyAttribute, NativeTable};
///
/// let orders = NativeTable::new("Orders", KeyAttribute::string("customer")?)?
///     .sort_key(KeyAttribute::number("order_no")?)?;
/// assert_eq!(orders.key("c-1", Some("42"))?, "c-1/42");
/// assert!(orders.key("c/1", Some("42")).is_err(), "a partition value holds no '/'");
/// assert!(orders.key("c-1", Some("042")).is_err(), "one text per number");
/// assert!(NativeTable::new("Orders", KeyAttribute::string("quorate_version")?).is_err());
/// # Ok::<(), quorate_dynamodb::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeTable {
    /// The table.
    pub table: String,
    /// The partition key.
    pub partition_key: KeyAttribute,
    /// The sort key, if the table has one.
    pub sort_key: Option<KeyAttribute>,
    /// The record's version (a number).
    pub version: String,
    /// When the record was written: nanoseconds since the epoch by the
    /// writing client's clock (a number).
    pub written_at: String,
    /// The region whose table took the write (a string).
    pub writer: String,
    /// `true` on a delete's tombstone.
    pub deleted: String,
    /// The map of the record's recent writes, on tables with multi-Region
    /// strong consistency (see [`crate::item::RECENT`]).
    pub recent: String,
}

impl NativeTable {
    /// The table `table` keyed by `partition_key`, with the bookkeeping
    /// attributes named `quorate_*`.
    pub fn new(table: &str, partition_key: KeyAttribute) -> Result<NativeTable, Error> {
        item::table_name(table)?;
        NativeTable {
            table: table.to_owned(),
            partition_key,
            sort_key: None,
            version: "quorate_version".into(),
            written_at: "quorate_written_at".into(),
            writer: "quorate_writer".into(),
            deleted: "quorate_deleted".into(),
            recent: "quorate_recent".into(),
        }
        .distinct()
    }

    /// The same table with a sort key.
    pub fn sort_key(self, sort_key: KeyAttribute) -> Result<NativeTable, Error> {
        NativeTable {
            sort_key: Some(sort_key),
            ..self
        }
        .distinct()
    }

    /// The same table with the bookkeeping attributes named
    /// `<prefix>version`, `<prefix>written_at`, `<prefix>writer`,
    /// `<prefix>deleted` and `<prefix>recent`.
    pub fn bookkeeping(self, prefix: &str) -> Result<NativeTable, Error> {
        NativeTable {
            version: attribute_name(&format!("{prefix}version"))?,
            written_at: attribute_name(&format!("{prefix}written_at"))?,
            writer: attribute_name(&format!("{prefix}writer"))?,
            deleted: attribute_name(&format!("{prefix}deleted"))?,
            recent: attribute_name(&format!("{prefix}recent"))?,
            ..self
        }
        .distinct()
    }

    fn distinct(self) -> Result<NativeTable, Error> {
        quorate::distinct_columns(&self.table, &self.reserved(), false)?;
        Ok(self)
    }

    /// The attributes that are not the value's: keys and bookkeeping.
    fn reserved(&self) -> Vec<&str> {
        let mut names = vec![self.partition_key.name.as_str()];
        if let Some(s) = &self.sort_key {
            names.push(&s.name);
        }
        names.extend([
            self.version.as_str(),
            &self.written_at,
            &self.writer,
            &self.deleted,
            &self.recent,
        ]);
        names
    }

    /// The key a collection uses for the item with these key values (the
    /// sort key's only when the table has one), checked as a write would.
    pub fn key(&self, partition: &str, sort: Option<&str>) -> Result<String, Error> {
        let key = match (sort, &self.sort_key) {
            (None, None) => partition.to_owned(),
            (Some(s), Some(_)) => {
                if partition.contains('/') {
                    return Err(Error::InvalidInput(format!(
                        "a partition key value of {} holds no '/' (it separates the sort key's)",
                        self.table
                    )));
                }
                format!("{partition}/{s}")
            }
            (Some(_), None) => {
                return Err(Error::InvalidInput(format!(
                    "table {} has no sort key",
                    self.table
                )))
            }
            (None, Some(_)) => {
                return Err(Error::InvalidInput(format!(
                    "table {} has a sort key: give its value",
                    self.table
                )))
            }
        };
        self.key_item(&key)?;
        Ok(key)
    }

    /// The key attributes of the item whose key within the collection is
    /// `key`.
    fn key_item(&self, key: &str) -> Result<Item, Error> {
        let mut out = Item::new();
        match &self.sort_key {
            None => {
                out.insert(
                    self.partition_key.name.clone(),
                    key_value(&self.table, &self.partition_key, key, MAX_KEY_BYTES)?,
                );
            }
            Some(sort) => {
                let (p, s) = key.split_once('/').ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "a key of table {} is <{}>/<{}>: {:?} has no '/'",
                        self.table,
                        self.partition_key.name,
                        sort.name,
                        key.chars().take(64).collect::<String>()
                    ))
                })?;
                out.insert(
                    self.partition_key.name.clone(),
                    key_value(&self.table, &self.partition_key, p, MAX_KEY_BYTES)?,
                );
                out.insert(
                    sort.name.clone(),
                    key_value(&self.table, sort, s, MAX_SORT_KEY_BYTES)?,
                );
            }
        }
        Ok(out)
    }
}

fn key_value(
    table: &str,
    attribute: &KeyAttribute,
    text: &str,
    max: usize,
) -> Result<AttributeValue, Error> {
    let bad = |why: &str| {
        Err(Error::InvalidInput(format!(
            "invalid value for key attribute {} of {table}: {why}",
            attribute.name
        )))
    };
    if text.is_empty() {
        return bad("empty");
    }
    if text.len() > max {
        return bad(&format!("{} bytes, over DynamoDB's {max}", text.len()));
    }
    match attribute.kind {
        KeyKind::String => Ok(AttributeValue::S(text.to_owned())),
        KeyKind::Number => {
            let digits = text.strip_prefix('-').unwrap_or(text);
            let canonical = !digits.is_empty()
                && digits.len() <= 38
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (digits == "0" || !digits.starts_with('0'))
                && text != "-0";
            if !canonical {
                return bad(&format!(
                    "{:?} is not an integer in canonical form",
                    text.chars().take(48).collect::<String>()
                ));
            }
            Ok(AttributeValue::N(text.to_owned()))
        }
    }
}

/// How one table's records are laid out: quorate's own table (`pk`, the
/// value as binary) or a native table.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub table: String,
    pub names: Names,
    native: Option<NativeTable>,
}

impl Layout {
    pub fn own(table: &str) -> Layout {
        Layout {
            table: table.to_owned(),
            names: Names::own(),
            native: None,
        }
    }

    pub fn native(t: &NativeTable) -> Layout {
        Layout {
            table: t.table.clone(),
            names: Names {
                version: t.version.clone(),
                written_at: t.written_at.clone(),
                writer: t.writer.clone(),
                deleted: t.deleted.clone(),
                recent: t.recent.clone(),
                adopt: true,
            },
            native: Some(t.clone()),
        }
    }

    /// An item of this table's fields.
    pub fn fields<'a>(&'a self, item: &'a Item) -> Fields<'a> {
        Fields {
            table: &self.table,
            item,
            names: &self.names,
        }
    }

    /// Whether the table has a sort key (its partitions can be queried).
    pub fn sorted(&self) -> bool {
        self.native.as_ref().is_some_and(|t| t.sort_key.is_some())
    }

    /// The partition key's value for a query of `partition`, and the sort
    /// key's name: only a native table with a sort key has partitions to
    /// query.
    pub fn partition(&self, partition: &str) -> Result<(AttributeValue, &KeyAttribute), Error> {
        let Some(t) = &self.native else {
            return Err(Error::InvalidInput(
                "only collections on native tables with a sort key can be queried by partition"
                    .into(),
            ));
        };
        let Some(sort) = &t.sort_key else {
            return Err(Error::InvalidInput(format!(
                "table {} has no sort key: each partition holds one record",
                t.table
            )));
        };
        if partition.contains('/') {
            return Err(Error::InvalidInput(format!(
                "a partition key value of {} holds no '/'",
                t.table
            )));
        }
        Ok((
            key_value(&t.table, &t.partition_key, partition, MAX_KEY_BYTES)?,
            sort,
        ))
    }

    /// The partition key attribute (for `attribute_not_exists`).
    pub fn partition_name(&self) -> &str {
        match &self.native {
            None => item::PK,
            Some(t) => &t.partition_key.name,
        }
    }

    /// The key attributes of `key` (the key within the table), checked.
    pub fn key(&self, key: &str) -> Result<Item, Error> {
        match &self.native {
            None => {
                item::check_key(key)?;
                Ok(Item::from([(item::PK.to_owned(), item::s(key))]))
            }
            Some(t) => t.key_item(key),
        }
    }

    /// The attributes of a record at `key` holding `value` (none for a
    /// tombstone), without bookkeeping, checked against DynamoDB's limits
    /// (`bookkeeping` bytes are added for the attributes still to come).
    pub fn record(&self, key: &str, value: Option<&Bytes>) -> Result<Item, Error> {
        let Some(t) = &self.native else {
            item::check_record(key, value.map_or(&[][..], |v| &v[..]))?;
            let mut out = Item::from([(item::PK.to_owned(), item::s(key))]);
            if let Some(v) = value {
                out.insert(item::VALUE.to_owned(), AttributeValue::B(v.to_vec().into()));
            }
            return Ok(out);
        };
        let mut out = t.key_item(key)?;
        if let Some(v) = value {
            let fields = document_attributes(&t.table, v)?;
            let reserved = t.reserved();
            if let Some(clash) = fields.keys().find(|k| reserved.contains(&k.as_str())) {
                return Err(Error::InvalidInput(format!(
                    "field {clash:?} of the value is an attribute of {}'s keys or of quorate's bookkeeping",
                    t.table
                )));
            }
            out.extend(fields);
        }
        // The bookkeeping: short attributes (and on MRSC tables a map of
        // recent writes, bounded by the backend).
        let size = item_size(&out) + t.reserved().iter().map(|n| n.len() + 24).sum::<usize>();
        if size > MAX_ITEM_BYTES {
            return Err(Error::InvalidInput(format!(
                "an item of about {size} bytes exceeds DynamoDB's {MAX_ITEM_BYTES}-byte item limit"
            )));
        }
        Ok(out)
    }

    /// The value of a live record's item.
    pub fn value_of(&self, f: &Fields<'_>) -> Result<Bytes, Error> {
        let Some(t) = &self.native else {
            return Ok(f.binary(item::VALUE)?);
        };
        let reserved = t.reserved();
        let fields: Item = f
            .item
            .iter()
            .filter(|(k, _)| !reserved.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        document_of(&t.table, fields)
    }
}

/// The attributes of a JSON object, through `serde_dynamo`; anything else
/// (not JSON, not an object, a number DynamoDB cannot hold) is refused.
pub fn document_attributes(table: &str, value: &[u8]) -> Result<Item, Error> {
    let doc: serde_json::Value = serde_json::from_slice(value).map_err(|e| {
        Error::InvalidInput(format!(
            "{table} stores JSON objects as items, and this value is not JSON: {e}"
        ))
    })?;
    let serde_json::Value::Object(map) = &doc else {
        return Err(Error::InvalidInput(format!(
            "{table} stores JSON objects as items, and this value is not an object"
        )));
    };
    if map.keys().any(|k| k.is_empty() || k.len() > MAX_NAME_BYTES) {
        return Err(Error::InvalidInput(format!(
            "a field name of a value for {table} is empty or over {MAX_NAME_BYTES} bytes"
        )));
    }
    check_numbers(table, &doc)?;
    if depth(&doc) > MAX_DEPTH {
        return Err(Error::InvalidInput(format!(
            "a value for {table} nested deeper than DynamoDB's {MAX_DEPTH} levels"
        )));
    }
    serde_dynamo::to_item(map)
        .map_err(|e| Error::InvalidInput(format!("the value cannot be an item of {table}: {e}")))
}

/// DynamoDB's limit on the nesting of an item's attributes.
const MAX_DEPTH: usize = 32;

/// How deep a document nests: the item itself is level 1.
fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// DynamoDB's numbers: a magnitude up to 9.99…E+125 and, when not zero, at
/// least 1E-130.
fn check_numbers(table: &str, v: &serde_json::Value) -> Result<(), Error> {
    match v {
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if f != 0.0 && !(1e-130..1e126).contains(&f.abs()) => Err(Error::InvalidInput(
                format!("the number {n} is out of DynamoDB's range (an item of {table})"),
            )),
            _ => Ok(()),
        },
        serde_json::Value::Array(a) => a.iter().try_for_each(|v| check_numbers(table, v)),
        serde_json::Value::Object(o) => o.values().try_for_each(|v| check_numbers(table, v)),
        _ => Ok(()),
    }
}

/// The JSON document of an item's fields, in canonical form. Items written
/// by other tools may hold what JSON cannot (binary, types this SDK does
/// not know): such an item is an error naming its table, never a panic.
fn document_of(table: &str, fields: Item) -> Result<Bytes, Error> {
    fn known(v: &AttributeValue) -> bool {
        match v {
            AttributeValue::L(l) => l.iter().all(known),
            AttributeValue::M(m) => m.values().all(known),
            AttributeValue::S(_)
            | AttributeValue::N(_)
            | AttributeValue::Bool(_)
            | AttributeValue::Null(_)
            | AttributeValue::Ss(_)
            | AttributeValue::Ns(_) => true,
            _ => false,
        }
    }
    let unreadable = |why: String| {
        Error::backend(
            quorate::Retryability::Permanent,
            Some("quorate.item".into()),
            format!("an item of {table} has no JSON form: {why}"),
        )
    };
    if let Some((name, _)) = fields.iter().find(|(_, v)| !known(v)) {
        return Err(unreadable(format!(
            "attribute {name:?} holds binary or an unknown type"
        )));
    }
    let mut doc: serde_json::Value =
        serde_dynamo::from_item(fields).map_err(|e| unreadable(e.to_string()))?;
    doc.sort_all_objects();
    serde_json::to_vec(&doc)
        .map(Bytes::from)
        .map_err(|e| unreadable(e.to_string()))
}

/// An item's size by DynamoDB's rules (names and values in bytes; numbers
/// counted by their text, which is at least their stored size).
pub fn item_size(item: &Item) -> usize {
    fn value(v: &AttributeValue) -> usize {
        match v {
            AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
            AttributeValue::B(b) => b.as_ref().len(),
            AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
            AttributeValue::L(l) => 3 + l.iter().map(|v| 1 + value(v)).sum::<usize>(),
            AttributeValue::M(m) => {
                3 + m.iter().map(|(k, v)| 1 + k.len() + value(v)).sum::<usize>()
            }
            AttributeValue::Ss(l) | AttributeValue::Ns(l) => l.iter().map(String::len).sum(),
            AttributeValue::Bs(l) => l.iter().map(|b| b.as_ref().len()).sum(),
            _ => 0,
        }
    }
    item.iter().map(|(k, v)| k.len() + value(v)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn orders() -> NativeTable {
        NativeTable::new("Orders", KeyAttribute::string("customer").unwrap())
            .unwrap()
            .sort_key(KeyAttribute::number("order_no").unwrap())
            .unwrap()
    }

    #[test]
    fn keys_split_into_the_table_s_key_attributes() {
        let layout = Layout::native(&orders());
        let key = layout.key("c-1/42/x").unwrap_err();
        assert!(matches!(key, Error::InvalidInput(_)), "{key}");
        let key = layout.key("c-1/42").unwrap();
        assert_eq!(key["customer"], AttributeValue::S("c-1".into()));
        assert_eq!(key["order_no"], AttributeValue::N("42".into()));
        for bad in [
            "c-1", "/42", "c-1/", "c-1/4.2", "c-1/-0", "c-1/007", "c-1/1e3",
        ] {
            assert!(
                matches!(layout.key(bad), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
        assert!(layout.key("c-1/-7").is_ok());
        let plain = Layout::native(
            &NativeTable::new("Users", KeyAttribute::string("user_id").unwrap()).unwrap(),
        );
        assert_eq!(
            plain.key("a/b").unwrap()["user_id"],
            AttributeValue::S("a/b".into()),
            "without a sort key the whole key is the partition's"
        );
        assert!(plain.key(&"x".repeat(2049)).is_err());
    }

    #[test]
    fn values_become_the_item_s_own_attributes() {
        let layout = Layout::native(&orders());
        let item = layout
            .record(
                "c-1/42",
                Some(&Bytes::from_static(
                    br#"{"status":"open","lines":[{"sku":"b","n":2}],"gift":null}"#,
                )),
            )
            .unwrap();
        assert_eq!(item["status"], AttributeValue::S("open".into()));
        assert!(matches!(item["lines"], AttributeValue::L(_)));
        assert_eq!(item["gift"], AttributeValue::Null(true));
        let names = layout.names.clone();
        let f = Fields {
            table: "Orders",
            item: &item,
            names: &names,
        };
        assert_eq!(
            &layout.value_of(&f).unwrap()[..],
            br#"{"gift":null,"lines":[{"n":2,"sku":"b"}],"status":"open"}"#
        );
        assert_eq!(f.version().unwrap(), quorate::Version(1), "adopted");
        assert_eq!(f.written_at().unwrap(), None);
        for bad in [
            &br#"[1, 2]"#[..],
            b"\"text\"",
            b"not json",
            br#"{"customer": "c-2"}"#,
            br#"{"quorate_version": 9}"#,
            br#"{"": 1}"#,
            br#"{"big": 1e200}"#,
            br#"{"tiny": [1e-200]}"#,
            format!("{}1{}", r#"{"a":"#.repeat(33), "}".repeat(33)).as_bytes(),
        ] {
            let e = layout.record("c-1/42", Some(&Bytes::copy_from_slice(bad)));
            assert!(matches!(e, Err(Error::InvalidInput(_))), "{bad:?}");
        }
        let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(MAX_ITEM_BYTES));
        assert!(matches!(
            layout.record("c-1/42", Some(&Bytes::from(big))),
            Err(Error::InvalidInput(_))
        ));
        let deepest = format!("{}1{}", r#"{"a":"#.repeat(32), "}".repeat(32));
        assert!(layout.record("c-1/42", Some(&Bytes::from(deepest))).is_ok());
        let tombstone = layout.record("c-1/42", None).unwrap();
        assert_eq!(tombstone.len(), 2, "a tombstone keeps only its key");
    }

    #[test]
    fn items_with_no_json_form_are_errors() {
        let layout = Layout::native(&orders());
        let mut item = layout.key("c-1/1").unwrap();
        item.insert("blob".into(), AttributeValue::B(vec![1, 2].into()));
        let names = layout.names.clone();
        let f = Fields {
            table: "Orders",
            item: &item,
            names: &names,
        };
        let e = layout.value_of(&f).unwrap_err();
        assert_eq!(e.retryability(), quorate::Retryability::Permanent);
        assert!(e.report().to_string().contains("binary"), "{}", e.report());
    }

    #[test]
    fn bad_tables_are_refused() {
        let s = |n: &str| KeyAttribute::string(n).unwrap();
        assert!(NativeTable::new("ab", s("k")).is_err());
        assert!(NativeTable::new("Orders", s("k"))
            .unwrap()
            .sort_key(s("k"))
            .is_err());
        assert!(NativeTable::new("Orders", s("k"))
            .unwrap()
            .bookkeeping("")
            .is_ok_and(|t| t.version == "version"));
        assert!(NativeTable::new("Orders", s("version"))
            .unwrap()
            .bookkeeping("")
            .is_err());
        assert!(KeyAttribute::string("").is_err());
        assert!(KeyAttribute::number(&"n".repeat(256)).is_err());
    }

    proptest! {
        #[test]
        fn documents_round_trip_through_items(
            // Field names that are neither the key ("id") nor bookkeeping,
            // which a value may not hold.
            fields in proptest::collection::btree_map("f[a-z]{0,7}", prop_oneof![
                any::<i64>().prop_map(serde_json::Value::from),
                "[ -~]{0,12}".prop_map(serde_json::Value::from),
                any::<bool>().prop_map(serde_json::Value::from),
                Just(serde_json::Value::Null),
                proptest::collection::vec(any::<u32>(), 0..4).prop_map(serde_json::Value::from),
            ], 0..8)
        ) {
            let layout = Layout::native(
                &NativeTable::new("Docs", KeyAttribute::string("id").unwrap()).unwrap(),
            );
            let doc = serde_json::to_vec(&fields).unwrap();
            let item = layout.record("k", Some(&Bytes::from(doc.clone()))).unwrap();
            let names = layout.names.clone();
            let f = Fields { table: "Docs", item: &item, names: &names };
            prop_assert_eq!(&layout.value_of(&f).unwrap()[..], &quorate::json::canonical(&doc).unwrap()[..]);
        }

        #[test]
        fn arbitrary_values_and_keys_never_panic(value in proptest::collection::vec(any::<u8>(), 0..64), key in ".{0,24}") {
            let layout = Layout::native(&orders());
            let _ = layout.record(&key, Some(&Bytes::from(value)));
            let _ = layout.key(&key);
        }
    }
}
