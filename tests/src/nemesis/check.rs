//! The nemesis checker. It judges what happened, not what anything
//! believed:
//! * the ledger: two instances of one group never served at once, and the
//!   epochs the workloads served under never went backwards;
//! * every journal, sampled while the run went on: an agent's highest
//!   accepted epoch never went backwards;
//! * EC2: one instance per launch request id; the hook logs: a command's
//!   hook completed once per agent process (a resumed command after a crash
//!   may run its idempotent hook again, in a new process);
//! * EC2's record of every data volume: never attached to two instances
//!   at once, never to a new PRIMARY while the old one still served, and
//!   attached whenever a promote hook started the workload;
//! * the store's audit log: its entries' leader terms never go back (on
//!   PostgreSQL: no write of a deposed leader landed after its successor's);
//! * the end state: no instance running that the store does not hold in a
//!   live role (a leak), no command left open long past its deadline for
//!   an agent that is online (stuck); stuck groups were found during the
//!   run (not back to one serving PRIMARY within the recovery bound).
//!
//! Each violation carries the faults around it: with the seed, the
//! minimal history to reproduce it.

use super::{Applied, Run};
use crate::scenarios::InvariantChecker;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub kind: String,
    pub detail: String,
    /// The faults in the minute before it.
    pub history: Vec<Applied>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stats {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Stats {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1;
            v.get(i).copied().unwrap_or(0.0)
        };
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        Stats {
            n: v.len(),
            p50: round(rank(0.50)),
            p99: round(rank(0.99)),
            max: round(v.last().copied().unwrap_or(0.0)),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub groups: usize,
    pub duration_s: f64,
    pub faults: BTreeMap<String, usize>,
    pub overlaps: usize,
    pub double_executions: usize,
    pub epoch_regressions: usize,
    pub stuck_groups: usize,
    pub stuck_commands: usize,
    pub leaked_instances: usize,
    /// Audit entries written in an older leader term than one before them.
    pub deposed_leader_writes: usize,
    /// A data volume attached to two instances at once, before the old
    /// PRIMARY was fenced, or missing when a promote hook ran.
    pub volume_violations: usize,
    pub unavailability_s: BTreeMap<String, Stats>,
    pub verdict: &'static str,
    pub violations: Vec<Violation>,
    pub history: Vec<Applied>,
}

/// The faults whose span (applied to recovered) came within `window_s`
/// before `t_ns`.
pub fn history_before(history: &[Applied], t_ns: u64, window_s: u64) -> Vec<Applied> {
    let from = t_ns.saturating_sub(window_s * 1_000_000_000);
    history
        .iter()
        .filter(|a| a.start_ns <= t_ns && a.end_ns >= from)
        .cloned()
        .collect()
}

fn violation(run: &Run, kind: &str, detail: String, t_ns: u64) -> Violation {
    Violation {
        kind: kind.into(),
        detail,
        history: history_before(&run.history, t_ns, 60),
    }
}

/// Judge the run once its last fault is healed.
pub(super) async fn judge(
    run: &mut Run,
    seed: u64,
    journals: InvariantChecker,
) -> anyhow::Result<Report> {
    // Settle: the last fault's recovery was awaited; give cleanups a moment.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = crate::ledger::monotonic_ns();
    let mut violations = std::mem::take(&mut run.stuck);
    let stuck_groups = violations.len();

    let ledger = run.f.ledger()?;
    let overlaps = ledger.overlaps();
    for o in &overlaps {
        let detail = format!(
            "{} (epoch {}) and {} (epoch {}) served {} at once for {:.3} s",
            o.a.instance,
            o.a.epoch,
            o.b.instance,
            o.b.epoch,
            o.group,
            (o.to_ns - o.from_ns) as f64 / 1e9
        );
        violations.push(violation(run, "overlap", detail, o.from_ns));
    }

    let mut regressions = ledger.epoch_regressions();
    regressions.extend(journals.epoch_problems().await?);
    for r in &regressions {
        violations.push(violation(run, "epoch_regression", r.clone(), now));
    }

    let doubles = double_executions(run);
    for d in &doubles {
        violations.push(violation(run, "double_execution", d.clone(), now));
    }

    let leaks = leaked_instances(run).await?;
    for l in &leaks {
        violations.push(violation(run, "leaked_instance", l.clone(), now));
    }

    for (group, eni) in &run.enis {
        let primary = run.f.primary(group).await?;
        let holder = run.f.ec2.eni_holder(eni);
        if primary.is_some() && holder != primary {
            let detail = format!(
                "{eni} is on {holder:?}, {group}'s PRIMARY is {primary:?} (attached to, in order: {:?})",
                run.f.ec2.eni_history(eni)
            );
            violations.push(violation(run, "eni_misplaced", detail, now));
        }
    }

    let mut volume_problems = Vec::new();
    for (group, vol) in &run.volumes {
        volume_problems.extend(crate::scenarios::volumes::volume_violations(
            &run.f, group, vol,
        )?);
    }
    for v in &volume_problems {
        violations.push(violation(run, "data_volume", v.clone(), now));
    }

    let deposed = deposed_leader_writes(run).await?;
    for d in &deposed {
        violations.push(violation(run, "deposed_leader_write", d.clone(), now));
    }

    let stuck_commands = stuck_commands(run).await?;
    for c in &stuck_commands {
        violations.push(violation(run, "stuck_command", c.clone(), now));
    }

    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    for a in &run.history {
        *faults.entry(a.draw.kind.name().to_owned()).or_default() += 1;
    }
    let unavailability_s = run
        .samples
        .iter()
        .map(|(k, v)| (k.clone(), Stats::of(v)))
        .collect();
    let clean = violations.is_empty();
    Ok(Report {
        seed,
        groups: run.groups.len(),
        duration_s: run.since_start(now),
        faults,
        overlaps: overlaps.len(),
        double_executions: doubles.len(),
        epoch_regressions: regressions.len(),
        stuck_groups,
        stuck_commands: stuck_commands.len(),
        leaked_instances: leaks.len(),
        deposed_leader_writes: deposed.len(),
        volume_violations: volume_problems.len(),
        unavailability_s,
        verdict: if clean { "pass" } else { "fail" },
        violations,
        history: run.history.clone(),
    })
}

/// Audit entries whose leader term is lower than an earlier entry's.
async fn deposed_leader_writes(run: &Run) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let (mut after, mut last) = (0i64, 0i64);
    loop {
        let page = run
            .f
            .get(&format!("/v1/audit?after_id={after}&limit=1000"))
            .await?;
        let entries = page.as_array().cloned().unwrap_or_default();
        for e in &entries {
            let term = e["leader_epoch"].as_i64().unwrap_or(0);
            if term < last {
                out.push(format!(
                    "audit entry {} ({} on {}) written in leader term {term} after one of term {last}",
                    e["id"], e["action"], e["entity"]
                ));
            }
            last = last.max(term);
            after = e["id"].as_i64().unwrap_or(after);
        }
        if entries.len() < 1000 {
            return Ok(out);
        }
    }
}

