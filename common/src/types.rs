//! Domain types shared by the agent, the coordinator and the simulators:
//! roles, statuses, pools, group configuration, actors.

pub use crate::vocab::{
    AgentStatus, DecisionMode, ModelChoice, Phase, Role, SwitchState, TokenRole,
};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Priority of emergency work: it jumps every queue (DESIGN.md invariant 6).
pub const PRIORITY_EMERGENCY: i64 = 100;
/// Priority of routine work (cleanup, planned switches).
pub const PRIORITY_NORMAL: i64 = 10;

/// A spot capacity pool as configured: where to launch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub instance_type: String,
    pub availability_zone: String,
    /// Subnet to launch into for this zone; optional when the launch
    /// template already names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
}

impl Pool {
    /// A pool without a subnet of its own (the launch template names one).
    pub fn new(instance_type: &str, availability_zone: &str) -> Pool {
        Pool {
            instance_type: instance_type.to_owned(),
            availability_zone: availability_zone.to_owned(),
            subnet_id: None,
        }
    }

    pub fn key(&self) -> PoolKey {
        PoolKey::new(&self.instance_type, &self.availability_zone)
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.instance_type, self.availability_zone)
    }
}

/// The identity of a capacity pool: (instance type, availability zone).
/// The one key for boot times, failed launches, prices and decisions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PoolKey {
    pub instance_type: String,
    pub availability_zone: String,
}

impl PoolKey {
    pub fn new(instance_type: &str, availability_zone: &str) -> PoolKey {
        PoolKey {
            instance_type: instance_type.to_owned(),
            availability_zone: availability_zone.to_owned(),
        }
    }

    pub fn matches(&self, pool: &Pool) -> bool {
        self.instance_type == pool.instance_type && self.availability_zone == pool.availability_zone
    }
}

impl fmt::Display for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::ids::pool(self))
    }
}

/// How the group's address follows the PRIMARY when it is promoted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promotion {
    /// Elastic IP allocation id moved to the new PRIMARY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elastic_ip_allocation_id: Option<String>,
    /// Secondary ENI attached to the new PRIMARY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface_id: Option<String>,
}

/// Per-group configuration, held by the coordinator and edited by operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Candidate pools, in the operator's order of preference.
    #[serde(default)]
    pub pools: Vec<Pool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template_id: Option<String>,
    #[serde(default)]
    pub promotion: Promotion,
    /// Automatic switching to cheaper pools by the decision engine (the
    /// same as `decisions = "auto"`).
    #[serde(default)]
    pub auto_switch: bool,
    /// The decision engine for this group: `off`, `shadow` (decide and
    /// log, never act) or `auto` (act).
    #[serde(default)]
    pub decisions: DecisionMode,
    /// Which model decides for this group (A/B); absent: the
    /// coordinator's `decision_ab_split` assigns it by a stable hash of
    /// the group's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelChoice>,
    /// Keep exactly one REPLICA at all times.
    #[serde(default)]
    pub manual_replica: bool,
    /// Terminate a demoted PRIMARY instead of keeping it as ZOMBIE.
    #[serde(default)]
    pub auto_terminate: bool,
    /// Seconds a ZOMBIE (a demoted PRIMARY kept to look at) is kept
    /// before it is terminated [default: 30 days].
    #[serde(default = "default_zombie_retention")]
    pub zombie_retention_s: u64,
    /// Seconds a FAILED instance (a launch that never became healthy) is
    /// kept before it is terminated [default: 0, at once].
    #[serde(default)]
    pub failed_retention_s: u64,
    /// The coordinator takes no automatic action for this group (no
    /// failover, no launches); operators act by hand. For maintenance.
    #[serde(default)]
    pub paused: bool,
    /// Product of the spot prices captured for the pools.
    #[serde(
        default = "default_product",
        skip_serializing_if = "is_default_product"
    )]
    pub product_description: String,
}

pub const DEFAULT_PRODUCT: &str = "Linux/UNIX";

/// 30 days.
pub const DEFAULT_ZOMBIE_RETENTION_S: u64 = 30 * 24 * 3600;

fn default_zombie_retention() -> u64 {
    DEFAULT_ZOMBIE_RETENTION_S
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            pools: Vec::new(),
            launch_template_id: None,
            promotion: Promotion::default(),
            auto_switch: false,
            decisions: DecisionMode::Off,
            model: None,
            manual_replica: false,
            auto_terminate: false,
            zombie_retention_s: DEFAULT_ZOMBIE_RETENTION_S,
            failed_retention_s: 0,
            paused: false,
            product_description: default_product(),
        }
    }
}

fn default_product() -> String {
    DEFAULT_PRODUCT.to_owned()
}

fn is_default_product(p: &String) -> bool {
    p == DEFAULT_PRODUCT
}

