//! A TCP proxy on 127.0.0.1 between an agent and what it talks to (the
//! coordinator, EC2), with the network faults the simulator injects: a
//! full cut (open connections dropped, new ones refused), a one-way cut
//! (requests still arrive, answers are dropped: the caller times out while
//! the server acted), and added latency.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const OPEN: u8 = 0;
const CUT: u8 = 1;
const ONE_WAY: u8 = 2;

#[derive(Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    latency_ms: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
}

/// Copy one direction; `drop_it` discards the bytes instead.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
    latency: Arc<AtomicU64>,
    answers: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = latency.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        match mode.load(Ordering::Relaxed) {
            CUT => return,
            ONE_WAY if answers => continue,
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let p = Proxy {
            addr: listener.local_addr()?,
            mode: Arc::default(),
            latency_ms: Arc::default(),
            conns: Arc::default(),
        };
        let q = p.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if q.mode.load(Ordering::SeqCst) == CUT {
                    drop(inbound);
                    continue;
                }
                let (mode, latency) = (Arc::clone(&q.mode), Arc::clone(&q.latency_ms));
                let h = tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    let up = pump(ir, ow, Arc::clone(&mode), Arc::clone(&latency), false);
                    let down = pump(or, iw, mode, latency, true);
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
                let mut conns = q.conns.lock().unwrap_or_else(|e| e.into_inner());
                conns.retain(|c| !c.is_finished());
                conns.push(h.abort_handle());
            }
        });
        Ok(p)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn drop_conns(&self) {
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            c.abort();
        }
    }

    /// Partition: drop open connections, refuse new ones.
    pub fn cut(&self) {
        self.mode.store(CUT, Ordering::SeqCst);
        self.drop_conns();
    }

    /// Requests still reach the server; its answers are dropped.
    pub fn cut_answers(&self) {
        self.mode.store(ONE_WAY, Ordering::SeqCst);
    }

    /// Back to normal (open connections of a one-way cut are dropped so
    /// clients reconnect).
    pub fn heal(&self) {
        let was = self.mode.swap(OPEN, Ordering::SeqCst);
        self.latency_ms.store(0, Ordering::SeqCst);
        if was == ONE_WAY {
            self.drop_conns();
        }
    }

    pub fn set_latency(&self, d: Duration) {
        self.latency_ms.store(
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }
}

/// An agent's links to each coordinator of its fleet: a fault cuts, slows
/// or heals them all, as one network path would be.
pub struct Links(pub Vec<Proxy>);

impl Links {
    /// The URLs the agent is given, comma-separated, in `scheme`.
    pub fn urls(&self, scheme: &str) -> String {
        self.0
            .iter()
            .map(|p| format!("{scheme}://{}", p.addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn cut(&self) {
        self.0.iter().for_each(Proxy::cut);
    }

    pub fn cut_answers(&self) {
        self.0.iter().for_each(Proxy::cut_answers);
    }

    pub fn heal(&self) {
        self.0.iter().for_each(Proxy::heal);
    }

    pub fn set_latency(&self, d: Duration) {
        for p in &self.0 {
            p.set_latency(d);
        }
    }
}
