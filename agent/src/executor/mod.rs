//! The executor: two lanes, each running its commands one at a time. The
//! urgent lane runs promotions, demotions, fences and self-demotions; the
//! routine lane launches, terminations and cleanup, so a demotion never
//! waits behind a minute-long launch.
//!
//! Every command is journaled `running` by `Journal::start`, which first
//! re-checks its epoch and deadline; a promotion re-checks both again
//! before each of its side effects (health check, address, ENI, hook), its
//! hook is killed the moment a higher epoch is accepted or its deadline
//! passes, and the Elastic IP is taken only from an instance the
//! coordinator fenced. A command's result and the role it gives this agent
//! are journaled in one transaction. A journal error ends the lane (and
//! the failsafe takes over).

use crate::agent::{Agent, Job};
use crate::journal::{JournalError, Start};
use spot_common::{Command, CommandKind, CommandOutcome, DataVolume, EventBody, Role};
use spot_runtime::ec2::{self, Ec2Error, ErrorClass, LaunchSpec};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What running a command came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub outcome: CommandOutcome,
    pub detail: Option<String>,
    pub instance_id: Option<String>,
    pub error_code: Option<String>,
    /// Hook output, kept in the journal.
    pub output: Option<String>,
    /// The role the command gave this agent.
    pub role: Option<(Role, u64)>,
}

impl Outcome {
    fn done() -> Outcome {
        Outcome {
            outcome: CommandOutcome::Done,
            detail: None,
            instance_id: None,
            error_code: None,
            output: None,
            role: None,
        }
    }

    fn failed(detail: impl Into<String>) -> Outcome {
        Outcome {
            outcome: CommandOutcome::Failed,
            detail: Some(detail.into()),
            ..Outcome::done()
        }
    }

    fn ec2(e: Ec2Error) -> Outcome {
        let detail = match e.class {
            ErrorClass::Capacity => format!("no capacity, try another pool: {e}"),
            ErrorClass::Idempotency => format!("idempotency conflict, not retried: {e}"),
            ErrorClass::Auth => format!("not authorized, not retried: {e}"),
            _ => e.to_string(),
        };
        Outcome {
            error_code: Some(e.code.clone()),
            ..Outcome::failed(detail)
        }
    }
}

/// Run a lane: first the commands a crash interrupted, then new jobs.
pub async fn run(
    agent: Arc<Agent>,
    lane: &'static str,
    resume: Vec<Command>,
    mut jobs: mpsc::Receiver<Job>,
) -> anyhow::Result<()> {
    for cmd in resume {
        tracing::info!(lane, request_id = %cmd.request_id, kind = cmd.action.name(), "resuming an interrupted command");
        execute(&agent, cmd).await?;
    }
    loop {
        let job = tokio::select! {
            job = jobs.recv() => job,
            _ = agent.shutdown.cancelled() => return Ok(()),
        };
        match job {
            Some(Job::Command(cmd)) => execute(&agent, cmd).await?,
            Some(Job::SelfDemote { reason }) => self_demote(&agent, &reason).await?,
            None => return Ok(()),
        }
    }
}

pub async fn execute(agent: &Agent, cmd: Command) -> Result<(), JournalError> {
    let rid = cmd.request_id.clone();
    let now = agent.now_ms();
    let start = {
        let r = rid.clone();
        agent.journal.call(move |j| j.start(&r, now)).await?
    };
    let attempts = match start {
        Start::Run { attempts } => attempts,
        Start::Finished => return Ok(()),
        refused => {
            tracing::warn!(request_id = %rid, kind = cmd.action.name(), verdict = ?refused, "command refused at start");
            agent.outbox_wake.notify_one();
            return Ok(());
        }
    };
    let out = perform(agent, &cmd, attempts).await;
    tracing::info!(request_id = %rid, kind = cmd.action.name(), outcome = %out.outcome, detail = ?out.detail, "command finished");
    let result = EventBody::CommandResult {
        request_id: rid.clone(),
        outcome: out.outcome,
        detail: out.detail,
        instance_id: out.instance_id,
        error_code: out.error_code,
    };
    let (output, role) = (out.output, out.role);
    let now = agent.now_ms();
    agent
        .journal
        .call(move |j| j.finish(&rid, &result, output.as_deref(), role, now))
        .await?;
    if let Some((r, e)) = role {
        agent.set_role(r, e);
    }
    agent.outbox_wake.notify_one();
    Ok(())
}

/// Why a role change must stop now, if it must.
fn superseded_or_late(agent: &Agent, cmd: &Command) -> Option<Outcome> {
    let highest = *agent.epoch.borrow();
    if highest > cmd.epoch {
        return Some(Outcome {
            outcome: CommandOutcome::Stale,
            ..Outcome::failed(format!(
                "epoch {} was superseded by epoch {highest}",
                cmd.epoch
            ))
        });
    }
    if agent.now_ms() > cmd.deadline_ms {
        return Some(Outcome::failed(format!(
            "deadline {} passed",
            cmd.deadline_ms
        )));
    }
    None
}

