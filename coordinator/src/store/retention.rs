//! Retention: every table that grows is pruned by age, in small batches
//! (one short write transaction each, so the hot path never waits long
//! behind a prune), and never a row that something still reads:
//!
//! * a command stays while it is queued or delivered, and while the
//!   instance it is about has not settled (still running, or TERMINATED
//!   without EC2 confirming it): demotions and fences are fencing
//!   evidence, terminations are counted by the retry rule;
//! * an event stays while a notice points at it, and a `self_demoted`
//!   event stays while its instance has not settled (fencing evidence);
//! * an instance row goes only once TERMINATED, settled in EC2, and with
//!   no command about it still queued or delivered (its result would
//!   find no row);
//! * an agent row goes only once nothing refers to it any more (no
//!   instance, command, event, price report or newer registration), and
//!   never while online;
//! * a switch stays while it is launching.
//!
//! Prices have their own retention in the pricing pipeline (staging and
//! hourly series, pruned by the consolidation job).
//!
//! SQLite reuses the pages a prune frees, so the file grows to the size of
//! the retained window and then stays flat; nothing here runs `VACUUM`,
//! which would lock the database for its whole duration
//! (docs/OPERATIONS.md, "Database size").

use super::{Read, Result, Store};
use crate::store::engine::{ConnExt, params};
use serde::Deserialize;
use std::time::Duration;

spot_common::string_enum! {
    /// A table pruned by age. Pruned in this order (`Table::ALL`), so that
    /// a row freed by one table's prune (an event whose notice went, an
    /// agent whose instance went) goes in the same pass.
    pub enum Table("table") {
        Idempotency = "idempotency",
        Notices = "notices",
        Events = "events",
        Instances = "instances",
        Commands = "commands",
        Agents = "agents",
        Switches = "switches",
        Audit = "audit",
        Decisions = "decisions",
        ConsolidationRuns = "consolidation_runs",
    }
}

/// How long each table keeps its rows (`[retention]` in the coordinator's
/// config). The defaults keep the 92 days the training export reads, and
/// the audit log and switch history longest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Client retries are answered from here; a day covers any retry.
    #[serde(with = "humantime_serde")]
    pub idempotency: Duration,
    /// Agent events (command results, health, notices' carriers).
    #[serde(with = "humantime_serde")]
    pub events: Duration,
    /// Interruption, rebalance and maintenance notices.
    #[serde(with = "humantime_serde")]
    pub notices: Duration,
    /// Finished commands (counted from when they finished).
    #[serde(with = "humantime_serde")]
    pub commands: Duration,
    /// TERMINATED instances (counted from their last change).
    #[serde(with = "humantime_serde")]
    pub instances: Duration,
    /// Agents no longer referred to by anything (counted from their last
    /// heartbeat).
    #[serde(with = "humantime_serde")]
    pub agents: Duration,
    /// Finished switches.
    #[serde(with = "humantime_serde")]
    pub switches: Duration,
    #[serde(with = "humantime_serde")]
    pub audit: Duration,
    /// The decision log (kept like the audit log).
    #[serde(with = "humantime_serde")]
    pub decisions: Duration,
    /// The consolidation job's run records.
    #[serde(with = "humantime_serde")]
    pub consolidation_runs: Duration,
    /// How often the coordinator prunes.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Rows deleted per transaction.
    pub batch: usize,
}

const DAY: u64 = 86_400;

impl Default for Retention {
    fn default() -> Self {
        let days = |n: u64| Duration::from_secs(n * DAY);
        Retention {
            idempotency: days(1),
            events: days(30),
            notices: days(92),
            commands: days(30),
            instances: days(92),
            agents: days(92),
            switches: days(400),
            audit: days(400),
            decisions: days(400),
            consolidation_runs: days(92),
            interval: Duration::from_secs(600),
            batch: 500,
        }
    }
}

impl Retention {
    pub fn of(&self, table: Table) -> Duration {
        match table {
            Table::Idempotency => self.idempotency,
            Table::Events => self.events,
            Table::Notices => self.notices,
            Table::Commands => self.commands,
            Table::Instances => self.instances,
            Table::Agents => self.agents,
            Table::Switches => self.switches,
            Table::Audit => self.audit,
            Table::Decisions => self.decisions,
            Table::ConsolidationRuns => self.consolidation_runs,
        }
    }

    /// Every value sane; the error names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for &table in Table::ALL {
            if self.of(table) < Duration::from_secs(3600) {
                return Err(format!("retention.{table} must be at least 1h"));
            }
        }
        if self.idempotency < Duration::from_secs(DAY) {
            return Err("retention.idempotency must be at least 1d (client retries)".into());
        }
        if self.interval < Duration::from_secs(1) {
            return Err("retention.interval must be at least 1s".into());
        }
        if self.batch == 0 {
            return Err("retention.batch must be at least 1".into());
        }
        Ok(())
    }
}

