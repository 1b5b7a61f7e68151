//! Unit tests of the journal.

use super::*;
use spot_common::{Command, CommandKind, CommandOutcome, EventBody, NoticeKind, Role};

fn journal() -> (tempfile::TempDir, Journal) {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(&d.path().join("j.db")).unwrap();
    (d, j)
}

fn cmd(rid: &str, action: CommandKind, epoch: u64) -> Command {
    crate::agent::testing::command(rid, action, epoch, 1_000)
}

#[test]
fn a_command_is_accepted_once() {
    let (_d, mut j) = journal();
    let c = cmd("r1", CommandKind::Demote, 3);
    assert_eq!(j.accept(&c, 10).unwrap(), Accept::Run);
    assert_eq!(
        j.accept(&c, 11).unwrap(),
        Accept::Duplicate {
            state: "received".into(),
            reported_again: false,
        }
    );
    assert_eq!(j.unfinished().unwrap(), vec![c]);
}

#[test]
fn a_finished_command_delivered_again_is_reported_again_once_its_result_was_acknowledged() {
    // The coordinator redelivers only what it has no result for: its
    // answer was lost, or its store was restored from a copy taken
    // before the result. Without a second report the command stays
    // `delivered` there for ever (a fence's result lost would hold its
    // transition).
    let (_d, mut j) = journal();
    let c = cmd("r1", CommandKind::Demote, 3);
    j.accept(&c, 10).unwrap();
    let result = EventBody::CommandResult {
        request_id: "r1".into(),
        outcome: CommandOutcome::Done,
        detail: Some("demoted".into()),
        instance_id: None,
        error_code: None,
    };
    j.finish("r1", &result, None, None, 12).unwrap();
    let again = Accept::Duplicate {
        state: "done".into(),
        reported_again: false,
    };
    assert_eq!(
        j.accept(&c, 13).unwrap(),
        again,
        "still in the outbox: not twice"
    );
    let seqs: Vec<i64> = j.pending(10).unwrap().iter().map(|p| p.seq).collect();
    j.ack(&seqs).unwrap();
    assert_eq!(
        j.accept(&c, 14).unwrap(),
        Accept::Duplicate {
            state: "done".into(),
            reported_again: true,
        }
    );
    let pending = j.pending(10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].body, result, "the same result, as it was");
    // A refusal is reported again the same way.
    let late = Command {
        deadline_ms: 1,
        ..cmd(
            "r2",
            CommandKind::Snapshot {
                volumes: Vec::new(),
                keep: 1,
            },
            3,
        )
    };
    assert_eq!(j.accept(&late, 20).unwrap(), Accept::Expired);
    let seqs: Vec<i64> = j.pending(10).unwrap().iter().map(|p| p.seq).collect();
    j.ack(&seqs).unwrap();
    assert!(matches!(
        j.accept(&late, 21).unwrap(),
        Accept::Duplicate {
            reported_again: true,
            ..
        }
    ));
}

#[test]
fn stale_epoch_is_refused_and_reported() {
    let (_d, mut j) = journal();
    j.accept(&cmd("r1", CommandKind::Demote, 5), 10).unwrap();
    let v = j
        .accept(
            &cmd(
                "r2",
                CommandKind::Promote {
                    promotion: Default::default(),
                    address_from: Vec::new(),
                    data_volumes: Vec::new(),
                },
                4,
            ),
            11,
        )
        .unwrap();
    assert_eq!(v, Accept::Stale { highest: 5 });
    assert_eq!(j.command_state("r2").unwrap().as_deref(), Some("stale"));
    let out = j.pending(10).unwrap();
    assert!(matches!(
        &out[0].body,
        EventBody::CommandResult { outcome: CommandOutcome::Stale, request_id, .. } if request_id == "r2"
    ));
    // The highest epoch survives a reopen.
    assert_eq!(j.highest_epoch().unwrap(), 5);
}

