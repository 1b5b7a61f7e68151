//! The PRIMARY's lease and what a heartbeat answer means for this agent.
//!
//! The coordinator leases the PRIMARY only: an answer grants a lease when
//! the store's PRIMARY is this instance *at the epoch this agent was
//! promoted at*. An agent that believes it is PRIMARY and gets any other
//! answer stops serving (runs its `demote` hook): the coordinator has
//! replaced it, or never confirmed it.
//!
//! A lease that runs out is **not** a reason to stop serving: nobody can
//! replace a PRIMARY without fencing it first (its acknowledged demotion,
//! or EC2 reporting it terminated), so a coordinator outage of any length
//! costs a healthy PRIMARY nothing (docs/STATE_MACHINE.md, "Fencing").
//! The lease is kept on the monotonic clock for status and logs only, and
//! a restarted agent holds none until a heartbeat confirms it.

use crate::agent::RoleState;
use spot_common::Role;
use spot_common::wire::HeartbeatResponse;

/// What to do with one heartbeat answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Our role changed while the request was in flight: the answer
    /// describes a past we no longer are; the next heartbeat decides.
    Ignore,
    /// PRIMARY confirmed at our epoch: lease for this long.
    Lease { ms: u64 },
    /// Nothing to do (not PRIMARY, or a candidate waiting for its promote).
    Keep,
    /// Take the coordinator's bookkeeping role (launching -> replica).
    Adopt { role: Role, epoch: u64 },
    /// We believe we are PRIMARY and the coordinator does not: stop serving.
    Demote { reason: String },
}

/// Judge an answer: `sent` is our role when the request went out, `now`
/// our role when the answer came back.
pub fn judge(sent: RoleState, now: RoleState, answer: &HeartbeatResponse) -> Verdict {
    if sent != now {
        return Verdict::Ignore;
    }
    match now.role {
        Some(Role::Primary) => {
            if answer.role == Role::Primary && answer.role_epoch == now.epoch {
                if answer.lease_ms > 0 {
                    Verdict::Lease {
                        ms: answer.lease_ms,
                    }
                } else {
                    Verdict::Keep
                }
            } else {
                Verdict::Demote {
                    reason: format!(
                        "the coordinator records this instance as {} at epoch {}, not PRIMARY at epoch {}",
                        answer.role, answer.role_epoch, now.epoch
                    ),
                }
            }
        }
        // A demoted instance never serves again (a new install does).
        Some(Role::Zombie) => Verdict::Keep,
        local => match answer.role {
            Role::Launching | Role::Replica if local != Some(answer.role) => Verdict::Adopt {
                role: answer.role,
                epoch: answer.role_epoch,
            },
            _ => Verdict::Keep,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake::answer;

    fn st(role: Option<Role>, epoch: u64) -> RoleState {
        RoleState { role, epoch }
    }

    #[test]
    fn the_primary_at_its_epoch_is_leased() {
        let p = st(Some(Role::Primary), 4);
        assert_eq!(
            judge(p, p, &answer(Role::Primary, 4, 15_000)),
            Verdict::Lease { ms: 15_000 }
        );
    }

    #[test]
    fn a_primary_the_coordinator_does_not_confirm_stops_serving() {
        let p = st(Some(Role::Primary), 4);
        // Replaced at a newer epoch while partitioned.
        assert!(matches!(
            judge(p, p, &answer(Role::Zombie, 5, 0)),
            Verdict::Demote { .. }
        ));
        // The store says REPLICA (e.g. a late promote that was rolled over).
        assert!(matches!(
            judge(p, p, &answer(Role::Replica, 4, 0)),
            Verdict::Demote { .. }
        ));
        // PRIMARY, but at another epoch: not this promotion.
        match judge(p, p, &answer(Role::Primary, 6, 15_000)) {
            Verdict::Demote { reason } => assert!(reason.contains("epoch 6"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_answer_to_a_role_we_no_longer_have_is_ignored() {
        // The request left as REPLICA; the promotion finished before the
        // answer came back saying REPLICA.
        let sent = st(Some(Role::Replica), 0);
        let now = st(Some(Role::Primary), 7);
        assert_eq!(
            judge(sent, now, &answer(Role::Replica, 0, 0)),
            Verdict::Ignore
        );
    }

    #[test]
    fn bookkeeping_roles_are_adopted_and_zombies_stay_zombies() {
        let l = st(Some(Role::Launching), 0);
        assert_eq!(
            judge(l, l, &answer(Role::Replica, 0, 0)),
            Verdict::Adopt {
                role: Role::Replica,
                epoch: 0
            }
        );
        let none = st(None, 0);
        assert!(matches!(
            judge(none, none, &answer(Role::Launching, 0, 0)),
            Verdict::Adopt { .. }
        ));
        let r = st(Some(Role::Replica), 0);
        // The candidate whose promotion was granted waits for its command.
        assert_eq!(judge(r, r, &answer(Role::Primary, 3, 0)), Verdict::Keep);
        let z = st(Some(Role::Zombie), 3);
        assert_eq!(
            judge(z, z, &answer(Role::Primary, 3, 15_000)),
            Verdict::Keep
        );
        assert_eq!(judge(z, z, &answer(Role::Replica, 3, 0)), Verdict::Keep);
    }
}
