//! HTTPS for the coordinator's listener (rustls): the certificate and key
//! from `[tls]`, re-read on SIGHUP without dropping a connection (a bad
//! new pair is refused and the old one kept), and optional client
//! certificates for agents (mTLS): with `client_ca`, every connection may
//! present one, and the agent API requires it.

use crate::config::TlsConfig;
use anyhow::{Context, Result, bail};
use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Whether the connection a request came on presented a client
/// certificate that the configured CA verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCert(pub bool);

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Read the PEM files of `cfg` into a server configuration.
pub fn load(cfg: &TlsConfig) -> Result<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .with_context(|| format!("reading certificate {}", cfg.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("certificate {} is not PEM", cfg.cert.display()))?;
    if certs.is_empty() {
        bail!(
            "certificate file {} holds no certificate",
            cfg.cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .with_context(|| format!("reading private key {}", cfg.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading client CA bundle {}", ca.display()))?
            {
                roots
                    .add(
                        c.with_context(|| format!("client CA bundle {} is not PEM", ca.display()))?,
                    )
                    .with_context(|| format!("a certificate of {}", ca.display()))?;
            }
            if roots.is_empty() {
                bail!("client CA bundle {} holds no certificate", ca.display());
            }
            // Operators and browsers present no certificate: the agent API
            // alone insists on one (see `api::require_client_cert`).
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "{} and {} are not a certificate and its key",
            cfg.cert.display(),
            cfg.key.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The server configuration in use; SIGHUP swaps it.
pub struct Reloadable {
    cfg: TlsConfig,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl Reloadable {
    pub fn new(cfg: &TlsConfig) -> Result<Reloadable> {
        Ok(Reloadable {
            current: RwLock::new(Arc::new(load(cfg)?)),
            cfg: cfg.clone(),
        })
    }

    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Re-read the files; on failure keep serving with the old pair.
    pub fn reload(&self) -> Result<()> {
        let fresh = Arc::new(load(&self.cfg)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// Serve `app` over TLS on `listener` until `stop`, then let open
/// connections finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Arc<Reloadable>,
    stop: CancellationToken,
) -> Result<()> {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let app = app.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let cert = ClientCert(stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty()));
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(cert);
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                let app = app.clone();
                async move {
                    tower::ServiceExt::oneshot(app, req.map(axum::body::Body::new)).await
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                }
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Re-read the certificate and key on every SIGHUP (without TLS, SIGHUP
/// only says so: it never stops the coordinator).
pub async fn reload_on_sighup(tls: Option<Arc<Reloadable>>, stop: CancellationToken) -> Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = hup.recv() => {}
        }
        match &tls {
            None => tracing::info!("SIGHUP: no TLS configured, nothing to reload"),
            Some(t) => match t.reload() {
                Ok(()) => {
                    tracing::info!(cert = %t.cfg.cert.display(), "SIGHUP: TLS certificate and key reloaded")
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "SIGHUP: TLS reload refused; still serving the previous certificate")
                }
            },
        }
    }
}
