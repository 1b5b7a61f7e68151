//! Prices on the wire: what agents report, what the operator API serves
//! (hourly series, costs, consolidation runs).

use crate::command::PricePoint;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingRequest {
    pub points: Vec<PricePoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PricingResponse {
    pub accepted: usize,
    /// Exact duplicates of rows already staged: dropped.
    pub duplicates: usize,
}

/// Largest pricing batch.
pub const MAX_PRICE_POINTS: usize = 5000;

/// What an agent should capture prices for (in the heartbeat answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PricingHint {
    pub instance_types: Vec<String>,
    pub availability_zones: Vec<String>,
    pub product_description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HourlyPrice {
    /// RFC 3339 start of the hour.
    pub hour: String,
    pub price: String,
    pub interpolated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolSeries {
    pub instance_type: String,
    pub availability_zone: String,
    pub product_description: String,
    pub points: Vec<HourlyPrice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupCost {
    pub instance_type: String,
    pub availability_zone: String,
    /// Latest canonical hourly spot price of the PRIMARY's pool.
    pub spot_price: Option<String>,
    pub on_demand_price: Option<String>,
    /// 1 - spot / on-demand, in percent.
    pub savings_percent: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupPrices {
    pub group: String,
    pub from: String,
    pub to: String,
    pub pools: Vec<PoolSeries>,
    pub cost: Option<GroupCost>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsolidationRun {
    pub id: i64,
    pub started_at_ms: i64,
    pub duration_ms: i64,
    pub pools: i64,
    pub rows_read: i64,
    pub duplicates_dropped: i64,
    pub conflicts_median: i64,
    pub primary_precedence: i64,
    pub points_interpolated: i64,
    pub hours_written: i64,
    pub staging_pruned: i64,
}
