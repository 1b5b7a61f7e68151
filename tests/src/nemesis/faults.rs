//! The fault vocabulary and the seeded schedule. A [`Draw`] is a fault
//! before it meets the fleet: what, on which group, on which role, for how
//! long and how hard. The same seed draws the same schedule, whatever the
//! fleet does meanwhile; the runner resolves each draw to an instance when
//! it applies it.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::Duration;

macro_rules! kinds {
    ($($kind:ident = $name:literal: $what:literal,)*) => {
        /// Every fault the nemesis injects.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum Kind {
            $(#[doc = $what] $kind,)*
        }

        impl Kind {
            pub const ALL: &[Kind] = &[$(Kind::$kind,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $(Kind::$kind => $name,)*
                }
            }

            /// One line per kind, for `--help` and errors.
            pub fn describe() -> String {
                let mut s = String::new();
                $(s.push_str(&format!("  {:<20} {}\n", $name, $what));)*
                s
            }
        }
    };
}

kinds! {
    AgentFreeze = "agent-freeze": "SIGSTOP an agent (its workload keeps running), SIGCONT later",
    AgentKill = "agent-kill": "kill -9 an agent; systemd-like restart after 1 s",
    JournalIo = "journal-io": "every journal call of an agent fails for a while",
    CoordinatorFreeze = "coordinator-freeze": "SIGSTOP the coordinator past the lease or the promotion timeout",
    CoordinatorKill = "coordinator-kill": "kill -9 the coordinator, restart it a few seconds later",
    CoordinatorRestore = "coordinator-restore": "restart the coordinator onto an older copy of its store",
    LinkCut = "link-cut": "cut an agent from the coordinator, both ways",
    LinkOneWay = "link-one-way": "the coordinator's answers to an agent are lost",
    LinkLatency = "link-latency": "add latency between an agent and the coordinator",
    Ec2Cut = "ec2-cut": "cut an agent from EC2",
    Ec2Throttle = "ec2-throttle": "EC2 answers RequestLimitExceeded to the next calls of one action",
    Ec2ServerError = "ec2-5xx": "EC2 answers 500 to the next calls of one action",
    Ec2LostAnswer = "ec2-lost-answer": "EC2 performs a call but its answer is lost",
    Ec2Slow = "ec2-slow": "terminations take seconds to show (slow state changes)",
    SlowHook = "slow-hook": "a REPLICA's promote hook outlasts the promotion timeout while its PRIMARY is interrupted",
    Unhealthy = "unhealthy": "an instance's workload fails its health check",
    AgentClock = "agent-clock": "step an agent's wall clock",
    CoordinatorClock = "coordinator-clock": "step the coordinator's wall clock",
    Interruption = "interruption": "a spot interruption notice; the instance dies when it takes effect",
    Rebalance = "rebalance": "a rebalance recommendation",
    Lost = "lost": "an instance dies without notice",
    RestoreCut = "restore-cut": "restore an older store copy while the PRIMARY is cut off, through the settle window",
    RestoreFreeze = "restore-freeze": "restore an older store copy while the PRIMARY's agent is frozen, through the settle window",
    LateReplacement = "late-replacement": "interrupt the PRIMARY; replacements boot after the reclaim, their promote hook takes 3 s",
    SlowBoot = "slow-boot": "launched instances boot in 20-40 s while the PRIMARY is interrupted",
    DeclareDead = "declare-dead": "an operator declares a live REPLICA dead during a transition (not forced)",
    LeaderKill = "leader-kill": "kill -9 the leading coordinator (PostgreSQL), restart it later",
    LeaderFreeze = "leader-freeze": "SIGSTOP the leading coordinator past its leader lease (PostgreSQL)",
    StoreRestart = "store-restart": "restart PostgreSQL: every coordinator's connections cut",
    LeaderCutStore = "leader-cut-store": "cut the leader from PostgreSQL, fully or one way (half-open)",
    FollowerCut = "follower-cut": "cut a following coordinator from PostgreSQL",
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.name() == s)
    }

    /// Faults of several coordinators on PostgreSQL.
    pub fn postgres_only(self) -> bool {
        matches!(
            self,
            Kind::LeaderKill
                | Kind::LeaderFreeze
                | Kind::StoreRestart
                | Kind::LeaderCutStore
                | Kind::FollowerCut
        )
    }

    /// Faults that restore a copy of the SQLite file.
    pub fn sqlite_only(self) -> bool {
        matches!(
            self,
            Kind::CoordinatorRestore | Kind::RestoreCut | Kind::RestoreFreeze
        )
    }

    /// Whether the kind applies to a fleet on this store.
    pub fn fits(self, postgres: bool) -> bool {
        if postgres {
            !self.sqlite_only()
        } else {
            !self.postgres_only()
        }
    }

    /// Faults whose unavailability counts for every group: the fleet-wide
    /// ones, and those that restore the store while hitting one instance.
    pub fn touches_every_group(self) -> bool {
        self.fleet_wide() || matches!(self, Kind::RestoreCut | Kind::RestoreFreeze)
    }

    /// The role a kind always hits, whatever the schedule's target.
    fn forced_role(self) -> Option<Target> {
        match self {
            Kind::SlowHook | Kind::DeclareDead => Some(Target::Replica),
            Kind::RestoreCut | Kind::RestoreFreeze | Kind::LateReplacement => Some(Target::Primary),
            _ => None,
        }
    }

    /// Faults of the whole fleet (the coordinator, EC2) rather than of one
    /// instance: every group's unavailability counts for them.
    pub fn fleet_wide(self) -> bool {
        self.postgres_only()
            || matches!(
                self,
                Kind::CoordinatorFreeze
                    | Kind::CoordinatorKill
                    | Kind::CoordinatorRestore
                    | Kind::CoordinatorClock
                    | Kind::Ec2Throttle
                    | Kind::Ec2ServerError
                    | Kind::Ec2LostAnswer
                    | Kind::Ec2Slow
                    | Kind::SlowBoot
            )
    }
}