/// A group configuration that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigRuleError {
    #[error(
        "auto_switch (or decisions = \"auto\") and manual_replica are mutually exclusive (invariant 3)"
    )]
    AutoSwitchWithManualReplica,
    #[error("pool {0} is listed twice")]
    DuplicatePool(String),
    #[error("group name {0:?} must be 1-64 characters of [A-Za-z0-9._-]")]
    BadGroupName(String),
    #[error(
        "promotion.network_interface_id: a secondary ENI lives in one availability zone, so every \
         pool of the group must be in that zone (the pools span {0})"
    )]
    InterfaceAcrossZones(String),
}

impl GroupConfig {
    pub fn validate(&self) -> Result<(), ConfigRuleError> {
        if self.decision_mode() == DecisionMode::Auto && self.manual_replica {
            return Err(ConfigRuleError::AutoSwitchWithManualReplica);
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.pools {
            if !seen.insert(p.key()) {
                return Err(ConfigRuleError::DuplicatePool(p.to_string()));
            }
        }
        if self.promotion.network_interface_id.is_some() {
            let mut zones: Vec<&str> = self
                .pools
                .iter()
                .map(|p| p.availability_zone.as_str())
                .collect();
            zones.sort_unstable();
            zones.dedup();
            if zones.len() > 1 {
                return Err(ConfigRuleError::InterfaceAcrossZones(zones.join(", ")));
            }
        }
        Ok(())
    }

    /// The one zone the PRIMARY may be in, when its address cannot leave
    /// it (a secondary ENI): the pools' zone.
    pub fn pinned_zone(&self) -> Option<&str> {
        self.promotion.network_interface_id.as_ref()?;
        self.pools.first().map(|p| p.availability_zone.as_str())
    }

    /// What the decision engine may do: `auto_switch` means `auto`.
    pub fn decision_mode(&self) -> DecisionMode {
        if self.auto_switch {
            DecisionMode::Auto
        } else {
            self.decisions
        }
    }

    /// The configured pool with this key.
    pub fn pool(&self, key: &PoolKey) -> Option<&Pool> {
        self.pools.iter().find(|p| key.matches(p))
    }
}

pub fn validate_group_name(name: &str) -> Result<(), ConfigRuleError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigRuleError::BadGroupName(name.to_owned()))
    }
}

/// Who made a state change, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Actor {
    Agent(String),
    /// The shared admin token.
    Operator,
    /// A named operator token (`spot-coordinator token create`).
    NamedOperator(String),
    System,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Agent(id) => write!(f, "agent:{id}"),
            Actor::Operator => f.write_str("operator"),
            Actor::NamedOperator(name) => write!(f, "operator:{name}"),
            Actor::System => f.write_str("system"),
        }
    }
}

/// EC2 `ClientToken` for a launch: derived from the `request_id` so that a
/// retried or resumed launch can never create a second instance. AWS allows
/// 64 ASCII characters.
pub fn client_token(request_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(request_id.as_bytes());
    format!("spot-{}", &hex::encode(digest)[..48])
}

/// Hash of a bearer token as stored (tokens are 256-bit random, so a plain
/// SHA-256 is enough: there is nothing to brute-force).
pub fn token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_round_trips_through_its_name() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(*r));
        }
        assert!("king".parse::<Role>().is_err());
        assert_eq!(Role::default(), Role::Launching);
    }

    #[test]
    fn client_token_is_stable_and_fits_aws_limit() {
        let a = client_token("req-1");
        assert_eq!(a, client_token("req-1"));
        assert_ne!(a, client_token("req-2"));
        assert!(a.len() <= 64 && a.is_ascii());
    }

    #[test]
    fn auto_switch_and_manual_replica_exclude_each_other() {
        let c = GroupConfig {
            auto_switch: true,
            manual_replica: true,
            ..GroupConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigRuleError::AutoSwitchWithManualReplica)
        );
    }

    #[test]
    fn duplicate_pool_is_refused() {
        let p = Pool::new("m5.large", "us-east-1a");
        let mut q = p.clone();
        q.subnet_id = Some("subnet-1".into());
        let c = GroupConfig {
            pools: vec![p, q],
            ..GroupConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigRuleError::DuplicatePool(_))
        ));
        assert!(c.pool(&PoolKey::new("m5.large", "us-east-1a")).is_some());
        assert!(c.pool(&PoolKey::new("m5.large", "us-east-1b")).is_none());
    }

    #[test]
    fn group_names_are_checked() {
        assert!(validate_group_name("db-1.prod_x").is_ok());
        assert!(validate_group_name("").is_err());
        assert!(validate_group_name("a b").is_err());
        assert!(validate_group_name(&"x".repeat(65)).is_err());
    }
}
