//! The roles generation: a counter that goes up after every committed
//! transaction that wrote the `groups` or `instances` table, the only
//! tables a heartbeat's answer (`RoleOf`) reads besides the agent's own
//! row. A cache of answers keyed by it (`state::RoleCache`) lets a
//! heartbeat skip the store while nothing a role depends on changed.
//!
//! Statements are recognised by their text: a write (`INSERT`, `UPDATE`,
//! `DELETE`) that names either table marks the transaction, and so does a
//! `DELETE` naming `agents` (a reset or pruned agent has no answer). A
//! write that names them without changing them only costs a re-read. A
//! new leader term starts with an empty cache, so writes of another
//! coordinator (a previous leader) are never hidden behind it.

use super::Result;
use super::engine::{Conn, EachRow, ToValue, Tx};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Whether `sql` may change what a heartbeat's answer reads: a write whose
/// target (the table after `UPDATE`, `INSERT ... INTO` or `DELETE FROM`)
/// is `groups` or `instances`, or a `DELETE` from `agents`. Tables named
/// only in a subquery are read, not written. A write whose target cannot
/// be found counts, to be safe.
pub fn touches_roles(sql: &str) -> bool {
    // Words outside quoted literals.
    let mut quoted = false;
    let code: String = sql
        .chars()
        .map(|c| {
            if c == '\'' {
                quoted = !quoted;
            }
            if quoted { ' ' } else { c }
        })
        .collect();
    let mut words = code
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase);
    let head = words.next().unwrap_or_default();
    let target = match head.as_str() {
        "update" => words.find(|w| w != "or" && w != "ignore" && w != "replace"),
        "insert" => words.find(|w| w == "into").and_then(|_| words.next()),
        "delete" => words.find(|w| w == "from").and_then(|_| words.next()),
        _ => return false,
    };
    match target.as_deref() {
        Some("groups" | "instances") | None => true,
        Some("agents") => head == "delete",
        Some(_) => false,
    }
}

/// A transaction that notes whether it wrote a table roles depend on.
pub struct Marking<'a> {
    pub inner: Box<dyn Tx + 'a>,
    pub dirty: Arc<AtomicBool>,
}

impl Marking<'_> {
    fn note(&self, sql: &str) {
        if touches_roles(sql) {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }
}

impl Conn for Marking<'_> {
    fn execute_values(&self, sql: &str, args: &[&dyn ToValue]) -> Result<usize> {
        self.note(sql);
        self.inner.execute_values(sql, args)
    }
    fn query_values(&self, sql: &str, args: &[&dyn ToValue], each: &mut EachRow<'_>) -> Result<()> {
        self.note(sql);
        self.inner.query_values(sql, args, each)
    }
    fn schema_version(&self) -> Result<i64> {
        self.inner.schema_version()
    }
    fn integrity_check(&self) -> Result<String> {
        self.inner.integrity_check()
    }
    fn used_bytes(&self) -> Result<i64> {
        self.inner.used_bytes()
    }
    fn consistent_read(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        self.inner.consistent_read(f)
    }
}

impl Tx for Marking<'_> {
    fn commit(self: Box<Self>) -> Result<()> {
        self.inner.commit()
    }
}

/// The counter, shared by the writer connection and its readers' users.
#[derive(Debug, Clone, Default)]
pub struct Generation(Arc<AtomicU64>);

impl Generation {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// After a commit that wrote roles: answers read before are stale.
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::touches_roles;

    #[test]
    fn writes_of_groups_and_instances_are_recognised_and_nothing_else() {
        for yes in [
            "UPDATE groups SET epoch = ?1",
            "  INSERT INTO instances (instance_id) VALUES (?1)",
            "delete from instances where role = 'terminated'",
            "UPDATE instances SET role = ?1 WHERE instance_id = ?2",
            "DELETE FROM agents WHERE agent_id = ?1",
            "INSERT OR IGNORE INTO groups (name) VALUES (?1)",
        ] {
            assert!(touches_roles(yes), "{yes}");
        }
        for no in [
            "SELECT * FROM groups",
            "UPDATE agents SET last_heartbeat_ms = ?1",
            "INSERT INTO group_volumes (group_name) VALUES (?1)",
            "INSERT INTO audit (entity) VALUES ('instances')",
            "UPDATE agents SET highest_epoch = (SELECT g.epoch FROM groups g) WHERE agent_id = ?1",
            "INSERT OR IGNORE INTO events (instance_id) SELECT instance_id FROM instances",
        ] {
            assert!(!touches_roles(no), "{no}");
        }
    }
}
