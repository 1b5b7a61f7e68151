//! Coordinators sharing one PostgreSQL: the server (owned, so a fault may
//! restart it), and one proxy per coordinator between it and the
//! database (cut = that coordinator cut from PostgreSQL; one-way = a
//! half-open connection).

use crate::proxy::Proxy;
use anyhow::{Context, Result};
use spot_runtime::pgtest::PgServer;
use std::sync::{Arc, Mutex};

pub struct PgSide {
    server: Arc<Mutex<PgServer>>,
    port: u16,
    /// `links[i]`: coordinator i's path to the database.
    pub links: Vec<Proxy>,
}

/// The database every coordinator of a fleet uses.
const DB: &str = "spot";

impl PgSide {
    pub async fn start(coordinators: usize) -> Result<PgSide> {
        let server = tokio::task::spawn_blocking(PgServer::start)
            .await?
            .context("starting PostgreSQL")?;
        server.psql("postgres", &format!("CREATE DATABASE {DB}"))?;
        let port = server.port;
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut links = Vec::new();
        for _ in 0..coordinators {
            links.push(Proxy::start(target).await?);
        }
        Ok(PgSide {
            server: Arc::new(Mutex::new(server)),
            port,
            links,
        })
    }

    /// Coordinator `i`'s store URL (through its link).
    pub fn url(&self, i: usize) -> String {
        format!("postgres://postgres@{}/{DB}", self.links[i].addr)
    }

    /// The database's address without a proxy (for checks).
    pub fn direct_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DB}", self.port)
    }

    /// Restart the server on its port: every connection cut, the data
    /// kept (a database failover, a crash and restart).
    pub async fn restart(&self) -> Result<()> {
        let server = Arc::clone(&self.server);
        tokio::task::spawn_blocking(move || crate::lock(&server).restart()).await?
    }
}
