//! The seam between the store and a database engine: the one room that
//! knows which database the store runs on.
//!
//! Every statement of `store/` is written against the small interface
//! here: a [`Conn`] executes a statement or walks its rows, a [`Tx`] is a
//! `Conn` that commits once (and rolls back when dropped), an [`Engine`]
//! hands out its connection and opens transactions. Values cross it as
//! [`Value`] both ways (parameters bound, columns read), so no
//! driver type leaks into the subject modules. On top of those few
//! object-safe calls, [`ConnExt`] gives every connection the conveniences
//! the statements use (`query_row`, `prepare(..).query_map`, `params!`),
//! written once for all engines.
//!
//! What an engine brings: its connection type ([`sqlite`]), its migration
//! ladder (the DDL differs), its schema-version record and integrity
//! check. The SQL the statements share is kept in the subset both SQLite
//! and PostgreSQL speak; what still differs lives in [`dialect`].

pub mod dialect;
pub mod postgres;
pub mod sqlite;
mod value;

use super::{Result, StoreError};
use std::path::PathBuf;

pub use value::{FromValue, ToValue, Value};

/// Where the store lives (`store_url`): `sqlite:PATH`, the embedded
/// default, or `postgres://user@host/db?sslmode=verify-full&sslrootcert=PATH`.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl std::str::FromStr for StoreUrl {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(
                    "sqlite: needs a path, e.g. sqlite:/var/lib/spot-coordinator/coordinator.db"
                        .into(),
                );
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(s.to_owned()));
        }
        Err(format!(
            "store URL {:?} is neither sqlite:PATH nor postgres://...",
            postgres::redact(s)
        ))
    }
}

impl std::fmt::Display for StoreUrl {
    /// The URL with any password hidden.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            StoreUrl::Postgres(u) => f.write_str(&postgres::redact(u)),
        }
    }
}

impl std::fmt::Debug for StoreUrl {
    /// As `Display`: a password never reaches a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl StoreUrl {
    pub fn is_postgres(&self) -> bool {
        matches!(self, StoreUrl::Postgres(_))
    }
}

/// What went wrong between the store and its engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the query returned no rows")]
    NoRows,
    #[error("column {idx}: expected {expected}, found {found}")]
    Type {
        idx: usize,
        expected: &'static str,
        found: &'static str,
    },
    #[error("column {idx} does not parse: {source}")]
    Parse {
        idx: usize,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("parameter out of range: {0}")]
    Range(String),
    #[error(transparent)]
    Driver(Box<dyn std::error::Error + Send + Sync>),
}

/// The columns of one row, as an engine serves them.
pub trait Columns {
    fn column(&self, idx: usize) -> Result<Value<'_>>;
}

/// One row of a result, in the engine-neutral form the mappers read.
pub struct Row<'a>(&'a dyn Columns);

impl<'a> Row<'a> {
    pub fn new(columns: &'a dyn Columns) -> Row<'a> {
        Row(columns)
    }

    /// Column `idx` (0-based) as the engine served it.
    pub fn value(&self, idx: usize) -> Result<Value<'_>> {
        self.0.column(idx)
    }

    /// Column `idx` (0-based) as a `T`.
    pub fn get<T: FromValue>(&self, idx: usize) -> Result<T> {
        T::from_value(self.0.column(idx)?, idx)
    }
}

/// What each row of a query is handed to; `Ok(false)` stops the walk.
pub type EachRow<'f> = dyn FnMut(&Row<'_>) -> Result<bool> + 'f;

