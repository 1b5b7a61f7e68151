//! Where the store's PostgreSQL is and how to reach it: a `postgres://`
//! URL (libpq's form), TLS, and the settings every connection gets.
//!
//! TLS: `sslmode=verify-full` (or `require`, which here means the same:
//! rustls always checks the chain and the host name) with
//! `sslrootcert=PATH`, the CA bundle the server's certificate chains to
//! (for RDS, AWS's regional bundle); `sslmode=disable` is plain TCP.
//! libpq's `prefer`, `allow` and `verify-ca` are refused: each can end in
//! a connection whose server was never checked.
//!
//! Every connection: TCP keepalives (idle 10 s, then every 5 s, 3 tries)
//! and `tcp_user_timeout` 15 s, so a half-open connection (a peer gone
//! without a FIN, a cut network) fails in seconds instead of hanging for
//! the kernel's 2 hours; a 30 s statement timeout; a 10 s lock timeout;
//! and `idle_in_transaction_session_timeout` 5 s, so the server ends the
//! transaction of a coordinator frozen mid-write (its fence lock would
//! otherwise keep a new leader waiting).

use crate::store::{Result, StoreError};
use postgres::{Client, Config, NoTls};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A parsed `postgres://` store URL.
pub struct Target {
    config: Config,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The URL without its password, for logs and errors.
    pub display: String,
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::Invalid(msg.into())
}

/// `%2F` and friends in a URL parameter.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(h) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(h, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL with the password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((creds, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match creds.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        let display = redact(url);
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut sslmode = None;
        let mut rootcert = None;
        let mut rest = Vec::new();
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("sslmode", v)) => sslmode = Some(percent_decode(v)),
                Some(("sslrootcert", v)) => rootcert = Some(PathBuf::from(percent_decode(v))),
                _ => rest.push(kv),
            }
        }
        let plain = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config: Config = plain
            .parse()
            .map_err(|e| invalid(format!("store_url {display}: {e}")))?;
        let tls = match sslmode.as_deref() {
            None | Some("disable") => {
                if sslmode.is_none() && !is_local(&config) {
                    tracing::warn!(store = %redact(url), "store_url has no sslmode: the connection to PostgreSQL is not encrypted (add sslmode=verify-full&sslrootcert=PATH)");
                }
                None
            }
            Some("verify-full" | "require") => {
                let Some(ca) = rootcert else {
                    return Err(invalid(format!(
                        "store_url {display}: sslmode=verify-full needs sslrootcert=PATH, the CA bundle \
                         the server's certificate chains to (for RDS: the region's bundle from AWS)"
                    )));
                };
                config.ssl_mode(postgres::config::SslMode::Require);
                Some(Arc::new(client_tls(&ca, &display)?))
            }
            Some(other) => {
                return Err(invalid(format!(
                    "store_url {display}: sslmode={other} is not supported: use verify-full (with \
                     sslrootcert) or disable; prefer, allow and verify-ca may end in a server never checked"
                )));
            }
        };
        config
            .application_name("spot-coordinator")
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(15));
        Ok(Target {
            config,
            tls,
            display,
        })
    }

    /// A new connection with the session settings of every connection.
    pub fn connect(&self) -> Result<Client> {
        let mut client = match &self.tls {
            None => self.config.connect(NoTls),
            Some(tls) => self.config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                (**tls).clone(),
            )),
        }
        .map_err(|e| {
            tracing::warn!(store = %self.display, error = %spot_common::error_chain(&e), "connecting to PostgreSQL");
            StoreError::from(e)
        })?;
        client.batch_execute(
            "SET statement_timeout = '30s';
             SET lock_timeout = '10s';
             SET idle_in_transaction_session_timeout = '5s';
             SET TIME ZONE 'UTC'",
        )?;
        Ok(client)
    }
}

fn is_local(config: &Config) -> bool {
    use postgres::config::Host;
    config.get_hosts().iter().all(|h| match h {
        Host::Tcp(name) => name == "localhost" || name == "127.0.0.1" || name == "::1",
        Host::Unix(_) => true,
    })
}

/// rustls trusting exactly the certificates of `ca` (PEM).
fn client_tls(ca: &std::path::Path, display: &str) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| {
        invalid(format!(
            "store_url {display}: sslrootcert {}: {e}",
            ca.display()
        ))
    })?;
    for cert in certs {
        let cert = cert.map_err(|e| {
            invalid(format!(
                "store_url {display}: sslrootcert {}: {e}",
                ca.display()
            ))
        })?;
        roots.add(cert).map_err(|e| {
            invalid(format!(
                "store_url {display}: sslrootcert {}: {e}",
                ca.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(invalid(format!(
            "store_url {display}: sslrootcert {} holds no certificate",
            ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_a_log() {
        assert_eq!(
            redact("postgres://spot:s3cret@db:5432/spot"),
            "postgres://spot:***@db:5432/spot"
        );
        assert_eq!(redact("postgres://db/spot"), "postgres://db/spot");
    }

    #[test]
    fn unsafe_or_incomplete_tls_modes_are_refused_with_the_reason() {
        let err = |url: &str| Target::parse(url).err().map(|e| e.to_string());
        assert!(
            err("postgres://u:pw@db/spot?sslmode=prefer")
                .is_some_and(|e| e.contains("prefer") && !e.contains("pw"))
        );
        assert!(
            err("postgres://db/spot?sslmode=verify-full")
                .is_some_and(|e| e.contains("sslrootcert"))
        );
        assert!(
            err("postgres://db/spot?sslmode=verify-full&sslrootcert=%2Fnone%2Fca.pem")
                .is_some_and(|e| e.contains("/none/ca.pem"))
        );
        assert!(Target::parse("postgres://db/spot?sslmode=disable&connect_timeout=3").is_ok());
    }
}
