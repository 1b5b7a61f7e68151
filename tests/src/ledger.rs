//! The workload ledger: every simulated instance's fake workload appends
//! what it serves to one shared file, one JSON line per event, timed on
//! the machine's monotonic clock (`CLOCK_MONOTONIC`, shared by every
//! process). The checker reads it back as serving intervals and judges
//! what the *workload* did, not what any journal or store believed.
//!
//! Lines: `{"t_ns":..,"group":"db","instance":"i-1","event":"start","epoch":3}`
//! with events `start` (serving from now, at an epoch), `stop` (the demote
//! hook stopped it) and `killed` (the simulator killed the instance: written
//! after the process is dead, so the interval's true end is no later).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Nanoseconds on the monotonic clock every process of this machine shares.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub t_ns: u64,
    pub group: String,
    pub instance: String,
    pub event: String,
    #[serde(default)]
    pub epoch: u64,
}

/// Append one line (one `write` on an `O_APPEND` file: lines from many
/// processes never interleave).
pub fn append(path: &Path, line: &Line) -> std::io::Result<()> {
    let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
    text.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// One stretch of serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interval {
    pub instance: String,
    pub epoch: u64,
    pub start_ns: u64,
    /// `None`: still serving at the end of the ledger.
    pub end_ns: Option<u64>,
}

impl Interval {
    fn end_or(&self, horizon: u64) -> u64 {
        self.end_ns.unwrap_or(horizon)
    }
}

/// Two instances of one group serving at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Overlap {
    pub group: String,
    pub a: Interval,
    pub b: Interval,
    pub from_ns: u64,
    pub to_ns: u64,
}

/// The ledger, read back as intervals per group.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub groups: BTreeMap<String, Vec<Interval>>,
    /// The last time in the file (or now): where open intervals end.
    pub horizon_ns: u64,
}

