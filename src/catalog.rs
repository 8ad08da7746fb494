//! Which table holds a key: the routing adapters use to map collections
//! onto tables the application names (its own tables, with its own key
//! columns and native values), everything else staying in quorate's own
//! records table.
//!
//! A [`Collection`](crate::Collection) named `orders` writes keys
//! `orders/<key>`; a catalog entry for `orders` sends them to the
//! application's table, where `<key>` is the row's key.
//!
//! ```
//! use quorate::Catalog;
//!
//! let mut tables = Catalog::new();
//! tables.insert("orders", "shop_orders")?;
//! assert_eq!(tables.route("orders/o-1"), Some((&"shop_orders", "o-1")));
//! assert_eq!(tables.route("carts/c-1"), None, "quorate's own table");
//! assert!(tables.insert("orders", "again").is_err());
//! # Ok::<(), quorate::Error>(())
//! ```

use std::sync::Arc;

use crate::error::Error;

/// Collections mapped onto tables of their own (see the module docs).
#[derive(Clone, Debug)]
pub struct Catalog<T> {
    entries: Vec<(Arc<str>, T)>,
}

impl<T> Default for Catalog<T> {
    fn default() -> Self {
        Catalog {
            entries: Vec::new(),
        }
    }
}

impl<T> Catalog<T> {
    /// An empty catalog: every key in quorate's own table.
    pub fn new() -> Catalog<T> {
        Catalog::default()
    }

    /// Maps the collection `collection` onto `table`. The name follows the
    /// rules of [`Client::collection`](crate::Client::collection); a
    /// collection mapped twice is refused.
    pub fn insert(&mut self, collection: &str, table: T) -> Result<(), Error> {
        check_collection_name(collection)?;
        if self.entries.iter().any(|(c, _)| &**c == collection) {
            return Err(Error::InvalidInput(format!(
                "collection {collection:?} is already mapped onto a table"
            )));
        }
        self.entries.push((Arc::from(collection), table));
        Ok(())
    }

    /// The table of `key` and the key within it, or `None` for a key of
    /// quorate's own table. A key of a mapped collection with nothing after
    /// the `/` stays in quorate's table too (no row key to give).
    pub fn route<'k>(&self, key: &'k str) -> Option<(&T, &'k str)> {
        if self.entries.is_empty() {
            return None;
        }
        let (collection, rest) = key.split_once('/')?;
        if rest.is_empty() {
            return None;
        }
        self.entries
            .iter()
            .find(|(c, _)| &**c == collection)
            .map(|(_, t)| (t, rest))
    }

    /// The table `collection` is mapped onto.
    pub fn get(&self, collection: &str) -> Option<&T> {
        self.entries
            .iter()
            .find(|(c, _)| &**c == collection)
            .map(|(_, t)| t)
    }

    /// The mapped collections and their tables, in the order inserted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries.iter().map(|(c, t)| (&**c, t))
    }

    /// Whether no collection is mapped.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Checks that the columns (or attributes) of a native table — its keys,
/// its value, quorate's bookkeeping — are distinct: `fold_case` for
/// databases whose names ignore case. [`Error::InvalidInput`] names the
/// first one that has two roles.
pub fn distinct_columns(table: &str, names: &[&str], fold_case: bool) -> Result<(), Error> {
    for (i, a) in names.iter().enumerate() {
        let same = |b: &&str| {
            if fold_case {
                b.eq_ignore_ascii_case(a)
            } else {
                b == a
            }
        };
        if names[..i].iter().any(same) {
            return Err(Error::InvalidInput(format!(
                "{a:?} of table {table} has two roles: the keys, the value and quorate's \
                 bookkeeping need a column or attribute each"
            )));
        }
    }
    Ok(())
}

/// The rules for a collection's name: 1–64 bytes without `/` or
/// control characters.
pub(crate) fn check_collection_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > 64
        || name.contains('/')
        || name.chars().any(char::is_control)
    {
        return Err(Error::InvalidInput(format!(
            "collection name must be 1-64 bytes without '/' or control characters: {:?}",
            name.chars().take(65).collect::<String>()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_route_by_their_collection_only() {
        let mut c = Catalog::new();
        c.insert("orders", 1).unwrap();
        c.insert("stock", 2).unwrap();
        assert_eq!(c.route("orders/a/b"), Some((&1, "a/b")));
        assert_eq!(c.route("stock/x"), Some((&2, "x")));
        for own in ["orders", "orders/", "order/x", "ordersx/y", "", "/orders"] {
            assert_eq!(c.route(own), None, "{own:?}");
        }
        for bad in ["", "a/b", "tab\t", &"x".repeat(65)] {
            assert!(c.insert(bad, 3).is_err(), "{bad:?}");
        }
        assert!(c.insert("orders", 3).is_err());
        assert_eq!((c.get("stock"), c.get("nope")), (Some(&2), None));
        assert_eq!(
            c.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["orders", "stock"]
        );
        assert!(Catalog::<u8>::new().route("orders/a").is_none());
        assert!(distinct_columns("t", &["id", "doc", "v"], false).is_ok());
        assert!(distinct_columns("t", &["id", "doc", "id"], false).is_err());
        assert!(distinct_columns("t", &["Id", "id"], false).is_ok());
        assert!(distinct_columns("t", &["Id", "id"], true).is_err());
    }
}
