//! spot-coordinator: holds the fleet's state, arbitrates PRIMARY per group,
//! serves the agent and operator APIs.
//!
//! `run` takes an already bound listener and a shutdown future, so tests
//! bind `127.0.0.1:0` and own shutdown.

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod ctl;
pub mod export;
pub mod grants;
pub mod identity;
pub mod live;
pub mod metrics;
pub mod state;
pub mod store;
pub mod tasks;
pub mod tls;

use anyhow::Context;
use state::AppState;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serve until `shutdown` resolves, then drain within
/// `config.shutdown_timeout`: long-polls answer, the last heartbeats are
/// persisted. Every task is supervised: one that ends or panics before
/// shutdown stops the coordinator with an error (a coordinator that serves
/// requests but no longer fails over must not look healthy).
pub async fn run(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("reading bound address")?;
    // A bad certificate or key stops the start, before anything listens.
    let tls = match &state.config.tls {
        Some(cfg) => Some(Arc::new(tls::Reloadable::new(cfg).context("TLS")?)),
        None => None,
    };
    state::write_private(
        &state.config.data_dir.join("listen.addr"),
        &addr.to_string(),
    )
    .context("writing listen.addr")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, data_dir = %state.config.data_dir.display(), "coordinator listening");

    let mut supervisor = spot_runtime::supervise::Supervisor::new(state.shutdown.clone());
    tasks::spawn_all(&mut supervisor, &state);
    let app = api::router(Arc::clone(&state));
    let stop = state.shutdown.clone();
    supervisor.spawn("sighup", tls::reload_on_sighup(tls.clone(), stop.clone()));
    match tls {
        Some(tls) => supervisor.spawn("https server", tls::serve(listener, app, tls, stop)),
        None => supervisor.spawn("http server", async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .context("serving HTTP")
        }),
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    supervisor
        .wait(shutdown, state.config.shutdown_timeout)
        .await?;
    tracing::info!("coordinator stopped");
    Ok(())
}
