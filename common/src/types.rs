//! Domain types shared by the agent, the coordinator and the simulators.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Priority of emergency work: it jumps every queue (DESIGN.md invariant 6).
pub const PRIORITY_EMERGENCY: i64 = 100;
/// Priority of routine work (cleanup, planned switches).
pub const PRIORITY_NORMAL: i64 = 10;

/// Role of an instance in its group. See docs/STATE_MACHINE.md.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every instance starts here.
    #[default]
    Launching,
    Replica,
    Primary,
    Zombie,
    Failed,
    Terminated,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Launching,
        Role::Replica,
        Role::Primary,
        Role::Zombie,
        Role::Failed,
        Role::Terminated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Launching => "launching",
            Role::Replica => "replica",
            Role::Primary => "primary",
            Role::Zombie => "zombie",
            Role::Failed => "failed",
            Role::Terminated => "terminated",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no known variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownVariant {
    pub what: &'static str,
    pub value: String,
}

impl FromStr for Role {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownVariant {
                what: "role",
                value: s.to_owned(),
            })
    }
}

/// Liveness of an agent as the coordinator sees it. An agent that stops
/// heartbeating is OFFLINE, never TERMINATED (invariant 4): only EC2 decides
/// that an instance is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Online,
    Offline,
    /// Replaced by a newer registration from the same instance.
    Replaced,
    /// Deleted by an operator; history stays linked.
    Deleted,
}

impl AgentStatus {
    pub const ALL: [AgentStatus; 4] = [
        AgentStatus::Online,
        AgentStatus::Offline,
        AgentStatus::Replaced,
        AgentStatus::Deleted,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Online => "online",
            AgentStatus::Offline => "offline",
            AgentStatus::Replaced => "replaced",
            AgentStatus::Deleted => "deleted",
        }
    }
}

impl FromStr for AgentStatus {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AgentStatus::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownVariant {
                what: "agent status",
                value: s.to_owned(),
            })
    }
}

/// A spot capacity pool.
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

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.instance_type, self.availability_zone)
    }
}

/// How the group's address follows the PRIMARY.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotionAction {
    /// Elastic IP allocation id moved to the new PRIMARY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elastic_ip_allocation_id: Option<String>,
    /// Secondary ENI attached to the new PRIMARY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface_id: Option<String>,
}

/// How an agent decides that its workload is healthy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HealthCheck {
    /// HTTP GET; healthy on a 2xx answer.
    Http { url: String, timeout_ms: u64 },
    /// A command run without a shell; healthy on exit status 0.
    Command { argv: Vec<String>, timeout_ms: u64 },
    /// Always healthy (no workload check configured).
    #[default]
    None,
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
    pub promotion: PromotionAction,
    #[serde(default)]
    pub health_check: HealthCheck,
    /// Automatic switching to cheaper pools by the decision engine.
    #[serde(default)]
    pub auto_switch: bool,
    /// Keep exactly one REPLICA at all times.
    #[serde(default)]
    pub manual_replica: bool,
    /// Terminate a demoted PRIMARY instead of keeping it as ZOMBIE.
    #[serde(default)]
    pub auto_terminate: bool,
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

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            pools: Vec::new(),
            launch_template_id: None,
            promotion: PromotionAction::default(),
            health_check: HealthCheck::None,
            auto_switch: false,
            manual_replica: false,
            auto_terminate: false,
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
    #[error("auto_switch and manual_replica are mutually exclusive (invariant 3)")]
    AutoSwitchWithManualReplica,
    #[error("pool {0} is listed twice")]
    DuplicatePool(String),
    #[error("group name {0:?} must be 1-64 characters of [A-Za-z0-9._-]")]
    BadGroupName(String),
}

impl GroupConfig {
    pub fn validate(&self) -> Result<(), ConfigRuleError> {
        if self.auto_switch && self.manual_replica {
            return Err(ConfigRuleError::AutoSwitchWithManualReplica);
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.pools {
            if !seen.insert((&p.instance_type, &p.availability_zone)) {
                return Err(ConfigRuleError::DuplicatePool(p.to_string()));
            }
        }
        Ok(())
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

/// What a command asks an agent to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CommandKind {
    /// Launch a new instance of the group into `pool`.
    Launch {
        pool: Pool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        launch_template_id: Option<String>,
        emergency: bool,
    },
    /// Become PRIMARY: health check, promotion action, `promote` hook.
    Promote {
        #[serde(default)]
        promotion: PromotionAction,
    },
    /// Stop serving: `demote` hook.
    Demote,
    /// Terminate the named instance.
    Terminate { instance_id: String },
    /// The operator deleted this agent: stop reporting and forget the
    /// coordinator identity.
    Cleanup,
}

impl CommandKind {
    pub fn name(&self) -> &'static str {
        match self {
            CommandKind::Launch { .. } => "launch",
            CommandKind::Promote { .. } => "promote",
            CommandKind::Demote => "demote",
            CommandKind::Terminate { .. } => "terminate",
            CommandKind::Cleanup => "cleanup",
        }
    }

    /// Role-changing commands carry the group epoch and are fenced by it.
    pub fn is_role_change(&self) -> bool {
        matches!(self, CommandKind::Promote { .. } | CommandKind::Demote)
    }
}

/// Coordinator -> agent instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub request_id: String,
    pub group: String,
    pub action: CommandKind,
    pub priority: i64,
    /// Group epoch the command was issued under.
    pub epoch: u64,
    /// Unix milliseconds after which the command must not start.
    pub deadline_ms: i64,
}

