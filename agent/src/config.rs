//! Agent configuration: defaults < TOML file < environment < flags.
//!
//! Every key of `agent.toml` is also a `--flag` and a `SPOT_AGENT_*`
//! environment variable; durations take the usual human form (`1s`,
//! `500ms`). Unknown keys in the file are errors.

use crate::hooks::HealthCheck;
use clap::Args;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use spot_runtime::config::ConfigError;

#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML config file [default: /etc/spot-agent/agent.toml when it exists].
    #[arg(long, env = "SPOT_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Coordinator base URL, e.g. http://coordinator.internal:8080, or
    /// several, comma-separated (coordinators sharing one PostgreSQL): the
    /// agent moves on to the next when one stops answering, and follows a
    /// follower's redirect to the leader (required).
    #[arg(long, env = "SPOT_AGENT_COORDINATOR_URL")]
    pub coordinator_url: Option<String>,
    /// Fleet enrollment token (required until the agent has registered).
    #[arg(long, env = "SPOT_AGENT_ENROLLMENT_TOKEN", hide_env_values = true)]
    pub enrollment_token: Option<String>,
    /// Directory of the journal [default: /var/lib/spot-agent].
    #[arg(long, env = "SPOT_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Group this instance belongs to; overrides the `spot:group` instance
    /// tag (read from metadata when tags in metadata are enabled).
    #[arg(long, env = "SPOT_AGENT_GROUP")]
    pub group: Option<String>,
    /// How often IMDS is polled for notices [default: 1s].
    #[arg(long, env = "SPOT_AGENT_IMDS_POLL_INTERVAL", value_parser = humantime::parse_duration)]
    pub imds_poll_interval: Option<Duration>,
    /// IMDS base URL [default: AWS_EC2_METADATA_SERVICE_ENDPOINT, else
    /// http://169.254.169.254].
    #[arg(long, env = "SPOT_AGENT_IMDS_ENDPOINT")]
    pub imds_endpoint: Option<String>,
    /// Directory of the `promote` and `demote` hooks [default: /etc/spot-agent/hooks].
    #[arg(long, env = "SPOT_AGENT_HOOKS_DIR")]
    pub hooks_dir: Option<PathBuf>,
    /// Longest a hook may run before it is killed [default: 60s].
    #[arg(long, env = "SPOT_AGENT_HOOK_TIMEOUT", value_parser = humantime::parse_duration)]
    pub hook_timeout: Option<Duration>,
    /// Health check: HTTP URL answered 2xx when the workload is healthy.
    #[arg(long, env = "SPOT_AGENT_HEALTH_URL")]
    pub health_url: Option<String>,
    /// Health check: command (split on spaces, no shell) exiting 0 when healthy.
    #[arg(long, env = "SPOT_AGENT_HEALTH_COMMAND")]
    pub health_command: Option<String>,
    /// Health check timeout [default: 5s].
    #[arg(long, env = "SPOT_AGENT_HEALTH_TIMEOUT", value_parser = humantime::parse_duration)]
    pub health_timeout: Option<Duration>,
    /// Longest wait of one command long-poll [default: 25s].
    #[arg(long, env = "SPOT_AGENT_POLL_WAIT", value_parser = humantime::parse_duration)]
    pub poll_wait: Option<Duration>,
    /// How often a PRIMARY or REPLICA reports the EC2 states of its group's
    /// instances (DescribeInstances) [default: 30s].
    #[arg(long, env = "SPOT_AGENT_EC2_WATCH_INTERVAL", value_parser = humantime::parse_duration)]
    pub ec2_watch_interval: Option<Duration>,
    /// On SIGTERM, the longest wait for the running command and the last
    /// delivery to finish [default: 25s].
    #[arg(long, env = "SPOT_AGENT_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// How often spot prices of the group's pools are captured
    /// (DescribeSpotPriceHistory); the first capture backfills 7 days
    /// [default: 10m].
    #[arg(long, env = "SPOT_AGENT_PRICING_INTERVAL", value_parser = humantime::parse_duration)]
    pub pricing_interval: Option<Duration>,
    /// PEM bundle of the CA that signed the coordinator's certificate,
    /// trusted besides the system's roots (a private CA).
    #[arg(long, env = "SPOT_AGENT_COORDINATOR_CA_BUNDLE")]
    pub coordinator_ca_bundle: Option<PathBuf>,
    /// Client certificate (PEM chain) for a coordinator that requires one
    /// (mTLS); with --client-key.
    #[arg(long, env = "SPOT_AGENT_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(long, env = "SPOT_AGENT_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    coordinator_url: Option<Urls>,
    enrollment_token: Option<String>,
    state_dir: Option<PathBuf>,
    group: Option<String>,
    #[serde(default, with = "humantime_serde")]
    imds_poll_interval: Option<Duration>,
    imds_endpoint: Option<String>,
    hooks_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    hook_timeout: Option<Duration>,
    health_url: Option<String>,
    health_command: Option<String>,
    #[serde(default, with = "humantime_serde")]
    health_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    poll_wait: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    ec2_watch_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pricing_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    shutdown_timeout: Option<Duration>,
    coordinator_ca_bundle: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

