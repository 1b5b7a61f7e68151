use super::*;
use spot_common::wire::RegisterRequest;
use spot_common::{CommandOutcome, EventBody};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(&dir.path().join("t.db"), false).unwrap();
    migrations::migrate(&mut conn).unwrap();
    (dir, Store { conn })
}

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
    }
}

/// A group with one PRIMARY (`i-p`, agent `a-p`) and replicas `i-r1`, `i-r2`.
fn live_group(s: &mut Store) {
    s.create_group(None, "g", &GroupConfig::default(), &Actor::Operator, 1)
        .unwrap();
    for (i, a) in [("i-p", "a-p"), ("i-r1", "a-r1"), ("i-r2", "a-r2")] {
        s.register_agent(&reg(i), a, &format!("tok-{a}"), 5000, 15000, 2)
            .unwrap();
        s.agent_healthy(a, 3).unwrap();
    }
    s.promote(None, "g", "i-p", 0, 10, 100, &Actor::Operator, 4)
        .unwrap();
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
        s.conn
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
    let (_d, mut s) = store();
    assert_eq!(migrations::migrate(&mut s.conn).unwrap(), SCHEMA_VERSION);
}

#[test]
fn promotion_bumps_epoch_demotes_old_and_queues_commands() {
    let (_d, mut s) = store();
    live_group(&mut s);
    let r = s
        .promote(None, "g", "i-r1", 1, 100, 1000, &Actor::System, 5)
        .unwrap();
    assert_eq!(r.epoch, 2);
    assert_eq!(r.demoted.as_deref(), Some("i-p"));
    assert_eq!(s.get_instance("i-p").unwrap().role, Role::Zombie);
    assert_eq!(s.get_instance("i-r1").unwrap().role, Role::Primary);
    assert_eq!(s.get_group("g").unwrap().primary.as_deref(), Some("i-r1"));
    let cmds = s.take_commands("a-r1", 6, 30_000, 10).unwrap();
    assert_eq!(cmds.len(), 1);
    assert!(matches!(cmds[0].action, CommandKind::Promote { .. }));
    assert_eq!(cmds[0].epoch, 2);
    assert_eq!(cmds[0].priority, 100);
    let demote = s.take_commands("a-p", 6, 30_000, 10).unwrap();
    assert!(
        demote
            .iter()
            .any(|c| c.action == CommandKind::Demote && c.epoch == 2)
    );
}

#[test]
fn second_promotion_against_the_same_epoch_is_refused_and_changes_nothing() {
    let (_d, mut s) = store();
    live_group(&mut s);
    s.promote(None, "g", "i-r1", 1, 100, 1000, &Actor::System, 5)
        .unwrap();
    let before = table_counts(&s);
    let err = s
        .promote(None, "g", "i-r2", 1, 100, 1000, &Actor::System, 6)
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Transition(TransitionError::StaleEpoch { .. })
        ),
        "{err:?}"
    );
    assert_eq!(table_counts(&s), before);
    assert_eq!(s.get_instance("i-r2").unwrap().role, Role::Replica);
}

#[test]
fn database_refuses_a_second_primary_even_behind_the_model() {
    let (_d, mut s) = store();
    live_group(&mut s);
    let err = s
        .conn
        .execute(
            "UPDATE instances SET role = 'primary' WHERE instance_id = 'i-r1'",
            [],
        )
        .unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
}

#[test]
fn illegal_transition_names_the_rule_and_changes_nothing() {
    let (_d, mut s) = store();
    live_group(&mut s);
    s.register_agent(&reg("i-new"), "a-new", "tok-new", 5000, 15000, 7)
        .unwrap();
    let before = table_counts(&s);
    let err = s
        .promote(None, "g", "i-new", 1, 100, 1000, &Actor::Operator, 8)
        .unwrap_err();
    match err {
        StoreError::Transition(t) => assert_eq!(t.rule(), "promote_requires_replica"),
        other => panic!("{other:?}"),
    }
    assert_eq!(table_counts(&s), before);
}

#[test]
fn repeated_request_id_returns_the_first_answer_and_changes_nothing() {
    let (_d, mut s) = store();
    live_group(&mut s);
    let first = s
        .promote(Some("op-1"), "g", "i-r1", 1, 100, 1000, &Actor::Operator, 5)
        .unwrap();
    let before = table_counts(&s);
    // Same request again, even though epoch 1 is now stale.
    let again = s
        .promote(Some("op-1"), "g", "i-r1", 1, 100, 1000, &Actor::Operator, 9)
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(table_counts(&s), before);
    // The id cannot be reused for another kind of request.
    let err = s
        .create_group(
            Some("op-1"),
            "h",
            &GroupConfig::default(),
            &Actor::Operator,
            9,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::RequestIdReuse { .. }));
}

#[test]
fn update_with_a_stale_version_is_a_conflict() {
    let (_d, mut s) = store();
    let g = s
        .create_group(None, "g", &GroupConfig::default(), &Actor::Operator, 1)
        .unwrap();
    let cfg = GroupConfig {
        auto_terminate: true,
        ..GroupConfig::default()
    };
    let g2 = s
        .update_group(None, "g", &cfg, g.version, &Actor::Operator, 2)
        .unwrap();
    assert_eq!(g2.version, g.version + 1);
    let err = s
        .update_group(
            None,
            "g",
            &GroupConfig::default(),
            g.version,
            &Actor::Operator,
            3,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::VersionConflict(_)));
    assert!(s.get_group("g").unwrap().config.auto_terminate);
}

