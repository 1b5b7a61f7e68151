use clap::{Parser, Subcommand};
use spot_agent::config::{Config, RunArgs};
use std::path::PathBuf;
use std::process::ExitCode;

/// Spot optimizer edge agent: watches instance metadata for spot
/// interruption and rebalance notices, journals them, and executes the
/// coordinator's commands exactly once. Every config key is also a flag and
/// a SPOT_AGENT_* environment variable (flag > environment > file > default).
#[derive(Parser)]
#[command(name = "spot-agent", version)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "SPOT_AGENT_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    spot_runtime::telemetry::init(cli.log_json);
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let result = match cli.command {
        Command::Validate(args) => Config::load(&args)
            .map(|c| {
                println!(
                    "configuration ok: coordinator {}, state dir {}",
                    c.coordinator_url,
                    c.state_dir.display()
                )
            })
            .map_err(anyhow::Error::from),
        Command::Status { state_dir, json } => spot_agent::status::read(&state_dir).and_then(|s| {
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", spot_agent::status::render_text(&s));
            }
            Ok(())
        }),
        Command::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spot-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = Config::load(&args)?;
    // Two worker threads: the agent is small and must stay under 0.5 % CPU idle.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(spot_agent::run(config, shutdown_signal()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