/// Resolves when the promotion must stop: a higher epoch was accepted, or
/// its deadline passed.
async fn until_superseded(agent: &Agent, cmd: &Command) -> String {
    let mut epochs = agent.epoch.subscribe();
    let left = u64::try_from(cmd.deadline_ms - agent.now_ms()).unwrap_or(0);
    let deadline = tokio::time::sleep(Duration::from_millis(left));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            changed = epochs.changed() => {
                let e = *epochs.borrow_and_update();
                if changed.is_err() || e > cmd.epoch {
                    return format!("epoch {e} accepted");
                }
            }
            _ = &mut deadline => return format!("deadline {} passed", cmd.deadline_ms),
        }
    }
}

/// Launch through EC2 with the request id as ClientToken: a relaunch after
/// a crash finds the instance the first attempt created.
async fn launch(agent: &Agent, cmd: &Command, attempts: i64) -> Outcome {
    let Some(spec) = LaunchSpec::of(cmd) else {
        return Outcome::failed("not a launch command");
    };
    crate::crash_point!("before_ec2_call");
    if attempts > 1 {
        tracing::info!(request_id = %cmd.request_id, attempts, "relaunching with the same ClientToken");
    }
    match agent.ec2.launch(&spec).await {
        Ok(id) => {
            crate::crash_point!("after_ec2_call");
            tracing::info!(instance_id = %id, pool = %spec.pool, "instance launched");
            Outcome {
                instance_id: Some(id),
                ..Outcome::done()
            }
        }
        Err(e) => Outcome::ec2(e),
    }
}

/// The side effect of a command.
async fn perform(agent: &Agent, cmd: &Command, attempts: i64) -> Outcome {
    match &cmd.action {
        CommandKind::Launch { .. } => launch(agent, cmd, attempts).await,
        CommandKind::Promote {
            promotion,
            address_from,
            data_volumes,
        } => promote(agent, cmd, promotion, address_from, data_volumes).await,
        CommandKind::Snapshot { volumes, keep } => snapshot(agent, cmd, volumes, *keep).await,
        CommandKind::Demote => {
            let run = agent
                .hook(
                    "demote",
                    &cmd.request_id,
                    cmd.epoch,
                    Role::Zombie,
                    std::future::pending(),
                    agent.config.hook_timeout,
                )
                .await;
            // Stopped serving or not, the coordinator has moved on: we are
            // no longer PRIMARY. A failed hook is reported failed, and the
            // coordinator fences this instance through EC2 instead.
            let role = Some((Role::Zombie, cmd.epoch));
            if run.success {
                Outcome {
                    output: Some(run.output),
                    role,
                    ..Outcome::done()
                }
            } else {
                Outcome {
                    output: Some(run.output),
                    role,
                    ..Outcome::failed("demote hook failed")
                }
            }
        }
        CommandKind::Fence { instance_id } => {
            if let Some(stop) = superseded_or_late(agent, cmd) {
                return stop;
            }
            let within = ec2::fence_window(cmd.deadline_ms, agent.now_ms());
            tracing::warn!(target_instance = %instance_id, epoch = cmd.epoch, "fencing through EC2: terminating and waiting for terminated");
            match ec2::fence(
                agent.ec2.as_ref(),
                instance_id,
                within,
                Duration::from_secs(1),
            )
            .await
            {
                Ok(()) => Outcome {
                    detail: Some(format!("{instance_id} terminated")),
                    ..Outcome::done()
                },
                Err(e) => Outcome::ec2(e),
            }
        }
        CommandKind::Terminate { instance_id } => match agent.ec2.terminate(instance_id).await {
            Ok(()) => Outcome::done(),
            Err(e) if e.class == ErrorClass::NotFound => Outcome {
                detail: Some("already gone".into()),
                ..Outcome::done()
            },
            Err(e) => Outcome::ec2(e),
        },
        CommandKind::Cleanup => {
            let now = agent.now_ms();
            match agent.journal.call(move |j| j.set_decommissioned(now)).await {
                Ok(()) => Outcome {
                    detail: Some("identity will be dropped".into()),
                    ..Outcome::done()
                },
                Err(e) => Outcome::failed(format!("journaling the cleanup: {e}")),
            }
        }
    }
}

/// Snapshot the data volumes (the PRIMARY's periodic job): what was
/// started goes to the coordinator before the result.
async fn snapshot(agent: &Agent, cmd: &Command, volumes: &[DataVolume], keep: u32) -> Outcome {
    let taken = ec2::snapshot(
        agent.ec2.as_ref(),
        &agent.group,
        &cmd.request_id,
        volumes,
        &agent.identity.instance_id,
        keep,
    )
    .await;
    match taken {
        Ok(snapshots) => {
            let ids: Vec<&str> = snapshots.iter().map(|s| s.snapshot_id.as_str()).collect();
            let detail = format!("snapshots started: {}", ids.join(", "));
            let body = EventBody::DataVolumes {
                request_id: cmd.request_id.clone(),
                attached: Vec::new(),
                snapshots,
            };
            if let Err(e) = agent.push_event(body).await {
                return Outcome::failed(format!("journaling the snapshots: {e}"));
            }
            Outcome {
                detail: Some(detail),
                ..Outcome::done()
            }
        }
        Err(e) => Outcome::ec2(e),
    }
}