/// An instance that has *settled*: TERMINATED, and EC2 does not show it
/// running (so no termination will be retried and nothing fences it).
const SETTLED: &str = "i.role = 'terminated'
     AND (i.ec2_state IS NULL OR i.ec2_state NOT IN ('pending', 'running', 'stopping', 'stopped'))";

impl Store {
    /// Delete up to `batch` rows of `table` older than `before_ms` that
    /// nothing still needs (module docs); returns how many went. One
    /// transaction per call.
    pub fn prune(&mut self, table: Table, before_ms: i64, batch: usize) -> Result<usize> {
        let sql = match table {
            Table::Idempotency => {
                "DELETE FROM idempotency WHERE request_id IN (
                   SELECT request_id FROM idempotency WHERE created_at_ms < ?1 LIMIT ?2)"
                    .to_owned()
            }
            Table::Notices => "DELETE FROM notices WHERE id IN (
                   SELECT id FROM notices WHERE seen_at_ms < ?1 LIMIT ?2)"
                .to_owned(),
            Table::Events => format!(
                "DELETE FROM events WHERE event_id IN (
                   SELECT e.event_id FROM events e WHERE e.received_at_ms < ?1
                     AND NOT EXISTS (SELECT 1 FROM notices n WHERE n.event_id = e.event_id)
                     AND NOT (e.kind = 'self_demoted' AND EXISTS (
                         SELECT 1 FROM agents a JOIN instances i ON i.instance_id = a.instance_id
                         WHERE a.agent_id = e.agent_id AND NOT ({SETTLED})))
                   LIMIT ?2)"
            ),
            Table::Instances => format!(
                "DELETE FROM instances WHERE instance_id IN (
                   SELECT i.instance_id FROM instances i
                   WHERE i.role = 'terminated' AND i.updated_at_ms < ?1 AND {SETTLED}
                     AND NOT EXISTS (SELECT 1 FROM commands c WHERE c.subject = i.instance_id
                                     AND c.state IN ('queued', 'delivered'))
                   LIMIT ?2)"
            ),
            Table::Commands => format!(
                "DELETE FROM commands WHERE request_id IN (
                   SELECT c.request_id FROM commands c
                   WHERE c.finished_at_ms < ?1 AND c.state NOT IN ('queued', 'delivered')
                     AND NOT EXISTS (SELECT 1 FROM instances i
                                     WHERE i.instance_id = c.subject AND NOT ({SETTLED}))
                   LIMIT ?2)"
            ),
            Table::Agents => "DELETE FROM agents WHERE agent_id IN (
                   SELECT a.agent_id FROM agents a
                   WHERE a.status != 'online'
                     AND COALESCE(a.last_heartbeat_ms, a.registered_at_ms) < ?1
                     AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.agent_id = a.agent_id)
                     AND NOT EXISTS (SELECT 1 FROM commands c WHERE c.agent_id = a.agent_id)
                     AND NOT EXISTS (SELECT 1 FROM events e WHERE e.agent_id = a.agent_id)
                     AND NOT EXISTS (SELECT 1 FROM price_staging p WHERE p.reporter_agent = a.agent_id)
                     AND NOT EXISTS (SELECT 1 FROM agents b WHERE b.replaced_by = a.agent_id)
                   LIMIT ?2)"
                .to_owned(),
            Table::Switches => "DELETE FROM switches WHERE id IN (
                   SELECT id FROM switches WHERE state != 'launching' AND started_at_ms < ?1
                   LIMIT ?2)"
                .to_owned(),
            Table::Audit => "DELETE FROM audit WHERE id IN (
                   SELECT id FROM audit WHERE at_ms < ?1 LIMIT ?2)"
                .to_owned(),
            Table::Decisions => "DELETE FROM decisions WHERE id IN (
                   SELECT id FROM decisions WHERE at_ms < ?1 LIMIT ?2)"
                .to_owned(),
            Table::ConsolidationRuns => "DELETE FROM consolidation_runs WHERE id IN (
                   SELECT id FROM consolidation_runs WHERE started_at_ms < ?1 LIMIT ?2)"
                .to_owned(),
        };
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        // A transaction like every write: on PostgreSQL it is fenced by the
        // leader's term, and a pruned instance invalidates cached roles.
        self.transact(super::Ctx::system(before_ms), |tx| {
            tx.tx.execute(&sql, params![before_ms, batch])
        })
        .map(|d| d.value)
    }

    /// Rows per table that retention (or the pricing pipeline) prunes.
    pub fn row_counts(&self) -> Result<std::collections::BTreeMap<&'static str, i64>> {
        let mut counts = std::collections::BTreeMap::new();
        for table in Table::ALL
            .iter()
            .map(|t| t.as_str())
            .chain(["price_staging", "price_hourly"])
        {
            let n = self
                .conn()
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
            counts.insert(table, n);
        }
        Ok(counts)
    }

    /// Bytes the database holds (pages in use, free pages excluded): what
    /// retention keeps flat.
    pub fn used_bytes(&self) -> Result<i64> {
        self.conn().used_bytes()
    }
}
