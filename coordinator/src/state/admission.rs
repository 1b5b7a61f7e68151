//! Load shedding for the agent API. Under overload the coordinator keeps
//! what keeps workloads safe: it refuses registrations first (an agent
//! that is not registered yet serves nothing), then heartbeats (a PRIMARY
//! holds its lease for several heartbeats), and never command results and
//! events (a demote's acknowledgement is what a replacement waits for).
//! The long-poll is not counted: it waits by design.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Short agent requests (registrations, heartbeats, events, price
/// reports) in flight at once before shedding starts. Far above what
/// 25,000 agents produce in steady state (a heartbeat answers from memory
/// in well under a millisecond). A fleet's storms (registrations, then
/// each instance's first beat, both durable writes) wait parked in a
/// group commit (`state::group_commit`), where they cost a future each
/// and delay no steady heartbeat; at 1,024 the 10,000-agent storm on
/// PostgreSQL still shed about 400 first beats, which agents retry.
pub const AGENT_API_CAPACITY: usize = 4096;

/// What an agent request is, for shedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Register,
    Heartbeat,
    /// Events (command results among them) and price reports.
    Report,
}

impl Class {
    /// The share of the capacity this class may fill, in tenths.
    fn tenths(self) -> Option<usize> {
        match self {
            Class::Register => Some(5),
            Class::Heartbeat => Some(9),
            Class::Report => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Register => "register",
            Class::Heartbeat => "heartbeat",
            Class::Report => "report",
        }
    }

    /// How long a shed agent is told to wait (`Retry-After`, whole
    /// seconds, spread so a shed storm does not come back at once).
    pub fn retry_after(self) -> Duration {
        use rand::Rng;
        let (lo, hi) = match self {
            Class::Register => (2, 10),
            _ => (1, 3),
        };
        Duration::from_secs(rand::rng().random_range(lo..=hi))
    }
}

#[derive(Debug)]
pub struct Admission {
    in_flight: AtomicUsize,
    capacity: usize,
}

/// One admitted request, counted until dropped.
pub struct Ticket<'a>(&'a AtomicUsize);

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new(AGENT_API_CAPACITY)
    }
}

impl Admission {
    pub fn new(capacity: usize) -> Admission {
        Admission {
            in_flight: AtomicUsize::new(0),
            capacity: capacity.max(1),
        }
    }

    /// Admit a request of `class`, or `None`: shed it.
    pub fn enter(&self, class: Class) -> Option<Ticket<'_>> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let ticket = Ticket(&self.in_flight);
        match class.tenths() {
            Some(t) if before >= self.capacity * t / 10 => None,
            _ => Some(ticket),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_shed_before_heartbeats_and_reports_never() {
        let a = Admission::new(10);
        let mut held = Vec::new();
        let admitted = |a: &Admission| {
            [Class::Register, Class::Heartbeat, Class::Report].map(|c| a.enter(c).is_some())
        };
        assert_eq!(admitted(&a), [true, true, true]);
        // Load rises: registrations go at half the capacity, heartbeats
        // at nine tenths, reports never.
        let mut seen = Vec::new();
        for _ in 0..12 {
            seen.push((a.in_flight(), admitted(&a)));
            held.push(a.enter(Class::Report).expect("reports are never shed"));
        }
        let first_refused = |k: usize| seen.iter().find(|(_, ok)| !ok[k]).map(|(n, _)| *n);
        assert_eq!(first_refused(0), Some(5));
        assert_eq!(first_refused(1), Some(9));
        assert_eq!(first_refused(2), None);
        // A refused request is not left counted.
        assert_eq!(a.in_flight(), 12);
        held.clear();
        assert_eq!(a.in_flight(), 0);
        assert_eq!(admitted(&a), [true, true, true]);
    }
}
