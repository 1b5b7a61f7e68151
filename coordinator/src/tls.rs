//! HTTPS for the coordinator's listener (rustls): the certificate and key
//! from `[tls]`, re-read on SIGHUP without dropping a connection (a bad
//! new pair is refused and the old one kept), and optional client
//! certificates for agents (mTLS): with `client_ca`, every connection may
//! present one, and the agent API requires it.

use crate::config::{ClientIdentity, TlsConfig};
use anyhow::{Context, Result, bail};
use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The client certificate (verified by the configured CA) the connection a
/// request came on presented: the names it may be bound by (`[tls]
/// client_identity`): DNS names of its subject alternative names, and its
/// subject's common name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    pub san: Vec<String>,
    pub cn: Option<String>,
}

impl ClientCert {
    /// The names of `der`; a certificate that does not parse names nothing
    /// (rustls verified it, so that does not happen).
    pub fn of(der: &CertificateDer<'_>) -> ClientCert {
        let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
            return ClientCert::default();
        };
        ClientCert {
            san: cert.valid_dns_names().map(str::to_owned).collect(),
            cn: common_name(cert.subject()),
        }
    }

    /// Whether the certificate speaks for `instance` under `identity`.
    pub fn speaks_for(&self, identity: ClientIdentity, instance: &str) -> bool {
        match identity {
            ClientIdentity::None => true,
            ClientIdentity::San => self.san.iter().any(|n| n == instance),
            ClientIdentity::Cn => self.cn.as_deref() == Some(instance),
        }
    }
}

/// The common name (OID 2.5.4.3) of a DER subject (a SEQUENCE of SETs of
/// type-and-value pairs, outer tag stripped): the first one that is a
/// UTF8String, PrintableString or IA5String with a short length.
fn common_name(subject: &[u8]) -> Option<String> {
    const CN: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let at = subject.windows(CN.len()).position(|w| w == CN)? + CN.len();
    let (&tag, rest) = subject.get(at..)?.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if !matches!(tag, 0x0c | 0x13 | 0x16) || len >= 0x80 {
        return None;
    }
    let value = rest.get(..usize::from(len))?;
    String::from_utf8(value.to_vec()).ok()
}

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
            let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(ClientCert::of);
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                if let Some(c) = &cert {
                    req.extensions_mut().insert(c.clone());
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_speaks_for_the_instance_its_chosen_name_holds() {
        // SET { SEQUENCE { OID 2.5.4.3, UTF8String "i-1" } }
        let subject = [
            0x31, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x03, b'i', b'-', b'1',
        ];
        assert_eq!(common_name(&subject).as_deref(), Some("i-1"));
        assert_eq!(common_name(&subject[..12]), None, "truncated");
        assert_eq!(common_name(&[0x31, 0x00]), None);
        let c = ClientCert {
            san: vec!["i-2".into()],
            cn: Some("i-1".into()),
        };
        assert!(c.speaks_for(ClientIdentity::Cn, "i-1"));
        assert!(!c.speaks_for(ClientIdentity::Cn, "i-2"));
        assert!(c.speaks_for(ClientIdentity::San, "i-2"));
        assert!(!c.speaks_for(ClientIdentity::San, "i-1"));
        assert!(c.speaks_for(ClientIdentity::None, "i-9"));
    }
}