#[test]
fn expired_command_never_runs() {
    let (_d, mut j) = journal();
    let promote = CommandKind::Promote {
        promotion: Default::default(),
        address_from: Vec::new(),
        data_volumes: Vec::new(),
    };
    assert_eq!(
        j.accept(&cmd("r1", promote, 1), 5_000).unwrap(),
        Accept::Expired
    );
    assert!(j.unfinished().unwrap().is_empty());
    // An expired role change does not raise the epoch either.
    assert_eq!(j.highest_epoch().unwrap(), 0);
}

#[test]
fn a_demote_redelivered_after_its_deadline_still_runs() {
    let (_d, mut j) = journal();
    let c = cmd("d1", CommandKind::Demote, 4);
    assert_eq!(j.accept(&c, 60_000).unwrap(), Accept::Run);
    assert_eq!(j.highest_epoch().unwrap(), 4);
    assert_eq!(j.start("d1", 90_000).unwrap(), Start::Run { attempts: 1 });
}

#[test]
fn finish_writes_state_and_event_together_once() {
    let (_d, mut j) = journal();
    j.accept(&cmd("r1", CommandKind::Demote, 1), 10).unwrap();
    assert_eq!(j.start("r1", 11).unwrap(), Start::Run { attempts: 1 });
    assert_eq!(j.start("r1", 12).unwrap(), Start::Run { attempts: 2 });
    let res = EventBody::CommandResult {
        request_id: "r1".into(),
        outcome: CommandOutcome::Done,
        detail: None,
        instance_id: None,
        error_code: None,
    };
    j.finish("r1", &res, Some("hook ok"), Some((Role::Zombie, 1)), 13)
        .unwrap();
    j.finish("r1", &res, Some("hook ok"), Some((Role::Primary, 9)), 14)
        .unwrap();
    let st = j.state().unwrap();
    assert_eq!(
        (st.role, st.role_epoch),
        (Some(Role::Zombie), 1),
        "applied once"
    );
    assert_eq!(j.pending(10).unwrap().len(), 1);
    assert_eq!(j.command_state("r1").unwrap().as_deref(), Some("done"));
    assert!(j.unfinished().unwrap().is_empty());
}

#[test]
fn notices_are_journaled_once_per_body() {
    let (_d, mut j) = journal();
    let raw = r#"{"action":"terminate","time":"2026-11-27T10:00:00Z"}"#;
    assert!(
        j.record_notice(NoticeKind::Interruption, raw, Some(1), Some("terminate"), 5)
            .unwrap()
    );
    assert!(
        !j.record_notice(NoticeKind::Interruption, raw, Some(1), Some("terminate"), 6)
            .unwrap()
    );
    assert_eq!(j.notices().unwrap().len(), 1);
    assert_eq!(j.backlog().unwrap(), 1);
}

#[test]
fn outbox_keeps_everything_until_acked() {
    let (_d, mut j) = journal();
    for i in 0..5 {
        j.push_event(
            &EventBody::Health {
                healthy: i % 2 == 0,
                detail: None,
            },
            i,
        )
        .unwrap();
    }
    let p = j.pending(3).unwrap();
    assert_eq!(p.len(), 3);
    j.ack(&p.iter().map(|x| x.seq).collect::<Vec<_>>()).unwrap();
    assert_eq!(j.backlog().unwrap(), 2);
    let rest = j.pending(10).unwrap();
    assert!(rest[0].seq > p[2].seq, "order kept");
}

#[test]
fn identity_is_set_atomically_and_survives_reopen() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("j.db");
    let creds = Creds {
        agent_id: "a".into(),
        token: "t".into(),
    };
    {
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.register_request_id("r-1").unwrap(), "r-1");
        assert_eq!(j.register_request_id("r-2").unwrap(), "r-1", "created once");
        j.set_identity(&creds, "http://c", 5000).unwrap();
    }
    let mut j = Journal::open(&path).unwrap();
    let st = j.state().unwrap();
    assert_eq!(st.creds_for("http://c"), Some(creds.clone()));
    assert_eq!(st.creds_for("http://other"), None);
    // A coordinator added beside the one it registered with keeps the
    // identity; a list without it does not.
    assert_eq!(st.creds_for("http://b,http://c/"), Some(creds));
    assert_eq!(st.creds_for("http://a,http://b"), None);
    assert_eq!(j.integrity_check().unwrap(), "ok");
    j.forget_identity().unwrap();
    assert_eq!(j.state().unwrap().creds_for("http://c"), None);
    assert_eq!(j.register_request_id("r-3").unwrap(), "r-3");
}

