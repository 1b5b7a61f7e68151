//! The group snapshot: everything the failover planner
//! (`spot_common::planner`) needs about one group, read in one go.

use super::{Result, commands, fence, parse_enum, rows, switches, to_u64};
use crate::store::engine::col;
use crate::store::engine::from_row;
use crate::store::engine::{Conn, ConnExt, OptionalExtension, params};
use spot_common::planner::{
    GroupSnap, InstanceSnap, NoticeSnap, Reported, SwitchSnap, TransitionSnap,
};
use spot_common::wire::TransitionView;
use spot_common::{Phase, PoolKey, Role, ids};
use std::collections::HashMap;

/// What the coordinator's liveness table knows of one agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentLive {
    pub online: bool,
    /// Since last heard, on the coordinator's monotonic clock.
    pub silent_ms: Option<i64>,
    /// Its last heartbeat's role and role epoch.
    pub reported: Option<(Option<Role>, u64)>,
}

/// The inputs of a snapshot that do not come from the database.
#[derive(Debug, Clone, Default)]
pub struct SnapshotInput {
    pub agents: HashMap<String, AgentLive>,
    pub now_ms: i64,
    /// A LAUNCHING instance older than this is overdue.
    pub launch_timeout_ms: i64,
    pub coordinator_executor: bool,
}

/// A candidate whose promotion failed is not tried again for this long.
const PROMOTE_FAILURE_COOLDOWN_MS: i64 = 5 * 60 * 1000;
/// A pool where a launch failed (capacity) is avoided for this long.
const FAILED_POOL_COOLDOWN_MS: i64 = 10 * 60 * 1000;

/// Read one group's snapshot. The transition's `phase_age_ms` is left at
/// the wall-clock age: the reconciler replaces it with its monotonic one.
pub fn group(conn: &dyn Conn, group: &str, input: &SnapshotInput) -> Result<GroupSnap> {
    let g = rows::group(conn, group)?;
    let now_ms = input.now_ms;
    let instances = instances(conn, group, input)?;
    let transition = match &g.transition {
        None => None,
        Some(t) => Some(transition(conn, group, t, &instances, input)?),
    };
    let launch_timeout_ms = input.launch_timeout_ms;
    let (volume_zone, volumes_restorable) = super::volumes::placement(conn, group, &g.config)?;
    Ok(GroupSnap {
        handover_ms: g.config.volume_handover_ms(),
        volume_zone,
        volumes_restorable,
        instances,
        notices: notices(conn, group, input.now_ms)?,
        transition,
        switch: switch(conn, group, now_ms)?,
        launches_in_flight: launches_in_flight(conn, group, now_ms - launch_timeout_ms)?,
        last_proactive_launch_ms: conn.query_row(
            "SELECT MAX(created_at_ms) FROM commands WHERE group_name = ?1 AND kind = 'launch'
               AND CAST(json_extract(body, '$.action.emergency') AS BIGINT) = 0",
            [group],
            |r| r.get(0),
        )?,
        boot_secs: boot_secs(conn, group)?,
        failed_pools: failed_pools(conn, group, now_ms - FAILED_POOL_COOLDOWN_MS)?,
        coordinator_executor: input.coordinator_executor,
        had_instances: conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM instances WHERE group_name = ?1)",
            [group],
            |r| r.get(0),
        )?,
        expired: expired(conn, group, now_ms, &g.config)?,
        unterminated: unterminated(conn, group)?,
        name: g.name,
        epoch: g.epoch,
        paused: g.config.paused,
        manual_replica: g.config.manual_replica,
        pinned_zone: g.config.pinned_zone().map(str::to_owned),
        pools: g.config.pools,
    })
}

