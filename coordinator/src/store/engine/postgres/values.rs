//! Values across the seam, PostgreSQL's side: a bound [`Value`] is written
//! as whatever type the server inferred for its parameter (an integer
//! into a `BIGINT`, an `INT4`, a `BOOLEAN` or a text), and a column of
//! any type the schema or an expression produces is read back as the
//! engine-neutral [`Value`] (`NUMERIC`, what `SUM` of a `BIGINT` gives,
//! becomes an integer when it has no fraction).

use super::super::Value;
use bytes::BytesMut;
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use std::error::Error as StdError;

type BoxError = Box<dyn StdError + Sync + Send>;

/// A parameter as the statement binds it.
#[derive(Debug)]
pub struct Param<'a>(pub Value<'a>);

impl Param<'_> {
    /// The type a value would have on its own (a NULL is text).
    pub fn natural_type(&self) -> Type {
        match self.0 {
            Value::Integer(_) => Type::INT8,
            Value::Real(_) => Type::FLOAT8,
            Value::Null | Value::Text(_) => Type::TEXT,
            Value::Blob(_) => Type::BYTEA,
        }
    }
}

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Integer(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                #[allow(clippy::cast_precision_loss)]
                Type::FLOAT8 => (i as f64).to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                Type::NUMERIC => numeric_to_sql(&i.to_string(), out),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    i.to_string().as_str().to_sql(&Type::TEXT, out)
                }
                _ => Err(format!("an integer cannot be bound to a {ty} parameter").into()),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                #[allow(clippy::cast_possible_truncation)]
                Type::FLOAT4 => (f as f32).to_sql(ty, out),
                Type::NUMERIC => numeric_to_sql(&f.to_string(), out),
                Type::TEXT | Type::VARCHAR | Type::UNKNOWN => {
                    f.to_string().as_str().to_sql(&Type::TEXT, out)
                }
                _ => Err(format!("a real cannot be bound to a {ty} parameter").into()),
            },
            Value::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    s.to_sql(&Type::TEXT, out)
                }
                Type::JSON => {
                    out.extend_from_slice(s.as_bytes());
                    Ok(IsNull::No)
                }
                Type::JSONB => {
                    // Binary jsonb: a version byte, then the text.
                    out.extend_from_slice(&[1]);
                    out.extend_from_slice(s.as_bytes());
                    Ok(IsNull::No)
                }
                _ => Err(format!("a text cannot be bound to a {ty} parameter").into()),
            },
            Value::Blob(b) => match *ty {
                Type::BYTEA => b.to_sql(ty, out),
                _ => Err(format!("a blob cannot be bound to a {ty} parameter").into()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// NUMERIC's binary form from a decimal string (`-12.5`): what a
/// parameter the server typed NUMERIC is sent as.
fn numeric_to_sql(decimal: &str, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    let (neg, digits) = match decimal.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, decimal),
    };
    if digits.contains(['e', 'E']) || !digits.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!("{decimal} is not a plain decimal").into());
    }
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    // Base-10000 groups aligned on the decimal point.
    let pad_int = (4 - int.len() % 4) % 4;
    let int_s = format!("{}{int}", "0".repeat(pad_int));
    let pad_frac = (4 - frac.len() % 4) % 4;
    let frac_s = format!("{frac}{}", "0".repeat(pad_frac));
    let group = |s: &str| -> Vec<i16> {
        s.as_bytes()
            .chunks(4)
            .map(|c| {
                c.iter()
                    .fold(0i16, |acc, d| acc * 10 + i16::from(d.wrapping_sub(b'0')))
            })
            .collect()
    };
    let mut groups = group(&int_s);
    let int_groups = i16::try_from(groups.len())?;
    groups.extend(group(&frac_s));
    let weight = int_groups - 1;
    let dscale = u16::try_from(frac.len())?;
    out.extend_from_slice(&i16::try_from(groups.len())?.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&(if neg { 0x4000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    Ok(IsNull::No)
}

/// A column as read.
#[derive(Debug)]
pub struct Col<'a>(pub Value<'a>);

impl<'a> FromSql<'a> for Col<'a> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Col(match *ty {
            Type::INT8 => Value::Integer(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Integer(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT2 => Value::Integer(i64::from(i16::from_sql(ty, raw)?)),
            Type::OID => Value::Integer(i64::from(u32::from_sql(ty, raw)?)),
            Type::BOOL => Value::Integer(i64::from(bool::from_sql(ty, raw)?)),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
            Type::NUMERIC => numeric(raw)?,
            Type::BYTEA => Value::Blob(raw),
            Type::JSONB => Value::Text(std::str::from_utf8(raw.get(1..).unwrap_or_default())?),
            _ => Value::Text(std::str::from_utf8(raw)?),
        }))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Col(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// NUMERIC's binary form: an integer when it has no fraction and fits,
/// else a real.
fn numeric(raw: &[u8]) -> Result<Value<'static>, BoxError> {
    let word = |i: usize| -> Result<u16, BoxError> {
        let b = raw
            .get(i * 2..i * 2 + 2)
            .ok_or("NUMERIC value is truncated")?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    };
    let ndigits = usize::from(word(0)?);
    #[allow(clippy::cast_possible_wrap)]
    let weight = i32::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = word(3)?;
    if sign == 0xC000 {
        return Ok(Value::Real(f64::NAN));
    }
    let neg = sign == 0x4000;
    let mut exact: Option<i64> = (dscale == 0).then_some(0);
    let mut approx = 0f64;
    for i in 0..ndigits {
        let d = i64::from(word(4 + i)?);
        let power = weight - i32::try_from(i)?;
        approx += d as f64 * 10_000f64.powi(power);
        exact = match exact {
            Some(acc) if power >= 0 => u32::try_from(power)
                .ok()
                .and_then(|p| 10_000i64.checked_pow(p))
                .and_then(|m| d.checked_mul(m))
                .and_then(|v| acc.checked_add(v)),
            Some(acc) if d == 0 => Some(acc),
            _ => None,
        };
    }
    Ok(match exact {
        Some(v) => Value::Integer(if neg { -v } else { v }),
        None => Value::Real(if neg { -approx } else { approx }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(decimal: &str) -> Value<'static> {
        let mut out = BytesMut::new();
        numeric_to_sql(decimal, &mut out).unwrap();
        numeric(&out).unwrap()
    }

    #[test]
    fn numerics_read_back_as_integers_or_reals() {
        assert_eq!(round_trip("0"), Value::Integer(0));
        assert_eq!(round_trip("12345678"), Value::Integer(12_345_678));
        assert_eq!(round_trip("-10000"), Value::Integer(-10_000));
        assert_eq!(round_trip("9223372036854775807"), Value::Integer(i64::MAX));
        assert_eq!(round_trip("1.5"), Value::Real(1.5));
        assert_eq!(round_trip("-0.25"), Value::Real(-0.25));
        // Too big for an integer: a real.
        assert!(matches!(round_trip("92233720368547758070"), Value::Real(_)));
    }
}