#[test]
fn a_start_rechecks_epoch_and_deadline() {
    let (_d, mut j) = journal();
    let promote = |rid: &str, epoch| {
        cmd(
            rid,
            CommandKind::Promote {
                promotion: Default::default(),
                address_from: Vec::new(),
                data_volumes: Vec::new(),
            },
            epoch,
        )
    };
    // Accepted at epoch 2, then demote(3) accepted before it started.
    assert_eq!(j.accept(&promote("p2", 2), 10).unwrap(), Accept::Run);
    assert_eq!(
        j.accept(&cmd("d3", CommandKind::Demote, 3), 11).unwrap(),
        Accept::Run
    );
    assert_eq!(j.start("p2", 12).unwrap(), Start::Stale { highest: 3 });
    assert_eq!(j.command_state("p2").unwrap().as_deref(), Some("stale"));
    assert!(j.pending(10).unwrap().iter().any(|p| matches!(
        &p.body,
        EventBody::CommandResult { outcome: CommandOutcome::Stale, request_id, .. } if request_id == "p2"
    )));
    // Past its deadline (1,000): expired, never run; a demote still runs.
    assert_eq!(j.accept(&promote("p4", 4), 20).unwrap(), Accept::Run);
    assert_eq!(j.start("p4", 2_000).unwrap(), Start::Expired);
    assert_eq!(
        j.accept(&cmd("d5", CommandKind::Demote, 5), 30).unwrap(),
        Accept::Run
    );
    assert_eq!(j.start("d5", 2_000).unwrap(), Start::Run { attempts: 1 });
    assert_eq!(j.start("nope", 1).unwrap(), Start::Finished);
}

#[test]
fn the_identity_table_migrates_to_the_typed_row() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("j.db");
    {
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute_batch(STEPS[0]).unwrap();
        tx.pragma_update(None, "user_version", 1).unwrap();
        tx.execute_batch(
            "INSERT INTO identity VALUES ('agent_id', 'agt-1'), ('token', 'tok'),
               ('coordinator_url', 'http://c'), ('role', 'primary'), ('instance_id', 'i-1');
             INSERT INTO epochs VALUES ('g', 7);",
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let st = Journal::open(&path).unwrap().state().unwrap();
    assert_eq!(st.agent_id.as_deref(), Some("agt-1"));
    assert_eq!(st.instance_id.as_deref(), Some("i-1"));
    assert_eq!((st.role, st.role_epoch), (Some(Role::Primary), 7));
}

#[tokio::test]
async fn the_first_error_trips_the_failsafe() {
    let (_d, j) = journal();
    let h = JournalHandle::new(j);
    assert!(!h.failed().is_cancelled());
    let bad: Result<()> = h
        .call(|j| {
            Ok(j.conn
                .execute("INSERT INTO nope VALUES (1)", [])
                .map(|_| ())?)
        })
        .await;
    assert!(bad.is_err());
    assert!(h.failed().is_cancelled());
    assert!(h.first_error().unwrap().contains("journal database error"));
}

#[test]
fn reset_sets_the_journal_aside_but_not_a_primarys_without_force() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("journal.db");
    assert!(
        crate::reset(d.path(), false).unwrap().is_none(),
        "nothing to reset"
    );
    let mut j = Journal::open(&path).unwrap();
    j.set_role(Role::Primary, 4).unwrap();
    drop(j);
    let e = crate::reset(d.path(), false).unwrap_err();
    assert!(e.to_string().contains("PRIMARY"), "{e}");
    assert!(path.exists(), "refused: nothing moved");
    let kept = crate::reset(d.path(), true).unwrap().unwrap();
    assert!(!path.exists() && kept.exists(), "{}", kept.display());
    let fresh = Journal::open(&path).unwrap();
    assert_eq!(
        fresh.state().unwrap().role,
        None,
        "the next start is a fresh identity"
    );
}
