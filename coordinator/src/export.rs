//! The training export: one CSV row per pool-hour of the canonical series
//! (`--rows prices`), or one row per group-hour with features, the
//! decision taken and the outcome labels (`--rows group-hours`, CSV or
//! JSON lines; columns in `store::TRAINING_COLUMNS`, documented in
//! docs/DECISIONS.md).
//!
//! Columns (documented in docs/OPERATIONS.md): `instance_type`,
//! `availability_zone`, `product_description`, `hour` (RFC 3339, start of
//! the hour, UTC), `price` (USD per hour, 6 decimals), `interpolated`
//! (`true` when the hour had no observation and was filled).

use crate::store::{Read, Store, StoreError};
use spot_common::pricing::format_price;

pub const HEADER: &str =
    "instance_type,availability_zone,product_description,hour,price,interpolated";

pub fn write_csv(
    store: &Store,
    since_ms: i64,
    out: &mut dyn std::io::Write,
) -> Result<u64, StoreError> {
    let io = |e: std::io::Error| StoreError::Invalid(format!("writing the export: {e}"));
    writeln!(out, "{HEADER}").map_err(io)?;
    let n = store.export_hourly(since_ms, &mut |k, h| {
        let (t, az, p) = (&k.pool.instance_type, &k.pool.availability_zone, &k.product);
        let hour = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(h.hour_ms).unwrap_or(0));
        writeln!(
            out,
            "{t},{az},{p},{},{},{}",
            humantime::format_rfc3339_seconds(hour),
            format_price(h.price),
            h.interpolated
        )
    })?;
    out.flush().map_err(io)?;
    Ok(n)
}

/// One CSV cell: empty for none.
fn cell<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// The group-hour rows, as CSV (`jsonl` false) or JSON lines.
pub fn write_group_hours(
    store: &Store,
    since_ms: i64,
    now_ms: i64,
    jsonl: bool,
    out: &mut dyn std::io::Write,
) -> Result<u64, StoreError> {
    let io = |e: std::io::Error| StoreError::Invalid(format!("writing the export: {e}"));
    let rows = store.training_rows(since_ms, now_ms)?;
    if !jsonl {
        writeln!(out, "{}", crate::store::TRAINING_COLUMNS.join(",")).map_err(io)?;
    }
    for r in &rows {
        if jsonl {
            writeln!(out, "{}", serde_json::to_string(r)?).map_err(io)?;
            continue;
        }
        let cells = [
            r.group.clone(),
            r.hour_ms.to_string(),
            cell(&r.primary),
            cell(&r.instance_type),
            cell(&r.availability_zone),
            cell(&r.price),
            cell(&r.price_interpolated),
            cell(&r.cheapest_pool),
            cell(&r.cheapest_price),
            cell(&r.pool_interruptions_per_instance_hour),
            cell(&r.decision_action),
            cell(&r.decision_target),
            cell(&r.decision_mode),
            r.interrupted_1h.to_string(),
            r.interrupted_6h.to_string(),
            r.interrupted_24h.to_string(),
            cell(&r.realized_price_24h),
        ];
        writeln!(out, "{}", cells.join(",")).map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(u64::try_from(rows.len()).unwrap_or(u64::MAX))
}