/// More than one EC2 instance for a launch request; a hook completed twice
/// for one request in one agent process.
fn double_executions(run: &Run) -> Vec<String> {
    let mut out = Vec::new();
    let mut per_request: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in run.f.ec2.instances() {
        if let Some(rid) = i.tag("spot:request-id") {
            per_request
                .entry(rid.to_owned())
                .or_default()
                .push(i.instance_id.clone());
        }
    }
    for (rid, ids) in per_request {
        if ids.len() > 1 {
            out.push(format!("launch {rid} created {}", ids.join(", ")));
        }
    }
    let logs: Vec<(String, std::path::PathBuf)> = crate::lock(&run.f.nodes)
        .iter()
        .map(|(id, n)| (id.clone(), n.agent.hooks_dir.join(crate::fleet::HOOK_LOG)))
        .collect();
    for (id, path) in logs {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for line in text.lines() {
            *seen.entry(line.trim()).or_default() += 1;
        }
        for (line, n) in seen {
            if n > 1 && !line.is_empty() {
                out.push(format!(
                    "{id}: hook run `{line}` completed {n} times in one agent process"
                ));
            }
        }
    }
    out
}

/// Instances EC2 runs that the store does not hold in a live role, once
/// the fleet had 30 s to settle.
async fn leaked_instances(run: &Run) -> anyhow::Result<Vec<String>> {
    let find = || async {
        let known = run.f.get("/v1/instances").await.ok()?;
        let role: HashMap<&str, &str> = known
            .as_array()?
            .iter()
            .filter_map(|i| Some((i["instance_id"].as_str()?, i["role"].as_str()?)))
            .collect();
        let leaks: Vec<String> = run
            .f
            .ec2
            .instances()
            .into_iter()
            .filter(|i| matches!(i.state.as_str(), "pending" | "running"))
            .filter(|i| {
                !matches!(
                    role.get(i.instance_id.as_str()),
                    Some(&("launching" | "replica" | "primary" | "zombie"))
                )
            })
            .map(|i| {
                format!(
                    "{} is {} in EC2 but {} in the store",
                    i.instance_id,
                    i.state,
                    role.get(i.instance_id.as_str()).unwrap_or(&"unknown")
                )
            })
            .collect();
        Some(leaks)
    };
    let settled =
        crate::harness::eventually("no leaked instance", Duration::from_secs(30), || async {
            find().await.filter(Vec::is_empty)
        })
        .await;
    Ok(match settled {
        Ok(_) => Vec::new(),
        Err(_) => find().await.unwrap_or_default(),
    })
}

