//! Journal errors fail closed. On the first journal error anywhere, a
//! PRIMARY's agent runs its `demote` hook (it can no longer journal what
//! it does, so it must not keep the workload serving on the coordinator's
//! word), leaves a marker file next to the journal, and the process exits
//! non-zero for systemd to restart it. At the next start, a marker turns
//! the journaled PRIMARY into a ZOMBIE and reports the self-demotion; if
//! the journal still fails, the agent crash-loops silently and the
//! coordinator fences the instance through EC2 after its lease.

use crate::agent::Agent;
use crate::journal::JournalHandle;
use spot_common::{EventBody, Role};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `<state_dir>/demoted-after-journal-error`: the epoch, then whether the
/// hook succeeded.
pub fn marker(state_dir: &Path) -> PathBuf {
    state_dir.join("demoted-after-journal-error")
}

/// The failsafe task: waits for a journal error (or shutdown).
pub async fn run(agent: Arc<Agent>) -> anyhow::Result<()> {
    let failed = agent.journal.failed();
    tokio::select! {
        _ = failed.cancelled() => {}
        _ = agent.shutdown.cancelled() => return Ok(()),
    }
    let why = agent.journal.first_error().unwrap_or_default();
    let st = agent.role();
    if st.role == Some(Role::Primary) {
        tracing::error!(error = %why, epoch = st.epoch, "journal failed on a PRIMARY: stopping serving, then exiting");
        let run = agent
            .hook(
                "demote",
                &format!("failsafe-e{}", st.epoch),
                st.epoch,
                Role::Zombie,
                std::future::pending(),
                agent.config.hook_timeout,
            )
            .await;
        let text = format!("{}\n{}\n", st.epoch, run.success);
        if let Err(e) = std::fs::write(marker(&agent.config.state_dir), text) {
            tracing::error!(error = %e, "cannot write the failsafe marker either");
        }
        agent.set_role(Role::Zombie, st.epoch);
    } else {
        tracing::error!(error = %why, "journal failed: exiting for systemd to restart the agent");
    }
    anyhow::bail!("the journal failed ({why}); exiting so systemd restarts the agent")
}

/// At start: a marker left by the failsafe means the `demote` hook already
/// ran for the journaled PRIMARY. Journal that, and report it.
pub async fn recover(journal: &JournalHandle, state_dir: &Path, now_ms: i64) -> anyhow::Result<()> {
    let path = marker(state_dir);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let mut lines = text.lines();
    let epoch: u64 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    let hook_ok = lines.next().is_some_and(|l| l.trim() == "true");
    let st = journal.call(|j| j.state()).await?;
    if st.role == Some(Role::Primary) {
        let body = EventBody::SelfDemoted {
            epoch: st.role_epoch.max(epoch),
            reason: "the journal failed while PRIMARY; the demote hook ran before the restart"
                .into(),
            hook_ok,
        };
        let e = st.role_epoch.max(epoch);
        journal
            .call(move |j| j.self_demoted(e, &body, now_ms))
            .await?;
        tracing::warn!(
            epoch = e,
            hook_ok,
            "recorded the demotion the failsafe made before the restart"
        );
    }
    std::fs::remove_file(&path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::RoleState;
    use crate::agent::testing::agent;

    #[tokio::test]
    async fn a_journal_error_on_a_primary_demotes_then_exits_and_the_restart_records_it() {
        let t = agent(RoleState {
            role: Some(Role::Primary),
            epoch: 4,
        });
        let journal = t.agent.journal.clone();
        journal
            .call(|j| j.set_role(Role::Primary, 4))
            .await
            .unwrap();
        let task = tokio::spawn(run(Arc::clone(&t.agent)));
        // Any caller's error trips it.
        let r: Result<(), _> = journal
            .call(|_| Err(crate::journal::JournalError::Injected("test".into())))
            .await;
        assert!(r.is_err());
        let e = task.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("journal failed"), "{e}");
        assert_eq!(t.agent.role().role, Some(Role::Zombie));
        assert!(marker(t.dir.path()).exists());
        // The restart: the journal works again.
        let fresh = JournalHandle::new(
            crate::journal::Journal::open(&t.dir.path().join("journal.db")).unwrap(),
        );
        recover(&fresh, t.dir.path(), 5).await.unwrap();
        let st = fresh.call(|j| j.state()).await.unwrap();
        assert_eq!((st.role, st.role_epoch), (Some(Role::Zombie), 4));
        assert!(!marker(t.dir.path()).exists());
        let pending = fresh.call(|j| j.pending(10)).await.unwrap();
        assert!(pending.iter().any(|p| matches!(
            p.body,
            EventBody::SelfDemoted {
                epoch: 4,
                hook_ok: true,
                ..
            }
        )));
    }
}
