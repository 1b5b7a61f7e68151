//! A secondary ENI follows the PRIMARY: detached from the fenced holder
//! (demoted, or terminated by the reclaim), attached to the new PRIMARY,
//! never to an instance of another zone, never to two at once.

use super::{InvariantChecker, Timings, WAIT, put_config, wait_confirmed, wait_role, wait_serving};
use crate::fleet::{Fleet, FleetOptions, default_pools, one_zone_pools};
use crate::harness::eventually;
use anyhow::{Result, ensure};
use serde_json::json;
use std::time::{Duration, Instant};

pub async fn secondary_eni() -> Result<Timings> {
    let f = Fleet::start(FleetOptions::default()).await?;
    f.ec2.add_eni("eni-db", "us-east-1a");
    let promotion = json!({"network_interface_id": "eni-db"});
    // An ENI lives in one zone: pools across zones are refused.
    let (st, v) = f
        .api
        .post(
            "/v1/groups",
            &f.coord.admin_token,
            &json!({"name": "db", "config": {"pools": default_pools(), "promotion": promotion}}),
        )
        .await?;
    ensure!(
        st == reqwest::StatusCode::CONFLICT && v["rule"] == "interface_pools_in_one_zone",
        "pools across zones with an ENI: {st} {v}"
    );
    let config = json!({"pools": one_zone_pools(), "promotion": promotion});
    let first = f.group("db", config.clone()).await?;
    wait_confirmed(&f, "db", Some(&first), None).await?;
    wait_serving(&f, "db", &first).await?;
    ensure!(f.ec2.eni_holder("eni-db").as_deref() == Some(first.as_str()));
    let (st, v) = put_config(
        &f,
        json!({"pools": default_pools(), "promotion": promotion}),
    )
    .await?;
    ensure!(st == reqwest::StatusCode::CONFLICT, "{st} {v}");

    // Two REPLICAs; only the one in the ENI's zone may be promoted.
    f.add_instance("i-db-rb", "m5.large", "us-east-1b", "db")
        .await?;
    f.add_instance("i-db-ra", "c5.large", "us-east-1a", "db")
        .await?;
    wait_role(&f, "i-db-rb", "replica").await?;
    wait_role(&f, "i-db-ra", "replica").await?;
    let checker = InvariantChecker::start(&f);

    // Warm: the old PRIMARY is demoted (still running), then the ENI moves.
    let t = Instant::now();
    f.interrupt(&first, Duration::from_secs(120))?;
    wait_confirmed(&f, "db", Some("i-db-ra"), None).await?;
    let warm = t.elapsed().as_secs_f64();
    wait_serving(&f, "db", "i-db-ra").await?;
    ensure!(f.ec2.eni_holder("eni-db").as_deref() == Some("i-db-ra"));

    // No REPLICA in the zone: a launch there, and the ENI moves once the
    // interrupted PRIMARY is fenced.
    let t = Instant::now();
    f.interrupt("i-db-ra", Duration::from_secs(60))?;
    let new = wait_confirmed(&f, "db", None, Some("i-db-ra")).await?;
    let cold = t.elapsed().as_secs_f64();
    ensure!(new != "i-db-rb", "a REPLICA in another zone was promoted");
    wait_serving(&f, "db", &new).await?;
    let inst = f.get(&format!("/v1/instances/{new}")).await?;
    ensure!(inst["availability_zone"] == "us-east-1a", "{inst}");
    eventually("the ENI on the new PRIMARY", WAIT, || async {
        (f.ec2.eni_holder("eni-db").as_deref() == Some(new.as_str())).then_some(())
    })
    .await?;
    ensure!(
        f.ec2.eni_history("eni-db") == [first.as_str(), "i-db-ra", new.as_str()],
        "attached once to each PRIMARY, in order: {:?}",
        f.ec2.eni_history("eni-db")
    );
    checker.check().await?;
    Ok(vec![("warm_failover_s", warm), ("cold_failover_s", cold)])
}
