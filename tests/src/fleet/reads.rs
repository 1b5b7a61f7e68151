//! What a fleet's tests read back: the operator API (groups, roles, the
//! confirmed PRIMARY, the audit log) and the workloads' ledger.

use super::Fleet;
use crate::ledger::Ledger;
use anyhow::{Result, bail};
use serde_json::Value;

impl Fleet {
    pub async fn get(&self, path: &str) -> Result<Value> {
        let (st, v) = self.api.get(path, &self.coord.admin_token).await?;
        if !st.is_success() {
            bail!("GET {path}: {st} {v}");
        }
        Ok(v)
    }

    /// The store's audit log has `action` on `entity` (`group:db`,
    /// `instance:i-1`).
    pub async fn audited(&self, entity: &str, action: &str) -> Result<bool> {
        let audit = self
            .get(&format!("/v1/audit?entity={entity}&limit=1000"))
            .await?;
        Ok(audit
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["action"] == action))
    }

    /// The instance the Elastic IP `allocation` is associated with.
    pub fn address_holder(&self, allocation: &str) -> Option<String> {
        self.ec2.address(allocation).and_then(|a| a.instance_id)
    }

    pub async fn primary(&self, group: &str) -> Result<Option<String>> {
        Ok(self.get(&format!("/v1/groups/{group}")).await?["primary"]
            .as_str()
            .map(str::to_owned))
    }

    pub async fn role(&self, instance_id: &str) -> Result<String> {
        Ok(
            self.get(&format!("/v1/instances/{instance_id}")).await?["role"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        )
    }

    /// The PRIMARY whose promote command finished `done` (confirmed).
    pub async fn confirmed_primary(&self, group: &str) -> Result<Option<String>> {
        let Some(p) = self.primary(group).await? else {
            return Ok(None);
        };
        let cmds = self.get("/v1/commands").await?;
        let done = cmds.as_array().into_iter().flatten().any(|c| {
            c["command"]["group"] == group
                && c["command"]["action"]["kind"] == "promote"
                && c["command"]["request_id"]
                    .as_str()
                    .is_some_and(|r| r.starts_with(&format!("promote-{p}-")))
                && c["state"] == "done"
        });
        Ok(done.then_some(p))
    }

    /// What the workloads served so far.
    pub fn ledger(&self) -> Result<Ledger> {
        Ledger::read(&self.ledger)
    }

    /// Fail unless no two instances of a group ever served at once.
    pub fn check_no_overlap(&self) -> Result<()> {
        let overlaps = self.ledger()?.overlaps();
        anyhow::ensure!(
            overlaps.is_empty(),
            "two instances served at once: {}",
            serde_json::to_string(&overlaps).unwrap_or_default()
        );
        Ok(())
    }
}
