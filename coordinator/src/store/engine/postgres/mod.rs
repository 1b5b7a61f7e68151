//! The PostgreSQL engine: the blocking face of `tokio-postgres` (the
//! `postgres` crate), since the store is synchronous and runs on the
//! blocking pool like SQLite. TLS through rustls.
//!
//! Each `Postgres` is one connection with its own statement cache (the
//! statements are parsed once per connection, as SQLite's are). A broken
//! connection is noticed (keepalives, `tcp_user_timeout`, a statement
//! timeout) and opened again before the next statement outside a
//! transaction; inside one, the transaction fails, as it must.
//!
//! Writes are fenced: a write transaction of a coordinator serving on
//! PostgreSQL first takes a share lock on the leader row and checks that
//! its own term (leader epoch) still holds it on the database's clock
//! ([`lease`]). A deposed or paused leader therefore cannot commit: its
//! check fails, or the new leader's takeover waits for its one
//! transaction in flight and every later one fails.

pub mod lease;
mod migrations;
mod target;
mod values;

pub use lease::{Fence, Term};
pub use target::{Target, redact};

use super::{Columns, Conn, EachRow, Engine, Error, ToValue, Tx, Value};
use crate::store::{Result, StoreError};
use postgres::types::ToSql;
use postgres::{Client, Statement};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use values::{Col, Param};

/// A failed statement and the statement itself, so a log names it.
#[derive(Debug, thiserror::Error)]
#[error("{source}: in `{sql}`")]
struct Failed {
    sql: String,
    #[source]
    source: postgres::Error,
}

fn failed(sql: &str) -> impl FnOnce(postgres::Error) -> StoreError + '_ {
    move |source| {
        let sql: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        StoreError::Engine(Error::Driver(Box::new(Failed { sql, source })))
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::Engine(Error::Driver(Box::new(e)))
    }
}

/// What the server answers when a statement alone does not say a
/// parameter's type: the statement is prepared again with the types of
/// the values bound.
const UNTYPED: [postgres::error::SqlState; 3] = [
    postgres::error::SqlState::INDETERMINATE_DATATYPE,
    postgres::error::SqlState::AMBIGUOUS_PARAMETER,
    postgres::error::SqlState::AMBIGUOUS_FUNCTION,
];

/// One PostgreSQL connection.
pub struct Postgres {
    target: Arc<Target>,
    client: RefCell<Option<Client>>,
    cache: RefCell<HashMap<String, Statement>>,
    in_tx: Cell<bool>,
    /// The term writes are checked against (`None`: writes unfenced, for
    /// one-off commands).
    fence: Option<Arc<Fence>>,
}

impl Postgres {
    /// Connect; `migrate` brings the schema to the latest version first
    /// (several coordinators may race: the ladder takes a lock).
    pub fn open(target: Arc<Target>, fence: Option<Arc<Fence>>, migrate: bool) -> Result<Self> {
        let pg = Postgres {
            client: RefCell::new(Some(target.connect()?)),
            target,
            cache: RefCell::default(),
            in_tx: Cell::new(false),
            fence,
        };
        if migrate {
            pg.with_client(migrations::migrate)?;
        }
        Ok(pg)
    }

    /// Run the migration ladder again (a no-op at the latest version).
    pub fn migrate(&mut self) -> Result<i64> {
        self.with_client(migrations::migrate)
    }

    /// `f` on the live connection, opened again first if it broke (never
    /// inside a transaction: that one is lost with its connection).
    fn with_client<R>(&self, f: impl FnOnce(&mut Client) -> Result<R>) -> Result<R> {
        let mut slot = self.client.borrow_mut();
        let broken = slot.as_ref().is_none_or(Client::is_closed);
        if broken {
            if self.in_tx.get() {
                return Err(StoreError::Engine(Error::Driver(
                    "the connection to PostgreSQL broke inside a transaction".into(),
                )));
            }
            self.cache.borrow_mut().clear();
            *slot = None;
            *slot = Some(self.target.connect()?);
        }
        let client = slot.as_mut().ok_or_else(|| {
            StoreError::Engine(Error::Driver("no connection to PostgreSQL".into()))
        })?;
        f(client)
    }

