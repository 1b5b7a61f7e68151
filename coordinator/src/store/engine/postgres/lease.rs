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

#[cfg(test)]
mod tests {
    //! The fence against a real PostgreSQL: a deposed leader's writes are
    //! refused; a takeover waits for the one transaction the old leader
    //! had in flight; a transaction frozen mid-way is ended by the server.

    use super::super::{Postgres, Target};
    use super::*;
    use crate::store::{Ctx, Read, Store};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn cfg() -> spot_common::GroupConfig {
        serde_json::from_value(serde_json::json!({"pools": [
            {"instance_type": "m5.large", "availability_zone": "us-east-1a"}]}))
        .unwrap()
    }

    struct Coordinator {
        store: Store,
        fence: Arc<Fence>,
        lease: Store,
        holder: String,
    }

    fn coordinators(n: usize) -> Vec<Coordinator> {
        let url = spot_runtime::pgtest::shared()
            .and_then(|s| s.fresh_database())
            .unwrap();
        let target = Arc::new(Target::parse(&url).unwrap());
        (0..n)
            .map(|i| {
                let fence = Arc::new(Fence::default());
                Coordinator {
                    store: Store::new(
                        Postgres::open(Arc::clone(&target), Some(Arc::clone(&fence)), true)
                            .unwrap(),
                    ),
                    fence,
                    lease: Store::new(Postgres::open(Arc::clone(&target), None, false).unwrap()),
                    holder: format!("c{i}"),
                }
            })
            .collect()
    }

    impl Coordinator {
        fn acquire(&self, lease_ms: i64) -> Option<Term> {
            let t = acquire(self.lease.conn(), &self.holder, "http://x", lease_ms).unwrap();
            self.fence.set(t.clone());
            t
        }

        fn write(&mut self, group: &str) -> crate::store::Result<()> {
            self.store
                .transact(Ctx::system(1), |tx| tx.create_group(group, &cfg()))
                .map(|_| ())
        }
    }

    fn not_leader(r: crate::store::Result<()>) -> bool {
        matches!(r, Err(StoreError::NotLeader(_)))
    }

    #[test]
    fn a_deposed_leader_cannot_write_and_terms_never_go_backwards() {
        let mut c = coordinators(2);
        assert!(not_leader(c[0].write("before")), "no term, no write");
        let a = c[0].acquire(300).unwrap();
        assert!(c[1].acquire(300).is_none(), "one leader at a time");
        c[0].write("a1").unwrap();
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            not_leader(c[0].write("a2")),
            "a lease that ran out writes nothing"
        );
        let b = c[1].acquire(10_000).unwrap();
        assert_eq!(b.epoch, a.epoch + 1);
        c[1].write("b1").unwrap();
        assert!(
            !renew(c[0].lease.conn(), &a, 10_000).unwrap(),
            "a deposed leader cannot renew"
        );
        assert!(
            not_leader(c[0].write("a3")),
            "a deposed leader writes nothing"
        );
        assert_eq!(c[0].fence.refused(), 3);
        let names = c[1].store.group_names().unwrap();
        assert_eq!(names, vec!["a1".to_owned(), "b1".to_owned()]);
        let epochs: Vec<i64> = c[1]
            .store
            .audit_log(&crate::store::AuditQuery::default())
            .unwrap()
            .iter()
            .map(|e| e.leader_epoch)
            .collect();
        assert_eq!(epochs, vec![a.epoch, b.epoch]);
        assert_eq!(
            read(c[1].lease.conn()).unwrap().holder.as_deref(),
            Some("c1")
        );
    }

    #[test]
    fn a_takeover_waits_for_the_old_leaders_transaction_in_flight() {
        let mut c = coordinators(2);
        let b = c.pop().unwrap();
        let mut a = c.pop().unwrap();
        let term_a = a.acquire(300).unwrap();
        let mut tx = a.store.begin(Ctx::system(1)).unwrap();
        // The lease runs out while the old leader's write is in flight.
        std::thread::sleep(Duration::from_millis(400));
        let taker = std::thread::spawn(move || {
            let t = b.acquire(10_000).unwrap();
            (b, t, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !taker.is_finished(),
            "the takeover waits for the write in flight"
        );
        tx.create_group("inflight", &cfg()).unwrap();
        let committed = Instant::now();
        tx.commit().unwrap();
        let (mut b, term_b, took) = taker.join().unwrap();
        assert!(
            took >= committed,
            "the new term began after the old leader's last commit"
        );
        assert_eq!(term_b.epoch, term_a.epoch + 1);
        assert!(not_leader(a.write("after")));
        b.write("b").unwrap();
    }

    #[test]
    fn a_transaction_frozen_mid_way_is_ended_by_the_server() {
        let mut c = coordinators(2);
        let mut b = c.pop().unwrap();
        let mut a = c.pop().unwrap();
        a.acquire(1_000).unwrap();
        let mut tx = a.store.begin(Ctx::system(1)).unwrap();
        tx.create_group("frozen", &cfg()).unwrap();
        // Frozen past idle_in_transaction_session_timeout (5 s): the
        // server ends the transaction and its lock, so the next leader
        // does not wait for a process that may never run again.
        std::thread::sleep(Duration::from_millis(5_500));
        let started = Instant::now();
        assert!(b.acquire(10_000).is_some());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the takeover did not wait"
        );
        assert!(
            tx.commit().is_err(),
            "the thawed leader's commit is refused"
        );
        assert!(b.store.group_names().unwrap().is_empty());
        assert!(not_leader(a.write("thawed")));
        b.write("b").unwrap();
    }
}
