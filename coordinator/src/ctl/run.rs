//! One spotctl command: what it asks the coordinator and how it prints
//! the answer.

use super::client::{CtlError, client};
use super::{AgentCmd, Cli, Client, Cmd, OnOff, Output, render};
use serde_json::{Value, json};

/// Run one command; its output.
pub async fn run(cli: &Cli) -> Result<String, CtlError> {
    let c = client(cli)?;
    let json_out = cli.output == Output::Json;
    let out = |v: Value, table: fn(&Value) -> String| {
        if json_out {
            format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default())
        } else {
            table(&v)
        }
    };
    Ok(match &cli.command {
        Cmd::Watch { after } => {
            c.watch(*after, json_out).await?;
            String::new()
        }
        Cmd::Status => {
            let groups = c.get("/v1/groups").await?;
            // Where each group's data volumes are, and what a replacement
            // in another zone would lose (RPO).
            let mut volumes = serde_json::Map::new();
            for g in groups.as_array().into_iter().flatten() {
                let has = g["config"]["data_volumes"]
                    .as_array()
                    .is_some_and(|v| !v.is_empty());
                if let (true, Some(name)) = (has, g["name"].as_str()) {
                    volumes.insert(
                        name.to_owned(),
                        c.get(&format!("/v1/groups/{name}/volumes")).await?,
                    );
                }
            }
            let v = json!({
                "groups": groups,
                "instances": c.get("/v1/instances").await?,
                "agents": c.get("/v1/agents").await?,
                "volumes": volumes,
            });
            out(v, render::status)
        }
        Cmd::Groups => out(c.get("/v1/groups").await?, render::groups),
        Cmd::Instances { group } => out(
            c.get(&query("/v1/instances?", "group", group)).await?,
            render::instances,
        ),
        Cmd::Agents => out(c.get("/v1/agents").await?, render::agents),
        Cmd::Agent(AgentCmd::Reset { agent_id }) => out(
            c.post(&format!("/v1/agents/{agent_id}/reset"), &json!({}))
                .await?,
            render::done,
        ),
        Cmd::Commands => out(c.get("/v1/commands").await?, render::commands),
        Cmd::Notices { group } => out(
            c.get(&query("/v1/notices?", "group", group)).await?,
            render::notices,
        ),
        Cmd::Audit { entity, limit } => out(
            c.get(&query(
                &format!("/v1/audit?limit={limit}&"),
                "entity",
                entity,
            ))
            .await?,
            render::audit,
        ),
        Cmd::Switches { group } => out(
            c.get(&format!("/v1/groups/{group}/switches")).await?,
            render::switches,
        ),
        Cmd::Prices { group } => out(
            c.get(&format!("/v1/groups/{group}/prices")).await?,
            render::prices,
        ),
        Cmd::Models { since } => out(
            c.get(&format!("/v1/models/compare?since={since}")).await?,
            render::models,
        ),
        Cmd::Decisions { group, limit } => out(
            c.get(&format!("/v1/groups/{group}/decisions?limit={limit}"))
                .await?,
            render::decisions,
        ),
        Cmd::Promote {
            group,
            instance,
            expected_epoch,
        } => {
            let epoch = match expected_epoch {
                Some(e) => *e,
                None => c.get(&format!("/v1/groups/{group}")).await?["epoch"]
                    .as_u64()
                    .unwrap_or(0),
            };
            let body = json!({"instance_id": instance, "expected_epoch": epoch});
            out(
                c.post(&format!("/v1/groups/{group}/promote"), &body)
                    .await?,
                render::done,
            )
        }
        Cmd::Switch {
            group,
            instance_type,
            availability_zone,
        } => {
            let pool =
                json!({"instance_type": instance_type, "availability_zone": availability_zone});
            let body = json!({"pool": pool});
            out(
                c.post(&format!("/v1/groups/{group}/switch"), &body).await?,
                render::done,
            )
        }
        Cmd::Transition { group } => out(
            c.get(&format!("/v1/groups/{group}/transition")).await?,
            render::transition,
        ),
        Cmd::TransitionAbort {
            group,
            expected_epoch,
        } => {
            let epoch = match expected_epoch {
                Some(e) => json!(e),
                None => {
                    c.get(&format!("/v1/groups/{group}/transition")).await?["transition"]["epoch"]
                        .clone()
                }
            };
            out(
                c.post(
                    &format!("/v1/groups/{group}/transition/abort"),
                    &json!({"expected_epoch": epoch}),
                )
                .await?,
                render::done,
            )
        }
        Cmd::DeclareDead {
            group,
            instance,
            force,
        } => out(
            c.post(
                &format!("/v1/groups/{group}/declare-dead"),
                &json!({"instance_id": instance, "force": force}),
            )
            .await?,
            render::done,
        ),
        Cmd::SwitchCancel { group } => out(
            c.post(&format!("/v1/groups/{group}/switch/cancel"), &json!({}))
                .await?,
            render::done,
        ),
        Cmd::Replica { group, mode } => {
            let on = *mode == OnOff::On;
            out(
                set_flag(&c, group, "manual_replica", on).await?,
                render::done,
            )
        }
        Cmd::Pause { group } => out(set_flag(&c, group, "paused", true).await?, render::done),
        Cmd::Resume { group } => out(set_flag(&c, group, "paused", false).await?, render::done),
        Cmd::Zombies {
            older_than,
            terminate,
            dry_run,
        } => {
            if *terminate {
                let mut body = json!({"role": "zombie", "dry_run": dry_run});
                if let Some(t) = older_than {
                    body["older_than"] = json!(t);
                }
                let mut v = c.post("/v1/instances/terminate", &body).await?;
                let mut failed = body.clone();
                failed["role"] = json!("failed");
                let f = c.post("/v1/instances/terminate", &failed).await?;
                if let (Some(a), Some(b)) =
                    (v["instances"].as_array_mut(), f["instances"].as_array())
                {
                    a.extend(b.iter().cloned());
                }
                out(v, render::terminated)
            } else {
                let all = c.get("/v1/instances").await?;
                let now = super::now_ms();
                let min_ms = match older_than {
                    Some(t) => humantime::parse_duration(t)
                        .map_err(|e| CtlError::Config(format!("--older-than {t:?}: {e}")))?
                        .as_millis() as i64,
                    None => 0,
                };
                let list: Vec<Value> = all
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|i| matches!(i["role"].as_str(), Some("zombie" | "failed")))
                    .filter(|i| now - i["updated_at_ms"].as_i64().unwrap_or(now) >= min_ms)
                    .cloned()
                    .collect();
                out(Value::Array(list), render::instances)
            }
        }
    })
}

/// `path` (ending in `?` or `&`) with `key=value` when there is a value.
fn query(path: &str, key: &str, value: &Option<String>) -> String {
    match value {
        Some(v) => format!("{path}{key}={v}"),
        None => path.trim_end_matches(['?', '&']).to_owned(),
    }
}

/// Read the group, flip one config flag, write it back with its version.
async fn set_flag(c: &Client, group: &str, key: &str, on: bool) -> Result<Value, CtlError> {
    let g = c.get(&format!("/v1/groups/{group}")).await?;
    let mut config = g["config"].clone();
    config[key] = json!(on);
    let body = json!({"config": config, "version": g["version"]});
    c.put(&format!("/v1/groups/{group}"), &body).await
}
