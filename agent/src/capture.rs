//! Capture tasks: what a PRIMARY or REPLICA reads from EC2 for the
//! coordinator. `ec2_watch` reports the EC2 states of the group's
//! instances when they change (so the coordinator learns that EC2 took one
//! away); `prices` captures spot prices of the group's pools every
//! `pricing_interval` (the first run backfills 7 days). A failed EC2 call
//! costs one interval; a ZOMBIE captures nothing.

use crate::agent::Agent;
use spot_common::{EventBody, PricePoint, Role};
use std::sync::Arc;
use std::time::Duration;

fn captures(agent: &Agent) -> bool {
    matches!(agent.role().role, Some(Role::Primary | Role::Replica))
}

pub async fn ec2_watch(agent: Arc<Agent>) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(agent.config.ec2_watch_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // None until the first view is sent (an empty one too).
    let mut last: Option<Vec<spot_common::Ec2State>> = None;
    loop {
        // Asked by the coordinator (its start or a restored store left it
        // without a view of the group): report even an unchanged view.
        let asked = tokio::select! {
            _ = tick.tick() => false,
            _ = agent.ec2_view_wanted.notified() => true,
            _ = agent.shutdown.cancelled() => return Ok(()),
        };
        if !captures(&agent) {
            continue;
        }
        let list = match agent.ec2.group_instances(&agent.group).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "DescribeInstances for the group failed; next tick");
                continue;
            }
        };
        let mut states = list;
        states.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        if asked || last.as_ref() != Some(&states) {
            agent
                .push_event(EventBody::Ec2States {
                    instances: states.clone(),
                })
                .await?;
            last = Some(states);
        }
    }
}

/// Points per journaled batch: well under the API's 5,000.
const PRICE_BATCH: usize = 2000;
const BACKFILL_MS: i64 = 7 * 24 * 3_600_000;

pub async fn prices(agent: Arc<Agent>) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(agent.config.pricing_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = agent.shutdown.cancelled() => return Ok(()),
        }
        let hint = agent
            .pricing_hint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(hint) = hint else { continue };
        if !captures(&agent) {
            continue;
        }
        let since = agent
            .journal
            .call(|j| j.state())
            .await?
            .pricing_since_ms
            .unwrap_or(agent.now_ms() - BACKFILL_MS);
        let prices = match agent
            .ec2
            .spot_prices(&hint.instance_types, &hint.product_description, since)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "DescribeSpotPriceHistory failed; next interval");
                continue;
            }
        };
        let points: Vec<PricePoint> = prices
            .iter()
            .filter(|p| hint.availability_zones.contains(&p.availability_zone))
            .map(|p| PricePoint {
                instance_type: p.instance_type.clone(),
                availability_zone: p.availability_zone.clone(),
                product_description: p.product_description.clone(),
                timestamp: humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH
                        + Duration::from_millis(u64::try_from(p.timestamp_ms).unwrap_or(0)),
                )
                .to_string(),
                price: p.price.clone(),
            })
            .collect();
        let newest = prices
            .iter()
            .map(|p| p.timestamp_ms)
            .max()
            .unwrap_or(since)
            .max(since);
        let n = points.len();
        let batches: Vec<EventBody> = points
            .chunks(PRICE_BATCH)
            .map(|c| EventBody::Prices { points: c.to_vec() })
            .collect();
        let now = agent.now_ms();
        agent
            .journal
            .call(move |j| j.record_prices(&batches, newest, now))
            .await?;
        if n > 0 {
            tracing::info!(points = n, "spot prices captured");
            agent.outbox_wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::RoleState;
    use crate::agent::testing::agent;

    async fn sent(a: &Agent) -> u64 {
        a.journal.call(|j| j.backlog()).await.unwrap()
    }

    #[tokio::test]
    async fn an_unchanged_view_is_sent_again_only_when_the_coordinator_asks() {
        let mut t = agent(RoleState {
            role: Some(Role::Primary),
            epoch: 1,
        });
        Arc::get_mut(&mut t.agent)
            .unwrap()
            .config
            .ec2_watch_interval = Duration::from_millis(20);
        t.ec2.add_instance("i-self", "running");
        t.ec2.add_instance("i-replica", "running");
        let looks = || {
            t.ec2
                .calls()
                .iter()
                .filter(|c| c.starts_with("DescribeInstances"))
                .count()
        };
        // Until `n` views were sent (or 10 s passed: the assertion says).
        let until_sent = |n: u64| {
            let a = Arc::clone(&t.agent);
            async move {
                for _ in 0..1000 {
                    if sent(&a).await >= n {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let watch = tokio::spawn(ec2_watch(Arc::clone(&t.agent)));
        until_sent(1).await;
        assert_eq!(sent(&t.agent).await, 1, "the first view");
        // Five more looks at EC2, each unchanged.
        let seen = looks();
        while looks() < seen + 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(sent(&t.agent).await, 1, "unchanged: not again");
        // A coordinator that started since has no view: it asks.
        t.agent.want_ec2_view();
        until_sent(2).await;
        assert_eq!(sent(&t.agent).await, 2, "asked: sent although unchanged");
        t.agent.shutdown.cancel();
        watch.await.unwrap().unwrap();
    }
}
