//! Wire types of the agent API v1 and the operator API v1.
//!
//! Requests are strict (`deny_unknown_fields`: a typo is an error, not a
//! silently ignored field); responses are lenient so an older agent can read
//! a newer coordinator. docs/openapi.json describes the same shapes.

use crate::command::{Command, CommandState, Event, NoticeKind};
use crate::types::{AgentStatus, GroupConfig, Pool, PoolKey, Role, SwitchState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod pricing;
mod transition;

pub use pricing::{
    ConsolidationRun, GroupCost, GroupPrices, HourlyPrice, MAX_PRICE_POINTS, PoolSeries,
    PricingHint, PricingRequest, PricingResponse,
};
pub use transition::{AbortTransitionRequest, FenceTarget, TransitionStatus, TransitionView};

pub const API_VERSION: u32 = 1;
/// Longest long-poll the coordinator holds (the agent asks for less).
pub const MAX_POLL_WAIT_MS: u64 = 30_000;
/// Largest request body accepted by the coordinator.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest events batch.
pub const MAX_EVENTS_PER_BATCH: usize = 500;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub instance_id: String,
    pub instance_type: String,
    pub availability_zone: String,
    pub region: String,
    /// `spot` or `on-demand`.
    pub lifecycle: String,
    pub group: String,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The signed instance identity document, as IMDS serves it. A
    /// coordinator with `identity = "verify"` requires it and takes the
    /// instance's id, type, zone and region from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityProof>,
}

/// `/latest/dynamic/instance-identity/document` and `.../rsa2048`, verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityProof {
    /// The JSON document.
    pub document: String,
    /// Base64 PKCS#7 SignedData over the document (RSA-2048, SHA-256).
    pub rsa2048: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub agent_id: String,
    pub token: String,
    pub heartbeat_interval_ms: u64,
    /// How long the PRIMARY's lease lasts after a heartbeat is sent.
    pub lease_ms: u64,
    pub api_version: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub instance_id: String,
    /// Role as the agent believes it (the hooks it has run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Epoch of the command that gave it that role.
    #[serde(default)]
    pub role_epoch: u64,
    /// Highest group epoch the agent has accepted.
    pub highest_epoch: u64,
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_detail: Option<String>,
    /// Events journaled but not yet acknowledged.
    pub backlog: u64,
    /// For a PRIMARY: the grant the coordinator signed with the promote
    /// that made it one ([`PollResponse::grants`]). A store that does not
    /// know this PRIMARY (restored from an older copy) adopts it only when
    /// the grant verifies. Coordinators before 0.3 refuse the field:
    /// upgrade the coordinator before the agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub status: AgentStatus,
    /// Role as the coordinator records it (PRIMARY too for a candidate
    /// whose promotion was granted).
    pub role: Role,
    /// Epoch of that role's assignment (for a PRIMARY: its promotion's).
    #[serde(default)]
    pub role_epoch: u64,
    /// The group's epoch.
    pub epoch: u64,
    /// The lease granted by this answer: non-zero only to the PRIMARY at
    /// its epoch. An agent that believes it is PRIMARY and gets anything
    /// else stops serving.
    pub lease_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Pools to capture spot prices for; absent for a ZOMBIE (its reports
    /// are not ingested).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<PricingHint>,
    /// The coordinator waits for EC2's view of the group (a transition
    /// after its start may not be granted before it: see
    /// `store/unheard.rs`): report the group's instances now, changed or
    /// not. Absent (false) otherwise and from coordinators before 0.3.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub report_ec2_view: bool,
}

/// Old agents ignore unknown fields here, so fields are only ever added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollResponse {
    pub commands: Vec<Command>,
    /// The coordinator's clock when it answered. A command's deadline is an
    /// instant on that clock; what it means is the budget between the two,
    /// which the agent measures from receipt on its own monotonic clock
    /// ([`PollResponse::into_local`]), so the coordinator's clock and the
    /// agent's need not agree. Absent from coordinators before 0.2: their
    /// deadlines are taken as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<i64>,
    /// The grant of each `promote` among the commands, by request id: a
    /// MAC over (group, epoch, instance, issue time) under the
    /// coordinator's key, shown back in the new PRIMARY's heartbeats.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grants: BTreeMap<String, String>,
}

impl PollResponse {
    pub fn new(commands: Vec<Command>, sent_at_ms: i64) -> Self {
        PollResponse {
            commands,
            sent_at_ms: Some(sent_at_ms),
            grants: BTreeMap::new(),
        }
    }

