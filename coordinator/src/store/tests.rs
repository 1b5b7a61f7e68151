// Included once per engine (store/mod.rs), each with its own `store()`.
use crate::store::*;
use spot_common::ids;
use spot_common::wire::RegisterRequest;
use spot_common::{
    AgentStatus, Command, CommandKind, CommandOutcome, CommandState, Event, EventBody, GroupConfig,
    Phase, Pool, PoolKey, Role, SwitchState,
};

fn reg(instance: &str) -> RegisterRequest {
    RegisterRequest {
        instance_id: instance.into(),
        instance_type: "m5.large".into(),
        availability_zone: "us-east-1a".into(),
        region: "us-east-1".into(),
        lifecycle: "spot".into(),
        group: "g".into(),
        agent_version: "test".into(),
        request_id: None,
        identity: None,
    }
}

/// One system transaction at `now`.
fn tx<T>(s: &mut Store, now: i64, f: impl FnOnce(&mut Txn<'_>) -> Result<T>) -> Result<T> {
    s.transact(Ctx::system(now), f).map(|d| d.value)
}

/// One operator request at `now`, idempotent under `rid`.
fn op<T: Serialize + DeserializeOwned>(
    s: &mut Store,
    scope: &str,
    rid: Option<&str>,
    now: i64,
    f: impl FnOnce(&mut Txn<'_>) -> Result<T>,
) -> Result<T> {
    let ctx = Ctx::new(now, Actor::Operator).request(rid.map(str::to_owned));
    s.idempotent(scope, ctx, f).map(|d| d.value)
}

/// A replacement of the `g` PRIMARY by `candidate`, decided at `epoch`.
fn replace(candidate: &str, epoch: u64) -> ReplaceRequest {
    ReplaceRequest {
        group: "g".into(),
        candidate: candidate.into(),
        expected_epoch: epoch,
        emergency: false,
        deadline_ms: None,
        reason: "test".into(),
        switch_id: None,
        promote_budget_ms: 25_000,
        heard_since_ms: 0,
    }
}

fn register(s: &mut Store, instance: &str, agent: &str, now: i64) -> Result<Registered> {
    tx(s, now, |t| {
        t.register_agent(&reg(instance), agent, &format!("tok-{agent}"), 5000, 15000)
    })
}

fn take(s: &mut Store, agent: &str, now: i64, redeliver_ms: i64) -> Vec<Command> {
    tx(s, now, |t| t.take_commands(Some(agent), redeliver_ms, 10)).unwrap()
}

fn queue(s: &mut Store, agent: &str, now: i64, c: &Command) {
    tx(s, now, |t| t.queue(Some(agent), c, None)).unwrap();
}

/// `agent` reports command `request_id` finished with `outcome`.
fn report(s: &mut Store, agent: &str, request_id: &str, outcome: CommandOutcome, seq: i64) {
    let ev = Event {
        event_id: format!("{agent}:{seq}"),
        seq,
        at_ms: 5,
        body: EventBody::CommandResult {
            request_id: request_id.into(),
            outcome,
            detail: None,
            instance_id: None,
            error_code: None,
        },
    };
    tx(s, 5, |t| t.apply_events(agent, &[ev])).unwrap();
}

/// The agent of `instance` reports its demote command at `epoch` `done`.
fn demoted(s: &mut Store, agent: &str, instance: &str, epoch: u64, seq: i64) {
    let rid = ids::demote(instance, epoch);
    report(s, agent, &rid, CommandOutcome::Done, seq);
}

/// A launch in `pool` queued at `now` for the agent `agent` to run.
fn launch(s: &mut Store, now: i64, request_id: &str, agent: &str, pool: &Pool, emergency: bool) {
    tx(s, now, |t| {
        t.queue_launch(request_id, "g", Via::Agent(agent), pool, emergency)
    })
    .unwrap();
}

/// An emergency replacement by `candidate` whose notice ends at `deadline_ms`.
fn emergency(candidate: &str, epoch: u64, deadline_ms: i64) -> ReplaceRequest {
    ReplaceRequest {
        emergency: true,
        deadline_ms: Some(deadline_ms),
        ..replace(candidate, epoch)
    }
}

/// EC2 fences `instance`: a fence command (through the coordinator's
/// executor) finished `done`, the only EC2 report that counts as a fence.
fn fence_done(s: &mut Store, instance: &str, now: i64) {
    let g = s.group("g").unwrap();
    let target = g
        .transition
        .as_ref()
        .and_then(|t| t.fence.iter().find(|f| f.instance_id == instance))
        .map_or(g.epoch, |f| f.epoch);
    let attempt = u32::try_from(now % 1000).unwrap() + 1;
    let rid = tx(s, now, |t| {
        t.queue_fence("g", g.epoch, instance, target, attempt, None, 60_000)
    })
    .unwrap();
    let body = EventBody::CommandResult {
        request_id: rid,
        outcome: CommandOutcome::Done,
        detail: None,
        instance_id: None,
        error_code: None,
    };
    tx(s, now, |t| t.command_result(None, &body)).unwrap();
}

/// The agent of `instance` reports its promote command `done`.
fn confirm(s: &mut Store, agent: &str, instance: &str, epoch: u64, seq: i64) {
    report(
        s,
        agent,
        &ids::promote(instance, epoch),
        CommandOutcome::Done,
        seq,
    );
}

fn snapshot(s: &Store, online: &[&str], now: i64) -> spot_common::planner::GroupSnap {
    let input = SnapshotInput {
        agents: online
            .iter()
            .map(|a| {
                (
                    (*a).to_owned(),
                    AgentLive {
                        online: true,
                        silent_ms: Some(0),
                        reported: None,
                    },
                )
            })
            .collect(),
        now_ms: now,
        launch_timeout_ms: 300_000,
        coordinator_executor: false,
    };
    s.group_snapshot("g", &input).unwrap()
}

/// A group with one PRIMARY (`i-p`, agent `a-p`, epoch 1) and replicas
/// `i-r1`, `i-r2`.
fn live_group(s: &mut Store) {
    op(s, "create_group", None, 1, |t| {
        t.create_group("g", &GroupConfig::default())
    })
    .unwrap();
    for (i, a) in [("i-p", "a-p"), ("i-r1", "a-r1"), ("i-r2", "a-r2")] {
        register(s, i, a, 2).unwrap();
        tx(s, 3, |t| t.agent_healthy(a)).unwrap();
    }
    let r = tx(s, 4, |t| t.begin_replace(&replace("i-p", 0))).unwrap();
    assert_eq!(r.phase, Phase::Promoting, "no old PRIMARY: granted at once");
    confirm(s, "a-p", "i-p", 1, 1);
    tx(s, 5, |t| t.commit_promotion("g", 1)).unwrap();
    take(s, "a-p", 6, 30_000);
}

/// A store with the group `g` live: PRIMARY `i-p` at epoch 1 (agent
/// `a-p`), REPLICAS `i-r1` and `i-r2` (`a-r1`, `a-r2`).
fn live_store() -> (impl Sized, Store) {
    let (dir, mut s) = store();
    live_group(&mut s);
    (dir, s)
}

fn table_counts(s: &Store) -> Vec<i64> {
    [
        "groups",
        "agents",
        "instances",
        "commands",
        "events",
        "audit",
        "idempotency",
    ]
    .iter()
    .map(|t| {
        s.conn()
            .query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
            .unwrap()
    })
    .collect()
}

#[test]
fn schema_is_at_latest_and_sound() {
    let (_d, s) = store();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(s.integrity_check().unwrap(), "ok");
}

#[test]
fn migrating_twice_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    drop(engine::sqlite::Sqlite::open(&path, false).unwrap());
    let mut again = engine::sqlite::Sqlite::open(&path, false).unwrap();
    assert_eq!(again.migrate().unwrap(), SCHEMA_VERSION);
}

#[test]
fn replacement_fences_the_old_primary_before_promoting() {
    let (_d, mut s) = live_store();
    assert_eq!(s.group("g").unwrap().primary.as_deref(), Some("i-p"));
    // T1: epoch 2, demote queued to the old PRIMARY, nobody promoted yet.
    let r = tx(&mut s, 10, |t| t.begin_replace(&emergency("i-r1", 1, 9_000))).unwrap();
    assert_eq!((r.phase, r.epoch), (Phase::Demoting, 2));
    assert_eq!(s.instance("i-p").unwrap().role, Role::Primary);
    assert_eq!(s.instance("i-r1").unwrap().role, Role::Replica);
    assert!(take(&mut s, "a-r1", 11, 30_000).is_empty());
    let demote = take(&mut s, "a-p", 11, 30_000);
    assert_eq!(demote.len(), 1);
    assert_eq!(
        (
            demote[0].action.clone(),
            demote[0].epoch,
            demote[0].priority
        ),
        (CommandKind::Demote, 2, 100)
    );
    let t = s.group("g").unwrap().transition.unwrap();
    assert_eq!((t.deadline_ms, t.candidate.as_str()), (9_000, "i-r1"));
    // The store itself refuses to grant before the old PRIMARY is fenced.
    let before = table_counts(&s);
    let err = tx(&mut s, 12, |t| t.grant("g", 2)).unwrap_err();
    assert!(matches!(err, StoreError::NotFenced(_)), "{err:?}");
    assert_eq!(table_counts(&s), before);
    // A failed demote hook is no fence either.
    report(
        &mut s,
        "a-p",
        &ids::demote("i-p", 2),
        CommandOutcome::Failed,
        101,
    );
    assert!(tx(&mut s, 12, |t| t.grant("g", 2)).is_err());
    assert!(
        !snapshot(&s, &["a-p", "a-r1"], 12)
            .transition
            .unwrap()
            .targets[0]
            .fenced
    );
    // An agent's DescribeInstances report that it is terminated is no
    // fence (any enrolled instance could send one; the target's own agent
    // has been heard since)...
    tx(&mut s, 12, |t| t.set_ec2_state("g", "i-p", "terminated")).unwrap();
    assert!(
        !snapshot(&s, &["a-p", "a-r1"], 12)
            .transition
            .unwrap()
            .targets[0]
            .fenced
    );
    let err = tx(&mut s, 12, |t| t.grant("g", 2)).unwrap_err();
    assert!(matches!(err, StoreError::NotFenced(_)), "{err:?}");
    // ...a fence command that EC2 carried out is. T2: old -> ZOMBIE, promote(2).
    fence_done(&mut s, "i-p", 12);
    assert!(
        snapshot(&s, &["a-p", "a-r1"], 12)
            .transition
            .unwrap()
            .targets[0]
            .fenced
    );
    tx(&mut s, 12, |t| t.grant("g", 2)).unwrap();
    assert_eq!(s.instance("i-p").unwrap().role, Role::Zombie);
    assert_eq!(s.group("g").unwrap().primary, None);
    let promote = take(&mut s, "a-r1", 13, 30_000);
    match &promote[0].action {
        CommandKind::Promote { address_from, .. } => {
            assert_eq!(
                address_from,
                &vec!["i-p".to_owned()],
                "may take the address from the fenced"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(promote[0].epoch, 2);
    assert!(
        promote[0].deadline_ms <= 12 + 25_000,
        "within the promote budget"
    );
    // T3 after the candidate confirms.
    confirm(&mut s, "a-r1", "i-r1", 2, 1);
    tx(&mut s, 14, |t| t.commit_promotion("g", 2)).unwrap();
    let g = s.group("g").unwrap();
    assert_eq!(
        (g.primary.as_deref(), g.epoch, g.transition),
        (Some("i-r1"), 2, None)
    );
}

/// The promote command `agent` is handed at `now`.
fn promote_deadline(s: &mut Store, agent: &str, now: i64) -> i64 {
    let cmds = take(s, agent, now, 30_000);
    let p = cmds
        .iter()
        .find(|c| matches!(c.action, CommandKind::Promote { .. }))
        .unwrap_or_else(|| panic!("no promote for {agent} at {now}: {cmds:?}"));
    p.deadline_ms
}

#[test]
fn every_grant_gets_its_promote_budget_however_late_it_lands() {
    // No notice; the old PRIMARY is fenced 80 s after T1 (past the
    // default 60 s target): the candidate still gets its whole budget.
    let (_d, mut s) = live_store();
    tx(&mut s, 10_000, |t| t.begin_replace(&replace("i-r1", 1))).unwrap();
    fence_done(&mut s, "i-p", 90_000);
    tx(&mut s, 90_000, |t| t.grant("g", 2)).unwrap();
    assert_eq!(promote_deadline(&mut s, "a-r1", 90_001), 90_000 + 25_000);

    // An interruption already past (the replacement registered after the
    // reclaim): the notice caps nothing any more.
    let (_d, mut s) = live_store();
    tx(&mut s, 10_000, |t| t.begin_replace(&emergency("i-r1", 1, 20_000))).unwrap();
    fence_done(&mut s, "i-p", 40_000);
    tx(&mut s, 40_000, |t| t.grant("g", 2)).unwrap();
    assert_eq!(promote_deadline(&mut s, "a-r1", 40_001), 40_000 + 25_000);

    // A roll-over and a second grant later still: a full budget again.
    tx(&mut s, 70_000, |t| t.roll_over("g", 2, "test")).unwrap();
    tx(&mut s, 70_000, |t| t.retarget("g", 3, "i-r2")).unwrap();
    demoted(&mut s, "a-r1", "i-r1", 3, 201);
    tx(&mut s, 95_000, |t| t.grant("g", 3)).unwrap();
    assert_eq!(promote_deadline(&mut s, "a-r2", 95_001), 95_000 + 25_000);

    // A notice still ahead caps the window (never below 1 s).
    let (_d, mut s) = live_store();
    tx(&mut s, 10_000, |t| t.begin_replace(&emergency("i-r1", 1, 30_000))).unwrap();
    fence_done(&mut s, "i-p", 12_000);
    tx(&mut s, 12_000, |t| t.grant("g", 2)).unwrap();
    assert_eq!(promote_deadline(&mut s, "a-r1", 12_001), 30_000);
}

#[test]
fn a_promote_no_candidate_fetched_gets_a_whole_window_again_at_a_new_term() {
    let (_d, mut s) = live_store();
    tx(&mut s, 10_000, |t| t.begin_replace(&replace("i-r1", 1))).unwrap();
    fence_done(&mut s, "i-p", 10_000);
    tx(&mut s, 10_000, |t| t.grant("g", 2)).unwrap();
    let promote = ids::promote("i-r1", 2);
    // The leader died at once; the next one leads after the window (35 s):
    // the candidate's first fetch finds the promote expired.
    let fetched = take(&mut s, "a-r1", 40_000, 30_000);
    assert!(fetched.iter().all(|c| c.request_id != promote), "{fetched:?}");
    assert_eq!(
        commands::state(s.conn(), &promote).unwrap(),
        Some(CommandState::Expired)
    );
    // The term's renewal: never delivered, so a whole window from now.
    let renewed = tx(&mut s, 41_000, |t| t.renew_undelivered_promotes()).unwrap();
    assert_eq!(renewed, ["g"]);
    assert_eq!(snapshot(&s, &["a-r1"], 41_000).transition.unwrap().candidate_outcome, None);
    assert_eq!(promote_deadline(&mut s, "a-r1", 41_001), 41_000 + 25_000);
    let trail = s
        .audit_log(&AuditQuery {
            entity: Some("group:g".into()),
            ..AuditQuery::default()
        })
        .unwrap();
    assert!(trail.iter().any(|e| e.action == "promote_renewed"), "{trail:?}");
    // Delivered now: its agent holds the deadline, a later term keeps it.
    let again = tx(&mut s, 90_000, |t| t.renew_undelivered_promotes()).unwrap();
    assert!(again.is_empty());
    assert_eq!(
        commands::state(s.conn(), &promote).unwrap(),
        Some(CommandState::Delivered)
    );
}

#[test]
fn a_failed_candidate_is_fenced_before_the_next_is_granted() {
    let (_d, mut s) = live_store();
    tx(&mut s, 10, |t| t.begin_replace(&replace("i-r1", 1))).unwrap();
    demoted(&mut s, "a-p", "i-p", 2, 102);
    tx(&mut s, 11, |t| t.grant("g", 2)).unwrap();
    take(&mut s, "a-r1", 11, 30_000);
    tx(&mut s, 12, |t| t.roll_over("g", 2, "test")).unwrap();
    let g = s.group("g").unwrap();
    assert_eq!((g.epoch, g.primary.as_deref()), (3, None));
    let t = g.transition.expect("the transition goes on");
    assert_eq!(t.phase, Phase::Demoting);
    assert!(
        t.fence
            .iter()
            .any(|f| f.instance_id == "i-r1" && f.epoch == 3)
    );
    let cmds = take(&mut s, "a-r1", 13, 0);
    assert!(
        cmds.iter()
            .any(|c| c.action == CommandKind::Demote && c.epoch == 3),
        "{cmds:?}"
    );
    // The next candidate cannot be the fenced one, and waits for the fence.
    assert!(tx(&mut s, 14, |t| t.retarget("g", 3, "i-r1")).is_err());
    tx(&mut s, 14, |t| t.retarget("g", 3, "i-r2")).unwrap();
    assert!(matches!(
        tx(&mut s, 14, |t| t.grant("g", 3)),
        Err(StoreError::NotFenced(_))
    ));
    let snap = snapshot(&s, &["a-r1", "a-r2"], 14);
    let r1 = snap
        .instances
        .iter()
        .find(|i| i.instance_id == "i-r1")
        .unwrap();
    assert!(r1.promote_failed_recently, "not tried again at once");
    // Its demotion acknowledged (the late promote hook was killed): granted.
    demoted(&mut s, "a-r1", "i-r1", 3, 103);
    tx(&mut s, 15, |t| t.grant("g", 3)).unwrap();
    let promote = take(&mut s, "a-r2", 16, 30_000);
    assert!(
        matches!(&promote[0].action, CommandKind::Promote { address_from, .. } if address_from.len() == 2)
    );
}

#[test]
fn a_fence_is_queued_once_and_its_success_is_evidence() {
    let (_d, mut s) = live_store();
    tx(&mut s, 10, |t| t.begin_replace(&replace("i-r1", 1))).unwrap();
    let rid = tx(&mut s, 11, |t| {
        t.queue_fence("g", 2, "i-p", 2, 1, Some("a-r1"), 60_000)
    })
    .unwrap();
    assert!(
        tx(&mut s, 11, |t| t.queue_fence(
            "g",
            2,
            "i-p",
            2,
            1,
            Some("a-r1"),
            60_000
        ))
        .is_err()
    );
    assert!(
        tx(&mut s, 11, |t| t.queue_fence(
            "g",
            1,
            "i-p",
            2,
            2,
            Some("a-r1"),
            60_000
        ))
        .is_err(),
        "stale epoch"
    );
    let t = snapshot(&s, &["a-r1"], 12).transition.unwrap();
    assert_eq!(
        (t.targets[0].fence_attempts, t.targets[0].last_fence),
        (1, Some(CommandState::Queued))
    );
    let cmd = take(&mut s, "a-r1", 12, 30_000).remove(0);
    assert_eq!(cmd.request_id, rid);
    assert_eq!(cmd.priority, 100);
    report(&mut s, "a-r1", &rid, CommandOutcome::Done, 104);
    assert_eq!(
        s.instance("i-p").unwrap().ec2_state.as_deref(),
        Some("terminated")
    );
    tx(&mut s, 13, |t| t.grant("g", 2)).unwrap();
}

#[test]
fn an_operator_may_declare_an_instance_dead_and_it_is_audited() {
    let (_d, mut s) = live_store();
    tx(&mut s, 10, |t| t.begin_replace(&replace("i-r1", 1))).unwrap();
    assert!(tx(&mut s, 11, |t| t.grant("g", 2)).is_err());
    op(&mut s, "declare_dead", None, 11, |t| {
        t.declare_dead("g", "i-p", Some(60_000), 15_000, false)
    })
    .unwrap();
    tx(&mut s, 12, |t| t.grant("g", 2)).unwrap();
    let trail = s
        .audit_log(&AuditQuery {
            entity: Some("instance:i-p".into()),
            ..AuditQuery::default()
        })
        .unwrap();
    assert!(
        trail
            .iter()
            .any(|e| e.action == "declared_dead" && e.actor == "operator")
    );
}

/// `agent` heartbeats, persisted at `now`.
fn heartbeat(s: &mut Store, agent: &str, now: i64) {
    beat(s, agent, 1, now);
}

/// `agent` heartbeats as a REPLICA holding `highest_epoch`, persisted at
/// `now`.
fn beat(s: &mut Store, agent: &str, highest_epoch: u64, now: i64) {
    let rec = HeartbeatRecord {
        agent_id: agent.into(),
        at_ms: now,
        reported_role: Some(Role::Replica),
        highest_epoch,
        healthy: true,
        backlog: 0,
    };
    tx(s, now, |t| t.flush_heartbeats(&[rec])).unwrap();
}

#[test]
fn roles_stamps_move_on_role_writes_and_not_on_heartbeats() {
    let (_d, mut s) = live_store();
    let g = s.roles_generation();
    let (p, r1, r2) = (g.stamp("i-p"), g.stamp("i-r1"), g.stamp("i-r2"));
    heartbeat(&mut s, "a-r1", 20);
    heartbeat(&mut s, "a-p", 21);
    assert_eq!(g.stamp("i-r1"), r1, "a heartbeat changes no role: cached answers stand");
    assert_eq!(g.stamp("i-p"), p);
    // A new instance's first healthy beat moves that instance only.
    register(&mut s, "i-r3", "a-r3", 22).unwrap();
    let r3 = g.stamp("i-r3");
    tx(&mut s, 23, |t| t.agent_healthy("a-r3")).unwrap();
    assert_ne!(g.stamp("i-r3"), r3, "LAUNCHING -> REPLICA is seen");
    assert_eq!((g.stamp("i-r1"), g.stamp("i-r2")), (r1, r2), "the others keep theirs");
    // A transition changes the group: every answer.
    tx(&mut s, 24, |t| t.begin_replace(&replace("i-r1", 1))).unwrap();
    assert_ne!(g.stamp("i-r2"), r2, "a transition changes what heartbeats answer");
    // A transaction that fails changes nothing it did not have to.
    let r2 = g.stamp("i-r2");
    assert!(tx(&mut s, 25, |t| t.begin_replace(&replace("i-r2", 1))).is_err());
    assert_eq!(g.stamp("i-r2"), r2);
}

#[test]
fn first_beats_share_a_commit_and_one_bad_agent_costs_the_others_nothing() {
    let (_d, mut s) = store();
    op(&mut s, "create_group", None, 1, |t| {
        t.create_group("g", &GroupConfig::default())
    })
    .unwrap();
    for (i, a) in [("i-1", "a-1"), ("i-2", "a-2"), ("i-3", "a-3")] {
        register(&mut s, i, a, 2).unwrap();
    }
    let beats = |v: &[&str], now: i64| {
        v.iter()
            .map(|id| {
                let id = id.to_string();
                Request {
                    ctx: Ctx::new(now, spot_common::Actor::Agent(id.clone())),
                    scope: None,
                    work: Box::new(move |t: &mut Txn<'_>| t.agent_healthy(&id)),
                }
            })
            .collect::<Vec<_>>()
    };
    let answers: Vec<_> = s
        .transact_many(&beats(&["a-1", "a-2"], 3))
        .into_iter()
        .map(|d| d.map(|d| d.value))
        .collect();
    assert!(answers.iter().all(|a| matches!(a, Ok((Role::Replica, _)))), "{answers:?}");
    // Audited each as its own agent.
    let audit = s
        .audit_log(&AuditQuery::default())
        .unwrap()
        .into_iter()
        .filter(|e| e.actor == "agent:a-1" || e.actor == "agent:a-2")
        .count();
    assert!(audit >= 2, "each first beat audited under its agent");
    let answers: Vec<_> = s
        .transact_many(&beats(&["a-nobody", "a-3"], 4))
        .into_iter()
        .map(|d| d.map(|d| d.value))
        .collect();
    assert!(answers[0].is_err(), "{answers:?}");
    assert!(matches!(answers[1], Ok((Role::Replica, _))), "{answers:?}");
    assert_eq!(s.instance("i-3").unwrap().role, Role::Replica);
}

#[test]
fn registrations_share_a_commit_and_keep_their_idempotency() {
    let (_d, mut s) = store();
    op(&mut s, "create_group", None, 1, |t| {
        t.create_group("g", &GroupConfig::default())
    })
    .unwrap();
    let registration = |instance: &str, group: &str, rid: &str| {
        let mut req = reg(instance);
        req.group = group.into();
        let agent = format!("agt-{instance}");
        Request {
            ctx: Ctx::new(2, Actor::Agent(agent.clone())).request(Some(rid.into())),
            scope: Some("register"),
            work: Box::new(move |t: &mut Txn<'_>| {
                t.register_agent(&req, &agent, &format!("tok-{agent}"), 5000, 15000)
            }),
        }
    };
    let first = s.transact_many(&[
        registration("i-1", "g", "r-1"),
        registration("i-2", "nowhere", "r-2"),
        registration("i-3", "g", "r-3"),
    ]);
    assert!(first[1].is_err(), "an unknown group is refused alone");
    let id = |d: &Result<Done<Registered>>| d.as_ref().unwrap().value.response.agent_id.clone();
    assert_eq!((id(&first[0]), id(&first[2])), ("agt-i-1".into(), "agt-i-3".into()));
    // A retry under the same request id, in a batch again: the first
    // answer, and no second agent.
    let again = s.transact_many(&[
        registration("i-1", "g", "r-1"),
        registration("i-4", "g", "r-4"),
    ]);
    assert_eq!(id(&again[0]), "agt-i-1");
    assert_eq!(s.agents(Some("g")).unwrap().len(), 3);
}

#[test]
fn declared_dead_counts_only_for_its_transition_and_until_the_instance_speaks() {
    let (_d, mut s) = live_store();
    let declare = |s: &mut Store, now, who: &str, heard, force| {
        op(s, "declare_dead", None, now, |t| {
            t.declare_dead("g", who, heard, 15_000, force)
        })
    };
    // No transition: nothing to fence, refused, nothing written.
    let before = table_counts(&s);
    assert!(declare(&mut s, 9, "i-r2", None, false).is_err());
    assert_eq!(table_counts(&s), before);
    tx(&mut s, 10, |t| t.begin_replace(&replace("i-r1", 1))).unwrap();
    // A live REPLICA is no fence target of this transition.
    assert!(declare(&mut s, 11, "i-r2", Some(100_000), true).is_err());
    // The target was heard 2 s ago, within its 15 s lease: refused unless
    // forced.
    let err = declare(&mut s, 11, "i-p", Some(2_000), false).unwrap_err();
    assert!(err.to_string().contains("within its lease"), "{err}");
    assert!(tx(&mut s, 11, |t| t.grant("g", 2)).is_err());
    declare(&mut s, 12, "i-p", Some(2_000), true).unwrap();
    // It speaks again before the grant: the declaration no longer counts.
    heartbeat(&mut s, "a-p", 13);
    let err = tx(&mut s, 14, |t| t.grant("g", 2)).unwrap_err();
    assert!(matches!(err, StoreError::NotFenced(_)), "{err:?}");
    // Declared again while silent: fenced, for this transition only. The
    // operator aborts it instead (nothing granted yet); the next
    // transition cannot lean on the old declaration.
    declare(&mut s, 15, "i-p", Some(20_000), false).unwrap();
    tx(&mut s, 16, |t| t.abort_transition("g", 2)).unwrap();
    op(&mut s, "resume", None, 17, |t| {
        let g = t.group("g")?;
        let config = GroupConfig {
            paused: false,
            ..g.config
        };
        t.update_group("g", &config, g.version)
    })
    .unwrap();
    tx(&mut s, 20, |t| t.begin_replace(&replace("i-r2", 2))).unwrap();
    let err = tx(&mut s, 21, |t| t.grant("g", 3)).unwrap_err();
    assert!(matches!(err, StoreError::NotFenced(_)), "{err:?}");
    let t = snapshot(&s, &["a-r1", "a-r2"], 21).transition.unwrap();
    assert!(!t.targets[0].fenced);
    declare(&mut s, 22, "i-p", None, false).unwrap();
    tx(&mut s, 23, |t| t.grant("g", 3)).unwrap();
}

#[test]
fn a_waiting_transition_says_why_and_may_be_aborted_before_any_grant() {
    let (_d, mut s) = live_store();
    tx(&mut s, 10, |t| t.begin_replace(&replace("i-r1", 1))).unwrap();
    let st = s.transition_status("g").unwrap().expect("a transition");
    assert!(st.abortable);
    assert!(!st.targets[0].fenced);
    assert!(
        st.waiting_for.contains("i-p to be fenced"),
        "{}",
        st.waiting_for
    );
    assert!(
        st.waiting_for.contains("demote: queued"),
        "{}",
        st.waiting_for
    );
    // A stale epoch is refused; the right one ends it: the old PRIMARY
    // stays, its undelivered demote is cancelled, the group is paused.
    assert!(tx(&mut s, 11, |t| t.abort_transition("g", 1)).is_err());
    tx(&mut s, 11, |t| t.abort_transition("g", 2)).unwrap();
    let g = s.group("g").unwrap();
    assert_eq!(
        (
            g.primary.as_deref(),
            g.transition.is_none(),
            g.config.paused
        ),
        (Some("i-p"), true, true)
    );
    assert_eq!(s.instance("i-p").unwrap().role, Role::Primary);
    assert!(
        take(&mut s, "a-p", 12, 30_000).is_empty(),
        "the demote is cancelled"
    );
    assert!(s.transition_status("g").unwrap().is_none());
    let trail = s
        .audit_log(&AuditQuery {
            entity: Some("group:g".into()),
            ..AuditQuery::default()
        })
        .unwrap();
    assert!(trail.iter().any(|e| e.action == "abort_transition"));

    // Once a candidate is granted, abort is refused and changes nothing.
    let (_d, mut s) = live_store();
    tx(&mut s, 10, |t| t.begin_replace(&replace("i-r1", 1))).unwrap();
    fence_done(&mut s, "i-p", 11);
    tx(&mut s, 11, |t| t.grant("g", 2)).unwrap();
    let st = s.transition_status("g").unwrap().unwrap();
    assert!(!st.abortable);
    assert!(
        st.waiting_for.contains("i-r1 to finish promoting"),
        "{}",
        st.waiting_for
    );
    let before = table_counts(&s);
    let err = tx(&mut s, 12, |t| t.abort_transition("g", 2)).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Refused {
                code: "transition_granted",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(table_counts(&s), before);
    // Rolled over, the granted candidate is a fence target: still refused.
    tx(&mut s, 13, |t| t.roll_over("g", 2, "test")).unwrap();
    assert!(tx(&mut s, 14, |t| t.abort_transition("g", 3)).is_err());
}

#[test]
fn a_store_behind_an_agent_converges_to_it() {
    let (_d, mut s) = live_store();
    // Reality moved on while this store (a restored copy) did not: i-r1 is
    // PRIMARY at epoch 5.
    let changed = tx(&mut s, 10, |t| {
        t.converge_epoch(
            "i-r1",
            Reported {
                role: Some(Role::Primary),
                role_epoch: 5,
                highest_epoch: 5,
                proof: Ok(()),
            },
        )
    })
    .unwrap();
    assert!(changed);
    let g = s.group("g").unwrap();
    assert_eq!((g.epoch, g.primary.as_deref()), (5, Some("i-r1")));
    assert_eq!(s.instance("i-r1").unwrap().role_epoch, 5);
    assert_eq!(s.instance("i-p").unwrap().role, Role::Zombie);
    // Not behind: nothing changes.
    let before = table_counts(&s);
    let again = tx(&mut s, 11, |t| {
        t.converge_epoch(
            "i-r2",
            Reported {
                role: Some(Role::Replica),
                role_epoch: 0,
                highest_epoch: 5,
                proof: Ok(()),
            },
        )
    })
    .unwrap();
    assert!(!again);
    assert_eq!(table_counts(&s), before);
}

#[test]
fn a_restored_store_adopts_the_real_primary_whichever_agent_speaks_first() {
    // Reality: i-r1 is PRIMARY at epoch 5; i-p, the store's PRIMARY at
    // epoch 1, was demoted at 5.
    let demoted = Reported {
        role: Some(Role::Replica),
        role_epoch: 5,
        highest_epoch: 5,
        proof: Ok(()),
    };
    let primary = Reported {
        role: Some(Role::Primary),
        role_epoch: 5,
        highest_epoch: 5,
        proof: Ok(()),
    };
    for order in [["i-p", "i-r1"], ["i-r1", "i-p"]] {
        let (_d, mut s) = live_store();
        for (n, who) in order.iter().enumerate() {
            let r = if *who == "i-p" { demoted } else { primary };
            tx(&mut s, 10 + n as i64, |t| t.converge_epoch(who, r)).unwrap();
        }
        let g = s.group("g").unwrap();
        assert_eq!(
            (g.epoch, g.primary.as_deref()),
            (5, Some("i-r1")),
            "order {order:?}"
        );
        assert_eq!(s.instance("i-r1").unwrap().role_epoch, 5);
        // A claim that is not above the adopted PRIMARY changes nothing,
        // nor does a PRIMARY claim from an agent that has seen a higher
        // epoch since.
        let before = table_counts(&s);
        for r in [
            primary,
            Reported {
                role_epoch: 4,
                ..primary
            },
        ] {
            assert!(!tx(&mut s, 20, |t| t.converge_epoch("i-r2", r)).unwrap());
        }
        assert_eq!(table_counts(&s), before);
    }
}

#[test]
fn a_primary_claim_without_a_valid_grant_is_refused_and_audited() {
    use crate::grants::GrantError;
    // A forger (or a misconfigured instance) claims PRIMARY above the
    // store's: without the coordinator's grant the store's PRIMARY stays.
    for err in [
        GrantError::Missing,
        GrantError::BadMac,
        GrantError::UnknownKey,
    ] {
        let (_d, mut s) = live_store();
        let forged = Reported {
            role: Some(Role::Primary),
            role_epoch: 2,
            highest_epoch: 2,
            proof: Err(err),
        };
        tx(&mut s, 10, |t| t.converge_epoch("i-r1", forged)).unwrap();
        let g = s.group("g").unwrap();
        assert_eq!(g.primary.as_deref(), Some("i-p"), "{err:?}");
        assert_eq!(s.instance("i-p").unwrap().role, Role::Primary);
        assert_eq!(s.instance("i-r1").unwrap().role, Role::Replica);
        let refused = s
            .audit_log(&AuditQuery {
                entity: Some("instance:i-r1".into()),
                ..AuditQuery::default()
            })
            .unwrap()
            .into_iter()
            .find(|a| a.action == "claim_refused")
            .expect("the refusal is audited");
        assert_eq!(refused.post_state["code"], err.code());
        // Nor can a forged epoch alone move the store (it would abandon a
        // transition, and outbid the real PRIMARY's claim after a restore).
        let epoch = s.group("g").unwrap().epoch;
        let before = table_counts(&s);
        let raised = Reported {
            role: Some(Role::Replica),
            role_epoch: 0,
            highest_epoch: 1_000,
            proof: Err(err),
        };
        assert!(!tx(&mut s, 10, |t| t.converge_epoch("i-r2", raised)).unwrap());
        assert_eq!(s.group("g").unwrap().epoch, epoch);
        assert_eq!(
            table_counts(&s)[5],
            before[5] + 1,
            "only the refusal is written"
        );
        // Nor is the forged epoch kept as the agent's: the group's next
        // epochs stay within reach.
        beat(&mut s, "a-r2", 1_000_000_000_000_000, 10);
        assert_eq!(s.agent("a-r2").unwrap().highest_epoch, epoch);
        // The same claim with a grant that verifies is adopted.
        let proven = Reported {
            proof: Ok(()),
            role_epoch: 3,
            highest_epoch: 3,
            ..forged
        };
        tx(&mut s, 11, |t| t.converge_epoch("i-r1", proven)).unwrap();
        assert_eq!(s.group("g").unwrap().primary.as_deref(), Some("i-r1"));
    }
}

/// `agent` reports what EC2 shows of its group: `strangers` (id, launch
/// request id) running besides.
fn ec2_view(s: &mut Store, agent: &str, strangers: &[(&str, &str)], now: i64) {
    let ev = Event {
        event_id: format!("{agent}:ec2:{now}"),
        seq: 1000 + now,
        at_ms: now,
        body: EventBody::Ec2States {
            instances: strangers
                .iter()
                .map(|(id, rid)| spot_common::Ec2State {
                    instance_id: (*id).into(),
                    state: "running".into(),
                    request_id: Some((*rid).into()),
                })
                .collect(),
        },
    };
    tx(s, now, |t| t.apply_events(agent, &[ev])).unwrap();
}

#[test]
fn a_restored_store_grants_nothing_until_every_unheard_instance_is_fenced() {
    // The store is a copy from before i-r2 was promoted at epoch 4; i-r2
    // still serves but is cut off. The coordinator started at 100; i-p
    // (demoted at 3 in reality) and i-r1 have been heard since, i-r2 not.
    let (_d, mut s) = live_store();
    beat(&mut s, "a-p", 3, 105);
    beat(&mut s, "a-r1", 1, 106);
    let r = tx(&mut s, 120, |t| {
        t.begin_replace(&ReplaceRequest {
            heard_since_ms: 100,
            ..replace("i-r1", 1)
        })
    })
    .unwrap();
    assert_eq!(r.phase, Phase::Demoting);
    assert_eq!(
        r.epoch, 120,
        "above every epoch an agent reported (3), and at least the clock (120 ms here): \
         clear of any the unheard may hold"
    );
    let e = r.epoch;
    let t = s.group("g").unwrap().transition.unwrap();
    let targets: Vec<&str> = t.fence.iter().map(|f| f.instance_id.as_str()).collect();
    assert_eq!(targets, ["i-p", "i-r2"]);
    // The store's PRIMARY acknowledges its demotion: not enough, i-r2 may
    // serve at an epoch this store never saw.
    take(&mut s, "a-p", 121, 30_000);
    report(
        &mut s,
        "a-p",
        &ids::demote("i-p", e),
        CommandOutcome::Done,
        300,
    );
    let refused = tx(&mut s, 130, |t| t.grant("g", e)).unwrap_err();
    assert!(matches!(refused, StoreError::NotFenced(_)), "{refused:?}");
    fence_done(&mut s, "i-r2", 140);
    // Fenced, but EC2's view of the group since the start is not in: an
    // instance the copy never heard of may still serve.
    assert!(tx(&mut s, 141, |t| t.grant("g", e)).is_err());
    ec2_view(
        &mut s,
        "a-r1",
        &[("i-stranger", "launch-after-the-copy")],
        142,
    );
    // The view shows a stranger: it becomes a fence target first.
    tx(&mut s, 143, |t| t.grant("g", e)).unwrap();
    let t = s.group("g").unwrap().transition.unwrap();
    assert_eq!((t.phase, t.fence.len()), (Phase::Demoting, 3), "{t:?}");
    fence_done(&mut s, "i-stranger", 144);
    tx(&mut s, 145, |t| t.grant("g", e)).unwrap();
    assert_eq!(
        s.group("g").unwrap().transition.unwrap().phase,
        Phase::Promoting
    );

    // Heard since the start: nothing more than the PRIMARY is fenced.
    let (_d, mut s) = live_store();
    for a in ["a-p", "a-r1", "a-r2"] {
        beat(&mut s, a, 1, 105);
    }
    ec2_view(&mut s, "a-r1", &[], 110);
    tx(&mut s, 120, |t| {
        t.begin_replace(&ReplaceRequest {
            heard_since_ms: 100,
            ..replace("i-r1", 1)
        })
    })
    .unwrap();
    let t = s.group("g").unwrap().transition.unwrap();
    assert_eq!((t.epoch, t.fence.len()), (2, 1));
}

#[test]
fn after_a_start_the_planner_and_the_grant_wait_for_the_same_ec2_view() {
    // Every agent heard since the start (100), the old PRIMARY demoted
    // (acknowledged): only EC2's view since the start is missing. An
    // agent sends it when it changes, so nothing else would bring it: the
    // planner must see that the grant waits for it (and the coordinator
    // ask for it), not ask for a grant the store refuses every pass.
    let (_d, mut s) = live_store();
    for a in ["a-p", "a-r1", "a-r2"] {
        heartbeat(&mut s, a, 105);
    }
    let r = tx(&mut s, 120, |t| {
        t.begin_replace(&ReplaceRequest {
            heard_since_ms: 100,
            ..replace("i-r1", 1)
        })
    })
    .unwrap();
    let e = r.epoch;
    take(&mut s, "a-p", 121, 30_000);
    report(
        &mut s,
        "a-p",
        &ids::demote("i-p", e),
        CommandOutcome::Done,
        300,
    );
    let snap = snapshot(&s, &["a-p", "a-r1", "a-r2"], 130);
    let t = snap.transition.as_ref().unwrap();
    assert!(t.targets.iter().all(|x| x.fenced), "{t:?}");
    assert!(t.ec2_view_pending, "the snapshot shows the grant's gate");
    let planned = spot_common::planner::plan(&snap, 130, &spot_common::planner::PlanConfig::DEFAULT);
    assert!(
        !planned.steps.iter().any(|x| matches!(x, spot_common::planner::Step::Grant { .. })),
        "no grant the store would refuse: {planned:?}"
    );
    assert!(tx(&mut s, 130, |t| t.grant("g", e)).is_err());
    let st = s.transition_status("g").unwrap().unwrap();
    assert!(st.waiting_for.contains("EC2's view"), "{}", st.waiting_for);
    // The view (unchanged since before the start: no strangers) arrives.
    ec2_view(&mut s, "a-r1", &[], 131);
    let snap = snapshot(&s, &["a-p", "a-r1", "a-r2"], 132);
    assert!(!snap.transition.as_ref().unwrap().ec2_view_pending);
    let planned = spot_common::planner::plan(&snap, 132, &spot_common::planner::PlanConfig::DEFAULT);
    assert!(
        planned.steps.iter().any(|x| matches!(x, spot_common::planner::Step::Grant { .. })),
        "{planned:?}"
    );
    tx(&mut s, 132, |t| t.grant("g", e)).unwrap();
}

#[test]
fn a_reused_request_id_with_another_body_is_refused() {
    let (_d, mut s) = store();
    let ctx = |body: &str| {
        Ctx::new(1, Actor::Operator)
            .request(Some("op-7".into()))
            .body(&body)
    };
    s.idempotent("create_group", ctx("g"), |t| {
        t.create_group("g", &GroupConfig::default())
    })
    .unwrap();
    // The same request again: the first answer.
    s.idempotent("create_group", ctx("g"), |t| {
        t.create_group("g", &GroupConfig::default())
    })
    .unwrap();
    let err = s
        .idempotent("create_group", ctx("h"), |t| {
            t.create_group("h", &GroupConfig::default())
        })
        .unwrap_err();
    assert!(
        matches!(err, StoreError::IdempotencyKeyReused(_)),
        "{err:?}"
    );
    assert!(s.group("h").is_err());
}

#[test]
fn second_replacement_is_refused_and_changes_nothing() {
    let (_d, mut s) = live_store();
    tx(&mut s, 5, |t| t.begin_replace(&replace("i-r1", 1))).unwrap();
    let before = table_counts(&s);
    let err = tx(&mut s, 6, |t| t.begin_replace(&replace("i-r2", 2))).unwrap_err();
    assert!(matches!(err, StoreError::InProgress(_)), "{err:?}");
    let err = tx(&mut s, 6, |t| t.grant("g", 1)).unwrap_err();
    assert!(
        matches!(err, StoreError::Role(RoleError::StaleEpoch { .. })),
        "{err:?}"
    );
    assert_eq!(table_counts(&s), before);
}

#[test]
fn database_refuses_a_second_primary_even_behind_the_model() {
    let (_d, s) = live_store();
    let err = s
        .conn()
        .execute(
            "UPDATE instances SET role = 'primary' WHERE instance_id = 'i-r1'",
            [],
        )
        .unwrap_err();
    // SQLite and PostgreSQL name the index each in their own way.
    let err = format!("{err:?}");
    assert!(
        err.contains("UNIQUE") || err.contains("one_primary_per_group"),
        "{err}"
    );
}

#[test]
fn illegal_transition_names_the_rule_and_changes_nothing() {
    let (_d, mut s) = live_store();
    register(&mut s, "i-new", "a-new", 7).unwrap();
    let before = table_counts(&s);
    let err = tx(&mut s, 8, |t| t.begin_replace(&replace("i-new", 1))).unwrap_err();
    match err {
        StoreError::Role(t) => assert_eq!(t.rule(), "promote_requires_replica"),
        other => panic!("{other:?}"),
    }
    assert_eq!(table_counts(&s), before);
}

#[test]
fn repeated_request_id_returns_the_first_answer_and_changes_nothing() {
    let (_d, mut s) = live_store();
    let first = op(&mut s, "promote", Some("op-1"), 5, |t| {
        t.begin_replace(&replace("i-r1", 1))
    })
    .unwrap();
    let before = table_counts(&s);
    // Same request again, even though epoch 1 is now stale.
    let again = op(&mut s, "promote", Some("op-1"), 9, |t| {
        t.begin_replace(&replace("i-r1", 1))
    })
    .unwrap();
    assert_eq!(first, again);
    assert_eq!(table_counts(&s), before);
    // The id cannot be reused for another kind of request.
    let err = op(&mut s, "create_group", Some("op-1"), 9, |t| {
        t.create_group("h", &GroupConfig::default())
    })
    .unwrap_err();
    assert!(matches!(err, StoreError::RequestIdReuse { .. }));
}

#[test]
fn update_with_a_stale_version_is_a_conflict() {
    let (_d, mut s) = store();
    let g = op(&mut s, "create_group", None, 1, |t| {
        t.create_group("g", &GroupConfig::default())
    })
    .unwrap();
    let cfg = GroupConfig {
        auto_terminate: true,
        ..GroupConfig::default()
    };
    let g2 = op(&mut s, "update_group", None, 2, |t| {
        t.update_group("g", &cfg, g.version)
    })
    .unwrap();
    assert_eq!(g2.version, g.version + 1);
    let err = op(&mut s, "update_group", None, 3, |t| {
        t.update_group("g", &GroupConfig::default(), g.version)
    })
    .unwrap_err();
    assert!(matches!(err, StoreError::VersionConflict(_)));
    assert!(s.group("g").unwrap().config.auto_terminate);
}

#[test]
fn rule_violating_config_is_refused() {
    let (_d, mut s) = store();
    let cfg = GroupConfig {
        auto_switch: true,
        manual_replica: true,
        ..GroupConfig::default()
    };
    let err = op(&mut s, "create_group", None, 1, |t| {
        t.create_group("g", &cfg)
    })
    .unwrap_err();
    assert!(matches!(err, StoreError::Rule(_)));
    assert!(s.groups().unwrap().is_empty());
}

#[test]
fn reinstall_gets_a_new_id_and_keeps_history_linked() {
    let (_d, mut s) = live_store();
    let r = register(&mut s, "i-r1", "a-r1-v2", 10).unwrap();
    assert_eq!(r.replaced, vec!["a-r1".to_owned()]);
    let old = s.agent("a-r1").unwrap();
    assert_eq!(old.status, AgentStatus::Replaced);
    assert_eq!(old.replaced_by.as_deref(), Some("a-r1-v2"));
    let inst = s.instance("i-r1").unwrap();
    assert_eq!(inst.agent_id.as_deref(), Some("a-r1-v2"));
    // The role survives the reinstall; the old agent's audit trail is kept.
    assert_eq!(inst.role, Role::Replica);
    let trail = s
        .audit_log(&AuditQuery {
            entity: Some("agent:a-r1".into()),
            ..AuditQuery::default()
        })
        .unwrap();
    assert!(trail.iter().any(|e| e.action == "register"));
    assert!(trail.iter().any(|e| e.action == "replaced"));
    assert!(
        !s.active_agents()
            .unwrap()
            .iter()
            .any(|a| a.agent_id == "a-r1")
    );
}

#[test]
fn register_into_unknown_group_writes_nothing() {
    let (_d, mut s) = store();
    let before = table_counts(&s);
    let err = register(&mut s, "i-1", "a", 1).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { what: "group", .. }));
    assert_eq!(table_counts(&s), before);
}

#[test]
fn events_apply_once_and_close_their_command() {
    let (_d, mut s) = live_store();
    let pool = Pool::new("m5.large", "us-east-1b");
    launch(&mut s, 5, "launch-1", "a-p", &pool, false);
    let cmd = take(&mut s, "a-p", 5, 30_000).remove(0);
    let ev = |seq: i64, body: EventBody| Event {
        event_id: format!("a-p:{seq}"),
        seq,
        at_ms: 6,
        body,
    };
    let batch = vec![
        ev(
            11,
            EventBody::CommandResult {
                request_id: cmd.request_id.clone(),
                outcome: CommandOutcome::Done,
                detail: None,
                instance_id: None,
                error_code: None,
            },
        ),
        ev(
            12,
            EventBody::Notice {
                notice: spot_common::NoticeKind::Rebalance,
                effective_at_ms: None,
                action: None,
                raw: "{}".into(),
            },
        ),
    ];
    let r = tx(&mut s, 7, |t| t.apply_events("a-p", &batch)).unwrap();
    assert_eq!((r.applied, r.duplicates), (2, 0));
    let before = table_counts(&s);
    let r = tx(&mut s, 8, |t| t.apply_events("a-p", &batch)).unwrap();
    assert_eq!((r.applied, r.duplicates), (0, 2));
    assert_eq!(r.acked.len(), 2);
    assert_eq!(table_counts(&s), before);
    let done = s.commands(Some("a-p")).unwrap();
    assert!(
        done.iter()
            .any(|c| c.command.request_id == "launch-1" && c.state == CommandState::Done)
    );
    // An event id that is not the agent's own is refused as a whole.
    let foreign = vec![ev(
        3,
        EventBody::Health {
            healthy: true,
            detail: None,
        },
    )];
    let mut foreign = foreign;
    foreign[0].event_id = "a-r1:3".into();
    assert!(matches!(
        tx(&mut s, 9, |t| t.apply_events("a-p", &foreign)),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn commands_come_highest_priority_first_and_are_redelivered_after_silence() {
    let (_d, mut s) = live_store();
    take(&mut s, "a-p", 5, 30_000);
    for (rid, prio) in [("low", 10), ("high", 100)] {
        let c = Command {
            request_id: rid.into(),
            group: "g".into(),
            action: CommandKind::Demote,
            priority: prio,
            epoch: 1,
            deadline_ms: 10_000,
        };
        queue(&mut s, "a-r1", 10, &c);
    }
    let got = take(&mut s, "a-r1", 20, 1000);
    assert_eq!(
        got.iter()
            .map(|c| c.request_id.as_str())
            .collect::<Vec<_>>(),
        ["high", "low"]
    );
    assert!(take(&mut s, "a-r1", 500, 1000).is_empty());
    assert_eq!(take(&mut s, "a-r1", 1020, 1000).len(), 2);
    // A queued command past its deadline is expired, never handed out.
    let late = Command {
        request_id: "late".into(),
        group: "g".into(),
        action: CommandKind::Demote,
        priority: 100,
        epoch: 1,
        deadline_ms: 100,
    };
    queue(&mut s, "a-r2", 50, &late);
    assert!(
        take(&mut s, "a-r2", 200, 30_000)
            .iter()
            .all(|c| c.request_id != "late")
    );
    let states = s.commands(Some("a-r2")).unwrap();
    let late = states
        .iter()
        .find(|c| c.command.request_id == "late")
        .unwrap();
    assert_eq!(late.state, CommandState::Expired);
}

#[test]
fn offline_is_a_status_not_a_termination() {
    let (_d, mut s) = live_store();
    assert!(
        tx(&mut s, 5, |t| t.set_agent_status(
            "a-r1",
            AgentStatus::Online,
            AgentStatus::Offline
        ))
        .unwrap()
    );
    assert_eq!(s.agent("a-r1").unwrap().status, AgentStatus::Offline);
    assert_eq!(s.instance("i-r1").unwrap().role, Role::Replica);
    // A stale transition (from the wrong status) does nothing.
    assert!(
        !tx(&mut s, 6, |t| t.set_agent_status(
            "a-r1",
            AgentStatus::Online,
            AgentStatus::Offline
        ))
        .unwrap()
    );
}

#[test]
fn deleted_agent_keeps_history_and_gets_a_cleanup_command() {
    let (_d, mut s) = live_store();
    let v = op(&mut s, "delete_agent", None, 5, |t| t.delete_agent("a-r2")).unwrap();
    assert_eq!(v.status, AgentStatus::Deleted);
    assert!(
        s.active_agents()
            .unwrap()
            .iter()
            .any(|a| a.agent_id == "a-r2")
    );
    let cmds = take(&mut s, "a-r2", 6, 30_000);
    assert_eq!(cmds[0].action, CommandKind::Cleanup);
    assert!(matches!(
        op(&mut s, "delete_agent", None, 7, |t| t.delete_agent("a-r2")),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn gone_and_retired_instances_keep_their_history() {
    let (_d, mut s) = live_store();
    tx(&mut s, 10, |t| t.mark_gone("i-r2", "test")).unwrap();
    assert_eq!(s.instance("i-r2").unwrap().role, Role::Terminated);
    let rid = tx(&mut s, 11, |t| t.retire("g", "i-r1", Some("a-p"))).unwrap();
    assert_eq!(s.instance("i-r1").unwrap().role, Role::Terminated);
    let cmds = take(&mut s, "a-p", 12, 30_000);
    assert!(cmds.iter().any(|c| c.request_id == rid));
    let trail = s
        .audit_log(&AuditQuery {
            entity: Some("instance:i-r2".into()),
            ..AuditQuery::default()
        })
        .unwrap();
    assert!(trail.iter().any(|e| e.action == "instance_gone"));
    // A terminated instance can never come back.
    assert!(tx(&mut s, 13, |t| t.mark_gone("i-r2", "again")).is_err());
}

#[test]
fn switch_is_recorded_with_its_downtime() {
    let (_d, mut s) = live_store();
    let pool = Pool::new("c5.large", "us-east-1a");
    let outside = op(&mut s, "switch", None, 9, |t| t.request_switch("g", &pool));
    assert!(
        matches!(outside, Err(StoreError::Invalid(_))),
        "not a pool of g"
    );
    let mut config: serde_json::Value = serde_json::from_str(
        &s.conn()
            .query_row("SELECT config FROM groups WHERE name = 'g'", [], |r| {
                r.get::<String>(0)
            })
            .unwrap(),
    )
    .unwrap();
    config["pools"] = serde_json::json!([&pool]);
    s.conn()
        .execute("UPDATE groups SET config = ?1", [config.to_string()])
        .unwrap();
    let sw = op(&mut s, "switch", Some("sw-1"), 10, |t| {
        t.request_switch("g", &pool)
    })
    .unwrap();
    assert_eq!(sw.state, SwitchState::Launching);
    assert!(matches!(
        op(&mut s, "switch", None, 11, |t| t.request_switch("g", &pool)),
        Err(StoreError::InProgress(_))
    ));
    tx(&mut s, 12, |t| {
        t.begin_replace(&ReplaceRequest {
            switch_id: Some(sw.id),
            ..replace("i-r1", 1)
        })
    })
    .unwrap();
    let late = tx(&mut s, 12, |t| t.cancel_switch("g"));
    assert!(
        matches!(late, Err(StoreError::InProgress(_))),
        "a switch already replacing the PRIMARY is not cancelled"
    );
    take(&mut s, "a-p", 13, 30_000); // demote delivered at 13
    demoted(&mut s, "a-p", "i-p", 2, 105);
    tx(&mut s, 14, |t| t.grant("g", 2)).unwrap();
    confirm(&mut s, "a-r1", "i-r1", 2, 1); // finished at 5 in this test's clock
    tx(&mut s, 15, |t| t.commit_promotion("g", 2)).unwrap();
    let done = s.switches("g").unwrap().remove(0);
    assert_eq!(done.state, SwitchState::Done);
    assert_eq!(done.to_instance.as_deref(), Some("i-r1"));
    assert_eq!(done.demote_started_ms, Some(13));
    assert!(done.downtime_ms.is_some());
}

fn point(az: &str, ts: i64, price: &str) -> spot_common::PricePoint {
    spot_common::PricePoint {
        instance_type: "m5.large".into(),
        availability_zone: az.into(),
        product_description: "Linux/UNIX".into(),
        timestamp: humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ts as u64),
        )
        .to_string(),
        price: price.into(),
    }
}

const CONS: crate::store::ConsolidationConfig = crate::store::ConsolidationConfig {
    max_gap_ms: 24 * 3_600_000,
    staging_retention_ms: 14 * 86_400_000,
    canonical_retention_ms: 100 * 86_400_000,
};

#[test]
fn zombie_reports_are_refused_and_bad_points_write_nothing() {
    let (_d, mut s) = live_store();
    let h = 3_600_000;
    assert_eq!(
        tx(&mut s, 100 * h, |t| t
            .ingest_prices("a-p", &[point("a", 10 * h, "0.1")]))
        .unwrap(),
        (1, 0)
    );
    assert_eq!(
        tx(&mut s, 100 * h, |t| t
            .ingest_prices("a-p", &[point("a", 10 * h, "0.1")]))
        .unwrap(),
        (0, 1)
    );
    let before = table_counts(&s);
    let bad = [point("a", 11 * h, "0.2"), point("a", 12 * h, "cheap")];
    assert!(matches!(
        tx(&mut s, 100 * h, |t| t.ingest_prices("a-p", &bad)),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        table_counts(&s),
        before,
        "the good point of a bad batch is not half-written"
    );
    tx(&mut s, 5, |t| t.begin_replace(&replace("i-r1", 1))).unwrap();
    demoted(&mut s, "a-p", "i-p", 2, 102);
    tx(&mut s, 6, |t| t.grant("g", 2)).unwrap();
    assert_eq!(s.instance("i-p").unwrap().role, Role::Zombie);
    assert!(matches!(
        tx(&mut s, 100 * h, |t| t
            .ingest_prices("a-p", &[point("a", 13 * h, "0.3")])),
        Err(StoreError::NotIngested(_))
    ));
}

#[test]
fn late_data_reconsolidates_only_the_hours_it_touches() {
    let (_d, mut s) = live_store();
    let h = 3_600_000;
    let now = 200 * h;
    let pts = [
        point("a", 100 * h, "0.100000"),
        point("a", 104 * h, "0.200000"),
    ];
    tx(&mut s, now, |t| t.ingest_prices("a-p", &pts)).unwrap();
    let r1 = tx(&mut s, now, |t| t.consolidate(&CONS)).unwrap();
    assert_eq!(r1.pools, 1);
    let key = SeriesKey {
        pool: PoolKey::new("m5.large", "a"),
        product: "Linux/UNIX".into(),
    };
    let first = s.hourly_prices(&key, 0, now).unwrap();
    // Idempotent.
    assert_eq!(tx(&mut s, now, |t| t.consolidate(&CONS)).unwrap().pools, 0);
    assert_eq!(s.hourly_prices(&key, 0, now).unwrap(), first);
    // A late point at 102h changes hours 102 and 103 only.
    tx(&mut s, now + 1, |t| {
        t.ingest_prices("a-r1", &[point("a", 102 * h, "0.150000")])
    })
    .unwrap();
    tx(&mut s, now + 1, |t| t.consolidate(&CONS)).unwrap();
    let second = s.hourly_prices(&key, 0, now).unwrap();
    let changed: Vec<i64> = first
        .iter()
        .zip(&second)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.hour_ms / h)
        .collect();
    assert_eq!(changed, vec![102, 103]);
    assert!(
        second
            .iter()
            .find(|p| p.hour_ms == 102 * h)
            .is_some_and(|p| p.price == 150_000 && !p.interpolated)
    );
}

#[test]
fn a_launched_instance_is_launching_until_it_registers_or_fails() {
    let (_d, mut s) = live_store();
    let pool = Pool::new("c5.large", "us-east-1b");
    launch(&mut s, 10, "l-1", "a-p", &pool, true);
    let ev = Event {
        event_id: "a-p:50".into(),
        seq: 50,
        at_ms: 11,
        body: EventBody::CommandResult {
            request_id: "l-1".into(),
            outcome: CommandOutcome::Done,
            detail: None,
            instance_id: Some("i-new".into()),
            error_code: None,
        },
    };
    tx(&mut s, 12, |t| t.apply_events("a-p", &[ev])).unwrap();
    let i = s.instance("i-new").unwrap();
    assert_eq!(
        (i.role, i.instance_type.as_str(), i.agent_id),
        (Role::Launching, "c5.large", None)
    );
    let snap = snapshot(&s, &["a-p"], 12 + 300_001);
    assert!(
        snap.instances
            .iter()
            .any(|i| i.instance_id == "i-new" && i.launch_overdue)
    );
    tx(&mut s, 400_000, |t| t.launch_failed("i-new")).unwrap();
    assert_eq!(s.instance("i-new").unwrap().role, Role::Failed);
}

#[test]
fn zombies_expire_after_their_retention_and_bulk_terminate_takes_only_zombies_and_failed() {
    let (_d, mut s) = live_store();
    let reported = Reported {
        role: Some(Role::Primary),
        role_epoch: 5,
        highest_epoch: 5,
        proof: Ok(()),
    };
    tx(&mut s, 10, |t| t.converge_epoch("i-r1", reported)).unwrap();
    assert_eq!(s.instance("i-p").unwrap().role, Role::Zombie);
    let day = 86_400_000;
    assert!(snapshot(&s, &["a-r1"], 10 + 29 * day).expired.is_empty());
    assert_eq!(snapshot(&s, &["a-r1"], 10 + 30 * day).expired, vec!["i-p"]);

    // A dry run by filter lists it and changes nothing.
    let before = table_counts(&s);
    let by_age = |days: i64| BulkSelection {
        role: Some(Role::Zombie),
        older_than_ms: Some(days * day),
        ..BulkSelection::default()
    };
    let items = tx(&mut s, 10 + 2 * day, |t| {
        t.bulk_terminate(&by_age(1), false, true)
    })
    .unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0].instance_id.as_str(), items[0].action.as_str()),
        ("i-p", "terminate")
    );
    assert_eq!(items[0].in_role_s, 2 * 86_400);
    assert_eq!(table_counts(&s), before, "a dry run writes nothing");
    let young = tx(&mut s, 10 + 2 * day, |t| {
        t.bulk_terminate(&by_age(3), false, true)
    })
    .unwrap();
    assert!(young.is_empty(), "not old enough: {young:?}");

    // By ids: the REPLICA is skipped with its reason, the ZOMBIE retired.
    let by_ids = |ids: &[&str]| BulkSelection {
        ids: ids.iter().map(|s| (*s).to_owned()).collect(),
        ..BulkSelection::default()
    };
    let ids = by_ids(&["i-p", "i-r2"]);
    let items = tx(&mut s, 10 + 2 * day, |t| {
        t.bulk_terminate(&ids, false, false)
    })
    .unwrap();
    assert_eq!(items[0].action, "terminate");
    assert!(items[0].request_id.is_some());
    assert_eq!(items[1].action, "skip");
    assert!(
        items[1]
            .reason
            .as_deref()
            .unwrap()
            .contains("only ZOMBIE and FAILED")
    );
    assert_eq!(s.instance("i-p").unwrap().role, Role::Terminated);
    assert_eq!(s.instance("i-r2").unwrap().role, Role::Replica);

    // An unknown id refuses the whole request.
    let before = table_counts(&s);
    let unknown = by_ids(&["i-r2", "i-nope"]);
    let e = tx(&mut s, 10 + 2 * day, |t| {
        t.bulk_terminate(&unknown, false, false)
    })
    .unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
    assert_eq!(table_counts(&s), before);
}

#[test]
fn a_termination_that_ended_without_effect_is_tried_again() {
    let (_d, mut s) = live_store();
    tx(&mut s, 10, |t| t.retire("g", "i-r2", Some("a-r1"))).unwrap();
    // Its agent goes away before running it: the command expires.
    tx(&mut s, 11, |t| {
        t.set_agent_status("a-r1", AgentStatus::Online, AgentStatus::Offline)
    })
    .unwrap();
    assert_eq!(
        commands::state(s.conn(), "terminate-i-r2").unwrap(),
        Some(CommandState::Expired)
    );
    // Not retried until EC2 is seen still running it.
    assert!(snapshot(&s, &["a-p"], 12).unterminated.is_empty());
    tx(&mut s, 12, |t| t.set_ec2_state("g", "i-r2", "running")).unwrap();
    assert_eq!(snapshot(&s, &["a-p"], 12).unterminated, vec!["i-r2"]);
    let rid = tx(&mut s, 13, |t| t.terminate_again("g", "i-r2", Some("a-p"))).unwrap();
    assert_eq!(rid, "terminate-i-r2.1");
    assert!(
        snapshot(&s, &["a-p"], 14).unterminated.is_empty(),
        "one attempt open at a time"
    );
    assert!(
        take(&mut s, "a-p", 14, 30_000)
            .iter()
            .any(|c| c.request_id == rid)
    );
}

#[test]
fn a_launch_taken_by_an_agent_that_goes_offline_no_longer_counts_as_in_flight() {
    let (_d, mut s) = live_store();
    let pool = Pool::new("m5.large", "us-east-1b");
    launch(&mut s, 10, "l-1", "a-p", &pool, true);
    take(&mut s, "a-p", 11, 30_000);
    assert_eq!(snapshot(&s, &["a-r1"], 12).launches_in_flight, 1);
    // Its instance dies with the launch in hand: it would block the
    // group's emergency launch forever.
    tx(&mut s, 13, |t| {
        t.set_agent_status("a-p", AgentStatus::Online, AgentStatus::Offline)
    })
    .unwrap();
    assert_eq!(snapshot(&s, &["a-r1"], 14).launches_in_flight, 0);
    assert_eq!(
        commands::state(s.conn(), "l-1").unwrap(),
        Some(CommandState::Expired)
    );
}

#[test]
fn only_a_launch_refused_for_capacity_marks_its_pool_failed() {
    let (_d, mut s) = live_store();
    let full = Pool::new("m5.large", "us-east-1b");
    let cut = Pool::new("c5.large", "us-east-1a");
    for (rid, pool) in [("l-full", &full), ("l-cut", &cut)] {
        launch(&mut s, 10, rid, "a-p", pool, true);
    }
    take(&mut s, "a-p", 11, 30_000);
    // EC2 had no capacity in one pool; the agent's link to EC2 was cut
    // for the other (which says nothing about that pool).
    let results = [
        (901, "l-full", "InsufficientInstanceCapacity"),
        (902, "l-cut", "Transport"),
    ];
    for (seq, rid, code) in results {
        let ev = Event {
            event_id: format!("a-p:{seq}"),
            seq,
            at_ms: 12,
            body: EventBody::CommandResult {
                request_id: rid.into(),
                outcome: CommandOutcome::Failed,
                detail: None,
                instance_id: None,
                error_code: Some(code.into()),
            },
        };
        tx(&mut s, 12, |t| t.apply_events("a-p", &[ev])).unwrap();
    }
    assert_eq!(
        snapshot(&s, &["a-p", "a-r1"], 13).failed_pools,
        vec![spot_common::PoolKey::new("m5.large", "us-east-1b")]
    );
}

#[test]
fn fleet_health_counts_what_the_alerts_watch() {
    let (_d, mut s) = live_store();
    let h = s.fleet_health(10).unwrap();
    assert_eq!(
        (
            h.groups_without_primary,
            h.interrupted_without_replica,
            h.zombies_past_retention
        ),
        (0, 0, 0)
    );
    // The PRIMARY's pool has no price yet; then its newest hour counts.
    let primary = |s: &Store| s.fleet_health(10).unwrap().primary_prices;
    assert_eq!(
        primary(&s),
        vec![crate::store::PrimaryPrice {
            group: "g".into(),
            instance_type: "m5.large".into(),
            price: None
        }]
    );
    for (hour, micros) in [(3_600_000, 40_000), (7_200_000, 30_000)] {
        s.conn()
            .execute(
                "INSERT INTO price_hourly VALUES ('m5.large', 'us-east-1a', 'Linux/UNIX', ?1, ?2, 0, 0)",
                [hour, micros],
            )
            .unwrap();
    }
    assert_eq!(primary(&s)[0].price, Some(0.03));
    // Both REPLICAs gone: an interruption on the PRIMARY has no one to
    // fail over to, and nothing is launching.
    for r in ["i-r1", "i-r2"] {
        tx(&mut s, 10, |t| t.mark_gone(r, "test")).unwrap();
    }
    let notice = Event {
        event_id: "a-p:50".into(),
        seq: 50,
        at_ms: 11,
        body: EventBody::Notice {
            notice: spot_common::NoticeKind::Interruption,
            effective_at_ms: Some(120_000),
            action: Some("terminate".into()),
            raw: "{}".into(),
        },
    };
    tx(&mut s, 11, |t| t.apply_events("a-p", &[notice])).unwrap();
    let h = s.fleet_health(12).unwrap();
    assert_eq!(h.interrupted_without_replica, 1, "{h:?}");
    assert_eq!(h.groups_without_primary, 0);
    // A group whose only instance is not PRIMARY (yet): without PRIMARY.
    op(&mut s, "create_group", None, 13, |t| {
        t.create_group("h", &GroupConfig::default())
    })
    .unwrap();
    let mut r = reg("i-h1");
    r.group = "h".into();
    tx(&mut s, 14, |t| {
        t.register_agent(&r, "a-h1", "tok-h1", 5000, 15000)
    })
    .unwrap();
    assert_eq!(s.fleet_health(15).unwrap().groups_without_primary, 1);
}

/// Every table's count of rows, by name.
fn count(s: &Store, table: &str) -> i64 {
    s.conn()
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// One retention pass with the default policy, as of `now`.
fn prune_all(s: &mut Store, now: i64) {
    let r = Retention::default();
    for &table in Table::ALL {
        let before = now - i64::try_from(r.of(table).as_millis()).unwrap();
        while s.prune(table, before, 2).unwrap() == 2 {}
    }
}

#[test]
fn retention_prunes_old_rows_and_keeps_what_fencing_and_retries_read() {
    let (_d, mut s) = live_store();
    let day = 86_400_000;
    op(&mut s, "create_group", Some("req-1"), 7, |t| {
        t.create_group("g2", &GroupConfig::default())
    })
    .unwrap();
    let ev = |agent: &str, seq: i64, body: EventBody| Event {
        event_id: format!("{agent}:{seq}"),
        seq,
        at_ms: 8,
        body,
    };
    // The PRIMARY demoted itself once (fencing evidence while it runs);
    // a replica saw a rebalance notice.
    let demoted = EventBody::SelfDemoted {
        epoch: 1,
        reason: "test".into(),
        hook_ok: true,
    };
    tx(&mut s, 8, |t| {
        t.apply_events("a-p", &[ev("a-p", 40, demoted)])
    })
    .unwrap();
    let notice = EventBody::Notice {
        notice: spot_common::NoticeKind::Rebalance,
        effective_at_ms: None,
        action: None,
        raw: "{}".into(),
    };
    tx(&mut s, 8, |t| {
        t.apply_events("a-r1", &[ev("a-r1", 41, notice)])
    })
    .unwrap();
    // i-r2 is gone for good, its agent offline; i-r1 is retired, its
    // termination still queued.
    tx(&mut s, 10, |t| t.mark_gone("i-r2", "test")).unwrap();
    tx(&mut s, 10, |t| {
        t.set_agent_status("a-r2", AgentStatus::Online, AgentStatus::Offline)
    })
    .unwrap();
    tx(&mut s, 11, |t| t.retire("g", "i-r1", Some("a-p"))).unwrap();

    // Ten days on, only the idempotency answers are old enough.
    let counts = table_counts(&s);
    prune_all(&mut s, 10 * day);
    assert_eq!(count(&s, "idempotency"), 0);
    assert_eq!(
        table_counts(&s)[..6],
        counts[..6],
        "nothing else is old yet"
    );

    // 200 days on: what nothing reads is gone...
    prune_all(&mut s, 200 * day);
    assert!(s.instance("i-r2").is_err(), "settled TERMINATED row pruned");
    assert_eq!(count(&s, "notices"), 0);
    let agents: Vec<String> = s
        .agents(None)
        .unwrap()
        .into_iter()
        .map(|a| a.agent_id)
        .collect();
    assert!(!agents.contains(&"a-r2".to_owned()), "{agents:?}");
    // ...and what fencing and retries read stays.
    assert_eq!(s.instance("i-r1").unwrap().role, Role::Terminated);
    assert_eq!(
        commands::state(s.conn(), "terminate-i-r1").unwrap(),
        Some(CommandState::Queued),
        "an unfinished command stays"
    );
    assert_eq!(
        commands::state(s.conn(), &ids::promote("i-p", 1)).unwrap(),
        Some(CommandState::Done),
        "commands about a running instance stay"
    );
    let evidence: i64 = s
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM events WHERE kind = 'self_demoted'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(evidence, 1, "self-demotion of a running instance stays");
    assert_eq!(count(&s, "events"), 1, "other old events pruned");
    assert!(count(&s, "audit") > 0, "audit kept 400 days");
    assert!(agents.contains(&"a-p".to_owned()));

    // Past the audit's retention, the audit goes too.
    prune_all(&mut s, 500 * day);
    assert_eq!(count(&s, "audit"), 0);
}

#[test]
fn training_rows_follow_the_primary_and_label_what_came_next() {
    let (_d, mut s) = store();
    let h = 3_600_000;
    let config = GroupConfig {
        pools: vec![
            Pool::new("m5.large", "us-east-1a"),
            Pool::new("m5.large", "us-east-1b"),
        ],
        ..GroupConfig::default()
    };
    op(&mut s, "create_group", None, 0, |t| {
        t.create_group("g", &config)
    })
    .unwrap();
    register(&mut s, "i-p", "a-p", 10).unwrap();
    tx(&mut s, 11, |t| t.agent_healthy("a-p")).unwrap();
    tx(&mut s, 12, |t| t.begin_replace(&replace("i-p", 0))).unwrap();
    confirm(&mut s, "a-p", "i-p", 1, 1);
    // PRIMARY from 2 h on.
    tx(&mut s, 2 * h, |t| t.commit_promotion("g", 1)).unwrap();
    let pts: Vec<_> = (0..10)
        .flat_map(|k| {
            [
                point("us-east-1a", k * h, "0.100000"),
                point("us-east-1b", k * h, "0.050000"),
            ]
        })
        .collect();
    tx(&mut s, 10 * h, |t| t.ingest_prices("a-p", &pts)).unwrap();
    tx(&mut s, 10 * h, |t| t.consolidate(&CONS)).unwrap();
    // An interruption notice at 5.5 h.
    let notice = Event {
        event_id: "a-p:9".into(),
        seq: 9,
        at_ms: 5 * h + h / 2,
        body: EventBody::Notice {
            notice: spot_common::NoticeKind::Interruption,
            effective_at_ms: Some(6 * h),
            action: Some("terminate".into()),
            raw: "{}".into(),
        },
    };
    tx(&mut s, 5 * h + h / 2, |t| t.apply_events("a-p", &[notice])).unwrap();

    let rows = s.training_rows(0, 9 * h).unwrap();
    assert_eq!(rows.len(), 10, "hours 0..=9");
    assert_eq!(rows[1].primary, None, "not PRIMARY yet");
    let r = &rows[3];
    assert_eq!(r.primary.as_deref(), Some("i-p"));
    assert_eq!(r.availability_zone.as_deref(), Some("us-east-1a"));
    assert_eq!((r.price, r.cheapest_price), (Some(0.10), Some(0.05)));
    assert_eq!(r.cheapest_pool.as_deref(), Some("m5.large/us-east-1b"));
    assert_eq!(r.realized_price_24h, Some(0.10));
    let labels = |k: usize| {
        let r = &rows[k];
        (r.interrupted_1h, r.interrupted_6h, r.interrupted_24h)
    };
    assert_eq!(labels(5), (true, true, true), "notice in hour 5");
    assert_eq!(labels(4), (false, true, true));
    assert_eq!(labels(6), (false, false, false), "after the notice");
}

#[test]
fn an_instance_whose_launch_result_was_lost_is_adopted_and_then_failed() {
    let (_d, mut s) = live_store();
    let pool = Pool::new("m5.large", "us-east-1b");
    launch(&mut s, 20, "launch-lost", "a-r1", &pool, false);
    // The agent ran RunInstances and died before reporting: its launch
    // expires, and another agent's DescribeInstances shows the instance.
    tx(&mut s, 30, |t| {
        t.set_agent_status("a-r1", AgentStatus::Online, AgentStatus::Offline)
    })
    .unwrap();
    let seen = |id: &str, rid: Option<&str>, state: &str| spot_common::Ec2State {
        instance_id: id.into(),
        state: state.into(),
        request_id: rid.map(str::to_owned),
    };
    let ev = Event {
        event_id: "a-p:70".into(),
        seq: 70,
        at_ms: 40,
        body: EventBody::Ec2States {
            instances: vec![
                seen("i-lost", Some("launch-lost"), "running"),
                seen("i-stranger", Some("not-a-launch-of-g"), "running"),
                seen("i-gone", Some("launch-lost"), "terminated"),
                seen("i-p", None, "running"),
            ],
        },
    };
    tx(&mut s, 40, |t| t.apply_events("a-p", &[ev])).unwrap();
    let lost = s.instance("i-lost").unwrap();
    assert_eq!(lost.role, Role::Launching);
    assert_eq!(lost.availability_zone, "us-east-1b", "the launch's pool");
    assert_eq!(lost.created_at_ms, 20, "as of the launch");
    assert!(s.instance("i-gone").is_err(), "already terminated");
    // Five minutes after the launch it is overdue: the planner fails it,
    // and FAILED instances are terminated (failed_retention_s = 0).
    let snap = snapshot(&s, &["a-p"], 20 + 300_001);
    assert!(
        snap.instances
            .iter()
            .any(|i| i.instance_id == "i-lost" && i.launch_overdue),
        "{snap:?}"
    );
    // From a launch this store never made (a restored copy): a stranger,
    // which the planner neither waits for nor counts, but which the next
    // replacement must fence before granting anything.
    assert_eq!(s.instance("i-stranger").unwrap().role, Role::Launching);
    assert!(!snap.instances.iter().any(|i| i.instance_id == "i-stranger"));
    tx(&mut s, 50, |t| {
        t.begin_replace(&ReplaceRequest {
            heard_since_ms: 45,
            ..replace("i-r2", 1)
        })
    })
    .unwrap();
    let t = s.group("g").unwrap().transition.unwrap();
    assert!(
        t.fence.iter().any(|f| f.instance_id == "i-stranger"),
        "{:?}",
        t.fence
    );
}

#[test]
fn an_ec2_report_its_own_agent_contradicts_writes_nothing_off() {
    // Any enrolled agent can say a group's instance is terminated. While
    // that instance's agent is ONLINE, or heard after the report, the
    // planner sees it as there (no replacement, no write-off); once its
    // agent is OFFLINE and silent since the report, gone.
    let (_d, mut s) = live_store();
    tx(&mut s, 1_000, |t| {
        t.set_ec2_state("g", "i-r1", "terminated")
    })
    .unwrap();
    let gone = |s: &Store, online: bool, silent_ms: i64| {
        let mut input = SnapshotInput {
            now_ms: 3_000,
            launch_timeout_ms: 300_000,
            ..SnapshotInput::default()
        };
        input.agents.insert(
            "a-r1".into(),
            AgentLive {
                online,
                silent_ms: Some(silent_ms),
                reported: None,
            },
        );
        let snap = s.group_snapshot("g", &input).unwrap();
        snap.instance("i-r1").unwrap().ec2_gone
    };
    assert!(!gone(&s, false, 500), "heard 1.5 s after the report");
    assert!(
        !gone(&s, true, 2_500),
        "ONLINE: its last heartbeat is only a few seconds old"
    );
    assert!(
        gone(&s, false, 2_500),
        "OFFLINE and silent since before the report"
    );
}

/// Set group `g`'s data volume (vol-1 on /dev/sdf) and a snapshot interval.
fn with_volume(s: &mut Store, now: i64) {
    let g = s.group("g").unwrap();
    let mut config = g.config.clone();
    config.data_volumes = vec![spot_common::DataVolume {
        volume_id: "vol-1".into(),
        device: "/dev/sdf".into(),
    }];
    config.snapshot_interval_s = 60;
    config.pools = vec![
        Pool::new("m5.large", "us-east-1a"),
        Pool::new("m5.large", "us-east-1b"),
    ];
    op(s, "update_group", None, now, |t| {
        t.update_group("g", &config, g.version)
    })
    .unwrap();
}

/// `agent` reports what a command did to the data volumes.
fn volumes_event(
    s: &mut Store,
    agent: &str,
    seq: i64,
    now: i64,
    attached: Vec<spot_common::VolumeAt>,
    snapshots: Vec<spot_common::SnapshotTaken>,
) {
    let ev = Event {
        event_id: format!("{agent}:{seq}"),
        seq,
        at_ms: now,
        body: EventBody::DataVolumes {
            request_id: "r".into(),
            attached,
            snapshots,
        },
    };
    tx(s, now, |t| t.apply_events(agent, &[ev])).unwrap();
}

#[test]
fn data_volumes_follow_the_primary_and_are_snapshotted_on_their_schedule() {
    let (_d, mut s) = live_store();
    with_volume(&mut s, 10);
    // Not attached to the PRIMARY as far as the store knows: no snapshot.
    assert_eq!(tx(&mut s, 11, |t| t.queue_snapshot("g")).unwrap(), None);
    let at = |v: &str, az: &str| spot_common::VolumeAt {
        volume_id: v.into(),
        device: "/dev/sdf".into(),
        availability_zone: az.into(),
    };
    volumes_event(&mut s, "a-p", 100, 12, vec![at("vol-1", "us-east-1a")], vec![]);
    let snap = snapshot(&s, &["a-p", "a-r1", "a-r2"], 13);
    assert_eq!(snap.volume_zone.as_deref(), Some("us-east-1a"));
    assert_eq!(snap.handover_ms, 90_000, "a promote may take the handover longer");
    // A planned switch never takes the volumes out of their zone.
    let b = Pool::new("m5.large", "us-east-1b");
    assert!(matches!(
        op(&mut s, "switch", None, 14, |t| t.request_switch("g", &b)),
        Err(StoreError::Refused { code: "data_volumes_zone", .. })
    ));
    assert!(!snap.volumes_restorable, "no snapshot yet");

    // Due at once (never snapshotted): one command, to the PRIMARY.
    let agent = tx(&mut s, 20, |t| t.queue_snapshot("g")).unwrap();
    assert_eq!(agent.as_deref(), Some("a-p"));
    assert_eq!(tx(&mut s, 21, |t| t.queue_snapshot("g")).unwrap(), None, "one open at a time");
    let cmds = take(&mut s, "a-p", 22, 30_000);
    let snap_cmd = cmds
        .iter()
        .find(|c| matches!(c.action, CommandKind::Snapshot { .. }))
        .unwrap();
    volumes_event(
        &mut s,
        "a-p",
        101,
        23,
        vec![],
        vec![spot_common::SnapshotTaken {
            volume_id: "vol-1".into(),
            device: "/dev/sdf".into(),
            snapshot_id: "snap-1".into(),
        }],
    );
    report(&mut s, "a-p", &snap_cmd.request_id, CommandOutcome::Done, 102);
    assert!(snapshot(&s, &["a-p"], 24).volumes_restorable);
    assert_eq!(tx(&mut s, 30, |t| t.queue_snapshot("g")).unwrap(), None, "not due before the interval");
    let view = s.data_volumes("g", 23 + 45_000).unwrap();
    assert_eq!(view.rpo_s, Some(45));
    assert_eq!(view.volumes[0].last_snapshot_id.as_deref(), Some("snap-1"));
    assert!(tx(&mut s, 23 + 61_000, |t| t.queue_snapshot("g")).unwrap().is_some(), "due again");

    // A replacement's promote carries the volume; restored in another
    // zone, the new volume is the device's from then on.
    let r = tx(&mut s, 70_000, |t| {
        t.begin_replace(&ReplaceRequest {
            emergency: true,
            ..replace("i-r1", 1)
        })
    })
    .unwrap();
    assert_eq!(r.phase, Phase::Demoting);
    demoted(&mut s, "a-p", "i-p", 2, 103);
    tx(&mut s, 70_001, |t| t.grant("g", 2)).unwrap();
    let promote = take(&mut s, "a-r1", 70_002, 30_000)
        .into_iter()
        .find(|c| matches!(c.action, CommandKind::Promote { .. }))
        .unwrap();
    let CommandKind::Promote { data_volumes, .. } = &promote.action else {
        unreachable!()
    };
    assert_eq!(data_volumes[0].volume_id, "vol-1");
    volumes_event(&mut s, "a-r1", 104, 70_003, vec![at("vol-new", "us-east-1b")], vec![]);
    let view = s.data_volumes("g", 70_004).unwrap();
    assert_eq!(view.volumes[0].volume_id, "vol-new");
    assert_eq!(view.availability_zone.as_deref(), Some("us-east-1b"));
    assert_eq!(
        view.volumes[0].last_snapshot_id.as_deref(),
        Some("snap-1"),
        "the device's latest snapshot is still the one its data came from"
    );
    assert!(s
        .audit_log(&AuditQuery::default())
        .unwrap()
        .iter()
        .any(|e| e.action == "data_volume" && e.post_state["volume_id"] == "vol-new"));
}
