//! The pricing pipeline's SQL: staging of raw reports, consolidation into
//! the canonical hourly series, queries and the training export.
//!
//! Consolidation is incremental and idempotent: it reprocesses the pools
//! that received reports since the last run (a watermark on
//! `received_at_ms`), from `max_gap` before their earliest new point (a
//! late point can close a gap and fill hours before it) to now, replacing
//! those canonical hours in one transaction. Running it twice changes
//! nothing.

use super::{Result, StoreError, Txn};
use crate::store::engine::from_row;
use crate::store::engine::{Conn, ConnExt, OptionalExtension, params};
use spot_common::pricing::{self, HourPoint, Report, hour_floor};
use spot_common::wire::ConsolidationRun;
use spot_common::{PoolKey, PricePoint};

const WATERMARK: &str = "pricing.watermark_received_ms";
const DUPLICATES: &str = "pricing.duplicates_since_run";

/// One canonical price series: a pool and a product.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub pool: PoolKey,
    pub product: String,
}

/// Consolidation tunables.
#[derive(Debug, Clone, Copy)]
pub struct ConsolidationConfig {
    pub max_gap_ms: i64,
    pub staging_retention_ms: i64,
    pub canonical_retention_ms: i64,
}

fn parse_ts(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s.trim_end_matches('Z'))
        .ok()
        .or_else(|| humantime::parse_rfc3339(s).ok())?;
    i64::try_from(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()
}

