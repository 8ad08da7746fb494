//! Values as JSON: how [`Collection`](crate::Collection)s encode them, and
//! the canonical form adapters store natively (PostgreSQL `JSONB`, Spanner
//! `JSON`, DynamoDB attribute maps) and read back.
//!
//! `serde_json` writes a float that is not finite (NaN, ±∞) as `null`, so a
//! value would come back as something else than was written; [`to_vec`]
//! refuses it instead.
//!
//! ```
//! use quorate::json;
//!
//! assert_eq!(json::to_vec(&vec![1.5, 2.0])?, b"[1.5,2.0]");
//! assert!(json::to_vec(&f64::NAN).is_err());
//! assert_eq!(&json::canonical(br#"{ "b": 1,  "a": [true] }"#)?[..], br#"{"a":[true],"b":1}"#);
//! assert!(json::canonical(b"not json").is_err());
//! # Ok::<(), quorate::Error>(())
//! ```

use bytes::Bytes;
use serde::ser::{self, Serialize};

use crate::error::Error;

/// Encodes `value` as JSON, refusing floats that are not finite (JSON has
/// no NaN or infinity) with [`Error::InvalidInput`].
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    value.serialize(Finite).map_err(|e| match e {
        FiniteError::NotFinite => Error::InvalidInput(
            "a float that is not finite (NaN or infinity) has no JSON form".into(),
        ),
        // Anything else `serde_json` reports below, with its own message.
        FiniteError::Custom => Error::InvalidInput("the value cannot be serialized".into()),
    })?;
    Ok(serde_json::to_vec(value)?)
}

/// The canonical form of a JSON document: parsed and written back compact,
/// object members in one stable order. Two documents that mean the same
/// have the same canonical bytes, whichever database stored them.
/// Anything that is not one JSON document is [`Error::InvalidInput`].
pub fn canonical(text: &[u8]) -> Result<Bytes, Error> {
    let mut value: serde_json::Value = serde_json::from_slice(text).map_err(|e| {
        Error::InvalidInput(format!(
            "not a JSON document ({e}); a native table stores JSON values"
        ))
    })?;
    // Sorted members, whether or not `serde_json` keeps insertion order.
    value.sort_all_objects();
    Ok(Bytes::from(serde_json::to_vec(&value)?))
}

/// Why [`Finite`] stopped.
#[derive(Debug)]
enum FiniteError {
    NotFinite,
    Custom,
}

impl std::fmt::Display for FiniteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FiniteError::NotFinite => "a float is not finite",
            FiniteError::Custom => "the value cannot be serialized",
        })
    }
}

impl std::error::Error for FiniteError {}

impl ser::Error for FiniteError {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        FiniteError::Custom
    }
}

/// A serializer that writes nothing and fails on a float that is not
/// finite.
struct Finite;

type R = Result<(), FiniteError>;

fn float(v: f64) -> R {
    if v.is_finite() {
        Ok(())
    } else {
        Err(FiniteError::NotFinite)
    }
}

macro_rules! accept {
    ($($name:ident: $ty:ty),* $(,)?) => {
        $(fn $name(self, _: $ty) -> R { Ok(()) })*
    };
}

impl ser::Serializer for Finite {
    type Ok = ();
    type Error = FiniteError;
    type SerializeSeq = Finite;
    type SerializeTuple = Finite;
    type SerializeTupleStruct = Finite;
    type SerializeTupleVariant = Finite;
    type SerializeMap = Finite;
    type SerializeStruct = Finite;
    type SerializeStructVariant = Finite;

    accept!(
        serialize_bool: bool,
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_i128: i128,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_u128: u128,
        serialize_char: char,
        serialize_str: &str,
        serialize_bytes: &[u8],
        serialize_unit_struct: &'static str,
    );