/// Which instance an instance fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Primary,
    Replica,
    Any,
}

/// The fleet's timing, which some holds are drawn against.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub lease: Duration,
    pub promotion_timeout: Duration,
    /// The coordinators' leader lease (PostgreSQL).
    pub leader_lease: Duration,
}

/// One fault as drawn.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Draw {
    pub kind: Kind,
    /// Index of the group (instance faults) in the fleet.
    pub group: usize,
    /// The role the fault hits (instance faults).
    pub role: Target,
    /// How long the fault lasts before it is healed.
    pub hold_ms: u64,
    /// Kind-specific strength: latency or clock step (ms), calls affected,
    /// termination delay (ms), notice lead (ms).
    pub param: i64,
    /// The EC2 action an EC2 fault hits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    /// An interruption of the group's PRIMARY arrives during the fault.
    pub with_interruption: bool,
    /// Quiet time after recovery, before the next fault.
    pub gap_ms: u64,
}

pub struct Schedule {
    rng: StdRng,
    kinds: Vec<Kind>,
    target: Target,
    groups: usize,
    timing: Timing,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Schedule {
    pub fn new(seed: u64, kinds: &[Kind], target: Target, groups: usize, timing: Timing) -> Self {
        Schedule {
            rng: StdRng::seed_from_u64(seed),
            kinds: kinds.to_vec(),
            target,
            groups: groups.max(1),
            timing,
        }
    }

    fn secs(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng.random_range(lo * 1000..=hi * 1000)
    }

    /// The next fault.
    pub fn next_draw(&mut self) -> Draw {
        let kind = self.kinds[self.rng.random_range(0..self.kinds.len())];
        let group = self.rng.random_range(0..self.groups);
        let role = match self.target {
            Target::Any if self.rng.random_bool(0.7) => Target::Primary,
            Target::Any => Target::Replica,
            t => t,
        };
        let (lease, promotion) = (ms(self.timing.lease), ms(self.timing.promotion_timeout));
        let ec2_actions = [
            "RunInstances",
            "TerminateInstances",
            "DescribeInstances",
            "AssociateAddress",
        ];
        let mut action = None;
        let (hold_ms, param) = match kind {
            Kind::AgentFreeze => (self.secs(2, 20), 0),
            Kind::AgentKill | Kind::Rebalance => (1000, 0),
            Kind::JournalIo => (self.secs(2, 6), 0),
            Kind::CoordinatorFreeze => {
                // Past the lease, or past the promotion timeout too.
                let base = if self.rng.random_bool(0.5) {
                    lease
                } else {
                    promotion
                };
                (base + self.secs(1, 8), 0)
            }
            Kind::CoordinatorKill => (self.secs(1, 10), 0),
            Kind::CoordinatorRestore => (self.secs(1, 5), 0),
            Kind::LinkCut | Kind::LinkOneWay | Kind::Ec2Cut => (self.secs(2, 15), 0),
            Kind::LinkLatency => (self.secs(5, 15), self.rng.random_range(100..=1500)),
            Kind::Ec2Throttle | Kind::Ec2ServerError => {
                action = Some(ec2_actions[self.rng.random_range(0..ec2_actions.len())]);
                (5000, self.rng.random_range(3..=15))
            }
            Kind::Ec2LostAnswer => {
                let lost = ["RunInstances", "TerminateInstances", "AssociateAddress"];
                action = Some(lost[self.rng.random_range(0..lost.len())]);
                (5000, self.rng.random_range(1..=3))
            }
            Kind::Ec2Slow => (self.secs(10, 20), self.rng.random_range(3000..=10_000)),
            Kind::SlowHook => (promotion + 5000, 0),
            Kind::Unhealthy => (self.secs(3, 10), 0),
            Kind::AgentClock => (self.secs(5, 15), self.step(60)),
            Kind::CoordinatorClock => (self.secs(5, 15), self.step(30)),
            Kind::Interruption => {
                let lead = self.secs(5, 20);
                (lead, i64::try_from(lead).unwrap_or(0))
            }
            Kind::Lost => (0, 0),
            // Cut or frozen past the settle window (2 heartbeats + 1 s).
            Kind::RestoreCut | Kind::RestoreFreeze => (self.secs(5, 15), 0),
            Kind::LateReplacement => {
                // The notice's lead; the replacement boots 10-20 s after it.
                let lead = self.secs(5, 10);
                (lead + self.secs(10, 20), i64::try_from(lead).unwrap_or(0))
            }
            Kind::SlowBoot => {
                let boot = self.secs(20, 40);
                (boot, i64::try_from(boot).unwrap_or(0))
            }
            Kind::DeclareDead => (3000, 0),
            Kind::LeaderKill => (self.secs(1, 10), 0),
            Kind::LeaderFreeze => (ms(self.timing.leader_lease) + self.secs(1, 8), 0),
            Kind::StoreRestart => (1000, 0),
            // param 1: one way (answers lost: a half-open connection).
            Kind::LeaderCutStore => (self.secs(2, 15), i64::from(self.rng.random_bool(0.5))),
            Kind::FollowerCut => (self.secs(2, 15), 0),
        };
        let lifecycle = matches!(
            kind,
            Kind::Interruption
                | Kind::Lost
                | Kind::SlowHook
                | Kind::Rebalance
                | Kind::LateReplacement
                | Kind::DeclareDead
        );
        let with_interruption = matches!(kind, Kind::SlowHook | Kind::SlowBoot)
            || (!lifecycle && self.rng.random_bool(0.2));
        let role = kind.forced_role().unwrap_or(role);
        Draw {
            kind,
            group,
            role,
            hold_ms,
            param,
            action,
            with_interruption,
            gap_ms: self.rng.random_range(500..=2000),
        }
    }

    /// A clock step of 2 s up to `max_s`, either way.
    fn step(&mut self, max_s: u64) -> i64 {
        let v = i64::try_from(self.secs(2, max_s)).unwrap_or(0);
        if self.rng.random_bool(0.5) { v } else { -v }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        lease: Duration::from_secs(3),
        promotion_timeout: Duration::from_secs(15),
        leader_lease: Duration::from_secs(3),
    };

    #[test]
    fn the_same_seed_draws_the_same_schedule() {
        let draws = |seed| {
            let mut s = Schedule::new(seed, Kind::ALL, Target::Any, 3, TIMING);
            (0..50).map(|_| s.next_draw()).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }

    #[test]
    fn draws_stay_within_the_kinds_and_groups_asked_for() {
        let mut s = Schedule::new(1, &[Kind::LinkCut, Kind::Lost], Target::Primary, 2, TIMING);
        for _ in 0..200 {
            let d = s.next_draw();
            assert!(matches!(d.kind, Kind::LinkCut | Kind::Lost), "{d:?}");
            assert!(d.group < 2 && d.role == Target::Primary, "{d:?}");
        }
    }

    #[test]
    fn a_coordinator_freeze_outlasts_the_lease() {
        let mut s = Schedule::new(3, &[Kind::CoordinatorFreeze], Target::Any, 1, TIMING);
        for _ in 0..100 {
            assert!(s.next_draw().hold_ms > 3000);
        }
    }

    #[test]
    fn every_kind_has_a_unique_name_that_parses_back() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()), Some(*k));
        }
        assert_eq!(Kind::parse("meteor"), None);
    }
}
