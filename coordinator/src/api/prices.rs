//! Operator API v1: canonical prices, a group's pools and cost, and the
//! consolidation job's records.

use super::{ApiError, ApiPath, ApiQuery, read_json};
use crate::state::AppState;
use crate::store::{Read, SeriesKey};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use spot_common::PoolKey;
use spot_common::pricing::{HourPoint, format_price, parse_price};
use spot_common::wire::{ConsolidationRun, GroupCost, GroupPrices, HourlyPrice, PoolSeries};
use std::sync::Arc;

/// Default window: the 7 days the decision engine reads.
const DEFAULT_WINDOW_MS: i64 = 7 * 24 * 3_600_000;

fn rfc3339(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn parse_time(name: &str, s: &Option<String>, default: i64) -> Result<i64, ApiError> {
    match s {
        None => Ok(default),
        Some(v) => humantime::parse_rfc3339_weak(v)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name} must be an RFC 3339 time, e.g. 2026-11-20T00:00:00Z"
                ))
            }),
    }
}

fn window(from: &Option<String>, to: &Option<String>) -> Result<(i64, i64), ApiError> {
    let now = crate::state::now_ms();
    let to = parse_time("to", to, now)?;
    let from = parse_time("from", from, to - DEFAULT_WINDOW_MS)?;
    if from >= to {
        return Err(ApiError::bad_request("from must be before to"));
    }
    Ok((from, to))
}

fn points(series: Vec<HourPoint>) -> Vec<HourlyPrice> {
    series
        .into_iter()
        .map(|h| HourlyPrice {
            hour: rfc3339(h.hour_ms),
            price: format_price(h.price),
            interpolated: h.interpolated,
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceQuery {
    instance_type: String,
    availability_zone: String,
    product_description: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

pub async fn prices(
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<PriceQuery>,
) -> Result<Json<PoolSeries>, ApiError> {
    let (from, to) = window(&q.from, &q.to)?;
    let product = q
        .product_description
        .unwrap_or_else(|| spot_common::DEFAULT_PRODUCT.to_owned());
    let key = SeriesKey {
        pool: PoolKey::new(&q.instance_type, &q.availability_zone),
        product,
    };
    let k = key.clone();
    let series = state
        .db
        .read(move |s| s.hourly_prices(&k, from, to))
        .await?;
    Ok(Json(series_view(key, series)))
}

fn series_view(key: SeriesKey, series: Vec<HourPoint>) -> PoolSeries {
    PoolSeries {
        instance_type: key.pool.instance_type,
        availability_zone: key.pool.availability_zone,
        product_description: key.product,
        points: points(series),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowQuery {
    from: Option<String>,
    to: Option<String>,
}

/// The group's candidate pools' series, and its current hourly cost and
/// savings against on-demand.
pub async fn group_prices(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<WindowQuery>,
) -> Result<Json<GroupPrices>, ApiError> {
    let (from, to) = window(&q.from, &q.to)?;
    let on_demand = state.config.on_demand_prices.clone();
    let g = name.clone();
    let out = state
        .db
        .read(move |s| {
            let group = s.group(&g)?;
            let product = group.config.product_description.clone();
            let mut pools = Vec::new();
            for p in &group.config.pools {
                let key = SeriesKey {
                    pool: p.key(),
                    product: product.clone(),
                };
                let series = s.hourly_prices(&key, from, to)?;
                pools.push(series_view(key, series));
            }
            let cost = match &group.primary {
                None => None,
                Some(p) => {
                    let inst = s.instance(p)?;
                    let key = SeriesKey {
                        pool: PoolKey::new(&inst.instance_type, &inst.availability_zone),
                        product: product.clone(),
                    };
                    let spot = s
                        .hourly_prices(&key, to - DEFAULT_WINDOW_MS, to)?
                        .last()
                        .map(|h| h.price);
                    let od = on_demand
                        .get(&inst.instance_type)
                        .and_then(|v| parse_price(v).ok());
                    let savings = match (spot, od) {
                        (Some(s), Some(o)) if o > 0 => Some((1.0 - s as f64 / o as f64) * 100.0),
                        _ => None,
                    };
                    Some(GroupCost {
                        instance_type: inst.instance_type,
                        availability_zone: inst.availability_zone,
                        spot_price: spot.map(format_price),
                        on_demand_price: od.map(format_price),
                        savings_percent: savings,
                    })
                }
            };
            Ok(GroupPrices {
                group: g,
                from: rfc3339(from),
                to: rfc3339(to),
                pools,
                cost,
            })
        })
        .await?;
    Ok(Json(out))
}

pub async fn runs(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<ConsolidationRun>>, ApiError> {
    read_json(&state, |s| s.consolidation_runs(100)).await
}

/// Consolidate now (as the 12-hourly job does).
pub async fn consolidate(
    State(state): State<Arc<AppState>>,
) -> Result<Json<ConsolidationRun>, ApiError> {
    Ok(Json(crate::tasks::pricing::run_once(&state).await?))
}

/// What the PRIMARIES save against on-demand, per group and fleet-wide
/// (groups whose PRIMARY's type has an on-demand price configured).
pub async fn savings(
    State(state): State<Arc<AppState>>,
) -> Result<Json<crate::metrics::Savings>, ApiError> {
    let primaries = state.db.read(|s| s.primary_prices()).await?;
    Ok(Json(crate::metrics::savings(
        &primaries,
        &state.config.on_demand_dollars(),
    )))
}
