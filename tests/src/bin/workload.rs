//! spot-workload: the fake workload of one simulated instance. `serve`
//! runs as its own process (it outlives a frozen or killed agent, as a real
//! database does) and serves only between a `start` and a `stop` from the
//! agent's hooks, appending each change to the fleet's ledger. `ctl` is
//! what the hooks and the health check call.

use clap::{Parser, Subcommand};
use spot_tests::ledger::{Line, append, monotonic_ns};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

#[derive(Parser)]
#[command(name = "spot-workload")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the workload: idle until told to start serving.
    Serve {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        ledger: PathBuf,
        #[arg(long)]
        instance: String,
        #[arg(long)]
        group: String,
        /// While this file exists, `health` answers unhealthy.
        #[arg(long)]
        unhealthy_file: Option<PathBuf>,
    },
    /// Send one command: `start EPOCH`, `stop`, `health`, `status`.
    Ctl {
        #[arg(long)]
        socket: PathBuf,
        words: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                match cli.command {
                    Cmd::Serve {
                        socket,
                        ledger,
                        instance,
                        group,
                        unhealthy_file,
                    } => serve(socket, ledger, instance, group, unhealthy_file).await,
                    Cmd::Ctl { socket, words } => ctl(socket, words.join(" ")).await,
                }
            })
        });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spot-workload: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn ctl(socket: PathBuf, line: String) -> anyhow::Result<()> {
    let mut s = UnixStream::connect(&socket).await?;
    s.write_all(format!("{line}\n").as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).await?;
    let answer = answer.trim();
    println!("{answer}");
    anyhow::ensure!(
        answer == "ok" || answer.starts_with("serving") || answer == "idle",
        "{answer}"
    );
    Ok(())
}

async fn serve(
    socket: PathBuf,
    ledger: PathBuf,
    instance: String,
    group: String,
    unhealthy_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    // Serving at this epoch, or idle.
    let mut serving: Option<u64> = None;
    let record = |event: &str, epoch: u64| {
        append(
            &ledger,
            &Line {
                t_ns: monotonic_ns(),
                group: group.clone(),
                instance: instance.clone(),
                event: event.into(),
                epoch,
            },
        )
    };
    loop {
        let (stream, _) = listener.accept().await?;
        let (r, mut w) = stream.into_split();
        let mut line = String::new();
        BufReader::new(r).read_line(&mut line).await?;
        let mut words = line.split_whitespace();
        let answer = match (words.next(), words.next()) {
            (Some("start"), Some(e)) => match e.parse::<u64>() {
                Ok(epoch) => {
                    if serving != Some(epoch) {
                        record("start", epoch)?;
                        serving = Some(epoch);
                    }
                    "ok".to_owned()
                }
                Err(_) => format!("bad epoch {e:?}"),
            },
            (Some("stop"), _) => {
                if serving.take().is_some() {
                    record("stop", 0)?;
                }
                "ok".to_owned()
            }
            (Some("health"), _) => {
                if unhealthy_file.as_ref().is_some_and(|f| f.exists()) {
                    "unhealthy".to_owned()
                } else {
                    "ok".to_owned()
                }
            }
            (Some("status"), _) => match serving {
                Some(e) => format!("serving {e}"),
                None => "idle".to_owned(),
            },
            _ => format!("unknown command {:?}", line.trim()),
        };
        let _ = w.write_all(format!("{answer}\n").as_bytes()).await;
    }
}