impl Txn<'_> {
    /// Stage an agent's reports. Exact duplicates are dropped (and counted
    /// for the next run's record). A ZOMBIE's reports are refused.
    pub fn ingest_prices(
        &mut self,
        agent_id: &str,
        points: &[PricePoint],
    ) -> Result<(usize, usize)> {
        let now_ms = self.now_ms();
        let mut rows = Vec::with_capacity(points.len());
        for p in points {
            let price =
                pricing::parse_price(&p.price).map_err(|e| StoreError::Invalid(e.to_string()))?;
            let ts = parse_ts(&p.timestamp).ok_or_else(|| {
                StoreError::Invalid(format!("timestamp {:?} is not RFC 3339", p.timestamp))
            })?;
            for (name, v) in [
                ("instance_type", &p.instance_type),
                ("availability_zone", &p.availability_zone),
                ("product_description", &p.product_description),
            ] {
                if v.is_empty() || v.len() > 64 {
                    return Err(StoreError::Invalid(format!(
                        "{name} must be 1-64 characters"
                    )));
                }
            }
            rows.push((p, ts, price));
        }
        let tx = &self.tx;
        let role: Option<String> = tx
            .query_row(
                "SELECT i.role FROM agents a JOIN instances i ON i.instance_id = a.instance_id WHERE a.agent_id = ?1",
                [agent_id],
                |r| r.get(0),
            )
            .optional()?;
        let role = role.ok_or_else(|| StoreError::NotFound {
            what: "agent",
            id: agent_id.to_owned(),
        })?;
        if matches!(role.as_str(), "zombie" | "terminated" | "failed") {
            return Err(StoreError::NotIngested(format!(
                "reports of a {role} instance are not ingested"
            )));
        }
        let mut accepted = 0;
        {
            let stmt = tx.prepare_cached(
                "INSERT INTO price_staging (instance_type, availability_zone, product_description,
                     aws_timestamp_ms, price_micros, reporter_agent, reporter_role, received_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
            )?;
            for (p, ts, price) in &rows {
                accepted += stmt.execute(params![
                    p.instance_type,
                    p.availability_zone,
                    p.product_description,
                    ts,
                    price,
                    agent_id,
                    role,
                    now_ms
                ])?;
            }
        }
        let duplicates = rows.len() - accepted;
        tx.execute(
            "INSERT INTO counters (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = counters.value + excluded.value",
            params![DUPLICATES, i64::try_from(duplicates).unwrap_or(0)],
        )?;
        Ok((accepted, duplicates))
    }

    /// One consolidation run; see the module docs.
    pub fn consolidate(&mut self, cfg: &ConsolidationConfig) -> Result<ConsolidationRun> {
        let now_ms = self.now_ms();
        let started = std::time::Instant::now();
        let tx = &self.tx;
        let watermark: i64 = tx
            .query_row(
                "SELECT value FROM counters WHERE key = ?1",
                [WATERMARK],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(i64::MIN);
        let affected: Vec<(SeriesKey, i64, i64)> = tx
            .prepare(
                "SELECT instance_type, availability_zone, product_description, MIN(aws_timestamp_ms), MAX(received_at_ms)
                 FROM price_staging WHERE received_at_ms > ?1 GROUP BY 1, 2, 3",
            )?
            .query_map([watermark], |r| {
                Ok((
                    SeriesKey {
                        pool: PoolKey::new(&r.get::<String>(0)?, &r.get::<String>(1)?),
                        product: r.get(2)?,
                    },
                    r.get(3)?,
                    r.get(4)?,
                ))
            })?
            .collect::<Result<_>>()?;
        let mut run = ConsolidationRun {
            id: 0,
            started_at_ms: now_ms,
            duration_ms: 0,
            pools: i64::try_from(affected.len()).unwrap_or(0),
            rows_read: 0,
            duplicates_dropped: tx
                .query_row(
                    "SELECT value FROM counters WHERE key = ?1",
                    [DUPLICATES],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0),
            conflicts_median: 0,
            primary_precedence: 0,
            points_interpolated: 0,
            hours_written: 0,
            staging_pruned: 0,
        };
        let mut new_watermark = watermark;
        {
            let read = tx.prepare_cached(
                "SELECT aws_timestamp_ms, price_micros, reporter_role = 'primary' FROM price_staging
                 WHERE instance_type = ?1 AND availability_zone = ?2 AND product_description = ?3
                   AND aws_timestamp_ms >= ?4",
            )?;
            let delete = tx.prepare_cached(
                "DELETE FROM price_hourly WHERE instance_type = ?1 AND availability_zone = ?2
                   AND product_description = ?3 AND hour_ms >= ?4",
            )?;
            let insert = tx.prepare_cached(
                "INSERT INTO price_hourly (instance_type, availability_zone, product_description, hour_ms,
                     price_micros, interpolated, updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (key, min_ts, max_received) in &affected {
                let (itype, az, product) = (
                    &key.pool.instance_type,
                    &key.pool.availability_zone,
                    &key.product,
                );
                new_watermark = new_watermark.max(*max_received);
                // From max_gap before the earliest new point (a late point
                // can close a gap), reading one more max_gap back for the
                // price that holds at the window's start.
                let from_hour = hour_floor(min_ts - cfg.max_gap_ms);
                let reports: Vec<Report> = read
                    .query_map(
                        params![itype, az, product, from_hour - cfg.max_gap_ms],
                        |r| {
                            Ok(from_row! { r => Report {
                                ts_ms, price, from_primary
                            }})
                        },
                    )?
                    .collect::<Result<_>>()?;
                run.rows_read += i64::try_from(reports.len()).unwrap_or(0);
                let (points, stats) = pricing::resolve(&reports);
                run.conflicts_median += i64::try_from(stats.conflicts_median).unwrap_or(0);
                run.primary_precedence += i64::try_from(stats.primary_precedence).unwrap_or(0);
                let series: Vec<HourPoint> =
                    pricing::hourly(&points, from_hour, now_ms, cfg.max_gap_ms, now_ms);
                delete.execute(params![itype, az, product, from_hour])?;
                for h in &series {
                    insert.execute(params![
                        itype,
                        az,
                        product,
                        h.hour_ms,
                        h.price,
                        h.interpolated,
                        now_ms
                    ])?;
                    run.hours_written += 1;
                    run.points_interpolated += i64::from(h.interpolated);
                }
            }
        }
        run.staging_pruned = i64::try_from(tx.execute(
            "DELETE FROM price_staging WHERE received_at_ms < ?1 AND received_at_ms <= ?2",
            params![now_ms - cfg.staging_retention_ms, new_watermark],
        )?)
        .unwrap_or(0);
        tx.execute(
            "DELETE FROM price_hourly WHERE hour_ms < ?1",
            [now_ms - cfg.canonical_retention_ms],
        )?;
        tx.execute(
            "INSERT INTO counters (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![WATERMARK, new_watermark],
        )?;
        tx.execute("INSERT INTO counters (key, value) VALUES (?1, 0) ON CONFLICT (key) DO UPDATE SET value = 0", [DUPLICATES])?;
        run.duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(0);
        run.id = tx.query_row(
            "INSERT INTO consolidation_runs (started_at_ms, duration_ms, pools, rows_read, duplicates_dropped,
                 conflicts_median, primary_precedence, points_interpolated, hours_written, staging_pruned)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
            params![run.started_at_ms, run.duration_ms, run.pools, run.rows_read, run.duplicates_dropped,
                run.conflicts_median, run.primary_precedence, run.points_interpolated, run.hours_written, run.staging_pruned],
            |r| r.get(0),
        )?;
        Ok(run)
    }

    /// Bulk staging for benchmarks and tests (no role check).
    #[cfg(any(test, feature = "test-util"))]
    pub fn stage_raw(&mut self, rows: &[(SeriesKey, i64, i64, String, String)]) -> Result<usize> {
        let now_ms = self.now_ms();
        let mut n = 0;
        let stmt = self.tx.prepare_cached(
            "INSERT INTO price_staging (instance_type, availability_zone, product_description,
                 aws_timestamp_ms, price_micros, reporter_agent, reporter_role, received_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
        )?;
        for (k, ts, price, agent, role) in rows {
            n += stmt.execute(params![
                k.pool.instance_type,
                k.pool.availability_zone,
                k.product,
                ts,
                price,
                agent,
                role,
                now_ms
            ])?;
        }
        Ok(n)
    }
}