/// A connection: the few calls an engine implements. Everything the
/// statements call on top is in [`ConnExt`].
pub trait Conn {
    /// Run one statement; the number of rows it changed.
    fn execute_values(&self, sql: &str, args: &[&dyn ToValue]) -> Result<usize>;
    /// Run one query, handing each row to `each` until it answers false.
    fn query_values(&self, sql: &str, args: &[&dyn ToValue], each: &mut EachRow<'_>) -> Result<()>;
    /// The schema version the database is at.
    fn schema_version(&self) -> Result<i64>;
    /// The engine's own consistency check: `"ok"` when sound.
    fn integrity_check(&self) -> Result<String>;
    /// Bytes the database holds (free space excluded): what retention
    /// keeps flat.
    fn used_bytes(&self) -> Result<i64>;
    /// Run `f`'s reads on one snapshot of the database: a read made of
    /// several statements never sees half of a commit that lands between
    /// them. Inside a transaction, that transaction is the snapshot.
    fn consistent_read(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<()>;
}

impl<C: Conn + ?Sized> Conn for Box<C> {
    fn execute_values(&self, sql: &str, args: &[&dyn ToValue]) -> Result<usize> {
        (**self).execute_values(sql, args)
    }
    fn query_values(&self, sql: &str, args: &[&dyn ToValue], each: &mut EachRow<'_>) -> Result<()> {
        (**self).query_values(sql, args, each)
    }
    fn schema_version(&self) -> Result<i64> {
        (**self).schema_version()
    }
    fn integrity_check(&self) -> Result<String> {
        (**self).integrity_check()
    }
    fn used_bytes(&self) -> Result<i64> {
        (**self).used_bytes()
    }
    fn consistent_read(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        (**self).consistent_read(f)
    }
}

/// A write transaction: committed once; dropped without `commit`, it
/// rolls back.
pub trait Tx: Conn {
    fn commit(self: Box<Self>) -> Result<()>;
}

/// A database the store runs on: one connection (a writer or a reader)
/// and the transactions it opens.
pub trait Engine: Send {
    fn conn(&self) -> &dyn Conn;
    /// Open a write transaction that holds the write lock from its start,
    /// so its reads see what it will write over.
    fn begin(&mut self) -> Result<Box<dyn Tx + '_>>;

    /// The leader term this engine's writes are fenced by (0: none).
    fn term_epoch(&self) -> i64 {
        0
    }

    /// The store's tables (the engine's own bookkeeping left out), for
    /// `store copy`.
    fn tables(&self) -> Result<Vec<String>>;
    /// The columns of `table`, in order.
    fn columns(&self, table: &str) -> Result<Vec<String>>;
    /// The statement that, inside a transaction, checks foreign keys at
    /// commit only (a copy inserts rows table by table, not in reference
    /// order).
    fn defer_constraints_sql(&self) -> &'static str;
    /// After rows were copied in with their ids: new ids continue after
    /// the largest.
    fn after_copy(&self) -> Result<()>;
}

/// The parameters of a statement: `[]`, an array of one type, or
/// [`params!`]'s list of mixed types.
pub trait Params {
    fn with<R>(self, f: impl FnOnce(&[&dyn ToValue]) -> R) -> R;
}

impl Params for &[&dyn ToValue] {
    fn with<R>(self, f: impl FnOnce(&[&dyn ToValue]) -> R) -> R {
        f(self)
    }
}

impl Params for [&dyn ToValue; 0] {
    fn with<R>(self, f: impl FnOnce(&[&dyn ToValue]) -> R) -> R {
        f(&[])
    }
}

macro_rules! array_params {
    ($($n:literal),*) => {$(
        impl<T: ToValue> Params for [T; $n] {
            fn with<R>(self, f: impl FnOnce(&[&dyn ToValue]) -> R) -> R {
                let refs: [&dyn ToValue; $n] = std::array::from_fn(|i| &self[i] as &dyn ToValue);
                f(&refs)
            }
        }
    )*};
}
array_params!(1, 2, 3, 4, 5, 6, 7, 8);

/// A list of parameters of mixed types: `params![name, epoch, now_ms]`.
macro_rules! params {
    () => {
        &[] as &[&dyn $crate::store::engine::ToValue]
    };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::store::engine::ToValue),+] as &[&dyn $crate::store::engine::ToValue]
    };
}
pub(crate) use params;

/// The conveniences every connection has, written once over [`Conn`].
pub trait ConnExt: Conn {
    fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        params.with(|args| self.execute_values(sql, args))
    }

    /// The first row, mapped; [`Error::NoRows`] when there is none (see
    /// [`OptionalExtension::optional`]).
    fn query_row<T, P, F>(&self, sql: &str, params: P, mut f: F) -> Result<T>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> Result<T>,
    {
        let mut first = None;
        params.with(|args| {
            self.query_values(sql, args, &mut |row| {
                first = Some(f(row)?);
                Ok(false)
            })
        })?;
        first.ok_or_else(|| Error::NoRows.into())
    }

    /// A statement to run once or many times. Engines cache what they
    /// prepare, so this is the same call as `prepare_cached`.
    fn prepare(&self, sql: &str) -> Result<Statement<'_>> {
        Ok(Statement {
            conn: self.as_dyn(),
            sql: sql.to_owned(),
        })
    }

    fn prepare_cached(&self, sql: &str) -> Result<Statement<'_>> {
        self.prepare(sql)
    }

    /// `f`'s reads, all on one snapshot (see [`Conn::consistent_read`]).
    fn consistent<T>(&self, f: impl FnOnce(&dyn Conn) -> Result<T>) -> Result<T> {
        let conn = self.as_dyn();
        let mut f = Some(f);
        let mut out = None;
        conn.consistent_read(&mut || {
            if let Some(f) = f.take() {
                out = Some(f(conn)?);
            }
            Ok(())
        })?;
        out.ok_or_else(|| Error::NoRows.into())
    }

    fn as_dyn(&self) -> &dyn Conn;
}

