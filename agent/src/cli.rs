//! The `spot-agent` command line: flags, subcommands, and what each runs.

use crate::config::{Config, RunArgs};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Spot optimizer edge agent: watches instance metadata for spot
/// interruption and rebalance notices, journals them, and executes the
/// coordinator's commands exactly once. Every config key is also a flag and
/// a SPOT_AGENT_* environment variable (flag > environment > file > default).
#[derive(Parser)]
#[command(name = "spot-agent", version, args_override_self = true)]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "SPOT_AGENT_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Parse the command line, set up logging, run; a failure is logged and
/// printed, and the exit code says it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    spot_runtime::telemetry::init(cli.log_json);
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    match run(cli.command) {
        Err(e) if e.downcast_ref::<crate::Decommissioned>().is_some() => {
            tracing::error!("{e}");
            eprintln!("spot-agent: {e}");
            ExitCode::from(crate::Decommissioned::EXIT_CODE)
        }
        r => spot_runtime::telemetry::exit_code("spot-agent", r),
    }
}

/// Where the journal is, for the commands that read it offline.
#[derive(clap::Args)]
pub struct JournalDir {
    /// Directory of the journal.
    #[arg(
        long,
        env = "SPOT_AGENT_STATE_DIR",
        default_value = "/var/lib/spot-agent"
    )]
    state_dir: PathBuf,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent (as the systemd service does).
    Run(RunArgs),
    /// Check the configuration and exit non-zero with a message on any problem.
    Validate(RunArgs),
    /// Print identity, coordinator link, backlog and notices from the journal.
    Status {
        #[command(flatten)]
        journal: JournalDir,
        /// Stable JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Give this agent a fresh identity: its journal is set aside (kept,
    /// renamed journal.db.reset-<ms>) and the next start registers anew
    /// with a new agent id. Stop the service first. Refused while the
    /// journal says this instance is PRIMARY, unless --force.
    Reset {
        #[command(flatten)]
        journal: JournalDir,
        /// Reset a PRIMARY's journal too.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Validate(args) => {
            let c = Config::load(&args)?;
            println!(
                "configuration ok: coordinator {}, state dir {}",
                c.coordinator_url,
                c.state_dir.display()
            );
            Ok(())
        }
        Command::Status {
            journal: JournalDir { state_dir },
            json,
        } => {
            let s = crate::status::read(&state_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", crate::status::render_text(&s));
            }
            Ok(())
        }
        Command::Reset {
            journal: JournalDir { state_dir },
            force,
        } => {
            match crate::reset(&state_dir, force)? {
                Some(kept) => println!(
                    "journal set aside as {}; the next start registers a fresh identity",
                    kept.display()
                ),
                None => println!("no journal in {}: nothing to reset", state_dir.display()),
            }
            Ok(())
        }
        Command::Run(args) => serve(args),
    }
}

fn serve(args: RunArgs) -> anyhow::Result<()> {
    let config = Config::load(&args)?;
    // Two worker threads: the agent is small and must stay under 0.5 % CPU idle.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(crate::run(
        config,
        spot_runtime::supervise::shutdown_signal(),
    ))
}