    /// The commands with each deadline moved onto the receiver's clock:
    /// `received_at_ms` plus the budget the coordinator gave (never less
    /// than nothing: a command already past its deadline stays past it).
    pub fn into_local(self, received_at_ms: i64) -> Vec<Command> {
        let Some(sent) = self.sent_at_ms else {
            return self.commands;
        };
        self.commands
            .into_iter()
            .map(|mut c| {
                let budget = c.deadline_ms.saturating_sub(sent);
                c.deadline_ms = received_at_ms.saturating_add(budget);
                c
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsRequest {
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsResponse {
    /// Every event id of the batch, new or already known: the agent may
    /// delete them from its outbox.
    pub acked: Vec<String>,
    pub applied: usize,
    pub duplicates: usize,
}

/// Every error answer of both APIs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `version_conflict`.
    pub code: String,
    pub message: String,
    /// For `illegal_transition` and rule violations: the rule broken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    pub name: String,
    #[serde(default)]
    pub config: GroupConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroupRequest {
    pub config: GroupConfig,
    /// The version read; a concurrent change makes this a 409.
    pub version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    pub instance_id: String,
    /// The group epoch the operator decided against.
    pub expected_epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    pub pool: Pool,
    /// Agent that makes the call; default: the PRIMARY's agent, else the
    /// group's most recently seen online agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub emergency: bool,
    /// Also the launch command's request_id (and so its EC2 ClientToken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedCommand {
    /// The agent that runs it; the coordinator's EC2 executor when absent.
    pub agent_id: Option<String>,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclareDeadRequest {
    /// The instance the operator vouches is not serving (stopped,
    /// terminated, disconnected from its data): it counts as fenced.
    pub instance_id: String,
    /// Declare it dead although its agent was heard within its lease (it
    /// answers but the operator knows it does not serve). Audited.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `POST /v1/groups/{name}/switch/cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CancelSwitchRequest {
    #[serde(default)]
    pub request_id: Option<String>,
}

/// `POST /v1/instances/terminate`: ZOMBIE and FAILED instances, by ids or
/// by filter, terminated through EC2 (an online agent of their group, else
/// the coordinator's executor). `dry_run` lists what would be done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkTerminateRequest {
    #[serde(default)]
    pub instance_ids: Vec<String>,
    /// Filter: instances in this role (`zombie` or `failed`).
    #[serde(default)]
    pub role: Option<Role>,
    /// Filter: in that role for at least this long (`30d`, `12h`).
    #[serde(default)]
    pub older_than: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// One instance a bulk terminate looked at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BulkTerminateItem {
    pub instance_id: String,
    pub group: String,
    pub role: Role,
    /// Seconds in that role.
    pub in_role_s: i64,
    /// `terminate` (done, or would be with `dry_run`) or `skip`.
    pub action: String,
    /// Why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The terminate command queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BulkTerminateResponse {
    pub dry_run: bool,
    pub instances: Vec<BulkTerminateItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoticeView {
    pub event_id: String,
    pub agent_id: String,
    pub instance_id: String,
    pub group: String,
    pub kind: NoticeKind,
    pub effective_at_ms: Option<i64>,
    pub seen_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteAgentRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `POST /v1/agents/{agent_id}/reset`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetAgentRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupView {
    pub name: String,
    pub config: GroupConfig,
    pub epoch: u64,
    pub version: i64,
    #[serde(default)]
    pub primary: Option<String>,
    /// A PRIMARY replacement in progress, with its remaining budget.
    #[serde(default)]
    pub transition: Option<TransitionView>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A group's data volumes now: where they are, their latest snapshots,
/// and what a PRIMARY replaced in another zone would lose (RPO).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataVolumesView {
    /// The volumes' zone, once an agent attached them.
    pub availability_zone: Option<String>,
    pub snapshot_interval_s: u64,
    pub snapshot_keep: u32,
    /// Seconds since the oldest device's latest snapshot: the data a
    /// replacement in another zone would lose now (`None`: no snapshot
    /// yet, so no replacement outside the volumes' zone).
    pub rpo_s: Option<u64>,
    pub volumes: Vec<VolumeStatus>,
    /// With `fast_snapshot_restore`: where each device's newest snapshot
    /// has it, as the coordinator last saw it in EC2 (none until its
    /// first check after a start, or without its EC2 access).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fast_restore: Vec<FastRestoreStatus>,
}

/// Fast snapshot restore of one snapshot in one zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastRestoreStatus {
    pub device: String,
    pub snapshot_id: String,
    pub availability_zone: String,
    /// EC2's state: `enabling`, `optimizing` (partly fast), `enabled`.
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub device: String,
    pub volume_id: String,
    pub availability_zone: Option<String>,
    /// The instance it was last attached to.
    pub holder: Option<String>,
    pub last_snapshot_id: Option<String>,
    pub last_snapshot_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    pub pool: Pool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchView {
    pub id: i64,
    pub group: String,
    pub target_pool: Pool,
    pub state: SwitchState,
    pub from_instance: Option<String>,
    pub to_instance: Option<String>,
    pub started_at_ms: i64,
    pub demote_started_ms: Option<i64>,
    pub promote_done_ms: Option<i64>,
    /// promote done minus demote start.
    pub downtime_ms: Option<i64>,
    /// Why a failed switch failed (cancelled, launch failed, timed out).
    pub failure: Option<String>,
}

/// One decision of the decision engine, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionView {
    pub id: i64,
    pub group: String,
    pub at_ms: i64,
    pub mode: crate::DecisionMode,
    /// `name/version`.
    pub model: String,
    /// SHA-256 of the input the model was given.
    pub input_digest: String,
    /// `STAY`, `SWITCH`, `CREATE_REPLICA` or `NO_ACTION`.
    pub action: String,
    pub target_pool: Option<PoolKey>,
    pub confidence: f64,
    pub reason: String,
    pub latency_us: i64,
    /// Estimated dollars per hour a SWITCH saves.
    pub saving_per_hour: Option<f64>,
    /// What was done (or, in shadow mode, what would have been).
    pub outcome: String,
    /// Why the model's answer was refused (then taken as NO_ACTION), with
    /// the raw answer.
    pub invalid: Option<String>,
    /// Why the external model was not followed (unreachable, late,
    /// invalid): the built-in model decided instead.
    pub fallback: Option<String>,
    /// The model the group was assigned (A/B).
    pub assigned: crate::ModelChoice,
}

/// `GET /v1/models/compare`: one row per model groups are assigned to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStats {
    pub model: crate::ModelChoice,
    /// Groups it decided for in the window.
    pub groups: i64,
    pub decisions: i64,
    /// SWITCH decisions acted on (auto mode).
    pub switches: i64,
    /// Answers of the external model not followed.
    pub fallbacks: i64,
    /// The PRIMARY's mean hourly price at decision time.
    pub cost_per_instance_hour: Option<f64>,
    /// Interruption notices in the groups it decides now.
    pub interruptions: i64,
    /// Switch downtime in the groups it decides now.
    pub switch_downtime_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    pub instance_id: String,
    pub group: String,
    pub role: Role,
    pub agent_id: Option<String>,
    pub instance_type: String,
    pub availability_zone: String,
    pub version: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// As an agent of the group last saw it in EC2.
    #[serde(default)]
    pub ec2_state: Option<String>,
    /// Epoch of the command that gave it its role (for a PRIMARY: its
    /// promotion's).
    #[serde(default)]
    pub role_epoch: u64,
    /// An operator declared it dead (not serving).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_dead_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    pub agent_id: String,
    pub instance_id: String,
    pub group: String,
    pub status: AgentStatus,
    pub registered_at_ms: i64,
    pub last_heartbeat_ms: Option<i64>,
    pub reported_role: Option<Role>,
    pub highest_epoch: u64,
    pub healthy: bool,
    pub backlog: u64,
    pub replaced_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandView {
    pub command: Command,
    /// The agent that runs it; the coordinator's EC2 executor when absent.
    pub agent_id: Option<String>,
    pub state: CommandState,
    pub created_at_ms: i64,
    pub result: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    pub actor: String,
    pub request_id: Option<String>,
    pub entity: String,
    pub action: String,
    pub pre_state: serde_json::Value,
    pub post_state: serde_json::Value,
    /// The leader term the entry was written in (0 with one coordinator on
    /// SQLite): never lower than an earlier entry's.
    #[serde(default)]
    pub leader_epoch: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CommandKind;

    fn demote(deadline_ms: i64) -> Command {
        Command {
            request_id: "demote-i-1-e2".into(),
            group: "g".into(),
            action: CommandKind::Demote,
            priority: 100,
            epoch: 2,
            deadline_ms,
        }
    }

    #[test]
    fn a_deadline_is_a_budget_measured_on_the_receivers_clock() {
        // The coordinator's clock is 60 s behind the agent's: 25 s of
        // budget stay 25 s.
        let r = PollResponse::new(vec![demote(1_025_000)], 1_000_000);
        let local = r.into_local(1_060_000);
        assert_eq!(local[0].deadline_ms, 1_085_000);
        // Already past on the coordinator's clock: past on the agent's too.
        let r = PollResponse::new(vec![demote(990_000)], 1_000_000);
        assert_eq!(r.into_local(5_000)[0].deadline_ms, -5_000);
    }

    #[test]
    fn a_coordinator_that_sends_no_clock_keeps_its_deadlines_and_old_agents_read_the_new_answer() {
        let old: PollResponse =
            serde_json::from_value(serde_json::json!({"commands": [demote(7)]})).unwrap();
        assert_eq!(old.sent_at_ms, None);
        assert_eq!(old.into_local(1_000)[0].deadline_ms, 7);
        // An agent of the previous release ignores the added field.
        #[derive(Deserialize)]
        struct Previous {
            #[allow(dead_code)]
            commands: Vec<Command>,
        }
        let v = serde_json::to_value(PollResponse::new(vec![demote(7)], 3)).unwrap();
        assert_eq!(v["sent_at_ms"], 3);
        serde_json::from_value::<Previous>(v).unwrap();
    }
}
