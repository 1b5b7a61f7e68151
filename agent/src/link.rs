//! The coordinator link task: registration, then the heartbeat loop and the
//! command long-poll side by side, registering again when the identity is
//! lost (401, or 409 `instance_mismatch`).
//!
//! Heartbeats tick at the interval the coordinator gave (not on a backoff),
//! so they resume within one interval of a coordinator coming back; the
//! long-poll retries with `COORDINATOR_RECONNECT` (capped at 5 s);
//! registration with `COORDINATOR_LINK` (capped at 30 s: a fleet
//! re-registering must not hammer a recovering coordinator). A coordinator
//! that cannot be reached changes nothing about serving: see `lease`.

use crate::agent::{Agent, Job, Lanes};
use crate::client::LinkError;
use crate::journal::{Accept, Creds, JournalError};
use crate::lease::{self, Verdict};
use spot_common::retry::{COORDINATOR_LINK, COORDINATOR_RECONNECT};
use spot_common::wire::{HeartbeatRequest, PollResponse, RegisterRequest};
use spot_common::{Command, Role};
use std::sync::Arc;
use std::time::Duration;

/// Why the link stopped.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Link(#[from] LinkError),
}

pub async fn run(agent: Arc<Agent>, lanes: Lanes) -> anyhow::Result<()> {
    loop {
        let st = agent.journal.call(|j| j.state()).await?;
        if st.decommissioned_at_ms.is_some() {
            // Deleted by an operator: stop the agent (it exits with
            // `Decommissioned`; systemd does not restart it).
            agent.shutdown.cancel();
            return Ok(());
        }
        let Some(creds) = ensure_registered(&agent).await? else {
            return Ok(());
        };
        agent.creds.send_replace(Some(creds.clone()));
        let r = tokio::select! {
            r = heartbeat_loop(&agent, &creds, &lanes) => r,
            r = poll_loop(&agent, &creds, &lanes) => r,
            _ = agent.shutdown.cancelled() => return Ok(()),
        };
        match r {
            Err(Stop::Link(e)) if e.identity_lost() => {
                tracing::warn!(agent_id = %creds.agent_id, error = %e, "giving up this identity; registering again");
                agent.creds.send_replace(None);
                agent.journal.call(|j| j.forget_identity()).await?;
            }
            Err(Stop::Journal(e)) => return Err(e.into()),
            Err(Stop::Link(e)) => return Err(e.into()),
            Ok(()) => return Ok(()),
        }
    }
}

async fn link_state(
    agent: &Agent,
    state: &'static str,
    error: Option<String>,
) -> Result<(), JournalError> {
    let ok = (state == "connected").then(|| agent.now_ms());
    agent
        .journal
        .call(move |j| j.set_link(state, ok, error.as_deref()))
        .await
}

/// Registered credentials, registering (idempotently) when there are
/// none. `None` on shutdown.
async fn ensure_registered(agent: &Agent) -> Result<Option<Creds>, JournalError> {
    let url = agent.config.coordinator_url.clone();
    let st = agent.journal.call(|j| j.state()).await?;
    if let Some(c) = st.creds_for(&url) {
        return Ok(Some(c));
    }
    let Some(enrollment) = agent.config.enrollment_token.clone() else {
        tracing::error!("not registered and no enrollment_token configured; set it and restart");
        agent.shutdown.cancelled().await;
        return Ok(None);
    };
    let fresh = format!("register-{}", uuid::Uuid::new_v4());
    let rid = agent
        .journal
        .call(move |j| j.register_request_id(&fresh))
        .await?;
    let req = RegisterRequest {
        instance_id: agent.identity.instance_id.clone(),
        instance_type: agent.identity.instance_type.clone(),
        availability_zone: agent.identity.availability_zone.clone(),
        region: agent.identity.region.clone(),
        lifecycle: agent.identity.lifecycle.clone(),
        group: agent.group.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        request_id: Some(rid),
        identity: agent.identity.proof.clone(),
    };
    let mut delays = spot_runtime::retry::full_jitter(COORDINATOR_LINK);
    loop {
        match agent.coordinator.register(&enrollment, &req).await {
            Ok(r) => {
                let creds = Creds {
                    agent_id: r.agent_id.clone(),
                    token: r.token.clone(),
                };
                let (c, u, hb) = (creds.clone(), url.clone(), r.heartbeat_interval_ms);
                agent
                    .journal
                    .call(move |j| j.set_identity(&c, &u, hb))
                    .await?;
                tracing::info!(agent_id = %r.agent_id, "registered with the coordinator");
                link_state(agent, "connected", None).await?;
                return Ok(Some(creds));
            }
            Err(e) => {
                // An overloaded coordinator says when to come back; never
                // sooner than that, never later than our own cap.
                let backoff = delays.next().unwrap_or(COORDINATOR_LINK.max_delay);
                let wait = e.retry_after().map_or(backoff, |ra| {
                    ra.min(COORDINATOR_LINK.max_delay).max(backoff)
                });
                tracing::warn!(error = %spot_common::error_chain(&e), ?wait, "registering; retrying");
                link_state(agent, "unregistered", Some(spot_common::error_chain(&e))).await?;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = agent.shutdown.cancelled() => return Ok(None),
                }
            }
        }
    }
}

