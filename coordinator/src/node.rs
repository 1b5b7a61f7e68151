//! One coordinator process: its listener, the leader term it may be
//! running, and (on PostgreSQL) the leadership loop that starts and ends
//! terms.
//!
//! * SQLite: one coordinator, one term from start to shutdown, as always.
//! * PostgreSQL: two or three coordinators share the store. Each loops as
//!   a follower, looking at the lease row every `LOOK` and taking it once
//!   it has run out on the database's clock (`store::engine::postgres::
//!   lease`). The winner's writes are fenced by its leader epoch from
//!   then on; it starts a term (the state and background tasks a
//!   restarted coordinator would have) and renews its lease every quarter
//!   of it. It stops acting at the last renewal's *send* time plus the
//!   lease less a margin, on its own monotonic clock, whether or not the
//!   renewal call ever returned; the fence refuses whatever it still
//!   tries to write after the lease ran out on the database's clock.
//!   A term ends when the lease is lost, the process stops (the lease is
//!   then released, so a follower takes over at its next look), or one of
//!   its tasks fails (the process then exits for systemd to restart it).
//!
//! The HTTP front dispatches every request to the running term's router,
//! or to the follower's (`api::follower`) when there is none.

use crate::api;
use crate::state::cluster::Leader;
use crate::state::{AppState, Shared};
use crate::store::Store;
use crate::store::engine::postgres::{Term as LeaseTerm, lease};
use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use spot_runtime::supervise::Supervisor;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How often a follower looks at the lease row: a dead leader is replaced
/// at most this long after its lease ran out.
const LOOK: Duration = Duration::from_millis(500);
/// Longest wait for one lease call before it counts as failed.
const LEASE_CALL: Duration = Duration::from_secs(3);

/// A running leader term: its state and its router.
struct Term {
    state: Arc<AppState>,
    router: Router,
}

pub struct Node {
    shared: Shared,
    term: RwLock<Option<Term>>,
    follower: Router,
    shutdown: CancellationToken,
}

impl Node {
    fn current(&self) -> Option<Router> {
        self.term
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|t| t.router.clone())
    }

    fn set_term(&self, term: Option<Term>) {
        *self.term.write().unwrap_or_else(|p| p.into_inner()) = term;
    }

    /// The running term's state (tests and benches).
    pub fn state(&self) -> Option<Arc<AppState>> {
        self.term
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|t| Arc::clone(&t.state))
    }
}

