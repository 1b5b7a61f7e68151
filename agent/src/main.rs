use clap::Parser;
use spot_agent::cli::Command;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    spot_runtime::telemetry::init(cli.log_json);
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    match spot_agent::cli::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("spot-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
