//! Fleets beyond one coordinator and beyond plain instances: the store a
//! run's fleets use, the coordinators of a fleet and who leads them, the
//! flags a one-off command needs to reach the store, and groups whose
//! first instance holds a data volume.

use super::Fleet;
use crate::harness::Coordinator;
use anyhow::Result;
use serde_json::{Value, json};
use std::time::Duration;

/// The store the fleets of a run use: SQLite with one coordinator (the
/// default), or PostgreSQL with one or several. Set around a scenario
/// (`scenarios::run_on`) so the same flows run on both engines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreChoice {
    pub postgres: bool,
    pub coordinators: usize,
}

tokio::task_local! {
    pub static STORE: StoreChoice;
}

impl Fleet {
    /// The flags a one-off `spot-coordinator` command (backtest, export,
    /// token) needs to reach the fleet's store.
    pub fn store_args(&self) -> Vec<String> {
        let mut a = vec![
            "--data-dir".to_owned(),
            self.coord.data_dir.display().to_string(),
        ];
        if let Some(pg) = &self.pg {
            a.extend(["--store-url".to_owned(), pg.direct_url()]);
        }
        a
    }

    /// Every coordinator, the first first.
    pub fn coordinators(&self) -> impl Iterator<Item = &Coordinator> {
        std::iter::once(&self.coord).chain(&self.peers)
    }

    /// Coordinator `i` (0: the first).
    pub fn coordinator_mut(&mut self, i: usize) -> Option<&mut Coordinator> {
        if i == 0 {
            Some(&mut self.coord)
        } else {
            self.peers.get_mut(i - 1)
        }
    }

    /// The coordinator whose /healthz says it leads (each asked for at
    /// most a second: a frozen one answers nothing).
    pub async fn leader(&self) -> Option<usize> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .ok()?;
        for (i, c) in self.coordinators().enumerate() {
            let Ok(resp) = http.get(format!("{}/healthz", c.base)).send().await else {
                continue;
            };
            if let Ok(v) = resp.json::<Value>().await
                && v["leader"] == true
            {
                return Some(i);
            }
        }
        None
    }

    /// Create a group whose first instance (in us-east-1a, already
    /// running) holds the data volume `volume` on /dev/sdf.
    pub async fn group_with_volume(
        &self,
        name: &str,
        config: Value,
        volume: &str,
    ) -> Result<String> {
        let id = format!("i-{name}-first");
        self.ec2.add_instance(&id, "m5.large", "us-east-1a", name);
        self.ec2
            .add_volume(volume, "us-east-1a", Some((&id, "/dev/sdf")));
        let mut cfg = config;
        cfg["data_volumes"] = json!([{"volume_id": volume, "device": "/dev/sdf"}]);
        self.create_group(name, cfg).await?;
        self.boot_existing(&id, "m5.large", "us-east-1a", name)
            .await?;
        Ok(id)
    }

    /// Boot an instance EC2 already runs (added to the simulator first,
    /// e.g. to attach a volume to it before its agent starts).
    pub async fn boot_existing(&self, id: &str, itype: &str, az: &str, group: &str) -> Result<()> {
        self.booter().boot(id, itype, az, group).await
    }
}