/// Kinds of interruption signal an agent watches in IMDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// `spot/instance-action`: two minutes left.
    Interruption,
    /// `events/recommendations/rebalance`: early warning.
    Rebalance,
    /// `events/maintenance/scheduled`.
    ScheduledMaintenance,
    /// A body that did not parse; kept for the operator, never fatal.
    Malformed,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Interruption => "interruption",
            NoticeKind::Rebalance => "rebalance",
            NoticeKind::ScheduledMaintenance => "scheduled_maintenance",
            NoticeKind::Malformed => "malformed",
        }
    }
}

/// Outcome of a command on the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    Done,
    Failed,
    /// Refused because its epoch is below the highest the agent has seen.
    Stale,
    /// Not started before its deadline.
    Expired,
}

impl CommandOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandOutcome::Done => "done",
            CommandOutcome::Failed => "failed",
            CommandOutcome::Stale => "stale",
            CommandOutcome::Expired => "expired",
        }
    }
}

/// Agent -> coordinator report, delivered at least once, applied once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventBody {
    Notice {
        notice: NoticeKind,
        /// For an interruption: the `time` AWS gave (unix ms).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        effective_at_ms: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
        /// The raw IMDS body, bounded.
        raw: String,
    },
    CommandResult {
        request_id: String,
        outcome: CommandOutcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// Instance id created by a launch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance_id: Option<String>,
        /// EC2 error code when the command failed on an EC2 call.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_code: Option<String>,
    },
    Health {
        healthy: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// The PRIMARY's lease ran out without a renewal: its agent ran the
    /// `demote` hook by itself.
    SelfDemoted { epoch: u64, reason: String },
    /// EC2 states of the group's instances, as DescribeInstances shows them.
    Ec2States { instances: Vec<Ec2State> },
    /// Spot prices captured from DescribeSpotPriceHistory; journaled in
    /// the outbox like every event, delivered to the `pricing` endpoint.
    Prices {
        points: Vec<crate::wire::PricePoint>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2State {
    pub instance_id: String,
    /// `pending`, `running`, `shutting-down`, `terminated`, ...
    pub state: String,
}

impl EventBody {
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::Notice { .. } => "notice",
            EventBody::CommandResult { .. } => "command_result",
            EventBody::Health { .. } => "health",
            EventBody::SelfDemoted { .. } => "self_demoted",
            EventBody::Ec2States { .. } => "ec2_states",
            EventBody::Prices { .. } => "prices",
        }
    }
}

/// One event as delivered from the agent's outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Globally unique (agent id + outbox sequence); the dedup key.
    pub event_id: String,
    pub seq: i64,
    /// When the agent recorded it (unix ms).
    pub at_ms: i64,
    pub body: EventBody,
}

/// Who made a state change, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Actor {
    Agent(String),
    Operator,
    System,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Agent(id) => write!(f, "agent:{id}"),
            Actor::Operator => f.write_str("operator"),
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
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("king".parse::<Role>().is_err());
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
        let p = Pool {
            instance_type: "m5.large".into(),
            availability_zone: "us-east-1a".into(),
            subnet_id: None,
        };
        let c = GroupConfig {
            pools: vec![p.clone(), p],
            ..GroupConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigRuleError::DuplicatePool(_))
        ));
    }

    #[test]
    fn group_names_are_checked() {
        assert!(validate_group_name("db-1.prod_x").is_ok());
        assert!(validate_group_name("").is_err());
        assert!(validate_group_name("a b").is_err());
        assert!(validate_group_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn command_wire_form_round_trips() {
        let c = Command {
            request_id: "r1".into(),
            group: "g".into(),
            action: CommandKind::Terminate {
                instance_id: "i-1".into(),
            },
            priority: PRIORITY_EMERGENCY,
            epoch: 3,
            deadline_ms: 10,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["action"]["kind"], "terminate");
        assert_eq!(v["action"]["instance_id"], "i-1");
        let back: Command = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn event_rejects_unknown_fields() {
        let ok = serde_json::json!({"event_id":"a","seq":1,"at_ms":1,"body":{"type":"health","healthy":true}});
        assert!(serde_json::from_value::<Event>(ok).is_ok());
        let bad = serde_json::json!({"event_id":"a","seq":1,"at_ms":1,"body":{"type":"health","healthy":true},"bogus":1});
        assert!(serde_json::from_value::<Event>(bad).is_err());
        let bad_inner = serde_json::json!({"event_id":"a","seq":1,"at_ms":1,"body":{"type":"health","healthy":true,"bogus":1}});
        assert!(serde_json::from_value::<Event>(bad_inner).is_err());
    }
}
