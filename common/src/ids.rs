//! Derived ids: every id the system derives from other ids is built and
//! parsed here, and nowhere else. A derived id makes a retried decision
//! idempotent: the same promotion at the same epoch is the same command.

use crate::PoolKey;

/// `promote-{instance}-e{epoch}`: the candidate's promotion at `epoch`.
pub fn promote(instance: &str, epoch: u64) -> String {
    format!("promote-{instance}-e{epoch}")
}

/// `demote-{instance}-e{epoch}`: fences `instance` at `epoch`.
pub fn demote(instance: &str, epoch: u64) -> String {
    format!("demote-{instance}-e{epoch}")
}

/// `fence-{instance}-e{epoch}-{attempt}`: the `attempt`-th try to stop
/// `instance` through EC2 for its demotion at `epoch`.
pub fn fence(instance: &str, epoch: u64, attempt: u32) -> String {
    format!("fence-{instance}-e{epoch}-{attempt}")
}

/// `terminate-{instance}`: the termination of an instance.
pub fn terminate(instance: &str) -> String {
    format!("terminate-{instance}")
}

/// `terminate-{instance}.{n}`: termination attempt `n` (from 1) after the
/// first ended without terminating it (its agent went away, EC2 refused).
pub fn terminate_retry(instance: &str, n: u32) -> String {
    format!("terminate-{instance}.{n}")
}

/// `switch-{id}-launch`: the launch of a manual switch.
pub fn switch_launch(switch_id: i64) -> String {
    format!("switch-{switch_id}-launch")
}

/// `cleanup-{agent}`: the cleanup of a deleted agent.
pub fn cleanup(agent_id: &str) -> String {
    format!("cleanup-{agent_id}")
}

/// `snapshot-{group}-{at_ms}`: a snapshot of a group's data volumes,
/// due at `at_ms`.
pub fn snapshot(group: &str, at_ms: i64) -> String {
    format!("snapshot-{group}-{at_ms}")
}

/// `launch-{nonce}`: a launch the coordinator decided; the caller brings a
/// fresh nonce (common reads no randomness).
pub fn launch(nonce: &str) -> String {
    format!("launch-{nonce}")
}

/// `{agent}:{seq}`: an outbox event's globally unique id.
pub fn event(agent_id: &str, seq: i64) -> String {
    format!("{agent_id}:{seq}")
}

/// A pool's display and key form, `type/zone`.
pub fn pool(key: &PoolKey) -> String {
    format!("{}/{}", key.instance_type, key.availability_zone)
}

/// What a derived command id says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Derived {
    Promote {
        instance: String,
        epoch: u64,
    },
    Demote {
        instance: String,
        epoch: u64,
    },
    Fence {
        instance: String,
        epoch: u64,
        attempt: u32,
    },
    Terminate {
        instance: String,
    },
    SwitchLaunch {
        switch_id: i64,
    },
    Cleanup {
        agent_id: String,
    },
}

fn with_epoch(rest: &str) -> Option<(String, u64)> {
    let (instance, epoch) = rest.rsplit_once("-e")?;
    if instance.is_empty() {
        return None;
    }
    Some((instance.to_owned(), epoch.parse().ok()?))
}

/// Parse a derived command id; `None` for ids that are not derived (a
/// launch, an operator's own request id).
pub fn parse(id: &str) -> Option<Derived> {
    if let Some(rest) = id.strip_prefix("promote-") {
        let (instance, epoch) = with_epoch(rest)?;
        return Some(Derived::Promote { instance, epoch });
    }
    if let Some(rest) = id.strip_prefix("demote-") {
        let (instance, epoch) = with_epoch(rest)?;
        return Some(Derived::Demote { instance, epoch });
    }
    if let Some(rest) = id.strip_prefix("fence-") {
        let (rest, attempt) = rest.rsplit_once('-')?;
        let (instance, epoch) = with_epoch(rest)?;
        return Some(Derived::Fence {
            instance,
            epoch,
            attempt: attempt.parse().ok()?,
        });
    }
    if let Some(rest) = id.strip_prefix("terminate-") {
        let instance = match rest.rsplit_once('.') {
            Some((i, n)) if n.parse::<u32>().is_ok() => i,
            _ => rest,
        };
        return (!instance.is_empty()).then(|| Derived::Terminate {
            instance: instance.to_owned(),
        });
    }
    if let Some(rest) = id.strip_prefix("switch-") {
        let switch_id = rest.strip_suffix("-launch")?.parse().ok()?;
        return Some(Derived::SwitchLaunch { switch_id });
    }
    if let Some(agent) = id.strip_prefix("cleanup-") {
        return (!agent.is_empty()).then(|| Derived::Cleanup {
            agent_id: agent.to_owned(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_derived_id_parses_back() {
        let cases = [
            (
                promote("i-0abc-1", 12),
                Derived::Promote {
                    instance: "i-0abc-1".into(),
                    epoch: 12,
                },
            ),
            (
                demote("i-x", 3),
                Derived::Demote {
                    instance: "i-x".into(),
                    epoch: 3,
                },
            ),
            (
                fence("i-e-e9", 9, 2),
                Derived::Fence {
                    instance: "i-e-e9".into(),
                    epoch: 9,
                    attempt: 2,
                },
            ),
            (
                terminate("i-1"),
                Derived::Terminate {
                    instance: "i-1".into(),
                },
            ),
            (
                terminate_retry("i-1", 2),
                Derived::Terminate {
                    instance: "i-1".into(),
                },
            ),
            (switch_launch(7), Derived::SwitchLaunch { switch_id: 7 }),
            (
                cleanup("agt-1"),
                Derived::Cleanup {
                    agent_id: "agt-1".into(),
                },
            ),
        ];
        for (id, want) in cases {
            assert_eq!(parse(&id), Some(want), "{id}");
        }
    }

    #[test]
    fn other_ids_are_not_derived() {
        for id in [
            "launch-1",
            "promote-",
            "promote-i-1-ex",
            "switch-x-launch",
            "op-42",
        ] {
            assert_eq!(parse(id), None, "{id}");
        }
        assert_eq!(parse(&launch("n")), None);
        assert_eq!(event("agt", 4), "agt:4");
    }
}
