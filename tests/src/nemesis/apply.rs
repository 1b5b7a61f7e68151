//! Applying and healing each fault kind on the fleet.

use super::faults::{Draw, Kind, Target};
use super::{PROMOTION_TIMEOUT, Run};
use crate::fleet::{Fleet, FleetOptions, Launched};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::time::Duration;

impl Run {
    /// The leading coordinator, or a follower (`leader` false), for a
    /// leader fault.
    async fn pick_coordinator(&self, leader: bool) -> Result<usize> {
        let l = crate::scenarios::leadership::wait_leader(&self.f, None).await?;
        if leader {
            return Ok(l);
        }
        let n = self.f.peers.len() + 1;
        Ok((l + 1) % n)
    }

    pub(super) async fn apply(
        &mut self,
        d: &Draw,
        group: &str,
        instance: Option<&str>,
    ) -> Result<()> {
        let id = instance.unwrap_or_default();
        let f = &mut self.f;
        match d.kind {
            Kind::AgentFreeze => f.with_node(id, |n| n.agent.freeze(true))?,
            Kind::AgentKill => on_node(f, id, |n| n.agent.kill9())?,
            Kind::JournalIo => f.with_node(id, |n| n.journal_faults(true))?,
            Kind::CoordinatorFreeze => f.coord.freeze(true)?,
            Kind::CoordinatorKill => f.coord.kill9(),
            Kind::CoordinatorRestore => f.coord.restore_store(&self.backup)?,
            Kind::RestoreCut | Kind::RestoreFreeze => {
                if d.kind == Kind::RestoreCut {
                    on_node(f, id, |n| n.link.cut())?;
                } else {
                    f.with_node(id, |n| n.agent.freeze(true))?;
                }
                f.coord.restore_store(&self.backup)?;
                f.coord.start_again()?;
            }
            Kind::LateReplacement => {
                let lead = Duration::from_millis(d.param.unsigned_abs());
                f.launch_like(Launched {
                    boot_delay: Some(lead + Duration::from_millis(d.hold_ms) / 2),
                    promote_delay: Some(Duration::from_secs(3)),
                });
                f.interrupt(id, lead)?;
            }
            Kind::SlowBoot => f.launch_like(Launched {
                boot_delay: Some(Duration::from_millis(d.param.unsigned_abs())),
                promote_delay: None,
            }),
            Kind::DeclareDead => {
                if let Some((p, _)) = self.resolve(group, Target::Primary).await.ok().flatten() {
                    self.f.interrupt(&p, Duration::from_secs(10))?;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                let (st, v) = self
                    .f
                    .api
                    .post(
                        &format!("/v1/groups/{group}/declare-dead"),
                        &self.f.coord.admin_token,
                        &json!({"instance_id": id}),
                    )
                    .await?;
                tracing::info!(%group, instance = id, %st, answer = %v, "nemesis: declared a live REPLICA dead");
                if st.is_success() {
                    bail!("declaring live REPLICA {id} dead was accepted: {v}");
                }
            }
            Kind::LinkCut => on_node(f, id, |n| n.link.cut())?,
            Kind::LinkOneWay => on_node(f, id, |n| n.link.cut_answers())?,
            Kind::LinkLatency => on_node(f, id, |n| {
                n.link
                    .set_latency(Duration::from_millis(d.param.unsigned_abs()))
            })?,
            Kind::Ec2Cut => on_node(f, id, |n| n.ec2_link.cut())?,
            Kind::Ec2Throttle => {
                let n = usize::try_from(d.param).unwrap_or(1);
                f.ec2.inject(
                    d.action.unwrap_or("RunInstances"),
                    "RequestLimitExceeded",
                    503,
                    n,
                );
            }
            Kind::Ec2ServerError => {
                let n = usize::try_from(d.param).unwrap_or(1);
                f.ec2
                    .inject(d.action.unwrap_or("RunInstances"), "InternalError", 500, n);
            }
            Kind::Ec2LostAnswer => {
                let n = usize::try_from(d.param).unwrap_or(1);
                f.ec2.lose_answers(d.action.unwrap_or("RunInstances"), n);
            }
            Kind::Ec2Slow => f
                .ec2
                .set_terminate_delay(Duration::from_millis(d.param.unsigned_abs())),
            Kind::SlowHook => {
                let delay = PROMOTION_TIMEOUT + Duration::from_secs(5);
                f.slow_hook(id, "promote", Some(delay))?;
            }
            Kind::Unhealthy => f.with_node(id, |n| n.unhealthy(true))?,
            Kind::AgentClock => f.with_node(id, |n| n.clock_offset(d.param))?,
            Kind::CoordinatorClock => f.coordinator_clock_offset(d.param)?,
            Kind::Interruption => {
                f.interrupt(id, Duration::from_millis(d.param.unsigned_abs()))?;
            }
            Kind::Rebalance => f.rebalance(id)?,
            Kind::Lost => f.lose(id),
            Kind::LeaderKill | Kind::LeaderFreeze | Kind::LeaderCutStore | Kind::FollowerCut => {
                let i = self.pick_coordinator(d.kind != Kind::FollowerCut).await?;
                self.victim = Some(i);
                let f = &mut self.f;
                tracing::info!(
                    fault = d.kind.name(),
                    coordinator = i,
                    "nemesis: on coordinator"
                );
                match d.kind {
                    Kind::LeaderKill => f.coordinator_mut(i).context("coordinator")?.kill9(),
                    Kind::LeaderFreeze => {
                        f.coordinator_mut(i).context("coordinator")?.freeze(true)?
                    }
                    _ => {
                        let link = &f.pg.as_ref().context("postgres")?.links[i];
                        if d.param == 1 {
                            link.cut_answers();
                        } else {
                            link.cut();
                        }
                    }
                }
            }
            Kind::StoreRestart => self.f.pg.as_ref().context("postgres")?.restart().await?,
        }
        let _ = group;
        Ok(())
    }

    pub(super) async fn heal(&mut self, d: &Draw, instance: Option<&str>) -> Result<()> {
        let id = instance.unwrap_or_default();
        let f = &mut self.f;
        // The instance may have died meanwhile (an interruption during the
        // fault): healing a dead one is a no-op.
        let if_alive = |f: &Fleet, g: &dyn Fn(&mut crate::fleet::Node) -> Result<()>| {
            let _ = f.with_node(id, |n| if n.alive { g(n) } else { Ok(()) });
        };
        match d.kind {
            Kind::AgentFreeze => if_alive(f, &|n| n.agent.freeze(false)),
            Kind::JournalIo => if_alive(f, &|n| n.journal_faults(false)),
            Kind::CoordinatorFreeze => f.coord.freeze(false)?,
            Kind::CoordinatorKill | Kind::CoordinatorRestore => f.coord.start_again()?,
            Kind::RestoreCut => {
                let _ = on_node(f, id, |n| n.link.heal());
            }
            Kind::RestoreFreeze => if_alive(f, &|n| n.agent.freeze(false)),
            Kind::LateReplacement | Kind::SlowBoot => f.launch_like(Launched::default()),
            Kind::LinkCut | Kind::LinkOneWay | Kind::Ec2Cut => {
                let _ = on_node(f, id, |n| {
                    n.link.heal();
                    n.ec2_link.heal();
                });
            }
            Kind::LinkLatency => {
                let _ = on_node(f, id, |n| n.link.set_latency(Duration::ZERO));
            }
            Kind::Ec2Throttle | Kind::Ec2ServerError | Kind::Ec2LostAnswer => f.ec2.clear_faults(),
            Kind::Ec2Slow => f
                .ec2
                .set_terminate_delay(FleetOptions::default().terminate_delay),
            Kind::SlowHook => {
                let _ = f.slow_hook(id, "promote", None);
            }
            Kind::Unhealthy => if_alive(f, &|n| n.unhealthy(false)),
            Kind::AgentClock => if_alive(f, &|n| n.clock_offset(0)),
            Kind::CoordinatorClock => f.coordinator_clock_offset(0)?,
            Kind::LeaderKill | Kind::LeaderFreeze | Kind::LeaderCutStore | Kind::FollowerCut => {
                let i = self.victim.take().context("no coordinator was hit")?;
                match d.kind {
                    Kind::LeaderKill => {
                        f.coordinator_mut(i).context("coordinator")?.start_again()?
                    }
                    Kind::LeaderFreeze => {
                        f.coordinator_mut(i).context("coordinator")?.freeze(false)?;
                    }
                    _ => f.pg.as_ref().context("postgres")?.links[i].heal(),
                }
            }
            Kind::AgentKill
            | Kind::Interruption
            | Kind::Rebalance
            | Kind::Lost
            | Kind::DeclareDead
            | Kind::StoreRestart => {}
        }
        Ok(())
    }
}

/// Do `g` to the node `id`.
fn on_node(f: &Fleet, id: &str, g: impl FnOnce(&mut crate::fleet::Node)) -> Result<()> {
    f.with_node(id, |n| {
        g(n);
        Ok(())
    })
}
