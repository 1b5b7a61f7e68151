//! Coordinator configuration: defaults < TOML file < environment < flags.
//!
//! Flags and environment variables come from clap (a flag beats its env
//! var); the TOML file fills what neither gave; defaults fill the rest. An
//! unknown key in the file is an error, so a typo never silently falls back
//! to a default.

mod file;
mod flags;
mod timing;

pub use flags::ServeArgs;

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use spot_runtime::config::ConfigError;

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
    /// Where a client certificate names the instance it speaks for.
    #[serde(default)]
    pub client_identity: ClientIdentity,
}

/// Which name of an agent's client certificate must be its instance id:
/// with `san` or `cn`, a certificate speaks for that instance only (its
/// registration, heartbeats, polls, events), so one instance's key cannot
/// act for another.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientIdentity {
    /// Any certificate the CA signed will do (one certificate for the
    /// whole fleet); the default, so an upgrade keeps working.
    #[default]
    None,
    /// A DNS name of the subject alternative names is the instance id.
    San,
    /// The subject's common name is the instance id.
    Cn,
}

/// How a registration proves the instance it speaks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IdentityMode {
    /// The signed instance identity document, checked against
    /// `identity_ca`: an agent registers only as the instance it runs on.
    #[default]
    Verify,
    /// The request's word: any holder of an enrollment token may register
    /// as any instance. For simulators and metadata mocks that cannot sign.
    Trust,
}

impl IdentityMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityMode::Verify => "verify",
            IdentityMode::Trust => "trust",
        }
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `store_url`: SQLite (default, in the data dir) or PostgreSQL.
    pub store_url: crate::store::StoreUrl,
    /// `advertise_url`: how others reach this coordinator (`None`: from
    /// `listen`, see [`Config::advertised`]).
    pub advertise_url: Option<String>,
    /// `leader_lease`: the leader's lease on PostgreSQL.
    pub leader_lease: Duration,
    /// `peer_ca_bundle`: trust for a follower's proxy to the leader.
    pub peer_ca_bundle: Option<PathBuf>,
    pub enrollment_token: Option<String>,
    /// The fleet enrollment token registers agents (else only group
    /// tokens do).
    pub fleet_enrollment: bool,
    /// Registrations per second per source address (0: no limit).
    pub registrations_per_source: u32,
    /// `identity`: verify the signed identity document, or trust the body.
    pub identity: IdentityMode,
    /// `identity_ca`: the certificates identity documents are signed by.
    pub identity_ca: Option<PathBuf>,
    /// `allowed_accounts`: empty allows any.
    pub allowed_accounts: Vec<String>,
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
            store_url: crate::store::StoreUrl::Sqlite(PathBuf::from("data/coordinator.db")),
            advertise_url: None,
            // 10 s: a kill -9 costs lease + one look (0.5 s) before the new
            // leader writes, well inside a 2-minute notice even with the
            // settle that follows; a renewal every 2.5 s has three more
            // chances before the lease runs out on a slow database.
            leader_lease: Duration::from_secs(10),
            peer_ca_bundle: None,
            enrollment_token: None,
            // True: a fleet that upgrades keeps enrolling; operators who
            // hand each group its own token turn it off.
            fleet_enrollment: true,
            // 20/s, bursts of 200: far above one instance's retries, far
            // below a forger minting identities from one address.
            registrations_per_source: 20,
            // Verify: the trust issue's whole point is that an enrollment
            // token alone no longer lets a process speak for any instance.
            identity: IdentityMode::Verify,
            identity_ca: None,
            allowed_accounts: Vec::new(),
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

    /// The URL this coordinator is reached at: `advertise_url`, else
    /// http(s)://<listen> (with the bound port once known).
    pub fn advertised(&self, bound: SocketAddr) -> String {
        match &self.advertise_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{bound}")
            }
        }
    }

    /// When a leader stops acting without a renewal: the lease minus a
    /// margin for clocks that run at slightly different rates and for
    /// scheduling (a fifth of the lease, at least 1 s), measured on its
    /// own monotonic clock from when it *sent* the renewal.
    pub fn leader_acting_for(&self) -> Duration {
        let margin = (self.leader_lease / 5).max(Duration::from_secs(1));
        self.leader_lease.saturating_sub(margin)
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
