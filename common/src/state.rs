//! The instance role state machine (DESIGN.md) and the group rules on top of
//! it.
//!
//! `next` is the per-instance transition function over `RoleEvent`s.
//! `GroupModel` applies an event to a whole group and returns every role
//! change it implies (a promotion demotes the old PRIMARY in the same step)
//! plus the new epoch.
//! The coordinator's store loads a group, asks the model, and writes the
//! answer in one transaction with optimistic version checks, so the rules
//! live here once and the database constraints are the second line.

use crate::types::Role;
pub use crate::vocab::RoleEvent;
use std::collections::BTreeMap;

/// A refused role change, naming the rule it broke (stable, for API errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("{event} is not allowed from {from} (rule: {rule})")]
    Illegal {
        from: Role,
        event: RoleEvent,
        rule: &'static str,
    },
    #[error("unknown instance {0}")]
    UnknownInstance(String),
    #[error("stale epoch: expected {expected}, group is at {actual}")]
    StaleEpoch { expected: u64, actual: u64 },
}

impl RoleError {
    pub fn rule(&self) -> &'static str {
        match self {
            RoleError::Illegal { rule, .. } => rule,
            RoleError::UnknownInstance(_) => "instance_must_exist",
            RoleError::StaleEpoch { .. } => "epoch_must_match",
        }
    }
}

/// The per-instance transition function.
pub fn next(from: Role, t: RoleEvent) -> Result<Role, RoleError> {
    use Role::*;
    use RoleEvent::*;
    let illegal = |rule| {
        Err(RoleError::Illegal {
            from,
            event: t,
            rule,
        })
    };
    match (from, t) {
        (Terminated, _) => illegal("terminated_is_final"),
        (_, InstanceGone) => Ok(Terminated),
        (Launching, RegisteredHealthy) => Ok(Replica),
        (Launching, LaunchFailed) => Ok(Failed),
        (Replica, Promote) => Ok(Primary),
        (Primary, Demote) => Ok(Zombie),
        (Replica | Zombie | Failed, Retire) => Ok(Terminated),
        (_, RegisteredHealthy) => illegal("only_launching_registers"),
        (_, LaunchFailed) => illegal("only_launching_fails"),
        (_, Promote) => illegal("promote_requires_replica"),
        (_, Demote) => illegal("demote_requires_primary"),
        (Launching | Primary, Retire) => illegal("retire_requires_replica_zombie_or_failed"),
    }
}

/// One role change, as the store must write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleChange {
    pub instance_id: String,
    pub from: Role,
    pub to: Role,
}

/// A group's roles and epoch, enough to decide any role change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupModel {
    pub epoch: u64,
    pub roles: BTreeMap<String, Role>,
}

/// What an event does to a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub changes: Vec<RoleChange>,
    pub epoch: u64,
}

impl GroupModel {
    pub fn primary(&self) -> Option<&str> {
        self.roles
            .iter()
            .find(|(_, r)| **r == Role::Primary)
            .map(|(id, _)| id.as_str())
    }

    pub fn count(&self, role: Role) -> usize {
        self.roles.values().filter(|r| **r == role).count()
    }

    /// Decide an event without changing the model.
    ///
    /// `expected_epoch`, when given, must equal the group's epoch: two
    /// promotions decided against the same epoch cannot both commit.
    /// Any change to or from PRIMARY bumps the epoch (invariant 5).
    pub fn decide(
        &self,
        instance_id: &str,
        t: RoleEvent,
        expected_epoch: Option<u64>,
    ) -> Result<Outcome, RoleError> {
        if let Some(expected) = expected_epoch
            && expected != self.epoch
        {
            return Err(RoleError::StaleEpoch {
                expected,
                actual: self.epoch,
            });
        }
        let from = *self
            .roles
            .get(instance_id)
            .ok_or_else(|| RoleError::UnknownInstance(instance_id.to_owned()))?;
        let to = next(from, t)?;
        let mut changes = Vec::with_capacity(2);
        if to == Role::Primary
            && let Some(old) = self.primary()
        {
            changes.push(RoleChange {
                instance_id: old.to_owned(),
                from: Role::Primary,
                to: Role::Zombie,
            });
        }
        changes.push(RoleChange {
            instance_id: instance_id.to_owned(),
            from,
            to,
        });
        let touches_primary = changes
            .iter()
            .any(|c| c.from == Role::Primary || c.to == Role::Primary);
        let epoch = if touches_primary {
            self.epoch + 1
        } else {
            self.epoch
        };
        Ok(Outcome { changes, epoch })
    }

