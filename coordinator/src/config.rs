//! Coordinator configuration: defaults < TOML file < environment < flags.
//!
//! Flags and environment variables come from clap (a flag beats its env
//! var); the TOML file fills what neither gave; defaults fill the rest. An
//! unknown key in the file is an error, so a typo never silently falls back
//! to a default.

use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use spot_runtime::config::ConfigError;

/// Options of `serve` and `validate`. Every option is optional here so that
/// the file can fill what the command line and environment left out.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file; keys are the long option names with `_` for `-`.
    #[arg(long, env = "SPOT_COORDINATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080]. Port 0 picks a free
    /// port; the chosen address is logged and written to
    /// <data-dir>/listen.addr.
    #[arg(long, env = "SPOT_COORDINATOR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the database, tokens and listen.addr [default: ./data].
    #[arg(long, env = "SPOT_COORDINATOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Fleet enrollment token agents register with. Generated, printed once
    /// and kept in <data-dir>/enrollment.token when absent.
    #[arg(
        long,
        env = "SPOT_COORDINATOR_ENROLLMENT_TOKEN",
        hide_env_values = true
    )]
    pub enrollment_token: Option<String>,
    /// Operator API token. Generated, printed once and kept in
    /// <data-dir>/admin.token when absent.
    #[arg(long, env = "SPOT_COORDINATOR_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Interval agents are told to heartbeat at [default: 5s].
    #[arg(long, env = "SPOT_COORDINATOR_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Heartbeats missed in a row before an agent is OFFLINE [default: 3].
    #[arg(long, env = "SPOT_COORDINATOR_MISSED_HEARTBEATS")]
    pub missed_heartbeats: Option<u32>,
    /// PRIMARY lease granted by each heartbeat [default: 15s].
    #[arg(long, env = "SPOT_COORDINATOR_LEASE", value_parser = humantime::parse_duration)]
    pub lease: Option<Duration>,
    /// A delivered command with no result is handed out again after this
    /// [default: 30s].
    #[arg(long, env = "SPOT_COORDINATOR_REDELIVER_AFTER", value_parser = humantime::parse_duration)]
    pub redeliver_after: Option<Duration>,
    /// At most one proactive (rebalance) launch per group per window
    /// [default: 10m].
    #[arg(long, env = "SPOT_COORDINATOR_REBALANCE_WINDOW", value_parser = humantime::parse_duration)]
    pub rebalance_window: Option<Duration>,
    /// A PRIMARY with scheduled maintenance is switched to a REPLICA this
    /// long before the maintenance's NotBefore [default: 10m].
    #[arg(long, env = "SPOT_COORDINATOR_MAINTENANCE_LEAD", value_parser = humantime::parse_duration)]
    pub maintenance_lead: Option<Duration>,
    /// How often the decision engine looks at every group whose
    /// `decisions` mode is `shadow` or `auto` (also after every price
    /// consolidation) [default: 5m].
    #[arg(long, env = "SPOT_COORDINATOR_DECISION_INTERVAL", value_parser = humantime::parse_duration)]
    pub decision_interval: Option<Duration>,
    /// An external decision model: the input is POSTed to this URL as
    /// JSON (docs/decision-schema.json); a late, failed or invalid answer
    /// falls back to the built-in model [default: none, built-in only].
    #[arg(long, env = "SPOT_COORDINATOR_DECISION_MODEL_URL")]
    pub decision_model_url: Option<String>,
    /// How long the external model may take [default: 500ms].
    #[arg(long, env = "SPOT_COORDINATOR_DECISION_MODEL_TIMEOUT", value_parser = humantime::parse_duration)]
    pub decision_model_timeout: Option<Duration>,
    /// With an external model: the share of groups (0-1, by a stable hash
    /// of their name) it decides for; the others, and every group whose
    /// config says `model = "builtin"`, get the built-in model (A/B)
    /// [default: 1, all].
    #[arg(long, env = "SPOT_COORDINATOR_DECISION_AB_SPLIT")]
    pub decision_ab_split: Option<f64>,
    /// A promoted candidate must confirm within this, else the next one is
    /// tried [default: 30s].
    #[arg(long, env = "SPOT_COORDINATOR_PROMOTION_TIMEOUT", value_parser = humantime::parse_duration)]
    pub promotion_timeout: Option<Duration>,
    /// How often staged spot prices are consolidated [default: 12h].
    #[arg(long, env = "SPOT_COORDINATOR_CONSOLIDATE_INTERVAL", value_parser = humantime::parse_duration)]
    pub consolidate_interval: Option<Duration>,
    /// Longest gap between two price points that is filled (interpolated);
    /// longer gaps stay empty [default: 24h].
    #[arg(long, env = "SPOT_COORDINATOR_PRICE_MAX_GAP", value_parser = humantime::parse_duration)]
    pub price_max_gap: Option<Duration>,
    /// Raw price reports are kept this long after consolidation [default: 14d].
    #[arg(long, env = "SPOT_COORDINATOR_STAGING_RETENTION", value_parser = humantime::parse_duration)]
    pub staging_retention: Option<Duration>,
    /// Canonical hourly prices are kept this long, at least 92d [default: 100d].
    #[arg(long, env = "SPOT_COORDINATOR_PRICE_RETENTION", value_parser = humantime::parse_duration)]
    pub price_retention: Option<Duration>,
    /// A fence target whose demotion is not acknowledged within this is
    /// fenced through EC2 (STONITH) [default: 15s].
    #[arg(long, env = "SPOT_COORDINATOR_DEMOTE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub demote_timeout: Option<Duration>,
    /// Longest an EC2 fence may take (terminate, then wait for
    /// `terminated`) before it is tried again [default: 60s].
    #[arg(long, env = "SPOT_COORDINATOR_FENCE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub fence_timeout: Option<Duration>,
    /// Let the coordinator make EC2 calls itself (fences and launches no
    /// live agent can make: a lone PRIMARY lost, a group that lost every
    /// instance), with the credentials of its own environment and the
    /// tag-scoped policy in packaging/iam-policy-coordinator.json
    /// [default: off].
    #[arg(long, env = "SPOT_COORDINATOR_EC2_EXECUTOR", num_args = 0..=1, default_missing_value = "true")]
    pub ec2_executor: Option<bool>,
    /// Region of the coordinator's EC2 executor [default: $AWS_REGION,
    /// else us-east-1].
    #[arg(long, env = "SPOT_COORDINATOR_EC2_REGION")]
    pub ec2_region: Option<String>,
    /// On SIGTERM, the longest wait for tasks to finish (long-polls
    /// answered, heartbeats persisted) [default: 10s].
    #[arg(long, env = "SPOT_COORDINATOR_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key; both
    /// re-read on SIGHUP) [default: plain HTTP].
    #[arg(long, env = "SPOT_COORDINATOR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "SPOT_COORDINATOR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM bundle of the CA(s) that sign agents' client certificates: the
    /// agent API then also requires a client certificate (mTLS, on top of
    /// the agent's token); operators and the dashboard need none.
    #[arg(long, env = "SPOT_COORDINATOR_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// TEST BUILDS ONLY: take an instance silent past its lease for dead
    /// (no fence). It breaks the fencing rule on purpose, so a test can
    /// show the checker catching two serving PRIMARIES.
    #[cfg(feature = "failpoints")]
    #[arg(long, hide = true)]
    pub unsafe_silence_is_death: bool,
}

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