    fn serialize_f32(self, v: f32) -> R {
        float(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> R {
        float(v)
    }
    fn serialize_none(self) -> R {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> R {
        value.serialize(Finite)
    }
    fn serialize_unit(self) -> R {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> R {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> R {
        value.serialize(Finite)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> R {
        value.serialize(Finite)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Finite, FiniteError> {
        Ok(Finite)
    }
    fn serialize_tuple(self, _: usize) -> Result<Finite, FiniteError> {
        Ok(Finite)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Finite, FiniteError> {
        Ok(Finite)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Finite, FiniteError> {
        Ok(Finite)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Finite, FiniteError> {
        Ok(Finite)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Finite, FiniteError> {
        Ok(Finite)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Finite, FiniteError> {
        Ok(Finite)
    }
}

/// The compound serializers: each element, field, key or value checked in
/// turn.
macro_rules! compound {
    ($($trait:ident :: $method:ident ($($name:ty),*)),* $(,)?) => {
        $(
            impl ser::$trait for Finite {
                type Ok = ();
                type Error = FiniteError;
                fn $method<T: Serialize + ?Sized>(&mut self, $(_: $name,)* value: &T) -> R {
                    value.serialize(Finite)
                }
                fn end(self) -> R {
                    Ok(())
                }
            }
        )*
    };
}

compound!(
    SerializeSeq::serialize_element(),
    SerializeTuple::serialize_element(),
    SerializeTupleStruct::serialize_field(),
    SerializeTupleVariant::serialize_field(),
    SerializeStruct::serialize_field(&'static str),
    SerializeStructVariant::serialize_field(&'static str),
);

impl ser::SerializeMap for Finite {
    type Ok = ();
    type Error = FiniteError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> R {
        key.serialize(Finite)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
        value.serialize(Finite)
    }
    fn end(self) -> R {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(serde::Serialize)]
    enum Shape {
        Circle { r: f32 },
        Pair(f64, f64),
    }

    #[derive(serde::Serialize)]
    struct Order {
        total: f64,
        lines: Vec<(String, Option<f32>)>,
        shape: Shape,
        by_name: BTreeMap<String, f64>,
    }

    fn order() -> Order {
        Order {
            total: 9.5,
            lines: vec![("a".into(), Some(1.0)), ("b".into(), None)],
            shape: Shape::Circle { r: 2.0 },
            by_name: [("x".to_owned(), 0.25)].into_iter().collect(),
        }
    }

    #[test]
    fn finite_values_encode_as_serde_json_does() {
        let o = order();
        assert_eq!(to_vec(&o).unwrap(), serde_json::to_vec(&o).unwrap());
    }

    #[test]
    fn a_float_that_is_not_finite_is_refused_wherever_it_is() {
        let mut cases = Vec::new();
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut o = order();
            o.total = bad;
            cases.push(o);
            let mut o = order();
            o.lines[1].1 = Some(bad as f32);
            cases.push(o);
            let mut o = order();
            o.shape = Shape::Pair(1.0, bad);
            cases.push(o);
            let mut o = order();
            o.shape = Shape::Circle { r: bad as f32 };
            cases.push(o);
            let mut o = order();
            o.by_name.insert("y".into(), bad);
            cases.push(o);
        }
        for o in cases {
            let e = to_vec(&o).unwrap_err();
            assert!(matches!(e, Error::InvalidInput(_)), "{e}");
            assert!(e.to_string().contains("not finite"), "{e}");
        }
    }

    #[test]
    fn canonical_forms_agree_for_documents_that_mean_the_same() {
        let a = canonical(br#"{"b": [1, 2.5, "x"], "a": {"z": null, "y": true}}"#).unwrap();
        let b = canonical(br#"{"a":{"y":true,"z":null},"b":[1,2.5,"x"]}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(canonical(&a).unwrap(), a, "canonical is a fixed point");
        for bad in [&b""[..], b"{", b"nan", b"{} {}", b"\xff"] {
            assert!(matches!(canonical(bad), Err(Error::InvalidInput(_))));
        }
    }
}
