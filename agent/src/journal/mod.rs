//! The agent's journal: the only module that writes SQL.
//!
//! SQLite in WAL mode with `synchronous=FULL`, one transaction per step:
//! * a command is journaled (`received`) before any side effect, and the
//!   group's highest epoch is raised in that same transaction, so a stale
//!   command is refused even across restarts;
//! * it goes `running` (attempt counted) before its side effect, and
//!   `done`/`failed` together with its result event in the outbox;
//! * notices are journaled once per distinct body, with their event;
//! * outbox rows are deleted only when the coordinator acknowledged them.
//!
//! On restart, a command found `received` or `running` is resumed; launches
//! reuse the `ClientToken` derived from the `request_id`, so a crash
//! between the EC2 call and the journal commit never launches twice.
//! Before every start (first run or resumed), a role-changing command's
//! epoch is checked against the highest accepted and its deadline against
//! the clock, in the transaction that marks it running.
//!
//! The agent's own state (identity, role, link) is one typed row,
//! [`LocalState`]; every read and write returns a `Result`.

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("journal JSON does not parse")]
    Json(#[from] serde_json::Error),
    #[error("journal task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("journal I/O error injected by the test fault {0}")]
    Injected(String),
}

pub type Result<T, E = JournalError> = std::result::Result<T, E>;

