#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The nemesis on the debug binaries: short seeded runs that must pass
//! (no overlap, double execution, epoch going back, stuck group or
//! command, leaked instance), and a run with fencing switched off (a
//! test-build-only coordinator flag) that the checker must fail.

use spot_tests::nemesis::faults::{Kind, Schedule, Target, Timing};
use spot_tests::nemesis::{NemesisArgs, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_seeded_runs_pass() {
    for seed in [101, 102, 103] {
        let report = run(NemesisArgs::new(seed, Duration::from_secs(25)))
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
        eprintln!("{}", report.summary());
        assert_eq!(report.verdict, "pass", "{}", report.summary());
        assert!(!report.history.is_empty(), "faults were applied");
        assert!(
            report.unavailability_s.values().all(|s| s.n > 0),
            "every fault kind applied was measured"
        );
    }
}

/// Three coordinators on PostgreSQL under the leader faults (killed,
/// frozen past the lease, cut from the database fully or half-open, a
/// follower cut, the database restarted) with interruptions among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_seeded_run_with_three_coordinators_on_postgres_passes() {
    let mut args = NemesisArgs::new(201, Duration::from_secs(40));
    args.store = "postgres".into();
    args.coordinators = 3;
    args.faults = [
        "leader-kill",
        "leader-freeze",
        "store-restart",
        "leader-cut-store",
        "follower-cut",
        "interruption",
    ]
    .map(String::from)
    .to_vec();
    let report = run(args).await.unwrap();
    eprintln!("{}", report.summary());
    assert_eq!(report.verdict, "pass", "{}", report.summary());
    assert_eq!(report.deposed_leader_writes, 0);
    assert!(
        report.faults.keys().any(|k| k.starts_with("leader")),
        "a leader fault was drawn: {:?}",
        report.faults
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fencing_a_cut_primary_is_caught_serving_beside_its_replacement() {
    // The first seed whose first fault cuts the PRIMARY's link well past
    // the lease expiry (3 s lease), with nothing else going on.
    let timing = Timing {
        lease: Duration::from_secs(3),
        promotion_timeout: Duration::from_secs(15),
        leader_lease: Duration::from_secs(3),
    };
    let seed = (0..1000)
        .find(|s| {
            let d = Schedule::new(*s, &[Kind::LinkCut], Target::Primary, 1, timing).next_draw();
            d.hold_ms >= 10_000 && !d.with_interruption
        })
        .unwrap();
    let mut args = NemesisArgs::new(seed, Duration::from_secs(1));
    args.groups = 1;
    args.faults = vec!["link-cut".into()];
    args.target = Target::Primary;
    args.unsafe_no_fencing = true;
    let report = run(args).await.unwrap();
    eprintln!("{}", report.summary());
    assert_eq!(report.verdict, "fail");
    assert!(report.overlaps >= 1, "{}", report.summary());
    let overlap = report
        .violations
        .iter()
        .find(|v| v.kind == "overlap")
        .unwrap();
    assert!(
        overlap.history.iter().any(|a| a.draw.kind == Kind::LinkCut),
        "the overlap comes with the fault that caused it"
    );
}