impl Ledger {
    pub fn read(path: &Path) -> anyhow::Result<Ledger> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e.into()),
        };
        let mut lines: Vec<Line> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        lines.sort_by_key(|l| l.t_ns);
        Ok(Ledger::from_lines(&lines, monotonic_ns()))
    }

    pub fn from_lines(lines: &[Line], now_ns: u64) -> Ledger {
        let mut open: BTreeMap<(String, String), Interval> = BTreeMap::new();
        let mut groups: BTreeMap<String, Vec<Interval>> = BTreeMap::new();
        let mut horizon = now_ns;
        for l in lines {
            horizon = horizon.max(l.t_ns);
            let key = (l.group.clone(), l.instance.clone());
            let close = |open: &mut BTreeMap<(String, String), Interval>,
                         groups: &mut BTreeMap<String, Vec<Interval>>| {
                if let Some(mut i) = open.remove(&key) {
                    i.end_ns = Some(l.t_ns);
                    groups.entry(l.group.clone()).or_default().push(i);
                }
            };
            match l.event.as_str() {
                "start" => {
                    close(&mut open, &mut groups);
                    open.insert(
                        key.clone(),
                        Interval {
                            instance: l.instance.clone(),
                            epoch: l.epoch,
                            start_ns: l.t_ns,
                            end_ns: None,
                        },
                    );
                }
                _ => close(&mut open, &mut groups),
            }
        }
        for ((group, _), i) in open {
            groups.entry(group).or_default().push(i);
        }
        for v in groups.values_mut() {
            v.sort_by_key(|i| i.start_ns);
        }
        Ledger {
            groups,
            horizon_ns: horizon,
        }
    }

    /// Every pair of intervals of different instances of one group that
    /// overlap.
    pub fn overlaps(&self) -> Vec<Overlap> {
        let mut out = Vec::new();
        for (group, v) in &self.groups {
            for (i, a) in v.iter().enumerate() {
                for b in &v[i + 1..] {
                    if a.instance == b.instance {
                        continue;
                    }
                    let from = a.start_ns.max(b.start_ns);
                    let to = a.end_or(self.horizon_ns).min(b.end_or(self.horizon_ns));
                    if from < to {
                        out.push(Overlap {
                            group: group.clone(),
                            a: a.clone(),
                            b: b.clone(),
                            from_ns: from,
                            to_ns: to,
                        });
                    }
                }
            }
        }
        out
    }

    /// Epochs going backwards in what the workloads served: in each group,
    /// a later stretch of another instance must carry a higher epoch (two
    /// PRIMARIES never share one), and the same instance never a lower one.
    pub fn epoch_regressions(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (group, v) in &self.groups {
            for w in v.windows(2) {
                let (a, b) = (&w[0], &w[1]);
                let backwards = if a.instance == b.instance {
                    b.epoch < a.epoch
                } else {
                    b.epoch <= a.epoch
                };
                if backwards {
                    out.push(format!(
                        "{group}: {} served at epoch {} after {} at epoch {}",
                        b.instance, b.epoch, a.instance, a.epoch
                    ));
                }
            }
        }
        out
    }

    /// Who serves `group` at `t_ns`.
    pub fn serving_at(&self, group: &str, t_ns: u64) -> Vec<&Interval> {
        self.groups
            .get(group)
            .into_iter()
            .flatten()
            .filter(|i| i.start_ns <= t_ns && t_ns < i.end_or(self.horizon_ns))
            .collect()
    }

    /// Nanoseconds within [from, to) when nobody served `group`.
    pub fn unserved_ns(&self, group: &str, from: u64, to: u64) -> u64 {
        let mut covered: Vec<(u64, u64)> = self
            .groups
            .get(group)
            .into_iter()
            .flatten()
            .map(|i| (i.start_ns.max(from), i.end_or(self.horizon_ns).min(to)))
            .filter(|(a, b)| a < b)
            .collect();
        covered.sort();
        let mut served = 0;
        let mut cursor = from;
        for (a, b) in covered {
            let a = a.max(cursor);
            if b > a {
                served += b - a;
                cursor = b;
            }
        }
        (to.saturating_sub(from)).saturating_sub(served)
    }

    /// The instance serving `group` now (at the horizon), when exactly one.
    pub fn serving_now(&self, group: &str) -> Option<&Interval> {
        let v: Vec<&Interval> = self
            .groups
            .get(group)
            .into_iter()
            .flatten()
            .filter(|i| i.end_ns.is_none())
            .collect();
        (v.len() == 1).then(|| v[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(t: u64, inst: &str, event: &str, epoch: u64) -> Line {
        Line {
            t_ns: t,
            group: "g".into(),
            instance: inst.into(),
            event: event.into(),
            epoch,
        }
    }

    #[test]
    fn overlaps_are_found_and_handovers_are_not() {
        let clean = Ledger::from_lines(
            &[
                l(1, "a", "start", 1),
                l(5, "a", "stop", 0),
                l(6, "b", "start", 2),
            ],
            10,
        );
        assert!(clean.overlaps().is_empty());
        assert_eq!(clean.unserved_ns("g", 0, 10), 1 + 1);
        assert_eq!(clean.serving_now("g").unwrap().instance, "b");
        let bad = Ledger::from_lines(
            &[
                l(1, "a", "start", 1),
                l(6, "b", "start", 2),
                l(8, "a", "killed", 0),
            ],
            10,
        );
        let o = bad.overlaps();
        assert_eq!(o.len(), 1);
        assert_eq!((o[0].from_ns, o[0].to_ns), (6, 8));
        assert_eq!(bad.serving_at("g", 7).len(), 2);
    }

    #[test]
    fn a_later_primary_with_an_epoch_not_higher_is_a_regression() {
        let of = |v: &[(u64, &str, &str, u64)]| {
            let lines: Vec<Line> = v.iter().map(|(t, i, e, ep)| l(*t, i, e, *ep)).collect();
            Ledger::from_lines(&lines, 10).epoch_regressions()
        };
        let handover = [
            (1, "a", "start", 1),
            (2, "a", "stop", 0),
            (3, "b", "start", 2),
        ];
        assert!(of(&handover).is_empty());
        assert!(of(&[(1, "b", "start", 2), (4, "b", "start", 2)]).is_empty());
        let same_epoch = [
            (1, "a", "start", 3),
            (2, "a", "stop", 0),
            (3, "b", "start", 3),
        ];
        assert_eq!(of(&same_epoch).len(), 1);
    }
}
