//! A tiny external decision model (`spot-sim model`), the example of the
//! plug-in interface (docs/DECISIONS.md): `POST /decide` takes a
//! `DecisionInput` and answers a `DecisionOutput`. It moves the PRIMARY to
//! whichever pool is cheapest right now, and can be told to answer late
//! or wrongly, so that the end-to-end tests see the coordinator fall back.

use anyhow::Result;
use axum::Json;
use axum::extract::State;
use axum::routing::post;
use spot_common::decision::{Action, DecisionInput, DecisionOutput, ModelId};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Answer {
    /// SWITCH to the cheapest pool, else STAY.
    Cheapest,
    /// A SWITCH to a pool outside the group (refused by validation).
    Outside,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    #[arg(long, default_value = "127.0.0.1:9300")]
    pub listen: SocketAddr,
    /// Answer this late.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    #[arg(long, value_enum, default_value = "cheapest")]
    pub answer: Answer,
}

pub const NAME: &str = "example-cheapest";

fn decide(input: &DecisionInput, answer: Answer) -> DecisionOutput {
    let out = |action, reason: String| DecisionOutput {
        action,
        confidence: 0.7,
        reason,
        model: ModelId {
            name: NAME.into(),
            version: "1".into(),
        },
    };
    if answer == Answer::Outside {
        let pool = spot_common::PoolKey::new("x1.nowhere", "mars-1a");
        return out(Action::Switch { pool }, "a pool that does not exist".into());
    }
    let Some(primary) = &input.primary else {
        return out(Action::NoAction, "no PRIMARY".into());
    };
    let cheapest = input
        .pools
        .iter()
        .filter_map(|p| p.price().map(|x| (x, p)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    match cheapest {
        Some((price, p)) if p.pool != primary.pool => out(
            Action::Switch {
                pool: p.pool.clone(),
            },
            format!("{} is the cheapest pool at ${price:.4}/h", p.pool),
        ),
        Some(_) => out(Action::Stay, "already in the cheapest pool".into()),
        None => out(Action::NoAction, "no prices".into()),
    }
}

async fn handle(
    State(args): State<ModelArgs>,
    Json(input): Json<DecisionInput>,
) -> Json<DecisionOutput> {
    if let Some(d) = args.delay {
        tokio::time::sleep(d).await;
    }
    Json(decide(&input, args.answer))
}

/// Serve the model in this process; returns its `/decide` URL.
pub async fn start(args: ModelArgs) -> Result<String> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let url = format!("http://{}/decide", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/decide", post(handle))
        .with_state(args);
    crate::serve(listener, app);
    Ok(url)
}

/// `spot-sim model`: serve until interrupted.
pub async fn run(args: ModelArgs) -> Result<()> {
    let url = start(args).await?;
    println!("example model listening: decision_model_url = \"{url}\"");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
