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

/// `promote_cmd` that also hands over `vol-1` on /dev/sdf.
fn promote_with_volume(epoch: u64, from: &[&str]) -> Command {
    let mut cmd = promote_cmd(epoch, from);
    if let CommandKind::Promote { data_volumes, .. } = &mut cmd.action {
        data_volumes.push(DataVolume {
            volume_id: "vol-1".into(),
            device: "/dev/sdf".into(),
        });
    }
    cmd
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
    let cmd = promote_with_volume(4, &["i-old"]);
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
    let cmd = promote_with_volume(4, &["i-old"]);
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
