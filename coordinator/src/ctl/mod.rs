//! `spotctl`: the operator's command line over the coordinator's API.
//! Human tables by default, `--output json` for scripts. Exit codes: 0
//! done; 1 the coordinator refused (its error code and message are
//! printed); 2 bad usage; 3 the coordinator cannot be reached or answered
//! garbage; 4 local configuration missing (no URL or token).

mod client;
pub mod render;
mod run;

pub use client::{Client, CtlError};
pub use run::run;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

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
pub enum AgentCmd {
    /// The agent is gone (its instance reinstalled, its journal lost): its
    /// token stops working and its instance may register again at once,
    /// instead of once the agent has been OFFLINE past its lease. Audited.
    Reset { agent_id: String },
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
    /// One agent.
    #[command(subcommand)]
    Agent(AgentCmd),
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
    /// The group's PRIMARY replacement in progress: each fence target and
    /// its evidence, what it waits for, whether it may be aborted.
    Transition { group: String },
    /// End a transition that waits before anything was granted in it (the
    /// old PRIMARY stays; the group is paused until `resume`). Audited.
    TransitionAbort {
        group: String,
        /// The transition's epoch [default: the one in progress].
        #[arg(long)]
        expected_epoch: Option<u64>,
    },
    /// Vouch that INSTANCE, a fence target of the group's transition, does
    /// not serve: it counts as fenced for that transition until its agent
    /// speaks again. Refused for an agent heard within its lease unless
    /// --force. Audited.
    DeclareDead {
        group: String,
        instance: String,
        /// Even though its agent was heard within its lease.
        #[arg(long)]
        force: bool,
    },
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

/// spotctl's entry point: parse, run one command, print, exit with its code.
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

/// Unix milliseconds, for ages and `--older-than`.
fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
