//! The roles generation: what a heartbeat's answer (`RoleOf`) reads
//! besides the agent's own row is the group's row and the instance's role
//! and role epoch. A cache of answers (`state::RoleCache`) keeps each with
//! the [`Stamp`] taken before it was read, and uses it while the stamp is
//! unchanged, so a heartbeat skips the store while nothing its answer
//! depends on changed.
//!
//! What a transaction wrote is recognised from its statements' text (see
//! [`touched`]): a write of an instance's role or role epoch that names
//! the instance (`WHERE instance_id = ?N`) moves only that instance's
//! version, so a fleet's first-beat storm (each instance LAUNCHING ->
//! REPLICA) does not send every other agent's heartbeat to the store; any
//! other write of `groups`, a `DELETE` from `instances` or `agents`, or a
//! role write whose instance cannot be told moves the global generation
//! and every cached answer is read again. A write that names them without
//! changing them only costs a re-read. A new leader term starts with an
//! empty cache, so writes of another coordinator (a previous leader) are
//! never hidden behind it. The versions move after the commit.

use super::Result;
use super::engine::{Conn, EachRow, ToValue, Tx, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What one statement changes of the heartbeat answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Touch {
    Nothing,
    /// The role or role epoch of this instance.
    Instance(String),
    /// Anything: every answer is stale.
    All,
}

/// What a statement's text says it may change, whatever its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Nothing,
    All,
    /// A role write of the instance named by this parameter (0-based);
    /// `None`: not named by one (counts as `All`).
    Instance(Option<usize>),
}

/// Distinct statement texts whose shape is remembered: the store's are a
/// few hundred; a text past this many is classified afresh each time.
const SHAPES_MAX: usize = 4096;

static SHAPES: std::sync::LazyLock<Mutex<HashMap<String, Shape>>> =
    std::sync::LazyLock::new(Mutex::default);

/// What `sql` (run with `args`) may change of a heartbeat's answer. The
/// target of a write is the table after `UPDATE`, `INSERT ... INTO` or
/// `DELETE FROM`; tables named only in a subquery are read, not written.
/// A write whose target cannot be found counts as `All`, to be safe. The
/// text is read once (a write transaction runs the same statements again
/// and again: the monitor's heartbeat flush, one per agent).
pub fn touched(sql: &str, args: &[&dyn ToValue]) -> Touch {
    let known = SHAPES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(sql)
        .copied();
    let shape = known.unwrap_or_else(|| {
        let s = shape(sql);
        let mut m = SHAPES.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() < SHAPES_MAX {
            m.insert(sql.to_owned(), s);
        }
        s
    });
    match shape {
        Shape::Nothing => Touch::Nothing,
        Shape::All | Shape::Instance(None) => Touch::All,
        Shape::Instance(Some(n)) => match args.get(n).and_then(|a| a.to_value().ok()) {
            Some(Value::Text(s)) => Touch::Instance(s.to_owned()),
            _ => Touch::All,
        },
    }
}

fn shape(sql: &str) -> Shape {
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
    let words: Vec<String> = code
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '?'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let mut it = words.iter().map(String::as_str);
    let head = it.next().unwrap_or_default();
    let target = match head {
        "update" => it.find(|w| !matches!(*w, "or" | "ignore" | "replace")),
        "insert" => it.find(|w| *w == "into").and_then(|_| it.next()),
        "delete" => it.find(|w| *w == "from").and_then(|_| it.next()),
        _ => return Shape::Nothing,
    };
    match (head, target) {
        (_, Some("groups") | None) | ("delete", Some("instances" | "agents")) => Shape::All,
        // A new instance has no agent answered for it yet; an agent row
        // changes nothing an answer reads but its existence.
        ("insert", Some("instances")) | (_, Some("agents")) => Shape::Nothing,
        ("update", Some("instances")) => {
            if !words.iter().any(|w| w == "role" || w == "role_epoch") {
                return Shape::Nothing;
            }
            Shape::Instance(instance_param(&words))
        }
        _ => Shape::Nothing,
    }
}

/// The parameter an UPDATE's `WHERE instance_id = ?N` names (0-based).
fn instance_param(words: &[String]) -> Option<usize> {
    let at = words.iter().position(|w| w == "where")?;
    let rest = &words[at..];
    let i = rest.iter().position(|w| w == "instance_id")?;
    let n: usize = rest.get(i + 1)?.strip_prefix('?')?.parse().ok()?;
    n.checked_sub(1)
}

/// A transaction's record of what it touched.
#[derive(Debug, Default)]
pub struct Touched {
    pub all: bool,
    pub instances: Vec<String>,
}