impl<C: Conn> ConnExt for C {
    fn as_dyn(&self) -> &dyn Conn {
        self
    }
}

impl ConnExt for dyn Conn + '_ {
    fn as_dyn(&self) -> &dyn Conn {
        self
    }
}

impl ConnExt for dyn Tx + '_ {
    fn as_dyn(&self) -> &dyn Conn {
        self
    }
}

/// A statement and the connection it runs on.
pub struct Statement<'c> {
    conn: &'c dyn Conn,
    sql: String,
}

impl Statement<'_> {
    pub fn execute<P: Params>(&self, params: P) -> Result<usize> {
        params.with(|args| self.conn.execute_values(&self.sql, args))
    }

    pub fn query_row<T, P, F>(&self, params: P, f: F) -> Result<T>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> Result<T>,
    {
        self.conn.query_row(&self.sql, params, f)
    }

    /// Every row, mapped; the first failing row ends the walk with its
    /// error as the last item.
    pub fn query_map<T, P, F>(&self, params: P, mut f: F) -> Result<std::vec::IntoIter<Result<T>>>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> Result<T>,
    {
        let mut rows = Vec::new();
        params.with(|args| {
            self.conn.query_values(&self.sql, args, &mut |row| {
                let mapped = f(row);
                let go_on = mapped.is_ok();
                rows.push(mapped);
                Ok(go_on)
            })
        })?;
        Ok(rows.into_iter())
    }

    /// Walk the rows without collecting them (exports).
    pub fn for_each<P, F>(&self, params: P, mut f: F) -> Result<()>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> Result<()>,
    {
        params.with(|args| {
            self.conn.query_values(&self.sql, args, &mut |row| {
                f(row)?;
                Ok(true)
            })
        })
    }
}

/// `query_row(..).optional()`: no row is `None`, not an error.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::Engine(Error::NoRows)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Column `idx`'s text as a closed vocabulary (a `string_enum!`): an
/// unknown word is an error naming the column, never a silent default.
pub fn parse_text<T: std::str::FromStr>(idx: usize, s: String) -> Result<T>
where
    T::Err: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    value::Text::parse(&s, idx).map(|t| t.0)
}

/// The column readers [`from_row!`] names: `text` a closed vocabulary,
/// `json` a JSON document, `u64` a count or epoch, `opt_` forms for
/// NULLable columns; unmarked fields are read as they are.
pub mod col {
    use super::value::{Json, Text};
    use super::{FromValue, Result, Row};
    use serde::de::DeserializeOwned;
    use std::str::FromStr;

    type ParseError = dyn std::error::Error + Send + Sync + 'static;

    pub fn plain<T: FromValue>(r: &Row<'_>, idx: usize) -> Result<T> {
        r.get(idx)
    }

    pub fn text<T: FromStr<Err: Into<Box<ParseError>>>>(r: &Row<'_>, idx: usize) -> Result<T> {
        Ok(r.get::<Text<T>>(idx)?.0)
    }

    pub fn opt_text<T: FromStr<Err: Into<Box<ParseError>>>>(
        r: &Row<'_>,
        idx: usize,
    ) -> Result<Option<T>> {
        Ok(r.get::<Option<Text<T>>>(idx)?.map(|t| t.0))
    }

    pub fn json<T: DeserializeOwned>(r: &Row<'_>, idx: usize) -> Result<T> {
        Ok(r.get::<Json<T>>(idx)?.0)
    }

    pub fn opt_json<T: DeserializeOwned>(r: &Row<'_>, idx: usize) -> Result<Option<T>> {
        Ok(r.get::<Option<Json<T>>>(idx)?.map(|j| j.0))
    }

    /// An INTEGER holding an epoch or a count (never negative).
    pub fn u64(r: &Row<'_>, idx: usize) -> Result<u64> {
        Ok(spot_runtime::sql::to_u64(r.get(idx)?))
    }
}

