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

/// An EBS data volume that follows the PRIMARY: detached from the old one
/// once it is fenced, attached to the new one before its `promote` hook
/// (which mounts it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataVolume {
    pub volume_id: String,
    /// Where the instance sees it, e.g. `/dev/sdf`.
    pub device: String,
}

/// 15 minutes: the RPO of a replacement in another zone.
pub const DEFAULT_SNAPSHOT_INTERVAL_S: u64 = 900;
/// Snapshots kept per data volume.
pub const DEFAULT_SNAPSHOT_KEEP: u32 = 4;

fn default_snapshot_interval() -> u64 {
    DEFAULT_SNAPSHOT_INTERVAL_S
}

fn is_default_snapshot_interval(s: &u64) -> bool {
    *s == DEFAULT_SNAPSHOT_INTERVAL_S
}

fn default_snapshot_keep() -> u32 {
    DEFAULT_SNAPSHOT_KEEP
}

fn is_default_snapshot_keep(k: &u32) -> bool {
    *k == DEFAULT_SNAPSHOT_KEEP
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
    /// EBS data volumes that follow the PRIMARY (all in one zone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_volumes: Vec<DataVolume>,
    /// Seconds between snapshots of the data volumes: what a replacement
    /// in another zone may lose (RPO) [default: 900].
    #[serde(
        default = "default_snapshot_interval",
        skip_serializing_if = "is_default_snapshot_interval"
    )]
    pub snapshot_interval_s: u64,
    /// Snapshots kept per data volume, the newest [default: 4].
    #[serde(
        default = "default_snapshot_keep",
        skip_serializing_if = "is_default_snapshot_keep"
    )]
    pub snapshot_keep: u32,
    /// Fast snapshot restore for the newest snapshot of each data volume,
    /// in the zones of the group's pools other than the volumes' own: a
    /// replacement there gets a volume at full performance at once
    /// instead of one that loads lazily from S3. Billed per snapshot and
    /// zone hour (at least one hour each time it is enabled); needs the
    /// coordinator's EC2 executor, which turns it on and off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fast_snapshot_restore: bool,
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
            data_volumes: Vec::new(),
            snapshot_interval_s: DEFAULT_SNAPSHOT_INTERVAL_S,
            snapshot_keep: DEFAULT_SNAPSHOT_KEEP,
            fast_snapshot_restore: false,
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
    #[error("data_volumes: {0}")]
    DataVolume(String),
}

/// `/dev/sdf` .. `/dev/sdp`, `/dev/xvdf` .. `/dev/xvdz`: the names EC2
/// attaches data volumes as.
fn valid_device(d: &str) -> bool {
    let letter = |s: &str, from: u8, to: u8| {
        s.len() == 1 && s.as_bytes()[0] >= from && s.as_bytes()[0] <= to
    };
    d.strip_prefix("/dev/sd")
        .is_some_and(|s| letter(s, b'f', b'p'))
        || d.strip_prefix("/dev/xvd")
            .is_some_and(|s| letter(s, b'f', b'z'))
}

