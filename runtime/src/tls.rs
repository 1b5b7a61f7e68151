//! TLS on the client side of the coordinator's API (agents, spotctl): the
//! system's roots plus an optional CA bundle for a private CA, and an
//! optional client certificate (mTLS).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Where a client finds its extra trust and its identity (PEM files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA certificates trusted besides the system's (a private CA).
    pub ca_bundle: Option<PathBuf>,
    /// Client certificate chain and its key, for a coordinator that asks
    /// agents for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

impl ClientTls {
    pub fn is_empty(&self) -> bool {
        self.ca_bundle.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// `b` with this trust and identity; an unreadable or malformed file
    /// is an error that names it.
    pub fn apply(&self, mut b: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder> {
        if let Some(path) = &self.ca_bundle {
            let certs = reqwest::Certificate::from_pem_bundle(&read(path, "CA bundle")?)
                .with_context(|| format!("CA bundle {} is not PEM certificates", path.display()))?;
            if certs.is_empty() {
                bail!("CA bundle {} holds no certificate", path.display());
            }
            b = b.tls_certs_merge(certs);
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert, "client certificate")?;
                pem.push(b'\n');
                pem.extend(read(key, "client key")?);
                let id = reqwest::Identity::from_pem(&pem).with_context(|| {
                    format!(
                        "client certificate {} and key {} are not a PEM chain and key",
                        cert.display(),
                        key.display()
                    )
                })?;
                b = b.identity(id);
            }
            (None, None) => {}
            _ => bail!("a client certificate needs both its cert and its key"),
        }
        Ok(b)
    }
}
