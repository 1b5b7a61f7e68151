//! Helpers for the two SQLite files (the agent's journal, the
//! coordinator's store): rows into structs by column order, text columns
//! into the closed vocabularies of `spot_common::vocab`.

use std::str::FromStr;

/// Builds `$T` from a row whose columns come in the order of the fields
/// listed: `from_row! { r => NoticeView { event_id, kind: text, epoch: u64 } }`.
/// A field may name its reader in `col`: `text` parses a closed
/// vocabulary (a `string_enum!`), `json` a JSON document, `u64` a count
/// or epoch (`opt_` forms for NULLable columns); unmarked fields are read
/// as they are. Struct fields are evaluated in the order written, which
/// is what numbers the columns.
#[macro_export]
macro_rules! from_row {
    ($r:ident => $T:ident { $($field:ident $(: $how:ident)?),* $(,)? }) => {{
        let mut _col = 0usize;
        $T { $($field: {
            _col += 1;
            $crate::from_row!(@how $($how)?)($r, _col - 1)?
        }),* }
    }};
    (@how) => { $crate::sql::col::plain };
    (@how $how:ident) => { $crate::sql::col::$how };
}

/// The column readers `from_row!` names.
pub mod col {
    use rusqlite::Row;
    use rusqlite::types::{FromSql, Type};
    use std::str::FromStr;

    type Result<T> = rusqlite::Result<T>;

    pub(super) fn bad(
        idx: usize,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e))
    }

    pub fn plain<T: FromSql>(r: &Row<'_>, idx: usize) -> Result<T> {
        r.get(idx)
    }

    /// A closed vocabulary (a `string_enum!`): an unknown word is an error
    /// naming the column, never a silent default.
    pub fn text<T: FromStr>(r: &Row<'_>, idx: usize) -> Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        super::parse_text(idx, r.get(idx)?)
    }

    pub fn opt_text<T: FromStr>(r: &Row<'_>, idx: usize) -> Result<Option<T>>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let v: Option<String> = r.get(idx)?;
        v.map(|s| super::parse_text(idx, s)).transpose()
    }

    pub fn json<T: serde::de::DeserializeOwned>(r: &Row<'_>, idx: usize) -> Result<T> {
        serde_json::from_str(&r.get::<_, String>(idx)?).map_err(|e| bad(idx, e))
    }

    pub fn opt_json<T: serde::de::DeserializeOwned>(r: &Row<'_>, idx: usize) -> Result<Option<T>> {
        let v: Option<String> = r.get(idx)?;
        v.map(|s| serde_json::from_str(&s).map_err(|e| bad(idx, e)))
            .transpose()
    }

    /// An INTEGER holding an epoch or a count (never negative).
    pub fn u64(r: &Row<'_>, idx: usize) -> Result<u64> {
        Ok(super::to_u64(r.get(idx)?))
    }
}

/// Column `idx`'s text as a closed vocabulary (for values read outside
/// `from_row!`).
pub fn parse_text<T: FromStr>(idx: usize, s: String) -> rusqlite::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    s.parse::<T>().map_err(|e| col::bad(idx, e))
}

/// An INTEGER column holding an epoch or a count (never negative).
pub fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use spot_common::Role;

    #[derive(Debug, PartialEq)]
    struct Row {
        name: String,
        role: Role,
        epoch: u64,
        note: Option<String>,
        list: Vec<u32>,
    }

    fn read(conn: &Connection, role: &str) -> rusqlite::Result<Row> {
        conn.query_row("SELECT 'a', ?1, -1, NULL, '[1, 2]'", [role], |r| {
            Ok(crate::from_row! { r => Row { name, role: text, epoch: u64, note, list: json } })
        })
    }

    #[test]
    fn columns_follow_the_fields_order() {
        let conn = Connection::open_in_memory().unwrap();
        let row = read(&conn, "primary").unwrap();
        assert_eq!(
            row,
            Row {
                name: "a".into(),
                role: Role::Primary,
                epoch: 0,
                note: None,
                list: vec![1, 2],
            }
        );
        let e = read(&conn, "captain").unwrap_err();
        assert!(
            matches!(e, rusqlite::Error::FromSqlConversionFailure(1, ..)),
            "{e}"
        );
    }
}