fn instances(conn: &dyn Conn, group: &str, input: &SnapshotInput) -> Result<Vec<InstanceSnap>> {
    let stmt = conn.prepare_cached(
        "SELECT i.instance_id, i.role, i.instance_type, i.availability_zone, i.agent_id,
                COALESCE(a.healthy, 0),
                CASE WHEN i.ec2_state IN ('shutting-down', 'terminated') THEN 1 ELSE 0 END,
                EXISTS (SELECT 1 FROM commands c WHERE c.subject = i.instance_id
                        AND c.kind = 'promote'
                        AND c.state IN ('failed', 'cancelled', 'expired', 'stale')
                        AND c.created_at_ms > ?2),
                i.role = 'launching' AND i.created_at_ms < ?3,
                i.role_epoch,
                CASE WHEN a.registered_at_ms > i.updated_at_ms THEN 1 ELSE 0 END,
                COALESCE(i.ec2_state_at_ms, 0)
         FROM instances i LEFT JOIN agents a ON a.agent_id = i.agent_id
         -- A stranger (from a launch this store never saw) is only a fence
         -- target until it registers: the planner neither waits for it
         -- nor counts it.
         WHERE i.group_name = ?1 AND i.role NOT IN ('terminated', 'failed') AND i.stranger = 0",
    )?;
    let rows = stmt
        .query_map(
            params![
                group,
                input.now_ms - PROMOTE_FAILURE_COOLDOWN_MS,
                input.now_ms - input.launch_timeout_ms
            ],
            |r| {
                let agent: Option<String> = r.get(4)?;
                let live = agent
                    .as_ref()
                    .and_then(|a| input.agents.get(a))
                    .cloned()
                    .unwrap_or_default();
                let role_epoch = to_u64(r.get(9)?);
                let registered_after_role: bool = r.get(10)?;
                // An agent's report that EC2 shows an instance gone counts
                // only once that instance's own agent is OFFLINE and has
                // not been heard since: a report its agent contradicts, by
                // being ONLINE or speaking later, is a lie or a stale view
                // (any enrolled instance can send one), not grounds to
                // replace a serving PRIMARY or write an instance off.
                let ec2_seen_at_ms: i64 = r.get(11)?;
                let heard_since = live
                    .silent_ms
                    .is_some_and(|s| input.now_ms - s >= ec2_seen_at_ms);
                Ok(InstanceSnap {
                    instance_id: r.get(0)?,
                    role: parse_enum(1, r.get(1)?)?,
                    role_epoch,
                    instance_type: r.get(2)?,
                    availability_zone: r.get(3)?,
                    online: live.online,
                    silent_ms: live.silent_ms,
                    reported: live.reported.map(|(role, e)| Reported {
                        role,
                        role_epoch: e,
                        fresh: e >= role_epoch || registered_after_role,
                    }),
                    agent_id: agent,
                    healthy: r.get(5)?,
                    ec2_gone: r.get::<bool>(6)? && !heard_since && !live.online,
                    promote_failed_recently: r.get(7)?,
                    launch_overdue: r.get(8)?,
                })
            },
        )?
        .collect::<Result<_>>()?;
    Ok(rows)
}

/// ZOMBIE and FAILED instances kept past their group's retention, that
/// EC2 does not already report gone.
fn expired(
    conn: &dyn Conn,
    group: &str,
    now_ms: i64,
    config: &spot_common::GroupConfig,
) -> Result<Vec<String>> {
    let ms = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let stmt = conn.prepare_cached(
        "SELECT instance_id FROM instances
         WHERE group_name = ?1
           AND (ec2_state IS NULL OR ec2_state NOT IN ('shutting-down', 'terminated'))
           AND ((role = 'zombie' AND updated_at_ms <= ?2) OR (role = 'failed' AND updated_at_ms <= ?3))
         ORDER BY updated_at_ms, instance_id",
    )?;
    stmt.query_map(
        params![
            group,
            now_ms.saturating_sub(ms(config.zombie_retention_s)),
            now_ms.saturating_sub(ms(config.failed_retention_s))
        ],
        |r| r.get(0),
    )?
    .collect::<Result<_>>()
}

/// What the alerts watch across the fleet, read at each scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetHealth {
    /// Groups that had instances and have no PRIMARY now.
    pub groups_without_primary: i64,
    /// Groups whose PRIMARY has an interruption notice, with no REPLICA
    /// (or LAUNCHING instance) and no launch in flight.
    pub interrupted_without_replica: i64,
    /// ZOMBIEs kept past their group's retention (cleanup is not working).
    pub zombies_past_retention: i64,
    /// Each group's PRIMARY with its pool's newest hourly price, for the
    /// savings ratio.
    pub primary_prices: Vec<PrimaryPrice>,
}

/// A group's PRIMARY and what its pool costs now.
#[derive(Debug, Clone, PartialEq)]
pub struct PrimaryPrice {
    pub group: String,
    pub instance_type: String,
    /// Dollars per hour: the pool's newest hourly price, `None` when the
    /// store has none yet.
    pub price: Option<f64>,
}

pub fn primary_prices(conn: &dyn Conn) -> Result<Vec<PrimaryPrice>> {
    let stmt = conn.prepare_cached(
        "SELECT g.name, i.instance_type,
                (SELECT p.price_micros FROM price_hourly p
                  WHERE p.instance_type = i.instance_type
                    AND p.availability_zone = i.availability_zone
                    AND p.product_description =
                        COALESCE(json_extract(g.config, '$.product_description'), ?1)
                  ORDER BY p.hour_ms DESC LIMIT 1)
           FROM groups g JOIN instances i ON i.group_name = g.name AND i.role = 'primary'
          ORDER BY g.name",
    )?;
    let rows = stmt
        .query_map([spot_common::DEFAULT_PRODUCT], |r| {
            Ok(PrimaryPrice {
                group: r.get(0)?,
                instance_type: r.get(1)?,
                price: r.get::<Option<i64>>(2)?.map(|m| m as f64 / 1e6),
            })
        })?
        .collect::<Result<_>>()?;
    Ok(rows)
}

