use super::builtin::{Params, decide, failover_cost_of};
use super::*;

const H: i64 = 3_600_000;
const NOW: i64 = 1_000 * H;

fn key(az: &str) -> PoolKey {
    PoolKey::new("m5.large", az)
}

/// A pool priced `price` for the last `hours` hours (the latest at NOW).
fn pool(az: &str, price: f64, hours: i64) -> PoolFeatures {
    PoolFeatures {
        pool: key(az),
        hourly: (0..hours)
            .map(|k| HourPrice {
                hour_ms: NOW - (hours - 1 - k) * H,
                price,
                interpolated: false,
            })
            .collect(),
        interruptions_per_instance_hour: 0.0,
        rebalances_per_instance_hour: 0.0,
        failed_launches: 0,
        boot_s: None,
        last_interruption_ms: None,
    }
}

fn member(az: &str) -> Member {
    Member {
        instance_id: format!("i-{az}"),
        pool: key(az),
        uptime_s: 3600,
        price: None,
        cost_delta_to_cheapest: None,
        on_demand_price: None,
        notices: Vec::new(),
    }
}

/// PRIMARY in `a` at $0.10/h; `b` at `b_price` for 24 h.
fn input(b_price: f64) -> DecisionInput {
    DecisionInput {
        version: SCHEMA_VERSION,
        group: "db".into(),
        now_ms: NOW,
        config: GroupFeatures {
            mode: DecisionMode::Auto,
            manual_replica: false,
            auto_terminate: false,
            pools: vec![key("a"), key("b")],
            volume_zone: None,
            rpo_s: None,
        },
        primary: Some(member("a")),
        replicas: Vec::new(),
        pools: vec![pool("a", 0.10, 24), pool("b", b_price, 24)],
        switches_last_24h: 0,
    }
}

const P: Params = Params::DEFAULT;

#[test]
fn a_group_with_data_volumes_never_moves_out_of_their_zone_and_counts_its_rpo() {
    // b is 20 % cheaper, but the volumes live in a.
    let mut i = input(0.08);
    i.config.volume_zone = Some(key("a").availability_zone);
    i.config.rpo_s = Some(900);
    assert!(
        !matches!(decide(&i, &P).action, Action::Switch { .. }),
        "a switch to b would restore from a snapshot"
    );
    let mut free = input(0.08);
    free.config.volume_zone = Some(key("b").availability_zone);
    assert!(
        matches!(decide(&free, &P).action, Action::Switch { .. }),
        "b holds the volumes"
    );
    // The RPO makes every interruption dearer: an hour at $1/h, $1 more.
    let mut risky = input(0.08);
    risky.config.volume_zone = Some(key("a").availability_zone);
    risky.config.rpo_s = Some(3600);
    assert!((failover_cost_of(&risky) - (P.failover_cost + 1.0)).abs() < 1e-9);
}

#[test]
fn switches_only_past_the_margin() {
    // 20 % cheaper: past the 15 % margin.
    let d = decide(&input(0.08), &P);
    assert_eq!(d.action, Action::Switch { pool: key("b") });
    assert!(d.confidence > 0.5 && d.confidence <= 1.0, "{d:?}");
    assert!(validate(&input(0.08), &d).is_ok());
    // 10 % cheaper: inside the margin.
    assert_eq!(decide(&input(0.09), &P).action, Action::Stay);
}

#[test]
fn risk_is_priced_in() {
    // 20 % cheaper, but 0.05 interruptions per instance-hour x $0.50 adds
    // $0.025/h: $0.105 expected against $0.10.
    let mut i = input(0.08);
    i.pools[1].interruptions_per_instance_hour = 0.05;
    assert_eq!(decide(&i, &P).action, Action::Stay);
}

#[test]
fn the_saving_must_hold_for_the_dwell() {
    let mut i = input(0.08);
    // Two hours ago b was as dear as a.
    let n = i.pools[1].hourly.len();
    i.pools[1].hourly[n - 3].price = 0.10;
    let d = decide(&i, &P);
    assert_eq!(d.action, Action::Stay);
    assert!(
        d.reason.contains("not for the last 3 hours"),
        "{}",
        d.reason
    );
    // Only the last 2 hours cheap: a 2-hour dwell switches.
    let two = Params {
        dwell_hours: 2,
        ..P
    };
    assert!(matches!(decide(&i, &two).action, Action::Switch { .. }));
    // A gap in the series is no evidence.
    let mut gap = input(0.08);
    gap.pools[1].hourly.remove(n - 2);
    assert_eq!(decide(&gap, &P).action, Action::Stay);
}