/// Every request: to the term's router while this coordinator leads,
/// else to the follower's.
async fn dispatch(node: Arc<Node>, req: Request) -> Response {
    let router = node.current().unwrap_or_else(|| node.follower.clone());
    match router.oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

/// Serve until `shutdown` resolves, then drain within
/// `config.shutdown_timeout`. Every task is supervised: one that ends or
/// panics before shutdown stops the coordinator with an error (a
/// coordinator that serves requests but no longer fails over must not
/// look healthy).
pub async fn run(
    config: crate::config::Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("reading bound address")?;
    // A bad certificate or key stops the start, before anything listens.
    let tls = match &config.tls {
        Some(cfg) => Some(Arc::new(crate::tls::Reloadable::new(cfg).context("TLS")?)),
        None => None,
    };
    let drain = config.shutdown_timeout;
    let peer_ca = config.peer_ca_bundle.clone();
    let mut shared =
        tokio::task::spawn_blocking(move || crate::state::open(config, addr)).await??;
    shared.connect_ec2().await;
    spot_runtime::fs::write_private(
        &shared.config.data_dir.join("listen.addr"),
        &addr.to_string(),
    )
    .context("writing listen.addr")?;
    let follower = api::follower::router(Arc::new(api::follower::Follower::new(
        Arc::clone(&shared.view),
        Arc::clone(&shared.metrics),
        shared.db.clone(),
        peer_ca,
    )?));
    let shutdown_token = CancellationToken::new();
    let mut supervisor = Supervisor::new(shutdown_token.clone());
    let node = Arc::new(Node {
        shared,
        term: RwLock::new(None),
        follower,
        shutdown: shutdown_token.clone(),
    });
    let view = &node.shared.view;
    tracing::info!(%addr, advertise = %view.advertise_url, store = %node.shared.config.store_url,
        data_dir = %node.shared.config.data_dir.display(), "coordinator listening");

    if node.shared.config.store_url.is_postgres() {
        supervisor.spawn("leadership", leadership(Arc::clone(&node)));
    } else {
        // Alone on its store: one term, under the process's supervisor.
        let state = node.shared.term(shutdown_token.clone())?;
        node.shared.metrics.leader.set(1);
        crate::tasks::spawn_all(&mut supervisor, &state);
        node.set_term(Some(Term {
            router: api::router(Arc::clone(&state)),
            state,
        }));
    }
    supervisor.spawn("watchdog", watchdog(Arc::clone(&node)));
    let front = {
        let node = Arc::clone(&node);
        Router::new().fallback(move |req: Request| dispatch(Arc::clone(&node), req))
    };
    let stop = shutdown_token.clone();
    supervisor.spawn(
        "sighup",
        crate::tls::reload_on_sighup(tls.clone(), stop.clone()),
    );
    match tls {
        Some(tls) => supervisor.spawn(
            "https server",
            crate::tls::serve(listener, front, tls, stop),
        ),
        None => supervisor.spawn("http server", async move {
            axum::serve(
                listener,
                front.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .context("serving HTTP")
        }),
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    supervisor.wait(shutdown, drain).await?;
    tracing::info!("coordinator stopped");
    Ok(())
}

/// Feed the systemd watchdog while whatever drives this process (the
/// leader's monitor, the follower's loop) shows signs of life.
async fn watchdog(node: Arc<Node>) -> anyhow::Result<()> {
    let Some(every) = sd_notify::watchdog_enabled() else {
        node.shutdown.cancelled().await;
        return Ok(());
    };
    let mut tick = tokio::time::interval(every / 3);
    loop {
        tokio::select! {
            () = node.shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if node.shared.view.since_progress() < every {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }
}

/// The lease connection: its own, outside the store's pools, so a renewal
/// never queues behind the store's work. Each call runs on the blocking
/// pool within `LEASE_CALL`; a call that does not come back in time
/// costs the connection (a new one is opened for the next).
struct LeaseConn {
    db: crate::store::Db,
    conn: Option<Store>,
}

impl LeaseConn {
    async fn call<R: Send + 'static>(
        &mut self,
        deadline: Instant,
        f: impl FnOnce(&Store) -> crate::store::Result<R> + Send + 'static,
    ) -> anyhow::Result<R> {
        let conn = self.conn.take();
        let db = self.db.clone();
        let job = tokio::task::spawn_blocking(move || {
            let conn = match conn {
                Some(c) => c,
                None => db.side_connection()?,
            };
            let out = f(&conn);
            Ok::<_, crate::store::StoreError>((conn, out))
        });
        let (conn, out) = tokio::time::timeout_at(deadline, job)
            .await
            .context("no answer from the store in time")???;
        self.conn = Some(conn);
        Ok(out?)
    }
}

/// The fence's count of refused writes into the metrics.
fn sync_refused(node: &Node) {
    if let Some(f) = node.shared.db.fence() {
        let (total, seen) = (f.refused(), node.shared.metrics.writes_refused.get());
        if total > seen {
            node.shared.metrics.writes_refused.inc_by(total - seen);
        }
    }
}

/// Why a term ended.
enum Ended {
    Shutdown,
    Lost(String),
    /// A task of the term failed: the process stops.
    Failed,
}

async fn leadership(node: Arc<Node>) -> anyhow::Result<()> {
    let cfg = &node.shared.config;
    let view = Arc::clone(&node.shared.view);
    let holder = format!("{}#{}", view.advertise_url, uuid::Uuid::new_v4().simple());
    let lease_ms = i64::try_from(cfg.leader_lease.as_millis()).unwrap_or(i64::MAX);
    let mut conn = LeaseConn {
        db: node.shared.db.clone(),
        conn: None,
    };
    let mut announced: Option<Leader> = None;
    loop {
        if node.shutdown.is_cancelled() {
            return Ok(());
        }
        // The loop runs (the database may not answer: a follower cut from
        // it stays up and takes over once it can).
        view.progress();
        let sent = Instant::now();
        let (h, url) = (holder.clone(), view.advertise_url.clone());
        let attempt = conn
            .call(sent + LEASE_CALL, move |s| {
                use crate::store::Read;
                let won = lease::acquire(s.conn(), &h, &url, lease_ms)?;
                let row = lease::read(s.conn())?;
                Ok((won, row))
            })
            .await;
        match attempt {
            Ok((Some(term), _)) => match lead(&node, &mut conn, term, sent, lease_ms).await? {
                Ended::Shutdown => return Ok(()),
                Ended::Failed => anyhow::bail!("a task of the leader term failed"),
                Ended::Lost(why) => {
                    tracing::warn!(reason = %why, "no longer the leader; following");
                    announced = None;
                }
            },
            Ok((None, row)) => {
                sync_refused(&node);
                let seen = Leader {
                    leading: false,
                    epoch: row.epoch,
                    url: row.url.filter(|_| row.live),
                };
                if announced.as_ref() != Some(&seen) {
                    tracing::info!(leader = ?seen.url, epoch = seen.epoch, "following");
                    announced = Some(seen.clone());
                }
                view.set(seen);
            }
            Err(e) => {
                // Cut from the store: no leader we could vouch for.
                tracing::warn!(error = %format!("{e:#}"), "looking at the leader lease");
                view.set(Leader::default());
                announced = None;
            }
        }
        tokio::select! {
            () = node.shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(LOOK) => {}
        }
    }
}

/// Run one leader term until it ends; the lease was won with a call sent
/// at `sent`.
async fn lead(
    node: &Arc<Node>,
    conn: &mut LeaseConn,
    term: LeaseTerm,
    sent: Instant,
    lease_ms: i64,
) -> anyhow::Result<Ended> {
    let shared = &node.shared;
    let view = &shared.view;
    let acting_for = shared.config.leader_acting_for();
    let renew_every = shared.config.leader_lease / 4;
    let mut acting_until = sent + acting_for;
    if let Some(f) = shared.db.fence() {
        f.set(Some(term.clone()));
    }
    view.act_until(acting_until.into_std());
    view.set(Leader {
        leading: true,
        epoch: term.epoch,
        url: Some(view.advertise_url.clone()),
    });
    shared.metrics.leader.set(1);
    shared.metrics.leader_changes.inc();
    tracing::info!(epoch = term.epoch, "leading: starting a term");

    let token = node.shutdown.child_token();
    let state = {
        let node = Arc::clone(node);
        let token = token.clone();
        tokio::task::spawn_blocking(move || node.shared.term(token)).await??
    };
    let mut tasks = Supervisor::new(token.clone());
    crate::tasks::spawn_all(&mut tasks, &state);
    node.set_term(Some(Term {
        router: api::router(Arc::clone(&state)),
        state,
    }));
    let drain = shared.config.shutdown_timeout;
    let mut tasks = tokio::spawn(tasks.wait(token.clone().cancelled_owned(), drain));

    let ended = loop {
        let next = (Instant::now() + renew_every).min(acting_until);
        tokio::select! {
            biased;
            () = node.shutdown.cancelled() => break Ended::Shutdown,
            () = token.cancelled() => break Ended::Failed,
            () = tokio::time::sleep_until(next) => {}
        }
        if Instant::now() >= acting_until {
            break Ended::Lost("the lease was not renewed in time".into());
        }
        let sent = Instant::now();
        let t = term.clone();
        match conn
            .call(acting_until.min(sent + LEASE_CALL), move |s| {
                use crate::store::Read;
                lease::renew(s.conn(), &t, lease_ms)
            })
            .await
        {
            Ok(true) => {
                acting_until = sent + acting_for;
                view.act_until(acting_until.into_std());
                view.progress();
                sync_refused(node);
            }
            Ok(false) => {
                break Ended::Lost("the lease ran out or another coordinator took over".into());
            }
            Err(e) => {
                view.progress();
                tracing::warn!(error = %format!("{e:#}"), "renewing the leader lease; retrying until it runs out");
            }
        }
    };

    // Step down: nothing acts for the term from here on.
    view.act_until(std::time::Instant::now());
    node.set_term(None);
    if let Some(f) = shared.db.fence() {
        f.set(None);
    }
    view.set(Leader {
        leading: false,
        epoch: term.epoch,
        url: None,
    });
    shared.metrics.leader.set(0);
    token.cancel();
    let stopped = match tokio::time::timeout(drain + Duration::from_secs(1), &mut tasks).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(e.into()),
        Err(_) => {
            tasks.abort();
            Ok(())
        }
    };
    if let Ended::Shutdown = ended {
        let t = term.clone();
        match conn
            .call(Instant::now() + LEASE_CALL, move |s| {
                use crate::store::Read;
                lease::release(s.conn(), &t)
            })
            .await
        {
            Ok(true) => tracing::info!(
                epoch = term.epoch,
                "lease released: a follower takes over now"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "releasing the leader lease"),
        }
    }
    match (stopped, ended) {
        (Err(e), _) => Err(e.context("the leader term's tasks")),
        (Ok(()), Ended::Failed) => Ok(Ended::Lost("a task ended early".into())),
        (Ok(()), ended) => Ok(ended),
    }
}