pub fn fleet_health(conn: &dyn Conn, now_ms: i64) -> Result<FleetHealth> {
    let count = |sql: &str| -> Result<i64> { conn.query_row(sql, [now_ms], |r| r.get(0)) };
    Ok(FleetHealth {
        groups_without_primary: count(
            "SELECT COUNT(*) FROM groups g WHERE ?1 IS NOT NULL
               AND EXISTS (SELECT 1 FROM instances i WHERE i.group_name = g.name)
               AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.group_name = g.name AND i.role = 'primary')",
        )?,
        interrupted_without_replica: count(
            "SELECT COUNT(DISTINCT i.group_name) FROM instances i
             JOIN notices n ON n.instance_id = i.instance_id AND n.kind = 'interruption'
             WHERE ?1 IS NOT NULL AND i.role = 'primary'
               AND NOT EXISTS (SELECT 1 FROM instances r WHERE r.group_name = i.group_name
                               AND r.role IN ('replica', 'launching'))
               AND NOT EXISTS (SELECT 1 FROM commands c WHERE c.group_name = i.group_name
                               AND c.kind = 'launch' AND c.state IN ('queued', 'delivered'))",
        )?,
        zombies_past_retention: count(
            "SELECT COUNT(*) FROM instances i JOIN groups g ON g.name = i.group_name
             WHERE i.role = 'zombie' AND i.updated_at_ms <=
                   ?1 - 1000 * COALESCE(CAST(json_extract(g.config, '$.zombie_retention_s') AS BIGINT), 2592000)",
        )?,
        primary_prices: primary_prices(conn)?,
    })
}

/// Terminations are tried this many times at most (then an operator
/// looks: the audit log and `terminate` commands say why).
pub const MAX_TERMINATE_ATTEMPTS: i64 = 5;

/// TERMINATED instances EC2 last saw running whose every termination
/// ended without effect (expired, failed, stale, cancelled).
fn unterminated(conn: &dyn Conn, group: &str) -> Result<Vec<String>> {
    let stmt = conn.prepare_cached(
        "SELECT i.instance_id FROM instances i
         WHERE i.group_name = ?1 AND i.role = 'terminated'
           AND i.ec2_state IN ('pending', 'running', 'stopping', 'stopped')
           AND EXISTS (SELECT 1 FROM commands c WHERE c.subject = i.instance_id
                       AND c.kind = 'terminate')
           AND NOT EXISTS (SELECT 1 FROM commands c WHERE c.subject = i.instance_id
                           AND c.kind = 'terminate'
                           AND c.state IN ('queued', 'delivered', 'done'))
           AND (SELECT COUNT(*) FROM commands c WHERE c.subject = i.instance_id
                AND c.kind = 'terminate') < ?2
         ORDER BY i.instance_id",
    )?;
    stmt.query_map(params![group, MAX_TERMINATE_ATTEMPTS], |r| r.get(0))?
        .collect::<Result<_>>()
}

/// Scheduled maintenance this long past its NotBefore is over (AWS's
/// windows are at most a couple of hours): it no longer drives a switch.
const MAINTENANCE_OVER_MS: i64 = 2 * 3_600_000;

fn notices(conn: &dyn Conn, group: &str, now_ms: i64) -> Result<Vec<NoticeSnap>> {
    let stmt = conn.prepare_cached(
        "SELECT n.instance_id, n.kind, n.effective_at_ms FROM notices n
         JOIN instances i ON i.instance_id = n.instance_id
         WHERE n.group_name = ?1 AND i.role NOT IN ('terminated', 'failed')
           AND (n.kind IN ('interruption', 'rebalance')
                OR (n.kind = 'scheduled_maintenance'
                    AND (n.effective_at_ms IS NULL OR n.effective_at_ms > ?2)))",
    )?;
    let rows = stmt
        .query_map(params![group, now_ms - MAINTENANCE_OVER_MS], |r| {
            Ok(from_row! { r => NoticeSnap {
                instance_id, kind: text, effective_at_ms
            }})
        })?
        .collect::<Result<_>>()?;
    Ok(rows)
}

