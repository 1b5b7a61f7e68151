use clap::{Parser, Subcommand};
use spot_coordinator::config::{Config, ServeArgs};
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

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator.
    Serve(ServeArgs),
    /// Check the configuration and exit (for systemd ExecStartPre=).
    Validate(ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    spot_coordinator::telemetry::init(cli.log_json);
    let result = match cli.command {
        Command::Validate(args) => Config::load(&args)
            .map(|c| {
                println!(
                    "configuration ok: listen {}, data dir {}",
                    c.listen,
                    c.data_dir.display()
                );
            })
            .map_err(anyhow::Error::from),
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("spot-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding {}: {e}", config.listen))?;
        let state = spot_coordinator::prepare(config)?;
        spot_coordinator::run(state, listener, spot_coordinator::shutdown_signal()).await
    })
}
