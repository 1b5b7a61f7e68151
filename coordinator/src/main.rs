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
    /// Consolidate staged spot prices now (safe while `serve` runs).
    Consolidate(ServeArgs),
    /// Write the canonical hourly prices as CSV for model training.
    ExportTraining {
        /// How far back, e.g. 90d.
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        since: std::time::Duration,
        /// Output file ("-" for stdout).
        #[arg(long)]
        out: std::path::PathBuf,
        #[command(flatten)]
        serve: ServeArgs,
    },
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
        Command::Consolidate(args) => offline(args, |db, config| {
            let cfg = config.consolidation();
            let now = spot_coordinator::now_ms();
            let rt = tokio::runtime::Runtime::new()?;
            let run = rt.block_on(db.write(move |s| s.consolidate(&cfg, now)))?;
            println!("{}", serde_json::to_string_pretty(&run)?);
            Ok(())
        }),
        Command::ExportTraining { since, out, serve } => offline(serve, move |db, _| {
            let since_ms =
                spot_coordinator::now_ms() - i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
            let rt = tokio::runtime::Runtime::new()?;
            let n = rt.block_on(db.read(move |s| {
                let mut w: Box<dyn std::io::Write> = if out.as_os_str() == "-" {
                    Box::new(std::io::stdout().lock())
                } else {
                    Box::new(std::io::BufWriter::new(
                        std::fs::File::create(&out).map_err(|e| {
                            spot_coordinator::store::StoreError::Invalid(format!(
                                "creating {}: {e}",
                                out.display()
                            ))
                        })?,
                    ))
                };
                spot_coordinator::export::write_csv(s, since_ms, &mut w)
            }))?;
            eprintln!("exported {n} pool-hours");
            Ok(())
        }),
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

/// Open the store of a (possibly running) coordinator for a one-off job.
fn offline(
    args: ServeArgs,
    job: impl FnOnce(spot_coordinator::store::Db, Config) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let config = Config::load(&args)?;
    let path = config.data_dir.join("coordinator.db");
    let db = spot_coordinator::store::Db::open(&path)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    job(db, config)
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
