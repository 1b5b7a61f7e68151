//! The embedded engine: SQLite through rusqlite, in WAL mode with
//! `synchronous=FULL` (a committed role change survives a power cut).
//! Statements go through rusqlite's statement cache, so a heartbeat's
//! statements are parsed once per connection.

mod migrations;

pub use migrations::LATEST;

use super::{Columns, Conn, EachRow, Engine, Error, ToValue, Tx, Value};
use crate::store::Result;
use rusqlite::types::{ToSqlOutput, ValueRef as SqlRef};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use std::path::Path;

/// Statements each connection keeps prepared: more than the store has, so
/// none is ever parsed twice.
const STATEMENT_CACHE: usize = 256;

impl From<rusqlite::Error> for crate::store::StoreError {
    fn from(e: rusqlite::Error) -> Self {
        crate::store::StoreError::Engine(Error::Driver(Box::new(e)))
    }
}

/// One SQLite connection.
pub struct Sqlite {
    conn: Connection,
}

impl Sqlite {
    /// Open `path` with the pragmas every connection needs; the writer
    /// (`read_only == false`) creates the file and migrates it to
    /// [`LATEST`].
    pub fn open(path: &Path, read_only: bool) -> Result<Sqlite> {
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let conn = Connection::open_with_flags(path, flags)?;
        Self::configure(conn, read_only)
    }

    /// A private database in memory, migrated (tests).
    #[cfg(test)]
    pub fn in_memory() -> Result<Sqlite> {
        Self::configure(Connection::open_in_memory()?, false)
    }

    fn configure(mut conn: Connection, read_only: bool) -> Result<Sqlite> {
        // A writer holding the lock for a few ms must not fail a reader.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.pragma_update(None, "foreign_keys", "ON")?;
        if !read_only {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            migrations::migrate(&mut conn)?;
        }
        Ok(Sqlite { conn })
    }

    /// Run the migration ladder again (it is a no-op at [`LATEST`]).
    pub fn migrate(&mut self) -> Result<i64> {
        Ok(migrations::migrate(&mut self.conn)?)
    }
}

impl Engine for Sqlite {
    fn conn(&self) -> &dyn Conn {
        &self.conn
    }

    fn begin(&mut self) -> Result<Box<dyn Tx + '_>> {
        Ok(Box::new(SqliteTx(self.conn.transaction_with_behavior(
            TransactionBehavior::Immediate,
        )?)))
    }

    fn tables(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?;
        let names = stmt.query_map([], |r| r.get(0))?;
        Ok(names.collect::<rusqlite::Result<_>>()?)
    }

    fn columns(&self, table: &str) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?;
        let names = stmt.query_map([table], |r| r.get(0))?;
        Ok(names.collect::<rusqlite::Result<_>>()?)
    }

    fn defer_constraints_sql(&self) -> &'static str {
        "PRAGMA defer_foreign_keys = ON"
    }

    fn after_copy(&self) -> Result<()> {
        // INTEGER PRIMARY KEY ids continue after the largest by themselves.
        Ok(())
    }
}

struct SqliteTx<'a>(rusqlite::Transaction<'a>);

impl Tx for SqliteTx<'_> {
    fn commit(self: Box<Self>) -> Result<()> {
        Ok(self.0.commit()?)
    }
}

impl Conn for SqliteTx<'_> {
    fn execute_values(&self, sql: &str, args: &[&dyn ToValue]) -> Result<usize> {
        (*self.0).execute_values(sql, args)
    }
    fn query_values(&self, sql: &str, args: &[&dyn ToValue], each: &mut EachRow<'_>) -> Result<()> {
        (*self.0).query_values(sql, args, each)
    }
    fn schema_version(&self) -> Result<i64> {
        (*self.0).schema_version()
    }
    fn integrity_check(&self) -> Result<String> {
        (*self.0).integrity_check()
    }
    fn used_bytes(&self) -> Result<i64> {
        (*self.0).used_bytes()
    }
    fn consistent_read(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        (*self.0).consistent_read(f)
    }
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => SqlRef::Null,
            Value::Integer(i) => SqlRef::Integer(i),
            Value::Real(f) => SqlRef::Real(f),
            Value::Text(s) => SqlRef::Text(s.as_bytes()),
            Value::Blob(b) => SqlRef::Blob(b),
        }))
    }
}

fn bind<'a>(args: &'a [&'a dyn ToValue]) -> Result<Vec<Value<'a>>> {
    args.iter().map(|a| a.to_value()).collect()
}

impl Columns for rusqlite::Row<'_> {
    fn column(&self, idx: usize) -> Result<Value<'_>> {
        Ok(match self.get_ref(idx)? {
            SqlRef::Null => Value::Null,
            SqlRef::Integer(i) => Value::Integer(i),
            SqlRef::Real(f) => Value::Real(f),
            SqlRef::Text(t) => Value::Text(std::str::from_utf8(t).map_err(|e| Error::Parse {
                idx,
                source: Box::new(e),
            })?),
            SqlRef::Blob(b) => Value::Blob(b),
        })
    }
}

impl Conn for Connection {
    fn execute_values(&self, sql: &str, args: &[&dyn ToValue]) -> Result<usize> {
        let values = bind(args)?;
        let mut stmt = self.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(values.iter()))?)
    }

    fn query_values(&self, sql: &str, args: &[&dyn ToValue], each: &mut EachRow<'_>) -> Result<()> {
        let values = bind(args)?;
        let mut stmt = self.prepare_cached(sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
        while let Some(row) = rows.next()? {
            if !each(&super::Row::new(row))? {
                break;
            }
        }
        Ok(())
    }

    fn schema_version(&self) -> Result<i64> {
        Ok(schema_version(self)?)
    }

    fn integrity_check(&self) -> Result<String> {
        Ok(self.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    fn consistent_read(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        if !self.is_autocommit() {
            return f();
        }
        // A deferred transaction on a WAL database: its first read fixes
        // the snapshot every later read of it sees.
        self.execute_batch("BEGIN DEFERRED")?;
        let out = f();
        let end = self.execute_batch(if out.is_ok() { "COMMIT" } else { "ROLLBACK" });
        out?;
        Ok(end?)
    }

    fn used_bytes(&self) -> Result<i64> {
        Ok(self.query_row(
            "SELECT (page_count - freelist_count) * page_size
             FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )?)
    }
}

/// The schema version the database is at.
fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Record the schema version, inside the migration's transaction.
fn set_schema_version(conn: &Connection, version: i64) -> rusqlite::Result<()> {
    conn.pragma_update(None, "user_version", version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_version_round_trips() {
        let c = Connection::open_in_memory().unwrap();
        assert_eq!(schema_version(&c).unwrap(), 0);
        set_schema_version(&c, 7).unwrap();
        assert_eq!(schema_version(&c).unwrap(), 7);
    }

    #[test]
    fn a_new_database_is_migrated_to_the_latest_version() {
        let s = Sqlite::in_memory().unwrap();
        assert_eq!(s.conn().schema_version().unwrap(), LATEST);
        assert_eq!(s.conn().integrity_check().unwrap(), "ok");
    }
}