async fn promote(
    agent: &Agent,
    cmd: &Command,
    promotion: &spot_common::Promotion,
    address_from: &[String],
    data_volumes: &[DataVolume],
) -> Outcome {
    if let Some(stop) = superseded_or_late(agent, cmd) {
        return stop;
    }
    let (healthy, why) = agent.config.health.check(&agent.http).await;
    if !healthy {
        return Outcome::failed(format!("health check failed: {}", why.unwrap_or_default()));
    }
    let me = &agent.identity.instance_id;
    if let Some(alloc) = &promotion.elastic_ip_allocation_id {
        if let Some(stop) = superseded_or_late(agent, cmd) {
            return stop;
        }
        if let Err(e) = agent.ec2.move_address(alloc, me, address_from).await {
            return Outcome::ec2(e);
        }
    }
    if let Some(eni) = &promotion.network_interface_id {
        if let Some(stop) = superseded_or_late(agent, cmd) {
            return stop;
        }
        let moved = ec2::move_interface(
            agent.ec2.as_ref(),
            eni,
            me,
            &agent.identity.availability_zone,
            address_from,
            Duration::from_millis(500),
        )
        .await;
        if let Err(e) = moved {
            return Outcome::ec2(e);
        }
    }
    // The data volumes, after the fence (the grant) and before the hook,
    // which mounts them.
    let mut mounted = String::new();
    if !data_volumes.is_empty() {
        if let Some(stop) = superseded_or_late(agent, cmd) {
            return stop;
        }
        let handover = ec2::Handover {
            group: &agent.group,
            request_id: &cmd.request_id,
            me,
            zone: &agent.identity.availability_zone,
            fenced: address_from,
            poll: Duration::from_millis(500),
        };
        let attached = match ec2::hand_over(agent.ec2.as_ref(), data_volumes, &handover).await {
            Ok(a) => a,
            Err(e) => return Outcome::ec2(e),
        };
        mounted = attached
            .iter()
            .map(|v| format!("{}={}", v.device, v.volume_id))
            .collect::<Vec<_>>()
            .join(",");
        let body = EventBody::DataVolumes {
            request_id: cmd.request_id.clone(),
            attached,
            snapshots: Vec::new(),
        };
        if let Err(e) = agent.push_event(body).await {
            return Outcome::failed(format!("journaling the data volumes: {e}"));
        }
    }
    if let Some(stop) = superseded_or_late(agent, cmd) {
        return stop;
    }
    let run = agent
        .hook_with(
            "promote",
            &cmd.request_id,
            cmd.epoch,
            Role::Primary,
            &mounted,
            until_superseded(agent, cmd),
            agent.config.hook_timeout,
        )
        .await;
    if !run.success {
        // Killed because a newer epoch arrived: stale, not a failure of
        // this instance.
        let superseded = *agent.epoch.borrow() > cmd.epoch;
        return Outcome {
            outcome: if superseded {
                CommandOutcome::Stale
            } else {
                CommandOutcome::Failed
            },
            output: Some(run.output),
            ..Outcome::failed("promote hook failed or was stopped")
        };
    }
    Outcome {
        output: Some(run.output),
        role: Some((Role::Primary, cmd.epoch)),
        ..Outcome::done()
    }
}

/// Stop serving on our own (the coordinator does not confirm us as
/// PRIMARY at our epoch): run the `demote` hook, journal ZOMBIE and the
/// event that tells the coordinator whether the hook succeeded.
pub async fn self_demote(agent: &Agent, reason: &str) -> Result<(), JournalError> {
    let st = agent.role();
    if st.role != Some(Role::Primary) {
        return Ok(());
    }
    tracing::warn!(reason, epoch = st.epoch, "demoting this PRIMARY by itself");
    let rid = format!("self-demote-e{}-{}", st.epoch, agent.now_ms());
    let run = agent
        .hook(
            "demote",
            &rid,
            st.epoch,
            Role::Zombie,
            std::future::pending(),
            agent.config.hook_timeout,
        )
        .await;
    if !run.success {
        tracing::error!(output = %run.output, "demote hook failed during self-demotion");
    }
    let body = EventBody::SelfDemoted {
        epoch: st.epoch,
        reason: reason.to_owned(),
        hook_ok: run.success,
    };
    let now = agent.now_ms();
    let epoch = st.epoch;
    agent
        .journal
        .call(move |j| j.self_demoted(epoch, &body, now))
        .await?;
    agent.set_role(Role::Zombie, st.epoch);
    agent.outbox_wake.notify_one();
    Ok(())
}

#[cfg(test)]
mod tests;