fn transition(
    conn: &dyn Conn,
    group: &str,
    t: &TransitionView,
    instances: &[InstanceSnap],
    input: &SnapshotInput,
) -> Result<TransitionSnap> {
    let targets = t
        .fence
        .iter()
        .map(|target| fence::snap(conn, target, t.started_at_ms))
        .collect::<Result<_>>()?;
    let candidate_outcome =
        commands::state(conn, &ids::promote(&t.candidate, t.epoch))?.filter(|s| !s.is_open());
    let candidate_reports_primary = instances
        .iter()
        .find(|i| i.instance_id == t.candidate)
        .and_then(|i| i.reported)
        .is_some_and(|r| r.role == Some(Role::Primary) && r.role_epoch == t.epoch);
    Ok(TransitionSnap {
        ec2_view_pending: t.phase == Phase::Demoting
            && !super::unheard::ec2_seen_since(conn, group, t.heard_since_ms)?,
        phase: t.phase,
        old: t.old.clone(),
        candidate: t.candidate.clone(),
        epoch: t.epoch,
        phase_age_ms: input.now_ms - t.phase_started_ms,
        targets,
        candidate_outcome,
        candidate_reports_primary,
    })
}

fn switch(conn: &dyn Conn, group: &str, now_ms: i64) -> Result<Option<SwitchSnap>> {
    let Some((sw, rid)) = switches::active(conn, group)? else {
        return Ok(None);
    };
    let (launch_state, launched): (Option<spot_common::CommandState>, Option<String>) = match &rid {
        Some(r) => conn
            .query_row(
                "SELECT state, json_extract(result, '$.instance_id') FROM commands
                 WHERE request_id = ?1",
                [r],
                |row| Ok((Some(col::text(row, 0)?), row.get(1)?)),
            )
            .optional()?
            .unwrap_or((None, None)),
        None => (None, None),
    };
    Ok(Some(SwitchSnap {
        id: sw.id,
        pool: sw.target_pool,
        launch_request_id: rid,
        launched_instance: launched
            .filter(|_| launch_state == Some(spot_common::CommandState::Done)),
        launch_state,
        age_ms: now_ms - sw.started_at_ms,
    }))
}

/// Launches queued, running, or done but not yet registered. (A launch
/// queued to an agent that went offline has expired: it does not count.)
pub(super) fn launches_in_flight(conn: &dyn Conn, group: &str, since_ms: i64) -> Result<usize> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM commands c WHERE c.group_name = ?1 AND c.kind = 'launch'
           AND (c.state IN ('queued', 'delivered')
                OR (c.state = 'done' AND c.created_at_ms > ?2 AND NOT EXISTS (
                    SELECT 1 FROM instances i
                    WHERE i.instance_id = json_extract(c.result, '$.instance_id')
                      AND i.role != 'launching')))",
        params![group, since_ms],
        |r| r.get(0),
    )?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Observed launch -> registered-healthy seconds, per pool.
pub(super) fn boot_secs(conn: &dyn Conn, group: &str) -> Result<HashMap<PoolKey, f64>> {
    let stmt = conn.prepare_cached(
        "SELECT json_extract(c.body, '$.action.pool.instance_type'),
                json_extract(c.body, '$.action.pool.availability_zone'),
                AVG(a.at_ms - c.created_at_ms) / 1000.0
         FROM commands c JOIN audit a
           ON a.entity = 'instance:' || json_extract(c.result, '$.instance_id')
          AND a.action = 'registered_healthy'
         WHERE c.group_name = ?1 AND c.kind = 'launch' AND c.state = 'done'
         GROUP BY 1, 2",
    )?;
    let rows = stmt
        .query_map([group], |r| {
            Ok((
                PoolKey::new(&r.get::<String>(0)?, &r.get::<String>(1)?),
                r.get(2)?,
            ))
        })?
        .collect::<Result<_>>()?;
    Ok(rows)
}

/// Pools whose launch failed for want of capacity (EC2's capacity and
/// limit errors: `spot_runtime::ec2::classify`) since `since_ms`. A launch
/// that failed for another reason (its agent's EC2 link cut, throttling
/// past the retries, a deadline) says nothing about the pool.
fn failed_pools(conn: &dyn Conn, group: &str, since_ms: i64) -> Result<Vec<PoolKey>> {
    let stmt = conn.prepare_cached(
        "SELECT json_extract(body, '$.action.pool.instance_type'),
                json_extract(body, '$.action.pool.availability_zone'),
                json_extract(result, '$.error_code')
         FROM commands WHERE group_name = ?1 AND kind = 'launch' AND state = 'failed'
           AND finished_at_ms > ?2",
    )?;
    let rows: Vec<(String, String, Option<String>)> = stmt
        .query_map(params![group, since_ms], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_>>()?;
    let mut pools: Vec<PoolKey> = rows
        .into_iter()
        .filter(|(_, _, code)| {
            code.as_deref().is_some_and(|c| {
                spot_runtime::ec2::classify(c, None) == spot_runtime::ec2::ErrorClass::Capacity
            })
        })
        .map(|(t, z, _)| PoolKey::new(&t, &z))
        .collect();
    pools.sort_by_key(ToString::to_string);
    pools.dedup();
    Ok(pools)
}
