use clap::Parser;
use spot_coordinator::cli::Command;
use std::process::ExitCode;

/// Spot optimizer coordinator: fleet state, PRIMARY arbitration, agent and
/// operator API. Options may also come from a TOML file (--config) and from
/// SPOT_COORDINATOR_* environment variables; flags win over the
/// environment, which wins over the file.
#[derive(Parser)]
#[command(name = "spot-coordinator", version)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "SPOT_COORDINATOR_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    spot_runtime::telemetry::init(cli.log_json);
    match spot_coordinator::cli::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("spot-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