async fn heartbeat_loop(agent: &Agent, creds: &Creds, lanes: &Lanes) -> Result<(), Stop> {
    let every = agent
        .journal
        .call(|j| j.state())
        .await?
        .heartbeat_interval_ms
        .and_then(|ms| u64::try_from(ms).ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(5));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        beat(agent, creds, lanes, &mut failing).await?;
    }
}

/// One heartbeat and what its answer implies.
pub async fn beat(
    agent: &Agent,
    creds: &Creds,
    lanes: &Lanes,
    failing: &mut bool,
) -> Result<(), Stop> {
    let (healthy, detail) = agent.config.health.check(&agent.http).await;
    // The grant of the command that raised the highest epoch: a store that
    // is behind (restored from an older copy) converges only to epochs it
    // can recognise as its own.
    let (highest_epoch, backlog, grant) = agent
        .journal
        .call(|j| {
            let highest = j.highest_epoch()?;
            Ok((highest, j.backlog()?, j.grant(highest)?))
        })
        .await?;
    let sent = agent.role();
    let req = HeartbeatRequest {
        instance_id: agent.identity.instance_id.clone(),
        role: sent.role,
        role_epoch: sent.epoch,
        highest_epoch,
        healthy,
        health_detail: detail,
        backlog,
        grant,
    };
    // The lease runs from when the renewal was sent, not from when the
    // answer came: the coordinator's clock for it starts later.
    let sent_at = tokio::time::Instant::now();
    let resp = match agent
        .coordinator
        .heartbeat(&creds.agent_id, &creds.token, &req)
        .await
    {
        Ok(r) => r,
        Err(e) if e.identity_lost() => return Err(e.into()),
        Err(e) => {
            if !*failing {
                if sent.role == Some(Role::Primary) {
                    tracing::warn!(error = %spot_common::error_chain(&e),
                        "heartbeat failed; this PRIMARY keeps serving (nobody can replace it without fencing it first)");
                } else {
                    tracing::warn!(error = %spot_common::error_chain(&e), "heartbeat failed; still watching IMDS and journaling");
                }
                *failing = true;
            }
            link_state(agent, "unreachable", Some(spot_common::error_chain(&e))).await?;
            return Ok(());
        }
    };
    if std::mem::take(failing) {
        tracing::info!("coordinator reachable again");
    }
    *agent.pricing_hint.lock().unwrap_or_else(|p| p.into_inner()) = resp.pricing.clone();
    if resp.report_ec2_view {
        agent.want_ec2_view();
    }
    if resp.status == spot_common::AgentStatus::Deleted {
        let st = agent.journal.call(|j| j.state()).await?;
        let backlog = agent.journal.call(|j| j.backlog()).await?;
        if st.decommissioned_at_ms.is_some() && backlog == 0 {
            // The cleanup's result reached the coordinator: stop.
            agent.shutdown.cancel();
            return Ok(());
        }
        tracing::info!("coordinator says this agent was deleted; finishing its cleanup command");
    }
    match lease::judge(sent, agent.role(), &resp) {
        Verdict::Lease { ms } => agent.set_lease(Some(sent_at + Duration::from_millis(ms))),
        Verdict::Keep | Verdict::Ignore => {}
        Verdict::Adopt { role, epoch } => {
            agent.journal.call(move |j| j.set_role(role, epoch)).await?;
            agent.set_role(role, epoch);
        }
        Verdict::Demote { reason } => {
            agent.set_lease(None);
            tracing::warn!(%reason, "stopping serving");
            if lanes.urgent.send(Job::SelfDemote { reason }).await.is_err() {
                tracing::error!("the role lane is gone; the process is stopping");
            }
        }
    }
    link_state(agent, "connected", None).await?;
    Ok(())
}

