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
pub mod decide;
pub mod executor;
pub mod export;
pub mod live;
pub mod metrics;
pub mod monitor;
pub mod pricing_job;
pub mod reconcile;
pub mod retention;
pub mod store;
pub mod tls;

use anyhow::Context;
use config::Config;
use live::Live;
use metrics::Metrics;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Db, Done, Read};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Shared by every handler and background task.
pub struct AppState {
    pub config: Config,
    pub db: Db,
    pub live: Live,
    pub metrics: Metrics,
    /// Monotonic time with the coordinator's own stalls taken out.
    pub clock: clock::MonoClock,
    pub enrollment_token_hash: String,
    pub admin_token_hash: String,
    pub started: Instant,
    /// Cancelled on shutdown: every task stops, long-polls answer at once.
    pub shutdown: CancellationToken,
    /// Something happened that may need a failover decision.
    pub reconcile: Notify,
    /// Commands were queued for the coordinator's own EC2 executor.
    pub executor_wake: Notify,
    /// New evidence (consolidated prices) for the decision engine.
    pub decide: Notify,
    /// The dashboard's login sessions.
    pub sessions: api::Sessions,
}

/// Unix milliseconds: what is wall time by nature (stored timestamps,
/// command deadlines, notice times). Timers use `clock::MonoClock`.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    ms.saturating_add(clock::test_offset_ms(ms))
}

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// 256 random bits, hex.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

pub use spot_common::error_chain;

impl AppState {
    /// Wake the long-polls of the agents a committed transaction queued
    /// commands for, and hand back its answer.
    pub fn woke<T>(&self, done: Done<T>) -> T {
        for agent in &done.wake {
            if agent == store::COORDINATOR_EXECUTOR {
                self.executor_wake.notify_one();
            } else {
                self.live.wake(agent);
            }
        }
        done.value
    }
}

/// Use the configured token, else the one kept in the data dir, else a new
/// one (printed once, then kept with mode 0600).
fn resolve_token(data_dir: &Path, name: &str, configured: Option<&str>) -> anyhow::Result<String> {
    if let Some(t) = configured {
        return Ok(t.to_owned());
    }
    let path = data_dir.join(format!("{name}.token"));
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = random_token();
    write_private(&path, &token).with_context(|| format!("writing {}", path.display()))?;
    // Printed on stdout once, on purpose: this is how the operator learns it.
    println!(
        "generated {name} token (kept in {}): {token}",
        path.display()
    );
    Ok(token)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Open the data dir and the store; everything `serve` needs before it
/// accepts connections.
pub fn prepare(config: Config) -> anyhow::Result<Arc<AppState>> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let enrollment = resolve_token(
        &config.data_dir,
        "enrollment",
        config.enrollment_token.as_deref(),
    )?;
    let admin = resolve_token(&config.data_dir, "admin", config.admin_token.as_deref())?;
    let db_path = config.data_dir.join("coordinator.db");
    let db = Db::open(&db_path).with_context(|| format!("opening {}", db_path.display()))?;
    // Not serving yet: reading on this thread blocks nobody.
    let agents = db.read_now(|s| s.active_agents())?;
    let clock = clock::MonoClock::new();
    Ok(Arc::new(AppState {
        live: Live::from_store(agents, clock.now()),
        clock,
        metrics: Metrics::new(),
        enrollment_token_hash: spot_common::token_hash(&enrollment),
        admin_token_hash: spot_common::token_hash(&admin),
        started: Instant::now(),
        shutdown: CancellationToken::new(),
        reconcile: Notify::new(),
        executor_wake: Notify::new(),
        decide: Notify::new(),
        sessions: api::Sessions::default(),
        config,
        db,
    }))
}

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
    write_private(
        &state.config.data_dir.join("listen.addr"),
        &addr.to_string(),
    )
    .context("writing listen.addr")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, data_dir = %state.config.data_dir.display(), "coordinator listening");

    let mut tasks = spot_runtime::supervise::Supervisor::new(state.shutdown.clone());
    tasks.spawn("clock", clock::run(Arc::clone(&state)));
    tasks.spawn("monitor", monitor::run(Arc::clone(&state)));
    tasks.spawn("reconciler", reconcile::run(Arc::clone(&state)));
    tasks.spawn("pricing job", pricing_job::run(Arc::clone(&state)));
    tasks.spawn("retention", retention::run(Arc::clone(&state)));
    tasks.spawn("decision engine", decide::run(Arc::clone(&state)));
    if state.config.ec2_executor {
        let ec2 = spot_runtime::ec2::Ec2::new(&state.config.ec2_region).await;
        tasks.spawn(
            "ec2 executor",
            executor::run(Arc::clone(&state), Arc::new(ec2)),
        );
    }
    let app = api::router(Arc::clone(&state));
    let stop = state.shutdown.clone();
    tasks.spawn("sighup", tls::reload_on_sighup(tls.clone(), stop.clone()));
    match tls {
        Some(tls) => tasks.spawn("https server", tls::serve(listener, app, tls, stop)),
        None => tasks.spawn("http server", async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("serving HTTP")
        }),
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tasks.wait(shutdown, state.config.shutdown_timeout).await?;
    tracing::info!("coordinator stopped");
    Ok(())
}
