use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// spot-sim: drives the real spot-coordinator and spot-agent binaries on a
/// simulated fleet (IMDS and EC2 simulators), for demos, scenarios and
/// benchmarks. Everything listens on 127.0.0.1 only.
#[derive(Parser)]
#[command(name = "spot-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A simulated fleet with a live coordinator: a few groups, an
    /// interruption every so often, the API on 127.0.0.1 to watch.
    Demo(spot_tests::failover_bench::Demo),
    /// Run a failover or fencing flow on the simulated fleet and print its
    /// verdict and timings (judged by what the workloads served): one of
    /// rebalance, warm-failover, cold-failover, late-replacement, failed-promotion, switch,
    /// secondary-eni, switch-failure,
    /// maintenance, auto-switch, shadow-decisions, external-model, model-fallback, ab-models,
    /// manual-replica, zombie-cleanup, terminated, coordinator-crash, partition,
    /// slow-promote, frozen-agent, frozen-coordinator, coordinator-restart,
    /// restored-store, restored-store-partitioned, lost-primary, journal-failure, shared-identity,
    /// forger, clock-step, data-volume; with three coordinators on PostgreSQL: follower-routes,
    /// leader-kill, leader-freeze, leader-change-interruption, store-restart; or all.
    Scenario {
        name: String,
        /// One JSON object per scenario instead of text.
        #[arg(long)]
        json: bool,
        /// The coordinators' store: sqlite (one coordinator) or postgres
        /// (a PostgreSQL server of the fleet's own; needs the server
        /// programs, see README).
        #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
        store: String,
        /// Coordinators sharing the store (postgres only).
        #[arg(long, default_value_t = 1)]
        coordinators: usize,
    },
    /// Faults at random (agents, coordinator, network, EC2, hooks, health
    /// checks, clocks) on a simulated fleet, judged by what the workloads
    /// served: overlaps, double executions, epochs going back, stuck
    /// groups and commands, leaked instances, unavailability per fault.
    Nemesis(spot_tests::nemesis::NemesisArgs),
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(Bench),
    /// An example external decision model (POST /decide), to try the
    /// coordinator's `decision_model_url` with.
    Model(spot_tests::model_server::ModelArgs),
}

#[derive(Subcommand)]
enum Bench {
    /// Many simulated agents heartbeating one real coordinator.
    Heartbeat(spot_tests::bench::HeartbeatBench),
    /// Notice -> journal latency of a real agent, and its idle memory and CPU.
    Agent(spot_tests::agent_bench::AgentBench),
    /// Notice -> new PRIMARY confirmed, with and without a warm REPLICA.
    Failover(spot_tests::failover_bench::FailoverBench),
    /// Price consolidation throughput of the coordinator's store.
    Consolidate(spot_tests::pricing_bench::ConsolidateBench),
    /// Database size of the coordinator's store over months of a simulated
    /// fleet's writes, with retention pruning on its schedule.
    Retention(spot_tests::retention_bench::RetentionBench),
    /// The decision engine: the built-in model per group, and a whole
    /// pass over 1,000 groups in the coordinator's store.
    Decisions(spot_tests::decision_bench::DecisionBench),
    /// A seeded price-and-interruption history replayed through the
    /// built-in model, always-stay and always-cheapest.
    Backtest(spot_tests::backtest_bench::BacktestBench),
    /// Three coordinators on PostgreSQL: the leader killed -> a write
    /// accepted again; an interruption as the leader dies -> new PRIMARY.
    Leader(spot_tests::leader_bench::LeaderBench),
    /// Data volumes with realistic EBS delays: a lone PRIMARY interrupted
    /// (its replacement serving with the volume before the reclaim), a
    /// switch's downtime step by step.
    Volume(spot_tests::volume_bench::VolumeBench),
    /// The dashboard in headless Chromium: first paint with 1,000 groups,
    /// refresh cost, store change -> visible on the page.
    Ui(spot_tests::ui_bench::UiBench),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let faults = matches!(cli.command, Command::Nemesis(_));
    if let Err(e) = spot_tests::harness::ensure_binaries_with(faults) {
        eprintln!("spot-sim: {e:#}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spot-sim: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Bench(Bench::Heartbeat(args)) => spot_tests::bench::heartbeat(args).await,
            Command::Bench(Bench::Agent(args)) => spot_tests::agent_bench::run(args).await,
            Command::Bench(Bench::Failover(args)) => {
                spot_tests::failover_bench::failover(args).await
            }
            Command::Bench(Bench::Consolidate(args)) => spot_tests::pricing_bench::run(args).await,
            Command::Bench(Bench::Retention(args)) => spot_tests::retention_bench::run(args).await,
            Command::Bench(Bench::Decisions(args)) => spot_tests::decision_bench::run(args).await,
            Command::Bench(Bench::Backtest(args)) => spot_tests::backtest_bench::run(args).await,
            Command::Bench(Bench::Ui(args)) => spot_tests::ui_bench::run(args).await,
            Command::Bench(Bench::Leader(args)) => spot_tests::leader_bench::run(args).await,
            Command::Bench(Bench::Volume(args)) => spot_tests::volume_bench::run(args).await,
            Command::Demo(args) => spot_tests::failover_bench::demo(args).await,
            Command::Model(args) => spot_tests::model_server::run(args).await,
            Command::Nemesis(args) => spot_tests::nemesis::main(args).await,
            Command::Scenario {
                name,
                json,
                store,
                coordinators,
            } => {
                let store = spot_tests::fleet::StoreChoice {
                    postgres: store == "postgres",
                    coordinators,
                };
                scenarios(&name, json, store).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spot-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Run the named scenario (or all), print verdicts; fail if any failed.
async fn scenarios(
    name: &str,
    json: bool,
    store: spot_tests::fleet::StoreChoice,
) -> anyhow::Result<()> {
    use spot_tests::scenarios::{SQLITE_ONLY, names, run_on};
    anyhow::ensure!(
        store.postgres || store.coordinators <= 1,
        "several coordinators share a PostgreSQL store: add --store postgres"
    );
    let names: Vec<&str> = if name == "all" {
        names()
            .into_iter()
            .filter(|n| !(store.postgres && SQLITE_ONLY.contains(n)))
            .collect()
    } else {
        vec![name]
    };
    let mut failed = 0;
    for n in names {
        let t = std::time::Instant::now();
        let result = run_on(n, store).await;
        let secs = t.elapsed().as_secs_f64();
        match &result {
            Ok(timings) if json => println!(
                "{}",
                serde_json::json!({"scenario": n, "verdict": "pass", "duration_s": secs,
                    "timings": timings.iter().map(|(k, v)| (k.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>()})
            ),
            Ok(timings) => {
                let t: Vec<String> = timings.iter().map(|(k, v)| format!("{k}={v:.2}")).collect();
                println!("PASS {n} ({secs:.1} s): {}", t.join(", "));
            }
            Err(e) if json => println!(
                "{}",
                serde_json::json!({"scenario": n, "verdict": "fail", "duration_s": secs, "error": format!("{e:#}")})
            ),
            Err(e) => println!("FAIL {n} ({secs:.1} s): {e:#}"),
        }
        failed += usize::from(result.is_err());
    }
    anyhow::ensure!(failed == 0, "{failed} scenario(s) failed");
    Ok(())
}
