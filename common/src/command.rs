//! Commands (coordinator -> agent) and events (agent -> coordinator): the
//! messages of the agent protocol.

use crate::types::{DataVolume, Pool, Promotion};
pub use crate::vocab::{CommandOutcome, CommandState, NoticeKind};
use serde::{Deserialize, Serialize};

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
    /// Become PRIMARY: health check, promotion (address), `promote` hook.
    Promote {
        #[serde(default)]
        promotion: Promotion,
        /// Instances the coordinator has fenced: the Elastic IP may be
        /// taken from them (or from nobody), never from anyone else.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        address_from: Vec<String>,
        /// The group's data volumes as the store knows them: detached from
        /// an instance of `address_from` (forced only when EC2 shows it
        /// stopped or terminated), attached here before the hook; in
        /// another zone, new volumes from the latest snapshots.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        data_volumes: Vec<DataVolume>,
    },
    /// Snapshot the data volumes attached here (the PRIMARY) and keep the
    /// newest `keep` per device.
    Snapshot { volumes: Vec<DataVolume>, keep: u32 },
    /// Stop serving: `demote` hook.
    Demote,
    /// STONITH: terminate `instance_id` through EC2 and wait until EC2
    /// reports it terminated.
    Fence { instance_id: String },
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
            CommandKind::Fence { .. } => "fence",
            CommandKind::Terminate { .. } => "terminate",
            CommandKind::Cleanup => "cleanup",
            CommandKind::Snapshot { .. } => "snapshot",
        }
    }

    /// Role-changing commands carry the group epoch and are fenced by it.
    pub fn is_role_change(&self) -> bool {
        matches!(self, CommandKind::Promote { .. } | CommandKind::Demote)
    }

    /// Whether a command past its deadline is refused. A demote never is:
    /// stepping down late is always safe, and a refused demote turns a
    /// graceful demotion into an EC2 termination.
    pub fn expires(&self) -> bool {
        !matches!(self, CommandKind::Demote)
    }

    /// Commands of the failover path: they run in the agent's role lane,
    /// never behind a slow launch.
    pub fn is_urgent(&self) -> bool {
        matches!(
            self,
            CommandKind::Promote { .. } | CommandKind::Demote | CommandKind::Fence { .. }
        )
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

impl CommandState {
    /// Still waiting for a result.
    pub fn is_open(self) -> bool {
        matches!(self, CommandState::Queued | CommandState::Delivered)
    }
}

impl From<CommandOutcome> for CommandState {
    fn from(o: CommandOutcome) -> Self {
        match o {
            CommandOutcome::Done => CommandState::Done,
            CommandOutcome::Failed => CommandState::Failed,
            CommandOutcome::Stale => CommandState::Stale,
            CommandOutcome::Expired => CommandState::Expired,
        }
    }
}

/// One spot price as an agent reports it (as AWS gives it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricePoint {
    pub instance_type: String,
    pub availability_zone: String,
    pub product_description: String,
    /// RFC 3339, as AWS gives it.
    pub timestamp: String,
    /// Decimal string, e.g. "0.031400".
    pub price: String,
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
        /// AWS's instance action (`terminate`, `stop`, `hibernate`).
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
    /// The agent stopped serving on its own: the coordinator answered that
    /// it is not PRIMARY at its epoch, or its journal failed. `hook_ok`:
    /// its `demote` hook succeeded (only then does it count as fenced).
    SelfDemoted {
        epoch: u64,
        reason: String,
        #[serde(default)]
        hook_ok: bool,
    },
    /// EC2 states of the group's instances, as DescribeInstances shows them.
    Ec2States { instances: Vec<Ec2State> },
    /// Spot prices captured from DescribeSpotPriceHistory; journaled in
    /// the outbox like every event, delivered to the `pricing` endpoint.
    Prices { points: Vec<PricePoint> },
    /// What a promote or snapshot command did to the data volumes, sent
    /// before its result: the volumes now attached here (new ones when
    /// restored in another zone) and the snapshots started.
    DataVolumes {
        request_id: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attached: Vec<VolumeAt>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        snapshots: Vec<SnapshotTaken>,
    },
}

/// A data volume as attached, and its zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeAt {
    pub volume_id: String,
    pub device: String,
    pub availability_zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotTaken {
    pub volume_id: String,
    pub device: String,
    pub snapshot_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2State {
    pub instance_id: String,
    /// `pending`, `running`, `shutting-down`, `terminated`, ...
    pub state: String,
    /// Its `spot:request-id` tag: the launch command that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
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
            EventBody::DataVolumes { .. } => "data_volumes",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_wire_form_round_trips() {
        let c = Command {
            request_id: "r1".into(),
            group: "g".into(),
            action: CommandKind::Terminate {
                instance_id: "i-1".into(),
            },
            priority: crate::PRIORITY_EMERGENCY,
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

    #[test]
    fn outcomes_map_to_final_states() {
        for o in CommandOutcome::ALL {
            let s = CommandState::from(*o);
            assert!(!s.is_open());
            assert_eq!(s.as_str(), o.as_str());
        }
    }
}
