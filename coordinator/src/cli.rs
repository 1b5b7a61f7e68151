//! The `spot-coordinator` command line: flags, subcommands, and what each runs.

use crate::config::{Config, ServeArgs};
use crate::store::{Ctx, Db, StoreError};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Spot optimizer coordinator: fleet state, PRIMARY arbitration, agent and
/// operator API. Options may also come from a TOML file (--config) and from
/// SPOT_COORDINATOR_* environment variables; flags win over the
/// environment, which wins over the file.
#[derive(Parser)]
#[command(name = "spot-coordinator", version, args_override_self = true)]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "SPOT_COORDINATOR_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Parse the command line, set up logging, run; a failure is logged and
/// printed, and the exit code says it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    spot_runtime::telemetry::init(cli.log_json);
    spot_runtime::telemetry::exit_code("spot-coordinator", run(cli.command))
}

#[derive(Subcommand)]
pub enum Command {
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
        since: Duration,
        /// Output file ("-" for stdout).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Validate(args) => {
            let c = Config::load(&args)?;
            println!(
                "configuration ok: listen {}, data dir {}",
                c.listen,
                c.data_dir.display()
            );
            Ok(())
        }
        Command::Serve(args) => serve(args),
        Command::Consolidate(args) => {
            let (db, config) = offline(&args)?;
            let cfg = config.consolidation();
            let run = db
                .write_now(|s| s.transact(Ctx::system(crate::now_ms()), |tx| tx.consolidate(&cfg)))?
                .value;
            println!("{}", serde_json::to_string_pretty(&run)?);
            Ok(())
        }
        Command::ExportTraining { since, out, serve } => {
            let (db, _) = offline(&serve)?;
            let since_ms = crate::now_ms() - i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
            let n = db.read_now(|s| {
                let mut w: Box<dyn std::io::Write> = if out.as_os_str() == "-" {
                    Box::new(std::io::stdout().lock())
                } else {
                    Box::new(std::io::BufWriter::new(
                        std::fs::File::create(&out).map_err(|e| {
                            StoreError::Invalid(format!("creating {}: {e}", out.display()))
                        })?,
                    ))
                };
                crate::export::write_csv(s, since_ms, &mut w)
            })?;
            eprintln!("exported {n} pool-hours");
            Ok(())
        }
    }
}

/// Open the store of a (possibly running) coordinator for a one-off job.
fn offline(args: &ServeArgs) -> anyhow::Result<(Db, Config)> {
    let config = Config::load(args)?;
    let path = config.data_dir.join("coordinator.db");
    let db = Db::open(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok((db, config))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let state = crate::prepare(config)?;
        crate::run(state, listener, spot_runtime::supervise::shutdown_signal()).await
    })
}
