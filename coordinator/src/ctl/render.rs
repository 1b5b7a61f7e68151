//! Human tables.

use serde_json::Value;

/// Columns aligned to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = width.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn age(ms: &Value) -> String {
    let Some(t) = ms.as_i64() else {
        return "-".into();
    };
    let secs = (super::now_ms() - t).max(0) / 1000;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn rows(v: &Value, f: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    v.as_array().into_iter().flatten().map(f).collect()
}

pub fn status(v: &Value) -> String {
    let inst = v["instances"].as_array().cloned().unwrap_or_default();
    let of = |g: &str, role: &str| -> Vec<String> {
        inst.iter()
            .filter(|i| i["group"] == g && i["role"] == role)
            .map(|i| s(&i["instance_id"]))
            .collect()
    };
    let groups = rows(&v["groups"], |g| {
        let name = s(&g["name"]);
        let t = &g["transition"];
        let moving = if t.is_null() {
            "-".into()
        } else {
            format!(
                "{} -> {} ({})",
                s(&t["old"]),
                s(&t["candidate"]),
                s(&t["phase"])
            )
        };
        let replicas = of(&name, "replica");
        vec![
            name,
            s(&g["epoch"]),
            s(&g["primary"]),
            if replicas.is_empty() {
                "-".into()
            } else {
                replicas.join(",")
            },
            moving,
            if g["config"]["paused"] == true {
                "paused".into()
            } else {
                "auto".into()
            },
        ]
    });
    let mut out = table(
        &["group", "epoch", "primary", "replicas", "replacing", "mode"],
        &groups,
    );
    let agents = v["agents"].as_array().cloned().unwrap_or_default();
    let offline: Vec<String> = agents
        .iter()
        .filter(|a| a["status"] == "offline")
        .map(|a| format!("{} ({})", s(&a["instance_id"]), s(&a["group"])))
        .collect();
    let backlogged: Vec<String> = agents
        .iter()
        .filter(|a| a["status"] == "online" && a["backlog"].as_u64().unwrap_or(0) > 100)
        .map(|a| format!("{} ({} events)", s(&a["instance_id"]), s(&a["backlog"])))
        .collect();
    let zombies = inst
        .iter()
        .filter(|i| matches!(i["role"].as_str(), Some("zombie" | "failed")))
        .count();
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    };
    for (g, d) in v["volumes"].as_object().into_iter().flatten() {
        let vols: Vec<String> = d["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| format!("{}={}", s(&x["device"]), s(&x["volume_id"])))
            .collect();
        let rpo = match d["rpo_s"].as_u64() {
            Some(r) => format!(
                "RPO {r} s (snapshot every {} s)",
                s(&d["snapshot_interval_s"])
            ),
            None => "no snapshot yet: the PRIMARY stays in the volumes' zone".into(),
        };
        let fast: Vec<String> = d["fast_restore"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                let (device, snapshot) = (s(&x["device"]), s(&x["snapshot_id"]));
                let (zone, state) = (s(&x["availability_zone"]), s(&x["state"]));
                format!("{device} {snapshot} {state} in {zone}")
            })
            .collect();
        let fast = match fast.is_empty() {
            true => String::new(),
            false => format!("; fast snapshot restore: {}", fast.join(", ")),
        };
        out.push_str(&format!(
            "\ndata volumes of {g}: {} in {}; {rpo}{fast}",
            vols.join(", "),
            d["availability_zone"].as_str().unwrap_or("an unknown zone")
        ));
    }
    out.push_str(&format!(
        "\nagents: {} online, {} offline: {}\nbacklogged agents: {}\nzombie or failed instances: {zombies}\n",
        agents.iter().filter(|a| a["status"] == "online").count(),
        offline.len(),
        list(&offline),
        list(&backlogged),
    ));
    out
}