    /// `sql` prepared on this connection (once). A parameter whose type
    /// the server cannot infer from the statement alone (`?1 IS NULL OR
    /// entity = ?1`) is given the type of the value bound to it.
    fn statement(&self, client: &mut Client, sql: &str, params: &[Param<'_>]) -> Result<Statement> {
        if let Some(s) = self.cache.borrow().get(sql) {
            return Ok(s.clone());
        }
        let text = super::dialect::numbered_placeholders(sql);
        // Inside a transaction a refused statement aborts it: a savepoint
        // keeps the first try from costing the transaction.
        let in_tx = self.in_tx.get();
        if in_tx {
            client.batch_execute("SAVEPOINT spot_prepare")?;
        }
        let prepared = match client.prepare(&text) {
            Err(e) if e.code().is_some_and(|c| UNTYPED.contains(c)) => {
                if in_tx {
                    client.batch_execute("ROLLBACK TO SAVEPOINT spot_prepare")?;
                }
                let types: Vec<_> = params.iter().map(Param::natural_type).collect();
                client.prepare_typed(&text, &types)
            }
            other => other,
        }
        .map_err(failed(sql))?;
        if in_tx {
            client.batch_execute("RELEASE SAVEPOINT spot_prepare")?;
        }
        self.cache
            .borrow_mut()
            .insert(sql.to_owned(), prepared.clone());
        Ok(prepared)
    }

    fn batch(&self, sql: &str) -> Result<()> {
        self.retried(|c| Ok(c.batch_execute(sql)?))
    }

    /// The end of a transaction: never tried again on another connection
    /// (a COMMIT there would answer "done" for work that was lost).
    fn end(&self, sql: &str) -> Result<()> {
        self.with_client(|c| Ok(c.batch_execute(sql)?))
    }

    fn column_names(&self, table: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.query_values(
            "SELECT column_name FROM information_schema.columns
             WHERE table_schema = current_schema() AND CAST(table_name AS TEXT) = ?1
             ORDER BY ordinal_position",
            &[&table],
            &mut |r| {
                out.push(r.get(0)?);
                Ok(true)
            },
        )?;
        Ok(out)
    }

    /// After rows were copied in with their ids: each identity column's
    /// sequence continues after the largest id.
    fn reset_identities(&self) -> Result<()> {
        let mut tables: Vec<(String, String)> = Vec::new();
        self.query_values(
            "SELECT table_name, column_name FROM information_schema.columns
             WHERE table_schema = current_schema() AND is_identity = 'YES'",
            &[],
            &mut |r| {
                tables.push((r.get(0)?, r.get(1)?));
                Ok(true)
            },
        )?;
        for (t, c) in tables {
            self.batch(&format!(
                "SELECT setval(pg_get_serial_sequence('{t}', '{c}'),
                               COALESCE((SELECT MAX({c}) FROM {t}), 0) + 1, false)"
            ))?;
        }
        Ok(())
    }
}

impl Columns for postgres::Row {
    fn column(&self, idx: usize) -> Result<Value<'_>> {
        let c: Col<'_> = self.try_get(idx)?;
        Ok(c.0)
    }
}

