//! The TOML file and the merge: defaults < file < environment < flags.

use super::{Config, ConfigError, ServeArgs, TlsConfig};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    enrollment_token: Option<String>,
    admin_token: Option<String>,
    #[serde(default, with = "humantime_serde")]
    heartbeat_interval: Option<Duration>,
    missed_heartbeats: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    lease: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    redeliver_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    rebalance_window: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    maintenance_lead: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    decision_interval: Option<Duration>,
    decision_model_url: Option<String>,
    #[serde(default, with = "humantime_serde")]
    decision_model_timeout: Option<Duration>,
    decision_ab_split: Option<f64>,
    /// The built-in model's knobs.
    #[serde(default)]
    decisions: spot_common::decision::builtin::Params,
    #[serde(default, with = "humantime_serde")]
    promotion_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    consolidate_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    price_max_gap: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    staging_retention: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    price_retention: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    demote_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    fence_timeout: Option<Duration>,
    ec2_executor: Option<bool>,
    ec2_region: Option<String>,
    #[serde(default, with = "humantime_serde")]
    shutdown_timeout: Option<Duration>,
    /// On-demand hourly prices per instance type, for the savings figures.
    #[serde(default)]
    on_demand_prices: std::collections::BTreeMap<String, String>,
    /// How long each growing table keeps its rows (any key left out keeps
    /// its default).
    #[serde(default)]
    retention: crate::store::Retention,
    /// `[tls]`: serve HTTPS.
    tls: Option<TlsConfig>,
}

impl Config {
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => spot_runtime::config::read_toml(path)?,
            None => FileConfig::default(),
        };
        let d = Config::default();
        let c = Config {
            listen: args.listen.or(file.listen).unwrap_or(d.listen),
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or(d.data_dir),
            enrollment_token: args.enrollment_token.clone().or(file.enrollment_token),
            admin_token: args.admin_token.clone().or(file.admin_token),
            heartbeat_interval: args
                .heartbeat_interval
                .or(file.heartbeat_interval)
                .unwrap_or(d.heartbeat_interval),
            missed_heartbeats: args
                .missed_heartbeats
                .or(file.missed_heartbeats)
                .unwrap_or(d.missed_heartbeats),
            lease: args.lease.or(file.lease).unwrap_or(d.lease),
            redeliver_after: args
                .redeliver_after
                .or(file.redeliver_after)
                .unwrap_or(d.redeliver_after),
            rebalance_window: args
                .rebalance_window
                .or(file.rebalance_window)
                .unwrap_or(d.rebalance_window),
            maintenance_lead: args
                .maintenance_lead
                .or(file.maintenance_lead)
                .unwrap_or(d.maintenance_lead),
            decision_interval: args
                .decision_interval
                .or(file.decision_interval)
                .unwrap_or(d.decision_interval),
            decision_model_url: args.decision_model_url.clone().or(file.decision_model_url),
            decision_model_timeout: args
                .decision_model_timeout
                .or(file.decision_model_timeout)
                .unwrap_or(d.decision_model_timeout),
            decision_ab_split: args
                .decision_ab_split
                .or(file.decision_ab_split)
                .unwrap_or(d.decision_ab_split),
            decisions: file.decisions,
            promotion_timeout: args
                .promotion_timeout
                .or(file.promotion_timeout)
                .unwrap_or(d.promotion_timeout),
            consolidate_interval: args
                .consolidate_interval
                .or(file.consolidate_interval)
                .unwrap_or(d.consolidate_interval),
            price_max_gap: args
                .price_max_gap
                .or(file.price_max_gap)
                .unwrap_or(d.price_max_gap),
            staging_retention: args
                .staging_retention
                .or(file.staging_retention)
                .unwrap_or(d.staging_retention),
            price_retention: args
                .price_retention
                .or(file.price_retention)
                .unwrap_or(d.price_retention),
            demote_timeout: args
                .demote_timeout
                .or(file.demote_timeout)
                .unwrap_or(d.demote_timeout),
            fence_timeout: args
                .fence_timeout
                .or(file.fence_timeout)
                .unwrap_or(d.fence_timeout),
            ec2_executor: args
                .ec2_executor
                .or(file.ec2_executor)
                .unwrap_or(d.ec2_executor),
            ec2_region: args
                .ec2_region
                .clone()
                .or(file.ec2_region)
                .or_else(|| std::env::var("AWS_REGION").ok())
                .unwrap_or(d.ec2_region),
            shutdown_timeout: args
                .shutdown_timeout
                .or(file.shutdown_timeout)
                .unwrap_or(d.shutdown_timeout),
            #[cfg(feature = "failpoints")]
            unsafe_silence_is_death: args.unsafe_silence_is_death,
            #[cfg(not(feature = "failpoints"))]
            unsafe_silence_is_death: false,
            on_demand_prices: file.on_demand_prices,
            retention: file.retention,
            tls: match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => Some(TlsConfig {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: args
                        .tls_client_ca
                        .clone()
                        .or(file.tls.and_then(|t| t.client_ca)),
                }),
                _ => file.tls,
            },
        };
        c.validate()?;
        Ok(c)
    }
}