#[test]
fn rule_violating_config_is_refused() {
    let (_d, mut s) = store();
    let cfg = GroupConfig {
        auto_switch: true,
        manual_replica: true,
        ..GroupConfig::default()
    };
    let err = s
        .create_group(None, "g", &cfg, &Actor::Operator, 1)
        .unwrap_err();
    assert!(matches!(err, StoreError::Rule(_)));
    assert!(s.list_groups().unwrap().is_empty());
}

#[test]
fn reinstall_gets_a_new_id_and_keeps_history_linked() {
    let (_d, mut s) = store();
    live_group(&mut s);
    s.register_agent(&reg("i-r1"), "a-r1-v2", "tok-v2", 5000, 15000, 10)
        .unwrap();
    let old = s.get_agent("a-r1").unwrap();
    assert_eq!(old.status, AgentStatus::Replaced);
    assert_eq!(old.replaced_by.as_deref(), Some("a-r1-v2"));
    let inst = s.get_instance("i-r1").unwrap();
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
    let err = s
        .register_agent(&reg("i-1"), "a", "t", 5000, 15000, 1)
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { what: "group", .. }));
    assert_eq!(table_counts(&s), before);
}

#[test]
fn events_apply_once_and_close_their_command() {
    let (_d, mut s) = store();
    live_group(&mut s);
    let cmd = s.take_commands("a-p", 5, 30_000, 10).unwrap().remove(0);
    let ev = |seq: i64, body: EventBody| Event {
        event_id: format!("a-p:{seq}"),
        seq,
        at_ms: 6,
        body,
    };
    let batch = vec![
        ev(
            1,
            EventBody::CommandResult {
                request_id: cmd.request_id.clone(),
                outcome: CommandOutcome::Done,
                detail: None,
                instance_id: None,
                error_code: None,
            },
        ),
        ev(
            2,
            EventBody::Notice {
                notice: spot_common::NoticeKind::Rebalance,
                effective_at_ms: None,
                action: None,
                raw: "{}".into(),
            },
        ),
    ];
    let r = s.apply_events("a-p", &batch, 7).unwrap();
    assert_eq!((r.applied, r.duplicates), (2, 0));
    let before = table_counts(&s);
    let r = s.apply_events("a-p", &batch, 8).unwrap();
    assert_eq!((r.applied, r.duplicates), (0, 2));
    assert_eq!(r.acked.len(), 2);
    assert_eq!(table_counts(&s), before);
    let done = s.list_commands(Some("a-p")).unwrap();
    assert_eq!(done[0].state, "done");
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
        s.apply_events("a-p", &foreign, 9),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn commands_come_highest_priority_first_and_are_redelivered_after_silence() {
    let (_d, mut s) = store();
    live_group(&mut s);
    s.take_commands("a-p", 5, 30_000, 10).unwrap();
    let tx = s.conn.transaction().unwrap();
    for (rid, prio) in [("low", 10), ("high", 100)] {
        let c = Command {
            request_id: rid.into(),
            group: "g".into(),
            action: CommandKind::Demote,
            priority: prio,
            epoch: 1,
            deadline_ms: 10_000,
        };
        queue_command_tx(&tx, "a-r1", &c, 10).unwrap();
    }
    tx.commit().unwrap();
    let got = s.take_commands("a-r1", 20, 1000, 10).unwrap();
    assert_eq!(
        got.iter()
            .map(|c| c.request_id.as_str())
            .collect::<Vec<_>>(),
        ["high", "low"]
    );
    assert!(s.take_commands("a-r1", 500, 1000, 10).unwrap().is_empty());
    assert_eq!(s.take_commands("a-r1", 1020, 1000, 10).unwrap().len(), 2);
    // A queued command past its deadline is expired, never handed out.
    let tx = s.conn.transaction().unwrap();
    let late = Command {
        request_id: "late".into(),
        group: "g".into(),
        action: CommandKind::Demote,
        priority: 100,
        epoch: 1,
        deadline_ms: 100,
    };
    queue_command_tx(&tx, "a-r2", &late, 50).unwrap();
    tx.commit().unwrap();
    assert!(
        s.take_commands("a-r2", 200, 30_000, 10)
            .unwrap()
            .iter()
            .all(|c| c.request_id != "late")
    );
    let states = s.list_commands(Some("a-r2")).unwrap();
    let late = states
        .iter()
        .find(|c| c.command.request_id == "late")
        .unwrap();
    assert_eq!(late.state, "expired");
}

#[test]
fn offline_is_a_status_not_a_termination() {
    let (_d, mut s) = store();
    live_group(&mut s);
    assert!(
        s.set_agent_status("a-r1", AgentStatus::Online, AgentStatus::Offline, 5)
            .unwrap()
    );
    assert_eq!(s.get_agent("a-r1").unwrap().status, AgentStatus::Offline);
    assert_eq!(s.get_instance("i-r1").unwrap().role, Role::Replica);
    // A stale transition (from the wrong status) does nothing.
    assert!(
        !s.set_agent_status("a-r1", AgentStatus::Online, AgentStatus::Offline, 6)
            .unwrap()
    );
}

#[test]
fn deleted_agent_keeps_history_and_gets_a_cleanup_command() {
    let (_d, mut s) = store();
    live_group(&mut s);
    let v = s
        .delete_agent(None, "a-r2", &Actor::Operator, 5, "cleanup-a-r2")
        .unwrap();
    assert_eq!(v.status, AgentStatus::Deleted);
    assert!(
        s.active_agents()
            .unwrap()
            .iter()
            .any(|a| a.agent_id == "a-r2")
    );
    let cmds = s.take_commands("a-r2", 6, 30_000, 10).unwrap();
    assert_eq!(cmds[0].action, CommandKind::Cleanup);
    assert!(matches!(
        s.delete_agent(None, "a-r2", &Actor::Operator, 7, "cleanup-a-r2"),
        Err(StoreError::NotFound { .. })
    ));
}
