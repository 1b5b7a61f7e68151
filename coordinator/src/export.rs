//! The training export: one CSV row per pool-hour of the canonical series.
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
