//! `spot-coordinator store copy`: move a fleet's whole store from one
//! engine to another (SQLite to PostgreSQL when a fleet outgrows one
//! machine, or back), row for row, ids kept.
//!
//! Both stores are brought to the latest schema first, so every table has
//! the same columns on both sides. The target must be empty (a copy never
//! merges two fleets). Every row is written in one transaction on the
//! target, so a copy that fails half way leaves the target empty; each
//! table's row count is compared before the commit. Copy with the
//! coordinators stopped: rows written to the source during the copy are
//! not in it.

use super::engine::{Conn, ConnExt, ToValue, Value};
use super::{Result, Store, StoreError};

/// Every table of the store, in an order that inserts referenced rows
/// first (foreign keys are checked at commit anyway). A test checks that
/// it names every table both engines create.
pub const TABLES: &[&str] = &[
    "groups",
    "agents",
    "instances",
    "commands",
    "events",
    "notices",
    "switches",
    "audit",
    "idempotency",
    "price_staging",
    "price_hourly",
    "consolidation_runs",
    "counters",
    "decisions",
    "tokens",
    "enroll_tokens",
    "group_volumes",
];

/// Rows read per statement: a large table is never all in memory.
const CHUNK: i64 = 5_000;

/// One table's copy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Copied {
    pub table: String,
    pub rows: u64,
}

/// A column value read from the source, owned until it is written.
enum Owned {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl ToValue for Owned {
    fn to_value(&self) -> Result<Value<'_>> {
        Ok(match self {
            Owned::Null => Value::Null,
            Owned::Integer(i) => Value::Integer(*i),
            Owned::Real(f) => Value::Real(*f),
            Owned::Text(s) => Value::Text(s),
            Owned::Blob(b) => Value::Blob(b),
        })
    }
}

fn owned(v: Value<'_>) -> Owned {
    match v {
        Value::Null => Owned::Null,
        Value::Integer(i) => Owned::Integer(i),
        Value::Real(f) => Owned::Real(f),
        Value::Text(s) => Owned::Text(s.to_owned()),
        Value::Blob(b) => Owned::Blob(b.to_vec()),
    }
}

