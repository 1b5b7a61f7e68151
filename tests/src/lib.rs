//! End-to-end home: helpers that start the real binaries on loopback ports
//! chosen by the OS, and the simulators they talk to.

pub mod agent_bench;
pub mod backtest_bench;
pub mod bench;
pub mod browser;
pub mod decision_bench;
pub mod ec2_sim;
pub mod failover_bench;
pub mod fleet;
pub mod harness;
pub mod identity_sign;
pub mod imds_sim;
pub mod leader_bench;
pub mod ledger;
pub mod model_server;
pub mod nemesis;
pub mod pricing_bench;
pub mod proxy;
pub mod retention_bench;
pub mod scenarios;
pub mod ui_bench;
pub mod volume_bench;

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A listener on 127.0.0.1, port chosen by the OS.
pub async fn loopback() -> anyhow::Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serve `app` on `listener` until the runtime stops.
pub fn serve(listener: tokio::net::TcpListener, app: axum::Router) {
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
}

/// Lock a mutex shared with server tasks; a panicked holder (a failed
/// assertion in a handler) does not poison the test's view of the state.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