/// Commands still open a minute past their deadline, for an agent that is
/// online (or for the coordinator's own executor).
async fn stuck_commands(run: &Run) -> anyhow::Result<Vec<String>> {
    let agents = run.f.get("/v1/agents").await?;
    let online: Vec<&str> = agents
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["status"] == "online")
        .filter_map(|a| a["agent_id"].as_str())
        .collect();
    let commands = run.f.get("/v1/commands").await?;
    let now = crate::now_ms();
    Ok(commands
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| matches!(c["state"].as_str(), Some("queued" | "delivered")))
        .filter(|c| {
            c["command"]["deadline_ms"]
                .as_i64()
                .is_some_and(|d| d < now - 60_000)
        })
        .filter(|c| match c["agent_id"].as_str() {
            Some(a) => online.contains(&a),
            None => true,
        })
        .map(|c: &Value| {
            format!(
                "{} ({}) for {} is {} past its deadline",
                c["command"]["request_id"],
                c["command"]["action"]["kind"],
                c["agent_id"].as_str().unwrap_or("the coordinator"),
                c["state"]
            )
        })
        .collect())
}

impl Report {
    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "nemesis seed {}: {} group(s), {:.0} s, {} fault(s)\n",
            self.seed,
            self.groups,
            self.duration_s,
            self.history.len()
        );
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect();
        s.push_str(&format!("  faults: {}\n", faults.join(", ")));
        s.push_str(&format!(
            "  overlaps {}, double executions {}, epoch regressions {}, stuck groups {}, stuck commands {}, leaked instances {}, deposed-leader writes {}, data volume violations {}\n",
            self.overlaps,
            self.double_executions,
            self.epoch_regressions,
            self.stuck_groups,
            self.stuck_commands,
            self.leaked_instances,
            self.deposed_leader_writes,
            self.volume_violations
        ));
        s.push_str("  unavailability (s)                    n    p50    p99    max\n");
        for (k, st) in &self.unavailability_s {
            s.push_str(&format!(
                "    {k:<36} {:>3} {:>6.2} {:>6.2} {:>6.2}\n",
                st.n, st.p50, st.p99, st.max
            ));
        }
        for v in &self.violations {
            s.push_str(&format!("  VIOLATION {}: {}\n", v.kind, v.detail));
            for a in &v.history {
                s.push_str(&format!(
                    "    at {:>7.1} s: {} on {} {} (hold {} ms{})\n",
                    a.start_s,
                    a.draw.kind.name(),
                    a.group_name,
                    a.instance.as_deref().unwrap_or("(fleet)"),
                    a.draw.hold_ms,
                    if a.draw.with_interruption {
                        ", PRIMARY interrupted meanwhile"
                    } else {
                        ""
                    }
                ));
            }
        }
        s.push_str(&format!("  verdict: {}", self.verdict));
        if self.verdict != "pass" {
            s.push_str(&format!(
                " (reproduce: spot-sim nemesis --seed {} with the same options)",
                self.seed
            ));
        }
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(
            Stats::of(&v),
            Stats {
                n: 100,
                p50: 50.0,
                p99: 99.0,
                max: 100.0
            }
        );
        assert_eq!(Stats::of(&[0.25]).p99, 0.25);
        assert_eq!(Stats::of(&[]).n, 0);
    }
}
