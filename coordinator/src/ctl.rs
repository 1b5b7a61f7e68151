//! `spotctl`: the operator's command line over the coordinator's API.
//! Human tables by default, `--output json` for scripts. Exit codes: 0
//! done; 1 the coordinator refused (its error code and message are
//! printed); 2 bad usage; 3 the coordinator cannot be reached or answered
//! garbage; 4 local configuration missing (no URL or token).

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Operator CLI of the spot optimizer: fleet status, listings, and the
/// actions of the coordinator's API. The coordinator URL and an admin (or
/// viewer) token come from flags, else SPOTCTL_URL / SPOTCTL_TOKEN, else
/// ~/.config/spotctl.toml (`url = "..."`, `token = "..."`, `ca_bundle =
/// "..."`). An https:// coordinator is verified against the system's roots
/// plus the CA bundle, if any.
#[derive(Parser, Debug)]
#[command(name = "spotctl", version, args_override_self = true)]
pub struct Cli {
    /// Coordinator base URL [default: http://127.0.0.1:8080].
    #[arg(long, global = true, env = "SPOTCTL_URL")]
    pub url: Option<String>,
    /// Operator token.
    #[arg(long, global = true, env = "SPOTCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Config file [default: ~/.config/spotctl.toml].
    #[arg(long, global = true, env = "SPOTCTL_CONFIG")]
    pub config: Option<PathBuf>,
    /// PEM bundle of a private CA that signed the coordinator's certificate.
    #[arg(long, global = true, env = "SPOTCTL_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value = "table")]
    pub output: Output,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// One screen: every group with its PRIMARY, REPLICAs, epoch and
    /// replacement in flight; offline and backlogged agents; zombies.
    Status,
    /// Groups and their configuration.
    Groups,
    /// Instances and their roles.
    Instances {
        #[arg(long)]
        group: Option<String>,
    },
    /// Agents: status, last heartbeat, backlog.
    Agents,
    /// Commands and their state.
    Commands,
    /// Interruption and rebalance notices.
    Notices {
        #[arg(long)]
        group: Option<String>,
    },
    /// The audit log, oldest first.
    Audit {
        /// `group:db`, `instance:i-1`, `agent:agt-...`.
        #[arg(long)]
        entity: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// A group's manual switches.
    Switches { group: String },
    /// Follow the event stream: one line per change (role changes,
    /// notices, command results, switches, decisions, agents online or
    /// offline) as it happens, until interrupted. Reconnects and resumes
    /// where it left off if the coordinator restarts.
    Watch {
        /// Start after this event id (replay); default: from now on.
        #[arg(long)]
        after: Option<i64>,
    },
    /// A group's candidate pools: latest canonical hourly price, hours
    /// known (and how many interpolated) over the last week; its PRIMARY's
    /// price and savings.
    Prices { group: String },
    /// A/B: per model groups are assigned to, how its groups fared.
    Models {
        /// The window, e.g. 7d.
        #[arg(long, default_value = "7d")]
        since: String,
    },
    /// A group's decision log (decision engine), newest first.
    Decisions {
        group: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Make INSTANCE the group's PRIMARY (two-phase, fenced).
    Promote {
        group: String,
        instance: String,
        /// The epoch you decided against [default: the group's current].
        #[arg(long)]
        expected_epoch: Option<u64>,
    },
    /// Move the group's PRIMARY to another of its pools.
    Switch {
        group: String,
        #[arg(long)]
        instance_type: String,
        #[arg(long)]
        availability_zone: String,
    },
    /// Cancel the group's switch in progress.
    SwitchCancel { group: String },
    /// Manual replica mode on or off (keep exactly one REPLICA).
    Replica { group: String, mode: OnOff },
    /// Stop automatic actions for a group (maintenance).
    Pause { group: String },
    /// Resume automatic actions.
    Resume { group: String },
    /// ZOMBIE and FAILED instances; `--terminate` terminates them.
    Zombies {
        /// Only those in their role at least this long, e.g. 30d.
        #[arg(long)]
        older_than: Option<String>,
        /// Terminate them (through EC2).
        #[arg(long)]
        terminate: bool,
        /// With --terminate: list what would be done, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// Why spotctl failed, and its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Config(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused { .. } => 1,
            CtlError::Unreachable(_) => 3,
            CtlError::Config(_) => 4,
        }
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    token: Option<String>,
    ca_bundle: Option<PathBuf>,
}

/// A client of the operator API.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    tls: spot_runtime::tls::ClientTls,
}

impl Client {
    pub fn new(
        base: &str,
        token: &str,
        tls: spot_runtime::tls::ClientTls,
    ) -> Result<Client, CtlError> {
        let http = Self::http(
            &tls,
            reqwest::Client::builder().timeout(Duration::from_secs(30)),
        )?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
            tls,
        })
    }

    fn http(
        tls: &spot_runtime::tls::ClientTls,
        b: reqwest::ClientBuilder,
    ) -> Result<reqwest::Client, CtlError> {
        tls.apply(b)
            .map_err(|e| CtlError::Config(format!("{e:#}")))?
            .build()
            .map_err(|e| CtlError::Config(format!("HTTP client: {e}")))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, CtlError> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| CtlError::Unreachable(format!("coordinator at {}: {e}", self.base)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| CtlError::Unreachable(format!("reading the answer: {e}")))?;
        let v: Value = serde_json::from_str(&text).map_err(|_| {
            CtlError::Unreachable(format!(
                "the coordinator answered {status} with non-JSON: {text:.200}"
            ))
        })?;
        if status.is_success() {
            Ok(v)
        } else {
            Err(CtlError::Refused {
                code: v["code"].as_str().unwrap_or("error").to_owned(),
                message: v["message"].as_str().unwrap_or(&text).to_owned(),
            })
        }
    }

    /// Print the event stream, one line per event, until interrupted; a
    /// stream the coordinator ends is resumed from the last event seen.
    pub async fn watch(&self, after: Option<i64>, json_out: bool) -> Result<(), CtlError> {
        use std::io::Write;
        // No overall timeout: the stream lives as long as we watch.
        let http = Self::http(
            &self.tls,
            reqwest::Client::builder().connect_timeout(Duration::from_secs(10)),
        )?;
        let mut last = after;
        let mut connected_once = false;
        loop {
            let mut req = http
                .get(format!("{}/v1/events/stream", self.base))
                .bearer_auth(&self.token);
            if let Some(id) = last {
                req = req.header("Last-Event-ID", id.to_string());
            }
            let mut resp = match req.send().await {
                Ok(r) => r,
                Err(e) if connected_once => {
                    eprintln!("spotctl: stream lost ({e}); reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => {
                    return Err(CtlError::Unreachable(format!(
                        "coordinator at {}: {e}",
                        self.base
                    )));
                }
            };
            if !resp.status().is_success() {
                let status = resp.status();
                let v: Value = resp.json().await.unwrap_or(Value::Null);
                return Err(CtlError::Refused {
                    code: v["code"].as_str().unwrap_or("error").to_owned(),
                    message: v["message"]
                        .as_str()
                        .map_or_else(|| status.to_string(), str::to_owned),
                });
            }
            connected_once = true;
            let mut buf = String::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let Some((id, entry)) = sse_event(&block) else {
                        continue;
                    };
                    last = Some(id);
                    let line = if json_out {
                        entry.to_string()
                    } else {
                        render::event(&entry)
                    };
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
            eprintln!("spotctl: the coordinator ended the stream; resuming");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, CtlError> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CtlError> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, CtlError> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }
}

/// Flags, else environment (clap), else the config file, else defaults.
fn client(cli: &Cli) -> Result<Client, CtlError> {
    let path = cli.config.clone().or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/spotctl.toml"))
    });
    let file: FileConfig = match &path {
        Some(p) if p.exists() => {
            spot_runtime::config::read_toml(p).map_err(|e| CtlError::Config(format!("{e:#}")))?
        }
        Some(p) if cli.config.is_some() => {
            return Err(CtlError::Config(format!(
                "config file {} not found",
                p.display()
            )));
        }
        _ => FileConfig::default(),
    };
    let url = cli
        .url
        .clone()
        .or(file.url)
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let token = cli.token.clone().or(file.token).ok_or_else(|| {
        CtlError::Config(
            "no token: pass --token, set SPOTCTL_TOKEN, or put token = \"...\" in ~/.config/spotctl.toml"
                .into(),
        )
    })?;
    let tls = spot_runtime::tls::ClientTls {
        ca_bundle: cli.ca_bundle.clone().or(file.ca_bundle),
        ..Default::default()
    };
    Client::new(&url, &token, tls)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spotctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&cli)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("spotctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// One Server-Sent Event block: its id and JSON data (comments and
/// keep-alives give `None`).
fn sse_event(block: &str) -> Option<(i64, Value)> {
    let mut id = None;
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    Some((id?, serde_json::from_str(&data).ok()?))
}

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
            let v = json!({
                "groups": c.get("/v1/groups").await?,
                "instances": c.get("/v1/instances").await?,
                "agents": c.get("/v1/agents").await?,
            });
            out(v, render::status)
        }
        Cmd::Groups => out(c.get("/v1/groups").await?, render::groups),
        Cmd::Instances { group } => out(
            c.get(&query("/v1/instances?", "group", group)).await?,
            render::instances,
        ),
        Cmd::Agents => out(c.get("/v1/agents").await?, render::agents),
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
                let now = crate::now_ms();
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

/// Human tables.
pub mod render {
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
        let secs = (crate::now_ms() - t).max(0) / 1000;
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
            std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(u64::try_from(at).unwrap_or(0)),
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
}

#[cfg(test)]
mod tests {
    use super::render;
    use serde_json::json;

    #[test]
    fn tables_align_their_columns() {
        let t = render::table(
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
        let s = render::status(&v);
        assert!(s.contains("db     3      i-1      i-2"), "{s}");
        assert!(s.contains("1 offline: i-4 (db)"), "{s}");
        assert!(s.contains("backlogged agents: i-1 (500 events)"), "{s}");
        assert!(s.contains("zombie or failed instances: 1"), "{s}");
    }
}