/// A transaction that notes what of the heartbeat answers it wrote.
pub struct Marking<'a> {
    pub inner: Box<dyn Tx + 'a>,
    pub touched: Arc<Mutex<Touched>>,
}

impl Marking<'_> {
    fn note(&self, sql: &str, args: &[&dyn ToValue]) {
        let t = touched(sql, args);
        if t == Touch::Nothing {
            return;
        }
        let mut m = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        match t {
            Touch::All => m.all = true,
            Touch::Instance(id) => m.instances.push(id),
            Touch::Nothing => {}
        }
    }
}

impl Conn for Marking<'_> {
    fn execute_values(&self, sql: &str, args: &[&dyn ToValue]) -> Result<usize> {
        self.note(sql, args);
        self.inner.execute_values(sql, args)
    }
    fn query_values(&self, sql: &str, args: &[&dyn ToValue], each: &mut EachRow<'_>) -> Result<()> {
        self.note(sql, args);
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

/// The versions, shared by the writer connection and the heartbeat path.
#[derive(Debug, Clone, Default)]
pub struct Generation(Arc<Versions>);

#[derive(Debug, Default)]
struct Versions {
    global: AtomicU64,
    /// The last global count at which each instance's role changed.
    instances: Mutex<HashMap<String, u64>>,
    counter: AtomicU64,
}

/// What an answer about one instance was read at: equal stamps, equal
/// answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    global: u64,
    instance: u64,
}

impl Generation {
    /// Take before reading an answer about `instance`.
    pub fn stamp(&self, instance: &str) -> Stamp {
        let global = self.0.global.load(Ordering::Acquire);
        let instance = self
            .0
            .instances
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(instance)
            .copied()
            .unwrap_or(0);
        Stamp { global, instance }
    }

    /// After a commit: what it touched is stale. A global move also
    /// forgets every instance's version (every earlier stamp carries the
    /// old global count), which keeps the map to the instances touched
    /// since the last one (retention's prune is one).
    pub fn moved(&self, t: &Touched) {
        if !t.all && t.instances.is_empty() {
            return;
        }
        let mut m = self.0.instances.lock().unwrap_or_else(|p| p.into_inner());
        if t.all {
            self.0.global.fetch_add(1, Ordering::AcqRel);
            m.clear();
        }
        for id in &t.instances {
            let v = self.0.counter.fetch_add(1, Ordering::AcqRel) + 1;
            m.insert(id.clone(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Generation, Touch, Touched, touched};

    #[test]
    fn what_a_statement_touches_is_told_from_its_target_and_its_instance() {
        let all = |sql: &str| touched(sql, &[]);
        for sql in [
            "UPDATE groups SET epoch = ?1",
            "INSERT OR IGNORE INTO groups (name) VALUES (?1)",
            "delete from instances where role = 'terminated'",
            "DELETE FROM agents WHERE agent_id = ?1",
            // A role write whose instance is not named by a parameter.
            "UPDATE instances SET role = 'failed' WHERE group_name = ?1",
        ] {
            assert_eq!(all(sql), Touch::All, "{sql}");
        }
        for sql in [
            "SELECT * FROM groups",
            "UPDATE agents SET highest_epoch = (SELECT g.epoch FROM groups g) WHERE agent_id = ?1",
            "INSERT OR IGNORE INTO events (instance_id) SELECT instance_id FROM instances",
            "INSERT INTO audit (entity) VALUES ('instances')",
            "UPDATE instances SET ec2_state = ?1 WHERE instance_id = ?2",
            "INSERT INTO instances (instance_id, role) VALUES (?1, 'launching')",
        ] {
            assert_eq!(all(sql), Touch::Nothing, "{sql}");
        }
        let (role, id, version) = ("replica", "i-7", 3i64);
        let sql = "UPDATE instances SET role = ?1, updated_at_ms = ?2 WHERE instance_id = ?3 AND version = ?4";
        assert_eq!(
            touched(sql, &[&role, &5i64, &id, &version]),
            Touch::Instance("i-7".into())
        );
        let sql = "UPDATE instances SET role_epoch = ?1 WHERE instance_id = ?2";
        assert_eq!(touched(sql, &[&4i64, &id]), Touch::Instance("i-7".into()));
    }

    #[test]
    fn an_instance_write_stales_that_instance_and_a_global_one_everything() {
        let g = Generation::default();
        let (a, b) = (g.stamp("i-a"), g.stamp("i-b"));
        g.moved(&Touched {
            all: false,
            instances: vec!["i-a".into()],
        });
        assert_ne!(g.stamp("i-a"), a);
        assert_eq!(g.stamp("i-b"), b);
        let b = g.stamp("i-b");
        g.moved(&Touched {
            all: true,
            instances: vec![],
        });
        assert_ne!(g.stamp("i-b"), b);
    }
}
