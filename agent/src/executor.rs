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
mod tests {
    use super::*;
    use crate::agent::RoleState;
    use crate::agent::testing::{TestAgent, agent};

    fn hook(t: &TestAgent, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let dir = &t.agent.config.hooks_dir;
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn promote_cmd(epoch: u64, from: &[&str]) -> Command {
        Command {
            request_id: spot_common::ids::promote("i-self", epoch),
            group: "g".into(),
            action: CommandKind::Promote {
                promotion: spot_common::Promotion {
                    elastic_ip_allocation_id: Some("eip".into()),
                    network_interface_id: None,
                },
                address_from: from.iter().map(|s| (*s).to_owned()).collect(),
                data_volumes: Vec::new(),
            },
            priority: 100,
            epoch,
            deadline_ms: 1_060_000,
        }
    }

    async fn accept(t: &TestAgent, cmd: &Command) {
        let (c, now) = (cmd.clone(), t.agent.now_ms());
        t.agent
            .journal
            .call(move |j| j.accept(&c, now))
            .await
            .unwrap();
        if cmd.action.is_role_change() {
            t.agent.raise_epoch(cmd.epoch);
        }
    }

    async fn state(t: &TestAgent, rid: &str) -> Option<String> {
        let r = rid.to_owned();
        t.agent
            .journal
            .call(move |j| j.command_state(&r))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_promotion_moves_the_address_from_the_fenced_holder_and_becomes_primary() {
        let t = agent(RoleState {
            role: Some(Role::Replica),
            epoch: 0,
        });
        t.ec2.add_address("eip", Some("i-old"));
        let cmd = promote_cmd(4, &["i-old"]);
        accept(&t, &cmd).await;
        execute(&t.agent, cmd.clone()).await.unwrap();
        assert_eq!(state(&t, &cmd.request_id).await.as_deref(), Some("done"));
        assert_eq!(t.ec2.holder("eip").as_deref(), Some("i-self"));
        assert_eq!(
            t.agent.role(),
            RoleState {
                role: Some(Role::Primary),
                epoch: 4
            }
        );
        let st = t.agent.journal.call(|j| j.state()).await.unwrap();
        assert_eq!(
            (st.role, st.role_epoch),
            (Some(Role::Primary), 4),
            "journaled with the result"
        );
    }

    #[tokio::test]
    async fn the_data_volume_is_attached_before_the_hook_mounts_it() {
        let t = agent(RoleState {
            role: Some(Role::Replica),
            epoch: 0,
        });
        t.ec2.add_address("eip", None);
        t.ec2.add_instance("i-old", "running");
        t.ec2
            .add_volume("vol-1", "us-east-1a", Some(("i-old", "/dev/sdf")));
        // The hook sees the volume attached and is told where.
        hook(
            &t,
            "promote",
            "echo \"$SPOT_DATA_VOLUMES\" > \"$(dirname \"$0\")/seen\"",
        );
        let mut cmd = promote_cmd(4, &["i-old"]);
        if let CommandKind::Promote { data_volumes, .. } = &mut cmd.action {
            data_volumes.push(DataVolume {
                volume_id: "vol-1".into(),
                device: "/dev/sdf".into(),
            });
        }
        accept(&t, &cmd).await;
        execute(&t.agent, cmd.clone()).await.unwrap();
        assert_eq!(state(&t, &cmd.request_id).await.as_deref(), Some("done"));
        assert_eq!(t.ec2.volume_holder("vol-1").as_deref(), Some("i-self"));
        let calls = t.ec2.calls();
        let attach = calls.iter().position(|c| c.starts_with("AttachVolume"));
        assert!(attach.is_some(), "{calls:?}");
        let pending = t.agent.journal.call(|j| j.pending(10)).await.unwrap();
        let kinds: Vec<&str> = pending.iter().map(|p| p.body.kind()).collect();
        assert_eq!(
            kinds,
            ["data_volumes", "command_result"],
            "the volumes before the result"
        );
        let seen = std::fs::read_to_string(t.agent.config.hooks_dir.join("seen")).unwrap();
        assert_eq!(seen.trim(), "/dev/sdf=vol-1");

        // A holder that was not fenced keeps its volume, and no hook runs.
        let t = agent(RoleState::default());
        t.ec2.add_address("eip", None);
        t.ec2
            .add_volume("vol-1", "us-east-1a", Some(("i-live", "/dev/sdf")));
        let mut cmd = promote_cmd(4, &["i-old"]);
        if let CommandKind::Promote { data_volumes, .. } = &mut cmd.action {
            data_volumes.push(DataVolume {
                volume_id: "vol-1".into(),
                device: "/dev/sdf".into(),
            });
        }
        accept(&t, &cmd).await;
        execute(&t.agent, cmd.clone()).await.unwrap();
        assert_eq!(state(&t, &cmd.request_id).await.as_deref(), Some("failed"));
        assert_eq!(t.ec2.volume_holder("vol-1").as_deref(), Some("i-live"));
        assert_ne!(t.agent.role().role, Some(Role::Primary));
    }

    #[tokio::test]
    async fn the_address_is_never_taken_from_an_unfenced_holder() {
        let t = agent(RoleState::default());
        t.ec2.add_address("eip", Some("i-real-primary"));
        let cmd = promote_cmd(4, &["i-old"]);
        accept(&t, &cmd).await;
        execute(&t.agent, cmd.clone()).await.unwrap();
        assert_eq!(state(&t, &cmd.request_id).await.as_deref(), Some("failed"));
        assert_eq!(t.ec2.holder("eip").as_deref(), Some("i-real-primary"));
        assert_ne!(t.agent.role().role, Some(Role::Primary));
    }

    #[tokio::test]
    async fn a_promotion_queued_behind_a_newer_epoch_never_runs() {
        let t = agent(RoleState::default());
        t.ec2.add_address("eip", None);
        let stale = promote_cmd(4, &[]);
        accept(&t, &stale).await;
        let demote = Command {
            request_id: spot_common::ids::demote("i-self", 5),
            action: CommandKind::Demote,
            ..promote_cmd(5, &[])
        };
        accept(&t, &demote).await;
        execute(&t.agent, stale.clone()).await.unwrap();
        assert_eq!(state(&t, &stale.request_id).await.as_deref(), Some("stale"));
        assert_eq!(t.ec2.holder("eip"), None, "no side effect");
        assert!(t.ec2.calls().is_empty(), "{:?}", t.ec2.calls());
    }

    #[tokio::test]
    async fn a_higher_epoch_kills_a_running_promote_hook() {
        let t = agent(RoleState::default());
        t.ec2.add_address("eip", None);
        hook(&t, "promote", "sleep 30");
        let cmd = promote_cmd(4, &[]);
        accept(&t, &cmd).await;
        let agent = Arc::clone(&t.agent);
        let started = std::time::Instant::now();
        let run = tokio::spawn({
            let cmd = cmd.clone();
            async move { execute(&agent, cmd).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The coordinator rolled over: demote(5) accepted meanwhile.
        t.agent.raise_epoch(5);
        run.await.unwrap().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the hook was killed"
        );
        assert_eq!(state(&t, &cmd.request_id).await.as_deref(), Some("stale"));
        assert_ne!(t.agent.role().role, Some(Role::Primary), "never PRIMARY");
    }

    #[tokio::test]
    async fn a_promotion_past_its_deadline_is_expired_and_never_runs() {
        let t = agent(RoleState::default());
        t.ec2.add_address("eip", None);
        let cmd = promote_cmd(4, &[]);
        accept(&t, &cmd).await;
        t.clock.set(cmd.deadline_ms + 1);
        execute(&t.agent, cmd.clone()).await.unwrap();
        assert_eq!(state(&t, &cmd.request_id).await.as_deref(), Some("expired"));
        assert!(t.ec2.calls().is_empty());
    }

    #[tokio::test]
    async fn a_fence_terminates_and_waits() {
        let t = agent(RoleState::default());
        t.ec2.add_instance("i-old", "running");
        let cmd = Command {
            request_id: spot_common::ids::fence("i-old", 3, 1),
            action: CommandKind::Fence {
                instance_id: "i-old".into(),
            },
            ..promote_cmd(3, &[])
        };
        accept(&t, &cmd).await;
        execute(&t.agent, cmd.clone()).await.unwrap();
        assert_eq!(state(&t, &cmd.request_id).await.as_deref(), Some("done"));
        assert_eq!(t.ec2.state("i-old").as_deref(), Some("terminated"));
        // EC2 refusing is a failed fence, reported with its code.
        t.ec2.add_instance("i-other", "running");
        t.ec2.fail_next(
            "TerminateInstances",
            ErrorClass::Auth,
            "UnauthorizedOperation",
        );
        let cmd = Command {
            request_id: spot_common::ids::fence("i-other", 3, 1),
            action: CommandKind::Fence {
                instance_id: "i-other".into(),
            },
            ..promote_cmd(3, &[])
        };
        accept(&t, &cmd).await;
        execute(&t.agent, cmd.clone()).await.unwrap();
        assert_eq!(state(&t, &cmd.request_id).await.as_deref(), Some("failed"));
    }

    #[tokio::test]
    async fn self_demotion_runs_the_hook_and_reports_whether_it_succeeded() {
        let t = agent(RoleState {
            role: Some(Role::Primary),
            epoch: 6,
        });
        hook(&t, "demote", "exit 1");
        self_demote(&t.agent, "test").await.unwrap();
        assert_eq!(t.agent.role().role, Some(Role::Zombie));
        let pending = t.agent.journal.call(|j| j.pending(10)).await.unwrap();
        assert!(pending.iter().any(|p| matches!(
            p.body,
            EventBody::SelfDemoted {
                epoch: 6,
                hook_ok: false,
                ..
            }
        )));
        // Not PRIMARY: nothing to do.
        self_demote(&t.agent, "again").await.unwrap();
        assert_eq!(
            t.agent.journal.call(|j| j.pending(10)).await.unwrap().len(),
            1
        );
    }
}