fn bind<'a>(args: &'a [&'a dyn ToValue]) -> Result<Vec<Param<'a>>> {
    args.iter().map(|a| a.to_value().map(Param)).collect()
}

impl Postgres {
    /// `f` once; again on a new connection when the first one turned out
    /// closed (the server restarted, a failover, a cut) and no transaction
    /// was open, so a read after a database restart answers instead of
    /// failing once per pooled connection.
    fn retried<R>(&self, mut f: impl FnMut(&mut Client) -> Result<R>) -> Result<R> {
        match self.with_client(&mut f) {
            Err(e) if !self.in_tx.get() && closed(&e) => {
                tracing::info!("the connection to PostgreSQL was closed; reconnecting");
                if let Some(c) = self.client.borrow_mut().take() {
                    drop(c);
                }
                self.with_client(f)
            }
            other => other,
        }
    }
}

/// The statement failed because its connection is gone.
fn closed(e: &StoreError) -> bool {
    let StoreError::Engine(Error::Driver(d)) = e else {
        return false;
    };
    let pg = d
        .downcast_ref::<Failed>()
        .map(|f| &f.source)
        .or_else(|| d.downcast_ref::<postgres::Error>());
    pg.is_some_and(|e| e.is_closed() || e.code().is_some_and(|c| c.code().starts_with("57P")))
}

impl Conn for Postgres {
    fn execute_values(&self, sql: &str, args: &[&dyn ToValue]) -> Result<usize> {
        let params = bind(args)?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        self.retried(|c| {
            let stmt = self.statement(c, sql, &params)?;
            let n = c.execute(&stmt, &refs).map_err(failed(sql))?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn query_values(&self, sql: &str, args: &[&dyn ToValue], each: &mut EachRow<'_>) -> Result<()> {
        let params = bind(args)?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        // Collected before they are handed out, so a row's handler may
        // run statements of its own on this connection.
        let rows = self.retried(|c| {
            let stmt = self.statement(c, sql, &params)?;
            c.query(&stmt, &refs).map_err(failed(sql))
        })?;
        for row in &rows {
            if !each(&super::Row::new(row))? {
                break;
            }
        }
        Ok(())
    }

    fn schema_version(&self) -> Result<i64> {
        self.with_client(migrations::version)
    }

    fn integrity_check(&self) -> Result<String> {
        // PostgreSQL checks its pages itself (checksums, WAL replay);
        // what is left to ask is whether it answers.
        self.with_client(|c| {
            c.batch_execute("SELECT 1")?;
            Ok("ok".to_owned())
        })
    }

    fn used_bytes(&self) -> Result<i64> {
        self.with_client(|c| {
            let row = c.query_one("SELECT pg_database_size(current_database())", &[])?;
            Ok(row.try_get::<_, i64>(0)?)
        })
    }

    fn consistent_read(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        if self.in_tx.get() {
            return f();
        }
        self.batch("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
        self.in_tx.set(true);
        let out = f();
        let end = self.end(if out.is_ok() { "COMMIT" } else { "ROLLBACK" });
        self.in_tx.set(false);
        out?;
        end
    }
}

impl Engine for Postgres {
    fn conn(&self) -> &dyn Conn {
        self
    }

    fn term_epoch(&self) -> i64 {
        self.fence
            .as_ref()
            .and_then(|f| f.get())
            .map_or(0, |t| t.epoch)
    }

    fn tables(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.query_values(
            "SELECT table_name FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
               AND table_name NOT IN ('schema_version', 'coordinator_leader')
             ORDER BY table_name",
            &[],
            &mut |r| {
                out.push(r.get(0)?);
                Ok(true)
            },
        )?;
        Ok(out)
    }

    fn columns(&self, table: &str) -> Result<Vec<String>> {
        self.column_names(table)
    }

    fn defer_constraints_sql(&self) -> &'static str {
        "SET CONSTRAINTS ALL DEFERRED"
    }

    fn after_copy(&self) -> Result<()> {
        self.reset_identities()
    }

    fn begin(&mut self) -> Result<Box<dyn Tx + '_>> {
        self.batch("BEGIN")?;
        self.in_tx.set(true);
        let tx = PgTx {
            pg: self,
            done: false,
        };
        if let Some(fence) = &tx.pg.fence {
            lease::check(&tx, fence)?;
        }
        Ok(Box::new(tx))
    }
}

struct PgTx<'a> {
    pg: &'a Postgres,
    done: bool,
}

impl Tx for PgTx<'_> {
    fn commit(mut self: Box<Self>) -> Result<()> {
        self.done = true;
        let done = self.pg.end("COMMIT");
        self.pg.in_tx.set(false);
        done
    }
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        if !self.done {
            let rolled = self.pg.end("ROLLBACK");
            self.pg.in_tx.set(false);
            if let Err(e) = rolled {
                tracing::debug!(error = %e, "rolling back a dropped transaction");
            }
        }
    }
}

impl Conn for PgTx<'_> {
    fn execute_values(&self, sql: &str, args: &[&dyn ToValue]) -> Result<usize> {
        self.pg.execute_values(sql, args)
    }
    fn query_values(&self, sql: &str, args: &[&dyn ToValue], each: &mut EachRow<'_>) -> Result<()> {
        self.pg.query_values(sql, args, each)
    }
    fn schema_version(&self) -> Result<i64> {
        self.pg.schema_version()
    }
    fn integrity_check(&self) -> Result<String> {
        self.pg.integrity_check()
    }
    fn used_bytes(&self) -> Result<i64> {
        self.pg.used_bytes()
    }
    fn consistent_read(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        f()
    }
}