/// `coordinator_url` in the file: one URL, or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Urls {
    One(String),
    Many(Vec<String>),
}

impl Urls {
    fn joined(self) -> String {
        match self {
            Urls::One(u) => u,
            Urls::Many(v) => v.join(","),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// One URL or several, comma-separated (`coordinator_urls`).
    pub coordinator_url: String,
    pub enrollment_token: Option<String>,
    pub state_dir: PathBuf,
    pub group: Option<String>,
    pub imds_poll_interval: Duration,
    pub imds_endpoint: Option<String>,
    pub hooks_dir: PathBuf,
    pub hook_timeout: Duration,
    pub health: HealthCheck,
    pub poll_wait: Duration,
    pub ec2_watch_interval: Duration,
    pub pricing_interval: Duration,
    pub shutdown_timeout: Duration,
    /// TLS to the coordinator: extra CA, client certificate.
    pub tls: spot_runtime::tls::ClientTls,
}

pub const DEFAULT_CONFIG_PATH: &str = "/etc/spot-agent/agent.toml";

#[cfg(test)]
impl Config {
    /// Defaults with the state and hooks under `dir`, for unit tests.
    pub fn for_tests(dir: &Path) -> Config {
        Config {
            coordinator_url: "http://127.0.0.1:9".into(),
            enrollment_token: Some("enroll".into()),
            state_dir: dir.to_owned(),
            group: Some("g".into()),
            imds_poll_interval: Duration::from_secs(1),
            imds_endpoint: None,
            hooks_dir: dir.join("hooks"),
            hook_timeout: Duration::from_secs(60),
            health: HealthCheck::None,
            poll_wait: Duration::from_secs(25),
            ec2_watch_interval: Duration::from_secs(30),
            pricing_interval: Duration::from_secs(600),
            shutdown_timeout: Duration::from_secs(25),
            tls: spot_runtime::tls::ClientTls::default(),
        }
    }
}

impl Config {
    pub fn load(args: &RunArgs) -> Result<Config, ConfigError> {
        let path = args.config.clone().or_else(|| {
            Path::new(DEFAULT_CONFIG_PATH)
                .exists()
                .then(|| PathBuf::from(DEFAULT_CONFIG_PATH))
        });
        let file = match &path {
            Some(p) => spot_runtime::config::read_toml(p)?,
            None => FileConfig::default(),
        };
        let a = args.clone();
        let health_timeout = a
            .health_timeout
            .or(file.health_timeout)
            .unwrap_or(Duration::from_secs(5));
        let health_url = a.health_url.or(file.health_url);
        let health_command = a.health_command.or(file.health_command);
        let health = match (health_url, health_command) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "set health_url or health_command, not both".into(),
                ));
            }
            (Some(url), None) => HealthCheck::Http {
                url,
                timeout: health_timeout,
            },
            (None, Some(cmd)) => HealthCheck::Command {
                argv: cmd.split_whitespace().map(str::to_owned).collect(),
                timeout: health_timeout,
            },
            (None, None) => HealthCheck::None,
        };
        let c = Config {
            coordinator_url: a
                .coordinator_url
                .or(file.coordinator_url.map(Urls::joined))
                .ok_or_else(|| ConfigError::Invalid("coordinator_url is required".into()))?,
            enrollment_token: a.enrollment_token.or(file.enrollment_token),
            state_dir: a
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from("/var/lib/spot-agent")),
            group: a.group.or(file.group),
            // 1 s: the notice must be journaled within a second of showing up.
            imds_poll_interval: a
                .imds_poll_interval
                .or(file.imds_poll_interval)
                .unwrap_or(Duration::from_secs(1)),
            imds_endpoint: a
                .imds_endpoint
                .or(file.imds_endpoint)
                .or_else(|| std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT").ok()),
            hooks_dir: a
                .hooks_dir
                .or(file.hooks_dir)
                .unwrap_or_else(|| PathBuf::from("/etc/spot-agent/hooks")),
            hook_timeout: a
                .hook_timeout
                .or(file.hook_timeout)
                .unwrap_or(Duration::from_secs(60)),
            health,
            // Under the coordinator's 30 s cap, and under common proxy idle
            // timeouts.
            poll_wait: a
                .poll_wait
                .or(file.poll_wait)
                .unwrap_or(Duration::from_secs(25)),
            // 30 s: an instance EC2 took away is noticed well inside a
            // notice window, at 2 DescribeInstances per minute per agent.
            ec2_watch_interval: a
                .ec2_watch_interval
                .or(file.ec2_watch_interval)
                .unwrap_or(Duration::from_secs(30)),
            pricing_interval: a
                .pricing_interval
                .or(file.pricing_interval)
                .unwrap_or(Duration::from_secs(600)),
            // Under systemd's default 90 s stop timeout, and long enough for
            // a hook to finish.
            shutdown_timeout: a
                .shutdown_timeout
                .or(file.shutdown_timeout)
                .unwrap_or(Duration::from_secs(25)),
            tls: spot_runtime::tls::ClientTls {
                ca_bundle: a.coordinator_ca_bundle.or(file.coordinator_ca_bundle),
                cert: a.client_cert.clone().or(file.client_cert),
                key: a.client_key.clone().or(file.client_key),
            },
        };
        c.validate()?;
        Ok(c)
    }

    /// The coordinator URLs, in the order they are tried.
    pub fn coordinator_urls(&self) -> Vec<String> {
        self.coordinator_url
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("client_cert and client_key go together".into());
        }
        let urls = self.coordinator_urls();
        if urls.is_empty() {
            return bad("coordinator_url is empty".into());
        }
        for u in urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return bad(format!(
                    "coordinator_url {u:?} must start with http:// or https://"
                ));
            }
        }
        if self.imds_poll_interval < Duration::from_millis(100) {
            return bad("imds_poll_interval must be at least 100ms".into());
        }
        if self.poll_wait > Duration::from_secs(30) {
            return bad("poll_wait must be at most 30s (the coordinator's cap)".into());
        }
        if let Some(g) = &self.group
            && let Err(e) = spot_common::validate_group_name(g)
        {
            return bad(e.to_string());
        }
        if let HealthCheck::Command { argv, .. } = &self.health
            && argv.is_empty()
        {
            return bad("health_command is empty".into());
        }
        if let Some(e) = &self.imds_endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return bad(format!("imds_endpoint {e:?} must be an http(s) URL"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str, args: RunArgs) -> Result<Config, ConfigError> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(&RunArgs {
            config: Some(p),
            ..args
        })
    }

    #[test]
    fn file_values_and_flag_overrides() {
        let c = with_file(
            "coordinator_url = \"http://c:8080\"\nimds_poll_interval = \"500ms\"\ngroup = \"db\"\n",
            RunArgs {
                group: Some("cache".into()),
                ..RunArgs::default()
            },
        )
        .unwrap();
        assert_eq!(c.imds_poll_interval, Duration::from_millis(500));
        assert_eq!(c.group.as_deref(), Some("cache"));
        assert_eq!(c.health, HealthCheck::None);
    }

    #[test]
    fn several_coordinators_as_a_list_or_comma_separated() {
        let c = with_file(
            "coordinator_url = [\"http://a:8080/\", \"http://b:8080\"]\n",
            RunArgs::default(),
        )
        .unwrap();
        assert_eq!(c.coordinator_urls(), ["http://a:8080", "http://b:8080"]);
        let c = with_file(
            "coordinator_url = \"http://a\"\n",
            RunArgs {
                coordinator_url: Some("http://x, http://y".into()),
                ..RunArgs::default()
            },
        )
        .unwrap();
        assert_eq!(c.coordinator_urls(), ["http://x", "http://y"]);
        assert!(matches!(
            with_file(
                "coordinator_url = [\"http://a\", \"b:1\"]\n",
                RunArgs::default()
            ),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        assert!(matches!(
            with_file("coordinator_ur = \"http://c\"\n", RunArgs::default()),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            with_file("coordinator_url = \"c:8080\"\n", RunArgs::default()),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            with_file(
                "coordinator_url = \"http://c\"\nimds_poll_interval = \"soon\"\n",
                RunArgs::default()
            ),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            with_file(
                "coordinator_url = \"http://c\"\nhealth_url = \"http://x\"\nhealth_command = \"true\"\n",
                RunArgs::default()
            ),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            with_file("", RunArgs::default()),
            Err(ConfigError::Invalid(_))
        ));
    }
}
