//! Leadership among coordinators sharing one PostgreSQL: a single lease
//! row, renewed on the database's clock, and a leader epoch (the fencing
//! token) that every write transaction checks in the same transaction.
//!
//! * Acquire: the row is taken only when its lease has run out on the
//!   database's clock (`now()`), and the epoch goes up by one, so two
//!   coordinators can never hold the same epoch.
//! * Renew: only by the holder of the current epoch, only while its lease
//!   still runs; a renewal that finds the lease gone fails, and the
//!   coordinator stops acting.
//! * Fence ([`check`]): a write transaction first takes a share lock on
//!   the row with `epoch = mine AND expires_at > now()`. While it holds
//!   the lock, no takeover (an UPDATE of the row) can commit; once a
//!   takeover has committed, the check fails. So every committed write of
//!   a leader is ordered before its successor's term began.
//!
//! Traps avoided: no session advisory lock (through PgBouncer's
//! transaction mode or RDS Proxy a session lock is not a lock, and
//! session locks stack when taken twice); no lock whose loss goes
//! unnoticed (a lost session simply fails the next renewal, and the
//! epoch check does not depend on any session); no waiting on a
//! half-open connection (`target.rs`: keepalives, `tcp_user_timeout`,
//! statement timeout; and the leader measures its lease on its own
//! monotonic clock from the moment it *sent* each renewal).

use super::super::{Conn, ConnExt};
use crate::store::{Result, StoreError};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The term a coordinator's writes are made under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub epoch: i64,
    /// This coordinator process (a fresh id per start).
    pub holder: String,
}

/// The term the writes of one coordinator are checked against: `None`
/// while it follows (every write refused).
#[derive(Debug, Default)]
pub struct Fence {
    term: Mutex<Option<Term>>,
    /// Write transactions refused so far.
    refused: AtomicU64,
}

impl Fence {
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn set(&self, term: Option<Term>) {
        *self.term.lock().unwrap_or_else(|p| p.into_inner()) = term;
    }

    pub fn get(&self) -> Option<Term> {
        self.term.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Inside a write transaction: hold the leader row in share mode, and
/// refuse unless this coordinator's term still holds it.
pub fn check(tx: &dyn Conn, fence: &Fence) -> Result<()> {
    let Some(term) = fence.get() else {
        fence.refused.fetch_add(1, Ordering::Relaxed);
        return Err(StoreError::NotLeader(
            "this coordinator is not the leader".into(),
        ));
    };
    let held = tx.query_row(
        "SELECT COUNT(*) FROM (SELECT 1 FROM coordinator_leader
              WHERE id = 1 AND epoch = ?1 AND holder = ?2 AND expires_at > now() FOR SHARE) t",
        crate::store::engine::params![term.epoch, term.holder],
        |r| r.get::<i64>(0),
    )? > 0;
    if held {
        Ok(())
    } else {
        fence.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            epoch = term.epoch,
            "write refused: this coordinator's leader term is over"
        );
        Err(StoreError::NotLeader(format!(
            "leader term {} is over: this coordinator's lease ran out or another took over",
            term.epoch
        )))
    }
}

/// The leader row as a follower reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub epoch: i64,
    pub holder: Option<String>,
    pub url: Option<String>,
    /// The lease still runs on the database's clock.
    pub live: bool,
    /// Milliseconds of lease left (negative: expired that long ago).
    pub remaining_ms: i64,
}

/// Who leads, on the database's clock.
pub fn read(c: &dyn Conn) -> Result<Leader> {
    c.query_row(
        "SELECT epoch, holder, url, expires_at > now(),
                CAST(EXTRACT(EPOCH FROM (expires_at - now())) * 1000 AS BIGINT)
         FROM coordinator_leader WHERE id = 1",
        [],
        |r| {
            Ok(Leader {
                epoch: r.get(0)?,
                holder: r.get(1)?,
                url: r.get(2)?,
                live: r.get(3)?,
                remaining_ms: r.get(4)?,
            })
        },
    )
}

/// Take the lead if the lease has run out: the new term, or `None`.
pub fn acquire(c: &dyn Conn, holder: &str, url: &str, lease_ms: i64) -> Result<Option<Term>> {
    let epoch: Option<i64> = c
        .prepare(
            "UPDATE coordinator_leader
             SET epoch = epoch + 1, holder = ?1, url = ?2,
                 expires_at = now() + ?3 * INTERVAL '1 millisecond', acquired_at = now()
             WHERE id = 1 AND expires_at <= now()
             RETURNING epoch",
        )?
        .query_map(crate::store::engine::params![holder, url, lease_ms], |r| {
            r.get(0)
        })?
        .next()
        .transpose()?;
    Ok(epoch.map(|epoch| Term {
        epoch,
        holder: holder.to_owned(),
    }))
}

/// Extend the lease of `term`: `false` when it is no longer ours (the
/// lease ran out, or another coordinator took over).
pub fn renew(c: &dyn Conn, term: &Term, lease_ms: i64) -> Result<bool> {
    Ok(c.execute(
        "UPDATE coordinator_leader SET expires_at = now() + ?3 * INTERVAL '1 millisecond'
         WHERE id = 1 AND epoch = ?1 AND holder = ?2 AND expires_at > now()",
        crate::store::engine::params![term.epoch, term.holder, lease_ms],
    )? == 1)
}

/// Give the lead up now (a clean shutdown): a follower takes over at its
/// next look instead of after the lease.
pub fn release(c: &dyn Conn, term: &Term) -> Result<bool> {
    Ok(c.execute(
        "UPDATE coordinator_leader SET expires_at = now()
         WHERE id = 1 AND epoch = ?1 AND holder = ?2 AND expires_at > now()",
        crate::store::engine::params![term.epoch, term.holder],
    )? == 1)
}
