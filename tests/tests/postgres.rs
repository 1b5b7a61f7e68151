#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The store on PostgreSQL, with three coordinators sharing it: the
//! leadership flows (followers' routes, the leader killed, frozen past
//! its lease, killed as an interruption arrives, the database restarted),
//! and the fencing, convergence and promotion flows that run on SQLite in
//! `failover.rs`, here on PostgreSQL. Each fleet starts a PostgreSQL
//! server of its own (the server programs must be installed; the test
//! command checks).

use spot_tests::fleet::StoreChoice;
use spot_tests::scenarios::run_on;

const THREE_ON_POSTGRES: StoreChoice = StoreChoice {
    postgres: true,
    coordinators: 3,
};

async fn pass(name: &str) {
    let timings = run_on(name, THREE_ON_POSTGRES)
        .await
        .unwrap_or_else(|e| panic!("scenario {name} on PostgreSQL failed: {e:#}"));
    eprintln!("{name}: {timings:?}");
}

macro_rules! on_postgres {
    ($($test:ident => $name:literal,)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            pass($name).await;
        }
    )*};
}

on_postgres! {
    followers_say_who_leads_redirect_agents_and_proxy_operators => "follower-routes",
    a_killed_leader_is_replaced_within_the_lease_and_the_primary_serves_on => "leader-kill",
    a_leader_frozen_past_its_lease_is_replaced_and_writes_nothing_thawed => "leader-freeze",
    an_interruption_during_a_leader_change_fails_over_before_its_deadline => "leader-change-interruption",
    a_database_restart_costs_the_primary_nothing => "store-restart",
    warm_failover_on_postgres => "warm-failover",
    cold_failover_on_postgres => "cold-failover",
    late_replacement_on_postgres => "late-replacement",
    failed_promotion_rolls_over_on_postgres => "failed-promotion",
    switch_on_postgres => "switch",
    a_coordinator_killed_mid_promotion_on_postgres => "coordinator-crash",
    a_promote_fetched_after_its_window_on_postgres => "promote-after-its-window",
    partition_is_fenced_on_postgres => "partition",
    slow_promote_never_overlaps_on_postgres => "slow-promote",
    frozen_agent_is_fenced_on_postgres => "frozen-agent",
    lost_primary_on_postgres => "lost-primary",
    forger_moves_nothing_on_postgres => "forger",
}

#[tokio::test]
async fn a_restore_of_the_sqlite_file_is_refused_on_postgres() {
    let err = run_on("restored-store", THREE_ON_POSTGRES)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("SQLite only"), "{err}");
}
