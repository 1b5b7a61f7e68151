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
    /// Bring the store (--store-url) to this version's schema and exit.
    /// `serve` migrates at start too; this does it ahead, once, for a
    /// rolling upgrade of several coordinators (older coordinators keep
    /// working on a schema a newer one extended).
    Migrate(ServeArgs),
    /// Move the store between engines.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Named operator tokens: create (printed once), list, revoke. Safe
    /// while `serve` runs: a new token works at once, a revoked one stops
    /// at once.
    #[command(subcommand)]
    Token(TokenCmd),
    /// The key that signs every promote's grant (`<data_dir>/grant.keys`,
    /// never in the store): a PRIMARY a restored store does not know is
    /// adopted only with a grant made under one of these keys.
    #[command(subcommand)]
    GrantKey(GrantKeyCmd),
    /// Replay the stored prices and interruption history of every group
    /// (or one) through the built-in model, against always staying and
    /// always moving to the cheapest pool: what the optimizer would have
    /// cost, how often it would have switched, how many interruptions it
    /// would have hit. Safe while `serve` runs; changes nothing.
    Backtest {
        /// How far back, e.g. 90d.
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        since: Duration,
        /// One group only.
        #[arg(long)]
        group: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Write training data: the canonical hourly prices (`--rows
    /// prices`, CSV), or per group and hour the features, the decision
    /// taken and the outcome labels (`--rows group-hours`, CSV or JSON
    /// lines; columns in docs/DECISIONS.md).
    ExportTraining {
        /// How far back, e.g. 90d.
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        since: Duration,
        /// Output file ("-" for stdout).
        #[arg(long)]
        out: PathBuf,
        /// What one row is.
        #[arg(long, value_enum, default_value = "prices")]
        rows: ExportRows,
        /// csv or jsonl (group-hours only).
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

fn backtest(
    serve: &ServeArgs,
    since: Duration,
    group: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    use crate::store::Read;
    use spot_common::decision::backtest::{Downtime, compare};
    let (db, config) = offline(serve)?;
    let now = crate::state::now_ms();
    let since_ms = now - i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
    let groups = match group {
        Some(g) => vec![g],
        None => db.read_now(|s| s.group_names())?,
    };
    let params = config.decisions;
    let model = |i: &_| spot_common::decision::builtin::decide(i, &params);
    let mut report = Vec::new();
    for g in &groups {
        let h = db.read_now(|s| s.backtest_history(g, since_ms, now))?;
        if h.pools.len() < 2 {
            continue;
        }
        report.push((
            g.clone(),
            compare(&h, "builtin", &model, &Downtime::default()),
        ));
    }
    if json {
        let v: Vec<_> = report
            .iter()
            .map(|(g, o)| serde_json::json!({"group": g, "outcomes": o}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if report.is_empty() {
        println!("no group with two or more pools to compare");
    }
    for (g, outcomes) in &report {
        println!("group {g}:");
        println!(
            "  {:<16} {:>10} {:>12} {:>9} {:>8} {:>12}",
            "policy", "cost $", "$/inst-hour", "switches", "max/24h", "interrupted"
        );
        for o in outcomes {
            println!(
                "  {:<16} {:>10.2} {:>12.5} {:>9} {:>8} {:>12}",
                o.policy,
                o.cost,
                o.cost / f64::from(o.hours.max(1)),
                o.switches,
                o.max_switches_per_day,
                o.interruptions_hit
            );
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportRows {
    /// One row per pool-hour of the canonical price series.
    Prices,
    /// One row per group-hour: features, decision, labels.
    GroupHours,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token for a person or a system (`--role`); the audit log
    /// records its name on every change made with it. Or, with `--enroll
    /// --group NAME`, an enrollment token for one group's user data: an
    /// agent registering with it can join that group only.
    Create {
        /// 1-64 characters of [A-Za-z0-9._-], e.g. ops-oncall.
        #[arg(long)]
        name: String,
        /// admin (everything) or viewer (read only).
        #[arg(long, required_unless_present = "enroll", conflicts_with = "enroll")]
        role: Option<spot_common::TokenRole>,
        /// An enrollment token scoped to `--group`, not an operator token.
        #[arg(long, requires = "group")]
        enroll: bool,
        /// The one group an `--enroll` token registers agents in.
        #[arg(long, requires = "enroll")]
        group: Option<String>,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// The named tokens, their roles, and which are revoked.
    List {
        /// The group-scoped enrollment tokens instead.
        #[arg(long)]
        enroll: bool,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Revoke a token of either kind: it stops working at once.
    Revoke {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Copy every row of one store into another, empty one, ids kept, in
    /// one transaction on the target (a failed copy leaves it empty), each
    /// table's row count checked. Stop the coordinators first. E.g.
    /// `store copy --from sqlite:/var/lib/spot-coordinator/coordinator.db
    /// --to 'postgres://spot@db/spot?sslmode=verify-full&sslrootcert=/etc/ssl/rds.pem'`.
    Copy {
        /// The store to read.
        #[arg(long)]
        from: crate::store::StoreUrl,
        /// The empty store to fill (migrated to the latest schema first).
        #[arg(long)]
        to: crate::store::StoreUrl,
        /// The per-table counts as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn store_cmd(cmd: StoreCmd) -> anyhow::Result<()> {
    match cmd {
        StoreCmd::Copy { from, to, json } => {
            if from == to {
                anyhow::bail!("--from and --to are the same store");
            }
            let src = Db::open_url(&from, false).with_context(|| format!("opening {from}"))?;
            let dst = Db::open_url(&to, false).with_context(|| format!("opening {to}"))?;
            let report = src.read_now(|s| dst.write_now(|d| d.copy_from(s)))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for c in &report {
                    println!("{:<20} {:>10} rows", c.table, c.rows);
                }
                let total: u64 = report.iter().map(|c| c.rows).sum();
                println!("copied {total} rows from {from} to {to}");
            }
            Ok(())
        }
    }
}

#[derive(Subcommand)]
pub enum GrantKeyCmd {
    /// Put a new signing key first and keep the previous ones (grants made
    /// under them still verify; the oldest beyond three is dropped). The
    /// running coordinator signs with the new key from its next start.
    Rotate {
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// The ids of the keys held, the signing one first.
    List {
        #[command(flatten)]
        serve: ServeArgs,
    },
}

fn grant_key(cmd: GrantKeyCmd) -> anyhow::Result<()> {
    use crate::grants::GrantKeys;
    match cmd {
        GrantKeyCmd::Rotate { serve } => {
            let config = Config::load(&serve)?;
            let id = GrantKeys::rotate(&config.data_dir)?;
            eprintln!(
                "new grant key {id} signs from the coordinator's next start; the previous keys still verify"
            );
            println!("{id}");
        }
        GrantKeyCmd::List { serve } => {
            let config = Config::load(&serve)?;
            for id in GrantKeys::load_or_create(&config.data_dir)?.ids() {
                println!("{id}");
            }
        }
    }
    Ok(())
}

fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    use crate::store::Read;
    match cmd {
        TokenCmd::Create {
            name,
            role,
            enroll: _,
            group,
            serve,
        } => {
            let (db, _) = offline(&serve)?;
            let token = crate::state::random_token();
            let hash = spot_common::token_hash(&token);
            let ctx = Ctx::new(crate::state::now_ms(), spot_common::Actor::Operator);
            // clap guarantees one of the two: a role, or --enroll --group.
            match (role, group) {
                (Some(role), _) => {
                    db.write_now(|s| s.transact(ctx, |tx| tx.create_token(&name, role, &hash)))?;
                    eprintln!("created {role} token {name:?}; it is shown once, keep it now:");
                }
                (None, Some(group)) => {
                    db.write_now(|s| {
                        s.transact(ctx, |tx| tx.create_enroll_token(&name, &group, &hash))
                    })?;
                    eprintln!(
                        "created enrollment token {name:?} for group {group:?}; it is shown once, keep it now:"
                    );
                }
                (None, None) => anyhow::bail!("give --role, or --enroll --group NAME"),
            }
            println!("{token}");
        }
        TokenCmd::List { enroll, serve } => {
            let (db, _) = offline(&serve)?;
            let out = if enroll {
                serde_json::to_string_pretty(&db.read_now(|s| s.enroll_tokens())?)?
            } else {
                serde_json::to_string_pretty(&db.read_now(|s| s.tokens())?)?
            };
            println!("{out}");
        }
        TokenCmd::Revoke { name, serve } => {
            let (db, _) = offline(&serve)?;
            let t = db.write_now(|s| {
                s.transact(
                    Ctx::new(crate::state::now_ms(), spot_common::Actor::Operator),
                    |tx| tx.revoke_token(&name),
                )
            })?;
            eprintln!("revoked token {:?}", t.value["name"]);
        }
    }
    Ok(())
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Token(cmd) => token(cmd),
        Command::Store(cmd) => store_cmd(cmd),
        Command::Migrate(args) => {
            use crate::store::Read;
            let (db, config) = offline(&args)?;
            let version = db.read_now(|s| s.schema_version())?;
            println!("{} is at schema version {version}", config.store_url);
            Ok(())
        }
        Command::GrantKey(cmd) => grant_key(cmd),
        Command::Backtest {
            since,
            group,
            json,
            serve,
        } => backtest(&serve, since, group, json),
        Command::Validate(args) => {
            let c = Config::load(&args)?;
            let identity = crate::identity::IdentityCheck::load(&c)?;
            println!(
                "configuration ok: listen {}, data dir {}, store {}",
                c.listen,
                c.data_dir.display(),
                c.store_url
            );
            if c.store_url.is_postgres() {
                println!(
                    "leader lease {} (this coordinator stops acting {} after its last renewal);                      every coordinator of the store needs the same admin and enrollment tokens and grant.keys",
                    humantime::format_duration(c.leader_lease),
                    humantime::format_duration(c.leader_acting_for())
                );
            }
            match identity.mode() {
                crate::config::IdentityMode::Verify => println!(
                    "identity: verify ({} signing certificate(s) in {})",
                    identity.signers(),
                    c.identity_ca
                        .as_deref()
                        .unwrap_or(std::path::Path::new("?"))
                        .display()
                ),
                crate::config::IdentityMode::Trust => println!(
                    "warning: identity = \"trust\": registrations are not verified; any holder \
                     of an enrollment token may register as any instance"
                ),
            }
            Ok(())
        }
        Command::Serve(args) => serve(args),
        Command::Consolidate(args) => {
            let (db, config) = offline(&args)?;
            let cfg = config.consolidation();
            let run = db
                .write_now(|s| {
                    s.transact(Ctx::system(crate::state::now_ms()), |tx| {
                        tx.consolidate(&cfg)
                    })
                })?
                .value;
            println!("{}", serde_json::to_string_pretty(&run)?);
            Ok(())
        }
        Command::ExportTraining {
            since,
            out,
            rows,
            format,
            serve,
        } => {
            if rows == ExportRows::Prices && format == ExportFormat::Jsonl {
                anyhow::bail!("--rows prices is written as CSV only; use --format csv");
            }
            let (db, _) = offline(&serve)?;
            let since_ms =
                crate::state::now_ms() - i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
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
                match rows {
                    ExportRows::Prices => crate::export::write_csv(s, since_ms, &mut w),
                    ExportRows::GroupHours => crate::export::write_group_hours(
                        s,
                        since_ms,
                        crate::state::now_ms(),
                        format == ExportFormat::Jsonl,
                        &mut w,
                    ),
                }
            })?;
            let what = match rows {
                ExportRows::Prices => "pool-hours",
                ExportRows::GroupHours => "group-hours",
            };
            eprintln!("exported {n} {what}");
            Ok(())
        }
    }
}

/// Open the store of a (possibly running) coordinator for a one-off job.
fn offline(args: &ServeArgs) -> anyhow::Result<(Db, Config)> {
    let config = Config::load(args)?;
    let db = Db::open_url(&config.store_url, false)
        .with_context(|| format!("opening the store {}", config.store_url))?;
    Ok((db, config))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        crate::run(config, listener, spot_runtime::supervise::shutdown_signal()).await
    })
}