fn valid_volume_id(v: &str) -> bool {
    v.strip_prefix("vol-").is_some_and(|h| {
        !h.is_empty() && h.len() <= 32 && h.bytes().all(|b| b.is_ascii_alphanumeric())
    })
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
        let mut volumes = std::collections::HashSet::new();
        let mut devices = std::collections::HashSet::new();
        if self.data_volumes.len() > 8 {
            return Err(ConfigRuleError::DataVolume(
                "at most 8 data volumes per group".into(),
            ));
        }
        for v in &self.data_volumes {
            if !valid_volume_id(&v.volume_id) {
                return Err(ConfigRuleError::DataVolume(format!(
                    "{:?} is not a volume id (vol-...)",
                    v.volume_id
                )));
            }
            if !valid_device(&v.device) {
                return Err(ConfigRuleError::DataVolume(format!(
                    "device {:?} of {} must be /dev/sdf-/dev/sdp or /dev/xvdf-/dev/xvdz",
                    v.device, v.volume_id
                )));
            }
            if !volumes.insert(&v.volume_id) || !devices.insert(&v.device) {
                return Err(ConfigRuleError::DataVolume(format!(
                    "{} or its device {} is listed twice",
                    v.volume_id, v.device
                )));
            }
        }
        if self.fast_snapshot_restore && self.data_volumes.is_empty() {
            return Err(ConfigRuleError::DataVolume(
                "fast_snapshot_restore needs data_volumes: it speeds up their restore".into(),
            ));
        }
        if !self.data_volumes.is_empty() {
            if self.snapshot_interval_s < 60 {
                return Err(ConfigRuleError::DataVolume(
                    "snapshot_interval_s must be at least 60".into(),
                ));
            }
            if self.snapshot_keep == 0 {
                return Err(ConfigRuleError::DataVolume(
                    "snapshot_keep must be at least 1".into(),
                ));
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

    /// Check the data volumes against what EC2 says of them (`zones`: each
    /// volume's zone, `None` when EC2 does not know it): they exist, share
    /// one zone, and that zone is among the pools. Their zone.
    pub fn check_volume_zones(
        &self,
        zones: &std::collections::HashMap<String, Option<String>>,
    ) -> Result<Option<String>, ConfigRuleError> {
        let mut zone: Option<&str> = None;
        for v in &self.data_volumes {
            let Some(Some(z)) = zones.get(&v.volume_id) else {
                return Err(ConfigRuleError::DataVolume(format!(
                    "{} does not exist (or this account and region cannot see it)",
                    v.volume_id
                )));
            };
            match zone {
                Some(first) if first != z => {
                    return Err(ConfigRuleError::DataVolume(format!(
                        "{} is in {z}, the others in {first}: a group's data volumes share one zone",
                        v.volume_id
                    )));
                }
                _ => zone = Some(z),
            }
        }
        if let Some(z) = zone
            && !self.pools.iter().any(|p| p.availability_zone == z)
        {
            return Err(ConfigRuleError::DataVolume(format!(
                "the volumes are in {z}, where the group has no pool: add a pool there (the \
                 PRIMARY serves there without restoring from a snapshot)"
            )));
        }
        Ok(zone.map(str::to_owned))
    }

    /// What moving the data volumes may add to a promote, before its hook:
    /// a detach and an attach, or a restore and an attach (each bounded
    /// by the agent at 45 s), per volume. 0 without data volumes.
    pub fn volume_handover_ms(&self) -> i64 {
        const PER_VOLUME_MS: i64 = 2 * 45_000;
        i64::try_from(self.data_volumes.len()).unwrap_or(0) * PER_VOLUME_MS
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

    fn with_volumes(vols: &[(&str, &str)], pools: &[&str]) -> GroupConfig {
        GroupConfig {
            pools: pools.iter().map(|z| Pool::new("m5.large", z)).collect(),
            data_volumes: vols
                .iter()
                .map(|(v, d)| DataVolume {
                    volume_id: (*v).into(),
                    device: (*d).into(),
                })
                .collect(),
            ..GroupConfig::default()
        }
    }

    #[test]
    fn data_volumes_are_checked_for_form_and_against_ec2() {
        assert!(
            with_volumes(&[("vol-0a1", "/dev/sdf"), ("vol-0b2", "/dev/xvdg")], &["a"])
                .validate()
                .is_ok()
        );
        for bad in [
            with_volumes(&[("volume-1", "/dev/sdf")], &["a"]),
            with_volumes(&[("vol-1", "/dev/sda1")], &["a"]),
            with_volumes(&[("vol-1", "/dev/sdf"), ("vol-1", "/dev/sdg")], &["a"]),
            with_volumes(&[("vol-1", "/dev/sdf"), ("vol-2", "/dev/sdf")], &["a"]),
            GroupConfig {
                snapshot_interval_s: 10,
                ..with_volumes(&[("vol-1", "/dev/sdf")], &["a"])
            },
            GroupConfig {
                fast_snapshot_restore: true,
                ..with_volumes(&[], &["a"])
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(ConfigRuleError::DataVolume(_))),
                "{bad:?}"
            );
        }
        let c = with_volumes(&[("vol-1", "/dev/sdf"), ("vol-2", "/dev/sdg")], &["a", "b"]);
        let zones = |v: &[(&str, Option<&str>)]| {
            v.iter()
                .map(|(k, z)| ((*k).to_owned(), z.map(str::to_owned)))
                .collect::<std::collections::HashMap<_, _>>()
        };
        assert_eq!(
            c.check_volume_zones(&zones(&[("vol-1", Some("b")), ("vol-2", Some("b"))])),
            Ok(Some("b".into()))
        );
        let err = |z| c.check_volume_zones(&zones(z)).unwrap_err().to_string();
        assert!(err(&[("vol-1", None), ("vol-2", Some("b"))]).contains("vol-1 does not exist"));
        assert!(err(&[("vol-1", Some("a")), ("vol-2", Some("b"))]).contains("share one zone"));
        assert!(err(&[("vol-1", Some("c")), ("vol-2", Some("c"))]).contains("no pool"));
    }

    #[test]
    fn group_names_are_checked() {
        assert!(validate_group_name("db-1.prod_x").is_ok());
        assert!(validate_group_name("").is_err());
        assert!(validate_group_name("a b").is_err());
        assert!(validate_group_name(&"x".repeat(65)).is_err());
    }
}
