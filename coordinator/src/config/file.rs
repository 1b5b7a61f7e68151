//! The TOML file and the merge: defaults < file < environment < flags.

use super::{Config, ConfigError, IdentityMode, ServeArgs, TlsConfig};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    store_url: Option<String>,
    advertise_url: Option<String>,
    #[serde(default, with = "humantime_serde")]
    leader_lease: Option<Duration>,
    peer_ca_bundle: Option<PathBuf>,
    enrollment_token: Option<String>,
    fleet_enrollment: Option<bool>,
    registrations_per_source: Option<u32>,
    identity: Option<IdentityMode>,
    identity_ca: Option<PathBuf>,
    allowed_accounts: Option<Vec<String>>,
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
        // A flag (or its environment variable) over the file over the default.
        macro_rules! layered {
            ($field:ident) => {
                args.$field.clone().or(file.$field).unwrap_or(d.$field)
            };
        }
        let data_dir = layered!(data_dir);
        let store_url = match (&args.store_url, &file.store_url) {
            (Some(u), _) => u.clone(),
            (None, Some(u)) => u
                .parse()
                .map_err(|e: String| ConfigError::Invalid(format!("store_url: {e}")))?,
            (None, None) => crate::store::StoreUrl::Sqlite(data_dir.join("coordinator.db")),
        };
        let c = Config {
            listen: layered!(listen),
            store_url,
            advertise_url: args.advertise_url.clone().or(file.advertise_url),
            leader_lease: layered!(leader_lease),
            peer_ca_bundle: args.peer_ca_bundle.clone().or(file.peer_ca_bundle),
            data_dir,
            enrollment_token: args.enrollment_token.clone().or(file.enrollment_token),
            fleet_enrollment: layered!(fleet_enrollment),
            registrations_per_source: layered!(registrations_per_source),
            identity: layered!(identity),
            identity_ca: args.identity_ca.clone().or(file.identity_ca),
            allowed_accounts: layered!(allowed_accounts),
            admin_token: args.admin_token.clone().or(file.admin_token),
            heartbeat_interval: layered!(heartbeat_interval),
            missed_heartbeats: layered!(missed_heartbeats),
            lease: layered!(lease),
            redeliver_after: layered!(redeliver_after),
            rebalance_window: layered!(rebalance_window),
            maintenance_lead: layered!(maintenance_lead),
            decision_interval: layered!(decision_interval),
            decision_model_url: args.decision_model_url.clone().or(file.decision_model_url),
            decision_model_timeout: layered!(decision_model_timeout),
            decision_ab_split: layered!(decision_ab_split),
            decisions: file.decisions,
            promotion_timeout: layered!(promotion_timeout),
            consolidate_interval: layered!(consolidate_interval),
            price_max_gap: layered!(price_max_gap),
            staging_retention: layered!(staging_retention),
            price_retention: layered!(price_retention),
            demote_timeout: layered!(demote_timeout),
            fence_timeout: layered!(fence_timeout),
            ec2_executor: layered!(ec2_executor),
            ec2_region: args
                .ec2_region
                .clone()
                .or(file.ec2_region)
                .or_else(|| std::env::var("AWS_REGION").ok())
                .unwrap_or(d.ec2_region),
            shutdown_timeout: layered!(shutdown_timeout),
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
                        .or(file.tls.as_ref().and_then(|t| t.client_ca.clone())),
                    client_identity: args
                        .tls_client_identity
                        .or(file.tls.map(|t| t.client_identity))
                        .unwrap_or_default(),
                }),
                _ => file.tls.map(|mut t| {
                    if let Some(i) = args.tls_client_identity {
                        t.client_identity = i;
                    }
                    t
                }),
            },
        };
        c.validate()?;
        Ok(c)
    }
}