/// Builds `$T` from a row whose columns come in the order of the fields
/// listed, as `spot_runtime::from_row!` does for the agent's journal, over
/// this interface: `from_row! { r => NoticeView { event_id, kind: text } }`.
macro_rules! from_row {
    ($r:ident => $T:ident { $($field:ident $(: $how:ident)?),* $(,)? }) => {{
        let mut _col = 0usize;
        $T { $($field: {
            _col += 1;
            $crate::store::engine::from_row!(@how $($how)?)($r, _col - 1)?
        }),* }
    }};
    (@how) => { $crate::store::engine::col::plain };
    (@how $how:ident) => { $crate::store::engine::col::$how };
}
pub(crate) use from_row;

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> sqlite::Sqlite {
        sqlite::Sqlite::in_memory().unwrap()
    }

    #[test]
    fn values_round_trip_through_the_engine() {
        let c = conn();
        let c = c.conn();
        let row: (i64, Option<String>, f64, bool, String, u64) = c
            .query_row(
                "SELECT ?1, ?2, ?3, ?4, ?5, ?6",
                params![-3i64, None::<String>, 1.5f64, true, "x", 7u64],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .unwrap();
        assert_eq!(row, (-3, None, 1.5, true, "x".to_owned(), 7));
    }

    #[test]
    fn no_row_is_none_only_through_optional() {
        let c = conn();
        let c = c.conn();
        let q = || c.query_row("SELECT 1 WHERE 0", [], |r| r.get::<i64>(0));
        assert!(matches!(q(), Err(StoreError::Engine(Error::NoRows))));
        assert_eq!(q().optional().unwrap(), None);
    }

    #[test]
    fn a_wrong_type_names_its_column() {
        let c = conn();
        let err = c
            .conn()
            .query_row("SELECT 1, 'a'", [], |r| r.get::<i64>(1))
            .unwrap_err();
        assert!(err.to_string().contains("database error"), "{err}");
        let StoreError::Engine(Error::Type { idx, found, .. }) = err else {
            panic!("{err:?}")
        };
        assert_eq!((idx, found), (1, "TEXT"));
    }

    #[test]
    fn an_out_of_range_parameter_is_refused_not_wrapped() {
        let c = conn();
        let err = c.conn().execute("SELECT ?1", [u64::MAX]).unwrap_err();
        assert!(
            matches!(&err, StoreError::Engine(Error::Range(m)) if m.contains("18446744073709551615")),
            "{err:?}"
        );
    }

    #[test]
    fn query_map_stops_at_the_first_failing_row() {
        let c = conn();
        let rows: Vec<Result<i64>> = c
            .conn()
            .prepare("SELECT 1 UNION ALL SELECT 'x' UNION ALL SELECT 3")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect();
        assert_eq!(rows.len(), 2);
        assert!(rows[1].is_err());
    }

    #[test]
    fn a_consistent_read_does_not_see_a_commit_between_its_statements() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut writer = sqlite::Sqlite::open(&path, false).unwrap();
        writer
            .conn()
            .execute("CREATE TABLE t (a INTEGER)", [])
            .unwrap();
        let reader = sqlite::Sqlite::open(&path, true).unwrap();
        let count = |c: &dyn Conn| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<i64>(0));
        let (before, after) = reader
            .conn()
            .consistent(|c| {
                let before = count(c)?;
                let tx = writer.begin()?;
                tx.execute("INSERT INTO t VALUES (1)", [])?;
                tx.commit()?;
                Ok((before, count(c)?))
            })
            .unwrap();
        assert_eq!((before, after), (0, 0), "one snapshot for the whole read");
        assert_eq!(
            count(reader.conn()).unwrap(),
            1,
            "the next read sees the commit"
        );
        // Inside a write transaction the transaction is the snapshot.
        let tx = writer.begin().unwrap();
        tx.execute("INSERT INTO t VALUES (2)", []).unwrap();
        assert_eq!(tx.consistent(count).unwrap(), 2);
    }

    #[test]
    fn a_dropped_transaction_rolls_back() {
        let mut c = conn();
        c.conn().execute("CREATE TABLE t (a INTEGER)", []).unwrap();
        {
            let tx = c.begin().unwrap();
            tx.execute("INSERT INTO t VALUES (1)", []).unwrap();
        }
        let tx = c.begin().unwrap();
        tx.execute("INSERT INTO t VALUES (2)", []).unwrap();
        tx.commit().unwrap();
        let n: i64 = c
            .conn()
            .query_row("SELECT SUM(a) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }
}