pub fn consolidation_runs(conn: &dyn Conn, limit: u32) -> Result<Vec<ConsolidationRun>> {
    let stmt = conn.prepare(
            "SELECT id, started_at_ms, duration_ms, pools, rows_read, duplicates_dropped, conflicts_median,
                    primary_precedence, points_interpolated, hours_written, staging_pruned
             FROM consolidation_runs ORDER BY id DESC LIMIT ?1",
        )?;
    let rows = stmt
        .query_map([limit], |r| {
            Ok(from_row! { r => ConsolidationRun {
                id, started_at_ms, duration_ms, pools, rows_read, duplicates_dropped,
                conflicts_median, primary_precedence, points_interpolated,
                hours_written, staging_pruned
            }})
        })?
        .collect::<Result<_>>()?;
    Ok(rows)
}

/// The canonical series of one pool for hours in [from, to).
pub fn hourly(
    conn: &dyn Conn,
    key: &SeriesKey,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<HourPoint>> {
    let stmt = conn.prepare_cached(
        "SELECT hour_ms, price_micros, interpolated FROM price_hourly
             WHERE instance_type = ?1 AND availability_zone = ?2 AND product_description = ?3
               AND hour_ms >= ?4 AND hour_ms < ?5 ORDER BY hour_ms",
    )?;
    let rows = stmt
        .query_map(
            params![
                key.pool.instance_type,
                key.pool.availability_zone,
                key.product,
                from_ms,
                to_ms
            ],
            |r| {
                Ok(from_row! { r => HourPoint {
                    hour_ms, price, interpolated
                }})
            },
        )?
        .collect::<Result<_>>()?;
    Ok(rows)
}

/// Each of a group's pools with its canonical hourly series in
/// `[from_ms, to_ms)`, in the group's order.
pub fn group_series(
    conn: &dyn Conn,
    config: &spot_common::GroupConfig,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<(PoolKey, Vec<HourPoint>)>> {
    config
        .pools
        .iter()
        .map(|p| {
            let key = SeriesKey {
                pool: p.key(),
                product: config.product_description.clone(),
            };
            Ok((key.pool.clone(), hourly(conn, &key, from_ms, to_ms)?))
        })
        .collect()
}

/// Every canonical pool-hour since `since_ms`, for the training export.
pub fn export_hourly(
    conn: &dyn Conn,
    since_ms: i64,
    mut row: impl FnMut(&SeriesKey, &HourPoint) -> std::io::Result<()>,
) -> Result<u64> {
    let stmt = conn.prepare(
            "SELECT instance_type, availability_zone, product_description, hour_ms, price_micros, interpolated
             FROM price_hourly WHERE hour_ms >= ?1 ORDER BY 1, 2, 3, 4",
        )?;
    let mut n = 0;
    stmt.for_each([since_ms], |r| {
        let key = SeriesKey {
            pool: PoolKey::new(&r.get::<String>(0)?, &r.get::<String>(1)?),
            product: r.get(2)?,
        };
        let h = HourPoint {
            hour_ms: r.get(3)?,
            price: r.get(4)?,
            interpolated: r.get(5)?,
        };
        row(&key, &h).map_err(|e| StoreError::Invalid(format!("writing the export: {e}")))?;
        n += 1;
        Ok(())
    })?;
    Ok(n)
}
