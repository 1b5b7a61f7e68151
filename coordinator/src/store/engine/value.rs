//! Values across the seam: what the statements bind ([`ToValue`] into a
//! [`Value`]) and what they read (a [`Value`] into [`FromValue`]), so no
//! driver's types reach the subject modules.

use super::Error;
use crate::store::Result;

/// A value crossing the seam: a bound parameter, or a column as read
/// (borrowed from the engine's row).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl Value<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Integer(_) => "INTEGER",
            Value::Real(_) => "REAL",
            Value::Text(_) => "TEXT",
            Value::Blob(_) => "BLOB",
        }
    }
}

/// A Rust value the statements bind.
pub trait ToValue {
    fn to_value(&self) -> Result<Value<'_>>;
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Result<Value<'_>> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Result<Value<'_>> {
        self.as_ref().map_or(Ok(Value::Null), ToValue::to_value)
    }
}

impl ToValue for str {
    fn to_value(&self) -> Result<Value<'_>> {
        Ok(Value::Text(self))
    }
}

impl ToValue for String {
    fn to_value(&self) -> Result<Value<'_>> {
        Ok(Value::Text(self))
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Result<Value<'_>> {
        Ok(Value::Blob(self))
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Result<Value<'_>> {
        Ok(Value::Blob(self))
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Result<Value<'_>> {
        Ok(Value::Real(*self))
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Result<Value<'_>> {
        Ok(Value::Integer(i64::from(*self)))
    }
}

macro_rules! integer_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Result<Value<'_>> {
                i64::try_from(*self)
                    .map(Value::Integer)
                    .map_err(|_| Error::Range(format!("{} does not fit a 64-bit signed integer", self)).into())
            }
        }
    )*};
}
integer_to_value!(i64, i32, u32, u64, usize);

/// A column the statements read into a Rust value.
pub trait FromValue: Sized {
    fn from_value(v: Value<'_>, idx: usize) -> Result<Self>;
}

fn mismatch<T>(v: Value<'_>, idx: usize, expected: &'static str) -> Result<T> {
    Err(Error::Type {
        idx,
        expected,
        found: v.kind(),
    }
    .into())
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value<'_>, idx: usize) -> Result<Self> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v, idx).map(Some),
        }
    }
}

impl FromValue for i64 {
    fn from_value(v: Value<'_>, idx: usize) -> Result<Self> {
        match v {
            Value::Integer(i) => Ok(i),
            v => mismatch(v, idx, "INTEGER"),
        }
    }
}

macro_rules! integer_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: Value<'_>, idx: usize) -> Result<Self> {
                let i = i64::from_value(v, idx)?;
                <$t>::try_from(i).map_err(|e| Error::Parse { idx, source: Box::new(e) }.into())
            }
        }
    )*};
}
integer_from_value!(i32, u32, u64, usize);

impl FromValue for bool {
    fn from_value(v: Value<'_>, idx: usize) -> Result<Self> {
        Ok(i64::from_value(v, idx)? != 0)
    }
}

impl FromValue for f64 {
    fn from_value(v: Value<'_>, idx: usize) -> Result<Self> {
        match v {
            Value::Real(f) => Ok(f),
            #[allow(clippy::cast_precision_loss)]
            Value::Integer(i) => Ok(i as f64),
            v => mismatch(v, idx, "REAL"),
        }
    }
}

impl FromValue for String {
    fn from_value(v: Value<'_>, idx: usize) -> Result<Self> {
        match v {
            Value::Text(s) => Ok(s.to_owned()),
            v => mismatch(v, idx, "TEXT"),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: Value<'_>, idx: usize) -> Result<Self> {
        match v {
            Value::Blob(b) => Ok(b.to_vec()),
            v => mismatch(v, idx, "BLOB"),
        }
    }
}

/// A TEXT column holding a closed vocabulary (a `string_enum!`): an
/// unknown word is an error naming the column, never a silent default.
pub struct Text<T>(pub T);

impl<T: std::str::FromStr> Text<T>
where
    T::Err: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn parse(s: &str, idx: usize) -> Result<Text<T>> {
        s.parse().map(Text).map_err(|e: T::Err| {
            Error::Parse {
                idx,
                source: e.into(),
            }
            .into()
        })
    }
}

impl<T: std::str::FromStr> FromValue for Text<T>
where
    T::Err: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn from_value(v: Value<'_>, idx: usize) -> Result<Self> {
        match v {
            Value::Text(s) => Text::parse(s, idx),
            v => mismatch(v, idx, "TEXT"),
        }
    }
}

/// A TEXT column holding a JSON document.
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromValue for Json<T> {
    fn from_value(v: Value<'_>, idx: usize) -> Result<Self> {
        match v {
            Value::Text(s) => serde_json::from_str(s).map(Json).map_err(|e| {
                Error::Parse {
                    idx,
                    source: Box::new(e),
                }
                .into()
            }),
            v => mismatch(v, idx, "TEXT"),
        }
    }
}