/// HTTPS: PEM files, re-read on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle for agents' client certificates (mTLS on the agent API).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub enrollment_token: Option<String>,
    pub admin_token: Option<String>,
    pub heartbeat_interval: Duration,
    pub missed_heartbeats: u32,
    pub lease: Duration,
    pub redeliver_after: Duration,
    pub rebalance_window: Duration,
    pub maintenance_lead: Duration,
    pub decision_interval: Duration,
    pub decision_model_url: Option<String>,
    pub decision_model_timeout: Duration,
    pub decision_ab_split: f64,
    /// `[decisions]`: the built-in model's knobs.
    pub decisions: spot_common::decision::builtin::Params,
    pub promotion_timeout: Duration,
    pub consolidate_interval: Duration,
    pub price_max_gap: Duration,
    pub staging_retention: Duration,
    pub price_retention: Duration,
    pub demote_timeout: Duration,
    pub fence_timeout: Duration,
    pub ec2_executor: bool,
    pub ec2_region: String,
    pub shutdown_timeout: Duration,
    /// Test builds only (see `ServeArgs`); always false otherwise.
    pub unsafe_silence_is_death: bool,
    /// Instance type -> on-demand hourly price (decimal string).
    pub on_demand_prices: std::collections::BTreeMap<String, String>,
    /// `[retention]`: how long each growing table keeps its rows.
    pub retention: crate::store::Retention,
    /// `[tls]`: HTTPS (and mTLS for agents); `None` serves plain HTTP.
    pub tls: Option<TlsConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            enrollment_token: None,
            admin_token: None,
            // 5 s: an emergency still reaches the agent at once through the
            // long-poll; heartbeats only carry liveness and the lease.
            heartbeat_interval: Duration::from_secs(5),
            // 3: one lost packet must not mark an agent offline.
            missed_heartbeats: 3,
            // Three heartbeats: a PRIMARY survives two lost renewals.
            lease: Duration::from_secs(15),
            redeliver_after: Duration::from_secs(30),
            // Rebalance recommendations can repeat while capacity is tight:
            // one proactive launch per 10 minutes damps the thrash.
            rebalance_window: Duration::from_secs(600),
            // Long enough to fence and promote with slack; short enough to
            // stay on the current pool as long as it is safe.
            maintenance_lead: Duration::from_secs(600),
            // Prices move hourly at most; 5 minutes sees a change soon
            // enough and costs little (a pass over 1,000 groups is cheap).
            decision_interval: Duration::from_secs(300),
            decision_model_url: None,
            // A model is a lookup, not a batch job: half a second is
            // plenty, and a pass over 1,000 groups stays bounded.
            decision_model_timeout: Duration::from_millis(500),
            decision_ab_split: 1.0,
            decisions: spot_common::decision::builtin::Params::default(),
            promotion_timeout: Duration::from_secs(30),
            consolidate_interval: Duration::from_secs(12 * 3600),
            price_max_gap: Duration::from_secs(24 * 3600),
            staging_retention: Duration::from_secs(14 * 86_400),
            price_retention: Duration::from_secs(100 * 86_400),
            // Three heartbeats: a live agent answers a demotion in one
            // heartbeat at most (long-poll); a hook gets the rest.
            demote_timeout: Duration::from_secs(15),
            // TerminateInstances answers in seconds; `terminated` takes
            // from seconds to about a minute on AWS.
            fence_timeout: Duration::from_secs(60),
            ec2_executor: false,
            ec2_region: "us-east-1".into(),
            // Long enough to persist the last heartbeats and answer every
            // long-poll; short enough for systemd's default stop timeout.
            shutdown_timeout: Duration::from_secs(10),
            unsafe_silence_is_death: false,
            on_demand_prices: std::collections::BTreeMap::new(),
            retention: crate::store::Retention::default(),
            tls: None,
        }
    }
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

    /// Checks every value and the timing relations the protocol needs
    /// (docs/STATE_MACHINE.md, "Timing relations"); each error says which
    /// relation broke and with which values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.heartbeat_interval < Duration::from_millis(100) {
            return bad("heartbeat_interval must be at least 100ms");
        }
        if self.missed_heartbeats == 0 {
            return bad("missed_heartbeats must be at least 1");
        }
        for (ok, relation) in [
            (
                self.lease >= self.heartbeat_interval * 2,
                "lease >= 2 x heartbeat_interval (one lost heartbeat must not cost the lease)",
            ),
            (
                self.offline_after() <= self.lease_expiry(),
                "heartbeat_interval x missed_heartbeats <= lease + heartbeat_interval + 1s (an agent silent past its lease is OFFLINE)",
            ),
            (
                self.demote_timeout >= self.heartbeat_interval * 2,
                "demote_timeout >= 2 x heartbeat_interval (a demotion reaches a live agent and is answered)",
            ),
            (
                self.promotion_timeout >= self.heartbeat_interval * 2 + Duration::from_secs(5),
                "promotion_timeout >= 2 x heartbeat_interval + 5s (the agent's promote deadline is promotion_timeout - 5s)",
            ),
            (
                self.fence_timeout >= Duration::from_secs(10),
                "fence_timeout >= 10s (EC2 needs seconds to terminate an instance)",
            ),
        ] {
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "timing relation broken: {relation}; got heartbeat_interval {}, missed_heartbeats {}, lease {}, demote_timeout {}, promotion_timeout {}, fence_timeout {}",
                    humantime::format_duration(self.heartbeat_interval),
                    self.missed_heartbeats,
                    humantime::format_duration(self.lease),
                    humantime::format_duration(self.demote_timeout),
                    humantime::format_duration(self.promotion_timeout),
                    humantime::format_duration(self.fence_timeout),
                )));
            }
        }
        if self.price_retention < Duration::from_secs(92 * 86_400) {
            return bad("price_retention must be at least 92d (3 months of training data)");
        }
        self.retention.validate().map_err(ConfigError::Invalid)?;
        self.decisions.validate().map_err(ConfigError::Invalid)?;
        if self.decision_interval < Duration::from_secs(1) {
            return bad("decision_interval must be at least 1s");
        }
        if let Some(url) = &self.decision_model_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "decision_model_url {url:?} must be an http:// or https:// URL"
            )));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60))
            .contains(&self.decision_model_timeout)
        {
            return bad("decision_model_timeout must be 10ms-60s");
        }
        if !(0.0..=1.0).contains(&self.decision_ab_split) {
            return bad("decision_ab_split must be between 0 and 1");
        }
        if self.price_max_gap < Duration::from_secs(3600) {
            return bad("price_max_gap must be at least 1h");
        }
        if self.consolidate_interval < Duration::from_secs(1) {
            return bad("consolidate_interval must be at least 1s");
        }
        for (t, p) in &self.on_demand_prices {
            if spot_common::pricing::parse_price(p).is_err() {
                return Err(ConfigError::Invalid(format!(
                    "on_demand_prices.{t}: {p:?} is not a price"
                )));
            }
        }
        for (name, t) in [
            ("enrollment_token", &self.enrollment_token),
            ("admin_token", &self.admin_token),
        ] {
            if let Some(t) = t
                && t.len() < 16
            {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be at least 16 characters"
                )));
            }
        }
        Ok(())
    }

    /// On-demand prices in dollars per hour, by instance type.
    pub fn on_demand_dollars(&self) -> std::collections::BTreeMap<String, f64> {
        self.on_demand_prices
            .iter()
            .filter_map(|(t, p)| {
                let m = spot_common::pricing::parse_price(p).ok()?;
                Some((t.clone(), spot_common::pricing::to_dollars(m)))
            })
            .collect()
    }

    pub fn consolidation(&self) -> crate::store::ConsolidationConfig {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        crate::store::ConsolidationConfig {
            max_gap_ms: ms(self.price_max_gap),
            staging_retention_ms: ms(self.staging_retention),
            canonical_retention_ms: ms(self.price_retention),
        }
    }

    /// Silence after which a PRIMARY is presumed lost and replaced (it is
    /// fenced through EC2 before anything is granted): its lease plus one
    /// heartbeat interval plus 1 s of margin.
    pub fn lease_expiry(&self) -> Duration {
        self.lease + self.heartbeat_interval + Duration::from_secs(1)
    }

    /// How long a granted candidate has to finish its promotion: the
    /// promotion timeout minus 5 s, so the agent gives up (and reports)
    /// before the coordinator rolls the promotion over.
    pub fn promote_budget_ms(&self) -> i64 {
        let d = self
            .promotion_timeout
            .saturating_sub(Duration::from_secs(5));
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }

    /// Silence after which an agent is OFFLINE.
    pub fn offline_after(&self) -> Duration {
        self.heartbeat_interval * self.missed_heartbeats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    /// Load a config file that says `text`, with no flags.
    fn load(text: &str) -> Result<Config, ConfigError> {
        let (_d, p) = write(text);
        Config::load(&ServeArgs {
            config: Some(p),
            ..ServeArgs::default()
        })
    }

    #[test]
    fn defaults_run_with_no_config() {
        let c = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.offline_after(), Duration::from_secs(15));
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let (_d, p) = write("listen = \"127.0.0.1:9000\"\nheartbeat_interval = \"2s\"\n");
        let args = ServeArgs {
            config: Some(p),
            listen: Some("127.0.0.1:9999".parse().unwrap()),
            ..ServeArgs::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = load("hearbeat_interval = \"2s\"\n").unwrap_err();
        let chain = format!("{:?}", anyhow_chain(&err));
        assert!(chain.contains("hearbeat_interval"), "{chain}");
    }

    #[test]
    fn timing_relations_are_checked() {
        let c = Config {
            lease: Duration::from_secs(6),
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("missed_heartbeats"), "{e}");
        let c = Config {
            promotion_timeout: Duration::from_secs(8),
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("promotion_timeout >= 2 x heartbeat_interval + 5s"),
            "{e}"
        );
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn retention_keys_override_their_defaults_only_and_are_checked() {
        let c = load("[retention]\nevents = \"7d\"\nbatch = 100\n").unwrap();
        assert_eq!(c.retention.events, Duration::from_secs(7 * 86_400));
        assert_eq!(c.retention.batch, 100);
        assert_eq!(c.retention.audit, Duration::from_secs(400 * 86_400));
        for bad in [
            "[retention]\nevnts = \"7d\"\n",
            "[retention]\naudit = \"10m\"\n",
            "[retention]\nidempotency = \"2h\"\n",
            "[retention]\nbatch = 0\n",
        ] {
            let e = load(bad).unwrap_err();
            let chain = anyhow_chain(&e);
            assert!(
                chain.contains("ev") || chain.contains("retention."),
                "{bad}: {chain}"
            );
        }
    }

    #[test]
    fn short_token_is_refused() {
        let args = ServeArgs {
            admin_token: Some("short".into()),
            ..ServeArgs::default()
        };
        assert!(matches!(Config::load(&args), Err(ConfigError::Invalid(_))));
    }

    fn anyhow_chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut src = e.source();
        while let Some(x) = src {
            s.push_str(&format!(": {x}"));
            src = x.source();
        }
        s
    }
}
