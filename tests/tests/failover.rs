#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Failover flows end to end: real coordinator, real agents (one process
//! per simulated instance), IMDS and EC2 simulators. The flows live in
//! `spot_tests::scenarios` so that `spot-sim scenario NAME` runs the same
//! code; each checks the invariants (one PRIMARY in the store and in the
//! agents' own views, epochs never going back) while it runs.

use spot_tests::scenarios::run;

async fn pass(name: &str) {
    let timings = run(name)
        .await
        .unwrap_or_else(|e| panic!("scenario {name} failed: {e:#}"));
    assert!(!timings.is_empty());
    eprintln!("{name}: {timings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_launches_one_replica_and_is_damped() {
    pass("rebalance").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interruption_with_a_warm_replica_promotes_it_and_moves_the_address() {
    pass("warm-failover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interruption_without_replica_launches_and_promotes_before_the_deadline() {
    pass("cold-failover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_promotion_rolls_over_to_the_next_candidate() {
    pass("failed-promotion").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_switch_moves_the_primary_and_records_downtime() {
    pass("switch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_replica_keeps_one_and_off_retires_it() {
    pass("manual-replica").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_terminated_by_ec2_is_marked_terminated_and_keeps_history() {
    pass("terminated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_mid_promotion_resumes_it() {
    pass("coordinator-crash").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_primary_demotes_itself_before_the_replacement_is_promoted() {
    pass("partition").await;
}

#[tokio::test]
async fn unknown_scenario_is_an_error() {
    assert!(run("nope").await.is_err());
}