    /// Decide and apply.
    pub fn apply(
        &mut self,
        instance_id: &str,
        t: RoleEvent,
        expected_epoch: Option<u64>,
    ) -> Result<Outcome, RoleError> {
        let outcome = self.decide(instance_id, t, expected_epoch)?;
        for c in &outcome.changes {
            self.roles.insert(c.instance_id.clone(), c.to);
        }
        self.epoch = outcome.epoch;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::*;
    use RoleEvent::*;
    use proptest::prelude::*;

    /// The whole table of DESIGN.md, written out so a change to `next` that
    /// is not also a change here fails.
    fn expected(from: Role, t: RoleEvent) -> Option<Role> {
        match (from, t) {
            (Launching, RegisteredHealthy) => Some(Replica),
            (Launching, LaunchFailed) => Some(Failed),
            (Replica, Promote) => Some(Primary),
            (Primary, Demote) => Some(Zombie),
            (Replica, Retire) | (Zombie, Retire) | (Failed, Retire) => Some(Terminated),
            (Terminated, _) => None,
            (_, InstanceGone) => Some(Terminated),
            _ => None,
        }
    }

    #[test]
    fn every_pair_of_role_and_transition() {
        let mut legal = 0;
        for &from in Role::ALL {
            for &t in RoleEvent::ALL {
                match (next(from, t), expected(from, t)) {
                    (Ok(to), Some(want)) => {
                        assert_eq!(to, want, "{from} --{t}-->");
                        legal += 1;
                    }
                    (Err(e), None) => assert!(!e.rule().is_empty()),
                    (got, want) => panic!("{from} --{t}--> got {got:?}, want {want:?}"),
                }
            }
        }
        // 7 explicit edges + InstanceGone from the 5 live roles.
        assert_eq!(legal, 12);
    }

    #[test]
    fn illegal_transition_names_its_rule() {
        let e = next(Launching, Promote).unwrap_err();
        assert_eq!(e.rule(), "promote_requires_replica");
        assert_eq!(
            next(Terminated, InstanceGone).unwrap_err().rule(),
            "terminated_is_final"
        );
    }

    fn group(roles: &[(&str, Role)]) -> GroupModel {
        GroupModel {
            epoch: 7,
            roles: roles.iter().map(|(i, r)| ((*i).to_owned(), *r)).collect(),
        }
    }

    #[test]
    fn promotion_demotes_the_old_primary_and_bumps_epoch() {
        let mut g = group(&[("a", Primary), ("b", Replica)]);
        let o = g.apply("b", Promote, Some(7)).unwrap();
        assert_eq!(o.epoch, 8);
        assert_eq!(g.roles["a"], Zombie);
        assert_eq!(g.roles["b"], Primary);
        assert_eq!(o.changes.len(), 2);
    }

    #[test]
    fn two_promotions_against_one_epoch_cannot_both_win() {
        let g = group(&[("a", Primary), ("b", Replica), ("c", Replica)]);
        let mut first = g.clone();
        first.apply("b", Promote, Some(7)).unwrap();
        let e = first.apply("c", Promote, Some(7)).unwrap_err();
        assert_eq!(
            e,
            RoleError::StaleEpoch {
                expected: 7,
                actual: 8
            }
        );
    }

    #[test]
    fn replica_registration_does_not_bump_epoch() {
        let mut g = group(&[("a", Launching)]);
        assert_eq!(g.apply("a", RegisteredHealthy, None).unwrap().epoch, 7);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add,
        Apply(usize, RoleEvent, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => Just(Op::Add),
            6 => (0usize..8, prop::sample::select(RoleEvent::ALL.to_vec()), any::<bool>())
                .prop_map(|(i, t, e)| Op::Apply(i, t, e)),
        ]
    }

    proptest! {
        /// Random sequences of operations never give a group two PRIMARIES,
        /// never move the epoch backwards, and never resurrect a TERMINATED
        /// instance; a refused operation changes nothing.
        #[test]
        fn invariants_hold_under_random_operations(ops in prop::collection::vec(op(), 1..200)) {
            let mut g = GroupModel::default();
            let mut n = 0;
            for op in ops {
                let before = g.clone();
                match op {
                    Op::Add => {
                        g.roles.insert(format!("i-{n}"), Launching);
                        n += 1;
                    }
                    Op::Apply(i, t, with_epoch) => {
                        let id = format!("i-{}", i % n.max(1));
                        let expected = with_epoch.then_some(g.epoch);
                        if g.apply(&id, t, expected).is_err() {
                            prop_assert_eq!(&g, &before);
                        }
                    }
                }
                prop_assert!(g.count(Primary) <= 1);
                prop_assert!(g.epoch >= before.epoch);
                for (id, r) in &before.roles {
                    if *r == Terminated {
                        prop_assert_eq!(g.roles[id], Terminated);
                    }
                }
            }
        }
    }
}