async fn poll_loop(agent: &Agent, creds: &Creds, lanes: &Lanes) -> Result<(), Stop> {
    let mut delays = spot_runtime::retry::delays(COORDINATOR_RECONNECT);
    loop {
        match agent
            .coordinator
            .poll(
                &creds.agent_id,
                &creds.token,
                &agent.identity.instance_id,
                agent.config.poll_wait,
            )
            .await
        {
            Ok(answer) => {
                delays = spot_runtime::retry::delays(COORDINATOR_RECONNECT);
                deliver(agent, answer, lanes).await?;
            }
            Err(e) if e.identity_lost() => return Err(e.into()),
            Err(e) => {
                let wait = delays.next().unwrap_or(COORDINATOR_RECONNECT.max_delay);
                tracing::debug!(error = %spot_common::error_chain(&e), ?wait, "long-poll failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Offer each command of a poll's answer, keeping the grant of a role
/// change first (the next heartbeat shows it).
async fn deliver(agent: &Agent, mut answer: PollResponse, lanes: &Lanes) -> Result<(), Stop> {
    let grants = std::mem::take(&mut answer.grants);
    // Deadlines become budgets measured from now on our clock.
    for cmd in answer.into_local(agent.now_ms()) {
        if let Some(grant) = grants.get(&cmd.request_id) {
            let (epoch, grant, now) = (cmd.epoch, grant.clone(), agent.now_ms());
            agent
                .journal
                .call(move |j| j.keep_grant(epoch, &grant, now))
                .await?;
        }
        offer(agent, cmd, lanes).await?;
    }
    Ok(())
}

/// Journal a command before anything else (raising the highest epoch for
/// a role change in the same transaction), then hand it to its lane.
pub async fn offer(agent: &Agent, cmd: Command, lanes: &Lanes) -> Result<(), JournalError> {
    crate::crash_point!("before_journal_insert");
    let now = agent.now_ms();
    let c = cmd.clone();
    match agent.journal.call(move |j| j.accept(&c, now)).await? {
        Accept::Run => {
            tracing::info!(request_id = %cmd.request_id, kind = cmd.action.name(), epoch = cmd.epoch, "command journaled");
            if cmd.action.is_role_change() {
                agent.raise_epoch(cmd.epoch);
            }
            if lanes
                .for_command(&cmd)
                .send(Job::Command(cmd))
                .await
                .is_err()
            {
                tracing::warn!("executor stopped; the command resumes at next start");
            }
        }
        Accept::Duplicate {
            state,
            reported_again,
        } => {
            if reported_again {
                tracing::info!(request_id = %cmd.request_id, %state,
                    "finished command delivered again: its result is reported again (the coordinator has none)");
                agent.outbox_wake.notify_one();
            } else {
                tracing::debug!(request_id = %cmd.request_id, %state, "command already journaled");
            }
        }
        Accept::Stale { highest } => {
            tracing::warn!(request_id = %cmd.request_id, epoch = cmd.epoch, highest, "stale epoch: command refused");
            agent.outbox_wake.notify_one();
        }
        Accept::Expired => {
            tracing::warn!(request_id = %cmd.request_id, "command past its deadline: refused");
            agent.outbox_wake.notify_one();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::RoleState;
    use crate::agent::testing::agent;
    use crate::client::fake::answer;
    use tokio::sync::mpsc;

    fn lanes() -> (Lanes, mpsc::Receiver<Job>, mpsc::Receiver<Job>) {
        let (u, urx) = mpsc::channel(8);
        let (r, rrx) = mpsc::channel(8);
        (
            Lanes {
                urgent: u,
                routine: r,
            },
            urx,
            rrx,
        )
    }

    fn cmd(rid: &str, action: spot_common::CommandKind, epoch: u64) -> Command {
        crate::agent::testing::command(rid, action, epoch, 2_000_000)
    }

    fn creds() -> Creds {
        Creds {
            agent_id: "agt-1".into(),
            token: "t".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_coordinator_outage_never_demotes_a_primary() {
        let t = agent(RoleState {
            role: Some(Role::Primary),
            epoch: 3,
        });
        t.coordinator
            .steady
            .lock()
            .unwrap()
            .clone_from(&answer(Role::Primary, 3, 3_000));
        let (l, mut urgent, _) = lanes();
        let mut failing = false;
        beat(&t.agent, &creds(), &l, &mut failing).await.unwrap();
        assert!(t.agent.lease_valid());
        // The coordinator goes away for far longer than the lease.
        t.coordinator
            .down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for _ in 0..100 {
            tokio::time::advance(Duration::from_secs(1)).await;
            beat(&t.agent, &creds(), &l, &mut failing).await.unwrap();
        }
        assert!(!t.agent.lease_valid(), "the lease ran out");
        assert!(
            urgent.try_recv().is_err(),
            "and nothing demoted the PRIMARY"
        );
        assert_eq!(t.agent.role().role, Some(Role::Primary));
        // It comes back and confirms: leased again.
        t.coordinator
            .down
            .store(false, std::sync::atomic::Ordering::SeqCst);
        beat(&t.agent, &creds(), &l, &mut failing).await.unwrap();
        assert!(t.agent.lease_valid());
        let hb = t.coordinator.heartbeats.lock().unwrap();
        let last = hb.last().unwrap();
        assert_eq!((last.role, last.role_epoch), (Some(Role::Primary), 3));
    }

    #[tokio::test]
    async fn a_heartbeat_shows_the_grant_of_the_highest_epoch() {
        let t = agent(RoleState::default());
        let (l, mut urgent, _) = lanes();
        let promote = spot_common::CommandKind::Promote {
            promotion: Default::default(),
            address_from: Vec::new(),
            data_volumes: Vec::new(),
        };
        // Nothing seen yet: no grant.
        beat(&t.agent, &creds(), &l, &mut false).await.unwrap();
        let mut answer = PollResponse::new(vec![cmd("p4", promote, 4)], 1_000_000);
        answer.grants.insert("p4".into(), "g1.k.1.ab".into());
        deliver(&t.agent, answer, &l).await.unwrap();
        assert!(matches!(urgent.try_recv(), Ok(Job::Command(_))));
        beat(&t.agent, &creds(), &l, &mut false).await.unwrap();
        // A higher epoch that came without one (a coordinator of the
        // previous release): none, not the older grant.
        let answer = PollResponse::new(
            vec![cmd("d5", spot_common::CommandKind::Demote, 5)],
            1_000_000,
        );
        deliver(&t.agent, answer, &l).await.unwrap();
        beat(&t.agent, &creds(), &l, &mut false).await.unwrap();
        let hb = t.coordinator.heartbeats.lock().unwrap();
        let shown: Vec<(u64, Option<&str>)> = hb
            .iter()
            .map(|h| (h.highest_epoch, h.grant.as_deref()))
            .collect();
        assert_eq!(shown, [(0, None), (4, Some("g1.k.1.ab")), (5, None)]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_is_not_primary_at_our_epoch_demotes() {
        let t = agent(RoleState {
            role: Some(Role::Primary),
            epoch: 3,
        });
        t.coordinator
            .answers
            .lock()
            .unwrap()
            .push_back(Ok(answer(Role::Replica, 0, 0)));
        let (l, mut urgent, _) = lanes();
        beat(&t.agent, &creds(), &l, &mut false).await.unwrap();
        assert!(matches!(urgent.try_recv(), Ok(Job::SelfDemote { .. })));
        assert!(
            !t.agent.lease_valid(),
            "no lease for a PRIMARY the store does not know"
        );
    }

    #[tokio::test]
    async fn a_role_change_raises_the_epoch_and_goes_to_the_urgent_lane() {
        let t = agent(RoleState::default());
        let (l, mut urgent, mut routine) = lanes();
        offer(&t.agent, cmd("d5", spot_common::CommandKind::Demote, 5), &l)
            .await
            .unwrap();
        assert_eq!(*t.agent.epoch.borrow(), 5);
        assert!(matches!(urgent.try_recv(), Ok(Job::Command(c)) if c.request_id == "d5"));
        let launch = spot_common::CommandKind::Terminate {
            instance_id: "i-x".into(),
        };
        offer(&t.agent, cmd("t1", launch, 5), &l).await.unwrap();
        assert!(matches!(routine.try_recv(), Ok(Job::Command(c)) if c.request_id == "t1"));
        // A stale role change is refused and never reaches a lane.
        offer(&t.agent, cmd("d4", spot_common::CommandKind::Demote, 4), &l)
            .await
            .unwrap();
        assert!(urgent.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_promote_from_a_coordinator_whose_clock_is_behind_still_gets_its_budget() {
        let t = agent(RoleState::default());
        t.clock.set(2_000_000);
        let promote = spot_common::CommandKind::Promote {
            promotion: Default::default(),
            address_from: Vec::new(),
            data_volumes: Vec::new(),
        };
        let sent = |rid: &str, clock: Option<i64>| {
            *t.coordinator.clock_ms.lock().unwrap() = clock;
            t.coordinator.commands.lock().unwrap().push_back(Command {
                request_id: rid.into(),
                group: "g".into(),
                action: promote.clone(),
                priority: 100,
                epoch: 2,
                // 25 s of budget on a coordinator clock 60 s behind ours.
                deadline_ms: 1_965_000,
            });
        };
        let (l, mut urgent, _) = lanes();
        sent("p2", Some(1_940_000));
        let _ = tokio::time::timeout(Duration::from_millis(50), poll_loop(&t.agent, &creds(), &l))
            .await;
        let Ok(Job::Command(c)) = urgent.try_recv() else {
            panic!("the promote was refused as past its deadline");
        };
        assert_eq!(c.deadline_ms, 2_025_000, "25 s from receipt on our clock");
        // From a coordinator that sends no clock, the deadline stands as
        // sent, and here it has passed.
        sent("p3", None);
        let _ = tokio::time::timeout(Duration::from_millis(50), poll_loop(&t.agent, &creds(), &l))
            .await;
        assert!(urgent.try_recv().is_err());
    }
}