/// One row per element of `v`; `spec` lists the columns as
/// `header=/json/pointer`, comma-separated; a pointer starting `~` is a
/// unix-ms time shown as an age, `@` a pool shown as type/zone.
fn columns(v: &Value, spec: &str) -> String {
    let cols: Vec<(&str, &str)> = spec
        .split(',')
        .filter_map(|c| c.trim().split_once('='))
        .collect();
    let cell = |x: &Value, p: &str| {
        let at = |p: &str| x.pointer(p).cloned().unwrap_or(Value::Null);
        if let Some(p) = p.strip_prefix('~') {
            age(&at(p))
        } else if let Some(p) = p.strip_prefix('@') {
            let pool = at(p);
            format!(
                "{}/{}",
                s(&pool["instance_type"]),
                s(&pool["availability_zone"])
            )
        } else {
            s(&at(p))
        }
    };
    let header: Vec<&str> = cols.iter().map(|(h, _)| *h).collect();
    let r = rows(v, |x| cols.iter().map(|(_, p)| cell(x, p)).collect());
    table(&header, &r)
}

pub fn groups(v: &Value) -> String {
    let r = rows(v, |g| {
        let pools: Vec<String> = g["config"]["pools"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("{}/{}", s(&p["instance_type"]), s(&p["availability_zone"])))
            .collect();
        vec![
            s(&g["name"]),
            s(&g["epoch"]),
            s(&g["primary"]),
            pools.join(","),
            s(&g["config"]["manual_replica"]),
            s(&g["config"]["paused"]),
            s(&g["version"]),
        ]
    });
    table(
        &[
            "group",
            "epoch",
            "primary",
            "pools",
            "manual_replica",
            "paused",
            "version",
        ],
        &r,
    )
}

pub fn instances(v: &Value) -> String {
    columns(
        v,
        "instance=/instance_id, group=/group, role=/role, type=/instance_type, zone=/availability_zone, ec2=/ec2_state, in role=~/updated_at_ms, agent=/agent_id",
    )
}

pub fn agents(v: &Value) -> String {
    columns(
        v,
        "agent=/agent_id, instance=/instance_id, group=/group, status=/status, heard=~/last_heartbeat_ms, role=/reported_role, healthy=/healthy, backlog=/backlog",
    )
}

pub fn commands(v: &Value) -> String {
    columns(
        v,
        "request=/command/request_id, kind=/command/action/kind, group=/command/group, epoch=/command/epoch, state=/state, agent=/agent_id, age=~/created_at_ms",
    )
}

pub fn notices(v: &Value) -> String {
    columns(
        v,
        "instance=/instance_id, group=/group, notice=/kind, seen=~/seen_at_ms",
    )
}

pub fn audit(v: &Value) -> String {
    columns(
        v,
        "id=/id, age=~/at_ms, actor=/actor, entity=/entity, action=/action, after=/post_state",
    )
}

pub fn switches(v: &Value) -> String {
    columns(
        v,
        "id=/id, pool=@/target_pool, state=/state, from=/from_instance, to=/to_instance, downtime ms=/downtime_ms, failure=/failure",
    )
}

/// A transition: one line of what it is, the targets, what it waits for.
pub fn transition(v: &Value) -> String {
    let t = &v["transition"];
    let mut out = format!(
        "{} -> {} at epoch {}, phase {}{} ({}), started {} ago\n",
        s(&t["old"]),
        s(&t["candidate"]),
        s(&t["epoch"]),
        s(&t["phase"]),
        if t["emergency"] == Value::Bool(true) {
            ", emergency"
        } else {
            ""
        },
        s(&t["reason"]),
        age(&t["started_at_ms"]),
    );
    out.push_str(&columns(
        &v["targets"],
        "fence target=/instance_id, epoch=/epoch, fenced=/fenced, demote=/demote, ec2 fences=/fence_attempts, last=/last_fence, code=/last_fence_code",
    ));
    out.push_str(&format!("waiting for: {}\n", s(&v["waiting_for"])));
    out.push_str(if v["abortable"] == Value::Bool(true) {
        "nothing granted yet: `spotctl transition-abort` may end it\n"
    } else {
        "a candidate was granted: it cannot be aborted, only fenced\n"
    });
    out
}

