//! The closed vocabularies: every enum the store keeps as text or the API
//! sends, each with its fixed lower-case names (`string_enum!`). One place
//! lists every word a client may send or read back.

crate::string_enum! {
    /// Role of an instance in its group. See docs/STATE_MACHINE.md.
    #[derive(Default)]
    pub enum Role("role") {
        /// Every instance starts here.
        #[default]
        Launching = "launching",
        Replica = "replica",
        Primary = "primary",
        Zombie = "zombie",
        Failed = "failed",
        Terminated = "terminated",
    }
}

crate::string_enum! {
    /// Liveness of an agent as the coordinator sees it. An agent that stops
    /// heartbeating is OFFLINE, never TERMINATED (invariant 4): only EC2
    /// decides that an instance is gone.
    pub enum AgentStatus("agent status") {
        Online = "online",
        Offline = "offline",
        /// Replaced by a newer registration from the same instance.
        Replaced = "replaced",
        /// Deleted by an operator; history stays linked.
        Deleted = "deleted",
    }
}

crate::string_enum! {
    /// Phase of a PRIMARY replacement in progress (docs/STATE_MACHINE.md).
    pub enum Phase("transition phase") {
        /// T1 done: waiting for the old PRIMARY to be fenced.
        Demoting = "demoting",
        /// T2 done: waiting for the candidate to confirm.
        Promoting = "promoting",
    }
}

crate::string_enum! {
    /// State of a manual switch.
    pub enum SwitchState("switch state") {
        /// Launching the instance in the target pool, then replacing.
        Launching = "launching",
        Done = "done",
        Failed = "failed",
    }
}

crate::string_enum! {
    /// Kinds of interruption signal an agent watches in IMDS.
    pub enum NoticeKind("notice kind") {
        /// `spot/instance-action`: two minutes left.
        Interruption = "interruption",
        /// `events/recommendations/rebalance`: early warning.
        Rebalance = "rebalance",
        /// `events/maintenance/scheduled`.
        ScheduledMaintenance = "scheduled_maintenance",
        /// A body that did not parse; kept for the operator, never fatal.
        Malformed = "malformed",
    }
}

crate::string_enum! {
    /// Outcome of a command on the agent.
    pub enum CommandOutcome("command outcome") {
        Done = "done",
        Failed = "failed",
        /// Refused because its epoch is below the highest the agent has seen.
        Stale = "stale",
        /// Not started before its deadline.
        Expired = "expired",
    }
}

crate::string_enum! {
    /// Where a command is in the coordinator's queue.
    pub enum CommandState("command state") {
        Queued = "queued",
        /// Handed to the agent; handed again after `redeliver_after`.
        Delivered = "delivered",
        Done = "done",
        Failed = "failed",
        Stale = "stale",
        Expired = "expired",
        /// Withdrawn by the coordinator (a rolled-over promotion).
        Cancelled = "cancelled",
    }
}

crate::string_enum! {
    /// Something that happens to one instance and may change its role.
    /// (A PRIMARY replacement in progress is a group's *transition*; this
    /// is the per-instance event.)
    pub enum RoleEvent("role event") {
        /// Its agent registered and reported healthy.
        RegisteredHealthy = "registered_healthy",
        /// The launch failed or the instance did not register in time.
        LaunchFailed = "launch_failed",
        /// Become PRIMARY (demotes the current PRIMARY in the same step).
        Promote = "promote",
        /// Stop being PRIMARY.
        Demote = "demote",
        /// Planned removal: replica off, zombie retention, bulk terminate.
        Retire = "retire",
        /// EC2 says the instance is gone.
        InstanceGone = "instance_gone",
    }
}

crate::string_enum! {
    /// What the decision engine may do for a group.
    #[derive(Default)]
    pub enum DecisionMode("decision mode") {
        /// No decisions.
        #[default]
        Off = "off",
        /// Decide and log what would have been done; never act.
        Shadow = "shadow",
        /// Decide and act (switch, launch a REPLICA).
        Auto = "auto",
    }
}

crate::string_enum! {
    /// What a named operator token may do.
    pub enum TokenRole("token role") {
        /// Everything the operator API offers.
        Admin = "admin",
        /// Read only: every GET, no change.
        Viewer = "viewer",
    }
}

crate::string_enum! {
    /// Which model decides for a group (A/B).
    pub enum ModelChoice("model") {
        /// The built-in model.
        Builtin = "builtin",
        /// The external model at `decision_model_url`.
        External = "external",
    }
}
