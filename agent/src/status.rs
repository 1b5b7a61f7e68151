//! `spot-agent status`: what the journal says, read-only, while the daemon
//! runs. The JSON form is stable (documented in docs/OPERATIONS.md): fields
//! are only ever added.

use crate::journal::{CommandRow, Journal, NoticeRow};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct Status {
    pub agent_id: Option<String>,
    pub instance_id: Option<String>,
    pub group: Option<String>,
    pub role: Option<String>,
    /// Epoch of the command that gave this agent its role.
    pub role_epoch: u64,
    /// When the agent demoted itself last (unix ms).
    pub self_demoted_at_ms: Option<i64>,
    /// When an operator deleted this identity (unix ms): the agent exits
    /// until `spot-agent reset`.
    pub decommissioned_at_ms: Option<i64>,
    pub coordinator_url: Option<String>,
    pub link: Link,
    pub highest_epoch: u64,
    /// Events journaled but not yet acknowledged by the coordinator.
    pub backlog: u64,
    pub notices: Vec<NoticeRow>,
    /// The 20 most recent commands, newest first.
    pub commands: Vec<CommandRow>,
}

#[derive(Debug, Serialize)]
pub struct Link {
    /// `connected`, `unreachable`, `unregistered`, or null before the first attempt.
    pub state: Option<String>,
    pub last_ok_ms: Option<i64>,
    pub last_error: Option<String>,
}

pub fn read(state_dir: &Path) -> anyhow::Result<Status> {
    let path = state_dir.join("journal.db");
    if !path.exists() {
        anyhow::bail!("no journal at {} (has the agent run yet?)", path.display());
    }
    let j = Journal::open_read_only(&path)?;
    let st = j.state()?;
    Ok(Status {
        agent_id: st.agent_id,
        instance_id: st.instance_id,
        group: st.group,
        role: st.role.map(|r| r.to_string()),
        role_epoch: st.role_epoch,
        self_demoted_at_ms: st.self_demoted_at_ms,
        decommissioned_at_ms: st.decommissioned_at_ms,
        coordinator_url: st.coordinator_url,
        link: Link {
            state: st.link_state,
            last_ok_ms: st.link_last_ok_ms,
            last_error: st.link_last_error,
        },
        highest_epoch: j.highest_epoch()?,
        backlog: j.backlog()?,
        notices: j.notices()?,
        commands: j.commands(20)?,
    })
}

fn when(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn render_text(s: &Status) -> String {
    let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = format!(
        "agent:        {}\ninstance:     {}\ngroup:        {}\nrole:         {} (epoch {})\ncoordinator:  {}\nlink:         {}{}{}\nepoch:        {}\nbacklog:      {} event(s) not yet acknowledged\n",
        o(&s.agent_id),
        o(&s.instance_id),
        o(&s.group),
        o(&s.role),
        s.role_epoch,
        o(&s.coordinator_url),
        o(&s.link.state),
        s.link
            .last_ok_ms
            .map(|m| format!(", last ok {}", when(m)))
            .unwrap_or_default(),
        s.link
            .last_error
            .as_ref()
            .map(|e| format!("\n              last error: {e}"))
            .unwrap_or_default(),
        s.highest_epoch,
        s.backlog,
    );
    if let Some(at) = s.decommissioned_at_ms {
        out.push_str(&format!(
            "deleted:      by an operator at {}; `spot-agent reset` for a fresh identity\n",
            when(at)
        ));
    }
    out.push_str(&format!("notices:      {}\n", s.notices.len()));
    for n in &s.notices {
        out.push_str(&format!(
            "  {:<22} first seen {}{}\n",
            n.kind,
            when(n.first_seen_ms),
            n.effective_at_ms
                .map(|t| format!(", effective {}", when(t)))
                .unwrap_or_default()
        ));
    }
    out.push_str(&format!("commands:     {} recent\n", s.commands.len()));
    for c in &s.commands {
        out.push_str(&format!(
            "  {:<40} {:<10} epoch {:<4} {:<9} attempts {}\n",
            c.request_id, c.kind, c.epoch, c.state, c.attempts
        ));
    }
    out
}
