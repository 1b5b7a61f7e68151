//! A replacement of the PRIMARY in progress, as the operator API shows it
//! (`GET /v1/groups/{name}/transition`) and ends it (`.../abort`).

use crate::types::Phase;
use serde::{Deserialize, Serialize};

/// A replacement of the PRIMARY in progress (see docs/STATE_MACHINE.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionView {
    pub phase: Phase,
    pub old: Option<String>,
    pub candidate: String,
    pub epoch: u64,
    pub emergency: bool,
    pub started_at_ms: i64,
    pub phase_started_ms: i64,
    /// The new PRIMARY should serve before this: the interruption's time,
    /// else 60 s after the start. A target for the operator's eye; it never
    /// shortens a grant unless it is `notice_at_ms` and still ahead.
    pub deadline_ms: i64,
    /// The notice (interruption, maintenance) this transition races, if
    /// any: while it is still in the future it caps a grant's window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice_at_ms: Option<i64>,
    pub priority: i64,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_id: Option<i64>,
    /// Instances that must be shown not to serve before the candidate is
    /// promoted (the old PRIMARY, candidates a roll-over gave up on), each
    /// with the epoch it was demoted at.
    #[serde(default)]
    pub fence: Vec<FenceTarget>,
    /// The candidate must finish its promotion within this of the grant.
    #[serde(default = "default_promote_budget")]
    pub promote_budget_ms: i64,
    /// Unix ms the coordinator that began it started: instances not heard
    /// since are fence targets, and nothing is granted before an EC2 view
    /// of the group taken since (strangers: see the store's promotion).
    #[serde(default)]
    pub heard_since_ms: i64,
}

fn default_promote_budget() -> i64 {
    25_000
}

/// `GET /v1/groups/{name}/transition`: the replacement in progress and
/// what it waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionStatus {
    pub transition: TransitionView,
    /// Each fence target and the evidence so far.
    pub targets: Vec<crate::planner::FenceSnap>,
    /// The candidate's `promote(epoch)`, once granted.
    #[serde(default)]
    pub promote: Option<crate::CommandState>,
    /// What has to happen next, in words.
    pub waiting_for: String,
    /// Nothing was granted yet: `POST .../transition/abort` may end it.
    pub abortable: bool,
}

/// `POST /v1/groups/{name}/transition/abort`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortTransitionRequest {
    /// The epoch of the transition you decided to abort (its `epoch`).
    pub expected_epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// An instance a transition must fence, and the epoch of its demotion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceTarget {
    pub instance_id: String,
    pub epoch: u64,
}