fn count(c: &dyn Conn, table: &str) -> Result<u64> {
    let n: i64 = c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

impl Store {
    /// Copy every row of `from` into this (empty) store; see the module
    /// docs.
    pub fn copy_from(&mut self, from: &Store) -> Result<Vec<Copied>> {
        let src = from.engine.conn();
        let (v_src, v_dst) = (src.schema_version()?, self.engine.conn().schema_version()?);
        if v_src != v_dst {
            return Err(StoreError::Invalid(format!(
                "the source's schema is at version {v_src} and the target's at {v_dst}: \
                 run `spot-coordinator migrate` on the older one first"
            )));
        }
        for table in TABLES {
            if count(self.engine.conn(), table)? > 0 {
                return Err(StoreError::Invalid(format!(
                    "the target is not empty (table {table} has rows): a copy never merges two stores"
                )));
            }
        }
        let mut report = Vec::new();
        let columns: Vec<(String, Vec<String>)> = TABLES
            .iter()
            .map(|t| Ok(((*t).to_owned(), from.engine.columns(t)?)))
            .collect::<Result<_>>()?;
        let defer = self.engine.defer_constraints_sql();
        {
            let tx = self.engine.begin()?;
            tx.execute_values(defer, &[])?;
            for (table, cols) in &columns {
                let list = cols.join(", ");
                let marks = (1..=cols.len())
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let insert = format!("INSERT INTO {table} ({list}) VALUES ({marks})");
                let select = format!("SELECT {list} FROM {table} ORDER BY 1 LIMIT ?1 OFFSET ?2");
                let mut offset = 0i64;
                let mut rows = 0u64;
                loop {
                    let mut chunk: Vec<Vec<Owned>> = Vec::new();
                    src.query_values(&select, &[&CHUNK, &offset], &mut |r| {
                        let row = (0..cols.len())
                            .map(|i| r.value(i).map(owned))
                            .collect::<Result<_>>()?;
                        chunk.push(row);
                        Ok(true)
                    })?;
                    for row in &chunk {
                        let args: Vec<&dyn ToValue> =
                            row.iter().map(|v| v as &dyn ToValue).collect();
                        tx.execute_values(&insert, &args)?;
                    }
                    let n = chunk.len();
                    rows += n as u64;
                    offset += CHUNK;
                    if i64::try_from(n).unwrap_or(0) < CHUNK {
                        break;
                    }
                }
                let (have, want) = (count(&*tx, table)?, count(src, table)?);
                if have != want {
                    return Err(StoreError::Invalid(format!(
                        "table {table}: {have} rows copied, the source has {want} (was it written to during the copy?)"
                    )));
                }
                tracing::info!(%table, rows, "copied");
                report.push(Copied {
                    table: table.clone(),
                    rows,
                });
            }
            tx.commit()?;
        }
        self.engine.after_copy()?;
        Ok(report)
    }

    /// The store's tables, as its engine lists them.
    pub fn tables(&self) -> Result<Vec<String>> {
        self.engine.tables()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::postgres::{Postgres, Target};
    use crate::store::engine::sqlite::Sqlite;
    use crate::store::{Ctx, Read};

    fn postgres() -> Store {
        let url = spot_runtime::pgtest::shared()
            .and_then(|s| s.fresh_database())
            .unwrap();
        Store::new(
            Postgres::open(
                std::sync::Arc::new(Target::parse(&url).unwrap()),
                None,
                true,
            )
            .unwrap(),
        )
    }

    #[test]
    fn the_table_list_names_every_table_of_both_engines() {
        let dir = tempfile::tempdir().unwrap();
        let lite = Store::new(Sqlite::open(&dir.path().join("t.db"), false).unwrap());
        let mut want: Vec<String> = TABLES.iter().map(|t| (*t).to_owned()).collect();
        want.sort();
        assert_eq!(lite.tables().unwrap(), want);
        assert_eq!(postgres().tables().unwrap(), want);
    }

    #[test]
    fn a_store_copied_to_postgres_and_back_is_the_same_and_a_second_copy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut lite = Store::new(Sqlite::open(&dir.path().join("a.db"), false).unwrap());
        let cfg: spot_common::GroupConfig = serde_json::from_value(serde_json::json!({"pools": [
                {"instance_type": "m5.large", "availability_zone": "us-east-1a"}]}))
        .unwrap();
        lite.transact(Ctx::system(1), |tx| {
            tx.create_group("g", &cfg)?;
            tx.create_group("h", &cfg)
        })
        .unwrap();
        let audit_before = lite.last_audit_id().unwrap();
        assert!(audit_before >= 2);

        let mut pg = postgres();
        let report = pg.copy_from(&lite).unwrap();
        assert_eq!(report.iter().find(|c| c.table == "groups").unwrap().rows, 2);
        assert_eq!(pg.group_names().unwrap(), lite.group_names().unwrap());
        assert_eq!(pg.last_audit_id().unwrap(), audit_before);
        // Ids continue after the copied ones.
        pg.transact(Ctx::system(2), |tx| tx.create_group("k", &cfg))
            .unwrap();
        assert!(pg.last_audit_id().unwrap() > audit_before);

        // Back to an empty SQLite file: the same rows.
        let mut back = Store::new(Sqlite::open(&dir.path().join("b.db"), false).unwrap());
        back.copy_from(&pg).unwrap();
        assert_eq!(back.group_names().unwrap(), pg.group_names().unwrap());
        assert_eq!(back.group("g").unwrap(), pg.group("g").unwrap());

        // Never into a store that holds a fleet.
        let err = pg.copy_from(&lite).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
    }
}