#[test]
fn a_spiking_pool_is_left_without_waiting_for_the_dwell() {
    // b has been at $0.08 for a day; a was $0.10 and jumped to $0.20 this
    // hour (2x its median): leave now.
    let mut i = input(0.08);
    i.pools[0].hourly.last_mut().unwrap().price = 0.20;
    let d = decide(&i, &P);
    assert_eq!(d.action, Action::Switch { pool: key("b") }, "{d:?}");
    assert!(d.reason.contains("spiking"), "{}", d.reason);
    // A rise under the spike factor still waits for the dwell: b was
    // dearer than a until this hour.
    let mut i = input(0.12);
    i.pools[0].hourly.last_mut().unwrap().price = 0.14;
    i.pools[1].hourly.last_mut().unwrap().price = 0.10;
    assert_eq!(decide(&i, &P).action, Action::Stay);
}

#[test]
fn never_more_than_the_daily_budget_nor_into_a_recently_interrupted_pool() {
    let mut i = input(0.05);
    i.switches_last_24h = 2;
    assert_eq!(decide(&i, &P).action, Action::Stay);
    let mut i = input(0.05);
    i.pools[1].last_interruption_ms = Some(NOW - 5 * H);
    assert_eq!(
        decide(&i, &P).action,
        Action::Stay,
        "inside the 6 h cooldown"
    );
    i.pools[1].last_interruption_ms = Some(NOW - 7 * H);
    assert!(matches!(decide(&i, &P).action, Action::Switch { .. }));
    let mut i = input(0.05);
    i.pools[1].failed_launches = 1;
    assert_eq!(decide(&i, &P).action, Action::Stay, "no capacity there");
}

#[test]
fn a_risky_primary_without_replica_gets_one_and_manual_replica_never_switches() {
    let mut i = input(0.09);
    i.primary.as_mut().unwrap().notices = vec![NoticeKind::Rebalance];
    let d = decide(&i, &P);
    assert_eq!(d.action, Action::CreateReplica { pool: key("b") });
    i.replicas.push(member("b"));
    assert_eq!(decide(&i, &P).action, Action::Stay, "a REPLICA stands by");
    let mut i = input(0.01);
    i.config.manual_replica = true;
    assert_eq!(decide(&i, &P).action, Action::Stay);
    i.primary = None;
    assert_eq!(decide(&i, &P).action, Action::NoAction);
}

#[test]
fn invalid_answers_are_refused_with_their_reason() {
    let i = input(0.08);
    let good = decide(&i, &P);
    let with = |f: &dyn Fn(&mut DecisionOutput)| {
        let mut o = good.clone();
        f(&mut o);
        validate(&i, &o)
    };
    assert_eq!(with(&|o| o.confidence = 1.5), Err(Invalid::Confidence(1.5)));
    assert!(matches!(
        with(&|o| o.action = Action::Switch { pool: key("z") }),
        Err(Invalid::PoolOutsideGroup(_))
    ));
    assert_eq!(
        with(&|o| o.action = Action::Switch { pool: key("a") }),
        Err(Invalid::SwitchToCurrentPool)
    );
    assert_eq!(with(&|o| o.reason = " ".into()), Err(Invalid::Reason));
    let mut manual = i.clone();
    manual.config.manual_replica = true;
    assert_eq!(
        validate(&manual, &good),
        Err(Invalid::SwitchInManualReplica)
    );
}

#[test]
fn the_wire_format_is_the_published_one() {
    let o = decide(&input(0.08), &P);
    let v = serde_json::to_value(&o).unwrap();
    assert_eq!(v["action"], "SWITCH");
    assert_eq!(v["pool"]["availability_zone"], "b");
    assert_eq!(v["model"]["name"], "builtin");
    // An unknown action is refused when parsed.
    let bad =
        r#"{"action":"PANIC","confidence":1,"reason":"x","model":{"name":"m","version":"1"}}"#;
    assert!(serde_json::from_str::<DecisionOutput>(bad).is_err());
    let back: DecisionOutput = serde_json::from_value(v).unwrap();
    assert_eq!(back, o);
}

#[test]
fn groups_are_assigned_to_a_model_stably_by_their_share() {
    use crate::vocab::ModelChoice::{Builtin, External};
    let names: Vec<String> = (0..2000).map(|k| format!("group-{k}")).collect();
    let external = names
        .iter()
        .filter(|g| assign(g, None, true, 0.3) == External)
        .count();
    assert!((500..700).contains(&external), "about 30 %: {external}");
    // Stable, and a group's own choice wins; no external model, no choice.
    assert_eq!(assign("db", None, true, 0.3), assign("db", None, true, 0.3));
    assert_eq!(assign("db", Some(Builtin), true, 1.0), Builtin);
    assert_eq!(assign("db", Some(External), true, 0.0), External);
    assert_eq!(assign("db", Some(External), false, 1.0), Builtin);
    assert_eq!(assign("db", None, true, 1.0), External);
    assert_eq!(assign("db", None, true, 0.0), Builtin);
}