const STEPS: &[&str] = &[
    r#"
    CREATE TABLE identity (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;
    CREATE TABLE commands (
        request_id     TEXT PRIMARY KEY,
        group_name     TEXT NOT NULL,
        kind           TEXT NOT NULL,
        body           TEXT NOT NULL,
        epoch          INTEGER NOT NULL,
        state          TEXT NOT NULL CHECK (state IN
            ('received', 'running', 'done', 'failed', 'stale', 'expired')),
        attempts       INTEGER NOT NULL DEFAULT 0,
        result         TEXT,
        output         TEXT,
        received_at_ms INTEGER NOT NULL,
        updated_at_ms  INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE outbox (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        body          TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE notices (
        id              INTEGER PRIMARY KEY,
        kind            TEXT NOT NULL,
        raw             TEXT NOT NULL,
        effective_at_ms INTEGER,
        first_seen_ms   INTEGER NOT NULL,
        UNIQUE (kind, raw)
    ) STRICT;
    CREATE TABLE epochs (
        group_name TEXT PRIMARY KEY,
        highest    INTEGER NOT NULL
    ) STRICT;
"#,
    // 1 -> 2: the key-value identity table becomes one typed row.
    r#"
    CREATE TABLE agent_state (
        id                    INTEGER PRIMARY KEY CHECK (id = 1),
        instance_id           TEXT,
        group_name            TEXT,
        agent_id              TEXT,
        token                 TEXT,
        coordinator_url       TEXT,
        register_request_id   TEXT,
        heartbeat_interval_ms INTEGER,
        role                  TEXT CHECK (role IN ('launching', 'replica', 'primary', 'zombie')),
        role_epoch            INTEGER NOT NULL DEFAULT 0,
        link_state            TEXT,
        link_last_ok_ms       INTEGER,
        link_last_error       TEXT,
        decommissioned_at_ms  INTEGER,
        pricing_since_ms      INTEGER,
        self_demoted_at_ms    INTEGER
    ) STRICT;
    INSERT INTO agent_state (id) VALUES (1);
    UPDATE agent_state SET
        instance_id = (SELECT value FROM identity WHERE key = 'instance_id'),
        group_name = (SELECT value FROM identity WHERE key = 'group'),
        agent_id = (SELECT value FROM identity WHERE key = 'agent_id'),
        token = (SELECT value FROM identity WHERE key = 'token'),
        coordinator_url = (SELECT value FROM identity WHERE key = 'coordinator_url'),
        register_request_id = (SELECT value FROM identity WHERE key = 'register_request_id'),
        heartbeat_interval_ms = CAST((SELECT value FROM identity WHERE key = 'heartbeat_interval_ms') AS INTEGER),
        role = (SELECT value FROM identity WHERE key = 'role'
                AND value IN ('launching', 'replica', 'primary', 'zombie')),
        link_state = (SELECT value FROM identity WHERE key = 'link_state'),
        link_last_ok_ms = CAST((SELECT value FROM identity WHERE key = 'link_last_ok_ms') AS INTEGER),
        link_last_error = (SELECT value FROM identity WHERE key = 'link_last_error'),
        decommissioned_at_ms = CAST((SELECT value FROM identity WHERE key = 'decommissioned') AS INTEGER),
        pricing_since_ms = CAST((SELECT value FROM identity WHERE key = 'pricing_since_ms') AS INTEGER),
        self_demoted_at_ms = CAST((SELECT value FROM identity WHERE key = 'self_demoted_at_ms') AS INTEGER);
    UPDATE agent_state SET role_epoch = COALESCE((SELECT MAX(highest) FROM epochs), 0)
        WHERE role IN ('primary', 'zombie');
    DROP TABLE identity;
"#,
    // 2 -> 3: the grants of promotes, shown in a PRIMARY's heartbeats.
    r#"
    CREATE TABLE grants (
        epoch          INTEGER PRIMARY KEY,
        value          TEXT NOT NULL,
        received_at_ms INTEGER NOT NULL
    ) STRICT;
"#,
];

pub struct Journal {
    conn: Connection,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn highest_tx(conn: &Connection, group: &str) -> Result<u64> {
    Ok(conn
        .query_row(
            "SELECT highest FROM epochs WHERE group_name = ?1",
            [group],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map_or(0, |h| u64::try_from(h).unwrap_or(0)))
}

impl Journal {
    pub fn open(path: &Path) -> Result<Journal> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        loop {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let v: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            let Some(step) = usize::try_from(v).ok().and_then(|i| STEPS.get(i)) else {
                break;
            };
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", v + 1)?;
            tx.commit()?;
        }
        Ok(Journal { conn })
    }

    /// Read-only view for `spot-agent status` while the daemon runs.
    pub fn open_read_only(path: &Path) -> Result<Journal> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        Ok(Journal { conn })
    }

    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

/// Async handle: the journal runs on the blocking pool. The first journal
/// error of any caller trips `failed()`, on which the agent fails closed
/// (a PRIMARY that cannot journal stops serving, then the process exits
/// for systemd to restart it): no caller turns a journal error into "not
/// registered" or "not PRIMARY".
#[derive(Clone)]
pub struct JournalHandle {
    inner: Arc<Mutex<Journal>>,
    failed: tokio_util::sync::CancellationToken,
    first_error: Arc<Mutex<Option<String>>>,
    /// Test builds only: while this file exists, every call fails.
    fault_file: Option<std::path::PathBuf>,
}

impl JournalHandle {
    pub fn new(j: Journal) -> JournalHandle {
        JournalHandle {
            inner: Arc::new(Mutex::new(j)),
            failed: tokio_util::sync::CancellationToken::new(),
            first_error: Arc::default(),
            fault_file: None,
        }
    }

    /// Test builds: calls fail while `path` exists (the nemesis's journal
    /// I/O errors). Ignored without the `failpoints` feature.
    pub fn with_fault_file(mut self, path: std::path::PathBuf) -> JournalHandle {
        if cfg!(feature = "failpoints") {
            self.fault_file = Some(path);
        }
        self
    }

    /// Cancelled on the first journal error.
    pub fn failed(&self) -> tokio_util::sync::CancellationToken {
        self.failed.clone()
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Journal) -> Result<R> + Send + 'static,
    {
        let result = match &self.fault_file {
            Some(p) if p.exists() => Err(JournalError::Injected(p.display().to_string())),
            _ => {
                let inner = Arc::clone(&self.inner);
                tokio::task::spawn_blocking(move || {
                    let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
                    f(&mut g)
                })
                .await
                .map_err(JournalError::from)
                .and_then(|r| r)
            }
        };
        if let Err(e) = &result {
            let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                *first = Some(crate::error_chain(e));
            }
            self.failed.cancel();
        }
        result
    }
}

mod commands;
mod state;

pub use commands::{Accept, CommandRow, Pending, Start};
pub use state::{Creds, LocalState, NoticeRow};

#[cfg(test)]
mod tests;
