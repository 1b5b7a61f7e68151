//! The `spot-agent` subcommands: what `main` dispatches to.

use crate::config::{Config, RunArgs};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent (as the systemd service does).
    Run(RunArgs),
    /// Check the configuration and exit non-zero with a message on any problem.
    Validate(RunArgs),
    /// Print identity, coordinator link, backlog and notices from the journal.
    Status {
        /// Directory of the journal.
        #[arg(
            long,
            env = "SPOT_AGENT_STATE_DIR",
            default_value = "/var/lib/spot-agent"
        )]
        state_dir: PathBuf,
        /// Stable JSON instead of text.
        #[arg(long)]
        json: bool,
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
        Command::Status { state_dir, json } => {
            let s = crate::status::read(&state_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", crate::status::render_text(&s));
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
