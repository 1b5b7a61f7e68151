#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Failover and fencing flows end to end: real coordinator, real agents
//! (one process per simulated instance) with their fake workloads, IMDS and
//! EC2 simulators. The flows live in `spot_tests::scenarios` so that
//! `spot-sim scenario NAME` runs the same code; each is judged by the
//! workload ledger (no two instances of a group ever served at once) and
//! by the agents' journals (no epoch ever goes back).

use spot_tests::scenarios::run;

async fn pass(name: &str) {
    let timings = run(name)
        .await
        .unwrap_or_else(|e| panic!("scenario {name} failed: {e:#}"));
    assert!(!timings.is_empty());
    eprintln!("{name}: {timings:?}");
}

macro_rules! scenario {
    ($test:ident, $name:literal) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            pass($name).await;
        }
    };
}

scenario!(rebalance_launches_one_replica_and_is_damped, "rebalance");
scenario!(
    interruption_with_a_warm_replica_promotes_it_and_moves_the_address,
    "warm-failover"
);
scenario!(
    interruption_without_replica_launches_and_promotes_before_the_deadline,
    "cold-failover"
);
scenario!(
    a_replacement_registering_after_the_reclaim_still_becomes_primary_once,
    "late-replacement"
);
scenario!(
    failed_promotion_rolls_over_to_the_next_candidate,
    "failed-promotion"
);
scenario!(
    manual_switch_moves_the_primary_and_records_downtime,
    "switch"
);
scenario!(
    manual_replica_keeps_one_and_off_retires_it,
    "manual-replica"
);
scenario!(
    a_failed_or_cancelled_switch_keeps_the_primary_and_the_next_works,
    "switch-failure"
);
scenario!(
    maintenance_on_a_lone_primary_prepares_a_replica_and_switches_before_its_time,
    "maintenance"
);
scenario!(
    auto_mode_moves_the_group_to_a_cheaper_pool_through_a_switch,
    "auto-switch"
);
scenario!(
    shadow_mode_logs_the_same_decision_and_moves_nothing,
    "shadow-decisions"
);
scenario!(an_external_model_decides_and_is_followed, "external-model");
scenario!(
    a_slow_or_invalid_external_model_falls_back_within_the_deadline,
    "model-fallback"
);
scenario!(
    groups_assigned_to_two_models_are_decided_and_compared_by_model,
    "ab-models"
);
scenario!(
    a_zombie_is_terminated_once_its_retention_has_passed,
    "zombie-cleanup"
);
scenario!(
    instance_terminated_by_ec2_is_marked_terminated_and_keeps_history,
    "terminated"
);
scenario!(
    coordinator_killed_mid_promotion_resumes_it,
    "coordinator-crash"
);
// Fencing: each of these once gave two PRIMARIES or none.
scenario!(
    a_partitioned_primary_serves_until_ec2_has_terminated_it,
    "partition"
);
scenario!(
    a_promote_hook_slower_than_the_timeout_never_overlaps,
    "slow-promote"
);
scenario!(
    a_frozen_agent_is_fenced_through_ec2_before_the_replacement_serves,
    "frozen-agent"
);
scenario!(
    a_coordinator_frozen_40s_costs_the_primary_nothing,
    "frozen-coordinator"
);
scenario!(
    a_coordinator_restarted_20s_later_fails_nothing_over,
    "coordinator-restart"
);
scenario!(
    a_promote_fetched_only_after_its_window_still_promotes_the_warm_replica,
    "promote-after-its-window"
);
scenario!(
    an_interruption_after_a_restart_is_granted_without_waiting_for_the_reclaim,
    "interruption-after-restart"
);
scenario!(
    with_no_agent_able_to_see_ec2_the_coordinator_takes_the_view_a_restart_waits_for,
    "interruption-after-restart-blind"
);
scenario!(a_restored_store_converges_to_the_agents, "restored-store");
scenario!(
    a_restored_store_fences_the_cut_off_real_primary_before_granting,
    "restored-store-partitioned"
);
scenario!(
    a_secondary_eni_follows_the_primary_within_its_zone,
    "secondary-eni"
);
scenario!(
    a_lone_primary_lost_without_notice_is_replaced,
    "lost-primary"
);
scenario!(
    a_failing_journal_on_a_primary_stops_serving_then_exits,
    "journal-failure"
);
scenario!(a_cloned_disk_registers_a_new_identity, "shared-identity");
scenario!(a_forger_with_the_enrollment_token_moves_nothing, "forger");
scenario!(
    a_coordinator_clock_step_of_five_minutes_costs_a_failover_nothing,
    "clock-step"
);

/// The checker can fail: with the fence switched off (a test-build-only
/// coordinator flag), a partitioned PRIMARY and its replacement serve at
/// once, and the checker reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_two_primaries_when_fencing_is_disabled() {
    let v = spot_tests::scenarios::partition_without_fencing()
        .await
        .unwrap();
    assert!(
        v.iter().any(|p| p.contains("served at once")),
        "the checker missed the overlap: {v:?}"
    );
}

scenario!(
    a_data_volume_follows_the_primary_across_interruptions_switches_and_zones,
    "data-volume"
);

/// The volume checker can fail too: with the fence switched off, the
/// volume is moved to the replacement while the cut-off PRIMARY serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_volume_moved_before_the_fence() {
    let v = spot_tests::scenarios::volumes::volume_without_fencing()
        .await
        .unwrap();
    assert!(
        v.iter().any(|p| p.contains("before the fence")),
        "the checker missed it: {v:?}"
    );
}

#[tokio::test]
async fn unknown_scenario_is_an_error() {
    assert!(run("nope").await.is_err());
}
