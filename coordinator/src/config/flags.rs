//! The command line: `serve` and `validate` options, each optional so the
//! file can fill what the flags and environment left out.

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Where the store is: sqlite:PATH (embedded, one coordinator) or
    /// postgres://USER@HOST/DB?sslmode=verify-full&sslrootcert=CA.pem (two
    /// or three coordinators share it; one leads)
    /// [default: sqlite:<data-dir>/coordinator.db].
    #[arg(long, env = "SPOT_COORDINATOR_STORE_URL", hide_env_values = true)]
    pub store_url: Option<crate::store::StoreUrl>,
    /// The URL other coordinators, agents and operators reach this one at
    /// (followers send agents to the leader's, and proxy operators to it)
    /// [default: http(s)://<listen>].
    #[arg(long, env = "SPOT_COORDINATOR_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// On PostgreSQL: the leader's lease, renewed on the database's clock
    /// every quarter of it; a follower takes over once it ran out
    /// [default: 10s].
    #[arg(long, env = "SPOT_COORDINATOR_LEADER_LEASE", value_parser = humantime::parse_duration)]
    pub leader_lease: Option<Duration>,
    /// PEM bundle trusted when a follower proxies to the leader over HTTPS
    /// (besides the system's roots) [default: none].
    #[arg(long, env = "SPOT_COORDINATOR_PEER_CA_BUNDLE")]
    pub peer_ca_bundle: Option<PathBuf>,
    /// Fleet enrollment token agents register with. Generated, printed once
    /// and kept in <data-dir>/enrollment.token when absent.
    #[arg(
        long,
        env = "SPOT_COORDINATOR_ENROLLMENT_TOKEN",
        hide_env_values = true
    )]
    pub enrollment_token: Option<String>,
    /// Whether the fleet enrollment token registers agents at all: false
    /// leaves only the group-scoped tokens (`token create --enroll --group
    /// NAME`), so one instance's user data cannot join another group
    /// [default: true].
    #[arg(long, env = "SPOT_COORDINATOR_FLEET_ENROLLMENT")]
    pub fleet_enrollment: Option<bool>,
    /// Registrations per second one source address may make (bursts of
    /// ten times that); 0 is no limit. A fleet registers from as many
    /// addresses as instances [default: 20].
    #[arg(long, env = "SPOT_COORDINATOR_REGISTRATIONS_PER_SOURCE")]
    pub registrations_per_source: Option<u32>,
    /// How a registration proves which instance it speaks for: verify (the
    /// signed instance identity document, checked against --identity-ca;
    /// instance id, type, zone, region and account are taken from it) or
    /// trust (the request's own word: for simulators and metadata mocks
    /// that cannot sign) [default: verify].
    #[arg(long, env = "SPOT_COORDINATOR_IDENTITY", value_enum)]
    pub identity: Option<super::IdentityMode>,
    /// PEM bundle of the certificates that sign instance identity
    /// documents: AWS's RSA-2048 certificates of the regions the fleet
    /// runs in (see docs/OPERATIONS.md), or a test signer's.
    #[arg(long, env = "SPOT_COORDINATOR_IDENTITY_CA")]
    pub identity_ca: Option<PathBuf>,
    /// AWS accounts whose instances may register, comma-separated; empty
    /// allows any account a verified document names.
    #[arg(long, env = "SPOT_COORDINATOR_ALLOWED_ACCOUNTS", value_delimiter = ',')]
    pub allowed_accounts: Option<Vec<String>>,
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
    /// Which name of an agent's client certificate must be its instance
    /// id: none (any certificate the CA signed), san (a DNS name of the
    /// subject alternative names) or cn (the subject's common name)
    /// [default: none].
    #[arg(long, env = "SPOT_COORDINATOR_TLS_CLIENT_IDENTITY", value_enum)]
    pub tls_client_identity: Option<super::ClientIdentity>,
    /// TEST BUILDS ONLY: take an instance silent past its lease for dead
    /// (no fence). It breaks the fencing rule on purpose, so a test can
    /// show the checker catching two serving PRIMARIES.
    #[cfg(feature = "failpoints")]
    #[arg(long, hide = true)]
    pub unsafe_silence_is_death: bool,
}