pub fn prices(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["pools"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let points = p["points"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let interpolated = points.iter().filter(|x| x["interpolated"] == true).count();
            vec![
                format!("{}/{}", s(&p["instance_type"]), s(&p["availability_zone"])),
                points.last().map_or("-".into(), |x| s(&x["price"])),
                points.len().to_string(),
                interpolated.to_string(),
            ]
        })
        .collect();
    let mut out = table(&["pool", "latest $/h", "hours", "interpolated"], &rows);
    let c = &v["cost"];
    if c.is_object() {
        out.push_str(&format!(
            "PRIMARY in {}/{}: ${}/h spot, on-demand {}, savings {}\n",
            s(&c["instance_type"]),
            s(&c["availability_zone"]),
            s(&c["spot_price"]),
            s(&c["on_demand_price"]),
            c["savings_percent"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.0}%"))
        ));
    }
    out
}

pub fn models(v: &Value) -> String {
    columns(
        v,
        "model=/model, groups=/groups, decisions=/decisions, switches=/switches, fallbacks=/fallbacks, $/instance-hour=/cost_per_instance_hour, interruptions=/interruptions, downtime s=/switch_downtime_s",
    )
}

pub fn decisions(v: &Value) -> String {
    columns(
        v,
        "id=/id, age=~/at_ms, mode=/mode, action=/action, pool=@/target_pool, confidence=/confidence, outcome=/outcome, reason=/reason",
    )
}

pub fn terminated(v: &Value) -> String {
    let mut out = columns(
        &v["instances"],
        "instance=/instance_id, group=/group, role=/role, in role s=/in_role_s, action=/action, reason=/reason",
    );
    if v["dry_run"] == true {
        out.push_str("(dry run: nothing was changed)\n");
    }
    out
}

/// One event of the stream, in one line: time, entity, action, actor,
/// and what changed.
pub fn event(v: &Value) -> String {
    let at = v["at_ms"].as_i64().unwrap_or(0);
    let t = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(at).unwrap_or(0)),
    );
    format!(
        "{t} #{} {} {} by {}: {}",
        s(&v["id"]),
        s(&v["entity"]),
        s(&v["action"]),
        s(&v["actor"]),
        v["post_state"]
    )
}

/// An action's answer, in one line.
pub fn done(v: &Value) -> String {
    format!("ok: {v}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_their_columns() {
        let t = table(
            &["group", "primary"],
            &[
                vec!["db".into(), "i-0123456789".into()],
                vec!["cache".into(), "-".into()],
            ],
        );
        assert_eq!(t, "GROUP  PRIMARY\ndb     i-0123456789\ncache  -\n");
    }

    #[test]
    fn status_names_offline_and_backlogged_agents() {
        let v = json!({
            "groups": [{"name": "db", "epoch": 3, "primary": "i-1", "transition": null,
                        "config": {"paused": false}}],
            "instances": [{"instance_id": "i-2", "group": "db", "role": "replica"},
                          {"instance_id": "i-3", "group": "db", "role": "zombie"}],
            "agents": [{"instance_id": "i-1", "group": "db", "status": "online", "backlog": 500},
                       {"instance_id": "i-4", "group": "db", "status": "offline", "backlog": 0}],
        });
        let mut v = v;
        v["volumes"] = json!({"db": {"availability_zone": "us-east-1a", "rpo_s": 120,
            "snapshot_interval_s": 900,
            "volumes": [{"device": "/dev/sdf", "volume_id": "vol-1"}]}});
        let s = status(&v);
        assert!(
            s.contains(
                "data volumes of db: /dev/sdf=vol-1 in us-east-1a; RPO 120 s (snapshot every 900 s)"
            ),
            "{s}"
        );
        assert!(s.contains("db     3      i-1      i-2"), "{s}");
        assert!(s.contains("1 offline: i-4 (db)"), "{s}");
        assert!(s.contains("backlogged agents: i-1 (500 events)"), "{s}");
        assert!(s.contains("zombie or failed instances: 1"), "{s}");
        v["volumes"]["db"]["fast_restore"] = json!([{"device": "/dev/sdf",
            "snapshot_id": "snap-1", "availability_zone": "us-east-1b", "state": "optimizing"}]);
        let s = status(&v);
        assert!(
            s.contains("(snapshot every 900 s); fast snapshot restore: /dev/sdf snap-1 optimizing in us-east-1b"),
            "{s}"
        );
    }
}
